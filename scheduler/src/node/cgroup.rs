//! Memory limits for tasks through cgroup v2, where the host offers them.
//!
//! When a node starts it works out whether it may create child cgroups with the
//! memory controller ([`MemoryLimits::detect`]): a cgroup2 mount (found in
//! `/proc/self/mountinfo`, so the `unified` mount of a hybrid v1/v2 host is seen too),
//! the memory controller available in it, and a parent cgroup we may write. Each task
//! then runs in `<parent>/sandtrail/<task>` with `memory.max` set to its app's `mem`,
//! no swap, and `memory.oom.group` so an OOM kill ends the task as a whole, the way a
//! Mesos container ends. Where any of that is missing the node says why once and runs
//! tasks unlimited: a node that refused to run tasks on such hosts would be worse.
//!
//! The parent is a configured cgroup (e.g. one a systemd unit gets with
//! `Delegate=yes`, as Nomad and containerd expect) or else the node's own cgroup.
//! cgroup v2's "no internal processes" rule lets a non-root cgroup hand the memory
//! controller to its children only while it holds no processes itself; when the node
//! is the only process in its own cgroup it first moves itself into a leaf
//! `sandtrail-agent`, as dockerd's dind script and nsjail do with their init. A cgroup
//! shared with other processes is not emptied behind their back: that host gets the
//! "unavailable" report naming the fix.
//!
//! A task joins its cgroup between fork and exec (a write of `0` to the cgroup's
//! `cgroup.procs`, opened before the fork), so nothing it allocates escapes the limit
//! and the per-task logger, forked earlier from the node, stays outside it. The
//! trade-off: the node must spawn tasks with fork rather than `posix_spawn`, a little
//! slower for a large node process.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::info;

/// The directory under the parent cgroup that holds one cgroup per task.
pub const TASKS_CGROUP: &str = "sandtrail";
/// The leaf a node moves itself into when its own cgroup is the parent.
pub const AGENT_LEAF: &str = "sandtrail-agent";
/// How long removing a task's cgroup waits for its last processes to exit.
const REMOVE_WAIT: Duration = Duration::from_secs(5);

/// Whether this node enforces memory limits, and where or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryLimits {
    /// Task cgroups are created in `base`, which has the memory controller enabled
    /// for its children.
    Enforced { base: PathBuf },
    /// Tasks run unlimited, for this reason.
    Unavailable { reason: String },
}

impl MemoryLimits {
    /// Looks at this host (as root or not, in a container or not) and prepares the
    /// task cgroups' parent: `parent` is a cgroup path as `/proc/self/cgroup` shows it
    /// (e.g. `/sandtrail.slice`), `None` for the node's own cgroup. Blocking.
    pub fn detect(parent: Option<&str>) -> MemoryLimits {
        let unavailable = |reason: String| MemoryLimits::Unavailable { reason };
        let mountinfo = match std::fs::read_to_string("/proc/self/mountinfo") {
            Ok(m) => m,
            Err(e) => return unavailable(format!("cannot read /proc/self/mountinfo: {e}")),
        };
        let Some(mount) = find_cgroup2_mount(&mountinfo) else {
            return unavailable("no cgroup2 filesystem is mounted (a cgroup v1 host)".into());
        };
        let own = match std::fs::read_to_string("/proc/self/cgroup") {
            Ok(c) => c,
            Err(e) => return unavailable(format!("cannot read /proc/self/cgroup: {e}")),
        };
        let Some(own) = own_cgroup(&own) else {
            return unavailable("/proc/self/cgroup has no cgroup v2 (\"0::\") entry".into());
        };
        // Without a cgroup namespace the mount may show only a subtree of the
        // hierarchy; paths in /proc/self/cgroup are relative to the hierarchy's root.
        let own = match own.strip_prefix(mount.root.trim_end_matches('/')) {
            Some(rest) if mount.root != "/" => rest.to_string(),
            _ => own,
        };
        match prepare(&mount.point, &home_cgroup(&own), parent, std::process::id()) {
            Ok(base) => MemoryLimits::Enforced { base },
            Err(reason) => unavailable(reason),
        }
    }

    pub fn enforced(&self) -> bool {
        matches!(self, MemoryLimits::Enforced { .. })
    }

    /// Where task cgroups go, when limits are enforced.
    pub fn base(&self) -> Option<&Path> {
        match self {
            MemoryLimits::Enforced { base } => Some(base),
            MemoryLimits::Unavailable { .. } => None,
        }
    }
}

/// A cgroup2 mount: where it is mounted and which directory of the hierarchy it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup2Mount {
    pub point: PathBuf,
    pub root: String,
}

/// The cgroup2 mount in a `/proc/self/mountinfo` text, preferring `/sys/fs/cgroup`
/// (pure v2 hosts) over others such as `/sys/fs/cgroup/unified` (hybrid hosts).
pub fn find_cgroup2_mount(mountinfo: &str) -> Option<Cgroup2Mount> {
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        // `id parent major:minor root mount-point options [optional...] - fstype source super-options`
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        if let (Some(root), Some(point)) = (fields.get(3), fields.get(4)) {
            found.push(Cgroup2Mount {
                point: PathBuf::from(unescape_mount_field(point)),
                root: unescape_mount_field(root),
            });
        }
    }
    let pos = found
        .iter()
        .position(|m| m.point == Path::new("/sys/fs/cgroup"))
        .unwrap_or(0);
    (!found.is_empty()).then(|| found.swap_remove(pos))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_field(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..=i + 3].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 path in a `/proc/self/cgroup` text (the `0::/path` line).
pub fn own_cgroup(proc_self_cgroup: &str) -> Option<String> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_string())
        .filter(|p| p.starts_with('/'))
}

/// The cgroup to build on from this process's cgroup `own`: the one it came from,
/// if an earlier node of this process (`up` runs several) moved it into our leaf.
pub fn home_cgroup(own: &str) -> String {
    match own.strip_suffix(&format!("/{AGENT_LEAF}")) {
        Some("") => "/".to_string(),
        Some(o) => o.to_string(),
        None => own.to_string(),
    }
}

fn words(path: &Path) -> std::io::Result<BTreeSet<String>> {
    Ok(std::fs::read_to_string(path)?
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

/// Makes `base` (the configured parent, or `<own cgroup>/sandtrail`) a cgroup whose
/// children get the memory controller, under the cgroup2 mount at `mount`; `own` is
/// this process's cgroup path, `pid` its pid. `Err` says why it cannot be done.
pub fn prepare(mount: &Path, own: &str, parent: Option<&str>, pid: u32) -> Result<PathBuf, String> {
    let under_mount = |p: &str| mount.join(p.trim_start_matches('/'));
    let own_dir = under_mount(own);
    let base = match parent {
        Some(p) if p.split('/').any(|c| c == "..") => {
            return Err(format!(
                "cgroup_parent {p:?} climbs out of the hierarchy, expected a path like /sandtrail.slice"
            ))
        }
        Some(p) => under_mount(p),
        None => own_dir.join(TASKS_CGROUP),
    };
    let Some(holder) = base.parent().filter(|h| h.starts_with(mount)) else {
        return Err(format!(
            "cgroup_parent {:?} is the root of the hierarchy, expected a cgroup below it",
            parent.unwrap_or("/")
        ));
    };
    let holder = holder.to_path_buf();
    let controllers = words(&holder.join("cgroup.controllers")).map_err(|e| {
        format!(
            "{} is not a cgroup2 directory we can read: {e}",
            holder.display()
        )
    })?;
    if !controllers.contains("memory") {
        return Err(format!(
            "the memory controller is not available to cgroup {} (its cgroup.controllers: {:?}); \
             on a hybrid cgroup v1/v2 host it is bound to v1",
            holder.display(),
            controllers.iter().cloned().collect::<Vec<_>>().join(" ")
        ));
    }
    let subtree = holder.join("cgroup.subtree_control");
    if !words(&subtree).unwrap_or_default().contains("memory") {
        if let Err(e) = std::fs::write(&subtree, "+memory") {
            if e.raw_os_error() != Some(libc::EBUSY) || holder != own_dir {
                return Err(format!(
                    "cannot enable the memory controller in {}: {e}",
                    subtree.display()
                ));
            }
            // The no-internal-processes rule: our own cgroup holds us.
            evacuate(&own_dir, pid)?;
            std::fs::write(&subtree, "+memory").map_err(|e| {
                format!(
                    "cannot enable the memory controller in {} even after moving the agent to {AGENT_LEAF}: {e}",
                    subtree.display()
                )
            })?;
        }
    }
    match std::fs::create_dir(&base) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create cgroup {}: {e}", base.display())),
    }
    let base_subtree = base.join("cgroup.subtree_control");
    if !words(&base_subtree).unwrap_or_default().contains("memory") {
        std::fs::write(&base_subtree, "+memory").map_err(|e| {
            format!(
                "cannot enable the memory controller for the children of {}: {e} \
                 (cgroup v2 allows that only in a cgroup without processes of its own)",
                base.display()
            )
        })?;
    }
    Ok(base)
}

/// Moves this process out of `dir` into its leaf [`AGENT_LEAF`], if it is the only
/// process there.
fn evacuate(dir: &Path, pid: u32) -> Result<(), String> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs"))
        .map_err(|e| format!("cannot read {}/cgroup.procs: {e}", dir.display()))?;
    let others: Vec<&str> = procs
        .split_whitespace()
        .filter(|p| p.parse() != Ok(pid))
        .collect();
    if let Some(first) = others.first() {
        return Err(format!(
            "cgroup {} holds {} other process(es) besides the agent (e.g. pid {first}), and cgroup v2 \
             lets a cgroup with processes of its own give no memory controller to its children: \
             run the agent in a cgroup of its own or set [agent] cgroup_parent to a cgroup \
             delegated to it (e.g. a systemd unit with Delegate=yes)",
            dir.display(),
            others.len()
        ));
    }
    let leaf = dir.join(AGENT_LEAF);
    match std::fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create cgroup {}: {e}", leaf.display())),
    }
    std::fs::write(leaf.join("cgroup.procs"), pid.to_string())
        .map_err(|e| format!("cannot move the agent into {}: {e}", leaf.display()))?;
    info!(cgroup = %leaf.display(), "agent moved into a leaf cgroup of its own so that its tasks can get memory limits");
    Ok(())
}

/// `mem` MiB in bytes, rounded up; `None` for no limit (0, negative, not finite).
pub fn limit_bytes(mem_mib: f64) -> Option<u64> {
    (mem_mib.is_finite() && mem_mib > 0.0).then(|| (mem_mib * 1024.0 * 1024.0).ceil() as u64)
}

/// One task's cgroup, ready for the task to join between fork and exec.
#[derive(Debug)]
pub struct TaskCgroup {
    dir: PathBuf,
    /// `cgroup.procs`, opened before the fork: the child only has to write to it.
    procs: OwnedFd,
}

impl TaskCgroup {
    /// Creates `base/<task>` (or takes it over, if an earlier node made it) with
    /// `memory.max` = `limit` bytes, no swap where swap is accounted, and OOM kills of
    /// the whole group. Blocking.
    pub fn create(base: &Path, task: &str, limit: u64) -> std::io::Result<TaskCgroup> {
        if task.is_empty() || task == "." || task == ".." || task.contains('/') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("task id {task:?} cannot name a cgroup"),
            ));
        }
        let dir = base.join(task);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let set = |file: &str, value: &str| std::fs::write(dir.join(file), value);
        set("memory.max", &limit.to_string())?;
        // Absent when the kernel does not account swap; then there is none to limit.
        for optional in [("memory.swap.max", "0"), ("memory.oom.group", "1")] {
            if dir.join(optional.0).exists() {
                set(optional.0, optional.1)?;
            }
        }
        let procs = above_stdio(
            OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))?
                .into(),
        )?;
        Ok(TaskCgroup { dir, procs })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The descriptor the child writes `0` to (see [`join_from_child`]).
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }
}

/// `fd` on a descriptor number above 2 (close-on-exec). The child sets up the task's
/// stdio with `dup2` onto 0, 1 and 2 before `pre_exec` runs; a node started with one
/// of those closed would get `cgroup.procs` there, and the join would then write into
/// /dev/null or the task's log instead, leaving the task outside its limit.
fn above_stdio(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: duplicates a descriptor we own; the new one is owned by the result.
    let high = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if high < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `high` was just returned by fcntl and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(high) })
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is open as `fd`.
/// Async-signal-safe (one `write`, no allocation), for use between fork and exec.
pub fn join_from_child(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: writes one byte from a static buffer to a descriptor the parent opened
    // and keeps open until the spawn returned.
    let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    if n == 1 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// What a task's cgroup says about how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ended {
    /// Processes the kernel's OOM killer killed in the cgroup.
    pub oom_kills: u64,
    /// Its `memory.max` in bytes (`None`: "max" or unreadable).
    pub limit: Option<u64>,
}

/// The `oom_kill` count of a `memory.events` text.
pub fn parse_oom_kills(events: &str) -> Option<u64> {
    events.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == "oom_kill").then(|| v.trim().parse().ok()).flatten()
    })
}

/// Reads what the cgroup at `dir` knows about the task's end, then kills whatever
/// is still in it and removes it. Blocking (waits up to a few seconds for the last
/// processes to go). `Ended` is returned even when the removal fails, with the error.
pub fn finish(dir: &Path) -> (Ended, std::io::Result<()>) {
    let ended = Ended {
        oom_kills: std::fs::read_to_string(dir.join("memory.events"))
            .ok()
            .and_then(|e| parse_oom_kills(&e))
            .unwrap_or(0),
        limit: std::fs::read_to_string(dir.join("memory.max"))
            .ok()
            .and_then(|m| m.trim().parse().ok()),
    };
    (ended, remove(dir))
}

/// Kills what is left in the cgroup (`cgroup.kill`, Linux 5.14+) and removes it once
/// empty; a missing cgroup is already removed.
pub fn remove(dir: &Path) -> std::io::Result<()> {
    let kill = dir.join("cgroup.kill");
    if kill.exists() {
        let _ = std::fs::write(&kill, "1");
    }
    let end = Instant::now() + REMOVE_WAIT;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            // Processes still leaving after the kill.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's layout: a hybrid host whose memory controller is bound to v1.
    const HYBRID: &str = "\
24 1 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
25 24 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
28 24 0:26 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory
";
    const PURE_V2: &str = "\
30 1 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
31 1 0:27 /docker/abc /mnt/with\\040space rw - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_the_cgroup2_mount_and_prefers_sys_fs_cgroup() {
        assert_eq!(
            find_cgroup2_mount(HYBRID),
            Some(Cgroup2Mount {
                point: "/sys/fs/cgroup/unified".into(),
                root: "/".into()
            })
        );
        assert_eq!(
            find_cgroup2_mount(PURE_V2).unwrap().point,
            Path::new("/sys/fs/cgroup")
        );
        let other = PURE_V2.lines().nth(1).unwrap();
        assert_eq!(
            find_cgroup2_mount(other),
            Some(Cgroup2Mount {
                point: "/mnt/with space".into(),
                root: "/docker/abc".into()
            })
        );
        assert_eq!(find_cgroup2_mount(&HYBRID.replace("cgroup2", "x")), None);
    }

    #[test]
    fn own_cgroup_reads_the_v2_line() {
        assert_eq!(
            own_cgroup("4:memory:/x\n0::/system.slice/sandtrail.service\n").as_deref(),
            Some("/system.slice/sandtrail.service")
        );
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
        // A second node of the same process builds where the first one did.
        assert_eq!(home_cgroup("/a.service/sandtrail-agent"), "/a.service");
        assert_eq!(home_cgroup("/sandtrail-agent"), "/");
        assert_eq!(home_cgroup("/a.service"), "/a.service");
    }

    #[test]
    fn limits_round_up_to_bytes_and_zero_means_none() {
        assert_eq!(limit_bytes(50.0), Some(50 << 20));
        assert_eq!(limit_bytes(0.5), Some(512 << 10));
        assert_eq!(limit_bytes(0.0), None);
        assert_eq!(limit_bytes(f64::NAN), None);
        assert_eq!(limit_bytes(-1.0), None);
    }

    #[test]
    fn oom_kills_are_read_from_memory_events() {
        let events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 1\n";
        assert_eq!(parse_oom_kills(events), Some(1));
        assert_eq!(parse_oom_kills("low 0\n"), None);
    }

    /// A cgroup directory as the kernel shows it, as plain files.
    fn fake_cgroup(dir: &Path, controllers: &str, subtree: &str, procs: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("cgroup.controllers"), controllers).unwrap();
        std::fs::write(dir.join("cgroup.subtree_control"), subtree).unwrap();
        std::fs::write(dir.join("cgroup.procs"), procs).unwrap();
    }

    #[test]
    fn a_tree_without_the_memory_controller_is_reported_not_touched() {
        let t = tempfile::tempdir().unwrap();
        fake_cgroup(t.path(), "hugetlb\n", "", "1\n7\n");
        let reason = prepare(t.path(), "/", None, 7).unwrap_err();
        assert!(
            reason.contains("memory controller is not available"),
            "{reason}"
        );
        assert!(reason.contains("hugetlb"), "{reason}");
        assert!(!t.path().join(TASKS_CGROUP).exists());
        assert_eq!(
            std::fs::read_to_string(t.path().join("cgroup.subtree_control")).unwrap(),
            ""
        );
    }

    #[test]
    fn an_unreadable_parent_is_reported() {
        let t = tempfile::tempdir().unwrap();
        let reason = prepare(t.path(), "/gone", None, 7).unwrap_err();
        assert!(reason.contains("not a cgroup2 directory"), "{reason}");
        let reason = prepare(t.path(), "/", Some("/"), 7).unwrap_err();
        assert!(reason.contains("root of the hierarchy"), "{reason}");
        let reason = prepare(t.path(), "/", Some("/a/../.."), 7).unwrap_err();
        assert!(reason.contains("climbs out"), "{reason}");
    }

    #[test]
    fn a_delegated_tree_gets_the_tasks_cgroup_with_memory_for_its_children() {
        let t = tempfile::tempdir().unwrap();
        let own = t.path().join("agent.scope");
        fake_cgroup(t.path(), "cpu memory pids\n", "cpu memory pids\n", "");
        fake_cgroup(&own, "cpu memory pids\n", "", "7\n");
        // The memory controller is not yet enabled in our own cgroup: it is asked for.
        let base = prepare(t.path(), "/agent.scope", None, 7).unwrap();
        assert_eq!(base, own.join(TASKS_CGROUP));
        assert_eq!(
            std::fs::read_to_string(own.join("cgroup.subtree_control")).unwrap(),
            "+memory"
        );
        assert_eq!(
            std::fs::read_to_string(base.join("cgroup.subtree_control")).unwrap(),
            "+memory"
        );

        // A configured parent whose holder already hands memory down is used as is.
        fake_cgroup(
            &t.path().join("sandtrail.slice"),
            "memory\n",
            "memory\n",
            "",
        );
        let configured = prepare(t.path(), "/agent.scope", Some("/sandtrail.slice/tasks"), 7);
        assert_eq!(configured.unwrap(), t.path().join("sandtrail.slice/tasks"));

        // A task's cgroup: limit, no swap, whole-group OOM kills, procs open.
        let task_dir = base.join("fib.1");
        std::fs::create_dir_all(&task_dir).unwrap();
        for f in ["memory.swap.max", "memory.oom.group", "cgroup.procs"] {
            std::fs::write(task_dir.join(f), "").unwrap();
        }
        let cg = TaskCgroup::create(&base, "fib.1", limit_bytes(50.0).unwrap()).unwrap();
        assert_eq!(cg.dir(), task_dir);
        let read = |f: &str| std::fs::read_to_string(task_dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), (50u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("memory.oom.group"), "1");
        assert!(cg.procs_fd() >= 0);
        std::fs::write(task_dir.join("memory.events"), "oom 2\noom_kill 1\n").unwrap();
        let (ended, _) = finish(&task_dir);
        assert_eq!(
            ended,
            Ended {
                oom_kills: 1,
                limit: Some(50 << 20)
            }
        );
        for bad in ["", "..", "a/b"] {
            assert!(TaskCgroup::create(&base, bad, 1).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_child_joins_before_exec_and_a_failed_join_fails_the_spawn() {
        use std::os::unix::process::CommandExt;
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("t.1");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        let cg = TaskCgroup::create(t.path(), "t.1", 1 << 20).unwrap();
        let fd = cg.procs_fd();
        let mut cmd = std::process::Command::new("true");
        // SAFETY: join_from_child is async-signal-safe; `cg` outlives the spawn.
        unsafe { cmd.pre_exec(move || join_from_child(fd)) };
        assert!(cmd.status().unwrap().success());
        // "0": the kernel's word for "the writing process", written by the child.
        assert_eq!(
            std::fs::read_to_string(dir.join("cgroup.procs")).unwrap(),
            "0"
        );

        // A cgroup the child cannot join (here: a descriptor open read-only) must not
        // let the task run outside its limit.
        let ro = std::fs::File::open(dir.join("cgroup.procs")).unwrap();
        let ro_fd = ro.as_raw_fd();
        let mut cmd = std::process::Command::new("true");
        // SAFETY: as above; `ro` outlives the spawn.
        unsafe { cmd.pre_exec(move || join_from_child(ro_fd)) };
        assert!(cmd.status().is_err());
    }

    /// Regression: with the node's stdin and stdout closed, `cgroup.procs` was opened
    /// as fd 0 or 1, the child's stdio `dup2` replaced it, and the task ran outside its
    /// cgroup (its "0" went to /dev/null).
    #[test]
    fn procs_fd_never_lands_on_stdio_when_the_node_runs_with_stdio_closed() {
        use std::os::unix::process::CommandExt;
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("t.1");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        // Closing stdio is only safe in a process of its own: a forked child that
        // reports through its exit code (glibc's fork leaves malloc usable).
        // SAFETY: the child only runs the code below and leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = (|| {
                // SAFETY: closes this child's own stdin and stdout.
                unsafe {
                    libc::close(0);
                    libc::close(1);
                }
                let Ok(cg) = TaskCgroup::create(t.path(), "t.1", 1 << 20) else {
                    return 2;
                };
                if cg.procs_fd() <= 2 {
                    return 3;
                }
                let fd = cg.procs_fd();
                let mut cmd = std::process::Command::new("true");
                cmd.stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null());
                // SAFETY: join_from_child is async-signal-safe; `cg` outlives the spawn.
                unsafe { cmd.pre_exec(move || join_from_child(fd)) };
                if !cmd.status().is_ok_and(|s| s.success()) {
                    return 4;
                }
                match std::fs::read_to_string(dir.join("cgroup.procs")) {
                    Ok(s) if s == "0" => 0,
                    _ => 5,
                }
            })();
            // SAFETY: ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child died: {status}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "2: create failed, 3: fd on stdio, 4: spawn failed, 5: join did not reach cgroup.procs"
        );
    }

    #[test]
    fn a_shared_own_cgroup_is_not_emptied_behind_other_processes() {
        let t = tempfile::tempdir().unwrap();
        fake_cgroup(t.path(), "memory\n", "", "1\n7\n9\n");
        let reason = evacuate(t.path(), 7).unwrap_err();
        assert!(reason.contains("2 other process(es)"), "{reason}");
        assert!(reason.contains("cgroup_parent"), "{reason}");
        assert!(!t.path().join(AGENT_LEAF).exists());
        // Alone in it, the agent moves itself into its leaf.
        fake_cgroup(t.path(), "memory\n", "", "7\n");
        evacuate(t.path(), 7).unwrap();
        assert_eq!(
            std::fs::read_to_string(t.path().join(AGENT_LEAF).join("cgroup.procs")).unwrap(),
            "7"
        );
    }
}
