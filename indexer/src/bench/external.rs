//! `sandtrail bench indexer`: the real indexer binary as a child process, fed a large
//! corpus streamed from disk, then searched over HTTP.
//!
//! [`super::run`] holds the corpus in memory twice (records and encoded batches) in the
//! process it measures, which is fine at 2 million records but hides the indexer's own
//! memory and does not fit 10 million. Here the indexer runs alone in its own process
//! (`sandtrail indexer`), so its peak RSS (`VmHWM` of the child) is the indexer's, and
//! the bench process only ever holds the few batches in flight. The trade-off: batches
//! are encoded to gzip NDJSON files once, before the clock starts (and kept next to the
//! corpus for the next run), so disk space is spent to keep the client's JSON and gzip
//! work out of the ingest figure, as a shipper would have done that work already.

use super::{dir_size, internal, percentile_ms, size_by_kind};
use crate::error::{Error, Result};
use protocol::{IngestResponse, LogRecord};
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Debug, Clone)]
pub struct ExternalOptions {
    /// The `sandtrail` executable whose `indexer` subcommand is measured.
    pub binary: PathBuf,
    /// The generator's NDJSON (with its `.txt` twin for the raw size).
    pub ndjson: PathBuf,
    pub records: usize,
    /// `--data-dir` of the indexer; the index is left there afterwards.
    pub data_dir: PathBuf,
    /// Records per HTTP batch.
    pub batch: usize,
    /// Batches in flight at once: one lane each, with its own source sending in
    /// order (see [`super::BenchOptions::concurrency`]).
    pub concurrency: usize,
    /// Timed repetitions of each search (after one untimed, reported as "first").
    pub search_runs: usize,
}

impl Default for ExternalOptions {
    fn default() -> Self {
        ExternalOptions {
            binary: PathBuf::from("target/release/sandtrail"),
            ndjson: PathBuf::from("/tmp/sandtrail-bench/corpus-10000000.ndjson"),
            records: 10_000_000,
            data_dir: PathBuf::from("/tmp/sandtrail-bench/indexer-data"),
            batch: 10_000,
            concurrency: 4,
            search_runs: 30,
        }
    }
}

/// What encoding the corpus found out, kept next to the batch files.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub records: usize,
    pub batch: usize,
    pub batches: usize,
    /// Batch `i` has the source of lane `i % lanes`.
    pub lanes: usize,
    pub raw_text_bytes: u64,
    /// RFC 3339 time of the first record.
    pub first_ts: String,
    /// The last trace id of the corpus (the lookup searches for it).
    pub last_trace: String,
}

/// One timed search.
#[derive(Debug, Clone, Default)]
pub struct SearchTiming {
    pub name: String,
    /// The untimed first run, against a freshly started indexer.
    pub first_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// What the search found (`total` of a search, the summed counts of a histogram,
    /// records in the latency groups, fields of the sidebar), so a fast empty answer
    /// is visible.
    pub found: u64,
}

/// The measured figures.
#[derive(Debug, Clone, Default)]
pub struct ExternalReport {
    pub manifest: Manifest,
    pub encode_secs: f64,
    pub ingest_secs: f64,
    pub accepted: u64,
    pub commits: u64,
    /// `VmHWM` of the indexer process right after the last ingest acknowledgement.
    pub ingest_peak_rss: u64,
    /// Largest `VmRSS` sampled every 100 ms while ingesting (a cross-check).
    pub ingest_sampled_rss: u64,
    /// Time from the last acknowledgement until the merges the ingest held back
    /// (see `crate::merge`) were done, and the peak RSS by then.
    pub merge_secs: f64,
    pub merged_peak_rss: u64,
    /// Time from SIGTERM to exit after the ingest (the writer finishing merges).
    pub shutdown_secs: f64,
    pub index_bytes: u64,
    pub index_by_kind: Vec<(String, u64)>,
    /// Restart of the indexer on the loaded data dir, until `/healthz` answers.
    pub reopen_secs: f64,
    pub searches: Vec<SearchTiming>,
    /// `VmHWM` of the restarted indexer after all the searches.
    pub search_peak_rss: u64,
}

const MIB: f64 = 1048576.0;

impl ExternalReport {
    pub fn ingest_rate(&self) -> f64 {
        self.manifest.records as f64 / self.ingest_secs
    }

    /// Markdown, ready for BENCHMARKS.md: measure, value, target.
    pub fn to_markdown(&self) -> String {
        let mut s = String::from("| measure | value | target (issue 4) |\n|---|---|---|\n");
        let mut row = |what: &str, value: String, target: &str| {
            s.push_str(&format!("| {what} | {value} | {target} |\n"))
        };
        let m = &self.manifest;
        row(
            "records",
            format!(
                "{} ({:.1} MiB of raw text), {} batches of {}",
                m.records,
                m.raw_text_bytes as f64 / MIB,
                m.batches,
                m.batch
            ),
            "",
        );
        row(
            "ingest (gzip NDJSON over HTTP, committed)",
            format!(
                "{:.0} records/s ({:.1} s, {} accepted, {} group commits)",
                self.ingest_rate(),
                self.ingest_secs,
                self.accepted,
                self.commits
            ),
            "",
        );
        row(
            "**peak RSS of the indexer process while ingesting** (VmHWM)",
            format!(
                "**{:.0} MiB** (sampled VmRSS max {:.0} MiB)",
                self.ingest_peak_rss as f64 / MIB,
                self.ingest_sampled_rss as f64 / MIB
            ),
            "< 1536 MiB",
        );
        row(
            "merges held back by the ingest, done after its last acknowledgement",
            format!(
                "{:.1} s (peak RSS by then {:.0} MiB)",
                self.merge_secs,
                self.merged_peak_rss as f64 / MIB
            ),
            "",
        );
        row(
            "shutdown after ingest (merges finishing)",
            format!("{:.1} s", self.shutdown_secs),
            "",
        );
        row(
            "index size / raw text",
            format!(
                "{:.2} ({:.1} MiB)",
                self.index_bytes as f64 / m.raw_text_bytes.max(1) as f64,
                self.index_bytes as f64 / MIB
            ),
            "≤ 0.5",
        );
        row(
            "index bytes by file kind",
            self.index_by_kind
                .iter()
                .map(|(k, b)| format!("{k} {:.1} MiB", *b as f64 / MIB))
                .collect::<Vec<_>>()
                .join(", "),
            "",
        );
        row(
            "restart on the loaded index until /healthz",
            format!("{:.2} s", self.reopen_secs),
            "",
        );
        for t in &self.searches {
            let target = match t.name.as_str() {
                n if n.starts_with("term query") => "p50 < 20 ms",
                n if n.starts_with("trace id") => "< 5 ms",
                n if n.starts_with("histogram") => "< 200 ms",
                n if n.starts_with("latency percentiles") => "< 300 ms",
                _ => "",
            };
            row(
                &t.name,
                format!(
                    "**p50 {:.1} ms**, p99 {:.1} ms (first {:.1} ms; found {})",
                    t.p50_ms, t.p99_ms, t.first_ms, t.found
                ),
                target,
            );
        }
        row(
            "peak RSS of the restarted indexer after the searches",
            format!("{:.0} MiB", self.search_peak_rss as f64 / MIB),
            "",
        );
        s
    }
}

/// `VmHWM` or `VmRSS` of a process, in bytes (0 when it is gone).
pub(super) fn proc_status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn batch_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("{i:06}.ndjson.gz"))
}

/// Encodes the first `records` lines of `ndjson` into gzip NDJSON batch files under
/// `dir` (two encoder threads, a few batches in memory), batch `i` with the source of
/// lane `i % lanes`, or reuses them when a finished run with the same parameters
/// left its manifest there.
pub fn encode_batches(
    ndjson: &Path,
    records: usize,
    batch: usize,
    lanes: usize,
    dir: &Path,
) -> Result<Manifest> {
    let manifest_path = dir.join("manifest.json");
    if let Ok(text) = std::fs::read_to_string(&manifest_path) {
        if let Ok(m) = serde_json::from_str::<Manifest>(&text) {
            if m.records == records && m.batch == batch && m.lanes == lanes {
                return Ok(m);
            }
        }
    }
    let lanes = lanes.max(1);
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let file = std::fs::File::open(ndjson).map_err(io_err(ndjson))?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Vec<String>)>(4);
    let rx = std::sync::Mutex::new(rx);
    let mut first_ts = String::new();
    let mut last_trace = String::new();
    let mut read = 0usize;
    let batches = std::thread::scope(|scope| -> Result<usize> {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let rx = &rx;
                scope.spawn(move || -> Result<Option<(String, String)>> {
                    let mut first_ts = None;
                    let mut last_trace: Option<(usize, String)> = None;
                    loop {
                        let next = rx
                            .lock()
                            .map_err(|e| internal("encode")(e.to_string()))?
                            .recv();
                        let Ok((i, lines)) = next else { break };
                        let recs: Vec<LogRecord> = lines
                            .iter()
                            .enumerate()
                            .map(|(j, l)| {
                                let mut r = super::corpus_record(l, i * batch + j)?;
                                r.source = super::lane_source(i % lanes);
                                Ok(r)
                            })
                            .collect::<Result<_>>()?;
                        if i == 0 {
                            first_ts = recs.first().map(|r| r.ts.to_rfc3339());
                        }
                        if let Some(t) = recs.iter().rev().find_map(|r| r.trace_id.clone()) {
                            if last_trace.as_ref().is_none_or(|(at, _)| *at < i) {
                                last_trace = Some((i, t));
                            }
                        }
                        let path = batch_path(dir, i);
                        std::fs::write(&path, super::gzip_ndjson(&recs)).map_err(io_err(&path))?;
                    }
                    // The batch index travels with the trace so the two workers'
                    // answers can be told apart: the later batch wins.
                    Ok(Some((
                        first_ts.unwrap_or_default(),
                        last_trace
                            .map(|(i, t)| format!("{i:06}{t}"))
                            .unwrap_or_default(),
                    )))
                })
            })
            .collect();
        let mut lines = std::io::BufReader::new(file).lines();
        let mut i = 0;
        while read < records {
            let chunk: Vec<String> = lines
                .by_ref()
                .take(batch.min(records - read))
                .collect::<std::io::Result<_>>()
                .map_err(io_err(ndjson))?;
            if chunk.is_empty() {
                break;
            }
            read += chunk.len();
            if tx.send((i, chunk)).is_err() {
                break;
            }
            i += 1;
        }
        drop(tx);
        for w in workers {
            let (ts, trace) = w
                .join()
                .map_err(|_| internal("encode")("encoder thread panicked".into()))??
                .unwrap_or_default();
            if !ts.is_empty() {
                first_ts = ts;
            }
            if trace > last_trace {
                last_trace = trace;
            }
        }
        Ok(i)
    })?;
    let txt = ndjson.with_extension("txt");
    let raw_text_bytes = match std::fs::File::open(&txt) {
        Ok(f) => std::io::BufReader::new(f)
            .lines()
            .take(read)
            .map_while(|l| l.ok())
            .map(|l| l.len() as u64 + 1)
            .sum(),
        Err(_) => 0,
    };
    let m = Manifest {
        records: read,
        batch,
        batches,
        lanes,
        raw_text_bytes,
        first_ts,
        last_trace: last_trace.get(6..).unwrap_or_default().to_string(),
    };
    let json = serde_json::to_string_pretty(&m).map_err(|e| internal("manifest")(e.to_string()))?;
    std::fs::write(&manifest_path, json).map_err(io_err(&manifest_path))?;
    Ok(m)
}

/// The indexer's `/metrics` text.
async fn fetch_metrics(http: &reqwest::Client, base: &str) -> Result<String> {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .map_err(|e| internal("metrics")(e.to_string()))?
        .text()
        .await
        .map_err(|e| internal("metrics")(e.to_string()))
}

/// The token the benchmarked indexer is started with.
const BENCH_TOKEN: &str = "bench-token";

/// The indexer child; killed if the bench fails half-way.
struct IndexerProcess {
    child: Child,
    url: String,
}

impl IndexerProcess {
    fn start(binary: &Path, data_dir: &Path) -> Result<IndexerProcess> {
        let mut child = Command::new(binary)
            .arg("indexer")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("SANDTRAIL_LOG", "warn")
            .env("SANDTRAIL_TOKEN", BENCH_TOKEN)
            .env_remove("SANDTRAIL_CONFIG")
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .map_err(io_err(binary))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(url) = l.strip_prefix("indexer: ") {
                        break url.trim().to_string();
                    }
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::Internal(format!(
                        "bench: {} indexer exited before printing its URL",
                        binary.display()
                    )));
                }
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(IndexerProcess { child, url })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits for the graceful shutdown (the writer's last commit and
    /// merges) to finish.
    fn stop(mut self) -> Result<f64> {
        let started = Instant::now();
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet, so
        // the pid cannot have been reused.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        if rc != 0 {
            return Err(internal("stop indexer")(
                std::io::Error::last_os_error().to_string(),
            ));
        }
        let status = self
            .child
            .wait()
            .map_err(|e| internal("stop indexer")(e.to_string()))?;
        if !status.success() {
            return Err(Error::Internal(format!(
                "bench: indexer exited with {status}"
            )));
        }
        Ok(started.elapsed().as_secs_f64())
    }
}

impl Drop for IndexerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn wait_healthy(http: &reqwest::Client, url: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok(r) = http.get(format!("{url}/healthz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Internal(format!(
                "bench: {url}/healthz did not answer within 600 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Posts one batch file, retrying while the indexer answers 429 (overload).
async fn post_batch(http: &reqwest::Client, url: &str, path: PathBuf) -> Result<IngestResponse> {
    let body = tokio::fs::read(&path).await.map_err(io_err(&path))?;
    loop {
        let resp = http
            .post(format!("{url}/api/v1/ingest"))
            .body(body.clone())
            .send()
            .await
            .map_err(|e| internal("ingest")(e.to_string()))?;
        let status = resp.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let text = resp
            .text()
            .await
            .map_err(|e| internal("ingest")(e.to_string()))?;
        if !status.is_success() {
            return Err(Error::Internal(format!(
                "bench: ingest of {}: {status}: {text}",
                path.display()
            )));
        }
        return serde_json::from_str(&text).map_err(|e| internal("ingest answer")(e.to_string()));
    }
}

/// How many matches an answer reports, by its shape.
fn found(body: &serde_json::Value) -> u64 {
    if let Some(t) = body.get("total").and_then(|t| t.as_u64()) {
        return t;
    }
    // Elasticsearch: the buckets of an aggregation, else the hits' total.
    let buckets: Vec<&serde_json::Value> = body
        .get("aggregations")
        .and_then(|a| a.as_object())
        .into_iter()
        .flat_map(|aggs| aggs.values())
        .filter_map(|a| a.get("buckets").and_then(|b| b.as_array()))
        .flatten()
        .collect();
    if !buckets.is_empty() {
        return buckets
            .iter()
            .filter_map(|b| b.get("doc_count").and_then(|c| c.as_u64()))
            .sum();
    }
    if let Some(t) = body.pointer("/hits/total/value").and_then(|t| t.as_u64()) {
        return t;
    }
    if let Some(b) = body.get("buckets").and_then(|b| b.as_array()) {
        return b
            .iter()
            .filter_map(|b| b.get("count").and_then(|c| c.as_u64()))
            .sum();
    }
    if let Some(g) = body.get("groups").and_then(|g| g.as_array()) {
        return g
            .iter()
            .filter_map(|g| g.get("count").and_then(|c| c.as_u64()))
            .sum();
    }
    body.get("fields")
        .and_then(|f| f.as_array())
        .map_or(0, |f| f.len() as u64)
}

/// Runs everything; progress goes to stderr. The data dir is emptied first and
/// left with the loaded index.
pub async fn run(opts: ExternalOptions) -> Result<ExternalReport> {
    let batch_dir = opts
        .ndjson
        .with_extension(format!("batches-{}", opts.batch));
    eprintln!("bench: encoding batches into {}", batch_dir.display());
    let started = Instant::now();
    let manifest = {
        let (nd, n, b, l, d) = (
            opts.ndjson.clone(),
            opts.records,
            opts.batch,
            opts.concurrency,
            batch_dir.clone(),
        );
        tokio::task::spawn_blocking(move || encode_batches(&nd, n, b, l, &d))
            .await
            .map_err(|e| internal("encode")(e.to_string()))??
    };
    let encode_secs = started.elapsed().as_secs_f64();
    eprintln!("bench: {manifest:?} in {encode_secs:.1} s");

    if opts.data_dir.exists() {
        std::fs::remove_dir_all(&opts.data_dir).map_err(io_err(&opts.data_dir))?;
    }
    std::fs::create_dir_all(&opts.data_dir).map_err(io_err(&opts.data_dir))?;
    // Every call, reads and metrics included, needs a token (issue 15).
    let mut auth = reqwest::header::HeaderMap::new();
    auth.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {BENCH_TOKEN}"))
            .map_err(|e| internal("token header")(e.to_string()))?,
    );
    let http = reqwest::Client::builder()
        .default_headers(auth)
        .build()
        .map_err(|e| internal("http client")(e.to_string()))?;
    let ix = IndexerProcess::start(&opts.binary, &opts.data_dir)?;
    wait_healthy(&http, &ix.url).await?;
    eprintln!("bench: indexer pid {} at {}; ingesting", ix.pid(), ix.url);

    let pid = ix.pid();
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut max = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                max = max.max(proc_status_kb(pid, "VmRSS:"));
                std::thread::sleep(Duration::from_millis(100));
            }
            max
        })
    };
    let started = Instant::now();
    let lanes = manifest.lanes.max(1);
    let tasks: Vec<_> = (0..lanes)
        .map(|lane| {
            let (http, url, dir) = (http.clone(), ix.url.clone(), batch_dir.clone());
            let batches = manifest.batches;
            tokio::spawn(async move {
                let mut accepted = 0;
                for i in (lane..batches).step_by(lanes) {
                    accepted += post_batch(&http, &url, batch_path(&dir, i)).await?.accepted;
                    if i % 100 == 99 {
                        eprintln!(
                            "bench: batch {} acknowledged, {:.0} s, VmRSS {:.0} MiB",
                            i + 1,
                            started.elapsed().as_secs_f64(),
                            proc_status_kb(pid, "VmRSS:") as f64 / MIB
                        );
                    }
                }
                Ok::<_, Error>(accepted)
            })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        accepted += t
            .await
            .map_err(|e| internal("ingest task")(e.to_string()))??;
    }
    let ingest_secs = started.elapsed().as_secs_f64();
    let ingest_peak_rss = proc_status_kb(pid, "VmHWM:");
    if accepted != manifest.records as u64 {
        return Err(Error::Internal(format!(
            "bench: the indexer accepted {accepted} of {} records",
            manifest.records
        )));
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let ingest_sampled_rss = sampler.join().unwrap_or(0);
    let metrics = fetch_metrics(&http, &ix.url).await?;
    let commits = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sandtrail_indexer_commits_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    eprintln!(
        "bench: ingested {accepted} in {ingest_secs:.1} s, VmHWM {:.0} MiB",
        ingest_peak_rss as f64 / MIB
    );
    // The size and the searches are of the merged index: wait for the merges the
    // burst held back, as a user would see them an idle second after it.
    let merging = Instant::now();
    loop {
        let metrics = fetch_metrics(&http, &ix.url).await?;
        if metrics
            .lines()
            .any(|l| l.trim() == "sandtrail_indexer_merges_pending 0")
        {
            break;
        }
        if merging.elapsed() > std::time::Duration::from_secs(3600) {
            return Err(Error::Internal(
                "bench: merges still pending an hour after the ingest".into(),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let merge_secs = merging.elapsed().as_secs_f64();
    let merged_peak_rss = proc_status_kb(pid, "VmHWM:");
    eprintln!("bench: merges done {merge_secs:.1} s after the ingest; stopping");
    let shutdown_secs = tokio::task::spawn_blocking(move || ix.stop())
        .await
        .map_err(|e| internal("stop")(e.to_string()))??;
    let index_dir = opts.data_dir.join("indexer").join("index");
    let index_bytes = dir_size(&index_dir);
    let index_by_kind = size_by_kind(&index_dir);

    eprintln!("bench: restarting on the loaded index");
    let started = Instant::now();
    let ix = IndexerProcess::start(&opts.binary, &opts.data_dir)?;
    wait_healthy(&http, &ix.url).await?;
    let reopen_secs = started.elapsed().as_secs_f64();

    let first: chrono::DateTime<chrono::Utc> = manifest
        .first_ts
        .parse()
        .map_err(|e| internal("first ts")(format!("{:?}: {e}", manifest.first_ts)))?;
    let day_start = first.to_rfc3339();
    let day_end = (first + chrono::Duration::days(1)).to_rfc3339();
    let trace_q = format!("trace_id:{}", manifest.last_trace);
    // What Kibana's Discover sends for a day: its time picker's range, a filter,
    // newest first; and its histogram above the hits.
    let es_day = serde_json::json!({ "range": { "@timestamp": {
        "gte": day_start, "lte": day_end, "format": "strict_date_optional_time"
    } } });
    let es_discover = serde_json::json!({
        "size": 100,
        "sort": [{ "@timestamp": { "order": "desc" } }],
        "query": { "bool": { "filter": [es_day, { "match_phrase": { "log.level": "error" } }] } },
    });
    let es_histogram = serde_json::json!({
        "size": 0,
        "query": { "bool": { "filter": [es_day] } },
        "aggs": { "2": { "date_histogram": { "field": "@timestamp", "fixed_interval": "30m" } } },
    });
    // (name, path, query string, JSON body: POSTed when there is one)
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        Option<serde_json::Value>,
    );
    let cases: Vec<Case> = vec![
        (
            "term query level:error, newest 100",
            "/api/v1/search",
            vec![
                ("q", "level:error"),
                ("limit", "100"),
                ("start", &day_start),
            ],
            None,
        ),
        (
            "trace id lookup",
            "/api/v1/search",
            vec![("q", &trace_q), ("limit", "100"), ("start", &day_start)],
            None,
        ),
        (
            "histogram of a day",
            "/api/v1/histogram",
            vec![("start", &day_start), ("end", &day_end)],
            None,
        ),
        (
            "latency percentiles by host, a day",
            "/api/v1/latency",
            vec![("by", "host"), ("start", &day_start), ("end", &day_end)],
            None,
        ),
        (
            "full text `connection`, newest 100, highlighted",
            "/api/v1/search",
            vec![
                ("q", "connection"),
                ("limit", "100"),
                ("highlight", "true"),
                ("start", &day_start),
            ],
            None,
        ),
        (
            "field sidebar (top values), a day",
            "/api/v1/fields",
            vec![("start", &day_start), ("end", &day_end)],
            None,
        ),
        (
            "Elasticsearch _search: a day, log.level error, newest 100",
            "/_search",
            vec![],
            Some(es_discover),
        ),
        (
            "Elasticsearch _search: date_histogram of a day, 30m",
            "/_search",
            vec![],
            Some(es_histogram),
        ),
    ];
    eprintln!("bench: searches");
    let mut searches = Vec::new();
    for (name, path, query, body) in cases {
        let mut times = Vec::new();
        let mut first_ms = 0.0;
        let mut hits = 0;
        for run in 0..=opts.search_runs.max(1) {
            let t = Instant::now();
            let url = format!("{}{path}", ix.url);
            let request = match &body {
                Some(b) => http.post(url).json(b),
                None => http.get(url).query(&query),
            };
            let resp = request
                .send()
                .await
                .map_err(|e| internal(name)(e.to_string()))?;
            let status = resp.status();
            let body = resp
                .bytes()
                .await
                .map_err(|e| internal(name)(e.to_string()))?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if !status.is_success() {
                return Err(Error::Internal(format!(
                    "bench: {name}: {status}: {}",
                    String::from_utf8_lossy(&body)
                )));
            }
            if run == 0 {
                first_ms = ms;
                let v: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|e| internal(name)(e.to_string()))?;
                hits = found(&v);
            } else {
                times.push(ms);
            }
        }
        searches.push(SearchTiming {
            name: name.to_string(),
            first_ms,
            p50_ms: percentile_ms(times.clone(), 50.0),
            p99_ms: percentile_ms(times, 99.0),
            found: hits,
        });
    }
    let search_peak_rss = proc_status_kb(ix.pid(), "VmHWM:");
    tokio::task::spawn_blocking(move || ix.stop())
        .await
        .map_err(|e| internal("stop")(e.to_string()))??;
    Ok(ExternalReport {
        manifest,
        encode_secs,
        ingest_secs,
        accepted,
        commits,
        ingest_peak_rss,
        ingest_sampled_rss,
        merge_secs,
        merged_peak_rss,
        shutdown_secs,
        index_bytes,
        index_by_kind,
        reopen_secs,
        searches,
        search_peak_rss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn corpus(dir: &Path, n: usize) -> PathBuf {
        let nd = dir.join("c.ndjson");
        let mut f = std::fs::File::create(&nd).unwrap();
        let mut t = std::fs::File::create(dir.join("c.txt")).unwrap();
        for i in 0..n {
            let trace = if i % 3 == 0 {
                format!(",\"trace_id\":\"t{i:04}\"")
            } else {
                String::new()
            };
            writeln!(
                f,
                "{{\"ts\":\"2026-11-22T00:00:{:02}.000Z\",\"host\":\"h\",\"app\":\"a\",\"task\":\"a.1\",\"stream\":\"stdout\",\"level\":\"INFO\",\"msg\":\"line {i}\"{trace}}}",
                i % 60
            )
            .unwrap();
            writeln!(t, "line {i}").unwrap();
        }
        nd
    }

    fn decode(path: &Path) -> Vec<LogRecord> {
        let gz = std::fs::read(path).unwrap();
        let plain = crate::inflate::gunzip_capped(&gz, 1 << 20).unwrap();
        protocol::decode_ndjson(&plain).unwrap()
    }

    /// Batches hold every record once, in order, with offsets 1..=n, whichever of
    /// the two encoder threads wrote them; the manifest names the last trace id.
    #[test]
    fn batches_cover_the_corpus_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let nd = corpus(dir.path(), 95);
        let out = dir.path().join("batches");
        let m = encode_batches(&nd, 95, 10, 4, &out).unwrap();
        assert_eq!((m.records, m.batches, m.lanes), (95, 10, 4));
        assert_eq!(m.last_trace, "t0093");
        assert_eq!(m.first_ts, "2026-11-22T00:00:00+00:00");
        assert_eq!(
            m.raw_text_bytes,
            (0..95)
                .map(|i| format!("line {i}\n").len() as u64)
                .sum::<u64>()
        );
        let recs: Vec<(usize, LogRecord)> = (0..m.batches)
            .flat_map(|i| {
                decode(&batch_path(&out, i))
                    .into_iter()
                    .map(move |r| (i, r))
            })
            .collect();
        let offsets: Vec<u64> = recs.iter().map(|(_, r)| r.offset).collect();
        assert_eq!(offsets, (1..=95).collect::<Vec<u64>>());
        // Regression: every batch had the one source "bench/corpus" while four were in
        // flight, so a later batch's commit turned an earlier one's records into
        // duplicates (5.65M of 10M indexed). Each lane is its own source now, and a
        // lane's offsets increase batch after batch.
        for (i, r) in &recs {
            assert_eq!(r.source, format!("bench/corpus-{}", i % 4));
        }
        for lane in 0..4 {
            let o: Vec<u64> = recs
                .iter()
                .filter(|(i, _)| i % 4 == lane)
                .map(|(_, r)| r.offset)
                .collect();
            assert!(o.windows(2).all(|w| w[0] < w[1]), "{o:?}");
        }
        // A second run with the same parameters reuses the files.
        assert_eq!(encode_batches(&nd, 95, 10, 4, &out).unwrap(), m);
        // Fewer records than asked for: the manifest says how many there were.
        let m = encode_batches(&nd, 500, 40, 4, &dir.path().join("b2")).unwrap();
        assert_eq!((m.records, m.batches), (95, 3));
    }

    #[test]
    fn found_reads_each_answer_shape() {
        assert_eq!(found(&serde_json::json!({"total": 7, "hits": []})), 7);
        assert_eq!(
            found(&serde_json::json!({"hits": {"total": {"value": 9}, "hits": []}})),
            9
        );
        assert_eq!(
            found(&serde_json::json!({
                "hits": {"total": {"value": 9}},
                "aggregations": {"2": {"buckets": [{"doc_count": 4}, {"doc_count": 3}]}}
            })),
            7
        );
        assert_eq!(
            found(&serde_json::json!({
                "hits": {"total": {"value": 9}},
                "aggregations": {"avg": {"value": 2.5}}
            })),
            9
        );
        assert_eq!(
            found(&serde_json::json!({"buckets": [{"count": 2}, {"count": 3}]})),
            5
        );
        assert_eq!(
            found(&serde_json::json!({"groups": [{"count": 4}, {"count": 1}]})),
            5
        );
        assert_eq!(found(&serde_json::json!({"fields": [{}, {}]})), 2);
    }
}
