//! `checkpoint::sandbox_shipped`, the node's sandbox-GC gate, against a running
//! shipper and a fake indexer that can refuse batches: a sandbox counts as shipped
//! only once every byte of its logs is acknowledged.

use agent::checkpoint::sandbox_shipped;
use agent::{Shipper, ShipperConfig};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use protocol::{IngestResponse, TaskMeta};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Fake {
    /// Answer 503 while set.
    refuse: bool,
    refused: u32,
    accepted: u64,
}

type Shared = Arc<Mutex<Fake>>;

/// Acknowledges every batch (counting requests, not decoding them: the gate is about
/// acknowledgements, not content) unless told to refuse.
async fn ingest(State(fake): State<Shared>, _body: Bytes) -> Response {
    let mut f = fake.lock().unwrap();
    if f.refuse {
        f.refused += 1;
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "0")],
            "busy",
        )
            .into_response();
    }
    f.accepted += 1;
    Json(IngestResponse::default()).into_response()
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

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sandbox(work: &Path) -> PathBuf {
    let dir = work.join("sandboxes").join("fib").join("fib.1");
    std::fs::create_dir_all(&dir).unwrap();
    let meta = TaskMeta {
        host: "node-1".into(),
        app: "fib".into(),
        task: "fib.1".into(),
        instance: 1,
        ports: Vec::new(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_counts_as_shipped_only_once_the_indexer_acked_all_of_it() {
    let work = tempfile::tempdir().unwrap();
    let (url, fake) = start_fake().await;
    let dir = sandbox(work.path());
    append(&dir.join("stdout"), "one\ntwo\n");
    append(&dir.join("stderr"), "oops\n");
    let shipped = || sandbox_shipped(work.path(), &dir).unwrap();
    assert!(!shipped(), "nothing read yet");

    fake.lock().unwrap().refuse = true;
    let shipper = Shipper::new(ShipperConfig {
        host: "node-1".into(),
        work_dir: work.path().to_path_buf(),
        indexer_url: url,
        batch_max_wait: Duration::from_millis(20),
        scan_interval: Duration::from_millis(100),
        multiline_flush: None,
        // Refused batches stay in memory, so nothing counts as delivered by the spool.
        spool_max_bytes: 0,
        ..ShipperConfig::default()
    })
    .unwrap();
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let (s, c) = (shipper.clone(), cancel.clone());
        async move { s.run(c).await }
    });
    // Read but refused: not shipped.
    eventually("a refused batch", || fake.lock().unwrap().refused >= 2).await;
    assert!(!shipped(), "read but not acknowledged");

    fake.lock().unwrap().refuse = false;
    eventually("the sandbox to be shipped", shipped).await;

    // More output, then a rotation by rename: shipped again only once all is acked.
    let refused = {
        let mut f = fake.lock().unwrap();
        f.refuse = true;
        f.refused
    };
    append(&dir.join("stdout"), "three\n");
    std::fs::rename(dir.join("stdout"), dir.join("stdout.1")).unwrap();
    append(&dir.join("stdout"), "four\n");
    eventually("the new lines to be refused", || {
        fake.lock().unwrap().refused >= refused + 2
    })
    .await;
    assert!(!shipped(), "new bytes are not acknowledged yet");
    fake.lock().unwrap().refuse = false;
    eventually("the rotated sandbox to be shipped", shipped).await;

    cancel.cancel();
    run.await.unwrap().unwrap();
}

/// Regression (issue 14): a rotated `stdout.1` without a checkpoint entry counted as
/// shipped, so the sandbox GC could remove a sandbox whose rotated logs nobody had
/// read. Under the contract with the task logger the shipper deletes a rotated file
/// once all of it is acknowledged, so while one exists the sandbox is not shipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_with_a_rotated_file_is_not_shipped_until_the_file_is_shipped_and_gone() {
    let work = tempfile::tempdir().unwrap();
    let (url, fake) = start_fake().await;
    let dir = sandbox(work.path());
    // The task wrote, the logger rotated, and the task wrote nothing since.
    append(&dir.join("stdout.1"), "rotated before the shipper saw it\n");
    append(&dir.join("stdout"), "");
    let shipped = || sandbox_shipped(work.path(), &dir).unwrap();
    assert!(!shipped(), "a rotated file nobody read");

    fake.lock().unwrap().refuse = true;
    let shipper = Shipper::new(ShipperConfig {
        host: "node-1".into(),
        work_dir: work.path().to_path_buf(),
        indexer_url: url,
        batch_max_wait: Duration::from_millis(20),
        scan_interval: Duration::from_millis(100),
        multiline_flush: None,
        spool_max_bytes: 0,
        ..ShipperConfig::default()
    })
    .unwrap();
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let (s, c) = (shipper.clone(), cancel.clone());
        async move { s.run(c).await }
    });
    eventually("a refused batch", || fake.lock().unwrap().refused >= 2).await;
    assert!(!shipped(), "read but not acknowledged");
    assert!(dir.join("stdout.1").exists());

    fake.lock().unwrap().refuse = false;
    eventually("the sandbox to be shipped", shipped).await;
    eventually("the rotated file to be deleted", || {
        !dir.join("stdout.1").exists()
    })
    .await;
    assert!(shipped());
    assert!(dir.join("stdout").exists(), "the live file stays");

    // Another rotation appears: not shipped again until it is gone too. Refused
    // meanwhile: a shipper quicker than this thread had shipped and deleted it
    // before the assertion looked.
    fake.lock().unwrap().refuse = true;
    append(&dir.join("stderr.1"), "late\n");
    assert!(!shipped());
    fake.lock().unwrap().refuse = false;
    eventually("the new rotation to be shipped and deleted", || {
        !dir.join("stderr.1").exists()
    })
    .await;
    assert!(shipped());
    cancel.cancel();
    run.await.unwrap().unwrap();
}
