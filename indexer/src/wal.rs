//! The ingest write-ahead log: what lets `POST /api/v1/ingest?refresh=false` answer
//! once a batch is durable, without waiting for the Tantivy commit that makes it
//! searchable (as Elasticsearch's translog, or Quickwit's mrecordlog).
//!
//! The log stage ([`crate::stage`]) appends each request's body as it arrived
//! (compressed or plain, as the shipper sent it: no work is spent re-encoding it),
//! fsyncs once for all the requests it holds, and only then answers them and hands
//! them to the writer. The bodies of native requests answered at the commit are
//! logged the same way, so that a replay keeps the order in which requests were
//! admitted (see [`crate::writer::Ack`]); `_bulk` documents are not logged, they are
//! answered at the commit. Every commit
//! stores in its payload the sequence number (LSN) of the last entry it includes; at
//! start the writer replays the entries above it through the same admission by
//! (source, offset) as live ingest, so a crash between the answer and the commit
//! loses nothing and indexes nothing twice.
//!
//! Layout: `<data_dir>/wal/<first lsn, 20 digits>.log` segments, each a run of
//! entries `[len u32 LE][crc32 u32 LE][lsn u64 LE][body]` (the CRC covers the LSN and
//! the body). A new segment starts once one passes [`SEGMENT_BYTES`]; whole segments
//! are deleted once a commit no longer needs them. A torn or corrupt tail (a crash
//! in the middle of an append, which was never answered) is cut off at open.
//!
//! The trade-off: every acknowledged byte is written twice (here and in the index),
//! and an fsync per group of requests; in exchange one busy source is no longer held
//! to one batch per commit.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A segment is closed and a new one started once it is this large.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Bytes of an entry's header: length, CRC, LSN.
const HEADER: usize = 16;
/// No entry body is larger than this (a request body is capped far below it); a
/// header claiming more is corruption.
const MAX_ENTRY: usize = 1 << 30;

/// One logged request: its sequence number and the body as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub lsn: u64,
    pub body: Vec<u8>,
}

/// The open log, shared by the log stage (appends, syncs) and the writer (releases,
/// reads back after a failed group) behind a mutex; every call blocks on the disk.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    /// Closed segments (first LSN, path), oldest first.
    closed: Vec<(u64, PathBuf)>,
    /// The segment appended to, its first LSN and path.
    current: File,
    current_first: u64,
    current_path: PathBuf,
    /// Bytes of the current segment, and how many of them are known to be on disk.
    len: u64,
    synced_len: u64,
    next_lsn: u64,
    synced_lsn: u64,
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.log")
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

/// Reads a segment's whole entries; returns them and the length of the valid prefix
/// (where a torn or corrupt tail starts).
fn read_segment(path: &Path) -> Result<(Vec<Entry>, u64)> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io(path, e))?;
    let mut entries = Vec::new();
    let mut at = 0usize;
    while bytes.len() - at >= HEADER {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        if len > MAX_ENTRY || bytes.len() - at - HEADER < len {
            break;
        }
        let covered = &bytes[at + 8..at + HEADER + len];
        if crc32fast::hash(covered) != crc {
            break;
        }
        let lsn = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().expect("8 bytes"));
        entries.push(Entry {
            lsn,
            body: bytes[at + HEADER..at + HEADER + len].to_vec(),
        });
        at += HEADER + len;
    }
    Ok((entries, at as u64))
}

impl Wal {
    /// Opens (or creates) the log in `dir` and returns it with every entry whose LSN
    /// is above `after`, oldest first. New entries are numbered above both those
    /// found and `after`.
    pub fn open(dir: &Path, after: u64) -> Result<(Wal, Vec<Entry>)> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let mut segments: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
            .map_err(|e| io(dir, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let first = name.strip_suffix(".log")?.parse::<u64>().ok()?;
                Some((first, e.path()))
            })
            .collect();
        segments.sort();
        let mut replay = Vec::new();
        let mut last_lsn = after;
        let mut tail: Option<(u64, PathBuf, u64)> = None;
        let count = segments.len();
        for (i, (first, path)) in segments.iter().enumerate() {
            let (entries, valid) = read_segment(path)?;
            let size = std::fs::metadata(path).map_err(|e| io(path, e))?.len();
            if valid < size {
                tracing::warn!(
                    segment = %path.display(),
                    cut = size - valid,
                    "write-ahead log: torn or corrupt tail cut off (never acknowledged)"
                );
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| io(path, e))?;
                f.set_len(valid).map_err(|e| io(path, e))?;
                f.sync_all().map_err(|e| io(path, e))?;
            }
            for e in entries {
                last_lsn = last_lsn.max(e.lsn);
                if e.lsn > after {
                    replay.push(e);
                }
            }
            if i + 1 == count {
                tail = Some((*first, path.clone(), valid));
            }
        }
        let next_lsn = last_lsn + 1;
        let (closed, current_first, current_path, len) = match tail {
            // Keep appending to the newest segment while it has room.
            Some((first, path, len)) if len < SEGMENT_BYTES => {
                segments.pop();
                (segments, first, path, len)
            }
            _ => {
                let path = dir.join(segment_name(next_lsn));
                (segments, next_lsn, path, 0)
            }
        };
        let current = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&current_path)
            .map_err(|e| io(&current_path, e))?;
        sync_dir(dir)?;
        Ok((
            Wal {
                dir: dir.to_path_buf(),
                closed,
                current,
                current_first,
                current_path,
                len,
                synced_len: len,
                next_lsn,
                synced_lsn: next_lsn - 1,
            },
            replay,
        ))
    }

    /// Appends `body` (not yet on disk: see [`Wal::sync`]) and returns its LSN.
    pub fn append(&mut self, body: &[u8]) -> Result<u64> {
        if body.len() > MAX_ENTRY {
            return Err(Error::Internal(format!(
                "write-ahead log entry of {} bytes; at most {MAX_ENTRY}",
                body.len()
            )));
        }
        if self.len >= SEGMENT_BYTES {
            self.roll()?;
        }
        let lsn = self.next_lsn;
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
        header[8..].copy_from_slice(&lsn.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header[8..]);
        crc.update(body);
        header[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
        // Header and body in one vectored write rather than copied into one frame:
        // bodies are whole requests (up to MiBs), and the copy and its fresh
        // allocation's page faults were a visible share of the log stage (issue 14).
        if let Err(e) = write_all_vectored(&mut self.current, &header, body) {
            // A write cut short (a full disk) must not leave a torn frame that later,
            // acknowledged entries would be appended after: the open would cut them
            // off with it.
            let _ = self.current.set_len(self.len);
            return Err(io(&self.current_path, e));
        }
        self.len += (HEADER + body.len()) as u64;
        self.next_lsn += 1;
        Ok(lsn)
    }

    /// Makes every appended entry durable; returns the LSN of the last one.
    pub fn sync(&mut self) -> Result<u64> {
        if self.synced_len < self.len {
            self.current
                .sync_data()
                .map_err(|e| io(&self.current_path, e))?;
            self.synced_len = self.len;
        }
        self.synced_lsn = self.next_lsn - 1;
        Ok(self.synced_lsn)
    }

    /// The LSN of the last durable entry.
    pub fn synced(&self) -> u64 {
        self.synced_lsn
    }

    /// Forgets entries appended since the last [`Wal::sync`] (their requests were
    /// answered with an error, so they must not be replayed).
    pub fn discard_unsynced(&mut self) -> Result<()> {
        if self.synced_len < self.len {
            self.current
                .set_len(self.synced_len)
                .map_err(|e| io(&self.current_path, e))?;
            self.current
                .seek(SeekFrom::End(0))
                .map_err(|e| io(&self.current_path, e))?;
            self.len = self.synced_len;
        }
        self.next_lsn = self.synced_lsn + 1;
        Ok(())
    }

    /// Entries above `after` that are durable, oldest first (a commit that failed
    /// at run time has them re-applied).
    pub fn read_after(&self, after: u64) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for path in self
            .closed
            .iter()
            .map(|(_, p)| p)
            .chain(std::iter::once(&self.current_path))
        {
            let (entries, _) = read_segment(path)?;
            out.extend(
                entries
                    .into_iter()
                    .filter(|e| e.lsn > after && e.lsn <= self.synced_lsn),
            );
        }
        Ok(out)
    }

    /// Deletes the closed segments holding nothing above `lsn`.
    pub fn release_through(&mut self, lsn: u64) -> Result<()> {
        // A closed segment ends where the next one (or the current one) starts.
        let mut keep_from = 0;
        for i in 0..self.closed.len() {
            let next_first = self
                .closed
                .get(i + 1)
                .map_or(self.current_first, |(f, _)| *f);
            if next_first <= lsn.saturating_add(1) {
                keep_from = i + 1;
            } else {
                break;
            }
        }
        for (_, path) in self.closed.drain(..keep_from) {
            std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
        }
        Ok(())
    }

    /// Closes the current segment (durable) and starts the next.
    fn roll(&mut self) -> Result<()> {
        self.sync()?;
        let first = self.next_lsn;
        let path = self.dir.join(segment_name(first));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        sync_dir(&self.dir)?;
        let old_path = std::mem::replace(&mut self.current_path, path);
        self.closed.push((self.current_first, old_path));
        self.current = file;
        self.current_first = first;
        self.len = 0;
        self.synced_len = 0;
        Ok(())
    }

    /// Bytes on disk in every segment (for the metrics).
    pub fn bytes(&self) -> u64 {
        self.closed
            .iter()
            .filter_map(|(_, p)| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum::<u64>()
            + self.len
    }

    /// Number of segments on disk.
    pub fn segments(&self) -> usize {
        self.closed.len() + 1
    }
}

/// `write_all` over two buffers (`Write::write_all_vectored` is not stable yet).
fn write_all_vectored(f: &mut File, header: &[u8], body: &[u8]) -> std::io::Result<()> {
    let mut bufs = [std::io::IoSlice::new(header), std::io::IoSlice::new(body)];
    let mut bufs = &mut bufs[..];
    while !bufs.is_empty() {
        match f.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => std::io::IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bodies(entries: &[Entry]) -> Vec<Vec<u8>> {
        entries.iter().map(|e| e.body.clone()).collect()
    }

    #[test]
    fn entries_come_back_after_reopening_numbered_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, found) = Wal::open(dir.path(), 0).unwrap();
        assert!(found.is_empty());
        assert_eq!(wal.append(b"one").unwrap(), 1);
        assert_eq!(wal.append(b"two").unwrap(), 2);
        assert_eq!(wal.sync().unwrap(), 2);
        drop(wal);
        let (mut wal, found) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(bodies(&found), vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(wal.append(b"three").unwrap(), 3);
        wal.sync().unwrap();
        let (_, found) = Wal::open(dir.path(), 2).unwrap();
        assert_eq!(
            bodies(&found),
            vec![b"three".to_vec()],
            "only above `after`"
        );
    }

    #[test]
    fn numbering_continues_above_a_committed_lsn_when_the_log_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, found) = Wal::open(dir.path(), 41).unwrap();
        assert!(found.is_empty());
        assert_eq!(wal.append(b"x").unwrap(), 42);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_appends_go_on_after_the_last_whole_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 0).unwrap();
        wal.append(b"whole").unwrap();
        wal.append(b"torn entry").unwrap();
        wal.sync().unwrap();
        let path = wal.current_path.clone();
        drop(wal);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 3).unwrap();
        drop(f);
        let (mut wal, found) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(bodies(&found), vec![b"whole".to_vec()]);
        assert_eq!(wal.append(b"next").unwrap(), 2);
        wal.sync().unwrap();
        let (_, found) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(bodies(&found), vec![b"whole".to_vec(), b"next".to_vec()]);
    }

    #[test]
    fn a_flipped_bit_ends_the_log_there() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 0).unwrap();
        wal.append(b"first").unwrap();
        wal.append(b"second").unwrap();
        wal.sync().unwrap();
        let path = wal.current_path.clone();
        drop(wal);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let (_, found) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(bodies(&found), vec![b"first".to_vec()]);
    }

    #[test]
    fn unsynced_entries_can_be_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 0).unwrap();
        wal.append(b"kept").unwrap();
        wal.sync().unwrap();
        wal.append(b"refused").unwrap();
        wal.discard_unsynced().unwrap();
        assert_eq!(wal.append(b"after").unwrap(), 2);
        wal.sync().unwrap();
        assert_eq!(
            bodies(&wal.read_after(0).unwrap()),
            vec![b"kept".to_vec(), b"after".to_vec()]
        );
    }

    #[test]
    fn segments_roll_and_are_released_once_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 0).unwrap();
        // Force a roll after each entry.
        let big = vec![7u8; 16];
        for _ in 0..3 {
            wal.append(&big).unwrap();
            wal.len = SEGMENT_BYTES;
        }
        wal.sync().unwrap();
        assert_eq!(wal.segments(), 3);
        assert_eq!(wal.read_after(0).unwrap().len(), 3);
        wal.release_through(1).unwrap();
        assert_eq!(wal.segments(), 2);
        assert_eq!(
            wal.read_after(0)
                .unwrap()
                .iter()
                .map(|e| e.lsn)
                .collect::<Vec<_>>(),
            vec![2, 3]
        );
        wal.release_through(3).unwrap();
        assert_eq!(wal.segments(), 1, "the current segment stays");
    }

    proptest! {
        /// Whatever was synced comes back, in order, after any cut of the unsynced tail.
        #[test]
        fn synced_entries_survive_any_torn_tail(
            synced in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
            unsynced in proptest::collection::vec(any::<u8>(), 1..64),
            cut in 0usize..80,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let (mut wal, _) = Wal::open(dir.path(), 0).unwrap();
            for b in &synced {
                wal.append(b).unwrap();
            }
            wal.sync().unwrap();
            let path = wal.current_path.clone();
            let durable = std::fs::metadata(&path).unwrap().len();
            wal.append(&unsynced).unwrap();
            drop(wal);
            let full = std::fs::metadata(&path).unwrap().len();
            let keep = durable + (cut as u64).min(full - durable - 1);
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(keep).unwrap();
            drop(f);
            let (_, found) = Wal::open(dir.path(), 0).unwrap();
            prop_assert_eq!(bodies(&found), synced);
        }
    }
}
