//! The hot path of the wire format: a borrowed twin of [`LogRecord`] and a fast
//! RFC 3339 timestamp writer and reader.
//!
//! A shipper turns hundreds of thousands of lines a second into NDJSON; building an
//! owned `LogRecord` for each (host, app, task, source and message copied into fresh
//! `String`s) and formatting its timestamp through `fmt` cost more than reading the
//! lines. [`LogRecordRef`] serialises to exactly the bytes `LogRecord` does (a
//! proptest below pins that), from data the caller already holds. The trade-off is a
//! second struct to keep in step with `LogRecord`: the test fails the moment they
//! drift.

use crate::{Level, LogRecord, Stream};
use chrono::{DateTime, Datelike, FixedOffset, SecondsFormat, Timelike, Utc};
use serde::{de, Deserializer, Serializer};
use std::collections::BTreeMap;

/// [`LogRecord`] with every string borrowed; [`LogRecordRef::write_ndjson`] writes
/// exactly the bytes serde writes for the owned record, so the indexer cannot tell
/// them apart.
#[derive(Debug, Clone)]
pub struct LogRecordRef<'a> {
    pub ts: DateTime<Utc>,
    pub host: &'a str,
    pub app: &'a str,
    pub task: &'a str,
    pub instance: u32,
    pub stream: Stream,
    pub level: Option<Level>,
    pub msg: &'a str,
    pub fields: &'a BTreeMap<String, serde_json::Value>,
    pub trace_id: Option<&'a str>,
    pub span_id: Option<&'a str>,
    pub parent_span_id: Option<&'a str>,
    pub latency_ms: Option<f64>,
    pub status: Option<u16>,
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    pub peer_host: Option<&'a str>,
    pub peer_app: Option<&'a str>,
    pub source: &'a str,
    pub offset: u64,
}

impl<'a> From<&'a LogRecord> for LogRecordRef<'a> {
    fn from(r: &'a LogRecord) -> Self {
        LogRecordRef {
            ts: r.ts,
            host: &r.host,
            app: &r.app,
            task: &r.task,
            instance: r.instance,
            stream: r.stream,
            level: r.level,
            msg: &r.msg,
            fields: &r.fields,
            trace_id: r.trace_id.as_deref(),
            span_id: r.span_id.as_deref(),
            parent_span_id: r.parent_span_id.as_deref(),
            latency_ms: r.latency_ms,
            status: r.status,
            method: r.method.as_deref(),
            path: r.path.as_deref(),
            peer_host: r.peer_host.as_deref(),
            peer_app: r.peer_app.as_deref(),
            source: &r.source,
            offset: r.offset,
        }
    }
}

impl LogRecordRef<'_> {
    /// Appends this record as one NDJSON line (with its `\n`) to `out`: the bytes
    /// `serde_json` would write for it, written by hand because this runs for every
    /// line shipped and serde's byte-at-a-time string escaping was a tenth of the
    /// shipper's CPU. The proptest below holds the two to the same output.
    pub fn write_ndjson(&self, out: &mut Vec<u8>) {
        let mut num = itoa::Buffer::new();
        out.extend_from_slice(b"{\"ts\":\"");
        let mut ts = [0u8; 40];
        match write_rfc3339(&self.ts, &mut ts) {
            Some(n) => out.extend_from_slice(&ts[..n]),
            None => out.extend_from_slice(
                self.ts
                    .to_rfc3339_opts(SecondsFormat::AutoSi, true)
                    .as_bytes(),
            ),
        }
        out.extend_from_slice(b"\",\"host\":");
        write_str(out, self.host);
        out.extend_from_slice(b",\"app\":");
        write_str(out, self.app);
        out.extend_from_slice(b",\"task\":");
        write_str(out, self.task);
        out.extend_from_slice(b",\"instance\":");
        out.extend_from_slice(num.format(self.instance).as_bytes());
        out.extend_from_slice(b",\"stream\":\"");
        out.extend_from_slice(self.stream.as_str().as_bytes());
        out.push(b'"');
        if let Some(level) = self.level {
            out.extend_from_slice(b",\"level\":\"");
            out.extend_from_slice(level.as_str().as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(b",\"msg\":");
        write_str(out, self.msg);
        if !self.fields.is_empty() {
            out.extend_from_slice(b",\"fields\":");
            serde_json::to_writer(&mut *out, self.fields).expect("a map of values serialises");
        }
        for (key, v) in [
            (&b",\"trace_id\":"[..], self.trace_id),
            (b",\"span_id\":", self.span_id),
            (b",\"parent_span_id\":", self.parent_span_id),
        ] {
            if let Some(v) = v {
                out.extend_from_slice(key);
                write_str(out, v);
            }
        }
        if let Some(l) = self.latency_ms {
            out.extend_from_slice(b",\"latency_ms\":");
            // serde_json's float formatting (and its `null` for NaN/inf), exactly.
            serde_json::to_writer(&mut *out, &l).expect("a float serialises");
        }
        if let Some(s) = self.status {
            out.extend_from_slice(b",\"status\":");
            out.extend_from_slice(num.format(s).as_bytes());
        }
        for (key, v) in [
            (&b",\"method\":"[..], self.method),
            (b",\"path\":", self.path),
            (b",\"peer_host\":", self.peer_host),
            (b",\"peer_app\":", self.peer_app),
        ] {
            if let Some(v) = v {
                out.extend_from_slice(key);
                write_str(out, v);
            }
        }
        out.extend_from_slice(b",\"source\":");
        write_str(out, self.source);
        out.extend_from_slice(b",\"offset\":");
        out.extend_from_slice(num.format(self.offset).as_bytes());
        out.extend_from_slice(b"}\n");
    }
}

/// Writes `s` as a JSON string the way serde_json does: `"` and `\\` escaped, control
/// characters as `\\b \\t \\n \\f \\r` or `\\u00xx`, everything else (DEL and
/// non-ASCII included) as is. Runs without anything to escape are found 16 bytes at a
/// time and copied in one piece.
fn write_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let mut start = 0;
    loop {
        let i = start + clean_run(&b[start..]);
        out.extend_from_slice(&b[start..i]);
        let Some(&c) = b.get(i) else {
            break;
        };
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 0xf)]);
            }
        }
        start = i + 1;
    }
    out.push(b'"');
}

fn needs_escape(c: u8) -> bool {
    c < 0x20 || c == b'"' || c == b'\\'
}

/// How many leading bytes of `b` need no escaping.
fn clean_run(b: &[u8]) -> usize {
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8,
            _mm_or_si128, _mm_set1_epi8,
        };
        // SAFETY: SSE2 is part of the x86_64 baseline, so these intrinsics are always
        // available; every load reads 16 bytes at `i` with `i + 16 <= b.len()`, and
        // `loadu` has no alignment requirement.
        unsafe {
            let quote = _mm_set1_epi8(b'"' as i8);
            let backslash = _mm_set1_epi8(b'\\' as i8);
            let below_space = _mm_set1_epi8(0x1f);
            while i + 16 <= b.len() {
                let v = _mm_loadu_si128(b.as_ptr().add(i).cast::<__m128i>());
                // A byte is a control character when min(byte, 0x1f) == byte (unsigned).
                let hits = _mm_or_si128(
                    _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                    _mm_cmpeq_epi8(_mm_min_epu8(v, below_space), v),
                );
                let mask = _mm_movemask_epi8(hits);
                if mask != 0 {
                    return i + mask.trailing_zeros() as usize;
                }
                i += 16;
            }
        }
    }
    while i < b.len() && !needs_escape(b[i]) {
        i += 1;
    }
    i
}

/// Serialises a timestamp as chrono's own `Serialize` does (RFC 3339, `Z`, as many
/// fraction digits as needed: 0, 3, 6 or 9), without going through `fmt`.
pub fn serialize_ts<S: Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 40];
    match write_rfc3339(ts, &mut buf) {
        Some(n) => s.serialize_str(std::str::from_utf8(&buf[..n]).expect("ascii digits")),
        None => s.collect_str(&ts.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    }
}

/// The commonest timestamp, `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`, read directly: chrono's
/// general RFC 3339 parser and offset arithmetic cost more than the rest of the line.
/// Anything else (offsets, leap seconds, odd forms) is left to chrono. Used by the
/// shipper on every line and by [`deserialize_ts`] on every record decoded.
pub fn parse_utc_fast(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b.get(r)?.iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[b.len() - 1] != b'Z'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac = &b[19..b.len() - 1];
    let nanos = match frac {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            num(20..20 + digits.len())? * 10u32.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    if sec > 59 {
        return None;
    }
    let date = chrono::NaiveDate::from_ymd_opt(year as i32, month, day)?;
    Some(date.and_hms_nano_opt(hour, min, sec, nanos)?.and_utc())
}

/// Deserialises `LogRecord::ts` as chrono's own `Deserialize` does (the same values
/// accepted, the same errors), the shipper's `...Z` form read by [`parse_utc_fast`]:
/// chrono's general parser was a measurable part of the indexer's decoding of every
/// record (issue 14).
pub fn deserialize_ts<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    struct Ts;
    impl de::Visitor<'_> for Ts {
        type Value = DateTime<Utc>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an RFC 3339 formatted date and time string")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<DateTime<Utc>, E> {
            if let Some(t) = parse_utc_fast(v) {
                return Ok(t);
            }
            v.parse::<DateTime<FixedOffset>>()
                .map(|t| t.with_timezone(&Utc))
                .map_err(E::custom)
        }
    }
    d.deserialize_str(Ts)
}

/// Writes `ts` into `buf` and returns the length, or `None` for what the fast path
/// does not cover (years outside 0..=9999, leap seconds): those go through chrono.
fn write_rfc3339(ts: &DateTime<Utc>, buf: &mut [u8; 40]) -> Option<usize> {
    let year = ts.year();
    let nanos = ts.nanosecond();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return None;
    }
    fn put(buf: &mut [u8], at: usize, v: u32, digits: usize) {
        let mut v = v;
        for i in (0..digits).rev() {
            buf[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    put(buf, 0, year as u32, 4);
    buf[4] = b'-';
    put(buf, 5, ts.month(), 2);
    buf[7] = b'-';
    put(buf, 8, ts.day(), 2);
    buf[10] = b'T';
    put(buf, 11, ts.hour(), 2);
    buf[13] = b':';
    put(buf, 14, ts.minute(), 2);
    buf[16] = b':';
    put(buf, 17, ts.second(), 2);
    let mut n = 19;
    if nanos != 0 {
        buf[n] = b'.';
        let (v, digits) = if nanos.is_multiple_of(1_000_000) {
            (nanos / 1_000_000, 3)
        } else if nanos.is_multiple_of(1_000) {
            (nanos / 1_000, 6)
        } else {
            (nanos, 9)
        };
        put(buf, n + 1, v, digits);
        n += 1 + digits;
    }
    buf[n] = b'Z';
    Some(n + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TaskMeta;
    use proptest::prelude::*;

    fn ts_of(secs: i64, nanos: u32) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, nanos).expect("in range")
    }

    #[test]
    fn timestamps_match_chrono_at_every_precision() {
        for nanos in [0, 123_000_000, 123_456_000, 123_456_789, 1_000, 1] {
            let ts = ts_of(1_795_000_000, nanos);
            let mut fast = Vec::new();
            LogRecordRef::from(&record(ts)).write_ndjson(&mut fast);
            assert_eq!(fast, crate::encode_ndjson(&[record(ts)]));
            let mut buf = [0u8; 40];
            let n = write_rfc3339(&ts, &mut buf).unwrap();
            assert_eq!(
                std::str::from_utf8(&buf[..n]).unwrap(),
                ts.to_rfc3339_opts(SecondsFormat::AutoSi, true)
            );
        }
    }

    #[test]
    fn strings_escape_exactly_as_serde_json_does() {
        let mut all_bytes = String::new();
        for c in (0u8..0x80).map(char::from) {
            all_bytes.push(c);
        }
        for s in [
            "",
            "plain text longer than one eight byte word",
            "quote \" and backslash \\ at odd places\\",
            "\u{0}\u{1}\u{8}\t\n\u{b}\u{c}\r\u{1f} \u{7f}",
            "naïve 日本語 🎉 mixed with \"escapes\"\n",
            &all_bytes,
            &"0123456789abcdef\"0123456789abcde\u{1f}".repeat(3),
            &format!("{}é\\", "x".repeat(31)),
        ] {
            let mut out = Vec::new();
            write_str(&mut out, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap(),
                "{s:?}"
            );
        }
    }

    fn record(ts: DateTime<Utc>) -> LogRecord {
        let meta = TaskMeta {
            host: "node-1".into(),
            app: "fib".into(),
            task: "fib.1".into(),
            instance: 1,
            ports: Vec::new(),
        };
        LogRecord::new(ts, &meta, Stream::Stderr, "m")
    }

    /// `ts` as [`deserialize_ts`] reads it.
    #[derive(serde::Deserialize)]
    struct FastTs {
        #[serde(deserialize_with = "deserialize_ts")]
        ts: DateTime<Utc>,
    }

    /// `ts` as chrono's own `Deserialize` reads it.
    #[derive(serde::Deserialize)]
    struct ChronoTs {
        ts: DateTime<Utc>,
    }

    fn both(json: &str) -> (Result<DateTime<Utc>, String>, Result<DateTime<Utc>, String>) {
        (
            serde_json::from_str::<FastTs>(json)
                .map(|r| r.ts)
                .map_err(|e| e.to_string()),
            serde_json::from_str::<ChronoTs>(json)
                .map(|r| r.ts)
                .map_err(|e| e.to_string()),
        )
    }

    #[test]
    fn decoded_timestamps_and_their_errors_are_chronos() {
        for json in [
            r#"{"ts":"2026-12-06T20:15:00Z"}"#,
            r#"{"ts":"2026-12-06T20:15:00.123456789Z"}"#,
            r#"{"ts":"2026-12-06T20:15:00+02:00"}"#,
            r#"{"ts":"2026-12-06t20:15:00z"}"#,
            r#"{"ts":"2016-12-31T23:59:60Z"}"#,
            r#"{"ts":"2026-02-30T00:00:00Z"}"#,
            r#"{"ts":"2026-12-06T24:00:00Z"}"#,
            r#"{"ts":"2026-12-06T20:15:00.Z"}"#,
            r#"{"ts":"2026-12-06T20:15:00\u005a"}"#,
            r#"{"ts":"yesterday"}"#,
            r#"{"ts":17}"#,
            r#"{"ts":null}"#,
        ] {
            let (fast, chrono) = both(json);
            assert_eq!(fast, chrono, "{json}");
        }
    }

    proptest! {
        /// Whatever string of about the shipper's shape, [`deserialize_ts`] gives
        /// chrono's value or chrono's error.
        #[test]
        fn decoded_timestamps_agree_with_chrono(
            s in "[0-9]{4}-[0-1][0-9]-[0-3][0-9][Tt ][0-2][0-9]:[0-6][0-9]:[0-6][0-9](\\.[0-9]{0,10})?([Zz]|[+-][0-2][0-9]:[0-5][0-9])?",
        ) {
            let json = format!("{{\"ts\":\"{s}\"}}");
            let (fast, chrono) = both(&json);
            prop_assert_eq!(fast, chrono, "{}", s);
        }

        /// Pins that the borrowed twin and the owned record never drift apart: same
        /// bytes for any record, every optional field set or not.
        #[test]
        fn borrowed_record_serialises_exactly_as_the_owned_one(
            secs in -62_000_000_000i64..253_000_000_000i64,
            nanos in prop_oneof![Just(0u32), (0u32..1000).prop_map(|m| m * 1_000_000), 0u32..1_000_000_000],
            msg in ".*",
            level in proptest::option::of(prop_oneof![Just(Level::Info), Just(Level::Error)]),
            trace in proptest::option::of("[a-f0-9]{1,32}"),
            latency in proptest::option::of(0.0f64..1e6),
            status in proptest::option::of(100u16..600),
            method in proptest::option::of("[A-Z]{3,6}"),
            field in proptest::option::of(("[a-z]{1,8}", ".*")),
            offset in any::<u64>(),
        ) {
            let mut r = record(ts_of(secs, nanos));
            r.msg = msg;
            r.level = level;
            r.trace_id = trace.clone();
            r.span_id = trace.clone();
            r.parent_span_id = trace;
            r.latency_ms = latency;
            r.status = status;
            r.method = method.clone();
            r.path = method.clone();
            r.peer_host = method.clone();
            r.peer_app = method;
            if let Some((k, v)) = field {
                r.fields.insert(k, serde_json::Value::String(v));
            }
            r.source = "node-1/fib/fib.1/stderr@00ff".into();
            r.offset = offset;
            let mut fast = Vec::new();
            LogRecordRef::from(&r).write_ndjson(&mut fast);
            prop_assert_eq!(String::from_utf8(fast).unwrap(), String::from_utf8(crate::encode_ndjson(std::slice::from_ref(&r))).unwrap());
        }
    }
}
