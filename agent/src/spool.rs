//! The disk spool: batches that are read but cannot be sent yet, in
//! `work_dir/shipper/spool/<id>.ndjson`, oldest first.
//!
//! When a full batch has waited `SPILL_AFTER` (500 ms) for the batch in flight (a
//! slow or unreachable indexer; a healthy one answers sooner, and going through the
//! spool costs a write, an fsync and a re-parse per batch), it goes to the spool
//! instead of making the reader wait longer, and (with the in-flight batch spilled
//! first) the checkpoints move past it as soon as it is durable: the spool now owns
//! its delivery.
//! So an indexer that is down for a long time costs disk, not reading: rotated and
//! deleted files are finished and let go, and a restarted agent sends the spool
//! before anything new. Batches still leave strictly in order (the oldest segment
//! first, a new batch goes to the spool whenever the spool is not empty), which the
//! indexer's per-source dedup needs.
//!
//! At the bound (`spool_max_bytes`, default 1 GiB) the reader waits for the
//! indexer again (back-pressure: stop reading, keep the checkpoints), never drops.
//! The trade-off: spooled batches are written and fsynced once more than direct ones,
//! and a segment that was in flight when the agent died is sent again (the indexer
//! drops the duplicates).

use crate::error::{Error, Result};
use crate::ship::{Batch, Encoded};
use serde::Deserialize;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The segments on disk, oldest first.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segments: VecDeque<(u64, u64)>,
    bytes: u64,
    next_id: u64,
}

/// What a spooled record line must carry to be re-batched.
#[derive(Deserialize)]
struct Identity {
    #[serde(default)]
    source: String,
    #[serde(default)]
    offset: u64,
}

impl Spool {
    /// Opens (creating) the spool dir and lists what an earlier run left. Blocking.
    pub fn open(dir: PathBuf, max_bytes: u64) -> Result<Spool> {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut segments = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let e = e.map_err(|e| Error::io(&dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name
                .strip_suffix(".ndjson")
                .and_then(|n| n.parse::<u64>().ok())
            else {
                // A temp file of an interrupted write: it never counted.
                let _ = std::fs::remove_file(e.path());
                continue;
            };
            let len = e.metadata().map_err(|err| Error::io(e.path(), err))?.len();
            segments.push((id, len));
        }
        segments.sort_unstable();
        let bytes = segments.iter().map(|(_, l)| l).sum();
        let next_id = segments.last().map_or(1, |(id, _)| id + 1);
        Ok(Spool {
            dir,
            max_bytes,
            segments: segments.into(),
            bytes,
            next_id,
        })
    }

    pub fn enabled(&self) -> bool {
        self.max_bytes > 0
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    pub fn len(&self) -> usize {
        self.segments.len()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether a batch of `size` bytes still fits under the bound.
    pub fn has_room(&self, size: usize) -> bool {
        self.enabled() && self.bytes + size as u64 <= self.max_bytes
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016}.ndjson"))
    }

    /// The id the next [`Spool::write`] will use.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Writes `body` (NDJSON) durably as the newest segment. Blocking.
    pub fn write(&mut self, body: &[u8]) -> Result<u64> {
        let id = self.next_id;
        let path = self.path(id);
        protocol::fs::write_atomic(&path, body).map_err(|e| Error::io(e.path, e.source))?;
        self.next_id += 1;
        self.segments.push_back((id, body.len() as u64));
        self.bytes += body.len() as u64;
        Ok(id)
    }

    /// The oldest segment, as a batch. Blocking.
    pub fn oldest(&self) -> Result<Option<(u64, Batch)>> {
        let Some(&(id, _)) = self.segments.front() else {
            return Ok(None);
        };
        let path = self.path(id);
        let body = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Some((id, batch_of(&body, &path))))
    }

    /// Deletes a delivered segment. Blocking.
    pub fn remove(&mut self, id: u64) -> Result<()> {
        let Some(i) = self.segments.iter().position(|(s, _)| *s == id) else {
            return Ok(());
        };
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
        let (_, len) = self.segments.remove(i).expect("index found above");
        self.bytes -= len;
        Ok(())
    }
}

/// Cuts a segment back into a batch; records are taken as they are, with their own
/// source and offset for the checkpoints.
fn batch_of(body: &[u8], path: &Path) -> Batch {
    let mut batch = Batch::default();
    let path = Arc::new(path.to_path_buf());
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let id: Identity = serde_json::from_slice(line).unwrap_or(Identity {
            source: String::new(),
            offset: 0,
        });
        let mut l = line.to_vec();
        if !l.ends_with(b"\n") {
            l.push(b'\n');
        }
        batch.push(Encoded {
            line: l,
            source: id.source.into(),
            path: path.clone(),
            offset: id.offset,
        });
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(records: &[(&str, u64, &str)]) -> Vec<u8> {
        let recs: Vec<protocol::LogRecord> = records
            .iter()
            .map(|(src, off, msg)| {
                serde_json::from_value(serde_json::json!({
                    "ts": "2024-01-01T00:00:00Z", "host": "h", "app": "a", "task": "t",
                    "msg": msg, "source": src, "offset": off,
                }))
                .unwrap()
            })
            .collect();
        protocol::encode_ndjson(&recs)
    }

    #[test]
    fn segments_survive_a_restart_in_order_and_are_removed_when_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("spool");
        let mut s = Spool::open(d.clone(), 1 << 20).unwrap();
        assert!(s.is_empty());
        let b1 = body(&[("s@1", 5, "one"), ("s@1", 9, "two")]);
        let b2 = body(&[("s@1", 14, "three")]);
        assert_eq!(s.write(&b1).unwrap(), 1);
        assert_eq!(s.write(&b2).unwrap(), 2);
        assert_eq!(s.bytes(), (b1.len() + b2.len()) as u64);
        std::fs::write(d.join("0000000000000003.tmp"), "torn").unwrap();

        let mut s = Spool::open(d.clone(), 1 << 20).unwrap();
        assert_eq!((s.len(), s.next_id()), (2, 3));
        assert!(!d.join("0000000000000003.tmp").exists());
        let (id, batch) = s.oldest().unwrap().unwrap();
        assert_eq!(id, 1);
        let offs: Vec<(String, u64)> = batch
            .entries()
            .iter()
            .map(|e| (e.source.to_string(), e.offset))
            .collect();
        assert_eq!(offs, [("s@1".to_string(), 5), ("s@1".to_string(), 9)]);
        assert_eq!(batch.bytes(), b1.len());
        s.remove(1).unwrap();
        assert_eq!(s.oldest().unwrap().unwrap().0, 2);
        s.remove(2).unwrap();
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn the_bound_is_respected_and_zero_disables() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path().join("a"), 100).unwrap();
        assert!(s.has_room(100));
        s.write(&[b'x'; 60]).unwrap();
        assert!(!s.has_room(41));
        assert!(s.has_room(40));
        let off = Spool::open(dir.path().join("b"), 0).unwrap();
        assert!(!off.enabled());
        assert!(!off.has_room(1));
    }
}
