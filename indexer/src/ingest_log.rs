//! A shard owner's consumer of the durable ingest log (issue 21): reads the
//! JetStream subject `sandtrail.logs.<shard>` from the position committed in this
//! index and feeds the batches through the same admission as `/api/v1/ingest`.
//!
//! Position and documents commit together: every call into the writer carries, after
//! the records of its messages, one record of the pseudo-source
//! `protocol::shard::position_source(shard)` whose offset is the stream sequence of
//! the last message. The writer admits it like any record (so it is in the
//! write-ahead log, in the checkpoint and in every commit payload, and undone with
//! its group) but never indexes it. After a restart or on taking a shard over, the
//! consumer starts at the committed sequence + 1; anything it sees again (a WAL
//! replay raced ahead of the commit, another owner's earlier messages) is dropped by
//! the per-source offset dedup, so the position only saves replay time, never
//! decides what is indexed. A new owner with no position replays the shard from the
//! start of the stream (Quickwit's checkpoint idea on JetStream).
//!
//! The consumer is an ordered pull consumer: ephemeral, one per owned shard, with no
//! acknowledgements (the commit payload is the truth, not JetStream's consumer
//! state), recreated by the client when it notices a gap. Messages already waiting
//! are taken together into one writer call (at most [`MAX_CALL_BYTES`]), and the
//! call waits for the write-ahead log's fsync only (as the shipper's
//! `refresh=false`), so a busy shard moves at the index's speed.

use crate::fanout::ShardMode;
use crate::owners::{OnTake, Owners, OwnersConfig};
use crate::writer::Ack;
use crate::{Error, Indexer, Result};
use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use async_nats::jetstream::stream::Stream;
use axum::body::Bytes;
use futures::StreamExt;
use protocol::ingest_log::LogConfig;
use protocol::{shard, LogRecord};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Most NDJSON bytes taken into one writer call.
pub const MAX_CALL_BYTES: usize = 8 << 20;
/// Back-off after a failed consumer or writer call.
const RETRY: Duration = Duration::from_millis(500);

/// The record that carries a shard's stream position into the checkpoint.
pub fn position_record(shard: u32, seq: u64) -> LogRecord {
    serde_json::from_value(serde_json::json!({
        "ts": "1970-01-01T00:00:00Z",
        "host": "",
        "app": "",
        "task": "",
        "msg": "",
        "source": shard::position_source(shard),
        "offset": seq,
    }))
    .expect("a record with every required field")
}

/// Consumes `shard` into `idx` until `cancel` fires, starting after the committed
/// position and starting over (from the position fed so far) after any failure.
/// `caught_up` fires once everything the shard held when the consumer started is
/// committed here (searchable).
pub async fn consume(
    idx: Indexer,
    stream: Stream,
    shard: u32,
    cancel: CancellationToken,
    caught_up: oneshot::Sender<()>,
) {
    let mut fed: Option<u64> = None;
    let mut caught_up = Some(caught_up);
    while !cancel.is_cancelled() {
        match consume_once(&idx, &stream, shard, &mut fed, &mut caught_up, &cancel).await {
            Ok(()) => return,
            Err(e) => {
                warn!(shard, error = %e, "ingest log consumer failed, starting again");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = cancel.cancelled() => return,
                }
            }
        }
    }
}

async fn consume_once(
    idx: &Indexer,
    stream: &Stream,
    shard: u32,
    fed: &mut Option<u64>,
    caught_up: &mut Option<oneshot::Sender<()>>,
    cancel: &CancellationToken,
) -> Result<()> {
    let committed = idx.committed_offset(&shard::position_source(shard)).await?;
    // What this process fed is in the write-ahead log: durable, so past it too.
    let start = committed.max(*fed).map_or(1, |s| s + 1);
    info!(shard, start, "consuming shard from the ingest log");
    trimmed_before(idx, stream, shard, start).await;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: shard::subject(shard),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| Error::Shards(format!("cannot consume shard {shard}: {e}")))?;
    if consumer.cached_info().num_pending == 0 {
        // Nothing to replay: what this index holds of the shard is all there is.
        if let Some(tx) = caught_up.take() {
            let _ = tx.send(());
        }
    }
    let mut msgs = consumer
        .messages()
        .await
        .map_err(|e| Error::Shards(format!("cannot consume shard {shard}: {e}")))?;
    loop {
        let first = tokio::select! {
            m = msgs.next() => m,
            _ = cancel.cancelled() => return Ok(()),
        };
        let mut batch = vec![first];
        let mut bytes = 0;
        // Whatever is already here goes in the same call.
        while bytes < MAX_CALL_BYTES {
            match futures::FutureExt::now_or_never(msgs.next()) {
                Some(m) => {
                    if let Some(Ok(m)) = &m {
                        bytes += m.payload.len();
                    }
                    batch.push(m);
                }
                None => break,
            }
        }
        let mut body: Vec<u8> = Vec::with_capacity(bytes + 128);
        let mut last = None;
        let mut pending = u64::MAX;
        for m in batch {
            let m = match m {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(Error::Shards(format!("shard {shard} consumer: {e}"))),
                None => return Err(Error::Shards(format!("shard {shard} consumer ended"))),
            };
            let info = m
                .info()
                .map_err(|e| Error::Shards(format!("shard {shard}: message without info: {e}")))?;
            let seq = info.stream_sequence;
            pending = info.pending;
            // A message that does not decode is skipped (logged) rather than
            // stopping the shard for good; its position still moves past it.
            match protocol::decode_ndjson(&m.payload) {
                Ok(_) => {
                    body.extend_from_slice(&m.payload);
                    if !m.payload.ends_with(b"\n") {
                        body.push(b'\n');
                    }
                }
                Err(e) => {
                    warn!(shard, seq, error = %e, "undecodable message in the ingest log skipped")
                }
            }
            last = Some(seq);
        }
        let Some(seq) = last else { continue };
        body.extend_from_slice(&protocol::encode_ndjson(&[position_record(shard, seq)]));
        let records = protocol::decode_ndjson(&body)?;
        let n = records.len() - 1;
        // The batch that catches up waits for its commit, so that "ready" means
        // searchable; the others only for the write-ahead log.
        let catching_up = pending == 0 && caught_up.is_some();
        let ack = if catching_up {
            Ack::Committed(Some(Bytes::from(body)))
        } else {
            Ack::Logged(Bytes::from(body))
        };
        let resp = idx.ingest_with(records, ack).await?;
        if catching_up {
            if let Some(tx) = caught_up.take() {
                let _ = tx.send(());
            }
        }
        debug!(
            shard,
            seq,
            records = n,
            accepted = resp.accepted,
            "ingest log batch logged"
        );
        *fed = Some(seq);
    }
}

/// Says so when the log no longer holds everything from `start` on (a new owner
/// starts at 1): what its limits trimmed (see `protocol::ingest_log`). Past the
/// age limit that is older than the retention anyway; past a byte bound it is
/// records this owner cannot rebuild, logged as a warning and counted.
async fn trimmed_before(idx: &Indexer, stream: &Stream, shard: u32, start: u64) {
    let info = match stream.get_info().await {
        Ok(info) => info,
        Err(e) => {
            warn!(shard, error = %e, "cannot read the ingest log's state");
            return;
        }
    };
    let first = info.state.first_sequence;
    if start >= first {
        return;
    }
    if info.config.max_bytes > 0 {
        crate::metrics::Metrics::inc(&idx.metrics_handle().ingest_log_trimmed, 1);
        warn!(
            shard,
            start,
            first,
            max_bytes = info.config.max_bytes,
            "the ingest log's byte bound trimmed records past this shard's position: those of this shard are missing here"
        );
    } else {
        info!(
            shard,
            start, first, "records older than the ingest log's age limit were trimmed"
        );
    }
}

/// How long an indexer starting in shard mode waits for the ingest log.
const OPEN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Opens the ingest log, retrying for up to [`OPEN_PATIENCE`]: a NATS cluster
/// answers its health check before its JetStream has elected a meta leader, and an
/// indexer started beside it met "jetstream request timed out" and exited (seen in
/// tests/compose-scale). A wrong shard count or URL is not retried.
async fn open_patiently(log: &LogConfig) -> Result<async_nats::jetstream::stream::Stream> {
    let deadline = std::time::Instant::now() + OPEN_PATIENCE;
    let mut wait = std::time::Duration::from_millis(250);
    loop {
        match protocol::ingest_log::open(log).await {
            Ok((_, stream)) => return Ok(stream),
            Err(e) if e.starts_with("cannot ") && std::time::Instant::now() + wait < deadline => {
                warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "ingest log not ready; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(2));
            }
            Err(e) => return Err(Error::Shards(e)),
        }
    }
}

/// Turns `idx` into a shard owner: opens the ingest log (checking its shard
/// count), joins the owners in ZooKeeper, consumes every shard it takes until it
/// lets the shard go, and fans searches out. Returns the membership, whose
/// [`Owners::lost`] fires when the session is lost.
pub async fn start_shard_mode(
    idx: &Indexer,
    owners: OwnersConfig,
    log: LogConfig,
) -> Result<Arc<Owners>> {
    let stream = open_patiently(&log).await?;
    if let Some(max_bytes) = log.limits.and_then(|l| l.max_bytes) {
        warn!(
            max_bytes,
            "the ingest log is bounded in bytes: a new shard owner cannot rebuild records the bound trimmed"
        );
    }
    let ix = idx.clone();
    let on_take: OnTake = Box::new(move |shard, token, caught_up| {
        tokio::spawn(consume(ix.clone(), stream.clone(), shard, token, caught_up));
    });
    let owners = Owners::start(owners, on_take).await?;
    idx.set_shard_mode(Arc::new(ShardMode::new(
        owners.clone(),
        log.shards,
        idx.config().search_timeout,
        idx.config().commit_interval,
    )));
    Ok(owners)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_position_record_round_trips_as_ndjson() {
        let body = protocol::encode_ndjson(&[position_record(4, 77)]);
        let back = protocol::decode_ndjson(&body).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].source, shard::position_source(4));
        assert_eq!(back[0].offset, 77);
    }
}
