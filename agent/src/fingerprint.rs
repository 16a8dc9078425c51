//! Telling files apart: which file on disk is the one a checkpoint talks about.
//!
//! A path is not an identity: `stdout` is renamed to `stdout.1` and a new `stdout`
//! appears, a file is truncated and rewritten, a deleted file's inode is handed to the
//! next new file. So a followed file is identified by three things together:
//!
//! - its [`FileId`]: device, inode and, where the filesystem reports it (`statx`), its
//!   birth time. Stable across rename, different for a copy;
//! - its [`Head`]: an FNV-1a hash of its first bytes, up to [`HEAD_BYTES`] (1 KiB),
//!   together with how many bytes were hashed. A tiny or empty file has a short head
//!   that grows as the file does; a match is always checked on the recorded length;
//! - a source id `base@<16 hex>` drawn at random the first time the file is seen and
//!   written to the checkpoint file *before* any record of it is sent.
//!
//! Why not a pure content fingerprint (Vector's checksum) or a pure inode (Filebeat's
//! default)? Content alone confuses files with identical first lines (every instance
//! of an app printing the same banner) and cannot name an empty file; Vector and
//! Filebeat's fingerprint mode therefore ignore files under 1 KiB, which would hide a
//! task's one-line error. Inode alone breaks on inode reuse: the new file would resume
//! at the old file's offset and lose its first lines. Requiring both the inode and the
//! head makes a false match need inode reuse *and* an identical head (birth time, when
//! available, rules even that out). The random id, registered durably before use, keeps
//! the indexer's per-source dedup from ever applying an old file's committed offset to
//! a new file, whatever its size when first seen; a crash before the first checkpoint
//! save finds the registered entry and re-sends under the same id (deduplicated).
//!
//! The cost: a file copied to a new inode is a new file. That is right for the files we
//! follow (fixed names, and the task logger's rotations `stdout.<n>`, which are
//! renames of the live file: its identity carries its source and position over) with
//! one exception, copytruncate, where the unread tail of the old content lives on only
//! in the copy: a sibling `stdout.*` (not followed on its own) whose head matches the
//! truncated file's is read from where we were under the old source (see `tail`). In
//! a sandbox the logger never copies, so a copy there at a rotation name is taken for
//! a rotation and shipped whole under a fresh source. A rewrite that keeps the first
//! KiB identical and grows past our position before we look is not detectable by any
//! of these means.

use std::fs::{File, Metadata};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::UNIX_EPOCH;

/// How many leading bytes of a file make up its head fingerprint.
pub const HEAD_BYTES: u64 = 1024;

/// Where a file's bytes live: device, inode and (if reported) birth time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    /// Nanoseconds since the epoch, when the filesystem reports a birth time.
    pub btime: Option<u64>,
}

impl FileId {
    pub fn of(meta: &Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            btime: meta
                .created()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_nanos() as u64),
        }
    }

    /// Same inode on the same device, and no birth-time evidence of reuse.
    pub fn same(&self, other: &FileId) -> bool {
        self.dev == other.dev
            && self.ino == other.ino
            && match (self.btime, other.btime) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// A hash of a file's first `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Head {
    pub len: u64,
    pub hash: u64,
}

impl Head {
    pub fn of(bytes: &[u8]) -> Head {
        Head {
            len: bytes.len() as u64,
            hash: fnv1a(bytes),
        }
    }

    /// Reads and hashes the first `min(size, HEAD_BYTES)` bytes of `f`. Blocking.
    pub fn read(f: &File, size: u64) -> std::io::Result<Head> {
        let n = size.min(HEAD_BYTES) as usize;
        let mut buf = vec![0u8; n];
        f.read_exact_at(&mut buf, 0)?;
        Ok(Head::of(&buf))
    }

    /// Whether `f` still starts with the bytes this head was taken from. Blocking.
    pub fn matches(&self, f: &File) -> std::io::Result<bool> {
        if self.len == 0 {
            return Ok(true);
        }
        let mut buf = vec![0u8; self.len as usize];
        match f.read_exact_at(&mut buf, 0) {
            Ok(()) => Ok(fnv1a(&buf) == self.hash),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn complete(&self) -> bool {
        self.len >= HEAD_BYTES
    }
}

/// 64-bit FNV-1a: tiny, stable across releases and platforms (unlike std's hasher),
/// and plenty for telling a handful of files in one directory apart.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A fresh source id for a file first seen now: `base@<16 hex>`.
pub fn new_source(base: &str) -> String {
    format!("{base}@{:016x}", rand::random::<u64>())
}

/// The base (`host/app/task/stream`) of a source id, with or without the `@id` or
/// a version 1 `#N` generation suffix.
pub fn base_of(source: &str) -> &str {
    if let Some((base, id)) = source.rsplit_once('@') {
        if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return base;
        }
    }
    if let Some((base, n)) = source.rsplit_once('#') {
        if n.parse::<u32>().is_ok() {
            return base;
        }
    }
    source
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fnv_known_values() {
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn head_matches_prefixes_and_refuses_shorter_or_different_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "hello\n").unwrap();
        let f = File::open(&p).unwrap();
        let h = Head::read(&f, 6).unwrap();
        assert_eq!(h, Head::of(b"hello\n"));
        assert!(!h.complete());
        std::fs::write(&p, "hello\nworld\n").unwrap();
        assert!(h.matches(&File::open(&p).unwrap()).unwrap());
        std::fs::write(&p, "hell").unwrap();
        assert!(!h.matches(&File::open(&p).unwrap()).unwrap());
        std::fs::write(&p, "jello\nworld\n").unwrap();
        assert!(!h.matches(&File::open(&p).unwrap()).unwrap());
        // The empty head matches anything: nothing was read from the file yet.
        assert!(Head::default().matches(&File::open(&p).unwrap()).unwrap());
        let big = vec![b'x'; 5000];
        std::fs::write(&p, &big).unwrap();
        let h = Head::read(&File::open(&p).unwrap(), 5000).unwrap();
        assert_eq!(h.len, HEAD_BYTES);
        assert!(h.complete());
    }

    /// Identical first lines in two files: same head, but the ids tell them apart.
    #[test]
    fn identical_content_in_two_files_has_different_ids() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "same banner\n").unwrap();
        std::fs::write(&b, "same banner\n").unwrap();
        let (ma, mb) = (
            std::fs::metadata(&a).unwrap(),
            std::fs::metadata(&b).unwrap(),
        );
        assert!(!FileId::of(&ma).same(&FileId::of(&mb)));
        let moved = dir.path().join("a.1");
        std::fs::rename(&a, &moved).unwrap();
        assert!(FileId::of(&std::fs::metadata(&moved).unwrap()).same(&FileId::of(&ma)));
    }

    #[test]
    fn birth_time_breaks_an_inode_tie() {
        let a = FileId {
            dev: 1,
            ino: 2,
            btime: Some(10),
        };
        assert!(a.same(&FileId { btime: None, ..a }));
        assert!(!a.same(&FileId {
            btime: Some(11),
            ..a
        }));
        assert!(!a.same(&FileId { ino: 3, ..a }));
    }

    #[test]
    fn sources_and_bases() {
        let s = new_source("h/a/t/stdout");
        assert_ne!(s, new_source("h/a/t/stdout"));
        assert_eq!(base_of(&s), "h/a/t/stdout");
        assert_eq!(base_of("h/a/t/stdout#2"), "h/a/t/stdout");
        assert_eq!(base_of("h/a/t/stdout"), "h/a/t/stdout");
        assert_eq!(base_of("h/a@b/t/stdout"), "h/a@b/t/stdout");
    }

    proptest! {
        #[test]
        fn head_of_a_prefix_matches_the_longer_file(content in proptest::collection::vec(any::<u8>(), 0..3000), cut in 0usize..3000) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("f");
            std::fs::write(&p, &content).unwrap();
            let cut = cut.min(content.len());
            let f = File::open(&p).unwrap();
            let h = Head::of(&content[..cut.min(HEAD_BYTES as usize)]);
            prop_assert!(h.matches(&f).unwrap());
            let full = Head::read(&f, content.len() as u64).unwrap();
            prop_assert_eq!(full.len, (content.len() as u64).min(HEAD_BYTES));
        }
    }
}
