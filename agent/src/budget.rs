//! A task's disk budget for its logs: which rotated files to give up on.
//!
//! `task.json` may give a budget (`log_budget_bytes`) for all of a task's log files
//! together: live and rotated, stdout and stderr. The task logger blocks the task
//! once the files reach twice the budget (back-pressure on the task); below that, the
//! shipper keeps them under it by giving up on the oldest rotated files it has not
//! read yet, each gap written into the task's stream as one record (see
//! `tail::drop_unread`) and counted, never silent. The trade-off: a task that logs
//! faster than the indexer takes its lines loses its oldest unread lines rather than
//! stalling; a task that must never lose a line sets no budget and is held back by
//! the logger instead.
//!
//! [`to_drop`] is the decision alone, a pure function of what the scan saw, so it can
//! be checked on its own. It projects what stays on disk once everything already
//! read is acknowledged: files read to their end (or already being dropped) are
//! deleted then anyway, so they are never a reason to drop another file, and bytes
//! already read (in a batch or the spool) are never dropped. Rotated files with
//! unread bytes are then given up on oldest first until the projection fits. Live
//! files are never dropped: a live file alone over the budget is the logger's to
//! rotate.

use protocol::Stream;
use std::collections::VecDeque;
use std::time::SystemTime;

/// One log file of a task as the budget sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    pub stream: Stream,
    /// `None` for the live file, `Some(n)` for the rotation `<stream>.<n>`.
    pub rotation: Option<u64>,
    pub size: u64,
    /// Bytes never read: 0 for a file read to its end or already being dropped
    /// (either goes away once acknowledged).
    pub unread: u64,
    /// When it was last written, which for a rotation is when it was rotated: how
    /// rotations of the two streams are put in one order.
    pub modified: Option<SystemTime>,
}

/// The rotated files oldest first: each stream's by number (the logger numbers them
/// upwards, so that order is exact), the streams merged by modification time.
/// Returns indices into `files`.
pub fn age_order(files: &[FileState]) -> Vec<usize> {
    let mut streams: Vec<(Stream, VecDeque<usize>)> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        if f.rotation.is_none() {
            continue;
        }
        match streams.iter_mut().find(|(s, _)| *s == f.stream) {
            Some((_, q)) => q.push_back(i),
            None => streams.push((f.stream, VecDeque::from([i]))),
        }
    }
    for (_, q) in &mut streams {
        q.make_contiguous()
            .sort_by_key(|&i| (files[i].rotation, files[i].modified));
    }
    let mut out = Vec::new();
    loop {
        let next = streams
            .iter()
            .enumerate()
            .filter_map(|(k, (s, q))| q.front().map(|&i| (k, *s, i)))
            .min_by_key(|&(_, s, i)| (files[i].modified, s.as_str(), files[i].rotation));
        let Some((k, _, i)) = next else {
            break;
        };
        streams[k].1.pop_front();
        out.push(i);
    }
    out
}

/// Which rotated files (indices into `files`, oldest first) to give up the unread
/// bytes of, so that what stays on disk once everything read is acknowledged fits in
/// `budget` bytes, or as close as dropping rotated files can get.
pub fn to_drop(files: &[FileState], budget: u64) -> Vec<usize> {
    let mut projected = projected(files);
    let mut out = Vec::new();
    for i in age_order(files) {
        if projected <= budget {
            break;
        }
        if files[i].unread > 0 {
            projected = projected.saturating_sub(files[i].size);
            out.push(i);
        }
    }
    out
}

/// What stays on disk once everything read is acknowledged: the live files, and the
/// rotated files with bytes still unread (see [`to_drop`]).
fn projected(files: &[FileState]) -> u64 {
    files
        .iter()
        .filter(|f| f.rotation.is_none() || f.unread > 0)
        .fold(0, |sum, f| sum.saturating_add(f.size))
}

/// Whether what stays on disk (as [`to_drop`] projects it) fills half the task's
/// `budget` or more: from there on the shipper reads ahead into its spool rather than
/// wait for a busy indexer, since the files alone would soon be over the budget and
/// lose their oldest lines (see `run::Run::wait_before_spilling`). Below that the
/// files hold the lines for free. Whenever [`to_drop`] gives up on a file, this holds.
pub fn pressed(files: &[FileState], budget: u64) -> bool {
    projected(files).saturating_mul(2) >= budget.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn file(stream: Stream, rotation: Option<u64>, size: u64, unread: u64, t: u64) -> FileState {
        FileState {
            stream,
            rotation,
            size,
            unread,
            modified: Some(UNIX_EPOCH + Duration::from_secs(t)),
        }
    }

    #[test]
    fn what_stays_on_disk_presses_the_budget_from_half_of_it() {
        use Stream::{Stderr, Stdout};
        let files = [
            file(Stdout, None, 30, 20, 100),
            file(Stdout, Some(1), 40, 0, 10),
            file(Stderr, Some(2), 40, 29, 20),
        ];
        // stdout.1 is read to its end and goes once acknowledged: 30 + 40 stay.
        assert!(pressed(&files, 140));
        assert!(!pressed(&files, 141));
        assert!(!pressed(&[], 1));
        // Regression (review): counting unread bytes alone, a mostly read live file
        // beside an unread rotation was not pressed while `to_drop` gave the rotation up.
        let files = [
            file(Stdout, None, 900, 100, 100),
            file(Stdout, Some(1), 200, 200, 10),
        ];
        assert_eq!(to_drop(&files, 1000), [1]);
        assert!(pressed(&files, 1000));
    }

    #[test]
    fn drops_the_oldest_unread_rotations_until_the_rest_fits() {
        use Stream::{Stderr, Stdout};
        let files = [
            file(Stdout, None, 10, 10, 100),
            file(Stdout, Some(2), 40, 40, 20),
            file(Stdout, Some(1), 40, 5, 10),
            file(Stderr, Some(7), 40, 40, 15),
            file(Stderr, None, 5, 0, 100),
            file(Stdout, Some(3), 40, 0, 30),
        ];
        // stdout.3 is read: it goes anyway. The rest is 10 + 5 + 40 × 3 = 135.
        assert_eq!(age_order(&files), [2, 3, 1, 5]);
        assert_eq!(to_drop(&files, 135), Vec::<usize>::new());
        assert_eq!(to_drop(&files, 134), [2]);
        assert_eq!(to_drop(&files, 95), [2]);
        assert_eq!(to_drop(&files, 94), [2, 3]);
        assert_eq!(to_drop(&files, 55), [2, 3]);
        assert_eq!(to_drop(&files, 54), [2, 3, 1]);
        // Live files are never dropped, even when they alone are over the budget.
        assert_eq!(to_drop(&files, 0), [2, 3, 1]);
    }

    #[test]
    fn within_a_stream_the_number_decides_whatever_the_clock_says() {
        let files = [
            file(Stream::Stdout, Some(5), 10, 10, 1),
            file(Stream::Stdout, Some(4), 10, 10, 2),
        ];
        assert_eq!(age_order(&files), [1, 0]);
        assert_eq!(to_drop(&files, 10), [1]);
    }

    fn state() -> impl Strategy<Value = FileState> {
        (
            any::<bool>(),
            proptest::option::of(0u64..20),
            0u64..1000,
            0u64..=100,
            proptest::option::of(0u64..50),
        )
            .prop_map(|(err, rotation, size, pct, t)| FileState {
                stream: if err { Stream::Stderr } else { Stream::Stdout },
                rotation,
                size,
                unread: size * pct / 100,
                modified: t.map(|t| UNIX_EPOCH + Duration::from_secs(t)),
            })
    }

    proptest! {
        #[test]
        fn the_drop_is_the_shortest_oldest_first_prefix_that_fits(
            files in proptest::collection::vec(state(), 0..12),
            budget in 0u64..6000,
        ) {
            let drop = to_drop(&files, budget);
            // The shipper reads ahead into its spool before the budget gives up on lines.
            prop_assert!(drop.is_empty() || pressed(&files, budget));
            let order = age_order(&files);
            // The age order holds every rotation once, each stream by number.
            let rotated: Vec<usize> = (0..files.len()).filter(|&i| files[i].rotation.is_some()).collect();
            let mut sorted = order.clone();
            sorted.sort_unstable();
            prop_assert_eq!(&sorted, &rotated);
            for (a, &i) in order.iter().enumerate() {
                for &j in &order[a + 1..] {
                    if files[i].stream == files[j].stream {
                        prop_assert!(files[i].rotation <= files[j].rotation);
                    }
                }
            }
            // Only rotations with unread bytes, each once, oldest first: a prefix of
            // the age order of the candidates.
            let candidates: Vec<usize> = order.iter().copied().filter(|&i| files[i].unread > 0).collect();
            prop_assert_eq!(&drop[..], &candidates[..drop.len()]);
            // What stays on disk once all that was read is acknowledged.
            let stays = |dropped: &[usize]| -> u64 {
                (0..files.len())
                    .filter(|i| files[*i].rotation.is_none() || (files[*i].unread > 0 && !dropped.contains(i)))
                    .map(|i| files[i].size)
                    .sum()
            };
            let total: u64 = files.iter().map(|f| f.size).sum();
            if total <= budget {
                prop_assert!(drop.is_empty());
            }
            // It fits, or every candidate is dropped.
            prop_assert!(stays(&drop) <= budget || drop.len() == candidates.len());
            // And no shorter prefix would have fitted.
            if let Some((_, shorter)) = drop.split_last() {
                prop_assert!(stays(shorter) > budget);
            }
        }
    }
}
