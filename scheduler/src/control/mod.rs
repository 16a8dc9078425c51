//! The control plane's model: apps and their versions, deployments, tasks, agents,
//! and the rules that move between them (placement, back-off, lost agents, adoption,
//! scale down), apart from its HTTP face (`crate::api`), which only translates. Nothing
//! here knows about HTTP, so every rule is tested without a server.
//!
//! `State` is plain data behind one mutex, changed by short synchronous methods that
//! take the current time as an argument ([`Now`]), so every rule can be unit-tested by
//! passing a later `Now` instead of sleeping. The trade-off is a single lock for the
//! whole cluster: fine for the tens of agents and hundreds of tasks this targets, and
//! it keeps every decision consistent (no task is ever placed twice).
//!
//! The data is defined here and its behaviour lives in one file per section, each an
//! `impl State` block: [`appdef`] (what an app is: validation and the typed
//! definition), `apps` (create, change, delete, versions), `deployments`, `tasks`,
//! `agents` (registration, heartbeats), `reconcile` (reports applied, adoption after a
//! restart, the periodic pass and placement, with the pure arithmetic in
//! [`placement`]) and `metrics`; [`store`] is where the state is saved, behind a trait.
//!
//! Terminal tasks are dropped from the state at once (as Marathon does); what survives
//! of them is the per-app launch delay, the per-instance restart count and the app's
//! `lastTaskFailure`. Every change of an app is a deployment, tracked until the app's
//! tasks match it (rolling replacement within the `upgradeStrategy`), and a version in
//! the app's history (the last [`MAX_VERSIONS`]); every state change is published on a
//! broadcast channel that `/v2/events` streams.

pub mod appdef;
pub mod container;
pub mod placement;
pub mod store;

mod agents;
mod apps;
mod deployments;
mod metrics;
mod reconcile;
mod tasks;

pub use apps::app_key;
pub use deployments::Deployment;
pub use tasks::{task_id, Task, TaskState};

use crate::{Error, Result};
use appdef::KillSelection;
pub use appdef::{AppDef, PortDefinition, VersionInfo};
use chrono::{DateTime, Utc};
use placement::{AgentView, Candidate};
use protocol::{
    AgentInfo, HealthResult, PortLabel, PortRange, ServiceEndpoint, ShipperStatus, TaskSpec,
    TaskStatus,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use store::Saved;
use tokio::sync::{broadcast, watch};
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
    /// Agents an operator drained (`POST /v1/agents/{name}/drain`): nothing is placed
    /// on them; kept across restarts.
    drained: BTreeSet<String>,
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
    /// Per agent, how many times the scheduler changed what it wants there (a task
    /// placed or killed). Nodes long-poll it (`/v1/agents/{name}/changes`) and
    /// heartbeat at once when it moves: a launch no longer waits for the next
    /// heartbeat, up to a second (up to a tenth of a whole pipeline benchmark run).
    desired: watch::Sender<BTreeMap<String, u64>>,
    /// See [`State::desired_seed`].
    desired_seed: u64,
    /// Moves on every change of what the outside sees of tasks and agents (every
    /// event, and agent registrations, which have none): the DNS zone is rebuilt when
    /// it moves, instead of on a poll (`crate::dns`).
    view: watch::Sender<u64>,
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
        let drained: BTreeSet<String> = saved.drained.into_iter().collect();
        let hold = (!apps.is_empty() && !known_agents.is_empty()).then(|| Hold {
            until: now.at + agent_timeout,
            waiting_for: known_agents.clone(),
        });
        State {
            apps,
            tasks: BTreeMap::new(),
            agents: BTreeMap::new(),
            known_agents,
            drained,
            agent_timeout,
            hold,
            generation: 0,
            counters: Counters::default(),
            deployments: BTreeMap::new(),
            stopping: BTreeMap::new(),
            events: broadcast::channel(1024).0,
            desired: watch::channel(BTreeMap::new()).0,
            desired_seed: now.wall_millis().timestamp_millis().max(0) as u64,
            view: watch::channel(0).0,
        }
    }

    /// A receiver that is marked changed whenever tasks, their health or agents
    /// change (what `crate::dns` rebuilds its zone on).
    pub fn view_changes(&self) -> watch::Receiver<u64> {
        self.view.subscribe()
    }

    /// Marks the outside view changed (see the `view` field).
    fn view_changed(&self) {
        self.view.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver of every event from now on (`/v2/events`).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Per agent, a counter that moves whenever the scheduler places a task there or
    /// kills one (see the `desired` field); what `/v1/agents/{name}/changes` waits on.
    pub fn desired_changes(&self) -> watch::Receiver<BTreeMap<String, u64>> {
        self.desired.subscribe()
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
        self.view_changed();
    }

    /// What the scheduler wants on `agent` changed (a task placed there, or one it
    /// ran killed, timed out or lost): moves that agent's count.
    fn desired_changed(&self, agent: &str) {
        let seed = self.desired_seed;
        self.desired.send_modify(|m| {
            let n = m.entry(agent.to_string()).or_insert(seed);
            *n = n.wrapping_add(1);
        });
    }

    /// Where every agent's count starts: the scheduler's start in milliseconds, so
    /// that a restarted scheduler's counts do not meet a node's last seen value again.
    pub fn desired_seed(&self) -> u64 {
        self.desired_seed
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

    /// What to persist and the generation it belongs to.
    pub fn snapshot(&self) -> (u64, Saved) {
        let saved = Saved {
            format: crate::control::store::FORMAT,
            apps: self.apps.values().map(|a| a.def.clone()).collect(),
            agents: self.known_agents.iter().cloned().collect(),
            versions: self
                .apps
                .values()
                .map(|a| (a.def.id.clone(), a.versions.clone()))
                .collect(),
            drained: self.drained.iter().cloned().collect(),
        };
        (self.generation, saved)
    }
}

#[cfg(test)]
pub(crate) mod testkit {
    //! What the sections' tests build their clusters from.
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

    pub(crate) fn agent(name: &str) -> AgentInfo {
        AgentInfo {
            name: name.into(),
            address: format!("10.0.0.{}", name.len()),
            router_url: String::new(),
            resources: BTreeMap::new(),
            attributes: BTreeMap::new(),
            last_heartbeat: None,
            state: String::new(),
            containerizers: Vec::new(),
        }
    }

    pub(crate) fn status(spec: &TaskSpec, state: &str, ports: &[u16]) -> TaskStatus {
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

    pub(crate) fn cluster(agents: &[&str], now: Now) -> State {
        let mut s = State::new(Saved::default(), Duration::from_secs(10), now);
        for a in agents {
            s.register_agent(agent(a), now).unwrap();
        }
        s
    }

    pub(crate) fn running(
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

    pub(crate) fn with_health_check(mut def: AppDef, max_failures: u32) -> AppDef {
        def.set_extra(
            "healthChecks",
            json!([{"protocol": "HTTP", "path": "/", "maxConsecutiveFailures": max_failures}]),
        );
        def
    }

    pub(crate) fn fixed_port_app(id: &str, instances: u32, port: u16) -> AppDef {
        let mut def = app(id, instances);
        def.require_ports = true;
        def.port_definitions[0].port = port;
        def.port_definitions[0].name = Some("http".into());
        def
    }
}
