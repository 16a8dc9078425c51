//! Tasks: Marathon's task states, the tasks the scheduler wants, what each agent is
//! told to run ([`State::desired`]), and what is left of a task that ended.
//!
//! Terminal tasks are dropped at once (as Marathon does); only the restart count, the
//! launch delay and the app's `lastTaskFailure` survive them, which keeps the state
//! bounded by the tasks that run.

use super::*;

/// The ports of an app as its tasks' specs carry them (for `PORT_<NAME>` and
/// `PORT_<port>`); empty when no port has a number or a name, the common case.
fn port_labels(def: &AppDef) -> Vec<PortLabel> {
    let labels: Vec<PortLabel> = match def.port_mappings() {
        Some(mappings) => mappings
            .iter()
            .map(|m| PortLabel {
                port: m.service_port,
                name: m.name.clone().unwrap_or_default(),
            })
            .collect(),
        None => def
            .port_definitions
            .iter()
            .map(|d| PortLabel {
                port: d.port,
                name: d.name.clone().unwrap_or_default(),
            })
            .collect(),
    };
    if labels.iter().all(|l| l.port == 0 && l.name.is_empty()) {
        Vec::new()
    } else {
        labels
    }
}

/// A new task id in Marathon's style: `<app>.<uuid>`, the app id without its leading
/// slash and with `/` replaced by `_` (so `/prod/fib` gives `prod_fib.<uuid>`).
pub fn task_id(app_id: &str) -> String {
    format!("{}.{}", task_prefix(app_id), uuid::Uuid::new_v4())
}

pub(super) fn task_prefix(app_id: &str) -> String {
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
    pub(super) staged: Instant,
    pub(super) started: Option<Instant>,
    /// Whether the agent has mentioned it in a heartbeat: from then on a heartbeat
    /// without it means the node no longer runs it.
    pub(super) reported: bool,
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

impl State {
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

    pub(super) fn task_ids_of(&self, app: &str) -> Vec<String> {
        self.tasks
            .values()
            .filter(|t| t.app == app)
            .map(|t| t.id.clone())
            .collect()
    }

    /// Drops a task the scheduler no longer wants; the node stops it when it is missing
    /// from the agent's desired set.
    pub(super) fn kill(&mut self, task: &str, reason: &str, now: Now) {
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
            self.desired_changed(&t.agent);
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
                        cpus: Some(def.cpus),
                        kill_grace_seconds: def.kill_grace_seconds(),
                        docker: def.docker_spec(),
                    },
                ))
            })
            .collect();
        specs.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        specs.into_iter().map(|(_, _, s)| s).collect()
    }

    /// Bookkeeping for a task that ended on its own: count the restart of its instance
    /// and push the app's next launch out by the back-off.
    pub(super) fn task_ended(
        &mut self,
        task: Task,
        state: TaskState,
        status: &TaskStatus,
        now: Now,
    ) {
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

    pub(super) fn set_last_failure(&mut self, task: &Task, state: &str, message: &str, now: Now) {
        if let Some(rt) = self.apps.get_mut(&task.app) {
            rt.last_failure = Some(json!({
                "appId": task.app, "host": task.agent, "message": message, "state": state,
                "taskId": task.id, "instanceId": task.id, "slaveId": task.agent,
                "timestamp": now.wall_millis().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "version": task.version.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
