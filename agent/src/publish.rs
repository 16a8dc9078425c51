//! Delivering batches to the durable ingest log (NATS JetStream) instead of an
//! indexer's HTTP API, when the agent is given `--ingest-log` (issue 21).
//!
//! A batch mixes sources; each source's records go, in order, to its shard's
//! subject `sandtrail.logs.<shard>` (`protocol::shard::shard_of`) as NDJSON
//! messages, the same lines `/api/v1/ingest` takes, cut below NATS's 1 MiB message
//! limit. Each message carries the id `<source>:<first>-<last offset>`, so a resend
//! after a lost acknowledgement is stored once (JetStream's duplicate window). The
//! checkpoint advances only once JetStream acknowledged every message of the batch.
//!
//! Order matters as it does over HTTP: the indexer drops records at or below a
//! source's highest offset, so a later message of a source must never be stored
//! before an earlier one. The messages of one source are therefore published one
//! after the other (the next only after the previous one's acknowledgement), while
//! different sources go at the same time. A failed source is retried from its first
//! unacknowledged message with jittered back-off until the batch is through or the
//! shipper is cancelled; what was acknowledged is not sent again within the batch,
//! and a cancelled batch is re-read after a restart (the indexer's dedup drops what
//! was stored already). Nothing is refused as poison here: JetStream takes any
//! NDJSON, and the consumer side skips a record it cannot decode.

use crate::metrics::{inc, Metrics};
use crate::ship::{Batch, Shipped};
use async_nats::jetstream;
use bytes::Bytes;
use protocol::ingest_log::LogConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A message's payload stays below this (NATS's default `max_payload` is 1 MiB and
/// the headers count too). One record is at most the shipper's 256 KiB line cap plus
/// its JSON, so it always fits.
pub const MAX_MESSAGE_BYTES: usize = 768 * 1024;

/// One message: records `lo..hi` of the batch, all of `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub subject: String,
    pub id: String,
    pub body: Bytes,
    pub records: usize,
}

/// Cuts `batch` into messages: per source (in order of first appearance), that
/// source's records in batch order, at most [`MAX_MESSAGE_BYTES`] each unless one
/// record alone is larger.
pub fn chunks(batch: &Batch, shards: u32) -> Vec<Vec<Chunk>> {
    let mut sources: Vec<(Arc<str>, Vec<usize>)> = Vec::new();
    for (i, e) in batch.entries().iter().enumerate() {
        match sources.iter_mut().find(|(s, _)| *s == e.source) {
            Some((_, idx)) => idx.push(i),
            None => sources.push((e.source.clone(), vec![i])),
        }
    }
    let entries = batch.entries();
    let line = |i: usize| {
        let start = if i == 0 { 0 } else { entries[i - 1].end() };
        &batch.body()[start..entries[i].end()]
    };
    sources
        .into_iter()
        .map(|(source, idx)| {
            let subject = protocol::shard::subject(protocol::shard::shard_of(&source, shards));
            let mut out = Vec::new();
            let mut body: Vec<u8> = Vec::new();
            let mut first = None;
            let mut last = 0;
            let mut n = 0;
            let mut flush =
                |body: &mut Vec<u8>, first: &mut Option<u64>, last: u64, n: &mut usize| {
                    if let Some(f) = first.take() {
                        out.push(Chunk {
                            subject: subject.clone(),
                            id: protocol::shard::message_id(&source, f, last),
                            body: Bytes::from(std::mem::take(body)),
                            records: std::mem::take(n),
                        });
                    }
                };
            for i in idx {
                let l = line(i);
                if !body.is_empty() && body.len() + l.len() > MAX_MESSAGE_BYTES {
                    flush(&mut body, &mut first, last, &mut n);
                }
                body.extend_from_slice(l);
                first.get_or_insert(entries[i].offset);
                last = entries[i].offset;
                n += 1;
            }
            flush(&mut body, &mut first, last, &mut n);
            out
        })
        .collect()
}

/// Publishes batches to the log; connects on first use and again after a failure.
pub struct Publisher {
    config: LogConfig,
    host: String,
    metrics: Arc<Metrics>,
    js: tokio::sync::Mutex<Option<jetstream::Context>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("urls", &self.config.urls)
            .field("shards", &self.config.shards)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    pub fn new(config: LogConfig, host: String, metrics: Arc<Metrics>) -> crate::Result<Publisher> {
        config.validate().map_err(crate::Error::Config)?;
        Ok(Publisher {
            config,
            host,
            metrics,
            js: Default::default(),
        })
    }

    async fn context(&self) -> Result<jetstream::Context, String> {
        let mut js = self.js.lock().await;
        if let Some(js) = js.as_ref() {
            return Ok(js.clone());
        }
        let (ctx, _) = protocol::ingest_log::open(&self.config).await?;
        info!(host = %self.host, urls = %self.config.urls, shards = self.config.shards, "publishing to the ingest log");
        Ok(js.insert(ctx).clone())
    }

    /// Publishes one source's messages from `next` on, in order; returns how many are
    /// acknowledged in all, and the error that stopped it, if any.
    async fn publish_source(
        js: &jetstream::Context,
        chunks: &[Chunk],
        mut next: usize,
    ) -> (usize, Option<String>) {
        while let Some(c) = chunks.get(next) {
            let sent = js
                .send_publish(
                    c.subject.clone(),
                    jetstream::message::PublishMessage::build()
                        .payload(c.body.clone())
                        .message_id(&c.id),
                )
                .await;
            let acked = match sent {
                Ok(ack) => ack.await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match acked {
                Ok(ack) => {
                    debug!(subject = %c.subject, id = %c.id, seq = ack.sequence, duplicate = ack.duplicate, "message stored");
                    next += 1;
                }
                Err(e) => {
                    return (
                        next,
                        Some(format!("publishing {} to {}: {e}", c.id, c.subject)),
                    )
                }
            }
        }
        (next, None)
    }

    /// Delivers `batch`; returns once all of it is acknowledged or, after one last
    /// attempt, once `cancel` fires (then nothing counts as done: a restart re-reads
    /// the batch and the indexer's dedup drops what was stored).
    pub async fn ship(&self, batch: Arc<Batch>, cancel: &CancellationToken) -> Shipped {
        let sources = chunks(&batch, self.config.shards);
        let mut done = vec![0usize; sources.len()];
        let mut backoff = FIRST_BACKOFF;
        loop {
            let error = match self.context().await {
                Ok(js) => {
                    let rounds = futures::future::join_all(
                        sources
                            .iter()
                            .zip(&done)
                            .map(|(chunks, &next)| Self::publish_source(&js, chunks, next)),
                    )
                    .await;
                    let mut error = None;
                    for (d, (next, e)) in done.iter_mut().zip(rounds) {
                        *d = next;
                        error = error.or(e);
                    }
                    error
                }
                Err(e) => Some(e),
            };
            let Some(error) = error else {
                let records = batch.len() as u64;
                inc(&self.metrics.batches_sent, 1);
                inc(&self.metrics.records_shipped, records);
                inc(&self.metrics.ndjson_bytes_sent, batch.bytes() as u64);
                inc(&self.metrics.wire_bytes_sent, batch.bytes() as u64);
                return Shipped {
                    done: batch.len(),
                    batch,
                };
            };
            inc(&self.metrics.batches_failed, 1);
            // A broken connection is made again on the next attempt.
            if error.starts_with("cannot") {
                self.js.lock().await.take();
            }
            if cancel.is_cancelled() {
                warn!(host = %self.host, error = %error, "batch not in the ingest log before shutdown, it will be re-read on restart");
                return Shipped { batch, done: 0 };
            }
            let wait = backoff.mul_f64(rand::random_range(0.5..=1.0));
            warn!(host = %self.host, error = %error, retry_in_ms = wait.as_millis() as u64, "batch not in the ingest log, retrying");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => {}
            }
            inc(&self.metrics.retries, 1);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ship::Encoded;
    use std::path::PathBuf;

    fn rec(source: &str, offset: u64, len: usize) -> Encoded {
        let mut line = format!("{{\"o\":{offset},\"pad\":\"").into_bytes();
        line.resize(line.len() + len, b'x');
        line.extend_from_slice(b"\"}\n");
        Encoded {
            line,
            source: source.into(),
            path: Arc::new(PathBuf::from("/x")),
            offset,
        }
    }

    #[test]
    fn chunks_keep_each_source_in_order_and_under_the_limit() {
        let mut b = Batch::default();
        for o in 0..6 {
            b.push(rec("a", o * 10, 300 * 1024));
            b.push(rec("b", o, 10));
        }
        let c = chunks(&b, 6);
        assert_eq!(c.len(), 2, "one list per source");
        let a = &c[0];
        assert!(a.len() >= 3, "a's 1.8 MB is cut: {}", a.len());
        assert!(a.iter().all(|m| m.body.len() <= MAX_MESSAGE_BYTES));
        assert_eq!(a[0].id, "a:0-10");
        assert_eq!(a.last().unwrap().id, "a:40-50");
        assert_eq!(a.iter().map(|m| m.records).sum::<usize>(), 6);
        let subject = protocol::shard::subject(protocol::shard::shard_of("a", 6));
        assert!(a.iter().all(|m| m.subject == subject));
        assert_eq!(c[1].len(), 1);
        assert_eq!(c[1][0].id, "b:0-5");
        let lines: Vec<&[u8]> = c[1][0].body.split_inclusive(|x| *x == b'\n').collect();
        assert_eq!(lines.len(), 6);
        assert!(lines[0].starts_with(b"{\"o\":0,") && lines[5].starts_with(b"{\"o\":5,"));
    }

    #[test]
    fn an_oversized_record_goes_alone() {
        let mut b = Batch::default();
        b.push(rec("a", 1, MAX_MESSAGE_BYTES + 10));
        b.push(rec("a", 2, 10));
        let c = chunks(&b, 6);
        assert_eq!(c[0].len(), 2);
        assert_eq!(c[0][0].id, "a:1-1");
        assert_eq!(c[0][1].id, "a:2-2");
    }
}
