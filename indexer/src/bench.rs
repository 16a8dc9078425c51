//! `sandtrail bench ingest`: the indexer's numbers, measured side by side in one run.
//!
//! On the corpus of `../shared/tools/gen_corpus.py` (or a given NDJSON file) it
//! measures (1) a plain Tantivy `IndexWriter` loop over the same schema, settings and
//! thread count as ours, and (2) our ingest: gzip NDJSON batches over HTTP to a real
//! indexer on 127.0.0.1:0, each acknowledged only once committed and searchable;
//! then index size against the raw text, freshness at a fixed rate, and search
//! latencies over HTTP. The trade-off: client-side work (JSON encoding and gzip of
//! the batches) is done before the clock starts, so the ratio isolates what the
//! indexer costs over raw Tantivy rather than what a shipper costs.

use crate::error::{Error, Result};
use crate::schema::Fields;
use crate::{router, Indexer, IndexerConfig};
use flate2::write::GzEncoder;
use flate2::Compression;
use protocol::LogRecord;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub mod external;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub records: usize,
    /// Existing corpus (`.ndjson`, with a `.txt` next to it for the raw size);
    /// generated with `generator` into `work_dir` when `None`.
    pub ndjson: Option<PathBuf>,
    pub generator: PathBuf,
    pub loghub: PathBuf,
    /// Indexes (and a generated corpus) go here.
    pub work_dir: PathBuf,
    /// Records per HTTP batch.
    pub batch: usize,
    /// Batches in flight at once, one per source: the offsets of one source must
    /// arrive in order, or the later batch's commit makes the earlier one's records
    /// duplicates (exactly-once admits only offsets above the committed one).
    pub concurrency: usize,
    pub writer_memory_bytes: usize,
    /// Records per second of the freshness run, and its length.
    pub fresh_rate: usize,
    pub fresh_seconds: u64,
    /// Repetitions of each search.
    pub search_runs: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            records: 200_000,
            ndjson: None,
            generator: PathBuf::from("../shared/tools/gen_corpus.py"),
            loghub: PathBuf::from("../shared/corpus/loghub"),
            work_dir: std::env::temp_dir().join("sandtrail-bench"),
            batch: 10_000,
            concurrency: 4,
            writer_memory_bytes: IndexerConfig::default().writer_memory_bytes,
            fresh_rate: 10_000,
            fresh_seconds: 10,
            search_runs: 30,
        }
    }
}

/// The measured figures.
#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    pub records: usize,
    pub raw_text_bytes: u64,
    pub tantivy_secs: f64,
    pub ingest_secs: f64,
    /// CPU seconds (user + system, the whole process) of each side: steadier than
    /// the wall clock on a shared machine, and it shows what the wall clock hides
    /// when a side leaves a core idle.
    pub tantivy_cpu_secs: f64,
    pub ingest_cpu_secs: f64,
    /// Our CPU seconds until the merges the ingest started are done too: the whole
    /// cost of the records, which a sustained load must keep up with.
    pub settled_cpu_secs: f64,
    pub index_bytes: u64,
    /// The raw Tantivy loop's index, same schema.
    pub raw_index_bytes: u64,
    /// Index bytes per file kind (store, term, idx, pos, fast, ...).
    pub index_by_kind: Vec<(String, u64)>,
    pub commits: u64,
    pub fresh_p50_ms: f64,
    pub fresh_p99_ms: f64,
    pub fresh_sent: usize,
    /// Segments searched before the freshness run and at its last batch: whether
    /// merges keep up under a steady load that never leaves the writer idle.
    pub fresh_segments: (u64, u64),
    /// (name, p50 ms, p99 ms)
    pub searches: Vec<(String, f64, f64)>,
    pub peak_rss_bytes: u64,
}

impl BenchReport {
    pub fn tantivy_rate(&self) -> f64 {
        self.records as f64 / self.tantivy_secs
    }
    pub fn ingest_rate(&self) -> f64 {
        self.records as f64 / self.ingest_secs
    }

    /// Markdown, ready for BENCHMARKS.md.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let mut row = |what: &str, value: String| s.push_str(&format!("| {what} | {value} |\n"));
        row("records", self.records.to_string());
        row(
            "raw Tantivy IndexWriter loop",
            format!(
                "{:.0} records/s ({:.1} s, {:.1} CPU s)",
                self.tantivy_rate(),
                self.tantivy_secs,
                self.tantivy_cpu_secs
            ),
        );
        row(
            "our ingest (gzip NDJSON over HTTP, committed)",
            format!(
                "{:.0} records/s ({:.1} s, {:.1} CPU s, {} group commits)",
                self.ingest_rate(),
                self.ingest_secs,
                self.ingest_cpu_secs,
                self.commits
            ),
        );
        row(
            "ingest / raw Tantivy",
            format!("{:.2}", self.ingest_rate() / self.tantivy_rate()),
        );
        row(
            "CPU per record, raw Tantivy / ours",
            format!(
                "{:.2}",
                self.tantivy_cpu_secs / self.ingest_cpu_secs.max(f64::MIN_POSITIVE)
            ),
        );
        row(
            "our CPU until the ingest's merges are done",
            format!("{:.1} CPU s", self.settled_cpu_secs),
        );
        row(
            "index size / raw text",
            format!(
                "{:.2} ({:.1} MiB / {:.1} MiB)",
                self.index_bytes as f64 / self.raw_text_bytes.max(1) as f64,
                self.index_bytes as f64 / 1048576.0,
                self.raw_text_bytes as f64 / 1048576.0
            ),
        );
        row(
            "raw Tantivy index size / raw text (same schema)",
            format!(
                "{:.2}",
                self.raw_index_bytes as f64 / self.raw_text_bytes.max(1) as f64
            ),
        );
        row(
            "index bytes by file kind",
            self.index_by_kind
                .iter()
                .map(|(k, b)| format!("{k} {:.1} MiB", *b as f64 / 1048576.0))
                .collect::<Vec<_>>()
                .join(", "),
        );
        row(
            "freshness (arrival to searchable)",
            format!(
                "p50 {:.0} ms, p99 {:.0} ms ({} records in 100 ms batches)",
                self.fresh_p50_ms, self.fresh_p99_ms, self.fresh_sent
            ),
        );
        row(
            "segments searched before the freshness run / at its last batch",
            format!("{} / {}", self.fresh_segments.0, self.fresh_segments.1),
        );
        for (name, p50, p99) in &self.searches {
            row(name, format!("p50 {p50:.1} ms, p99 {p99:.1} ms"));
        }
        row(
            "peak RSS of the bench process (holds the corpus twice)",
            format!("{:.0} MiB", self.peak_rss_bytes as f64 / 1048576.0),
        );
        s
    }
}

pub(crate) fn internal(what: &str) -> impl Fn(String) -> Error + '_ {
    move |e| Error::Internal(format!("bench: {what}: {e}"))
}

/// Reads the generator's NDJSON (upper-case levels, no source) into records with a
/// source and increasing offsets, as a shipper would send them.
pub fn load_corpus(path: &Path, limit: usize) -> Result<Vec<LogRecord>> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        if out.len() >= limit {
            break;
        }
        let line = line.map_err(|e| internal("read corpus")(e.to_string()))?;
        out.push(corpus_record(&line, i)?);
    }
    Ok(out)
}

/// Line `i` (0-based) of the generator's NDJSON as a shipper would send it: lower-case
/// level, a source, offset `i + 1`.
pub fn corpus_record(line: &str, i: usize) -> Result<LogRecord> {
    let mut v: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| internal("corpus line")(format!("{}: {e}", i + 1)))?;
    if let Some(l) = v
        .get("level")
        .and_then(|l| l.as_str())
        .map(str::to_lowercase)
    {
        v["level"] = serde_json::Value::String(l);
    }
    v["source"] = serde_json::json!("bench/corpus");
    v["offset"] = serde_json::json!(i as u64 + 1);
    serde_json::from_value(v).map_err(|e| internal("corpus record")(format!("{}: {e}", i + 1)))
}

/// Bytes of the raw log text of the records used: the first lines of the
/// generator's `.txt` twin, or the messages when there is none.
fn raw_text_bytes(txt: &Path, records: &[LogRecord]) -> u64 {
    match std::fs::File::open(txt) {
        Ok(f) => std::io::BufReader::new(f)
            .lines()
            .take(records.len())
            .map_while(|l| l.ok())
            .map(|l| l.len() as u64 + 1)
            .sum(),
        Err(_) => records.iter().map(|r| r.msg.len() as u64 + 1).sum(),
    }
}

/// Bytes of the files of the live segments (those `meta.json` lists) plus
/// `meta.json`: files of merged-away segments that garbage collection has not
/// removed yet are not part of the index.
pub(crate) fn dir_size(path: &Path) -> u64 {
    size_by_kind(path).iter().map(|(_, b)| b).sum()
}

/// Bytes per file extension of the live files under `path`: one index (flat), or a
/// directory of day partitions (each one index).
pub(crate) fn size_by_kind(path: &Path) -> Vec<(String, u64)> {
    let mut by: std::collections::BTreeMap<String, u64> = Default::default();
    if path.join("meta.json").exists() {
        add_index_sizes(path, &mut by);
    } else if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            if e.path().join("meta.json").exists() {
                add_index_sizes(&e.path(), &mut by);
            }
        }
    }
    let mut v: Vec<(String, u64)> = by.into_iter().collect();
    v.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
    v
}

fn add_index_sizes(path: &Path, by: &mut std::collections::BTreeMap<String, u64>) {
    // meta.json spells segment ids with dashes, file names without.
    let meta = std::fs::read_to_string(path.join("meta.json"))
        .unwrap_or_default()
        .replace('-', "");
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let stem = name.split('.').next().unwrap_or("");
            let live = name == "meta.json" || (stem.len() == 32 && meta.contains(stem));
            if !live {
                continue;
            }
            let kind = name.rsplit('.').next().unwrap_or("").to_string();
            *by.entry(kind).or_default() += e.metadata().map_or(0, |m| m.len());
        }
    }
}

/// User + system CPU seconds of this process so far.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn peak_rss() -> u64 {
    external::proc_status_kb(std::process::id(), "VmHWM:")
}

/// The source of the records of one ingest lane.
pub(crate) fn lane_source(lane: usize) -> String {
    format!("bench/corpus-{lane}")
}

pub(crate) fn percentile_ms(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    crate::analytics::percentile_of_sorted(&v, p)
}

/// Opens our indexer on `data_dir` and serves its API on 127.0.0.1:0, as the bench
/// does before ingest and again on the reloaded index: (indexer, base URL, server).
async fn serve_on_loopback(
    data_dir: &std::path::Path,
    writer_memory_bytes: usize,
) -> Result<(
    Indexer,
    String,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let ix = Indexer::open(IndexerConfig {
        data_dir: data_dir.to_path_buf(),
        token: None,
        max_body_bytes: 256 << 20,
        writer_memory_bytes,
        max_inflight_bytes: 1 << 30,
        retention: None,
        search_timeout: crate::DEFAULT_SEARCH_TIMEOUT,
        // A benchmark measures the index, not the load shedding in front of it.
        max_concurrent_ingest: 1 << 16,
        max_concurrent_searches: 1 << 16,
        ..IndexerConfig::default()
    })?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| internal("bind")(e.to_string()))?;
    let base = format!(
        "http://{}",
        listener
            .local_addr()
            .map_err(|e| internal("addr")(e.to_string()))?
    );
    let app = router(ix.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((ix, base, server))
}

pub(crate) fn gzip_ndjson(records: &[LogRecord]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    // Writing into a Vec cannot fail.
    e.write_all(&protocol::encode_ndjson(records))
        .expect("gzip");
    e.finish().expect("gzip")
}

/// The same writer set-up as [`crate::writer::WriterThread`], in a plain loop.
/// Returns wall and CPU seconds from the first document to the commit.
pub fn raw_tantivy(records: &[LogRecord], dir: &Path, memory: usize) -> Result<(f64, f64)> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let fields = Fields::new();
    let index = fields.index_builder().create_in_dir(dir)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (memory / (32 << 20)).clamp(1, cores.min(4));
    let (started, cpu) = (Instant::now(), cpu_secs());
    let mut writer: tantivy::IndexWriter = index.writer_with_num_threads(threads, memory)?;
    for (i, rec) in records.iter().enumerate() {
        writer.add_document(fields.to_document(rec, i as u64))?;
    }
    writer.commit()?;
    let secs = (started.elapsed().as_secs_f64(), cpu_secs() - cpu);
    writer.wait_merging_threads()?;
    Ok(secs)
}

/// Runs everything; progress goes to stderr.
pub async fn run(opts: BenchOptions) -> Result<BenchReport> {
    let work = &opts.work_dir;
    std::fs::create_dir_all(work).map_err(|source| Error::Io {
        path: work.clone(),
        source,
    })?;
    let ndjson = match &opts.ndjson {
        Some(p) => p.clone(),
        None => {
            let prefix = work.join(format!("corpus-{}", opts.records));
            let nd = prefix.with_extension("ndjson");
            if !nd.exists() {
                eprintln!(
                    "bench: generating {} records into {}",
                    opts.records,
                    nd.display()
                );
                let mut cmd = std::process::Command::new("python3");
                cmd.arg(&opts.generator)
                    .arg(&opts.loghub)
                    .arg(opts.records.to_string())
                    .arg(&prefix);
                let status = tokio::task::spawn_blocking(move || cmd.status())
                    .await
                    .map_err(|e| internal("run gen_corpus.py")(e.to_string()))?
                    .map_err(|e| internal("run gen_corpus.py")(e.to_string()))?;
                if !status.success() {
                    return Err(Error::Internal(format!(
                        "bench: gen_corpus.py failed: {status}"
                    )));
                }
            }
            nd
        }
    };
    let records = {
        let p = ndjson.clone();
        let n = opts.records;
        tokio::task::spawn_blocking(move || load_corpus(&p, n))
            .await
            .map_err(|e| internal("load")(e.to_string()))??
    };
    let n = records.len();
    let raw_text_bytes = raw_text_bytes(&ndjson.with_extension("txt"), &records);
    eprintln!("bench: {n} records loaded");

    let run_id = format!("{}-{}", std::process::id(), chrono::Utc::now().timestamp());
    let raw_dir = work.join(format!("raw-{run_id}"));
    let ours_dir = work.join(format!("ours-{run_id}"));

    // Pre-encode the batches (client work) before any clock starts: batch i goes
    // to lane i % concurrency, and each lane is its own source sending in order.
    let lanes = opts.concurrency.max(1);
    let batches: Vec<Vec<Vec<u8>>> = {
        let records = records.clone();
        let size = opts.batch.max(1);
        tokio::task::spawn_blocking(move || {
            let mut by_lane = vec![Vec::new(); lanes];
            for (i, chunk) in records.chunks(size).enumerate() {
                let mut chunk = chunk.to_vec();
                for r in &mut chunk {
                    r.source = lane_source(i % lanes);
                }
                by_lane[i % lanes].push(gzip_ndjson(&chunk));
            }
            by_lane
        })
        .await
        .map_err(|e| internal("encode")(e.to_string()))?
    };

    eprintln!("bench: raw Tantivy loop");
    let (tantivy_secs, tantivy_cpu_secs) = {
        let (r, d, m) = (records.clone(), raw_dir.clone(), opts.writer_memory_bytes);
        tokio::task::spawn_blocking(move || raw_tantivy(&r, &d, m))
            .await
            .map_err(|e| internal("raw")(e.to_string()))??
    };
    let raw_index_bytes = dir_size(&raw_dir);
    let _ = std::fs::remove_dir_all(&raw_dir);

    eprintln!("bench: our ingest over HTTP");
    let (ix, base, server) = serve_on_loopback(&ours_dir, opts.writer_memory_bytes).await?;
    let http = reqwest::Client::new();
    let url = format!("{base}/api/v1/ingest");
    let (started, cpu) = (Instant::now(), cpu_secs());
    let tasks: Vec<_> = batches
        .into_iter()
        .map(|lane| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                let mut accepted = 0;
                for body in lane {
                    let resp: protocol::IngestResponse = http
                        .post(&url)
                        .body(body)
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await?;
                    accepted += resp.accepted;
                }
                Ok::<_, reqwest::Error>(accepted)
            })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        accepted += t
            .await
            .map_err(|e| internal("ingest task")(e.to_string()))?
            .map_err(|e| internal("ingest")(e.to_string()))?;
    }
    if accepted != n as u64 {
        return Err(Error::Internal(format!(
            "bench: the indexer accepted {accepted} of {n} records"
        )));
    }
    let ingest_secs = started.elapsed().as_secs_f64();
    let ingest_cpu_secs = cpu_secs() - cpu;
    let commits = ix
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix("sandtrail_indexer_commits_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);

    // Size once merges are done (shutdown waits for them), then reopen: the
    // searches and the freshness run go to the reopened index.
    // Merges held back during the burst start now rather than after the writer's
    // idle delay; shutdown waits for them.
    ix.merge_now().await?;
    ix.shutdown().await;
    let settled_cpu_secs = cpu_secs() - cpu;
    server.abort();
    let index_bytes = dir_size(&ours_dir.join("index"));
    let index_by_kind = size_by_kind(&ours_dir.join("index"));
    let (ix, base, server) = serve_on_loopback(&ours_dir, opts.writer_memory_bytes).await?;

    // Searches over the loaded index, through HTTP like the UI.
    eprintln!("bench: searches");
    let first = records
        .first()
        .map(|r| r.ts)
        .unwrap_or_else(chrono::Utc::now);
    let day_start = first.to_rfc3339();
    let day_end = (first + chrono::Duration::days(1)).to_rfc3339();
    let trace = records
        .iter()
        .rev()
        .find_map(|r| r.trace_id.clone())
        .unwrap_or_default();
    let trace_q = format!("trace_id:{trace}");
    // Full text on the ids of `msg` (see `crate::msg`): a long number of the newest
    // record that has one (a term of `msg_ids`), an IPv4 address (a phrase of four
    // ids, checked against the stored messages), and a phrase whose tokens are all
    // common (its candidates are many: the worst case of that check).
    let newest_token = |f: &dyn Fn(&str) -> bool| {
        records.iter().rev().find_map(|r| {
            r.msg
                .split(|c: char| c.is_whitespace() || "[]()/,:=;\"'".contains(c))
                .find(|t| f(t))
                .map(str::to_string)
        })
    };
    let id_q = newest_token(&|t| t.len() >= 6 && t.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_default();
    let ip_q = newest_token(&|t| {
        t.split('.').count() == 4
            && t.split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    })
    .unwrap_or_default();
    let common_q = "\"error state 6\"".to_string();
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (
            "search: term query level:error, newest 100",
            "/api/v1/search",
            vec![
                ("q", "level:error"),
                ("limit", "100"),
                ("start", &day_start),
            ],
        ),
        (
            "search: trace id lookup",
            "/api/v1/search",
            vec![("q", &trace_q), ("limit", "100"), ("start", &day_start)],
        ),
        (
            "full text: a number in msg, newest 100",
            "/api/v1/search",
            vec![("q", &id_q), ("limit", "100"), ("start", &day_start)],
        ),
        (
            "full text: an IPv4 address in msg, newest 100",
            "/api/v1/search",
            vec![("q", &ip_q), ("limit", "100"), ("start", &day_start)],
        ),
        (
            "full text: phrase \"error state 6\", newest 100",
            "/api/v1/search",
            vec![("q", &common_q), ("limit", "100"), ("start", &day_start)],
        ),
        (
            "histogram of a day",
            "/api/v1/histogram",
            vec![("start", &day_start), ("end", &day_end)],
        ),
        (
            "latency percentiles by host (a day)",
            "/api/v1/latency",
            vec![("by", "host"), ("start", &day_start), ("end", &day_end)],
        ),
    ];
    let mut searches = Vec::new();
    for (name, path, query) in cases {
        let mut times = Vec::new();
        for _ in 0..opts.search_runs.max(1) {
            let t = Instant::now();
            let resp = http
                .get(format!("{base}{path}"))
                .query(&query)
                .send()
                .await
                .map_err(|e| internal(name)(e.to_string()))?;
            let status = resp.status();
            let body = resp
                .bytes()
                .await
                .map_err(|e| internal(name)(e.to_string()))?;
            if !status.is_success() {
                return Err(Error::Internal(format!(
                    "bench: {name}: {status}: {}",
                    String::from_utf8_lossy(&body)
                )));
            }
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            if times.len() == 1 {
                let total = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("total").cloned());
                eprintln!("bench: {name} {query:?}: total {total:?}");
            }
        }
        searches.push((
            name.to_string(),
            percentile_ms(times.clone(), 50.0),
            percentile_ms(times, 99.0),
        ));
    }

    // Freshness: a fixed rate in 100 ms batches; each batch is timed from its send
    // until it is searchable (the ack implies it; a search for its unique token
    // checks it).
    eprintln!("bench: freshness at {} records/s", opts.fresh_rate);
    let segments_before_fresh = ix.searcher_segments();
    let per_tick = (opts.fresh_rate / 10).max(1);
    let ticks = opts.fresh_seconds * 10;
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut fresh_tasks = Vec::new();
    let template = records.first().cloned();
    for tick in 0..ticks {
        interval.tick().await;
        let Some(template) = template.clone() else {
            break;
        };
        let token = format!("freshtoken{tick}");
        let batch: Vec<LogRecord> = (0..per_tick)
            .map(|j| {
                let mut r = template.clone();
                r.ts = chrono::Utc::now();
                r.source = "bench/fresh".into();
                r.offset = tick * per_tick as u64 + j as u64 + 1;
                r.msg = format!("{token} {}", r.msg);
                r
            })
            .collect();
        let (http, base) = (http.clone(), base.clone());
        fresh_tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let body = gzip_ndjson(&batch);
            http.post(format!("{base}/api/v1/ingest"))
                .body(body)
                .send()
                .await?
                .error_for_status()?;
            let found: protocol::SearchResponse = http
                .get(format!("{base}/api/v1/search"))
                .query(&[("q", token.as_str()), ("limit", "0")])
                .send()
                .await?
                .json()
                .await?;
            Ok::<_, reqwest::Error>((t.elapsed().as_secs_f64() * 1000.0, found.total))
        }));
    }
    let mut fresh = Vec::new();
    for t in fresh_tasks {
        let (ms, total) = t
            .await
            .map_err(|e| internal("fresh task")(e.to_string()))?
            .map_err(|e| internal("fresh")(e.to_string()))?;
        if total != per_tick as u64 {
            return Err(Error::Internal(format!(
                "bench: an acknowledged batch was not searchable ({total} of {per_tick})"
            )));
        }
        fresh.push(ms);
    }
    let fresh_sent = fresh.len() * per_tick;
    let segments_after_fresh = ix.searcher_segments();

    ix.shutdown().await;
    server.abort();
    let _ = std::fs::remove_dir_all(&ours_dir);
    Ok(BenchReport {
        records: n,
        raw_text_bytes,
        tantivy_secs,
        ingest_secs,
        tantivy_cpu_secs,
        ingest_cpu_secs,
        settled_cpu_secs,
        index_bytes,
        raw_index_bytes,
        index_by_kind,
        commits,
        fresh_p50_ms: percentile_ms(fresh.clone(), 50.0),
        fresh_p99_ms: percentile_ms(fresh, 99.0),
        fresh_sent,
        fresh_segments: (segments_before_fresh, segments_after_fresh),
        searches,
        peak_rss_bytes: peak_rss(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: with day partitions the size of `data_dir/index` read 0 bytes
    /// (it only looked at files directly under it).
    #[tokio::test]
    async fn index_size_counts_every_day_partition() {
        let dir = tempfile::tempdir().unwrap();
        let ix = Indexer::open(IndexerConfig {
            data_dir: dir.path().to_path_buf(),
            writer_memory_bytes: 32 << 20,
            ..IndexerConfig::default()
        })
        .unwrap();
        let t0: chrono::DateTime<chrono::Utc> = "2026-11-22T10:00:00Z".parse().unwrap();
        let meta = protocol::TaskMeta {
            host: "h".into(),
            app: "a".into(),
            task: "a.1".into(),
            instance: 0,
            ports: vec![],
        };
        let recs = (0..2)
            .map(|d| {
                protocol::LogRecord::new(
                    t0 + chrono::Duration::days(d),
                    &meta,
                    protocol::Stream::Stdout,
                    "hello",
                )
            })
            .collect();
        ix.ingest(recs).await.unwrap();
        ix.shutdown().await;
        let root = dir.path().join("index");
        let parts: u64 = ["2026-11-22", "2026-11-23"]
            .iter()
            .map(|d| dir_size(&root.join(d)))
            .sum();
        assert!(parts > 0);
        assert_eq!(dir_size(&root), parts);
    }

    #[test]
    fn corpus_lines_become_records_with_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.ndjson");
        std::fs::write(
            &p,
            "{\"ts\":\"2026-11-22T00:00:00.000Z\",\"host\":\"node-1\",\"app\":\"hdfs\",\"task\":\"hdfs.1\",\"stream\":\"stdout\",\"level\":\"WARN\",\"msg\":\"a\"}\n\
             {\"ts\":\"2026-11-22T00:00:00.003Z\",\"host\":\"node-2\",\"app\":\"hdfs\",\"task\":\"hdfs.1\",\"stream\":\"stderr\",\"level\":\"ERROR\",\"msg\":\"b\",\"trace_id\":\"t\",\"latency_ms\":1.5}\n",
        )
        .unwrap();
        let r = load_corpus(&p, 10).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].level, Some(protocol::Level::Error));
        assert_eq!((r[1].source.as_str(), r[1].offset), ("bench/corpus", 2));
        assert_eq!(load_corpus(&p, 1).unwrap().len(), 1);
    }
}
