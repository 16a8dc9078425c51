//! Browser sessions and one-time sign-in links.
//!
//! Signing in exchanges a token for a random session id held in an HttpOnly,
//! SameSite=Strict cookie; the id maps to the token's role here, in memory, until it
//! expires or the user signs out. `sandtrail up` mints a one-time link (as Jupyter
//! does) so the person who started it is signed in by opening it.
//!
//! The trade-off: sessions live in this process only. A restart signs everyone out and
//! two web processes behind one balancer do not share sessions; in exchange there is no
//! session store to secure and a stolen cookie dies with the process. Both maps are
//! capped so that sign-in attempts cannot grow memory without bound.

use protocol::auth::Role;
use rand::RngCore;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The session cookie's name.
pub const COOKIE: &str = "sandtrail_session";
/// How long a session lasts after signing in (not extended by use: a fixed lifetime
/// bounds what a stolen cookie is worth).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// How long a one-time link stays valid if nobody opens it.
pub const ONCE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Most sessions held at once; over it the oldest is dropped.
pub const MAX_SESSIONS: usize = 10_000;
/// Most unused one-time links held at once.
pub const MAX_ONCE: usize = 64;

/// 256 random bits from the thread-local CSPRNG (ChaCha, seeded from the OS), hex.
pub fn random_id() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Default)]
pub struct Sessions {
    sessions: Mutex<HashMap<String, (Role, Instant)>>,
    once: Mutex<HashMap<String, (Role, Instant)>>,
}

impl Sessions {
    /// A new session for `role`; its id goes into the cookie.
    pub fn start(&self, role: Role) -> String {
        let id = random_id();
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        insert_capped(&mut s, id.clone(), role, SESSION_TTL, MAX_SESSIONS);
        id
    }

    /// The role of a live session.
    pub fn role(&self, id: &str) -> Option<Role> {
        let s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        s.get(id)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(role, _)| *role)
    }

    pub fn end(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// A nonce for a one-time sign-in link with `role`.
    pub fn issue_once(&self, role: Role) -> String {
        let nonce = random_id();
        let mut o = self.once.lock().unwrap_or_else(|e| e.into_inner());
        insert_capped(&mut o, nonce.clone(), role, ONCE_TTL, MAX_ONCE);
        nonce
    }

    /// The role of a one-time link, which is used up by asking.
    pub fn redeem_once(&self, nonce: &str) -> Option<Role> {
        let mut o = self.once.lock().unwrap_or_else(|e| e.into_inner());
        o.remove(nonce)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(role, _)| role)
    }

    pub fn len(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn insert_capped(
    map: &mut HashMap<String, (Role, Instant)>,
    id: String,
    role: Role,
    ttl: Duration,
    cap: usize,
) {
    let now = Instant::now();
    if map.len() >= cap {
        map.retain(|_, (_, expires)| *expires > now);
        while map.len() >= cap {
            let Some(oldest) = map
                .iter()
                .min_by_key(|(_, (_, e))| *e)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            map.remove(&oldest);
        }
    }
    map.insert(id, (role, now + ttl));
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k.trim() == name).then(|| v.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_time_links_work_once() {
        let s = Sessions::default();
        let n = s.issue_once(Role::Admin);
        assert_eq!(n.len(), 64);
        assert_eq!(s.redeem_once(&n), Some(Role::Admin));
        assert_eq!(s.redeem_once(&n), None, "a second use is refused");
        assert_eq!(s.redeem_once("guess"), None);
    }

    #[test]
    fn sessions_start_end_and_stay_capped() {
        let s = Sessions::default();
        let id = s.start(Role::Read);
        assert_eq!(s.role(&id), Some(Role::Read));
        s.end(&id);
        assert_eq!(s.role(&id), None);
        for _ in 0..MAX_SESSIONS + 10 {
            s.start(Role::Read);
        }
        assert!(s.len() <= MAX_SESSIONS);
        assert_ne!(random_id(), random_id());
    }

    #[test]
    fn cookies_are_found_by_name() {
        let h = "a=1; sandtrail_session=abc ; b=2";
        assert_eq!(cookie(h, COOKIE), Some("abc"));
        assert_eq!(cookie(h, "c"), None);
        assert_eq!(cookie("sandtrail_sessionx=1", COOKIE), None);
    }
}
