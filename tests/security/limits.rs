//! Security suite, what a request can cost (issue 15): idle connections and large
//! uploads without a token cannot starve the process, slow clients are cut off, and
//! concurrency over a limit is shed with 429 and `Retry-After`. Each case runs a
//! standalone `sandtrail indexer` (the part that takes the largest bodies).

use crate::common::Proc;
use anyhow::Context;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "limits-suite-token";

/// A standalone indexer with `env` on top of the suite's token; its URL and data dir.
fn indexer(env: &[(&str, &str)]) -> anyhow::Result<(Proc, String, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let mut vars = vec![("SANDTRAIL_TOKEN", TOKEN.to_string())];
    vars.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
    let args: Vec<String> = vec![
        "indexer".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        dir.path().display().to_string(),
    ];
    let (proc, url) = Proc::start("indexer", dir.path(), &args, "indexer:", &vars)?;
    Ok((proc, url, dir))
}

fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

/// `GET /healthz` on a new connection; how long until the answer was read.
async fn healthz(addr: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out))
        .await
        .context("healthz did not answer within 10 s")??;
    let text = String::from_utf8_lossy(&out);
    anyhow::ensure!(
        text.starts_with("HTTP/1.1 200"),
        "healthz answered {text:?}"
    );
    Ok(started.elapsed())
}

/// Posts 60 MiB of NDJSON without a token, 1 MiB at a time, reading the answer as it
/// comes; returns the status line (empty when the server cut the connection first)
/// and the bytes it managed to send.
async fn upload_without_token(addr: String) -> anyhow::Result<(String, usize)> {
    let tcp = TcpStream::connect(&addr).await?;
    let (mut rd, mut wr) = tcp.into_split();
    let total = 60usize << 20;
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST /api/v1/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {total}\r\n\r\n"
        );
        let mut sent = 0usize;
        if wr.write_all(head.as_bytes()).await.is_err() {
            return sent;
        }
        let chunk = vec![b'x'; 1 << 20];
        while sent < total {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), rd.read(&mut buf))
        .await
        .unwrap_or(Ok(0))
        .unwrap_or(0);
    let line = String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    writer.abort();
    let sent = writer.await.unwrap_or(0);
    Ok((line, sent))
}

/// Issue 15: bodies (up to 64 MiB) were buffered before the token was checked, and
/// nothing bounded connections, so a stranger could exhaust memory and sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_connections_and_unauthenticated_uploads_leave_healthz_fast() -> anyhow::Result<()> {
    let (proc, url, _dir) = indexer(&[])?;
    let addr = url.trim_start_matches("http://").to_string();
    let pid = proc.pid();
    healthz(&addr).await?;
    let baseline = rss_mib(pid);

    let mut idle = Vec::with_capacity(2000);
    for _ in 0..2000 {
        idle.push(TcpStream::connect(&addr).await?);
    }
    // 200 uploads in flight at any time for as long as healthz is measured: each
    // uploader starts its next one as soon as its last was refused.
    let storm = tokio_util::sync::CancellationToken::new();
    let uploads: Vec<_> = (0..200)
        .map(|_| {
            let (addr, storm) = (addr.clone(), storm.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                while !storm.is_cancelled() {
                    outcomes.push(upload_without_token(addr.clone()).await?);
                }
                anyhow::Ok(outcomes)
            })
        })
        .collect();

    let mut samples = Vec::new();
    let mut peak = baseline;
    for _ in 0..20 {
        samples.push(healthz(&addr).await?);
        peak = peak.max(rss_mib(pid));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    storm.cancel();
    let (mut refused, mut cut, mut sent) = (0, 0, 0usize);
    for u in uploads {
        for (line, n) in u.await?? {
            sent += n;
            match line.as_str() {
                l if l.starts_with("HTTP/1.1 401") => refused += 1,
                "" => cut += 1,
                other => anyhow::bail!("an upload without a token got {other:?}"),
            }
        }
        peak = peak.max(rss_mib(pid));
    }
    let slowest = samples.iter().max().copied().unwrap_or_default();
    eprintln!(
        "healthz {samples:?}; rss {baseline} -> peak {peak} MiB; uploads refused {refused}, cut {cut}, sent {} MiB in all",
        sent >> 20
    );
    assert!(refused >= 200, "uploads are answered 401");
    // The median is held to the 100 ms. Single samples are not: on a shared
    // two-core machine the storm this test's own client keeps up (about a thousand
    // refused uploads a second) delays the odd sample past it, which says more about
    // the client's CPU use than the server's; a second would mean queueing behind
    // the uploads, which is what this pins.
    samples.sort();
    let median = samples[samples.len() / 2];
    assert!(
        median < Duration::from_millis(100),
        "healthz took {median:?} (median) under 2,000 idle connections and 200 uploads"
    );
    assert!(slowest < Duration::from_secs(1), "healthz took {slowest:?}");
    assert!(
        peak < baseline + 128,
        "rss grew from {baseline} to {peak} MiB: bodies are being buffered"
    );
    // The idle connections are still held (the cap is above 2,000), and the process
    // is alive and answering after all of it.
    drop(idle);
    healthz(&addr).await?;
    proc.kill9()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_cut_off() -> anyhow::Result<()> {
    let (_proc, url, _dir) = indexer(&[("SANDTRAIL_HTTP_HEADER_TIMEOUT_SECS", "1")])?;
    let addr = url.trim_start_matches("http://").to_string();
    // Slowloris: headers begun and never finished.
    let mut slow = TcpStream::connect(&addr).await?;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await?;
    // Idle: connected, nothing sent.
    let mut idle = TcpStream::connect(&addr).await?;
    for (what, tcp) in [("slow", &mut slow), ("idle", &mut idle)] {
        let started = Instant::now();
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
        assert!(r.is_ok(), "the {what} connection is still open after 5 s");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{what} closed after {:?}",
            started.elapsed()
        );
    }
    healthz(&addr).await?;
    Ok(())
}

/// The header timeout doubles as the idle timeout, and must not cut a response that
/// is still streaming: a live tail open longer than it still gets new records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_tail_outlives_the_header_timeout() -> anyhow::Result<()> {
    use futures::StreamExt;
    use std::io::Write;
    let (_proc, url, _dir) = indexer(&[("SANDTRAIL_HTTP_HEADER_TIMEOUT_SECS", "1")])?;
    let http = reqwest::Client::new();
    let resp = http
        .get(format!("{url}/api/v1/tail"))
        .query(&[("q", "app:late")])
        .bearer_auth(TOKEN)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    // Nothing to await here but time itself: the stream must stay open past it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let record = serde_json::json!({"ts": chrono::Utc::now().to_rfc3339(), "host": "h", "app": "late", "task": "t",
        "msg": "still here", "source": "limits/late", "offset": 1});
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    writeln!(gz, "{record}")?;
    let ingest = http
        .post(format!("{url}/api/v1/ingest"))
        .bearer_auth(TOKEN)
        .body(gz.finish()?)
        .send()
        .await?;
    assert_eq!(ingest.status(), 200, "{}", ingest.text().await?);
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = String::new();
        while let Some(chunk) = stream.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk?));
            if buf.contains("still here") {
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("the tail stream ended: {buf:?}")
    })
    .await;
    assert!(matches!(got, Ok(Ok(()))), "{got:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_limit_get_429_with_retry_after() -> anyhow::Result<()> {
    let (_proc, url, _dir) = indexer(&[("SANDTRAIL_INDEXER_MAX_TAIL_STREAMS", "2")])?;
    let http = reqwest::Client::new();
    let tail = || {
        http.get(format!("{url}/api/v1/tail"))
            .query(&[("q", "app:fib")])
            .bearer_auth(TOKEN)
            .send()
    };
    let first = tail().await?;
    let second = tail().await?;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = tail().await?;
    assert_eq!(third.status(), 429);
    assert_eq!(third.headers()[reqwest::header::RETRY_AFTER], "1");
    let body = third.text().await?;
    assert!(body.contains("limit is 2"), "{body}");
    // Searches have their own permits: a full tail does not block them.
    let search = http
        .get(format!("{url}/api/v1/search"))
        .query(&[("q", "a")])
        .bearer_auth(TOKEN)
        .send()
        .await?;
    assert_eq!(search.status(), 200);
    // Without a token the gate answers first: shedding never tells a stranger more.
    let stranger = http.get(format!("{url}/api/v1/tail")).send().await?;
    assert_eq!(stranger.status(), 401);
    // Both are counted where an operator looks.
    let metrics = http
        .get(format!("{url}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("sandtrail_http_shed_total{class=\"tail\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sandtrail_http_refused_total{status=\"401\"} 1\n"),
        "{metrics}"
    );
    Ok(())
}
