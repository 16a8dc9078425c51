//! A time budget per search request: past its deadline, every scorer of the request
//! reports the end of its documents, so collectors finish with what they have and
//! the request is answered with an error that says so, instead of holding a core
//! for as long as the query takes.
//!
//! Tantivy has no cancellation, so the budget lives in the weights: [`MultiSearcher`]
//! wraps every weight of a search made while a budget is in force on the thread
//! ([`with_budget`]), and the wrapped scorers look at the clock once per block of
//! documents. The trade-off: a wrapped weight cannot use the inner weight's own
//! `for_each_no_score` fast paths (it iterates through the scorer's blocks instead),
//! and work outside scorers (building a regex automaton over the term dictionary,
//! loading a column) is not interrupted, though it is bounded by the index's size
//! rather than by the query's shape.
//!
//! [`MultiSearcher`]: crate::partition::MultiSearcher

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tantivy::query::{Explanation, Scorer, Weight};
use tantivy::{DocId, DocSet, Score, SegmentReader, COLLECT_BLOCK_BUFFER_LEN, TERMINATED};

/// How many `advance` calls pass between two looks at the clock.
const CHECK_EVERY: u32 = 1024;

/// The deadline of one request and whether it was reached.
#[derive(Debug)]
pub struct Budget {
    limit: Duration,
    deadline: Instant,
    spent: AtomicBool,
}

impl Budget {
    pub fn new(limit: Duration) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            deadline: Instant::now() + limit,
            spent: AtomicBool::new(false),
        })
    }

    /// Whether the deadline has passed; once it has, it stays so.
    pub fn over(&self) -> bool {
        if self.spent.load(Ordering::Relaxed) {
            return true;
        }
        if Instant::now() >= self.deadline {
            self.spent.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Whether some scorer stopped early because of the deadline.
    pub fn spent(&self) -> bool {
        self.spent.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Budget>>> = const { RefCell::new(None) };
}

/// Runs `f` with `budget` in force for the searches it makes on this thread.
pub fn with_budget<T>(budget: &Arc<Budget>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Arc<Budget>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with_borrow_mut(|c| *c = self.0.take());
        }
    }
    let _restore = Restore(CURRENT.with_borrow_mut(|c| c.replace(budget.clone())));
    f()
}

/// The budget in force on this thread, if any.
pub fn current() -> Option<Arc<Budget>> {
    CURRENT.with_borrow(|c| c.clone())
}

/// A weight whose scorers end at the budget's deadline.
pub struct BudgetWeight {
    inner: Box<dyn Weight>,
    budget: Arc<Budget>,
}

impl BudgetWeight {
    pub fn wrap(inner: Box<dyn Weight>, budget: Arc<Budget>) -> Box<dyn Weight> {
        Box::new(BudgetWeight { inner, budget })
    }
}

impl Weight for BudgetWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        if self.budget.over() {
            return Ok(Box::new(tantivy::query::EmptyScorer));
        }
        let inner = self.inner.scorer(reader, boost)?;
        Ok(Box::new(BudgetScorer {
            inner,
            ticker: Ticker::new(Some(self.budget.clone()), CHECK_EVERY),
        }))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        self.inner.explain(reader, doc)
    }

    fn for_each_pruning(
        &self,
        threshold: Score,
        reader: &SegmentReader,
        callback: &mut dyn FnMut(DocId, Score) -> Score,
    ) -> tantivy::Result<()> {
        // Keeps the inner weight's pruning (block-max WAND); past the deadline the
        // threshold goes to infinity, which no document beats, so the walk ends. The
        // clock is only read when a document beats the threshold, so a full top-k
        // may run on past the deadline (no search of ours sorts by score today).
        if self.budget.over() {
            return Ok(());
        }
        let budget = self.budget.clone();
        let mut calls = 0u32;
        self.inner
            .for_each_pruning(threshold, reader, &mut |doc, score| {
                calls = calls.wrapping_add(1);
                let t = callback(doc, score);
                if calls.is_multiple_of(CHECK_EVERY) && budget.over() {
                    Score::INFINITY
                } else {
                    t
                }
            })
    }
}

/// Counts a scorer's calls and looks at the budget's clock on the first and then
/// every `every`-th one (a clock read per document would cost more than many
/// scorers' own work); once the budget is spent it stays ended.
pub(crate) struct Ticker {
    budget: Option<Arc<Budget>>,
    every: u32,
    calls: u32,
    ended: bool,
}

impl Ticker {
    pub(crate) fn new(budget: Option<Arc<Budget>>, every: u32) -> Ticker {
        Ticker {
            budget,
            every: every.max(1),
            calls: 0,
            ended: false,
        }
    }

    /// Counts one call; whether the scorer must end now.
    pub(crate) fn over(&mut self) -> bool {
        if !self.ended {
            self.calls = self.calls.wrapping_add(1);
            if self.calls % self.every == 1 || self.every == 1 {
                self.ended = self.budget.as_ref().is_some_and(|b| b.over());
            }
        }
        self.ended
    }

    /// Whether the scorer must end now, looking at the clock whatever the count (for
    /// a call that covers a block of documents).
    pub(crate) fn over_now(&mut self) -> bool {
        if !self.ended {
            self.ended = self.budget.as_ref().is_some_and(|b| b.over());
        }
        self.ended
    }

    /// Whether the scorer ended (without counting a call).
    pub(crate) fn ended(&self) -> bool {
        self.ended
    }
}

/// A scorer that reports its end once the budget is spent.
struct BudgetScorer {
    inner: Box<dyn Scorer>,
    /// For `advance` and `seek`, a document at a time.
    ticker: Ticker,
}

impl DocSet for BudgetScorer {
    fn advance(&mut self) -> DocId {
        if self.ticker.over() {
            return TERMINATED;
        }
        self.inner.advance()
    }

    fn seek(&mut self, target: DocId) -> DocId {
        if self.ticker.over() {
            return TERMINATED;
        }
        self.inner.seek(target)
    }

    fn fill_buffer(&mut self, buffer: &mut [DocId; COLLECT_BLOCK_BUFFER_LEN]) -> usize {
        // A block of documents is worth a look at the clock each time.
        if self.ticker.over_now() {
            return 0;
        }
        self.inner.fill_buffer(buffer)
    }

    fn doc(&self) -> DocId {
        if self.ticker.ended() {
            TERMINATED
        } else {
            self.inner.doc()
        }
    }

    fn size_hint(&self) -> u32 {
        self.inner.size_hint()
    }

    fn cost(&self) -> u64 {
        self.inner.cost()
    }
}

impl Scorer for BudgetScorer {
    fn score(&mut self) -> Score {
        self.inner.score()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tantivy::collector::Count;
    use tantivy::query::AllQuery;
    use tantivy::schema::{Schema, STRING};
    use tantivy::{doc, Index};

    fn index(docs: u64) -> Index {
        let mut b = Schema::builder();
        let f = b.add_text_field("f", STRING);
        let index = Index::create_in_ram(b.build());
        let mut w: tantivy::IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
        for i in 0..docs {
            w.add_document(doc!(f => format!("v{}", i % 7))).unwrap();
        }
        w.commit().unwrap();
        index
    }

    fn count_with(index: &Index, budget: &Arc<Budget>) -> usize {
        let searcher = index.reader().unwrap().searcher();
        let weight = tantivy::query::Query::weight(
            &AllQuery,
            tantivy::query::EnableScoring::disabled_from_searcher(&searcher),
        )
        .unwrap();
        let weight = BudgetWeight::wrap(weight, budget.clone());
        searcher
            .segment_readers()
            .iter()
            .map(|r| weight.count(r).unwrap() as usize)
            .sum()
    }

    #[test]
    fn a_search_within_its_budget_sees_every_document() {
        let index = index(5000);
        let budget = Budget::new(Duration::from_secs(60));
        assert_eq!(count_with(&index, &budget), 5000);
        assert!(!budget.spent());
        let searcher = index.reader().unwrap().searcher();
        assert_eq!(searcher.search(&AllQuery, &Count).unwrap(), 5000);
    }

    #[test]
    fn a_spent_budget_ends_every_scorer_and_says_so() {
        let index = index(5000);
        let budget = Budget::new(Duration::ZERO);
        assert_eq!(count_with(&index, &budget), 0);
        assert!(budget.spent());
    }

    #[test]
    fn the_budget_is_in_force_only_inside_with_budget_and_nests() {
        assert!(current().is_none());
        let outer = Budget::new(Duration::from_secs(1));
        let inner = Budget::new(Duration::from_secs(2));
        with_budget(&outer, || {
            assert_eq!(current().unwrap().limit(), Duration::from_secs(1));
            with_budget(&inner, || {
                assert_eq!(current().unwrap().limit(), Duration::from_secs(2));
            });
            assert_eq!(current().unwrap().limit(), Duration::from_secs(1));
        });
        assert!(current().is_none());
    }
}
