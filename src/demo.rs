//! The demo app of the seed documents: a Fibonacci service that computes fib(n) by
//! calling other instances of itself, through the router, for fib(n-1) and fib(n-2).
//!
//! It is deliberately naive (exponential fan-out) because the point is traffic across
//! hosts, not arithmetic: one `/fib/10` is 177 routed calls, each an access record and
//! an app line carrying the trace id, which is what the trace page shows. `n` is capped
//! so a curious `curl /fib/40` cannot melt the machine.
//!
//! With `FIB_DNS=ip:port` (a scheduler's `--dns-listen`), it finds its peers by DNS
//! instead, as the seeds' service did through Mesos-DNS: an SRV lookup of
//! `_<app>._tcp.marathon.<FIB_DNS_DOMAIN, default mesos>` per call, then a direct call
//! to one of the answers, chosen at random. Those calls bypass the router (no access
//! records, no retries on another instance); the router stays the default for that reason.

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use rand::seq::IndexedRandom;
use std::time::Instant;

/// Largest n served: fib(20) is already 21,891 routed calls.
const MAX_N: u64 = 20;

#[derive(Clone)]
struct Fib {
    router: String,
    task: String,
    client: reqwest::Client,
    /// The DNS server and SRV name peers are found by (`FIB_DNS`), else the router.
    dns: Option<(std::net::SocketAddr, String)>,
}

/// How long one SRV lookup may take.
const DNS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn fib() -> anyhow::Result<()> {
    let port = std::env::var("PORT0").context("PORT0 is not set: run demo-fib as a task")?;
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let router = std::env::var("SANDTRAIL_ROUTER").context("SANDTRAIL_ROUTER is not set")?;
    let app_id = std::env::var("SANDTRAIL_APP_ID").unwrap_or_else(|_| "fib".into());
    let dns = match std::env::var("FIB_DNS") {
        Ok(addr) if !addr.is_empty() => {
            let server = addr.parse().with_context(|| {
                format!("FIB_DNS {addr:?} is not a DNS server's address: expected ip:port")
            })?;
            let domain = std::env::var("FIB_DNS_DOMAIN").unwrap_or_else(|_| "mesos".into());
            let label = scheduler::dns::names::app_label(&app_id);
            Some((server, format!("_{label}._tcp.marathon.{domain}.")))
        }
        _ => None,
    };
    let state = Fib {
        router: router.trim_end_matches('/').to_string(),
        task: std::env::var("SANDTRAIL_TASK_ID").unwrap_or_default(),
        client: reqwest::Client::new(),
        dns,
    };
    if let Some((server, name)) = &state.dns {
        println!(
            "{} INFO fib finds its peers by dns: SRV {name} at {server}",
            now()
        );
    }
    let app = Router::new()
        .route("/", get(|| async { "usage: GET /<n> answers fib(n)\n" }))
        .route("/{n}", get(handle))
        .with_state(state);
    let listener = crate::http::listen(format!("{host}:{port}"))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    println!("{} INFO fib listening on {host}:{port} app={app_id}", now());
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler installs")
                .recv()
                .await;
        })
        .await?;
    println!("{} INFO fib stopping", now());
    Ok(())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The trace id from a W3C `traceparent` (`00-<trace>-<span>-<flags>`).
fn trace_id(headers: &HeaderMap) -> Option<String> {
    let tp = headers.get("traceparent")?.to_str().ok()?;
    let id = tp.split('-').nth(1)?;
    (id.len() == 32).then(|| id.to_string())
}

async fn handle(
    State(f): State<Fib>,
    Path(n): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    let started = Instant::now();
    let trace = trace_id(&headers).unwrap_or_else(|| "-".into());
    let n: u64 = match n.parse() {
        Ok(n) if n <= MAX_N => n,
        _ => {
            println!(
                "{} WARN bad request n={n:?} trace_id={trace} expected=0..={MAX_N}",
                now()
            );
            return (
                StatusCode::BAD_REQUEST,
                format!("expected a whole number from 0 to {MAX_N}, got {n:?}\n"),
            );
        }
    };
    let result = if n < 2 {
        Ok(n)
    } else {
        let (a, b) = tokio::join!(f.call(n - 1, &headers), f.call(n - 2, &headers));
        a.and_then(|a| b.map(|b| a + b))
    };
    let took = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(v) => {
            println!(
                "{} INFO fib({n}) = {v} n={n} trace_id={trace} took_ms={took:.3}",
                now()
            );
            (StatusCode::OK, v.to_string())
        }
        Err(e) => {
            println!(
                "{} ERROR fib({n}) failed n={n} trace_id={trace} error={e:?}",
                now()
            );
            (StatusCode::BAD_GATEWAY, format!("{e}\n"))
        }
    }
}

impl Fib {
    /// Calls fib(n) on some instance through the router, continuing the caller's trace.
    async fn call(&self, n: u64, incoming: &HeaderMap) -> Result<u64, String> {
        let url = match &self.dns {
            None => format!("{}/fib/{n}", self.router),
            Some((server, name)) => {
                let peers = scheduler::dns::client::srv(*server, name, DNS_TIMEOUT)
                    .await
                    .map_err(|e| format!("fib({n}): SRV {name} at {server}: {e}"))?;
                let (host, port) = peers
                    .choose(&mut rand::rng())
                    .ok_or_else(|| format!("fib({n}): SRV {name} at {server} lists no peer"))?;
                format!("http://{host}:{port}/{n}")
            }
        };
        let mut req = self
            .client
            .get(url)
            .header(protocol::CALLER_TASK_HEADER, &self.task);
        if let Some(tp) = incoming.get("traceparent") {
            req = req.header("traceparent", tp.clone());
        }
        let resp = req.send().await.map_err(|e| format!("fib({n}): {e}"))?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| format!("fib({n}): {e}"))?;
        if !status.is_success() {
            return Err(format!("fib({n}): {status} {}", body.trim()));
        }
        body.trim()
            .parse()
            .map_err(|_| format!("fib({n}): expected a number, got {body:?}"))
    }
}

/// The app definition `up` deploys: Marathon JSON, as a user would POST it.
pub fn demo_app(exe: &std::path::Path, instances: usize) -> serde_json::Value {
    serde_json::json!({
        "id": "/fib",
        "cmd": format!("'{}' demo-fib", exe.display().to_string().replace('\'', r"'\''")),
        "instances": instances,
        "cpus": 0.1,
        "mem": 32,
        "portDefinitions": [{"port": 0, "name": "http"}],
        "env": {"RUST_BACKTRACE": "1"},
        "labels": {"sandtrail.demo": "true"}
    })
}

/// Deploys `fib` once the local agents have registered; an existing app is left
/// alone, so restarting `up` keeps what the user changed.
pub async fn deploy_demo(url: &str, token: &str, agents: usize) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let n = client
            .get(format!("{url}/v1/agents"))
            .header(protocol::TOKEN_HEADER, token)
            .send()
            .await
            .ok()
            .and_then(|r| r.status().is_success().then_some(r));
        let registered = match n {
            Some(r) => r
                .json::<Vec<protocol::AgentInfo>>()
                .await
                .map(|a| a.len())
                .unwrap_or(0),
            None => 0,
        };
        if registered >= agents {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("only {registered} of {agents} agents registered after 30 s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let resp = client
        .post(format!("{url}/v2/apps"))
        .header(protocol::TOKEN_HEADER, token)
        .json(&demo_app(&exe, agents.min(3)))
        .send()
        .await?;
    match resp.status().as_u16() {
        200 | 201 | 409 => Ok(()),
        s => anyhow::bail!("POST /v2/apps answered {s}: {}", resp.text().await?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_comes_from_traceparent() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            trace_id(&h).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        h.insert(
            "traceparent",
            "00-short-00f067aa0ba902b7-01".parse().unwrap(),
        );
        assert_eq!(trace_id(&h), None);
    }

    #[test]
    fn demo_app_quotes_the_executable_path() {
        let app = demo_app(std::path::Path::new("/opt/it's here/sandtrail"), 3);
        assert_eq!(app["cmd"], r"'/opt/it'\''s here/sandtrail' demo-fib");
        assert_eq!(app["instances"], 3);
    }
}
