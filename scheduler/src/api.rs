//! The control plane's face: the [`Scheduler`] handle (state, store, reconcile loop),
//! the validation of Marathon app JSON, and the HTTP API (a Marathon subset under
//! `/v2/`, the node protocol under `/v1/agents`, service discovery under
//! `/v1/services`).
//!
//! App JSON is validated by hand from a `serde_json::Value` rather than by a derived
//! `Deserialize`, because Marathon clients expect every problem of a definition listed
//! at once (serde stops at the first) and unknown fields named (so a typo such as
//! `instnces` is not silently dropped). The trade-off is more code per field; fields
//! Marathon knows but we do not act on yet are accepted and kept verbatim.

use crate::state::{app_key, AppDef, Now, PortDefinition, State, Task, TaskState};
use crate::store::Store;
use crate::{Error, Result};
use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::SecondsFormat;
use protocol::{AgentInfo, TaskSpec, TaskStatus, TOKEN_HEADER};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How the control plane runs.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// The state file lives in `<data_dir>/scheduler/state.json`.
    pub data_dir: PathBuf,
    /// When set (and not empty), write APIs and the agent endpoints require it in
    /// `x-sandtrail-token` or `Authorization: Bearer`.
    pub token: Option<String>,
    /// Heartbeat silence after which an agent is lost and its tasks are replaced.
    pub agent_timeout: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            data_dir: PathBuf::from("data"),
            token: None,
            agent_timeout: Duration::from_secs(10),
        }
    }
}

/// The node protocol's heartbeat request: every task the node runs now, and those
/// that ended since its last heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    #[serde(default)]
    pub tasks: Vec<TaskStatus>,
}

/// The heartbeat answer: every task the scheduler wants running on that agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub tasks: Vec<TaskSpec>,
}

struct Inner {
    config: SchedulerConfig,
    state: Mutex<State>,
    store: Store,
}

/// A cheap, cloneable handle on the control plane.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("state_file", &self.inner.store.path())
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Opens the control plane on `config.data_dir`, loading the saved apps. Reads one
    /// small file synchronously: call it at startup, not on a busy runtime.
    pub fn open(mut config: SchedulerConfig) -> Result<Scheduler> {
        if config.token.as_deref() == Some("") {
            warn!("empty cluster token configured; the scheduler api is not protected");
            config.token = None;
        }
        let dir = config.data_dir.join("scheduler");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let store = Store::new(dir.join("state.json"));
        let saved = store.load()?;
        info!(
            apps = saved.apps.len(),
            path = %store.path().display(),
            "scheduler state loaded"
        );
        let state = State::new(saved, config.agent_timeout, Now::current());
        Ok(Scheduler {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(state),
                store,
            }),
        })
    }

    /// Runs the reconcile loop (lost agents, staging timeouts, placement after
    /// back-offs) until `cancel` fires, then writes the state a last time.
    pub fn spawn(&self, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let period = (self.inner.config.agent_timeout / 4)
            .clamp(Duration::from_millis(20), Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => this.lock().reconcile(Now::current()),
                }
            }
            if let Err(e) = this.persist().await {
                error!(error = %e, "could not write the scheduler state at shutdown");
            }
            info!("scheduler reconcile loop stopped");
        })
    }

    /// Metrics in the Prometheus text format.
    pub fn metrics(&self) -> String {
        self.lock().metrics()
    }

    /// Runs `f` on the state under its lock (for in-process callers such as `up`).
    pub fn with_state<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock leaves consistent-enough data (every method keeps its
        // invariants step by step); refusing all further requests would be worse.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the current state if it changed; answers only once it is on disk.
    async fn persist(&self) -> Result<()> {
        let (generation, saved) = self.lock().snapshot();
        self.inner
            .store
            .save(generation, saved)
            .await
            .inspect_err(|e| {
                error!(error = %e, "could not write the scheduler state");
            })
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<()> {
        let Some(want) = &self.inner.config.token else {
            return Ok(());
        };
        let got = headers
            .get(TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .or_else(|| {
                headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
            });
        match got {
            Some(got) if constant_time_eq(got.trim().as_bytes(), want.as_bytes()) => Ok(()),
            _ => Err(Error::Unauthorized),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---------------------------------------------------------------------------
// Validation of Marathon app JSON
// ---------------------------------------------------------------------------

/// Fields this version reads.
const HANDLED_FIELDS: &[&str] = &[
    "id",
    "cmd",
    "args",
    "instances",
    "env",
    "cpus",
    "mem",
    "portDefinitions",
    "ports",
    "backoffSeconds",
    "backoffFactor",
    "maxLaunchDelaySeconds",
];

/// Marathon fields accepted and kept verbatim, not acted on yet.
const KEPT_FIELDS: &[&str] = &[
    "acceptedResourceRoles",
    "constraints",
    "container",
    "dependencies",
    "disk",
    "executor",
    "executorResources",
    "fetch",
    "gpus",
    "healthChecks",
    "ipAddress",
    "killSelection",
    "labels",
    "networks",
    "readinessChecks",
    "requirePorts",
    "residency",
    "resourceLimits",
    "role",
    "secrets",
    "storeUrls",
    "taskKillGracePeriodSeconds",
    "tty",
    "unreachableStrategy",
    "upgradeStrategy",
    "uris",
    "user",
];

/// Fields Marathon shows but that a client cannot set; accepted (so an app read from
/// `GET` can be sent back) and ignored.
const READ_ONLY_FIELDS: &[&str] = &[
    "version",
    "versionInfo",
    "tasksRunning",
    "tasksStaged",
    "tasksHealthy",
    "tasksUnhealthy",
    "deployments",
    "tasks",
    "lastTaskFailure",
    "taskStats",
    "readinessCheckResults",
];

const MAX_INSTANCES: i64 = 10_000;
const MAX_PORTS: usize = 100;

/// A bad value as shown in an error message, cut short so a huge value cannot flood it.
fn describe(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_ascii_lowercase().chars().collect();
    let b: Vec<char> = b.to_ascii_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn suggestion(field: &str) -> Option<&'static str> {
    HANDLED_FIELDS
        .iter()
        .chain(KEPT_FIELDS)
        .chain(READ_ONLY_FIELDS)
        .map(|k| (levenshtein(field, k), *k))
        .filter(|(d, k)| *d <= 2.min(k.len() / 3).max(1))
        .min()
        .map(|(_, k)| k)
}

/// Whether one segment of an app id is valid: lowercase letters, digits, `-` and `.`,
/// starting and ending with a letter or digit (Marathon's rule).
fn valid_segment(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.chars().all(|c| alnum(c) || c == '-' || c == '.')
        && s.starts_with(alnum)
        && s.ends_with(alnum)
}

/// Validates an app id and normalises it to a leading slash.
fn parse_id(raw: &str, problems: &mut Vec<String>) -> Option<String> {
    let trimmed = raw.strip_prefix('/').unwrap_or(raw);
    if trimmed.is_empty() {
        problems.push(format!(
            "id {raw:?} is empty: expected a name such as \"fib\" or \"/prod/fib\""
        ));
        return None;
    }
    if !trimmed.split('/').all(valid_segment) {
        problems.push(format!(
            "id {raw:?} is invalid: each /-separated part must be lowercase letters, digits, '-' or '.', starting and ending with a letter or digit"
        ));
        return None;
    }
    Some(format!("/{trimmed}"))
}

fn number(
    obj: &Map<String, Value>,
    key: &str,
    default: f64,
    min: f64,
    max: f64,
    problems: &mut Vec<String>,
) -> f64 {
    match obj.get(key) {
        None | Some(Value::Null) => default,
        Some(v) => match v.as_f64() {
            Some(n) if n.is_finite() && (min..=max).contains(&n) => n,
            _ => {
                problems.push(format!(
                    "{key} must be a number from {min} to {max}, got {}",
                    describe(v)
                ));
                default
            }
        },
    }
}

fn string_map(v: &Value, what: &str, problems: &mut Vec<String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(obj) = v.as_object() else {
        problems.push(format!(
            "{what} must be an object of strings, got {}",
            describe(v)
        ));
        return out;
    };
    for (k, val) in obj {
        match val.as_str() {
            Some(s) => {
                out.insert(k.clone(), s.to_string());
            }
            None => problems.push(format!(
                "{what}.{k} must be a string, got {}",
                describe(val)
            )),
        }
    }
    out
}

fn port_number(v: &Value, what: &str, problems: &mut Vec<String>) -> u16 {
    match v.as_u64().and_then(|n| u16::try_from(n).ok()) {
        Some(p) => p,
        None => {
            problems.push(format!(
                "{what} must be a port number from 0 to 65535, got {}",
                describe(v)
            ));
            0
        }
    }
}

fn port_definitions(obj: &Map<String, Value>, problems: &mut Vec<String>) -> Vec<PortDefinition> {
    let defs = obj.get("portDefinitions").filter(|v| !v.is_null());
    let ports = obj.get("ports").filter(|v| !v.is_null());
    let non_empty = |v: Option<&Value>| v.and_then(Value::as_array).is_some_and(|a| !a.is_empty());
    if non_empty(defs) && non_empty(ports) {
        problems.push("ports and portDefinitions are mutually exclusive: give one of them".into());
    }
    let mut out = Vec::new();
    if let Some(v) = defs {
        let Some(arr) = v.as_array() else {
            problems.push(format!(
                "portDefinitions must be a list, got {}",
                describe(v)
            ));
            return out;
        };
        for (i, d) in arr.iter().enumerate() {
            let what = format!("portDefinitions[{i}]");
            let Some(d) = d.as_object() else {
                problems.push(format!("{what} must be an object, got {}", describe(d)));
                continue;
            };
            let mut def = PortDefinition {
                port: 0,
                protocol: "tcp".into(),
                name: None,
                labels: BTreeMap::new(),
            };
            for (k, val) in d {
                match k.as_str() {
                    "port" => def.port = port_number(val, &format!("{what}.port"), problems),
                    "protocol" => match val.as_str() {
                        Some(p @ ("tcp" | "udp" | "udp,tcp" | "tcp,udp")) => {
                            def.protocol = p.into()
                        }
                        _ => problems.push(format!(
                            "{what}.protocol must be \"tcp\", \"udp\" or \"udp,tcp\", got {}",
                            describe(val)
                        )),
                    },
                    "name" => match val.as_str() {
                        Some(n) => def.name = Some(n.into()),
                        None => problems.push(format!(
                            "{what}.name must be a string, got {}",
                            describe(val)
                        )),
                    },
                    "labels" => def.labels = string_map(val, &format!("{what}.labels"), problems),
                    other => problems.push(format!(
                        "{what}: unknown field {other:?}, expected port, protocol, name or labels"
                    )),
                }
            }
            out.push(def);
        }
    } else if let Some(v) = ports {
        let Some(arr) = v.as_array() else {
            problems.push(format!(
                "ports must be a list of port numbers, got {}",
                describe(v)
            ));
            return out;
        };
        for (i, p) in arr.iter().enumerate() {
            out.push(PortDefinition {
                port: port_number(p, &format!("ports[{i}]"), problems),
                protocol: "tcp".into(),
                name: None,
                labels: BTreeMap::new(),
            });
        }
    } else {
        // Marathon's default: one dynamic port.
        out.push(PortDefinition {
            port: 0,
            protocol: "tcp".into(),
            name: None,
            labels: BTreeMap::new(),
        });
    }
    if out.len() > MAX_PORTS {
        problems.push(format!(
            "at most {MAX_PORTS} ports are supported, got {}",
            out.len()
        ));
    }
    out
}

/// Validates a Marathon app definition, listing every problem at once in
/// `Error::InvalidApp`. `path_id` is the id from the URL of a `PUT` (the body's `id`
/// must then match it, or be absent).
pub fn parse_app(
    body: &Value,
    path_id: Option<&str>,
    version: chrono::DateTime<chrono::Utc>,
) -> Result<AppDef> {
    let mut problems = Vec::new();
    let Some(obj) = body.as_object() else {
        return Err(Error::InvalidApp(vec![format!(
            "an app definition must be a json object, got {}",
            describe(body)
        )]));
    };

    let mut unknown: Vec<&String> = obj
        .keys()
        .filter(|k| {
            !HANDLED_FIELDS.contains(&k.as_str())
                && !KEPT_FIELDS.contains(&k.as_str())
                && !READ_ONLY_FIELDS.contains(&k.as_str())
        })
        .collect();
    unknown.sort();
    for k in unknown {
        match suggestion(k) {
            Some(s) => problems.push(format!("unknown field {k:?} (did you mean {s:?}?)")),
            None => problems.push(format!("unknown field {k:?}: not a marathon app field")),
        }
    }

    let path_given = path_id.is_some();
    let path_id = path_id.and_then(|p| parse_id(p, &mut problems));
    let body_id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => parse_id(s, &mut problems),
        Some(v) => {
            problems.push(format!("id must be a string, got {}", describe(v)));
            None
        }
    };
    let id = match (path_id, body_id) {
        (Some(p), Some(b)) if p != b => {
            problems.push(format!("id {b:?} does not match the app {p:?} in the path"));
            None
        }
        (Some(p), _) => Some(p),
        (None, Some(b)) => Some(b),
        (None, None) => {
            // An invalid id was reported already; only a missing one is left to report.
            if !path_given && obj.get("id").is_none_or(Value::is_null) {
                problems.push("id is required: a name such as \"fib\" or \"/prod/fib\"".into());
            }
            None
        }
    };

    let cmd = match obj.get("cmd") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(v) => {
            problems.push(format!(
                "cmd must be a non-empty shell command, got {}",
                describe(v)
            ));
            None
        }
    };
    let args = match obj.get("args") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => Some(
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect::<Vec<_>>(),
        ),
        Some(v) => {
            problems.push(format!(
                "args must be a non-empty list of strings, got {}",
                describe(v)
            ));
            None
        }
    };
    let has = |k: &str| obj.get(k).is_some_and(|v| !v.is_null());
    if has("cmd") && has("args") {
        problems.push("cmd and args are mutually exclusive: give one of them".into());
    } else if !has("cmd") && !has("args") {
        problems.push("cmd is required: the shell command that runs the app (or args)".into());
    }

    let instances = match obj.get("instances") {
        None | Some(Value::Null) => 1,
        Some(v) => match v.as_i64() {
            Some(n) if (0..=MAX_INSTANCES).contains(&n) => n as u32,
            Some(n) if n < 0 => {
                problems.push(format!("instances must be a non-negative integer, got {n}"));
                0
            }
            _ => {
                problems.push(format!(
                    "instances must be an integer from 0 to {MAX_INSTANCES}, got {}",
                    describe(v)
                ));
                0
            }
        },
    };

    let env = match obj.get("env") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(v) => {
            let env = string_map(v, "env", &mut problems);
            for k in env.keys() {
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    problems.push(format!(
                        "env name {k:?} is invalid: expected a name without '=' or NUL"
                    ));
                }
            }
            env
        }
    };

    let cpus = number(obj, "cpus", 0.1, 0.0, 1e6, &mut problems);
    let mem = number(obj, "mem", 128.0, 0.0, 1e12, &mut problems);
    let backoff_seconds = number(obj, "backoffSeconds", 1.0, 0.0, 86_400.0, &mut problems);
    let backoff_factor = number(obj, "backoffFactor", 1.15, 1.0, 1e6, &mut problems);
    let max_launch_delay_seconds = number(
        obj,
        "maxLaunchDelaySeconds",
        300.0,
        0.0,
        86_400.0,
        &mut problems,
    );
    let port_definitions = port_definitions(obj, &mut problems);
    if obj.get("requirePorts") == Some(&Value::Bool(true))
        && port_definitions.iter().any(|p| p.port != 0)
    {
        problems.push("requirePorts with fixed ports is not supported yet: host ports are always dynamic (PORT0..)".into());
    }

    let extra: BTreeMap<String, Value> = obj
        .iter()
        .filter(|(k, v)| KEPT_FIELDS.contains(&k.as_str()) && !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    match id {
        Some(id) if problems.is_empty() => Ok(AppDef {
            id,
            cmd,
            args,
            instances,
            env,
            cpus,
            mem,
            port_definitions,
            backoff_seconds,
            backoff_factor,
            max_launch_delay_seconds,
            extra,
            version,
        }),
        _ => Err(Error::InvalidApp(problems)),
    }
}

// ---------------------------------------------------------------------------
// JSON views
// ---------------------------------------------------------------------------

fn ts(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn task_json(state: &State, t: &Task) -> Value {
    let address = state
        .agent(&t.agent)
        .map(|a| a.address.clone())
        .unwrap_or_default();
    json!({
        "id": t.id,
        "appId": t.app,
        "host": t.agent,
        "ipAddresses": [{"ipAddress": address, "protocol": "IPv4"}],
        "ports": t.ports,
        "servicePorts": [],
        "slaveId": t.agent,
        "state": t.state.as_str(),
        "stagedAt": ts(t.staged_at),
        "startedAt": t.started_at.map(ts),
        "version": ts(t.version),
        "healthCheckResults": [],
        "instance": t.instance,
        "restarts": t.restarts,
    })
}

fn app_json(state: &State, def: &AppDef, with_tasks: bool) -> Value {
    let tasks = state.tasks_of(&def.id);
    let count = |s: TaskState| tasks.iter().filter(|t| t.state == s).count();
    let mut v = serde_json::to_value(def).unwrap_or_else(|_| json!({}));
    if let Some(obj) = v.as_object_mut() {
        obj.insert("version".into(), json!(ts(def.version)));
        obj.insert("tasksRunning".into(), json!(count(TaskState::Running)));
        obj.insert(
            "tasksStaged".into(),
            json!(count(TaskState::Staging) + count(TaskState::Starting)),
        );
        obj.insert("tasksHealthy".into(), json!(0));
        obj.insert("tasksUnhealthy".into(), json!(0));
        obj.insert("deployments".into(), json!([]));
        if with_tasks {
            obj.insert(
                "tasks".into(),
                Value::Array(tasks.iter().map(|t| task_json(state, t)).collect()),
            );
        }
    }
    v
}

/// The definition part of an app (what a `PUT` body is merged onto).
fn definition_json(def: &AppDef) -> Map<String, Value> {
    let mut v = match serde_json::to_value(def) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    v.remove("version");
    if def.cmd.is_none() {
        v.remove("cmd");
    }
    v
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// The scheduler's HTTP API (without `/healthz` and `/metrics`, which the binary adds).
pub fn router(scheduler: Scheduler) -> Router {
    Router::new()
        .route("/v2/apps", get(list_apps).post(create_app))
        .route(
            "/v2/apps/{*id}",
            get(get_app).put(put_app).delete(delete_app),
        )
        .route("/v2/tasks", get(list_tasks))
        .route("/v2/info", get(info))
        .route("/ping", get(ping))
        .route("/v1/agents", get(list_agents))
        .route("/v1/agents/register", post(register_agent))
        .route("/v1/agents/{name}/heartbeat", post(heartbeat))
        .route("/v1/services/{*app}", get(services))
        .with_state(scheduler)
}

fn parse_json(body: &Bytes) -> Result<Value> {
    serde_json::from_slice(body)
        .map_err(|e| Error::BadRequest(format!("request body is not valid json: {e}")))
}

fn deployment(version: chrono::DateTime<chrono::Utc>) -> Value {
    json!({"version": ts(version), "deploymentId": uuid::Uuid::new_v4().to_string()})
}

async fn create_app(
    AxState(s): AxState<Scheduler>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    s.authorize(&headers)?;
    let body = parse_json(&body)?;
    let now = Now::current();
    let def = parse_app(&body, None, now.wall_millis())?;
    let out = {
        let mut st = s.lock();
        let def = st.create_app(def, now)?;
        app_json(&st, &def, false)
    };
    s.persist().await?;
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

#[derive(Debug, Deserialize)]
struct AppsQuery {
    id: Option<String>,
    cmd: Option<String>,
    embed: Option<String>,
}

async fn list_apps(AxState(s): AxState<Scheduler>, Query(q): Query<AppsQuery>) -> Json<Value> {
    let with_tasks = q.embed.as_deref().is_some_and(|e| e.contains("tasks"));
    let st = s.lock();
    let apps: Vec<Value> = st
        .apps()
        .filter(|a| q.id.as_deref().is_none_or(|id| a.id.contains(id)))
        .filter(|a| q.cmd.as_deref().is_none_or(|c| a.command().contains(c)))
        .map(|a| app_json(&st, a, with_tasks))
        .collect();
    Json(json!({ "apps": apps }))
}

async fn get_app(AxState(s): AxState<Scheduler>, Path(id): Path<String>) -> Result<Json<Value>> {
    let st = s.lock();
    if let Some(def) = st.app(&id) {
        return Ok(Json(json!({ "app": app_json(&st, def, true) })));
    }
    // `/v2/apps/{id}/tasks` cannot be a route next to the wildcard, so it lands here.
    if let Some(app) = id.trim_end_matches('/').strip_suffix("/tasks") {
        if st.app(app).is_some() {
            let tasks: Vec<Value> = st.tasks_of(app).iter().map(|t| task_json(&st, t)).collect();
            return Ok(Json(json!({ "tasks": tasks })));
        }
    }
    Err(Error::UnknownApp(app_key(&id)))
}

async fn put_app(
    AxState(s): AxState<Scheduler>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    s.authorize(&headers)?;
    let body = parse_json(&body)?;
    let Some(patch) = body.as_object() else {
        return Err(Error::InvalidApp(vec![format!(
            "an app definition must be a json object, got {}",
            describe(&body)
        )]));
    };
    let now = Now::current();
    // Marathon's PUT is a partial update: the fields given replace the stored ones.
    let existing = s.lock().app(&id).map(definition_json);
    let merged = match existing {
        Some(mut base) => {
            for (k, v) in patch {
                base.insert(k.clone(), v.clone());
            }
            Value::Object(base)
        }
        None => body.clone(),
    };
    let def = parse_app(&merged, Some(&id), now.wall_millis())?;
    let version = def.version;
    let created = s.lock().put_app(def, now)?;
    s.persist().await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(deployment(version))).into_response())
}

async fn delete_app(
    AxState(s): AxState<Scheduler>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    s.authorize(&headers)?;
    s.lock().delete_app(&id)?;
    s.persist().await?;
    Ok(Json(deployment(Now::current().wall_millis())))
}

#[derive(Debug, Deserialize)]
struct TasksQuery {
    status: Option<String>,
}

async fn list_tasks(
    AxState(s): AxState<Scheduler>,
    Query(q): Query<TasksQuery>,
) -> Result<Json<Value>> {
    let want = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            TaskState::parse(&format!("TASK_{}", s.to_ascii_uppercase()))
                .or_else(|| TaskState::parse(s))
                .ok_or_else(|| {
                    Error::BadRequest(format!(
                        "status {s:?} is not a task state: expected running, staging, starting or killing"
                    ))
                })?,
        ),
    };
    let st = s.lock();
    let tasks: Vec<Value> = st
        .tasks()
        .filter(|t| want.is_none_or(|w| t.state == w))
        .map(|t| task_json(&st, t))
        .collect();
    Ok(Json(json!({ "tasks": tasks })))
}

async fn info(headers: HeaderMap) -> Json<Value> {
    let leader = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    Json(json!({
        "name": "sandtrail",
        "version": env!("CARGO_PKG_VERSION"),
        "leader": leader,
        "elected": true,
        "frameworkId": "sandtrail",
    }))
}

async fn ping() -> &'static str {
    "pong"
}

async fn list_agents(AxState(s): AxState<Scheduler>) -> Json<Vec<AgentInfo>> {
    Json(s.lock().agents())
}

async fn register_agent(
    AxState(s): AxState<Scheduler>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<AgentInfo>> {
    s.authorize(&headers)?;
    let info: AgentInfo = serde_json::from_slice(&body)?;
    let out = s.lock().register_agent(info, Now::current())?;
    s.persist().await?;
    Ok(Json(out))
}

async fn heartbeat(
    AxState(s): AxState<Scheduler>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<HeartbeatResponse>> {
    s.authorize(&headers)?;
    let req: HeartbeatRequest = if body.iter().all(u8::is_ascii_whitespace) {
        HeartbeatRequest::default()
    } else {
        serde_json::from_slice(&body)?
    };
    let tasks = s.lock().heartbeat(&name, req.tasks, Now::current())?;
    Ok(Json(HeartbeatResponse { tasks }))
}

async fn services(
    AxState(s): AxState<Scheduler>,
    Path(app): Path<String>,
) -> Result<Json<Vec<protocol::ServiceEndpoint>>> {
    Ok(Json(s.lock().services(&app)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v() -> chrono::DateTime<chrono::Utc> {
        "2026-11-23T10:00:00Z".parse().unwrap()
    }

    fn problems(body: Value) -> Vec<String> {
        match parse_app(&body, None, v()) {
            Err(Error::InvalidApp(p)) => p,
            other => panic!("expected invalid app, got {other:?}"),
        }
    }

    #[test]
    fn a_minimal_app_gets_marathon_defaults() {
        let def = parse_app(&json!({"id": "fib", "cmd": "./fib"}), None, v()).unwrap();
        assert_eq!(def.id, "/fib");
        assert_eq!(def.instances, 1);
        assert_eq!((def.cpus, def.mem), (0.1, 128.0));
        assert_eq!(def.port_count(), 1);
        assert_eq!(
            (
                def.backoff_seconds,
                def.backoff_factor,
                def.max_launch_delay_seconds
            ),
            (1.0, 1.15, 300.0)
        );
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let p = problems(json!({
            "id": "Bad_Id",
            "instnces": 2,
            "instances": -1,
            "env": {"OK": "yes", "N": 3},
            "cpus": "lots",
        }));
        let all = p.join("\n");
        assert_eq!(p.len(), 6, "{all}");
        assert!(
            all.contains("unknown field \"instnces\" (did you mean \"instances\"?)"),
            "{all}"
        );
        assert!(all.contains("id \"Bad_Id\" is invalid"), "{all}");
        assert!(all.contains("cmd is required"), "{all}");
        assert!(
            all.contains("instances must be a non-negative integer, got -1"),
            "{all}"
        );
        assert!(all.contains("env.N must be a string, got 3"), "{all}");
        assert!(
            all.contains("cpus must be a number from 0 to 1000000, got \"lots\""),
            "{all}"
        );
    }

    #[test]
    fn cpus_problem_is_reported_too() {
        let p = problems(json!({"id": "x", "cmd": "true", "cpus": "lots", "mem": -5}));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].contains("cpus must be a number") && p[0].contains("\"lots\""),
            "{p:?}"
        );
        assert!(p[1].contains("mem must be a number"), "{p:?}");
    }

    #[test]
    fn empty_id_and_missing_id_are_reported() {
        assert!(problems(json!({"id": "", "cmd": "x"}))[0].contains("is empty"));
        assert!(problems(json!({"id": "/", "cmd": "x"}))[0].contains("is empty"));
        assert!(problems(json!({"cmd": "x"}))[0].contains("id is required"));
        assert!(problems(json!({"id": "/a//b", "cmd": "x"}))[0].contains("invalid"));
        assert!(problems(json!({"id": "../etc", "cmd": "x"}))[0].contains("invalid"));
    }

    #[test]
    fn known_marathon_fields_are_accepted_and_kept() {
        let def = parse_app(
            &json!({
                "id": "/prod/fib", "cmd": "x",
                "labels": {"team": "a"}, "healthChecks": [{"protocol": "HTTP"}],
                "constraints": [["hostname", "UNIQUE"]],
                "tasksRunning": 3, "version": "2020-01-01T00:00:00Z"
            }),
            None,
            v(),
        )
        .unwrap();
        assert_eq!(def.id, "/prod/fib");
        assert!(def.extra.contains_key("labels") && def.extra.contains_key("constraints"));
        assert!(
            !def.extra.contains_key("tasksRunning"),
            "read-only fields are dropped"
        );
        assert_eq!(def.version, v());
    }

    #[test]
    fn ports_and_port_definitions() {
        let def = parse_app(
            &json!({"id": "a", "cmd": "x", "ports": [0, 0, 0]}),
            None,
            v(),
        )
        .unwrap();
        assert_eq!(def.port_count(), 3);
        let def = parse_app(
            &json!({"id": "a", "cmd": "x", "portDefinitions": [{"port": 0, "name": "http"}, {"port": 10001, "protocol": "udp"}]}),
            None,
            v(),
        )
        .unwrap();
        assert_eq!(def.port_count(), 2);
        let def = parse_app(
            &json!({"id": "a", "cmd": "x", "portDefinitions": []}),
            None,
            v(),
        )
        .unwrap();
        assert_eq!(def.port_count(), 0);
        let p = problems(
            json!({"id": "a", "cmd": "x", "ports": [1], "portDefinitions": [{"port": 70000, "prot": "tcp"}]}),
        );
        assert_eq!(p.len(), 3, "{p:?}");
    }

    #[test]
    fn cmd_and_args() {
        let def = parse_app(&json!({"id": "a", "args": ["echo", "hi there"]}), None, v()).unwrap();
        assert_eq!(def.command(), "echo 'hi there'");
        let p = problems(json!({"id": "a", "cmd": "x", "args": ["y"]}));
        assert!(p[0].contains("mutually exclusive"), "{p:?}");
    }

    #[test]
    fn path_id_must_match_body_id() {
        assert!(parse_app(&json!({"cmd": "x"}), Some("fib"), v()).is_ok());
        assert!(parse_app(&json!({"id": "/fib", "cmd": "x"}), Some("fib"), v()).is_ok());
        let err = parse_app(&json!({"id": "/other", "cmd": "x"}), Some("fib"), v()).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn non_object_body_is_invalid() {
        assert!(problems(json!([1, 2]))[0].contains("json object"));
    }

    #[test]
    fn token_is_compared_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
