//! The per-host shipper: follows every task sandbox's `stdout`/`stderr` (and their
//! rotations `stdout.1`, `stdout.2`, ...) and the router's access log under a node's
//! work dir, turns each line into a [`protocol::LogRecord`] tagged with host, app,
//! task and instance, and delivers the records to the indexer in NDJSON batches
//! (plain to an indexer on the same host, zstd to any other, gzip on request).
//!
//! Delivery is at-least-once with checkpoints that advance only after the indexer
//! acknowledged a batch as durable (in its fsynced write-ahead log, see [`ship`]); the
//! indexer skips records at or below the committed offset of their source, which
//! makes the whole path exactly-once. Files are followed by identity, not by path
//! ([`fingerprint`]): a file renamed away or deleted is read to its end through its
//! open descriptor, a truncated one restarts under a fresh source id. While the
//! indexer is slow or unreachable, full batches go to a bounded disk [`spool`] and
//! reading goes on; at the bound the shipper stops reading (back-pressure, never
//! loss, `sandtrail_agent_reading_paused` says so) but keeps scanning. The trade-off:
//! every line waits up to the multiline flush timeout (default 500 ms) in case a
//! continuation follows.
//!
//! The task logger and the shipper work as one, so that a task logging as fast as it
//! can loses nothing silently (issue 14). The logger renames a full live file to the
//! next number (`stdout.<n>`, upwards, never reused, complete, never touched again)
//! and deletes nothing; the shipper follows every rotation it finds (the renamed live
//! file by identity, older ones from their checkpoint or, without one, from 0: they
//! were never shipped), reads older ones first, and deletes each once all of it is
//! acknowledged (unlink first, then its checkpoint entry, so a crash in between cannot
//! ship it twice). A rotated file that exists is therefore not shipped yet, which is
//! what the node's sandbox GC asks [`checkpoint::sandbox_shipped`]. The task's disk
//! budget (`log_budget_bytes` in `task.json`) is the shipper's to keep: past it the
//! oldest rotated files' unread bytes are dropped, each gap one record in the task's
//! stream and counted ([`budget`]); the logger blocks the task only at twice the
//! budget. Acknowledged here means acknowledged by the indexer or taken over by the
//! spool, which is durable and owns what it holds.
//!
//! Modules: [`discover`] finds files and watches the work dir, [`fingerprint`] tells
//! files apart, [`tail`] reads them into lines, [`multiline`] joins stack traces,
//! [`parse`] turns lines into records, [`budget`] decides what a full disk budget
//! drops, [`ship`] batches and delivers (or [`publish`] puts them into the JetStream
//! ingest log), [`checkpoint`] remembers what was delivered;
//! The `bench` module (feature `bench`) measures it (`sandtrail bench ship`).

pub mod bench;
pub mod budget;
pub mod checkpoint;
pub mod discover;
pub mod error;
pub mod fingerprint;
pub mod metrics;
pub mod multiline;
pub mod parse;
pub mod publish;
mod run;
pub mod ship;
pub mod spool;
pub mod tail;

pub use error::{Error, Result};

use checkpoint::Checkpoints;
use discover::{Discovery, SandboxLogs};
use fingerprint::FileId;
use metrics::{inc, Metrics};
use ship::{Batch, Sender, Shipped};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tail::{Released, RoundConfig, Tailed};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

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
    /// A rotated or deleted file is let go this long after it stopped growing.
    pub release_after: Duration,
    /// Multiline events (stack traces) are joined into one record, a held event
    /// shipped after this long without a continuation; `None` turns joining off.
    pub multiline_flush: Option<Duration>,
    /// Bound of the disk spool used while the indexer cannot keep up or is down
    /// (see [`spool`]); at the bound the shipper stops reading. 0 turns it off.
    pub spool_max_bytes: u64,
    /// How batches are compressed on the wire.
    pub compression: ship::Codec,
    /// Publish to this durable ingest log (NATS JetStream) instead of the indexer's
    /// API (see [`publish`]); `indexer_url` is then unused.
    pub ingest_log: Option<protocol::ingest_log::LogConfig>,
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
            release_after: tail::RELEASE_AFTER,
            multiline_flush: Some(multiline::FLUSH_AFTER),
            spool_max_bytes: 1 << 30,
            compression: ship::Codec::default(),
            ingest_log: None,
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
        let mut sender = Sender::new(
            client,
            &config.indexer_url,
            config.token.as_deref(),
            config.host.clone(),
            metrics.clone(),
            config.compression,
        )?;
        if let Some(log) = &config.ingest_log {
            sender = sender.with_log(publish::Publisher::new(
                log.clone(),
                config.host.clone(),
                metrics.clone(),
            )?);
        }
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
        run::Run::start(self.inner.clone(), cancel)
            .await?
            .run()
            .await
    }

    /// Prometheus text: lines and bytes read, batches sent/failed/rejected, retries,
    /// lag in bytes per file, back-pressure, log bytes on disk and dropped.
    pub fn metrics(&self) -> String {
        self.inner.metrics.render(&self.inner.config.host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::load_checkpoints;

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
        std::fs::write(&path, r#"{"version":3,"files":{}}"#).unwrap();
        assert!(matches!(
            load_checkpoints(&path),
            Err(Error::CheckpointVersion { version: 3, .. })
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
