//! The scheduler's durable state: app definitions (and the names of the agents seen),
//! behind the [`StateStore`] trait, and its one implementation, [`FileStore`]: one
//! JSON file, `<data_dir>/scheduler/state.json`.
//!
//! The trait is what the rest of the control plane sees (load once at startup, save a
//! snapshot after each change), so another store (a replicated one, say) is one more
//! implementation, opened with `Scheduler::open_with_store`. The trade-off of saving
//! whole snapshots is that a store cannot write only what changed.
//!
//! The file is rewritten whole and atomically after each change (temp file, fsync,
//! rename, fsync of the directory), on a blocking thread. That is simple and can never
//! leave a half-written file behind; the trade-off is that every write costs a full
//! rewrite, which is fine for the hundreds of apps this is meant for and not for
//! millions. Tasks are deliberately not stored: the nodes report what they run, and the
//! scheduler re-learns (adopts) them from those heartbeats after a restart.
//!
//! Each app's past definitions (`GET /v2/apps/{id}/versions`) are kept here too, at
//! most [`crate::control::MAX_VERSIONS`] per app, so the history survives a restart. That
//! multiplies the file's size by up to that bound: a few MiB for a few hundred apps
//! with long histories. Should that grow into a problem, the versions move to one file
//! per app, written only when that app changes.

use crate::control::AppDef;
use crate::{Error, Result};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Version of the file layout, written into the file so a later layout can migrate it.
pub const FORMAT: u32 = 1;

/// What the state file holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    #[serde(default)]
    pub format: u32,
    #[serde(default)]
    pub apps: Vec<AppDef>,
    /// Agents that had registered: after a restart the scheduler waits (a bounded
    /// time) for them to report their tasks before it places new ones.
    #[serde(default)]
    pub agents: Vec<String>,
    /// Per app id, its kept definitions, oldest first (the current one included).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub versions: BTreeMap<String, Vec<AppDef>>,
    /// Agents drained by an operator: no task is placed on them until undrained.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drained: Vec<String>,
}

/// Where the control plane's state is kept.
pub trait StateStore: Send + Sync + std::fmt::Debug {
    /// Where the state lives, for logs and messages.
    fn location(&self) -> String;

    /// Reads the saved state; nothing saved yet is an empty state, and anything that
    /// cannot be read is an error (starting empty would silently forget every app).
    /// Called once, at startup.
    fn load(&self) -> Result<Saved>;

    /// Saves `saved`, the state at `generation`, unless a newer generation is saved
    /// already (snapshots can reach the store out of order); resolves once it is
    /// durable.
    fn save(&self, generation: u64, saved: Saved) -> BoxFuture<'_, Result<()>>;
}

/// The state file and the generation last written to it.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    /// Highest state generation on disk; writes of older snapshots are skipped, so
    /// concurrent writers can never put an older state over a newer one.
    written: tokio::sync::Mutex<u64>,
}

impl FileStore {
    pub fn new(path: impl Into<PathBuf>) -> FileStore {
        FileStore {
            path: path.into(),
            written: tokio::sync::Mutex::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file; a missing file is an empty state, a corrupt one is an error
    /// (starting empty would silently forget every app).
    pub fn load(&self) -> Result<Saved> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Saved::default()),
            Err(e) => return Err(Error::io(&self.path, e)),
        };
        let saved: Saved = serde_json::from_slice(&bytes).map_err(|e| {
            Error::io(
                &self.path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("corrupt scheduler state, expected the json written by sandtrail: {e}"),
                ),
            )
        })?;
        if saved.format > FORMAT {
            return Err(Error::io(
                &self.path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "state format {} is newer than this binary understands (at most {FORMAT})",
                        saved.format
                    ),
                ),
            ));
        }
        Ok(saved)
    }

    /// Writes `saved` (the state at `generation`) unless a newer generation is already
    /// on disk. Serialising (MiBs for a large state with its version histories) and
    /// the write with its fsyncs run on a blocking thread; the lock, held until that
    /// thread is done, keeps writes in generation order.
    pub async fn save(&self, generation: u64, mut saved: Saved) -> Result<()> {
        let mut written = self.written.lock().await;
        if generation <= *written {
            return Ok(());
        }
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            saved.format = FORMAT;
            let bytes = serde_json::to_vec_pretty(&saved)?;
            drop(saved);
            write_atomic(&path, &bytes)
        })
        .await
        .map_err(|e| Error::io(&self.path, std::io::Error::other(e)))??;
        *written = generation;
        Ok(())
    }
}

impl StateStore for FileStore {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn load(&self) -> Result<Saved> {
        FileStore::load(self)
    }

    fn save(&self, generation: u64, saved: Saved) -> BoxFuture<'_, Result<()>> {
        Box::pin(FileStore::save(self, generation, saved))
    }
}

/// Replaces `path` with `bytes` so that a crash at any point leaves either the old or
/// the new content: write a temp file beside it, fsync it, rename it over, fsync the
/// directory so the rename itself is durable.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    // Directory fsync is not supported everywhere (e.g. some network file systems);
    // the rename already happened, so a failure there only weakens durability.
    protocol::fs::AtomicWrite::new(path)
        .sync_dir(protocol::fs::SyncDir::BestEffort)
        .write(bytes)
        .map_err(|e| Error::io(e.path, e.source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(id: &str) -> AppDef {
        crate::control::appdef::parse_app(
            &serde_json::json!({
                "id": id,
                "cmd": "python3 -m http.server $PORT0",
                "instances": 3,
                "env": {"GREETING": "hej"},
                "cpus": 0.25,
                "mem": 64.0,
                "disk": 100.0,
                "portDefinitions": [{"port": 0, "name": "http"}],
                "labels": {"team": "search"},
            }),
            None,
            "2026-11-23T10:00:00.123Z".parse().unwrap(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn state_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("state.json"));
        assert_eq!(
            store.load().unwrap(),
            Saved::default(),
            "missing file is empty"
        );
        let saved = Saved {
            format: FORMAT,
            apps: vec![app("/fib"), app("/prod/fib")],
            agents: vec!["node-1".into()],
            versions: [("/fib".to_string(), vec![app("/fib")])].into(),
            drained: vec!["node-2".into()],
        };
        store.save(1, saved.clone()).await.unwrap();
        let back = FileStore::new(dir.path().join("state.json"))
            .load()
            .unwrap();
        assert_eq!(back, saved);
        assert!(
            !dir.path().join("state.json.tmp").exists(),
            "temp file renamed away"
        );
    }

    #[tokio::test]
    async fn an_older_generation_never_overwrites_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("state.json"));
        let newer = Saved {
            apps: vec![app("/new")],
            ..Saved::default()
        };
        store.save(2, newer).await.unwrap();
        let older = Saved {
            apps: vec![app("/old")],
            ..Saved::default()
        };
        store.save(1, older).await.unwrap();
        assert_eq!(store.load().unwrap().apps[0].id, "/new");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_saves_leave_the_newest_generation_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(FileStore::new(dir.path().join("state.json")));
        // Started newest-first and in between, so an older snapshot's write often
        // reaches the lock after a newer one's: it must then be skipped.
        let mut order: Vec<u64> = (1..=24).collect();
        order.reverse();
        order.rotate_left(7);
        let saves: Vec<_> = order
            .into_iter()
            .map(|g| {
                let store = std::sync::Arc::clone(&store);
                tokio::spawn(async move {
                    let saved = Saved {
                        apps: vec![app(&format!("/gen-{g}"))],
                        ..Saved::default()
                    };
                    store.save(g, saved).await
                })
            })
            .collect();
        for s in saves {
            s.await.unwrap().unwrap();
        }
        assert_eq!(store.load().unwrap().apps[0].id, "/gen-24");
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"{\"apps\": [").unwrap();
        let err = FileStore::new(&path).load().unwrap_err().to_string();
        assert!(
            err.contains("state.json") && err.contains("corrupt"),
            "{err}"
        );
    }
}
