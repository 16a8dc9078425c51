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
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use chrono::SecondsFormat;
use protocol::auth::{AuthError, Keyring, Role};
use protocol::http::{gate, Caller, Gate};
use protocol::{AgentInfo, AgentRegistration, HealthCheck, HeartbeatRequest, HeartbeatResponse};
use serde::Deserialize;
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
    /// The cluster token, admin of everything. With neither it nor `tokens` the API is
    /// open (library tests and embedders); the binary always sets at least this one.
    pub token: Option<String>,
    /// Tokens with narrower roles: `read` lists apps (without env values), `deploy`
    /// changes them, `agent` registers and heartbeats.
    pub tokens: protocol::auth::Keyring,
    /// Heartbeat silence after which an agent is lost and its tasks are replaced.
    pub agent_timeout: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            data_dir: PathBuf::from("data"),
            token: None,
            tokens: protocol::auth::Keyring::new(),
            agent_timeout: Duration::from_secs(10),
        }
    }
}

struct Inner {
    config: SchedulerConfig,
    /// Fired when the reconcile loop stops, so open event streams end and a graceful
    /// HTTP shutdown is not held up by them.
    stopping: CancellationToken,
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
            warn!("empty cluster token configured; it is ignored");
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
                stopping: CancellationToken::new(),
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
            this.inner.stopping.cancel();
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

    /// The cluster token as admin plus the role tokens of the config.
    fn keyring(&self) -> Keyring {
        let mut k = Keyring::with_admin(self.inner.config.token.as_deref());
        k.extend(&self.inner.config.tokens);
        k
    }
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
    "disk",
    "portDefinitions",
    "ports",
    "requirePorts",
    "backoffSeconds",
    "backoffFactor",
    "maxLaunchDelaySeconds",
];

/// Marathon fields accepted and kept verbatim. `healthChecks`, `constraints`,
/// `upgradeStrategy` and `killSelection` are validated here and acted on through
/// `AppDef`'s accessors; the others are not acted on yet.
const KEPT_FIELDS: &[&str] = &[
    "acceptedResourceRoles",
    "constraints",
    "container",
    "dependencies",
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
    let what = if defs.is_some() {
        "portDefinitions"
    } else {
        "ports"
    };
    // Marathon refuses the same port twice in one app: as a service port it would be
    // ambiguous, as a fixed host port (requirePorts) the second could never bind.
    let mut seen_ports: BTreeMap<u16, usize> = BTreeMap::new();
    let mut seen_names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, d) in out.iter().enumerate() {
        if d.port != 0 {
            if let Some(first) = seen_ports.insert(d.port, i) {
                problems.push(format!(
                    "{what}[{i}].port {} is also {what}[{first}].port: the ports of an app must differ",
                    d.port
                ));
            }
        }
        let Some(name) = &d.name else { continue };
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            problems.push(format!(
                "{what}[{i}].name {name:?} is invalid: expected 1 to 63 letters, digits, '-' or '_' (it names the variable PORT_<NAME>)"
            ));
            continue;
        }
        if let Some(first) = seen_names.insert(port_env_name(name), i) {
            problems.push(format!(
                "{what}[{i}].name {name:?} is also {what}[{first}]'s: port names of an app must differ (ignoring case, '-' and '_')"
            ));
        }
    }
    out
}

/// The variable a named port is handed over in: `PORT_` and the name upper-cased as
/// Marathon does, with `-` as `_` so that a shell can read it (`PORT_ADMIN_UI`).
pub fn port_env_name(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| match c {
            '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    format!("PORT_{name}")
}

/// Parses Marathon `healthChecks`, with Marathon's defaults (grace 300 s, interval
/// 60 s, timeout 20 s, 3 failures), adding one problem per bad value.
/// With `port_count`, a `portIndex` naming no port of the app is a problem too.
pub fn parse_health_checks(
    v: &Value,
    port_count: Option<usize>,
    problems: &mut Vec<String>,
) -> Vec<HealthCheck> {
    let mut out = Vec::new();
    let Some(list) = v.as_array() else {
        problems.push(format!("healthChecks must be a list, got {}", describe(v)));
        return out;
    };
    for (i, c) in list.iter().enumerate() {
        let what = format!("healthChecks[{i}]");
        let Some(o) = c.as_object() else {
            problems.push(format!("{what} must be an object, got {}", describe(c)));
            continue;
        };
        let before = problems.len();
        for k in o.keys() {
            const KNOWN: &[&str] = &[
                "protocol",
                "path",
                "portIndex",
                "port",
                "command",
                "gracePeriodSeconds",
                "intervalSeconds",
                "timeoutSeconds",
                "maxConsecutiveFailures",
                "delaySeconds",
                "ignoreHttp1xx",
                "ipProtocol",
            ];
            if !KNOWN.contains(&k.as_str()) {
                problems.push(format!(
                    "{what}: unknown field {k:?}, expected one of {}",
                    KNOWN.join(", ")
                ));
            }
        }
        let protocol = match o.get("protocol") {
            None | Some(Value::Null) => "HTTP".to_string(),
            Some(p) => match p.as_str().map(str::to_ascii_uppercase) {
                Some(p)
                    if [
                        "HTTP",
                        "HTTPS",
                        "TCP",
                        "COMMAND",
                        "MESOS_HTTP",
                        "MESOS_HTTPS",
                        "MESOS_TCP",
                    ]
                    .contains(&p.as_str()) =>
                {
                    p
                }
                _ => {
                    problems.push(format!(
                        "{what}.protocol must be HTTP, TCP or COMMAND, got {}",
                        describe(p)
                    ));
                    String::new()
                }
            },
        };
        let command = match o.get("command") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(c) => match c.get("value").and_then(Value::as_str) {
                Some(s) => Some(s.to_string()),
                None => {
                    problems.push(format!(
                        "{what}.command must be {{\"value\": \"shell command\"}}, got {}",
                        describe(c)
                    ));
                    None
                }
            },
        };
        if protocol == "COMMAND" && command.is_none() {
            problems.push(format!(
                "{what}: a COMMAND health check needs command.value"
            ));
        }
        let path = match o.get("path") {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) => Some(p.clone()),
            Some(p) => {
                problems.push(format!("{what}.path must be a string, got {}", describe(p)));
                None
            }
        };
        let port_index = match o.get("portIndex") {
            None | Some(Value::Null) => 0,
            Some(p) => p
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .unwrap_or_else(|| {
                    problems.push(format!(
                        "{what}.portIndex must be a non-negative integer, got {}",
                        describe(p)
                    ));
                    0
                }),
        };
        let port = o
            .get("port")
            .filter(|p| !p.is_null())
            .map(|p| port_number(p, &format!("{what}.port"), problems));
        if let Some(n) = port_count.filter(|n| port.is_none() && usize::from(port_index) >= *n) {
            problems.push(format!(
                "{what}.portIndex {port_index} names no port: the app has {n} port(s)"
            ));
        }
        let grace = number(o, "gracePeriodSeconds", 300.0, 0.0, 86_400.0, problems);
        let interval = number(o, "intervalSeconds", 60.0, 0.01, 86_400.0, problems);
        let timeout = number(o, "timeoutSeconds", 20.0, 0.01, 86_400.0, problems);
        let max = number(o, "maxConsecutiveFailures", 3.0, 0.0, 1e6, problems);
        if problems.len() == before {
            out.push(HealthCheck {
                protocol,
                path,
                port_index,
                port,
                command,
                grace_period_seconds: grace,
                interval_seconds: interval,
                timeout_seconds: timeout,
                max_consecutive_failures: max as u32,
            });
        }
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
    let disk = number(obj, "disk", 0.0, 0.0, 1e12, &mut problems);
    let require_ports = match obj.get("requirePorts") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            problems.push(format!(
                "requirePorts must be true or false, got {}",
                describe(v)
            ));
            false
        }
    };
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
    if let Some(v) = obj.get("healthChecks").filter(|v| !v.is_null()) {
        parse_health_checks(v, Some(port_definitions.len()), &mut problems);
    }
    if let Some(v) = obj.get("constraints").filter(|v| !v.is_null()) {
        crate::placement::parse_constraints(v, &mut problems);
    }
    // Marathon's `user`: whether it exists is for the agent to say (accounts differ
    // between hosts); here only that it can be a user name at all.
    if let Some(v) = obj.get("user").filter(|v| !v.is_null()) {
        let ok = v.as_str().is_some_and(|u| {
            (1..=64).contains(&u.len()) && !u.contains(['\0', '/', ':']) && u.trim() == u
        });
        if !ok {
            problems.push(format!(
                "user must be a user name (1 to 64 characters, no NUL, '/' or ':', no \
                 surrounding spaces), got {}",
                describe(v)
            ));
        }
    }
    if let Some(v) = obj.get("upgradeStrategy").filter(|v| !v.is_null()) {
        match v.as_object() {
            Some(us) => {
                for (k, val) in us {
                    match k.as_str() {
                        "minimumHealthCapacity" | "maximumOverCapacity" => {
                            if !val.as_f64().is_some_and(|n| (0.0..=1.0).contains(&n)) {
                                problems.push(format!(
                                    "upgradeStrategy.{k} must be a number from 0 to 1, got {}",
                                    describe(val)
                                ));
                            }
                        }
                        other => problems.push(format!(
                            "upgradeStrategy: unknown field {other:?}, expected minimumHealthCapacity or maximumOverCapacity"
                        )),
                    }
                }
            }
            None => problems.push(format!(
                "upgradeStrategy must be an object, got {}",
                describe(v)
            )),
        }
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
            disk,
            port_definitions,
            require_ports,
            backoff_seconds,
            backoff_factor,
            max_launch_delay_seconds,
            extra,
            version,
            version_info: None,
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
    // Marathon's service ports are the app's declared ones, index for index with
    // `ports` (0 where the app declared none: none is invented here).
    let service_ports: Vec<u16> = state
        .app(&t.app)
        .map(|d| d.port_definitions.iter().map(|p| p.port).collect())
        .unwrap_or_default();
    json!({
        "id": t.id,
        "appId": t.app,
        "host": t.agent,
        "ipAddresses": [{"ipAddress": address, "protocol": "IPv4"}],
        "ports": t.ports,
        "servicePorts": service_ports,
        "slaveId": t.agent,
        "state": t.state.as_str(),
        "stagedAt": ts(t.staged_at),
        "startedAt": t.started_at.map(ts),
        "version": ts(t.version),
        "healthCheckResults": t.health.iter().map(|h| json!({
            "alive": h.alive,
            "consecutiveFailures": h.consecutive_failures,
            // Millisecond precision as Marathon shows (clients parse at most micros).
            "firstSuccess": h.first_success.map(ts),
            "lastSuccess": h.last_success.map(ts),
            "lastFailure": h.last_failure.map(ts),
            "lastFailureCause": h.last_failure_cause,
            "taskId": t.id,
            "instanceId": t.id,
        })).collect::<Vec<_>>(),
    })
}

fn app_json(state: &State, def: &AppDef, with_tasks: bool) -> Value {
    let tasks = state.tasks_of(&def.id);
    let count = |s: TaskState| tasks.iter().filter(|t| t.state == s).count();
    let mut v = serde_json::to_value(def).unwrap_or_else(|_| json!({}));
    if let Some(obj) = v.as_object_mut() {
        obj.insert("version".into(), json!(ts(def.version)));
        obj.insert("versionInfo".into(), version_info_json(def));
        obj.insert("tasksRunning".into(), json!(count(TaskState::Running)));
        obj.insert(
            "tasksStaged".into(),
            json!(count(TaskState::Staging) + count(TaskState::Starting)),
        );
        let checks = def.health_checks().len();
        let healthy = |want: bool| {
            tasks
                .iter()
                .filter(|t| t.healthy(checks) == Some(want))
                .count()
        };
        obj.insert("tasksHealthy".into(), json!(healthy(true)));
        obj.insert("tasksUnhealthy".into(), json!(healthy(false)));
        obj.insert("deployments".into(), json!(state.deployments_of(&def.id)));
        if let Some(f) = state.last_failure(&def.id) {
            obj.insert("lastTaskFailure".into(), f.clone());
        }
        if with_tasks {
            obj.insert(
                "tasks".into(),
                Value::Array(tasks.iter().map(|t| task_json(state, t)).collect()),
            );
        }
    }
    v
}

/// `{"lastScalingAt", "lastConfigChangeAt"}` in the millisecond form `version` uses;
/// an app saved before the state kept them shows its version for both.
fn version_info_json(def: &AppDef) -> Value {
    let (scaled, configured) = def.version_info.map_or((def.version, def.version), |v| {
        (v.last_scaling_at, v.last_config_change_at)
    });
    json!({"lastScalingAt": ts(scaled), "lastConfigChangeAt": ts(configured)})
}

/// An app as it was at one of its versions (`GET /v2/apps/{id}/versions/{version}`):
/// the definition alone, as Marathon shows it there.
fn version_json(def: &AppDef) -> Value {
    let mut v = Value::Object(definition_json(def));
    v["version"] = json!(ts(def.version));
    v["versionInfo"] = version_info_json(def);
    v
}

/// `GET /v2/apps/{id}/versions[/{version}]`, or `None` when `path` names neither.
fn versions_view(st: &State, path: &str) -> Option<Result<Value>> {
    let path = path.trim_end_matches('/');
    if let Some(app) = path.strip_suffix("/versions") {
        st.app(app)?;
        return Some(
            st.versions(app)
                .map(|vs| json!({ "versions": vs.into_iter().map(ts).collect::<Vec<_>>() })),
        );
    }
    let (app, version) = path.rsplit_once("/versions/")?;
    st.app(app)?;
    let parsed = chrono::DateTime::parse_from_rfc3339(version).map_err(|e| {
        Error::BadRequest(format!(
            "version {version:?} is not a timestamp: expected one of GET /v2/apps/{}/versions, such as 2026-11-23T10:00:00.123Z ({e})",
            app.trim_start_matches('/')
        ))
    });
    Some(parsed.and_then(|t| {
        // Versions are kept to the millisecond, as they are shown.
        let t = t.with_timezone(&chrono::Utc);
        let t = chrono::DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t);
        st.app_version(app, t).map(version_json)
    }))
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
///
/// Who may call what: reading the Marathon API needs `read` (app env values only for
/// `deploy`), changing it `deploy`; registration and heartbeats need `agent`; service
/// lookups (the routers' and the readers') either. `/ping` stays open, as Marathon's
/// is a liveness probe. The gates run before any body is read.
pub fn router(scheduler: Scheduler) -> Router {
    let keyring = Arc::new(scheduler.keyring());
    let gate_for = |read: &'static [Role], write: &'static [Role]| {
        from_fn_with_state(Gate::by_method(keyring.clone(), read, write, refuse), gate)
    };
    let marathon = Router::new()
        .route("/v2/apps", get(list_apps).post(create_app))
        .route(
            "/v2/apps/{*id}",
            get(get_app)
                .put(put_app)
                .patch(put_app)
                .delete(delete_app)
                .post(post_app),
        )
        .route("/v2/tasks", get(list_tasks))
        .route("/v1/tasks", get(list_tasks_with_restarts))
        .route("/v2/deployments", get(list_deployments))
        .route(
            "/v2/deployments/{id}",
            axum::routing::delete(delete_deployment),
        )
        .route("/v2/queue", get(queue))
        .route("/v2/events", get(events))
        .route("/v2/info", get(info))
        .route("/v1/agents", get(list_agents))
        .route_layer(gate_for(&[Role::Read], &[Role::Deploy]));
    let agents = Router::new()
        .route("/v1/agents/register", post(register_agent))
        .route("/v1/agents/{name}/heartbeat", post(heartbeat))
        .route("/v1/agents/{name}/changes", get(desired_changes))
        .route_layer(gate_for(&[Role::Agent], &[Role::Agent]));
    let lookups = Router::new()
        .route("/v1/services/{*app}", get(services))
        .route_layer(gate_for(&[Role::Read, Role::Agent], &[Role::Agent]));
    marathon
        .merge(agents)
        .merge(lookups)
        .route("/ping", get(ping))
        .with_state(scheduler)
}

fn refuse(e: AuthError) -> Response {
    Error::from(e).into_response()
}

/// Whether the caller may see app env values (secrets often live there): `deploy`
/// and `admin` may, `read` may not. No [`Caller`] means no gate ran (an open API).
fn sees_env(caller: Option<&Extension<Caller>>) -> bool {
    caller.is_none_or(|Extension(Caller(role))| role.allows(Role::Deploy))
}

/// Replaces the value of every `env` entry anywhere in `v` with [`HIDDEN_ENV`],
/// keeping the names: a reader may know a variable is set, not what it holds.
fn hide_env(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if k == "env" {
                    if let Value::Object(env) = child {
                        for value in env.values_mut() {
                            *value = Value::String(HIDDEN_ENV.into());
                        }
                        continue;
                    }
                }
                hide_env(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(hide_env),
        _ => {}
    }
}

/// What a `read` caller sees instead of an env value.
pub const HIDDEN_ENV: &str = "<hidden: needs a deploy token>";

fn parse_json(body: &Bytes) -> Result<Value> {
    serde_json::from_slice(body)
        .map_err(|e| Error::BadRequest(format!("request body is not valid json: {e}")))
}

fn deployment(id: &str, version: chrono::DateTime<chrono::Utc>) -> Value {
    json!({"version": ts(version), "deploymentId": id})
}

async fn create_app(AxState(s): AxState<Scheduler>, body: Bytes) -> Result<Response> {
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

async fn list_apps(
    AxState(s): AxState<Scheduler>,
    caller: Option<Extension<Caller>>,
    Query(q): Query<AppsQuery>,
) -> Json<Value> {
    let with_tasks = q.embed.as_deref().is_some_and(|e| e.contains("tasks"));
    let st = s.lock();
    let apps: Vec<Value> = st
        .apps()
        .filter(|a| q.id.as_deref().is_none_or(|id| a.id.contains(id)))
        .filter(|a| q.cmd.as_deref().is_none_or(|c| a.command().contains(c)))
        .map(|a| app_json(&st, a, with_tasks))
        .collect();
    let mut out = json!({ "apps": apps });
    if !sees_env(caller.as_ref()) {
        hide_env(&mut out);
    }
    Json(out)
}

async fn get_app(
    AxState(s): AxState<Scheduler>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let mut out = get_app_json(&s, &id)?;
    if !sees_env(caller.as_ref()) {
        hide_env(&mut out);
    }
    Ok(Json(out))
}

fn get_app_json(s: &Scheduler, id: &str) -> Result<Value> {
    let st = s.lock();
    if let Some(def) = st.app(id) {
        return Ok(json!({ "app": app_json(&st, def, true) }));
    }
    if let Some(view) = versions_view(&st, id) {
        return view;
    }
    // `/v2/apps/{id}/tasks` cannot be a route next to the wildcard, so it lands here.
    if let Some(app) = id.trim_end_matches('/').strip_suffix("/tasks") {
        if st.app(app).is_some() {
            let tasks: Vec<Value> = st.tasks_of(app).iter().map(|t| task_json(&st, t)).collect();
            return Ok(json!({ "tasks": tasks }));
        }
    }
    Err(Error::UnknownApp(app_key(id)))
}

async fn put_app(
    AxState(s): AxState<Scheduler>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
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
    let (created, dep, version) = {
        let mut st = s.lock();
        let key = def.id.clone();
        let (created, dep) = st.put_app(def, now)?;
        // An update that changes nothing keeps the app's version.
        let version = st.app(&key).map_or(now.wall_millis(), |d| d.version);
        (created, dep, version)
    };
    s.persist().await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(deployment(&dep, version))).into_response())
}

/// Query flags of the write calls. Kept as strings because clients spell booleans
/// every way (`true`, `True`, `1`): the Python client sends `True`.
#[derive(Debug, Deserialize)]
struct ScaleQuery {
    scale: Option<String>,
    force: Option<String>,
}

fn flag(v: &Option<String>) -> bool {
    v.as_deref()
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}

/// `DELETE /v2/apps/{id}` and `DELETE /v2/apps/{id}/tasks/{taskId}` (the wildcard
/// route carries both).
async fn delete_app(
    AxState(s): AxState<Scheduler>,
    Path(id): Path<String>,
    Query(q): Query<ScaleQuery>,
) -> Result<Json<Value>> {
    let now = Now::current();
    let body = {
        let mut st = s.lock();
        match id.rsplit_once("/tasks/") {
            Some((app, task)) if st.app(&id).is_none() && st.app(app).is_some() => {
                let (t, dep) = st.kill_task(app, task, flag(&q.scale), now)?;
                match dep {
                    // The version the scale recorded, not `now`: two changes within
                    // one millisecond get distinct versions.
                    Some(dep) => {
                        let version = st.app(app).map_or(now.wall_millis(), |d| d.version);
                        deployment(&dep, version)
                    }
                    None => json!({ "task": task_json(&st, &t) }),
                }
            }
            _ => {
                let (_, dep) = st.delete_app(&id, now)?;
                deployment(&dep, now.wall_millis())
            }
        }
    };
    s.persist().await?;
    Ok(Json(body))
}

/// `POST /v2/apps/{id}/restart`: a rolling restart of every task.
async fn post_app(AxState(s): AxState<Scheduler>, Path(id): Path<String>) -> Result<Json<Value>> {
    let Some(app) = id.trim_end_matches('/').strip_suffix("/restart") else {
        return Err(Error::BadRequest(format!(
            "POST /v2/apps/{id} is not an action: expected /v2/apps/{{id}}/restart"
        )));
    };
    let (dep, version) = s.lock().restart_app(app, Now::current())?;
    s.persist().await?;
    Ok(Json(deployment(&dep, version)))
}

async fn list_deployments(AxState(s): AxState<Scheduler>) -> Json<Value> {
    let st = s.lock();
    Json(Value::Array(
        st.deployments().map(|d| d.to_json()).collect(),
    ))
}

/// Without `force=true` the app is rolled back to its definition before the
/// deployment (a new deployment, 200 with its id); with it, the deployment is only
/// forgotten (202), as in Marathon.
async fn delete_deployment(
    AxState(s): AxState<Scheduler>,
    Path(id): Path<String>,
    Query(q): Query<ScaleQuery>,
) -> Result<Response> {
    let force = flag(&q.force);
    let out = s.lock().cancel_deployment(&id, !force, Now::current())?;
    s.persist().await?;
    Ok(match out {
        Some((dep, version)) => (StatusCode::OK, Json(deployment(&dep, version))).into_response(),
        None => StatusCode::ACCEPTED.into_response(),
    })
}

/// `GET /v2/queue`: apps waiting for tasks to be placed, with why.
async fn queue(AxState(s): AxState<Scheduler>) -> Json<Value> {
    let st = s.lock();
    let queue: Vec<Value> = st
        .apps()
        .filter_map(|a| {
            let why = st.unplaced(&a.id)?;
            let have = st.tasks_of(&a.id).len();
            Some(json!({
                "app": {"id": a.id, "instances": a.instances},
                "count": (a.instances as usize).saturating_sub(have),
                "delay": {"overdue": true, "timeLeftSeconds": 0},
                "lastUnusedOfferAt": null,
                "message": why,
            }))
        })
        .collect();
    Json(json!({ "queue": queue }))
}

/// `GET /v2/events`: Marathon's event stream as server-sent events (`event:` is the
/// `eventType`). A subscriber too slow to keep up misses events (logged) rather than
/// slowing the scheduler down.
async fn events(
    AxState(s): AxState<Scheduler>,
    caller: Option<Extension<Caller>>,
) -> axum::response::sse::Sse<
    impl futures::Stream<
        Item = std::result::Result<axum::response::sse::Event, std::convert::Infallible>,
    >,
> {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let rx = s.lock().subscribe();
    let stopping = s.inner.stopping.clone();
    let env = sees_env(caller.as_ref());
    let stream = futures::stream::unfold((rx, stopping), move |(mut rx, stopping)| async move {
        loop {
            let next = tokio::select! {
                _ = stopping.cancelled() => return None,
                r = rx.recv() => r,
            };
            match next {
                Ok(e) => {
                    let data = if env {
                        e.data.to_string()
                    } else {
                        let mut d = e.data.clone();
                        hide_env(&mut d);
                        d.to_string()
                    };
                    let ev = SseEvent::default().event(e.kind).data(data);
                    return Some((Ok(ev), (rx, stopping)));
                }
                // Marathon has no event for this and clients reject unknown ones.
                Err(RecvError::Lagged(missed)) => {
                    warn!(missed, "event stream subscriber too slow; events dropped");
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[derive(Debug, Deserialize)]
struct TasksQuery {
    status: Option<String>,
}

async fn list_tasks(
    AxState(s): AxState<Scheduler>,
    Query(q): Query<TasksQuery>,
) -> Result<Json<Value>> {
    tasks_body(&s, q, false)
}

/// `GET /v1/tasks`: `/v2/tasks` plus what Marathon has no field for: `restarts`,
/// how many earlier tasks of the same instance number ended (the web UI's column).
/// Regression: that field was in `/v2/tasks` itself, and the `marathon` client, which
/// builds its task objects from every key it gets, refused the whole list.
async fn list_tasks_with_restarts(
    AxState(s): AxState<Scheduler>,
    Query(q): Query<TasksQuery>,
) -> Result<Json<Value>> {
    tasks_body(&s, q, true)
}

fn tasks_body(s: &Scheduler, q: TasksQuery, restarts: bool) -> Result<Json<Value>> {
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
        .map(|t| {
            let mut v = task_json(&st, t);
            if restarts {
                v["restarts"] = json!(t.restarts);
            }
            v
        })
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

/// The agents with, beside [`AgentInfo`], the port ranges they offer, what their
/// tasks use (`used`: cpus, mem, disk, host ports), so an operator can see why an app
/// does not fit, and their shipper's back-pressure (`shipper`, a
/// [`protocol::ShipperStatus`]; absent until a heartbeat carries one).
async fn list_agents(AxState(s): AxState<Scheduler>) -> Json<Value> {
    let st = s.lock();
    let agents: Vec<Value> = st
        .agents()
        .into_iter()
        .map(|a| {
            let (used, ports) = st.agent_usage(&a.name);
            let ranges = st.agent_ports(&a.name).to_vec();
            let mut v = serde_json::to_value(&a).unwrap_or_else(|_| json!({}));
            v["ports"] = json!(ranges);
            v["used"] = json!({
                "cpus": used.cpus, "mem": used.mem, "disk": used.disk, "ports": ports,
            });
            if let Some(shipper) = st.shipper_status(&a.name) {
                v["shipper"] = json!(shipper);
            }
            v
        })
        .collect();
    Json(Value::Array(agents))
}

async fn register_agent(AxState(s): AxState<Scheduler>, body: Bytes) -> Result<Json<AgentInfo>> {
    let reg: AgentRegistration = serde_json::from_slice(&body)?;
    let out = s.lock().register(reg.info, reg.ports, Now::current())?;
    s.persist().await?;
    Ok(Json(out))
}

async fn heartbeat(
    AxState(s): AxState<Scheduler>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<HeartbeatResponse>> {
    let req: HeartbeatRequest = if body.iter().all(u8::is_ascii_whitespace) {
        HeartbeatRequest::default()
    } else {
        serde_json::from_slice(&body)?
    };
    let tasks = {
        let mut st = s.lock();
        let tasks = st.heartbeat(&name, req.tasks, Now::current())?;
        st.set_shipper_status(&name, req.shipper);
        tasks
    };
    Ok(Json(HeartbeatResponse { tasks }))
}

/// Query of `GET /v1/agents/{name}/changes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesParams {
    /// The counter the node last saw; absent, the answer is immediate.
    after: Option<u64>,
    /// How long to wait for it to move, capped at [`MAX_CHANGES_WAIT`].
    wait_ms: Option<u64>,
}

/// Longest a `changes` long-poll is held: below the node's control-call timeout.
const MAX_CHANGES_WAIT: Duration = Duration::from_secs(4);

/// `GET /v1/agents/{name}/changes?after=N&wait_ms=M`: a long-poll that answers
/// `{"changes": C}` as soon as the scheduler's count of changes to what it wants on
/// this agent differs from `N` (a counter that went back, after a scheduler restart,
/// differs too), or after `M` ms with the count unchanged. The node heartbeats when it
/// moves instead of on its next tick; it is a hint, the heartbeat stays the truth.
async fn desired_changes(
    AxState(s): AxState<Scheduler>,
    Path(name): Path<String>,
    params: std::result::Result<Query<ChangesParams>, QueryRejection>,
) -> Result<Json<Value>> {
    let Query(params) = params.map_err(|e| {
        Error::BadRequest(format!(
            "{}, expected `after` and `wait_ms` as numbers",
            e.body_text()
        ))
    })?;
    let mut rx = s.lock().desired_changes();
    let wait = Duration::from_millis(params.wait_ms.unwrap_or(0)).min(MAX_CHANGES_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let stopping = s.inner.stopping.clone();
    loop {
        let now = rx.borrow_and_update().get(&name).copied().unwrap_or(0);
        if params.after != Some(now) {
            return Ok(Json(json!({ "changes": now })));
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return Ok(Json(json!({ "changes": now }))) },
            _ = tokio::time::sleep_until(deadline) => return Ok(Json(json!({ "changes": now }))),
            _ = stopping.cancelled() => return Ok(Json(json!({ "changes": now }))),
        }
    }
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
    fn health_checks_constraints_and_upgrade_strategy_are_validated() {
        let def = parse_app(
            &json!({"id": "a", "cmd": "x",
                    "healthChecks": [{"protocol": "COMMAND", "command": {"value": "true"}},
                                     {"protocol": "HTTP", "path": "/health", "intervalSeconds": 2}],
                    "constraints": [["rack", "GROUP_BY"]],
                    "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0}}),
            None,
            v(),
        )
        .unwrap();
        let checks = def.health_checks();
        assert_eq!(checks.len(), 2);
        assert_eq!(checks[0].command.as_deref(), Some("true"));
        assert_eq!(
            (checks[1].interval_seconds, checks[1].grace_period_seconds),
            (2.0, 300.0)
        );
        assert_eq!(def.upgrade_strategy(), (0.5, 0.0));
        assert_eq!(def.constraints().len(), 1);
        let p = problems(json!({"id": "a", "cmd": "x",
            "healthChecks": [{"protocol": "UDP"}, {"protocol": "COMMAND"}, {"portIndex": 3}, {"intervalSecs": 1}],
            "constraints": [["hostname", "NEAR"]],
            "upgradeStrategy": {"minimumHealthCapacity": 2}}));
        let all = p.join("\n");
        assert_eq!(p.len(), 6, "{all}");
        assert!(
            all.contains("healthChecks[0].protocol must be HTTP, TCP or COMMAND"),
            "{all}"
        );
        assert!(
            all.contains("healthChecks[1]: a COMMAND health check needs command.value"),
            "{all}"
        );
        assert!(
            all.contains("healthChecks[2].portIndex 3 names no port"),
            "{all}"
        );
        assert!(
            all.contains("healthChecks[3]: unknown field \"intervalSecs\""),
            "{all}"
        );
        assert!(all.contains("unknown operator \"NEAR\""), "{all}");
        assert!(
            all.contains("upgradeStrategy.minimumHealthCapacity must be a number from 0 to 1"),
            "{all}"
        );
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

    /// Marathon's `user` was kept and ignored (issue 15); it now reaches the node, so
    /// it must at least be a user name.
    #[test]
    fn user_is_kept_for_the_node_and_must_be_a_user_name() {
        let def = parse_app(&json!({"id": "a", "cmd": "x", "user": "nobody"}), None, v()).unwrap();
        assert_eq!(def.user().as_deref(), Some("nobody"));
        let def = parse_app(&json!({"id": "a", "cmd": "x"}), None, v()).unwrap();
        assert_eq!(def.user(), None);
        for bad in [json!(7), json!(""), json!("a/b"), json!(" x"), json!("a:b")] {
            let err = parse_app(&json!({"id": "a", "cmd": "x", "user": bad}), None, v())
                .unwrap_err()
                .to_string();
            assert!(err.contains("user must be a user name"), "{bad}: {err}");
        }
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
}
