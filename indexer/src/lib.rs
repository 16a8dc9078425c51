//! Sandtrail's indexer: the Elasticsearch replacement, on Tantivy.
//!
//! It takes batches of `protocol::LogRecord` (gzip NDJSON over HTTP), indexes each
//! record exactly once (a per-source offset checkpoint is committed atomically with
//! the data), answers searches newest first (or slowest first) with exact cursors and
//! highlights, counts matches over time, aggregates top field values and latency
//! percentiles, returns the context of a record, streams accepted records live to
//! tail subscribers, and speaks a subset of the Elasticsearch API ([`es`]) so that
//! existing shippers and clients work unchanged.
//!
//! Shape: [`Indexer`] is a cheap handle; a dedicated OS thread owns the Tantivy writer
//! and group-commits ([`writer`]); searches run on the blocking pool against a reader
//! that the writer reloads after each commit ([`search`], [`analytics`]); [`api`] is
//! the HTTP layer; [`bench`] measures it all against raw Tantivy.
//! The trade-off of this version: one index (not one per day), so retention by age
//! ([`IndexerConfig::retention`]) deletes expired records by a range query instead of
//! dropping whole partitions, and their space returns as merges rewrite segments.

pub mod analytics;
pub mod api;
pub mod bench;
pub mod error;
pub mod es;
pub mod metrics;
pub mod query;
pub mod schema;
pub mod search;
pub mod tail;
pub mod writer;

pub use analytics::{
    ContextRequest, ContextResponse, FieldsResponse, GroupBy, LatencyResponse, Scope,
};
pub use api::router;
pub use error::{Error, Result};
pub use search::{HistogramRequest, SearchParams, SearchRequest, Sort};
pub use tail::TailFilter;

use crate::metrics::{Gauges, Metrics};
use crate::schema::Fields;
use crate::search::IndexView;
pub use crate::writer::{BulkDoc, BulkOutcome};
use crate::writer::{WriterMsg, WriterThread, QUEUE_DEPTH};
use protocol::{HistogramResponse, IngestResponse, LogRecord, SearchResponse};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tantivy::directory::MmapDirectory;
use tantivy::{Index, ReloadPolicy};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How many accepted records a tail subscriber may fall behind before it is told
/// it dropped some.
pub const TAIL_CAPACITY: usize = 4096;

/// How the indexer is set up.
#[derive(Debug, Clone)]
pub struct IndexerConfig {
    /// The index lives in `data_dir/index`.
    pub data_dir: PathBuf,
    /// Cluster token; when set, ingest requires it.
    pub token: Option<String>,
    /// Cap on the inflated size of one ingest body (the gzip-bomb guard).
    pub max_body_bytes: usize,
    /// Tantivy's indexing memory budget.
    pub writer_memory_bytes: usize,
    /// Inflated ingest bytes (native and bulk) that may be decoded or queued for the
    /// writer at once; beyond it ingest answers 429 with `Retry-After`, so memory
    /// stays bounded whatever the ingest rate.
    pub max_inflight_bytes: usize,
    /// Records older than this are deleted (checked at open and every minute).
    pub retention: Option<std::time::Duration>,
}

impl Default for IndexerConfig {
    fn default() -> Self {
        IndexerConfig {
            data_dir: PathBuf::from("./.sandtrail/indexer"),
            token: None,
            max_body_bytes: 64 << 20,
            writer_memory_bytes: 128 << 20,
            max_inflight_bytes: 512 << 20,
            retention: None,
        }
    }
}

/// Handle to an open index; clones share it.
#[derive(Clone)]
pub struct Indexer {
    inner: Arc<Inner>,
}

struct Inner {
    config: IndexerConfig,
    view: IndexView,
    /// `None` once shut down.
    writer_tx: Mutex<Option<mpsc::Sender<WriterMsg>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    tail: broadcast::Sender<Arc<LogRecord>>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    /// KiB of [`IndexerConfig::max_inflight_bytes`] not yet reserved.
    inflight: Arc<tokio::sync::Semaphore>,
}

impl Indexer {
    /// Creates the index (or reopens it, with its committed offsets) and starts the
    /// writer thread.
    pub fn open(config: IndexerConfig) -> Result<Indexer> {
        let dir = config.data_dir.join("index");
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        let fields = Fields::new();
        let settings = schema::index_settings();
        let mmap = MmapDirectory::open(&dir)
            .map_err(|e| Error::Index(format!("cannot open index directory {dir:?}: {e}")))?;
        let index = Index::builder()
            .schema(fields.schema.clone())
            .settings(settings)
            .open_or_create(mmap)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let (tail, _) = broadcast::channel(TAIL_CAPACITY);
        let metrics = Arc::new(Metrics::default());
        let mut writer = WriterThread::new(
            &index,
            config.writer_memory_bytes,
            reader.clone(),
            fields.clone(),
            tail.clone(),
            metrics.clone(),
        )?;
        writer.retention = config.retention;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let thread = std::thread::Builder::new()
            .name("index-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::Internal(format!("cannot start the writer thread: {e}")))?;
        tracing::info!(dir = %dir.display(), docs = reader.searcher().num_docs(), "index opened");
        Ok(Indexer {
            inner: Arc::new(Inner {
                view: IndexView {
                    index,
                    reader,
                    fields,
                },
                writer_tx: Mutex::new(Some(tx)),
                writer_thread: Mutex::new(Some(thread)),
                tail,
                metrics,
                cancel: CancellationToken::new(),
                inflight: Arc::new(tokio::sync::Semaphore::new(
                    (config.max_inflight_bytes >> 10).max(1),
                )),
                config,
            }),
        })
    }

    pub fn config(&self) -> &IndexerConfig {
        &self.inner.config
    }

    /// Indexes the records that are new (by source and offset) and returns once they
    /// are committed and searchable.
    pub async fn ingest(&self, records: Vec<LogRecord>) -> Result<IngestResponse> {
        if records.is_empty() {
            return Ok(IngestResponse::default());
        }
        let tx = self
            .inner
            .writer_tx
            .lock()
            .map_err(|_| Error::Internal("writer handle poisoned".into()))?
            .clone()
            .ok_or(Error::ShuttingDown)?;
        let (reply, answer) = oneshot::channel();
        tx.send(WriterMsg::Ingest { records, reply })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Indexes bulk-API documents (deduplicated by `_id`), once committed. Unlike
    /// [`Indexer::ingest`], which waits for room in the writer's queue, this fails
    /// fast with [`Error::Overloaded`] (429) so Elasticsearch clients back off.
    pub async fn bulk(&self, docs: Vec<BulkDoc>) -> Result<Vec<BulkOutcome>> {
        if docs.is_empty() {
            return Ok(Vec::new());
        }
        let tx = self
            .inner
            .writer_tx
            .lock()
            .map_err(|_| Error::Internal("writer handle poisoned".into()))?
            .clone()
            .ok_or(Error::ShuttingDown)?;
        let (reply, answer) = oneshot::channel();
        tx.try_send(WriterMsg::Bulk { docs, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Error::Overloaded {
                    reason: format!("{QUEUE_DEPTH} requests are waiting for the writer"),
                },
                mpsc::error::TrySendError::Closed(_) => Error::ShuttingDown,
            })?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Runs a blocking function against the current reader (for the Elasticsearch
    /// layer's searches).
    pub(crate) async fn with_view<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&IndexView) -> Result<T> + Send + 'static,
    {
        Metrics::inc(&self.inner.metrics.searches, 1);
        self.blocking("search", f).await
    }

    pub async fn search(&self, req: SearchRequest) -> Result<SearchResponse> {
        Metrics::inc(&self.inner.metrics.searches, 1);
        let view = self.inner.view.clone();
        let result = tokio::task::spawn_blocking(move || view.search(&req))
            .await
            .map_err(|e| Error::Internal(format!("search task failed: {e}")))?;
        if result.is_err() {
            Metrics::inc(&self.inner.metrics.search_errors, 1);
        }
        result
    }

    pub async fn histogram(&self, req: HistogramRequest) -> Result<HistogramResponse> {
        Metrics::inc(&self.inner.metrics.histograms, 1);
        let view = self.inner.view.clone();
        let result = tokio::task::spawn_blocking(move || view.histogram(&req))
            .await
            .map_err(|e| Error::Internal(format!("histogram task failed: {e}")))?;
        if result.is_err() {
            Metrics::inc(&self.inner.metrics.search_errors, 1);
        }
        result
    }

    /// Reserves room for `bytes` of a request being ingested, or refuses with 429
    /// when the in-flight budget is spent; the room is released when the permit
    /// is dropped.
    pub(crate) fn reserve(&self, bytes: usize) -> Result<tokio::sync::OwnedSemaphorePermit> {
        let budget_kib = (self.inner.config.max_inflight_bytes >> 10).max(1);
        let kib = ((bytes >> 10) + 1).min(budget_kib);
        let kib = u32::try_from(kib).unwrap_or(u32::MAX);
        self.inner
            .inflight
            .clone()
            .try_acquire_many_owned(kib)
            .map_err(|_| Error::Overloaded {
                reason: format!(
                    "more than {} MiB of ingest requests are in flight",
                    self.inner.config.max_inflight_bytes >> 20
                ),
            })
    }

    /// Runs `f` against the current reader on the blocking pool, counting failures.
    async fn blocking<T, F>(&self, what: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&IndexView) -> Result<T> + Send + 'static,
    {
        let view = self.inner.view.clone();
        let result = tokio::task::spawn_blocking(move || f(&view))
            .await
            .map_err(|e| Error::Internal(format!("{what} task failed: {e}")))?;
        if result.is_err() {
            Metrics::inc(&self.inner.metrics.search_errors, 1);
        }
        result
    }

    /// A search plus, per hit, the byte ranges of `msg` its query matched.
    pub async fn search_highlighted(
        &self,
        req: SearchRequest,
    ) -> Result<(SearchResponse, Vec<Vec<[usize; 2]>>)> {
        Metrics::inc(&self.inner.metrics.searches, 1);
        self.blocking("search", move |view| {
            let resp = view.search(&req)?;
            let highlights = view.highlights(&req.q, &resp.hits)?;
            Ok((resp, highlights))
        })
        .await
    }

    /// Top values of the sidebar fields within a query and range.
    pub async fn top_fields(&self, scope: Scope, size: usize) -> Result<FieldsResponse> {
        self.blocking("fields", move |view| view.top_fields(&scope, size))
            .await
    }

    /// Latency statistics per host, app or task within a query and range.
    pub async fn latency(&self, scope: Scope, by: GroupBy) -> Result<LatencyResponse> {
        self.blocking("latency", move |view| view.latency(&scope, by))
            .await
    }

    /// The records around one record of a task.
    pub async fn context(&self, req: ContextRequest) -> Result<ContextResponse> {
        self.blocking("context", move |view| view.context(&req))
            .await
    }

    /// Every record accepted from now on (before its commit); a receiver that falls
    /// more than [`TAIL_CAPACITY`] records behind gets `Lagged`.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LogRecord>> {
        self.inner.tail.subscribe()
    }

    /// Prometheus text format.
    pub fn metrics(&self) -> String {
        let searcher = self.inner.view.reader.searcher();
        self.inner.metrics.render(&Gauges {
            docs: searcher.num_docs(),
            segments: searcher.segment_readers().len() as u64,
            tail_subscribers: self.inner.tail.receiver_count() as u64,
        })
    }

    pub(crate) fn metrics_handle(&self) -> Arc<Metrics> {
        self.inner.metrics.clone()
    }

    /// Resolves when shutdown begins (tail streams end on it).
    pub(crate) fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.inner.cancel.clone().cancelled_owned()
    }

    /// Ends tail streams, lets the writer commit what is queued and finish merges,
    /// and waits for its thread. Ingests after this fail with `ShuttingDown`.
    /// Idempotent.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        let tx = self.inner.writer_tx.lock().ok().and_then(|mut g| g.take());
        if let Some(tx) = tx {
            let (reply, done) = oneshot::channel();
            if tx.send(WriterMsg::Shutdown { reply }).await.is_ok() {
                let _ = done.await;
            }
        }
        let thread = self
            .inner
            .writer_thread
            .lock()
            .ok()
            .and_then(|mut g| g.take());
        if let Some(thread) = thread {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!("index writer thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Duration, Utc};
    use protocol::{Level, Stream, TaskMeta};
    use std::collections::HashSet;

    fn config(dir: &std::path::Path) -> IndexerConfig {
        IndexerConfig {
            data_dir: dir.to_path_buf(),
            writer_memory_bytes: 32 << 20,
            ..IndexerConfig::default()
        }
    }

    fn base() -> DateTime<Utc> {
        "2025-06-01T10:00:00Z".parse().unwrap()
    }

    fn rec(secs: i64, host: &str, app: &str, msg: &str, source: &str, offset: u64) -> LogRecord {
        let meta = TaskMeta {
            host: host.into(),
            app: app.into(),
            task: format!("{app}.0f3c"),
            instance: 0,
            ports: vec![],
        };
        let mut r = LogRecord::new(base() + Duration::seconds(secs), &meta, Stream::Stdout, msg);
        r.source = source.into();
        r.offset = offset;
        r
    }

    fn all(q: &str) -> SearchRequest {
        SearchRequest {
            q: q.into(),
            limit: 1000,
            ..SearchRequest::default()
        }
    }

    async fn msgs(ix: &Indexer, q: &str) -> Vec<String> {
        let mut m: Vec<String> = ix
            .search(all(q))
            .await
            .unwrap()
            .hits
            .into_iter()
            .map(|h| h.msg)
            .collect();
        m.sort();
        m
    }

    #[tokio::test]
    async fn ingest_then_search_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let ix = Indexer::open(config(dir.path())).unwrap();
        let batch = vec![
            rec(1, "node-1", "fib", "first", "s", 10),
            rec(3, "node-1", "fib", "third", "s", 20),
            rec(2, "node-1", "fib", "second", "s", 30),
        ];
        let resp = ix.ingest(batch.clone()).await.unwrap();
        assert_eq!(
            resp,
            IngestResponse {
                accepted: 3,
                duplicates: 0
            }
        );
        let found = ix.search(all("")).await.unwrap();
        assert_eq!(found.total, 3);
        let order: Vec<&str> = found.hits.iter().map(|h| h.msg.as_str()).collect();
        assert_eq!(order, ["third", "second", "first"]);
        assert_eq!(found.hits[0], batch[1], "hits are the records, exactly");
        assert_eq!(found.next, None);
        ix.shutdown().await;
    }

    #[tokio::test]
    async fn cursor_pages_return_every_record_once_despite_shared_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let ix = Indexer::open(config(dir.path())).unwrap();
        // 250 records on 25 distinct timestamps, in 5 batches (5 segments).
        let mut offset = 0;
        for b in 0..5 {
            let batch = (0..50)
                .map(|i| {
                    offset += 1;
                    rec(
                        (i % 25) as i64,
                        "h",
                        "a",
                        &format!("r{b}-{i}"),
                        "src",
                        offset,
                    )
                })
                .collect();
            ix.ingest(batch).await.unwrap();
        }
        let mut seen = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let page = ix
                .search(SearchRequest {
                    limit: 7,
                    cursor: cursor.clone(),
                    ..SearchRequest::default()
                })
                .await
                .unwrap();
            assert_eq!(page.total, 250, "total counts every match, not the page");
            seen.extend(page.hits);
            pages += 1;
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
            assert!(pages < 100, "paging does not terminate");
        }
        assert_eq!(seen.len(), 250);
        let unique: HashSet<&str> = seen.iter().map(|r| r.msg.as_str()).collect();
        assert_eq!(unique.len(), 250, "no record repeated");
        assert!(
            seen.windows(2).all(|w| w[0].ts >= w[1].ts),
            "newest first across pages"
        );
        ix.shutdown().await;
    }

    #[tokio::test]
    async fn duplicates_are_skipped_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let batch: Vec<LogRecord> = (1..=4)
            .map(|i| rec(i, "h", "a", &format!("m{i}"), "file-1", i as u64 * 100))
            .collect();
        let ix = Indexer::open(config(dir.path())).unwrap();
        assert_eq!(ix.ingest(batch.clone()).await.unwrap().accepted, 4);
        let again = ix.ingest(batch.clone()).await.unwrap();
        assert_eq!(
            again,
            IngestResponse {
                accepted: 0,
                duplicates: 4
            }
        );
        // Duplicates inside one batch count too.
        let mut twice = vec![rec(9, "h", "a", "new", "file-1", 900)];
        twice.push(twice[0].clone());
        assert_eq!(
            ix.ingest(twice).await.unwrap(),
            IngestResponse {
                accepted: 1,
                duplicates: 1
            }
        );
        assert_eq!(ix.search(all("")).await.unwrap().total, 5);
        ix.shutdown().await;
        ix.shutdown().await; // idempotent
        assert!(matches!(
            ix.ingest(batch.clone()).await,
            Err(Error::ShuttingDown)
        ));
        drop(ix);

        let ix = Indexer::open(config(dir.path())).unwrap();
        assert_eq!(ix.search(all("")).await.unwrap().total, 5, "data survived");
        let after = ix.ingest(batch).await.unwrap();
        assert_eq!(
            after,
            IngestResponse {
                accepted: 0,
                duplicates: 4
            },
            "the checkpoint survived"
        );
        // A record without source cannot be deduplicated and is always accepted.
        let anon = vec![rec(5, "h", "a", "anon", "", 0)];
        assert_eq!(ix.ingest(anon.clone()).await.unwrap().accepted, 1);
        assert_eq!(ix.ingest(anon).await.unwrap().accepted, 1);
        ix.shutdown().await;
    }

    #[tokio::test]
    async fn queries_select_the_right_records() {
        let dir = tempfile::tempdir().unwrap();
        let ix = Indexer::open(config(dir.path())).unwrap();
        let mut slow = rec(1, "node-2", "fib", "GET /fib/30 timed out", "s", 1);
        slow.latency_ms = Some(900.0);
        slow.status = Some(504);
        slow.level = Some(Level::Error);
        slow.fields
            .insert("user".into(), serde_json::json!("alice"));
        let mut fast = rec(2, "node-1", "fib", "GET /fib/3 ok", "s", 2);
        fast.latency_ms = Some(12.5);
        fast.status = Some(200);
        fast.fields.insert("user".into(), serde_json::json!("bob"));
        let web = rec(3, "node-2", "web", "out of time, timed retry", "s", 3);
        ix.ingest(vec![slow, fast, web]).await.unwrap();

        assert_eq!(
            msgs(&ix, "app:fib").await,
            ["GET /fib/3 ok", "GET /fib/30 timed out"]
        );
        assert_eq!(
            msgs(&ix, "host:node-2").await,
            ["GET /fib/30 timed out", "out of time, timed retry"]
        );
        assert_eq!(
            msgs(&ix, "app:fib host:node-2").await,
            ["GET /fib/30 timed out"]
        );
        assert_eq!(
            msgs(&ix, "latency_ms:>250").await,
            ["GET /fib/30 timed out"]
        );
        assert_eq!(
            msgs(&ix, "status:[500 TO 599]").await,
            ["GET /fib/30 timed out"]
        );
        assert_eq!(msgs(&ix, "level:error").await, ["GET /fib/30 timed out"]);
        assert_eq!(
            msgs(&ix, "fields.user:alice").await,
            ["GET /fib/30 timed out"]
        );
        assert_eq!(
            msgs(&ix, "timed").await,
            ["GET /fib/30 timed out", "out of time, timed retry"]
        );
        assert_eq!(msgs(&ix, "\"timed out\"").await, ["GET /fib/30 timed out"]);
        assert_eq!(
            msgs(&ix, "app:fib AND NOT ok").await,
            ["GET /fib/30 timed out"]
        );
        assert_eq!(msgs(&ix, "app:fib -ok").await, ["GET /fib/30 timed out"]);
        assert_eq!(msgs(&ix, "-app:fib").await, ["out of time, timed retry"]);
        assert_eq!(
            msgs(&ix, "app:web OR status:200").await,
            ["GET /fib/3 ok", "out of time, timed retry"]
        );

        for bad in ["nosuchfield:x", "latency_ms:>fast", "(unclosed"] {
            let err = ix.search(all(bad)).await.unwrap_err();
            assert!(matches!(err, Error::BadQuery { .. }), "{bad}: {err}");
            assert!(err.to_string().contains(bad), "{err}");
        }
        let err = ix
            .search(SearchRequest {
                cursor: Some("garbage".into()),
                ..all("")
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("garbage"), "{err}");
        ix.shutdown().await;
    }

    #[tokio::test]
    async fn start_and_end_bound_the_results_inclusively() {
        let dir = tempfile::tempdir().unwrap();
        let ix = Indexer::open(config(dir.path())).unwrap();
        let batch = (0..10)
            .map(|i| rec(i * 60, "h", "a", &format!("m{i}"), "s", i as u64 + 1))
            .collect();
        ix.ingest(batch).await.unwrap();
        let r = ix
            .search(SearchRequest {
                start: Some(base() + Duration::minutes(2)),
                end: Some(base() + Duration::minutes(5)),
                ..all("")
            })
            .await
            .unwrap();
        let got: Vec<&str> = r.hits.iter().map(|h| h.msg.as_str()).collect();
        assert_eq!(got, ["m5", "m4", "m3", "m2"]);
        assert_eq!(r.total, 4);
        ix.shutdown().await;
    }

    #[tokio::test]
    async fn histogram_buckets_sum_to_the_search_total() {
        let dir = tempfile::tempdir().unwrap();
        let ix = Indexer::open(config(dir.path())).unwrap();
        let batch = (0..300)
            .map(|i| {
                rec(
                    i * 7,
                    "h",
                    if i % 3 == 0 { "fib" } else { "web" },
                    "m",
                    "s",
                    i as u64 + 1,
                )
            })
            .collect();
        ix.ingest(batch).await.unwrap();
        let end = Some(base() + Duration::hours(1));
        for (q, start) in [
            ("", None),
            ("app:fib", None),
            ("app:web", Some(base() + Duration::minutes(10))),
        ] {
            let h = ix
                .histogram(HistogramRequest {
                    q: q.into(),
                    start,
                    end,
                })
                .await
                .unwrap();
            let total = ix
                .search(SearchRequest {
                    q: q.into(),
                    start,
                    end,
                    limit: 0,
                    ..SearchRequest::default()
                })
                .await
                .unwrap()
                .total;
            assert!(total > 0);
            assert_eq!(h.buckets.iter().map(|b| b.count).sum::<u64>(), total, "{q}");
            assert!((20..=62).contains(&h.buckets.len()), "{}", h.buckets.len());
            assert!(h
                .buckets
                .windows(2)
                .all(|w| (w[1].ts - w[0].ts).num_milliseconds() as u64 == h.interval_ms));
            if start.is_none() {
                assert!(h.buckets[0].ts <= base(), "starts at the oldest match");
            }
        }
        ix.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_ingests_are_group_committed_and_searchable_on_return() {
        let dir = tempfile::tempdir().unwrap();
        let ix = Indexer::open(config(dir.path())).unwrap();
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let ix = ix.clone();
                tokio::spawn(async move {
                    let source = format!("file-{i}");
                    let r = rec(i, "h", "a", &format!("word{i}"), &source, 1);
                    assert_eq!(ix.ingest(vec![r]).await.unwrap().accepted, 1);
                    // Visible as soon as ingest returns.
                    let found = ix.search(all(&format!("word{i}"))).await.unwrap();
                    assert_eq!(found.total, 1, "word{i}");
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let commits = ix
            .metrics()
            .lines()
            .find_map(|l| l.strip_prefix("sandtrail_indexer_commits_total "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap();
        assert!((1..=32).contains(&commits), "{commits}");
        assert_eq!(ix.search(all("")).await.unwrap().total, 32);
        ix.shutdown().await;
    }

    #[tokio::test]
    async fn ingest_beyond_the_inflight_budget_is_refused_until_room_frees() {
        let dir = tempfile::tempdir().unwrap();
        let ix = Indexer::open(IndexerConfig {
            max_inflight_bytes: 1 << 20,
            ..config(dir.path())
        })
        .unwrap();
        let held = ix.reserve(800 << 10).unwrap();
        let err = ix.reserve(300 << 10).unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(err.to_string().contains("1 MiB"), "{err}");
        // A request larger than the whole budget still runs alone.
        drop(held);
        let alone = ix.reserve(5 << 20).unwrap();
        assert!(ix.reserve(1).is_err());
        drop(alone);
        assert!(ix.reserve(1).is_ok());
        ix.shutdown().await;
    }

    #[tokio::test]
    async fn retention_deletes_records_older_than_it_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let ix = Indexer::open(config(dir.path())).unwrap();
        let mut fresh = rec(0, "h", "a", "fresh", "s", 2);
        fresh.ts = chrono::Utc::now() - Duration::hours(1);
        // base() is in 2025: far beyond a 7-day retention.
        ix.ingest(vec![rec(0, "h", "a", "old", "s", 1), fresh])
            .await
            .unwrap();
        ix.shutdown().await;
        drop(ix);

        let ix = Indexer::open(IndexerConfig {
            retention: Some(std::time::Duration::from_secs(7 * 86_400)),
            ..config(dir.path())
        })
        .unwrap();
        // The writer applies the retention before its first request, so once this
        // ingest is answered the old record is gone.
        let mut newer = rec(0, "h", "a", "newer", "s", 3);
        newer.ts = chrono::Utc::now();
        ix.ingest(vec![newer]).await.unwrap();
        assert_eq!(msgs(&ix, "").await, ["fresh", "newer"]);
        // The checkpoint survived the retention commit.
        let again = ix
            .ingest(vec![rec(0, "h", "a", "old", "s", 1)])
            .await
            .unwrap();
        assert_eq!(again.duplicates, 1);
        ix.shutdown().await;
    }

    #[tokio::test]
    async fn subscribers_see_accepted_records_but_not_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let ix = Indexer::open(config(dir.path())).unwrap();
        let mut rx = ix.subscribe();
        let batch = vec![rec(1, "h", "a", "one", "s", 1)];
        ix.ingest(batch.clone()).await.unwrap();
        ix.ingest(batch).await.unwrap();
        ix.ingest(vec![rec(2, "h", "a", "two", "s", 2)])
            .await
            .unwrap();
        assert_eq!(rx.recv().await.unwrap().msg, "one");
        assert_eq!(rx.recv().await.unwrap().msg, "two");
        assert!(rx.try_recv().is_err());
        assert!(ix
            .metrics()
            .contains("sandtrail_indexer_records_duplicate_total 1\n"));
        ix.shutdown().await;
    }
}
