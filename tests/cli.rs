//! The command-line clients `search` and `tail` (issue 20) against a real standalone
//! indexer: paging with `--all`, `--from/--to`, JSON output, and `tail` reconnecting
//! across an indexer restart or a dropped connection (resuming by SSE event id)
//! without printing a record twice or losing one, and following a regex of apps.

mod common;

use anyhow::Context;
use common::{client_with_token, Proc};
use std::collections::HashSet;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "cli-suite-token";

fn start_indexer(dir: &Path, listen: &str) -> anyhow::Result<(Proc, String)> {
    let args = vec![
        "indexer".to_string(),
        "--data-dir".into(),
        dir.join("indexer").display().to_string(),
        "--listen".into(),
        listen.into(),
    ];
    let (p, url) = Proc::start(
        "indexer",
        dir,
        &args,
        "indexer:",
        &[("SANDTRAIL_TOKEN", TOKEN.to_string())],
    )?;
    Ok((p, url.trim_end_matches('/').to_string()))
}

fn record(ts: &str, app: &str, msg: &str, offset: u64) -> serde_json::Value {
    serde_json::json!({
        "ts": ts, "host": "node-1", "app": app, "task": format!("{app}.1"),
        "msg": msg, "source": format!("/logs/{app}"), "offset": offset,
    })
}

/// Ingests and waits until the records are searchable.
async fn ingest(url: &str, records: &[serde_json::Value]) -> anyhow::Result<()> {
    let body: String = records.iter().map(|r| format!("{r}\n")).collect();
    let resp = client_with_token(TOKEN)?
        .post(format!("{url}/api/v1/ingest"))
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "ingest: {}", resp.text().await?);
    Ok(())
}

fn sandtrail(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_sandtrail"))
        .args(args)
        .current_dir(dir)
        .env("SANDTRAIL_TOKEN", TOKEN)
        .env("SANDTRAIL_LOG", "warn")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "sandtrail {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn msgs_of(ndjson: &str) -> anyhow::Result<Vec<String>> {
    ndjson
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).with_context(|| l.to_string())?;
            Ok(v["msg"].as_str().context("msg")?.to_string())
        })
        .collect()
}

#[tokio::test]
async fn search_ndjson_all_returns_every_record_once_across_pages() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_ix, url) = start_indexer(dir.path(), "127.0.0.1:0")?;
    let now = chrono::Utc::now();
    let recs: Vec<_> = (0..23)
        .map(|i| {
            let ts = (now - chrono::TimeDelta::seconds(i)).to_rfc3339();
            record(&ts, "pager", &format!("line {i}"), i as u64)
        })
        .collect();
    ingest(&url, &recs).await?;
    let out = sandtrail(
        dir.path(),
        &[
            "search",
            "--server",
            &url,
            "-o",
            "ndjson",
            "--all",
            "--limit",
            "5",
            "app:pager",
        ],
    )?;
    let msgs = msgs_of(&out)?;
    assert_eq!(msgs.len(), 23, "{out}");
    let distinct: HashSet<_> = msgs.iter().collect();
    assert_eq!(distinct.len(), 23, "a record printed twice: {msgs:?}");
    // Without --all, one page only.
    let one = msgs_of(&sandtrail(
        dir.path(),
        &[
            "search",
            "--server",
            &url,
            "-o",
            "ndjson",
            "--limit",
            "5",
            "app:pager",
        ],
    )?)?;
    assert_eq!(one.len(), 5);
    // json is the API's answer: total and the hits.
    let json: serde_json::Value = serde_json::from_str(&sandtrail(
        dir.path(),
        &[
            "search",
            "--server",
            &url,
            "-o",
            "json",
            "--all",
            "--limit",
            "10",
            "app:pager",
        ],
    )?)?;
    assert_eq!(json["total"], 23);
    assert_eq!(json["hits"].as_array().map(Vec::len), Some(23));
    Ok(())
}

#[tokio::test]
async fn search_from_to_bounds_the_results() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_ix, url) = start_indexer(dir.path(), "127.0.0.1:0")?;
    let recs: Vec<_> = (0..30)
        .map(|i| {
            let ts = format!("2026-01-01T00:00:{i:02}Z");
            record(&ts, "clock", &format!("second {i}"), i)
        })
        .collect();
    ingest(&url, &recs).await?;
    let out = sandtrail(
        dir.path(),
        &[
            "search",
            "--server",
            &url,
            "-o",
            "ndjson",
            "--all",
            "--from",
            "2026-01-01T00:00:10Z",
            "--to",
            "2026-01-01T00:00:19.5Z",
            "app:clock",
        ],
    )?;
    let mut secs: Vec<u32> = msgs_of(&out)?
        .iter()
        .map(|m| m.trim_start_matches("second ").parse().unwrap())
        .collect();
    secs.sort();
    assert_eq!(secs, (10..20).collect::<Vec<_>>(), "{out}");
    // Relative times as the API takes them: nothing from that day is in the last hour.
    let recent = sandtrail(
        dir.path(),
        &[
            "search",
            "--server",
            &url,
            "-o",
            "ndjson",
            "--from",
            "now-1h",
            "app:clock",
        ],
    )?;
    assert_eq!(recent.trim(), "");
    Ok(())
}

/// An access record of trace `trace`: `task` served a call from `peer`, ending `end_ms`
/// after `base` and lasting `lat` ms.
#[allow(clippy::too_many_arguments)]
fn hop(
    base: chrono::DateTime<chrono::Utc>,
    trace: &str,
    task: &str,
    peer: &str,
    span: &str,
    parent: Option<&str>,
    end_ms: i64,
    lat: f64,
    offset: u64,
) -> serde_json::Value {
    let ts = (base + chrono::TimeDelta::milliseconds(end_ms)).to_rfc3339();
    let mut r = record(&ts, "fib", &format!("GET /fib -> {task}"), offset);
    r["task"] = task.into();
    r["stream"] = "access".into();
    r["trace_id"] = trace.into();
    r["span_id"] = span.into();
    if let Some(p) = parent {
        r["parent_span_id"] = p.into();
    }
    r["peer_app"] = peer.into();
    r["peer_host"] = "10.0.0.9".into();
    r["latency_ms"] = lat.into();
    r["source"] = "/logs/router".into();
    r
}

#[tokio::test]
async fn trace_prints_the_call_tree_root_first() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_ix, url) = start_indexer(dir.path(), "127.0.0.1:0")?;
    let base = chrono::Utc::now() - chrono::TimeDelta::seconds(5);
    let t = "4bf92f3577b34da6a3ce929d0e0e4736";
    // In the order the router writes them: callees end first, the root last.
    let recs = vec![
        hop(base, t, "fib.c", "fib", "s3", Some("s2"), 20, 5.0, 1),
        hop(base, t, "fib.b", "fib", "s2", Some("s1"), 30, 20.0, 2),
        hop(base, t, "fib.d", "fib", "s4", Some("s1"), 90, 40.0, 3),
        hop(base, t, "fib.a", "external", "s1", None, 100, 100.0, 4),
        // A call whose caller's record is missing from the trace.
        hop(base, t, "fib.e", "fib", "s5", Some("gone"), 95, 1.0, 5),
    ];
    ingest(&url, &recs).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = sandtrail(dir.path(), &["trace", "--server", &url, t])?;
        if out.contains("5 hops") || Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let hops: Vec<&str> = out.lines().filter(|l| l.contains(" -> ")).collect();
    let order: Vec<(usize, &str)> = hops
        .iter()
        .map(|l| {
            let indent = l.len() - l.trim_start().len();
            let task = l
                .split_whitespace()
                .find(|w| w.starts_with("fib."))
                .unwrap();
            (indent, task)
        })
        .collect();
    assert_eq!(
        order,
        vec![
            (2, "fib.a"),
            (4, "fib.b"),
            (6, "fib.c"),
            (4, "fib.d"),
            (2, "fib.e")
        ],
        "{out}"
    );
    assert!(hops[0].contains("external (10.0.0.9) -> fib"), "{out}");
    assert!(hops[4].ends_with("(caller not in trace)"), "{out}");
    Ok(())
}

/// `sandtrail tail` as a child whose stdout lines arrive on a channel.
struct Tail {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Tail {
    fn start(dir: &Path, args: &[&str]) -> anyhow::Result<Tail> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sandtrail"))
            .arg("tail")
            .args(args)
            .current_dir(dir)
            .env("SANDTRAIL_TOKEN", TOKEN)
            .env("SANDTRAIL_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(l);
            }
        });
        Ok(Tail {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// Waits until the messages printed so far include all of `want`.
    fn wait_for(&mut self, want: &[&str]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let have: HashSet<&str> = self.seen.iter().map(String::as_str).collect();
            if want.iter().all(|w| have.contains(w)) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .with_context(|| format!("tail printed {:?}, not all of {want:?}", self.seen))?;
            let v: serde_json::Value =
                serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))?;
            self.seen
                .push(v["msg"].as_str().context("msg")?.to_string());
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn tail_json_of_several_apps_survives_an_indexer_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ix, url) = start_indexer(dir.path(), "127.0.0.1:0")?;
    let now = || chrono::Utc::now().to_rfc3339();
    ingest(&url, &[record(&now(), "one", "before start", 1)]).await?;
    let mut tail = Tail::start(
        dir.path(),
        &[
            "one", "two", "--since", "5m", "-o", "json", "--server", &url,
        ],
    )?;
    // --since prints what was there before.
    tail.wait_for(&["before start"])?;
    // The catch-up runs once the stream is subscribed, so the stream is open now.
    ingest(&url, &[record(&now(), "one", "live 1", 101)]).await?;
    tail.wait_for(&["live 1"])?;
    ingest(
        &url,
        &[
            record(&now(), "two", "from two", 1),
            record(&now(), "three", "not followed", 1),
        ],
    )
    .await?;
    tail.wait_for(&["from two"])?;

    ix.kill9()?;
    let addr = url.trim_start_matches("http://").to_string();
    let (_ix, url2) = start_indexer(dir.path(), &addr)?;
    assert_eq!(url2, url);
    // Ingested at once, maybe before the tail is back: the catch-up must find it.
    ingest(&url, &[record(&now(), "one", "after restart", 200)]).await?;
    tail.wait_for(&["after restart"])?;
    // And the live stream works again after the reconnect.
    ingest(&url, &[record(&now(), "two", "later still", 2)]).await?;
    tail.wait_for(&["later still"])?;
    // Anything still in flight shows up within a moment.
    std::thread::sleep(Duration::from_millis(500));
    while let Ok(l) = tail.lines.try_recv() {
        let v: serde_json::Value = serde_json::from_str(&l)?;
        tail.seen.push(v["msg"].as_str().unwrap_or("").to_string());
    }
    let distinct: HashSet<_> = tail.seen.iter().collect();
    assert_eq!(
        distinct.len(),
        tail.seen.len(),
        "duplicates: {:?}",
        tail.seen
    );
    assert!(
        !tail.seen.iter().any(|m| m == "not followed"),
        "{:?}",
        tail.seen
    );
    Ok(())
}

/// A TCP relay to `upstream` whose open connections can be cut, as a proxy or a
/// network drop would, while it keeps accepting new ones.
struct Relay {
    url: String,
    cut: std::sync::Arc<tokio::sync::Notify>,
    /// Connections accepted so far.
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Relay {
    async fn start(upstream: &str) -> anyhow::Result<Relay> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let upstream = upstream.trim_start_matches("http://").to_string();
        let cut = std::sync::Arc::new(tokio::sync::Notify::new());
        let cuts = cut.clone();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (upstream, cuts) = (upstream.clone(), cuts.clone());
                tokio::spawn(async move {
                    let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = cuts.notified() => {}
                    }
                });
            }
        });
        Ok(Relay { url, cut, accepted })
    }

    /// Drops every connection open now.
    fn cut(&self) {
        self.cut.notify_waiters();
    }
}

/// How many searches the indexer has answered (its search histogram's count).
async fn searches(url: &str) -> anyhow::Result<u64> {
    let text = client_with_token(TOKEN)?
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    text.lines()
        .find_map(|l| l.strip_prefix("sandtrail_indexer_search_seconds_count "))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("no search count in {text}"))
}

/// Issue 20: `tail` of a regex of app names (stern's `'fib|web'`) follows every
/// matching app and no other; when its connection drops, it reconnects with the last
/// SSE event id and the indexer replays what it missed, each record once, without the
/// catch-up search (which only an indexer restart needs).
#[tokio::test]
async fn tail_of_an_app_regex_resumes_by_event_id_after_a_dropped_connection() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let (_ix, url) = start_indexer(dir.path(), "127.0.0.1:0")?;
    let relay = Relay::start(&url).await?;
    let now = || chrono::Utc::now().to_rfc3339();
    let mut tail = Tail::start(
        dir.path(),
        &[
            "api|web",
            "--app-regex",
            "^db$",
            "-o",
            "json",
            "--server",
            &relay.url,
        ],
    )?;
    // Subscribed once a live record comes through (no --since: nothing earlier).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut offset = 0;
    loop {
        anyhow::ensure!(Instant::now() < deadline, "tail never printed a probe");
        offset += 1;
        ingest(&url, &[record(&now(), "web", "probe", offset)]).await?;
        if let Ok(line) = tail.lines.recv_timeout(Duration::from_millis(300)) {
            let v: serde_json::Value = serde_json::from_str(&line)?;
            tail.seen.push(v["msg"].as_str().unwrap_or("").to_string());
            break;
        }
    }
    ingest(
        &url,
        &[
            record(&now(), "api-gw", "from api-gw", 1),
            record(&now(), "db", "from db", 1),
            record(&now(), "dbx", "not followed: dbx", 1),
            record(&now(), "other", "not followed: other", 1),
        ],
    )
    .await?;
    tail.wait_for(&["from api-gw", "from db"])?;
    let before = searches(&url).await?;
    let connections = relay.accepted.load(std::sync::atomic::Ordering::SeqCst);

    relay.cut();
    ingest(
        &url,
        &[
            record(&now(), "web", "while cut 1", 1000),
            record(&now(), "db", "while cut 2", 2),
            record(&now(), "other", "not followed: cut", 2),
        ],
    )
    .await?;
    tail.wait_for(&["while cut 1", "while cut 2"])?;
    ingest(&url, &[record(&now(), "api-gw", "after the cut", 2)]).await?;
    tail.wait_for(&["after the cut"])?;
    assert_eq!(
        searches(&url).await?,
        before,
        "resumed by event id, not by a catch-up search"
    );
    assert!(
        relay.accepted.load(std::sync::atomic::Ordering::SeqCst) > connections,
        "the tail reconnected"
    );
    std::thread::sleep(Duration::from_millis(300));
    while let Ok(l) = tail.lines.try_recv() {
        let v: serde_json::Value = serde_json::from_str(&l)?;
        tail.seen.push(v["msg"].as_str().unwrap_or("").to_string());
    }
    let probes = tail.seen.iter().filter(|m| *m == "probe").count();
    let distinct: HashSet<_> = tail.seen.iter().filter(|m| *m != "probe").collect();
    assert_eq!(
        distinct.len() + probes,
        tail.seen.len(),
        "duplicates: {:?}",
        tail.seen
    );
    assert!(
        !tail.seen.iter().any(|m| m.starts_with("not followed")),
        "{:?}",
        tail.seen
    );
    Ok(())
}
