//! The command-line clients: `deploy`, `apps`, `search`, `tail`, `trace`.
//!
//! They speak the same HTTP contracts as the web UI and any other client, so they
//! double as living documentation of those contracts. Output is plain text meant for
//! people and `grep`, not a stable machine format (use the JSON APIs for that).

use anyhow::{bail, Context};
use clap::Args;
use futures::StreamExt;
use protocol::{LogRecord, SearchResponse, Stream};
use std::path::Path;

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Base URL of the scheduler / indexer (in `up` they share one address).
    #[arg(long, env = "SANDTRAIL_SERVER", default_value = protocol::defaults::SERVER_URL)]
    pub server: String,
    /// The data dir whose admin token is sent when no token is given (default: the
    /// config file's `data_dir`, else ./.sandtrail, as for the servers).
    #[arg(long, env = "SANDTRAIL_DATA_DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    /// Set by `config::client` after parsing; every call sends it.
    #[arg(skip)]
    pub token: Option<String>,
}

impl ServerArgs {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.trim_end_matches('/'))
    }

    /// Sends every call with `Authorization: Bearer` when a token is known: reading
    /// needs one as much as writing does.
    fn client(&self) -> anyhow::Result<reqwest::Client> {
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

async fn error_of(resp: reqwest::Response) -> anyhow::Error {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    anyhow::anyhow!("server answered {status}: {}", body.trim())
}

pub async fn deploy(server: &ServerArgs, file: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let app: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", file.display()))?;
    let resp = server
        .client()?
        .post(server.url("/v2/apps"))
        .json(&app)
        .send()
        .await
        .context("cannot reach the scheduler")?;
    if !resp.status().is_success() {
        return Err(error_of(resp).await);
    }
    let body: serde_json::Value = resp.json().await?;
    println!(
        "deployed {} ({} instances)",
        body["id"].as_str().unwrap_or("?"),
        body["instances"]
    );
    Ok(())
}

pub async fn apps(server: &ServerArgs) -> anyhow::Result<()> {
    let client = server.client()?;
    let resp = client.get(server.url("/v2/apps")).send().await?;
    if !resp.status().is_success() {
        return Err(error_of(resp).await);
    }
    let apps: serde_json::Value = resp.json().await?;
    let tasks: serde_json::Value = client
        .get(server.url("/v2/tasks"))
        .send()
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

async fn search_once(
    server: &ServerArgs,
    q: &str,
    start: &str,
    limit: usize,
) -> anyhow::Result<SearchResponse> {
    let resp = server
        .client()?
        .get(server.url("/api/v1/search"))
        .query(&[("q", q), ("start", start), ("limit", &limit.to_string())])
        .send()
        .await
        .context("cannot reach the indexer")?;
    if !resp.status().is_success() {
        return Err(error_of(resp).await);
    }
    Ok(resp.json().await?)
}

pub async fn search(server: &ServerArgs, q: &str, since: &str, limit: usize) -> anyhow::Result<()> {
    let since = since.trim();
    if since.is_empty() || !since.chars().next().unwrap().is_ascii_digit() {
        bail!("--since {since:?}: expected a duration like 5m, 15m, 1h, 24h or 7d");
    }
    let res = search_once(server, q, &format!("now-{since}"), limit).await?;
    // Oldest at the bottom is what a terminal reader expects, like `tail`.
    for r in res.hits.iter().rev() {
        print_record(r);
    }
    eprintln!("{} of {} matches", res.hits.len(), res.total);
    Ok(())
}

pub async fn tail(server: &ServerArgs, app: &str) -> anyhow::Result<()> {
    let resp = server
        .client()?
        .get(server.url("/api/v1/tail"))
        .query(&[("q", format!("app:{app}"))])
        .send()
        .await
        .context("cannot reach the indexer")?;
    if !resp.status().is_success() {
        return Err(error_of(resp).await);
    }
    let mut body = resp.bytes_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk?);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(data) = line.trim_end().strip_prefix("data:") {
                match serde_json::from_str::<LogRecord>(data.trim()) {
                    Ok(r) => print_record(&r),
                    Err(_) => eprintln!("{}", data.trim()),
                }
            }
        }
    }
    Ok(())
}

pub async fn trace(server: &ServerArgs, id: &str) -> anyhow::Result<()> {
    let id = protocol::TraceId::parse(id)?;
    let res = search_once(server, &id.search_term(), "", 1000).await?;
    let mut hits = res.hits;
    hits.sort_by_key(|r| r.ts);
    let hops: Vec<_> = hits.iter().filter(|r| r.stream == Stream::Access).collect();
    println!(
        "trace {id}: {} hops, {} lines",
        hops.len(),
        hits.len() - hops.len()
    );
    for h in &hops {
        println!(
            "  {} -> {:<10} served by {:<8} {:<40} {} {:>8.2} ms",
            h.peer_app.as_deref().unwrap_or("?"),
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
