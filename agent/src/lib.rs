//! The per-host shipper: follows every task sandbox's `stdout`/`stderr` and the
//! router's access log under a node's work dir, turns each line into a
//! [`protocol::LogRecord`] tagged with host, app, task and instance, and delivers the
//! records to the indexer in gzip NDJSON batches.
//!
//! Delivery is at-least-once with checkpoints that advance only after the indexer
//! acknowledged a batch as committed; the indexer skips records at or below the
//! committed offset of their source, which makes the whole path exactly-once. The
//! trade-off of this first version: while the indexer is unreachable the shipper
//! stops reading (back-pressure, at most about two batches ahead) instead of spooling
//! to disk, and files are identified by path rather than by content fingerprint (see
//! [`discover`] and [`tail`]). Nothing is lost either way, but a file rotated away
//! while the indexer is down is only read up to where it was when rotated.
//!
//! Modules: [`discover`] finds files and watches the work dir, [`tail`] reads them
//! into lines, [`parse`] turns lines into records, [`ship`] batches and delivers,
//! [`checkpoint`] remembers what was delivered.

pub mod checkpoint;
pub mod discover;
pub mod error;
pub mod metrics;
pub mod parse;
pub mod ship;
pub mod tail;

pub use error::{Error, Result};

use checkpoint::Checkpoints;
use discover::{Discovery, Wake};
use metrics::{inc, Metrics};
use ship::{Batch, Sender, Shipped};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tail::{RoundConfig, Tailed};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How the shipper runs. `Default` gives the documented defaults with an empty host
/// and work dir, which [`Shipper::new`] refuses: set at least those two.
#[derive(Debug, Clone)]
pub struct ShipperConfig {
    /// Agent name, e.g. `node-1`; part of every source id.
    pub host: String,
    /// The node's work dir; sandboxes are under `work_dir/sandboxes`, the router's
    /// access log at `work_dir/router/access.log`, our state in `work_dir/shipper`.
    pub work_dir: PathBuf,
    /// Base URL of the indexer, e.g. `http://127.0.0.1:7070`.
    pub indexer_url: String,
    /// Sent as `x-sandtrail-token`.
    pub token: Option<String>,
    /// A batch is sent once its NDJSON reaches this size...
    pub batch_max_bytes: usize,
    /// ...or once its first record is this old.
    pub batch_max_wait: Duration,
    /// Periodic rescan, the safety net under the file watcher.
    pub scan_interval: Duration,
    /// Longer lines are cut to this and flagged (`fields.truncated`), never dropped.
    pub max_line_bytes: usize,
}

impl Default for ShipperConfig {
    fn default() -> Self {
        ShipperConfig {
            host: String::new(),
            work_dir: PathBuf::new(),
            indexer_url: "http://127.0.0.1:7070".into(),
            token: None,
            batch_max_bytes: 1024 * 1024,
            batch_max_wait: Duration::from_millis(200),
            scan_interval: Duration::from_secs(1),
            max_line_bytes: 256 * 1024,
        }
    }
}

/// Handle to one host's shipper; cheap to clone (metrics are shared).
#[derive(Clone)]
pub struct Shipper {
    inner: Arc<Inner>,
}

struct Inner {
    config: ShipperConfig,
    sender: Sender,
    metrics: Arc<Metrics>,
    running: AtomicBool,
}

impl std::fmt::Debug for Shipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipper")
            .field("host", &self.inner.config.host)
            .field("work_dir", &self.inner.config.work_dir)
            .finish_non_exhaustive()
    }
}

impl Shipper {
    /// Checks the config and prepares the HTTP client; touches no files yet.
    pub fn new(config: ShipperConfig) -> Result<Shipper> {
        if config.host.trim().is_empty() {
            return Err(Error::Config(
                "host is empty, expected the agent name".into(),
            ));
        }
        if config.work_dir.as_os_str().is_empty() {
            return Err(Error::Config(
                "work_dir is empty, expected the node's work dir".into(),
            ));
        }
        match reqwest::Url::parse(&config.indexer_url) {
            Ok(u) if u.scheme() == "http" => {}
            Ok(u) => {
                return Err(Error::Config(format!(
                    "indexer_url {:?} uses {}, expected http:// (this build has no TLS)",
                    config.indexer_url,
                    u.scheme()
                )))
            }
            Err(e) => {
                return Err(Error::Config(format!(
                    "indexer_url {:?} is not a url ({e}), expected e.g. http://127.0.0.1:7070",
                    config.indexer_url
                )))
            }
        }
        for (name, v) in [
            ("batch_max_bytes", config.batch_max_bytes),
            ("max_line_bytes", config.max_line_bytes),
        ] {
            if v == 0 {
                return Err(Error::Config(format!(
                    "{name} is 0, expected a positive size"
                )));
            }
        }
        if config.scan_interval.is_zero() {
            return Err(Error::Config(
                "scan_interval is 0, expected a positive duration".into(),
            ));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(Error::Client)?;
        let metrics = Arc::new(Metrics::default());
        let sender = Sender::new(
            client,
            &config.indexer_url,
            config.token.as_deref(),
            config.host.clone(),
            metrics.clone(),
        )?;
        Ok(Shipper {
            inner: Arc::new(Inner {
                config,
                sender,
                metrics,
                running: AtomicBool::new(false),
            }),
        })
    }

    /// Ships until `cancel` fires; then makes one last attempt to deliver what it has
    /// read, saves its checkpoints and returns. Can be called again afterwards (it
    /// resumes from the checkpoints), but not twice at the same time.
    pub async fn run(&self, cancel: CancellationToken) -> Result<()> {
        if self.inner.running.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyRunning(self.inner.config.host.clone()));
        }
        struct Running<'a>(&'a AtomicBool);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        let _running = Running(&self.inner.running);
        Run::start(self.inner.clone(), cancel).await?.run().await
    }

    /// Prometheus text: lines and bytes read, batches sent/failed/rejected, retries,
    /// lag in bytes per file.
    pub fn metrics(&self) -> String {
        self.inner.metrics.render(&self.inner.config.host)
    }
}

/// What `select!` in the main loop woke up for.
enum Event {
    Cancelled,
    Wake(bool),
    Shipped(std::result::Result<Shipped, tokio::task::JoinError>),
    Timer,
}

/// The state of one `Shipper::run`: owned by a single task, so no locks.
struct Run {
    inner: Arc<Inner>,
    cancel: CancellationToken,
    checkpoint_path: PathBuf,
    /// Acknowledged positions; only `on_shipped` moves them.
    checkpoints: Checkpoints,
    /// A checkpoint advance that is not on disk yet (the last save failed).
    dirty: bool,
    /// `None` only while a scan runs on the blocking pool.
    discovery: Option<Discovery>,
    files: BTreeMap<String, Tailed>,
    next_start: usize,
    round: RoundConfig,
    batch: Batch,
    in_flight: Option<JoinHandle<Shipped>>,
    /// Every batch handed over so far was delivered completely. Once one was not
    /// (only on cancellation), later batches must not be sent: the indexer would
    /// commit their higher offsets and then skip the undelivered ones as duplicates.
    intact: bool,
}

impl Run {
    async fn start(inner: Arc<Inner>, cancel: CancellationToken) -> Result<Run> {
        let cfg = &inner.config;
        let state_dir = cfg.work_dir.join("shipper");
        tokio::fs::create_dir_all(&state_dir)
            .await
            .map_err(|e| Error::io(&state_dir, e))?;
        let checkpoint_path = state_dir.join("checkpoints.json");
        let path = checkpoint_path.clone();
        let checkpoints = tokio::task::spawn_blocking(move || load_checkpoints(&path)).await??;
        info!(
            host = %cfg.host,
            work_dir = %cfg.work_dir.display(),
            sources = checkpoints.files.len(),
            "shipper starting"
        );
        Ok(Run {
            round: RoundConfig {
                host: cfg.host.clone(),
                max_line_bytes: cfg.max_line_bytes,
                // About one batch per round keeps read-ahead bounded when delivery stalls.
                budget: cfg.batch_max_bytes.max(tail::CHUNK_BYTES),
            },
            discovery: Some(Discovery::new(cfg.host.clone(), cfg.work_dir.clone())),
            inner: inner.clone(),
            cancel,
            checkpoint_path,
            checkpoints,
            dirty: false,
            files: BTreeMap::new(),
            next_start: 0,
            batch: Batch::default(),
            in_flight: None,
            intact: true,
        })
    }

    async fn run(mut self) -> Result<()> {
        let cfg = self.inner.config.clone();
        let (_watcher, mut wakes) =
            match discover::watch(&cfg.work_dir, cfg.work_dir.join("shipper")) {
                Some((w, rx)) => (Some(w), Some(rx)),
                None => (None, None),
            };
        let mut rescan = true;
        let mut next_scan = Instant::now();
        while !self.cancel.is_cancelled() {
            if rescan || Instant::now() >= next_scan {
                self.scan().await?;
                rescan = false;
                next_scan = Instant::now() + cfg.scan_interval;
            }
            let more = self.read().await?;
            if self.cancel.is_cancelled() {
                break;
            }
            self.reap_finished().await?;
            if self.in_flight.is_none()
                && self
                    .batch
                    .started()
                    .is_some_and(|s| s.elapsed() >= cfg.batch_max_wait)
            {
                self.hand_over().await?;
            }
            self.update_lag();
            if more {
                continue;
            }
            let deadline = self.next_deadline(next_scan);
            match self.wait(&mut wakes, deadline).await {
                Event::Cancelled | Event::Timer => {}
                Event::Wake(r) => rescan |= r,
                Event::Shipped(shipped) => {
                    self.in_flight = None;
                    self.on_shipped(shipped?).await;
                }
            }
        }
        self.shutdown().await
    }

    async fn wait(&mut self, wakes: &mut Option<mpsc::Receiver<Wake>>, deadline: Instant) -> Event {
        let in_flight = &mut self.in_flight;
        tokio::select! {
            _ = self.cancel.cancelled() => Event::Cancelled,
            w = async {
                match wakes.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => match w {
                Some(w) => {
                    // Coalesce the burst that is already queued.
                    let mut rescan = w.rescan;
                    if let Some(rx) = wakes.as_mut() {
                        while let Ok(w) = rx.try_recv() {
                            rescan |= w.rescan;
                        }
                    }
                    Event::Wake(rescan)
                }
                None => {
                    *wakes = None;
                    Event::Timer
                }
            },
            r = async {
                match in_flight.as_mut() {
                    Some(h) => h.await,
                    None => std::future::pending().await,
                }
            } => Event::Shipped(r),
            _ = tokio::time::sleep_until(deadline.into()) => Event::Timer,
        }
    }

    /// The next moment something is due without any file event: a rescan, a batch
    /// reaching its age, an unfinished line reaching its flush timeout.
    fn next_deadline(&self, next_scan: Instant) -> Instant {
        let mut deadline = next_scan;
        if self.in_flight.is_none() {
            if let Some(s) = self.batch.started() {
                deadline = deadline.min(s + self.inner.config.batch_max_wait);
            }
        }
        for t in self.files.values() {
            if let Some(d) = t.partial_deadline() {
                deadline = deadline.min(d);
            }
        }
        deadline
    }

    async fn scan(&mut self) -> Result<()> {
        let mut discovery = self
            .discovery
            .take()
            .expect("discovery is back after every scan");
        let (discovery, found) = tokio::task::spawn_blocking(move || {
            let found = discovery.scan();
            (discovery, found)
        })
        .await?;
        self.discovery = Some(discovery);
        let now = Instant::now();
        for d in found {
            if self.files.contains_key(&d.base_source) {
                continue;
            }
            let (generation, offset) = self
                .checkpoints
                .latest_generation(&d.base_source)
                .unwrap_or((1, 0));
            info!(source = %d.base_source, path = %d.path.display(), generation, offset, "tailing file");
            self.files.insert(
                d.base_source.clone(),
                Tailed::new(d, generation, offset, now),
            );
        }
        Ok(())
    }

    /// One read round on the blocking pool; records go into the batch, full batches
    /// are handed over (waiting for the one in flight: that is the back-pressure).
    /// Returns whether there is more to read right away.
    async fn read(&mut self) -> Result<bool> {
        let mut files = std::mem::take(&mut self.files);
        let start = self.next_start;
        let cfg = self.round.clone();
        let metrics = self.inner.metrics.clone();
        let (files, round) = tokio::task::spawn_blocking(move || {
            let round = tail::read_round(&mut files, start, &cfg, &metrics);
            (files, round)
        })
        .await?;
        self.files = files;
        self.next_start = round.next_start;
        for rec in round.records {
            self.batch.push(rec);
            if self.batch.bytes() >= self.inner.config.batch_max_bytes {
                self.hand_over().await?;
                if self.cancel.is_cancelled() {
                    // Whatever is left is re-read from the checkpoints next time.
                    break;
                }
            }
        }
        Ok(round.more)
    }

    async fn reap_finished(&mut self) -> Result<()> {
        if self.in_flight.as_ref().is_some_and(|h| h.is_finished()) {
            let h = self.in_flight.take().expect("checked above");
            let shipped = h.await?;
            self.on_shipped(shipped).await;
        }
        Ok(())
    }

    /// Sends the current batch once the previous one is settled.
    async fn hand_over(&mut self) -> Result<()> {
        if let Some(h) = self.in_flight.take() {
            let shipped = h.await?;
            self.on_shipped(shipped).await;
        }
        if self.batch.is_empty() || !self.intact || self.cancel.is_cancelled() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let sender = self.inner.sender.clone();
        let cancel = self.cancel.clone();
        self.in_flight = Some(tokio::spawn(
            async move { sender.ship(batch, &cancel).await },
        ));
        Ok(())
    }

    /// Advances the checkpoints over what the indexer acknowledged and saves them.
    async fn on_shipped(&mut self, shipped: Shipped) {
        if !shipped.complete() {
            self.intact = false;
        }
        let mut moved = false;
        let mut newer_generations = BTreeSet::new();
        for e in &shipped.batch.entries()[..shipped.done] {
            moved |= self.checkpoints.advance(&e.source, &e.path, e.offset);
            let (base, generation) = checkpoint::split_generation(&e.source);
            if generation > 1 {
                newer_generations.insert((base.to_string(), generation));
            }
        }
        for (base, generation) in newer_generations {
            self.checkpoints.forget_older_generations(&base, generation);
        }
        if moved || self.dirty {
            self.dirty = true;
            if let Err(e) = self.save_checkpoints().await {
                inc(&self.inner.metrics.checkpoint_errors, 1);
                error!(path = %self.checkpoint_path.display(), error = %e, "cannot save checkpoints, will retry after the next batch");
            }
        }
        self.update_lag();
    }

    async fn save_checkpoints(&mut self) -> Result<()> {
        let mut cps = self.checkpoints.clone();
        let path = self.checkpoint_path.clone();
        let cps = tokio::task::spawn_blocking(move || {
            cps.prune_missing();
            cps.save(&path).map(|()| cps)
        })
        .await??;
        self.checkpoints = cps;
        self.dirty = false;
        Ok(())
    }

    fn update_lag(&self) {
        let lag: BTreeMap<String, u64> = self
            .files
            .values()
            .map(|t| {
                let done = self.checkpoints.offset(&t.source);
                (t.source.to_string(), t.file_len.saturating_sub(done))
            })
            .collect();
        *self
            .inner
            .metrics
            .lag
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = lag;
    }

    async fn shutdown(mut self) -> Result<()> {
        if let Some(h) = self.in_flight.take() {
            let shipped = h.await?;
            self.on_shipped(shipped).await;
        }
        if self.intact && !self.batch.is_empty() {
            // The token is cancelled, so this is exactly one more attempt.
            let batch = std::mem::take(&mut self.batch);
            let shipped = self.inner.sender.ship(batch, &self.cancel).await;
            self.on_shipped(shipped).await;
        }
        if self.dirty {
            self.save_checkpoints().await?;
        }
        info!(host = %self.inner.config.host, sources = self.checkpoints.files.len(), "shipper stopped");
        Ok(())
    }
}

/// Loads the checkpoints; a file that is not valid JSON (it cannot be torn, saves are
/// atomic, so someone edited it) is set aside and shipping starts over: the indexer
/// drops what it already has, so that costs bandwidth, not correctness.
fn load_checkpoints(path: &std::path::Path) -> Result<Checkpoints> {
    match Checkpoints::load(path) {
        Ok(c) => Ok(c),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::InvalidData => {
            let aside = path.with_extension("json.invalid");
            warn!(path = %path.display(), moved_to = %aside.display(), error = %source, "checkpoint file is not valid, starting over");
            std::fs::rename(path, &aside).map_err(|e| Error::io(path, e))?;
            Ok(Checkpoints::default())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_refuses_bad_config() {
        let ok = ShipperConfig {
            host: "node-1".into(),
            work_dir: "/tmp/x".into(),
            ..ShipperConfig::default()
        };
        assert!(Shipper::new(ok.clone()).is_ok());
        let cases = [
            (
                ShipperConfig {
                    host: " ".into(),
                    ..ok.clone()
                },
                "host",
            ),
            (
                ShipperConfig {
                    work_dir: PathBuf::new(),
                    ..ok.clone()
                },
                "work_dir",
            ),
            (
                ShipperConfig {
                    indexer_url: "nope".into(),
                    ..ok.clone()
                },
                "\"nope\"",
            ),
            (
                ShipperConfig {
                    indexer_url: "https://x".into(),
                    ..ok.clone()
                },
                "https",
            ),
            (
                ShipperConfig {
                    batch_max_bytes: 0,
                    ..ok.clone()
                },
                "batch_max_bytes",
            ),
            (
                ShipperConfig {
                    max_line_bytes: 0,
                    ..ok.clone()
                },
                "max_line_bytes",
            ),
            (
                ShipperConfig {
                    scan_interval: Duration::ZERO,
                    ..ok.clone()
                },
                "scan_interval",
            ),
            (
                ShipperConfig {
                    token: Some("a\nb".into()),
                    ..ok.clone()
                },
                "token",
            ),
        ];
        for (cfg, word) in cases {
            let err = Shipper::new(cfg).unwrap_err().to_string();
            assert!(err.contains(word), "{err} should name {word}");
        }
    }

    #[test]
    fn invalid_checkpoint_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoints.json");
        std::fs::write(&path, "{torn").unwrap();
        assert_eq!(load_checkpoints(&path).unwrap(), Checkpoints::default());
        assert!(path.with_extension("json.invalid").exists());
        std::fs::write(&path, r#"{"version":2,"files":{}}"#).unwrap();
        assert!(matches!(
            load_checkpoints(&path),
            Err(Error::CheckpointVersion { version: 2, .. })
        ));
    }

    #[tokio::test]
    async fn run_twice_at_once_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = Shipper::new(ShipperConfig {
            host: "h".into(),
            work_dir: dir.path().to_path_buf(),
            indexer_url: "http://127.0.0.1:9".into(),
            ..ShipperConfig::default()
        })
        .unwrap();
        let cancel = CancellationToken::new();
        let first = tokio::spawn({
            let s = s.clone();
            let c = cancel.clone();
            async move { s.run(c).await }
        });
        // Wait until the first run holds the flag.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !s.inner.running.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            s.run(cancel.clone()).await,
            Err(Error::AlreadyRunning(_))
        ));
        cancel.cancel();
        first.await.unwrap().unwrap();
        // And once it stopped, it can run again.
        s.run(cancel).await.unwrap();
    }
}
