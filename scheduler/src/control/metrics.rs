//! The control plane's metrics in the Prometheus text format, read from the state
//! under its lock: counts are exact at the moment of the scrape, at the cost of a
//! scrape holding the lock for a few microseconds. Written with the shared
//! [`protocol::metrics::Exposition`].

use super::*;
use protocol::metrics::{Exposition, Kind};

impl State {
    /// The scheduler's metrics in the Prometheus text format.
    pub fn metrics(&self) -> String {
        let mut e = Exposition::new();
        // Rows are (state label or none, value).
        let mut gauge = |name: &str, help: &str, kind: Kind, rows: Vec<(Option<&str>, u64)>| {
            e.family(name, help, kind);
            for (state, v) in rows {
                match state {
                    Some(state) => e.sample(&[("state", state)], v),
                    None => e.sample(&[], v),
                };
            }
        };
        gauge(
            "sandtrail_scheduler_apps",
            "Apps defined.",
            Kind::Gauge,
            vec![(None, self.apps.len() as u64)],
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
            Kind::Gauge,
            live.iter()
                .map(|s| {
                    let n = self.tasks.values().filter(|t| t.state == *s).count() as u64;
                    (Some(s.as_str()), n)
                })
                .collect(),
        );
        gauge(
            "sandtrail_scheduler_tasks_wanted",
            "Sum of the instances of all apps.",
            Kind::Gauge,
            vec![(
                None,
                self.apps.values().map(|a| u64::from(a.def.instances)).sum(),
            )],
        );
        gauge(
            "sandtrail_scheduler_agents",
            "Registered agents, by state.",
            Kind::Gauge,
            [AGENT_ACTIVE, AGENT_LOST]
                .iter()
                .map(|s| {
                    let n = self.agents.values().filter(|a| a.info.state == *s).count() as u64;
                    (Some(*s), n)
                })
                .collect(),
        );
        gauge(
            "sandtrail_scheduler_tasks_launched_total",
            "Tasks placed on an agent.",
            Kind::Counter,
            vec![(None, self.counters.launched)],
        );
        gauge(
            "sandtrail_scheduler_tasks_ended_total",
            "Tasks that ended on their own or were lost, by final state.",
            Kind::Counter,
            TaskState::ALL
                .iter()
                .filter(|s| s.is_terminal())
                .map(|s| {
                    let n = self.counters.ended.get(s.as_str()).copied().unwrap_or(0);
                    (Some(s.as_str()), n)
                })
                .collect(),
        );
        gauge(
            "sandtrail_scheduler_tasks_lost_total",
            "Tasks replaced because their agent went silent or stopped listing them.",
            Kind::Counter,
            vec![(None, self.counters.lost)],
        );
        gauge(
            "sandtrail_scheduler_tasks_adopted_total",
            "Running tasks taken over from a node's report.",
            Kind::Counter,
            vec![(None, self.counters.adopted)],
        );
        gauge(
            "sandtrail_scheduler_tasks_killed_total",
            "Tasks the scheduler stopped wanting (scale down, update, delete).",
            Kind::Counter,
            vec![(None, self.counters.killed)],
        );
        gauge(
            "sandtrail_scheduler_heartbeats_total",
            "Agent heartbeats handled.",
            Kind::Counter,
            vec![(None, self.counters.heartbeats)],
        );
        e.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testkit::*;

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
