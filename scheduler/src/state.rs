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
//! of them is the per-app launch delay and the per-instance restart count.

use crate::placement::{self, Candidate};
use crate::store::Saved;
use crate::{Error, Result};
use chrono::{DateTime, Utc};
use protocol::{AgentInfo, ServiceEndpoint, TaskSpec, TaskStatus};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// A task that has run at least this long before it ends resets its app's launch
/// delay: it was a healthy start, not a crash loop.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);
/// A placed task that its agent has not reported within this time counts as failed
/// (Marathon's `task_launch_timeout`).
pub const STAGING_TIMEOUT: Duration = Duration::from_secs(300);

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
        DateTime::from_timestamp_millis(self.wall.timestamp_millis()).unwrap_or(self.wall)
    }
}

/// One entry of an app's `portDefinitions`. The port is Marathon's service port: host
/// ports are always allocated dynamically by the node (`PORT0`..).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortDefinition {
    #[serde(default)]
    pub port: u16,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn default_protocol() -> String {
    "tcp".to_string()
}

/// A validated app definition, serialised in Marathon's camelCase shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppDef {
    /// Normalised with a leading slash: `/fib`, `/prod/fib`.
    pub id: String,
    #[serde(default)]
    pub cmd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    pub instances: u32,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub cpus: f64,
    pub mem: f64,
    #[serde(default)]
    pub port_definitions: Vec<PortDefinition>,
    pub backoff_seconds: f64,
    pub backoff_factor: f64,
    pub max_launch_delay_seconds: f64,
    /// Marathon fields accepted but not acted on yet (`labels`, `healthChecks`,
    /// `constraints`...), kept verbatim so they are shown back and survive restarts.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
    pub version: DateTime<Utc>,
}

impl AppDef {
    /// The id without its leading slash: what nodes, task ids and logs call the app.
    pub fn name(&self) -> &str {
        self.id.trim_start_matches('/')
    }

    /// The shell command a node runs: `cmd`, or `args` quoted for the shell.
    pub fn command(&self) -> String {
        match (&self.cmd, &self.args) {
            (Some(cmd), _) => cmd.clone(),
            (None, Some(args)) => args
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
            (None, None) => String::new(),
        }
    }

    pub fn port_count(&self) -> u16 {
        u16::try_from(self.port_definitions.len()).unwrap_or(u16::MAX)
    }

    /// Whether `other` runs the same thing (everything but `instances` and `version`
    /// equal): if not, the running tasks have to be replaced.
    pub fn same_config(&self, other: &AppDef) -> bool {
        let strip = |a: &AppDef| AppDef {
            instances: 0,
            version: DateTime::UNIX_EPOCH,
            ..a.clone()
        };
        strip(self) == strip(other)
    }

    fn backoff_base(&self) -> f64 {
        self.backoff_seconds
    }
}

fn shell_quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if safe {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
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
    pub ports: Vec<u16>,
    pub staged_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    /// The app version it was launched with.
    pub version: DateTime<Utc>,
    /// How many tasks of this instance number ended before this one.
    pub restarts: u32,
    staged: Instant,
    started: Option<Instant>,
    /// Whether the agent has mentioned it in a heartbeat: from then on a heartbeat
    /// without it means the node no longer runs it.
    reported: bool,
}

#[derive(Debug)]
struct Agent {
    info: AgentInfo,
    last_seen: Instant,
}

#[derive(Debug)]
struct AppRuntime {
    def: AppDef,
    /// Current launch delay; `None` until a task fails.
    delay: Option<Duration>,
    /// No task of the app is launched before this.
    launch_after: Option<Instant>,
    restarts: BTreeMap<u32, u32>,
    /// Set while tasks are missing for want of an agent, so the warning is logged once.
    waiting: bool,
}

impl AppRuntime {
    fn new(def: AppDef) -> AppRuntime {
        AppRuntime {
            def,
            delay: None,
            launch_after: None,
            restarts: BTreeMap::new(),
            waiting: false,
        }
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
}

impl State {
    /// A state holding the saved apps and no tasks yet. If apps and agents were saved,
    /// placement waits up to `agent_timeout` for those agents to report their tasks.
    pub fn new(saved: Saved, agent_timeout: Duration, now: Now) -> State {
        let apps: BTreeMap<String, AppRuntime> = saved
            .apps
            .into_iter()
            .map(|a| (a.id.clone(), AppRuntime::new(a)))
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
        }
    }

    /// What to persist and the generation it belongs to.
    pub fn snapshot(&self) -> (u64, Saved) {
        let saved = Saved {
            format: crate::store::FORMAT,
            apps: self.apps.values().map(|a| a.def.clone()).collect(),
            agents: self.known_agents.iter().cloned().collect(),
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

    /// Adds a new app and places its tasks.
    pub fn create_app(&mut self, def: AppDef, now: Now) -> Result<AppDef> {
        if self.apps.contains_key(&def.id) {
            return Err(Error::AppExists(def.id));
        }
        info!(app = %def.id, instances = def.instances, "app created");
        self.apps
            .insert(def.id.clone(), AppRuntime::new(def.clone()));
        self.generation += 1;
        self.place(now);
        Ok(def)
    }

    /// Replaces an app's definition (or creates it). A change of anything but
    /// `instances` replaces all its tasks (rolling upgrades come with deployments);
    /// fewer instances kill the highest instance numbers. Returns whether it was new.
    pub fn put_app(&mut self, def: AppDef, now: Now) -> Result<bool> {
        let Some(rt) = self.apps.get_mut(&def.id) else {
            self.create_app(def, now)?;
            return Ok(true);
        };
        let id = def.id.clone();
        let config_changed = !rt.def.same_config(&def);
        let (before, after) = (rt.def.instances, def.instances);
        rt.def = def;
        if config_changed {
            rt.delay = None;
            rt.launch_after = None;
            rt.restarts.clear();
            info!(app = %id, instances = after, "app definition changed; replacing its tasks");
            let old: Vec<String> = self.task_ids_of(&id);
            for t in old {
                self.kill(&t, "app definition changed");
            }
        } else if before != after {
            info!(app = %id, from = before, to = after, "app scaled");
        }
        self.generation += 1;
        self.place(now);
        Ok(false)
    }

    /// Removes an app; its tasks leave the desired sets, so the nodes stop them.
    pub fn delete_app(&mut self, id: &str) -> Result<AppDef> {
        let key = app_key(id);
        let rt = self
            .apps
            .remove(&key)
            .ok_or_else(|| Error::UnknownApp(key.clone()))?;
        for t in self.task_ids_of(&key) {
            self.kill(&t, "app deleted");
        }
        self.generation += 1;
        info!(app = %key, "app deleted");
        Ok(rt.def)
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
    fn kill(&mut self, task: &str, reason: &str) {
        if let Some(t) = self.tasks.remove(task) {
            self.counters.killed += 1;
            info!(app = %t.app, task = %t.id, agent = %t.agent, instance = t.instance, reason, "task killed");
        }
    }

    /// Endpoints of the app's running tasks (their first port on their agent).
    pub fn services(&self, app: &str) -> Result<Vec<ServiceEndpoint>> {
        let key = app_key(app);
        let def = self
            .apps
            .get(&key)
            .ok_or_else(|| Error::UnknownApp(key.clone()))?;
        Ok(self
            .tasks_of(&key)
            .into_iter()
            .filter(|t| t.state == TaskState::Running)
            .filter_map(|t| {
                let agent = self.agents.get(&t.agent)?;
                Some(ServiceEndpoint {
                    app: def.def.name().to_string(),
                    task: t.id.clone(),
                    host: t.agent.clone(),
                    address: agent.info.address.clone(),
                    port: *t.ports.first()?,
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

    /// Registers an agent or updates it (address, router, resources, attributes). A
    /// registration also counts as a sign of life.
    pub fn register_agent(&mut self, mut info: AgentInfo, now: Now) -> Result<AgentInfo> {
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
                info!(agent = %info.name, address = %info.address, "agent registered again");
                agent.info = info.clone();
                agent.last_seen = now.at;
            }
            None => {
                info!(agent = %info.name, address = %info.address, "agent registered");
                self.agents.insert(
                    info.name.clone(),
                    Agent {
                        info: info.clone(),
                        last_seen: now.at,
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
            }
        }
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
                    self.task_ended(task, state, &status, now);
                }
            }
            Some(task) => {
                task.reported = true;
                if !status.ports.is_empty() {
                    task.ports = status.ports;
                }
                if state == TaskState::Running && task.state != TaskState::Running {
                    task.started_at = Some(now.wall);
                    task.started = Some(now.at);
                    info!(app = %task.app, task = %task.id, agent, instance = task.instance, ports = ?task.ports, "task running");
                }
                task.state = state;
            }
            None if state.is_terminal() => {
                debug!(agent, task = %status.task, state = %status.state, "end of a task no longer tracked");
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
        let instance = placement::lowest_free_instance(used);
        let running = state == TaskState::Running;
        let task = Task {
            id: status.task.clone(),
            app: key.clone(),
            agent: agent.to_string(),
            instance,
            state,
            ports: status.ports,
            staged_at: now.wall_millis(),
            started_at: running.then(|| now.wall_millis()),
            version: rt.def.version,
            restarts: rt.restarts.get(&instance).copied().unwrap_or(0),
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
    }

    fn place_app(&mut self, id: &str, now: Now) {
        let Some(rt) = self.apps.get(id) else { return };
        let want = rt.def.instances as usize;
        let mut have = self.tasks.values().filter(|t| t.app == id).count();
        if have > want {
            let mut tasks: Vec<(u32, String)> = self
                .tasks
                .values()
                .filter(|t| t.app == id)
                .map(|t| (t.instance, t.id.clone()))
                .collect();
            tasks.sort();
            for (_, t) in tasks.into_iter().skip(want).rev() {
                self.kill(&t, "scale down");
            }
            return;
        }
        if have < want && rt.launch_after.is_some_and(|t| now.at < t) {
            return;
        }
        while have < want {
            let Some(agent) = self.choose_agent(id) else {
                if let Some(rt) = self.apps.get_mut(id) {
                    if !rt.waiting {
                        warn!(
                            app = id,
                            missing = want - have,
                            "no active agent can take a task of this app; waiting"
                        );
                        rt.waiting = true;
                    }
                }
                return;
            };
            self.launch(id, &agent, now);
            have += 1;
        }
        if let Some(rt) = self.apps.get_mut(id) {
            rt.waiting = false;
        }
    }

    fn choose_agent(&self, app: &str) -> Option<String> {
        let def = &self.apps.get(app)?.def;
        // tasks, tasks of this app, cpus used, mem used
        let mut usage: BTreeMap<&str, (usize, usize, f64, f64)> = BTreeMap::new();
        for t in self.tasks.values() {
            let u = usage.entry(t.agent.as_str()).or_default();
            u.0 += 1;
            if t.app == app {
                u.1 += 1;
            }
            if let Some(a) = self.apps.get(&t.app) {
                u.2 += a.def.cpus;
                u.3 += a.def.mem;
            }
        }
        let candidates: Vec<Candidate> = self
            .agents
            .values()
            .filter(|a| a.info.state == AGENT_ACTIVE)
            .filter_map(|a| {
                let (tasks, app_tasks, cpus, mem) =
                    usage.get(a.info.name.as_str()).copied().unwrap_or_default();
                placement::fits(&a.info.resources, cpus, mem, def.cpus, def.mem).then_some(
                    Candidate {
                        agent: a.info.name.as_str(),
                        tasks,
                        app_tasks,
                    },
                )
            })
            .collect();
        placement::choose(&candidates).map(str::to_string)
    }

    fn launch(&mut self, app: &str, agent: &str, now: Now) {
        let Some(rt) = self.apps.get(app) else { return };
        let instance = placement::lowest_free_instance(
            self.tasks
                .values()
                .filter(|t| t.app == app)
                .map(|t| t.instance),
        );
        let id = task_id(app);
        let task = Task {
            id: id.clone(),
            app: app.to_string(),
            agent: agent.to_string(),
            instance,
            state: TaskState::Staging,
            ports: Vec::new(),
            staged_at: now.wall_millis(),
            started_at: None,
            version: rt.def.version,
            restarts: rt.restarts.get(&instance).copied().unwrap_or(0),
            staged: now.at,
            started: None,
            reported: false,
        };
        self.counters.launched += 1;
        info!(app, task = %id, agent, instance, "task placed");
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
        AppDef {
            id: app_key(id),
            cmd: Some("sleep 1000".into()),
            args: None,
            instances,
            env: BTreeMap::new(),
            cpus: 0.1,
            mem: 128.0,
            port_definitions: vec![PortDefinition {
                port: 0,
                protocol: "tcp".into(),
                name: None,
                labels: BTreeMap::new(),
            }],
            backoff_seconds: 1.0,
            backoff_factor: 1.15,
            max_launch_delay_seconds: 300.0,
            extra: BTreeMap::new(),
            version: "2026-11-23T10:00:00Z".parse().unwrap(),
        }
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
    fn args_are_quoted_for_the_shell() {
        let mut a = app("x", 1);
        a.cmd = None;
        a.args = Some(vec!["echo".into(), "it's here".into(), "$HOME".into()]);
        assert_eq!(a.command(), r#"echo 'it'\''s here' '$HOME'"#);
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

    #[test]
    fn changed_definition_replaces_tasks() {
        let now = Now::current();
        let mut s = cluster(&["a"], now);
        s.create_app(app("fib", 1), now).unwrap();
        let old = s.desired("a").remove(0);
        let mut def = app("fib", 1);
        def.cmd = Some("sleep 2000".into());
        s.put_app(def, now).unwrap();
        let new = s.desired("a").remove(0);
        assert_ne!(old.task, new.task);
        assert_eq!(new.cmd, "sleep 2000");
    }

    #[test]
    fn after_a_restart_running_tasks_are_adopted_not_duplicated() {
        let now = Now::current();
        let saved = Saved {
            format: 1,
            apps: vec![app("fib", 2)],
            agents: vec!["a".into(), "b".into()],
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
        };
        let a = s.heartbeat("a", vec![running.clone()], now).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].task, running.task);
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
