//! The shipper against a real NATS JetStream (issue 21, slice 2): with an ingest log
//! configured, every record lands once in the stream, on its source's shard subject,
//! under the message id of its source and offsets; a log that goes away and comes
//! back loses nothing; a stream made for another shard count is refused.

mod common;

use agent::{Shipper, ShipperConfig};
use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures::StreamExt;
use protocol::ingest_log::LogConfig;
use protocol::{shard, LogRecord, TaskMeta};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn sandbox(work: &Path, app: &str, task: &str) -> PathBuf {
    let dir = work.join("sandboxes").join(app).join(task);
    std::fs::create_dir_all(&dir).unwrap();
    let meta = TaskMeta {
        host: "node-1".into(),
        app: app.into(),
        task: task.into(),
        instance: 0,
        ports: vec![],
    };
    std::fs::write(dir.join("task.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
    dir
}

fn append_lines(path: &Path, from: usize, to: usize) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for n in from..to {
        writeln!(f, "line {n}").unwrap();
    }
}

/// Every record in the stream with its subject and message id, in stream order.
async fn read_stream(nats: &str, shards: u32) -> anyhow::Result<Vec<(String, String, LogRecord)>> {
    let (_, stream) = protocol::ingest_log::open(&LogConfig {
        shards,
        ..LogConfig::new(nats)
    })
    .await
    .map_err(anyhow::Error::msg)?;
    let mut info = stream.clone();
    let last = info.info().await?.state.last_sequence;
    let mut out = Vec::new();
    if last == 0 {
        return Ok(out);
    }
    let mut msgs = stream
        .create_consumer(OrderedConfig::default())
        .await?
        .messages()
        .await?;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), msgs.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("stream ended"))??;
        let seq = msg.info().map_err(anyhow::Error::msg)?.stream_sequence;
        let id = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        for rec in protocol::decode_ndjson(&msg.payload)? {
            out.push((msg.subject.to_string(), id.clone(), rec));
        }
        if seq >= last {
            return Ok(out);
        }
    }
}

/// Waits until the stream holds `want` records; returns them.
async fn stream_holds(nats: &str, want: usize) -> anyhow::Result<Vec<(String, String, LogRecord)>> {
    common::eventually(
        "the stream to hold every line",
        Duration::from_secs(30),
        || async {
            let got = read_stream(nats, shard::DEFAULT_SHARDS).await?;
            Ok((got.len() >= want).then_some(got))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_lands_once_on_its_shard_even_across_a_log_outage() -> anyhow::Result<()> {
    let mut nats = common::nats::Nats::start()?;
    let work = tempfile::tempdir()?;
    let files: Vec<PathBuf> = (0..5)
        .map(|i| sandbox(work.path(), "app", &format!("task-{i}")).join("stdout"))
        .collect();
    for f in &files {
        append_lines(f, 0, 200);
    }
    let shipper = Shipper::new(ShipperConfig {
        host: "node-1".into(),
        work_dir: work.path().to_path_buf(),
        batch_max_wait: Duration::from_millis(20),
        scan_interval: Duration::from_millis(200),
        multiline_flush: None,
        ingest_log: Some(LogConfig::new(nats.url())),
        ..ShipperConfig::default()
    })?;
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let (s, c) = (shipper.clone(), cancel.clone());
        async move { s.run(c).await }
    });
    stream_holds(&nats.url(), 1000).await?;

    // The log goes away; lines written meanwhile wait in the shipper and arrive once
    // it is back (the stream is on disk, so the first 1000 are still there).
    nats.stop();
    for f in &files {
        append_lines(f, 200, 300);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.start_again()?;
    let got = stream_holds(&nats.url(), 1500).await?;
    cancel.cancel();
    run.await??;

    let mut per_source: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for (subject, id, rec) in &got {
        assert_eq!(
            subject,
            &shard::subject(shard::shard_of(&rec.source, shard::DEFAULT_SHARDS)),
            "record of {} on the wrong subject",
            rec.source
        );
        let (src, range) = id.rsplit_once(':').expect("message id source:first-last");
        assert_eq!(src, rec.source, "message id names the record's source");
        let (first, last) = range.split_once('-').unwrap();
        let (first, last): (u64, u64) = (first.parse()?, last.parse()?);
        assert!(
            (first..=last).contains(&rec.offset),
            "{id} holds offset {}",
            rec.offset
        );
        per_source
            .entry(rec.source.clone())
            .or_default()
            .push((rec.offset, rec.msg.clone()));
    }
    assert_eq!(per_source.len(), 5, "one source per file");
    for (source, recs) in &per_source {
        let msgs: Vec<&str> = recs.iter().map(|(_, m)| m.as_str()).collect();
        let want: Vec<String> = (0..300).map(|n| format!("line {n}")).collect();
        assert_eq!(msgs, want, "{source}: every line once, in order");
        assert!(
            recs.windows(2).all(|w| w[0].0 < w[1].0),
            "{source}: offsets rise"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_another_shard_count_is_refused() -> anyhow::Result<()> {
    let nats = common::nats::Nats::start()?;
    protocol::ingest_log::open(&LogConfig::new(nats.url()))
        .await
        .map_err(anyhow::Error::msg)?;
    let opened = protocol::ingest_log::open(&LogConfig {
        shards: 4,
        ..LogConfig::new(nats.url())
    })
    .await;
    let Err(err) = opened else {
        panic!("a stream made for 6 shards refuses a 4-shard client");
    };
    assert!(
        err.contains("6 shards") && err.contains("configured for 4"),
        "{err}"
    );
    Ok(())
}

/// Issue 21: the stream used to keep everything forever. Its limits follow the
/// indexers' settings: an existing stream's are updated when an indexer opens it
/// with other ones (a changed retention or byte bound), and a shipper, which
/// knows neither, leaves them as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streams_limits_follow_the_indexers_settings() -> anyhow::Result<()> {
    use protocol::ingest_log::{Limits, RETENTION_SLACK};
    let nats = common::nats::Nats::start()?;
    let limits_of = |limits: Option<Limits>| {
        let url = nats.url();
        async move {
            let (_, mut stream) = protocol::ingest_log::open(&LogConfig {
                limits,
                ..LogConfig::new(url)
            })
            .await
            .map_err(anyhow::Error::msg)?;
            let c = &stream.info().await?.config;
            anyhow::Ok((c.max_age, c.max_bytes))
        }
    };
    // A shipper first: no bound.
    let (age, bytes) = limits_of(None).await?;
    assert_eq!(age, Duration::ZERO);
    assert!(bytes <= 0, "no byte bound: {bytes}");
    let day = Duration::from_secs(86_400);
    let week = Limits::for_retention(Some(7 * day), None);
    assert_eq!(
        limits_of(Some(week)).await?,
        (7 * day + RETENTION_SLACK, -1),
        "an indexer with a week's retention sets the stream's age"
    );
    let bounded = Limits::for_retention(Some(2 * day), Some(64 << 20));
    assert_eq!(
        limits_of(Some(bounded)).await?,
        (2 * day + RETENTION_SLACK, 64 << 20),
        "changed settings update the existing stream"
    );
    assert_eq!(
        limits_of(None).await?,
        (2 * day + RETENTION_SLACK, 64 << 20),
        "a shipper leaves the limits alone"
    );
    Ok(())
}
