//! The node and the router against fake counterparts: a fake control plane (the other
//! side of the node protocol and of `/v1/services`) and echo servers as app instances.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Json;
use protocol::{
    AgentInfo, LogRecord, ServiceEndpoint, Stream, TaskFile, TaskMeta, TaskSpec, TaskStatus,
};
use protocol::{HealthCheck, HealthResult, HeartbeatRequest, HeartbeatResponse, ShipperStatus};
use scheduler::node::{Node, NodeConfig};
use scheduler::proxy::{Proxy, ProxyConfig};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(15);

mod common;

use common::eventually;

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

// ---------------------------------------------------------------------------------
// Fake control plane for the node

#[derive(Default)]
struct Plane {
    registrations: Vec<AgentInfo>,
    known: bool,
    desired: Vec<TaskSpec>,
    heartbeats: u64,
    last: Vec<TaskStatus>,
    /// Every status ever reported, in order.
    reports: Vec<TaskStatus>,
    /// The shipper figures of every heartbeat, in order.
    shippers: Vec<Option<ShipperStatus>>,
}

type Shared = Arc<Mutex<Plane>>;

async fn register(State(p): State<Shared>, Json(info): Json<AgentInfo>) -> impl IntoResponse {
    let mut p = p.lock().unwrap();
    p.registrations.push(info);
    p.known = true;
    Json(json!({}))
}

async fn heartbeat(
    State(p): State<Shared>,
    UrlPath(name): UrlPath<String>,
    Json(hb): Json<HeartbeatRequest>,
) -> axum::response::Response {
    let mut p = p.lock().unwrap();
    if !p.known || name != "node-1" {
        return StatusCode::NOT_FOUND.into_response();
    }
    p.heartbeats += 1;
    p.reports.extend(hb.tasks.iter().cloned());
    p.shippers.push(hb.shipper);
    p.last = hb.tasks;
    Json(HeartbeatResponse {
        tasks: p.desired.clone(),
    })
    .into_response()
}

async fn fake_plane() -> (Shared, String) {
    let shared = Shared::default();
    let app = axum::Router::new()
        .route("/v1/agents/register", post(register))
        .route("/v1/agents/{name}/heartbeat", post(heartbeat))
        .with_state(shared.clone());
    let addr = serve(app).await;
    (shared, format!("http://{addr}"))
}

fn spec(app: &str, task: &str, cmd: &str, port_count: u16) -> TaskSpec {
    TaskSpec {
        app: app.into(),
        task: task.into(),
        instance: 1,
        cmd: cmd.into(),
        env: BTreeMap::from([("GREETING".to_string(), "hi there".to_string())]),
        port_count,
        ..Default::default()
    }
}

/// Alive = exists and is not a zombie (a reparented child may linger unreaped in a
/// container without an init).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn read_pid(path: &Path) -> Option<i32> {
    read(path).trim().parse().ok()
}

fn status_of(p: &Plane, task: &str, state: &str) -> Option<TaskStatus> {
    p.reports
        .iter()
        .find(|s| s.task == task && s.state == state)
        .cloned()
}

#[tokio::test]
async fn node_runs_desired_tasks_in_sandboxes_and_reports_them() {
    let dir = tempfile::tempdir().unwrap();
    let (plane, url) = fake_plane().await;
    let mut cfg = NodeConfig::new("node-1", dir.path(), &url);
    cfg.heartbeat_interval = Duration::from_millis(50);
    cfg.kill_grace = Duration::from_secs(2);
    cfg.router_url = "http://127.0.0.1:9".into();
    cfg.token = Some("secret".into());
    let node = Arc::new(Node::new(cfg).unwrap());

    let web_cmd = "echo hello; echo oops >&2; \
        echo \"$PORT0 $PORT1 $PORT $PORTS $SANDTRAIL_TASK_ID $SANDTRAIL_APP_ID $MARATHON_APP_ID $MESOS_TASK_ID $SANDTRAIL_HOST $HOST $SANDTRAIL_ROUTER $GREETING\" > env.txt; \
        echo \"[$SANDTRAIL_TOKEN]\" >> env.txt; \
        echo $$ > sh.pid; sleep 300 & echo $! > child.pid; wait";
    plane.lock().unwrap().desired = vec![
        spec("web", "web.1", web_cmd, 2),
        spec("bad", "bad.1", "echo run >> runs; exit 3", 0),
        TaskSpec {
            disk: Some(2.0),
            ..spec("ok", "ok.1", "true", 0)
        },
        spec("evil", "../../escape", "echo pwned > pwned", 0),
    ];

    let cancel = CancellationToken::new();
    let runner = {
        let (node, cancel) = (node.clone(), cancel.clone());
        tokio::spawn(async move { node.run(cancel).await })
    };

    let sandbox = dir.path().join("sandboxes/web/web.1");
    eventually("stdout and stderr", || {
        (read(&sandbox.join("stdout")) == "hello\n" && read(&sandbox.join("stderr")) == "oops\n")
            .then_some(())
    })
    .await;
    // Issue 15: the task owns its sandbox, its logger writes as the task's user, and
    // on a root node that user is not root.
    {
        use std::os::unix::fs::MetadataExt;
        let owner = |p: &Path| std::fs::metadata(p).unwrap().uid();
        assert_eq!(owner(&sandbox.join("stdout")), owner(&sandbox));
        assert_eq!(
            std::fs::metadata(&sandbox).unwrap().mode() & 0o777,
            0o700,
            "a sandbox is its task's alone"
        );
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert_ne!(owner(&sandbox), 0, "a task ran as root");
        }
    }
    let meta: TaskMeta =
        serde_json::from_str(&read(&sandbox.join("task.json"))).expect("task.json parses");
    assert_eq!(
        (
            meta.host.as_str(),
            meta.app.as_str(),
            meta.task.as_str(),
            meta.instance
        ),
        ("node-1", "web", "web.1", 1)
    );
    assert_eq!(meta.ports.len(), 2);
    assert_ne!(meta.ports[0], meta.ports[1]);
    let env = eventually("env.txt", || {
        let e = read(&sandbox.join("env.txt"));
        e.lines().count().eq(&2).then_some(e)
    })
    .await;
    let (p0, p1) = (meta.ports[0], meta.ports[1]);
    let sandbox_abs = std::path::absolute(&sandbox).unwrap();
    assert_eq!(
        env,
        format!(
            "{p0} {p1} {p0} {p0},{p1} web.1 web /web web.1 node-1 127.0.0.1 http://127.0.0.1:9 hi there\n[]\n"
        ),
        "env of the task in {}",
        sandbox_abs.display()
    );

    // Reported running with its ports.
    eventually("web.1 running", || {
        let p = plane.lock().unwrap();
        p.last
            .iter()
            .find(|s| s.task == "web.1" && s.state == "TASK_RUNNING" && s.ports == meta.ports)
            .cloned()
    })
    .await;
    let reg = plane.lock().unwrap().registrations[0].clone();
    assert_eq!(
        (reg.name.as_str(), reg.address.as_str()),
        ("node-1", "127.0.0.1")
    );
    assert_eq!(reg.router_url, "http://127.0.0.1:9");

    // Exit codes.
    let failed = eventually("bad.1 failed", || {
        status_of(&plane.lock().unwrap(), "bad.1", "TASK_FAILED")
    })
    .await;
    assert_eq!(failed.exit_code, Some(3));
    let finished = eventually("ok.1 finished", || {
        status_of(&plane.lock().unwrap(), "ok.1", "TASK_FINISHED")
    })
    .await;
    assert_eq!(finished.exit_code, Some(0));
    // task.json holds the log budget for the shipper: the app's `disk`, else the
    // node's default.
    let budget_of = |task: &str| {
        let body = read(&dir.path().join("sandboxes").join(task).join("task.json"));
        serde_json::from_str::<TaskFile>(&body)
            .expect("task.json parses")
            .log_budget_bytes
    };
    assert_eq!(budget_of("ok/ok.1"), Some(2 << 20));
    assert_eq!(
        budget_of("web/web.1"),
        Some(scheduler::node::DEFAULT_LOG_BUDGET_BYTES)
    );
    // A sandbox that would escape is refused, reported, and nothing is written.
    let evil = eventually("evil refused", || {
        status_of(&plane.lock().unwrap(), "../../escape", "TASK_FAILED")
    })
    .await;
    assert!(evil.message.unwrap().contains("cannot name a sandbox"));
    assert!(!dir.path().join("pwned").exists() && !dir.path().join("../pwned").exists());

    // An exit stays reported until a heartbeat acknowledged it, then it is dropped, and
    // a task id still listed as desired is not started a second time.
    let seen = plane.lock().unwrap().heartbeats;
    eventually("a few more heartbeats", || {
        let p = plane.lock().unwrap();
        (p.heartbeats >= seen + 5).then_some(())
    })
    .await;
    {
        let p = plane.lock().unwrap();
        assert!(!p.last.iter().any(|s| s.task == "bad.1"), "{:?}", p.last);
    }
    assert_eq!(read(&dir.path().join("sandboxes/bad/bad.1/runs")), "run\n");

    // Removing web.1 from the desired set kills its whole process group.
    let sh = eventually("sh.pid", || read_pid(&sandbox.join("sh.pid"))).await;
    let child = eventually("child.pid", || read_pid(&sandbox.join("child.pid"))).await;
    assert!(alive(sh) && alive(child));
    plane.lock().unwrap().desired.retain(|s| s.task != "web.1");
    let killed = eventually("web.1 killed", || {
        status_of(&plane.lock().unwrap(), "web.1", "TASK_KILLED")
    })
    .await;
    assert!(killed.exit_code.is_some());
    eventually("group gone", || (!alive(sh) && !alive(child)).then_some(())).await;

    // The agent forgotten by the scheduler (404 on heartbeat) registers again.
    plane.lock().unwrap().known = false;
    eventually("re-registration", || {
        (plane.lock().unwrap().registrations.len() >= 2).then_some(())
    })
    .await;

    // Shutdown kills what still runs and returns once it is reaped.
    plane.lock().unwrap().desired.push(spec(
        "late",
        "late.1",
        "echo $$ > sh.pid; trap '' TERM; sleep 300 & echo $! > child.pid; wait",
        0,
    ));
    let late = dir.path().join("sandboxes/late/late.1");
    let (lsh, lchild) = eventually("late.1 started", || {
        Some((
            read_pid(&late.join("sh.pid"))?,
            read_pid(&late.join("child.pid"))?,
        ))
    })
    .await;
    // Regression (flaked under load): the task's own files can appear before the
    // node has added it to its running set, so wait for the gauge instead of
    // reading it once.
    eventually("late.1 counted as running", || {
        node.metrics()
            .contains("sandtrail_node_tasks_running{host=\"node-1\"} 1")
            .then_some(())
    })
    .await;
    cancel.cancel();
    tokio::time::timeout(DEADLINE, runner)
        .await
        .expect("node stops in time")
        .unwrap()
        .unwrap();
    // SIGKILL is delivered asynchronously: the group may take a moment to vanish
    // (this assertion raced under load before).
    eventually("shutdown leaves no process behind", || {
        (!alive(lsh) && !alive(lchild)).then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------
// Router

async fn echo(State(name): State<&'static str>, req: Request) -> Json<Value> {
    let (traceparent, request_id, caller) = {
        let header = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        (
            header("traceparent"),
            header("x-request-id"),
            header("x-sandtrail-caller"),
        )
    };
    let path = req.uri().path_and_query().map(|p| p.to_string());
    let method = req.method().to_string();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap();
    Json(json!({
        "name": name,
        "traceparent": traceparent,
        "request_id": request_id,
        "caller_header": caller,
        "path": path,
        "method": method,
        "body": String::from_utf8_lossy(&body),
    }))
}

async fn services(
    State(eps): State<Arc<BTreeMap<String, Vec<ServiceEndpoint>>>>,
    UrlPath(app): UrlPath<String>,
) -> axum::response::Response {
    match eps.get(&app) {
        Some(list) => Json(list.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, "unknown app").into_response(),
    }
}

fn endpoint(app: &str, task: &str, host: &str, addr: SocketAddr) -> ServiceEndpoint {
    ServiceEndpoint {
        app: app.into(),
        task: task.into(),
        host: host.into(),
        address: addr.ip().to_string(),
        port: addr.port(),
        instance: 0,
    }
}

struct RouterFixture {
    router: Proxy,
    base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

async fn router_fixture() -> RouterFixture {
    let a = serve(axum::Router::new().fallback(echo).with_state("up-a")).await;
    let b = serve(axum::Router::new().fallback(echo).with_state("up-b")).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let eps = BTreeMap::from([
        (
            "echo".to_string(),
            vec![
                endpoint("echo", "echo.a", "node-a", a),
                endpoint("echo", "echo.b", "node-b", b),
            ],
        ),
        (
            "half".to_string(),
            vec![
                endpoint("half", "half.dead", "node-x", dead),
                endpoint("half", "half.live", "node-a", a),
            ],
        ),
        ("empty".to_string(), vec![]),
    ]);
    RouterFixture::start(eps).await
}

impl RouterFixture {
    /// A router `r1` whose control plane answers `/v1/services/{app}` from `eps`.
    async fn start(eps: BTreeMap<String, Vec<ServiceEndpoint>>) -> RouterFixture {
        let plane = serve(
            axum::Router::new()
                .route("/v1/services/{app}", get(services))
                .with_state(Arc::new(eps)),
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("router/access.log");
        let router = Proxy::new(ProxyConfig::new("r1", format!("http://{plane}"), &log)).unwrap();
        let addr = serve(router.axum_router()).await;
        RouterFixture {
            router,
            base: format!("http://{addr}"),
            log,
            _dir: dir,
        }
    }
}

struct Answer {
    status: u16,
    trace_header: Option<String>,
    body: Value,
}

async fn call(base: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let client = reqwest::Client::new();
    let mut req = client.get(format!("{base}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let trace_header = resp
        .headers()
        .get(protocol::TRACE_ID_HEADER)
        .map(|v| v.to_str().unwrap().to_string());
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        trace_header,
        body,
    }
}

/// (trace, span) of the traceparent the upstream saw.
fn seen_traceparent(body: &Value) -> (String, String) {
    let tp = body["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("upstream saw no traceparent: {body}"));
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!((parts[0], parts[3]), ("00", "01"), "{tp}");
    (parts[1].to_string(), parts[2].to_string())
}

fn access_records(log: &Path, n: usize) -> Option<Vec<LogRecord>> {
    let text = read(log);
    if text.lines().count() < n {
        return None;
    }
    Some(
        text.lines()
            .map(|l| serde_json::from_str(l).expect("access line parses"))
            .collect(),
    )
}

#[tokio::test]
async fn router_spreads_calls_propagates_traces_and_writes_access_records() {
    let fx = router_fixture().await;
    let mut calls = 0;

    // Spread across both instances; each call gets its own trace.
    let mut names = Vec::new();
    let mut traces = Vec::new();
    for i in 0..4 {
        let a = call(&fx.base, &format!("/echo/hi/{i}?x=1"), &[]).await;
        calls += 1;
        assert_eq!(a.status, 200);
        let (trace, _) = seen_traceparent(&a.body);
        assert_eq!(a.trace_header.as_deref(), Some(trace.as_str()));
        assert_eq!(a.body["path"], format!("/hi/{i}?x=1"));
        names.push(a.body["name"].as_str().unwrap().to_string());
        traces.push(trace);
    }
    assert!(
        names.iter().any(|n| n == "up-a") && names.iter().any(|n| n == "up-b"),
        "{names:?}"
    );
    traces.dedup();
    assert_eq!(traces.len(), 4);

    // An incoming traceparent is continued; x-request-id is kept.
    let (t, s) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let cont = call(
        &fx.base,
        "/echo/",
        &[
            ("traceparent", &format!("00-{t}-{s}-01")),
            ("x-request-id", "req-42"),
        ],
    )
    .await;
    calls += 1;
    let (seen_trace, minted) = seen_traceparent(&cont.body);
    assert_eq!(seen_trace, t);
    assert_ne!(minted, s);
    assert_eq!(cont.trace_header.as_deref(), Some(t));
    assert_eq!(cont.body["request_id"], "req-42");
    assert_eq!(cont.body["path"], "/");

    // The upstream calls back through the router with the traceparent it received: it
    // is recognised as the caller from the span map alone.
    let first_host = if cont.body["name"] == "up-a" {
        "node-a"
    } else {
        "node-b"
    };
    let first_task = if cont.body["name"] == "up-a" {
        "echo.a"
    } else {
        "echo.b"
    };
    let nested_tp = cont.body["traceparent"].as_str().unwrap().to_string();
    let nested = call(&fx.base, "/echo/nested", &[("traceparent", &nested_tp)]).await;
    calls += 1;
    assert_eq!(nested.status, 200);
    assert_eq!(seen_traceparent(&nested.body).0, t);

    // A caller that names itself.
    let named = call(
        &fx.base,
        "/echo/named",
        &[("x-sandtrail-caller", "fib.0f3c")],
    )
    .await;
    calls += 1;
    assert_eq!(
        named.body["caller_header"],
        Value::Null,
        "caller header is not forwarded"
    );

    // Unknown app, app without instances, one dead instance.
    let unknown = call(&fx.base, "/nope/x", &[]).await;
    calls += 1;
    assert_eq!(unknown.status, 404);
    assert!(unknown
        .trace_header
        .as_deref()
        .is_some_and(|t| t.len() == 32));
    assert!(unknown.body["message"].as_str().unwrap().contains("nope"));
    let empty = call(&fx.base, "/empty/x", &[]).await;
    calls += 1;
    assert_eq!(empty.status, 503);
    assert!(empty.trace_header.is_some());
    for _ in 0..4 {
        let half = call(&fx.base, "/half/x", &[]).await;
        calls += 1;
        assert_eq!(half.status, 200, "{}", half.body);
        assert_eq!(half.body["name"], "up-a");
    }
    let metrics = fx.router.metrics();
    assert!(
        !metrics.contains("sandtrail_router_retries_total{host=\"r1\"} 0"),
        "{metrics}"
    );

    // A POST body reaches the instance.
    let resp = reqwest::Client::new()
        .post(format!("{}/echo/post", fx.base))
        .body("ping")
        .send()
        .await
        .unwrap();
    calls += 1;
    let posted: Value = resp.json().await.unwrap();
    assert_eq!(
        (posted["method"].as_str(), posted["body"].as_str()),
        (Some("POST"), Some("ping"))
    );

    // One access record per call.
    let recs = eventually("access records", || access_records(&fx.log, calls)).await;
    fx.router.shutdown().await;
    assert_eq!(recs.len(), calls);
    for r in &recs {
        assert_eq!(r.stream, Stream::Access);
        assert!(r.latency_ms.unwrap() > 0.0);
        assert_eq!(r.fields["router_host"], "r1");
        assert!(r.source.is_empty() && r.offset == 0);
    }
    let by_path = |p: &str| -> &LogRecord {
        recs.iter()
            .find(|r| r.path.as_deref() == Some(p))
            .unwrap_or_else(|| panic!("no record for {p}"))
    };
    let first = by_path("/echo/hi/0");
    assert_eq!(first.method.as_deref(), Some("GET"));
    assert_eq!(first.status, Some(200));
    assert_eq!(first.app, "echo");
    assert!(
        first.host == "node-a" || first.host == "node-b",
        "{first:?}"
    );
    assert_eq!(
        first.task,
        if first.host == "node-a" {
            "echo.a"
        } else {
            "echo.b"
        }
    );
    assert_eq!(first.peer_app.as_deref(), Some("external"));
    assert_eq!(first.peer_host.as_deref(), Some("127.0.0.1"));
    assert!(first.fields["bytes"].as_u64().unwrap() > 0);
    assert!(
        first.msg.starts_with("GET /echo/hi/0 -> 200 node-"),
        "{}",
        first.msg
    );

    let c = by_path("/echo/");
    assert_eq!(c.trace_id.as_deref(), Some(t));
    assert_eq!(c.parent_span_id.as_deref(), Some(s));
    assert_eq!(c.span_id.as_deref(), Some(minted.as_str()));

    let n = by_path("/echo/nested");
    assert_eq!(n.peer_app.as_deref(), Some("echo"));
    assert_eq!(n.peer_host.as_deref(), Some(first_host));
    assert_eq!(n.fields["caller_task"], first_task);
    assert_eq!(n.parent_span_id.as_deref(), Some(minted.as_str()));

    let named = by_path("/echo/named");
    assert_eq!(named.peer_app.as_deref(), Some("fib"));
    assert_eq!(named.fields["caller_task"], "fib.0f3c");

    let u = by_path("/nope/x");
    assert_eq!(u.status, Some(404));
    assert_eq!(u.level, Some(protocol::Level::Warn));
    assert_eq!(u.trace_id, unknown.trace_header);
    assert_eq!(by_path("/empty/x").level, Some(protocol::Level::Error));
    let half = by_path("/half/x");
    assert_eq!(
        (half.host.as_str(), half.task.as_str()),
        ("node-a", "half.live")
    );
}

fn check(protocol: &str) -> HealthCheck {
    HealthCheck {
        protocol: protocol.into(),
        path: None,
        port_index: 0,
        port: None,
        command: None,
        grace_period_seconds: 0.0,
        interval_seconds: 0.05,
        timeout_seconds: 1.0,
        max_consecutive_failures: 3,
    }
}

fn health_of(p: &Plane, task: &str) -> Option<Vec<HealthResult>> {
    p.last
        .iter()
        .find(|s| s.task == task)
        .map(|s| s.health.clone())
}

#[tokio::test]
async fn node_runs_http_tcp_and_command_health_checks_and_reports_them() {
    let dir = tempfile::tempdir().unwrap();
    let (plane, url) = fake_plane().await;
    let mut cfg = NodeConfig::new("node-1", dir.path(), &url);
    cfg.heartbeat_interval = Duration::from_millis(50);
    cfg.kill_grace = Duration::from_secs(1);
    let node = Arc::new(Node::new(cfg).unwrap());

    // The HTTP check targets a fixed port served here, whose answer the test flips.
    let ok = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let http = {
        let ok = ok.clone();
        axum::Router::new().route(
            "/health",
            get(move || {
                let ok = ok.load(std::sync::atomic::Ordering::SeqCst);
                async move {
                    if ok {
                        StatusCode::OK
                    } else {
                        StatusCode::INTERNAL_SERVER_ERROR
                    }
                }
            }),
        )
    };
    let http_addr = serve(http).await;
    let mut http_check = check("HTTP");
    http_check.path = Some("/health".into());
    http_check.port = Some(http_addr.port());
    let tcp_check = check("TCP");
    let mut cmd_check = check("COMMAND");
    // Run as the task's user (the sandbox's owner), never as the node (issue 15).
    cmd_check.command = Some(r#"test -f ok && test "$(id -u)" = "$(stat -c %u .)""#.into());
    let mut task = spec("hc", "hc.1", "sleep 300", 1);
    task.health_checks = vec![http_check, tcp_check, cmd_check];
    plane.lock().unwrap().desired = vec![task];

    let cancel = CancellationToken::new();
    let runner = {
        let (node, cancel) = (node.clone(), cancel.clone());
        tokio::spawn(async move { node.run(cancel).await })
    };
    // HTTP passes; nothing listens on PORT0 and there is no `ok` file yet: both fail
    // and count (no grace period).
    let (port, health) = eventually("first results", || {
        let p = plane.lock().unwrap();
        let h = health_of(&p, "hc.1")?;
        let st = p.last.iter().find(|s| s.task == "hc.1")?;
        (h.len() == 3
            && h[0].alive
            && h[1].consecutive_failures >= 2
            && h[2].consecutive_failures >= 2)
            .then(|| (st.ports[0], h))
    })
    .await;
    assert_eq!(plane.lock().unwrap().last[0].instance, Some(1));
    assert!(
        health[1]
            .last_failure_cause
            .as_deref()
            .unwrap()
            .contains("connect"),
        "{health:?}"
    );
    assert!(!health[2].alive);

    // Make the TCP and COMMAND checks pass, and the HTTP one fail.
    let _listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::fs::write(dir.path().join("sandboxes/hc/hc.1/ok"), "").unwrap();
    ok.store(false, std::sync::atomic::Ordering::SeqCst);
    let health = eventually("checks flip", || {
        let h = health_of(&plane.lock().unwrap(), "hc.1")?;
        (!h[0].alive && h[0].consecutive_failures >= 1 && h[1].alive && h[2].alive).then_some(h)
    })
    .await;
    assert!(
        health[0]
            .last_failure_cause
            .as_deref()
            .unwrap()
            .contains("status 500"),
        "{health:?}"
    );
    assert!(health[1].first_success.is_some() && health[1].consecutive_failures == 0);

    cancel.cancel();
    runner.await.unwrap().unwrap();
}

#[tokio::test]
async fn tasks_outlive_a_node_restart_and_are_found_again() {
    let dir = tempfile::tempdir().unwrap();
    let (plane, url) = fake_plane().await;
    let node_cfg = || {
        let mut cfg = NodeConfig::new("node-1", dir.path(), &url);
        cfg.heartbeat_interval = Duration::from_millis(50);
        cfg.kill_grace = Duration::from_secs(1);
        cfg.keep_tasks_on_shutdown = true;
        cfg
    };
    let cmd = "echo $$ > sh.pid; echo started >> starts; exec sleep 300";
    let mut keep = spec("keep", "keep.1", cmd, 1);
    keep.instance = 4;
    // An adopted task's COMMAND check runs as the task's user too (issue 15).
    let mut as_task = check("COMMAND");
    as_task.command = Some(r#"test "$(id -u)" = "$(stat -c %u .)""#.into());
    keep.health_checks = vec![as_task];
    plane.lock().unwrap().desired = vec![keep.clone(), spec("gone", "gone.1", cmd, 0)];

    let node = Arc::new(Node::new(node_cfg()).unwrap());
    let cancel = CancellationToken::new();
    let runner = {
        let (node, cancel) = (node.clone(), cancel.clone());
        tokio::spawn(async move { node.run(cancel).await })
    };
    let keep_dir = dir.path().join("sandboxes/keep/keep.1");
    let gone_dir = dir.path().join("sandboxes/gone/gone.1");
    let (keep_pid, gone_pid) = eventually("both started", || {
        Some((
            read_pid(&keep_dir.join("sh.pid"))?,
            read_pid(&gone_dir.join("sh.pid"))?,
        ))
    })
    .await;
    let ports = eventually("keep.1 reported", || {
        status_of(&plane.lock().unwrap(), "keep.1", "TASK_RUNNING").map(|s| s.ports)
    })
    .await;
    cancel.cancel();
    runner.await.unwrap().unwrap();
    assert!(
        alive(keep_pid) && alive(gone_pid),
        "the node stopped without killing its tasks"
    );

    // One task ends while no node runs.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gone_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually("gone.1 dead", || (!alive(gone_pid)).then_some(())).await;
    plane.lock().unwrap().reports.clear();

    let node = Arc::new(Node::new(node_cfg()).unwrap());
    let cancel = CancellationToken::new();
    let runner = {
        let (node, cancel) = (node.clone(), cancel.clone());
        tokio::spawn(async move { node.run(cancel).await })
    };
    let found = eventually("keep.1 reported by the new node", || {
        status_of(&plane.lock().unwrap(), "keep.1", "TASK_RUNNING")
    })
    .await;
    assert_eq!(found.ports, ports);
    assert_eq!(found.instance, Some(4), "the instance number survives");
    eventually("keep.1's check passing under the new node", || {
        let h = health_of(&plane.lock().unwrap(), "keep.1")?;
        h.first().is_some_and(|h| h.alive).then_some(())
    })
    .await;
    let failed = eventually("gone.1 reported as failed", || {
        status_of(&plane.lock().unwrap(), "gone.1", "TASK_FAILED")
    })
    .await;
    assert!(failed.message.unwrap().contains("while the node was down"));
    assert_eq!(
        read(&keep_dir.join("starts")),
        "started\n",
        "not launched twice"
    );
    assert_eq!(read_pid(&keep_dir.join("sh.pid")), Some(keep_pid));

    // The adopted task is still under control: no longer wanted, it is killed.
    plane.lock().unwrap().desired.clear();
    eventually("keep.1 killed", || {
        status_of(&plane.lock().unwrap(), "keep.1", "TASK_KILLED")
    })
    .await;
    eventually("keep.1 process gone", || (!alive(keep_pid)).then_some(())).await;
    // Removed just after the kill is reported (on a blocking thread).
    eventually("keep.1 pid file removed", || {
        (!keep_dir.join(scheduler::node::PID_FILE).exists()).then_some(())
    })
    .await;
    cancel.cancel();
    runner.await.unwrap().unwrap();
}

/// Regression: launches were reported only on the heartbeat after the next interval,
/// which put a whole interval into every deployment and every replacement of a lost
/// agent's tasks (issue 5's agent-loss benchmark missed "timeout + 2 s" by that).
#[tokio::test]
async fn node_reports_launches_without_waiting_a_heartbeat_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (plane, url) = fake_plane().await;
    let mut cfg = NodeConfig::new("node-1", dir.path(), &url);
    // Far longer than the deadline below: only the immediate report can pass.
    cfg.heartbeat_interval = Duration::from_secs(60);
    cfg.kill_grace = Duration::from_secs(2);
    let node = Arc::new(Node::new(cfg).unwrap());
    plane.lock().unwrap().desired = vec![spec("app", "app.1", "sleep 300", 0)];

    let cancel = CancellationToken::new();
    let runner = {
        let (node, cancel) = (node.clone(), cancel.clone());
        tokio::spawn(async move { node.run(cancel).await })
    };
    let end = Instant::now() + Duration::from_secs(10);
    let reported = loop {
        if status_of(&plane.lock().unwrap(), "app.1", "TASK_RUNNING").is_some() {
            break true;
        }
        if Instant::now() > end {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    cancel.cancel();
    runner.await.unwrap().unwrap();
    assert!(
        reported,
        "TASK_RUNNING not reported before the next heartbeat interval"
    );
    // One heartbeat fetched the task, the next one reported it; then it waits.
    assert_eq!(plane.lock().unwrap().heartbeats, 2);
}

/// Issue 14: the shipper's back-pressure reaches the scheduler in the heartbeat, read
/// afresh each time from the installed hook; a node without a hook sends none.
#[tokio::test]
async fn heartbeat_carries_the_shipper_status_from_the_hook() {
    let run_node = |hook: Option<scheduler::node::ShipperStatusFn>| async move {
        let dir = tempfile::tempdir().unwrap();
        let (plane, url) = fake_plane().await;
        let mut cfg = NodeConfig::new("node-1", dir.path(), &url);
        cfg.heartbeat_interval = Duration::from_millis(20);
        let node = Arc::new(Node::new(cfg).unwrap());
        if let Some(hook) = hook {
            node.set_shipper_status(hook);
        }
        let cancel = CancellationToken::new();
        let runner = {
            let (node, cancel) = (node.clone(), cancel.clone());
            tokio::spawn(async move { node.run(cancel).await })
        };
        eventually("three heartbeats", || {
            (plane.lock().unwrap().heartbeats >= 3).then_some(())
        })
        .await;
        cancel.cancel();
        runner.await.unwrap().unwrap();
        let shippers = std::mem::take(&mut plane.lock().unwrap().shippers);
        shippers
    };

    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let hook: scheduler::node::ShipperStatusFn = {
        let calls = calls.clone();
        Arc::new(move || ShipperStatus {
            spool_bytes: calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1,
            spool_max_bytes: 1 << 30,
            reading_paused: true,
            ..ShipperStatus::default()
        })
    };
    let seen = run_node(Some(hook)).await;
    assert!(seen.len() >= 3, "{seen:?}");
    let spooled: Vec<u64> = seen
        .iter()
        .map(|s| {
            let s = s.as_ref().expect("every heartbeat carries the shipper");
            assert!(s.reading_paused && s.spool_max_bytes == 1 << 30, "{s:?}");
            s.spool_bytes
        })
        .collect();
    // Read once per heartbeat, so each one carries newer figures.
    assert!(spooled.windows(2).all(|w| w[0] < w[1]), "{spooled:?}");

    let seen = run_node(None).await;
    assert!(seen.iter().all(Option::is_none), "{seen:?}");
}

#[tokio::test]
async fn task_gets_its_assigned_host_ports_and_marathon_port_variables() {
    let dir = tempfile::tempdir().unwrap();
    let (plane, url) = fake_plane().await;
    let mut cfg = NodeConfig::new("node-1", dir.path(), &url);
    cfg.heartbeat_interval = Duration::from_millis(50);
    cfg.kill_grace = Duration::from_secs(2);
    let node = Arc::new(Node::new(cfg).unwrap());

    // A port free right now for the fixed one, and one held open by this test for a
    // second task that asks for it.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_port = held.local_addr().unwrap().port();
    let labels = |fixed: u16| {
        vec![
            protocol::PortLabel {
                port: fixed,
                name: "http".into(),
            },
            protocol::PortLabel {
                port: 0,
                name: "admin-ui".into(),
            },
        ]
    };
    let mut web = spec(
        "web",
        "web.1",
        &format!(
            "echo \"$PORT_HTTP $PORT_ADMIN_UI $PORT0 $PORT1 $PORT $PORTS $PORT_{free}\" > env.txt; sleep 300"
        ),
        2,
    );
    web.ports = vec![free, 0];
    web.port_definitions = labels(free);
    let mut blocked = spec("blocked", "blocked.1", "sleep 300", 2);
    blocked.ports = vec![held_port, 0];
    blocked.port_definitions = labels(held_port);
    plane.lock().unwrap().desired = vec![web, blocked];

    let cancel = CancellationToken::new();
    let runner = {
        let (node, cancel) = (node.clone(), cancel.clone());
        tokio::spawn(async move { node.run(cancel).await })
    };
    let sandbox = dir.path().join("sandboxes/web/web.1");
    let env = eventually("env.txt", || {
        let e = read(&sandbox.join("env.txt"));
        e.ends_with('\n').then_some(e)
    })
    .await;
    let meta: TaskMeta = serde_json::from_str(&read(&sandbox.join("task.json"))).unwrap();
    assert_eq!(meta.ports[0], free, "the assigned host port is used as is");
    let dynamic = meta.ports[1];
    assert!(dynamic != 0 && dynamic != free);
    assert_eq!(
        env,
        format!("{free} {dynamic} {free} {dynamic} {free} {free},{dynamic} {free}\n")
    );
    // The held port fails the launch with a message naming it, rather than a task
    // that dies on its own bind.
    let failed = eventually("blocked.1 failed", || {
        status_of(&plane.lock().unwrap(), "blocked.1", "TASK_FAILED")
    })
    .await;
    let message = failed.message.unwrap_or_default();
    assert!(
        message.contains(&format!("host port {held_port} cannot be bound")),
        "{message}"
    );
    drop(held);
    cancel.cancel();
    runner.await.unwrap().unwrap();
}

/// Counts the request body as it streams in, then answers with a chunked body of
/// four 64 KiB chunks (no content-length).
async fn count_and_stream(req: Request) -> axum::response::Response {
    use futures::StreamExt;
    let mut got = 0usize;
    let mut body = req.into_body().into_data_stream();
    while let Some(chunk) = body.next().await {
        got += chunk.unwrap().len();
    }
    let chunks = futures::stream::iter(
        (0..4).map(|i| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'a' + i; 64 << 10]))),
    );
    axum::response::Response::builder()
        .header("x-got", got.to_string())
        .body(axum::body::Body::from_stream(chunks))
        .unwrap()
}

#[tokio::test]
async fn router_streams_large_request_and_chunked_response_bodies_and_counts_them() {
    let up = serve(axum::Router::new().fallback(count_and_stream)).await;
    let f = RouterFixture::start(BTreeMap::from([(
        "big".to_string(),
        vec![endpoint("big", "big.1", "node-a", up)],
    )]))
    .await;

    // 3 MiB in 48 chunks without a length: past the retry buffer, so it streams.
    let sent = 3usize << 20;
    let chunks = futures::stream::iter(
        (0..48).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 64 << 10]))),
    );
    let resp = reqwest::Client::new()
        .post(format!("{}/big/upload", f.base))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-got"], sent.to_string().as_str());
    assert!(resp.headers().contains_key("x-trace-id"));
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), 4 * (64 << 10));
    assert_eq!(&body[(64 << 10) * 3..(64 << 10) * 3 + 2], b"dd");

    let recs = eventually("the access record", || access_records(&f.log, 1)).await;
    let r = &recs[0];
    assert_eq!(r.status, Some(200));
    assert_eq!(r.path.as_deref(), Some("/big/upload"));
    assert_eq!(r.fields["bytes"], json!(4 * (64 << 10)));
    assert_eq!(r.fields["upstream"], json!(up.to_string()));
    assert!(!r.fields.contains_key("error"), "{:?}", r.fields);
    f.router.shutdown().await;
}
