//! Joining multiline events (stack traces) into one record.
//!
//! A line continues the event before it when it starts with whitespace (Java's
//! `\tat ...`, Python's `  File ...`, Go's indented frames), with `at ` or `Caused by:`
//! or `... N more`. Every line is held until the next one shows whether it
//! continues it, or until it is [`FLUSH_AFTER`] old without a continuation: the
//! trade-off is that the last line a quiet writer printed arrives that much later, in
//! exchange for never cutting a trace that was written in pieces. The joined event is
//! capped at the line cap (the rest counted as dropped, so it is flagged truncated,
//! never dropped), and its offset is the end of its last line: a checkpoint never
//! points into the middle of an event, so a restart re-reads a whole event.
//!
//! The router's access log is never joined (one JSON record per line).

use crate::tail::RawLine;
use std::time::{Duration, Instant};

/// A held event is shipped after this long without a continuation line.
pub const FLUSH_AFTER: Duration = Duration::from_millis(500);

/// Whether `line` continues the event before it.
pub fn is_continuation(line: &[u8]) -> bool {
    match line.first() {
        Some(b' ') | Some(b'\t') => line.iter().any(|b| !b.is_ascii_whitespace()),
        Some(_) => {
            line.starts_with(b"at ")
                || line.starts_with(b"Caused by:")
                || (line.starts_with(b"... ") && line.ends_with(b" more"))
        }
        None => false,
    }
}

#[derive(Debug)]
struct Held {
    line: RawLine,
    /// When the last line was added.
    last: Instant,
}

/// The event being assembled for one file.
#[derive(Debug, Default)]
pub struct Joiner {
    held: Option<Held>,
}

impl Joiner {
    /// Adds a complete line; returns the previous event if this line starts a new one.
    pub fn push(&mut self, line: RawLine, max_bytes: usize, now: Instant) -> Option<RawLine> {
        if let Some(h) = self.held.as_mut() {
            if is_continuation(&line.bytes) {
                let room = max_bytes.saturating_sub(h.line.bytes.len());
                let add = 1 + line.bytes.len();
                if h.line.dropped == 0 && add <= room {
                    h.line.bytes.push(b'\n');
                    h.line.bytes.extend_from_slice(&line.bytes);
                } else {
                    // Past the cap: count it, as the tailer does for a long line.
                    h.line.dropped += add as u64;
                }
                h.line.dropped += line.dropped;
                h.line.end = line.end;
                h.last = now;
                return None;
            }
        }
        self.held.replace(Held { line, last: now }).map(|h| h.line)
    }

    /// When the held event is due, if there is one.
    pub fn deadline(&self, after: Duration) -> Option<Instant> {
        self.held.as_ref().map(|h| h.last + after)
    }

    /// The held event, if it is due at `now`.
    pub fn take_stale(&mut self, now: Instant, after: Duration) -> Option<RawLine> {
        match self.deadline(after) {
            Some(due) if now >= due => self.take(),
            _ => None,
        }
    }

    /// The held event, due or not.
    pub fn take(&mut self) -> Option<RawLine> {
        self.held.take().map(|h| h.line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn raw(s: &str, end: u64) -> RawLine {
        RawLine {
            bytes: s.as_bytes().to_vec(),
            dropped: 0,
            end,
        }
    }

    #[test]
    fn continuation_lines() {
        for yes in [
            "\tat com.example.Foo.bar(Foo.java:10)",
            "    at foo (/app/x.js:1:2)",
            "  File \"x.py\", line 3, in <module>",
            "at Object.<anonymous> (/x.js:1:1)",
            "Caused by: java.io.IOException: boom",
            "... 12 more",
        ] {
            assert!(is_continuation(yes.as_bytes()), "{yes}");
        }
        for no in [
            "",
            "   ",
            "2024-01-01 ERROR failed",
            "{\"msg\":\"x\"}",
            "attention please",
            "Caused",
        ] {
            assert!(!is_continuation(no.as_bytes()), "{no:?}");
        }
    }

    #[test]
    fn a_java_trace_becomes_one_event() {
        let now = Instant::now();
        let mut j = Joiner::default();
        let lines = [
            "ERROR request failed",
            "java.lang.IllegalStateException: bad",
            "\tat a.B.c(B.java:1)",
            "\tat a.B.d(B.java:2)",
            "Caused by: java.io.IOException: disk",
            "\t... 3 more",
            "INFO next",
        ];
        let mut out = Vec::new();
        let mut end = 0;
        for l in lines {
            end += l.len() as u64 + 1;
            out.extend(j.push(raw(l, end), 1 << 20, now));
        }
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].bytes, b"ERROR request failed");
        assert_eq!(
            String::from_utf8(out[1].bytes.clone()).unwrap(),
            lines[1..6].join("\n")
        );
        assert_eq!(out[1].end, end - "INFO next\n".len() as u64);
        // The last line waits for the timeout.
        assert!(j.take_stale(now, FLUSH_AFTER).is_none());
        let last = j.take_stale(now + FLUSH_AFTER, FLUSH_AFTER).unwrap();
        assert_eq!((last.bytes.as_slice(), last.end), (&b"INFO next"[..], end));
        assert!(j.take().is_none());
    }

    #[test]
    fn events_are_capped_and_flagged_not_dropped() {
        let now = Instant::now();
        let mut j = Joiner::default();
        assert!(j.push(raw("head", 5), 10, now).is_none());
        assert!(j.push(raw("  abc", 11), 10, now).is_none());
        assert!(j.push(raw("  defgh", 19), 10, now).is_none());
        let e = j.take().unwrap();
        assert_eq!(e.bytes, b"head\n  abc");
        assert_eq!((e.dropped, e.end), (8, 19));
    }

    proptest! {
        /// Joining loses, duplicates and reorders nothing: the events, split back at
        /// their newlines, are the lines; each event ends where its last line ends,
        /// and only continuation lines are ever appended to an event.
        #[test]
        fn joining_preserves_every_line(lines in proptest::collection::vec(
            prop_oneof![
                "[A-Za-z0-9 :]{0,20}",
                "\t[a-z]{1,10}",
                "Caused by: [a-z]{1,5}",
                "at [a-z]{1,5}",
            ], 0..40), flush_every in 1usize..10) {
            let now = Instant::now();
            let mut j = Joiner::default();
            let mut events = Vec::new();
            let mut end = 0u64;
            let mut ends = Vec::new();
            for (i, l) in lines.iter().enumerate() {
                end += l.len() as u64 + 1;
                ends.push(end);
                events.extend(j.push(raw(l, end), 1 << 20, now));
                if i % flush_every == 0 {
                    events.extend(j.take_stale(now + FLUSH_AFTER, FLUSH_AFTER));
                }
            }
            events.extend(j.take());
            let mut rebuilt = Vec::new();
            let mut prev_end = 0;
            for e in &events {
                prop_assert!(e.end > prev_end);
                prev_end = e.end;
                prop_assert!(ends.contains(&e.end));
                let text = String::from_utf8(e.bytes.clone()).unwrap();
                for (k, part) in text.split('\n').enumerate() {
                    if k > 0 {
                        prop_assert!(is_continuation(part.as_bytes()));
                    }
                    rebuilt.push(part.to_string());
                }
            }
            prop_assert_eq!(rebuilt, lines.clone());
            prop_assert_eq!(prev_end, end);
        }
    }
}
