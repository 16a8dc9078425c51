//! The HTTP server every listener of this process runs: hyper's HTTP/1 connection
//! driver with a header-read timeout (which also closes idle keep-alive connections),
//! a cap on open connections, and a Host-header allow-list against DNS rebinding.
//!
//! `axum::serve` has none of these knobs, so connections are accepted and driven here
//! with hyper-util directly. The trade-off: HTTP/1.1 only (no h2c), which is all our
//! clients, Elasticsearch shippers and browsers behind a TLS proxy need; a TLS
//! terminator in front speaks HTTP/2 to browsers if wanted (SECURITY.md).

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;
use tracing::{debug, warn};

/// Default time a client has to send a request's headers (and the longest an idle
/// keep-alive connection is kept). Hyper's own default: shorter would cut slow clients
/// sooner but close more pooled connections of quiet agents just as they are reused.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Default cap on open connections per listener: well above what a cluster's agents
/// and browsers hold, well below the process's file descriptors.
pub const MAX_CONNECTIONS: usize = 8192;

/// Connections the kernel completes and holds for us before we accept them.
/// `tokio::net::TcpListener::bind` listens with std's 128: a burst beyond that (the
/// agents of a restarted cluster reconnecting at once, or a flood) had its SYNs
/// dropped, and each dropped client waited the 1 s retransmission timeout. Linux caps
/// it at `net.core.somaxconn` (4,096 by default): asking for more takes whatever the
/// machine allows.
pub const LISTEN_BACKLOG: u32 = 8192;

/// What every listener enforces below the routes.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
    /// The allow-list spec (`[http] allowed_hosts`): `None` for the default, which
    /// depends on the address the listener is bound to.
    pub allowed_hosts: Option<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: HEADER_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            allowed_hosts: None,
        }
    }
}

/// The host names a listener answers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts {
    any: bool,
    names: Arc<Vec<String>>,
}

/// What a loopback listener answers to by default: a DNS-rebinding page's host name
/// (`evil.example` resolving to 127.0.0.1) is none of these.
const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

impl AllowedHosts {
    /// From a comma-separated spec (`*` = any), or by default: loopback names for a
    /// listener bound to loopback, any name otherwise (a service bound to a routable
    /// address is reached by names we cannot guess; the tokens guard it).
    pub fn new(spec: Option<&str>, bound: SocketAddr) -> AllowedHosts {
        match spec.map(str::trim).filter(|s| !s.is_empty()) {
            Some(spec) => {
                let names: Vec<String> = spec
                    .split(',')
                    .map(|n| normalize(n.trim()))
                    .filter(|n| !n.is_empty())
                    .collect();
                AllowedHosts {
                    any: names.iter().any(|n| n == "*"),
                    names: Arc::new(names),
                }
            }
            None if bound.ip().is_loopback() => AllowedHosts {
                any: false,
                names: Arc::new(LOOPBACK_NAMES.iter().map(|n| n.to_string()).collect()),
            },
            None => AllowedHosts {
                any: true,
                names: Arc::default(),
            },
        }
    }

    /// Whether a `Host` header value names this service.
    pub fn allows(&self, host: &str) -> bool {
        if self.any {
            return true;
        }
        let name = normalize(strip_port(host));
        // RFC 6761: *.localhost is loopback too.
        self.names.contains(&name)
            || (self.names.iter().any(|n| n == "localhost") && name.ends_with(".localhost"))
    }
}

fn strip_port(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        // One colon: name:port. More: a bare IPv6 address without brackets.
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// 421 for a request addressed to a name this listener does not answer to. `/healthz`
/// is exempt: probes (Docker, Kubernetes) address it by IP and it tells nothing.
async fn check_host(State(allowed): State<AllowedHosts>, req: Request, next: Next) -> Response {
    if allowed.any || req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or("");
    if allowed.allows(host) {
        return next.run(req).await;
    }
    debug!(host, "request for a host not served here");
    (
        StatusCode::MISDIRECTED_REQUEST,
        format!(
            "host {host:?} is not served here: expected one of {} (set [http] allowed_hosts)\n",
            allowed.names.join(", ")
        ),
    )
        .into_response()
}

/// Binds a listener on `addr` (`host:port`, a name resolved first; port 0 for a free
/// one) with [`LISTEN_BACKLOG`]; the first resolved address that binds wins.
pub async fn listen(addr: impl tokio::net::ToSocketAddrs) -> std::io::Result<TcpListener> {
    // As std and mio do: a restarted server rebinds its port past TIME_WAIT.
    let one = |at: SocketAddr| {
        let socket = if at.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(at)?;
        socket.listen(LISTEN_BACKLOG)
    };
    let mut last = None;
    // Any failure moves on to the next address, as `TcpListener::bind` does: on a
    // host without IPv6, `localhost` may resolve to `::1` first.
    for at in tokio::net::lookup_host(addr).await? {
        match one(at) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolved to nothing to listen on",
        )
    }))
}

/// Serves `router` on `listener` until `cancel` fires, then stops accepting, lets the
/// requests in flight finish and returns.
pub fn serve(
    listener: TcpListener,
    router: Router,
    cancel: CancellationToken,
    limits: &Limits,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let bound = listener.local_addr()?;
    let allowed = AllowedHosts::new(limits.allowed_hosts.as_deref(), bound);
    let router = router
        .layer(from_fn_with_state(allowed, check_host))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let header_timeout = limits.header_timeout;
    Ok(tokio::spawn(async move {
        let tracker = TaskTracker::new();
        loop {
            // A slot first: over the cap, connections wait in the kernel's backlog
            // rather than in our memory.
            let slot = tokio::select! {
                _ = cancel.cancelled() => break,
                s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
            };
            let (tcp, remote) = tokio::select! {
                _ = cancel.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and friends: wait for descriptors to free up
                        // instead of spinning on the error.
                        warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // No Nagle delay: streamed responses (live tail, the router's pass-through
            // bodies) go out in small writes that must not wait for the previous ACK.
            if let Err(e) = tcp.set_nodelay(true) {
                debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
            }
            let router = router.clone();
            let cancel = cancel.clone();
            tracker.spawn(async move {
                let _slot = slot;
                let svc =
                    hyper::service::service_fn(move |mut req: axum::http::Request<Incoming>| {
                        req.extensions_mut().insert(ConnectInfo(remote));
                        let mut router = router.clone();
                        router.call(req)
                    });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout);
                let conn = builder.serve_connection(TokioIo::new(tcp), svc);
                tokio::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    _ = cancel.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    debug!(peer = %remote, error = %e, "connection ended with an error");
                }
            });
        }
        drop(listener);
        tracker.close();
        tracker.wait().await;
        Ok(())
    }))
}

/// A handler that panicked (a bug) answers 500 for its own request only: without
/// this the connection was dropped with no answer at all.
fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    warn!("a request handler panicked; answered 500");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"error":"internal error: the request failed unexpectedly; the server is still running"}"#,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(addr: &str) -> SocketAddr {
        addr.parse().unwrap()
    }

    #[test]
    fn loopback_listeners_answer_loopback_names_only() {
        let a = AllowedHosts::new(None, at("127.0.0.1:7070"));
        for ok in [
            "127.0.0.1:7070",
            "localhost",
            "LOCALHOST.:7070",
            "[::1]:7070",
            "ui.localhost:7070",
        ] {
            assert!(a.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7070",
            "",
            "127.0.0.2",
            "localhost.evil",
        ] {
            assert!(!a.allows(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_the_server_keeps_serving() {
        let router = Router::new()
            .route(
                "/boom",
                axum::routing::get(|| async {
                    if true {
                        panic!("a bug");
                    }
                    "unreachable"
                }),
            )
            .route("/ok", axum::routing::get(|| async { "fine" }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let cancel = CancellationToken::new();
        let server = serve(listener, router, cancel.clone(), &Limits::default()).unwrap();
        let http = reqwest::Client::new();
        let boom = http.get(format!("{base}/boom")).send().await.unwrap();
        assert_eq!(boom.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(boom.text().await.unwrap().contains("still running"));
        let ok = http.get(format!("{base}/ok")).send().await.unwrap();
        assert_eq!(ok.text().await.unwrap(), "fine");
        cancel.cancel();
        server.await.unwrap().unwrap();
    }

    /// Regression: the security suite's healthz once took 1.04 s in CI. 2,000 idle
    /// connections opened faster than a loaded server accepted them overflowed the
    /// backlog of 128 that `TcpListener::bind` gives, and the next client's SYN was
    /// dropped and retried a second later (with that bind, connection 129 stalls).
    #[tokio::test]
    async fn a_burst_of_connections_is_held_by_the_backlog_not_dropped() {
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4096);
        // A listener that accepts nothing: everything waits in its backlog.
        let listener = listen("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Well past 129 and well inside a default descriptor limit of 1,024.
        let burst = somaxconn.min(LISTEN_BACKLOG as usize).min(600);
        assert!(burst > 129, "somaxconn {somaxconn} leaves nothing to test");
        let mut held = Vec::with_capacity(burst);
        for i in 0..burst {
            let started = std::time::Instant::now();
            let c = tokio::time::timeout(
                Duration::from_millis(900),
                tokio::net::TcpStream::connect(addr),
            )
            .await;
            assert!(
                matches!(c, Ok(Ok(_))),
                "connection {i} of {burst} not held within 900 ms ({:?}): the backlog overflowed",
                started.elapsed()
            );
            held.push(c.unwrap().unwrap());
        }
        drop(listener);
    }

    #[tokio::test]
    async fn listen_names_an_address_it_cannot_use() {
        assert!(listen("127.0.0.1:0").await.is_ok());
        let taken = listen("127.0.0.1:0").await.unwrap();
        let port = taken.local_addr().unwrap().port();
        // Reuse-addr does not allow two live listeners on one port.
        assert!(listen(("127.0.0.1", port)).await.is_err());
        // TEST-NET-1: an address no interface here has (and no DNS to wait for).
        assert!(listen("192.0.2.1:0").await.is_err());
    }

    #[test]
    fn configured_names_and_wildcards() {
        let a = AllowedHosts::new(Some("sandtrail.internal, Indexer"), at("127.0.0.1:1"));
        assert!(a.allows("indexer:7072"));
        assert!(a.allows("sandtrail.internal"));
        assert!(
            !a.allows("localhost"),
            "a configured list replaces the default"
        );
        assert!(AllowedHosts::new(Some("*"), at("127.0.0.1:1")).allows("x"));
        assert!(AllowedHosts::new(None, at("0.0.0.0:1")).allows("scheduler:7071"));
    }
}
