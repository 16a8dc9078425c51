//! Finding the files to ship: every task sandbox's `stdout`/`stderr` under
//! `work_dir/sandboxes/<app>/<task>/` (tagged by its `task.json`) and the router's
//! `work_dir/router/access.log`, plus a filesystem watcher that wakes the shipper when
//! something changes.
//!
//! Discovery is a plain directory scan (cheap: it reads `task.json` only for sandboxes
//! it has not seen yet), run on every watcher event that can mean a new file and on a
//! timer as the safety net for missed events (inotify queue overflow, watch limits,
//! filesystems without events). The trade-off is latency of at most one scan interval
//! when events are lost, in exchange for not trusting the watcher for correctness.
//!
//! Discovery names the *base* of a file's source (`host/app/task/stream`,
//! `host/router/access`): where it lives. Which file that is, and under which source
//! id it is shipped, is decided by `tail::resolve` from its identity (see
//! `fingerprint`), so rotation, truncation and inode reuse do not depend on paths.

use protocol::{Stream, TaskMeta};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// What a file holds, and so how its lines become records.
#[derive(Debug, Clone, PartialEq)]
pub enum FileKind {
    /// A task's stdout or stderr.
    Sandbox { meta: Arc<TaskMeta>, stream: Stream },
    /// The router's access log: one JSON `LogRecord` per line.
    Access,
}

/// One file to tail.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovered {
    /// Where the file lives, `host/app/task/stream`; the source id is `base@<id>`.
    pub base_source: String,
    pub path: PathBuf,
    pub kind: FileKind,
}

/// Scans a work dir, remembering the `task.json` of sandboxes already seen.
#[derive(Debug)]
pub struct Discovery {
    host: String,
    work_dir: PathBuf,
    metas: HashMap<PathBuf, Arc<TaskMeta>>,
}

impl Discovery {
    pub fn new(host: impl Into<String>, work_dir: impl Into<PathBuf>) -> Discovery {
        Discovery {
            host: host.into(),
            work_dir: work_dir.into(),
            metas: HashMap::new(),
        }
    }

    /// Every file that exists now. Blocking (reads directories and `task.json`): run
    /// it in `spawn_blocking`. A sandbox whose `task.json` is missing or not valid yet
    /// (the node may still be writing it) is left out and tried again next scan.
    pub fn scan(&mut self) -> Vec<Discovered> {
        let mut out = Vec::new();
        let access = self.work_dir.join("router").join("access.log");
        if access.is_file() {
            out.push(Discovered {
                base_source: format!("{}/router/access", self.host),
                path: access,
                kind: FileKind::Access,
            });
        }
        let mut seen = Vec::new();
        for app_dir in subdirs(&self.work_dir.join("sandboxes")) {
            for task_dir in subdirs(&app_dir) {
                let Some(meta) = self.meta(&task_dir) else {
                    continue;
                };
                seen.push(task_dir.clone());
                let app = file_name(&app_dir);
                let task = file_name(&task_dir);
                for stream in [Stream::Stdout, Stream::Stderr] {
                    let path = task_dir.join(stream.as_str());
                    if path.is_file() {
                        out.push(Discovered {
                            base_source: format!("{}/{app}/{task}/{}", self.host, stream.as_str()),
                            path,
                            kind: FileKind::Sandbox {
                                meta: meta.clone(),
                                stream,
                            },
                        });
                    }
                }
            }
        }
        self.metas.retain(|dir, _| seen.contains(dir));
        out
    }

    fn meta(&mut self, task_dir: &Path) -> Option<Arc<TaskMeta>> {
        if let Some(m) = self.metas.get(task_dir) {
            return Some(m.clone());
        }
        let path = task_dir.join("task.json");
        let bytes = std::fs::read(&path).ok()?;
        match serde_json::from_slice::<TaskMeta>(&bytes) {
            Ok(meta) => {
                let meta = Arc::new(meta);
                self.metas.insert(task_dir.to_path_buf(), meta.clone());
                Some(meta)
            }
            Err(e) => {
                debug!(path = %path.display(), error = %e, "task.json not valid yet, retrying on the next scan");
                None
            }
        }
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A reason to run a round early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wake {
    /// Files may have appeared or gone: rescan before reading.
    pub rescan: bool,
}

/// Watches `work_dir` recursively and forwards wake-ups over a bounded channel.
/// Events under `ignore` (the shipper's own state dir) and our own reads are
/// filtered out, so writing a checkpoint does not wake the loop. When the channel
/// is full a wake-up is already pending, so the event is dropped rather than
/// blocking the watcher thread. `None` when the watcher cannot be set up (the
/// periodic rescan still works).
pub fn watch(
    work_dir: &Path,
    ignore: PathBuf,
) -> Option<(notify::RecommendedWatcher, mpsc::Receiver<Wake>)> {
    use notify::event::{AccessKind, AccessMode, EventKind};
    use notify::{RecursiveMode, Watcher};

    let (tx, rx) = mpsc::channel(64);
    let handler = move |res: notify::Result<notify::Event>| {
        let wake = match res {
            Ok(ev) => {
                if ev.paths.iter().all(|p| p.starts_with(&ignore)) && !ev.paths.is_empty() {
                    return;
                }
                match ev.kind {
                    EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                        Wake { rescan: false }
                    }
                    EventKind::Access(_) => return,
                    EventKind::Modify(notify::event::ModifyKind::Data(_)) => Wake { rescan: false },
                    _ => Wake { rescan: true },
                }
            }
            // Lost events (overflow): rescan to be safe.
            Err(_) => Wake { rescan: true },
        };
        let _ = tx.try_send(wake);
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "file watcher unavailable, relying on the periodic rescan");
            return None;
        }
    };
    if let Err(e) = watcher.watch(work_dir, RecursiveMode::Recursive) {
        warn!(work_dir = %work_dir.display(), error = %e, "cannot watch work dir, relying on the periodic rescan");
        return None;
    }
    Some((watcher, rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_meta(dir: &Path, app: &str, task: &str) {
        let meta = TaskMeta {
            host: "node-1".into(),
            app: app.into(),
            task: task.into(),
            instance: 1,
            ports: vec![31000],
        };
        std::fs::write(dir.join("task.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
    }

    #[test]
    fn finds_sandboxes_with_valid_task_json_and_the_access_log() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path();
        let ok = work.join("sandboxes/fib/fib.1");
        let pending = work.join("sandboxes/fib/fib.2");
        std::fs::create_dir_all(&ok).unwrap();
        std::fs::create_dir_all(&pending).unwrap();
        std::fs::create_dir_all(work.join("router")).unwrap();
        write_meta(&ok, "fib", "fib.1");
        std::fs::write(ok.join("stdout"), "").unwrap();
        std::fs::write(ok.join("stderr"), "").unwrap();
        std::fs::write(pending.join("stdout"), "").unwrap();
        std::fs::write(pending.join("task.json"), "{\"host\":").unwrap();
        std::fs::write(work.join("router/access.log"), "").unwrap();

        let mut d = Discovery::new("node-1", work);
        let found = d.scan();
        let sources: Vec<&str> = found.iter().map(|f| f.base_source.as_str()).collect();
        assert_eq!(
            sources,
            [
                "node-1/router/access",
                "node-1/fib/fib.1/stdout",
                "node-1/fib/fib.1/stderr"
            ]
        );
        match &found[2].kind {
            FileKind::Sandbox { meta, stream } => {
                assert_eq!(meta.task, "fib.1");
                assert_eq!(*stream, Stream::Stderr);
            }
            other => panic!("expected a sandbox file, got {other:?}"),
        }

        // The pending sandbox is picked up once its task.json is complete.
        write_meta(&pending, "fib", "fib.2");
        let found = d.scan();
        assert!(found
            .iter()
            .any(|f| f.base_source == "node-1/fib/fib.2/stdout"));

        // A removed sandbox disappears, and its cached task.json with it.
        std::fs::remove_dir_all(&ok).unwrap();
        let found = d.scan();
        assert!(!found.iter().any(|f| f.base_source.contains("fib.1")));
        assert_eq!(d.metas.len(), 1);
    }

    #[test]
    fn missing_work_dir_is_empty() {
        let mut d = Discovery::new("h", "/nonexistent/sandtrail/work");
        assert!(d.scan().is_empty());
    }
}
