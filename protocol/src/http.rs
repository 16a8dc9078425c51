//! The axum layers every service puts in front of its handlers: the credential check
//! ([`gate`]) and the load-shedding concurrency limit ([`limit`]).
//!
//! They live here, behind the `http` feature, so that the indexer, the scheduler and
//! the web UI share one implementation while `protocol` stays free of axum for the
//! agent and external clients that only need the types. Both are `from_fn` layers:
//! they run before the handler's extractors, so a request without a credential or
//! over the limit is answered before a byte of its body is read. The trade-off: each
//! service passes a plain `fn` that turns the refusal into its own error response,
//! rather than the layers owning one error shape (the Elasticsearch endpoints must
//! answer in Elasticsearch's).

use crate::auth::{AuthError, Keyring, Role, CHALLENGES};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// Requests refused by a [`gate`] (401 and 403) and shed by a [`limit`] (per class),
/// counted process-wide: one process runs every service in `sandtrail up`, and these
/// families must appear once per scrape whichever services share the listener.
static UNAUTHORIZED: AtomicU64 = AtomicU64::new(0);
static FORBIDDEN: AtomicU64 = AtomicU64::new(0);
static SHED: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// The counters above in the Prometheus text format.
pub fn metrics() -> String {
    use crate::metrics::{Exposition, Kind};
    let mut e = Exposition::new();
    e.family(
        "sandtrail_http_refused_total",
        "Requests refused for their credentials.",
        Kind::Counter,
    )
    .sample(&[("status", "401")], UNAUTHORIZED.load(Ordering::Relaxed))
    .sample(&[("status", "403")], FORBIDDEN.load(Ordering::Relaxed));
    e.family(
        "sandtrail_http_shed_total",
        "Requests answered 429 because their class was at its concurrency limit.",
        Kind::Counter,
    );
    let shed = SHED.lock().unwrap_or_else(|e| e.into_inner());
    for (class, n) in shed.iter() {
        e.sample(&[("class", class)], *n);
    }
    e.finish()
}

/// The authenticated caller's role, put in the request's extensions by [`gate`] for
/// handlers that answer differently per role (app env values only for deploy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller(pub Role);

/// What a route needs: `read` roles for safe methods (GET, HEAD, OPTIONS) and `write`
/// roles for the others. Most routes need the same for both.
#[derive(Clone)]
pub struct Gate {
    keyring: Arc<Keyring>,
    read: &'static [Role],
    write: &'static [Role],
    reject: fn(AuthError) -> Response,
}

impl Gate {
    /// A gate letting through callers allowed any of `needs`, whatever the method.
    pub fn new(
        keyring: Arc<Keyring>,
        needs: &'static [Role],
        reject: fn(AuthError) -> Response,
    ) -> Gate {
        Gate {
            keyring,
            read: needs,
            write: needs,
            reject,
        }
    }

    /// A gate needing `read` for safe methods and `write` for the others.
    pub fn by_method(
        keyring: Arc<Keyring>,
        read: &'static [Role],
        write: &'static [Role],
        reject: fn(AuthError) -> Response,
    ) -> Gate {
        Gate {
            keyring,
            read,
            write,
            reject,
        }
    }
}

/// Answers 401 (with `WWW-Authenticate`) or 403 through the service's `reject`, or
/// passes the request on with its [`Caller`].
pub async fn gate(State(g): State<Gate>, mut req: Request, next: Next) -> Response {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let needs = if safe { g.read } else { g.write };
    let headers = req.headers();
    let outcome = g.keyring.authorize(
        headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
        headers.get(crate::TOKEN_HEADER).map(|v| v.as_bytes()),
        needs,
    );
    match outcome {
        Ok(role) => {
            req.extensions_mut().insert(Caller(role));
            next.run(req).await
        }
        Err(e) => {
            tracing::debug!(path = %req.uri().path(), error = %e, "request refused");
            let counter = if e.status() == 401 {
                &UNAUTHORIZED
            } else {
                &FORBIDDEN
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let mut resp = (g.reject)(e.clone());
            if e.status() == 401 {
                with_challenges(&mut resp);
            }
            resp
        }
    }
}

/// Adds the `WWW-Authenticate` challenges of a 401 (replacing any the service set).
pub fn with_challenges(resp: &mut Response) {
    let h = resp.headers_mut();
    h.remove(header::WWW_AUTHENTICATE);
    for c in CHALLENGES {
        h.append(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
    }
}

/// A request refused because `what` already has `limit` requests in flight.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "too many concurrent {what} requests: the limit is {limit}; retry after {retry_after_secs} s"
)]
pub struct Busy {
    pub what: &'static str,
    pub limit: usize,
    pub retry_after_secs: u64,
}

/// A cap on requests in flight for one class of routes. Over it, requests are shed at
/// once (429 with `Retry-After`) instead of queued: a queue would hold their sockets
/// and bodies in memory, and the client retrying later is what ES bulk clients and our
/// shipper already do.
#[derive(Clone)]
pub struct Limit {
    permits: Arc<Semaphore>,
    what: &'static str,
    limit: usize,
    retry_after_secs: u64,
    reject: fn(Busy) -> Response,
}

impl Limit {
    pub fn new(what: &'static str, limit: usize, reject: fn(Busy) -> Response) -> Limit {
        let limit = limit.max(1);
        Limit {
            permits: Arc::new(Semaphore::new(limit)),
            what,
            limit,
            retry_after_secs: 1,
            reject,
        }
    }

    /// The same permits, refused through `reject` (routes of one class that answer
    /// errors in another shape, such as the Elasticsearch ones).
    pub fn with_reject(&self, reject: fn(Busy) -> Response) -> Limit {
        Limit {
            reject,
            ..self.clone()
        }
    }

    /// Requests of this class in flight now.
    pub fn in_flight(&self) -> usize {
        self.limit - self.permits.available_permits()
    }
}

/// Runs the request under one of the limit's permits, held until the response body
/// ends (a tail stream counts for as long as it is open), or sheds it.
pub async fn limit(State(l): State<Limit>, req: Request, next: Next) -> Response {
    let Ok(permit) = l.permits.clone().try_acquire_owned() else {
        let busy = Busy {
            what: l.what,
            limit: l.limit,
            retry_after_secs: l.retry_after_secs,
        };
        tracing::debug!(what = l.what, limit = l.limit, "request shed");
        *SHED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(l.what)
            .or_default() += 1;
        let mut resp = (l.reject)(busy);
        *resp.status_mut() = axum::http::StatusCode::TOO_MANY_REQUESTS;
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(l.retry_after_secs));
        return resp;
    };
    let resp = next.run(req).await;
    let (parts, body) = resp.into_parts();
    // The permit rides in the body stream's closure, dropped with the body.
    let body = axum::body::Body::from_stream(body.into_data_stream().map(move |chunk| {
        let _held = &permit;
        chunk
    }));
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::response::IntoResponse;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    fn reject(e: AuthError) -> Response {
        (
            axum::http::StatusCode::from_u16(e.status()).unwrap(),
            e.to_string(),
        )
            .into_response()
    }

    fn busy(b: Busy) -> Response {
        b.to_string().into_response()
    }

    fn app() -> Router {
        let mut k = Keyring::with_admin(Some("adm"));
        k.add("rd", Role::Read);
        let k = Arc::new(k);
        Router::new()
            .route(
                "/x",
                get(|axum::Extension(Caller(r)): axum::Extension<Caller>| async move {
                    r.to_string()
                })
                .post(|| async { "posted" }),
            )
            .route_layer(axum::middleware::from_fn_with_state(
                Gate::by_method(k, &[Role::Read], &[Role::Deploy], reject),
                gate,
            ))
    }

    async fn call(app: Router, method: &str, token: Option<&str>) -> (u16, Vec<String>, String) {
        let mut req = Request::builder().method(method).uri("/x");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status().as_u16();
        let challenges = resp
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, challenges, String::from_utf8_lossy(&body).into())
    }

    #[tokio::test]
    async fn gate_answers_401_with_challenges_403_and_passes_the_role_on() {
        let (s, ch, _) = call(app(), "GET", None).await;
        assert_eq!(s, 401);
        assert_eq!(ch.len(), 2, "{ch:?}");
        assert!(ch[0].starts_with("Bearer"), "{ch:?}");
        assert_eq!(call(app(), "GET", Some("bad")).await.0, 401);
        assert_eq!(call(app(), "GET", Some("rd")).await.2, "read");
        let (s, ch, body) = call(app(), "POST", Some("rd")).await;
        assert_eq!((s, ch.len()), (403, 0), "{body}");
        assert_eq!(call(app(), "POST", Some("adm")).await.2, "posted");
    }

    #[tokio::test]
    async fn limit_sheds_with_retry_after_and_frees_the_permit_with_the_body() {
        let l = Limit::new("test", 1, busy);
        let app = Router::new()
            .route("/x", get(|| async { "ok" }))
            .route_layer(axum::middleware::from_fn_with_state(l.clone(), limit));
        let held = app
            .clone()
            .oneshot(Request::get("/x").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(l.in_flight(), 1, "the unread body holds the permit");
        let shed = app
            .clone()
            .oneshot(Request::get("/x").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(shed.status(), 429);
        assert_eq!(shed.headers()[header::RETRY_AFTER], "1");
        assert!(
            metrics().contains("sandtrail_http_shed_total{class=\"test\"} "),
            "{}",
            metrics()
        );
        drop(held);
        assert_eq!(l.in_flight(), 0);
        let ok = app
            .oneshot(Request::get("/x").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
    }
}
