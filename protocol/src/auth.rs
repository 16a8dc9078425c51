//! Credentials and roles: the one place that decides who a request is.
//!
//! Every service (indexer, scheduler, web) hands the `Authorization` and
//! `x-sandtrail-token` headers of a request to [`Keyring::authenticate`] and gets back
//! the caller's [`Role`] or why there is none; the axum layer in [`crate::http`] does
//! that before any body is read. Tokens are opaque strings, each with one role; a
//! request carries one as `Authorization: Bearer T` (scheme case-insensitive, as RFC
//! 9110 says), as HTTP Basic with `T` as the password and any user name (what
//! Elasticsearch clients such as opensearch-py send with `http_auth=("elastic", T)`),
//! as an Elasticsearch API key `Authorization: ApiKey base64(id:T)` with any id (what
//! elasticsearch-py sends with `api_key=(id, T)`, Filebeat with `api_key: id:T`), or
//! in `x-sandtrail-token` (what the parts have always sent each other).
//!
//! The trade-off: tokens are bearer secrets compared in constant time against a small
//! list held in memory, not hashed and not scoped to apps. That is enough for a handful
//! of operators and agents per cluster; per-app policies (Nomad-style) would need a
//! policy language, which this does not try to be.

use std::fmt;

/// What a credential may do. Wider roles include narrower ones only where that is
/// safe: `deploy` includes `read` (whoever deploys needs to see what runs), `agent`
/// includes nothing else (a stolen agent token must not read the logs of every app).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Search, tail, UI pages, app lists without env values.
    Read,
    /// Scheduler writes: create, update, delete, scale and restart apps.
    Deploy,
    /// Ingest (native and `_bulk`), agent registration and heartbeats, service lookups.
    Agent,
    /// Everything: the cluster token.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Read, Role::Deploy, Role::Agent, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Deploy => "deploy",
            Role::Agent => "agent",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether a caller with this role may do what needs `need`.
    pub fn allows(self, need: Role) -> bool {
        match self {
            Role::Admin => true,
            Role::Deploy => matches!(need, Role::Deploy | Role::Read),
            Role::Read => need == Role::Read,
            Role::Agent => need == Role::Agent,
        }
    }

    /// Whether this role allows any of `needs` (a route open to several roles, such
    /// as the service lookups both routers and readers make).
    pub fn allows_any(self, needs: &[Role]) -> bool {
        needs.iter().any(|n| self.allows(*n))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request has no role that lets it through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing credential: expected `Authorization: Bearer <token>`, HTTP Basic with the token as password, `ApiKey` of base64(id:token), or header `{}`", crate::TOKEN_HEADER)]
    Missing,
    #[error("unknown token: expected one of the tokens this cluster was configured with")]
    Invalid,
    #[error("a token with role {role} may not do this: expected role {}", needs_text(.needs))]
    Forbidden { role: Role, needs: Vec<Role> },
}

impl AuthError {
    /// 401 (ask for credentials) or 403 (credentials known, not enough).
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing | AuthError::Invalid => 401,
            AuthError::Forbidden { .. } => 403,
        }
    }
}

fn needs_text(needs: &[Role]) -> String {
    let mut names: Vec<&str> = needs.iter().map(|r| r.as_str()).collect();
    names.push("admin");
    names.dedup();
    names.join(" or ")
}

/// The `WWW-Authenticate` challenges a 401 carries: Bearer for our clients, Basic so
/// Elasticsearch clients (and browsers hitting an API URL) know what to send.
pub const CHALLENGES: [&str; 2] = [
    "Bearer realm=\"sandtrail\"",
    "Basic realm=\"sandtrail\", charset=\"UTF-8\"",
];

/// The tokens a service accepts and the role of each.
///
/// An *open* keyring (no token configured at all) lets everything through as admin:
/// what the libraries' own tests and embedders use. The binary never builds one: it
/// always has at least the admin token (closed by default).
#[derive(Clone, Default)]
pub struct Keyring {
    entries: Vec<(Box<[u8]>, Role)>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the tokens themselves: configs get logged with `{:?}`.
        let roles: Vec<Role> = self.entries.iter().map(|(_, r)| *r).collect();
        f.debug_struct("Keyring").field("roles", &roles).finish()
    }
}

impl Keyring {
    pub fn new() -> Keyring {
        Keyring::default()
    }

    /// A keyring with `token` (when set and not blank) as the admin token: today's
    /// single cluster token.
    pub fn with_admin(token: Option<&str>) -> Keyring {
        let mut k = Keyring::new();
        if let Some(t) = token {
            k.add(t, Role::Admin);
        }
        k
    }

    /// Adds `token` with `role`; blank tokens are ignored (an empty line in a token
    /// file must not become a credential that matches an empty header).
    pub fn add(&mut self, token: &str, role: Role) -> &mut Self {
        let t = token.trim();
        if !t.is_empty() {
            self.entries.push((t.as_bytes().into(), role));
        }
        self
    }

    /// Adds every token of `other`.
    pub fn extend(&mut self, other: &Keyring) -> &mut Self {
        self.entries.extend(other.entries.iter().cloned());
        self
    }

    /// No token at all: everything is let through (see the type's docs).
    pub fn is_open(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many tokens of `role` are known.
    pub fn count(&self, role: Role) -> usize {
        self.entries.iter().filter(|(_, r)| *r == role).count()
    }

    /// The role of `token`, comparing against every entry in constant time per entry
    /// and without stopping at the first match, so timing tells nothing about which
    /// token (or how much of one) matched.
    pub fn role_of(&self, token: &str) -> Option<Role> {
        let given = token.trim().as_bytes();
        let mut found = None;
        for (t, role) in &self.entries {
            if constant_time_eq(given, t) && found.is_none() {
                found = Some(*role);
            }
        }
        found
    }

    /// The caller's role from a request's `Authorization` and `x-sandtrail-token`
    /// header values, or why there is none. An open keyring answers admin.
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        token_header: Option<&[u8]>,
    ) -> Result<Role, AuthError> {
        if self.is_open() {
            return Ok(Role::Admin);
        }
        let token = credential(authorization, token_header).ok_or(AuthError::Missing)?;
        self.role_of(&token).ok_or(AuthError::Invalid)
    }

    /// [`authenticate`](Self::authenticate), then checks the role against `needs`.
    pub fn authorize(
        &self,
        authorization: Option<&[u8]>,
        token_header: Option<&[u8]>,
        needs: &[Role],
    ) -> Result<Role, AuthError> {
        let role = self.authenticate(authorization, token_header)?;
        if role.allows_any(needs) {
            Ok(role)
        } else {
            Err(AuthError::Forbidden {
                role,
                needs: needs.to_vec(),
            })
        }
    }
}

/// The token a request carries: `x-sandtrail-token` first (our parts send it), else
/// what [`parse_authorization`] finds. Header values that are not UTF-8 carry none.
pub fn credential(authorization: Option<&[u8]>, token_header: Option<&[u8]>) -> Option<String> {
    if let Some(t) = token_header
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        return Some(t.to_string());
    }
    parse_authorization(std::str::from_utf8(authorization?).ok()?)
}

/// The token of an `Authorization` value: `Bearer T`, `Basic base64(user:T)` (any
/// user, T the password), or `ApiKey base64(id:T)` (any id, T the key: the tokens
/// stand for Elasticsearch API keys, whose ids we do not keep). Scheme names are case-insensitive (RFC 9110 section 11.1);
/// anything else, or an empty token, is `None`.
pub fn parse_authorization(value: &str) -> Option<String> {
    let value = value.trim();
    let (scheme, rest) = value.split_once([' ', '\t'])?;
    let rest = rest.trim();
    let token = if scheme.eq_ignore_ascii_case("bearer") {
        rest.to_string()
    } else if scheme.eq_ignore_ascii_case("basic") || scheme.eq_ignore_ascii_case("apikey") {
        let raw = decode_base64(rest)?;
        let userpass = String::from_utf8(raw).ok()?;
        userpass.split_once(':')?.1.to_string()
    } else {
        return None;
    };
    let token = token.trim();
    (!token.is_empty()).then(|| token.to_string())
}

/// Standard base64 (with or without padding); `None` on any other character.
pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Equality whose time depends only on the lengths, not on where the bytes differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode_base64(data: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    fn ring() -> Keyring {
        let mut k = Keyring::with_admin(Some("adm"));
        k.add("rd", Role::Read)
            .add("dp", Role::Deploy)
            .add("ag", Role::Agent)
            .add("  ", Role::Admin);
        k
    }

    #[test]
    fn schemes_are_case_insensitive_and_basic_takes_the_password() {
        assert_eq!(parse_authorization("Bearer s3").as_deref(), Some("s3"));
        assert_eq!(parse_authorization("bearer s3").as_deref(), Some("s3"));
        assert_eq!(parse_authorization("BEARER  s3 ").as_deref(), Some("s3"));
        // "elastic:s3"
        assert_eq!(
            parse_authorization("Basic ZWxhc3RpYzpzMw==").as_deref(),
            Some("s3")
        );
        assert_eq!(
            parse_authorization("basic ZWxhc3RpYzpzMw").as_deref(),
            Some("s3")
        );
        assert_eq!(parse_authorization("Basic !!!"), None);
        assert_eq!(parse_authorization("Bearer "), None);
        assert_eq!(parse_authorization("Token s3"), None);
        assert_eq!(parse_authorization("Bearers3"), None);
        // A password may hold colons: only the first one ends the user name.
        let v = format!("Basic {}", encode_base64(b"u:a:b"));
        assert_eq!(parse_authorization(&v).as_deref(), Some("a:b"));
        // An Elasticsearch API key, as its clients send one: base64 of `id:key`.
        let v = format!("ApiKey {}", encode_base64(b"sandtrail:s3"));
        assert_eq!(parse_authorization(&v).as_deref(), Some("s3"));
        let v = format!("apikey {}", encode_base64(b"s3"));
        assert_eq!(parse_authorization(&v), None, "an API key is id:key");
    }

    #[test]
    fn roles_include_only_what_is_safe() {
        assert!(Role::Admin.allows(Role::Agent));
        assert!(Role::Deploy.allows(Role::Read));
        assert!(!Role::Read.allows(Role::Deploy));
        assert!(!Role::Agent.allows(Role::Read), "agent tokens cannot read");
        assert!(!Role::Deploy.allows(Role::Agent));
        assert!(Role::Agent.allows_any(&[Role::Read, Role::Agent]));
        assert_eq!(Role::parse(" Deploy"), Some(Role::Deploy));
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn keyring_tells_missing_unknown_and_forbidden_apart() {
        let k = ring();
        assert_eq!(k.authenticate(None, None), Err(AuthError::Missing));
        assert_eq!(
            k.authenticate(Some(b"Bearer nope"), None),
            Err(AuthError::Invalid)
        );
        assert_eq!(k.authenticate(None, Some(b"rd")), Ok(Role::Read));
        assert_eq!(k.authenticate(Some(b"bearer dp"), None), Ok(Role::Deploy));
        // The blank token added above matches nothing, not even an empty header.
        assert_eq!(k.authenticate(None, Some(b" ")), Err(AuthError::Missing));
        let err = k
            .authorize(Some(b"Bearer rd"), None, &[Role::Deploy])
            .unwrap_err();
        assert_eq!(err.status(), 403);
        assert!(err.to_string().contains("role read may not"), "{err}");
        assert!(err.to_string().contains("deploy or admin"), "{err}");
        assert_eq!(
            k.authorize(Some(b"Bearer ag"), None, &[Role::Read])
                .unwrap_err()
                .status(),
            403
        );
        assert_eq!(
            k.authorize(None, Some(b"adm"), &[Role::Agent]),
            Ok(Role::Admin)
        );
        assert_eq!(
            Keyring::new().authenticate(None, None),
            Ok(Role::Admin),
            "an open keyring lets everything through"
        );
        assert!(
            !format!("{k:?}").contains("adm\""),
            "no token in debug output"
        );
    }

    proptest! {
        /// The header parser never panics, and what it returns is never blank.
        #[test]
        fn parser_is_total(value in ".{0,200}") {
            if let Some(t) = parse_authorization(&value) {
                prop_assert!(!t.trim().is_empty());
            }
        }

        /// Any token survives both encodings, whatever the scheme's case and the user.
        #[test]
        fn bearer_and_basic_round_trip(
            token in "[!-~]{1,64}",
            user in "[a-zA-Z0-9_]{0,16}",
            scheme_upper in proptest::collection::vec(any::<bool>(), 6),
        ) {
            let case = |s: &str| -> String {
                s.chars().zip(scheme_upper.iter().cycle()).map(|(c, up)| {
                    if *up { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() }
                }).collect()
            };
            let bearer = format!("{} {token}", case("bearer"));
            let parsed = parse_authorization(&bearer);
            prop_assert_eq!(parsed.as_deref(), Some(token.as_str()));
            let basic = format!("{} {}", case("basic"), encode_base64(format!("{user}:{token}").as_bytes()));
            let parsed = parse_authorization(&basic);
            prop_assert_eq!(parsed.as_deref(), Some(token.as_str()));
        }

        /// Base64 decoding inverts encoding for any bytes.
        #[test]
        fn base64_round_trips(data in proptest::collection::vec(any::<u8>(), 0..100)) {
            prop_assert_eq!(decode_base64(&encode_base64(&data)), Some(data));
        }
    }
}
