//! The control plane's face: the [`Scheduler`] handle (state, store, reconcile loop)
//! and the HTTP API (a Marathon subset under `/v2/`, the node protocol under
//! `/v1/agents`, service discovery under `/v1/services`).
//!
//! Only translation lives here: app JSON is validated and typed by
//! [`crate::control::appdef`], and every rule is the model's ([`crate::control`]), so the
//! model never calls back into HTTP. The trade-off is that the JSON views of tasks and
//! apps are built here, apart from the types they show.

use crate::control::appdef::{describe, parse_app};
use crate::control::store::{FileStore, StateStore};
use crate::control::{app_key, AppDef, Now, State, Task, TaskState};
use crate::dns::{names, DnsCounters, Zone, ZoneConfig};
use crate::{Error, Result};
use axum::body::Bytes;
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
use protocol::{AgentInfo, AgentRegistration, HeartbeatRequest, HeartbeatResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
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
    /// The Mesos-DNS zone's domain and TTL (`crate::dns`).
    pub dns: ZoneConfig,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            data_dir: PathBuf::from("data"),
            token: None,
            tokens: protocol::auth::Keyring::new(),
            agent_timeout: Duration::from_secs(10),
            dns: ZoneConfig::default(),
        }
    }
}

struct Inner {
    config: SchedulerConfig,
    /// Fired when the reconcile loop stops, so open event streams end and a graceful
    /// HTTP shutdown is not held up by them.
    stopping: CancellationToken,
    state: Mutex<State>,
    store: Box<dyn StateStore>,
    /// The Mesos-DNS zone, rebuilt on every change of the state (`crate::dns`).
    zone: watch::Sender<Arc<Zone>>,
    /// `host:port` of the leading scheduler (this one without HA); `leader.<domain>`
    /// and `GET /v2/leader` answer it.
    leader: watch::Sender<Option<String>>,
    /// The DNS listener's address, for `ns1.<domain>`.
    dns_ns: watch::Sender<Option<IpAddr>>,
    dns_counters: Arc<DnsCounters>,
}

/// A cheap, cloneable handle on the control plane.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("store", &self.inner.store.location())
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Opens the control plane on `config.data_dir`, loading the saved apps. Reads one
    /// small file synchronously: call it at startup, not on a busy runtime.
    pub fn open(config: SchedulerConfig) -> Result<Scheduler> {
        let dir = config.data_dir.join("scheduler");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Scheduler::open_with_store(config, Box::new(FileStore::new(dir.join("state.json"))))
    }

    /// Opens the control plane on another store than the state file
    /// (`config.data_dir` is then not used), loading the saved apps from it.
    pub fn open_with_store(
        config: SchedulerConfig,
        store: Box<dyn StateStore>,
    ) -> Result<Scheduler> {
        Scheduler::open_counting_dns(config, store, Arc::new(DnsCounters::default()))
    }

    /// [`Scheduler::open_with_store`] whose metrics show `dns_counters`: under HA one
    /// DNS server lives as long as the process, follower then leader, and counts into
    /// the same counters throughout (see `crate::dns::follow`).
    pub fn open_counting_dns(
        mut config: SchedulerConfig,
        store: Box<dyn StateStore>,
        dns_counters: Arc<DnsCounters>,
    ) -> Result<Scheduler> {
        if config.token.as_deref() == Some("") {
            warn!("empty cluster token configured; it is ignored");
            config.token = None;
        }
        let saved = store.load()?;
        info!(
            apps = saved.apps.len(),
            path = %store.location(),
            "scheduler state loaded"
        );
        let state = State::new(saved, config.agent_timeout, Now::current());
        let zone = Zone::empty(config.dns.clone());
        Ok(Scheduler {
            inner: Arc::new(Inner {
                config,
                stopping: CancellationToken::new(),
                state: Mutex::new(state),
                store,
                zone: watch::channel(Arc::new(zone)).0,
                leader: watch::channel(None).0,
                dns_ns: watch::channel(None).0,
                dns_counters,
            }),
        })
    }

    /// Runs the reconcile loop (lost agents, staging timeouts, placement after
    /// back-offs) until `cancel` fires, then writes the state a last time.
    pub fn spawn(&self, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(crate::dns::maintain(
            self.clone(),
            self.inner.zone.clone(),
            self.inner.leader.subscribe(),
            self.inner.dns_ns.subscribe(),
            self.inner.config.dns.clone(),
            cancel.clone(),
        ));
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
        let mut m = self.lock().metrics();
        m.push_str(&self.inner.dns_counters.metrics());
        m
    }

    /// Sets the leading scheduler's `host:port` (`None`: not known).
    pub fn set_leader(&self, leader: Option<String>) {
        self.inner.leader.send_if_modified(|l| {
            let changed = *l != leader;
            *l = leader;
            changed
        });
    }

    /// The leading scheduler's `host:port`, when known.
    pub fn leader(&self) -> Option<String> {
        self.inner.leader.borrow().clone()
    }

    /// The current Mesos-DNS zone.
    pub fn zone(&self) -> Arc<Zone> {
        self.inner.zone.borrow().clone()
    }

    /// Every new zone, as it is built.
    pub fn zone_changes(&self) -> watch::Receiver<Arc<Zone>> {
        self.inner.zone.subscribe()
    }

    /// Serves Mesos-DNS on `udp` and `tcp` (see [`crate::dns::server::bind`]) until
    /// `cancel`; the zone is kept current by [`Scheduler::spawn`].
    pub fn serve_dns(
        &self,
        udp: tokio::net::UdpSocket,
        tcp: tokio::net::TcpListener,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        if let Ok(addr) = udp.local_addr() {
            self.inner.dns_ns.send_replace(Some(addr.ip()));
        }
        tokio::spawn(crate::dns::server::serve(
            udp,
            tcp,
            self.inner.zone.subscribe(),
            self.inner.dns_counters.clone(),
            cancel,
        ))
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
    Some(parse_version(app, version).and_then(|t| st.app_version(app, t).map(version_json)))
}

/// A version as `GET /v2/apps/{app}/versions` lists it, kept to the millisecond.
fn parse_version(app: &str, text: &str) -> Result<chrono::DateTime<chrono::Utc>> {
    let t = chrono::DateTime::parse_from_rfc3339(text).map_err(|e| {
        Error::BadRequest(format!(
            "version {text:?} is not a timestamp: expected one of GET /v2/apps/{}/versions, such as 2026-11-23T10:00:00.123Z ({e})",
            app.trim_start_matches('/')
        ))
    })?;
    let t = t.with_timezone(&chrono::Utc);
    Ok(chrono::DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t))
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
        .route("/v2/leader", get(leader))
        .route("/v1/dns/zone", get(dns_zone))
        .route("/v1/agents", get(list_agents))
        .route(
            "/v1/agents/{name}/drain",
            post(drain_agent).delete(undrain_agent),
        )
        .route_layer(gate_for(&[Role::Read], &[Role::Deploy]));
    let agents = Router::new()
        .route("/v1/agents/register", post(register_agent))
        .route("/v1/agents/{name}/heartbeat", post(heartbeat))
        .route("/v1/agents/{name}/changes", get(desired_changes))
        .route_layer(gate_for(&[Role::Agent], &[Role::Agent]));
    let lookups = Router::new()
        .route("/v1/services/{*app}", get(services))
        .route("/v1/hosts/{*host}", get(mesos_dns_hosts))
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
    // Marathon's rollback: a body of `{"version": V}` alone puts back the definition
    // the app had at V (as a new version). With other fields beside it `version` is
    // the read-only field of an app read by `GET` and sent back, and is ignored.
    if let (1, Some(v)) = (patch.len(), patch.get("version")) {
        let old = version_of(&s.lock(), &id, v)?;
        return put_definition(&s, &id, Value::Object(old), now).await;
    }
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
    put_definition(&s, &id, merged, now).await
}

/// The definition app `id` had at `version` (a timestamp as `GET .../versions` lists).
fn version_of(st: &State, id: &str, version: &Value) -> Result<Map<String, Value>> {
    let Some(text) = version.as_str() else {
        return Err(Error::BadRequest(format!(
            "version is {}: expected a timestamp string from GET /v2/apps/{}/versions",
            describe(version),
            id.trim_start_matches('/')
        )));
    };
    let t = parse_version(id, text)?;
    st.app_version(id, t).map(definition_json)
}

/// Stores `merged` as app `id`'s definition and answers with its deployment.
async fn put_definition(s: &Scheduler, id: &str, merged: Value, now: Now) -> Result<Response> {
    let def = parse_app(&merged, Some(id), now.wall_millis())?;
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

/// `GET /v2/leader`: `{"leader": "host:port"}` of the leading scheduler (this one
/// when it runs alone), or 404 as Marathon answers while none is known.
async fn leader(AxState(s): AxState<Scheduler>) -> Response {
    match s.leader() {
        Some(l) => Json(json!({ "leader": l })).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"message": "there is no leader: none is known yet"})),
        )
            .into_response(),
    }
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
            v["drained"] = json!(st.drained(&a.name));
            v
        })
        .collect();
    Json(Value::Array(agents))
}

/// `POST /v1/agents/{name}/drain`: no new tasks on it, its tasks moved elsewhere.
async fn drain_agent(
    AxState(s): AxState<Scheduler>,
    Path(name): Path<String>,
) -> Result<Json<Value>> {
    set_drained(s, name, true).await
}

/// `DELETE /v1/agents/{name}/drain`: the agent takes tasks again.
async fn undrain_agent(
    AxState(s): AxState<Scheduler>,
    Path(name): Path<String>,
) -> Result<Json<Value>> {
    set_drained(s, name, false).await
}

async fn set_drained(s: Scheduler, name: String, drain: bool) -> Result<Json<Value>> {
    s.lock().set_drained(&name, drain, Now::current())?;
    s.persist().await?;
    Ok(Json(json!({ "agent": name, "drained": drain })))
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
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<Value>> {
    let number = |key: &str| -> Result<Option<u64>> {
        query
            .get(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    Error::BadRequest(format!(
                        "`{key}` is {v:?}, expected a whole number of {}",
                        if key == "after" {
                            "changes"
                        } else {
                            "milliseconds"
                        }
                    ))
                })
            })
            .transpose()
    };
    if let Some(other) = query
        .keys()
        .find(|k| !["after", "wait_ms"].contains(&k.as_str()))
    {
        return Err(Error::BadRequest(format!(
            "unknown parameter `{other}`, expected `after` and `wait_ms`"
        )));
    }
    let (after, wait_ms) = (number("after")?, number("wait_ms")?);
    let (mut rx, seed) = {
        let st = s.lock();
        (st.desired_changes(), st.desired_seed())
    };
    let wait = Duration::from_millis(wait_ms.unwrap_or(0)).min(MAX_CHANGES_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let stopping = s.inner.stopping.clone();
    loop {
        let now = rx.borrow_and_update().get(&name).copied().unwrap_or(seed);
        if after != Some(now) {
            return Ok(Json(json!({ "changes": now })));
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return Ok(Json(json!({ "changes": now }))) },
            _ = tokio::time::sleep_until(deadline) => return Ok(Json(json!({ "changes": now }))),
            _ = stopping.cancelled() => return Ok(Json(json!({ "changes": now }))),
        }
    }
}

#[derive(Deserialize)]
struct ZoneQuery {
    /// The serial the caller has: answer once the zone's differs (or after a while).
    after: Option<u32>,
}

/// How long `GET /v1/dns/zone?after=` holds a request without a change.
const ZONE_POLL: Duration = Duration::from_secs(20);

/// `GET /v1/dns/zone[?after=SERIAL]`: the Mesos-DNS zone as JSON, for follower
/// schedulers to serve DNS from (`crate::dns::follow`). With `after`, a long poll: it
/// answers as soon as the serial differs from `after`, or with the same zone after
/// [`ZONE_POLL`], so a follower's answers trail the leader's by one round trip.
async fn dns_zone(AxState(s): AxState<Scheduler>, Query(q): Query<ZoneQuery>) -> Response {
    let mut rx = s.zone_changes();
    let deadline = tokio::time::Instant::now() + ZONE_POLL;
    let stopping = s.inner.stopping.clone();
    loop {
        let zone = rx.borrow_and_update().clone();
        if q.after != Some(zone.serial()) {
            return Json(&*zone).into_response();
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return Json(&*zone).into_response() },
            _ = tokio::time::sleep_until(deadline) => return Json(&*zone).into_response(),
            _ = stopping.cancelled() => return Json(&*zone).into_response(),
        }
    }
}

/// `GET /v1/services/{app}`: the router's lookup of an app's ready endpoints; or,
/// for a name with a leading underscore (which no app id has), Mesos-DNS's
/// `GET /v1/services/_<app>._tcp.marathon.<domain>.`.
async fn services(AxState(s): AxState<Scheduler>, Path(app): Path<String>) -> Result<Response> {
    if app.starts_with('_') {
        return Ok(Json(mesos_dns_services(&s.zone(), &app)).into_response());
    }
    Ok(Json(s.lock().services(&app)?).into_response())
}

/// Mesos-DNS's answer for a service: `[{"service", "host", "ip", "port"}]`, every
/// value a string (`port` too), the name echoed as asked; a name without records is
/// one entry of empty strings, as Mesos-DNS answers it.
fn mesos_dns_services(zone: &Zone, service: &str) -> Value {
    let found = names::parse(service, zone.domain())
        .ok()
        .flatten()
        .and_then(|n| zone.services(&n))
        .unwrap_or_default();
    if found.is_empty() {
        return json!([{"service": "", "host": "", "ip": "", "port": ""}]);
    }
    Value::Array(
        found
            .into_iter()
            .map(|e| {
                json!({
                    "service": service,
                    "host": e.target,
                    "ip": e.ip.map(|ip| ip.to_string()).unwrap_or_default(),
                    "port": e.port.to_string(),
                })
            })
            .collect(),
    )
}

/// `GET /v1/hosts/{host}`: Mesos-DNS's `[{"host", "ip"}]` for a name's addresses
/// (`host` lower case with its final dot), or one entry of empty strings.
async fn mesos_dns_hosts(AxState(s): AxState<Scheduler>, Path(host): Path<String>) -> Json<Value> {
    let zone = s.zone();
    let ips = names::parse(&host, zone.domain())
        .ok()
        .flatten()
        .and_then(|n| zone.addresses(&n))
        .unwrap_or_default();
    let Some(dom) = names::normalize(&host).filter(|_| !ips.is_empty()) else {
        return Json(json!([{"host": "", "ip": ""}]));
    };
    Json(Value::Array(
        ips.into_iter()
            .map(|ip| json!({"host": dom, "ip": ip.to_string()}))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::store::Saved;
    use futures::future::BoxFuture;

    /// A store that is not the state file: the scheduler needs nothing else of one.
    #[derive(Debug, Clone, Default)]
    struct MemoryStore(Arc<Mutex<Saved>>);

    impl StateStore for MemoryStore {
        fn location(&self) -> String {
            "memory".into()
        }

        fn load(&self) -> Result<Saved> {
            Ok(self.0.lock().unwrap().clone())
        }

        fn save(&self, _generation: u64, saved: Saved) -> BoxFuture<'_, Result<()>> {
            *self.0.lock().unwrap() = saved;
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test]
    async fn v2_leader_names_the_leader_or_answers_404() {
        use tower::ServiceExt;
        let s = Scheduler::open_with_store(
            SchedulerConfig::default(),
            Box::new(MemoryStore::default()),
        )
        .unwrap();
        let get = |s: &Scheduler| {
            router(s.clone()).oneshot(
                axum::http::Request::get("/v2/leader")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
        };
        assert_eq!(get(&s).await.unwrap().status(), StatusCode::NOT_FOUND);
        s.set_leader(Some("10.0.0.1:7071".into()));
        let resp = get(&s).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, json!({"leader": "10.0.0.1:7071"}));
    }

    #[tokio::test]
    async fn another_store_is_loaded_from_and_saved_to() {
        let app = |id: &str| {
            parse_app(
                &json!({"id": id, "cmd": "sleep 1"}),
                None,
                Now::current().wall_millis(),
            )
            .unwrap()
        };
        let mem = MemoryStore::default();
        mem.0.lock().unwrap().apps.push(app("fib"));
        let s =
            Scheduler::open_with_store(SchedulerConfig::default(), Box::new(mem.clone())).unwrap();
        assert!(s.with_state(|st| st.app("fib").is_some()));
        s.lock().create_app(app("web"), Now::current()).unwrap();
        s.persist().await.unwrap();
        let ids: Vec<String> = mem
            .0
            .lock()
            .unwrap()
            .apps
            .iter()
            .map(|a| a.id.clone())
            .collect();
        assert_eq!(ids, ["/fib", "/web"]);
    }
}
