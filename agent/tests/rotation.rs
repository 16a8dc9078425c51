//! The task logger and the shipper working as one (issue 14): the logger renames a
//! full `stdout` to the next number (`stdout.1`, `stdout.2`, ... upwards) and deletes
//! nothing; the shipper ships every rotated file, deletes it once the indexer has
//! acknowledged all of it, and keeps the task's disk budget with a visible gap.
//! Tested against a fake indexer on 127.0.0.1:0 that deduplicates by (source,
//! offset) the way the real one does; the test plays the logger.

use agent::{Shipper, ShipperConfig};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use protocol::{IngestResponse, Level, LogRecord, Stream, TaskFile, TaskMeta};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Fake {
    /// Records newly committed, in order.
    accepted: Vec<LogRecord>,
    /// Records received, duplicates too (not counting refused requests).
    received: usize,
    committed: HashMap<String, u64>,
    /// Answer 503 while set: the indexer is stalled.
    stalled: bool,
    refused: u32,
    /// The query string of every request.
    queries: Vec<Option<String>>,
}

type Shared = Arc<Mutex<Fake>>;

async fn ingest(State(fake): State<Shared>, uri: Uri, body: Bytes) -> Response {
    let mut f = fake.lock().unwrap();
    f.queries.push(uri.query().map(str::to_string));
    if f.stalled {
        f.refused += 1;
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "0")],
            "stalled",
        )
            .into_response();
    }
    let mut raw = Vec::new();
    if body.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::stream::read::Decoder::new(&body[..])
            .and_then(|mut d| d.read_to_end(&mut raw))
            .unwrap();
    } else {
        // Plain NDJSON: what the shipper sends to an indexer on this host.
        raw.extend_from_slice(&body);
    }
    let mut resp = IngestResponse::default();
    for r in protocol::decode_ndjson(&raw).unwrap() {
        f.received += 1;
        let done = f.committed.get(&r.source).copied().unwrap_or(0);
        if r.offset > done {
            f.committed.insert(r.source.clone(), r.offset);
            f.accepted.push(r);
            resp.accepted += 1;
        } else {
            resp.duplicates += 1;
        }
    }
    Json(resp).into_response()
}

async fn start_fake() -> (String, Shared) {
    let fake = Shared::default();
    let app = Router::new()
        .route("/api/v1/ingest", post(ingest))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), fake)
}

fn config(work_dir: &Path, url: &str) -> ShipperConfig {
    ShipperConfig {
        host: "node-1".into(),
        work_dir: work_dir.to_path_buf(),
        indexer_url: url.into(),
        batch_max_bytes: 16 * 1024,
        batch_max_wait: Duration::from_millis(20),
        scan_interval: Duration::from_millis(200),
        multiline_flush: None,
        ..ShipperConfig::default()
    }
}

struct Running {
    cancel: CancellationToken,
    task: JoinHandle<agent::Result<()>>,
}

fn start(shipper: &Shipper) -> Running {
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let s = shipper.clone();
        let c = cancel.clone();
        async move { s.run(c).await }
    });
    Running { cancel, task }
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("shipper stops after cancel")
            .unwrap()
            .unwrap();
    }
}

/// Polls `cond` until it holds, failing with `what` after 30 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sandbox(work: &Path, task: &str, budget: Option<u64>) -> PathBuf {
    let dir = work.join("sandboxes").join("fib").join(task);
    std::fs::create_dir_all(&dir).unwrap();
    let file = TaskFile {
        meta: TaskMeta {
            host: "node-1".into(),
            app: "fib".into(),
            task: task.into(),
            instance: 3,
            ports: vec![],
        },
        log_budget_bytes: budget,
    };
    std::fs::write(dir.join("task.json"), serde_json::to_vec(&file).unwrap()).unwrap();
    dir
}

/// Plays the task logger for one stream: appends to the live file through a
/// descriptor it keeps open and rotates the way the new logger does (close, rename
/// to the next number upwards, open a fresh live file). Every line is 100 bytes with
/// its newline and unique: `f<file> n<line> ...`, `file` the rotation it ends up as.
struct Logger {
    dir: PathBuf,
    live: Option<std::fs::File>,
    /// The number the live file gets when rotated.
    next: u32,
    /// Lines of each file, by the number it has (or will have) once rotated.
    lines: BTreeMap<u32, Vec<String>>,
}

impl Logger {
    fn new(dir: &Path) -> Logger {
        Logger {
            dir: dir.to_path_buf(),
            live: None,
            next: 1,
            lines: BTreeMap::new(),
        }
    }

    fn write(&mut self, n: usize) {
        let file = self.next;
        let mut text = String::new();
        let lines = self.lines.entry(file).or_default();
        for _ in 0..n {
            let head = format!("f{file} n{:06} ", lines.len());
            let line = format!("{head}{}", "x".repeat(99 - head.len()));
            text.push_str(&line);
            text.push('\n');
            lines.push(line);
        }
        let dir = self.dir.clone();
        let live = self.live.get_or_insert_with(|| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("stdout"))
                .unwrap()
        });
        live.write_all(text.as_bytes()).unwrap();
    }

    fn rotate(&mut self) {
        self.live = None;
        let to = self.dir.join(format!("stdout.{}", self.next));
        std::fs::rename(self.dir.join("stdout"), to).unwrap();
        self.next += 1;
        self.live = Some(
            std::fs::OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(self.dir.join("stdout"))
                .unwrap(),
        );
    }

    fn total(&self) -> usize {
        self.lines.values().map(Vec::len).sum()
    }

    fn size(&self, file: u32) -> u64 {
        self.lines.get(&file).map_or(0, |l| l.len() as u64 * 100)
    }

    fn rotated_on_disk(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("stdout."))
            .collect();
        names.sort();
        names
    }
}

/// Each message accepted at most once; returns them as a set.
fn accepted_once(f: &Fake) -> HashSet<String> {
    let mut seen = HashSet::new();
    for r in &f.accepted {
        assert!(seen.insert(r.msg.clone()), "{:?} accepted twice", r.msg);
    }
    seen
}

/// While waiting for `done`, checks that a rotated file is never gone before every
/// one of its lines was acknowledged (the fake records them before it answers).
async fn deleted_only_after_ack(
    what: &str,
    log: &Logger,
    fake: &Shared,
    done: impl Fn(&Fake) -> bool,
) {
    let mut gone: HashSet<u32> = HashSet::new();
    eventually(what, || {
        let f = fake.lock().unwrap();
        let msgs: HashSet<&str> = f.accepted.iter().map(|r| r.msg.as_str()).collect();
        for (&n, lines) in &log.lines {
            if n >= log.next || gone.contains(&n) || log.dir.join(format!("stdout.{n}")).exists() {
                continue;
            }
            let missing = lines.iter().filter(|l| !msgs.contains(l.as_str())).count();
            assert_eq!(
                missing, 0,
                "stdout.{n} deleted with {missing} lines not acknowledged"
            );
            gone.insert(n);
        }
        done(&f)
    })
    .await;
}

fn metric(shipper: &Shipper, name: &str) -> u64 {
    let text = shipper.metrics();
    let prefix = format!("sandtrail_agent_{name}{{host=\"node-1\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

fn entries_of(work: &Path, base: &str) -> Vec<(String, PathBuf)> {
    let text = std::fs::read_to_string(work.join("shipper/checkpoints.json")).unwrap();
    let cps: serde_json::Value = serde_json::from_str(&text).unwrap();
    cps["files"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, e)| e["base"] == base)
        .map(|(k, e)| (k.clone(), PathBuf::from(e["path"].as_str().unwrap())))
        .collect()
}

/// Regression (issue 14): files rotated before the shipper first looked were never
/// read, and a task writing as fast as it can lost most of its lines. Now rotations
/// made before the shipper starts and while it runs, several in quick succession,
/// ship every line exactly once, and each rotated file is deleted once all of it is
/// acknowledged, never before; the live file stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_files_ship_every_line_once_and_are_deleted_after_their_ack() {
    let (url, fake) = start_fake().await;
    let work = tempfile::tempdir().unwrap();
    let dir = sandbox(work.path(), "fib.1", None);
    let mut log = Logger::new(&dir);
    // Before the shipper looks: two rotations, and lines in the live file.
    log.write(300);
    log.rotate();
    log.write(200);
    log.rotate();
    log.write(50);
    let shipper = Shipper::new(config(work.path(), &url)).unwrap();
    let run = start(&shipper);
    deleted_only_after_ack("the lines written before the start", &log, &fake, |f| {
        f.accepted.len() == 550
    })
    .await;

    // While it runs: rotations in quick succession, with no pause between them.
    for n in [400, 10, 700, 1] {
        log.write(n);
        log.rotate();
    }
    log.write(120);
    let total = log.total();
    deleted_only_after_ack("every line and the rotated files gone", &log, &fake, |f| {
        f.accepted.len() >= total && log.rotated_on_disk().is_empty()
    })
    .await;
    run.stop().await;

    let f = fake.lock().unwrap();
    let got = accepted_once(&f);
    for (n, lines) in &log.lines {
        for l in lines {
            assert!(got.contains(l), "line {l} of file {n} missing");
        }
    }
    assert_eq!(f.accepted.len(), total);
    assert_eq!(f.received, total, "nothing was sent twice");
    for r in &f.accepted {
        assert_eq!(
            (r.app.as_str(), r.task.as_str(), r.instance, r.stream),
            ("fib", "fib.1", 3, Stream::Stdout)
        );
    }
    // Every rotated file is one source, its lines at their own offsets.
    let mut by_file: HashMap<&str, HashSet<&str>> = HashMap::new();
    for r in &f.accepted {
        by_file
            .entry(&r.msg[..r.msg.find(' ').unwrap()])
            .or_default()
            .insert(&r.source);
    }
    assert!(by_file.values().all(|s| s.len() == 1), "{by_file:?}");
    assert!(
        f.queries
            .iter()
            .all(|q| q.as_deref() == Some("refresh=false")),
        "the shipper asks for the write-ahead-log acknowledgement: {:?}",
        f.queries.first()
    );
    drop(f);
    assert!(
        dir.join("stdout").exists(),
        "the live file is never deleted"
    );
    assert_eq!(log.rotated_on_disk(), Vec::<String>::new());
    // Only the live file keeps a checkpoint entry.
    let entries = entries_of(work.path(), "node-1/fib/fib.1/stdout");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].1, dir.join("stdout"));
}

/// A shipper stopped half way through a file that is then rotated twice while it is
/// down resumes the renamed file from its checkpoint (by identity), reads the file
/// rotated while it was down (never seen, so from 0) and the new live file: every
/// line exactly once, the rotated files deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_between_rotations_ships_every_line_once() {
    let (url, fake) = start_fake().await;
    let work = tempfile::tempdir().unwrap();
    let dir = sandbox(work.path(), "fib.2", None);
    let mut log = Logger::new(&dir);
    log.write(100);
    let shipper = Shipper::new(config(work.path(), &url)).unwrap();
    let run = start(&shipper);
    deleted_only_after_ack("the first lines", &log, &fake, |f| f.accepted.len() == 100).await;
    // Stopped while it is reading a burst.
    log.write(5000);
    eventually("reading to begin", || {
        metric(&shipper, "lines_read_total") > 100
    })
    .await;
    run.stop().await;
    let before = fake.lock().unwrap().accepted.len();
    eprintln!("{before} of 5100 lines shipped before the stop");

    log.rotate();
    log.write(300);
    log.rotate();
    log.write(200);
    let total = log.total();
    let shipper = Shipper::new(config(work.path(), &url)).unwrap();
    let run = start(&shipper);
    deleted_only_after_ack("every line and the rotated files gone", &log, &fake, |f| {
        f.accepted.len() >= total && log.rotated_on_disk().is_empty()
    })
    .await;
    run.stop().await;
    let f = fake.lock().unwrap();
    let got = accepted_once(&f);
    assert_eq!(got.len(), total);
    for lines in log.lines.values() {
        assert!(lines.iter().all(|l| got.contains(l)));
    }
    // The renamed file went on under the source it had as the live file.
    let sources: HashSet<&str> = f
        .accepted
        .iter()
        .filter(|r| r.msg.starts_with("f1 "))
        .map(|r| r.source.as_str())
        .collect();
    assert_eq!(sources.len(), 1, "{sources:?}");
    drop(f);
    assert!(dir.join("stdout").exists());
    assert_eq!(entries_of(work.path(), "node-1/fib/fib.2/stdout").len(), 1);
}

/// A task with a small disk budget rotates several times the budget while the indexer
/// is stalled (and the spool is off, so reading stops). The oldest rotated files'
/// unread bytes are dropped, each with one `warn` record in their own source at their
/// size saying how many bytes; the counters agree; every line of the files not
/// dropped (and what was read of the dropped ones) arrives exactly once; and once the
/// indexer is back the sandbox's log files go back under the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_budget_drops_the_oldest_unread_rotations_with_one_record_each() {
    const BUDGET: u64 = 2 * 1024 * 1024;
    // Rotations of about 600 KB: more than the shipper reads before it stops (a
    // round of 256 KiB and a few batches), so no file newer than one it drops can
    // have been read to its end. 6 MB in all; the three newest fit the budget.
    const ROTATIONS: u32 = 10;
    let live = ROTATIONS + 1;
    let (url, fake) = start_fake().await;
    fake.lock().unwrap().stalled = true;
    let work = tempfile::tempdir().unwrap();
    let dir = sandbox(work.path(), "fib.3", Some(BUDGET));
    std::fs::write(dir.join("stderr"), "an error line\n").unwrap();
    let shipper = Shipper::new(ShipperConfig {
        spool_max_bytes: 0,
        ..config(work.path(), &url)
    })
    .unwrap();
    let run = start(&shipper);
    eventually("a refused batch", || fake.lock().unwrap().refused >= 1).await;

    let mut log = Logger::new(&dir);
    for k in 0..ROTATIONS as usize {
        // Each a different size, so that a gap's offset names its file.
        log.write(6000 + k);
        log.rotate();
    }
    log.write(10);
    let on_disk = |log: &Logger| -> u64 {
        (1..log.next).map(|n| log.size(n)).sum::<u64>() + log.size(log.next) + 14
    };
    assert!(
        on_disk(&log) > 2 * BUDGET,
        "past where the logger would block the task"
    );
    eventually("reading to stop and the scan to see the rotations", || {
        metric(&shipper, "reading_paused") == 1
            && metric(&shipper, "log_bytes_on_disk") == on_disk(&log)
    })
    .await;
    assert_eq!(
        log.rotated_on_disk().len(),
        ROTATIONS as usize,
        "nothing deleted while the indexer is stalled"
    );

    fake.lock().unwrap().stalled = false;
    eventually("the rotated files to be gone", || {
        log.rotated_on_disk().is_empty()
    })
    .await;
    eventually("the gauge back under the budget", || {
        metric(&shipper, "log_bytes_on_disk") <= BUDGET && metric(&shipper, "reading_paused") == 0
    })
    .await;
    eventually("the live lines", || {
        let f = fake.lock().unwrap();
        f.accepted
            .iter()
            .any(|r| r.msg.starts_with(&format!("f{live} n000009")))
            && f.accepted.iter().any(|r| r.msg == "an error line")
    })
    .await;
    run.stop().await;

    let f = fake.lock().unwrap();
    let got = accepted_once(&f);
    // The gap records, by the file (of distinct sizes) whose end they sit at.
    let mut gaps: BTreeMap<u32, (u64, String)> = BTreeMap::new();
    for r in f.accepted.iter().filter(|r| r.msg.contains("dropped")) {
        let (n, rest) = r.msg.split_once(' ').unwrap();
        assert_eq!(
            rest, "bytes of stdout dropped at rotation: disk budget of 2 MiB reached",
            "{}",
            r.msg
        );
        assert_eq!(
            (r.level, r.stream, r.task.as_str(), r.instance),
            (Some(Level::Warn), Stream::Stdout, "fib.3", 3)
        );
        let file = (1..=ROTATIONS)
            .find(|&k| log.size(k) == r.offset)
            .expect("a gap sits at the end of its file");
        assert!(
            gaps.insert(file, (n.parse().unwrap(), r.source.clone()))
                .is_none(),
            "two gaps for stdout.{file}"
        );
    }
    eprintln!(
        "dropped: {:?}",
        gaps.iter().map(|(k, (n, _))| (k, n)).collect::<Vec<_>>()
    );
    assert!(
        !gaps.is_empty(),
        "several times the budget, nothing dropped"
    );
    assert_eq!(
        metric(&shipper, "log_files_dropped_total"),
        gaps.len() as u64
    );
    assert_eq!(
        metric(&shipper, "log_bytes_dropped_total"),
        gaps.values().map(|g| g.0).sum::<u64>()
    );
    // Dropped oldest first: what is newer than the newest dropped file (and the live
    // files) fits in the budget.
    let newest_dropped = *gaps.keys().last().unwrap();
    let newer: u64 = (newest_dropped + 1..=ROTATIONS).map(|k| log.size(k)).sum();
    let live_bytes = log.size(live) + 14;
    assert!(
        newer + live_bytes <= BUDGET,
        "dropped more than needed: {gaps:?}"
    );
    assert!(
        newer + live_bytes + log.size(newest_dropped) > BUDGET,
        "dropped too little: {gaps:?}"
    );
    for (&k, (dropped, source)) in &gaps {
        // What was read of it arrived in its own source up to the gap: its first
        // lines, the last one maybe cut where reading stopped (an unfinished line
        // read is shipped, not dropped).
        let lines = &log.lines[&k];
        let mut read: Vec<&LogRecord> = f
            .accepted
            .iter()
            .filter(|r| &r.source == source && r.level != Some(Level::Warn))
            .collect();
        read.sort_by_key(|r| r.offset);
        let end = read.last().map_or(0, |r| r.offset);
        assert_eq!(
            end + dropped,
            log.size(k),
            "stdout.{k}: read + dropped = its size"
        );
        for (i, r) in read.iter().enumerate() {
            if r.offset == (i as u64 + 1) * 100 {
                assert_eq!(r.msg, lines[i]);
            } else {
                assert_eq!(i + 1, read.len(), "only the last record may be a cut line");
                assert!(lines[i].starts_with(&r.msg), "{:?}", r.msg);
            }
        }
    }
    for (k, lines) in &log.lines {
        if !gaps.contains_key(k) {
            assert!(
                lines.iter().all(|l| got.contains(l)),
                "a line of stdout.{k} (not dropped) is missing"
            );
        }
    }
    drop(f);
    let left: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != "task.json")
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(left <= BUDGET, "{left} bytes of logs left");
}
