//! The command-line clients that read: `apps`, `search`, `tail`, `trace` (those that
//! change apps are in `ops`).
//!
//! They speak the same HTTP contracts as the web UI and any other client, so they
//! double as living documentation of those contracts. Output is plain text meant for
//! people and `grep` unless `-o json|ndjson` asks for the records as the API gives them.
//! `tail` reconnects when its stream drops and resumes after the last SSE event id it
//! received (`Last-Event-ID`), which the indexer answers with exactly the records it
//! missed. Only when the indexer cannot resume (it restarted: its ids start again) does
//! `tail` catch up with a search from shortly before the last record it printed;
//! records seen twice there are told apart by source, offset, task, time and message
//! (a bounded window).

use anyhow::{bail, Context};
use clap::Args;
use futures::StreamExt;
use protocol::sse::Sse;
use protocol::{LogRecord, SearchResponse, Stream};

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Base URL of the scheduler, or several comma-separated schedulers in HA tried
    /// in turn, or their zk://host:port/path (the schedulers in the election, leader
    /// first) (and of the indexer unless --indexer names it; in
    /// `up` they share one address). Default: the config's `[client] server`, else
    /// `up`'s http://127.0.0.1:7070.
    #[arg(long, env = "SANDTRAIL_SERVER")]
    pub server: Option<String>,
    /// Base URL of the indexer, for a cluster of separate parts (default: the
    /// config's `[client] indexer`, else --server).
    #[arg(long, env = "SANDTRAIL_INDEXER")]
    pub indexer: Option<String>,
    /// The data dir whose admin token is sent when no token is given (default: the
    /// config file's `data_dir`, else ./.sandtrail, as for the servers).
    #[arg(long, env = "SANDTRAIL_DATA_DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    /// Set by `config::client` after parsing; every call sends it.
    #[arg(skip)]
    pub token: Option<String>,
}

impl ServerArgs {
    /// The scheduler URLs of `--server` (`config::client` has resolved it by now):
    /// several, comma-separated, for schedulers in HA.
    fn servers(&self) -> protocol::endpoints::Endpoints {
        protocol::endpoints::Endpoints::parse(
            self.server
                .as_deref()
                .unwrap_or(protocol::defaults::SERVER_URL),
        )
    }

    /// `path` on the first scheduler URL.
    pub(crate) fn url(&self, path: &str) -> String {
        self.servers().url(path)
    }

    /// Sends what `build` makes of `path` on each scheduler URL in turn until one
    /// connects (schedulers in HA all answer or forward to the leader).
    pub(crate) async fn send_to(
        &self,
        path: &str,
        build: impl Fn(String) -> reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let servers = self.servers();
        let mut last = None;
        for base in servers.all() {
            match build(format!("{base}{path}")).send().await {
                Ok(resp) => return Ok(resp),
                Err(e) if e.is_connect() => last = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        Err(anyhow::anyhow!(
            "cannot reach the scheduler at {}: {}",
            self.server
                .as_deref()
                .unwrap_or(protocol::defaults::SERVER_URL),
            last.map(|e| e.to_string()).unwrap_or_default()
        ))
    }

    /// An indexer URL: `--indexer` when given, else the (first) scheduler's address.
    fn indexer_url(&self, path: &str) -> String {
        match &self.indexer {
            Some(base) => format!("{}{path}", base.trim_end_matches('/')),
            None => self.url(path),
        }
    }

    /// Sends every call with `Authorization: Bearer` when a token is known: reading
    /// needs one as much as writing does.
    pub(crate) fn client(&self) -> anyhow::Result<reqwest::Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = &self.token {
            let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
                .context("the token holds characters not allowed in an http header")?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        Ok(reqwest::Client::builder()
            .default_headers(headers)
            .build()?)
    }
}

pub(crate) async fn error_of(resp: reqwest::Response) -> anyhow::Error {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    anyhow::anyhow!("server answered {status}: {}", body.trim())
}

pub async fn apps(server: &ServerArgs) -> anyhow::Result<()> {
    let client = server.client()?;
    let resp = server.send_to("/v2/apps", |url| client.get(url)).await?;
    if !resp.status().is_success() {
        return Err(error_of(resp).await);
    }
    let apps: serde_json::Value = resp.json().await?;
    let tasks: serde_json::Value = server
        .send_to("/v2/tasks", |url| client.get(url))
        .await?
        .json()
        .await?;
    println!("{:<24} {:>9} {:>8}", "APP", "INSTANCES", "RUNNING");
    for app in apps["apps"].as_array().into_iter().flatten() {
        let id = app["id"].as_str().unwrap_or("?");
        println!(
            "{:<24} {:>9} {:>8}",
            id, app["instances"], app["tasksRunning"]
        );
        for t in tasks["tasks"].as_array().into_iter().flatten() {
            if t["appId"].as_str() == Some(id) {
                println!(
                    "  {:<48} {:<10} {:<14} {}",
                    t["id"].as_str().unwrap_or("?"),
                    t["host"].as_str().unwrap_or("?"),
                    t["state"].as_str().unwrap_or("?"),
                    t["ports"]
                );
            }
        }
    }
    Ok(())
}

fn print_record(r: &LogRecord) {
    let level = r.level.map(|l| l.as_str()).unwrap_or("-");
    let ts = r.ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    println!(
        "{ts} {:<8} {:<12} {:<5} {}",
        r.host,
        format!("{}/{}", r.app, r.instance),
        level,
        r.msg
    );
}

/// How `search` and `tail` print records.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// One line per record for people and `grep`.
    #[default]
    Text,
    /// `search`: the API's answer (all pages merged with `--all`); `tail`: as ndjson.
    Json,
    /// One JSON record per line.
    Ndjson,
}

async fn search_page(
    server: &ServerArgs,
    q: &str,
    start: &str,
    end: &str,
    limit: usize,
    cursor: Option<&str>,
) -> anyhow::Result<SearchResponse> {
    let mut params = vec![
        ("q", q.to_string()),
        ("start", start.to_string()),
        ("end", end.to_string()),
        ("limit", limit.to_string()),
    ];
    if let Some(c) = cursor {
        params.push(("cursor", c.to_string()));
    }
    let resp = server
        .client()?
        .get(server.indexer_url("/api/v1/search"))
        .query(&params)
        .send()
        .await
        .context("cannot reach the indexer")?;
    if !resp.status().is_success() {
        return Err(error_of(resp).await);
    }
    Ok(resp.json().await?)
}

async fn search_once(
    server: &ServerArgs,
    q: &str,
    start: &str,
    limit: usize,
) -> anyhow::Result<SearchResponse> {
    search_page(server, q, start, "", limit, None).await
}

/// `--since 15m` as the API's relative start (`now-15m`).
fn since_start(since: &str) -> anyhow::Result<String> {
    let since = since.trim();
    if since.is_empty() || !since.chars().next().unwrap().is_ascii_digit() {
        bail!("--since {since:?}: expected a duration like 5m, 15m, 1h, 24h or 7d");
    }
    Ok(format!("now-{since}"))
}

/// What `sandtrail search` was asked.
#[derive(Debug, Clone)]
pub struct SearchArgs {
    pub query: String,
    pub since: String,
    /// Overrides `since`; RFC 3339 or relative (`now-1h`), as the API's `start`.
    pub from: Option<String>,
    /// RFC 3339 or relative, as the API's `end`; default now.
    pub to: Option<String>,
    /// Per page.
    pub limit: usize,
    pub all: bool,
    pub output: Output,
}

fn print_json_line(r: &LogRecord) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(r)?);
    Ok(())
}

pub async fn search(server: &ServerArgs, a: &SearchArgs) -> anyhow::Result<()> {
    let start = match &a.from {
        Some(f) => f.clone(),
        None => since_start(&a.since)?,
    };
    let end = a.to.clone().unwrap_or_default();
    let mut res = search_page(server, &a.query, &start, &end, a.limit, None).await?;
    let total = res.total;
    let mut shown = 0usize;
    // json prints one document, so it gathers every page; the others print a page at
    // a time, so `--all` over a large range streams instead of filling memory.
    let mut gathered: Vec<LogRecord> = Vec::new();
    loop {
        let next = res.next.take();
        shown += res.hits.len();
        match a.output {
            // Oldest at the bottom is what a terminal reader expects, like `tail`;
            // with `--all` each page is still printed oldest last within the page.
            Output::Text => {
                for r in res.hits.iter().rev() {
                    print_record(r);
                }
            }
            Output::Ndjson => {
                for r in &res.hits {
                    print_json_line(r)?;
                }
            }
            Output::Json => gathered.append(&mut res.hits),
        }
        match next {
            Some(cursor) if a.all => {
                res = search_page(server, &a.query, &start, &end, a.limit, Some(&cursor)).await?;
            }
            other => {
                if a.output == Output::Json {
                    let body = SearchResponse {
                        total,
                        hits: gathered,
                        next: other,
                    };
                    println!("{}", serde_json::to_string_pretty(&body)?);
                }
                break;
            }
        }
    }
    if a.output == Output::Text {
        eprintln!("{shown} of {total} matches");
    }
    Ok(())
}

/// What `sandtrail tail` was asked.
#[derive(Debug, Clone)]
pub struct TailArgs {
    /// Apps to follow by name; with `patterns` empty too, every app (narrowed by
    /// `query`).
    pub apps: Vec<String>,
    /// Apps to follow whose names match one of these.
    pub patterns: Vec<regex::Regex>,
    /// A tail filter (`level:error timeout`), ANDed with the apps.
    pub query: String,
    /// Print the lines of this last stretch (`5m`) before following.
    pub since: Option<String>,
    pub output: Output,
}

/// Identifies a record across a reconnect: the tail stream sends no event ids, so
/// records are told apart by where they were read (source and offset) plus what the
/// shipper stamped on them, which also separates records ingested without a source.
type Seen = (String, u64, String, i64, u64);

fn seen_key(r: &LogRecord) -> Seen {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    r.msg.hash(&mut h);
    (
        r.source.clone(),
        r.offset,
        r.task.clone(),
        r.ts.timestamp_nanos_opt().unwrap_or_default(),
        h.finish(),
    )
}

/// Remembers what was printed recently, so the catch-up search after a reconnect
/// prints only what the broken stream missed. Bounded: keys older than the newest
/// seen minus [`SEEN_WINDOW`] are forgotten, and the catch-up never looks further back.
struct Printed {
    keys: std::collections::HashSet<Seen>,
    order: std::collections::VecDeque<(chrono::DateTime<chrono::Utc>, Seen)>,
    newest: Option<chrono::DateTime<chrono::Utc>>,
}

const SEEN_WINDOW: chrono::TimeDelta = chrono::TimeDelta::seconds(120);

impl Printed {
    fn new() -> Self {
        Printed {
            keys: Default::default(),
            order: Default::default(),
            newest: None,
        }
    }

    /// True the first time a record is offered.
    fn first(&mut self, r: &LogRecord) -> bool {
        let key = seen_key(r);
        if !self.keys.insert(key.clone()) {
            return false;
        }
        self.order.push_back((r.ts, key));
        self.newest = Some(self.newest.map_or(r.ts, |n| n.max(r.ts)));
        let horizon = self.newest.unwrap() - SEEN_WINDOW;
        while self.order.len() > 1 && self.order.front().is_some_and(|(t, _)| *t < horizon) {
            let (_, k) = self.order.pop_front().unwrap();
            self.keys.remove(&k);
        }
        true
    }
}

fn tail_matches(a: &TailArgs, r: &LogRecord) -> bool {
    (a.apps.is_empty() && a.patterns.is_empty())
        || a.apps.contains(&r.app)
        || a.patterns.iter().any(|p| p.is_match(&r.app))
}

/// `tail`'s app arguments split into names and regular expressions: an argument that
/// is a valid app name is a name (matched exactly), any other a pattern, as is
/// `--app-regex`. A pattern that does not compile is an error naming it.
pub fn app_selectors(
    args: Vec<String>,
    app_regex: Option<String>,
) -> anyhow::Result<(Vec<String>, Vec<regex::Regex>)> {
    let mut names = Vec::new();
    let mut patterns = Vec::new();
    for arg in args {
        let name = arg.trim_matches('/');
        if web::render::valid_app_name(name) {
            names.push(name.to_string());
        } else {
            patterns.push(arg);
        }
    }
    patterns.extend(app_regex);
    let patterns = patterns
        .into_iter()
        .map(|p| {
            regex::Regex::new(&p).with_context(|| {
                format!("invalid app pattern {p:?}: expected an app name or a regular expression")
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((names, patterns))
}

fn emit(a: &TailArgs, printed: &mut Printed, r: &LogRecord) -> anyhow::Result<()> {
    if !tail_matches(a, r) || !printed.first(r) {
        return Ok(());
    }
    match a.output {
        Output::Text => print_record(r),
        Output::Json | Output::Ndjson => print_json_line(r)?,
    }
    Ok(())
}

/// Prints, oldest first, what matched from `start` on and was not printed yet.
/// The search language is not the tail filter's, but `app:x` and plain words mean
/// the same in both; the apps are checked here, as for the stream.
async fn catch_up(
    server: &ServerArgs,
    a: &TailArgs,
    printed: &mut Printed,
    start: &str,
) -> anyhow::Result<()> {
    let q = search_query_of(a);
    let mut cursor: Option<String> = None;
    let mut found = Vec::new();
    loop {
        let res = search_page(server, &q, start, "", 1000, cursor.as_deref()).await?;
        found.extend(res.hits);
        match res.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    for r in found.iter().rev() {
        emit(a, printed, r)?;
    }
    Ok(())
}

/// The filter sent to the indexer (stream and catch-up alike): one app is filtered
/// there; several by this client, as the tail filter has no OR.
fn search_query_of(a: &TailArgs) -> String {
    match (a.apps.as_slice(), a.patterns.is_empty()) {
        ([one], true) => format!("app:{one} {}", a.query).trim().to_string(),
        _ => a.query.clone(),
    }
}

pub async fn tail(server: &ServerArgs, a: &TailArgs) -> anyhow::Result<()> {
    let mut printed = Printed::new();
    let first_start = match &a.since {
        Some(s) => Some(since_start(s)?),
        None => None,
    };
    let mut backoff = std::time::Duration::from_millis(200);
    let mut connected_once = false;
    // The id of the last event received: a reconnect sends it and the indexer
    // replays what followed it, each record once.
    let mut last_id: Option<String> = None;
    loop {
        let mut req = server
            .client()?
            .get(server.indexer_url("/api/v1/tail"))
            .query(&[("q", search_query_of(a))]);
        if let Some(id) = &last_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await;
        let resp = match resp {
            Ok(r) if r.status().is_success() => r,
            // A refused filter or token will not get better by retrying.
            Ok(r) if r.status().is_client_error() => return Err(error_of(r).await),
            Ok(r) => {
                eprintln!("tail: {}; reconnecting in {backoff:?}", error_of(r).await);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                continue;
            }
            Err(e) if !connected_once => {
                return Err(anyhow::Error::new(e).context("cannot reach the indexer"));
            }
            Err(e) => {
                eprintln!("tail: cannot reach the indexer ({e}); reconnecting in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                continue;
            }
        };
        // Subscribed before catching up, so nothing falls between the search and the
        // stream; what both deliver is printed once. A reconnect with an event id needs
        // no search: the indexer resumes after it (an indexer that restarted meanwhile
        // cannot, and its stream then starts now: only that case is searched for).
        let resumed = resp
            .headers()
            .get("x-sandtrail-tail-resumed")
            .is_some_and(|v| v.as_bytes() == b"true");
        let start = if connected_once && !resumed {
            printed
                .newest
                .map(|n| (n - SEEN_WINDOW / 2).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
        } else if connected_once {
            None
        } else {
            first_start.clone()
        };
        connected_once = true;
        if let Some(start) = start {
            if let Err(e) = catch_up(server, a, &mut printed, &start).await {
                eprintln!("tail: catching up failed: {e:#}");
            }
        }
        let mut body = resp.bytes_stream();
        let mut sse = Sse::default();
        let mut got_any = false;
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            if !got_any {
                got_any = true;
                backoff = std::time::Duration::from_millis(200);
            }
            for event in sse.push(&chunk) {
                if let Some(id) = event.id {
                    last_id = Some(id);
                }
                match event.kind.as_str() {
                    "message" => match serde_json::from_str::<LogRecord>(&event.data) {
                        Ok(r) => emit(a, &mut printed, &r)?,
                        Err(_) => eprintln!("{}", event.data),
                    },
                    // Too far behind (or away) for the indexer to replay: say so.
                    "dropped" => eprintln!("tail: the indexer dropped lines: {}", event.data),
                    _ => {}
                }
            }
        }
        eprintln!("tail: the stream ended; reconnecting in {backoff:?}");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
    }
}

pub async fn trace(server: &ServerArgs, id: &str) -> anyhow::Result<()> {
    let id = protocol::TraceId::parse(id)?;
    // As far back as the trace page looks.
    let res = search_once(server, &id.search_term(), "now-30d", 1000).await?;
    let mut hits = res.hits;
    hits.sort_by_key(|r| r.ts);
    let hops: Vec<_> = hits.iter().filter(|r| r.stream == Stream::Access).collect();
    println!(
        "trace {id}: {} hops, {} lines",
        hops.len(),
        hits.len() - hops.len()
    );
    // The same tree as the trace page: the first call first, each callee indented
    // under its caller.
    for t in web::hops::tree(&hops) {
        let h = hops[t.index];
        let caller = match h.peer_app.as_deref() {
            Some(web::hops::EXTERNAL_PEER) => {
                format!("external ({})", h.peer_host.as_deref().unwrap_or("unknown"))
            }
            Some(app) => app.to_string(),
            None => "?".to_string(),
        };
        let note = if t.orphan {
            "  (caller not in trace)"
        } else {
            ""
        };
        println!(
            "  {}{caller} -> {:<10} served by {:<8} {:<40} {} {:>8.2} ms{note}",
            "  ".repeat(t.depth),
            h.app,
            h.host,
            h.task,
            h.status.map(|s| s.to_string()).unwrap_or_default(),
            h.latency_ms.unwrap_or(0.0)
        );
    }
    for r in hits.iter().filter(|r| r.stream != Stream::Access) {
        print_record(r);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(secs: i64, offset: u64, msg: &str) -> LogRecord {
        let ts = chrono::DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap();
        let meta = protocol::TaskMeta {
            host: "h".into(),
            app: "a".into(),
            task: "a.1".into(),
            instance: 1,
            ports: vec![],
        };
        let mut r = LogRecord::new(ts, &meta, Stream::Stdout, msg);
        r.source = "/logs/a".into();
        r.offset = offset;
        r
    }

    #[test]
    fn tail_follows_names_exactly_and_patterns_as_regexes() {
        let (apps, patterns) =
            app_selectors(vec!["fib".into(), "api|web".into()], Some("^db-".into())).unwrap();
        assert_eq!(apps, ["fib"]);
        let a = TailArgs {
            apps,
            patterns,
            query: "level:error".into(),
            since: None,
            output: Output::Text,
        };
        let app = |name: &str| {
            let mut r = rec(0, 1, "x");
            r.app = name.into();
            tail_matches(&a, &r)
        };
        assert!(app("fib") && app("web") && app("api-gw") && app("db-1"));
        assert!(!app("fibonacci"), "a name is exact");
        assert!(!app("mydb-1") && !app("other"));
        // Several apps are filtered here: the indexer's filter has no OR.
        assert_eq!(search_query_of(&a), "level:error");
        let one = TailArgs {
            apps: vec!["fib".into()],
            patterns: vec![],
            ..a.clone()
        };
        assert_eq!(search_query_of(&one), "app:fib level:error");
        let e = app_selectors(vec!["fib(".into()], None).unwrap_err();
        assert!(format!("{e:#}").contains("\"fib(\""), "{e:#}");
    }

    #[test]
    fn a_record_is_printed_once_and_forgotten_outside_the_window() {
        let mut p = Printed::new();
        assert!(p.first(&rec(0, 1, "x")));
        assert!(!p.first(&rec(0, 1, "x")), "the same record twice");
        assert!(p.first(&rec(0, 2, "x")), "another offset is another record");
        assert!(p.first(&rec(0, 0, "y")), "no source: told apart by message");
        // Far later: the old keys are dropped, bounding memory.
        assert!(p.first(&rec(SEEN_WINDOW.num_seconds() + 10, 3, "z")));
        assert_eq!(p.keys.len(), 1);
    }
}
