//! HTTP client for the two services the UI shows: the indexer (search, histogram, live
//! tail) and the scheduler (apps, tasks, agents).
//!
//! Indexer answers are parsed strictly into `protocol` types: that contract is fixed.
//! Scheduler answers are parsed leniently (missing fields, nulls and wrong types become
//! defaults) because the Marathon-style shapes carry many fields the UI does not need
//! and the scheduler grows alongside this crate; the trade-off is that a renamed field
//! shows up as an empty cell rather than an error.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use protocol::{
    AgentInfo, HistogramResponse, LogRecord, SearchResponse, ShipperStatus, TOKEN_HEADER,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};

/// A page waits at most this long for one upstream call; the tail stream has no limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How much of an unexpected upstream body an error message quotes.
const BODY_QUOTE_LIMIT: usize = 300;

/// The service an upstream call went to, for error messages and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Indexer,
    Scheduler,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Service::Indexer => "indexer",
            Service::Scheduler => "scheduler",
        })
    }
}

/// One `GET /api/v1/search` request.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    pub q: String,
    pub start: String,
    pub end: String,
    pub limit: u32,
    pub cursor: Option<String>,
    /// `latency_desc` for slowest first; `None` for the default newest first.
    pub sort: Option<String>,
}

/// `GET /api/v1/fields` answer: the top values of the fields worth filtering on.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
pub struct FieldsResponse {
    #[serde(default)]
    pub fields: Vec<FieldTop>,
}

/// One field and its most frequent values, most frequent first.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
pub struct FieldTop {
    pub field: String,
    #[serde(default)]
    pub values: Vec<FieldValue>,
}

/// A value of a field and how many matching records carry it. Values arrive as any
/// JSON scalar (a `fields.*` key can hold numbers and booleans) and are kept as the
/// text a query would use.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
pub struct FieldValue {
    #[serde(deserialize_with = "scalar_text")]
    pub value: String,
    #[serde(default)]
    pub count: u64,
}

/// `GET /api/v1/context` answer: the lines of one task around one record, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ContextResponse {
    #[serde(default)]
    pub before: Vec<LogRecord>,
    #[serde(default)]
    pub record: Option<LogRecord>,
    #[serde(default)]
    pub after: Vec<LogRecord>,
}

/// `GET /api/v1/latency` answer: access-record latency statistics per group.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct LatencyResponse {
    #[serde(default)]
    pub groups: Vec<LatencyGroup>,
}

/// Latency statistics of one host, app or task, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct LatencyGroup {
    #[serde(deserialize_with = "scalar_text")]
    pub key: String,
    #[serde(default)]
    pub count: u64,
    #[serde(default)]
    pub avg: Option<f64>,
    #[serde(default)]
    pub p50: Option<f64>,
    #[serde(default)]
    pub p90: Option<f64>,
    #[serde(default)]
    pub p99: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
}

/// One `GET /api/v1/context` request: the record's identity and how many lines to
/// show on each side.
#[derive(Debug, Clone, Default)]
pub struct ContextQuery {
    pub task: String,
    pub ts: String,
    pub source: String,
    pub offset: u64,
    pub n: u32,
}

/// A JSON scalar as query text: strings as they are, numbers and booleans printed,
/// null as the empty string.
fn scalar_text<'de, D>(d: D) -> std::result::Result<String, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    })
}

/// An app as `GET /v2/apps` lists it (Marathon shape, only the fields the UI shows).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MarathonApp {
    #[serde(deserialize_with = "lenient")]
    pub id: String,
    #[serde(deserialize_with = "lenient")]
    pub cmd: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub instances: u32,
    #[serde(deserialize_with = "lenient")]
    pub cpus: f64,
    #[serde(deserialize_with = "lenient")]
    pub mem: f64,
    #[serde(deserialize_with = "lenient")]
    pub disk: f64,
    #[serde(deserialize_with = "lenient")]
    pub tasks_running: u32,
    #[serde(deserialize_with = "lenient")]
    pub tasks_staged: u32,
    #[serde(deserialize_with = "lenient")]
    pub tasks_healthy: u32,
    #[serde(deserialize_with = "lenient")]
    pub tasks_unhealthy: u32,
    /// Only counted: a task is known healthy once it has a result for every check.
    #[serde(deserialize_with = "lenient")]
    pub health_checks: Vec<serde_json::Value>,
}

impl MarathonApp {
    /// The app's name as records carry it: the Marathon id without its leading `/`.
    pub fn name(&self) -> &str {
        app_name(&self.id)
    }
}

/// A task as `GET /v1/tasks` lists it (Marathon's shape plus `restarts`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MarathonTask {
    #[serde(deserialize_with = "lenient")]
    pub id: String,
    #[serde(deserialize_with = "lenient")]
    pub app_id: String,
    #[serde(deserialize_with = "lenient")]
    pub host: String,
    #[serde(deserialize_with = "lenient")]
    pub ports: Vec<u16>,
    #[serde(deserialize_with = "lenient")]
    pub state: String,
    #[serde(deserialize_with = "lenient")]
    pub staged_at: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub started_at: Option<String>,
    /// How many earlier tasks of this instance ended (Sandtrail's, not Marathon's).
    #[serde(deserialize_with = "lenient")]
    pub restarts: u32,
    #[serde(deserialize_with = "lenient")]
    pub health_check_results: Vec<HealthCheckResult>,
}

/// The node's last result of one health check of a task (`healthCheckResults[]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HealthCheckResult {
    #[serde(deserialize_with = "lenient")]
    pub alive: bool,
    #[serde(deserialize_with = "lenient")]
    pub consecutive_failures: u32,
    #[serde(deserialize_with = "lenient")]
    pub last_failure_cause: Option<String>,
}

impl MarathonTask {
    pub fn app_name(&self) -> &str {
        app_name(&self.app_id)
    }
}

/// Marathon ids start with `/`; records and queries use the bare name.
pub fn app_name(id: &str) -> &str {
    id.trim_start_matches('/')
}

/// Any value that does not fit `T` (null, wrong type) becomes `T::default()`.
fn lenient<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned + Default,
{
    let v = serde_json::Value::deserialize(d)?;
    Ok(T::deserialize(v).unwrap_or_default())
}

#[derive(Deserialize)]
#[serde(untagged)]
enum AppsBody {
    Wrapped {
        #[serde(default)]
        apps: Vec<MarathonApp>,
    },
    Bare(Vec<MarathonApp>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TasksBody {
    Wrapped {
        #[serde(default)]
        tasks: Vec<MarathonTask>,
    },
    Bare(Vec<MarathonTask>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum AgentsBody {
    Bare(Vec<Agent>),
    Wrapped { agents: Vec<Agent> },
}

/// An agent as `GET /v1/agents` lists it: its registration plus what the tasks placed
/// on it take, as the scheduler's placement counts it (absent from older schedulers),
/// and the back-pressure figures of its log shipper (absent until a heartbeat carried
/// them, and from older schedulers and agents).
#[derive(Debug, Clone, Deserialize)]
pub struct Agent {
    #[serde(flatten)]
    pub info: AgentInfo,
    #[serde(default)]
    pub used: Option<AgentUsed>,
    /// Unreadable figures count as none: the page still lists the host.
    #[serde(default, deserialize_with = "lenient")]
    pub shipper: Option<ShipperStatus>,
    /// Drained by an operator: no new tasks, its tasks moved elsewhere.
    #[serde(default, deserialize_with = "lenient")]
    pub drained: bool,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct AgentUsed {
    #[serde(default)]
    pub cpus: f64,
    #[serde(default)]
    pub mem: f64,
    #[serde(default)]
    pub disk: f64,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// Cheap to clone: the connection pool and URLs are shared.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    indexer: Arc<str>,
    /// One URL or several (schedulers in HA, comma-separated): the next is tried when
    /// a connection fails.
    scheduler: Arc<protocol::endpoints::Endpoints>,
    token: Option<Arc<str>>,
}

impl Client {
    pub fn new(indexer_url: &str, scheduler_url: &str, token: Option<String>) -> Client {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            // Building only fails on TLS back-end setup, which this build has none of.
            .unwrap_or_else(|_| reqwest::Client::new());
        Client {
            http,
            indexer: indexer_url.trim_end_matches('/').into(),
            scheduler: Arc::new(protocol::endpoints::Endpoints::parse(scheduler_url)),
            token: token.map(Into::into),
        }
    }

    /// The same client sending `token` as the cluster token.
    pub fn with_token(&self, token: Option<String>) -> Client {
        Client {
            token: token.map(Into::into),
            ..self.clone()
        }
    }

    /// `GET /api/v1/search`: one page of hits, newest first.
    pub async fn search(&self, req: &SearchQuery) -> Result<SearchResponse> {
        let limit = req.limit.to_string();
        let mut query = vec![
            ("q", req.q.as_str()),
            ("start", req.start.as_str()),
            ("end", req.end.as_str()),
            ("limit", limit.as_str()),
        ];
        if let Some(c) = req.cursor.as_deref().filter(|c| !c.is_empty()) {
            query.push(("cursor", c));
        }
        if let Some(s) = req.sort.as_deref().filter(|s| !s.is_empty()) {
            query.push(("sort", s));
        }
        self.get_json(Service::Indexer, "/api/v1/search", &query)
            .await
    }

    /// `GET /api/v1/fields`: the top `size` values of host, app, level, stream and the
    /// detected `fields.*` keys among the query's matches.
    pub async fn fields(
        &self,
        q: &str,
        start: &str,
        end: &str,
        size: u32,
    ) -> Result<FieldsResponse> {
        let size = size.to_string();
        self.get_json(
            Service::Indexer,
            "/api/v1/fields",
            &[("q", q), ("start", start), ("end", end), ("size", &size)],
        )
        .await
    }

    /// `GET /api/v1/context`: the lines of one task before and after one record.
    pub async fn context(&self, req: &ContextQuery) -> Result<ContextResponse> {
        let offset = req.offset.to_string();
        let n = req.n.to_string();
        self.get_json(
            Service::Indexer,
            "/api/v1/context",
            &[
                ("task", req.task.as_str()),
                ("ts", req.ts.as_str()),
                ("source", req.source.as_str()),
                ("offset", offset.as_str()),
                ("n", n.as_str()),
            ],
        )
        .await
    }

    /// `GET /api/v1/latency`: latency percentiles of the query's access records, grouped
    /// `by` host, app or task.
    pub async fn latency(
        &self,
        q: &str,
        start: &str,
        end: &str,
        by: &str,
    ) -> Result<LatencyResponse> {
        self.get_json(
            Service::Indexer,
            "/api/v1/latency",
            &[("q", q), ("start", start), ("end", end), ("by", by)],
        )
        .await
    }

    /// `GET /api/v1/histogram`: match counts over the range, each bucket split by level.
    pub async fn histogram(&self, q: &str, start: &str, end: &str) -> Result<HistogramResponse> {
        self.get_json(
            Service::Indexer,
            "/api/v1/histogram",
            &[("q", q), ("start", start), ("end", end), ("by", "level")],
        )
        .await
    }

    /// `GET /api/v1/tail`: the open SSE response, checked for success, body unread.
    /// `last_event_id` (the browser's `Last-Event-ID` on a reconnect) is passed on, so
    /// the indexer resumes after it.
    pub async fn tail(&self, q: &str, last_event_id: Option<&str>) -> Result<reqwest::Response> {
        let url = format!("{}/api/v1/tail", self.indexer);
        let mut req = self
            .request(reqwest::Method::GET, &url, &[("q", q)])
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.map_err(|source| Error::Unreachable {
            service: Service::Indexer,
            url: url.clone(),
            source,
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        Err(status_error(Service::Indexer, url, status, &body))
    }

    /// `GET /v2/apps`.
    pub async fn apps(&self) -> Result<Vec<MarathonApp>> {
        let body: AppsBody = self.get_json(Service::Scheduler, "/v2/apps", &[]).await?;
        Ok(match body {
            AppsBody::Wrapped { apps } | AppsBody::Bare(apps) => apps,
        })
    }

    /// `GET /v1/tasks` (the scheduler's `/v2/tasks` plus restarts).
    pub async fn tasks(&self) -> Result<Vec<MarathonTask>> {
        let body: TasksBody = self.get_json(Service::Scheduler, "/v1/tasks", &[]).await?;
        Ok(match body {
            TasksBody::Wrapped { tasks } | TasksBody::Bare(tasks) => tasks,
        })
    }

    /// `GET /v2/apps/{app}/versions`: newest first.
    pub async fn app_versions(&self, app: &str) -> Result<Vec<String>> {
        let path = format!("/v2/apps/{}/versions", app.trim_matches('/'));
        let body: serde_json::Value = self.get_json(Service::Scheduler, &path, &[]).await?;
        Ok(body["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect())
    }

    /// `GET /v2/apps/{app}/versions/{version}`: the definition at that version.
    pub async fn app_version(&self, app: &str, version: &str) -> Result<serde_json::Value> {
        let path = format!("/v2/apps/{}/versions/{version}", app.trim_matches('/'));
        self.get_json(Service::Scheduler, &path, &[]).await
    }

    /// `GET /v2/deployments` and `GET /v2/queue`, as the scheduler answers them: the
    /// Apps page reads a field or two of each.
    pub async fn deployments_and_queue(&self) -> Result<(serde_json::Value, serde_json::Value)> {
        let (d, q) = tokio::join!(
            self.get_json(Service::Scheduler, "/v2/deployments", &[]),
            self.get_json(Service::Scheduler, "/v2/queue", &[]),
        );
        Ok((d?, q?))
    }

    /// `GET /v1/agents`.
    pub async fn agents(&self) -> Result<Vec<Agent>> {
        let body: AgentsBody = self.get_json(Service::Scheduler, "/v1/agents", &[]).await?;
        Ok(match body {
            AgentsBody::Bare(agents) | AgentsBody::Wrapped { agents } => agents,
        })
    }

    /// A change on the scheduler's Marathon API (`PUT`, `POST`, `DELETE` under
    /// `/v2/apps`, `/v1/agents`): its answer. A refusal (422 with the scheduler's
    /// reasons) comes back as [`Error::Refused`]; a 401 or 403 means the UI's own
    /// credential lacks the deploy role (a standalone `web` started with a read token),
    /// which is a [`Error::Forbidden`] naming the role and the fix rather than a 502:
    /// the user did nothing wrong and the scheduler is not broken.
    pub async fn change(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value> {
        match self
            .call_json(method, Service::Scheduler, path, &[], body)
            .await
        {
            Err(Error::UpstreamStatus {
                service: Service::Scheduler,
                status: status @ (401 | 403),
                url,
                ..
            }) => Err(Error::Forbidden(format!(
                "the scheduler at {url} answered {status}: this web UI's own token lacks \
                 the deploy role that changing apps and hosts needs; start `sandtrail web` \
                 with --deploy-token (or [web] deploy_token, SANDTRAIL_DEPLOY_TOKEN) set to \
                 a deploy or admin token"
            ))),
            other => other,
        }
    }

    fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        query: &[(&str, &str)],
    ) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, url).query(query);
        if let Some(token) = &self.token {
            req = req.header(TOKEN_HEADER, token.as_ref());
        }
        req
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        service: Service,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T> {
        self.call_json(reqwest::Method::GET, service, path, query, None)
            .await
    }

    /// One call, tried on each scheduler URL in turn while they refuse connections
    /// (schedulers in HA all answer or forward to the leader).
    async fn call_json<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        service: Service,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> Result<T> {
        let tries = match service {
            Service::Indexer => 1,
            Service::Scheduler => self.scheduler.all().len(),
        };
        let mut tried = 0;
        let (url, resp) = loop {
            let (at, base) = match service {
                Service::Indexer => (0, &*self.indexer),
                Service::Scheduler => self.scheduler.current(),
            };
            let url = format!("{base}{path}");
            tried += 1;
            let mut req = self
                .request(method.clone(), &url, query)
                .timeout(REQUEST_TIMEOUT);
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(resp) => break (url, resp),
                Err(e) if e.is_connect() && tried < tries => self.scheduler.failed(at),
                Err(source) => {
                    return Err(Error::Unreachable {
                        service,
                        url,
                        source,
                    })
                }
            }
        };
        let unreachable = |source| Error::Unreachable {
            service,
            url: url.clone(),
            source,
        };
        let status = resp.status();
        let body = resp.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            let change = method != reqwest::Method::GET;
            let ours = matches!(status.as_u16(), 401 | 403);
            if change && status.is_client_error() && !ours {
                return Err(refused(status, &body));
            }
            return Err(status_error(service, url, status, &body));
        }
        serde_json::from_slice(&body).map_err(|source| Error::Decode {
            service,
            url,
            source,
        })
    }
}

/// A 400 from the indexer is the user's query at fault and carries the indexer's own
/// explanation; anything else non-2xx is an upstream failure.
fn status_error(service: Service, url: String, status: reqwest::StatusCode, body: &[u8]) -> Error {
    if service == Service::Indexer && status == reqwest::StatusCode::BAD_REQUEST {
        let message = match serde_json::from_slice::<ErrorBody>(body) {
            Ok(b) => b.error,
            Err(_) => quote_body(body),
        };
        return Error::BadQuery { message };
    }
    Error::UpstreamStatus {
        service,
        url,
        status: status.as_u16(),
        body: quote_body(body),
    }
}

/// A change the scheduler refused, with its reasons: Marathon's `{"message",
/// "details": [{"errors": [...]}]}` (every problem of an invalid app), else the body.
fn refused(status: reqwest::StatusCode, body: &[u8]) -> Error {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let mut reasons: Vec<String> = v["details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|d| d["errors"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e.as_str().map(String::from))
        .collect();
    if reasons.is_empty() {
        reasons.push(match v["message"].as_str() {
            Some(m) => m.to_string(),
            None => quote_body(body),
        });
    }
    Error::Refused {
        status: status.as_u16(),
        reasons,
    }
}

fn quote_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(BODY_QUOTE_LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Schedulers in HA: the first URL refuses connections, the second answers.
    #[tokio::test]
    async fn a_scheduler_that_refuses_connections_is_skipped_for_the_next() {
        let app = axum::Router::new().route(
            "/v2/apps",
            axum::routing::get(|| async { r#"{"apps":[{"id":"/fib","instances":1}]}"# }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let c = Client::new(
            "http://127.0.0.1:1",
            &format!("http://{dead_addr},http://{live}"),
            None,
        );
        assert_eq!(c.apps().await.unwrap()[0].id, "/fib");
        // The failed one is not asked again.
        assert_eq!(c.scheduler.current().1, format!("http://{live}"));
    }

    #[test]
    fn apps_parse_leniently() {
        let body = r#"{"apps":[{"id":"/fib","instances":3,"tasksRunning":2,"cpus":null,"mem":"lots","extra":{"x":1}},{"instances":1}]}"#;
        let AppsBody::Wrapped { apps } = serde_json::from_str(body).unwrap() else {
            panic!("expected the wrapped shape");
        };
        assert_eq!(apps[0].name(), "fib");
        assert_eq!(apps[0].instances, 3);
        assert_eq!(apps[0].tasks_running, 2);
        assert_eq!(apps[0].cpus, 0.0);
        assert_eq!(apps[0].mem, 0.0);
        assert_eq!(apps[1].id, "");
    }

    #[test]
    fn tasks_parse_leniently() {
        let body = r#"{"tasks":[{"id":"fib.1","appId":"/fib","host":"node-1","ports":[31000],"state":"TASK_RUNNING","startedAt":"2026-11-23T10:00:00Z","restarts":2,"healthCheckResults":[{"alive":false,"consecutiveFailures":3,"lastFailureCause":"503"}]},{"id":"fib.2","ports":null,"restarts":"x","healthCheckResults":null}]}"#;
        let TasksBody::Wrapped { tasks } = serde_json::from_str(body).unwrap() else {
            panic!("expected the wrapped shape");
        };
        assert_eq!(tasks[0].app_name(), "fib");
        assert_eq!(tasks[0].ports, vec![31000]);
        assert_eq!(tasks[1].ports, Vec::<u16>::new());
        assert_eq!(tasks[1].state, "");
        assert_eq!(tasks[0].restarts, 2);
        assert_eq!(tasks[1].restarts, 0);
        let h = &tasks[0].health_check_results[0];
        assert!(!h.alive);
        assert_eq!(h.consecutive_failures, 3);
        assert_eq!(h.last_failure_cause.as_deref(), Some("503"));
        assert!(tasks[1].health_check_results.is_empty());
    }

    #[test]
    fn agents_accept_bare_and_wrapped_lists() {
        let bare = r#"[{"name":"node-1","address":"127.0.0.1"}]"#;
        let wrapped = r#"{"agents":[{"name":"node-1","address":"127.0.0.1"}]}"#;
        for body in [bare, wrapped] {
            let agents = match serde_json::from_str::<AgentsBody>(body).unwrap() {
                AgentsBody::Bare(a) | AgentsBody::Wrapped { agents: a } => a,
            };
            assert_eq!(agents[0].info.name, "node-1");
        }
    }

    #[test]
    fn indexer_400_becomes_bad_query_with_its_message() {
        let err = status_error(
            Service::Indexer,
            "http://i/api/v1/search".into(),
            reqwest::StatusCode::BAD_REQUEST,
            br#"{"error":"unexpected ')' at 7"}"#,
        );
        match err {
            Error::BadQuery { message } => assert_eq!(message, "unexpected ')' at 7"),
            other => panic!("expected a bad query, got {other:?}"),
        }
        let err = status_error(
            Service::Scheduler,
            "http://s/v2/apps".into(),
            reqwest::StatusCode::BAD_REQUEST,
            b"nope",
        );
        assert!(
            matches!(err, Error::UpstreamStatus { status: 400, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn quoted_bodies_are_capped() {
        let long = "x".repeat(1000);
        let q = quote_body(long.as_bytes());
        assert_eq!(q.chars().count(), BODY_QUOTE_LIMIT + 1);
    }
}
