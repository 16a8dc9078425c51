//! Cluster benchmarks of issue 5 (BENCHMARKS.md), against the real binaries: one
//! `sandtrail scheduler` and three `sandtrail agent` processes on loopback, tasks
//! `sleep 3600`.
//!
//! 1. deploy 100 instances: time from `POST /v2/apps` until all are `TASK_RUNNING`,
//!    then the same with a COMMAND health check until all are healthy;
//! 2. agent loss: `kill -9` of one agent (scheduler agent timeout 3 s) until every
//!    instance runs again on the others; the agent is then restarted on the same work
//!    dir so the scheduler has it kill its stale tasks;
//! 3. scheduler RSS (VmRSS, VmHWM) with 1 000 tasks running.
//!
//! Everything is stopped at the end: apps deleted (their tasks killed by the agents),
//! agents and scheduler sent SIGTERM, and as a safety net any process still working
//! in the bench's directory is killed.
//!
//! ```text
//! cargo build --release && cargo run --release -p scheduler --example bench_cluster -- [path/to/sandtrail]
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(50);

struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    url: String,
    scheduler: Child,
    agents: Vec<Option<Child>>,
    http: reqwest::Client,
}

/// A run that panics (a timeout) must not leave its scheduler, agents and thousands
/// of tasks behind: they skewed every later measurement on the machine.
impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self
            .agents
            .iter_mut()
            .flatten()
            .chain(std::iter::once(&mut self.scheduler))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        kill_leftovers(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    fn spawn_agent(&self, i: usize) -> Child {
        let name = format!("node-{i}");
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .arg("agent")
            .arg("--data-dir")
            .arg(self.dir.join("agents"))
            .args(["--name", &name, "--scheduler", &self.url])
            // Nothing listens there: the shipper retries quietly, which is all a
            // scheduling benchmark needs from it.
            .args(["--indexer", "http://127.0.0.1:9"])
            .args(["--router-listen", "127.0.0.1:0"])
            // Room for 1 000 small tasks on 3 agents: without it an agent offers what
            // its host has (2 cpus here), and 1 000 x 0.01 cpus would not fit.
            .args(["--resources", "cpus:64;mem:65536;disk:65536"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting an agent")
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .json()
            .await
            .unwrap()
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }

    async fn tasks(&self, app: &str) -> Vec<Value> {
        self.get(&format!("/v2/apps/{app}/tasks")).await["tasks"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Polls the app's tasks until `done` holds; returns how long that took.
    async fn until(&self, what: &str, app: &str, done: impl Fn(&[Value]) -> bool) -> Duration {
        let start = Instant::now();
        loop {
            let tasks = self.tasks(app).await;
            if done(&tasks) {
                return start.elapsed();
            }
            assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
            tokio::time::sleep(POLL).await;
        }
    }
}

fn running(t: &Value) -> bool {
    t["state"] == "TASK_RUNNING"
}

fn healthy(t: &Value) -> bool {
    running(t)
        && t["healthCheckResults"]
            .as_array()
            .is_some_and(|h| !h.is_empty() && h.iter().all(|r| r["alive"] == true))
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn terminate(child: &mut Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(POLL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills every process whose working directory is under `dir` (tasks run in their
/// sandboxes); returns how many there were.
fn kill_leftovers(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c.starts_with(dir)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            n += 1;
        }
    }
    n
}

fn sleep_app(id: &str, instances: u32, health: bool) -> Value {
    let mut app = json!({
        "id": id, "cmd": "sleep 3600", "instances": instances, "cpus": 0.01, "mem": 16,
    });
    if health {
        app["healthChecks"] = json!([{
            "protocol": "COMMAND", "command": {"value": "true"},
            "gracePeriodSeconds": 10, "intervalSeconds": 1, "timeoutSeconds": 5,
            "maxConsecutiveFailures": 3,
        }]);
    }
    app
}

#[tokio::main]
async fn main() {
    let bin = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/release/sandtrail"));
    assert!(
        bin.exists(),
        "{} missing: cargo build --release",
        bin.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::fs::canonicalize(tmp.path()).unwrap();
    let config = dir.join("sandtrail.toml");
    std::fs::write(&config, "[scheduler]\nagent_timeout_secs = 3\n").unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let scheduler = Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .arg("scheduler")
        .arg("--data-dir")
        .arg(dir.join("scheduler"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("scheduler.log")).unwrap())
        .spawn()
        .expect("starting the scheduler");
    let mut c = Cluster {
        bin,
        dir: dir.clone(),
        config,
        url,
        scheduler,
        agents: Vec::new(),
        http: reqwest::Client::new(),
    };
    let result = run(&mut c).await;

    // Cleanup, whatever happened above.
    for app in ["/bench/plain", "/bench/healthy", "/bench/thousand"] {
        let _ = c
            .http
            .delete(format!("{}/v2/apps{app}?force=true", c.url))
            .send()
            .await;
    }
    // The agents kill the deleted apps' tasks (and their loggers); wait for that
    // before stopping them, since a stopping agent leaves its tasks running.
    let t0 = Instant::now();
    while count_under(&dir.join("agents")) > 0 && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "teardown: tasks gone {:.2} s after the apps were deleted ({} processes left)",
        t0.elapsed().as_secs_f64(),
        count_under(&dir.join("agents"))
    );
    for a in c.agents.iter_mut().flatten() {
        terminate(a);
    }
    terminate(&mut c.scheduler);
    let leftovers = kill_leftovers(&dir);
    println!("cleanup: {leftovers} leftover processes killed");
    if let Err(e) = result {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

async fn run(c: &mut Cluster) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if c.http.get(format!("{}/ping", c.url)).send().await.is_ok() {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err("scheduler did not come up".into());
        }
        tokio::time::sleep(POLL).await;
    }
    for i in 1..=3 {
        let a = c.spawn_agent(i);
        c.agents.push(Some(a));
    }
    let start = Instant::now();
    loop {
        let agents = c.get("/v1/agents").await;
        if agents.as_array().is_some_and(|a| a.len() == 3) {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err("agents did not register".into());
        }
        tokio::time::sleep(POLL).await;
    }

    let mut report = Vec::new();
    // 1. Deploys.
    let t0 = Instant::now();
    c.send(
        reqwest::Method::POST,
        "/v2/apps",
        Some(sleep_app("/bench/plain", 100, false)),
    )
    .await;
    c.until("100 running", "/bench/plain", |t| {
        t.len() == 100 && t.iter().all(running)
    })
    .await;
    let plain = t0.elapsed();
    report.push(format!(
        "| deploy 100 instances (no health check), POST until all TASK_RUNNING | {:.2} s |",
        plain.as_secs_f64()
    ));
    let per_host = |tasks: &[Value]| {
        let mut m = std::collections::BTreeMap::<String, usize>::new();
        for t in tasks {
            *m.entry(t["host"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
        m
    };
    let spread = per_host(&c.tasks("/bench/plain").await);
    report.push(format!("| spread over agents | {spread:?} |"));

    let t0 = Instant::now();
    c.send(
        reqwest::Method::POST,
        "/v2/apps",
        Some(sleep_app("/bench/healthy", 100, true)),
    )
    .await;
    c.until("100 healthy", "/bench/healthy", |t| {
        t.len() == 100 && t.iter().all(healthy)
    })
    .await;
    report.push(format!(
        "| deploy 100 instances with a COMMAND health check (interval 1 s), POST until all healthy | {:.2} s |",
        t0.elapsed().as_secs_f64()
    ));

    // 2. Agent loss: node-3.
    let lost = "node-3";
    let on_lost = c
        .tasks("/bench/plain")
        .await
        .iter()
        .filter(|t| t["host"] == lost)
        .count();
    let mut victim = c.agents[2].take().expect("node-3 runs");
    let t0 = Instant::now();
    let _ = victim.kill(); // SIGKILL
    let _ = victim.wait();
    c.until("replacements", "/bench/plain", |t| {
        t.iter().filter(|t| running(t) && t["host"] != lost).count() == 100
    })
    .await;
    report.push(format!(
        "| agent lost (kill -9, agent timeout 3 s): {on_lost} tasks of /bench/plain running again elsewhere | {:.2} s |",
        t0.elapsed().as_secs_f64()
    ));
    // Bring it back on the same work dir: its stale tasks must be killed.
    c.agents[2] = Some(c.spawn_agent(3));
    let t0 = Instant::now();
    let plain_on_lost = |c: &Cluster| {
        let dir = c.dir.join("agents").join(lost);
        count_under(&dir)
    };
    loop {
        let n = plain_on_lost(c);
        if n == 0 {
            report.push(format!(
                "| agent back: its stale tasks killed | {:.2} s after restart |",
                t0.elapsed().as_secs_f64()
            ));
            break;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            report.push(format!(
                "| agent back: {n} stale processes still alive after 30 s | |"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 3. RSS with 1 000 tasks.
    let pid = c.scheduler.id();
    let before = (status_kib(pid, "VmRSS:"), status_kib(pid, "VmHWM:"));
    for app in ["/bench/plain", "/bench/healthy"] {
        c.send(reqwest::Method::DELETE, &format!("/v2/apps{app}"), None)
            .await;
    }
    let t0 = Instant::now();
    c.send(
        reqwest::Method::POST,
        "/v2/apps",
        Some(sleep_app("/bench/thousand", 1000, false)),
    )
    .await;
    c.until("1000 running", "/bench/thousand", |t| {
        t.len() == 1000 && t.iter().all(running)
    })
    .await;
    let up = t0.elapsed();
    // A few heartbeats with 1 000 running tasks before reading the counters.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = c.get("/v2/tasks").await;
    let after = (status_kib(pid, "VmRSS:"), status_kib(pid, "VmHWM:"));
    report.push(format!(
        "| deploy 1 000 instances, POST until all TASK_RUNNING | {:.2} s |",
        up.as_secs_f64()
    ));
    report.push(format!(
        "| scheduler RSS with 1 000 tasks running (before, with 200: VmRSS {:.1} MiB) | VmRSS {:.1} MiB, VmHWM {:.1} MiB |",
        before.0 as f64 / 1024.0,
        after.0 as f64 / 1024.0,
        after.1 as f64 / 1024.0
    ));
    println!("| measure | value |\n|---|---|");
    for r in report {
        println!("{r}");
    }
    Ok(())
}

/// Processes whose working directory is under `dir`.
fn count_under(dir: &Path) -> usize {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c.starts_with(dir)))
        .count()
}
