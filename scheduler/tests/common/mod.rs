//! What the node suites (`node_docker`, `node_limits`) share: a fake control plane
//! that hands the node its desired tasks and keeps every status it reports, a node
//! run in the test's runtime and stopped on demand, and [`eventually`].
//!
//! The plane is the two agent endpoints a node calls, nothing more, so a suite sees
//! exactly what the node reported; suites needing more of the scheduler (the router
//! tests) keep their own.

#![allow(dead_code)] // each suite uses a part

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::routing::post;
use axum::Json;
use protocol::{HeartbeatRequest, HeartbeatResponse, TaskSpec, TaskStatus};
use scheduler::node::Node;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Longest any awaited condition may take, under a loaded machine's slowness.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `cond` until it answers `Some`; panics naming `what` after [`DEADLINE`].
pub async fn eventually<T>(what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the fake plane wants run and what it was told.
#[derive(Default)]
pub struct Plane {
    pub desired: Vec<TaskSpec>,
    pub reports: Vec<TaskStatus>,
    /// What the node offered when it registered (`docker`, ...).
    pub containerizers: Vec<String>,
}

pub type Shared = Arc<Mutex<Plane>>;

async fn register(State(p): State<Shared>, Json(v): Json<Value>) -> Json<Value> {
    if let Some(c) = v.get("containerizers").and_then(Value::as_array) {
        p.lock().unwrap().containerizers = c
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect();
    }
    Json(json!({}))
}

async fn heartbeat(
    State(p): State<Shared>,
    UrlPath(_name): UrlPath<String>,
    Json(hb): Json<HeartbeatRequest>,
) -> Json<HeartbeatResponse> {
    let mut p = p.lock().unwrap();
    p.reports.extend(hb.tasks);
    Json(HeartbeatResponse {
        tasks: p.desired.clone(),
    })
}

/// The fake plane on a free port, and its URL for the node's config.
pub async fn fake_plane() -> (Shared, String) {
    let shared = Shared::default();
    let app = axum::Router::new()
        .route("/v1/agents/register", post(register))
        .route("/v1/agents/{name}/heartbeat", post(heartbeat))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (shared, format!("http://{addr}"))
}

/// The newest status reported for `task` that `pred` accepts.
pub fn report(p: &Shared, task: &str, pred: impl Fn(&TaskStatus) -> bool) -> Option<TaskStatus> {
    p.lock()
        .unwrap()
        .reports
        .iter()
        .rev()
        .find(|s| s.task == task && pred(s))
        .cloned()
}

/// A value of the node's `/metrics`, with or without labels.
pub fn metric(node: &Node, name: &str) -> Option<u64> {
    node.metrics()
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A node running in the test's runtime.
pub struct Running {
    pub node: Arc<Node>,
    cancel: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn spawn(node: Arc<Node>) -> Running {
        let cancel = CancellationToken::new();
        let handle = tokio::spawn({
            let (node, cancel) = (node.clone(), cancel.clone());
            async move { node.run(cancel).await.unwrap() }
        });
        Running {
            node,
            cancel,
            handle,
        }
    }

    /// Stops the node (which kills its tasks unless told to keep them).
    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(DEADLINE, self.handle)
            .await
            .expect("node stops")
            .unwrap();
    }
}
