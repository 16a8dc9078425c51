//! Batching records and delivering them to the indexer.
//!
//! A batch is NDJSON (one encoded record per line) sent as [`Codec`] says: by default
//! plain to an indexer on this host and zstd to any other (falling back to zstd if an
//! older local indexer refuses plain bodies), gzip for whatever only speaks gzip, to
//! `POST {indexer}/api/v1/ingest?refresh=false`. The indexer answers 200 once the
//! batch is durable, which with `refresh=false` means written to its fsynced
//! write-ahead log (replayed after a crash), not yet committed to Tantivy: the round
//! trip no longer includes a commit, so one batch at a time keeps up with a fast
//! task. An indexer that does not know the parameter answers after the commit as it
//! always did (`refresh=wait_for`, the default), which is durable too, so either
//! answer may move the checkpoints. The indexer skips records at or below the
//! committed offset of their source, so re-sending is
//! harmless but *skipping ahead* is not: if a later batch of a source were committed
//! before an earlier one, the earlier one would then be dropped as a duplicate. So
//! batches go strictly one after the other, and a batch is retried (jittered
//! exponential back-off, `Retry-After` honoured) until it is delivered or the shipper
//! is cancelled. Meanwhile the reader runs ahead by at most two full batches queued in
//! memory, then spills to the disk spool, then stops reading (back-pressure, never
//! loss).
//!
//! A 4xx other than 408/429 and the auth/routing ones (401, 403, 404, which a config
//! fix or a starting indexer cures) means the indexer considers the batch itself bad.
//! Retrying it forever would stall the host for good, so the batch is split in halves
//! and each half sent again, down to single records; a single record the indexer still
//! refuses is logged with the indexer's error, counted in the metrics and skipped. The
//! trade-off: one poison line is lost (visibly) instead of every line after it.

use crate::metrics::{inc, Metrics};
use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A `Retry-After` longer than this is not waited out in full.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// How long an attempt already under way may still take once we are cancelled.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Most of an error body kept for the log.
const ERROR_BODY_BYTES: usize = 1024;

/// zstd's level for batches: negative levels trade ratio for speed (see [`Codec`]).
const ZSTD_LEVEL: i32 = -3;

/// How batches are compressed. The indexer tells them apart by their first bytes
/// (zstd's or gzip's magic, or `{` for plain NDJSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    /// zstd unless the indexer is on this host ([`Codec::resolve`]): the default.
    #[default]
    Auto,
    /// zstd at its fast level -3: on log NDJSON its batches are about the size of
    /// gzip level 1's (what Filebeat sends by default) for a third of the CPU
    /// (BENCHMARKS.md). The shipper's CPU is what a busy host can least spare, and
    /// compression is the largest part of it.
    Zstd,
    /// gzip level 1, for proxies or indexers in between that only know gzip.
    Gzip,
    /// Plain NDJSON. Over loopback (an indexer on the same host, as under `up`)
    /// compressing saves no network and costs both sides CPU the indexing needs:
    /// in the pipeline benchmark zstd both ways was about a fifth of the transport's
    /// CPU (BENCHMARKS.md, issue 14). The price is a larger write-ahead log.
    None,
}

impl Codec {
    pub fn parse(s: &str) -> Option<Codec> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(Codec::Auto),
            "zstd" => Some(Codec::Zstd),
            "gzip" => Some(Codec::Gzip),
            "none" => Some(Codec::None),
            _ => None,
        }
    }

    /// What [`Codec::Auto`] means for an indexer at `url`: [`Codec::None`] when its
    /// host is a loopback address or `localhost`, [`Codec::Zstd`] otherwise. Other
    /// codecs are kept as chosen.
    pub fn resolve(self, url: &str) -> Codec {
        if self != Codec::Auto {
            return self;
        }
        let local = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_owned()))
            .is_some_and(|h| {
                h.eq_ignore_ascii_case("localhost")
                    || h.parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
        if local {
            Codec::None
        } else {
            Codec::Zstd
        }
    }

    /// The `Content-Encoding` header, if any.
    fn content_encoding(self) -> Option<&'static str> {
        match self {
            Codec::Auto | Codec::Zstd => Some("zstd"),
            Codec::Gzip => Some("gzip"),
            Codec::None => None,
        }
    }

    pub fn compress(self, data: &[u8]) -> Vec<u8> {
        match self {
            Codec::None => data.to_vec(),
            // `Auto` is resolved when the shipper starts; compressing as zstd keeps a
            // caller that skipped that on the safe side of the wire.
            Codec::Auto | Codec::Zstd => {
                // One context per blocking thread, reused: a fresh one per batch
                // allocates and clears its tables every time.
                thread_local! {
                    static ZSTD: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
                        const { std::cell::RefCell::new(None) };
                }
                ZSTD.with_borrow_mut(|cx| {
                    let cx = match cx {
                        Some(cx) => cx,
                        None => cx
                            .insert(zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("a zstd level")),
                    };
                    let mut out = cx.compress(data).expect("zstd into memory cannot fail");
                    // The output buffer is allocated at zstd's worst-case bound (about
                    // the input's size, four times what it holds here), and queued
                    // batches keep their compressed body until their turn.
                    out.shrink_to_fit();
                    out
                })
            }
            Codec::Gzip => {
                let mut enc =
                    GzEncoder::new(Vec::with_capacity(data.len() / 4 + 64), Compression::fast());
                enc.write_all(data).expect("writing to a Vec cannot fail");
                enc.finish().expect("writing to a Vec cannot fail")
            }
        }
    }
}

/// One record, encoded as an NDJSON line, and where it came from.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub line: Vec<u8>,
    pub source: Arc<str>,
    pub path: Arc<PathBuf>,
    pub offset: u64,
}

/// Where one record sits in a batch.
#[derive(Debug, Clone)]
pub struct Entry {
    /// End of its line in the body.
    end: usize,
    pub source: Arc<str>,
    pub path: Arc<PathBuf>,
    pub offset: u64,
}

impl Entry {
    /// End of its line in the body.
    pub fn end(&self) -> usize {
        self.end
    }
}

/// Records on their way to the indexer, in the order they were read.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    body: Vec<u8>,
    entries: Vec<Entry>,
    started: Option<Instant>,
    /// The whole body compressed, once something asked for it (see [`Batch::wire`]).
    wire: std::sync::OnceLock<(Codec, Bytes)>,
}

impl Batch {
    pub fn push(&mut self, e: Encoded) {
        self.wire.take();
        self.started.get_or_insert_with(Instant::now);
        self.body.extend_from_slice(&e.line);
        self.entries.push(Entry {
            end: self.body.len(),
            source: e.source,
            path: e.path,
            offset: e.offset,
        });
    }

    /// An empty batch whose body will not reallocate below `bytes` (growing a 1 MiB
    /// body by doubling copied every batch about once more).
    pub fn with_capacity(bytes: usize) -> Batch {
        Batch {
            body: Vec::with_capacity(bytes),
            ..Batch::default()
        }
    }

    /// Makes room for a body of `bytes` in all.
    pub fn reserve(&mut self, bytes: usize) {
        self.body.reserve(bytes.saturating_sub(self.body.len()));
    }

    /// Appends one record that `write` encodes straight into the body: it must
    /// append exactly one NDJSON line, newline included.
    pub fn push_with(
        &mut self,
        source: &Arc<str>,
        path: &Arc<PathBuf>,
        offset: u64,
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        self.wire.take();
        self.started.get_or_insert_with(Instant::now);
        write(&mut self.body);
        debug_assert_eq!(self.body.last(), Some(&b'\n'));
        self.entries.push(Entry {
            end: self.body.len(),
            source: source.clone(),
            path: path.clone(),
            offset,
        });
    }

    /// Appends records `lo..hi` of `other`, in order.
    pub fn append(&mut self, other: &Batch, lo: usize, hi: usize) {
        if lo >= hi {
            return;
        }
        self.wire.take();
        self.started.get_or_insert_with(Instant::now);
        let base = if lo == 0 {
            0
        } else {
            other.entries[lo - 1].end
        };
        let shift = self.body.len();
        self.body.extend_from_slice(other.slice(lo, hi));
        self.entries
            .extend(other.entries[lo..hi].iter().map(|e| Entry {
                end: e.end - base + shift,
                source: e.source.clone(),
                path: e.path.clone(),
                offset: e.offset,
            }));
    }

    /// Where a run of records starting at `lo` first holds at least `bytes` bytes
    /// (the end of that run, exclusive), or `len()` if all of them hold less.
    pub fn fill_to(&self, lo: usize, bytes: usize) -> usize {
        let base = if lo == 0 { 0 } else { self.entries[lo - 1].end };
        let rest = &self.entries[lo..];
        (lo + rest.partition_point(|e| e.end - base < bytes) + 1).min(self.len())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The (uncompressed) NDJSON body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Size of the (uncompressed) NDJSON body.
    pub fn bytes(&self) -> usize {
        self.body.len()
    }

    /// When the first record was added.
    pub fn started(&self) -> Option<Instant> {
        self.started
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The whole batch compressed with `codec`, computed once. The shipper calls
    /// this on the blocking pool for batches queued behind the one in flight, so a
    /// batch's turn starts with its POST: compressing inside the one-at-a-time send
    /// made every round trip longer by the compression time, the reader caught up,
    /// waited, and the core sat idle (BENCHMARKS.md). A second caller while the
    /// first computes waits for it instead of compressing again.
    pub fn wire(&self, codec: Codec) -> Bytes {
        let (c, body) = self
            .wire
            .get_or_init(|| (codec, Bytes::from(codec.compress(&self.body))));
        if *c == codec {
            body.clone()
        } else {
            Bytes::from(codec.compress(&self.body))
        }
    }

    /// The compressed body if [`Batch::wire`] already made it for `codec`.
    fn wire_if_ready(&self, codec: Codec) -> Option<Bytes> {
        self.wire
            .get()
            .filter(|(c, _)| *c == codec)
            .map(|(_, body)| body.clone())
    }

    /// NDJSON of records `lo..hi`.
    fn slice(&self, lo: usize, hi: usize) -> &[u8] {
        let start = if lo == 0 { 0 } else { self.entries[lo - 1].end };
        &self.body[start..self.entries[hi - 1].end]
    }
}

/// A batch back from delivery: its first `done` records were acknowledged (or
/// skipped as refused); the rest were not delivered because we were cancelled.
#[derive(Debug)]
pub struct Shipped {
    /// Shared with the shipper's copy kept for spilling, so nothing is cloned.
    pub batch: Arc<Batch>,
    pub done: usize,
}

impl Shipped {
    pub fn complete(&self) -> bool {
        self.done == self.batch.len()
    }
}

/// How one part of a batch ended.
enum Settled {
    Delivered { accepted: u64, duplicates: u64 },
    Refused { status: StatusCode, body: String },
    Cancelled,
}

/// Talks to the indexer.
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    ingest_url: String,
    headers: HeaderMap,
    host: String,
    metrics: Arc<Metrics>,
    /// The codec in use: [`Codec::Auto`] resolved for the indexer's address.
    codec: Codec,
    /// `codec` is plain NDJSON because of [`Codec::Auto`]: an indexer that refuses
    /// plain bodies (one from before they were accepted) gets zstd instead.
    auto_plain: bool,
    /// Set once an indexer refused a plain body; shared by the clones.
    plain_refused: Arc<std::sync::atomic::AtomicBool>,
    /// Batches go to the durable ingest log instead of the indexer's API.
    log: Option<Arc<crate::publish::Publisher>>,
}

impl Sender {
    pub fn new(
        client: reqwest::Client,
        indexer_url: &str,
        token: Option<&str>,
        host: String,
        metrics: Arc<Metrics>,
        codec: Codec,
    ) -> crate::Result<Sender> {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        let resolved = codec.resolve(indexer_url);
        if let Some(token) = token {
            let v = HeaderValue::from_str(token).map_err(|_| {
                crate::Error::Config(
                    "token contains characters not allowed in an http header".to_string(),
                )
            })?;
            headers.insert(protocol::TOKEN_HEADER, v);
        }
        Ok(Sender {
            client,
            ingest_url: format!(
                "{}/api/v1/ingest?refresh=false",
                indexer_url.trim_end_matches('/')
            ),
            headers,
            host,
            metrics,
            codec: resolved,
            auto_plain: codec == Codec::Auto && resolved == Codec::None,
            plain_refused: Default::default(),
            log: None,
        })
    }

    /// Sends every batch to the ingest log through `publisher` instead (as plain
    /// NDJSON: the messages are the body `/api/v1/ingest` would take).
    pub fn with_log(mut self, publisher: crate::publish::Publisher) -> Sender {
        self.log = Some(Arc::new(publisher));
        self.codec = Codec::None;
        self.auto_plain = false;
        self
    }

    /// The codec batches are sent with now.
    pub fn codec(&self) -> Codec {
        if self.auto_plain
            && self
                .plain_refused
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            Codec::Zstd
        } else {
            self.codec
        }
    }

    /// Whether a refusal means "this indexer does not take plain NDJSON" (an indexer
    /// from before it did answers 400 naming gzip and zstd), rather than a bad record.
    fn refuses_plain(&self, codec: Codec, status: StatusCode, body: &str) -> bool {
        self.auto_plain
            && codec == Codec::None
            && (status == StatusCode::UNSUPPORTED_MEDIA_TYPE
                || (status == StatusCode::BAD_REQUEST && body.contains("gzip nor zstd")))
    }

    /// Delivers `batch`, splitting what the indexer refuses as bad. Returns once
    /// everything is delivered or skipped, or once `cancel` fires; a cancelled call
    /// still makes (or finishes) one attempt, so calling it with an already
    /// cancelled token is "one last try".
    pub async fn ship(&self, batch: Arc<Batch>, cancel: &CancellationToken) -> Shipped {
        if let Some(log) = &self.log {
            return log.ship(batch, cancel).await;
        }
        let mut done = 0;
        // Pending ranges, in order.
        let mut parts = vec![(0, batch.len())];
        while let Some((lo, hi)) = parts.pop() {
            if lo == hi {
                continue;
            }
            match self.settle(&batch, lo, hi, cancel).await {
                Settled::Delivered {
                    accepted,
                    duplicates,
                } => {
                    inc(&self.metrics.batches_sent, 1);
                    inc(&self.metrics.records_shipped, (hi - lo) as u64);
                    debug!(records = hi - lo, accepted, duplicates, "batch delivered");
                    done = hi;
                }
                Settled::Refused { status, body } if hi - lo > 1 => {
                    inc(&self.metrics.batches_rejected, 1);
                    warn!(records = hi - lo, status = status.as_u16(), error = %body, "indexer refused the batch, splitting it to isolate the bad record");
                    let mid = lo + (hi - lo) / 2;
                    parts.push((mid, hi));
                    parts.push((lo, mid));
                }
                Settled::Refused { status, body } => {
                    inc(&self.metrics.batches_rejected, 1);
                    inc(&self.metrics.records_rejected, 1);
                    let e = &batch.entries[lo];
                    error!(source = %e.source, offset = e.offset, status = status.as_u16(), error = %body, "indexer refused a record, skipping it");
                    done = hi;
                }
                Settled::Cancelled => break,
            }
        }
        Shipped { batch, done }
    }

    /// Sends records `lo..hi` until the indexer accepts or refuses them, or `cancel`.
    /// A refusal of plain NDJSON chosen by [`Codec::Auto`] switches this sender to
    /// zstd and sends again: it is the format, not the records, being refused.
    async fn settle(
        &self,
        batch: &Arc<Batch>,
        lo: usize,
        hi: usize,
        cancel: &CancellationToken,
    ) -> Settled {
        let codec = self.codec();
        match self.settle_as(batch, lo, hi, cancel, codec).await {
            Settled::Refused { status, body } if self.refuses_plain(codec, status, &body) => {
                if !self
                    .plain_refused
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    warn!(host = %self.host, url = %self.ingest_url, status = status.as_u16(), error = %body, "the indexer does not take plain NDJSON, sending zstd from now on");
                }
                self.settle_as(batch, lo, hi, cancel, Codec::Zstd).await
            }
            other => other,
        }
    }

    async fn settle_as(
        &self,
        batch: &Arc<Batch>,
        lo: usize,
        hi: usize,
        cancel: &CancellationToken,
        codec: Codec,
    ) -> Settled {
        let b = batch.clone();
        let whole = lo == 0 && hi == batch.len();
        // Queued batches were compressed by the reader already: no trip to the pool.
        let ready = whole.then(|| batch.wire_if_ready(codec)).flatten();
        let body = match ready {
            Some(body) => Ok(body),
            None => {
                tokio::task::spawn_blocking(move || {
                    if whole {
                        b.wire(codec)
                    } else {
                        Bytes::from(codec.compress(b.slice(lo, hi)))
                    }
                })
                .await
            }
        };
        let body = match body {
            Ok(body) => body,
            Err(e) => {
                // Only a panic in the encoder gets here; treat it as a refusal so the
                // shipper neither spins nor dies.
                return Settled::Refused {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    body: format!("compressing the batch failed: {e}"),
                };
            }
        };
        let mut backoff = FIRST_BACKOFF;
        loop {
            let attempt = self.attempt(body.clone(), codec);
            tokio::pin!(attempt);
            let outcome = tokio::select! {
                r = &mut attempt => r,
                _ = cancel.cancelled() => match tokio::time::timeout(SHUTDOWN_GRACE, &mut attempt).await {
                    Ok(r) => r,
                    Err(_) => Attempt::Retry { reason: "cancelled while waiting for the indexer".into(), retry_after: None },
                },
            };
            let (reason, retry_after) = match outcome {
                Attempt::Delivered {
                    accepted,
                    duplicates,
                } => {
                    inc(
                        &self.metrics.ndjson_bytes_sent,
                        batch.slice(lo, hi).len() as u64,
                    );
                    inc(&self.metrics.wire_bytes_sent, body.len() as u64);
                    return Settled::Delivered {
                        accepted,
                        duplicates,
                    };
                }
                Attempt::Refused { status, body } => return Settled::Refused { status, body },
                Attempt::Retry {
                    reason,
                    retry_after,
                } => (reason, retry_after),
            };
            inc(&self.metrics.batches_failed, 1);
            if cancel.is_cancelled() {
                warn!(host = %self.host, url = %self.ingest_url, error = %reason, "batch not delivered before shutdown, it will be re-read on restart");
                return Settled::Cancelled;
            }
            let jittered = backoff.mul_f64(rand::random_range(0.5..=1.0));
            let wait = retry_after
                .map(|r| r.min(MAX_RETRY_AFTER).max(jittered))
                .unwrap_or(jittered);
            warn!(host = %self.host, url = %self.ingest_url, error = %reason, retry_in_ms = wait.as_millis() as u64, "batch not delivered, retrying");
            // Cancellation cuts the wait short for one last attempt.
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => {}
            }
            inc(&self.metrics.retries, 1);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn attempt(&self, body: Bytes, codec: Codec) -> Attempt {
        let mut headers = self.headers.clone();
        if let Some(encoding) = codec.content_encoding() {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static(encoding));
        }
        let resp = match self
            .client
            .post(&self.ingest_url)
            .headers(headers)
            .body(body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Retry {
                    reason: e.to_string(),
                    retry_after: None,
                }
            }
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        if status.is_success() {
            return match resp.json::<protocol::IngestResponse>().await {
                Ok(r) => Attempt::Delivered {
                    accepted: r.accepted,
                    duplicates: r.duplicates,
                },
                // The status is the durability acknowledgement; an odd body does not undo it.
                Err(e) => {
                    warn!(url = %self.ingest_url, error = %e, "indexer acknowledged with an unexpected body");
                    Attempt::Delivered {
                        accepted: 0,
                        duplicates: 0,
                    }
                }
            };
        }
        let body = resp.text().await.unwrap_or_default();
        let body = cut(body, ERROR_BODY_BYTES);
        if retryable(status) {
            Attempt::Retry {
                reason: format!("indexer answered {status}: {body}"),
                retry_after,
            }
        } else {
            Attempt::Refused { status, body }
        }
    }
}

enum Attempt {
    Delivered {
        accepted: u64,
        duplicates: u64,
    },
    Refused {
        status: StatusCode,
        body: String,
    },
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
}

/// Whether a non-2xx answer means "try again later" rather than "this batch is bad".
fn retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS
                | StatusCode::REQUEST_TIMEOUT
                | StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
                | StatusCode::NOT_FOUND
        )
        || !status.is_client_error()
}

fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn enc(line: &str, offset: u64) -> Encoded {
        Encoded {
            line: format!("{line}\n").into_bytes(),
            source: "s".into(),
            path: Arc::new("p".into()),
            offset,
        }
    }

    #[test]
    fn batch_slices_are_whole_lines() {
        let mut b = Batch::default();
        assert!(b.is_empty() && b.started().is_none());
        b.push(enc("a", 2));
        b.push(enc("bb", 5));
        b.push(enc("ccc", 9));
        assert_eq!(b.bytes(), 2 + 3 + 4);
        assert_eq!(b.slice(0, 3), b"a\nbb\nccc\n");
        assert_eq!(b.slice(1, 2), b"bb\n");
        assert_eq!(b.slice(2, 3), b"ccc\n");
        assert!(b.started().is_some());
    }

    #[test]
    fn wire_body_is_the_whole_batch_and_follows_later_appends() {
        let mut b = Batch::default();
        b.push(enc("a", 2));
        let first = b.wire(Codec::Zstd);
        assert_eq!(zstd::decode_all(&first[..]).unwrap(), b"a\n");
        // Kept: the same bytes, not compressed again.
        assert_eq!(b.wire(Codec::Zstd).as_ptr(), first.as_ptr());
        // A codec other than the kept one still gets its own encoding.
        let mut gz = Vec::new();
        flate2::read::GzDecoder::new(&b.wire(Codec::Gzip)[..])
            .read_to_end(&mut gz)
            .unwrap();
        assert_eq!(gz, b"a\n");
        // Appending after the body was compressed must not send the stale body.
        b.push(enc("bb", 5));
        let mut other = Batch::default();
        other.push(enc("ccc", 9));
        b.append(&other, 0, 1);
        assert_eq!(
            zstd::decode_all(&b.wire(Codec::Zstd)[..]).unwrap(),
            b"a\nbb\nccc\n"
        );
    }

    #[test]
    fn both_codecs_round_trip() {
        let data = b"{\"x\":1}\n".repeat(100);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&Codec::Gzip.compress(&data)[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
        assert_eq!(
            zstd::decode_all(&Codec::Zstd.compress(&data)[..]).unwrap(),
            data
        );
        assert_eq!(Codec::parse(" ZSTD "), Some(Codec::Zstd));
        assert_eq!(Codec::parse("gzip"), Some(Codec::Gzip));
        assert_eq!(Codec::parse("lz4"), None);
        assert_eq!(Codec::None.compress(&data), data);
        assert_eq!(Codec::parse("none"), Some(Codec::None));
        assert_eq!(Codec::parse("auto"), Some(Codec::Auto));
    }

    #[test]
    fn auto_sends_plain_to_an_indexer_on_this_host_and_zstd_elsewhere() {
        for url in [
            "http://127.0.0.1:7070",
            "http://127.9.9.9:7070",
            "http://localhost:7070",
            "http://[::1]:7070",
        ] {
            assert_eq!(Codec::Auto.resolve(url), Codec::None, "{url}");
        }
        for url in ["http://10.0.0.5:7070", "http://indexer:7070", "nonsense"] {
            assert_eq!(Codec::Auto.resolve(url), Codec::Zstd, "{url}");
        }
        // A codec chosen in the config is kept wherever the indexer is.
        assert_eq!(Codec::Zstd.resolve("http://127.0.0.1:1"), Codec::Zstd);
        assert_eq!(Codec::Gzip.resolve("http://127.0.0.1:1"), Codec::Gzip);
        assert_eq!(Codec::None.resolve("http://10.0.0.5:1"), Codec::None);
        assert_eq!(Codec::Auto.content_encoding(), Some("zstd"));
        assert_eq!(Codec::None.content_encoding(), None);
    }

    #[test]
    fn which_statuses_are_retried() {
        for s in [500, 502, 503, 429, 408, 401, 403, 404] {
            assert!(retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [400, 413, 415, 422] {
            assert!(!retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }

    #[test]
    fn cut_keeps_char_boundaries() {
        assert_eq!(cut("ééé".into(), 3), "é…");
        assert_eq!(cut("abc".into(), 3), "abc");
    }
}
