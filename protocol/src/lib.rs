//! Types every Sandtrail part shares: the log record, a task's identity, and the
//! request/response shapes of the HTTP contracts in ARCHITECTURE.md.
//!
//! This crate depends on nothing of ours, so every part (and every external client)
//! can speak the wire format without pulling in an indexer or a scheduler. The
//! trade-off is that types here are plain data: validation that needs context (an
//! app's resources against an agent's, a query against a schema) lives with the part
//! that owns that context.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Errors of the shared codecs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("line {line}: invalid record: {source}")]
    BadRecord {
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid cursor {0:?}: expected the `next` value of an earlier search")]
    BadCursor(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Header that carries the cluster token between parts (`Authorization: Bearer` is
/// accepted too); the value is compared as an opaque string.
pub const TOKEN_HEADER: &str = "x-sandtrail-token";
/// Response header the router sets on every call so callers can find the trace.
pub const TRACE_ID_HEADER: &str = "x-trace-id";
/// Request header a task may set to name itself as the caller of a routed call.
pub const CALLER_TASK_HEADER: &str = "x-sandtrail-caller";

/// Which stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    #[default]
    Stdout,
    Stderr,
    /// Access records written by the router, one per routed call.
    Access,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Access => "access",
        }
    }
}

/// Normalised severity. Parsing is lenient (`WARNING`, `err`, `CRIT`...) because it
/// runs on whatever applications print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Fatal => "fatal",
        }
    }

    /// Maps the spellings seen in real logs onto the six levels; `None` when the word
    /// is not a level at all.
    pub fn parse(word: &str) -> Option<Level> {
        let w = word.trim().to_ascii_lowercase();
        Some(match w.as_str() {
            "trace" | "trc" | "finest" | "finer" => Level::Trace,
            "debug" | "dbg" | "fine" => Level::Debug,
            "info" | "inf" | "information" | "notice" | "informational" => Level::Info,
            "warn" | "warning" | "wrn" => Level::Warn,
            "error" | "err" | "eror" | "severe" => Level::Error,
            "fatal" | "crit" | "critical" | "emerg" | "emergency" | "alert" | "panic" => {
                Level::Fatal
            }
            _ => return None,
        })
    }
}

/// One line (or joined multiline event, or access record) as it is indexed.
///
/// `source` + `offset` are the record's identity: `source` names the file it was read
/// from (stable across renames), `offset` is the byte offset just past the record in
/// that file. Offsets grow within a source, which is what lets the indexer skip
/// anything at or below the offset it has already committed for that source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub ts: DateTime<Utc>,
    pub host: String,
    pub app: String,
    pub task: String,
    #[serde(default)]
    pub instance: u32,
    #[serde(default)]
    pub stream: Stream,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<Level>,
    pub msg: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_app: Option<String>,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub offset: u64,
}

impl LogRecord {
    /// A plain record with only the required fields set; the rest default to empty.
    pub fn new(ts: DateTime<Utc>, meta: &TaskMeta, stream: Stream, msg: impl Into<String>) -> Self {
        LogRecord {
            ts,
            host: meta.host.clone(),
            app: meta.app.clone(),
            task: meta.task.clone(),
            instance: meta.instance,
            stream,
            level: None,
            msg: msg.into(),
            fields: BTreeMap::new(),
            trace_id: None,
            span_id: None,
            parent_span_id: None,
            latency_ms: None,
            status: None,
            method: None,
            path: None,
            peer_host: None,
            peer_app: None,
            source: String::new(),
            offset: 0,
        }
    }
}

/// Encodes records as NDJSON (one JSON object per line, each line ending in `\n`).
pub fn encode_ndjson(records: &[LogRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * 256);
    for r in records {
        // Serialising plain data into a Vec cannot fail.
        serde_json::to_writer(&mut out, r).expect("record serialises");
        out.push(b'\n');
    }
    out
}

/// Decodes NDJSON; blank lines are skipped; the first bad line fails the whole batch
/// and is named by its 1-based number, so a client can find it.
pub fn decode_ndjson(body: &[u8]) -> Result<Vec<LogRecord>> {
    let mut out = Vec::new();
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let rec = serde_json::from_slice(line).map_err(|source| Error::BadRecord {
            line: i + 1,
            source,
        })?;
        out.push(rec);
    }
    Ok(out)
}

/// What the node writes to `sandboxes/<app>/<task>/task.json` at launch; the shipper
/// tags every line of that sandbox with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMeta {
    pub host: String,
    pub app: String,
    pub task: String,
    #[serde(default)]
    pub instance: u32,
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// `POST /api/v1/ingest` answer, sent only once the batch is committed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestResponse {
    /// Records newly indexed.
    pub accepted: u64,
    /// Records skipped because their (source, offset) was already committed.
    pub duplicates: u64,
}

/// `GET /api/v1/search` answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchResponse {
    /// Every match in the range, not just this page.
    pub total: u64,
    /// Newest first.
    pub hits: Vec<LogRecord>,
    /// Pass as `cursor` to get the next (older) page; `None` on the last page.
    pub next: Option<String>,
}

/// One bucket of `GET /api/v1/histogram`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistogramBucket {
    /// Start of the bucket.
    pub ts: DateTime<Utc>,
    pub count: u64,
}

/// `GET /api/v1/histogram` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistogramResponse {
    pub interval_ms: u64,
    pub buckets: Vec<HistogramBucket>,
}

/// An agent as the scheduler knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Host name; unique in the cluster and used as `host` on every record.
    pub name: String,
    /// Address tasks on this agent are reachable at (their ports are added to it).
    pub address: String,
    /// Base URL of this agent's router.
    #[serde(default)]
    pub router_url: String,
    #[serde(default)]
    pub resources: BTreeMap<String, f64>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// `active` or `lost`.
    #[serde(default)]
    pub state: String,
}

/// One healthy endpoint of an app, as `GET /v1/services/{app}` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEndpoint {
    pub app: String,
    pub task: String,
    pub host: String,
    pub address: String,
    pub port: u16,
    /// The task's instance number, so the router's access records name the same
    /// instance as the task's own lines.
    #[serde(default)]
    pub instance: u32,
}

/// What a node is told to run: the scheduler's desired state for one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub app: String,
    pub task: String,
    pub instance: u32,
    pub cmd: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// How many ports to allocate (`PORT0`..).
    #[serde(default)]
    pub port_count: u16,
    /// The app's health checks; the node runs them and reports [`HealthResult`]s.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_checks: Vec<HealthCheck>,
}

/// What a node reports about one task it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub task: String,
    pub app: String,
    /// Marathon state name: `TASK_RUNNING`, `TASK_FAILED`...
    pub state: String,
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub message: Option<String>,
    /// The instance number the task was launched with (from its `task.json`), so a
    /// scheduler that adopts the task after a restart keeps its number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<u32>,
    /// One result per health check of the task's spec, in the spec's order; empty
    /// while none has run yet or when the task has no health checks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health: Vec<HealthResult>,
    /// When the node started the task's process. Carried so that a scheduler adopting
    /// a running task after its own restart keeps Marathon's `startedAt` instead of
    /// stamping the adoption time (which would look like a restart to clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
}

/// One health check of an app, as Marathon defines it (`healthChecks[]`), carried to
/// the node in [`TaskSpec`]. `protocol` is `HTTP`, `TCP` or `COMMAND` (`MESOS_HTTP`
/// and `MESOS_TCP` are treated as `HTTP` and `TCP`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    pub protocol: String,
    /// HTTP path, `/` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Which of the task's ports to check (`PORT<portIndex>`).
    #[serde(default)]
    pub port_index: u16,
    /// A fixed port to check instead of `portIndex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Shell command of a `COMMAND` check; exit code 0 means healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    pub grace_period_seconds: f64,
    pub interval_seconds: f64,
    pub timeout_seconds: f64,
    /// Failures in a row after which the task is killed and replaced; 0 never kills.
    pub max_consecutive_failures: u32,
}

/// The state of one health check of one task, in Marathon's `healthCheckResults` shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthResult {
    /// Whether the last check that counted succeeded.
    pub alive: bool,
    /// Failures in a row since the last success, not counting those in the grace
    /// period before the first success.
    pub consecutive_failures: u32,
    #[serde(default)]
    pub first_success: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_success: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_failure: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_failure_cause: Option<String>,
}

/// `POST /v1/agents/{name}/heartbeat` request: every task the node runs now, and
/// those that ended since its last acknowledged heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    #[serde(default)]
    pub tasks: Vec<TaskStatus>,
}

/// The heartbeat answer: every task the scheduler wants running on that agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    #[serde(default)]
    pub tasks: Vec<TaskSpec>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta() -> TaskMeta {
        TaskMeta {
            host: "node-1".into(),
            app: "fib".into(),
            task: "fib.0f3c".into(),
            instance: 2,
            ports: vec![31000],
        }
    }

    #[test]
    fn minimal_record_round_trips_and_omits_empty_fields() {
        let ts = "2026-11-23T10:00:00.123Z".parse().unwrap();
        let mut r = LogRecord::new(ts, &meta(), Stream::Stdout, "hello");
        r.source = "f1".into();
        r.offset = 6;
        let json = serde_json::to_string(&r).unwrap();
        assert!(!json.contains("trace_id"), "{json}");
        assert!(json.contains(r#""stream":"stdout""#), "{json}");
        assert!(
            json.contains(r#""ts":"2026-11-23T10:00:00.123Z""#),
            "{json}"
        );
        let back: LogRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn decode_names_the_bad_line() {
        let body = b"{\"ts\":\"2026-11-23T10:00:00Z\",\"host\":\"h\",\"app\":\"a\",\"task\":\"t\",\"msg\":\"m\"}\n\n{not json}\n";
        match decode_ndjson(body) {
            Err(Error::BadRecord { line, .. }) => assert_eq!(line, 3),
            other => panic!("expected a bad record error, got {other:?}"),
        }
    }

    #[test]
    fn decode_rejects_missing_required_field() {
        let body = br#"{"ts":"2026-11-23T10:00:00Z","host":"h","app":"a","msg":"m"}"#;
        let err = decode_ndjson(body).unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("task"), "{err}");
    }

    #[test]
    fn level_parse_accepts_common_spellings() {
        assert_eq!(Level::parse("WARNING"), Some(Level::Warn));
        assert_eq!(Level::parse("err"), Some(Level::Error));
        assert_eq!(Level::parse("CRIT"), Some(Level::Fatal));
        assert_eq!(Level::parse("hello"), None);
    }

    proptest! {
        #[test]
        fn ndjson_round_trips(msgs in proptest::collection::vec(".*", 0..20), lat in proptest::option::of(0.0f64..1e6)) {
            let ts: DateTime<Utc> = "2026-11-23T10:00:00.001Z".parse().unwrap();
            let recs: Vec<LogRecord> = msgs.iter().enumerate().map(|(i, m)| {
                let mut r = LogRecord::new(ts, &meta(), Stream::Stderr, m.clone());
                r.offset = i as u64;
                r.latency_ms = lat;
                r.fields.insert("k".into(), serde_json::json!(m));
                r
            }).collect();
            let back = decode_ndjson(&encode_ndjson(&recs)).unwrap();
            prop_assert_eq!(back, recs);
        }
    }
}
