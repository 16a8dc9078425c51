//! Reconciliation: applying what nodes report (including adopting tasks that run but
//! are not known, after a restart), the periodic pass (lost agents, staging
//! timeouts), and placement (which task goes where, rolling replacement, scale down).
//!
//! One greedy task at a time, under the state's lock, so no task is placed twice; the
//! arithmetic is in [`crate::control::placement`], pure and tested apart.

use super::tasks::task_prefix;
use super::*;

impl State {
    pub(super) fn apply_status(&mut self, agent: &str, status: TaskStatus, now: Now) {
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
                let ports_moved = !status.ports.is_empty() && status.ports != task.ports;
                if ports_moved {
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
                if ports_moved {
                    self.view_changed();
                }
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
    pub(super) fn adopt(&mut self, agent: &str, status: TaskStatus, state: TaskState, now: Now) {
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
        self.view_changed();
    }

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
                    self.desired_changed(&t.agent);
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
                self.desired_changed(&t.agent);
                self.task_ended(t, TaskState::Failed, &status, now);
            }
        }
        self.place(now);
    }

    /// Starts the tasks every app is missing and kills those it has too many of.
    pub(super) fn place(&mut self, now: Now) {
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
    /// healthy). Tasks on a drained agent count as old: a drain moves them the same
    /// way, the replacement started first (as Marathon and Nomad drain), so the app
    /// keeps its healthy count.
    pub(super) fn place_app(&mut self, id: &str, now: Now) {
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
            if t.version == version && !self.drained.contains(&t.agent) {
                new.push(entry)
            } else {
                old.push(entry)
            }
        }
        old.sort();
        new.sort();
        if new.len() >= want {
            // Every replacement is launched, but an old task goes only while enough
            // tasks stay ready (`minimumHealthCapacity`): a launched replacement that is
            // not running yet does not count, or the old tasks (a drained agent's, an
            // outdated version's) were killed as soon as the next heartbeat came.
            let min_ready = (want as f64 * min_health).ceil() as usize;
            let mut ready =
                new.iter().filter(|t| !t.0).count().min(want) + old.iter().filter(|t| !t.0).count();
            while let Some((not_ready, _, t)) = old.last().cloned() {
                if !not_ready && ready <= min_ready {
                    break;
                }
                old.pop();
                if !not_ready {
                    ready -= 1;
                }
                self.kill(&t, self.replaced_why(&t), now);
            }
            if !old.is_empty() {
                // Waiting for replacements to be ready; scaling down waits too.
                if let Some(rt) = self.apps.get_mut(id) {
                    rt.unplaced = None;
                }
                return;
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
            self.kill(&t, self.replaced_why(&t), now);
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
                self.kill(&t, self.replaced_why(&t), now);
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

    /// Why an old task of [`State::place_app`] is killed.
    fn replaced_why(&self, task: &str) -> &'static str {
        match self.tasks.get(task) {
            Some(t) if self.drained.contains(&t.agent) => "moved off its drained agent",
            _ => "replaced by the new version",
        }
    }

    pub(super) fn unplaceable(&mut self, id: &str, missing: usize, reason: String, now: Now) {
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
    pub(super) fn choose_agent(&self, app: &str) -> std::result::Result<String, String> {
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
            .filter(|a| a.info.state == AGENT_ACTIVE && !self.drained.contains(&a.info.name))
            .collect();
        if active.is_empty() {
            return Err(if self.drained.is_empty() {
                "no active agent".into()
            } else {
                "no active agent that is not drained".into()
            });
        }
        // A Docker app's task can only run where a node reaches a Docker engine.
        let active: Vec<&Agent> = if def.runs_image() {
            let docker: Vec<&Agent> = active
                .into_iter()
                .filter(|a| {
                    a.info
                        .containerizers
                        .iter()
                        .any(|c| c == protocol::CONTAINERIZER_DOCKER)
                })
                .collect();
            if docker.is_empty() {
                return Err("no agent offers docker".into());
            }
            docker
        } else {
            active
        };
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

    pub(super) fn launch(&mut self, app: &str, agent: &str, now: Now) {
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
        self.desired_changed(&task.agent);
        self.tasks.insert(id, task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testkit::*;

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
    fn a_drained_agents_task_is_killed_only_once_its_replacement_runs() {
        let now = Now::current();
        let mut s = cluster(&["a", "b"], now);
        s.create_app(app("fib", 2), now).unwrap();
        let (on_a, on_b) = (s.desired("a"), s.desired("b"));
        assert_eq!((on_a.len(), on_b.len()), (1, 1));
        running(&mut s, "a", &on_a, &[], now);
        running(&mut s, "b", &on_b, &[], now);
        s.set_drained("a", true, now).unwrap();
        assert_eq!(
            s.desired("a"),
            on_a,
            "still running: its replacement is not"
        );
        let b_now = s.desired("b");
        assert_eq!(b_now.len(), 2, "{b_now:?}");
        let replacement = b_now.iter().find(|t| t.task != on_b[0].task).unwrap();
        // Not yet running: the drained task stays whatever the agent reports.
        running(&mut s, "a", &on_a, &[], now);
        assert_eq!(s.desired("a"), on_a);
        running(&mut s, "b", &b_now, &[], now);
        assert!(s.desired("a").is_empty(), "moved once the replacement runs");
        let left: Vec<String> = s.desired("b").into_iter().map(|t| t.task).collect();
        assert_eq!(left.len(), 2);
        assert!(left.contains(&replacement.task) && left.contains(&on_b[0].task));
        // Undrained, nothing moves back on its own and nothing is placed twice.
        s.set_drained("a", false, now).unwrap();
        assert_eq!(s.tasks().count(), 2);
    }

    #[test]
    fn a_drained_task_with_nowhere_to_go_keeps_running_and_the_queue_says_why() {
        let now = Now::current();
        let mut s = cluster(&["a"], now);
        s.create_app(app("fib", 1), now).unwrap();
        let on_a = s.desired("a");
        running(&mut s, "a", &on_a, &[], now);
        s.set_drained("a", true, now).unwrap();
        assert_eq!(s.desired("a"), on_a, "not killed for nothing");
        let why = s.apps[&app_key("fib")]
            .unplaced
            .as_ref()
            .map(|u| format!("{u:?}"))
            .unwrap_or_default();
        assert!(why.contains("drained"), "{why}");
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
    fn a_docker_app_goes_only_to_agents_offering_docker_and_says_so_otherwise() {
        let now = Now::current();
        let mut s = cluster(&["a"], now);
        let docker_app = || {
            let mut def = app("web", 1);
            def.set_extra(
                "container",
                json!({"type": "DOCKER", "docker": {"image": "demo:1"}}),
            );
            def
        };
        s.create_app(docker_app(), now).unwrap();
        assert_eq!(s.tasks().count(), 0);
        let why = s.unplaced("web").unwrap();
        assert!(why.contains("no agent offers docker"), "{why}");
        // Process apps still go to the agent without docker.
        s.create_app(app("fib", 1), now).unwrap();
        assert_eq!(s.desired("a").len(), 1);
        let mut b = agent("b");
        b.containerizers = vec![protocol::CONTAINERIZER_DOCKER.into()];
        s.register_agent(b, now).unwrap();
        let on_b = s.desired("b");
        assert_eq!(on_b.len(), 1, "{on_b:?}");
        let docker = on_b[0].docker.as_ref().expect("a docker spec");
        assert_eq!(
            (docker.image.as_str(), docker.network.as_str()),
            ("demo:1", "host")
        );
        assert!(s.unplaced("web").is_none());
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
}
