//! End-to-end tests of the shipper against a fake indexer on 127.0.0.1:0 that decodes
//! gzip NDJSON and deduplicates by (source, offset) the way the real one does.

use agent::fingerprint::base_of;
use agent::ship::Codec;
use agent::{Shipper, ShipperConfig};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use protocol::{IngestResponse, Level, LogRecord, Stream, TaskMeta};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Fake {
    /// Every record of every request that was not failed on purpose, duplicates too.
    received: Vec<LogRecord>,
    /// Records newly committed, in order.
    accepted: Vec<LogRecord>,
    committed: HashMap<String, u64>,
    /// Answer 503 to this many requests.
    fail_next: u32,
    failed: u32,
    /// Answer 400 to any batch containing a record with this msg.
    poison: Option<String>,
    tokens: Vec<Option<String>>,
    /// The `Content-Encoding` of every request.
    encodings: Vec<Option<String>>,
    /// Answer plain bodies as an indexer from before they were accepted did.
    refuse_plain: bool,
    /// Answer every request only after this long (a slow but healthy indexer).
    delay: Duration,
}

type Shared = Arc<Mutex<Fake>>;

async fn ingest(State(fake): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let delay = fake.lock().unwrap().delay;
    tokio::time::sleep(delay).await;
    let mut f = fake.lock().unwrap();
    f.tokens.push(
        headers
            .get(protocol::TOKEN_HEADER)
            .map(|v| v.to_str().unwrap().to_string()),
    );
    if f.fail_next > 0 {
        f.fail_next -= 1;
        f.failed += 1;
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "0")],
            "busy",
        )
            .into_response();
    }
    let mut raw = Vec::new();
    // The header must say what the body is, whichever codec the test configured; no
    // header is plain NDJSON (what `auto` sends over loopback, as here).
    let encoding = headers
        .get("content-encoding")
        .map(|v| v.to_str().unwrap().to_string());
    f.encodings.push(encoding.clone());
    if f.refuse_plain && encoding.is_none() {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "{{\"error\":\"body of {} bytes is neither gzip nor zstd (expected compressed NDJSON, magic 1f 8b or 28 b5 2f fd)\"}}",
                body.len()
            ),
        )
            .into_response();
    }
    let decoded = match encoding.as_deref() {
        Some("zstd") => {
            zstd::stream::read::Decoder::new(&body[..]).and_then(|mut d| d.read_to_end(&mut raw))
        }
        Some("gzip") => flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut raw),
        None => {
            raw.extend_from_slice(&body);
            Ok(body.len())
        }
        Some(other) => panic!("unexpected content-encoding {other}"),
    };
    if let Err(e) = decoded {
        return (StatusCode::BAD_REQUEST, format!("bad body: {e}")).into_response();
    }
    let recs = match protocol::decode_ndjson(&raw) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    if let Some(p) = &f.poison {
        if recs.iter().any(|r| &r.msg == p) {
            return (StatusCode::BAD_REQUEST, "poison record").into_response();
        }
    }
    let mut resp = IngestResponse::default();
    for r in recs {
        f.received.push(r.clone());
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
        token: Some("s3cret".into()),
        batch_max_wait: Duration::from_millis(20),
        scan_interval: Duration::from_millis(200),
        ..ShipperConfig::default()
    }
}

/// [`config`] with batches of about ten lines and no multiline joining: many
/// batches from a few hundred lines, for the tests of how batches queue and spill.
fn small_batches(work_dir: &Path, url: &str) -> ShipperConfig {
    ShipperConfig {
        batch_max_bytes: 2048,
        multiline_flush: None,
        ..config(work_dir, url)
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

/// Polls `cond` until it holds or the deadline passes.
async fn wait_for(what: &str, fake: &Shared, cond: impl Fn(&Fake) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if cond(&fake.lock().unwrap()) {
            return;
        }
        if Instant::now() > deadline {
            let f = fake.lock().unwrap();
            let msgs: Vec<&str> = f.accepted.iter().map(|r| r.msg.as_str()).collect();
            panic!("timed out waiting for {what}; accepted so far: {msgs:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sandbox(work: &Path, app: &str, task: &str, instance: u32) -> PathBuf {
    let dir = work.join("sandboxes").join(app).join(task);
    std::fs::create_dir_all(&dir).unwrap();
    let meta = TaskMeta {
        host: "node-1".into(),
        app: app.into(),
        task: task.into(),
        instance,
        ports: vec![31000],
    };
    std::fs::write(dir.join("task.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
    dir
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn msgs(f: &Fake) -> Vec<String> {
    f.accepted.iter().map(|r| r.msg.clone()).collect()
}

fn checkpoints(work: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(work.join("shipper/checkpoints.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The (source, offset) of every checkpoint entry of the file at `base`.
fn entries_of(work: &Path, base: &str) -> Vec<(String, u64)> {
    let cps = checkpoints(work);
    cps["files"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, e)| e["base"] == base)
        .map(|(k, e)| (k.clone(), e["offset"].as_u64().unwrap()))
        .collect()
}

/// The offset of the only checkpoint entry of `base`.
fn offset_of(work: &Path, base: &str) -> u64 {
    let e = entries_of(work, base);
    assert_eq!(e.len(), 1, "{e:?}");
    e[0].1
}

#[tokio::test]
async fn ships_tagged_lines_follows_appends_and_resumes_without_resending() {
    let (url, fake) = start_fake().await;
    let work = tempfile::tempdir().unwrap();
    let dir = sandbox(work.path(), "fib", "fib.1", 2);
    append(&dir.join("stdout"), "first line\nsecond line\n");
    append(
        &dir.join("stderr"),
        "{\"level\":\"error\",\"msg\":\"boom\",\"user\":\"alice\"}\n",
    );
    let shipper = Shipper::new(config(work.path(), &url)).unwrap();
    let run = start(&shipper);

    wait_for("the initial lines", &fake, |f| f.accepted.len() == 3).await;
    {
        let f = fake.lock().unwrap();
        for r in &f.accepted {
            assert_eq!(
                (r.host.as_str(), r.app.as_str(), r.task.as_str(), r.instance),
                ("node-1", "fib", "fib.1", 2)
            );
        }
        let out: Vec<_> = f
            .accepted
            .iter()
            .filter(|r| r.stream == Stream::Stdout)
            .collect();
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].msg.as_str(), out[0].offset), ("first line", 11));
        assert_eq!((out[1].msg.as_str(), out[1].offset), ("second line", 23));
        assert_eq!(base_of(&out[0].source), "node-1/fib/fib.1/stdout");
        assert_ne!(out[0].source, "node-1/fib/fib.1/stdout", "an id is added");
        let err = f
            .accepted
            .iter()
            .find(|r| r.stream == Stream::Stderr)
            .unwrap();
        assert_eq!((err.msg.as_str(), err.level), ("boom", Some(Level::Error)));
        assert_eq!(err.fields["user"], "alice");
        assert_eq!(base_of(&err.source), "node-1/fib/fib.1/stderr");
        assert!(f.tokens.iter().all(|t| t.as_deref() == Some("s3cret")));
    }

    // Lines appended while running arrive; an unfinished line waits for its newline.
    append(&dir.join("stdout"), "third line\nunfini");
    wait_for("the appended line", &fake, |f| {
        msgs(f).contains(&"third line".to_string())
    })
    .await;
    append(&dir.join("stdout"), "shed\n");
    wait_for("the finished line", &fake, |f| {
        msgs(f).contains(&"unfinished".to_string())
    })
    .await;
    assert!(
        shipper
            .metrics()
            .contains("sandtrail_agent_lines_read_total{host=\"node-1\"} 5"),
        "{}",
        shipper.metrics()
    );
    run.stop().await;

    let stdout_len = std::fs::metadata(dir.join("stdout")).unwrap().len();
    let cps = checkpoints(work.path());
    assert_eq!(cps["version"], 2);
    assert_eq!(
        offset_of(work.path(), "node-1/fib/fib.1/stdout"),
        stdout_len
    );
    let stderr_len = std::fs::metadata(dir.join("stderr")).unwrap().len();
    assert_eq!(
        offset_of(work.path(), "node-1/fib/fib.1/stderr"),
        stderr_len
    );
    let received_before = fake.lock().unwrap().received.len();

    // Restart: only the new line is sent.
    append(&dir.join("stdout"), "after restart\n");
    let run = start(&Shipper::new(config(work.path(), &url)).unwrap());
    wait_for("the line written after the restart", &fake, |f| {
        msgs(f).contains(&"after restart".to_string())
    })
    .await;
    {
        let f = fake.lock().unwrap();
        let resent: Vec<&LogRecord> = f.received[received_before..]
            .iter()
            .filter(|r| r.msg != "after restart")
            .collect();
        assert!(resent.is_empty(), "re-sent after restart: {resent:?}");
        assert_eq!(f.accepted.len(), 6);
    }
    run.stop().await;
}

#[tokio::test]
async fn retries_503s_without_losing_or_reordering_lines() {
    let (url, fake) = start_fake().await;
    fake.lock().unwrap().fail_next = 3;
    let work = tempfile::tempdir().unwrap();
    let dir = sandbox(work.path(), "api", "api.7", 0);
    let mut text = String::new();
    for i in 0..200 {
        text.push_str(&format!("line {i} level=info n={i}\n"));
    }
    append(&dir.join("stdout"), &text);
    let mut cfg = config(work.path(), &url);
    cfg.batch_max_bytes = 4096; // many batches
    let shipper = Shipper::new(cfg).unwrap();
    let run = start(&shipper);

    wait_for("all 200 lines", &fake, |f| f.accepted.len() == 200).await;
    {
        let f = fake.lock().unwrap();
        assert_eq!(f.failed, 3);
        let mut offset = 0;
        for (i, r) in f.accepted.iter().enumerate() {
            assert_eq!(r.msg, format!("line {i} level=info n={i}"));
            offset += r.msg.len() as u64 + 1;
            assert_eq!(r.offset, offset, "offsets follow the file");
            assert_eq!(r.fields["n"], i);
        }
        assert_eq!(f.received.len(), 200, "nothing sent twice");
    }
    // Counted once the shipper has read each reply, a moment after the fake
    // indexer recorded the records: final once the run has stopped (shutdown waits
    // for the batch in flight).
    run.stop().await;
    let m = shipper.metrics();
    assert!(
        m.contains("sandtrail_agent_batches_failed_total{host=\"node-1\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("sandtrail_agent_retries_total{host=\"node-1\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("sandtrail_agent_records_shipped_total{host=\"node-1\"} 200"),
        "{m}"
    );
}

#[tokio::test]
async fn picks_up_new_sandboxes_and_the_router_access_log() {
    let (url, fake) = start_fake().await;
    let work = tempfile::tempdir().unwrap();
    let shipper = Shipper::new(config(work.path(), &url)).unwrap();
    let run = start(&shipper);

    // A sandbox without task.json yet is not shipped until it has one.
    let dir = work.path().join("sandboxes/web/web.3");
    std::fs::create_dir_all(&dir).unwrap();
    append(
        &dir.join("stdout"),
        "2026-11-23T10:00:00.250Z WARN hello from web trace_id=abc123\n",
    );
    sandbox(work.path(), "web", "web.3", 1);
    wait_for("the new sandbox's line", &fake, |f| f.accepted.len() == 1).await;
    {
        let f = fake.lock().unwrap();
        let r = &f.accepted[0];
        assert_eq!(
            (r.app.as_str(), r.task.as_str(), r.instance),
            ("web", "web.3", 1)
        );
        assert_eq!(r.level, Some(Level::Warn));
        assert_eq!(r.trace_id.as_deref(), Some("abc123"));
        assert_eq!(
            r.ts,
            "2026-11-23T10:00:00.250Z"
                .parse::<chrono::DateTime<chrono::Utc>>()
                .unwrap()
        );
    }

    // The router's access log: records keep their own fields.
    let meta = TaskMeta {
        host: "node-2".into(),
        app: "fib".into(),
        task: "fib.9".into(),
        instance: 4,
        ports: vec![],
    };
    let mut access = LogRecord::new(chrono::Utc::now(), &meta, Stream::Access, "GET /fib/10 200");
    access.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".into());
    access.latency_ms = Some(12.5);
    access.status = Some(200);
    access.peer_app = Some("web".into());
    let line = serde_json::to_string(&access).unwrap();
    std::fs::create_dir_all(work.path().join("router")).unwrap();
    append(
        &work.path().join("router/access.log"),
        &format!("{line}\nnot a record\n"),
    );
    wait_for("the access records", &fake, |f| f.accepted.len() == 3).await;
    {
        let f = fake.lock().unwrap();
        let rec = f
            .accepted
            .iter()
            .find(|r| r.msg == "GET /fib/10 200")
            .unwrap();
        let mut expected = access.clone();
        assert_eq!(base_of(&rec.source), "node-1/router/access");
        expected.source = rec.source.clone();
        expected.offset = line.len() as u64 + 1;
        assert_eq!(rec, &expected);
        let bad = f.accepted.iter().find(|r| r.msg == "not a record").unwrap();
        assert_eq!(
            (bad.host.as_str(), bad.app.as_str(), bad.stream, bad.level),
            ("node-1", "router", Stream::Access, Some(Level::Warn))
        );
    }
    run.stop().await;
}

#[tokio::test]
async fn truncated_file_is_shipped_again_under_a_new_source() {
    let (url, fake) = start_fake().await;
    let work = tempfile::tempdir().unwrap();
    let dir = sandbox(work.path(), "fib", "fib.2", 0);
    append(&dir.join("stdout"), "old one\nold two\n");
    let shipper = Shipper::new(config(work.path(), &url)).unwrap();
    let run = start(&shipper);
    wait_for("the old lines", &fake, |f| f.accepted.len() == 2).await;

    std::fs::write(dir.join("stdout"), "new\n").unwrap(); // copytruncate-style
    wait_for("the line after truncation", &fake, |f| {
        f.accepted.len() == 3
    })
    .await;
    let new_source = {
        let f = fake.lock().unwrap();
        let r = &f.accepted[2];
        assert_eq!((r.msg.as_str(), r.offset), ("new", 4));
        assert_eq!(base_of(&r.source), "node-1/fib/fib.2/stdout");
        assert_ne!(r.source, f.accepted[0].source);
        assert_eq!(f.received.len(), 3, "old content not re-sent");
        r.source.clone()
    };
    run.stop().await;
    assert_eq!(
        entries_of(work.path(), "node-1/fib/fib.2/stdout"),
        [(new_source, 4)],
        "the old source is forgotten"
    );
}

#[tokio::test]
async fn a_refused_record_is_skipped_and_the_rest_delivered() {
    let (url, fake) = start_fake().await;
    fake.lock().unwrap().poison = Some("POISON".into());
    let work = tempfile::tempdir().unwrap();
    let dir = sandbox(work.path(), "fib", "fib.3", 0);
    append(&dir.join("stdout"), "a\nb\nPOISON\nc\nd\n");
    let shipper = Shipper::new(config(work.path(), &url)).unwrap();
    let run = start(&shipper);
    wait_for("the good lines", &fake, |f| msgs(f) == ["a", "b", "c", "d"]).await;
    assert!(shipper
        .metrics()
        .contains("sandtrail_agent_records_rejected_total{host=\"node-1\"} 1"));
    run.stop().await;
    let len = std::fs::metadata(dir.join("stdout")).unwrap().len();
    assert_eq!(offset_of(work.path(), "node-1/fib/fib.3/stdout"), len);
}

#[tokio::test]
async fn cancel_ships_what_was_read_and_saves_checkpoints() {
    let (url, fake) = start_fake().await;
    let work = tempfile::tempdir().unwrap();
    let dir = sandbox(work.path(), "fib", "fib.4", 0);
    let mut cfg = config(work.path(), &url);
    cfg.batch_max_wait = Duration::from_secs(3600); // only cancellation sends it
    let shipper = Shipper::new(cfg).unwrap();
    let run = start(&shipper);
    append(&dir.join("stdout"), "x\ny\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !shipper
        .metrics()
        .contains("sandtrail_agent_lines_read_total{host=\"node-1\"} 2")
    {
        assert!(Instant::now() < deadline, "{}", shipper.metrics());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(fake.lock().unwrap().received.is_empty());
    run.stop().await;
    assert_eq!(msgs(&fake.lock().unwrap()), ["x", "y"]);
    assert_eq!(offset_of(work.path(), "node-1/fib/fib.4/stdout"), 4);
}

#[tokio::test]
async fn indexer_down_at_shutdown_loses_nothing() {
    let (url, fake) = start_fake().await;
    fake.lock().unwrap().fail_next = u32::MAX;
    let work = tempfile::tempdir().unwrap();
    let dir = sandbox(work.path(), "fib", "fib.5", 0);
    append(&dir.join("stdout"), "kept 1\nkept 2\n");
    let shipper = Shipper::new(config(work.path(), &url)).unwrap();
    let run = start(&shipper);
    wait_for("a failed attempt", &fake, |f| f.failed >= 2).await;
    run.stop().await;
    assert!(fake.lock().unwrap().accepted.is_empty());
    // Entries are keyed `base@id`: look them up by their base.
    let cps = checkpoints_or_empty(work.path());
    let advanced: Vec<_> = cps["files"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, e)| e["base"] == "node-1/fib/fib.5/stdout" && e["offset"] != 0)
        .collect();
    assert!(
        advanced.is_empty(),
        "nothing acknowledged, nothing checkpointed: {cps}"
    );

    // The indexer is back: a new run delivers everything.
    fake.lock().unwrap().fail_next = 0;
    let run = start(&shipper);
    wait_for("the kept lines", &fake, |f| msgs(f) == ["kept 1", "kept 2"]).await;
    run.stop().await;
}

fn checkpoints_or_empty(work: &Path) -> serde_json::Value {
    match std::fs::read_to_string(work.join("shipper/checkpoints.json")) {
        Ok(text) => serde_json::from_str(&text).unwrap(),
        Err(_) => serde_json::json!({"version": 1, "files": {}}),
    }
}

/// With the periodic rescan out of the picture, the file watcher alone must notice new
/// sandboxes and appended lines.
#[tokio::test]
async fn the_watcher_wakes_the_shipper_without_rescans() {
    let (url, fake) = start_fake().await;
    let work = tempfile::tempdir().unwrap();
    let mut cfg = config(work.path(), &url);
    cfg.scan_interval = Duration::from_secs(3600);
    let shipper = Shipper::new(cfg).unwrap();
    let first = sandbox(work.path(), "early", "early.1", 0);
    append(&first.join("stdout"), "early\n");
    let run = start(&shipper);
    // Once this arrived, the first scan is done (and the watcher was set up before it).
    wait_for("the first sandbox's line", &fake, |f| msgs(f) == ["early"]).await;
    let dir = sandbox(work.path(), "late", "late.1", 0);
    append(&dir.join("stdout"), "hello\n");
    wait_for("the new sandbox's line", &fake, |f| {
        msgs(f) == ["early", "hello"]
    })
    .await;
    append(&dir.join("stdout"), "again\n");
    wait_for("the appended line", &fake, |f| {
        msgs(f) == ["early", "hello", "again"]
    })
    .await;
    run.stop().await;
}

/// Regression: a file renamed away and recreated must not start its source over at
/// offset 0 (the indexer would drop the new lines as already committed), and what
/// the writer still appends to the renamed file must not be lost.
#[tokio::test]
async fn a_file_rotated_by_rename_is_finished_and_the_new_one_shipped() {
    let (url, fake) = start_fake().await;
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("router/access.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    append(&log, "a long enough first line\nand a second one\n");
    // Batches by age as by default, so that their timers start few rounds.
    let shipper = Shipper::new(ShipperConfig {
        batch_max_wait: Duration::from_millis(200),
        ..config(work.path(), &url)
    })
    .unwrap();
    let run = start(&shipper);
    wait_for("the first lines", &fake, |f| f.accepted.len() == 2).await;

    let rotated = work.path().join("router/access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    append(&log, "new file\n");
    append(&rotated, "late line\n");
    wait_for("the late line and the new file", &fake, |f| {
        f.accepted.len() == 4
    })
    .await;
    {
        let f = fake.lock().unwrap();
        let first = &f.accepted[0].source;
        let late = f.accepted.iter().find(|r| r.msg == "late line").unwrap();
        assert_eq!((late.offset, &late.source), (52, first));
        let new = f.accepted.iter().find(|r| r.msg == "new file").unwrap();
        assert_eq!(new.offset, 9);
        assert_ne!(&new.source, first);
        assert_eq!(base_of(&new.source), "node-1/router/access");
        assert_eq!(f.received.len(), 4, "nothing re-sent");
    }
    run.stop().await;
}

#[tokio::test]
async fn many_files_many_lines_arrive_complete_and_in_order() {
    ship_many_files(Codec::Zstd).await;
}

#[tokio::test]
async fn many_files_many_lines_arrive_complete_and_in_order_with_gzip() {
    ship_many_files(Codec::Gzip).await;
}

/// The default (`auto`) sends plain NDJSON to an indexer on this host: the fake is
/// on 127.0.0.1, so no request may carry a `Content-Encoding`.
#[tokio::test]
async fn many_files_many_lines_arrive_complete_and_in_order_as_plain_ndjson() {
    let fake = ship_many_files(Codec::Auto).await;
    let f = fake.lock().unwrap();
    assert!(!f.encodings.is_empty());
    assert!(f.encodings.iter().all(Option::is_none), "{:?}", f.encodings);
}

/// Review finding: with `auto` over loopback, an indexer from before plain NDJSON
/// was accepted answered 400 to every batch, which the shipper split down to single
/// records and skipped: every line lost. It now switches to zstd and loses nothing.
#[tokio::test]
async fn an_indexer_that_refuses_plain_ndjson_gets_zstd_and_nothing_is_lost() {
    let (url, fake) = start_fake().await;
    fake.lock().unwrap().refuse_plain = true;
    let work = tempfile::tempdir().unwrap();
    let dir = sandbox(work.path(), "old", "old.1", 0);
    let text: String = (0..200).map(|i| format!("line {i}\n")).collect();
    append(&dir.join("stdout"), &text);
    let shipper = Shipper::new(config(work.path(), &url)).unwrap();
    let run = start(&shipper);
    wait_for("every line", &fake, |f| f.accepted.len() == 200).await;
    assert_eq!(metric(&shipper, "records_rejected_total"), 0);
    append(&dir.join("stdout"), "after the switch\n");
    wait_for("the next line", &fake, |f| f.accepted.len() == 201).await;
    {
        let f = fake.lock().unwrap();
        assert_eq!(f.encodings.first(), Some(&None), "plain was tried first");
        assert_eq!(
            f.encodings.last(),
            Some(&Some("zstd".to_string())),
            "and zstd kept once refused"
        );
        assert_eq!(
            f.encodings.iter().filter(|e| e.is_none()).count(),
            1,
            "{:?}",
            f.encodings
        );
    }
    run.stop().await;
}

/// Regression (issue 14's `50slow`, 0.8 of a core for 50 quiet tasks): every write
/// of every task woke the shipper for a round over every file, thousands of rounds a
/// second. Rounds started by file events are now at most one per 25 ms.
#[tokio::test]
async fn many_slow_writers_are_read_in_coalesced_rounds() {
    let (url, fake) = start_fake().await;
    let work = tempfile::tempdir().unwrap();
    let files = 20;
    let paths: Vec<PathBuf> = (0..files)
        .map(|t| sandbox(work.path(), "slow", &format!("slow.{t}"), t).join("stdout"))
        .collect();
    for p in &paths {
        append(p, "first\n");
    }
    let shipper = Shipper::new(config(work.path(), &url)).unwrap();
    let run = start(&shipper);
    wait_for("the first lines", &fake, |f| {
        f.accepted.len() == files as usize
    })
    .await;
    let rounds_before = metric(&shipper, "read_rounds_total");
    let batches_before = metric(&shipper, "batches_sent_total");
    // 20 writers, a line each every 2 ms or so, for a second: about 10,000 file
    // events, each of which started a round over all 20 files before.
    let started = Instant::now();
    let mut written = 0;
    while started.elapsed() < Duration::from_secs(1) {
        for p in &paths {
            append(p, &format!("line {written}\n"));
            written += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    wait_for("every line", &fake, |f| {
        f.accepted.len() == files as usize + written
    })
    .await;
    let rounds = metric(&shipper, "read_rounds_total") - rounds_before;
    let batches = metric(&shipper, "batches_sent_total") - batches_before;
    // One per 25 ms while events come, one after each send (the reader refills its
    // queue at once), plus rescans and the tail end: far below one per event.
    let bound = (elapsed.as_millis() / 25) as u64 + batches + 30;
    assert!(
        rounds <= bound,
        "{rounds} reading rounds for {written} lines in {elapsed:?}, {batches} batches (at most {bound} expected)"
    );
    run.stop().await;
}

async fn ship_many_files(codec: Codec) -> Shared {
    let (url, fake) = start_fake().await;
    let work = tempfile::tempdir().unwrap();
    let files: u32 = 20;
    let lines: usize = 2000;
    for t in 0..files {
        let dir = sandbox(work.path(), "bulk", &format!("bulk.{t}"), t);
        let text: String = (0..lines)
            .map(|i| format!("task {t} line {i} {}\n", "x".repeat(i % 300)))
            .collect();
        append(&dir.join("stdout"), &text);
    }
    let started = Instant::now();
    let run = start(
        &Shipper::new(ShipperConfig {
            compression: codec,
            ..config(work.path(), &url)
        })
        .unwrap(),
    );
    wait_for("every line", &fake, |f| {
        f.accepted.len() == files as usize * lines
    })
    .await;
    eprintln!(
        "shipped {} lines in {:?}",
        files as usize * lines,
        started.elapsed()
    );
    {
        let f = fake.lock().unwrap();
        assert_eq!(f.received.len(), f.accepted.len(), "nothing sent twice");
        let mut next: HashMap<&str, u32> = HashMap::new();
        for r in &f.accepted {
            let i = next.entry(r.task.as_str()).or_default();
            assert!(
                r.msg
                    .starts_with(&format!("{} line {i} ", r.task.replace("bulk.", "task "))),
                "{} out of order",
                r.msg
            );
            *i += 1;
        }
    }
    run.stop().await;
    fake
}

/// The value of an unlabelled `sandtrail_agent_<name>` series.
fn metric(shipper: &Shipper, name: &str) -> u64 {
    let text = shipper.metrics();
    let prefix = format!("sandtrail_agent_{name}{{host=\"node-1\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

async fn wait_metric(shipper: &Shipper, what: &str, cond: impl Fn(&Shipper) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond(shipper) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {}",
            shipper.metrics()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn numbered(n: std::ops::RangeInclusive<u32>) -> String {
    n.map(|i| format!("line number {i:05}\n")).collect()
}

fn assert_each_once(f: &Fake, n: u32) {
    let mut got = msgs(f);
    got.sort();
    let want: Vec<String> = (1..=n).map(|i| format!("line number {i:05}")).collect();
    assert_eq!(got, want);
}

/// Regression: with a healthy indexer, every full batch that found another batch in
/// flight went through the spool (write, fsync, read back, re-parse), about every
/// other batch at full speed and a fifth of the shipper's CPU. Now a full batch waits
/// briefly for the one in flight instead.
#[tokio::test]
async fn a_healthy_indexer_gets_batches_straight_from_memory() {
    let (url, fake) = start_fake().await;
    let work = tempfile::tempdir().unwrap();
    let dir = sandbox(work.path(), "fib", "fib.8", 0);
    let cfg = small_batches(work.path(), &url);
    let shipper = Shipper::new(cfg).unwrap();
    let run = start(&shipper);
    append(&dir.join("stdout"), &numbered(1..=2000));
    wait_for("all 2000 lines", &fake, |f| f.accepted.len() >= 2000).await;
    run.stop().await;
    assert_each_once(&fake.lock().unwrap(), 2000);
    assert!(metric(&shipper, "batches_sent_total") > 50);
    assert_eq!(metric(&shipper, "batches_spooled_total"), 0);
}

/// Regression: batches go one at a time, and reading used to stop for each round
/// trip, leaving the shipper idle while the indexer worked. Now a few full batches
/// queue in memory behind the one in flight: reading runs ahead of the
/// acknowledgements by more than two batches, and nothing is spooled for a slow but
/// healthy indexer.
#[tokio::test]
async fn reading_runs_ahead_of_a_slow_indexer_without_spooling() {
    let (url, fake) = start_fake().await;
    // Slow enough for reading to run ahead, and far enough under the shipper's
    // 500 ms before it spools a waiting batch that a stalled CI machine does not
    // reach it.
    fake.lock().unwrap().delay = Duration::from_millis(60);
    let work = tempfile::tempdir().unwrap();
    let dir = sandbox(work.path(), "fib", "fib.8", 0);
    let cfg = small_batches(work.path(), &url);
    let shipper = Shipper::new(cfg).unwrap();
    let run = start(&shipper);
    append(&dir.join("stdout"), &numbered(1..=300));
    // About 200 bytes of NDJSON per line: a batch holds about ten lines.
    wait_metric(&shipper, "reading ahead of the acknowledgements", |s| {
        metric(s, "lines_read_total") >= metric(s, "records_shipped_total") + 30
    })
    .await;
    wait_for("all 300 lines", &fake, |f| f.accepted.len() >= 300).await;
    run.stop().await;
    assert_each_once(&fake.lock().unwrap(), 300);
    assert_eq!(metric(&shipper, "batches_spooled_total"), 0);
}

/// Regression: an acknowledgement slower than 500 ms sent the batches behind it
/// through the spool (write, fsync, read back, re-parse), and once the spool held one
/// batch every later one followed it there: a three-agent burst on two cores spooled
/// a third to half of its batches for an indexer that was only busy. An indexer that
/// answers, however slowly, is now waited for (reading pauses, the task's files hold
/// the lines), and the spool is for one that fails.
#[tokio::test]
async fn a_busy_indexer_is_waited_for_rather_than_spooled_to() {
    let (url, fake) = start_fake().await;
    fake.lock().unwrap().delay = Duration::from_millis(800);
    let work = tempfile::tempdir().unwrap();
    let dir = sandbox(work.path(), "fib", "fib.8", 0);
    let cfg = small_batches(work.path(), &url);
    let shipper = Shipper::new(cfg).unwrap();
    let run = start(&shipper);
    // About ten lines a batch: six batches, more than the two queued behind the one
    // in flight, each answered after longer than the 500 ms that used to spill them.
    append(&dir.join("stdout"), &numbered(1..=60));
    wait_metric(&shipper, "reading paused behind the busy indexer", |s| {
        metric(s, "reading_paused") == 1
    })
    .await;
    wait_for("all 60 lines", &fake, |f| f.accepted.len() >= 60).await;
    run.stop().await;
    assert_each_once(&fake.lock().unwrap(), 60);
    assert_eq!(metric(&shipper, "batches_spooled_total"), 0);
    assert_eq!(metric(&shipper, "batches_failed_total"), 0);
}

/// Regression (review): the wait before spilling ended only once nothing was in
/// flight, so reading stayed paused until the whole queue had drained, a round trip
/// per queued batch. It ends once the queue has room again: when the indexer answers
/// the batch in flight and the oldest queued one goes out, reading goes on while that
/// one is still at the indexer.
#[tokio::test]
async fn a_busy_indexer_pauses_reading_only_until_the_queue_has_room() {
    let (url, fake) = start_fake().await;
    // Every request is answered after this long: the second batch's answer comes at
    // least this long after the first's, the window the reader must resume in.
    fake.lock().unwrap().delay = Duration::from_millis(1500);
    let work = tempfile::tempdir().unwrap();
    let dir = sandbox(work.path(), "fib", "fib.8", 0);
    // About 850 bytes of NDJSON a line: three lines fill a 2048-byte batch, two do
    // not. Twelve lines, read in the first round, make exactly four full batches:
    // more than the one in flight and the two queued behind it, and too few for a
    // second wait once the first has ended.
    let pad = "x".repeat(640);
    let lines: Vec<String> = (1..=12)
        .map(|i| format!("line number {i:05} {pad}"))
        .collect();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    append(&dir.join("stdout"), &text);
    let shipper = Shipper::new(small_batches(work.path(), &url)).unwrap();
    let run = start(&shipper);
    wait_metric(&shipper, "the first round's lines", |s| {
        metric(s, "lines_read_total") == 12
    })
    .await;
    // The reader is handing those batches over and waits for room in the queue: a
    // line written now is read by the next round, once that wait has ended.
    append(&dir.join("stdout"), "written during the wait\n");
    wait_metric(&shipper, "the line written during the wait", |s| {
        metric(s, "lines_read_total") == 13
    })
    .await;
    {
        let f = fake.lock().unwrap();
        // The fake records a token for every request it answers.
        assert_eq!(
            f.tokens.len(),
            1,
            "reading must go on once the first batch is answered, not once the queue \
             has drained ({} lines accepted)",
            f.accepted.len()
        );
    }
    fake.lock().unwrap().delay = Duration::ZERO;
    wait_for("all 13 lines", &fake, |f| f.accepted.len() >= 13).await;
    run.stop().await;
    let mut want = lines;
    want.push("written during the wait".into());
    assert_eq!(msgs(&fake.lock().unwrap()), want);
    assert_eq!(metric(&shipper, "batches_spooled_total"), 0);
    assert_eq!(metric(&shipper, "batches_failed_total"), 0);
}

/// While the indexer is down, full batches go to the disk spool and the checkpoints
/// move past them; a restart sends the spool first, and every line arrives once.
#[tokio::test]
async fn the_spool_holds_batches_while_the_indexer_is_down_and_across_a_restart() {
    let (url, fake) = start_fake().await;
    fake.lock().unwrap().fail_next = u32::MAX;
    let work = tempfile::tempdir().unwrap();
    let dir = sandbox(work.path(), "fib", "fib.8", 0);
    let cfg = small_batches(work.path(), &url);
    let shipper = Shipper::new(cfg.clone()).unwrap();
    let run = start(&shipper);
    append(&dir.join("stdout"), &numbered(1..=400));
    wait_metric(&shipper, "lines read", |s| {
        metric(s, "lines_read_total") == 400
    })
    .await;
    // About 200 bytes of NDJSON per line: all but the last partial batch spooled.
    wait_metric(&shipper, "the spooled batches", |s| {
        metric(s, "spool_bytes") >= 400 * 150
    })
    .await;
    assert!(metric(&shipper, "batches_spooled_total") > 0);
    run.stop().await;
    assert!(fake.lock().unwrap().accepted.is_empty());
    let len = std::fs::metadata(dir.join("stdout")).unwrap().len();
    let spooled = offset_of(work.path(), "node-1/fib/fib.8/stdout");
    assert!(
        spooled > 0 && spooled <= len,
        "the checkpoint moved past the spooled batches without any ack: {spooled}"
    );
    assert!(
        std::fs::read_dir(work.path().join("shipper/spool"))
            .unwrap()
            .count()
            > 0
    );

    fake.lock().unwrap().fail_next = 0;
    let shipper = Shipper::new(cfg).unwrap();
    let run = start(&shipper);
    wait_for("every line", &fake, |f| f.accepted.len() >= 400).await;
    wait_metric(&shipper, "an empty spool", |s| {
        metric(s, "spool_bytes") == 0
    })
    .await;
    run.stop().await;
    assert_each_once(&fake.lock().unwrap(), 400);
    let left = std::fs::read_dir(work.path().join("shipper/spool"))
        .unwrap()
        .count();
    assert_eq!(left, 0);
}

/// At its bound the spool stops growing and the shipper stops reading (the
/// checkpoint stays behind the file), and nothing is lost once the indexer is back.
#[tokio::test]
async fn a_full_spool_stops_reading_without_losing_lines() {
    let (url, fake) = start_fake().await;
    fake.lock().unwrap().fail_next = u32::MAX;
    let work = tempfile::tempdir().unwrap();
    let dir = sandbox(work.path(), "fib", "fib.9", 0);
    let mut cfg = config(work.path(), &url);
    cfg.batch_max_bytes = 1024;
    cfg.spool_max_bytes = 3000;
    cfg.multiline_flush = None;
    let shipper = Shipper::new(cfg).unwrap();
    let run = start(&shipper);
    append(&dir.join("stdout"), &numbered(1..=2000));
    wait_metric(&shipper, "a full spool", |s| {
        metric(s, "spool_bytes") >= 2000
    })
    .await;
    let len = std::fs::metadata(dir.join("stdout")).unwrap().len();
    assert!(metric(&shipper, "spool_bytes") <= 3000);
    assert!(
        offset_of(work.path(), "node-1/fib/fib.9/stdout") < len,
        "reading stopped at the bound"
    );
    // The lag gauges are refreshed on the shipper's tick, which a loaded machine may
    // not have reached when the spool fills (this assertion failed once in CI).
    wait_metric(&shipper, "the lag of the stalled file", |s| {
        s.metrics().contains(
            "sandtrail_agent_lag_seconds{host=\"node-1\",source=\"node-1/fib/fib.9/stdout@",
        )
    })
    .await;

    fake.lock().unwrap().fail_next = 0;
    wait_for("every line", &fake, |f| f.accepted.len() >= 2000).await;
    wait_metric(&shipper, "an empty spool", |s| {
        metric(s, "spool_bytes") == 0
    })
    .await;
    run.stop().await;
    assert_each_once(&fake.lock().unwrap(), 2000);
    assert_eq!(offset_of(work.path(), "node-1/fib/fib.9/stdout"), len);
}
