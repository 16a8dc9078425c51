//! Placement and back-off arithmetic: which agent gets the next task of an app, which
//! instance number it carries, and how long a crashing app waits before its next launch.
//!
//! Everything here is a pure function of its inputs so it can be tested without a
//! clock or a network. The trade-off is a greedy choice, one task at a time (spread over
//! agents first, then least loaded, among the agents that the app's resources (`cpus`,
//! `mem`, `disk`, host ports) and Marathon constraints allow): it never moves running tasks to even out load, and a
//! `GROUP_BY` spreads only the tasks placed from now on.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Upper bound on any launch delay, so that `Instant + delay` can never overflow and a
/// misconfigured app is still retried once a day.
pub const MAX_DELAY: Duration = Duration::from_secs(86_400);

/// One agent that could take the next task, with what it already runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<'a> {
    pub agent: &'a str,
    /// Tasks of any app on the agent.
    pub tasks: usize,
    /// Tasks of the app being placed on the agent.
    pub app_tasks: usize,
}

/// Picks the agent for the next task: the one with the fewest instances of this app
/// (spread), then the fewest tasks overall (balance), then by name so the choice is
/// deterministic.
pub fn choose<'a>(candidates: &[Candidate<'a>]) -> Option<&'a str> {
    candidates
        .iter()
        .min_by_key(|c| (c.app_tasks, c.tasks, c.agent))
        .map(|c| c.agent)
}

/// The lowest 0-based instance number not in `used`, so that a replacement takes the
/// number of the task it replaces and scaling up fills gaps first.
pub fn lowest_free_instance(used: impl IntoIterator<Item = u32>) -> u32 {
    let used: BTreeSet<u32> = used.into_iter().collect();
    (0..).find(|n| !used.contains(n)).unwrap_or(u32::MAX)
}

/// Scalar resources of a task or of what an agent carries: Marathon's `cpus`, `mem`
/// (MiB) and `disk` (MiB).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    pub cpus: f64,
    pub mem: f64,
    pub disk: f64,
}

impl std::ops::AddAssign for Resources {
    fn add_assign(&mut self, o: Resources) {
        self.cpus += o.cpus;
        self.mem += o.mem;
        self.disk += o.disk;
    }
}

/// Whether a task needing `need` fits on an agent that declared `declared` resources
/// and already carries `used`. An agent that declares no `cpus` (or `mem`, `disk`) is
/// not limited in it: resources are optional in the agent's registration. `Err` names
/// the first resource that does not fit, for the app's "cannot be placed" message.
pub fn fits(
    declared: &BTreeMap<String, f64>,
    used: Resources,
    need: Resources,
) -> std::result::Result<(), String> {
    // A little slack so that ten tasks of 0.1 cpus fit on one cpu despite rounding.
    const EPS: f64 = 1e-9;
    for (key, used, need) in [
        ("cpus", used.cpus, need.cpus),
        ("mem", used.mem, need.mem),
        ("disk", used.disk, need.disk),
    ] {
        if let Some(total) = declared.get(key) {
            if used + need > total + EPS {
                return Err(format!(
                    "not enough {key}: needs {need}, {used} of {total} in use"
                ));
            }
        }
    }
    Ok(())
}

/// Whether an agent can give a task the host ports it needs: every fixed port free
/// (not in `used`) and, when the agent declared `ranges`, inside them; and enough
/// more ports free in the ranges for the dynamic ones (an agent without ranges has
/// its node ask the kernel, so it never runs out here). `requested` has one entry per
/// port: `Some(p)` fixed, `None` dynamic. `Err` says why not.
pub fn check_ports(
    requested: &[Option<u16>],
    ranges: &[protocol::PortRange],
    used: &BTreeSet<u16>,
) -> std::result::Result<(), String> {
    let fixed: BTreeSet<u16> = requested.iter().flatten().copied().collect();
    for p in &fixed {
        if used.contains(p) {
            return Err(format!("host port {p} is already in use"));
        }
        if !ranges.is_empty() && !ranges.iter().any(|r| r.contains(*p)) {
            return Err(format!(
                "host port {p} is outside the agent's port ranges {}",
                protocol::format_port_ranges(ranges)
            ));
        }
    }
    let dynamic = requested.iter().filter(|p| p.is_none()).count();
    if ranges.is_empty() || dynamic == 0 {
        return Ok(());
    }
    let total: usize = ranges.iter().map(protocol::PortRange::len).sum();
    let taken = used
        .union(&fixed)
        .filter(|p| ranges.iter().any(|r| r.contains(**p)))
        .count();
    let free = total.saturating_sub(taken);
    if free < dynamic {
        return Err(format!(
            "needs {dynamic} dynamic host port(s), {free} free in its port ranges {}",
            protocol::format_port_ranges(ranges)
        ));
    }
    Ok(())
}

/// The host ports for a task that [`check_ports`] allows, in declaration order: fixed
/// ones as given, dynamic ones picked from the ranges, or 0 where the agent declared
/// no ranges and the node is to pick.
pub fn assign_ports(
    requested: &[Option<u16>],
    ranges: &[protocol::PortRange],
    used: &BTreeSet<u16>,
    rng: &mut impl rand::Rng,
) -> std::result::Result<Vec<u16>, String> {
    check_ports(requested, ranges, used)?;
    let dynamic = requested.iter().filter(|p| p.is_none()).count();
    let mut picked = Vec::with_capacity(dynamic);
    if !ranges.is_empty() && dynamic > 0 {
        let taken: BTreeSet<u16> = used
            .iter()
            .chain(requested.iter().flatten())
            .copied()
            .collect();
        // A random free port rather than the lowest: a port held by something outside
        // Sandtrail fails the task, and its replacement should not pick the same one.
        let free: Vec<u16> = ranges
            .iter()
            .flat_map(|r| r.begin..=r.end)
            .filter(|p| !taken.contains(p))
            .collect();
        picked = rand::seq::index::sample(rng, free.len(), dynamic)
            .into_iter()
            .map(|i| free[i])
            .collect();
    }
    let mut picked = picked.into_iter();
    Ok(requested
        .iter()
        .map(|p| match p {
            Some(p) => *p,
            None => picked.next().unwrap_or(0),
        })
        .collect())
}

/// Marathon's launch delay after a failure: `base` for the first failure (or the first
/// after a reset), then the previous delay times `factor`, never above `max` (nor
/// [`MAX_DELAY`]).
pub fn next_delay(
    previous: Option<Duration>,
    base_secs: f64,
    factor: f64,
    max_secs: f64,
) -> Duration {
    let cap = max_secs.clamp(0.0, MAX_DELAY.as_secs_f64());
    let secs = match previous {
        None => base_secs,
        Some(prev) => prev.as_secs_f64() * factor,
    };
    // NaN (from a zero previous delay times an infinite factor) also lands on the cap.
    let secs = if secs.is_nan() {
        cap
    } else {
        secs.clamp(0.0, cap)
    };
    Duration::from_secs_f64(secs)
}

/// A Marathon constraint operator with its parsed argument.
#[derive(Debug, Clone)]
pub enum Operator {
    /// Each task on a different value of the field.
    Unique,
    /// Every task on this value (or, if empty, on the value of the first task).
    Cluster(String),
    /// Spread evenly over the values of the field.
    GroupBy,
    /// Only on values matching the regex (whole value).
    Like(regex::Regex),
    /// Only on values not matching the regex (or without the field).
    Unlike(regex::Regex),
    /// At most this many tasks per value of the field.
    MaxPer(usize),
}

/// One `constraints` entry: `["hostname", "UNIQUE"]`, `["rack", "MAX_PER", "2"]`...
#[derive(Debug, Clone)]
pub struct Constraint {
    /// `hostname` or an agent attribute name.
    pub field: String,
    pub op: Operator,
    /// The entry as written, for messages.
    pub text: String,
}

/// An agent as constraints see it.
#[derive(Debug, Clone, Copy)]
pub struct AgentView<'a> {
    pub name: &'a str,
    pub attributes: &'a BTreeMap<String, String>,
}

impl AgentView<'_> {
    /// The agent's value of a constraint field: its name for `hostname`, else the
    /// attribute.
    pub fn value(&self, field: &str) -> Option<&str> {
        if field == "hostname" {
            Some(self.name)
        } else {
            self.attributes.get(field).map(String::as_str)
        }
    }
}

/// Whether `candidate` may take the next task of an app whose tasks already run on
/// `placed` (one entry per task) given the agents `all` of the cluster; `Err` says why
/// not, for the app's "cannot be placed" message.
pub fn allows(
    c: &Constraint,
    candidate: AgentView<'_>,
    placed: &[AgentView<'_>],
    all: &[AgentView<'_>],
) -> std::result::Result<(), String> {
    let value = candidate.value(&c.field);
    let count = |v: &str| {
        placed
            .iter()
            .filter(|p| p.value(&c.field) == Some(v))
            .count()
    };
    let missing = || Err(format!("{}: agent has no {:?} attribute", c.text, c.field));
    match &c.op {
        Operator::Unique => match value {
            None => missing(),
            Some(v) if count(v) > 0 => Err(format!("{}: a task already runs on {v:?}", c.text)),
            Some(_) => Ok(()),
        },
        Operator::Cluster(want) => {
            let want = if want.is_empty() {
                placed.iter().find_map(|p| p.value(&c.field))
            } else {
                Some(want.as_str())
            };
            match (value, want) {
                (None, _) => missing(),
                (Some(_), None) => Ok(()),
                (Some(v), Some(w)) if v == w => Ok(()),
                (Some(v), Some(w)) => Err(format!("{}: {v:?} is not {w:?}", c.text)),
            }
        }
        Operator::GroupBy => {
            let Some(v) = value else { return missing() };
            let values: BTreeSet<&str> = all.iter().filter_map(|a| a.value(&c.field)).collect();
            let least = values.iter().map(|v| count(v)).min().unwrap_or(0);
            if count(v) <= least {
                Ok(())
            } else {
                Err(format!(
                    "{}: {v:?} has more tasks than another group",
                    c.text
                ))
            }
        }
        Operator::Like(re) => match value {
            Some(v) if re.is_match(v) => Ok(()),
            Some(v) => Err(format!("{}: {v:?} does not match", c.text)),
            None => missing(),
        },
        Operator::Unlike(re) => match value {
            Some(v) if re.is_match(v) => Err(format!("{}: {v:?} matches", c.text)),
            _ => Ok(()),
        },
        Operator::MaxPer(n) => match value {
            None => missing(),
            Some(v) if count(v) >= *n => Err(format!("{}: {v:?} already has {n}", c.text)),
            Some(_) => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn c(agent: &str, tasks: usize, app_tasks: usize) -> Candidate<'_> {
        Candidate {
            agent,
            tasks,
            app_tasks,
        }
    }

    fn view<'a>(name: &'a str, attrs: &'a BTreeMap<String, String>) -> AgentView<'a> {
        AgentView {
            name,
            attributes: attrs,
        }
    }

    fn one(c: &str) -> Constraint {
        let v: Value = serde_json::from_str(c).unwrap();
        let mut p = Vec::new();
        let mut out = crate::control::appdef::parse_constraints(&Value::Array(vec![v]), &mut p);
        assert!(p.is_empty(), "{p:?}");
        out.remove(0)
    }

    #[test]
    fn constraints_on_hostname_and_attributes() {
        let ra: BTreeMap<String, String> = [("rack".to_string(), "a".to_string())].into();
        let rb: BTreeMap<String, String> = [("rack".to_string(), "b".to_string())].into();
        let none = BTreeMap::new();
        let (n1, n2, n3) = (view("n1", &ra), view("n2", &ra), view("n3", &rb));
        let all = [n1, n2, n3];
        let unique = one(r#"["hostname", "UNIQUE"]"#);
        assert!(allows(&unique, n1, &[], &all).is_ok());
        assert!(allows(&unique, n1, &[n1], &all)
            .unwrap_err()
            .contains("already runs"));
        let rack_unique = one(r#"["rack", "UNIQUE"]"#);
        assert!(allows(&rack_unique, n2, &[n1], &all).is_err());
        assert!(allows(&rack_unique, n3, &[n1], &all).is_ok());
        assert!(allows(&rack_unique, view("x", &none), &[], &all)
            .unwrap_err()
            .contains("no \"rack\""));
        let cluster = one(r#"["rack", "CLUSTER", "b"]"#);
        assert!(allows(&cluster, n1, &[], &all).is_err());
        assert!(allows(&cluster, n3, &[], &all).is_ok());
        let group = one(r#"["rack", "GROUP_BY"]"#);
        assert!(
            allows(&group, n2, &[n1], &all).is_err(),
            "rack a has one, b none"
        );
        assert!(allows(&group, n3, &[n1], &all).is_ok());
        let like = one(r#"["hostname", "LIKE", "n[12]"]"#);
        assert!(allows(&like, n1, &[], &all).is_ok());
        assert!(allows(&like, n3, &[], &all).is_err());
        let unlike = one(r#"["rack", "UNLIKE", "a"]"#);
        assert!(allows(&unlike, n1, &[], &all).is_err());
        assert!(allows(&unlike, view("x", &none), &[], &all).is_ok());
        let max = one(r#"["rack", "MAX_PER", "2"]"#);
        assert!(allows(&max, n2, &[n1], &all).is_ok());
        assert!(allows(&max, n2, &[n1, n1], &all).is_err());
    }

    #[test]
    fn prefers_an_agent_without_an_instance_of_the_app_even_if_busier() {
        let cands = [c("a", 1, 1), c("b", 5, 0), c("c", 2, 1)];
        assert_eq!(choose(&cands), Some("b"));
    }

    #[test]
    fn then_the_least_loaded_agent_then_the_name() {
        let cands = [c("a", 3, 0), c("b", 1, 0), c("c", 1, 0)];
        assert_eq!(choose(&cands), Some("b"));
        assert_eq!(choose(&[]), None);
    }

    #[test]
    fn placing_three_instances_on_three_agents_spreads_them() {
        let names = ["node-1", "node-2", "node-3"];
        let mut per_agent: BTreeMap<&str, usize> = names.iter().map(|n| (*n, 0)).collect();
        for _ in 0..3 {
            let cands: Vec<Candidate> = names
                .iter()
                .map(|n| c(n, per_agent[n], per_agent[n]))
                .collect();
            let chosen = choose(&cands).unwrap();
            *per_agent.get_mut(chosen).unwrap() += 1;
        }
        assert!(per_agent.values().all(|&n| n == 1), "{per_agent:?}");
    }

    #[test]
    fn lowest_free_instance_fills_gaps() {
        assert_eq!(lowest_free_instance([]), 0);
        assert_eq!(lowest_free_instance([0, 1, 2]), 3);
        assert_eq!(lowest_free_instance([0, 2, 3]), 1);
        assert_eq!(lowest_free_instance([1]), 0);
    }

    fn res(cpus: f64, mem: f64, disk: f64) -> Resources {
        Resources { cpus, mem, disk }
    }

    #[test]
    fn resources_limit_only_what_the_agent_declared() {
        let declared: BTreeMap<String, f64> = [("cpus".to_string(), 1.0)].into();
        assert!(fits(&declared, res(0.9, 10_000.0, 1e6), res(0.1, 128.0, 1e6)).is_ok());
        assert!(fits(&declared, res(0.95, 0.0, 0.0), res(0.1, 0.0, 0.0))
            .unwrap_err()
            .contains("not enough cpus"));
        assert!(fits(&BTreeMap::new(), res(100.0, 1e9, 1e9), res(1.0, 1.0, 1.0)).is_ok());
    }

    #[test]
    fn disk_is_limited_like_cpus_and_mem() {
        let declared: BTreeMap<String, f64> = [("disk".to_string(), 1024.0)].into();
        assert!(fits(&declared, res(0.0, 0.0, 512.0), res(0.0, 0.0, 512.0)).is_ok());
        let err = fits(&declared, res(0.0, 0.0, 512.0), res(0.0, 0.0, 513.0)).unwrap_err();
        assert!(
            err.contains("not enough disk") && err.contains("1024"),
            "{err}"
        );
    }

    fn range(begin: u16, end: u16) -> protocol::PortRange {
        protocol::PortRange { begin, end }
    }

    #[test]
    fn fixed_ports_must_be_free_and_inside_declared_ranges() {
        let mut rng = rand::rng();
        let used: BTreeSet<u16> = [8080].into();
        let err = assign_ports(&[Some(8080)], &[], &used, &mut rng).unwrap_err();
        assert!(err.contains("host port 8080 is already in use"), "{err}");
        assert_eq!(
            assign_ports(&[Some(8081), None], &[], &used, &mut rng).unwrap(),
            vec![8081, 0],
            "no ranges: the node picks the dynamic port"
        );
        let ranges = [range(31000, 31001)];
        let err = assign_ports(&[Some(80)], &ranges, &BTreeSet::new(), &mut rng).unwrap_err();
        assert!(
            err.contains("outside the agent's port ranges [31000-31001]"),
            "{err}"
        );
    }

    #[test]
    fn dynamic_ports_come_from_the_ranges_and_run_out() {
        let mut rng = rand::rng();
        let ranges = [range(31000, 31002)];
        let used: BTreeSet<u16> = [31001].into();
        let got = assign_ports(&[None, Some(31000)], &ranges, &used, &mut rng).unwrap();
        assert_eq!(
            got,
            vec![31002, 31000],
            "the only free port that is not fixed"
        );
        let err = assign_ports(&[None, None, None], &ranges, &used, &mut rng).unwrap_err();
        assert!(
            err.contains("needs 3 dynamic host port(s), 2 free"),
            "{err}"
        );
    }

    #[test]
    fn delay_grows_by_the_factor_and_stops_at_the_max() {
        let d1 = next_delay(None, 1.0, 1.15, 300.0);
        assert_eq!(d1, Duration::from_secs(1));
        let d2 = next_delay(Some(d1), 1.0, 1.15, 300.0);
        assert!((d2.as_secs_f64() - 1.15).abs() < 1e-9, "{d2:?}");
        let mut d = d2;
        for _ in 0..200 {
            d = next_delay(Some(d), 1.0, 1.15, 300.0);
        }
        assert_eq!(d, Duration::from_secs(300));
    }

    proptest! {
        #[test]
        fn delay_never_exceeds_the_cap(prev in proptest::option::of(0u64..1_000_000), base in 0.0f64..1e7, factor in 1.0f64..1e6, max in 0.0f64..1e9) {
            let d = next_delay(prev.map(Duration::from_millis), base, factor, max);
            prop_assert!(d <= MAX_DELAY);
            prop_assert!(d.as_secs_f64() <= max + 1e-6);
        }

        #[test]
        fn lowest_free_instance_is_free_and_minimal(used in proptest::collection::btree_set(0u32..50, 0..30)) {
            let n = lowest_free_instance(used.iter().copied());
            prop_assert!(!used.contains(&n));
            prop_assert!((0..n).all(|i| used.contains(&i)));
        }

        #[test]
        fn assigned_ports_are_distinct_free_and_in_range(
            used in proptest::collection::btree_set(31000u16..31050, 0..40),
            fixed in proptest::collection::btree_set(31000u16..31050, 0..3),
            dynamic in 0usize..8,
        ) {
            let ranges = [range(31000, 31049)];
            let mut requested: Vec<Option<u16>> = fixed.iter().copied().map(Some).collect();
            requested.extend(std::iter::repeat_n(None, dynamic));
            let free = 50 - used.union(&fixed).count();
            match assign_ports(&requested, &ranges, &used, &mut rand::rng()) {
                Ok(ports) => {
                    prop_assert!(fixed.is_disjoint(&used) && free >= dynamic);
                    let distinct: BTreeSet<u16> = ports.iter().copied().collect();
                    prop_assert_eq!(distinct.len(), ports.len());
                    prop_assert!(ports.iter().all(|p| ranges[0].contains(*p) && !used.contains(p)));
                }
                Err(_) => prop_assert!(!fixed.is_disjoint(&used) || free < dynamic),
            }
        }
    }
}
