//! The one atomic file replacement: write a temporary file beside the target, fsync
//! it, rename it over the target, fsync the directory. A crash at any point leaves
//! either the old content or the new, never a torn file.
//!
//! Checkpoints, spool segments, the scheduler's state and the node's files in a
//! sandbox all need exactly this, and each used to spell it out (with small
//! differences nobody chose). The temporary file is made with `O_CREAT|O_EXCL` after
//! removing a stale one, so a symlink planted at its name (a sandbox is writable by
//! its task) is never followed. The trade-off: one fsync of the file and one of the
//! directory per write, which is why callers batch what they write through it.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What failed, with the path it failed on (the temporary file, the target or the
/// directory).
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Whether the rename is made durable by an fsync of the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncDir {
    /// A failed directory fsync is an error.
    Required,
    /// Tried, a failure ignored: some file systems (network ones) refuse it, and the
    /// rename has already happened.
    BestEffort,
    /// Not tried: the file is rewritten whenever it is needed.
    Skip,
}

/// An atomic replacement of one file; [`write_atomic`] is the common case.
#[derive(Debug, Clone)]
pub struct AtomicWrite<'a> {
    path: &'a Path,
    tmp: PathBuf,
    mode: u32,
    sync_dir: SyncDir,
}

impl<'a> AtomicWrite<'a> {
    /// Temporary file `<name>.tmp` beside `path`, mode 0666 less the umask, directory
    /// fsync required.
    pub fn new(path: &'a Path) -> AtomicWrite<'a> {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".tmp");
        AtomicWrite {
            path,
            tmp: path.with_file_name(name),
            mode: 0o666,
            sync_dir: SyncDir::Required,
        }
    }

    /// Another temporary file (in the same directory, or the rename is not atomic).
    pub fn tmp_path(mut self, tmp: PathBuf) -> Self {
        self.tmp = tmp;
        self
    }

    /// The new file's mode (the umask still applies).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    pub fn sync_dir(mut self, sync_dir: SyncDir) -> Self {
        self.sync_dir = sync_dir;
        self
    }

    /// Replaces the file with `bytes`. Blocking: call it from `spawn_blocking` in
    /// async code.
    pub fn write(&self, bytes: &[u8]) -> Result<(), WriteError> {
        let at = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WriteError { path, source }
        };
        match std::fs::remove_file(&self.tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(at(&self.tmp)(e)),
        }
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(self.mode);
        }
        let mut f = opts.open(&self.tmp).map_err(at(&self.tmp))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(at(&self.tmp))?;
        drop(f);
        std::fs::rename(&self.tmp, self.path).map_err(at(self.path))?;
        if self.sync_dir == SyncDir::Skip {
            return Ok(());
        }
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        match std::fs::File::open(dir).and_then(|d| d.sync_all()) {
            Err(e) if self.sync_dir == SyncDir::Required => Err(at(dir)(e)),
            _ => Ok(()),
        }
    }
}

/// Replaces `path` with `bytes` atomically and durably (see the module docs).
/// Blocking.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    AtomicWrite::new(path).write(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!d.path().join("state.json.tmp").exists());
    }

    #[test]
    fn a_stale_temporary_is_replaced_and_a_planted_symlink_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let secret = d.path().join("secret");
        std::fs::write(&secret, "keep").unwrap();
        let p = d.path().join("f");
        #[cfg(unix)]
        std::os::unix::fs::symlink(&secret, d.path().join(".f.tmp")).unwrap();
        AtomicWrite::new(&p)
            .tmp_path(d.path().join(".f.tmp"))
            .mode(0o644)
            .sync_dir(SyncDir::Skip)
            .write(b"new")
            .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(std::fs::read(&secret).unwrap(), b"keep");
        assert!(!std::fs::symlink_metadata(&p)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn errors_name_the_path() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("missing-dir").join("f");
        let err = write_atomic(&p, b"x").unwrap_err();
        assert_eq!(err.path, d.path().join("missing-dir").join("f.tmp"));
        assert!(err.to_string().starts_with("cannot write"), "{err}");
    }
}
