//! Agents: registration (with the host port ranges they offer) and heartbeats, which
//! carry the node's task statuses in and the desired tasks out.
//!
//! Agents are in memory only (their names are saved for the hold after a restart):
//! a restarted scheduler learns them again from their next heartbeat.

use super::*;

impl State {
    pub fn agent(&self, name: &str) -> Option<&AgentInfo> {
        self.agents.get(name).map(|a| &a.info)
    }

    pub fn agents(&self) -> Vec<AgentInfo> {
        self.agents.values().map(|a| a.info.clone()).collect()
    }

    /// Whether an operator drained this agent.
    pub fn drained(&self, name: &str) -> bool {
        self.drained.contains(name)
    }

    /// Drains an agent (`drain`) or puts it back in use. A drained agent gets no new
    /// task, and its tasks are moved elsewhere as a rolling deployment moves old
    /// tasks ([`State::place_app`]): the replacement starts first and the drained
    /// task is killed once the app's `upgradeStrategy` allows (with Marathon's
    /// default, once the replacement is ready), so the app does not run short; a
    /// replacement that fits nowhere else waits in the queue saying so, and the
    /// drained task keeps running meanwhile.
    pub fn set_drained(&mut self, name: &str, drain: bool, now: Now) -> Result<()> {
        if !self.agents.contains_key(name) && !self.known_agents.contains(name) {
            return Err(Error::UnknownAgent(name.to_string()));
        }
        let changed = if drain {
            self.drained.insert(name.to_string())
        } else {
            self.drained.remove(name)
        };
        if changed {
            self.generation += 1;
            info!(agent = name, drain, "agent drain changed");
        }
        self.place(now);
        Ok(())
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
        // An agent's address is what its tasks' names resolve to.
        self.view_changed();
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testkit::*;

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
}
