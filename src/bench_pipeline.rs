//! `sandtrail bench pipeline`: the whole pipeline under load, end to end (issue 14).
//!
//! Each scenario starts this same executable as `sandtrail up --no-demo` (scheduler,
//! indexer and agents, as a user runs them), deploys an app whose tasks write a
//! slice of the loghub-derived corpus through the real task logger, and times from
//! the deploy to the moment search counts every line. In the same run a plain
//! Tantivy `IndexWriter` loop indexes the same records, once before the pipeline and
//! once after it, and the faster of the two is the yardstick, so the ratio is
//! measured side by side (absolute rates drift on shared machines; ratios hold) and
//! errs low rather than high.
//!
//! The trade-off: "first line written" is taken as the deploy request, so task
//! launch (a few milliseconds) counts against the pipeline, and completion is seen
//! by polling search every 100 ms, which can add up to that much.

use anyhow::{bail, Context};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One scenario: how many agents, tasks, lines per task, and a pace (lines/s per
/// task; 0 = as fast as `cat`).
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub agents: usize,
    pub tasks: usize,
    pub lines: usize,
    pub rate: u64,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// gen_corpus.py's `.txt`: the lines tasks write.
    pub corpus: PathBuf,
    pub work_dir: PathBuf,
    pub scenarios: Vec<Scenario>,
    /// The indexer's writer memory, used for the raw loop too.
    pub writer_memory: usize,
}

/// What one scenario measured.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: Scenario,
    pub records: u64,
    pub bytes: u64,
    pub secs: f64,
    pub found: u64,
    pub raw_secs: f64,
    /// CPU seconds (user + system) of the raw loop, and of the whole `up` process
    /// (scheduler, indexer, agents; not the tasks and their loggers) over its life.
    pub raw_cpu: f64,
    pub cpu: f64,
    pub peak_rss_kb: u64,
    /// Batches the agents wrote to their disk spool: none while the indexer keeps
    /// answering (issue 14, stop 30), each one a write, an fsync and a re-read.
    pub spooled: u64,
}

impl Row {
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.secs
    }
    pub fn raw_rate(&self) -> f64 {
        self.records as f64 / self.raw_secs
    }
}

/// The child `sandtrail up` of one scenario.
struct Cluster {
    child: Child,
    web: String,
    token: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: signals our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_cluster(exe: &Path, dir: &Path, agents: usize) -> anyhow::Result<Cluster> {
    let mut child = Command::new(exe)
        .args([
            "up",
            "--no-demo",
            "--listen",
            "127.0.0.1:0",
            "--router-listen",
            "127.0.0.1:0",
        ])
        .arg("--agents")
        .arg(agents.to_string())
        .arg("--data-dir")
        .arg(dir)
        .env("SANDTRAIL_LOG", "warn")
        .env_remove("SANDTRAIL_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start sandtrail up")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let web = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .context("sandtrail up did not print its URL")?;
        if let Some(u) = line.trim().strip_prefix("web UI:") {
            break u.trim().trim_end_matches('/').to_string();
        }
    };
    let token = std::fs::read_to_string(crate::tokens::path(dir, protocol::auth::Role::Admin))?
        .trim()
        .to_string();
    Ok(Cluster { child, web, token })
}

/// User + system CPU seconds of a live process, from `/proc/<pid>/stat`.
fn cpu_secs(pid: u32) -> f64 {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .unwrap_or(0.0)
}

fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Records of the search range: the corpus dates its lines in 2026-11, and a line
/// without a date is stamped when read.
const SINCE: &str = "2000-01-01T00:00:00Z";

async fn count(http: &reqwest::Client, c: &Cluster, app: &str) -> anyhow::Result<u64> {
    let resp: protocol::SearchResponse = http
        .get(format!("{}/api/v1/search", c.web))
        .bearer_auth(&c.token)
        .query(&[
            ("q", format!("app:{app}")),
            ("limit", "0".into()),
            ("start", SINCE.into()),
        ])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(resp.total)
}

/// Deletes `app` and waits until no node runs a task (a bench cluster runs only
/// the bench's app). The scheduler forgets the tasks at once; a node stops them at
/// its next look at its desired state, and `up` stopping first would leave them be.
async fn remove_app(http: &reqwest::Client, c: &Cluster, app: &str) -> anyhow::Result<()> {
    http.delete(format!("{}/v2/apps/{app}", c.web))
        .bearer_auth(&c.token)
        .send()
        .await?
        .error_for_status()
        .context("delete the app")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = metric_sum(http, c, "sandtrail_node_tasks_running").await?;
        if running == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{running} task(s) still running 60 s after the app's delete"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The agents' spooled batches, summed from `up`'s `/metrics`.
async fn spooled(http: &reqwest::Client, c: &Cluster) -> anyhow::Result<u64> {
    metric_sum(http, c, "sandtrail_agent_batches_spooled_total").await
}

/// The samples of one integer family in `up`'s `/metrics`, summed over hosts.
async fn metric_sum(http: &reqwest::Client, c: &Cluster, family: &str) -> anyhow::Result<u64> {
    let text = http
        .get(format!("{}/metrics", c.web))
        .bearer_auth(&c.token)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(sum_of(&text, family))
}

fn sum_of(exposition: &str, family: &str) -> u64 {
    exposition
        .lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Writes the first `lines` lines of the corpus to `path`; returns their bytes.
fn slice(corpus: &Path, lines: usize, path: &Path) -> anyhow::Result<u64> {
    let input = std::io::BufReader::new(
        std::fs::File::open(corpus).with_context(|| format!("corpus {}", corpus.display()))?,
    );
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut bytes = 0u64;
    let mut n = 0;
    for line in input.lines() {
        if n == lines {
            break;
        }
        let line = line?;
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
        bytes += line.len() as u64 + 1;
        n += 1;
    }
    out.flush()?;
    if n < lines {
        bail!("the corpus has {n} lines; {lines} asked for");
    }
    Ok(bytes)
}

/// The writer of the paced scenarios (`sandtrail bench pipeline --write FILE
/// --rate R`, run as a task): the file's lines at `rate` per second, in bursts every
/// 10 ms, then nothing (the task stays up so it is not restarted).
pub fn write_paced(file: &Path, rate: u64) -> anyhow::Result<()> {
    let lines: Vec<String> = std::io::BufReader::new(std::fs::File::open(file)?)
        .lines()
        .collect::<Result<_, _>>()?;
    let out = std::io::stdout();
    let mut out = out.lock();
    let started = Instant::now();
    for (i, line) in lines.iter().enumerate() {
        let due = started + Duration::from_secs_f64(i as f64 / rate.max(1) as f64);
        let now = Instant::now();
        if due > now {
            out.flush()?;
            std::thread::sleep((due - now).max(Duration::from_millis(10)));
        }
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The records the shipper makes of `input`'s lines (its own parser: timestamp,
/// level and fields taken from the line, the task's tags), so that the raw loop
/// indexes what the pipeline indexes.
fn shipped_records(input: &Path) -> anyhow::Result<Vec<protocol::LogRecord>> {
    let meta = protocol::TaskMeta {
        host: "node-1".into(),
        app: "bench".into(),
        task: "bench.00000000-0000-0000-0000-000000000000".into(),
        instance: 0,
        ports: Vec::new(),
    };
    let now = chrono::Utc::now();
    let source =
        "sandboxes/bench/bench.00000000-0000-0000-0000-000000000000/stdout@0123456789abcdef";
    let mut out = Vec::new();
    let mut offset = 0u64;
    for line in std::io::BufReader::new(std::fs::File::open(input)?).split(b'\n') {
        let line = line?;
        offset += line.len() as u64 + 1;
        let prepared = agent::parse::prepare_line(&line, 0, 256 * 1024);
        let mut rec = agent::parse::sandbox_record(&prepared, &meta, protocol::Stream::Stdout, now);
        rec.source = source.into();
        rec.offset = offset;
        out.push(rec);
    }
    Ok(out)
}

/// One raw Tantivy loop over `records` in `dir` (emptied after); wall and CPU seconds.
async fn raw_loop(
    records: &std::sync::Arc<Vec<protocol::LogRecord>>,
    dir: &Path,
    memory: usize,
) -> anyhow::Result<(f64, f64)> {
    let (records, raw_dir) = (records.clone(), dir.to_path_buf());
    let secs = tokio::task::spawn_blocking(move || {
        indexer::bench::raw_tantivy(&records, &raw_dir, memory)
    })
    .await??;
    let _ = std::fs::remove_dir_all(dir);
    Ok(secs)
}

/// Runs every scenario; progress goes to stderr.
pub async fn run(opts: Options) -> anyhow::Result<Vec<Row>> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    std::fs::create_dir_all(&opts.work_dir)?;
    let http = reqwest::Client::new();
    let mut rows = Vec::new();
    for sc in &opts.scenarios {
        let work = opts.work_dir.join(&sc.name);
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        let input = work.join("input.txt");
        let bytes_per_task = slice(&opts.corpus, sc.lines, &input)?;
        // The tasks run as users of their own (SECURITY.md, "Tasks") and this
        // process's umask is 077: the input must be readable to them on purpose.
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::Permissions::from_mode;
            std::fs::set_permissions(&opts.work_dir, mode(0o755))?;
            std::fs::set_permissions(&work, mode(0o755))?;
            std::fs::set_permissions(&input, mode(0o644))?;
        }
        let records = (sc.lines * sc.tasks) as u64;

        eprintln!("[{}] raw Tantivy loop over {records} records", sc.name);
        let one = shipped_records(&input)?;
        let mut all = Vec::with_capacity(records as usize);
        for _ in 0..sc.tasks {
            all.extend(one.iter().cloned());
        }
        let all = std::sync::Arc::new(all);
        let raw_before = raw_loop(&all, &work.join("raw"), opts.writer_memory).await?;

        eprintln!(
            "[{}] pipeline: {} task(s) on {} agent(s), {} lines each",
            sc.name, sc.tasks, sc.agents, sc.lines
        );
        let cluster = start_cluster(&exe, &work.join("data"), sc.agents)?;
        let app = format!(
            "bench-{}",
            sc.name.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
        );
        let input_arg = input.display().to_string();
        let cmd = if sc.rate == 0 {
            format!("cat '{input_arg}'; exec sleep 100000")
        } else {
            format!(
                "exec '{}' bench pipeline --write '{input_arg}' --rate {}",
                exe.display(),
                sc.rate
            )
        };
        let mut def = serde_json::json!({
            "id": app, "cmd": cmd, "instances": sc.tasks, "cpus": 0.01, "mem": 64,
        });
        if sc.tasks == sc.agents && sc.tasks > 1 {
            def["constraints"] = serde_json::json!([["hostname", "UNIQUE"]]);
        }
        let started = Instant::now();
        http.post(format!("{}/v2/apps", cluster.web))
            .bearer_auth(&cluster.token)
            .json(&def)
            .send()
            .await?
            .error_for_status()
            .context("deploy")?;
        let budget = Duration::from_secs(900);
        let mut found = 0;
        let mut last_report = Instant::now();
        let secs = loop {
            if let Ok(n) = count(&http, &cluster, &app).await {
                found = n;
            }
            if found >= records {
                break started.elapsed().as_secs_f64();
            }
            if started.elapsed() > budget {
                eprintln!(
                    "[{}] gave up: {found} of {records} after {budget:?}",
                    sc.name
                );
                break started.elapsed().as_secs_f64();
            }
            if last_report.elapsed() > Duration::from_secs(5) {
                eprintln!("[{}] {found} of {records} searchable", sc.name);
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Anything late would be a duplicate: look again after a pause.
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Ok(n) = count(&http, &cluster, &app).await {
            found = n;
        }
        let spooled = spooled(&http, &cluster).await.unwrap_or_else(|e| {
            eprintln!("[{}] cannot read the agents' metrics: {e:#}", sc.name);
            0
        });
        let peak_rss_kb = peak_rss_kb(cluster.child.id());
        let cpu = cpu_secs(cluster.child.id());
        // Tasks and their loggers outlive `up` by design (an agent's restart adopts
        // them), so the app goes first: otherwise every run left its tasks sleeping.
        if let Err(e) = remove_app(&http, &cluster, &app).await {
            eprintln!("[{}] the app's tasks may outlive the run: {e:#}", sc.name);
        }
        drop(cluster);
        // The raw loop again, on the other side of the pipeline: its CPU seconds for
        // the same records spread by a fifth between runs on a shared machine, so
        // the faster of the two is the yardstick (the ratio errs low, never high).
        eprintln!("[{}] raw Tantivy loop again", sc.name);
        let raw_after = raw_loop(&all, &work.join("raw"), opts.writer_memory).await?;
        let raw = if raw_after.0 < raw_before.0 {
            raw_after
        } else {
            raw_before
        };
        eprintln!(
            "[{}] raw Tantivy loop before and after: {:.1} s and {:.1} s",
            sc.name, raw_before.0, raw_after.0
        );
        let row = Row {
            scenario: sc.clone(),
            records,
            bytes: bytes_per_task * sc.tasks as u64,
            secs,
            found,
            raw_secs: raw.0,
            raw_cpu: raw.1,
            cpu,
            peak_rss_kb,
            spooled,
        };
        eprintln!(
            "[{}] {} records in {:.1} s ({:.0}/s), raw Tantivy {:.0}/s: {:.2}; found {}; CPU s ours {:.1}, raw {:.1}; {} batches spooled",
            sc.name,
            records,
            secs,
            row.rate(),
            row.raw_rate(),
            row.rate() / row.raw_rate(),
            found,
            row.cpu,
            row.raw_cpu,
            row.spooled
        );
        rows.push(row);
    }
    Ok(rows)
}

pub fn to_markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | records | MB | end to end s | records/s | MB/s | raw Tantivy records/s | pipeline / raw | found | CPU s of `up` / raw loop | peak RSS of `up` MiB | batches spooled |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let sc = &r.scenario;
        let pace = if sc.rate == 0 {
            "as fast as cat".to_string()
        } else {
            format!("{} lines/s each", sc.rate)
        };
        out.push_str(&format!(
            "| {} task(s) on {} agent(s), {} | {} | {:.1} | {:.1} | {:.0} | {:.1} | {:.0} | **{:.2}** | {} | {:.1} / {:.1} | {} | {} |\n",
            sc.tasks,
            sc.agents,
            pace,
            r.records,
            r.bytes as f64 / 1e6,
            r.secs,
            r.rate(),
            r.bytes as f64 / 1e6 / r.secs,
            r.raw_rate(),
            r.rate() / r.raw_rate(),
            r.found,
            r.cpu,
            r.raw_cpu,
            r.peak_rss_kb / 1024,
            r.spooled
        ));
    }
    out
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One line per scenario run more than once (`--runs`): the medians of its runs'
/// ratios, by wall clock and by CPU seconds. On a shared two-core machine a single
/// run's ratio spreads by a fifth either way (the raw loop's own CPU seconds for the
/// same records vary that much), so a target is judged on the median of several.
pub fn medians(rows: &[Row]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for r in rows {
        if !names.contains(&r.scenario.name.as_str()) {
            names.push(&r.scenario.name);
        }
    }
    let mut out = String::new();
    for name in names {
        let runs: Vec<&Row> = rows.iter().filter(|r| r.scenario.name == name).collect();
        if runs.len() < 2 {
            continue;
        }
        let mut ratios: Vec<f64> = runs.iter().map(|r| r.rate() / r.raw_rate()).collect();
        ratios.sort_by(f64::total_cmp);
        let (lo, hi) = (ratios[0], ratios[ratios.len() - 1]);
        let cpu = median(runs.iter().map(|r| r.raw_cpu / r.cpu).collect());
        let whole = runs.iter().filter(|r| r.found == r.records).count();
        out.push_str(&format!(
            "{name}: {} runs, pipeline / raw median {:.2} (runs {lo:.2} to {hi:.2}), CPU seconds raw / `up` median {cpu:.2}; every line found exactly once in {whole} of {} runs\n",
            runs.len(),
            median(ratios),
            runs.len(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, secs: f64, raw_secs: f64, cpu: f64, found: u64) -> Row {
        Row {
            scenario: Scenario {
                name: name.into(),
                agents: 1,
                tasks: 1,
                lines: 100,
                rate: 0,
            },
            records: 100,
            bytes: 1000,
            secs,
            found,
            raw_secs,
            raw_cpu: 8.0,
            cpu,
            peak_rss_kb: 1024,
            spooled: 0,
        }
    }

    #[test]
    fn a_family_is_summed_over_hosts_and_not_confused_with_a_longer_name() {
        let text = "# HELP sandtrail_node_tasks_running Tasks.\n\
            sandtrail_node_tasks_running{host=\"node-1\"} 2\n\
            sandtrail_node_tasks_running{host=\"node-2\"} 1\n\
            sandtrail_node_tasks_running_total{host=\"node-1\"} 40\n\
            sandtrail_node_tasks_running 4\n";
        assert_eq!(sum_of(text, "sandtrail_node_tasks_running"), 7);
        assert_eq!(sum_of(text, "sandtrail_agent_batches_spooled_total"), 0);
    }

    #[test]
    fn the_median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn medians_summarise_only_scenarios_run_more_than_once() {
        let rows = [
            row("3x3", 10.0, 8.0, 10.0, 100),
            row("1x1", 10.0, 5.0, 10.0, 100),
            row("3x3", 10.0, 9.0, 16.0, 100),
            row("3x3", 10.0, 7.0, 8.0, 99),
        ];
        // Ratios 0.8, 0.9, 0.7; CPU ratios 0.8, 0.5, 1.0.
        assert_eq!(
            medians(&rows),
            "3x3: 3 runs, pipeline / raw median 0.80 (runs 0.70 to 0.90), CPU seconds raw / `up` median 0.80; every line found exactly once in 2 of 3 runs\n"
        );
    }
}
