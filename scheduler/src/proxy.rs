//! The proxy (what users and `$SANDTRAIL_ROUTER` call "the router"): runs on every agent and carries app-to-app HTTP calls
//! (`$SANDTRAIL_ROUTER/<app>/...`) to an instance anywhere in the cluster, propagating
//! a W3C `traceparent` and writing one access record per call for the shipper.
//!
//! Instances come from the control plane's `/v1/services/{app}`, cached for a short
//! TTL: a freshly started or stopped instance is seen within about a second, at the
//! cost of one lookup per app per TTL (and a stale list is served while the control
//! plane is unreachable). Bodies are streamed both ways; the one exception is that a
//! small request body with a known length is buffered, which is what lets a call be
//! retried on another instance when the first one refuses the connection.
//!
//! Instances are called through hyper's pooled HTTP/1.1 client directly, not reqwest:
//! per call that skips URL parsing and re-wrapping request, response and body, which
//! with cheaper access records and lock-free instance picking cut the router's
//! instructions per call by about a third (BENCHMARKS.md). The trade-off: plain
//! HTTP/1.1 without proxy support, neither of which calls inside a cluster need.
//!
//! Callers are identified without their cooperation: the router remembers, for a few
//! minutes, which callee it sent each minted span id to, so a request whose parent
//! span is one of those came from that callee. That works for calls that pass through
//! the same router twice; across routers the caller can still be joined from the
//! access records (the parent span is the `span_id` of the record that reached it), or
//! named by the `x-sandtrail-caller` header.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use protocol::metrics::{Exposition, Kind};
use protocol::{
    wire::LogRecordRef, Level, ServiceEndpoint, Stream as LogStream, TraceId, CALLER_TASK_HEADER,
    TOKEN_HEADER, TRACE_ID_HEADER,
};
use tracing::{debug, warn};

use crate::{Error, Result};

/// Request bodies with a known length up to this size are buffered so the call can be
/// retried on another instance; larger or chunked bodies are streamed, single attempt.
const RETRY_BODY_LIMIT: u64 = 1 << 20;
/// How many minted spans are remembered for caller attribution, and for how long.
const SPAN_MAP_CAPACITY: usize = 100_000;
const SPAN_MAP_TTL: Duration = Duration::from_secs(300);
/// Access records queued for the writer thread before new ones are dropped (counted).
const ACCESS_QUEUE: usize = 65_536;
/// The access-log writer gathers records for this long after the first of a batch and
/// writes them with one `write`: one wake-up and one syscall per batch instead of per
/// call (on 2 cores the per-call wake-up and `write` cost about a tenth of the
/// router's throughput, see BENCHMARKS.md), at the cost of
/// records reaching the file up to this much later.
const ACCESS_BATCH_WINDOW: Duration = Duration::from_millis(5);
/// A batch is written once it holds this many bytes even if more are queued.
const ACCESS_BATCH_BYTES: usize = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

/// Headers that describe one connection, not the message; never forwarded (by the
/// router, nor by a follower scheduler forwarding to its leader).
pub(crate) const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// How a proxy is set up; `ProxyConfig::new` fills in the defaults.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The agent this router runs on (`router_host` on access records).
    pub host: String,
    pub scheduler_url: String,
    /// Access records are appended here (`work_dir/router/access.log`), one JSON line
    /// per call; the shipper tails it.
    pub access_log: PathBuf,
    pub token: Option<String>,
    /// How long an answer of `/v1/services/{app}` is reused.
    pub services_ttl: Duration,
}

impl ProxyConfig {
    /// A config without token and with a 1 s services cache.
    pub fn new(
        host: impl Into<String>,
        scheduler_url: impl Into<String>,
        access_log: impl Into<PathBuf>,
    ) -> ProxyConfig {
        ProxyConfig {
            host: host.into(),
            scheduler_url: scheduler_url.into(),
            access_log: access_log.into(),
            token: None,
            services_ttl: Duration::from_secs(1),
        }
    }
}

/// The proxy service; cheap to clone (shared state behind an `Arc`).
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

/// Most app names the services cache holds. Callers pick the names (any path's first
/// segment), so without a cap the cache grew by one entry per name ever asked for.
pub const MAX_CACHED_APPS: usize = 1024;

/// Inserts `app` into a cache of at most `cap` entries. When full, answers for unknown
/// apps go first (they only spare the control plane a lookup), then the oldest known
/// ones: a known app's stale answer is what keeps calls flowing while the control
/// plane is away, so it is the last thing to forget.
fn insert_bounded(cache: &mut HashMap<String, Cached>, app: &str, entry: Cached, cap: usize) {
    if cache.len() >= cap && !cache.contains_key(app) {
        cache.retain(|_, c| c.answer.is_some());
        while cache.len() >= cap {
            let Some(oldest) = cache
                .iter()
                .min_by_key(|(_, c)| c.at)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            cache.remove(&oldest);
        }
    }
    cache.insert(app.to_string(), entry);
}

struct Inner {
    cfg: ProxyConfig,
    /// `cfg.scheduler_url` split (schedulers in HA) and the one in use.
    schedulers: protocol::endpoints::Endpoints,
    /// Talks to instances: plain HTTP/1.1 with a keep-alive pool, no redirects
    /// followed, no overall timeout (calls may stream).
    upstream: hyper_util::client::legacy::Client<HttpConnector, Body>,
    /// Talks to the control plane.
    control: reqwest::Client,
    /// `None` in an entry = the control plane answered 404 (unknown app).
    services: Mutex<HashMap<String, Cached>>,
    /// Requests in flight per `address:port`, for least-outstanding picking; each
    /// cached answer holds its instances' counters, this map only hands them out.
    outstanding: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    rr: AtomicUsize,
    spans: Mutex<SpanMap>,
    log: AccessLog,
    metrics: RouterMetrics,
}

struct Cached {
    at: Instant,
    answer: Option<Arc<Endpoints>>,
}

#[derive(Default)]
struct RouterMetrics {
    requests: AtomicU64,
    /// Responses by status class: index 0 = 1xx ... 4 = 5xx.
    by_class: [AtomicU64; 5],
    retries: AtomicU64,
    upstream_errors: AtomicU64,
    /// Latency of completed calls.
    latency: protocol::histogram::Histogram,
    services_lookups: AtomicU64,
}

impl Proxy {
    /// Opens (creating) the access log and starts its writer thread.
    pub fn new(cfg: ProxyConfig) -> Result<Proxy> {
        let log = AccessLog::open(&cfg.access_log)?;
        // Instances are cluster-internal: no proxy (an HTTP_PROXY meant for the outside
        // world must not capture them), and no URL parsing beyond the URI itself.
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let upstream = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            // Without a timer idle connections are never reaped in the background.
            .pool_timer(TokioTimer::new())
            .build(connector);
        let control = reqwest::Client::builder()
            .timeout(CONTROL_TIMEOUT)
            .build()?;
        Ok(Proxy {
            inner: Arc::new(Inner {
                schedulers: protocol::endpoints::Endpoints::parse(&cfg.scheduler_url),
                cfg,
                upstream,
                control,
                services: Mutex::new(HashMap::new()),
                outstanding: Mutex::new(HashMap::new()),
                rr: AtomicUsize::new(0),
                spans: Mutex::new(SpanMap::new(SPAN_MAP_CAPACITY, SPAN_MAP_TTL)),
                log,
                metrics: RouterMetrics::default(),
            }),
        })
    }

    /// `ANY /{app}`, `ANY /{app}/` and `ANY /{app}/{*rest}`. Serve it with
    /// `into_make_service_with_connect_info::<SocketAddr>()` so external callers are
    /// recorded by IP (without it their `peer_host` is "unknown").
    pub fn axum_router(&self) -> axum::Router {
        axum::Router::new()
            .route("/{app}", axum::routing::any(handle))
            // `{*rest}` does not match an empty rest, so `/app/` needs its own route.
            .route("/{app}/", axum::routing::any(handle))
            .route("/{app}/{*rest}", axum::routing::any(handle))
            .with_state(self.clone())
    }

    /// Prometheus text format.
    pub fn metrics(&self) -> String {
        let m = &self.inner.metrics;
        // Escaped by the writer: a host name is configuration, and a quote would
        // break the text.
        let host = [("host", self.inner.cfg.host.as_str())];
        let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let spans = self.inner.spans.lock().expect("span map lock").len();
        let mut e = Exposition::new();
        e.family(
            "sandtrail_router_requests_total",
            "Calls received.",
            Kind::Counter,
        )
        .sample(&host, g(&m.requests));
        e.family(
            "sandtrail_router_responses_total",
            "Responses by status class.",
            Kind::Counter,
        );
        for (i, c) in m.by_class.iter().enumerate() {
            let class = format!("{}xx", i + 1);
            e.sample(&[host[0], ("class", &class)], g(c));
        }
        for (name, help, kind, value) in [
            (
                "sandtrail_router_retries_total",
                "Calls retried on another instance after a connect failure.",
                Kind::Counter,
                g(&m.retries),
            ),
            (
                "sandtrail_router_upstream_errors_total",
                "Calls that failed upstream (502).",
                Kind::Counter,
                g(&m.upstream_errors),
            ),
            (
                "sandtrail_router_services_lookups_total",
                "Lookups of /v1/services sent to the control plane.",
                Kind::Counter,
                g(&m.services_lookups),
            ),
            (
                "sandtrail_router_span_map_entries",
                "Minted spans remembered for caller attribution.",
                Kind::Gauge,
                spans as u64,
            ),
            (
                "sandtrail_router_access_records_written_total",
                "Access records appended to the access log.",
                Kind::Counter,
                g(&self.inner.log.written),
            ),
            (
                "sandtrail_router_access_records_dropped_total",
                "Access records dropped because the writer fell behind or failed.",
                Kind::Counter,
                g(&self.inner.log.dropped),
            ),
        ] {
            e.family(name, help, kind).sample(&host, value);
        }
        e.histogram(
            "sandtrail_router_latency_seconds",
            "Latency of completed calls, from the request to the end of the answer.",
            &host,
            &m.latency,
        );
        e.finish()
    }

    /// Waits until every access record queued so far is written and synced. Call it
    /// after the server has stopped accepting calls.
    pub async fn shutdown(&self) {
        let (ack, done) = tokio::sync::oneshot::channel();
        let tx = self.inner.log.tx.clone();
        // `send` blocks while the queue is full; keep that off the runtime.
        let sent = tokio::task::spawn_blocking(move || tx.send(LogMsg::Flush(ack)).is_ok())
            .await
            .unwrap_or(false);
        if !sent || done.await.is_err() {
            warn!(path = %self.inner.cfg.access_log.display(), "access log writer is gone, could not flush");
        }
    }
}

// ---------------------------------------------------------------------------------
// Trace context

/// A parsed W3C `traceparent` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    pub version: u8,
    /// 32 lowercase hex digits, not all zero.
    pub trace_id: TraceId,
    /// The caller's span: 16 lowercase hex digits, not all zero.
    pub parent_id: String,
    pub flags: u8,
}

/// Parses `traceparent` per W3C Trace Context: `vv-<32 hex>-<16 hex>-ff`, lowercase
/// hex only, all-zero ids and version `ff` invalid. Version 00 must be exactly 55
/// characters; later versions may append `-...` fields, which are ignored.
pub fn parse_traceparent(value: &str) -> Option<TraceParent> {
    let v = value.trim();
    let b = v.as_bytes();
    if b.len() < 55 || !b[..55].is_ascii() || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let is_hex = |s: &str| {
        s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    };
    let (version, trace_id, parent_id, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
    if ![version, trace_id, parent_id, flags]
        .iter()
        .all(|p| is_hex(p))
    {
        return None;
    }
    let version = u8::from_str_radix(version, 16).ok()?;
    if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
        return None;
    }
    if trace_id.bytes().all(|c| c == b'0') || parent_id.bytes().all(|c| c == b'0') {
        return None;
    }
    Some(TraceParent {
        version,
        trace_id: TraceId::parse(trace_id).ok()?,
        parent_id: parent_id.to_string(),
        flags: u8::from_str_radix(flags, 16).ok()?,
    })
}

/// A random, non-zero 128-bit trace id as 32 hex digits.
pub fn new_trace_id() -> TraceId {
    loop {
        let id: u128 = rand::random();
        if id != 0 {
            return TraceId::from_u128(id);
        }
    }
}

/// A random, non-zero 64-bit span id as 16 hex digits.
pub fn new_span_id() -> String {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return format!("{id:016x}");
        }
    }
}

/// Only spans this router minted (random 64-bit numbers) are inserted, so a span id
/// is its own hash; SipHash was a measurable part of the per-call cost.
#[derive(Default)]
struct SpanHasher(u64);

impl Hasher for SpanHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Span id → the instance it was sent to (that task is the caller of any request
/// naming the span as its parent), bounded in size and age; the oldest entries go
/// first.
struct SpanMap {
    cap: usize,
    ttl: Duration,
    /// span → (callee, inserted at, generation).
    map: HashMap<u64, (Picked, Instant, u64), BuildHasherDefault<SpanHasher>>,
    /// Insertion order as (span, inserted at, generation); a span inserted twice is
    /// owned by its newest generation.
    order: VecDeque<(u64, Instant, u64)>,
    generation: u64,
}

impl SpanMap {
    fn new(cap: usize, ttl: Duration) -> SpanMap {
        SpanMap {
            cap,
            ttl,
            map: HashMap::default(),
            order: VecDeque::new(),
            generation: 0,
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn insert(&mut self, span: &str, callee: Picked, now: Instant) {
        let Ok(key) = u64::from_str_radix(span, 16) else {
            return;
        };
        self.generation += 1;
        self.map.insert(key, (callee, now, self.generation));
        self.order.push_back((key, now, self.generation));
        while self.order.len() > self.cap
            || self
                .order
                .front()
                .is_some_and(|(_, at, _)| now.duration_since(*at) > self.ttl)
        {
            let Some((old, _, generation)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|(_, _, g)| *g == generation) {
                self.map.remove(&old);
            }
        }
    }

    fn get(&self, span: &str, now: Instant) -> Option<&Picked> {
        let key = u64::from_str_radix(span, 16).ok()?;
        let (callee, at, _) = self.map.get(&key)?;
        (now.duration_since(*at) <= self.ttl).then_some(callee)
    }
}

// ---------------------------------------------------------------------------------
// Forwarding

/// Who made a call, as recorded on its access record.
#[derive(Debug, Clone)]
struct Caller {
    peer_app: String,
    peer_host: String,
    task: Option<String>,
}

/// Everything known about a call before it is forwarded.
struct Call {
    start: Instant,
    method: String,
    /// The path as received, `/app/rest`, without the query.
    path: String,
    app: String,
    trace_id: TraceId,
    span_id: String,
    parent_span_id: Option<String>,
    request_id: String,
    caller: Caller,
}

async fn handle(State(router): State<Proxy>, req: Request) -> Response {
    let inner = &router.inner;
    inner.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let client_ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let headers = req.headers();
    let incoming = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent);
    let caller = inner.identify_caller(incoming.as_ref(), headers, client_ip);
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        // From the thread-local generator: `new_v4` asks the kernel each time.
        .unwrap_or_else(|| {
            uuid::Builder::from_random_bytes(rand::random())
                .into_uuid()
                .to_string()
        });
    let path = req.uri().path().to_string();
    let app = path[1..].split('/').next().unwrap_or_default().to_string();
    let call = Call {
        start: Instant::now(),
        method: req.method().to_string(),
        app,
        trace_id: incoming
            .as_ref()
            .map(|t| t.trace_id.clone())
            .unwrap_or_else(new_trace_id),
        parent_span_id: incoming.map(|t| t.parent_id),
        span_id: new_span_id(),
        request_id,
        caller,
        path,
    };
    let trace = HeaderValue::from_str(call.trace_id.as_str()).expect("hex is a valid header value");
    let request_id = HeaderValue::from_str(&call.request_id).ok();
    let mut resp = match inner.forward(&call, req).await {
        Ok(sent) => respond(inner, call, sent),
        Err((err, callee)) => {
            if matches!(err, Error::Upstream { .. } | Error::Http(_)) {
                inner
                    .metrics
                    .upstream_errors
                    .fetch_add(1, Ordering::Relaxed);
                warn!(app = %call.app, trace_id = %call.trace_id, error = %err, "routed call failed");
            }
            let resp = err.into_response();
            let extra = [("error", serde_json::Value::String(err_message(&resp)))];
            inner.finish(
                &call,
                callee.as_ref(),
                resp.status().as_u16(),
                0,
                None,
                &extra,
            );
            resp
        }
    };
    let h = resp.headers_mut();
    h.insert(HeaderName::from_static(TRACE_ID_HEADER), trace);
    if let Some(id) = request_id {
        h.insert(HeaderName::from_static("x-request-id"), id);
    }
    resp
}

/// Turns the upstream's answer into the router's: its head with the hop-by-hop
/// headers removed, its body passed through as it arrives, counted by the guard that
/// writes the access record when the body is done.
fn respond(inner: &Arc<Inner>, call: Call, sent: Sent) -> Response {
    let (mut parts, incoming) = sent.resp.into_parts();
    strip_response_headers(&mut parts.headers);
    let expected_len = http_body::Body::size_hint(&incoming).exact();
    let guard = AccessGuard {
        router: Arc::clone(inner),
        call: Some(CallDone {
            call,
            callee: sent.callee,
            status: parts.status.as_u16(),
            head_ms: sent.head_ms,
            attempts: sent.attempts,
        }),
        bytes: 0,
        expected_len,
        _inflight: sent.inflight,
    };
    let body = AccessBody {
        inner: incoming,
        guard,
    };
    Response::from_parts(parts, Body::new(body))
}

fn err_message(resp: &Response) -> String {
    resp.status()
        .canonical_reason()
        .unwrap_or("error")
        .to_lowercase()
}

/// A request body ready to send: buffered ones can be sent twice.
enum Outgoing {
    Buffered(Bytes),
    Streaming(Option<Body>),
}

/// An upstream's response head and what the access record needs to know about it.
struct Sent {
    resp: hyper::Response<hyper::body::Incoming>,
    callee: Picked,
    inflight: InFlight,
    head_ms: f64,
    attempts: u32,
}

impl Inner {
    fn identify_caller(
        &self,
        incoming: Option<&TraceParent>,
        headers: &HeaderMap,
        client_ip: Option<String>,
    ) -> Caller {
        let ip = client_ip.unwrap_or_else(|| "unknown".into());
        if let Some(tp) = incoming {
            let spans = self.spans.lock().expect("span map lock");
            if let Some(c) = spans.get(&tp.parent_id, Instant::now()) {
                let ep = c.endpoint();
                return Caller {
                    peer_app: ep.app.clone(),
                    peer_host: ep.host.clone(),
                    task: Some(ep.task.clone()),
                };
            }
        }
        if let Some(task) = headers
            .get(CALLER_TASK_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let app = task.split('.').next().unwrap_or(task);
            return Caller {
                peer_app: app.to_string(),
                peer_host: ip,
                task: Some(task.to_string()),
            };
        }
        Caller {
            peer_app: "external".into(),
            peer_host: ip,
            task: None,
        }
    }

    /// Instances of `app`, from the cache while fresh; a stale answer is served when the
    /// control plane cannot be reached.
    async fn endpoints(&self, app: &str) -> Result<Arc<Endpoints>> {
        let now = Instant::now();
        let stale = {
            let cache = self.services.lock().expect("services cache lock");
            match cache.get(app) {
                Some(c) if now.duration_since(c.at) < self.cfg.services_ttl => {
                    return c
                        .answer
                        .clone()
                        .ok_or_else(|| Error::UnknownApp(app.into()));
                }
                Some(c) => c.answer.clone(),
                None => None,
            }
        };
        match self.fetch_services(app).await {
            Ok(answer) => {
                let answer = answer.map(|eps| Arc::new(self.with_counters(eps)));
                insert_bounded(
                    &mut self.services.lock().expect("services cache lock"),
                    app,
                    Cached {
                        at: Instant::now(),
                        answer: answer.clone(),
                    },
                    MAX_CACHED_APPS,
                );
                answer.ok_or_else(|| Error::UnknownApp(app.into()))
            }
            Err(e) => match stale {
                Some(eps) => {
                    debug!(app, error = %e, "services lookup failed, using the cached answer");
                    Ok(eps)
                }
                None => Err(e),
            },
        }
    }

    /// Pairs each instance with its in-flight counter, shared by every answer that
    /// lists the same `address:port`, so picking needs no lock or lookup per call.
    fn with_counters(&self, list: Vec<ServiceEndpoint>) -> Endpoints {
        let mut counters = self.outstanding.lock().expect("outstanding lock");
        if counters.len() > 10_000 {
            counters.retain(|_, c| Arc::strong_count(c) > 1 || c.load(Ordering::Relaxed) > 0);
        }
        let authorities: Vec<String> = list.iter().map(url_of).collect();
        let load = authorities
            .iter()
            .map(|a| Arc::clone(counters.entry(a.clone()).or_default()))
            .collect();
        Endpoints {
            list,
            load,
            authorities,
        }
    }

    async fn fetch_services(&self, app: &str) -> Result<Option<Vec<ServiceEndpoint>>> {
        self.metrics
            .services_lookups
            .fetch_add(1, Ordering::Relaxed);
        let (at, base) = self.schedulers.current();
        let url = format!("{base}/v1/services/{app}");
        let mut req = self.control.get(&url);
        if let Some(t) = &self.cfg.token {
            req = req.header(TOKEN_HEADER, t);
        }
        let upstream_err = |reason: String| Error::Upstream {
            addr: url.clone(),
            reason,
        };
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                self.schedulers.failed(at);
            }
            upstream_err(e.to_string())
        })?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(upstream_err(format!(
                "status {}, expected 200",
                resp.status()
            )));
        }
        let eps: Vec<ServiceEndpoint> = resp
            .json()
            .await
            .map_err(|e| upstream_err(format!("bad services answer: {e}")))?;
        Ok(Some(eps))
    }

    /// Picks the instance with the fewest calls in flight, rotating the starting point
    /// so ties go round robin; the pick is counted as in flight until the guard drops.
    fn pick(&self, eps: &Arc<Endpoints>, exclude: Option<usize>) -> Option<(Picked, InFlight)> {
        let n = eps.list.len();
        if n == 0 {
            return None;
        }
        let start = self.rr.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(usize, usize)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if Some(i) == exclude {
                continue;
            }
            let load = eps.load[i].load(Ordering::Relaxed);
            if best.is_none_or(|b| load < b.1) {
                best = Some((i, load));
            }
        }
        best.map(|(i, _)| {
            let c = Arc::clone(&eps.load[i]);
            c.fetch_add(1, Ordering::Relaxed);
            (
                Picked {
                    set: Arc::clone(eps),
                    idx: i,
                },
                InFlight(c),
            )
        })
    }

    /// Forwards the call and returns the upstream's response head. On error returns
    /// the callee it was meant for, if one was picked, so the access record names it.
    async fn forward(
        self: &Arc<Self>,
        call: &Call,
        req: Request,
    ) -> std::result::Result<Sent, (Error, Option<Picked>)> {
        let app = call.app.as_str();
        if !valid_app(app) {
            return Err((
                Error::BadRequest(format!(
                    "app name {app:?} in the path: expected letters, digits, '.', '-' or '_'"
                )),
                None,
            ));
        }
        let eps = self.endpoints(app).await.map_err(|e| (e, None))?;
        let (parts, body) = req.into_parts();
        let rest = &call.path[1 + app.len()..];
        let rest = if rest.is_empty() { "/" } else { rest };
        let query = parts.uri.query();
        let mut headers = parts.headers;
        let known_len = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let xff = (call.caller.peer_host != "unknown").then(|| {
            match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
                Some(prev) => format!("{prev}, {}", call.caller.peer_host),
                None => call.caller.peer_host.clone(),
            }
        });
        strip_request_headers(&mut headers);
        headers.insert(
            HeaderName::from_static("traceparent"),
            HeaderValue::from_str(&format!("00-{}-{}-01", call.trace_id, call.span_id))
                .expect("hex is a valid header value"),
        );
        if let Ok(v) = HeaderValue::from_str(&call.request_id) {
            headers.insert(HeaderName::from_static("x-request-id"), v);
        }
        if let Some(Ok(v)) = xff.map(|x| HeaderValue::from_str(&x)) {
            headers.insert(HeaderName::from_static("x-forwarded-for"), v);
        }

        let empty = axum::body::HttpBody::size_hint(&body).exact() == Some(0);
        let mut outgoing = if empty {
            Outgoing::Buffered(Bytes::new())
        } else if known_len.is_some_and(|n| n <= RETRY_BODY_LIMIT) {
            let bytes = axum::body::to_bytes(body, RETRY_BODY_LIMIT as usize)
                .await
                .map_err(|e| {
                    (
                        Error::BadRequest(format!("reading the request body failed: {e}")),
                        None,
                    )
                })?;
            Outgoing::Buffered(bytes)
        } else {
            Outgoing::Streaming(Some(body))
        };

        let (mut picked, mut inflight) = self
            .pick(&eps, None)
            .ok_or_else(|| (Error::NoInstance(app.to_string()), None))?;
        let mut attempt = 1;
        let resp = loop {
            // Remember the span before sending: the callee may call back through us
            // before its response is back.
            self.spans.lock().expect("span map lock").insert(
                &call.span_id,
                picked.clone(),
                Instant::now(),
            );
            let authority = &eps.authorities[picked.idx];
            let uri = match query {
                Some(q) => format!("http://{authority}{rest}?{q}"),
                None => format!("http://{authority}{rest}"),
            };
            let uri = hyper::Uri::try_from(uri).map_err(|e| {
                (
                    Error::Upstream {
                        addr: authority.clone(),
                        reason: format!("bad upstream address: {e}"),
                    },
                    Some(picked.clone()),
                )
            })?;
            // A buffered call may be sent again (a retry needs the headers a second
            // time); the last possible attempt takes them.
            let may_retry =
                attempt == 1 && eps.list.len() > 1 && matches!(outgoing, Outgoing::Buffered(_));
            let body = match &mut outgoing {
                Outgoing::Buffered(b) => Body::from(b.clone()),
                Outgoing::Streaming(b) => b.take().unwrap_or_else(Body::empty),
            };
            let mut req = hyper::Request::new(body);
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = uri;
            *req.headers_mut() = if may_retry {
                headers.clone()
            } else {
                std::mem::take(&mut headers)
            };
            match self.upstream.request(req).await {
                Ok(resp) => break resp,
                Err(e) => {
                    let next = if may_retry && e.is_connect() {
                        self.pick(&eps, Some(picked.idx))
                    } else {
                        None
                    };
                    match next {
                        Some((p, f)) => {
                            debug!(app, upstream = %authority, error = %error_chain(&e), "connect failed, trying another instance");
                            self.metrics.retries.fetch_add(1, Ordering::Relaxed);
                            (picked, inflight) = (p, f);
                            attempt += 1;
                        }
                        None => {
                            return Err((
                                Error::Upstream {
                                    addr: authority.clone(),
                                    reason: error_chain(&e),
                                },
                                Some(picked),
                            ));
                        }
                    }
                }
            }
        };
        Ok(Sent {
            resp,
            callee: picked,
            inflight,
            head_ms: ms(call.start.elapsed()),
            attempts: attempt,
        })
    }

    /// Writes the call's access record and counts it.
    fn finish(
        &self,
        call: &Call,
        callee: Option<&Picked>,
        status: u16,
        bytes: u64,
        head_ms: Option<f64>,
        extra: &[(&str, serde_json::Value)],
    ) {
        let latency = call.start.elapsed();
        let m = &self.metrics;
        let class = (status / 100).clamp(1, 5) as usize - 1;
        m.by_class[class].fetch_add(1, Ordering::Relaxed);
        m.latency.observe(latency);
        let line = access_line(
            &self.cfg.host,
            call,
            callee,
            status,
            ms(latency),
            bytes,
            head_ms,
            extra,
        );
        self.log.push(line);
    }
}

/// One answer of `/v1/services/{app}`, with each instance's in-flight counter and
/// `address:port` ready for building upstream URIs.
struct Endpoints {
    list: Vec<ServiceEndpoint>,
    load: Vec<Arc<AtomicUsize>>,
    authorities: Vec<String>,
}

/// The instance a call went to: a cheap handle into the answer it was picked from
/// (no strings copied per call).
#[derive(Clone)]
struct Picked {
    set: Arc<Endpoints>,
    idx: usize,
}

impl Picked {
    fn endpoint(&self) -> &ServiceEndpoint {
        &self.set.list[self.idx]
    }

    fn authority(&self) -> &str {
        &self.set.authorities[self.idx]
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `address:port`, with an IPv6 address in brackets so it can stand in a URI.
fn url_of(ep: &ServiceEndpoint) -> String {
    if ep.address.contains(':') && !ep.address.starts_with('[') {
        format!("[{}]:{}", ep.address, ep.port)
    } else {
        format!("{}:{}", ep.address, ep.port)
    }
}

/// Marathon app ids are lowercase letters, digits, '-' and '.'; '_' and capitals are
/// tolerated. Anything else (notably percent-encoding) cannot name an app.
fn valid_app(app: &str) -> bool {
    !app.is_empty()
        && app != "."
        && app != ".."
        && app
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
}

/// The client error with its causes, so "connection refused" is not hidden behind
/// "error sending request".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Removes, in place, the headers for which `drop` holds and the ones the
/// `connection` header lists. Most messages have nothing to remove but `host`, so the
/// map is only scanned, not rebuilt.
fn strip_headers(headers: &mut HeaderMap, drop: impl Fn(&str) -> bool) {
    let listed = if headers.contains_key(header::CONNECTION) {
        connection_listed(headers)
    } else {
        Vec::new()
    };
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let n = name.as_str();
            HOP_BY_HOP.contains(&n) || drop(n) || listed.iter().any(|l| l == n)
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(&name);
    }
}

/// Request headers to send upstream: hop-by-hop ones, `host` and `content-length`
/// (the client sets both) and the ones the router replaces are left out.
fn strip_request_headers(headers: &mut HeaderMap) {
    strip_headers(headers, |n| {
        matches!(
            n,
            "host" | "content-length" | "traceparent" | "x-request-id" | "x-forwarded-for"
        ) || n == CALLER_TASK_HEADER
    });
}

fn strip_response_headers(headers: &mut HeaderMap) {
    strip_headers(headers, |_| false);
}

/// The call's access record as one NDJSON line. Written from borrowed parts through
/// [`LogRecordRef`] (the same bytes an owned `LogRecord` serialises to): building an
/// owned record cost a dozen string copies per call.
#[allow(clippy::too_many_arguments)]
fn access_line(
    router_host: &str,
    call: &Call,
    callee: Option<&Picked>,
    status: u16,
    latency_ms: f64,
    bytes: u64,
    head_ms: Option<f64>,
    extra: &[(&str, serde_json::Value)],
) -> Vec<u8> {
    let ep = callee.map(Picked::endpoint);
    let msg = format!(
        "{} {} -> {status} {} {} {latency_ms:.1}ms",
        call.method,
        call.path,
        ep.map_or("-", |c| c.host.as_str()),
        ep.map_or("-", |c| c.task.as_str()),
    );
    let mut fields = BTreeMap::new();
    fields.insert(
        "caller_task".into(),
        call.caller
            .task
            .clone()
            .map_or(serde_json::Value::Null, serde_json::Value::String),
    );
    fields.insert("bytes".into(), bytes.into());
    // Time until the upstream's response head arrived (connection setup included):
    // the client does not expose the connect phase on its own.
    fields.insert(
        "connect_ms".into(),
        head_ms.map_or(serde_json::Value::Null, serde_json::Value::from),
    );
    fields.insert("router_host".into(), router_host.into());
    fields.insert("request_id".into(), call.request_id.clone().into());
    if let Some(c) = callee {
        fields.insert("upstream".into(), c.authority().into());
    }
    for (k, v) in extra {
        fields.insert((*k).to_string(), v.clone());
    }
    let rec = LogRecordRef {
        ts: chrono::Utc::now(),
        // Without a callee (unknown app, no instance) the record belongs to this
        // router's host so it is still found next to the calls that worked.
        host: ep.map_or(router_host, |c| c.host.as_str()),
        app: ep.map_or(call.app.as_str(), |c| c.app.as_str()),
        task: ep.map_or("", |c| c.task.as_str()),
        instance: ep.map_or(0, |c| c.instance),
        stream: LogStream::Access,
        level: Some(match status {
            500.. => Level::Error,
            400..=499 => Level::Warn,
            _ => Level::Info,
        }),
        msg: &msg,
        fields: &fields,
        trace_id: Some(call.trace_id.as_str()),
        span_id: Some(&call.span_id),
        parent_span_id: call.parent_span_id.as_deref(),
        latency_ms: Some(latency_ms),
        status: Some(status),
        method: Some(&call.method),
        path: Some(&call.path),
        peer_host: Some(&call.caller.peer_host),
        peer_app: Some(&call.caller.peer_app),
        source: "",
        offset: 0,
    };
    let mut line = Vec::with_capacity(768);
    rec.write_ndjson(&mut line);
    line
}

/// Decrements an instance's in-flight count when the call is over.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct CallDone {
    call: Call,
    callee: Picked,
    status: u16,
    head_ms: f64,
    attempts: u32,
}

/// Writes the access record once the response body has been sent (or abandoned), so
/// latency and bytes cover the whole response.
struct AccessGuard {
    router: Arc<Inner>,
    call: Option<CallDone>,
    bytes: u64,
    expected_len: Option<u64>,
    _inflight: InFlight,
}

impl AccessGuard {
    fn finish(&mut self, error: Option<String>) {
        let Some(done) = self.call.take() else {
            return;
        };
        let mut extra = Vec::new();
        if done.attempts > 1 {
            extra.push(("attempts", serde_json::Value::from(done.attempts)));
        }
        if let Some(e) = error {
            extra.push(("error", serde_json::Value::String(e)));
        }
        self.router.finish(
            &done.call,
            Some(&done.callee),
            done.status,
            self.bytes,
            Some(done.head_ms),
            &extra,
        );
    }
}

impl Drop for AccessGuard {
    fn drop(&mut self) {
        // The server may drop a body once it has sent `content-length` bytes without
        // polling for the end; only a short body counts as aborted.
        let complete = self.expected_len.is_some_and(|n| n == self.bytes);
        self.finish((!complete).then(|| "response body not fully sent".to_string()));
    }
}

/// The upstream's response body as it arrives, frame by frame, counted; its size
/// hint is passed on so a known length stays a `content-length` response.
struct AccessBody {
    inner: hyper::body::Incoming,
    guard: AccessGuard,
}

impl http_body::Body for AccessBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.guard.bytes += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.guard
                    .finish(Some(format!("upstream body failed: {}", error_chain(&e))));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.guard.finish(None);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------------------------
// Access log writer

enum LogMsg {
    Line(Vec<u8>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Appends access records from a dedicated thread fed by a bounded queue, so the async
/// side never waits on the disk. Records are written in batches (see
/// `ACCESS_BATCH_WINDOW`), each batch one `write` of whole lines to an `O_APPEND`
/// file, unbuffered, so the shipper sees whole lines as soon as they are written.
struct AccessLog {
    tx: std::sync::mpsc::SyncSender<LogMsg>,
    written: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    fn open(path: &Path) -> Result<AccessLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<LogMsg>(ACCESS_QUEUE);
        let written = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let (w, d) = (Arc::clone(&written), Arc::clone(&dropped));
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                use std::io::Write;
                let mut buf = Vec::with_capacity(64 << 10);
                // Blocks for the first message of a batch, lets more arrive, then
                // writes them all at once.
                while let Ok(first) = rx.recv() {
                    let mut acks = Vec::new();
                    let mut lines = 0u64;
                    let mut take = |msg: LogMsg, buf: &mut Vec<u8>| match msg {
                        LogMsg::Line(line) => {
                            buf.extend_from_slice(&line);
                            lines += 1;
                        }
                        LogMsg::Flush(ack) => acks.push(ack),
                    };
                    let flushing = matches!(first, LogMsg::Flush(_));
                    take(first, &mut buf);
                    if !flushing {
                        // Coalescing window: while this thread sleeps, senders find
                        // no parked receiver and skip the wake-up syscall.
                        std::thread::sleep(ACCESS_BATCH_WINDOW);
                    }
                    while buf.len() < ACCESS_BATCH_BYTES {
                        match rx.try_recv() {
                            Ok(msg) => take(msg, &mut buf),
                            Err(_) => break,
                        }
                    }
                    if lines > 0 {
                        match file.write_all(&buf) {
                            Ok(()) => {
                                w.fetch_add(lines, Ordering::Relaxed);
                            }
                            Err(e) => {
                                if d.fetch_add(lines, Ordering::Relaxed) == 0 {
                                    warn!(path = %shown, error = %e, "writing the access log failed");
                                }
                            }
                        }
                    }
                    buf.clear();
                    if !acks.is_empty() {
                        if let Err(e) = file.sync_data() {
                            warn!(path = %shown, error = %e, "syncing the access log failed");
                        }
                        for ack in acks {
                            let _ = ack.send(());
                        }
                    }
                }
            })
            .map_err(|e| Error::io(path, e))?;
        Ok(AccessLog {
            tx,
            written,
            dropped,
        })
    }

    /// Queues one NDJSON line (with its `\n`).
    fn push(&self, line: Vec<u8>) {
        if self.tx.try_send(LogMsg::Line(line)).is_err()
            && self
                .dropped
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(1000)
        {
            warn!(
                dropped = self.dropped.load(Ordering::Relaxed),
                "access log writer is behind, dropping access records"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    /// Issue 15: the services cache grew by one entry per name ever asked for.
    #[test]
    fn services_cache_stays_bounded_and_keeps_known_apps_longest() {
        let known = || {
            Some(Arc::new(Endpoints {
                list: Vec::new(),
                load: Vec::new(),
                authorities: Vec::new(),
            }))
        };
        let t0 = Instant::now();
        let mut cache = HashMap::new();
        insert_bounded(
            &mut cache,
            "fib",
            Cached {
                at: t0,
                answer: known(),
            },
            4,
        );
        for i in 0..10_000u32 {
            let at = t0 + Duration::from_millis(u64::from(i) + 1);
            insert_bounded(
                &mut cache,
                &format!("nope-{i}"),
                Cached { at, answer: None },
                4,
            );
        }
        assert!(cache.len() <= 4, "{}", cache.len());
        assert!(
            cache.contains_key("fib"),
            "a known app outlives unknown names"
        );
        for i in 0..4u32 {
            let at = t0 + Duration::from_secs(100 + u64::from(i));
            insert_bounded(
                &mut cache,
                &format!("app-{i}"),
                Cached {
                    at,
                    answer: known(),
                },
                4,
            );
        }
        assert_eq!(cache.len(), 4);
        assert!(
            !cache.contains_key("fib"),
            "then the oldest known answer goes"
        );
        assert!(cache.contains_key("app-3"));
    }

    #[test]
    fn parses_a_valid_traceparent() {
        let tp = parse_traceparent(&format!("00-{TRACE}-{SPAN}-01")).unwrap();
        assert_eq!(tp.trace_id.as_str(), TRACE);
        assert_eq!(tp.parent_id, SPAN);
        assert_eq!((tp.version, tp.flags), (0, 1));
    }

    #[test]
    fn rejects_malformed_traceparents() {
        let zero_trace = "0".repeat(32);
        let zero_span = "0".repeat(16);
        for bad in [
            String::new(),
            format!("00-{TRACE}-{SPAN}"),
            format!("00-{TRACE}-{SPAN}-1"),
            format!("00-{}-{SPAN}-01", &TRACE[1..]),
            format!("00-{TRACE}0-{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}-01-extra"),
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-{}-01", SPAN.to_uppercase()),
            format!("00-{zero_trace}-{SPAN}-01"),
            format!("00-{TRACE}-{zero_span}-01"),
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("0g-{TRACE}-{SPAN}-01"),
            format!("00_{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}-0x"),
            format!("01-{TRACE}-{SPAN}-01x"),
        ] {
            assert_eq!(parse_traceparent(&bad), None, "{bad:?}");
        }
        // A later version may append fields after a dash.
        assert!(parse_traceparent(&format!("01-{TRACE}-{SPAN}-01-what")).is_some());
    }

    #[test]
    fn minted_ids_are_valid_and_distinct() {
        let (t, s) = (new_trace_id(), new_span_id());
        let tp = parse_traceparent(&format!("00-{t}-{s}-01")).unwrap();
        assert_eq!(
            (tp.trace_id.as_str(), tp.parent_id.as_str()),
            (t.as_str(), s.as_str())
        );
        assert_ne!(new_span_id(), s);
    }

    fn callee(task: &str) -> Picked {
        let ep = ServiceEndpoint {
            app: "fib".into(),
            task: task.into(),
            host: "node-1".into(),
            address: "127.0.0.1".into(),
            port: 1,
            instance: 0,
        };
        Picked {
            set: Arc::new(Endpoints {
                authorities: vec![url_of(&ep)],
                list: vec![ep],
                load: vec![Arc::default()],
            }),
            idx: 0,
        }
    }

    #[test]
    fn span_map_evicts_oldest_beyond_capacity_and_expires() {
        let now = Instant::now();
        let mut m = SpanMap::new(2, Duration::from_secs(60));
        m.insert("0000000000000001", callee("a"), now);
        m.insert("0000000000000002", callee("b"), now);
        m.insert("0000000000000003", callee("c"), now);
        assert_eq!(m.len(), 2);
        assert!(m.get("0000000000000001", now).is_none());
        assert_eq!(m.get("0000000000000003", now).unwrap().endpoint().task, "c");
        let later = now + Duration::from_secs(61);
        assert!(m.get("0000000000000002", later).is_none());
        m.insert("0000000000000004", callee("d"), later);
        assert_eq!(m.len(), 1);
        // Re-inserting a span (a retry) keeps the newest callee.
        m.insert("0000000000000004", callee("e"), later);
        m.insert("0000000000000005", callee("f"), later);
        assert_eq!(
            m.get("0000000000000004", later).unwrap().endpoint().task,
            "e"
        );
        assert!(m.get("not hex", later).is_none());
    }

    #[test]
    fn hop_by_hop_and_replaced_headers_are_not_forwarded() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("host", HeaderValue::from_static("router"));
        h.insert("traceparent", HeaderValue::from_static("x"));
        h.insert("x-sandtrail-caller", HeaderValue::from_static("fib.1"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        let mut out = h.clone();
        strip_request_headers(&mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out.contains_key("accept"));
        let mut resp = h;
        strip_response_headers(&mut resp);
        let mut left: Vec<_> = resp.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            ["accept", "host", "traceparent", "x-sandtrail-caller"]
        );
    }

    #[test]
    fn app_names_are_validated() {
        assert!(valid_app("fib"));
        assert!(valid_app("my-app.v2"));
        for bad in ["", ".", "..", "%2e%2e", "a b", "a?b"] {
            assert!(!valid_app(bad), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn traceparent_parser_never_panics(s in ".{0,80}") {
            let _ = parse_traceparent(&s);
        }

        #[test]
        fn traceparent_parser_accepts_what_it_formats(t in 1u128.., s in 1u64.., f in 0u8..) {
            let tp = parse_traceparent(&format!("00-{t:032x}-{s:016x}-{f:02x}")).unwrap();
            prop_assert_eq!(tp.trace_id.as_str(), format!("{t:032x}"));
            prop_assert_eq!(tp.parent_id, format!("{s:016x}"));
            prop_assert_eq!(tp.flags, f);
        }
    }
}
