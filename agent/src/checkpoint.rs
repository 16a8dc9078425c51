//! Where the shipper resumes: `work_dir/shipper/checkpoints.json`, one committed
//! offset per source.
//!
//! An offset here only ever moves forward and only after the indexer acknowledged the
//! batch that contained it as durable (or the spool took it over), so a crash
//! re-sends at most the batches that were in flight (the indexer drops those as
//! duplicates). The file is replaced atomically (temp file, fsync, rename, fsync of
//! the directory): after a crash it is either the old or the new version, never a
//! torn one. The trade-off is one fsync per acknowledged batch, which bounds batches
//! per second on slow disks; batches are large so that is cheap in practice.
//!
//! Version 2 keys every entry by its source id (`base@<16 hex>`, see
//! [`crate::fingerprint`]) and records with it the file's identity (device, inode,
//! birth time) and head hash, so a restarted shipper can tell whether the file at a
//! path, or a rotated sibling of it, is the one the entry is about. Entries are
//! *registered* (written with offset 0, or where a resumed file starts) before any
//! record of their source is sent, so a crash never makes the shipper draw a second
//! id for the same bytes. Version 1 files (keyed by path-derived source, `#N`
//! generations, no identity) are migrated on load: the newest generation of each
//! path keeps its source id and offset and takes the identity of the file that is at
//! its path now; that is exact unless the file was rotated while the old version was
//! stopped, in which case the truncation check sends the new file under a fresh id.

use crate::error::{Error, Result};
use crate::fingerprint::{base_of, FileId, Head};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tracing::info;

pub const VERSION: u32 = 2;

/// The committed position of one source, and how to recognise its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheckpoint {
    /// `host/app/task/stream` (or `host/router/access`): which path it was read from.
    pub base: String,
    pub path: PathBuf,
    pub offset: u64,
    pub dev: u64,
    pub ino: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub btime: Option<u64>,
    pub head_len: u64,
    pub head_hash: u64,
}

impl FileCheckpoint {
    pub fn new(base: &str, path: &Path, id: FileId, head: Head, offset: u64) -> FileCheckpoint {
        FileCheckpoint {
            base: base.to_string(),
            path: path.to_path_buf(),
            offset,
            dev: id.dev,
            ino: id.ino,
            btime: id.btime,
            head_len: head.len,
            head_hash: head.hash,
        }
    }

    pub fn id(&self) -> FileId {
        FileId {
            dev: self.dev,
            ino: self.ino,
            btime: self.btime,
        }
    }

    pub fn head(&self) -> Head {
        Head {
            len: self.head_len,
            hash: self.head_hash,
        }
    }
}

/// All committed positions, as stored on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoints {
    pub version: u32,
    pub files: BTreeMap<String, FileCheckpoint>,
}

impl Default for Checkpoints {
    fn default() -> Self {
        Checkpoints {
            version: VERSION,
            files: BTreeMap::new(),
        }
    }
}

/// The version 1 layout, read only to migrate it.
#[derive(Debug, Deserialize)]
struct V1 {
    files: BTreeMap<String, V1Entry>,
}

#[derive(Debug, Deserialize)]
struct V1Entry {
    path: PathBuf,
    offset: u64,
}

/// Splits a version 1 `base#N` into (`base`, N); no suffix is generation 1.
fn v1_generation(source: &str) -> (&str, u32) {
    if let Some((base, n)) = source.rsplit_once('#') {
        if let Ok(n) = n.parse::<u32>() {
            if n >= 2 {
                return (base, n);
            }
        }
    }
    (source, 1)
}

impl Checkpoints {
    pub fn offset(&self, source: &str) -> u64 {
        self.files.get(source).map_or(0, |f| f.offset)
    }

    /// Records a source before anything of it is sent (see the module doc).
    pub fn register(&mut self, source: &str, entry: FileCheckpoint) {
        self.files.insert(source.to_string(), entry);
    }

    /// Moves a registered `source` forward to `offset`; never backwards, and never
    /// re-creates an entry that was released or pruned. Returns whether it moved.
    pub fn advance(&mut self, source: &str, offset: u64) -> bool {
        match self.files.get_mut(source) {
            Some(f) if f.offset < offset => {
                f.offset = offset;
                true
            }
            _ => false,
        }
    }

    /// Replaces the head of `source` by a longer one of the same file.
    pub fn grow_head(&mut self, source: &str, head: Head) -> bool {
        match self.files.get_mut(source) {
            Some(f) if head.len > f.head_len => {
                f.head_len = head.len;
                f.head_hash = head.hash;
                true
            }
            _ => false,
        }
    }

    pub fn remove(&mut self, source: &str) -> bool {
        self.files.remove(source).is_some()
    }

    /// Reads the file; a missing file is an empty set of checkpoints, a version 1
    /// file is migrated (blocking: it stats and reads the files named in it).
    pub fn load(path: &Path) -> Result<Checkpoints> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Checkpoints::default()),
            Err(e) => return Err(Error::io(path, e)),
        };
        let invalid = |e: serde_json::Error| {
            Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        };
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(invalid)?;
        match v.get("version").and_then(|v| v.as_u64()) {
            Some(1) => {
                let old: V1 = serde_json::from_value(v).map_err(invalid)?;
                let cps = migrate_v1(old);
                info!(path = %path.display(), sources = cps.files.len(), "migrated checkpoints from version 1");
                Ok(cps)
            }
            Some(2) => serde_json::from_value(v).map_err(invalid),
            other => Err(Error::CheckpointVersion {
                path: path.to_path_buf(),
                version: other.unwrap_or(0) as u32,
            }),
        }
    }
    /// Replaces the file atomically and durably. Blocking: call it from
    /// `spawn_blocking`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let body = serde_json::to_vec_pretty(self).expect("checkpoints serialise");
        protocol::fs::write_atomic(path, &body).map_err(|e| Error::io(e.path, e.source))
    }

    /// Drops entries whose file's directory is gone (a removed sandbox: task ids are
    /// never reused), so checkpoints do not pile up forever. Blocking: stats paths.
    ///
    /// An entry whose file alone is missing is left to the shipper's scan, which
    /// looks for the file under a rotated name first.
    /// Returns the sources it dropped.
    pub fn prune_missing(&mut self) -> Vec<String> {
        let mut gone = Vec::new();
        self.files.retain(|src, f| {
            let keep = f
                .path
                .parent()
                .is_none_or(|dir| dir.as_os_str().is_empty() || dir.exists());
            if !keep {
                gone.push(src.clone());
            }
            keep
        });
        gone
    }
}

/// Whether the shipper whose work dir is `work_dir` has read every log file of the
/// task sandbox `sandbox` to its end and had it all acknowledged by the indexer, as
/// its saved checkpoints (`work_dir/shipper/checkpoints.json`) tell: the node's
/// sandbox GC asks this before removing a finished sandbox. Blocking (reads the
/// checkpoints and stats the files).
///
/// Files are matched to entries by identity, not path, so a log rotated while being
/// read is judged by its own entry. `stdout` and `stderr` with bytes must have an
/// entry at their size (an unseen one has not been shipped). A rotated `stdout.<n>`
/// or `stderr.<n>` is not shipped whatever its size: under the contract with the
/// task logger (see the crate doc) the shipper deletes a rotated file once all of
/// it is acknowledged, so one that exists is still to ship, unless its entry shows
/// it acknowledged to its end (the moment between the last acknowledgement and the
/// deletion). Symlinks are not log files (the shipper never follows them).
pub fn sandbox_shipped(work_dir: &Path, sandbox: &Path) -> Result<bool> {
    let cps = Checkpoints::load(&work_dir.join("shipper").join("checkpoints.json"))?;
    // Only entries of files in this sandbox may vouch for its files: an entry of a
    // removed sandbox whose inode was reused here must not (review finding).
    let here = std::fs::canonicalize(sandbox).unwrap_or_else(|_| sandbox.to_path_buf());
    let in_sandbox = |f: &FileCheckpoint| {
        f.path
            .parent()
            .is_some_and(|p| p == sandbox || std::fs::canonicalize(p).is_ok_and(|p| p == here))
    };
    let entries = std::fs::read_dir(sandbox).map_err(|e| Error::io(sandbox, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(sandbox, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // The names the shipper follows, and no others: a file it never reads (say
        // `stdout.` or a number past u64) must not hold the sandbox forever.
        let live = matches!(&*name, "stdout" | "stderr");
        let rotated = ["stdout", "stderr"]
            .into_iter()
            .any(|s| crate::discover::rotation_of(&name, s).is_some());
        if !live && !rotated {
            continue;
        }
        let meta = match std::fs::symlink_metadata(entry.path()) {
            Ok(m) if m.file_type().is_file() => m,
            Ok(_) => continue,
            // Rotated away or removed since the listing: judged where it is now.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(entry.path(), e)),
        };
        let id = FileId::of(&meta);
        let Some(acked) = cps
            .files
            .values()
            .filter(|f| in_sandbox(f) && f.id().same(&id))
            .max_by_key(|f| f.offset)
        else {
            if !live || meta.len() > 0 {
                return Ok(false);
            }
            continue;
        };
        // The same inode rewritten from the start is new bytes under an old entry.
        // Opened as the shipper opens it: a FIFO the task swapped in since the
        // listing must not hang the GC, nor a symlink be followed.
        let same_bytes = crate::tail::Opened::open(&entry.path())
            .and_then(|o| acked.head().matches(&o.file))
            .unwrap_or(false);
        if !same_bytes || acked.offset < meta.len() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Keeps the newest generation of each version 1 path whose file still exists, with
/// the identity of the file there now.
fn migrate_v1(old: V1) -> Checkpoints {
    let mut newest: BTreeMap<String, (u32, String, V1Entry)> = BTreeMap::new();
    for (src, e) in old.files {
        let (base, g) = v1_generation(&src);
        let base = base.to_string();
        if newest.get(&base).is_none_or(|(og, _, _)| g > *og) {
            newest.insert(base, (g, src, e));
        }
    }
    let mut cps = Checkpoints::default();
    for (base, (_, src, e)) in newest {
        let Ok(f) = std::fs::File::open(&e.path) else {
            continue;
        };
        let Ok(meta) = f.metadata() else { continue };
        let head = Head::read(&f, meta.len().min(e.offset)).unwrap_or_default();
        cps.register(
            &src,
            FileCheckpoint::new(&base, &e.path, FileId::of(&meta), head, e.offset),
        );
    }
    debug_assert!(cps.files.keys().all(|k| !base_of(k).is_empty()));
    cps
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(path: &str, offset: u64) -> FileCheckpoint {
        FileCheckpoint::new(
            "h/a/t/stdout",
            Path::new(path),
            FileId {
                dev: 1,
                ino: 2,
                btime: None,
            },
            Head::of(b"x"),
            offset,
        )
    }

    #[test]
    fn missing_file_loads_empty_and_save_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shipper/checkpoints.json");
        assert_eq!(Checkpoints::load(&path).unwrap(), Checkpoints::default());
        let mut c = Checkpoints::default();
        c.register("h/a/t/stdout@0123456789abcdef", entry("/x/stdout", 0));
        assert!(c.advance("h/a/t/stdout@0123456789abcdef", 42));
        c.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["version"], 2);
        let e = &v["files"]["h/a/t/stdout@0123456789abcdef"];
        assert_eq!(e["offset"], 42);
        assert_eq!(e["path"], "/x/stdout");
        assert_eq!(e["ino"], 2);
        assert_eq!(Checkpoints::load(&path).unwrap(), c);
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn unknown_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoints.json");
        std::fs::write(&path, r#"{"version":7,"files":{}}"#).unwrap();
        let err = Checkpoints::load(&path).unwrap_err().to_string();
        assert!(err.contains("version 7"), "{err}");
        std::fs::write(&path, "{torn").unwrap();
        assert!(Checkpoints::load(&path).is_err());
    }

    #[test]
    fn advance_never_moves_back_nor_creates_entries() {
        let mut c = Checkpoints::default();
        assert!(!c.advance("s", 10), "unregistered sources are not created");
        c.register("s", entry("p", 0));
        assert!(c.advance("s", 10));
        assert!(!c.advance("s", 5));
        assert!(!c.advance("s", 10));
        assert_eq!(c.offset("s"), 10);
        assert_eq!(c.offset("other"), 0);
        assert!(c.grow_head("s", Head::of(b"xyz")));
        assert!(!c.grow_head("s", Head::of(b"x")));
        assert_eq!(c.files["s"].head_len, 3);
        assert!(c.remove("s"));
        assert!(!c.advance("s", 20));
    }

    /// Version 1 files keep the newest generation of each path that still exists,
    /// under its old source id and offset, with the identity of the file there now.
    #[test]
    fn version_1_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let stdout = dir.path().join("stdout");
        std::fs::write(&stdout, "one\ntwo\n").unwrap();
        let path = dir.path().join("checkpoints.json");
        let v1 = serde_json::json!({"version": 1, "files": {
            "h/a/t/stdout": {"path": stdout, "offset": 100},
            "h/a/t/stdout#2": {"path": stdout, "offset": 4},
            "h/a/t/stderr": {"path": dir.path().join("gone"), "offset": 3},
        }});
        std::fs::write(&path, v1.to_string()).unwrap();
        let c = Checkpoints::load(&path).unwrap();
        assert_eq!(c.version, 2);
        assert_eq!(c.files.keys().collect::<Vec<_>>(), ["h/a/t/stdout#2"]);
        let e = &c.files["h/a/t/stdout#2"];
        assert_eq!((e.base.as_str(), e.offset), ("h/a/t/stdout", 4));
        assert_eq!(e.head(), Head::of(b"one\n"));
        let meta = std::fs::metadata(&stdout).unwrap();
        assert!(e.id().same(&FileId::of(&meta)));
    }

    #[test]
    fn prune_drops_entries_of_removed_dirs_only() {
        let dir = tempfile::tempdir().unwrap();
        let kept = dir.path().join("kept");
        std::fs::write(&kept, "x").unwrap();
        let mut c = Checkpoints::default();
        c.register("a", entry(kept.to_str().unwrap(), 1));
        c.register(
            "rotated-away",
            entry(dir.path().join("gone").to_str().unwrap(), 1),
        );
        c.register(
            "removed-sandbox",
            entry(dir.path().join("sandbox/stdout").to_str().unwrap(), 1),
        );
        c.prune_missing();
        assert_eq!(c.files.keys().collect::<Vec<_>>(), ["a", "rotated-away"]);
    }

    #[test]
    fn a_sandbox_is_shipped_once_every_log_file_is_acked_to_its_end() {
        let work = tempfile::tempdir().unwrap();
        let sandbox = work.path().join("sandboxes/fib/fib.1");
        std::fs::create_dir_all(&sandbox).unwrap();
        let write = |name: &str, body: &str| std::fs::write(sandbox.join(name), body).unwrap();
        write("stdout", "hello\n");
        write("stderr", "");
        write("stdout.1", "old\n");
        // Not log files of the task: never waited for.
        write("task.json", "{}");
        write("stdout.bak", "x");
        write("stdout.", "x");
        write("stderr.99999999999999999999999", "x");
        std::fs::create_dir(sandbox.join("stderr.2")).unwrap();
        let shipped = || sandbox_shipped(work.path(), &sandbox).unwrap();
        // Nothing registered yet: the live stdout has bytes nobody read.
        assert!(!shipped());

        let cp_path = work.path().join("shipper/checkpoints.json");
        let entry_of = |name: &str, offset: u64| {
            let p = sandbox.join(name);
            let f = std::fs::File::open(&p).unwrap();
            let meta = f.metadata().unwrap();
            let head = Head::read(&f, meta.len()).unwrap();
            FileCheckpoint::new(
                "node-1/fib/fib.1/stdout",
                &p,
                FileId::of(&meta),
                head,
                offset,
            )
        };
        let mut cps = Checkpoints::default();
        cps.register("node-1/fib/fib.1/stdout@1", entry_of("stdout", 3));
        cps.save(&cp_path).unwrap();
        assert!(!shipped(), "stdout acked only to 3 of 6 bytes");
        cps.advance("node-1/fib/fib.1/stdout@1", 6);
        cps.save(&cp_path).unwrap();
        // Regression (issue 14): a rotated file without an entry counted as shipped,
        // but the shipper deletes what it shipped; one that exists is still to ship.
        assert!(
            !shipped(),
            "stdout.1 exists and nothing says it was shipped"
        );

        // A rotated file being read is judged by its own entry, by identity.
        cps.register("node-1/fib/fib.1/stdout@2", entry_of("stdout.1", 1));
        cps.save(&cp_path).unwrap();
        assert!(!shipped());
        // Acknowledged to its end: shipped, in the moment before its deletion.
        cps.advance("node-1/fib/fib.1/stdout@2", 4);
        cps.save(&cp_path).unwrap();
        assert!(shipped());
        // An empty rotation is a rotation too (nothing says it was ever seen).
        write("stderr.3", "");
        assert!(!shipped());
        std::fs::remove_file(sandbox.join("stderr.3")).unwrap();
        // A symlink at a rotation name is not a log file.
        std::os::unix::fs::symlink("/etc/hostname", sandbox.join("stderr.4")).unwrap();
        assert!(shipped());
        // Deleted once shipped: still shipped.
        std::fs::remove_file(sandbox.join("stdout.1")).unwrap();
        assert!(shipped());

        // More output after the ack; then the same inode rewritten from the start.
        write("stdout", "hello\nworld\n");
        assert!(!shipped());
        write("stdout", "HELLO\n");
        assert!(!shipped(), "a rewritten file is not the acked one");
    }

    proptest! {
        #[test]
        fn save_load_round_trip(entries in proptest::collection::btree_map("[a-z0-9/#@._-]{1,30}", ("[a-zA-Z0-9/ ._-]{1,40}", any::<u64>(), any::<u64>(), proptest::option::of(any::<u64>()), 0u64..=1024, any::<u64>()), 0..20)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("checkpoints.json");
            let c = Checkpoints {
                version: VERSION,
                files: entries.into_iter().map(|(k, (p, o, ino, btime, hl, hh))| (k.clone(), FileCheckpoint {
                    base: base_of(&k).to_string(),
                    path: PathBuf::from(p),
                    offset: o,
                    dev: 7,
                    ino,
                    btime,
                    head_len: hl,
                    head_hash: hh,
                })).collect(),
            };
            c.save(&path).unwrap();
            prop_assert_eq!(Checkpoints::load(&path).unwrap(), c);
        }

        #[test]
        fn advance_is_monotonic_and_ends_at_the_max(ops in proptest::collection::vec((0usize..4, any::<u32>()), 0..100)) {
            let sources = ["a", "b", "c@0123456789abcdef", "d"];
            let mut c = Checkpoints::default();
            for s in sources {
                c.register(s, entry("p", 0));
            }
            let mut max = [0u64; 4];
            for (i, off) in ops {
                let before = c.offset(sources[i]);
                let moved = c.advance(sources[i], off as u64);
                let after = c.offset(sources[i]);
                prop_assert!(after >= before);
                prop_assert_eq!(moved, off as u64 > before);
                max[i] = max[i].max(off as u64);
            }
            for (i, s) in sources.iter().enumerate() {
                prop_assert_eq!(c.offset(s), max[i]);
            }
        }
    }
}
