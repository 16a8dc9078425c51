//! The whole pipeline under load (issue 14), through the real binary as separate
//! processes (`sandtrail scheduler`, `sandtrail indexer`, `sandtrail agent`): a
//! deployed task writes 1,000,000 numbered lines (210 MB) as fast as `cat` can,
//! through the real task logger, agent and indexer, and every number must be
//! searchable exactly once, each line whole; the same with the agent killed
//! (SIGKILL) and restarted in the middle, and with the indexer killed and restarted
//! in the middle; and a task outrunning a small disk budget shows its gap as records
//! and counters, with nothing after the gap lost.
//!
//! Every wait is on a condition with a deadline. Lines are all the same length, so
//! the bytes a drop record names convert exactly into lines.

mod common;
use anyhow::{bail, Context};
use common::Proc;
use protocol::SearchResponse;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TOKEN: &str = "pipeline-suite-token";
const HOST: &str = "node-1";
/// Bytes of every line, newline included.
const LINE: usize = 210;
const MILLION: u64 = 1_000_000;

/// Each test here is a machine's worth of load (a task writing 210 MB and the whole
/// pipeline indexing it): one at a time, so that their deadlines measure the
/// pipeline and not each other.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Line `n`: `seq NNNNNNN` and filler to [`LINE`] bytes.
fn line(n: u64) -> String {
    let head = format!("seq {n:07} level=info fast writer line");
    format!("{head}{}\n", ".".repeat(LINE - 1 - head.len()))
}

/// Writes lines `1..=n` to `path` (the task `cat`s it).
fn numbered_file(path: &Path, n: u64) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 1..=n {
        out.write_all(line(i).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// A scheduler, an indexer and one agent, each its own process.
struct Cluster {
    dir: tempfile::TempDir,
    scheduler: Option<Proc>,
    scheduler_url: String,
    indexer: Option<Proc>,
    indexer_url: String,
    agent: Option<Proc>,
    agent_url: String,
    /// The agent's disk spool bound, when not the default.
    spool_mb: Option<u64>,
    http: reqwest::Client,
}

impl Cluster {
    fn start(spool_mb: Option<u64>) -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let mut c = Cluster {
            dir,
            scheduler: None,
            scheduler_url: String::new(),
            indexer: None,
            indexer_url: String::new(),
            agent: None,
            agent_url: String::new(),
            spool_mb,
            // Reading needs the token as much as writing (issue 15).
            http: common::client_with_token(TOKEN)?,
        };
        let args = vec![
            "scheduler".to_string(),
            "--data-dir".into(),
            c.path("scheduler"),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        let (p, url) = Proc::start("scheduler", c.dir.path(), &args, "scheduler:", &c.env())?;
        c.scheduler = Some(p);
        c.scheduler_url = url.trim_end_matches('/').into();
        c.start_indexer("127.0.0.1:0")?;
        c.start_agent()?;
        Ok(c)
    }

    /// Every part's environment: the token, and the agent's spool bound if set.
    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("SANDTRAIL_TOKEN", TOKEN.to_string())];
        if let Some(mb) = self.spool_mb {
            env.push(("SANDTRAIL_AGENT_SPOOL_MAX_MB", mb.to_string()));
        }
        env
    }

    fn path(&self, part: &str) -> String {
        self.dir.path().join(part).display().to_string()
    }

    fn start_indexer(&mut self, listen: &str) -> anyhow::Result<()> {
        let args = vec![
            "indexer".to_string(),
            "--data-dir".into(),
            self.path("indexer"),
            "--listen".into(),
            listen.into(),
        ];
        let (p, url) = Proc::start("indexer", self.dir.path(), &args, "indexer:", &self.env())?;
        self.indexer = Some(p);
        self.indexer_url = url.trim_end_matches('/').into();
        Ok(())
    }

    /// The indexer again on the port it had, so the agent finds it.
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
            self.path("agent"),
            "--name".into(),
            HOST.into(),
            "--scheduler".into(),
            self.scheduler_url.clone(),
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
            &self.env(),
        )?;
        self.agent = Some(p);
        self.agent_url = url.trim_end_matches('/').into();
        Ok(())
    }

    /// Deploys a one-instance app running `cmd` (and `disk` MiB, when given) and
    /// returns its task id once the task runs.
    async fn deploy(&self, app: &str, cmd: &str, disk: Option<u64>) -> anyhow::Result<String> {
        let mut def =
            serde_json::json!({"id": app, "cmd": cmd, "instances": 1, "cpus": 0.1, "mem": 256});
        if let Some(d) = disk {
            def["disk"] = d.into();
        }
        self.http
            .post(format!("{}/v2/apps", self.scheduler_url))
            .bearer_auth(TOKEN)
            .json(&def)
            .send()
            .await?
            .error_for_status()
            .context("deploy")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let tasks: serde_json::Value = self
                .http
                .get(format!("{}/v2/apps/{app}/tasks", self.scheduler_url))
                .bearer_auth(TOKEN)
                .send()
                .await?
                .json()
                .await?;
            let running = tasks["tasks"].as_array().and_then(|ts| {
                ts.iter()
                    .find(|t| t["state"] == "TASK_RUNNING")
                    .and_then(|t| t["id"].as_str().map(String::from))
            });
            if let Some(id) = running {
                return Ok(id);
            }
            if Instant::now() > deadline {
                bail!("{app} did not start: {tasks}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn search(
        &self,
        q: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> anyhow::Result<SearchResponse> {
        let mut query: Vec<(&str, String)> = vec![
            ("q", q.to_string()),
            ("limit", limit.to_string()),
            ("start", "2000-01-01T00:00:00Z".into()),
        ];
        if let Some(c) = cursor {
            query.push(("cursor", c.to_string()));
        }
        let resp = self
            .http
            .get(format!("{}/api/v1/search", self.indexer_url))
            .bearer_auth(TOKEN)
            .query(&query)
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("search answered {}: {}", resp.status(), resp.text().await?);
        }
        Ok(resp.json().await?)
    }

    async fn count(&self, q: &str) -> anyhow::Result<u64> {
        Ok(self.search(q, 0, None).await?.total)
    }

    /// Waits until `q` has at least `n` hits; returns the count.
    async fn wait_for(&self, q: &str, n: u64, within: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + within;
        let mut last = 0;
        loop {
            if let Ok(t) = self.count(q).await {
                if t >= n {
                    return Ok(t);
                }
                last = t;
            }
            if Instant::now() > deadline {
                bail!("{q}: {last} hits after {within:?}, expected {n}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the count of `q` has not moved for `quiet`; returns it.
    async fn settled(&self, q: &str, quiet: Duration, within: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + within;
        let mut last = (u64::MAX, Instant::now());
        loop {
            let t = self.count(q).await?;
            if t != last.0 {
                last = (t, Instant::now());
            } else if last.1.elapsed() >= quiet {
                return Ok(t);
            }
            if Instant::now() > deadline {
                bail!("{q}: still moving after {within:?} ({t} hits)");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every hit of `q`: (`total`, messages).
    async fn all(&self, q: &str) -> anyhow::Result<(u64, Vec<String>)> {
        let mut cursor: Option<String> = None;
        let mut total = None;
        let mut msgs = Vec::new();
        loop {
            let page = self.search(q, 10_000, cursor.as_deref()).await?;
            total.get_or_insert(page.total);
            msgs.extend(page.hits.iter().map(|h| h.msg.clone()));
            match page.next {
                Some(n) if !page.hits.is_empty() => cursor = Some(n),
                _ => break,
            }
        }
        Ok((total.unwrap_or(0), msgs))
    }

    /// The agent's `sandtrail_agent_<name>` series for this host, 0 when absent.
    async fn agent_metric(&self, name: &str) -> anyhow::Result<u64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.agent_url))
            .bearer_auth(TOKEN)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let prefix = format!("sandtrail_agent_{name}{{host=\"{HOST}\"}} ");
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0))
    }

    fn input(&self) -> PathBuf {
        self.dir.path().join("input.txt")
    }
}

/// The numbers of `msgs` (lines of [`line`]), checking each line is whole.
fn numbers(msgs: &[String]) -> anyhow::Result<BTreeMap<u64, u32>> {
    let mut counts = BTreeMap::new();
    for m in msgs {
        let n: u64 = m
            .strip_prefix("seq ")
            .and_then(|r| r.get(..7))
            .and_then(|d| d.parse().ok())
            .with_context(|| format!("not a numbered line: {:?}", &m[..m.len().min(80)]))?;
        if format!("{m}\n") != line(n) {
            bail!("line {n} is not whole: {:?}", &m[..m.len().min(80)]);
        }
        *counts.entry(n).or_insert(0) += 1;
    }
    Ok(counts)
}

/// Every number of `1..=n` exactly once among the task's records.
async fn assert_exactly_once(c: &Cluster, task: &str, n: u64) -> anyhow::Result<()> {
    let q = format!("task:\"{task}\"");
    c.settled(&q, Duration::from_secs(3), Duration::from_secs(120))
        .await?;
    let (total, msgs) = c.all(&q).await?;
    let counts = numbers(&msgs)?;
    let dups: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).take(5).collect();
    let missing: Vec<u64> = (1..=n)
        .filter(|x| !counts.contains_key(x))
        .take(5)
        .collect();
    if total != n || msgs.len() as u64 != n || !dups.is_empty() || !missing.is_empty() {
        bail!(
            "expected 1..={n} once each: total {total}, collected {}, duplicates {dups:?}, missing {missing:?}",
            msgs.len()
        );
    }
    Ok(())
}

/// A task that writes `input` at full speed and then stays up (an exit would be
/// restarted and write it all again) until the test's directory is gone. Regression:
/// `exec sleep 100000` outlived the test (tasks survive their agent by design), four
/// idle tasks and loggers left behind by every run of this suite.
fn cat_then_idle(input: &Path) -> String {
    let f = input.display();
    format!("cat '{f}'; while [ -e '{f}' ]; do sleep 1; done")
}

async fn million(fault: Option<&str>) -> anyhow::Result<()> {
    let _heavy = HEAVY.lock().await;
    let mut c = Cluster::start(None)?;
    numbered_file(&c.input(), MILLION)?;
    let cmd = cat_then_idle(&c.input());
    let task = c.deploy("fast", &cmd, None).await?;
    let q = format!("task:\"{task}\"");
    match fault {
        None => {}
        Some("agent") => {
            c.wait_for(&q, MILLION / 3, Duration::from_secs(600))
                .await?;
            c.agent.take().context("agent")?.kill9()?;
            c.start_agent()?;
        }
        Some("indexer") => {
            c.wait_for(&q, MILLION / 3, Duration::from_secs(600))
                .await?;
            c.indexer.take().context("indexer")?.kill9()?;
            c.restart_indexer()?;
        }
        Some(other) => bail!("unknown fault {other}"),
    }
    c.wait_for(&q, MILLION, Duration::from_secs(900)).await?;
    assert_exactly_once(&c, &task, MILLION).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_writing_a_million_lines_as_fast_as_it_can_is_searchable_exactly_once(
) -> anyhow::Result<()> {
    million(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_million_lines_survive_the_agent_killed_and_restarted_in_the_middle(
) -> anyhow::Result<()> {
    million(Some("agent")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_million_lines_survive_the_indexer_killed_and_restarted_in_the_middle(
) -> anyhow::Result<()> {
    million(Some("indexer")).await
}

/// A task writing 210 MB against a 20 MiB disk budget: what the budget forced out
/// is said by records in the task's own stream ("N bytes of stdout dropped at
/// rotation") and the agent's counters, adding up to exactly the missing lines;
/// no line is duplicated, and the last lines (after the last gap) all arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_outrunning_its_disk_budget_shows_the_gap_and_loses_nothing_after_it(
) -> anyhow::Result<()> {
    let _heavy = HEAVY.lock().await;
    // A small spool: a spooled line counts as shipped (its file may go), so with
    // the default 1 GiB spool the agent would absorb the whole burst and no budget
    // would ever bind; this is the case where both are small.
    let c = Cluster::start(Some(4))?;
    numbered_file(&c.input(), MILLION)?;
    let cmd = cat_then_idle(&c.input());
    let task = c.deploy("budget", &cmd, Some(20)).await?;
    let q = format!("task:\"{task}\"");
    // The last line always arrives: nothing after the last gap is lost.
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if c.count(&format!("{q} AND \"seq {MILLION:07}\"")).await? == 1 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the last line never arrived");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    c.settled(&q, Duration::from_secs(3), Duration::from_secs(120))
        .await?;
    let (_, msgs) = c.all(&q).await?;
    let (lines, notes): (Vec<String>, Vec<String>) =
        msgs.into_iter().partition(|m| m.starts_with("seq "));
    let counts = numbers(&lines)?;
    let dups: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).take(5).collect();
    if !dups.is_empty() {
        bail!("duplicated lines: {dups:?}");
    }
    let dropped: u64 = notes
        .iter()
        .map(|m| {
            m.split_whitespace()
                .next()
                .and_then(|b| b.parse::<u64>().ok())
                .filter(|_| m.contains("dropped at rotation: disk budget of 20 MiB reached"))
                .with_context(|| format!("not a drop record: {m:?}"))
        })
        .sum::<anyhow::Result<u64>>()?;
    let missing = MILLION - counts.len() as u64;
    if notes.is_empty() || missing == 0 {
        bail!(
            "a 210 MB burst against 20 MiB dropped nothing ({} notes)",
            notes.len()
        );
    }
    if dropped != missing * LINE as u64 {
        bail!(
            "drop records name {dropped} bytes; {missing} lines ({} bytes) are missing",
            missing * LINE as u64
        );
    }
    let counted = c.agent_metric("log_bytes_dropped_total").await?;
    if counted != dropped {
        bail!("the agent counted {counted} bytes dropped, its records say {dropped}");
    }
    // Regression: the agent rendered no budget gauge, so the Hosts page showed the
    // logs on disk against an "unknown" budget.
    let budget = c.agent_metric("log_budget_bytes").await?;
    if budget < 20 << 20 {
        bail!("the agent's log_budget_bytes is {budget}, expected the task's 20 MiB at least");
    }
    Ok(())
}
