//! Time partitions: one Tantivy index per UTC day (`data_dir/index/2026-11-23/`),
//! searched together, dropped whole by the retention.
//!
//! Reading: [`MultiSearcher`] runs a collector over the segments of every partition's
//! searcher as if they were the segments of one index. Segment ordinals are global
//! (the segments of the first partition, then those of the second, ...), so the
//! `DocAddress`es a `TopDocs` hands back are unique and [`MultiSearcher::doc`] maps
//! them back; every collector merges its per-segment fruits exactly as it would in
//! one index, so counts, cursors, histograms and aggregations are unchanged.
//! Searches, histograms and aggregations with a time range skip partitions whose
//! segments' `ts` range misses it ([`Partitions::searcher_within`]); context and the
//! Elasticsearch layer visit every partition. Segments are searched in parallel on a
//! shared pool of one thread per core. The trade-off: concurrent searches queue for
//! that pool instead of each having a thread, and a group that spans days costs a
//! commit per day.
//!
//! Exactly-once across partitions. A group of ingest requests may touch several
//! days, and Tantivy commits one index at a time, so the commits of a group are not
//! atomic together. Every partition the group touched is committed with the same
//! [`Payload`]: a group number (`epoch`), the names of the partitions it touched, the
//! per-source offsets after the group (`offsets`) and before it (`before`), and the
//! first uid it issued (`uid_from`; uids only grow, see [`Payload::uid_next`]). At
//! open, the payload with the highest epoch is read:
//! - if every partition it names carries that epoch, the group is wholly durable and
//!   its `offsets` are the checkpoint;
//! - otherwise the process stopped between two commits of the group: the partitions
//!   that did commit hold records the others lost. Taking their `offsets` would skip
//!   the lost records when shippers resend them (loss); taking `before` alone would
//!   index the committed ones twice (doubles). So the group is undone: in every
//!   partition it names, documents with `uid >= uid_from` are deleted and the result is
//!   committed under a new epoch whose `offsets` are the group's `before`. Shippers
//!   resend the group and it is indexed once. The undo is idempotent (it names the
//!   same partitions and uid bound), so a crash during it is repaired the same way.
//!
//! Groups are committed one after the other by a single writer thread, so only the
//! last epoch can be incomplete. A commit failure inside a running writer is repaired
//! by the same undo. The newest partition is never dropped by the retention and the
//! current checkpoint is committed into it (as a one-partition epoch) before older
//! ones are dropped, so the checkpoint never leaves with an expired day. A dropped
//! partition's directory is first renamed to `.trash-<day>` (atomic) and then removed,
//! so a crash leaves either a whole partition or trash that the next open deletes.
//!
//! An index from before partitions (`data_dir/index/meta.json`) is migrated at open by
//! renaming it, whole, into the partition of its newest record's day: it keeps
//! serving searches, receives that day's new records, and is dropped when that day
//! expires (so its older records outlive the retention until then: honest, never
//! early).

use crate::columns::ColumnCache;
use crate::error::{Error, Result};
use crate::schema::{self, Fields};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tantivy::collector::Collector;
use tantivy::directory::MmapDirectory;
use tantivy::index::SegmentId;
use tantivy::query::{EnableScoring, Query};
use tantivy::schema::document::DocumentDeserialize;
use tantivy::{
    DocAddress, Executor, Index, IndexReader, ReloadPolicy, Searcher, SegmentReader, Term,
};

/// Directory name format of a partition.
pub const DAY_FORMAT: &str = "%Y-%m-%d";
const TRASH_PREFIX: &str = ".trash-";
const LEGACY_DIR: &str = "index.legacy";

/// The UTC day a record belongs to.
pub fn day_of(ts: &DateTime<Utc>) -> NaiveDate {
    ts.date_naive()
}

pub fn day_name(day: NaiveDate) -> String {
    day.format(DAY_FORMAT).to_string()
}

/// What every partition commit stores (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    pub offsets: BTreeMap<String, u64>,
    #[serde(default)]
    pub epoch: u64,
    #[serde(default)]
    pub parts: Vec<String>,
    #[serde(default)]
    pub uid_from: u64,
    #[serde(default)]
    pub before: BTreeMap<String, u64>,
    /// Above every uid issued so far; a restarted writer starts at least here.
    #[serde(default)]
    pub uid_next: u64,
    /// LSN of the last write-ahead log entry this commit includes (see
    /// [`crate::wal`]): entries above it are replayed at open.
    #[serde(default)]
    pub wal: u64,
    /// `wal` of the commit before: where replay starts when this group is undone.
    #[serde(default)]
    pub wal_before: u64,
}

impl Payload {
    pub fn parse(payload: Option<&str>) -> Result<Payload> {
        match payload {
            None => Ok(Payload::default()),
            Some(p) if p.trim().is_empty() => Ok(Payload::default()),
            Some(p) => serde_json::from_str(p).map_err(|e| Error::BadPayload {
                payload: p.chars().take(200).collect(),
                reason: e.to_string(),
            }),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("payload serialises")
    }
}

/// One day's index.
#[derive(Clone)]
pub struct Part {
    pub day: NaiveDate,
    pub dir: PathBuf,
    pub index: Index,
    pub reader: IndexReader,
}

/// The open partitions, newest day first, shared by the writer and the readers.
#[derive(Clone, Default)]
pub struct Partitions {
    inner: Arc<RwLock<Vec<Part>>>,
    /// The time columns of the segments the partitions search.
    columns: ColumnCache,
}

impl Partitions {
    pub fn list(&self) -> Vec<Part> {
        self.inner.read().map(|g| g.clone()).unwrap_or_default()
    }

    pub fn get(&self, day: NaiveDate) -> Option<Part> {
        self.list().into_iter().find(|p| p.day == day)
    }

    pub fn insert(&self, part: Part) {
        if let Ok(mut g) = self.inner.write() {
            g.retain(|p| p.day != part.day);
            g.push(part);
            g.sort_by_key(|p| std::cmp::Reverse(p.day));
        }
        self.forget_dropped_segments();
    }

    pub fn remove(&self, day: NaiveDate) -> Option<Part> {
        let removed = {
            let mut g = self.inner.write().ok()?;
            let i = g.iter().position(|p| p.day == day)?;
            g.remove(i)
        };
        self.forget_dropped_segments();
        Some(removed)
    }

    /// Makes what `part`'s index committed or merged searchable.
    pub fn reload(&self, part: &Part) -> tantivy::Result<()> {
        part.reader.reload()?;
        self.forget_dropped_segments();
        Ok(())
    }

    /// The `ts` and `_uid` columns of the segments searched, opened once.
    pub fn columns(&self) -> &ColumnCache {
        &self.columns
    }

    /// Drops from the column cache the segments no partition searches any more, so
    /// their files are unmapped once the searches still using them end.
    fn forget_dropped_segments(&self) {
        let live: HashSet<SegmentId> = self
            .list()
            .iter()
            .flat_map(|p| {
                p.reader
                    .searcher()
                    .segment_readers()
                    .iter()
                    .map(|s| s.segment_id())
                    .collect::<Vec<_>>()
            })
            .collect();
        self.columns.retain(live);
    }

    /// A searcher over every partition as they are now.
    pub fn searcher(&self) -> MultiSearcher {
        MultiSearcher::new(self.list().iter().map(|p| p.reader.searcher()).collect())
    }

    /// A searcher over the partitions that may hold records within `start..=end`
    /// (`None`: unbounded), judged by the `ts` range of their segments rather than
    /// by their day, so a migrated single index (many days in one partition) is
    /// judged right too.
    pub fn searcher_within(
        &self,
        start: Option<DateTime<Utc>>,
        end: Option<DateTime<Utc>>,
    ) -> MultiSearcher {
        let lo = start.map_or(i64::MIN, |t| t.timestamp_micros());
        let hi = end.map_or(i64::MAX, |t| t.timestamp_micros());
        let searchers = self
            .list()
            .iter()
            .map(|p| p.reader.searcher())
            .filter(|s| {
                s.segment_readers().iter().any(|seg| {
                    if seg.num_docs() == 0 {
                        return false;
                    }
                    match self.columns.get(seg).map(|c| c.ts_bounds()) {
                        Ok(Some((min, max))) => min <= hi && max >= lo,
                        Ok(None) => false,
                        // Cannot tell: keep it.
                        Err(_) => true,
                    }
                })
            })
            .collect();
        MultiSearcher::new(searchers)
    }
}

/// Opens (or creates) the index of one partition.
pub fn open_part(root: &Path, day: NaiveDate, fields: &Fields) -> Result<Part> {
    let dir = root.join(day_name(day));
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })?;
    let index = open_index(&dir, fields)?;
    let reader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .doc_store_cache_num_blocks(schema::DOCSTORE_CACHE_BLOCKS)
        .try_into()?;
    Ok(Part {
        day,
        dir,
        index,
        reader,
    })
}

fn open_index(dir: &Path, fields: &Fields) -> Result<Index> {
    let mmap = MmapDirectory::open(dir)
        .map_err(|e| Error::Index(format!("cannot open index directory {dir:?}: {e}")))?;
    let exists = Index::exists(&mmap)
        .map_err(|e| Error::Index(format!("cannot read the meta.json of {dir:?}: {e}")))?;
    if exists {
        schema::check_schema(dir, &Index::open(mmap.clone())?.schema(), &fields.schema)?;
    }
    Ok(fields.index_builder().open_or_create(mmap)?)
}

/// Opens every partition under `root` (`data_dir/index`), first migrating an index of
/// the single-index layout and deleting the trash of an interrupted drop.
pub fn open_all(data_dir: &Path, fields: &Fields) -> Result<(PathBuf, Partitions)> {
    let root = data_dir.join("index");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let legacy = data_dir.join(LEGACY_DIR);
    if root.join("meta.json").exists() {
        // Step 1 (atomic): the old index leaves `index/`.
        std::fs::rename(&root, &legacy).map_err(io(&root))?;
    }
    std::fs::create_dir_all(&root).map_err(io(&root))?;
    if legacy.exists() {
        // Step 2 (atomic): it becomes the partition of its newest record's day.
        let index = open_index(&legacy, fields)?;
        let reader: IndexReader = index.reader()?;
        let newest = MultiSearcher::new(vec![reader.searcher()]).newest_ts()?;
        drop(reader);
        drop(index);
        let day = newest
            .and_then(DateTime::from_timestamp_micros)
            .map_or_else(|| day_of(&Utc::now()), |t| day_of(&t));
        let target = root.join(day_name(day));
        if target.exists() {
            return Err(Error::Index(format!(
                "cannot migrate the single index {legacy:?} into {target:?}, which already \
                 exists; move one of them aside and restart"
            )));
        }
        std::fs::rename(&legacy, &target).map_err(io(&legacy))?;
        tracing::info!(day = %day_name(day), "single index migrated into a day partition");
    }
    let parts = Partitions::default();
    for entry in std::fs::read_dir(&root).map_err(io(&root))? {
        let entry = entry.map_err(io(&root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(TRASH_PREFIX) {
            std::fs::remove_dir_all(entry.path()).map_err(io(&entry.path()))?;
            continue;
        }
        let Ok(day) = NaiveDate::parse_from_str(&name, DAY_FORMAT) else {
            continue;
        };
        if entry.path().is_dir() {
            parts.insert(open_part(&root, day, fields)?);
        }
    }
    Ok((root, parts))
}

/// Removes a partition's directory: renamed to trash first so a crash never leaves
/// half a partition under a day's name.
pub fn remove_dir(root: &Path, day: NaiveDate, dir: &Path) -> Result<()> {
    let trash = root.join(format!("{TRASH_PREFIX}{}", day_name(day)));
    std::fs::rename(dir, &trash).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    std::fs::remove_dir_all(&trash).map_err(|source| Error::Io {
        path: trash,
        source,
    })
}

/// The threads segments are searched on, one per core, shared by all searches: a
/// search over millions of records is CPU-bound per segment, and one thread per
/// search left a core idle while a lone user waited (the histogram and percentiles
/// of a day over 10M records took about twice as long). When the pool cannot be made,
/// segments are searched on the calling thread.
fn search_pool() -> &'static Executor {
    static POOL: std::sync::OnceLock<Executor> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cores < 2 {
            return Executor::single_thread();
        }
        Executor::multi_thread(cores, "search-").unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no search thread pool; searching on one thread");
            Executor::single_thread()
        })
    })
}

/// A searcher over several indexes with the same schema: their segments, numbered
/// globally.
pub struct MultiSearcher {
    searchers: Vec<Searcher>,
    /// Global ordinal of the first segment of each searcher.
    first_ord: Vec<u32>,
}

impl MultiSearcher {
    pub fn new(searchers: Vec<Searcher>) -> MultiSearcher {
        let mut first_ord = Vec::with_capacity(searchers.len());
        let mut n = 0u32;
        for s in &searchers {
            first_ord.push(n);
            n += s.segment_readers().len() as u32;
        }
        MultiSearcher {
            searchers,
            first_ord,
        }
    }

    /// Like `Searcher::search`, over every partition.
    pub fn search<C: Collector>(
        &self,
        query: &dyn Query,
        collector: &C,
    ) -> tantivy::Result<C::Fruit> {
        let mut weights = Vec::with_capacity(self.searchers.len());
        let mut jobs = Vec::new();
        let budget = crate::budget::current();
        for (w, (s, first)) in self.searchers.iter().zip(&self.first_ord).enumerate() {
            let scoring = if collector.requires_scoring() {
                EnableScoring::enabled_from_searcher(s)
            } else {
                EnableScoring::disabled_from_searcher(s)
            };
            let weight = query.weight(scoring)?;
            weights.push(match &budget {
                Some(b) => crate::budget::BudgetWeight::wrap(weight, b.clone()),
                None => weight,
            });
            for (i, segment) in s.segment_readers().iter().enumerate() {
                jobs.push((w, first + i as u32, segment));
            }
        }
        // Fruits come back in segment order, so merging is as on one thread.
        let fruits = search_pool().map(
            |(w, ord, segment)| collector.collect_segment(weights[w].as_ref(), ord, segment),
            jobs.into_iter(),
        )?;
        collector.merge_fruits(fruits)
    }

    fn locate(&self, segment_ord: u32) -> tantivy::Result<(&Searcher, u32)> {
        let i = self.first_ord.partition_point(|f| *f <= segment_ord);
        match i.checked_sub(1) {
            Some(i)
                if segment_ord - self.first_ord[i]
                    < self.searchers[i].segment_readers().len() as u32 =>
            {
                Ok((&self.searchers[i], segment_ord - self.first_ord[i]))
            }
            _ => Err(tantivy::TantivyError::InvalidArgument(format!(
                "no segment {segment_ord}"
            ))),
        }
    }

    pub fn doc<D: DocumentDeserialize>(&self, addr: DocAddress) -> tantivy::Result<D> {
        let (s, ord) = self.locate(addr.segment_ord)?;
        s.doc(DocAddress::new(ord, addr.doc_id))
    }

    pub fn segment_reader(&self, segment_ord: u32) -> &SegmentReader {
        let (s, ord) = self
            .locate(segment_ord)
            .expect("segment ordinal from this searcher");
        s.segment_reader(ord)
    }

    pub fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        let mut n = 0;
        for s in &self.searchers {
            n += s.doc_freq(term)?;
        }
        Ok(n)
    }

    /// How many partitions this searcher covers.
    pub fn num_partitions(&self) -> usize {
        self.searchers.len()
    }

    pub fn num_docs(&self) -> u64 {
        self.searchers.iter().map(|s| s.num_docs()).sum()
    }

    pub fn num_segments(&self) -> usize {
        self.searchers
            .iter()
            .map(|s| s.segment_readers().len())
            .sum()
    }

    /// The newest `ts` (micros) of any live document.
    pub fn newest_ts(&self) -> Result<Option<i64>> {
        let mut newest = None;
        for s in &self.searchers {
            for seg in s.segment_readers() {
                if seg.num_docs() == 0 {
                    continue;
                }
                // The column's maximum may belong to a deleted document: a day too
                // late at worst, which only keeps data longer.
                let t = seg
                    .fast_fields()
                    .date(schema::TS)?
                    .max_value()
                    .into_timestamp_micros();
                newest = Some(newest.map_or(t, |n: i64| n.max(t)));
            }
        }
        Ok(newest)
    }
}
