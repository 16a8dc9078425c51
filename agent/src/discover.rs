//! Finding the files to ship: every task sandbox's `stdout`/`stderr` and their
//! rotations `stdout.<n>`/`stderr.<n>` under `work_dir/sandboxes/<app>/<task>/`
//! (tagged by its `task.json`), the router's `work_dir/router/access.log`, and a
//! filesystem watcher that wakes the shipper when something changes.
//!
//! Discovery is a plain directory scan (cheap: it reads `task.json` only for sandboxes
//! it has not seen yet, and lists each sandbox, a handful of entries), run on every
//! watcher event that can mean a new file and on a timer as the safety net for missed
//! events (inotify queue overflow, watch limits, filesystems without events). The
//! trade-off is latency of at most one scan interval when events are lost, in exchange
//! for not trusting the watcher for correctness.
//!
//! The task logger and the shipper work as one (ARCHITECTURE.md, "Delivery"): the
//! logger renames a full live file to the next number (`stdout.1`, `stdout.2`, ...
//! upwards, never reused, never touched again) and deletes nothing; the shipper reads
//! every rotated file, deletes it once all of it is acknowledged, and enforces the
//! task's disk budget (`log_budget_bytes` in `task.json`). So a name of the form
//! `<stream>.<digits>` in a sandbox is by contract a complete log file not yet
//! shipped: [`Discovered::rotation`] says so, and only such files are ever deleted.
//! Symlinks are never followed (a task must not make us read, or count, a file
//! outside its sandbox).
//!
//! Discovery names the *base* of a file's source (`host/app/task/stream`,
//! `host/router/access`), the same for a live file and its rotations: where it comes
//! from. Which file that is, and under which source id it is shipped, is decided by
//! `tail::resolve` from its identity (see `fingerprint`), so the live file renamed
//! to `stdout.3` keeps the source and position it had as `stdout`.

use crate::fingerprint::FileId;
use protocol::{Stream, TaskFile, TaskMeta};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
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
    /// `Some(n)` for a logger rotation `<stream>.<n>` in a sandbox: complete, and
    /// deleted once all of it is acknowledged.
    pub rotation: Option<u64>,
}

/// One log file of a sandbox as the scan saw it (`lstat`), for the disk budget.
#[derive(Debug, Clone, PartialEq)]
pub struct LogFile {
    pub path: PathBuf,
    pub stream: Stream,
    /// `None` for the live file.
    pub rotation: Option<u64>,
    pub size: u64,
    pub id: FileId,
    pub modified: Option<SystemTime>,
}

/// A sandbox's log files (live and rotated, both streams) and its budget.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxLogs {
    pub dir: PathBuf,
    /// `log_budget_bytes` of its `task.json`; `None`: no budget.
    pub budget: Option<u64>,
    pub files: Vec<LogFile>,
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// The files to follow; per stream the rotated files oldest first, then the live
    /// one, so that older lines are read first where the order is a choice.
    pub files: Vec<Discovered>,
    pub sandboxes: Vec<SandboxLogs>,
    /// Names of log files (or `task.json`) left out because they were symlinks, not
    /// regular files, or (`task.json`) not written by the node.
    pub refused: Vec<PathBuf>,
}

/// Scans a work dir, remembering the `task.json` of sandboxes already seen.
#[derive(Debug)]
pub struct Discovery {
    host: String,
    work_dir: PathBuf,
    metas: HashMap<PathBuf, (Arc<TaskMeta>, Option<u64>)>,
}

/// The number `n` if `name` is `<stream>.<n>`, a logger rotation of `stream`: the
/// logger's own rule ([`protocol::rotation::rotation_number`]), so both sides agree.
pub fn rotation_of(name: &str, stream: &str) -> Option<u64> {
    protocol::rotation::rotation_number(name.as_bytes(), stream)
}

/// Where the file `id` sits now among the rotations `<stream>.<n>` of the sandbox
/// `dir`, if it does: the live file renamed by the logger. Blocking.
pub fn find_rotation(dir: &Path, stream: &str, id: FileId) -> Option<(PathBuf, u64)> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let name = e.file_name();
        let Some(n) = rotation_of(&name.to_string_lossy(), stream) else {
            continue;
        };
        let path = e.path();
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_file() && FileId::of(&m).same(&id) => return Some((path, n)),
            _ => {}
        }
    }
    None
}

impl Discovery {
    pub fn new(host: impl Into<String>, work_dir: impl Into<PathBuf>) -> Discovery {
        Discovery {
            host: host.into(),
            work_dir: work_dir.into(),
            metas: HashMap::new(),
        }
    }

    /// Every file that exists now, and every sandbox's log files with their sizes.
    /// Blocking (reads directories and `task.json`): run it in `spawn_blocking`. A
    /// sandbox whose `task.json` is missing or not valid yet (the node may still be
    /// writing it) is left out and tried again next scan.
    pub fn scan(&mut self) -> Scan {
        let mut out = Scan::default();
        let access = self.work_dir.join("router").join("access.log");
        if access.is_file() {
            out.files.push(Discovered {
                base_source: format!("{}/router/access", self.host),
                path: access,
                kind: FileKind::Access,
                rotation: None,
            });
        }
        let mut seen = Vec::new();
        for app_dir in subdirs(&self.work_dir.join("sandboxes")) {
            for task_dir in subdirs(&app_dir) {
                let Some((meta, budget)) = self.meta(&task_dir, &mut out.refused) else {
                    continue;
                };
                seen.push(task_dir.clone());
                let app = file_name(&app_dir);
                let task = file_name(&task_dir);
                let logs = log_files(&task_dir, &mut out.refused);
                for stream in [Stream::Stdout, Stream::Stderr] {
                    let base_source = format!("{}/{app}/{task}/{}", self.host, stream.as_str());
                    for f in logs.iter().filter(|f| f.stream == stream) {
                        out.files.push(Discovered {
                            base_source: base_source.clone(),
                            path: f.path.clone(),
                            kind: FileKind::Sandbox {
                                meta: meta.clone(),
                                stream,
                            },
                            rotation: f.rotation,
                        });
                    }
                }
                out.sandboxes.push(SandboxLogs {
                    dir: task_dir,
                    budget,
                    files: logs,
                });
            }
        }
        self.metas.retain(|dir, _| seen.contains(dir));
        out
    }

    fn meta(
        &mut self,
        task_dir: &Path,
        refused: &mut Vec<PathBuf>,
    ) -> Option<(Arc<TaskMeta>, Option<u64>)> {
        if let Some(m) = self.metas.get(task_dir) {
            return Some(m.clone());
        }
        let path = task_dir.join("task.json");
        let bytes = match read_task_file(&path) {
            Ok(b) => b,
            Err(e) if crate::tail::is_refused(&e) => {
                refused.push(path);
                return None;
            }
            Err(_) => return None,
        };
        match serde_json::from_slice::<TaskFile>(&bytes) {
            Ok(file) => {
                let m = (Arc::new(file.meta), file.log_budget_bytes);
                self.metas.insert(task_dir.to_path_buf(), m.clone());
                Some(m)
            }
            Err(e) => {
                debug!(path = %path.display(), error = %e, "task.json not valid yet, retrying on the next scan");
                None
            }
        }
    }
}

/// Reads a sandbox's `task.json` only if the node wrote it: a regular file (no
/// symlink followed) owned by our own uid. The task owns its sandbox and could
/// otherwise swap in a `task.json` naming another app or host, and have its lines
/// filed under them. Blocking.
fn read_task_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let mut f = crate::tail::Opened::open(path)?.file;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if f.metadata()?.uid() != unsafe { libc::geteuid() } {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            crate::tail::Refused,
        ));
    }
    let mut out = Vec::new();
    f.read_to_end(&mut out)?;
    Ok(out)
}

/// The regular files `stdout`, `stderr`, `stdout.<n>`, `stderr.<n>` of a sandbox;
/// per stream the rotations in number order (oldest first), then the live file.
/// Symlinks and anything else are left out, their paths added to `refused`.
fn log_files(dir: &Path, refused: &mut Vec<PathBuf>) -> Vec<LogFile> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let Some((stream, rotation)) = [Stream::Stdout, Stream::Stderr].into_iter().find_map(|s| {
            if name == s.as_str() {
                Some((s, None))
            } else {
                rotation_of(&name, s.as_str()).map(|n| (s, Some(n)))
            }
        }) else {
            continue;
        };
        let path = e.path();
        let Ok(m) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !m.file_type().is_file() {
            refused.push(path);
            continue;
        }
        out.push(LogFile {
            path,
            stream,
            rotation,
            size: m.len(),
            id: FileId::of(&m),
            modified: m.modified().ok(),
        });
    }
    out.sort_by_key(|f| (f.stream.as_str(), f.rotation.unwrap_or(u64::MAX)));
    out
}

/// Deletes shipped logger rotations: each `(path, id)` is the file `id` last seen at
/// the rotation `path`. Only a regular file that is that very file, at a name of the
/// form `<stream>.<digits>`, is ever removed: at `path`, or wherever among the
/// sandbox's rotations it went (a logger that shifts names); one found nowhere is
/// already gone (`Ok(None)`). Each sandbox directory touched is fsynced afterwards,
/// so that the caller may drop the file's checkpoint entry: after a power loss a
/// deleted file must not come back without its entry. Blocking.
pub fn delete_rotations(files: &[(PathBuf, FileId)]) -> Vec<std::io::Result<Option<PathBuf>>> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut out: Vec<std::io::Result<Option<PathBuf>>> = files
        .iter()
        .map(|(path, id)| {
            let deleted = delete_rotation(path, *id)?;
            if let Some(dir) = deleted.as_ref().and_then(|p| p.parent()) {
                if !dirs.iter().any(|d| d == dir) {
                    dirs.push(dir.to_path_buf());
                }
            }
            Ok(deleted)
        })
        .collect();
    for dir in dirs {
        if let Err(e) = std::fs::File::open(&dir).and_then(|d| d.sync_all()) {
            // The entries must stay until the deletion is durable: report it as a
            // failure of every file of that directory, to be retried.
            for r in out.iter_mut() {
                if matches!(r, Ok(Some(p)) if p.parent() == Some(dir.as_path())) {
                    *r = Err(std::io::Error::new(e.kind(), e.to_string()));
                }
            }
        }
    }
    out
}

fn delete_rotation(path: &Path, id: FileId) -> std::io::Result<Option<PathBuf>> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(stream) = [Stream::Stdout, Stream::Stderr]
        .into_iter()
        .find(|s| rotation_of(&name, s.as_str()).is_some())
    else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} is not a log rotation, refusing to delete it",
                path.display()
            ),
        ));
    };
    let target = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() && FileId::of(&m).same(&id) => Some(path.to_path_buf()),
        Ok(_) => path
            .parent()
            .and_then(|dir| find_rotation(dir, stream.as_str(), id))
            .map(|(p, _)| p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => path
            .parent()
            .and_then(|dir| find_rotation(dir, stream.as_str(), id))
            .map(|(p, _)| p),
        Err(e) => return Err(e),
    };
    let Some(target) = target else {
        return Ok(None);
    };
    match std::fs::remove_file(&target) {
        Ok(()) => Ok(Some(target)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
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

/// The receiving end of [`watch`]: wake-ups, and a rescan request that survives a
/// full channel (a wake-up dropped because one is pending must not take its rescan
/// with it: the pending one may not carry it).
#[derive(Debug)]
pub struct Wakes {
    rx: mpsc::Receiver<Wake>,
    rescan: Arc<AtomicBool>,
}

impl Wakes {
    /// The next batch of file events: `Some(rescan)` (whether any of them can mean
    /// files appeared or went), `None` once the watcher is gone.
    pub async fn next(&mut self) -> Option<bool> {
        self.rx.recv().await?;
        // Coalesce the burst that is already queued.
        while self.rx.try_recv().is_ok() {}
        Some(self.rescan.swap(false, Ordering::Relaxed))
    }
}

/// Watches `work_dir` recursively and forwards wake-ups over a bounded channel.
/// Events under `ignore` (the shipper's own state dir) and our own reads are
/// filtered out, so writing a checkpoint does not wake the loop. When the channel
/// is full a wake-up is already pending, so the event is dropped rather than
/// blocking the watcher thread. `None` when the watcher cannot be set up (the
/// periodic rescan still works).
pub fn watch(work_dir: &Path, ignore: PathBuf) -> Option<(notify::RecommendedWatcher, Wakes)> {
    use notify::event::{AccessKind, AccessMode, EventKind};
    use notify::{RecursiveMode, Watcher};

    let (tx, rx) = mpsc::channel(64);
    let rescan = Arc::new(AtomicBool::new(false));
    let flag = rescan.clone();
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
        if wake.rescan {
            flag.store(true, Ordering::Relaxed);
        }
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
    Some((watcher, Wakes { rx, rescan }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_meta(dir: &Path, app: &str, task: &str) {
        write_task(dir, app, task, None);
    }

    fn write_task(dir: &Path, app: &str, task: &str, budget: Option<u64>) {
        let file = TaskFile {
            meta: TaskMeta {
                host: "node-1".into(),
                app: app.into(),
                task: task.into(),
                instance: 1,
                ports: vec![31000],
            },
            log_budget_bytes: budget,
        };
        std::fs::write(dir.join("task.json"), serde_json::to_vec(&file).unwrap()).unwrap();
    }

    fn bases(found: &Scan) -> Vec<&str> {
        found.files.iter().map(|f| f.base_source.as_str()).collect()
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
        assert_eq!(
            bases(&found),
            [
                "node-1/router/access",
                "node-1/fib/fib.1/stdout",
                "node-1/fib/fib.1/stderr"
            ]
        );
        match &found.files[2].kind {
            FileKind::Sandbox { meta, stream } => {
                assert_eq!(meta.task, "fib.1");
                assert_eq!(*stream, Stream::Stderr);
            }
            other => panic!("expected a sandbox file, got {other:?}"),
        }
        assert_eq!(found.sandboxes.len(), 1);
        assert_eq!(found.sandboxes[0].budget, None);

        // The pending sandbox is picked up once its task.json is complete.
        write_meta(&pending, "fib", "fib.2");
        let found = d.scan();
        assert!(found
            .files
            .iter()
            .any(|f| f.base_source == "node-1/fib/fib.2/stdout"));

        // A removed sandbox disappears, and its cached task.json with it.
        std::fs::remove_dir_all(&ok).unwrap();
        let found = d.scan();
        assert!(!found.files.iter().any(|f| f.base_source.contains("fib.1")));
        assert_eq!(d.metas.len(), 1);
    }

    /// Logger rotations are found with their number, oldest first and before the live
    /// file, under the live file's base; nothing else in the sandbox is (issue 14).
    #[test]
    fn finds_rotations_oldest_first_with_sizes_and_the_budget() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path();
        let dir = work.join("sandboxes/fib/fib.1");
        std::fs::create_dir_all(&dir).unwrap();
        write_task(&dir, "fib", "fib.1", Some(4096));
        for (name, body) in [
            ("stdout", "live\n"),
            ("stdout.10", "ten\n"),
            ("stdout.2", "two\n"),
            ("stdout.9", "nine\n"),
            ("stderr.1", "e\n"),
            // Not rotations of the logger.
            ("stdout.bak", "x"),
            ("stdout.1.gz", "x"),
            ("stdout.", "x"),
            ("stdoutx.1", "x"),
            ("access.log.1", "x"),
        ] {
            std::fs::write(dir.join(name), body).unwrap();
        }
        std::fs::create_dir(dir.join("stderr.2")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.join("stdout.11")).unwrap();
        let found = Discovery::new("node-1", work).scan();
        let got: Vec<(String, Option<u64>, &str)> = found
            .files
            .iter()
            .map(|f| (file_name(&f.path), f.rotation, f.base_source.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("stdout.2".into(), Some(2), "node-1/fib/fib.1/stdout"),
                ("stdout.9".into(), Some(9), "node-1/fib/fib.1/stdout"),
                ("stdout.10".into(), Some(10), "node-1/fib/fib.1/stdout"),
                ("stdout".into(), None, "node-1/fib/fib.1/stdout"),
                ("stderr.1".into(), Some(1), "node-1/fib/fib.1/stderr"),
            ]
        );
        let mut refused = found.refused.clone();
        refused.sort();
        assert_eq!(
            refused,
            [dir.join("stderr.2"), dir.join("stdout.11")],
            "a directory and a symlink at log names are reported"
        );
        let sb = &found.sandboxes[0];
        assert_eq!(sb.budget, Some(4096));
        let sizes: u64 = sb.files.iter().map(|f| f.size).sum();
        assert_eq!(sizes, 5 + 4 + 4 + 5 + 2);
        assert_eq!(rotation_of("stdout.7", "stdout"), Some(7));
        assert_eq!(
            rotation_of("stdout.007", "stdout"),
            None,
            "the logger never writes it"
        );
    }

    /// A task owns its sandbox: a `task.json` that is a symlink, or (as root, where
    /// tasks run as other users) one the agent did not write, would let it file its
    /// lines under another app or host. Such a sandbox is left out and reported.
    #[test]
    fn a_task_json_not_written_by_the_node_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path();
        let real = work.join("sandboxes/fib/fib.1");
        std::fs::create_dir_all(&real).unwrap();
        write_meta(&real, "billing", "billing.1");
        let linked = work.join("sandboxes/fib/fib.2");
        std::fs::create_dir_all(&linked).unwrap();
        std::os::unix::fs::symlink(real.join("task.json"), linked.join("task.json")).unwrap();
        std::fs::write(linked.join("stdout"), "forged\n").unwrap();
        let mut d = Discovery::new("node-1", work);
        let found = d.scan();
        assert!(found.files.iter().all(|f| !f.path.starts_with(&linked)));
        assert_eq!(found.refused, vec![linked.join("task.json")]);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let forged = work.join("sandboxes/fib/fib.3");
            std::fs::create_dir_all(&forged).unwrap();
            write_meta(&forged, "billing", "billing.1");
            std::os::unix::fs::chown(forged.join("task.json"), Some(65534), None).unwrap();
            let found = d.scan();
            assert!(found.files.iter().all(|f| !f.path.starts_with(&forged)));
            assert!(found.refused.contains(&forged.join("task.json")));
        }
    }

    /// Discovery never descends through a symlinked directory: an app or task
    /// directory that is a link leads outside the sandboxes.
    #[test]
    fn symlinked_app_and_task_dirs_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("work");
        let elsewhere = tmp.path().join("elsewhere");
        let outside_task = elsewhere.join("app/app.1");
        std::fs::create_dir_all(&outside_task).unwrap();
        write_meta(&outside_task, "app", "app.1");
        std::fs::write(outside_task.join("stdout"), "outside\n").unwrap();
        let real_app = work.join("sandboxes/real");
        std::fs::create_dir_all(&real_app).unwrap();
        std::os::unix::fs::symlink(elsewhere.join("app"), work.join("sandboxes/linked")).unwrap();
        std::os::unix::fs::symlink(&outside_task, real_app.join("real.1")).unwrap();
        let found = Discovery::new("node-1", &work).scan();
        assert!(found.files.is_empty(), "{:?}", found.files);
        assert!(found.sandboxes.is_empty());
    }

    #[test]
    fn deletes_only_the_same_file_at_a_rotation_name() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let id_of = |p: &Path| FileId::of(&std::fs::symlink_metadata(p).unwrap());
        std::fs::write(dir.join("stdout.1"), "a\n").unwrap();
        std::fs::write(dir.join("stdout.2"), "b\n").unwrap();
        std::fs::write(dir.join("stdout"), "live\n").unwrap();
        let one = id_of(&dir.join("stdout.1"));
        let two = id_of(&dir.join("stdout.2"));
        let live = id_of(&dir.join("stdout"));
        // A name that is not a rotation is refused, whatever the file.
        let r = delete_rotations(&[(dir.join("stdout"), live)]);
        assert!(r[0].is_err());
        assert!(dir.join("stdout").exists());
        // Another file at the name: not deleted (it is looked for elsewhere).
        let r = delete_rotations(&[(dir.join("stdout.1"), two)]);
        assert_eq!(r[0].as_ref().unwrap(), &Some(dir.join("stdout.2")));
        assert!(dir.join("stdout.1").exists());
        // Moved to another rotation name: found there by identity.
        std::fs::rename(dir.join("stdout.1"), dir.join("stdout.5")).unwrap();
        let r = delete_rotations(&[(dir.join("stdout.1"), one), (dir.join("stdout.3"), one)]);
        assert_eq!(r[0].as_ref().unwrap(), &Some(dir.join("stdout.5")));
        assert_eq!(r[1].as_ref().unwrap(), &None);
        assert!(!dir.join("stdout.5").exists());
        assert!(dir.join("stdout").exists());
    }

    #[test]
    fn missing_work_dir_is_empty() {
        let mut d = Discovery::new("h", "/nonexistent/sandtrail/work");
        let found = d.scan();
        assert!(found.files.is_empty() && found.sandboxes.is_empty());
    }
}
