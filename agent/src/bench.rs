//! `sandtrail bench ship`: shipper throughput, CPU per GB, peak RSS and idle cost.
//!
//! The shipper runs in this process on a current-thread runtime, the process pinned
//! to one core (`sched_setaffinity` on the calling thread before the runtime and its
//! blocking pool are created, so every thread the shipper uses inherits the pin). The
//! indexer is replaced by a sink in a *child process* pinned to another core: it
//! decompresses each batch, counts its records and answers a valid
//! [`protocol::IngestResponse`], so the shipper pays the real HTTP and compression cost and
//! nothing of the sink's. CPU time is `getrusage(RUSAGE_SELF)` of this process, peak
//! RSS its `VmHWM`; the harness only polls the shipper's counters every 20 ms.
//!
//! Phases: (1) throughput: `files` sandboxes whose `stdout` holds copies of the
//! corpus are written before the clock starts; the clock runs from `Shipper::run`
//! until every byte is acknowledged (lag 0 on every file), so the multiline flush and
//! batch wait at the end are included. (2) idle: a fresh shipper over `idle_files`
//! sandboxes with one line each; once those are shipped, its CPU time is measured
//! over `idle_secs` of nobody writing. The trade-off: one run, one machine, and the
//! shared build machines are noisy, so figures vary between runs.

// Built for the binary's `sandtrail bench ship` (the `bench` feature) and for this
// crate's tests, not into the library other crates use.
#![cfg(any(test, feature = "bench"))]

use crate::error::{Error, Result};
use crate::ship::Codec;
use crate::{Shipper, ShipperConfig};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Log text, one line per record (gen_corpus.py's `.txt`).
    pub corpus: PathBuf,
    /// Scratch dir; its `ship` and `idle` subdirs are wiped first.
    pub work_dir: PathBuf,
    /// Busy sandboxes in the throughput phase.
    pub files: usize,
    /// Each busy file holds the corpus this many times.
    pub repeat: usize,
    /// Quiet sandboxes in the idle phase (0 skips it).
    pub idle_files: usize,
    pub idle_secs: u64,
    /// Program and arguments that run [`sink_main`] (normally this executable).
    pub sink_command: Vec<String>,
    pub shipper: ShipperConfig,
    /// Run the throughput phase a second time with gzip, for a side-by-side figure.
    pub compare_gzip: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            corpus: PathBuf::from("/tmp/sandtrail-bench/corpus-1000000.txt"),
            work_dir: PathBuf::from("/tmp/sandtrail-bench/ship"),
            files: 4,
            repeat: 1,
            idle_files: 100,
            idle_secs: 20,
            sink_command: Vec::new(),
            shipper: ShipperConfig::default(),
            compare_gzip: true,
        }
    }
}

/// What was measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub bytes: u64,
    pub lines: u64,
    pub files: usize,
    pub seconds: f64,
    pub cpu_seconds: f64,
    /// Records the sink counted (fewer than lines when multiline joined some).
    pub sink_records: u64,
    pub sink_batches: u64,
    pub peak_rss_kib: u64,
    pub pinned_core: Option<usize>,
    pub idle_files: usize,
    pub idle_secs: f64,
    pub idle_cpu_seconds: f64,
    pub idle_rss_kib: u64,
    pub codec: Codec,
    /// Compressed bytes on the wire per NDJSON byte.
    pub wire_ratio: f64,
    /// The same throughput phase with gzip: (seconds, CPU seconds, wire ratio).
    pub gzip: Option<(f64, f64, f64)>,
}

impl Report {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds
    }

    pub fn to_markdown(&self) -> String {
        let mib = self.bytes as f64 / (1 << 20) as f64;
        let gb = self.bytes as f64 / 1e9;
        let mut s = String::new();
        s.push_str("| measure | value | target (issue 3) |\n|---|---|---|\n");
        s.push_str(&format!(
            "| input | {} files, {:.1} MiB, {} lines | |\n",
            self.files, mib, self.lines
        ));
        s.push_str(&format!(
            "| shipper pinned to | {} | one core |\n",
            self.pinned_core
                .map_or("(not pinned)".to_string(), |c| format!("core {c}"))
        ));
        s.push_str(&format!(
            "| throughput, start to last ack | **{:.1} MB/s** ({:.1} MiB/s), {:.0} lines/s, {:.2} s | ≥ 100 MB/s per core |\n",
            self.mb_per_s(),
            mib / self.seconds,
            self.lines as f64 / self.seconds,
            self.seconds
        ));
        s.push_str(&format!(
            "| CPU of the shipper process | {:.2} s user+sys = {:.1} CPU s/GB ({:.0} % of one core) | |\n",
            self.cpu_seconds,
            self.cpu_seconds / gb,
            100.0 * self.cpu_seconds / self.seconds
        ));
        s.push_str(&format!(
            "| per core: MB shipped per CPU second ({:?}) | **{:.1} MB/s** | ≥ 100 MB/s per core |\n",
            self.codec,
            gb * 1e3 / self.cpu_seconds
        ));
        s.push_str(&format!(
            "| on the wire: compressed / NDJSON bytes ({:?}) | {:.3} | |\n",
            self.codec, self.wire_ratio
        ));
        if let Some((secs, cpu, ratio)) = self.gzip {
            s.push_str(&format!(
                "| same run with gzip level 1: throughput, CPU, per core, wire ratio | {:.1} MB/s, {:.1} CPU s/GB, **{:.1} MB/s** per CPU second, {:.3} | |\n",
                gb * 1e3 / secs,
                cpu / gb,
                gb * 1e3 / cpu,
                ratio
            ));
        }
        let runs = if self.gzip.is_some() { 2 } else { 1 };
        s.push_str(&format!(
            "| records the sink counted (all runs and the idle phase) | {} in {} batches | {} = lines × {runs} + idle lines |\n",
            self.sink_records,
            self.sink_batches,
            self.lines * runs + self.idle_files as u64
        ));
        s.push_str(&format!(
            "| peak RSS (VmHWM) of the shipper process | **{:.1} MiB** | < 50 MiB |\n",
            self.peak_rss_kib as f64 / 1024.0
        ));
        if self.idle_files > 0 {
            s.push_str(&format!(
                "| idle CPU, {} quiet files over {:.0} s | **{:.3} %** of one core ({:.3} s) | < 1 % |\n",
                self.idle_files,
                self.idle_secs,
                100.0 * self.idle_cpu_seconds / self.idle_secs,
                self.idle_cpu_seconds
            ));
            s.push_str(&format!(
                "| RSS while idle (VmRSS) | {:.1} MiB | |\n",
                self.idle_rss_kib as f64 / 1024.0
            ));
        }
        s
    }
}

/// Runs both phases. Blocking: builds its own runtime, so call it from a plain thread
/// (`spawn_blocking` in an async program). Pins the calling thread (and so the
/// shipper) to core 0.
pub fn run(mut opts: BenchOptions) -> Result<Report> {
    // The sink is on this host, where `auto` would send plain NDJSON; the figure is
    // for a shipper whose indexer is elsewhere, as on every host but the indexer's.
    if opts.shipper.compression == Codec::Auto {
        opts.shipper.compression = Codec::Zstd;
    }
    if opts.sink_command.is_empty() {
        return Err(Error::Bench(
            "sink_command is empty, expected the program that runs the sink".into(),
        ));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned_core = pin_to(0).then_some(0);
    let sink = Sink::spawn(&opts.sink_command, cores.saturating_sub(1))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Bench(format!("cannot build the runtime: {e}")))?;
    let mut report = rt.block_on(throughput(&opts, &sink.url))?;
    report.pinned_core = pinned_core;
    report.codec = opts.shipper.compression;
    if opts.compare_gzip && opts.shipper.compression != Codec::Gzip {
        let mut gz = opts.clone();
        gz.shipper.compression = Codec::Gzip;
        let g = rt.block_on(throughput(&gz, &sink.url))?;
        report.gzip = Some((g.seconds, g.cpu_seconds, g.wire_ratio));
    }
    if opts.idle_files > 0 {
        rt.block_on(idle(&opts, &sink.url, &mut report))?;
    }
    drop(rt);
    let (records, batches) = sink.finish()?;
    report.sink_records = records;
    report.sink_batches = batches;
    Ok(report)
}

fn shipper_for(opts: &BenchOptions, work_dir: &Path, url: &str) -> Result<Shipper> {
    Shipper::new(ShipperConfig {
        host: "bench".into(),
        work_dir: work_dir.to_path_buf(),
        indexer_url: url.to_string(),
        ..opts.shipper.clone()
    })
}

fn fresh_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(dir, e)),
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// A sandbox dir with its `task.json`; returns the path of its `stdout`.
fn sandbox(work_dir: &Path, app: &str, task: &str) -> Result<PathBuf> {
    let dir = work_dir.join("sandboxes").join(app).join(task);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let meta = protocol::TaskMeta {
        host: "bench".into(),
        app: app.into(),
        task: task.into(),
        instance: 0,
        ports: vec![],
    };
    let path = dir.join("task.json");
    let json = serde_json::to_vec(&meta).map_err(|e| Error::Bench(e.to_string()))?;
    std::fs::write(&path, json).map_err(|e| Error::io(&path, e))?;
    Ok(dir.join("stdout"))
}

fn count_lines(path: &Path) -> Result<(u64, u64)> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut r = std::io::BufReader::with_capacity(1 << 20, f);
    let (mut bytes, mut lines) = (0u64, 0u64);
    loop {
        let buf = r.fill_buf().map_err(|e| Error::io(path, e))?;
        if buf.is_empty() {
            break;
        }
        lines += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        bytes += buf.len() as u64;
        let n = buf.len();
        r.consume(n);
    }
    Ok((bytes, lines))
}

async fn throughput(opts: &BenchOptions, url: &str) -> Result<Report> {
    let dir = opts.work_dir.join("ship");
    let (corpus_bytes, corpus_lines) = {
        let p = opts.corpus.clone();
        tokio::task::spawn_blocking(move || count_lines(&p)).await??
    };
    if corpus_lines == 0 {
        return Err(Error::Bench(format!(
            "corpus {} has no lines",
            opts.corpus.display()
        )));
    }
    let (files, repeat, corpus) = (opts.files.max(1), opts.repeat.max(1), opts.corpus.clone());
    let d = dir.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        fresh_dir(&d)?;
        for i in 0..files {
            let out = sandbox(&d, "bench", &format!("bench.{i}"))?;
            let mut w = std::fs::File::create(&out).map_err(|e| Error::io(&out, e))?;
            for _ in 0..repeat {
                let mut r = std::fs::File::open(&corpus).map_err(|e| Error::io(&corpus, e))?;
                std::io::copy(&mut r, &mut w).map_err(|e| Error::io(&out, e))?;
            }
        }
        Ok(())
    })
    .await??;
    let total_bytes = corpus_bytes * (files * repeat) as u64;
    let total_lines = corpus_lines * (files * repeat) as u64;
    let shipper = shipper_for(opts, &dir, url)?;
    let cancel = CancellationToken::new();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let task = tokio::spawn({
        let (s, c) = (shipper.clone(), cancel.clone());
        async move { s.run(c).await }
    });
    let m = shipper.inner.metrics.clone();
    let done = || {
        let lag = m.lag.lock().unwrap_or_else(|p| p.into_inner());
        m.bytes_read.load(Ordering::Relaxed) >= total_bytes
            && lag.len() >= files
            && lag.values().all(|&b| b == 0)
    };
    let deadline = t0 + Duration::from_secs(3600);
    while !done() {
        if task.is_finished() || Instant::now() > deadline {
            cancel.cancel();
            task.await??;
            return Err(Error::Bench(format!(
                "the shipper stopped before everything was acknowledged:\n{}",
                shipper.metrics()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let peak = proc_status_kib("VmHWM:");
    cancel.cancel();
    task.await??;
    let lines = m.lines_read.load(Ordering::Relaxed);
    let wire_ratio = m.wire_bytes_sent.load(Ordering::Relaxed) as f64
        / m.ndjson_bytes_sent.load(Ordering::Relaxed).max(1) as f64;
    if lines != total_lines {
        return Err(Error::Bench(format!(
            "read {lines} lines, expected {total_lines}"
        )));
    }
    Ok(Report {
        bytes: total_bytes,
        lines,
        files,
        seconds,
        cpu_seconds: cpu,
        wire_ratio,
        peak_rss_kib: peak,
        ..Report::default()
    })
}

async fn idle(opts: &BenchOptions, url: &str, report: &mut Report) -> Result<()> {
    let dir = opts.work_dir.join("idle");
    let n = opts.idle_files;
    let d = dir.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        fresh_dir(&d)?;
        for i in 0..n {
            let out = sandbox(&d, "quiet", &format!("quiet.{i}"))?;
            std::fs::write(
                &out,
                format!("2026-11-23T10:00:00.000Z INFO quiet file {i} started\n"),
            )
            .map_err(|e| Error::io(&out, e))?;
        }
        Ok(())
    })
    .await??;
    let shipper = shipper_for(opts, &dir, url)?;
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let (s, c) = (shipper.clone(), cancel.clone());
        async move { s.run(c).await }
    });
    let m = shipper.inner.metrics.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while m.records_shipped.load(Ordering::Relaxed) < n as u64 {
        if task.is_finished() || Instant::now() > deadline {
            cancel.cancel();
            task.await??;
            return Err(Error::Bench(format!(
                "the quiet files were not shipped within 60 s:\n{}",
                shipper.metrics()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the last checkpoint save and lag update settle before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(opts.idle_secs)).await;
    report.idle_cpu_seconds = cpu_seconds() - cpu0;
    report.idle_secs = t0.elapsed().as_secs_f64();
    report.idle_files = n;
    report.idle_rss_kib = proc_status_kib("VmRSS:");
    cancel.cancel();
    task.await??;
    Ok(())
}

/// User plus system CPU time of this process so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return f64::NAN;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// A `kB` line of `/proc/self/status`, 0 when it cannot be read.
fn proc_status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Pins the calling thread (and the threads it creates later) to `core`.
fn pin_to(core: usize) -> bool {
    // SAFETY: the set is a plain bit mask on our stack, passed with its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The sink child process.
struct Sink {
    child: std::process::Child,
    url: String,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Sink {
    fn spawn(cmd: &[String], core: usize) -> Result<Sink> {
        let mut child = std::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .env("SANDTRAIL_BENCH_SINK_CORE", core.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(&cmd[0], e))?;
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .map_err(|e| Error::io(&cmd[0], e))?;
        let Some(url) = line.trim().strip_prefix("listening ") else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Bench(format!(
                "the sink said {line:?}, expected \"listening http://...\""
            )));
        };
        Ok(Sink {
            url: url.to_string(),
            child,
            stdout,
        })
    }

    /// Closes the sink's stdin, which stops it, and reads its totals.
    fn finish(mut self) -> Result<(u64, u64)> {
        drop(self.child.stdin.take());
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| Error::Bench(format!("reading the sink's totals: {e}")))?;
        let _ = self.child.wait();
        let mut it = line.split_whitespace();
        match (
            it.next(),
            it.next().map(str::parse),
            it.next().map(str::parse),
        ) {
            (Some("totals"), Some(Ok(r)), Some(Ok(b))) => Ok((r, b)),
            _ => Err(Error::Bench(format!(
                "the sink said {line:?}, expected \"totals RECORDS BATCHES\""
            ))),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
struct SinkCounts {
    records: std::sync::atomic::AtomicU64,
    batches: std::sync::atomic::AtomicU64,
}

/// The sink process: pins itself to `SANDTRAIL_BENCH_SINK_CORE`, listens on
/// 127.0.0.1:0, prints `listening URL`, accepts `POST /api/v1/ingest` (gzip, zstd or plain NDJSON),
/// counts records, and on EOF of stdin prints `totals RECORDS BATCHES` and returns.
pub fn sink_main() -> Result<()> {
    use axum::extract::{DefaultBodyLimit, State};
    use axum::http::StatusCode;
    use axum::routing::post;
    use std::io::Read;
    use std::sync::Arc;

    if let Some(core) = std::env::var("SANDTRAIL_BENCH_SINK_CORE")
        .ok()
        .and_then(|c| c.parse().ok())
    {
        pin_to(core);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Bench(format!("cannot build the runtime: {e}")))?;
    let counts = Arc::new(SinkCounts::default());
    async fn ingest(
        State(c): State<Arc<SinkCounts>>,
        body: axum::body::Bytes,
    ) -> std::result::Result<axum::Json<protocol::IngestResponse>, (StatusCode, String)> {
        let mut n = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        // Told apart by magic bytes, as the indexer does.
        let mut d: Box<dyn Read> = if body.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Box::new(
                zstd::stream::read::Decoder::new(&body[..])
                    .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad zstd: {e}")))?,
            )
        } else if body.first() == Some(&b'{') {
            Box::new(&body[..])
        } else {
            Box::new(flate2::read::GzDecoder::new(&body[..]))
        };
        loop {
            match d.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => n += memchr::memchr_iter(b'\n', &buf[..k]).count() as u64,
                Err(e) => return Err((StatusCode::BAD_REQUEST, format!("bad body: {e}"))),
            }
        }
        c.records.fetch_add(n, Ordering::Relaxed);
        c.batches.fetch_add(1, Ordering::Relaxed);
        Ok(axum::Json(protocol::IngestResponse {
            accepted: n,
            duplicates: 0,
        }))
    }
    let app = axum::Router::new()
        .route("/api/v1/ingest", post(ingest))
        .layer(DefaultBodyLimit::disable())
        .with_state(counts.clone());
    let stop = CancellationToken::new();
    std::thread::spawn({
        let stop = stop.clone();
        move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            stop.cancel();
        }
    });
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::io("127.0.0.1:0", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("127.0.0.1:0", e))?;
        println!("listening http://{addr}");
        std::io::stdout().flush().ok();
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
            .map_err(|e| Error::io("sink", e))
    })?;
    println!(
        "totals {} {}",
        counts.records.load(Ordering::Relaxed),
        counts.batches.load(Ordering::Relaxed)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_status_and_rusage_read() {
        assert!(proc_status_kib("VmHWM:") > 0);
        assert!(proc_status_kib("NoSuchKey:") == 0);
        let a = cpu_seconds();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        assert!(cpu_seconds() >= a);
    }

    #[test]
    fn count_lines_counts_bytes_and_newlines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.txt");
        std::fs::write(&p, "a\nbb\nccc\n").unwrap();
        assert_eq!(count_lines(&p).unwrap(), (9, 3));
    }
}
