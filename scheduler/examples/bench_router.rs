//! Router overhead on loopback (issue 5, BENCHMARKS.md): `wrk` against a trivial axum
//! "ok" instance directly, then against the same instance through one `Proxy` that
//! finds it through a fake control plane's `/v1/services/ok`.
//!
//! Everything but `wrk` runs in this process on one multi-threaded runtime, so the
//! instance, the router and `wrk` share the machine's cores as they would on one
//! agent. Two loads per target: one connection (latency added per hop, nothing
//! queued) and `--connections` connections (requests/s). Each run also reports the
//! CPU time (user + system, `getrusage`) this process spent per request: instance and
//! router share it, wrk does not. On a shared machine that moves far less than
//! requests/s do, so before/after comparisons should read that column first.
//!
//! ```text
//! cargo run --release -p scheduler --example bench_router -- [--duration 10] [--connections 32] [--threads 2]
//! ```

use std::net::SocketAddr;
use std::process::Command;

use axum::extract::Path;
use axum::routing::get;
use axum::Json;
use protocol::ServiceEndpoint;
use scheduler::proxy::{Proxy, ProxyConfig};

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// What one `wrk` run reported.
#[derive(Debug, Clone, Copy)]
struct Run {
    p50_ms: f64,
    p99_ms: f64,
    rps: f64,
    errors: u64,
    /// Requests wrk completed in the run.
    requests: u64,
    /// CPU time (user + system) this process (instance, router, control plane) spent
    /// during the run, per request: unlike requests/s it hardly depends on what else
    /// the shared machine is running.
    cpu_us_per_req: f64,
}

/// `wrk` prints latencies as `123.45us`, `1.23ms` or `1.02s`.
fn parse_latency_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    for (suffix, scale) in [("us", 0.001), ("ms", 1.0), ("s", 1000.0)] {
        if let Some(v) = s.strip_suffix(suffix) {
            return v.parse::<f64>().ok().map(|v| v * scale);
        }
    }
    None
}

fn parse_wrk(out: &str) -> Option<Run> {
    let mut p50 = None;
    let mut p99 = None;
    let mut rps = None;
    let mut errors = 0u64;
    let mut requests = None;
    for line in out.lines() {
        let mut words = line.split_whitespace();
        if line.contains(" requests in ") {
            requests = line.split_whitespace().next().and_then(|v| v.parse().ok());
        }
        match words.next() {
            Some("50%") => p50 = words.next().and_then(parse_latency_ms),
            Some("99%") => p99 = words.next().and_then(parse_latency_ms),
            Some("Requests/sec:") => rps = words.next().and_then(|v| v.parse().ok()),
            Some("Non-2xx") => {
                errors += line
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            }
            Some("Socket") => {
                // "Socket errors: connect 0, read 0, write 0, timeout 0"
                errors += line
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|v| v.parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    Some(Run {
        p50_ms: p50?,
        p99_ms: p99?,
        rps: rps?,
        errors,
        requests: requests?,
        cpu_us_per_req: 0.0,
    })
}

/// User + system CPU time of this whole process so far, in microseconds.
fn process_cpu_us() -> f64 {
    // SAFETY: getrusage only writes into `ru`, a plain C struct for which zeroed
    // memory is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) }, 0);
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

fn wrk(url: &str, threads: usize, connections: usize, secs: u64) -> Run {
    let cpu_before = process_cpu_us();
    let out = Command::new("wrk")
        .args([
            "--latency",
            &format!("-t{threads}"),
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            url,
        ])
        .output()
        .expect("running wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {text}");
    let cpu = process_cpu_us() - cpu_before;
    let mut run =
        parse_wrk(&text).unwrap_or_else(|| panic!("could not read wrk's output:\n{text}"));
    run.cpu_us_per_req = cpu / run.requests.max(1) as f64;
    run
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs = arg(&args, "--duration", 10);
    let conns = arg(&args, "--connections", 32) as usize;
    let threads = arg(&args, "--threads", 2) as usize;

    let upstream = serve(axum::Router::new().fallback(|| async { "ok" })).await;
    let endpoint = ServiceEndpoint {
        app: "ok".into(),
        task: "ok.bench".into(),
        host: "node-1".into(),
        address: "127.0.0.1".into(),
        port: upstream.port(),
        instance: 0,
    };
    let plane = serve(axum::Router::new().route(
        "/v1/services/{app}",
        get(move |Path(app): Path<String>| {
            let ep = endpoint.clone();
            async move { Json(if app == ep.app { vec![ep] } else { vec![] }) }
        }),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let access_log = dir.path().join("access.log");
    let router = Proxy::new(ProxyConfig::new(
        "node-1",
        format!("http://{plane}"),
        &access_log,
    ))
    .unwrap();
    let router_addr = serve(router.axum_router()).await;

    let direct = format!("http://{upstream}/hello");
    let routed = format!("http://{router_addr}/ok/hello");
    // Warm up both paths (connection pools, services cache).
    wrk(&direct, 1, 4, 1);
    wrk(&routed, 1, 4, 1);

    let mut rows = Vec::new();
    for (label, c, t) in [("1 connection", 1, 1), ("loaded", conns, threads)] {
        // Run each target in turn so background noise hits both alike.
        let d = tokio::task::spawn_blocking({
            let u = direct.clone();
            move || wrk(&u, t, c, secs)
        })
        .await
        .unwrap();
        let r = tokio::task::spawn_blocking({
            let u = routed.clone();
            move || wrk(&u, t, c, secs)
        })
        .await
        .unwrap();
        rows.push((label, c, t, d, r));
    }
    router.shutdown().await;
    let lines = std::fs::read_to_string(&access_log)
        .map(|s| s.lines().count())
        .unwrap_or(0);

    println!("| load | target | p50 | p99 | requests/s | errors | CPU µs/request (this process) |");
    println!("|---|---|---|---|---|---|---|");
    for (label, c, t, d, r) in &rows {
        for (name, run) in [("direct", d), ("router", r)] {
            println!(
                "| {label} (wrk -t{t} -c{c} -d{secs}s) | {name} | {:.3} ms | {:.3} ms | {:.0} | {} | {:.1} |",
                run.p50_ms, run.p99_ms, run.rps, run.errors, run.cpu_us_per_req
            );
        }
        println!(
            "| {label} | **added by the router** | **{:+.3} ms** | **{:+.3} ms** | {:.0} % of direct | | **{:+.1}** |",
            r.p50_ms - d.p50_ms,
            r.p99_ms - d.p99_ms,
            100.0 * r.rps / d.rps,
            r.cpu_us_per_req - d.cpu_us_per_req
        );
    }
    println!("\naccess records written: {lines}");
    println!(
        "{}",
        router
            .metrics()
            .lines()
            .filter(|l| l.contains("dropped_total{") || l.contains("lookups_total{"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
