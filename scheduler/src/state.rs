//! The control plane's model: apps, their tasks, the agents, and the rules that move
//! between them (placement, back-off, lost agents, adoption, scale down).
//!
//! `State` is plain data behind one mutex, changed by short synchronous methods that
//! take the current time as an argument ([`Now`]), so every rule can be unit-tested by
//! passing a later `Now` instead of sleeping. The trade-off is a single lock for the
//! whole cluster: fine for the tens of agents and hundreds of tasks this targets, and
//! it keeps every decision consistent (no task is ever placed twice).
//!
//! Terminal tasks are dropped from the state at once (as Marathon does); what survives
//! of them is the per-app launch delay, the per-instance restart count and the app's
//! `lastTaskFailure`. Every change of an app is a deployment, tracked until the app's
//! tasks match it (rolling replacement within the `upgradeStrategy`), and a version in
//! the app's history (the last [`MAX_VERSIONS`]); every state change is published on a
//! broadcast channel that `/v2/events` streams.

use crate::control::appdef::KillSelection;
pub use crate::control::appdef::{AppDef, PortDefinition, VersionInfo};
use crate::placement::{self, AgentView, Candidate};
use crate::store::Saved;
use crate::{Error, Result};
use chrono::{DateTime, Utc};
use protocol::{
    AgentInfo, HealthResult, PortLabel, PortRange, ServiceEndpoint, ShipperStatus, TaskSpec,
    TaskStatus,
};

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

/// A task that has run at least this long before it ends resets its app's launch
/// delay: it was a healthy start, not a crash loop.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);
/// A placed task that its agent has not reported within this time counts as failed
/// (Marathon's `task_launch_timeout`).
pub const STAGING_TIMEOUT: Duration = Duration::from_secs(300);

/// App versions kept per app (`GET /v2/apps/{id}/versions`); older ones are dropped.
/// Bounded because every version is stored whole in the state file.
pub const MAX_VERSIONS: usize = 50;

pub const AGENT_ACTIVE: &str = "active";
pub const AGENT_LOST: &str = "lost";

/// The current time on both clocks: `at` (monotonic) for timeouts and delays, `wall`
/// for what is shown. Methods take it as an argument so tests can move time.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    pub wall: DateTime<Utc>,
}

impl Now {
    pub fn current() -> Now {
        Now {
            at: Instant::now(),
            wall: Utc::now(),
        }
    }

    /// This moment plus `d`, on both clocks.
    pub fn after(self, d: Duration) -> Now {
        Now {
            at: self.at + d,
            wall: self.wall + chrono::Duration::from_std(d).unwrap_or_default(),
        }
    }

    /// Wall time truncated to milliseconds, the precision Marathon shows.
    pub fn wall_millis(self) -> DateTime<Utc> {
        millis(self.wall)
    }
}

/// `t` truncated to milliseconds, the precision Marathon's timestamps have.
fn millis(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// One event of the `/v2/events` bus: Marathon's `eventType` and its JSON body.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: &'static str,
    pub data: Value,
}

/// A deployment in progress: what changed an app, until its tasks match the change.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub id: String,
    /// App id with its leading slash.
    pub app: String,
    pub version: DateTime<Utc>,
    /// Marathon's action name: `StartApplication`, `ScaleApplication`,
    /// `RestartApplication`, `StopApplication`.
    pub action: &'static str,
    /// The definition before the change, for a rollback by `DELETE /v2/deployments`.
    pub previous: Option<AppDef>,
}

impl Deployment {
    /// The deployment as the `plan` of Marathon's `deployment_*` events.
    pub fn plan_json(&self) -> Value {
        let version = self
            .version
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let group = json!({"id": "/", "apps": [], "groups": [], "version": version});
        json!({
            "id": self.id,
            "version": version,
            "original": group,
            "target": group,
            "steps": [{"actions": [{"action": self.action, "app": self.app}]}],
        })
    }

    /// The deployment in Marathon's `GET /v2/deployments` shape.
    pub fn to_json(&self) -> Value {
        let action = json!({"action": self.action, "app": self.app, "readinessCheckResults": []});
        json!({
            "id": self.id,
            "version": self.version.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "affectedApps": [self.app],
            "affectedPods": [],
            "steps": [{"actions": [{"action": self.action, "app": self.app}]}],
            "currentActions": [action],
            "currentStep": 1,
            "totalSteps": 1,
        })
    }
}

/// The ports of an app as its tasks' specs carry them (for `PORT_<NAME>` and
/// `PORT_<port>`); empty when no port has a number or a name, the common case.
fn port_labels(def: &AppDef) -> Vec<PortLabel> {
    let labels: Vec<PortLabel> = def
        .port_definitions
        .iter()
        .map(|d| PortLabel {
            port: d.port,
            name: d.name.clone().unwrap_or_default(),
        })
        .collect();
    if labels.iter().all(|l| l.port == 0 && l.name.is_empty()) {
        Vec::new()
    } else {
        labels
    }
}

/// The lookup key of an app named with or without slashes: `fib`, `/fib` and `fib/`
/// all become `/fib`.
pub fn app_key(raw: &str) -> String {
    format!("/{}", raw.trim_matches('/'))
}

/// A new task id in Marathon's style: `<app>.<uuid>`, the app id without its leading
/// slash and with `/` replaced by `_` (so `/prod/fib` gives `prod_fib.<uuid>`).
pub fn task_id(app_id: &str) -> String {
    format!("{}.{}", task_prefix(app_id), uuid::Uuid::new_v4())
}

fn task_prefix(app_id: &str) -> String {
    app_id.trim_start_matches('/').replace('/', "_")
}

/// Marathon's task states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TaskState {
    Staging,
    Starting,
    Running,
    Killing,
    Finished,
    Failed,
    Killed,
    Lost,
}

impl TaskState {
    pub const ALL: [TaskState; 8] = [
        TaskState::Staging,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Killing,
        TaskState::Finished,
        TaskState::Failed,
        TaskState::Killed,
        TaskState::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Staging => "TASK_STAGING",
            TaskState::Starting => "TASK_STARTING",
            TaskState::Running => "TASK_RUNNING",
            TaskState::Killing => "TASK_KILLING",
            TaskState::Finished => "TASK_FINISHED",
            TaskState::Failed => "TASK_FAILED",
            TaskState::Killed => "TASK_KILLED",
            TaskState::Lost => "TASK_LOST",
        }
    }

    /// Parses a Mesos/Marathon state name; the rarer Mesos terminal states map onto
    /// the nearest Marathon one.
    pub fn parse(s: &str) -> Option<TaskState> {
        Some(match s {
            "TASK_STAGING" => TaskState::Staging,
            "TASK_STARTING" => TaskState::Starting,
            "TASK_RUNNING" => TaskState::Running,
            "TASK_KILLING" => TaskState::Killing,
            "TASK_FINISHED" => TaskState::Finished,
            "TASK_FAILED" | "TASK_ERROR" => TaskState::Failed,
            "TASK_KILLED" => TaskState::Killed,
            "TASK_LOST" | "TASK_DROPPED" | "TASK_GONE" | "TASK_UNREACHABLE" | "TASK_UNKNOWN" => {
                TaskState::Lost
            }
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Finished | TaskState::Failed | TaskState::Killed | TaskState::Lost
        )
    }
}

/// One task the scheduler wants running.
#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    /// App id with its leading slash.
    pub app: String,
    pub agent: String,
    pub instance: u32,
    pub state: TaskState,
    /// The host ports the node reported (or, before that, those assigned at launch
    /// when all were known).
    pub ports: Vec<u16>,
    /// The host ports assigned at launch, 0 where the node picks; sent in its spec.
    pub host_ports: Vec<u16>,
    pub staged_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    /// The app version it was launched with.
    pub version: DateTime<Utc>,
    /// How many tasks of this instance number ended before this one.
    pub restarts: u32,
    /// The node's last health check results, one per check of the app.
    pub health: Vec<HealthResult>,
    staged: Instant,
    started: Option<Instant>,
    /// Whether the agent has mentioned it in a heartbeat: from then on a heartbeat
    /// without it means the node no longer runs it.
    reported: bool,
}

impl Task {
    /// Running, and passing every one of the app's `checks` health checks.
    pub fn ready(&self, checks: usize) -> bool {
        self.state == TaskState::Running
            && (checks == 0 || (self.health.len() == checks && self.health.iter().all(|h| h.alive)))
    }

    /// `Some(healthy)` once the node reported results for every check.
    pub fn healthy(&self, checks: usize) -> Option<bool> {
        (checks > 0 && self.health.len() == checks).then(|| self.health.iter().all(|h| h.alive))
    }
}

#[derive(Debug)]
struct Agent {
    info: AgentInfo,
    /// Host ports the agent offers; empty when its node picks any free port.
    ports: Vec<PortRange>,
    /// Host ports of every live task the agent's last heartbeat listed, including
    /// those the scheduler no longer wants but the node is still stopping: as in
    /// Mesos, a killed task holds its ports until it has ended, so its replacement
    /// on the same fixed port waits instead of failing to bind.
    busy_ports: BTreeSet<u16>,
    last_seen: Instant,
    /// The shipper figures of the last heartbeat (`None`: it carried none). In memory
    /// only, like `last_seen`: a restarted scheduler learns them again within one
    /// heartbeat interval.
    shipper: Option<ShipperStatus>,
}

#[derive(Debug)]
struct AppRuntime {
    def: AppDef,
    /// Current launch delay; `None` until a task fails.
    delay: Option<Duration>,
    /// No task of the app is launched before this.
    launch_after: Option<Instant>,
    restarts: BTreeMap<u32, u32>,
    /// Why tasks are missing for want of an agent; the warning is logged on change.
    unplaced: Option<String>,
    /// Version of the last change that needs new tasks (config change or restart):
    /// tasks of an older one are replaced by a rolling deployment.
    config_version: DateTime<Utc>,
    /// Marathon's `lastTaskFailure`.
    last_failure: Option<Value>,
    /// Past definitions, oldest first, the current one last; at most [`MAX_VERSIONS`].
    versions: Vec<AppDef>,
}

impl AppRuntime {
    fn new(def: AppDef) -> AppRuntime {
        AppRuntime {
            // After a restart the tasks still run the last configuration, which a
            // later scaling did not change.
            config_version: def
                .version_info
                .map_or(def.version, |v| v.last_config_change_at),
            versions: vec![def.clone()],
            def,
            delay: None,
            launch_after: None,
            restarts: BTreeMap::new(),
            unplaced: None,
            last_failure: None,
        }
    }

    /// Adds the current definition to the history and drops the oldest past the
    /// bound. Versions are millisecond timestamps, and two changes within one
    /// millisecond (or after the clock stepped back) must still be two versions: the
    /// definition's version is moved to just after the newest kept one if need be.
    /// Returns the version recorded.
    ///
    /// `config_changed` says whether anything but `instances` changed: the new version
    /// is then also the last config change in `versionInfo`, else only the last
    /// scaling (`def.version_info` holds the previous definition's until then).
    fn record_version(&mut self, config_changed: bool) -> DateTime<Utc> {
        if let Some(last) = self.versions.last().map(|d| d.version) {
            if self.def.version <= last {
                self.def.version = last + chrono::Duration::milliseconds(1);
            }
        }
        let v = self.def.version;
        let last_config_change_at = match self.def.version_info {
            Some(prev) if !config_changed => prev.last_config_change_at,
            _ => v,
        };
        self.def.version_info = Some(VersionInfo {
            last_scaling_at: v,
            last_config_change_at,
        });
        self.versions.push(self.def.clone());
        let excess = self.versions.len().saturating_sub(MAX_VERSIONS);
        self.versions.drain(..excess);
        self.def.version
    }
}

/// After a restart: no placement until every agent known before has reported its
/// tasks (or `until` passes), so running tasks are adopted instead of duplicated.
#[derive(Debug)]
struct Hold {
    until: Instant,
    waiting_for: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct Counters {
    launched: u64,
    ended: BTreeMap<&'static str, u64>,
    lost: u64,
    adopted: u64,
    killed: u64,
    heartbeats: u64,
}

/// The whole cluster as the scheduler sees it.
#[derive(Debug)]
pub struct State {
    apps: BTreeMap<String, AppRuntime>,
    tasks: BTreeMap<String, Task>,
    agents: BTreeMap<String, Agent>,
    known_agents: BTreeSet<String>,
    agent_timeout: Duration,
    hold: Option<Hold>,
    /// Bumped on every change of what is persisted.
    generation: u64,
    counters: Counters,
    deployments: BTreeMap<String, Deployment>,
    /// Tasks the scheduler stopped wanting (id → agent and host ports) that the agent
    /// may still be stopping: until its heartbeat no longer lists them they are not
    /// adopted back, and their ports stay busy. Regression (review): only the ports
    /// of the last heartbeat were held (`Agent::busy_ports`), so a task killed before
    /// its agent first reported it freed its port at once, and a replacement on the
    /// same fixed port failed to bind while the old one was still stopping.
    stopping: BTreeMap<String, (String, Vec<u16>)>,
    events: broadcast::Sender<Event>,
}

impl State {
    /// A state holding the saved apps and no tasks yet. If apps and agents were saved,
    /// placement waits up to `agent_timeout` for those agents to report their tasks.
    pub fn new(saved: Saved, agent_timeout: Duration, now: Now) -> State {
        let mut versions = saved.versions;
        let apps: BTreeMap<String, AppRuntime> = saved
            .apps
            .into_iter()
            .map(|a| {
                let mut rt = AppRuntime::new(a);
                if let Some(past) = versions.remove(&rt.def.id) {
                    rt.versions = past;
                    // A state file from before versions were kept (or edited by hand)
                    // may lack the current one: it is always listed.
                    if rt.versions.last().map(|d| d.version) != Some(rt.def.version) {
                        rt.versions.retain(|d| d.version < rt.def.version);
                        rt.versions.push(rt.def.clone());
                    }
                }
                (rt.def.id.clone(), rt)
            })
            .collect();
        let known_agents: BTreeSet<String> = saved.agents.into_iter().collect();
        let hold = (!apps.is_empty() && !known_agents.is_empty()).then(|| Hold {
            until: now.at + agent_timeout,
            waiting_for: known_agents.clone(),
        });
        State {
            apps,
            tasks: BTreeMap::new(),
            agents: BTreeMap::new(),
            known_agents,
            agent_timeout,
            hold,
            generation: 0,
            counters: Counters::default(),
            deployments: BTreeMap::new(),
            stopping: BTreeMap::new(),
            events: broadcast::channel(1024).0,
        }
    }

    /// A receiver of every event from now on (`/v2/events`).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn emit(&self, kind: &'static str, mut data: Value, now: Now) {
        if let Some(o) = data.as_object_mut() {
            o.insert("eventType".into(), json!(kind));
            o.insert(
                "timestamp".into(),
                json!(now
                    .wall_millis()
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            );
        }
        // No subscriber is not an error: events are for whoever listens now.
        let _ = self.events.send(Event { kind, data });
    }

    fn emit_status(&self, t: &Task, state: TaskState, message: &str, now: Now) {
        let address = self
            .agents
            .get(&t.agent)
            .map(|a| a.info.address.clone())
            .unwrap_or_default();
        self.emit(
            "status_update_event",
            json!({
                "slaveId": t.agent, "taskId": t.id, "taskStatus": state.as_str(),
                "message": message, "appId": t.app, "host": t.agent,
                "ipAddresses": [{"ipAddress": address, "protocol": "IPv4"}],
                "ports": t.ports,
                "version": t.version.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            }),
            now,
        );
    }

    // ---- deployments ----

    pub fn deployments(&self) -> impl Iterator<Item = &Deployment> {
        self.deployments.values()
    }

    /// Starts tracking a change of `app`; a deployment of the same app still running
    /// is superseded. Returns the new deployment's id.
    fn deploy(
        &mut self,
        app: &str,
        action: &'static str,
        previous: Option<AppDef>,
        version: DateTime<Utc>,
        now: Now,
    ) -> String {
        let old: Vec<String> = self
            .deployments
            .values()
            .filter(|d| d.app == app)
            .map(|d| d.id.clone())
            .collect();
        for id in old {
            if let Some(d) = self.deployments.remove(&id) {
                info!(app, deployment = %d.id, "deployment superseded");
                self.emit(
                    "deployment_failed",
                    json!({"id": d.id, "plan": d.plan_json(), "reason": "superseded"}),
                    now,
                );
            }
        }
        let d = Deployment {
            id: uuid::Uuid::new_v4().to_string(),
            app: app.to_string(),
            version,
            action,
            previous,
        };
        self.emit(
            "deployment_info",
            json!({"plan": d.plan_json(), "currentStep": d.plan_json()["steps"][0]}),
            now,
        );
        let id = d.id.clone();
        self.deployments.insert(id.clone(), d);
        id
    }

    /// Removes a deployment. With `rollback`, the app goes back to the definition it
    /// had before (a new deployment, whose id is returned); without, the app stays as
    /// it is now (Marathon's `force=true`).
    pub fn cancel_deployment(
        &mut self,
        id: &str,
        rollback: bool,
        now: Now,
    ) -> Result<Option<(String, DateTime<Utc>)>> {
        let d = self
            .deployments
            .remove(id)
            .ok_or_else(|| Error::UnknownDeployment(id.to_string()))?;
        info!(app = %d.app, deployment = id, rollback, "deployment cancelled");
        self.emit(
            "deployment_failed",
            json!({"id": d.id, "plan": d.plan_json(), "reason": "cancelled"}),
            now,
        );
        if !rollback {
            return Ok(None);
        }
        let version = now.wall_millis();
        match d.previous {
            Some(mut prev) => {
                prev.version = version;
                if self.apps.contains_key(&prev.id) {
                    self.put_app(prev, now)?;
                } else {
                    self.create_app(prev, now)?;
                }
            }
            None => {
                self.delete_app(&d.app, now)?;
            }
        }
        let new = self
            .deployments
            .values()
            .find(|x| x.app == d.app)
            .map(|x| x.id.clone())
            .unwrap_or_default();
        // The version the rollback recorded (it may have been moved past the newest).
        let version = self.apps.get(&d.app).map_or(version, |a| a.def.version);
        Ok(Some((new, version)))
    }

    /// Ends the deployments whose app now runs exactly what it should.
    fn finish_deployments(&mut self, now: Now) {
        let done: Vec<String> = self
            .deployments
            .values()
            .filter(|d| match self.apps.get(&d.app) {
                None => !self.tasks.values().any(|t| t.app == d.app),
                Some(rt) => {
                    let checks = rt.def.health_checks().len();
                    let tasks: Vec<&Task> =
                        self.tasks.values().filter(|t| t.app == d.app).collect();
                    tasks.len() == rt.def.instances as usize
                        && tasks
                            .iter()
                            .all(|t| t.version == rt.config_version && t.ready(checks))
                }
            })
            .map(|d| d.id.clone())
            .collect();
        for id in done {
            if let Some(d) = self.deployments.remove(&id) {
                info!(app = %d.app, deployment = %d.id, action = d.action, "deployment finished");
                self.emit(
                    "deployment_success",
                    json!({"id": d.id, "plan": d.plan_json()}),
                    now,
                );
            }
        }
    }

    /// The deployments of one app, as Marathon lists them in an app (`[{"id": ..}]`).
    pub fn deployments_of(&self, app: &str) -> Vec<Value> {
        let key = app_key(app);
        self.deployments
            .values()
            .filter(|d| d.app == key)
            .map(|d| json!({"id": d.id}))
            .collect()
    }

    /// Marathon's `lastTaskFailure` of an app, also set when it cannot be placed.
    pub fn last_failure(&self, app: &str) -> Option<&Value> {
        self.apps
            .get(&app_key(app))
            .and_then(|a| a.last_failure.as_ref())
    }

    /// Why some tasks of the app cannot be placed right now, if that is so.
    pub fn unplaced(&self, app: &str) -> Option<&str> {
        self.apps
            .get(&app_key(app))
            .and_then(|a| a.unplaced.as_deref())
    }

    /// What to persist and the generation it belongs to.
    pub fn snapshot(&self) -> (u64, Saved) {
        let saved = Saved {
            format: crate::store::FORMAT,
            apps: self.apps.values().map(|a| a.def.clone()).collect(),
            agents: self.known_agents.iter().cloned().collect(),
            versions: self
                .apps
                .values()
                .map(|a| (a.def.id.clone(), a.versions.clone()))
                .collect(),
        };
        (self.generation, saved)
    }

    // ---- apps ----

    pub fn app(&self, id: &str) -> Option<&AppDef> {
        self.apps.get(&app_key(id)).map(|a| &a.def)
    }

    pub fn apps(&self) -> impl Iterator<Item = &AppDef> {
        self.apps.values().map(|a| &a.def)
    }

    /// The versions of an app, newest first (`GET /v2/apps/{id}/versions`).
    pub fn versions(&self, id: &str) -> Result<Vec<DateTime<Utc>>> {
        let rt = self
            .apps
            .get(&app_key(id))
            .ok_or_else(|| Error::UnknownApp(app_key(id)))?;
        Ok(rt.versions.iter().rev().map(|d| d.version).collect())
    }

    /// The definition an app had at `version`, if that version is still kept.
    pub fn app_version(&self, id: &str, version: DateTime<Utc>) -> Result<&AppDef> {
        let key = app_key(id);
        let rt = self
            .apps
            .get(&key)
            .ok_or_else(|| Error::UnknownApp(key.clone()))?;
        rt.versions
            .iter()
            .find(|d| d.version == version)
            .ok_or_else(|| Error::UnknownVersion {
                app: key,
                version: version.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            })
    }

    /// Adds a new app and places its tasks. Returns the definition and the id of the
    /// deployment that starts it.
    pub fn create_app(&mut self, def: AppDef, now: Now) -> Result<AppDef> {
        if self.apps.contains_key(&def.id) {
            return Err(Error::AppExists(def.id));
        }
        info!(app = %def.id, instances = def.instances, "app created");
        let mut def = def;
        def.version_info = Some(VersionInfo {
            last_scaling_at: def.version,
            last_config_change_at: def.version,
        });
        self.apps
            .insert(def.id.clone(), AppRuntime::new(def.clone()));
        self.generation += 1;
        self.deploy(&def.id, "StartApplication", None, def.version, now);
        self.place(now);
        Ok(def)
    }

    /// Replaces an app's definition (or creates it). A change of anything but
    /// `instances` replaces its tasks by a rolling deployment that honours the
    /// `upgradeStrategy`; fewer instances kill the highest instance numbers. Returns
    /// whether it was new and the deployment id.
    pub fn put_app(&mut self, def: AppDef, now: Now) -> Result<(bool, String)> {
        let Some(rt) = self.apps.get_mut(&def.id) else {
            let version = def.version;
            let id = def.id.clone();
            self.create_app(def, now)?;
            let dep = self
                .deployments
                .values()
                .find(|d| d.app == id && d.version == version)
                .map(|d| d.id.clone())
                .unwrap_or_default();
            return Ok((true, dep));
        };
        let id = def.id.clone();
        let mut def = def;
        let unchanged = def.same_but_version(&rt.def);
        if unchanged {
            // Nothing to record: the app keeps its version, as its history shows.
            def.version = rt.def.version;
        }
        let config_changed = !rt.def.same_config(&def);
        let (before, after) = (rt.def.instances, def.instances);
        let previous = std::mem::replace(&mut rt.def, def);
        rt.def.version_info = previous.version_info;
        let version = if unchanged {
            rt.def.version
        } else {
            rt.record_version(config_changed)
        };
        if config_changed {
            rt.delay = None;
            rt.launch_after = None;
            rt.restarts.clear();
            rt.config_version = version;
            info!(app = %id, instances = after, "app definition changed; replacing its tasks");
        } else if before != after {
            info!(app = %id, from = before, to = after, "app scaled");
        }
        self.generation += 1;
        let action = if config_changed {
            "RestartApplication"
        } else {
            "ScaleApplication"
        };
        let dep = self.deploy(&id, action, Some(previous), version, now);
        self.place(now);
        Ok((false, dep))
    }

    /// A rolling restart: every task of the app is replaced, honouring the
    /// `upgradeStrategy`. Returns the deployment id and the new version.
    pub fn restart_app(&mut self, id: &str, now: Now) -> Result<(String, DateTime<Utc>)> {
        let key = app_key(id);
        let rt = self
            .apps
            .get_mut(&key)
            .ok_or_else(|| Error::UnknownApp(key.clone()))?;
        let previous = rt.def.clone();
        rt.def.version = now.wall_millis();
        // Marathon counts a restart as a change of configuration: every task is new.
        let version = rt.record_version(true);
        rt.config_version = version;
        self.generation += 1;
        info!(app = %key, "app restart requested");
        let dep = self.deploy(&key, "RestartApplication", Some(previous), version, now);
        self.place(now);
        Ok((dep, version))
    }

    /// Removes an app; its tasks leave the desired sets, so the nodes stop them.
    /// Returns the definition and the deployment id.
    pub fn delete_app(&mut self, id: &str, now: Now) -> Result<(AppDef, String)> {
        let key = app_key(id);
        let rt = self
            .apps
            .remove(&key)
            .ok_or_else(|| Error::UnknownApp(key.clone()))?;
        for t in self.task_ids_of(&key) {
            self.kill(&t, "app deleted", now);
        }
        self.generation += 1;
        info!(app = %key, "app deleted");
        let dep = self.deploy(
            &key,
            "StopApplication",
            Some(rt.def.clone()),
            now.wall_millis(),
            now,
        );
        self.finish_deployments(now);
        Ok((rt.def, dep))
    }

    /// Kills one task of an app (`DELETE /v2/apps/{id}/tasks/{task}`). With `scale`,
    /// the app's instances go down by one so it is not replaced. Returns the task as it
    /// was and, with `scale`, the deployment id.
    pub fn kill_task(
        &mut self,
        app: &str,
        task: &str,
        scale: bool,
        now: Now,
    ) -> Result<(Task, Option<String>)> {
        let key = app_key(app);
        if !self.apps.contains_key(&key) {
            return Err(Error::UnknownApp(key));
        }
        let t = match self.tasks.get(task) {
            Some(t) if t.app == key => t.clone(),
            _ => return Err(Error::UnknownTask(task.to_string())),
        };
        self.kill(task, "killed through the api", now);
        let mut dep = None;
        if scale {
            if let Some(rt) = self.apps.get_mut(&key) {
                let previous = rt.def.clone();
                rt.def.instances = rt.def.instances.saturating_sub(1);
                rt.def.version = now.wall_millis();
                let version = rt.record_version(false);
                self.generation += 1;
                dep = Some(self.deploy(&key, "ScaleApplication", Some(previous), version, now));
            }
        }
        self.place(now);
        Ok((t, dep))
    }

    // ---- tasks ----

    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values()
    }

    /// The app's tasks by instance number.
    pub fn tasks_of(&self, app: &str) -> Vec<&Task> {
        let key = app_key(app);
        let mut v: Vec<&Task> = self.tasks.values().filter(|t| t.app == key).collect();
        v.sort_by_key(|t| (t.instance, t.staged_at));
        v
    }

    fn task_ids_of(&self, app: &str) -> Vec<String> {
        self.tasks
            .values()
            .filter(|t| t.app == app)
            .map(|t| t.id.clone())
            .collect()
    }

    /// Drops a task the scheduler no longer wants; the node stops it when it is missing
    /// from the agent's desired set.
    fn kill(&mut self, task: &str, reason: &str, now: Now) {
        if let Some(t) = self.tasks.remove(task) {
            let ports = t
                .ports
                .iter()
                .chain(&t.host_ports)
                .copied()
                .filter(|p| *p != 0)
                .collect();
            self.stopping.insert(t.id.clone(), (t.agent.clone(), ports));
            self.counters.killed += 1;
            info!(app = %t.app, task = %t.id, agent = %t.agent, instance = t.instance, reason, "task killed");
            self.emit_status(&t, TaskState::Killed, reason, now);
        }
    }

    /// Endpoints of the app's running tasks (their first port on their agent) that
    /// pass all their health checks (every running one when the app has none).
    pub fn services(&self, app: &str) -> Result<Vec<ServiceEndpoint>> {
        let key = app_key(app);
        let def = self
            .apps
            .get(&key)
            .ok_or_else(|| Error::UnknownApp(key.clone()))?;
        let checks = def.def.health_checks().len();
        Ok(self
            .tasks_of(&key)
            .into_iter()
            .filter(|t| t.ready(checks))
            .filter_map(|t| {
                let agent = self.agents.get(&t.agent)?;
                Some(ServiceEndpoint {
                    app: def.def.name().to_string(),
                    task: t.id.clone(),
                    host: t.agent.clone(),
                    address: agent.info.address.clone(),
                    port: *t.ports.first()?,
                    instance: t.instance,
                })
            })
            .collect())
    }

    // ---- agents ----

    pub fn agent(&self, name: &str) -> Option<&AgentInfo> {
        self.agents.get(name).map(|a| &a.info)
    }

    pub fn agents(&self) -> Vec<AgentInfo> {
        self.agents.values().map(|a| a.info.clone()).collect()
    }

    /// Registers an agent that offers no port ranges (see [`State::register`]).
    pub fn register_agent(&mut self, info: AgentInfo, now: Now) -> Result<AgentInfo> {
        self.register(info, Vec::new(), now)
    }

    /// The host port ranges an agent offers (empty: its node picks any free port).
    pub fn agent_ports(&self, name: &str) -> &[PortRange] {
        self.agents.get(name).map_or(&[], |a| a.ports.as_slice())
    }

    /// What the tasks placed on an agent take from it: scalar resources and host ports.
    pub fn agent_usage(&self, name: &str) -> (placement::Resources, BTreeSet<u16>) {
        let mut used = placement::Resources::default();
        let mut ports = BTreeSet::new();
        for t in self.tasks.values().filter(|t| t.agent == name) {
            if let Some(a) = self.apps.get(&t.app) {
                used += a.def.resources();
            }
            ports.extend(t.ports.iter().chain(&t.host_ports).filter(|p| **p != 0));
        }
        if let Some(a) = self.agents.get(name) {
            ports.extend(&a.busy_ports);
        }
        for (agent, held) in self.stopping.values() {
            if agent == name {
                ports.extend(held);
            }
        }
        (used, ports)
    }

    /// The back-pressure figures of an agent's shipper, from its last heartbeat.
    pub fn shipper_status(&self, name: &str) -> Option<&ShipperStatus> {
        self.agents.get(name).and_then(|a| a.shipper.as_ref())
    }

    /// Keeps the shipper figures of an agent's heartbeat, replacing the last ones: a
    /// heartbeat without any (an older node, or one without a shipper) clears them, so
    /// the Hosts page never shows a stale "reading paused". Unknown agents are
    /// ignored; their heartbeat is refused anyway.
    pub fn set_shipper_status(&mut self, name: &str, status: Option<ShipperStatus>) {
        if let Some(a) = self.agents.get_mut(name) {
            a.shipper = status;
        }
    }

    /// Registers an agent or updates it (address, router, resources, attributes, port
    /// ranges). A registration also counts as a sign of life.
    pub fn register(
        &mut self,
        mut info: AgentInfo,
        mut ports: Vec<PortRange>,
        now: Now,
    ) -> Result<AgentInfo> {
        // Regression (review): ranges from the HTTP body were trusted; an inverted one
        // wrapped the free-port count and panicked placement under the state lock.
        protocol::validate_port_ranges(&mut ports)
            .map_err(|e| Error::BadRequest(format!("agent {:?}: {e}", info.name)))?;
        let bad_name = info.name.is_empty()
            || info.name.len() > 253
            || !info
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if bad_name {
            return Err(Error::BadRequest(format!(
                "agent name {:?} is invalid: expected 1 to 253 letters, digits, '-', '_' or '.'",
                info.name
            )));
        }
        if info.address.trim().is_empty() {
            return Err(Error::BadRequest(format!(
                "agent {:?} has an empty address: expected the host or ip its tasks are reachable at",
                info.name
            )));
        }
        info.state = AGENT_ACTIVE.to_string();
        info.last_heartbeat = Some(now.wall);
        match self.agents.get_mut(&info.name) {
            Some(agent) => {
                info!(agent = %info.name, address = %info.address, ports = ?ports, "agent registered again");
                agent.info = info.clone();
                agent.ports = ports;
                agent.last_seen = now.at;
            }
            None => {
                info!(agent = %info.name, address = %info.address, ports = ?ports, "agent registered");
                self.agents.insert(
                    info.name.clone(),
                    Agent {
                        info: info.clone(),
                        ports,
                        busy_ports: BTreeSet::new(),
                        last_seen: now.at,
                        shipper: None,
                    },
                );
            }
        }
        if self.known_agents.insert(info.name.clone()) {
            self.generation += 1;
        }
        self.place(now);
        Ok(info)
    }

    /// Takes an agent's report of its tasks and answers the tasks it should run.
    pub fn heartbeat(
        &mut self,
        name: &str,
        statuses: Vec<TaskStatus>,
        now: Now,
    ) -> Result<Vec<TaskSpec>> {
        let agent = self
            .agents
            .get_mut(name)
            .ok_or_else(|| Error::UnknownAgent(name.to_string()))?;
        agent.last_seen = now.at;
        agent.info.last_heartbeat = Some(now.wall);
        agent.busy_ports = statuses
            .iter()
            .filter(|s| TaskState::parse(&s.state).is_some_and(|st| !st.is_terminal()))
            .flat_map(|s| s.ports.iter().copied())
            .collect();
        if agent.info.state != AGENT_ACTIVE {
            info!(agent = name, "lost agent is back");
            agent.info.state = AGENT_ACTIVE.to_string();
        }
        self.counters.heartbeats += 1;

        let reported: BTreeSet<String> = statuses.iter().map(|s| s.task.clone()).collect();
        for status in statuses {
            self.apply_status(name, status, now);
        }
        // The node lists everything it runs: a task it had reported and no longer
        // lists is gone (e.g. the node restarted and lost it).
        let vanished: Vec<String> = self
            .tasks
            .values()
            .filter(|t| t.agent == name && t.reported && !reported.contains(&t.id))
            .map(|t| t.id.clone())
            .collect();
        for id in vanished {
            if let Some(t) = self.tasks.remove(&id) {
                self.counters.lost += 1;
                warn!(app = %t.app, task = %t.id, agent = name, instance = t.instance, "task no longer reported by its agent; replacing it");
                self.emit_status(&t, TaskState::Lost, "no longer reported by its agent", now);
            }
        }
        self.stopping
            .retain(|id, (agent, _)| agent != name || reported.contains(id));
        if let Some(hold) = &mut self.hold {
            hold.waiting_for.remove(name);
        }
        self.place(now);
        Ok(self.desired(name))
    }

    fn apply_status(&mut self, agent: &str, status: TaskStatus, now: Now) {
        let Some(state) = TaskState::parse(&status.state) else {
            warn!(agent, task = %status.task, state = %status.state, "unknown task state in heartbeat; ignored");
            return;
        };
        match self.tasks.get_mut(&status.task) {
            Some(task) if task.agent != agent => {
                warn!(app = %task.app, task = %task.id, agent, placed_on = %task.agent, "task reported by another agent than it was placed on; ignored");
            }
            Some(_) if state.is_terminal() => {
                if let Some(task) = self.tasks.remove(&status.task) {
                    self.emit_status(&task, state, status.message.as_deref().unwrap_or(""), now);
                    self.task_ended(task, state, &status, now);
                }
            }
            Some(task) => {
                task.reported = true;
                if !status.ports.is_empty() {
                    task.ports = status.ports;
                }
                let became_running =
                    state == TaskState::Running && task.state != TaskState::Running;
                if became_running {
                    task.started_at = Some(status.started_at.map(millis).unwrap_or(now.wall));
                    task.started = Some(now.at);
                    info!(app = %task.app, task = %task.id, agent, instance = task.instance, ports = ?task.ports, "task running");
                }
                task.state = state;
                let checks = self
                    .apps
                    .get(&task.app)
                    .map(|a| a.def.health_checks())
                    .unwrap_or_default();
                let before = task.healthy(checks.len());
                task.health = status.health;
                let after = task.healthy(checks.len());
                // Past the limit of any check: kill it, so that placement replaces it.
                let failing = task.health.iter().zip(checks.iter()).find(|(h, c)| {
                    c.max_consecutive_failures > 0
                        && h.consecutive_failures >= c.max_consecutive_failures
                });
                let failing =
                    failing.map(|(h, _)| h.last_failure_cause.clone().unwrap_or_default());
                let task = task.clone();
                if became_running {
                    self.emit_status(&task, state, "", now);
                }
                if before != after {
                    if let Some(alive) = after {
                        info!(app = %task.app, task = %task.id, agent, alive, "task health changed");
                        self.emit(
                            "health_status_changed_event",
                            json!({"appId": task.app, "taskId": task.id, "instanceId": task.id, "alive": alive,
                                   "version": task.version.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)}),
                            now,
                        );
                    }
                }
                if let Some(cause) = failing {
                    warn!(app = %task.app, task = %task.id, agent, cause = %cause, "task failed its health check too often; killing and replacing it");
                    self.emit(
                        "unhealthy_task_kill_event",
                        json!({"appId": task.app, "taskId": task.id, "instanceId": task.id, "host": task.agent,
                               "slaveId": task.agent, "reason": cause,
                               "version": task.version.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)}),
                        now,
                    );
                    self.set_last_failure(
                        &task,
                        "TASK_KILLED",
                        &format!("health check failed: {cause}"),
                        now,
                    );
                    self.kill(&task.id, "health check failed", now);
                }
            }
            None if state.is_terminal() => {
                debug!(agent, task = %status.task, state = %status.state, "end of a task no longer tracked");
            }
            None if self.stopping.contains_key(&status.task) => {
                debug!(agent, task = %status.task, "killed task still stopping; not adopted");
            }
            None => self.adopt(agent, status, state, now),
        }
    }

    /// Takes over a task a node runs that the scheduler does not know (it restarted, or
    /// the agent was lost and came back), if its app still needs an instance.
    fn adopt(&mut self, agent: &str, status: TaskStatus, state: TaskState, now: Now) {
        let key = app_key(&status.app);
        let Some(rt) = self.apps.get(&key) else {
            debug!(agent, task = %status.task, app = %key, "running task of an unknown app; the node will stop it");
            return;
        };
        if !status.task.starts_with(&format!("{}.", task_prefix(&key))) {
            warn!(agent, task = %status.task, app = %key, "task id does not belong to its app; not adopted");
            return;
        }
        let used: Vec<u32> = self
            .tasks
            .values()
            .filter(|t| t.app == key)
            .map(|t| t.instance)
            .collect();
        if used.len() >= rt.def.instances as usize {
            info!(agent, task = %status.task, app = %key, "app has all its instances; extra task not adopted, the node will stop it");
            return;
        }
        // The number it was launched with, if still free: logs and metrics of an
        // adopted task keep their instance.
        let instance = match status.instance {
            Some(n) if n < rt.def.instances && !used.contains(&n) => n,
            _ => placement::lowest_free_instance(used),
        };
        let running = state == TaskState::Running;
        let task = Task {
            id: status.task.clone(),
            app: key.clone(),
            agent: agent.to_string(),
            instance,
            state,
            host_ports: status.ports.clone(),
            ports: status.ports,
            staged_at: now.wall_millis(),
            // The node's launch time, so adoption does not look like a restart.
            started_at: running.then(|| status.started_at.map(millis).unwrap_or(now.wall_millis())),
            version: rt.config_version,
            restarts: rt.restarts.get(&instance).copied().unwrap_or(0),
            health: status.health,
            staged: now.at,
            started: running.then_some(now.at),
            reported: true,
        };
        self.counters.adopted += 1;
        info!(app = %key, task = %task.id, agent, instance, "task adopted");
        self.tasks.insert(task.id.clone(), task);
    }

    /// Bookkeeping for a task that ended on its own: count the restart of its instance
    /// and push the app's next launch out by the back-off.
    fn task_ended(&mut self, task: Task, state: TaskState, status: &TaskStatus, now: Now) {
        *self.counters.ended.entry(state.as_str()).or_default() += 1;
        if state != TaskState::Finished {
            let msg = status
                .message
                .clone()
                .unwrap_or_else(|| format!("exit code {:?}", status.exit_code));
            self.set_last_failure(&task, state.as_str(), &msg, now);
        }
        let Some(rt) = self.apps.get_mut(&task.app) else {
            return;
        };
        *rt.restarts.entry(task.instance).or_default() += 1;
        let ran = task.started.map(|s| now.at.saturating_duration_since(s));
        let healthy_run = ran.is_some_and(|r| r >= BACKOFF_RESET_AFTER);
        let previous = if healthy_run { None } else { rt.delay };
        let delay = placement::next_delay(
            previous,
            rt.def.backoff_base(),
            rt.def.backoff_factor,
            rt.def.max_launch_delay_seconds,
        );
        rt.delay = Some(delay);
        rt.launch_after = Some(now.at.checked_add(delay).unwrap_or(now.at));
        warn!(
            app = %task.app,
            task = %task.id,
            agent = %task.agent,
            instance = task.instance,
            state = state.as_str(),
            exit_code = ?status.exit_code,
            message = status.message.as_deref().unwrap_or(""),
            delay_ms = delay.as_millis() as u64,
            "task ended; replacing it after the back-off"
        );
    }

    fn set_last_failure(&mut self, task: &Task, state: &str, message: &str, now: Now) {
        if let Some(rt) = self.apps.get_mut(&task.app) {
            rt.last_failure = Some(json!({
                "appId": task.app, "host": task.agent, "message": message, "state": state,
                "taskId": task.id, "instanceId": task.id, "slaveId": task.agent,
                "timestamp": now.wall_millis().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "version": task.version.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            }));
        }
    }

    /// The tasks an agent should run, as node-protocol specs.
    pub fn desired(&self, agent: &str) -> Vec<TaskSpec> {
        let mut specs: Vec<(&str, u32, TaskSpec)> = self
            .tasks
            .values()
            .filter(|t| t.agent == agent && !t.state.is_terminal())
            .filter_map(|t| {
                let def = &self.apps.get(&t.app)?.def;
                Some((
                    t.app.as_str(),
                    t.instance,
                    TaskSpec {
                        app: def.name().to_string(),
                        task: t.id.clone(),
                        instance: t.instance,
                        cmd: def.command(),
                        env: def.env.clone(),
                        port_count: def.port_count(),
                        ports: if t.host_ports.iter().all(|p| *p == 0) {
                            Vec::new()
                        } else {
                            t.host_ports.clone()
                        },
                        port_definitions: port_labels(def),
                        health_checks: def.health_checks().to_vec(),
                        mem: Some(def.mem),
                        disk: (def.disk > 0.0).then_some(def.disk),
                        user: def.user(),
                    },
                ))
            })
            .collect();
        specs.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        specs.into_iter().map(|(_, _, s)| s).collect()
    }

    // ---- reconcile ----

    /// The periodic pass: agents silent for longer than the timeout are lost with their
    /// tasks, tasks never reported by their agent time out, missing tasks are placed.
    pub fn reconcile(&mut self, now: Now) {
        let timeout = self.agent_timeout;
        let lost: Vec<String> = self
            .agents
            .values()
            .filter(|a| {
                a.info.state == AGENT_ACTIVE
                    && now.at.saturating_duration_since(a.last_seen) > timeout
            })
            .map(|a| a.info.name.clone())
            .collect();
        for name in lost {
            if let Some(agent) = self.agents.get_mut(&name) {
                agent.info.state = AGENT_LOST.to_string();
                let silent_ms = now
                    .at
                    .saturating_duration_since(agent.last_seen)
                    .as_millis() as u64;
                warn!(agent = %name, silent_ms, "agent lost: no heartbeat");
            }
            let ids: Vec<String> = self
                .tasks
                .values()
                .filter(|t| t.agent == name)
                .map(|t| t.id.clone())
                .collect();
            for id in ids {
                if let Some(t) = self.tasks.remove(&id) {
                    self.emit_status(&t, TaskState::Lost, "agent lost", now);
                    self.counters.lost += 1;
                    *self
                        .counters
                        .ended
                        .entry(TaskState::Lost.as_str())
                        .or_default() += 1;
                    warn!(app = %t.app, task = %t.id, agent = %name, instance = t.instance, "task lost with its agent; replacing it");
                }
            }
        }

        let stuck: Vec<String> = self
            .tasks
            .values()
            .filter(|t| !t.reported && now.at.saturating_duration_since(t.staged) > STAGING_TIMEOUT)
            .map(|t| t.id.clone())
            .collect();
        for id in stuck {
            if let Some(t) = self.tasks.remove(&id) {
                let status = TaskStatus {
                    task: t.id.clone(),
                    app: t.app.clone(),
                    state: TaskState::Failed.as_str().to_string(),
                    ports: Vec::new(),
                    exit_code: None,
                    message: Some(format!(
                        "agent did not report the task within {}s",
                        STAGING_TIMEOUT.as_secs()
                    )),
                    instance: Some(t.instance),
                    health: Vec::new(),
                    started_at: None,
                };
                self.task_ended(t, TaskState::Failed, &status, now);
            }
        }
        self.place(now);
    }

    /// Starts the tasks every app is missing and kills those it has too many of.
    fn place(&mut self, now: Now) {
        if let Some(hold) = &self.hold {
            if now.at < hold.until && !hold.waiting_for.is_empty() {
                return;
            }
            if !hold.waiting_for.is_empty() {
                warn!(silent = ?hold.waiting_for, "agents known before the restart did not report in time; placing tasks anyway");
            }
            self.hold = None;
        }
        let ids: Vec<String> = self.apps.keys().cloned().collect();
        for id in ids {
            self.place_app(&id, now);
        }
        self.finish_deployments(now);
    }

    /// Converges one app on its definition. Tasks of an older `config_version` are
    /// replaced as a rolling deployment: new tasks are started while the total stays
    /// within `instances * (1 + maximumOverCapacity)`, and an old task is killed only
    /// while at least `instances * minimumHealthCapacity` tasks stay ready (running and
    /// healthy).
    fn place_app(&mut self, id: &str, now: Now) {
        let Some(rt) = self.apps.get(id) else { return };
        let want = rt.def.instances as usize;
        let checks = rt.def.health_checks().len();
        let (min_health, max_over) = rt.def.upgrade_strategy();
        let version = rt.config_version;
        let backing_off = rt.launch_after.is_some_and(|t| now.at < t);
        let oldest_first = rt.def.kill_selection() == KillSelection::OldestFirst;
        // (not ready, instance, id) so that sorting puts the cheapest kill last.
        let mut old: Vec<(bool, u32, String)> = Vec::new();
        let mut new: Vec<(bool, u32, String)> = Vec::new();
        for t in self.tasks.values().filter(|t| t.app == id) {
            let entry = (!t.ready(checks), t.instance, t.id.clone());
            if t.version == version {
                new.push(entry)
            } else {
                old.push(entry)
            }
        }
        old.sort();
        new.sort();
        if new.len() >= want {
            for (_, _, t) in old.drain(..) {
                self.kill(&t, "replaced by the new version", now);
            }
            // Scale down. Not-ready tasks go first; then, by `killSelection`, the
            // youngest (Marathon's default: the highest instance numbers, started
            // last) or the oldest.
            let staged = |id: &str| self.tasks.get(id).map(|t| t.staged);
            let mut order: Vec<(bool, Option<Instant>, u32, String)> = new
                .into_iter()
                .map(|(not_ready, instance, id)| (not_ready, staged(&id), instance, id))
                .collect();
            order.sort_by(|a, b| {
                let age = if oldest_first {
                    b.1.cmp(&a.1).then(b.2.cmp(&a.2))
                } else {
                    a.1.cmp(&b.1).then(a.2.cmp(&b.2))
                };
                // Kept first: ready before not ready, then by age.
                a.0.cmp(&b.0).then(age)
            });
            for (_, _, _, t) in order.into_iter().skip(want) {
                self.kill(&t, "scale down", now);
            }
            if let Some(rt) = self.apps.get_mut(id) {
                rt.unplaced = None;
            }
            return;
        }
        let max_total = want + (want as f64 * max_over).floor() as usize;
        let min_ready = (want as f64 * min_health).ceil() as usize;
        let new_ready = new.iter().filter(|t| !t.0).count();
        let mut ready = new_ready + old.iter().filter(|t| !t.0).count();
        let mut killed_any = false;
        // Old tasks beyond what is wanted, not ready ones, then ready ones while the
        // healthy capacity allows.
        while let Some((not_ready, _, t)) = old.last().cloned() {
            let surplus = old.len() + new.len() > max_total.max(want);
            let allowed = not_ready || ready > min_ready || surplus;
            if !allowed {
                break;
            }
            old.pop();
            if !not_ready {
                ready -= 1;
            }
            self.kill(&t, "replaced by the new version", now);
            killed_any = true;
        }
        let mut launched = 0;
        if !backing_off {
            while new.len() + launched < want
                && old.len() + new.len() + launched < max_total.max(want)
            {
                match self.choose_agent(id) {
                    Ok(agent) => {
                        self.launch(id, &agent, now);
                        launched += 1;
                    }
                    Err(reason) => {
                        let missing = want - new.len() - launched;
                        self.unplaceable(id, missing, reason, now);
                        return;
                    }
                }
            }
        }
        // Neither capacity bound lets the deployment move (minimumHealthCapacity 1 with
        // maximumOverCapacity 0): once every new task is ready, give up one old one.
        // Not while a new task waits for room: that would kill every old one in turn.
        let placeable = self.apps.get(id).is_some_and(|rt| rt.unplaced.is_none());
        if !killed_any
            && launched == 0
            && !backing_off
            && placeable
            && new_ready == new.len()
            && new.len() < want
        {
            if let Some((_, _, t)) = old.pop() {
                self.kill(&t, "replaced by the new version", now);
                self.place_app(id, now);
                return;
            }
        }
        if let Some(rt) = self.apps.get_mut(id) {
            if rt.unplaced.take().is_some() {
                info!(app = id, "app can be placed again");
            }
        }
    }

    fn unplaceable(&mut self, id: &str, missing: usize, reason: String, now: Now) {
        let Some(rt) = self.apps.get_mut(id) else {
            return;
        };
        let message = format!("cannot place {missing} task(s): {reason}");
        if rt.unplaced.as_deref() != Some(message.as_str()) {
            warn!(app = id, missing, reason = %reason, "app cannot be placed; waiting");
            rt.last_failure = Some(json!({
                "appId": id, "host": "", "message": message, "state": "TASK_STAGING",
                "taskId": "", "slaveId": "",
                "timestamp": now.wall_millis().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "version": rt.def.version.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            }));
            rt.unplaced = Some(message);
        }
    }

    /// The agent for the next task of `app`, or why there is none (each agent's
    /// reason, for the app's message).
    fn choose_agent(&self, app: &str) -> std::result::Result<String, String> {
        let Some(def) = self.apps.get(app).map(|a| &a.def) else {
            return Err("app is gone".into());
        };
        let constraints = def.constraints();
        // tasks, tasks of this app, resources used, host ports used
        type Usage = (usize, usize, placement::Resources, BTreeSet<u16>);
        let mut usage: BTreeMap<&str, Usage> = BTreeMap::new();
        let mut placed: Vec<AgentView> = Vec::new();
        for t in self.tasks.values() {
            let u = usage.entry(t.agent.as_str()).or_default();
            u.0 += 1;
            if t.app == app {
                u.1 += 1;
                if let Some(a) = self.agents.get(&t.agent) {
                    placed.push(AgentView {
                        name: &a.info.name,
                        attributes: &a.info.attributes,
                    });
                }
            }
            if let Some(a) = self.apps.get(&t.app) {
                u.2 += a.def.resources();
            }
            u.3.extend(t.ports.iter().chain(&t.host_ports).filter(|p| **p != 0));
        }
        for a in self.agents.values() {
            usage
                .entry(a.info.name.as_str())
                .or_default()
                .3
                .extend(&a.busy_ports);
        }
        for (agent, held) in self.stopping.values() {
            usage.entry(agent.as_str()).or_default().3.extend(held);
        }
        let requested = def.requested_ports();
        let no_ports = BTreeSet::new();
        let active: Vec<&Agent> = self
            .agents
            .values()
            .filter(|a| a.info.state == AGENT_ACTIVE)
            .collect();
        if active.is_empty() {
            return Err("no active agent".into());
        }
        let all: Vec<AgentView> = active
            .iter()
            .map(|a| AgentView {
                name: &a.info.name,
                attributes: &a.info.attributes,
            })
            .collect();
        let mut reasons = Vec::new();
        let mut candidates = Vec::new();
        for (a, view) in active.iter().zip(&all) {
            let (tasks, app_tasks, used, ports) = match usage.get(a.info.name.as_str()) {
                Some((t, at, used, ports)) => (*t, *at, *used, ports),
                None => (0, 0, placement::Resources::default(), &no_ports),
            };
            if let Err(why) = placement::fits(&a.info.resources, used, def.resources()) {
                reasons.push(format!("{}: {why}", a.info.name));
                continue;
            }
            if let Err(why) = placement::check_ports(&requested, &a.ports, ports) {
                reasons.push(format!("{}: {why}", a.info.name));
                continue;
            }
            if let Some(why) = constraints
                .iter()
                .find_map(|c| placement::allows(c, *view, &placed, &all).err())
            {
                reasons.push(format!("{}: {why}", a.info.name));
                continue;
            }
            candidates.push(Candidate {
                agent: a.info.name.as_str(),
                tasks,
                app_tasks,
            });
        }
        placement::choose(&candidates)
            .map(str::to_string)
            .ok_or_else(|| reasons.join("; "))
    }

    fn launch(&mut self, app: &str, agent: &str, now: Now) {
        let Some(rt) = self.apps.get(app) else { return };
        let version = rt.config_version;
        // Instance numbers are unique among the tasks of one version: a new task of a
        // rolling deployment takes the number of an old one it is replacing.
        let instance = placement::lowest_free_instance(
            self.tasks
                .values()
                .filter(|t| t.app == app && t.version == version)
                .map(|t| t.instance),
        );
        let requested = rt.def.requested_ports();
        let (_, used) = self.agent_usage(agent);
        // `choose_agent` checked the ports under this same lock, so this cannot fail;
        // should it anyway, the node picks (and a fixed port would then be missing).
        let host_ports = placement::assign_ports(
            &requested,
            self.agent_ports(agent),
            &used,
            &mut rand::rng(),
        )
        .unwrap_or_else(|why| {
            warn!(app, agent, why = %why, "host ports could not be assigned; the node picks");
            vec![0; requested.len()]
        });
        let ports = if host_ports.contains(&0) {
            Vec::new()
        } else {
            host_ports.clone()
        };
        let id = task_id(app);
        let task = Task {
            id: id.clone(),
            app: app.to_string(),
            agent: agent.to_string(),
            instance,
            state: TaskState::Staging,
            ports,
            host_ports,
            staged_at: now.wall_millis(),
            started_at: None,
            version,
            restarts: rt.restarts.get(&instance).copied().unwrap_or(0),
            health: Vec::new(),
            staged: now.at,
            started: None,
            reported: false,
        };
        self.counters.launched += 1;
        info!(app, task = %id, agent, instance, "task placed");
        self.emit_status(&task, TaskState::Staging, "", now);
        self.tasks.insert(id, task);
    }

    // ---- metrics ----

    /// The scheduler's metrics in the Prometheus text format.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, rows: Vec<(String, u64)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        gauge(
            "sandtrail_scheduler_apps",
            "Apps defined.",
            "gauge",
            vec![(String::new(), self.apps.len() as u64)],
        );
        let live = [
            TaskState::Staging,
            TaskState::Starting,
            TaskState::Running,
            TaskState::Killing,
        ];
        gauge(
            "sandtrail_scheduler_tasks",
            "Tasks the scheduler wants running, by state.",
            "gauge",
            live.iter()
                .map(|s| {
                    let n = self.tasks.values().filter(|t| t.state == *s).count() as u64;
                    (format!("{{state=\"{}\"}}", s.as_str()), n)
                })
                .collect(),
        );
        gauge(
            "sandtrail_scheduler_tasks_wanted",
            "Sum of the instances of all apps.",
            "gauge",
            vec![(
                String::new(),
                self.apps.values().map(|a| u64::from(a.def.instances)).sum(),
            )],
        );
        gauge(
            "sandtrail_scheduler_agents",
            "Registered agents, by state.",
            "gauge",
            [AGENT_ACTIVE, AGENT_LOST]
                .iter()
                .map(|s| {
                    let n = self.agents.values().filter(|a| a.info.state == *s).count() as u64;
                    (format!("{{state=\"{s}\"}}"), n)
                })
                .collect(),
        );
        gauge(
            "sandtrail_scheduler_tasks_launched_total",
            "Tasks placed on an agent.",
            "counter",
            vec![(String::new(), self.counters.launched)],
        );
        gauge(
            "sandtrail_scheduler_tasks_ended_total",
            "Tasks that ended on their own or were lost, by final state.",
            "counter",
            TaskState::ALL
                .iter()
                .filter(|s| s.is_terminal())
                .map(|s| {
                    let n = self.counters.ended.get(s.as_str()).copied().unwrap_or(0);
                    (format!("{{state=\"{}\"}}", s.as_str()), n)
                })
                .collect(),
        );
        gauge(
            "sandtrail_scheduler_tasks_lost_total",
            "Tasks replaced because their agent went silent or stopped listing them.",
            "counter",
            vec![(String::new(), self.counters.lost)],
        );
        gauge(
            "sandtrail_scheduler_tasks_adopted_total",
            "Running tasks taken over from a node's report.",
            "counter",
            vec![(String::new(), self.counters.adopted)],
        );
        gauge(
            "sandtrail_scheduler_tasks_killed_total",
            "Tasks the scheduler stopped wanting (scale down, update, delete).",
            "counter",
            vec![(String::new(), self.counters.killed)],
        );
        gauge(
            "sandtrail_scheduler_heartbeats_total",
            "Agent heartbeats handled.",
            "counter",
            vec![(String::new(), self.counters.heartbeats)],
        );
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn app(id: &str, instances: u32) -> AppDef {
        // Marathon's defaults for everything else: 0.1 cpus, 128 MiB, one dynamic port.
        crate::control::appdef::parse_app(
            &json!({"id": id, "cmd": "sleep 1000", "instances": instances}),
            None,
            "2026-11-23T10:00:00Z".parse().unwrap(),
        )
        .unwrap()
    }

    fn agent(name: &str) -> AgentInfo {
        AgentInfo {
            name: name.into(),
            address: format!("10.0.0.{}", name.len()),
            router_url: String::new(),
            resources: BTreeMap::new(),
            attributes: BTreeMap::new(),
            last_heartbeat: None,
            state: String::new(),
        }
    }

    fn status(spec: &TaskSpec, state: &str, ports: &[u16]) -> TaskStatus {
        TaskStatus {
            task: spec.task.clone(),
            app: spec.app.clone(),
            state: state.into(),
            ports: ports.to_vec(),
            exit_code: None,
            message: None,
            instance: None,
            health: Vec::new(),
            started_at: None,
        }
    }

    fn cluster(agents: &[&str], now: Now) -> State {
        let mut s = State::new(Saved::default(), Duration::from_secs(10), now);
        for a in agents {
            s.register_agent(agent(a), now).unwrap();
        }
        s
    }

    #[test]
    fn task_id_is_app_with_underscores_dot_uuid_v4() {
        let id = task_id("/prod/fib");
        let (prefix, uuid) = id.split_once('.').unwrap();
        assert_eq!(prefix, "prod_fib");
        let parsed = uuid::Uuid::parse_str(uuid).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_ne!(task_id("/fib"), task_id("/fib"));
        assert!(task_id("fib").starts_with("fib."));
    }

    #[test]
    fn app_key_normalises_slashes() {
        assert_eq!(app_key("fib"), "/fib");
        assert_eq!(app_key("/prod/fib/"), "/prod/fib");
    }

    #[test]
    fn instances_spread_over_agents_one_each() {
        let now = Now::current();
        let mut s = cluster(&["a", "b", "c"], now);
        s.create_app(app("fib", 3), now).unwrap();
        for name in ["a", "b", "c"] {
            let specs = s.heartbeat(name, vec![], now).unwrap();
            assert_eq!(specs.len(), 1, "{name}: {specs:?}");
        }
        let mut instances: Vec<u32> = s.tasks().map(|t| t.instance).collect();
        instances.sort();
        assert_eq!(instances, vec![0, 1, 2]);
        // A second app also spreads, and fills the least loaded agents first.
        s.create_app(app("web", 2), now).unwrap();
        let per_agent: Vec<usize> = ["a", "b", "c"].iter().map(|a| s.desired(a).len()).collect();
        assert_eq!(per_agent, vec![2, 2, 1]);
    }

    #[test]
    fn agent_resources_limit_placement() {
        let now = Now::current();
        let mut s = State::new(Saved::default(), Duration::from_secs(10), now);
        let mut small = agent("small");
        small.resources.insert("cpus".into(), 0.15);
        s.register_agent(small, now).unwrap();
        s.create_app(app("fib", 2), now).unwrap();
        assert_eq!(s.tasks().count(), 1, "the second task does not fit");
        s.register_agent(agent("big"), now).unwrap();
        assert_eq!(s.desired("big").len(), 1);
    }

    #[test]
    fn failed_task_is_replaced_after_the_back_off_with_its_instance_number() {
        let now = Now::current();
        let mut s = cluster(&["a", "b"], now);
        s.create_app(app("fib", 2), now).unwrap();
        let spec = s.desired("b").remove(0);
        let t1 = now.after(Duration::from_millis(10));
        let after = s
            .heartbeat("b", vec![status(&spec, "TASK_FAILED", &[])], t1)
            .unwrap();
        assert!(after.is_empty(), "back-off of 1s not over yet: {after:?}");
        let t2 = t1.after(Duration::from_millis(1100));
        let after = s.heartbeat("b", vec![], t2).unwrap();
        assert_eq!(after.len(), 1, "{after:?}");
        assert_eq!(after[0].instance, spec.instance);
        assert_ne!(after[0].task, spec.task);
        assert_eq!(
            s.tasks_of("fib")
                .iter()
                .find(|t| t.instance == spec.instance)
                .unwrap()
                .restarts,
            1
        );

        // The second failure waits 1.15s, not 1s.
        let t3 = t2.after(Duration::from_millis(10));
        s.heartbeat("b", vec![status(&after[0], "TASK_FAILED", &[])], t3)
            .unwrap();
        assert!(s
            .heartbeat("b", vec![], t3.after(Duration::from_millis(1100)))
            .unwrap()
            .is_empty());
        assert_eq!(
            s.heartbeat("b", vec![], t3.after(Duration::from_millis(1200)))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn back_off_resets_after_a_long_run() {
        let now = Now::current();
        let mut s = cluster(&["a"], now);
        let mut def = app("fib", 1);
        def.backoff_seconds = 2.0;
        s.create_app(def, now).unwrap();
        let mut t = now;
        // Three quick failures grow the delay past 2s.
        for _ in 0..3 {
            let spec = s.heartbeat("a", vec![], t).unwrap().remove(0);
            s.heartbeat("a", vec![status(&spec, "TASK_FAILED", &[])], t)
                .unwrap();
            t = t.after(Duration::from_secs(10));
        }
        assert!(s.apps[&app_key("fib")].delay.unwrap() > Duration::from_secs(2));
        // A run longer than BACKOFF_RESET_AFTER, then a failure: back to the base delay.
        let spec = s.heartbeat("a", vec![], t).unwrap().remove(0);
        s.heartbeat("a", vec![status(&spec, "TASK_RUNNING", &[31000])], t)
            .unwrap();
        t = t.after(BACKOFF_RESET_AFTER + Duration::from_secs(1));
        s.heartbeat("a", vec![status(&spec, "TASK_FINISHED", &[])], t)
            .unwrap();
        assert_eq!(s.apps[&app_key("fib")].delay, Some(Duration::from_secs(2)));
    }

    #[test]
    fn silent_agent_is_lost_and_its_tasks_move() {
        let now = Now::current();
        let mut s = cluster(&["a", "b"], now);
        s.create_app(app("fib", 2), now).unwrap();
        let on_a = s.desired("a");
        assert_eq!(on_a.len(), 1);
        let later = now.after(Duration::from_secs(11));
        s.heartbeat("b", vec![], later).unwrap();
        s.reconcile(later);
        assert_eq!(s.agent("a").unwrap().state, AGENT_LOST);
        assert!(s.desired("a").is_empty());
        let on_b = s.desired("b");
        assert_eq!(on_b.len(), 2, "{on_b:?}");
        assert!(on_b.iter().any(|t| t.instance == on_a[0].instance));
        // The agent comes back still running the old task: the app is full, so it is
        // not adopted and stays out of the desired set (the node stops it).
        let back = s
            .heartbeat("a", vec![status(&on_a[0], "TASK_RUNNING", &[31000])], later)
            .unwrap();
        assert!(back.is_empty());
        assert_eq!(s.agent("a").unwrap().state, AGENT_ACTIVE);
    }

    #[test]
    fn task_missing_from_a_later_report_is_replaced() {
        let now = Now::current();
        let mut s = cluster(&["a"], now);
        s.create_app(app("fib", 1), now).unwrap();
        let spec = s.desired("a").remove(0);
        s.heartbeat("a", vec![status(&spec, "TASK_RUNNING", &[31000])], now)
            .unwrap();
        let next = s.heartbeat("a", vec![], now).unwrap();
        assert_eq!(next.len(), 1);
        assert_ne!(next[0].task, spec.task);
        assert_eq!(next[0].instance, 0);
    }

    #[test]
    fn scale_down_kills_the_highest_instances() {
        let now = Now::current();
        let mut s = cluster(&["a", "b", "c"], now);
        s.create_app(app("fib", 3), now).unwrap();
        s.put_app(app("fib", 1), now).unwrap();
        let left: Vec<u32> = s.tasks().map(|t| t.instance).collect();
        assert_eq!(left, vec![0]);
    }

    fn running(
        s: &mut State,
        agent: &str,
        specs: &[TaskSpec],
        health: &[bool],
        now: Now,
    ) -> Vec<TaskSpec> {
        let statuses = specs
            .iter()
            .map(|sp| {
                let mut st = status(sp, "TASK_RUNNING", &[31000]);
                st.health = health
                    .iter()
                    .map(|alive| HealthResult {
                        alive: *alive,
                        consecutive_failures: u32::from(!alive),
                        ..HealthResult::default()
                    })
                    .collect();
                st
            })
            .collect();
        s.heartbeat(agent, statuses, now).unwrap()
    }

    fn with_health_check(mut def: AppDef, max_failures: u32) -> AppDef {
        def.set_extra(
            "healthChecks",
            json!([{"protocol": "HTTP", "path": "/", "maxConsecutiveFailures": max_failures}]),
        );
        def
    }

    #[test]
    fn scale_down_honours_kill_selection_and_kills_unready_tasks_first() {
        let now = Now::current();
        let mut s = cluster(&["a"], now);
        let mut def = app("fib", 3);
        // Set from the start: changing it later is a config change, which replaces
        // every task (a new version) instead of scaling down.
        def.set_extra("killSelection", json!("OLDEST_FIRST"));
        s.create_app(def.clone(), now).unwrap();
        let specs = s.desired("a");
        // Instances 0 and 1 run; 2 is still staging.
        running(&mut s, "a", &specs[..2], &[], now);
        def.instances = 2;
        s.put_app(def.clone(), now).unwrap();
        let left: Vec<u32> = s.tasks_of("fib").iter().map(|t| t.instance).collect();
        assert_eq!(left, vec![0, 1], "the staging task went first");
        def.instances = 1;
        s.put_app(def, now).unwrap();
        let left: Vec<u32> = s.tasks_of("fib").iter().map(|t| t.instance).collect();
        assert_eq!(
            left,
            vec![1],
            "same age: the lower instance counts as older"
        );
    }

    #[test]
    fn restart_without_any_capacity_slack_still_progresses_one_task_at_a_time() {
        let now = Now::current();
        let mut s = cluster(&["a"], now);
        let mut def = app("fib", 2);
        def.set_extra(
            "upgradeStrategy",
            json!({"minimumHealthCapacity": 1.0, "maximumOverCapacity": 0.0}),
        );
        s.create_app(def, now).unwrap();
        let old = s.desired("a");
        running(&mut s, "a", &old, &[], now);
        s.restart_app("fib", now).unwrap();
        let step = s.desired("a");
        assert_eq!(step.len(), 2, "never more than 2: {step:?}");
        let old_left = step
            .iter()
            .filter(|t| old.iter().any(|o| o.task == t.task))
            .count();
        assert_eq!(old_left, 1, "one old task made room: {step:?}");
        let step = running(&mut s, "a", &step, &[], now);
        let step = running(&mut s, "a", &step, &[], now);
        assert_eq!(step.len(), 2);
        assert!(
            step.iter().all(|t| old.iter().all(|o| o.task != t.task)),
            "{step:?}"
        );
        assert_eq!(s.deployments().count(), 0);
    }

    #[test]
    fn changed_definition_replaces_tasks_new_ready_before_old_killed() {
        let now = Now::current();
        let mut s = cluster(&["a"], now);
        s.create_app(app("fib", 1), now).unwrap();
        let old = s.desired("a").remove(0);
        running(&mut s, "a", std::slice::from_ref(&old), &[], now);
        assert_eq!(s.deployments().count(), 0, "start deployment finished");
        let mut def = app("fib", 1);
        def.cmd = Some("sleep 2000".into());
        def.version = now.wall + chrono::Duration::seconds(1);
        s.put_app(def, now).unwrap();
        // maximumOverCapacity 1: the new task starts next to the old one.
        let both = s.desired("a");
        assert_eq!(both.len(), 2, "{both:?}");
        let new = both.iter().find(|t| t.task != old.task).unwrap().clone();
        assert_eq!(new.cmd, "sleep 2000");
        assert_eq!(
            new.instance, old.instance,
            "the new task takes the old one's number"
        );
        assert_eq!(s.deployments().count(), 1);
        // Once the new task runs, the old one goes and the deployment is done.
        let left = running(&mut s, "a", &[old.clone(), new.clone()], &[], now);
        assert_eq!(
            left.iter().map(|t| &t.task).collect::<Vec<_>>(),
            vec![&new.task]
        );
        assert_eq!(s.deployments().count(), 0);
    }

    #[test]
    fn rolling_restart_honours_minimum_health_capacity_without_over_capacity() {
        let now = Now::current();
        let mut s = cluster(&["a"], now);
        let mut def = app("fib", 2);
        def.set_extra(
            "upgradeStrategy",
            json!({"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.0}),
        );
        s.create_app(def, now).unwrap();
        let old = s.desired("a");
        running(&mut s, "a", &old, &[], now);
        s.restart_app("fib", now.after(Duration::from_millis(5)))
            .unwrap();
        // One old task may go (2 * 0.5 = 1 must stay ready), none may be added first.
        let step1 = s.desired("a");
        assert_eq!(step1.len(), 2, "{step1:?}");
        let old_left: Vec<&TaskSpec> = step1
            .iter()
            .filter(|t| old.iter().any(|o| o.task == t.task))
            .collect();
        assert_eq!(old_left.len(), 1, "{step1:?}");
        // While the new task is not running, the last old one stays.
        let new1: Vec<TaskSpec> = step1
            .iter()
            .filter(|t| old_left[0].task != t.task)
            .cloned()
            .collect();
        let mut report = vec![old_left[0].clone()];
        assert_eq!(
            s.heartbeat(
                "a",
                report
                    .iter()
                    .map(|t| status(t, "TASK_RUNNING", &[1]))
                    .collect(),
                now
            )
            .unwrap()
            .len(),
            2
        );
        report.extend(new1.clone());
        let step2 = running(&mut s, "a", &report, &[], now);
        assert!(
            step2.iter().all(|t| old.iter().all(|o| o.task != t.task)),
            "{step2:?}"
        );
        assert_eq!(step2.len(), 2);
    }

    #[test]
    fn health_check_failures_past_the_limit_kill_and_replace_the_task() {
        let now = Now::current();
        let mut s = cluster(&["a"], now);
        s.create_app(with_health_check(app("fib", 1), 3), now)
            .unwrap();
        let spec = s.desired("a").remove(0);
        assert_eq!(spec.health_checks.len(), 1);
        let mut events = s.subscribe();
        running(&mut s, "a", std::slice::from_ref(&spec), &[], now);
        assert!(
            s.services("fib").unwrap().is_empty(),
            "no result yet: not healthy"
        );
        running(&mut s, "a", std::slice::from_ref(&spec), &[true], now);
        assert_eq!(s.services("fib").unwrap().len(), 1);
        running(&mut s, "a", std::slice::from_ref(&spec), &[false], now);
        assert!(
            s.services("fib").unwrap().is_empty(),
            "unhealthy is not listed"
        );
        let mut st = status(&spec, "TASK_RUNNING", &[31000]);
        st.health = vec![HealthResult {
            alive: false,
            consecutive_failures: 3,
            last_failure_cause: Some("status 500".into()),
            ..HealthResult::default()
        }];
        let after = s.heartbeat("a", vec![st], now).unwrap();
        assert_eq!(after.len(), 1);
        assert_ne!(after[0].task, spec.task, "replaced");
        assert_eq!(after[0].instance, spec.instance);
        let failure = s.last_failure("fib").unwrap();
        assert!(
            failure["message"].as_str().unwrap().contains("status 500"),
            "{failure}"
        );
        let mut kinds = Vec::new();
        while let Ok(e) = events.try_recv() {
            kinds.push(e.kind);
        }
        for k in [
            "status_update_event",
            "health_status_changed_event",
            "unhealthy_task_kill_event",
        ] {
            assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
        }
    }

    #[test]
    fn unique_hostname_leaves_the_extra_instance_unplaced_and_says_why() {
        let now = Now::current();
        let mut s = cluster(&["a", "b"], now);
        let mut def = app("fib", 3);
        def.set_extra("constraints", json!([["hostname", "UNIQUE"]]));
        s.create_app(def, now).unwrap();
        assert_eq!(s.tasks().count(), 2);
        let why = s.unplaced("fib").unwrap();
        assert!(
            why.contains("cannot place 1 task") && why.contains("hostname UNIQUE"),
            "{why}"
        );
        assert!(s.last_failure("fib").unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("UNIQUE"));
        // A third agent: placed, and the reason clears.
        s.register_agent(agent("c"), now).unwrap();
        assert_eq!(s.desired("c").len(), 1);
        assert!(s.unplaced("fib").is_none());
    }

    #[test]
    fn attribute_constraints_pick_matching_agents() {
        let now = Now::current();
        let mut s = State::new(Saved::default(), Duration::from_secs(10), now);
        for (name, rack) in [("a", "r1"), ("b", "r1"), ("c", "r2")] {
            let mut ag = agent(name);
            ag.attributes.insert("rack".into(), rack.into());
            s.register_agent(ag, now).unwrap();
        }
        let mut def = app("fib", 2);
        def.set_extra("constraints", json!([["rack", "LIKE", "r1"]]));
        s.create_app(def, now).unwrap();
        assert!(s.desired("c").is_empty());
        assert_eq!(s.desired("a").len() + s.desired("b").len(), 2);
        let mut def = app("web", 4);
        def.set_extra("constraints", json!([["rack", "MAX_PER", "2"]]));
        s.create_app(def, now).unwrap();
        assert_eq!(s.tasks_of("web").len(), 4);
        let on_r2 = s.tasks_of("web").iter().filter(|t| t.agent == "c").count();
        assert_eq!(on_r2, 2);
    }

    #[test]
    fn killing_a_task_with_scale_lowers_instances_without_replacement() {
        let now = Now::current();
        let mut s = cluster(&["a"], now);
        s.create_app(app("fib", 2), now).unwrap();
        let t = s.desired("a").remove(0);
        let (_, dep) = s.kill_task("fib", &t.task, true, now).unwrap();
        assert!(dep.is_some());
        assert_eq!(s.app("fib").unwrap().instances, 1);
        assert_eq!(s.tasks().count(), 1);
        let t2 = s.desired("a").remove(0);
        let (_, dep) = s.kill_task("fib", &t2.task, false, now).unwrap();
        assert!(dep.is_none());
        assert_eq!(s.desired("a").len(), 1, "replaced");
        assert!(matches!(
            s.kill_task("fib", "nope", false, now),
            Err(Error::UnknownTask(_))
        ));
    }

    #[test]
    fn version_info_moves_scaling_on_kill_with_scale_and_both_on_restart() {
        let now = Now::current();
        let mut s = cluster(&["a"], now);
        s.create_app(app("fib", 2), now).unwrap();
        let created = s.app("fib").unwrap().version;
        let info = |s: &State| s.app("fib").unwrap().version_info.unwrap();
        assert_eq!(info(&s).last_config_change_at, created);
        let t = s.desired("a").remove(0);
        s.kill_task("fib", &t.task, true, now).unwrap();
        let scaled = s.app("fib").unwrap().version;
        assert!(scaled > created);
        assert_eq!(
            info(&s),
            VersionInfo {
                last_scaling_at: scaled,
                last_config_change_at: created
            }
        );
        let (_, restarted) = s.restart_app("fib", now).unwrap();
        assert!(restarted > scaled);
        assert_eq!(
            info(&s),
            VersionInfo {
                last_scaling_at: restarted,
                last_config_change_at: restarted
            }
        );
        // A restored state runs the tasks of the last config change, not of the
        // last scaling: they are adopted, not replaced.
        let mut def = s.app("fib").unwrap().clone();
        def.version = restarted + chrono::Duration::seconds(5);
        def.version_info = Some(VersionInfo {
            last_scaling_at: def.version,
            last_config_change_at: restarted,
        });
        assert_eq!(AppRuntime::new(def).config_version, restarted);
    }

    #[test]
    fn cancelling_a_deployment_rolls_the_app_back() {
        let now = Now::current();
        let mut s = cluster(&["a"], now);
        s.create_app(app("fib", 1), now).unwrap();
        let spec = s.desired("a");
        running(&mut s, "a", &spec, &[], now);
        let (_, dep) = s.put_app(app("fib", 5), now).unwrap();
        let mut small = State::new(Saved::default(), Duration::from_secs(10), now);
        assert!(small.cancel_deployment(&dep, true, now).is_err());
        let out = s.cancel_deployment(&dep, true, now).unwrap();
        assert!(out.is_some());
        assert_eq!(s.app("fib").unwrap().instances, 1);
    }

    #[test]
    fn after_a_restart_running_tasks_are_adopted_not_duplicated() {
        let now = Now::current();
        let saved = Saved {
            format: 1,
            apps: vec![app("fib", 2)],
            agents: vec!["a".into(), "b".into()],
            ..Saved::default()
        };
        let mut s = State::new(saved, Duration::from_secs(10), now);
        s.register_agent(agent("a"), now).unwrap();
        s.register_agent(agent("b"), now).unwrap();
        assert_eq!(s.tasks().count(), 0, "held until the known agents report");
        let running = TaskStatus {
            task: "fib.1b4e28ba-2fa1-41d2-883f-0016d3cca427".into(),
            app: "fib".into(),
            state: "TASK_RUNNING".into(),
            ports: vec![31005],
            exit_code: None,
            message: None,
            instance: None,
            health: Vec::new(),
            // Regression (compose suite step 7): adoption used to stamp startedAt
            // with the adoption time, so a scheduler restart looked like a restart
            // of every task.
            started_at: Some("2026-11-20T08:00:00.123456Z".parse().unwrap()),
        };
        let a = s.heartbeat("a", vec![running.clone()], now).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].task, running.task);
        let adopted = s.tasks().find(|t| t.id == running.task).unwrap();
        assert_eq!(
            adopted.started_at,
            Some("2026-11-20T08:00:00.123Z".parse().unwrap()),
            "adopted task keeps the node's launch time"
        );
        assert_eq!(s.tasks().count(), 1, "still held for b");
        let b = s.heartbeat("b", vec![], now).unwrap();
        assert_eq!(b.len(), 1, "b gets the missing instance");
        assert_eq!(b[0].instance, 1);
        let eps = s.services("/fib").unwrap();
        assert_eq!(eps.len(), 1);
        assert_eq!((eps[0].port, eps[0].host.as_str()), (31005, "a"));
    }

    #[test]
    fn hold_ends_after_the_timeout_without_the_known_agents() {
        let now = Now::current();
        let saved = Saved {
            format: 1,
            apps: vec![app("fib", 1)],
            agents: vec!["gone".into()],
            ..Saved::default()
        };
        let mut s = State::new(saved, Duration::from_secs(10), now);
        s.register_agent(agent("a"), now).unwrap();
        s.reconcile(now.after(Duration::from_secs(5)));
        assert_eq!(s.tasks().count(), 0);
        s.heartbeat("a", vec![], now.after(Duration::from_secs(9)))
            .unwrap();
        s.reconcile(now.after(Duration::from_secs(11)));
        assert_eq!(s.tasks().count(), 1);
    }

    #[test]
    fn unknown_agent_heartbeat_is_an_error() {
        let now = Now::current();
        let mut s = cluster(&[], now);
        assert!(matches!(
            s.heartbeat("x", vec![], now),
            Err(Error::UnknownAgent(_))
        ));
    }

    fn fixed_port_app(id: &str, instances: u32, port: u16) -> AppDef {
        let mut def = app(id, instances);
        def.require_ports = true;
        def.port_definitions[0].port = port;
        def.port_definitions[0].name = Some("http".into());
        def
    }

    #[test]
    fn a_fixed_host_port_takes_one_task_per_agent_and_says_why_not_more() {
        let now = Now::current();
        let mut s = cluster(&["a", "b"], now);
        s.create_app(fixed_port_app("web", 3, 8080), now).unwrap();
        for agent in ["a", "b"] {
            let specs = s.desired(agent);
            assert_eq!(specs.len(), 1, "{agent}: {specs:?}");
            assert_eq!(specs[0].ports, vec![8080]);
            assert_eq!(specs[0].port_definitions[0].name, "http");
        }
        let why = s.unplaced("web").unwrap();
        assert!(
            why.contains("cannot place 1 task")
                && why.contains("a: host port 8080 is already in use")
                && why.contains("b: host port 8080 is already in use"),
            "{why}"
        );
        // Another app needing the same port is blocked as well; one on another port,
        // or with the same number as a mere service port, is not.
        s.create_app(fixed_port_app("other", 1, 8080), now).unwrap();
        assert!(s.tasks_of("other").is_empty());
        s.create_app(fixed_port_app("admin", 2, 9090), now).unwrap();
        assert_eq!(s.tasks_of("admin").len(), 2);
        let mut svc = fixed_port_app("svc", 2, 8080);
        svc.require_ports = false;
        s.create_app(svc, now).unwrap();
        assert_eq!(s.tasks_of("svc").len(), 2);
        assert!(s
            .desired("a")
            .iter()
            .all(|t| t.app != "svc" || t.ports.is_empty()));
        // A task reported on a port counts as holding it, whoever assigned it.
        s.put_app(fixed_port_app("web", 2, 8080), now).unwrap();
        assert!(s.unplaced("web").is_none());
    }

    #[test]
    fn a_replacement_waits_for_the_killed_task_to_free_its_fixed_port() {
        let now = Now::current();
        let mut s = cluster(&["a"], now);
        s.create_app(with_health_check(fixed_port_app("web", 1, 8080), 3), now)
            .unwrap();
        let old = s.desired("a").remove(0);
        let mut st = status(&old, "TASK_RUNNING", &[8080]);
        st.health = vec![HealthResult {
            alive: false,
            consecutive_failures: 3,
            ..HealthResult::default()
        }];
        // Killed for failing its check; the node still lists it while it stops.
        let after = s.heartbeat("a", vec![st.clone()], now).unwrap();
        assert!(after.is_empty(), "{after:?}");
        assert!(s
            .unplaced("web")
            .unwrap()
            .contains("host port 8080 is already in use"));
        st.health.clear();
        assert!(s.heartbeat("a", vec![st], now).unwrap().is_empty());
        // Gone from the report: its port is free and the replacement is placed.
        let after = s.heartbeat("a", vec![], now).unwrap();
        assert_eq!(after.len(), 1, "{after:?}");
        assert_ne!(after[0].task, old.task);
        assert_eq!(after[0].ports, vec![8080]);
    }

    #[test]
    fn a_task_killed_before_its_agent_reported_it_still_holds_its_fixed_port() {
        let now = Now::current();
        let mut s = cluster(&["a"], now);
        s.create_app(fixed_port_app("web", 1, 8080), now).unwrap();
        let old = s.desired("a").remove(0);
        // Deleted and created again before any heartbeat listed the first task: the
        // node may be starting it right now, bound to 8080.
        s.delete_app("web", now).unwrap();
        s.create_app(fixed_port_app("web", 1, 8080), now).unwrap();
        assert!(
            s.desired("a").is_empty(),
            "the old task still holds 8080: {:?}",
            s.desired("a")
        );
        assert!(s.agent_usage("a").1.contains(&8080));
        // The node stopped it (no longer listed): the port is free again.
        let after = s.heartbeat("a", vec![], now).unwrap();
        assert_eq!(after.len(), 1, "{after:?}");
        assert_ne!(after[0].task, old.task);
        assert_eq!(after[0].ports, vec![8080]);
    }

    #[test]
    fn registration_refuses_inverted_overlapping_or_zero_port_ranges() {
        let now = Now::current();
        let mut s = State::new(Saved::default(), Duration::from_secs(10), now);
        let r = |begin, end| PortRange { begin, end };
        for bad in [
            vec![r(32000, 31000)],
            vec![r(31000, 31010), r(31005, 31020)],
            vec![r(0, 10)],
        ] {
            let err = s
                .register(agent("a"), bad.clone(), now)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("\"a\"") && err.contains("port ranges"),
                "{bad:?}: {err}"
            );
        }
        assert!(s.agent("a").is_none(), "nothing registered");
        s.register(agent("a"), vec![r(31010, 31020), r(31000, 31005)], now)
            .unwrap();
        assert_eq!(s.agent_ports("a"), &[r(31000, 31005), r(31010, 31020)]);
    }

    #[test]
    fn dynamic_ports_come_from_the_agents_ranges() {
        let now = Now::current();
        let mut s = State::new(Saved::default(), Duration::from_secs(10), now);
        let range = PortRange {
            begin: 31000,
            end: 31002,
        };
        s.register(agent("a"), vec![range], now).unwrap();
        let mut def = app("web", 2);
        def.port_definitions.push(def.port_definitions[0].clone());
        s.create_app(def, now).unwrap();
        let specs = s.desired("a");
        assert_eq!(specs.len(), 1, "3 ports offered, 2 per task: {specs:?}");
        assert!(specs[0].ports.iter().all(|p| range.contains(*p)));
        assert_ne!(specs[0].ports[0], specs[0].ports[1]);
        let task = s.tasks_of("web")[0].clone();
        assert_eq!(
            task.ports, specs[0].ports,
            "known at once, shown while staging"
        );
        let why = s.unplaced("web").unwrap();
        assert!(
            why.contains("needs 2 dynamic host port(s), 1 free in its port ranges [31000-31002]"),
            "{why}"
        );
        // A fixed port outside the ranges is refused on that agent.
        s.create_app(fixed_port_app("fixed", 1, 8080), now).unwrap();
        assert!(s
            .unplaced("fixed")
            .unwrap()
            .contains("host port 8080 is outside the agent's port ranges"));
        // An agent without ranges: the node picks (0 in the spec means "any").
        s.register_agent(agent("b"), now).unwrap();
        let on_b: Vec<TaskSpec> = s.desired("b");
        assert_eq!(on_b.len(), 2, "{on_b:?}");
        let web_b = on_b.iter().find(|t| t.app == "web").unwrap();
        assert!(web_b.ports.is_empty(), "{web_b:?}");
        assert_eq!(
            on_b.iter().find(|t| t.app == "fixed").unwrap().ports,
            vec![8080]
        );
    }

    #[test]
    fn disk_limits_placement_like_cpus_and_mem() {
        let now = Now::current();
        let mut s = State::new(Saved::default(), Duration::from_secs(10), now);
        let mut small = agent("small");
        small.resources.insert("disk".into(), 1000.0);
        s.register_agent(small, now).unwrap();
        let mut def = app("db", 2);
        def.disk = 600.0;
        s.create_app(def, now).unwrap();
        assert_eq!(s.tasks().count(), 1);
        let why = s.unplaced("db").unwrap();
        assert!(
            why.contains("small: not enough disk: needs 600, 600 of 1000 in use"),
            "{why}"
        );
        assert_eq!(s.agent_usage("small").0.disk, 600.0);
        // The node takes it as the task's log budget; an app without one leaves it
        // to the node's default.
        assert_eq!(s.desired("small")[0].disk, Some(600.0));
        s.create_app(app("web", 1), now).unwrap();
        let web = s.desired("small");
        let web = web.iter().find(|t| t.app == "web").unwrap();
        assert_eq!(web.disk, None, "disk 0 is unset");
    }

    #[test]
    fn every_change_records_a_version_and_the_history_survives_a_reload() {
        let now = Now::current();
        let mut s = cluster(&["a"], now);
        let at = |ms: i64| now.wall_millis() + chrono::Duration::milliseconds(ms);
        let mut def = app("fib", 1);
        def.version = at(0);
        s.create_app(def.clone(), now).unwrap();
        // Scale only: a version too, as in Marathon.
        def.instances = 2;
        def.version = at(1);
        s.put_app(def.clone(), now).unwrap();
        // The same definition again: nothing changes, no version.
        def.version = at(2);
        s.put_app(def.clone(), now).unwrap();
        assert_eq!(s.app("fib").unwrap().version, at(1));
        def.cmd = Some("sleep 2000".into());
        def.version = at(3);
        s.put_app(def.clone(), now).unwrap();
        let (_, restarted) = s
            .restart_app("fib", now.after(Duration::from_millis(10)))
            .unwrap();
        let versions = s.versions("fib").unwrap();
        assert_eq!(
            versions,
            vec![restarted, at(3), at(1), at(0)],
            "newest first"
        );
        assert_eq!(s.app("fib").unwrap().version, versions[0]);
        assert_eq!(s.app_version("fib", at(0)).unwrap().instances, 1);
        assert_eq!(
            s.app_version("fib", at(1)).unwrap().cmd.as_deref(),
            Some("sleep 1000")
        );
        assert!(matches!(
            s.app_version("fib", at(2)),
            Err(Error::UnknownVersion { .. })
        ));

        let (_, saved) = s.snapshot();
        let json = serde_json::to_vec(&saved).unwrap();
        let back = State::new(
            serde_json::from_slice(&json).unwrap(),
            Duration::from_secs(10),
            now,
        );
        assert_eq!(back.versions("fib").unwrap(), versions);
        assert_eq!(
            back.app_version("fib", at(3)).unwrap(),
            s.app_version("fib", at(3)).unwrap()
        );
    }

    #[test]
    fn versions_are_bounded_and_an_old_state_file_lists_the_current_one() {
        let now = Now::current();
        let mut s = cluster(&[], now);
        let mut def = app("fib", 0);
        for i in 1..=(MAX_VERSIONS as i64 + 5) {
            def.instances = i as u32;
            def.version = now.wall_millis() + chrono::Duration::milliseconds(i);
            s.put_app(def.clone(), now).unwrap();
        }
        let versions = s.versions("fib").unwrap();
        assert_eq!(versions.len(), MAX_VERSIONS);
        assert_eq!(versions[0], def.version, "the newest are kept");

        // Two changes within one millisecond are still two versions, in order.
        let mut quick = app("quick", 1);
        s.create_app(quick.clone(), now).unwrap();
        quick.instances = 2;
        s.put_app(quick.clone(), now).unwrap();
        let v = s.versions("quick").unwrap();
        assert_eq!(
            v,
            vec![
                quick.version + chrono::Duration::milliseconds(1),
                quick.version
            ]
        );
        assert_eq!(s.app("quick").unwrap().version, v[0]);
        assert_eq!(s.app_version("quick", v[1]).unwrap().instances, 1);

        // A state file written before versions were kept: the current one is listed.
        let saved = Saved {
            apps: vec![app("old", 1)],
            ..Saved::default()
        };
        let s = State::new(saved, Duration::from_secs(10), now);
        assert_eq!(s.versions("old").unwrap(), vec![app("old", 1).version]);
    }

    #[test]
    fn metrics_count_tasks_by_state() {
        let now = Now::current();
        let mut s = cluster(&["a"], now);
        s.create_app(app("fib", 2), now).unwrap();
        let m = s.metrics();
        assert!(
            m.contains("sandtrail_scheduler_tasks{state=\"TASK_STAGING\"} 2"),
            "{m}"
        );
        assert!(
            m.contains("sandtrail_scheduler_agents{state=\"active\"} 1"),
            "{m}"
        );
        assert!(
            m.contains("sandtrail_scheduler_tasks_launched_total 2"),
            "{m}"
        );
    }
}
