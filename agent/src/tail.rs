//! Reading files from where we left off and cutting them into lines.
//!
//! Each tailed file remembers its read position, its source generation and the
//! unfinished last line. A round reads at most [`CHUNK_BYTES`] per file (so one busy
//! file cannot starve quiet ones) and at most a budget in total, starting where the
//! previous round stopped; it runs on a blocking thread and hands back records already
//! encoded, so neither reading nor parsing occupies the async runtime.
//!
//! Trade-offs of this version:
//! - Files are reopened by path on every read. A file that shrank below the read
//!   position was truncated (copytruncate, or replaced by a shorter file after a
//!   rename-rotation): it is read again from 0 under the next source generation
//!   (`src#2`), so old content is never re-sent and new content gets fresh offsets.
//!   A replacement that grew past the old position before we looked is not detected;
//!   content fingerprints fix that in a later version.
//! - An unfinished last line is held back until its newline arrives, or shipped as it
//!   is after [`PARTIAL_FLUSH_AFTER`] without growth; if the writer then finishes it,
//!   the rest arrives as a separate record.
//! - An overlong line keeps only its first `max_line_bytes`; the rest is counted, not
//!   buffered, so memory per file is bounded.

use crate::discover::{Discovered, FileKind};
use crate::metrics::{inc, Metrics};
use crate::parse;
use crate::ship::Encoded;
use chrono::Utc;
use protocol::LogRecord;
use std::collections::BTreeMap;
use std::io::{Read as _, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Most bytes read from one file in one round.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// An unfinished last line is shipped anyway after this long without growth.
pub const PARTIAL_FLUSH_AFTER: Duration = Duration::from_secs(5);

/// One file being followed.
#[derive(Debug)]
pub struct Tailed {
    pub base_source: String,
    pub generation: u32,
    pub source: Arc<str>,
    pub path: Arc<PathBuf>,
    pub kind: FileKind,
    /// Next byte to read.
    pub pos: u64,
    /// The file's size when last read.
    pub file_len: u64,
    partial: Vec<u8>,
    partial_dropped: u64,
    last_growth: Instant,
}

/// A line cut from a file: its kept bytes (without the newline), how many bytes of
/// it were dropped for length, and the offset just past it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLine {
    pub bytes: Vec<u8>,
    pub dropped: u64,
    pub end: u64,
}

impl Tailed {
    /// Starts following `d` at `offset` of source generation `generation`.
    pub fn new(d: Discovered, generation: u32, offset: u64, now: Instant) -> Tailed {
        Tailed {
            source: crate::checkpoint::with_generation(&d.base_source, generation).into(),
            base_source: d.base_source,
            generation,
            path: Arc::new(d.path),
            kind: d.kind,
            pos: offset,
            file_len: offset,
            partial: Vec::new(),
            partial_dropped: 0,
            last_growth: now,
        }
    }

    /// Takes bytes read at `self.pos` and returns the lines they complete.
    pub fn feed(&mut self, chunk: &[u8], max_line_bytes: usize, now: Instant) -> Vec<RawLine> {
        if !chunk.is_empty() {
            self.last_growth = now;
        }
        let mut base = self.pos;
        self.pos += chunk.len() as u64;
        let mut out = Vec::new();
        let mut rest = chunk;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            self.append_partial(&rest[..i], max_line_bytes);
            let end = base + i as u64 + 1;
            out.push(RawLine {
                bytes: std::mem::take(&mut self.partial),
                dropped: std::mem::take(&mut self.partial_dropped),
                end,
            });
            rest = &rest[i + 1..];
            base = end;
        }
        self.append_partial(rest, max_line_bytes);
        out
    }

    fn append_partial(&mut self, seg: &[u8], max_line_bytes: usize) {
        let room = max_line_bytes.saturating_sub(self.partial.len());
        let keep = room.min(seg.len());
        self.partial.extend_from_slice(&seg[..keep]);
        self.partial_dropped += (seg.len() - keep) as u64;
    }

    fn has_partial(&self) -> bool {
        !self.partial.is_empty() || self.partial_dropped > 0
    }

    /// When the unfinished last line is due to be flushed, if there is one.
    pub fn partial_deadline(&self) -> Option<Instant> {
        self.has_partial()
            .then(|| self.last_growth + PARTIAL_FLUSH_AFTER)
    }

    /// The unfinished last line, if it has not grown for [`PARTIAL_FLUSH_AFTER`].
    pub fn take_stale_partial(&mut self, now: Instant) -> Option<RawLine> {
        match self.partial_deadline() {
            Some(due) if now >= due => self.take_partial(),
            _ => None,
        }
    }

    /// The unfinished last line, ending at the read position.
    pub fn take_partial(&mut self) -> Option<RawLine> {
        self.has_partial().then(|| RawLine {
            bytes: std::mem::take(&mut self.partial),
            dropped: std::mem::take(&mut self.partial_dropped),
            end: self.pos,
        })
    }

    /// Starts the next source generation at offset 0 (the file was truncated).
    pub fn restart(&mut self, now: Instant) {
        self.generation += 1;
        self.source = crate::checkpoint::with_generation(&self.base_source, self.generation).into();
        self.pos = 0;
        self.partial.clear();
        self.partial_dropped = 0;
        self.last_growth = now;
    }
}

/// The outcome of one read.
#[derive(Debug)]
pub enum Read {
    /// Bytes from the read position on (possibly none) and the file's size.
    Data(Vec<u8>, u64),
    /// The file is now shorter than the read position.
    Truncated(u64),
    Missing,
    Failed(std::io::Error),
}

/// Reads up to `max` bytes at `pos`. Blocking.
pub fn read_chunk(path: &Path, pos: u64, max: usize) -> Read {
    let go = || -> std::io::Result<Read> {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        if len < pos {
            return Ok(Read::Truncated(len));
        }
        let want = (len - pos).min(max as u64);
        if want == 0 {
            return Ok(Read::Data(Vec::new(), len));
        }
        f.seek(SeekFrom::Start(pos))?;
        let mut buf = Vec::with_capacity(want as usize);
        f.take(want).read_to_end(&mut buf)?;
        let end = pos + buf.len() as u64;
        Ok(Read::Data(buf, len.max(end)))
    };
    match go() {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Read::Missing,
        Err(e) => Read::Failed(e),
    }
}

/// What a round needs besides the files.
#[derive(Debug, Clone)]
pub struct RoundConfig {
    pub host: String,
    pub max_line_bytes: usize,
    /// Stop reading further files once this many bytes were read in the round.
    pub budget: usize,
}

/// What a round produced.
#[derive(Debug, Default)]
pub struct Round {
    /// Records in file order, each file's in offset order.
    pub records: Vec<Encoded>,
    /// Some file has more to read right away.
    pub more: bool,
    /// Where the next round starts, so every file gets its turn.
    pub next_start: usize,
}

/// Reads every file once (bounded per file and in total), starting at the
/// `start`-th, and turns complete lines into encoded records. Files that vanished
/// are dropped from `files`. Blocking.
pub fn read_round(
    files: &mut BTreeMap<String, Tailed>,
    start: usize,
    cfg: &RoundConfig,
    metrics: &Metrics,
) -> Round {
    let keys: Vec<String> = files.keys().cloned().collect();
    let mut round = Round::default();
    if keys.is_empty() {
        return round;
    }
    let start = start % keys.len();
    let mut read_total = 0usize;
    let mut visited = 0;
    for key in keys[start..].iter().chain(keys[..start].iter()) {
        if read_total >= cfg.budget {
            round.more = true;
            break;
        }
        visited += 1;
        let Some(t) = files.get_mut(key) else {
            continue;
        };
        let now = Instant::now();
        match read_chunk(&t.path, t.pos, CHUNK_BYTES) {
            Read::Data(bytes, len) => {
                t.file_len = len;
                read_total += bytes.len();
                inc(&metrics.bytes_read, bytes.len() as u64);
                if bytes.len() == CHUNK_BYTES {
                    round.more = true;
                }
                let lines = t.feed(&bytes, cfg.max_line_bytes, now);
                for raw in lines {
                    round.records.push(encode(t, raw, cfg, metrics));
                }
                if let Some(raw) = t.take_stale_partial(now) {
                    round.records.push(encode(t, raw, cfg, metrics));
                }
            }
            Read::Truncated(len) => {
                warn!(
                    source = %t.source,
                    path = %t.path.display(),
                    position = t.pos,
                    size = len,
                    "file shrank below the read position, reading it again from the start as a new source"
                );
                inc(&metrics.files_truncated, 1);
                if let Some(raw) = t.take_partial() {
                    round.records.push(encode(t, raw, cfg, metrics));
                }
                t.restart(now);
                t.file_len = len;
                round.more = true;
            }
            Read::Missing => {
                debug!(source = %t.source, path = %t.path.display(), "file is gone, no longer tailing it");
                if let Some(raw) = t.take_partial() {
                    round.records.push(encode(t, raw, cfg, metrics));
                }
                files.remove(key);
            }
            Read::Failed(e) => {
                inc(&metrics.read_errors, 1);
                warn!(path = %t.path.display(), error = %e, "cannot read file, will retry");
                // Its flush deadline must not keep firing while reads fail.
                if let Some(raw) = t.take_stale_partial(now) {
                    round.records.push(encode(t, raw, cfg, metrics));
                }
            }
        }
    }
    round.next_start = (start + visited) % keys.len().max(1);
    round
}

fn encode(t: &Tailed, raw: RawLine, cfg: &RoundConfig, metrics: &Metrics) -> Encoded {
    let line = parse::prepare_line(&raw.bytes, raw.dropped, cfg.max_line_bytes);
    inc(&metrics.lines_read, 1);
    if line.original_bytes.is_some() {
        inc(&metrics.lines_truncated, 1);
    }
    let now = Utc::now();
    let mut rec: LogRecord = match &t.kind {
        FileKind::Sandbox { meta, stream } => parse::sandbox_record(&line, meta, *stream, now),
        FileKind::Access => parse::access_record(&line, &cfg.host, now),
    };
    rec.source = t.source.to_string();
    rec.offset = raw.end;
    Encoded {
        line: protocol::encode_ndjson(std::slice::from_ref(&rec)),
        source: t.source.clone(),
        path: t.path.clone(),
        offset: raw.end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Stream, TaskMeta};

    fn discovered(path: PathBuf) -> Discovered {
        Discovered {
            base_source: "h/app/t/stdout".into(),
            path,
            kind: FileKind::Sandbox {
                meta: Arc::new(TaskMeta {
                    host: "h".into(),
                    app: "app".into(),
                    task: "t".into(),
                    instance: 0,
                    ports: vec![],
                }),
                stream: Stream::Stdout,
            },
        }
    }

    fn cfg() -> RoundConfig {
        RoundConfig {
            host: "h".into(),
            max_line_bytes: 1024,
            budget: 1 << 20,
        }
    }

    fn decode(records: &[Encoded]) -> Vec<LogRecord> {
        records
            .iter()
            .flat_map(|e| protocol::decode_ndjson(&e.line).unwrap())
            .collect()
    }

    #[test]
    fn feed_cuts_complete_lines_with_offsets_and_keeps_the_rest() {
        let now = Instant::now();
        let mut t = Tailed::new(discovered("p".into()), 1, 100, now);
        let lines = t.feed(b"ab\ncd\nef", 1024, now);
        assert_eq!(
            lines,
            [
                RawLine {
                    bytes: b"ab".to_vec(),
                    dropped: 0,
                    end: 103
                },
                RawLine {
                    bytes: b"cd".to_vec(),
                    dropped: 0,
                    end: 106
                },
            ]
        );
        assert_eq!(t.pos, 108);
        let lines = t.feed(b"g\n", 1024, now);
        assert_eq!(
            lines,
            [RawLine {
                bytes: b"efg".to_vec(),
                dropped: 0,
                end: 110
            }]
        );
        assert_eq!(t.partial_deadline(), None);
    }

    #[test]
    fn overlong_lines_keep_a_bounded_prefix() {
        let now = Instant::now();
        let mut t = Tailed::new(discovered("p".into()), 1, 0, now);
        assert!(t.feed(b"0123456789", 4, now).is_empty());
        assert!(t.feed(b"abc", 4, now).is_empty());
        assert_eq!(t.partial.len(), 4, "memory stays bounded");
        let lines = t.feed(b"x\nok\n", 4, now);
        assert_eq!(
            lines[0],
            RawLine {
                bytes: b"0123".to_vec(),
                dropped: 10,
                end: 15
            }
        );
        assert_eq!(
            lines[1],
            RawLine {
                bytes: b"ok".to_vec(),
                dropped: 0,
                end: 18
            }
        );
    }

    #[test]
    fn stale_partial_is_flushed_after_the_timeout() {
        let now = Instant::now();
        let mut t = Tailed::new(discovered("p".into()), 1, 0, now);
        t.feed(b"no newline", 1024, now);
        assert_eq!(t.take_stale_partial(now + Duration::from_secs(1)), None);
        let raw = t.take_stale_partial(now + PARTIAL_FLUSH_AFTER).unwrap();
        assert_eq!(
            raw,
            RawLine {
                bytes: b"no newline".to_vec(),
                dropped: 0,
                end: 10
            }
        );
        // What the writer appends later is a line of its own.
        assert_eq!(
            t.feed(b" more\n", 1024, now)[0],
            RawLine {
                bytes: b" more".to_vec(),
                dropped: 0,
                end: 16
            }
        );
    }

    #[test]
    fn round_reads_records_tagged_with_source_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        std::fs::write(
            &path,
            "hello\n{\"level\":\"error\",\"msg\":\"bad\"}\npartial",
        )
        .unwrap();
        let metrics = Metrics::default();
        let mut files = BTreeMap::new();
        files.insert(
            "h/app/t/stdout".to_string(),
            Tailed::new(discovered(path.clone()), 1, 0, Instant::now()),
        );
        let round = read_round(&mut files, 0, &cfg(), &metrics);
        let recs = decode(&round.records);
        assert_eq!(recs.len(), 2);
        assert_eq!(
            (
                recs[0].msg.as_str(),
                recs[0].offset,
                recs[0].source.as_str()
            ),
            ("hello", 6, "h/app/t/stdout")
        );
        assert_eq!((recs[1].msg.as_str(), recs[1].offset), ("bad", 36));
        assert_eq!(recs[1].level, Some(protocol::Level::Error));
        assert!(!round.more);
        assert_eq!(files["h/app/t/stdout"].file_len, 43);

        // Nothing new: nothing read.
        assert!(read_round(&mut files, 0, &cfg(), &metrics)
            .records
            .is_empty());
    }

    /// A file cut below the read position must not have its old offsets reused (the
    /// indexer would drop the new lines as duplicates) nor its old content re-sent.
    #[test]
    fn truncated_file_restarts_under_a_new_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        std::fs::write(&path, "one\ntwo\nthree\n").unwrap();
        let metrics = Metrics::default();
        let mut files = BTreeMap::new();
        files.insert(
            "k".to_string(),
            Tailed::new(discovered(path.clone()), 1, 0, Instant::now()),
        );
        assert_eq!(read_round(&mut files, 0, &cfg(), &metrics).records.len(), 3);

        std::fs::write(&path, "new\n").unwrap();
        let round = read_round(&mut files, 0, &cfg(), &metrics);
        assert!(round.records.is_empty());
        assert!(round.more);
        assert_eq!(files["k"].source.as_ref(), "h/app/t/stdout#2");
        let recs = decode(&read_round(&mut files, 0, &cfg(), &metrics).records);
        assert_eq!(recs.len(), 1);
        assert_eq!(
            (
                recs[0].msg.as_str(),
                recs[0].offset,
                recs[0].source.as_str()
            ),
            ("new", 4, "h/app/t/stdout#2")
        );
        assert_eq!(
            metrics
                .files_truncated
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn round_respects_the_budget_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::default();
        let mut files = BTreeMap::new();
        for name in ["a", "b", "c"] {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("{name}\n")).unwrap();
            let mut d = discovered(path);
            d.base_source = name.into();
            files.insert(name.to_string(), Tailed::new(d, 1, 0, Instant::now()));
        }
        let small = RoundConfig { budget: 1, ..cfg() };
        let r1 = read_round(&mut files, 0, &small, &metrics);
        assert_eq!(decode(&r1.records)[0].msg, "a");
        assert!(r1.more);
        let r2 = read_round(&mut files, r1.next_start, &small, &metrics);
        assert_eq!(decode(&r2.records)[0].msg, "b");
        let r3 = read_round(&mut files, r2.next_start, &small, &metrics);
        assert_eq!(decode(&r3.records)[0].msg, "c");
    }

    #[test]
    fn vanished_file_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        std::fs::write(&path, "x\n").unwrap();
        let mut files = BTreeMap::new();
        files.insert(
            "k".to_string(),
            Tailed::new(discovered(path.clone()), 1, 0, Instant::now()),
        );
        std::fs::remove_file(&path).unwrap();
        read_round(&mut files, 0, &cfg(), &Metrics::default());
        assert!(files.is_empty());
    }
}
