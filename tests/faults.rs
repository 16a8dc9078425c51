//! The shipper's fault suite: the real binary's `sandtrail indexer` and `sandtrail
//! agent` as separate processes, numbered lines written into hand-made task
//! sandboxes, and every check made through `GET /api/v1/search`: each number must
//! appear exactly once (counted with `total` and by collecting the numbers), whatever
//! happens to the files (rename rotation, copytruncate, truncation, deletion, a
//! removed sandbox, a 1 MiB line, invalid UTF-8, a 100k-line burst) and to the
//! processes (agent `kill -9` at random moments, indexer `kill -9`, indexer down for a
//! while until the agent's disk spool is full and it stops reading, the agent killed
//! with a full spool, files rotated and truncated while the agent is down).
//!
//! The scheduler URL points at a closed port: the agent's node part just keeps
//! retrying, which does not concern the shipper. Every wait is on a condition with a
//! deadline. The random kill moments come from a seed printed at the start (set
//! `FAULTS_SEED` to replay one).

mod common;
use anyhow::{bail, Context};
use common::Proc;
use protocol::SearchResponse;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TOKEN: &str = "fault-suite-token";
const HOST: &str = "node-1";

/// The agents' disk spool bound: a few 1 MiB batches.
const SPOOL_MAX_MB: u64 = 4;

/// The suite's token and, set through the environment as an operator would, a small
/// spool, so the indexer outage below fills it (issue 3: "spool full").
fn env() -> Vec<(&'static str, String)> {
    vec![
        ("SANDTRAIL_TOKEN", TOKEN.into()),
        ("SANDTRAIL_AGENT_SPOOL_MAX_MB", SPOOL_MAX_MB.to_string()),
    ]
}

/// An indexer and an agent on one data dir each.
struct Cluster {
    dir: tempfile::TempDir,
    indexer: Option<Proc>,
    indexer_url: String,
    agent: Option<Proc>,
    /// The agent's router, which also serves its `/metrics`.
    agent_url: String,
    http: reqwest::Client,
}

impl Cluster {
    fn start() -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("idx"))?;
        std::fs::create_dir_all(dir.path().join("agent"))?;
        let mut c = Cluster {
            dir,
            indexer: None,
            indexer_url: String::new(),
            agent: None,
            agent_url: String::new(),
            // Reading needs the token as much as writing (issue 15).
            http: common::client_with_token(TOKEN)?,
        };
        c.start_indexer("127.0.0.1:0")?;
        c.start_agent()?;
        Ok(c)
    }

    fn start_indexer(&mut self, listen: &str) -> anyhow::Result<()> {
        let args = vec![
            "indexer".to_string(),
            "--data-dir".into(),
            self.dir.path().join("idx").display().to_string(),
            "--listen".into(),
            listen.into(),
        ];
        let (p, url) = Proc::start("indexer", self.dir.path(), &args, "indexer:", &env())?;
        self.indexer = Some(p);
        self.indexer_url = url.trim_end_matches('/').to_string();
        Ok(())
    }

    /// Restarts the indexer on the port it had, so the agent finds it again.
    fn restart_indexer(&mut self) -> anyhow::Result<()> {
        let addr = self
            .indexer_url
            .strip_prefix("http://")
            .context("indexer url")?
            .to_string();
        self.start_indexer(&addr)
    }

    fn start_agent(&mut self) -> anyhow::Result<()> {
        let args = vec![
            "agent".to_string(),
            "--data-dir".into(),
            self.dir.path().join("agent").display().to_string(),
            "--name".into(),
            HOST.into(),
            "--scheduler".into(),
            "http://127.0.0.1:1".into(),
            "--indexer".into(),
            self.indexer_url.clone(),
            "--router-listen".into(),
            "127.0.0.1:0".into(),
        ];
        let (p, url) = Proc::start(
            "agent",
            self.dir.path(),
            &args,
            &format!("agent {HOST}:"),
            &env(),
        )?;
        self.agent = Some(p);
        self.agent_url = url.trim_end_matches('/').to_string();
        Ok(())
    }

    /// The value of the agent's unlabelled `sandtrail_agent_<name>` series.
    async fn agent_metric(&self, name: &str) -> anyhow::Result<u64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.agent_url))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let prefix = format!("sandtrail_agent_{name}{{host=\"{HOST}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no {name} in the agent's metrics"))
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("agent").join(HOST)
    }

    /// Creates `sandboxes/faults/<task>/` with its `task.json` and returns it.
    fn sandbox(&self, task: &str) -> anyhow::Result<PathBuf> {
        let dir = self.work().join("sandboxes").join("faults").join(task);
        std::fs::create_dir_all(&dir)?;
        let meta = protocol::TaskMeta {
            host: HOST.into(),
            app: "faults".into(),
            task: task.into(),
            instance: 0,
            ports: vec![],
        };
        std::fs::write(dir.join("task.json"), serde_json::to_vec(&meta)?)?;
        Ok(dir)
    }

    /// Every hit of `task:<task>`: (`total` of the first page, the hits' numbers).
    async fn numbers(&self, task: &str) -> anyhow::Result<(u64, Vec<u64>)> {
        let mut cursor: Option<String> = None;
        let mut total = None;
        let mut nums = Vec::new();
        loop {
            let mut q: Vec<(&str, String)> =
                vec![("q", format!("task:{task}")), ("limit", "10000".into())];
            if let Some(c) = &cursor {
                q.push(("cursor", c.clone()));
            }
            let resp = self
                .http
                .get(format!("{}/api/v1/search", self.indexer_url))
                .header(protocol::TOKEN_HEADER, TOKEN)
                .query(&q)
                .send()
                .await?;
            if !resp.status().is_success() {
                bail!("search answered {}: {}", resp.status(), resp.text().await?);
            }
            let page: SearchResponse = resp.json().await?;
            total.get_or_insert(page.total);
            for h in &page.hits {
                nums.push(
                    number_of(&h.msg)
                        .with_context(|| format!("no number in {:?}", truncate(&h.msg)))?,
                );
            }
            match page.next {
                Some(n) if !page.hits.is_empty() => cursor = Some(n),
                _ => break,
            }
        }
        Ok((total.unwrap_or(0), nums))
    }

    /// Waits until search has at least `n` hits for `task`.
    async fn wait_for(&self, task: &str, n: u64, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let mut last = None;
        loop {
            match self.count(task).await {
                Ok(t) if t >= n => return Ok(()),
                Ok(t) => last = Some(t),
                Err(_) => {}
            }
            if Instant::now() > deadline {
                bail!("task {task}: {last:?} hits after {within:?}, expected {n}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn count(&self, task: &str) -> anyhow::Result<u64> {
        let resp = self
            .http
            .get(format!("{}/api/v1/search", self.indexer_url))
            .header(protocol::TOKEN_HEADER, TOKEN)
            .query(&[("q", format!("task:{task}")), ("limit", "0".into())])
            .send()
            .await?
            .error_for_status()?;
        Ok(resp.json::<SearchResponse>().await?.total)
    }

    /// Asserts that `task` holds every number of `1..=n` exactly once.
    async fn assert_exactly_once(&self, task: &str, n: u64) -> anyhow::Result<()> {
        let (total, mut nums) = self.numbers(task).await?;
        nums.sort_unstable();
        let mut counts: BTreeMap<u64, u32> = BTreeMap::new();
        for x in &nums {
            *counts.entry(*x).or_default() += 1;
        }
        let dups: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).take(10).collect();
        let missing: Vec<u64> = (1..=n)
            .filter(|x| !counts.contains_key(x))
            .take(10)
            .collect();
        let extra: Vec<_> = counts
            .keys()
            .filter(|x| **x == 0 || **x > n)
            .take(10)
            .collect();
        if total != n
            || nums.len() as u64 != n
            || !dups.is_empty()
            || !missing.is_empty()
            || !extra.is_empty()
        {
            bail!(
                "task {task}: total {total}, {} hits, expected {n}; duplicated {dups:?}, missing {missing:?}, unexpected {extra:?}",
                nums.len()
            );
        }
        Ok(())
    }
}

/// The number in a line `seq <n> ...`.
fn number_of(msg: &str) -> Option<u64> {
    let mut words = msg.split_whitespace();
    (words.next()? == "seq").then_some(())?;
    words.next()?.parse().ok()
}

fn truncate(s: &str) -> &str {
    &s[..s.char_indices().nth(80).map_or(s.len(), |(i, _)| i)]
}

fn line(n: u64, tag: &str) -> String {
    format!("seq {n} {tag} the quick brown fox jumps over the lazy dog\n")
}

fn append_to(path: &Path) -> anyhow::Result<File> {
    Ok(OpenOptions::new().create(true).append(true).open(path)?)
}

fn write_lines(
    f: &mut File,
    range: std::ops::RangeInclusive<u64>,
    tag: &str,
) -> anyhow::Result<()> {
    let mut buf = String::new();
    for n in range {
        buf.push_str(&line(n, tag));
    }
    f.write_all(buf.as_bytes())?;
    Ok(())
}

/// Small xorshift, seeded from the clock unless `FAULTS_SEED` is set.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("FAULTS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
                    | 1
            });
        println!("FAULTS_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What happens to files while the agent runs: each case in its own sandbox, all at
/// once, checked after a graceful stop of the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_faults_lose_and_duplicate_nothing() -> anyhow::Result<()> {
    let mut c = Cluster::start()?;

    // Rename rotation as the task logger does it (issue 14): the closed `stdout`
    // becomes `stdout.1`, `stdout.2`, ... numbered upwards, and the shipper deletes
    // each once shipped. (logrotate's shifting `stdout.1 -> stdout.2` and a writer
    // appending to a file after it was rotated are not the logger's contract: a
    // rotation is complete when it appears, and the shipper may delete it.)
    let dir = c.sandbox("rename")?;
    let stdout = dir.join("stdout");
    let mut f = append_to(&stdout)?;
    let mut n = 0;
    for round in 1..=3 {
        write_lines(&mut f, n + 1..=n + 300, "rename")?;
        n += 300;
        // Every other round before the shipper saw the file at all.
        if round % 2 == 0 {
            c.wait_for("rename", n - 299, Duration::from_secs(20))
                .await?;
        }
        drop(f);
        std::fs::rename(&stdout, dir.join(format!("stdout.{round}")))?;
        f = append_to(&stdout)?;
    }
    write_lines(&mut f, n + 1..=n + 100, "rename")?;
    n += 100;
    let rename_n = n;

    // copytruncate: the writer keeps its O_APPEND descriptor; lines written just
    // before the copy may be unread when the original is truncated. The copies are
    // named outside the logger's `stdout.<n>` (which the shipper takes for complete
    // rotations of its own and ships whole).
    let dir = c.sandbox("copytrunc")?;
    let stdout = dir.join("stdout");
    let mut f = append_to(&stdout)?;
    let mut n = 0;
    for round in 1..=3 {
        write_lines(&mut f, n + 1..=n + 200, "copy")?;
        n += 200;
        c.wait_for("copytrunc", n - 199, Duration::from_secs(20))
            .await?;
        write_lines(&mut f, n + 1..=n + 100, "copy-unread")?;
        n += 100;
        std::fs::copy(&stdout, dir.join(format!("stdout.copy-{round}")))?;
        f.set_len(0)?;
    }
    write_lines(&mut f, n + 1..=n + 100, "copy")?;
    n += 100;
    let copy_n = n;

    // Truncation, once after everything was read, once rewritten longer than the
    // old read position before the agent could notice the shrink.
    let dir = c.sandbox("trunc")?;
    let stdout = dir.join("stdout");
    let mut f = append_to(&stdout)?;
    write_lines(&mut f, 1..=300, "trunc")?;
    c.wait_for("trunc", 300, Duration::from_secs(20)).await?;
    f.set_len(0)?;
    write_lines(&mut f, 301..=400, "trunc-after")?;
    c.wait_for("trunc", 400, Duration::from_secs(20)).await?;
    let mut longer = String::new();
    for k in 401..=1000 {
        longer.push_str(&line(k, "trunc-longer"));
    }
    std::fs::write(&stdout, longer)?;
    let trunc_n = 1000;

    // Deletion while the writer still holds the file, and a removed sandbox.
    let dir = c.sandbox("delete")?;
    let mut f = append_to(&dir.join("stdout"))?;
    write_lines(&mut f, 1..=200, "delete")?;
    c.wait_for("delete", 1, Duration::from_secs(20)).await?;
    std::fs::remove_file(dir.join("stdout"))?;
    write_lines(&mut f, 201..=300, "delete-after")?;
    let dir = c.sandbox("rmdir")?;
    let mut g = append_to(&dir.join("stderr"))?;
    write_lines(&mut g, 1..=200, "rmdir")?;
    c.wait_for("rmdir", 1, Duration::from_secs(20)).await?;
    std::fs::remove_dir_all(&dir)?;
    write_lines(&mut g, 201..=250, "rmdir-after")?;

    // A 1 MiB line (kept, cut and flagged) between normal ones; invalid UTF-8.
    let dir = c.sandbox("long")?;
    let mut big = b"seq 2 ".to_vec();
    big.extend(std::iter::repeat_n(b'x', 1 << 20));
    big.push(b'\n');
    let mut f = append_to(&dir.join("stdout"))?;
    f.write_all(line(1, "long").as_bytes())?;
    f.write_all(&big)?;
    f.write_all(line(3, "long").as_bytes())?;
    let dir = c.sandbox("utf8")?;
    let mut f = append_to(&dir.join("stdout"))?;
    for k in 1..=50u64 {
        let mut l = format!("seq {k} ").into_bytes();
        l.extend_from_slice(b"bad \xff\xfe\xc3( bytes\n");
        f.write_all(&l)?;
    }

    // A stack trace is one record; the lines around it are their own.
    let dir = c.sandbox("trace")?;
    std::fs::write(
        dir.join("stdout"),
        "seq 1 ERROR request failed: java.lang.IllegalStateException: bad\n\tat a.B.c(B.java:1)\nCaused by: java.io.IOException: disk\n\t... 3 more\nseq 2 INFO next\nseq 3 INFO last\n",
    )?;

    let expected = [
        ("trace", 3),
        ("rename", rename_n),
        ("copytrunc", copy_n),
        ("trunc", trunc_n),
        ("delete", 300),
        ("rmdir", 250),
        ("long", 3),
        ("utf8", 50),
    ];
    for (task, n) in expected {
        c.wait_for(task, n, Duration::from_secs(30)).await?;
    }
    c.agent.take().context("agent")?.stop()?;
    for (task, n) in expected {
        c.assert_exactly_once(task, n).await?;
    }

    // The long line is kept, cut at the cap and flagged.
    let resp: SearchResponse = c
        .http
        .get(format!("{}/api/v1/search", c.indexer_url))
        .header(protocol::TOKEN_HEADER, TOKEN)
        .query(&[("q", "task:long"), ("limit", "10")])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let long = resp
        .hits
        .iter()
        .find(|h| number_of(&h.msg) == Some(2))
        .context("long line")?;
    assert_eq!(
        long.fields.get("truncated"),
        Some(&serde_json::Value::Bool(true))
    );
    assert!(
        long.msg.len() >= 256 * 1024 - 8 && long.msg.len() <= 256 * 1024,
        "{}",
        long.msg.len()
    );
    let resp: SearchResponse = c
        .http
        .get(format!("{}/api/v1/search", c.indexer_url))
        .header(protocol::TOKEN_HEADER, TOKEN)
        .query(&[("q", "task:trace"), ("limit", "10")])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let trace = resp
        .hits
        .iter()
        .find(|h| number_of(&h.msg) == Some(1))
        .context("trace")?;
    assert!(
        trace.msg.contains("\tat a.B.c") && trace.msg.ends_with("... 3 more"),
        "{:?}",
        trace.msg
    );
    c.indexer.take().context("indexer")?.stop()?;
    Ok(())
}

/// What happens to the processes: agent `kill -9` at random moments while a writer
/// runs, files rotated and truncated while the agent is down, the indexer killed and
/// unreachable for a while, then a 100k-line burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_faults_lose_and_duplicate_nothing() -> anyhow::Result<()> {
    let mut c = Cluster::start()?;
    let mut rng = Rng::new();
    let steady = c.sandbox("steady")?;
    let stopped = c.sandbox("whilestopped")?;

    // A writer of 30 lines every 5 ms (6000 lines/s) in a thread.
    let stdout = steady.join("stdout");
    let writer = std::thread::spawn(move || -> anyhow::Result<u64> {
        let mut f = append_to(&stdout)?;
        let mut n = 0;
        for _ in 0..1000 {
            write_lines(&mut f, n + 1..=n + 30, "steady")?;
            n += 30;
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(n)
    });

    // Files changed while the agent is down: rotated by rename, then truncated.
    let ws = stopped.join("stdout");
    let mut f = append_to(&ws)?;
    write_lines(&mut f, 1..=300, "stopped")?;
    c.wait_for("whilestopped", 1, Duration::from_secs(20))
        .await?;

    for kill in 0..4 {
        tokio::time::sleep(Duration::from_millis(200 + rng.below(1200))).await;
        c.agent.take().context("agent")?.kill9()?;
        match kill {
            0 => {
                // Rotated while stopped, the writer appending to the old file.
                write_lines(&mut f, 301..=400, "stopped")?;
                std::fs::rename(&ws, stopped.join("stdout.1"))?;
                write_lines(&mut f, 401..=450, "stopped-late")?;
                f = append_to(&ws)?;
                write_lines(&mut f, 451..=500, "stopped-new")?;
            }
            1 => {
                // Truncated while stopped (after everything so far was shipped).
                c.start_agent()?;
                c.wait_for("whilestopped", 500, Duration::from_secs(20))
                    .await?;
                c.agent.take().context("agent")?.kill9()?;
                f.set_len(0)?;
                write_lines(&mut f, 501..=550, "stopped-trunc")?;
            }
            _ => {}
        }
        c.start_agent()?;
    }

    // The indexer killed at a random moment and down while a burst of 100k lines is
    // written, until the agent has spooled several batches to disk; then back on
    // its port.
    tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
    c.indexer.take().context("indexer")?.kill9()?;
    let burst = c.sandbox("burst")?;
    let mut b = append_to(&burst.join("stdout"))?;
    write_lines(&mut b, 1..=100_000, "burst")?;
    let t0 = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.agent_metric("spool_batches").await {
            Ok(n) if n >= 3 => break,
            _ if Instant::now() > deadline => {
                bail!("the agent spooled nothing while the indexer was down")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    // The burst is far more than the spool holds: once it is full the agent stops
    // reading (back-pressure) rather than dropping or growing past the bound.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spooled = c.agent_metric("spool_bytes").await?;
        anyhow::ensure!(
            spooled <= SPOOL_MAX_MB << 20,
            "spool holds {spooled} bytes, over its {SPOOL_MAX_MB} MiB bound"
        );
        if spooled + (1 << 20) > SPOOL_MAX_MB << 20 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the spool never filled: {spooled} bytes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let read = c.agent_metric("bytes_read_total").await?;
    let burst_len = std::fs::metadata(burst.join("stdout"))?.len();
    anyhow::ensure!(
        read < burst_len,
        "reading should stop at a full spool: read {read} bytes, the burst alone is {burst_len}"
    );
    println!(
        "spool full at {} bytes while the indexer was down; {read} bytes read",
        c.agent_metric("spool_bytes").await?
    );
    // The agent killed with a full-ish spool: the restarted one finds it on disk and
    // sends it before anything new.
    c.agent.take().context("agent")?.kill9()?;
    c.start_agent()?;
    // Its metrics answer as soon as it listens, before the shipper has loaded the
    // spool: wait for the spool to show up rather than reading the gauge once (that
    // raced and failed under load).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match c.agent_metric("spool_batches").await {
            Ok(n) if n > 0 => break,
            _ if Instant::now() > deadline => {
                bail!("the restarted agent found no spooled batches within 15 s")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    c.restart_indexer()?;
    let steady_n = writer.join().expect("writer thread")?;
    for (task, n) in [
        ("steady", steady_n),
        ("whilestopped", 550),
        ("burst", 100_000),
    ] {
        c.wait_for(task, n, Duration::from_secs(45)).await?;
    }
    println!(
        "burst and catch-up indexed {:?} after the burst was written",
        t0.elapsed()
    );
    c.agent.take().context("agent")?.stop()?;
    for (task, n) in [
        ("steady", steady_n),
        ("whilestopped", 550),
        ("burst", 100_000),
    ] {
        c.assert_exactly_once(task, n).await?;
    }
    c.indexer.take().context("indexer")?.stop()?;
    Ok(())
}
