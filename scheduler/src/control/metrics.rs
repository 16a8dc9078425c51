//! The control plane's metrics in the Prometheus text format, read from the state
//! under its lock: counts are exact at the moment of the scrape, at the cost of a
//! scrape holding the lock for a few microseconds.

use super::*;

impl State {
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
