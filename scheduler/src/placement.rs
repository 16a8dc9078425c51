//! Placement and back-off arithmetic: which agent gets the next task of an app, which
//! instance number it carries, and how long a crashing app waits before its next launch.
//!
//! Everything here is a pure function of its inputs so it can be tested without a
//! clock or a network. The trade-off is a greedy choice, one task at a time (spread over
//! agents first, then least loaded): it never moves running tasks to even out load and
//! knows nothing of constraints yet; that comes with the constraint support of a later
//! issue.

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

/// Whether a task needing `need_cpus`/`need_mem` fits on an agent that declared
/// `declared` resources and already carries `used_cpus`/`used_mem`. An agent that
/// declares no `cpus` (or `mem`) is not limited in it: resources are optional in the
/// agent's registration.
pub fn fits(
    declared: &BTreeMap<String, f64>,
    used_cpus: f64,
    used_mem: f64,
    need_cpus: f64,
    need_mem: f64,
) -> bool {
    // A little slack so that ten tasks of 0.1 cpus fit on one cpu despite rounding.
    const EPS: f64 = 1e-9;
    let ok = |key: &str, used: f64, need: f64| match declared.get(key) {
        Some(total) => used + need <= total + EPS,
        None => true,
    };
    ok("cpus", used_cpus, need_cpus) && ok("mem", used_mem, need_mem)
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(agent: &str, tasks: usize, app_tasks: usize) -> Candidate<'_> {
        Candidate {
            agent,
            tasks,
            app_tasks,
        }
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

    #[test]
    fn resources_limit_only_what_the_agent_declared() {
        let declared: BTreeMap<String, f64> = [("cpus".to_string(), 1.0)].into();
        assert!(fits(&declared, 0.9, 10_000.0, 0.1, 128.0));
        assert!(!fits(&declared, 0.95, 0.0, 0.1, 0.0));
        assert!(fits(&BTreeMap::new(), 100.0, 1e9, 1.0, 1.0));
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
    }
}
