//! Sandbox garbage collection: a finished task's sandbox is removed once its delay
//! has passed, nothing wrote into it for a while, and (with a shipper) its logs are
//! fully shipped.
//!
//! The finished mark is a file in the sandbox, so a restarted node collects what the
//! last one left; the trade-off is one sweep over every sandbox directory per pass.

use super::*;

/// Default of [`NodeConfig::gc_delay`]. Mesos keeps sandboxes a week by default; an
/// hour is enough for the shipper here, which reads them live.
pub const DEFAULT_GC_DELAY: Duration = Duration::from_secs(3600);

/// Written into a sandbox when its task has ended: its mtime starts the GC delay, and
/// it survives a node restart, so a restarted node collects what the last one left.
pub const FINISHED_FILE: &str = ".sandtrail-finished";

/// Marks a task's sandbox finished (see [`FINISHED_FILE`]); a sandbox that does not
/// exist (launch failed early) has nothing to collect.
pub(super) async fn mark_finished(sandbox: &Path) {
    if !tokio::fs::try_exists(sandbox).await.unwrap_or(false) {
        return;
    }
    let path = sandbox.join(FINISHED_FILE);
    // Never through a symlink the task left at the name: a plain write would
    // truncate whatever it points to, with the agent's privilege.
    let _ = tokio::fs::remove_file(&path).await;
    let made = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .await;
    let made = match made {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other.map(drop),
    };
    if let Err(e) = made {
        warn!(path = %path.display(), error = %e, "could not mark the sandbox finished; it will not be collected");
    }
}

/// A finished sandbox is collected only once nothing was written into it for this
/// long, whatever the delay: the task's logger may still drain its pipe after the
/// task ended, and a child the task left behind may still write (review finding:
/// with a delay of a second the sweep could remove files the logger still wrote).
pub(super) const GC_QUIET: Duration = Duration::from_secs(5);

/// Whether any file in `dir` was modified less than `quiet` before `now`.
pub(super) fn written_within(dir: &Path, now: std::time::SystemTime, quiet: Duration) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .any(|m| now.duration_since(m).unwrap_or_default() < quiet)
}

/// One GC pass over `root/<app>/<task>`.
#[derive(Debug, Default)]
pub(super) struct Swept {
    pub(super) removed: Vec<PathBuf>,
    /// The owner of each removed sandbox: its uid's claim can go with it.
    pub(super) owners: Vec<(PathBuf, u32)>,
    /// Past the delay but not fully shipped.
    pub(super) unshipped: usize,
}

/// Removes the sandboxes under `root` marked finished at least `delay` ago for which
/// `shipped` (if any) holds, then app directories left empty. Blocking.
pub(super) fn sweep_sandboxes(
    root: &Path,
    delay: Duration,
    shipped: Option<&(dyn Fn(&Path) -> bool + Send + Sync)>,
) -> Swept {
    let mut swept = Swept::default();
    let now = std::time::SystemTime::now();
    let dirs = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect()
    };
    for app in dirs(root) {
        for sandbox in dirs(&app) {
            let Ok(finished) =
                std::fs::metadata(sandbox.join(FINISHED_FILE)).and_then(|m| m.modified())
            else {
                continue;
            };
            if now.duration_since(finished).unwrap_or_default() < delay
                || written_within(&sandbox, now, GC_QUIET)
            {
                continue;
            }
            if shipped.is_some_and(|f| !f(&sandbox)) {
                swept.unshipped += 1;
                continue;
            }
            let owner = std::fs::symlink_metadata(&sandbox).map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.uid()
            });
            match std::fs::remove_dir_all(&sandbox) {
                Ok(()) => {
                    if let Ok(uid) = owner {
                        swept.owners.push((sandbox.clone(), uid));
                    }
                    swept.removed.push(sandbox)
                }
                Err(e) => {
                    warn!(sandbox = %sandbox.display(), error = %e, "could not remove a finished sandbox")
                }
            }
        }
        // Only an empty one goes; a launch re-creates it if it races with us.
        let _ = std::fs::remove_dir(&app);
    }
    swept
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    #[test]
    fn gc_removes_finished_sandboxes_past_the_delay_once_shipped() {
        let root = tempfile::tempdir().unwrap();
        let sandbox = |app: &str, task: &str, finished_secs_ago: Option<u64>| {
            let dir = root.path().join(app).join(task);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("stdout"), "line\n").unwrap();
            if let Some(ago) = finished_secs_ago {
                let when = std::time::SystemTime::now() - Duration::from_secs(ago);
                let f = File::create(dir.join(FINISHED_FILE)).unwrap();
                f.set_modified(when).unwrap();
                File::options()
                    .append(true)
                    .open(dir.join("stdout"))
                    .unwrap()
                    .set_modified(when)
                    .unwrap();
            }
            dir
        };
        let old = sandbox("fib", "fib.1", Some(120));
        let running = sandbox("fib", "fib.2", None);
        let fresh = sandbox("fib", "fib.3", Some(1));
        let unshipped = sandbox("web", "web.1", Some(120));
        let delay = Duration::from_secs(60);
        let asked = Mutex::new(Vec::new());
        let check = |dir: &Path| {
            asked.lock().unwrap().push(dir.to_path_buf());
            dir != unshipped
        };
        let swept = sweep_sandboxes(root.path(), delay, Some(&check));
        assert_eq!(swept.removed, vec![old.clone()]);
        assert_eq!(swept.unshipped, 1);
        assert!(!old.exists() && running.exists() && fresh.exists() && unshipped.exists());
        // Only sandboxes past their delay are put to the shipper.
        let mut asked = asked.into_inner().unwrap();
        asked.sort();
        assert_eq!(asked, vec![old, unshipped.clone()]);

        // Without a shipper in the process the delay alone decides; an app
        // directory left empty goes too.
        let swept = sweep_sandboxes(root.path(), delay, None);
        assert_eq!(swept.removed, vec![unshipped]);
        assert!(!root.path().join("web").exists());
        assert!(root.path().join("fib").exists());

        // A sandbox still being written to is left alone, however old its marker.
        let busy = sandbox("api", "api.1", Some(120));
        std::fs::write(busy.join("stderr"), "late line\n").unwrap();
        let swept = sweep_sandboxes(root.path(), delay, None);
        assert!(swept.removed.is_empty() && busy.exists(), "{swept:?}");
    }
}
