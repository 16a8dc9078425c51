//! The trace id: the one definition of what the router may start, the shipper may
//! recognise in a line, the indexer may store as `trace_id` and the web may link to.
//!
//! Each part used to keep its own rule (the router W3C hex only, the shipper ids with
//! or without dots, the web 1-64 characters without dots), so an id the shipper
//! indexed, such as the `X-Request-Id` value `req-42_a.b`, had no trace page. Now a
//! value is a trace id if [`TraceId::parse`] says so, and every part asks it.
//!
//! The accepted set is the shipper's, because what gets indexed must be traceable: 1
//! to 128 ASCII letters, digits, `-`, `_` and `.` (W3C trace ids are 32 hex digits,
//! request ids are often UUIDs or dotted names). The only exceptions are `.` and `..`,
//! which a browser resolves away as path segments of `/trace/{id}` (even escaped).
//! The trade-off: the wire field `LogRecord::trace_id` stays a plain string, so that a
//! batch already spooled by an older shipper still deserialises; the parts that make
//! or recognise ids (router, shipper, ES ingest, web) go through this type.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Longest trace id, in bytes (all of them ASCII).
pub const MAX_TRACE_ID_LEN: usize = 128;

/// A validated trace id; see the module docs for the rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(String);

/// Why a value is not a trace id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid trace id {0:?}: expected 1 to {MAX_TRACE_ID_LEN} ASCII letters, digits, '-', '_' or '.' (not '.' or '..')"
)]
pub struct BadTraceId(pub String);

impl TraceId {
    /// The one parse every part uses.
    pub fn parse(s: &str) -> Result<TraceId, BadTraceId> {
        if Self::is_valid(s) {
            Ok(TraceId(s.to_string()))
        } else {
            Err(BadTraceId(s.chars().take(200).collect()))
        }
    }

    /// Whether [`TraceId::parse`] would accept `s`, without allocating.
    pub fn is_valid(s: &str) -> bool {
        (1..=MAX_TRACE_ID_LEN).contains(&s.len())
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    }

    /// The W3C form of a 128-bit id: 32 lowercase hex digits (zero is not a valid
    /// W3C trace id, which is the caller's to avoid).
    pub fn from_u128(id: u128) -> TraceId {
        TraceId(format!("{id:032x}"))
    }

    /// The search query that finds this trace's records: `trace_id:ID`, quoted when
    /// the id starts with `-` (the query language reads a bare `-` as NOT). Every
    /// other character a trace id may hold is plain in a query word.
    pub fn search_term(&self) -> String {
        if self.0.starts_with('-') {
            format!("trace_id:\"{}\"", self.0)
        } else {
            format!("trace_id:{}", self.0)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TraceId {
    type Err = BadTraceId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TraceId::parse(s)
    }
}

impl AsRef<str> for TraceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<TraceId> for String {
    fn from(id: TraceId) -> String {
        id.0
    }
}

impl Serialize for TraceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TraceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        TraceId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Regression (issue 16): the shipper indexed `req-42_a.b` from an `X-Request-Id`
    /// but the web refused it (dots), so the trace had no page and no link.
    #[test]
    fn request_id_with_dots_is_a_trace_id() {
        let id = TraceId::parse("req-42_a.b").unwrap();
        assert_eq!(id.as_str(), "req-42_a.b");
        assert_eq!(id.to_string(), "req-42_a.b");
    }

    #[test]
    fn accepts_what_the_parts_make() {
        for ok in [
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "0b6c2a5e-7d21-4c1e-9f7e-1d2c3b4a5f60",
            "abc123",
            "t9",
            "-abc",
            "a.b.c",
            "...",
            &"a".repeat(MAX_TRACE_ID_LEN),
        ] {
            assert!(TraceId::parse(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn rejects_what_no_part_can_carry() {
        for bad in [
            "",
            ".",
            "..",
            "abc def",
            "abc\"<x>",
            "a:b",
            "a/b",
            "a%2e",
            "é",
            &"a".repeat(MAX_TRACE_ID_LEN + 1),
        ] {
            let err = TraceId::parse(bad).unwrap_err();
            assert!(err.to_string().starts_with("invalid trace id"), "{err}");
        }
    }

    #[test]
    fn search_term_quotes_only_a_leading_dash() {
        let term = |s: &str| TraceId::parse(s).unwrap().search_term();
        assert_eq!(term("req-42_a.b"), "trace_id:req-42_a.b");
        assert_eq!(term("-abc"), "trace_id:\"-abc\"");
    }

    #[test]
    fn w3c_form_is_32_hex() {
        assert_eq!(
            TraceId::from_u128(0x4bf92f3577b34da6a3ce929d0e0e4736).as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(TraceId::from_u128(1).as_str().len(), 32);
    }

    #[test]
    fn serde_is_the_bare_string_and_validates() {
        let id = TraceId::parse("req-42_a.b").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""req-42_a.b""#);
        let back: TraceId = serde_json::from_str(r#""req-42_a.b""#).unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<TraceId>(r#""a b""#).is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_round_trips(s in ".{0,140}") {
            if let Ok(id) = TraceId::parse(&s) {
                prop_assert_eq!(id.as_str(), s.as_str());
                prop_assert!(TraceId::is_valid(&s));
            }
        }
    }
}
