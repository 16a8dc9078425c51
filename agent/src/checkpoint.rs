//! Where the shipper resumes: `work_dir/shipper/checkpoints.json`, one committed
//! offset per source.
//!
//! An offset here only ever moves forward and only after the indexer acknowledged the
//! batch that contained it as committed, so a crash re-sends at most the batches that
//! were in flight (the indexer drops those as duplicates). The file is replaced
//! atomically (temp file, fsync, rename, fsync of the directory): after a crash it is
//! either the old or the new version, never a torn one. The trade-off is one fsync per
//! acknowledged batch, which bounds batches per second on slow disks; batches are large
//! so that is cheap in practice.
//!
//! Sources carry a generation suffix (`src`, `src#2`, `src#3`...) that grows each time
//! a file is found truncated, so the restarted content gets fresh offsets.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const VERSION: u32 = 1;

/// The committed position of one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheckpoint {
    pub path: PathBuf,
    pub offset: u64,
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

/// Splits `base#N` into (`base`, N); a source without a suffix is generation 1.
pub fn split_generation(source: &str) -> (&str, u32) {
    if let Some((base, n)) = source.rsplit_once('#') {
        if let Ok(n) = n.parse::<u32>() {
            if n >= 2 {
                return (base, n);
            }
        }
    }
    (source, 1)
}

/// The source name of generation `generation` of `base`.
pub fn with_generation(base: &str, generation: u32) -> String {
    if generation <= 1 {
        base.to_string()
    } else {
        format!("{base}#{generation}")
    }
}

impl Checkpoints {
    pub fn offset(&self, source: &str) -> u64 {
        self.files.get(source).map_or(0, |f| f.offset)
    }

    /// Moves `source` forward to `offset`; never backwards. Returns whether it moved.
    pub fn advance(&mut self, source: &str, path: &Path, offset: u64) -> bool {
        match self.files.get_mut(source) {
            Some(f) if f.offset >= offset => false,
            Some(f) => {
                f.offset = offset;
                if f.path != path {
                    f.path = path.to_path_buf();
                }
                true
            }
            None => {
                self.files.insert(
                    source.to_string(),
                    FileCheckpoint {
                        path: path.to_path_buf(),
                        offset,
                    },
                );
                true
            }
        }
    }

    /// The newest generation of `base` that has a checkpoint, and its offset.
    pub fn latest_generation(&self, base: &str) -> Option<(u32, u64)> {
        self.files
            .iter()
            .filter_map(|(src, f)| {
                let (b, g) = split_generation(src);
                (b == base).then_some((g, f.offset))
            })
            .max_by_key(|(g, _)| *g)
    }

    /// Drops generations of `base` older than `generation`: once a newer generation
    /// is committed, the older content was fully delivered (batches are acknowledged
    /// in order) and is never read again.
    pub fn forget_older_generations(&mut self, base: &str, generation: u32) {
        self.files.retain(|src, _| {
            let (b, g) = split_generation(src);
            b != base || g >= generation
        });
    }

    /// Reads the file; a missing file is an empty set of checkpoints.
    pub fn load(path: &Path) -> Result<Checkpoints> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Checkpoints::default()),
            Err(e) => return Err(Error::io(path, e)),
        };
        let cps: Checkpoints = serde_json::from_slice(&bytes).map_err(|e| {
            Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
        if cps.version != VERSION {
            return Err(Error::CheckpointVersion {
                path: path.to_path_buf(),
                version: cps.version,
            });
        }
        Ok(cps)
    }

    /// Replaces the file atomically and durably. Blocking: call it from
    /// `spawn_blocking`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(self).expect("checkpoints serialise");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()
        };
        write().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        // Make the rename itself durable.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, e))?;
        Ok(())
    }

    /// Drops entries whose file's directory is gone (a removed sandbox: task ids are
    /// never reused), so checkpoints do not pile up forever. Blocking: stats paths.
    ///
    /// An entry whose file alone is missing is kept on purpose: a file renamed away
    /// and recreated must resume under its old position (and so be seen as truncated
    /// and get a new generation); starting its source over at offset 0 would make the
    /// indexer drop the new lines as already committed.
    pub fn prune_missing(&mut self) {
        self.files.retain(|_, f| {
            f.path
                .parent()
                .is_none_or(|dir| dir.as_os_str().is_empty() || dir.exists())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn missing_file_loads_empty_and_save_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shipper/checkpoints.json");
        assert_eq!(Checkpoints::load(&path).unwrap(), Checkpoints::default());
        let mut c = Checkpoints::default();
        c.advance("h/a/t/stdout", Path::new("/x/stdout"), 42);
        c.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["files"]["h/a/t/stdout"]["offset"], 42);
        assert_eq!(v["files"]["h/a/t/stdout"]["path"], "/x/stdout");
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
    fn advance_never_moves_back() {
        let mut c = Checkpoints::default();
        assert!(c.advance("s", Path::new("p"), 10));
        assert!(!c.advance("s", Path::new("p"), 5));
        assert!(!c.advance("s", Path::new("p"), 10));
        assert_eq!(c.offset("s"), 10);
        assert_eq!(c.offset("other"), 0);
    }

    #[test]
    fn generations() {
        assert_eq!(split_generation("h/a/t/stdout"), ("h/a/t/stdout", 1));
        assert_eq!(split_generation("h/a/t/stdout#3"), ("h/a/t/stdout", 3));
        assert_eq!(split_generation("weird#x"), ("weird#x", 1));
        assert_eq!(with_generation("b", 1), "b");
        assert_eq!(with_generation("b", 2), "b#2");
        let mut c = Checkpoints::default();
        c.advance("b", Path::new("p"), 100);
        c.advance("b#2", Path::new("p"), 7);
        c.advance("bb", Path::new("q"), 1);
        assert_eq!(c.latest_generation("b"), Some((2, 7)));
        assert_eq!(c.latest_generation("nope"), None);
        c.forget_older_generations("b", 2);
        assert_eq!(c.files.keys().collect::<Vec<_>>(), ["b#2", "bb"]);
    }

    #[test]
    fn prune_drops_entries_of_removed_dirs_only() {
        let dir = tempfile::tempdir().unwrap();
        let kept = dir.path().join("kept");
        std::fs::write(&kept, "x").unwrap();
        let mut c = Checkpoints::default();
        c.advance("a", &kept, 1);
        c.advance("rotated-away", &dir.path().join("gone"), 1);
        c.advance("removed-sandbox", &dir.path().join("sandbox/stdout"), 1);
        c.prune_missing();
        assert_eq!(c.files.keys().collect::<Vec<_>>(), ["a", "rotated-away"]);
    }

    proptest! {
        #[test]
        fn save_load_round_trip(entries in proptest::collection::btree_map("[a-z0-9/#._-]{1,30}", ("[a-zA-Z0-9/ ._-]{1,40}", any::<u64>()), 0..20)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("checkpoints.json");
            let c = Checkpoints {
                version: VERSION,
                files: entries.into_iter().map(|(k, (p, o))| (k, FileCheckpoint { path: PathBuf::from(p), offset: o })).collect(),
            };
            c.save(&path).unwrap();
            prop_assert_eq!(Checkpoints::load(&path).unwrap(), c);
        }

        #[test]
        fn advance_is_monotonic_and_ends_at_the_max(ops in proptest::collection::vec((0usize..4, any::<u32>()), 0..100)) {
            let sources = ["a", "b", "c#2", "d"];
            let mut c = Checkpoints::default();
            let mut max = [0u64; 4];
            for (i, off) in ops {
                let before = c.offset(sources[i]);
                let existed = c.files.contains_key(sources[i]);
                let moved = c.advance(sources[i], Path::new("p"), off as u64);
                let after = c.offset(sources[i]);
                prop_assert!(after >= before);
                prop_assert_eq!(moved, !existed || off as u64 > before);
                max[i] = max[i].max(off as u64);
            }
            for (i, s) in sources.iter().enumerate() {
                prop_assert_eq!(c.offset(s), max[i]);
            }
        }
    }
}
