//! The hops of one trace as a tree, caller above callee: shared by the trace page and
//! `sandtrail trace`, so the browser and the terminal show the same order.
//!
//! A hop is an access record. Its parent is found, in this order, by the W3C span
//! (`parent_span_id` is the `span_id` of the hop that reached the caller, which the
//! router writes whenever the app passed `traceparent` on), else by the caller task the
//! router recorded (`fields.caller_task`): the innermost hop served by that task whose
//! span encloses this one. A hop with neither is a root. Records come from a search
//! and can be anything (a span id reused, a trace truncated at the page size), so a
//! parent that is not among the records makes the hop a root marked `orphan`, and a
//! cycle is broken at its earliest hop; building never loops. The trade-off: a caller
//! that neither forwards `traceparent` nor names itself is placed at the top level,
//! even when timing alone would suggest where it belongs, rather than guessed.

use std::collections::HashMap;

use protocol::LogRecord;

/// What the router writes as `peer_app` for a caller outside the cluster.
pub const EXTERNAL_PEER: &str = "external";

/// One hop in tree order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeHop {
    /// Index of the hop in the slice given to [`tree`].
    pub index: usize,
    /// 0 for a root.
    pub depth: usize,
    /// Index of the parent hop, `None` for a root.
    pub parent: Option<usize>,
    /// A root that names a parent (span or caller task) missing from the records.
    pub orphan: bool,
}

/// The record's `[start, end]` in epoch milliseconds: the router stamps `ts` when the
/// call ends, so it started `latency_ms` earlier.
pub fn span_ms(r: &LogRecord) -> (f64, f64) {
    let end = r.ts.timestamp_micros() as f64 / 1000.0;
    let latency = r
        .latency_ms
        .filter(|l| l.is_finite() && *l > 0.0)
        .unwrap_or(0.0);
    (end - latency, end)
}

/// Whether the call came from outside the cluster (the router knew no task for it).
pub fn is_external(r: &LogRecord) -> bool {
    r.peer_app.as_deref() == Some(EXTERNAL_PEER)
}

fn caller_task(r: &LogRecord) -> Option<&str> {
    r.fields
        .get("caller_task")
        .and_then(|v| v.as_str())
        .filter(|t| !t.is_empty())
}

/// Earlier start first, then the longer (outer) call among equal starts.
fn by_start(spans: &[(f64, f64)], a: usize, b: usize) -> std::cmp::Ordering {
    let ((sa, ea), (sb, eb)) = (spans[a], spans[b]);
    sa.total_cmp(&sb)
        .then((eb - sb).total_cmp(&(ea - sa)))
        .then(a.cmp(&b))
}

/// The hops in depth-first order, roots and siblings by start time.
pub fn tree(hops: &[&LogRecord]) -> Vec<TreeHop> {
    let n = hops.len();
    let spans: Vec<(f64, f64)> = hops.iter().map(|r| span_ms(r)).collect();
    let mut by_span: HashMap<&str, usize> = HashMap::new();
    let mut by_task: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, r) in hops.iter().enumerate() {
        if let Some(s) = r.span_id.as_deref().filter(|s| !s.is_empty()) {
            by_span.entry(s).or_insert(i);
        }
        if !r.task.is_empty() {
            by_task.entry(r.task.as_str()).or_default().push(i);
        }
    }

    let mut parent: Vec<Option<usize>> = vec![None; n];
    let mut orphan = vec![false; n];
    for (i, r) in hops.iter().enumerate() {
        let by_parent_span = r
            .parent_span_id
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(|p| by_span.get(p).copied().filter(|&j| j != i));
        let by_caller = caller_task(r).map(|t| {
            let (s, e) = spans[i];
            by_task.get(t).and_then(|cands| {
                cands
                    .iter()
                    .copied()
                    .filter(|&j| j != i && spans[j].0 <= s && spans[j].1 >= e)
                    // The innermost enclosing call: the latest start, then the shortest.
                    .max_by(|&a, &b| by_start(&spans, a, b))
            })
        });
        parent[i] = match (by_parent_span, by_caller) {
            (Some(Some(j)), _) => Some(j),
            (_, Some(Some(j))) => Some(j),
            (None, None) => None,
            // It names a parent, and none of the records is it.
            _ => {
                orphan[i] = true;
                None
            }
        };
    }

    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, p) in parent.iter().enumerate() {
        if let Some(p) = *p {
            children[p].push(i);
        }
    }
    for c in &mut children {
        c.sort_by(|&a, &b| by_start(&spans, a, b));
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| by_start(&spans, a, b));

    // Whatever no root reaches sits on a cycle (or below one): cut it at its earliest
    // hop, which becomes a root marked orphan.
    let mut seen = vec![false; n];
    let mark = |from: usize, seen: &mut Vec<bool>| {
        let mut stack = vec![from];
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut seen[i], true) {
                stack.extend(children[i].iter().copied().filter(|&c| !seen[c]));
            }
        }
    };
    for &i in &order {
        if parent[i].is_none() {
            mark(i, &mut seen);
        }
    }
    for &i in &order {
        if !seen[i] {
            parent[i] = None;
            orphan[i] = true;
            mark(i, &mut seen);
        }
    }

    let mut out = Vec::with_capacity(n);
    let mut placed = vec![false; n];
    for &root in order.iter().filter(|&&i| parent[i].is_none()) {
        let mut stack = vec![(root, 0usize)];
        while let Some((i, depth)) = stack.pop() {
            if std::mem::replace(&mut placed[i], true) {
                continue;
            }
            out.push(TreeHop {
                index: i,
                depth,
                parent: parent[i],
                orphan: orphan[i],
            });
            // A cut hop is a root now: its old parent must not take it back.
            let kids = children[i].iter().rev().filter(|&&c| parent[c] == Some(i));
            stack.extend(kids.map(|&c| (c, depth + 1)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Stream, TaskMeta};

    /// A hop served by `task` ending at `end_ms` after `lat` ms, with span ids.
    fn hop(task: &str, end_ms: i64, lat: f64, span: &str, parent: Option<&str>) -> LogRecord {
        let meta = TaskMeta {
            host: "node-1".into(),
            app: task.split('.').next().unwrap().into(),
            task: task.into(),
            instance: 0,
            ports: vec![],
        };
        let ts = chrono::DateTime::from_timestamp_millis(1_800_000_000_000 + end_ms).unwrap();
        let mut r = LogRecord::new(ts, &meta, Stream::Access, "GET /");
        r.latency_ms = Some(lat);
        r.span_id = Some(span.into()).filter(|s: &String| !s.is_empty());
        r.parent_span_id = parent.map(str::to_string);
        r
    }

    fn shape(recs: &[LogRecord]) -> Vec<(usize, usize, bool)> {
        let refs: Vec<&LogRecord> = recs.iter().collect();
        tree(&refs)
            .into_iter()
            .map(|h| (h.index, h.depth, h.orphan))
            .collect()
    }

    #[test]
    fn spans_nest_callees_under_their_caller_root_first() {
        // Given in time order of their ends (how a search returns them): leaves first.
        let recs = vec![
            hop("fib.b", 30, 20.0, "s2", Some("s1")),
            hop("fib.c", 25, 5.0, "s3", Some("s2")),
            hop("fib.d", 90, 40.0, "s4", Some("s1")),
            hop("fib.a", 100, 100.0, "s1", None),
        ];
        assert_eq!(
            shape(&recs),
            vec![(3, 0, false), (0, 1, false), (1, 2, false), (2, 1, false)]
        );
    }

    #[test]
    fn without_spans_the_caller_task_finds_the_innermost_enclosing_hop() {
        let mut outer = hop("fib.a", 100, 100.0, "", None);
        outer.peer_app = Some(EXTERNAL_PEER.into());
        let mut mid = hop("fib.b", 80, 60.0, "", None);
        mid.fields.insert("caller_task".into(), "fib.a".into());
        // fib.b is called twice; the inner call of b's child must pick the b hop that
        // encloses it in time, not the other one.
        let mut other_b = hop("fib.b", 99, 5.0, "", None);
        other_b.fields.insert("caller_task".into(), "fib.a".into());
        let mut leaf = hop("fib.c", 50, 10.0, "", None);
        leaf.fields.insert("caller_task".into(), "fib.b".into());
        let recs = vec![leaf, other_b, mid, outer];
        assert_eq!(
            shape(&recs),
            vec![(3, 0, false), (2, 1, false), (0, 2, false), (1, 1, false)]
        );
        assert!(is_external(&recs[3]));
        assert!(!is_external(&recs[0]));
    }

    #[test]
    fn a_missing_parent_makes_an_orphan_root() {
        let mut by_task = hop("fib.b", 50, 10.0, "", None);
        by_task
            .fields
            .insert("caller_task".into(), "fib.gone".into());
        let recs = vec![
            hop("fib.a", 20, 10.0, "s1", Some("not-here")),
            by_task,
            hop("fib.c", 15, 2.0, "s3", Some("s1")),
        ];
        assert_eq!(
            shape(&recs),
            vec![(0, 0, true), (2, 1, false), (1, 0, true)]
        );
    }

    #[test]
    fn cycles_and_self_parents_end_and_keep_every_hop_once() {
        // s1 -> s2 -> s3 -> s1, plus one hop naming itself.
        let recs = vec![
            hop("fib.a", 10, 10.0, "s1", Some("s3")),
            hop("fib.b", 20, 10.0, "s2", Some("s1")),
            hop("fib.c", 30, 10.0, "s3", Some("s2")),
            hop("fib.d", 40, 1.0, "s4", Some("s4")),
        ];
        let got = shape(&recs);
        assert_eq!(
            got,
            vec![(0, 0, true), (1, 1, false), (2, 2, false), (3, 0, true)]
        );
    }

    #[test]
    fn duplicate_span_ids_and_empty_input_do_not_break_it() {
        assert!(tree(&[]).is_empty());
        let recs = vec![
            hop("fib.a", 10, 10.0, "s1", Some("s1")),
            hop("fib.b", 10, 10.0, "s1", Some("s1")),
        ];
        let got = shape(&recs);
        assert_eq!(got.len(), 2);
        let mut idx: Vec<usize> = got.iter().map(|g| g.0).collect();
        idx.sort();
        assert_eq!(idx, vec![0, 1]);
    }

    proptest::proptest! {
        #[test]
        fn every_hop_appears_exactly_once_with_its_parent_before_it(
            links in proptest::collection::vec((0usize..12, 0u8..3, 0i64..100, 0.0f64..50.0), 0..12)
        ) {
            let n = links.len();
            let recs: Vec<LogRecord> = links
                .iter()
                .enumerate()
                .map(|(i, &(p, kind, end, lat))| {
                    let parent = match kind {
                        0 => None,
                        1 => Some(format!("s{}", p % n.max(1))),
                        _ => Some("missing".to_string()),
                    };
                    let mut r = hop(&format!("a.{}", i % 4), end, lat, &format!("s{i}"), parent.as_deref());
                    r.fields.insert("caller_task".into(), format!("a.{}", p % 4).into());
                    r
                })
                .collect();
            let refs: Vec<&LogRecord> = recs.iter().collect();
            let t = tree(&refs);
            let mut idx: Vec<usize> = t.iter().map(|h| h.index).collect();
            idx.sort();
            proptest::prop_assert_eq!(idx, (0..n).collect::<Vec<_>>());
            for (pos, h) in t.iter().enumerate() {
                match h.parent {
                    None => proptest::prop_assert_eq!(h.depth, 0),
                    Some(p) => {
                        let ppos = t.iter().position(|x| x.index == p).unwrap();
                        proptest::prop_assert!(ppos < pos);
                        proptest::prop_assert_eq!(t[ppos].depth + 1, h.depth);
                    }
                }
            }
        }
    }
}
