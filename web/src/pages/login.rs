//! Signing in and out, and the gate in front of every page.
//!
//! A browser signs in once (a token in the form, or a one-time link from `sandtrail
//! up`) and then carries an HttpOnly, SameSite=Strict session cookie; scripts may skip
//! the cookie and send a token with each request as they do to the APIs. Pages without
//! either redirect to the sign-in page (keeping where the user was going); non-page
//! routes (the live-tail stream) answer 401. The trade-off: SameSite=Strict means a
//! link to a Sandtrail page followed from another site (a chat message) arrives without
//! the cookie and shows the sign-in page once; in exchange no cross-site request ever
//! carries the session, which is what makes the sign-out form and the pages safe
//! without CSRF tokens.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Form;
use protocol::auth::Role;
use protocol::http::Caller;
use serde::Deserialize;

use super::render;
use crate::error::Error;
use crate::session::{cookie, COOKIE, SESSION_TTL};
use crate::AppState;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    nav: &'static str,
    next: String,
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct LoginQuery {
    once: Option<String>,
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    token: String,
    next: Option<String>,
}

/// `GET /login`: the form, or with `once=` a one-time link that signs in at once.
pub(crate) async fn page(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    let next = safe_next(q.next.as_deref());
    if let Some(nonce) = q.once.as_deref() {
        return match st.sessions.redeem_once(nonce) {
            Some(role) => {
                tracing::info!(role = %role, "signed in with a one-time link");
                signed_in(&st, role, &next, &headers)
            }
            None => form(
                StatusCode::UNAUTHORIZED,
                next,
                Some(
                    "This sign-in link was used already or has expired: sign in with a token."
                        .into(),
                ),
            ),
        };
    }
    form(StatusCode::OK, next, None)
}

/// `POST /login`: exchanges a token for a session.
pub(crate) async fn submit(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    if let Err(e) = same_origin(&headers) {
        return e.into_response();
    }
    let next = safe_next(f.next.as_deref());
    match st.keyring.authenticate(None, Some(f.token.as_bytes())) {
        Ok(role) if role.allows(Role::Read) => {
            tracing::info!(role = %role, "signed in with a token");
            signed_in(&st, role, &next, &headers)
        }
        Ok(role) => form(
            StatusCode::FORBIDDEN,
            next,
            Some(format!(
                "A token with role {role} cannot read logs: use a read, deploy or admin token."
            )),
        ),
        Err(_) => form(
            StatusCode::UNAUTHORIZED,
            next,
            Some("Unknown token.".into()),
        ),
    }
}

/// `POST /logout`: ends the session and clears the cookie.
pub(crate) async fn logout(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = same_origin(&headers) {
        return e.into_response();
    }
    if let Some(id) = session_id(&headers) {
        st.sessions.end(id);
    }
    let clear = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    redirect("/login", Some(clear))
}

/// In front of every UI route but the sign-in page and the static assets: a session
/// or a token with the read role, else the sign-in page (or 401 off the pages).
pub(crate) async fn gate(
    State(st): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    if path == "/login" || path == "/logout" || path.starts_with("/static/") {
        return next.run(req).await;
    }
    let headers = req.headers();
    let role = match session_id(headers).and_then(|id| st.sessions.role(id)) {
        Some(role) => Ok(role),
        None => st.keyring.authenticate(
            headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
            headers.get(protocol::TOKEN_HEADER).map(|v| v.as_bytes()),
        ),
    };
    match role {
        Ok(role) if role.allows(Role::Read) => {
            req.extensions_mut().insert(Caller(role));
            next.run(req).await
        }
        Ok(role) => Error::from(protocol::auth::AuthError::Forbidden {
            role,
            needs: vec![Role::Read],
        })
        .into_response(),
        Err(_) if path.starts_with("/ui/") => {
            let mut resp = Error::Unauthorized.into_response();
            protocol::http::with_challenges(&mut resp);
            resp
        }
        Err(_) => {
            let target = req
                .uri()
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_string();
            let to = if target == "/" {
                "/login".to_string()
            } else {
                format!("/login?next={}", encode(&target))
            };
            redirect(&to, None)
        }
    }
}

fn form(status: StatusCode, next: String, message: Option<String>) -> Response {
    let page = LoginPage {
        nav: "login",
        next,
        message,
    };
    match render("login", &page) {
        Ok(html) => (status, [(header::CACHE_CONTROL, "no-store")], html).into_response(),
        Err(e) => e.into_response(),
    }
}

fn signed_in(st: &AppState, role: Role, next: &str, headers: &HeaderMap) -> Response {
    let id = st.sessions.start(role);
    // Behind a TLS-terminating proxy the cookie must never travel in clear text.
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    redirect(next, Some(cookie))
}

fn redirect(to: &str, cookie: Option<String>) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(to) {
        h.insert(header::LOCATION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(header::SET_COOKIE, c);
    }
    resp
}

fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| cookie(h, COOKIE))
}

/// Where to go after signing in: a path on this site only, never `//evil.example`
/// or an absolute URL (an open redirect would make the sign-in page a phishing aid).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/\\")
                && !n.chars().any(char::is_control) =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

/// A form post from another origin is refused: SameSite keeps the cookie off it, but a
/// cross-site sign-in would still plant the attacker's session (login CSRF).
pub(crate) fn same_origin(headers: &HeaderMap) -> Result<(), Error> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
    if origin_host.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err(Error::CrossSite(origin.to_string()))
    }
}

/// Percent-encodes everything but unreserved characters and `/`.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some("/tail/fib?q=a")), "/tail/fib?q=a");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(None), "/");
        assert_eq!(encode("/a b?q=x&y"), "/a%20b%3Fq%3Dx%26y");
    }

    #[test]
    fn cross_origin_posts_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7070"));
        assert!(
            same_origin(&h).is_ok(),
            "no Origin: not a browser form post"
        );
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:7070"),
        );
        assert!(same_origin(&h).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(matches!(same_origin(&h), Err(Error::CrossSite(_))));
    }
}
