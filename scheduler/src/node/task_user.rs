//! Which user a task runs as, and how the forked child becomes it.
//!
//! A task must not reach the control plane's secrets (issue 15), and on a root agent
//! everything it could reach as root is a secret: so a task never runs as root.
//! - An app's Marathon `user` is honoured, as a Mesos agent with `--switch_user`
//!   does: it must exist on the agent, else the task fails naming it (as in Mesos).
//!   Unlike Mesos, root is refused too: a task as root reads the token.
//! - An app without one gets a uid of its own from [`DYNAMIC_UIDS`], a range no
//!   account uses, as systemd's `DynamicUser=` does: tasks then cannot read, write
//!   or signal each other's sandboxes and processes, which one shared `nobody`
//!   would allow. A shared default user is still configurable
//!   ([`crate::node::NodeConfig::task_user`]) for hosts that want a passwd entry for
//!   every task, at the price of that isolation.
//! - On an agent that is not root nothing can be switched: tasks run as the agent's
//!   own user (isolation from the agent then needs a root agent), and an app asking
//!   for another user is refused with that reason.
//!
//! A dynamic uid is held host-wide (every node of the host, `sandtrail up`'s three
//! included, draws from the same range) by a claim: a symlink `<claims>/<uid>` to the
//! sandbox, made under an exclusive `flock` of the claims directory. A claim goes
//! stale once its sandbox is gone, and only then is the uid handed out again, so a
//! uid is never reused while a file it owns remains in a sandbox; whatever process
//! of the old task still runs under it (one that left its process group, on a host
//! without cgroup limits) is killed before the uid is reused. The trade-off:
//! one directory of claims shared by the host's nodes, and programs that insist on a
//! passwd entry (`id -un`, ssh) not finding one for a dynamic uid; such apps set
//! `user`.
//!
//! Switching happens in the forked child before `exec`: supplementary groups, then
//! the gid, then the uid (each later step needs the privilege the one before keeps),
//! and a check that root cannot be had back. Only raw syscalls run there (the child
//! of a multi-threaded process may only make async-signal-safe calls); the user is
//! looked up, and its group list read, before the fork.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The uids handed to tasks of apps without a `user`: high enough to clash with no
/// account (systemd's dynamic users live at 61184-65519, container id maps at
/// 100000 and up a few 65536 at a time) and below 2^31, which some tools read signed.
pub const DYNAMIC_UIDS: std::ops::Range<u32> = 1_600_000_000..1_601_000_000;

/// Where the host's dynamic-uid claims live; host-wide on purpose (see the module docs).
pub const DEFAULT_CLAIMS_DIR: &str = "/run/sandtrail/task-uids";

/// The identity a task's processes take: everything the forked child needs, ready
/// before the fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskUser {
    /// The passwd name, or `task-<uid>` for a dynamic uid (given as `USER`).
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the user's from the group database; none for a dynamic
    /// uid).
    pub groups: Vec<libc::gid_t>,
    /// The passwd home when it is a directory; `None` gives the task its sandbox.
    pub home: Option<PathBuf>,
}

impl TaskUser {
    /// A dynamic uid's identity: its own gid of the same number and no other group.
    pub fn dynamic(uid: u32) -> TaskUser {
        TaskUser {
            name: format!("task-{uid}"),
            uid,
            gid: uid,
            groups: Vec::new(),
            home: None,
        }
    }

    /// Looks `name` up in the passwd and group databases; `Ok(None)` when there is no
    /// such user. Blocking (NSS may ask a directory server).
    pub fn lookup(name: &str) -> Result<Option<TaskUser>> {
        let user = nix::unistd::User::from_name(name).map_err(|e| Error::TaskUser {
            user: name.to_string(),
            reason: format!("looking it up failed: {e}"),
        })?;
        let Some(user) = user else {
            return Ok(None);
        };
        let cname = CString::new(name).map_err(|_| Error::TaskUser {
            user: name.to_string(),
            reason: "a user name cannot hold NUL".into(),
        })?;
        let groups = nix::unistd::getgrouplist(&cname, user.gid)
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_else(|_| vec![user.gid.as_raw()]);
        Ok(Some(TaskUser {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups,
            home: user.dir.is_dir().then_some(user.dir),
        }))
    }
}

/// How a task is to be run, decided from the app's `user`, the node's default and
/// who the agent is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// As the agent itself: the agent is not root, so nothing can be switched.
    Agent,
    /// As this existing user.
    User(TaskUser),
    /// As a dynamic uid of its own, claimed at launch.
    Dynamic,
}

/// The [`Plan`] for a task of an app with `requested` as its `user`, on a node whose
/// default is `default_user` (`None`: dynamic uids) and whose effective uid is
/// `agent_uid`. `lookup` is [`TaskUser::lookup`] outside tests.
pub fn plan(
    requested: Option<&str>,
    default_user: Option<&str>,
    agent_uid: u32,
    lookup: &dyn Fn(&str) -> Result<Option<TaskUser>>,
) -> Result<Plan> {
    let missing = |name: &str| Error::TaskUser {
        user: name.to_string(),
        reason: "no such user on this agent: expected a user name of its passwd database".into(),
    };
    if agent_uid != 0 {
        let Some(name) = requested else {
            return Ok(Plan::Agent);
        };
        let user = lookup(name)?.ok_or_else(|| missing(name))?;
        if user.uid == agent_uid {
            return Ok(Plan::Agent);
        }
        return Err(Error::TaskUser {
            user: name.to_string(),
            reason: format!(
                "this agent runs as uid {agent_uid}, not root, so it cannot switch users: \
                 its tasks run as its own user (leave `user` unset or name that user)"
            ),
        });
    }
    let Some(name) = requested.or(default_user) else {
        return Ok(Plan::Dynamic);
    };
    let user = lookup(name)?.ok_or_else(|| missing(name))?;
    if user.uid == 0 {
        return Err(Error::TaskUser {
            user: name.to_string(),
            reason: "tasks never run as root (uid 0): root could read the cluster token \
                     and every sandbox; expected an unprivileged user"
                .into(),
        });
    }
    Ok(Plan::User(user))
}

/// Whether every id of `range` is mapped in a `/proc/self/uid_map` (or `gid_map`)
/// text: inside a user namespace that maps fewer ids (rootless containers, Docker's
/// `userns-remap` maps 65536), taking an unmapped uid fails with EINVAL.
pub fn ids_mapped(map: &str, range: &std::ops::Range<u32>) -> bool {
    map.lines().any(|l| {
        let f: Vec<u64> = l
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        matches!(f[..], [inside, _, count]
            if inside <= u64::from(range.start) && u64::from(range.end) <= inside + count)
    })
}

/// Why this host cannot hand out `range` as uids and gids, if it cannot.
pub fn unmapped_reason(range: &std::ops::Range<u32>) -> Option<String> {
    for file in ["/proc/self/uid_map", "/proc/self/gid_map"] {
        let map = std::fs::read_to_string(file).ok()?;
        if !ids_mapped(&map, range) {
            return Some(format!(
                "ids {}..{} are not all mapped in this user namespace ({file}: {})",
                range.start,
                range.end,
                map.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
        }
    }
    None
}

/// Whether `user` may search (`x`) a directory with this `mode`, owner and group, by
/// the classic permission bits (ACLs are not looked at).
pub fn searchable(mode: u32, owner: u32, group: u32, user: &TaskUser) -> bool {
    if owner == user.uid {
        mode & 0o100 != 0
    } else if group == user.gid || user.groups.contains(&group) {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// Fails, naming the first directory in the way, when `user` cannot reach `dir` by
/// its path (every directory above it must be searchable for it: `MESOS_SANDBOX`
/// names it). The task and its logger start inside it and need no such path. Blocking.
pub fn check_reachable(dir: &Path, user: &TaskUser) -> Result<()> {
    for ancestor in dir.ancestors().skip(1) {
        let Ok(m) = std::fs::metadata(ancestor) else {
            continue;
        };
        if !searchable(m.mode(), m.uid(), m.gid(), user) {
            return Err(Error::TaskUser {
                user: user.name.clone(),
                reason: format!(
                    "its sandbox {} is out of its reach: {} (mode {:04o}, owner uid {}) is not \
                     searchable by uid {}; expected every directory above the agent's work dir \
                     to be searchable by others (chmod o+x), or a work dir elsewhere",
                    dir.display(),
                    ancestor.display(),
                    m.mode() & 0o7777,
                    m.uid(),
                    user.uid
                ),
            });
        }
    }
    Ok(())
}

/// Makes `dir` searchable but not listable by others (0711), so tasks can reach
/// their sandboxes below it without seeing what else is there. A directory that is
/// world-writable or sticky (`/tmp` given as a data dir), or not ours, is left as
/// it is. Blocking.
pub fn make_traversable(dir: &Path) -> std::io::Result<()> {
    let m = std::fs::metadata(dir)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if m.mode() & 0o1002 != 0 || m.uid() != euid {
        return Ok(());
    }
    if m.mode() & 0o7777 != 0o711 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    }
    Ok(())
}

/// The claims of dynamic uids on this host (see the module docs).
#[derive(Debug, Clone)]
pub struct UidClaims {
    dir: PathBuf,
    range: std::ops::Range<u32>,
}

impl UidClaims {
    pub fn new(dir: impl Into<PathBuf>, range: std::ops::Range<u32>) -> UidClaims {
        UidClaims {
            dir: dir.into(),
            range,
        }
    }

    /// A uid for the task of `sandbox`: the one already claimed for it (a relaunch in
    /// the same sandbox), else a free or stale one, claimed now. Blocking.
    pub fn claim(&self, sandbox: &Path) -> Result<u32> {
        let io = |e| Error::io(&self.dir, e);
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        let lock = std::fs::File::open(&self.dir).map_err(io)?;
        // SAFETY: flock on a descriptor we own; released when `lock` is closed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        let len = self.range.end.saturating_sub(self.range.start);
        if len == 0 {
            return Err(Error::TaskUser {
                user: "a dynamic uid".into(),
                reason: "the range of dynamic uids is empty".into(),
            });
        }
        // The owner of an existing sandbox first: its files are that uid's already.
        if let Ok(m) = std::fs::symlink_metadata(sandbox) {
            if self.range.contains(&m.uid()) && self.holder(m.uid()).as_deref() == Some(sandbox) {
                return Ok(m.uid());
            }
        }
        // A random start spreads claims, so one stale entry is not fought over.
        let start = rand::random::<u32>() % len;
        for i in 0..len {
            let uid = self.range.start + (start + i) % len;
            let path = self.dir.join(uid.to_string());
            match self.holder(uid) {
                Some(holder) if holder == sandbox => return Ok(uid),
                Some(holder) if std::fs::symlink_metadata(&holder).is_ok() => continue,
                Some(_) => {
                    // A straggler of the old task must not live on into the new one.
                    kill_all_of(uid).map_err(|e| Error::io(&path, e))?;
                    std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?
                }
                None => {}
            }
            match std::os::unix::fs::symlink(sandbox, &path) {
                Ok(()) => return Ok(uid),
                // Something that is not a claim sits there: leave it, take another.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        Err(Error::TaskUser {
            user: "a dynamic uid".into(),
            reason: format!(
                "all {len} dynamic uids of {}..{} are held by existing sandboxes",
                self.range.start, self.range.end
            ),
        })
    }

    /// Gives up `uid`'s claim for `sandbox` (collected), ending whatever process still
    /// runs under it; a claim now held for another sandbox is left alone. Blocking.
    pub fn release(&self, uid: u32, sandbox: &Path) -> Result<()> {
        let path = self.dir.join(uid.to_string());
        let Ok(lock) = std::fs::File::open(&self.dir) else {
            return Ok(()); // no claims here at all
        };
        // SAFETY: flock on a descriptor we own; released when `lock` is closed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::io(&self.dir, std::io::Error::last_os_error()));
        }
        if self.holder(uid).as_deref() != Some(sandbox) {
            return Ok(());
        }
        kill_all_of(uid).map_err(|e| Error::io(&path, e))?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// The sandbox `uid` is claimed for, if any.
    fn holder(&self, uid: u32) -> Option<PathBuf> {
        std::fs::read_link(self.dir.join(uid.to_string())).ok()
    }
}

/// Sends SIGKILL to every process running as `uid`, from a child that becomes `uid`
/// and signals all it may (`kill(-1)`: exactly the processes of that uid, itself
/// spared). Blocking (waits for the child).
fn kill_all_of(uid: u32) -> std::io::Result<()> {
    let user = TaskUser::dynamic(uid);
    // SAFETY: the child makes raw syscalls only (see `become_user`) and `_exit`s.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => unsafe {
            let code = match become_user(&user) {
                Ok(()) => {
                    libc::kill(-1, libc::SIGKILL);
                    0
                }
                Err(_) => 1,
            };
            libc::_exit(code)
        },
        pid => {
            let mut status = 0;
            // SAFETY: waits for the child forked just above.
            if unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::other(format!(
                    "could not switch to uid {uid} to end its processes"
                )))
            }
        }
    }
}

/// Becomes `user` for good: supplementary groups, gid, then uid, and a check that
/// root cannot be had back.
///
/// # Safety
/// Only in a forked child before `exec` (or `_exit`): it makes raw syscalls only, on
/// memory prepared before the fork.
pub unsafe fn become_user(user: &TaskUser) -> std::io::Result<()> {
    let err = std::io::Error::last_os_error;
    if libc::setgroups(user.groups.len(), user.groups.as_ptr()) != 0 {
        return Err(err());
    }
    if libc::setgid(user.gid) != 0 {
        return Err(err());
    }
    if libc::setuid(user.uid) != 0 {
        return Err(err());
    }
    if libc::setuid(0) == 0 {
        return Err(std::io::Error::from_raw_os_error(libc::EPERM));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, uid: u32) -> TaskUser {
        TaskUser {
            name: name.into(),
            uid,
            gid: uid,
            groups: vec![uid],
            home: None,
        }
    }

    fn lookup(name: &str) -> Result<Option<TaskUser>> {
        Ok(match name {
            "root" => Some(user("root", 0)),
            "nobody" => Some(user("nobody", 65534)),
            "svc" => Some(user("svc", 1000)),
            _ => None,
        })
    }

    #[test]
    fn a_root_agent_honours_user_defaults_to_dynamic_and_refuses_root() {
        let p = |req, def| plan(req, def, 0, &lookup);
        assert_eq!(p(None, None).unwrap(), Plan::Dynamic);
        assert_eq!(p(Some("svc"), None).unwrap(), Plan::User(user("svc", 1000)));
        assert_eq!(
            p(None, Some("nobody")).unwrap(),
            Plan::User(user("nobody", 65534))
        );
        assert_eq!(
            p(Some("svc"), Some("nobody")).unwrap(),
            Plan::User(user("svc", 1000)),
            "the app's user wins over the default"
        );
        let err = p(Some("root"), None).unwrap_err().to_string();
        assert!(
            err.contains("\"root\"") && err.contains("never run as root"),
            "{err}"
        );
        let err = p(None, Some("root")).unwrap_err().to_string();
        assert!(err.contains("never run as root"), "{err}");
        let err = p(Some("ghost"), None).unwrap_err().to_string();
        assert!(
            err.contains("\"ghost\"") && err.contains("no such user"),
            "{err}"
        );
    }

    #[test]
    fn an_unprivileged_agent_runs_tasks_as_itself_and_refuses_other_users() {
        let p = |req, def| plan(req, def, 1000, &lookup);
        assert_eq!(p(None, None).unwrap(), Plan::Agent);
        assert_eq!(p(None, Some("nobody")).unwrap(), Plan::Agent);
        assert_eq!(p(Some("svc"), None).unwrap(), Plan::Agent, "its own user");
        let err = p(Some("nobody"), None).unwrap_err().to_string();
        assert!(
            err.contains("\"nobody\"") && err.contains("uid 1000, not root"),
            "{err}"
        );
        let err = p(Some("ghost"), None).unwrap_err().to_string();
        assert!(err.contains("no such user"), "{err}");
    }

    #[test]
    fn searchable_follows_owner_then_group_then_others() {
        let u = TaskUser {
            groups: vec![7],
            ..user("svc", 1000)
        };
        assert!(searchable(0o700, 1000, 0, &u));
        assert!(
            !searchable(0o071, 1000, 0, &u),
            "owner bits decide for the owner"
        );
        assert!(searchable(0o710, 0, 7, &u), "a supplementary group");
        assert!(
            !searchable(0o701, 0, 7, &u),
            "group bits decide for a member"
        );
        assert!(searchable(0o711, 0, 0, &u));
        assert!(!searchable(0o770, 0, 0, &u));
    }

    #[test]
    fn an_unreachable_sandbox_names_the_directory_in_the_way() {
        let top = tempfile::tempdir().unwrap();
        let sandbox = top.path().join("node/sandboxes/app/task");
        std::fs::create_dir_all(&sandbox).unwrap();
        std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let u = user("svc", 1_600_000_123);
        let err = check_reachable(&sandbox, &u).unwrap_err().to_string();
        assert!(
            err.contains(&top.path().display().to_string()) && err.contains("0700"),
            "{err}"
        );
        make_traversable(top.path()).unwrap();
        for d in ["node", "node/sandboxes", "node/sandboxes/app"] {
            make_traversable(&top.path().join(d)).unwrap();
        }
        check_reachable(&sandbox, &u).unwrap();
        let mode = std::fs::metadata(top.path()).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o711);
    }

    #[test]
    fn a_world_writable_dir_is_not_made_traversable() {
        let top = tempfile::tempdir().unwrap();
        std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        make_traversable(top.path()).unwrap();
        let mode = std::fs::metadata(top.path()).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o1777, "left alone");
    }

    #[test]
    fn claims_are_unique_reused_for_the_same_sandbox_and_freed_with_it() {
        let top = tempfile::tempdir().unwrap();
        // Ends of the dynamic range: reclaiming kills the processes of a uid.
        let base = DYNAMIC_UIDS.end - 10;
        let claims = UidClaims::new(top.path().join("claims"), base..base + 3);
        let boxes: Vec<PathBuf> = (0..4).map(|i| top.path().join(format!("s{i}"))).collect();
        for b in &boxes {
            std::fs::create_dir(b).unwrap();
        }
        let a = claims.claim(&boxes[0]).unwrap();
        let b = claims.claim(&boxes[1]).unwrap();
        let c = claims.claim(&boxes[2]).unwrap();
        let mut all = vec![a, b, c];
        all.sort();
        assert_eq!(all, vec![base, base + 1, base + 2]);
        assert_eq!(
            claims.claim(&boxes[1]).unwrap(),
            b,
            "a relaunch keeps its uid"
        );
        let err = claims.claim(&boxes[3]).unwrap_err().to_string();
        assert!(err.contains("all 3 dynamic uids"), "{err}");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return; // reclaiming switches to the uid to end its processes
        }
        // Once a sandbox is gone (collected), its uid is free again.
        std::fs::remove_dir(&boxes[0]).unwrap();
        assert_eq!(claims.claim(&boxes[3]).unwrap(), a);
        // Released with its sandbox: only by the sandbox that holds it.
        claims.release(b, &boxes[0]).unwrap();
        assert_eq!(claims.holder(b).as_deref(), Some(boxes[1].as_path()));
        claims.release(b, &boxes[1]).unwrap();
        assert_eq!(claims.holder(b), None);
    }

    #[test]
    fn claims_from_many_threads_never_share_a_uid() {
        let top = tempfile::tempdir().unwrap();
        let base = DYNAMIC_UIDS.end - 100;
        let claims = UidClaims::new(top.path().join("claims"), base..base + 64);
        let got: Vec<u32> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..32)
                .map(|i| {
                    let (claims, dir) = (&claims, top.path().join(format!("s{i}")));
                    std::fs::create_dir(&dir).unwrap();
                    s.spawn(move || claims.claim(&dir).unwrap())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let unique: std::collections::HashSet<u32> = got.iter().copied().collect();
        assert_eq!(unique.len(), got.len(), "{got:?}");
    }

    /// A process the last task of a uid left behind is ended before the uid is
    /// handed to another task (only where the test can switch users).
    #[test]
    fn a_reclaimed_uid_has_no_process_left() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        use std::os::unix::process::CommandExt;
        let uid = 1_600_999_000 + std::process::id() % 900;
        let mut straggler = std::process::Command::new("sleep")
            .arg("600")
            .uid(uid)
            .gid(uid)
            .spawn()
            .unwrap();
        let top = tempfile::tempdir().unwrap();
        let claims = UidClaims::new(top.path().join("claims"), uid..uid + 1);
        let (old, new) = (top.path().join("old"), top.path().join("new"));
        std::fs::create_dir(&old).unwrap();
        std::fs::create_dir(&new).unwrap();
        assert_eq!(claims.claim(&old).unwrap(), uid);
        assert!(straggler.try_wait().unwrap().is_none(), "held: left alone");
        std::fs::remove_dir(&old).unwrap();
        assert_eq!(claims.claim(&new).unwrap(), uid);
        let status = straggler.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn dynamic_uids_must_be_mapped_in_the_user_namespace() {
        let range = DYNAMIC_UIDS;
        assert!(ids_mapped("         0          0 4294967295\n", &range));
        assert!(!ids_mapped("0 100000 65536\n", &range), "userns-remap");
        assert!(ids_mapped(
            "0 100000 65536\n1600000000 300000 1000000\n",
            &range
        ));
        assert!(!ids_mapped("", &range));
    }

    #[test]
    fn a_dynamic_user_has_its_own_group_and_no_other() {
        let u = TaskUser::dynamic(1_600_000_007);
        assert_eq!((u.uid, u.gid), (1_600_000_007, 1_600_000_007));
        assert!(u.groups.is_empty());
        assert_eq!(u.name, "task-1600000007");
    }
}
