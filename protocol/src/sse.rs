//! Reading server-sent events (the live tail's `text/event-stream`) from chunks as
//! they arrive: shared by the CLI's `sandtrail tail` and the indexer's shard fan-out
//! of the tail, which both follow an indexer's stream. Only what those clients need
//! of the WHATWG rules (no `retry:`, no BOM), which keeps it a few lines instead of
//! a dependency.

/// One server-sent event: its `event:` name (`message` when none), its `id:` when it
/// had one, and its `data:` lines joined.
#[derive(Debug, PartialEq)]
pub struct SseEvent {
    pub kind: String,
    pub id: Option<String>,
    pub data: String,
}

/// An SSE parser fed chunks as they arrive (the WHATWG rules the client needs:
/// fields up to a blank line, `:` comments ignored, one optional space after the
/// colon, `\r\n` or `\n` line ends).
#[derive(Default)]
pub struct Sse {
    buf: Vec<u8>,
    kind: Option<String>,
    id: Option<String>,
    data: Vec<String>,
}

impl Sse {
    /// Feeds one chunk; the events it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    out.push(SseEvent {
                        kind: self.kind.take().unwrap_or_else(|| "message".into()),
                        id: self.id.take(),
                        data: std::mem::take(&mut self.data).join("\n"),
                    });
                }
                self.kind = None;
                self.id = None;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "data" => self.data.push(value.to_string()),
                "event" => self.kind = Some(value.to_string()),
                "id" => self.id = Some(value.to_string()),
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_parsed_across_chunks_with_their_ids() {
        let mut p = Sse::default();
        assert!(p.push(b": keep-alive\n\nid: e-1\nda").is_empty());
        let got = p.push(b"ta: {\"a\":1}\n\nevent: dropped\r\ndata: {\"dropped\": 3}\r\n\r\n");
        assert_eq!(
            got,
            [
                SseEvent {
                    kind: "message".into(),
                    id: Some("e-1".into()),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    kind: "dropped".into(),
                    id: None,
                    data: "{\"dropped\": 3}".into()
                },
            ]
        );
        let got = p.push(b"data:x\ndata:y\nid:e-2\n\n");
        assert_eq!(got[0].data, "x\ny");
        assert_eq!(got[0].id.as_deref(), Some("e-2"));
    }
}
