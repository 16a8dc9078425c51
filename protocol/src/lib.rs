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

pub mod auth;
pub mod defaults;
pub mod endpoints;
pub mod fs;
pub mod histogram;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "nats")]
pub mod ingest_log;
pub mod metrics;
pub mod rotation;
pub mod shard;
pub mod sse;
pub mod trace;
pub mod wire;
pub mod zk;
pub use trace::{BadTraceId, TraceId};
pub use wire::LogRecordRef;

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
    #[error("invalid port ranges {0:?}: expected Mesos ranges such as [31000-32000] or [8080-8080,31000-32000] within 1-65535")]
    BadPortRanges(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Header that carries a token between parts (`Authorization: Bearer` and Basic are
/// accepted too, see [`auth`]); the value is compared as an opaque string.
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
        // Lower-cased on the stack: this runs on several tokens of every line shipped.
        let word = word.trim().as_bytes();
        let mut buf = [0u8; 16];
        let w = buf.get_mut(..word.len())?;
        for (d, s) in w.iter_mut().zip(word) {
            *d = s.to_ascii_lowercase();
        }
        Some(match &*w {
            b"trace" | b"trc" | b"finest" | b"finer" => Level::Trace,
            b"debug" | b"dbg" | b"fine" => Level::Debug,
            b"info" | b"inf" | b"information" | b"notice" | b"informational" => Level::Info,
            b"warn" | b"warning" | b"wrn" => Level::Warn,
            b"error" | b"err" | b"eror" | b"severe" => Level::Error,
            b"fatal" | b"crit" | b"critical" | b"emerg" | b"emergency" | b"alert" | b"panic" => {
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
    #[serde(
        serialize_with = "wire::serialize_ts",
        deserialize_with = "wire::deserialize_ts"
    )]
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
    /// A [`TraceId`] when the shipper, the router or ES ingest wrote it; kept a plain
    /// string on the wire so that records spooled by older shippers still read.
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
///
/// The body's UTF-8 is checked once, by std's vectorised check, and lines are found
/// with `str::split` (memchr) rather than a byte-at-a-time split: the per-string
/// checks and the byte loop were about a third of the decoding in the pipeline
/// benchmark (issue 14). A body that is not UTF-8 goes line by line, to name the
/// first bad line as before.
pub fn decode_ndjson(body: &[u8]) -> Result<Vec<LogRecord>> {
    let Ok(text) = std::str::from_utf8(body) else {
        return decode_ndjson_lines(body);
    };
    // Records are about 200 bytes of NDJSON; a close guess saves the regrowing.
    let mut out = Vec::with_capacity(body.len() / 192 + 1);
    for (i, line) in text.split('\n').enumerate() {
        if line.bytes().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let rec = serde_json::from_str(line).map_err(|source| Error::BadRecord {
            line: i + 1,
            source,
        })?;
        out.push(rec);
    }
    Ok(out)
}

/// [`decode_ndjson`] for a body that is not all UTF-8: each line checked on its own.
fn decode_ndjson_lines(body: &[u8]) -> Result<Vec<LogRecord>> {
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

/// The whole of `task.json`: the task's tags and what the node promised about its
/// log files, so that the shipper (which collects rotated files once shipped and
/// enforces the budget) needs nothing but the sandbox. A separate struct rather than
/// more fields on [`TaskMeta`], which every record-building test spells out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFile {
    #[serde(flatten)]
    pub meta: TaskMeta,
    /// Most bytes the task's log files (`stdout`, `stderr` and their rotations
    /// `stdout.1`, `stdout.2`, ... numbered upwards, never reused) may hold on disk;
    /// `None` (a sandbox of an older node) means no budget is enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_budget_bytes: Option<u64>,
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
    /// With `by=level`: the count per level ("" for records without one); absent
    /// otherwise.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by: BTreeMap<String, u64>,
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
    /// The containerizers the agent offers besides plain processes, as Mesos's
    /// `--containerizers` names them: `docker` when its node can reach a Docker
    /// engine. Apps with a Docker container are placed only on agents listing it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containerizers: Vec<String>,
}

/// An inclusive range of host ports an agent offers to its tasks, as Mesos declares
/// them (`--resources 'ports:[31000-32000]'`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    pub begin: u16,
    pub end: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.begin..=self.end).contains(&port)
    }

    /// How many ports the range holds.
    pub fn len(&self) -> usize {
        // Saturating: a range that arrived inverted over the wire counts as empty-ish
        // rather than wrapping (see [`validate_port_ranges`]).
        usize::from(self.end.saturating_sub(self.begin)) + 1
    }

    /// Never true: a range holds at least its `begin`; here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.begin, self.end)
    }
}

/// Formats ranges the way Mesos shows them: `[31000-32000,33000-33010]`.
pub fn format_port_ranges(ranges: &[PortRange]) -> String {
    let parts: Vec<String> = ranges.iter().map(PortRange::to_string).collect();
    format!("[{}]", parts.join(","))
}

/// Parses Mesos port ranges: `[31000-32000]`, `[8080-8080, 31000-32000]`, with or
/// without the brackets; a single port `8080` is the range `8080-8080`. Ranges come
/// back sorted; overlapping or inverted ranges and port 0 are errors, since an agent
/// declaring them is misconfigured.
pub fn parse_port_ranges(s: &str) -> Result<Vec<PortRange>> {
    let bad = || Error::BadPortRanges(s.to_string());
    let t = s.trim();
    let inner = match (t.strip_prefix('['), t.strip_suffix(']')) {
        (Some(_), Some(_)) => &t[1..t.len() - 1],
        (None, None) => t,
        _ => return Err(bad()),
    };
    let mut out = Vec::new();
    for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (b, e) = part.split_once('-').unwrap_or((part, part));
        let (b, e) = (
            b.trim().parse::<u16>().map_err(|_| bad())?,
            e.trim().parse::<u16>().map_err(|_| bad())?,
        );
        if b == 0 || e < b {
            return Err(bad());
        }
        out.push(PortRange { begin: b, end: e });
    }
    if out.is_empty() {
        return Err(bad());
    }
    validate_port_ranges(&mut out).map_err(|_| bad())?;
    Ok(out)
}

/// Sorts `ranges` and checks them as [`parse_port_ranges`] does (no port 0, none
/// inverted, none overlapping), for ranges that arrived as JSON rather than text.
pub fn validate_port_ranges(ranges: &mut [PortRange]) -> Result<()> {
    ranges.sort();
    let bad = |r: &[PortRange]| {
        Error::BadPortRanges(
            r.iter()
                .map(|p| format!("{}-{}", p.begin, p.end))
                .collect::<Vec<_>>()
                .join(","),
        )
    };
    if ranges.iter().any(|r| r.begin == 0 || r.end < r.begin)
        || ranges.windows(2).any(|w| w[1].begin <= w[0].end)
    {
        return Err(bad(ranges));
    }
    Ok(())
}

/// `POST /v1/agents/register` body: the agent plus the host ports it offers. Kept
/// apart from [`AgentInfo`] so that adding it changed no existing shape; an agent
/// that declares no ranges lets its node pick free ports from the kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRegistration {
    #[serde(flatten)]
    pub info: AgentInfo,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// The host port of each of the `port_count` ports as the scheduler assigned it:
    /// a fixed port (`requirePorts`) or one from the agent's declared ranges; 0 lets
    /// the node pick a free one. Empty means all 0.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// The ports' declared numbers (`portDefinitions[].port`, 0 for dynamic) and
    /// names ("" for unnamed), so the node can set Marathon's `PORT_<port>` and
    /// `PORT_<NAME>`; empty when the app has neither.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_definitions: Vec<PortLabel>,
    /// The app's health checks; the node runs them and reports [`HealthResult`]s.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_checks: Vec<HealthCheck>,
    /// The app's `mem` in MiB: the node's memory limit for the task where it can
    /// enforce one (cgroup v2); `None` (an older scheduler) runs it unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<f64>,
    /// The app's `disk` in MiB: the budget of the task's log files in its sandbox;
    /// `None` (unset, or an older scheduler) takes the node's default budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<f64>,
    /// The app's Marathon `user`: who the task runs as on a root agent. `None` lets
    /// the node choose (an unprivileged uid of the task's own by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The app's `cpus`: a Docker container's CPU limit (process tasks are not
    /// limited in CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Marathon's `taskKillGracePeriodSeconds`: SIGTERM to SIGKILL; `None` takes the
    /// node's default grace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_grace_seconds: Option<f64>,
    /// Run the task as this Docker container instead of `sh -c cmd` on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerSpec>,
}

/// What an agent lists in [`AgentInfo::containerizers`] when its node can run Docker
/// containers.
pub const CONTAINERIZER_DOCKER: &str = "docker";

/// A task's Docker container, from its app's Marathon `container`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DockerSpec {
    pub image: String,
    /// `host` (the agent's network, the task binds its `PORT0`..), `bridge` (Docker's
    /// bridge, `port_mappings` published on the host ports), `none`, or the name of
    /// a user-defined Docker network.
    pub network: String,
    /// One per host port of the task, in order: the port inside the container the
    /// host port is published to (0: the same number as the host port).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<DockerPortMapping>,
    /// The app's `cmd`, run by `/bin/sh -c` in the container (replacing the image's
    /// entrypoint, as Mesos does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// The app's `args`: the container's command after the image's entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// `docker.parameters` as (key, value), the `docker run --key=value` options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<(String, String)>,
    #[serde(default)]
    pub force_pull_image: bool,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<DockerVolume>,
}

/// One port of a [`DockerSpec`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerPortMapping {
    pub container_port: u16,
    /// `tcp`, `udp` or `udp,tcp`.
    pub protocol: String,
}

/// A host directory bind-mounted into a [`DockerSpec`]'s container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerVolume {
    pub container_path: String,
    pub host_path: String,
    pub read_only: bool,
}

/// A port of a [`TaskSpec`] as the app declared it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortLabel {
    /// The declared port (Marathon's service port, or the fixed host port with
    /// `requirePorts`); 0 for a dynamic one.
    #[serde(default)]
    pub port: u16,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

impl PortLabel {
    /// The variable a port named `name` is handed to its task in: `PORT_` and the name
    /// upper-cased as Marathon does, with `-` as `_` so that a shell can read it
    /// (`PORT_ADMIN_UI`). Here because both sides rely on it: the control plane refuses
    /// two names of one app that give the same variable, the node sets it.
    pub fn env_name(name: &str) -> String {
        let name: String = name
            .chars()
            .map(|c| match c {
                '-' => '_',
                c => c.to_ascii_uppercase(),
            })
            .collect();
        format!("PORT_{name}")
    }
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
    /// The back-pressure figures of the shipper beside the node, when there is one.
    /// Optional so that nodes of an older build, and nodes without a shipper, keep
    /// heartbeating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipper: Option<ShipperStatus>,
}

/// How far an agent's log shipper is behind, carried in its heartbeat so the Hosts
/// page shows back-pressure per agent (the same figures are in the agent's
/// `/metrics`). A snapshot, not a history: the scheduler keeps only the last one.
/// Every field defaults to 0 so either side may add figures without breaking the
/// other.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipperStatus {
    /// Live and rotated task log files in all sandboxes, at the shipper's last scan.
    #[serde(default)]
    pub log_bytes_on_disk: u64,
    /// Sum of the log budgets of the sandboxes seen; 0 when unknown.
    #[serde(default)]
    pub log_budget_bytes_total: u64,
    /// Unread log bytes given up on for a task's budget since the agent started.
    #[serde(default)]
    pub log_bytes_dropped: u64,
    /// Batches waiting in the disk spool, in bytes, and the spool's bound.
    #[serde(default)]
    pub spool_bytes: u64,
    #[serde(default)]
    pub spool_max_bytes: u64,
    /// The shipper stopped reading because the spool is full (or disabled) and the
    /// indexer has not taken the batch in flight: the last resort of back-pressure.
    #[serde(default)]
    pub reading_paused: bool,
    /// Bytes of log files not yet acknowledged by the indexer, over all files.
    #[serde(default)]
    pub lag_bytes: u64,
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

    #[test]
    fn port_ranges_parse_in_mesos_syntax() {
        let r = parse_port_ranges("[31000-32000, 8080-8080]").unwrap();
        assert_eq!(
            r,
            vec![
                PortRange {
                    begin: 8080,
                    end: 8080
                },
                PortRange {
                    begin: 31000,
                    end: 32000
                }
            ]
        );
        assert_eq!(format_port_ranges(&r), "[8080-8080,31000-32000]");
        assert_eq!(parse_port_ranges("9000").unwrap()[0].len(), 1);
        for bad in [
            "",
            "[]",
            "[0-10]",
            "[10-5]",
            "[1-70000]",
            "[1-10,5-20]",
            "[1-10",
            "x-y",
        ] {
            let err = parse_port_ranges(bad).unwrap_err().to_string();
            assert!(err.contains("invalid port ranges"), "{bad}: {err}");
        }
    }

    #[test]
    fn agent_registration_flattens_the_agent_and_defaults_ports() {
        let json = r#"{"name":"n1","address":"10.0.0.1","ports":[{"begin":31000,"end":31010}]}"#;
        let reg: AgentRegistration = serde_json::from_str(json).unwrap();
        assert_eq!(reg.info.name, "n1");
        assert_eq!(reg.ports[0].len(), 11);
        // A node of an older build sends a bare AgentInfo.
        let reg: AgentRegistration =
            serde_json::from_str(r#"{"name":"n1","address":"a"}"#).unwrap();
        assert!(reg.ports.is_empty());
    }

    #[test]
    fn heartbeat_shipper_is_optional_both_ways() {
        // A node of an older build sends no shipper; a node without one sends none.
        let hb: HeartbeatRequest = serde_json::from_str(r#"{"tasks":[]}"#).unwrap();
        assert_eq!(hb.shipper, None);
        let json = serde_json::to_string(&HeartbeatRequest::default()).unwrap();
        assert!(!json.contains("shipper"), "{json}");
        // Figures this build does not know yet, or misses, do not fail the heartbeat.
        let hb: HeartbeatRequest = serde_json::from_str(
            r#"{"tasks":[],"shipper":{"spool_bytes":5,"reading_paused":true,"new":1}}"#,
        )
        .unwrap();
        let want = ShipperStatus {
            spool_bytes: 5,
            reading_paused: true,
            ..ShipperStatus::default()
        };
        assert_eq!(hb.shipper.as_ref(), Some(&want));
        let back: HeartbeatRequest =
            serde_json::from_str(&serde_json::to_string(&hb).unwrap()).unwrap();
        assert_eq!(back, hb);
    }

    proptest! {
        /// The fast path (one UTF-8 check, `str::split`) decides as the line-by-line
        /// one does, on valid bodies and on any bytes at all.
        #[test]
        fn ndjson_fast_path_agrees_with_line_by_line(
            msgs in proptest::collection::vec(".{0,40}", 0..6),
            junk in proptest::collection::vec(any::<u8>(), 0..40),
            at in 0usize..8,
        ) {
            let meta = TaskMeta {
                host: "h".into(), app: "a".into(), task: "t".into(), instance: 0, ports: vec![],
            };
            let recs: Vec<LogRecord> = msgs.iter().enumerate().map(|(i, m)| {
                LogRecord::new(
                    DateTime::from_timestamp(1_700_000_000 + i as i64, 0).unwrap(),
                    &meta, Stream::Stdout, m.clone(),
                )
            }).collect();
            let mut body = encode_ndjson(&recs);
            let same = |a: &Result<Vec<LogRecord>>, b: &Result<Vec<LogRecord>>| match (a, b) {
                (Ok(x), Ok(y)) => x == y,
                (Err(Error::BadRecord { line: x, .. }), Err(Error::BadRecord { line: y, .. })) => x == y,
                _ => false,
            };
            let (fast, slow) = (decode_ndjson(&body), decode_ndjson_lines(&body));
            prop_assert!(fast.is_ok());
            prop_assert!(same(&fast, &slow));
            // Junk spliced in at a line boundary (or the end).
            let cut = body.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i + 1)
                .nth(at).unwrap_or(body.len());
            body.splice(cut..cut, junk.iter().copied());
            let (fast, slow) = (decode_ndjson(&body), decode_ndjson_lines(&body));
            prop_assert!(same(&fast, &slow), "{fast:?} vs {slow:?}");
        }

        #[test]
        fn port_ranges_round_trip(starts in proptest::collection::btree_set(1u16..60000, 1..5), len in 0u16..100) {
            // Disjoint ranges: each starts 1000 apart at most `len` long.
            let ranges: Vec<PortRange> = starts.iter().map(|s| s - s % 1000 + 1).collect::<std::collections::BTreeSet<_>>()
                .into_iter().map(|b| PortRange { begin: b, end: b + len }).collect();
            let back = parse_port_ranges(&format_port_ranges(&ranges)).unwrap();
            prop_assert_eq!(back, ranges);
        }

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
