//! The node: runs on every agent, launches the tasks the control plane wants here in
//! sandboxes, and reports their state back on every heartbeat.
//!
//! The node holds no durable state of its own beyond its sandboxes. Each heartbeat carries the status of
//! every task it runs (plus exits not yet acknowledged) and the answer is the full set
//! of tasks wanted on this agent; the node converges on that set by launching what is
//! missing and killing what is no longer wanted. The trade-off is up to one heartbeat
//! interval of reaction time in exchange for a protocol that heals itself after any
//! lost message or restart of the control plane.
//!
//! A task's output goes through pipes to a per-task logger process (see `logger`)
//! that writes `stdout`/`stderr` in the sandbox and rotates them by size into
//! `stdout.1`, `stdout.2`, ... within the task's log budget (the app's `disk`, else
//! [`NodeConfig::log_budget_bytes`]), which `task.json` records for the shipper;
//! neither the task nor its logger is a child the node must keep alive, so both
//! outlive a node restart, and the next node finds the task again from its
//! `task.json` and pid file.
//! On a root agent each task runs as an unprivileged user (its app's `user`, else a
//! uid of its own; see `task_user`) in a sandbox it owns, which the node enters only
//! without following the task's symlinks.
//! Each task runs in its own process group so a kill reaches everything it forked,
//! and, where the host allows it, in its own cgroup with the app's `mem` as memory
//! limit (see `cgroup`). A finished task's sandbox is marked finished and removed
//! after `gc_delay`, only once the shipper says it has read it to the end (see `gc`):
//! a sandbox kept too long costs disk, one removed too early loses log lines for good.
//! Health checks run here, beside the task (see `health`); host ports are resolved in
//! `ports`.

pub mod cgroup;
pub mod docker;
mod docker_task;
mod gc;
mod health;
pub mod logger;
pub mod ports;
pub mod task_user;

pub use gc::{DEFAULT_GC_DELAY, FINISHED_FILE};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::OpenOptions;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use protocol::{
    AgentInfo, HealthCheck, HealthResult, HeartbeatRequest, HeartbeatResponse, TaskFile, TaskMeta,
    TaskSpec, TaskStatus, TOKEN_HEADER,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::{Error, Result};
use cgroup::MemoryLimits;
use gc::{mark_finished, sweep_sandboxes};
use health::{check_status, run_check, secs, HealthTarget};
use logger::Rotation;
use protocol::metrics::{Exposition, Kind};
use task_user::{Plan, TaskUser, UidClaims};

/// Default of [`NodeConfig::log_budget_bytes`].
pub const DEFAULT_LOG_BUDGET_BYTES: u64 = 512 * 1024 * 1024;

/// Marathon state names the node reports.
pub const TASK_RUNNING: &str = "TASK_RUNNING";
pub const TASK_FINISHED: &str = "TASK_FINISHED";
pub const TASK_FAILED: &str = "TASK_FAILED";
/// A task the node killed because it was no longer wanted (or on shutdown).
pub const TASK_KILLED: &str = "TASK_KILLED";

/// Variables of the node's own environment a task inherits. Everything else (notably
/// the cluster token, `SANDTRAIL_TOKEN`, and every other `SANDTRAIL_*` setting of the
/// agent) is withheld: a task sees these, its spec's env and what [`task_env`] adds.
/// `HOME`, `USER`, `LOGNAME` and `TMPDIR` are the agent's only when the task runs as
/// the agent; a task run as another user gets its own (see [`identity_env`]).
const INHERITED_ENV: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ"];
/// Inherited only by tasks that run as the agent's own user.
const INHERITED_AS_AGENT: &[&str] = &["HOME", "USER", "LOGNAME", "TMPDIR"];
/// `PATH` for a task when the agent has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Timeout of one call to the control plane; a hung control plane must not stall the
/// loop for longer than a few heartbeats.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one long-poll of the scheduler's changes feed is held: below
/// [`CONTROL_TIMEOUT`], which bounds every control call.
const CHANGES_WAIT: Duration = Duration::from_secs(3);

/// How a node is set up; `NodeConfig::new` fills in the defaults.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Host name, e.g. "node-1": the agent's name and `host` on every record.
    pub name: String,
    /// Sandboxes live under `work_dir/sandboxes/<app>/<task>/`.
    pub work_dir: PathBuf,
    /// The scheduler's base URL, or several comma-separated (schedulers in HA): the
    /// next is tried when a connection fails.
    pub scheduler_url: String,
    /// Address tasks listen on and are reached at, e.g. "127.0.0.1".
    pub address: String,
    /// Given to tasks as `SANDTRAIL_ROUTER`.
    pub router_url: String,
    /// Given to containers on a network of their own (Docker `BRIDGE` and named
    /// networks) as `SANDTRAIL_ROUTER` instead: the router's listener on the Docker
    /// bridge's gateway, since `router_url` on loopback is the container's own
    /// loopback there. `None`: they get `router_url` (and cannot reach it).
    pub bridge_router_url: Option<String>,
    pub token: Option<String>,
    pub heartbeat_interval: Duration,
    pub resources: BTreeMap<String, f64>,
    pub attributes: BTreeMap<String, String>,
    /// Host ports offered to tasks (`--resources 'ports:[31000-32000]'`); the
    /// scheduler assigns from them. Empty: tasks get any port the kernel has free.
    pub port_ranges: Vec<protocol::PortRange>,
    /// SIGTERM → SIGKILL grace.
    pub kill_grace: Duration,
    /// Leave tasks running when the node stops (an agent restart), instead of killing
    /// them; the next node on this work dir finds them again through their pid files.
    pub keep_tasks_on_shutdown: bool,
    /// Task output through a per-task logger process that rotates `stdout`/`stderr`
    /// by size within the task's log budget; false writes the files directly,
    /// unrotated and unbounded.
    pub log_rotation: bool,
    /// The log budget of a task whose app sets no `disk`: the most its `stdout`,
    /// `stderr` and their rotations should take in the sandbox (the shipper deletes
    /// the oldest beyond it; the logger stops reading at twice it).
    pub log_budget_bytes: u64,
    /// Enforce each task's `mem` as a cgroup v2 memory limit where the host allows it
    /// (see [`crate::node::cgroup`]); false runs every task unlimited.
    pub memory_limits: bool,
    /// The cgroup task cgroups are made under, as `/proc/self/cgroup` names it (e.g.
    /// `/sandtrail.slice`); `None` uses the node's own cgroup.
    pub cgroup_parent: Option<String>,
    /// How long a finished task's sandbox is kept (Mesos's `--gc_delay`); it goes
    /// after that only once the shipper has read it to the end
    /// ([`Node::set_shipped_check`]).
    pub gc_delay: Duration,
    /// Who tasks of apps without a `user` run as when the agent is root: `None` (the
    /// default) gives each task a uid of its own from `dynamic_uids`; a user name
    /// runs them all as that user (e.g. `nobody`: a passwd entry, but tasks can then
    /// reach each other). Ignored when the agent is not root (see [`crate::node::task_user`]).
    pub task_user: Option<String>,
    /// Where the host's claims of dynamic uids live; shared by every node of a host.
    pub uid_claims_dir: PathBuf,
    /// The uids handed to tasks without a user. They must be used by nothing else on
    /// the host: every process of such a uid is killed when its sandbox is collected.
    pub dynamic_uids: std::ops::Range<u32>,
    /// The Docker engine's endpoint (`unix:///var/run/docker.sock`) for apps with a
    /// Docker container; `None` offers no Docker, and such apps go elsewhere.
    pub docker: Option<String>,
}

impl NodeConfig {
    /// A config with address 127.0.0.1, no router, no token, 1 s heartbeats and a 5 s
    /// kill grace.
    pub fn new(
        name: impl Into<String>,
        work_dir: impl Into<PathBuf>,
        scheduler_url: impl Into<String>,
    ) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            work_dir: work_dir.into(),
            scheduler_url: scheduler_url.into(),
            address: "127.0.0.1".into(),
            router_url: String::new(),
            bridge_router_url: None,
            token: None,
            heartbeat_interval: Duration::from_secs(1),
            resources: BTreeMap::new(),
            attributes: BTreeMap::new(),
            port_ranges: Vec::new(),
            kill_grace: Duration::from_secs(5),
            keep_tasks_on_shutdown: false,
            log_rotation: true,
            log_budget_bytes: DEFAULT_LOG_BUDGET_BYTES,
            memory_limits: true,
            cgroup_parent: None,
            gc_delay: DEFAULT_GC_DELAY,
            task_user: None,
            uid_claims_dir: PathBuf::from(crate::node::task_user::DEFAULT_CLAIMS_DIR),
            dynamic_uids: crate::node::task_user::DYNAMIC_UIDS,
            docker: None,
        }
    }
}

/// Runs the tasks the control plane places on this agent.
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: NodeConfig,
    /// `cfg.scheduler_url`, split: the schedulers (in HA, several) and the one in use.
    schedulers: protocol::endpoints::Endpoints,
    /// Absolute `work_dir/sandboxes`, so `MESOS_SANDBOX` is absolute too.
    sandboxes: PathBuf,
    client: reqwest::Client,
    state: Mutex<State>,
    /// Every per-task supervisor; shutdown awaits them all.
    tracker: TaskTracker,
    metrics: NodeMetrics,
    /// Fired on a shutdown that leaves tasks running: supervisors and health checkers
    /// stop watching without killing.
    detach: CancellationToken,
    /// `NodeConfig::keep_tasks_on_shutdown`, changeable after construction.
    keep_tasks: std::sync::atomic::AtomicBool,
    /// Whether tasks get memory limits, decided once at start.
    memory: MemoryLimits,
    /// "Has the shipper read this sandbox to the end?"; unset, sandboxes are
    /// collected on the delay alone.
    shipped: std::sync::OnceLock<ShippedCheck>,
    /// The shipper's back-pressure figures, sent with every heartbeat; unset, the
    /// heartbeat carries none.
    shipper_status: std::sync::OnceLock<ShipperStatusFn>,
    /// The node's effective uid: 0 switches tasks to unprivileged users.
    agent_uid: u32,
    claims: UidClaims,
    /// The Docker engine, when configured; offered to the scheduler only once it
    /// answered (`docker_ok`).
    docker: Option<Arc<docker::Docker>>,
    docker_ok: std::sync::atomic::AtomicBool,
    /// Image pulls by task id, run in the background (see `Inner::image_ready`):
    /// `None` while running, then the outcome until the launch takes it.
    pulls: Mutex<HashMap<String, Option<std::result::Result<(), String>>>>,
}

#[derive(Default)]
struct State {
    running: HashMap<String, Running>,
    /// Exits not yet acknowledged by a successful heartbeat, with a sequence number so
    /// an exit that lands while a heartbeat is in flight is not acknowledged by it.
    pending: Vec<(u64, TaskStatus)>,
    next_seq: u64,
    /// Task ids that have run (or failed to launch) here. Task ids are unique per
    /// launch, so one is never started twice, even if a heartbeat answer computed
    /// before the scheduler saw the exit still lists it.
    done: HashSet<String>,
}

/// A launch's sandbox, ready for the task (see `Inner::prepare_launch`).
struct Prepared {
    dir: PathBuf,
    ports: Vec<u16>,
    user: Option<TaskUser>,
    stdout: std::os::fd::OwnedFd,
    stderr: std::os::fd::OwnedFd,
}

struct Running {
    app: String,
    instance: u32,
    pid: u32,
    ports: Vec<u16>,
    kill: CancellationToken,
    /// One result per health check of the spec, updated by its checker.
    health: Vec<HealthResult>,
    /// Wall-clock launch time, reported so the scheduler's `startedAt` survives its
    /// own restart and ours (it is kept in the pid file).
    started_at: chrono::DateTime<chrono::Utc>,
    /// The Docker container's id, for a Docker task (`pid` is then its main
    /// process's, for information only).
    container: Option<String>,
}

#[derive(Default)]
struct NodeMetrics {
    launched: AtomicU64,
    launch_failures: AtomicU64,
    finished: AtomicU64,
    failed: AtomicU64,
    killed: AtomicU64,
    heartbeats: AtomicU64,
    heartbeat_failures: AtomicU64,
    registrations: AtomicU64,
    oom_kills: AtomicU64,
    sandboxes_collected: AtomicU64,
    /// Finished sandboxes past their delay, kept because not fully shipped yet.
    sandboxes_unshipped: AtomicU64,
}

impl Node {
    /// Creates `work_dir/sandboxes`, both searchable but not listable by others so
    /// that tasks reach their own sandbox and see no other; launches nothing until
    /// `run`.
    pub fn new(cfg: NodeConfig) -> Result<Node> {
        let sandboxes = std::path::absolute(cfg.work_dir.join("sandboxes"))
            .map_err(|e| Error::io(&cfg.work_dir, e))?;
        std::fs::create_dir_all(&sandboxes).map_err(|e| Error::io(&sandboxes, e))?;
        for dir in [&cfg.work_dir, &sandboxes] {
            task_user::make_traversable(dir).map_err(|e| Error::io(dir, e))?;
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let agent_uid = unsafe { libc::geteuid() };
        if agent_uid == 0 {
            match &cfg.task_user {
                Some(u) => {
                    info!(node = %cfg.name, default_user = %u, "tasks run as their app's user, else as the default user")
                }
                None => match task_user::unmapped_reason(&cfg.dynamic_uids) {
                    None => {
                        info!(node = %cfg.name, uids = ?cfg.dynamic_uids, "tasks run as their app's user, else as a uid of their own")
                    }
                    Some(why) => {
                        warn!(node = %cfg.name, reason = %why, "tasks without a user cannot start here: set [agent] task_user (e.g. nobody)")
                    }
                },
            }
        } else {
            warn!(node = %cfg.name, uid = agent_uid, "the agent is not root: tasks run as its own user and can read what it can; run it as root to isolate them");
        }
        let claims = UidClaims::new(&cfg.uid_claims_dir, cfg.dynamic_uids.clone());
        let client = reqwest::Client::builder()
            .timeout(CONTROL_TIMEOUT)
            .build()?;
        let keep_tasks = std::sync::atomic::AtomicBool::new(cfg.keep_tasks_on_shutdown);
        let memory = detect_memory_limits(&cfg);
        let docker = cfg
            .docker
            .as_deref()
            .map(docker::Docker::new)
            .transpose()?
            .map(Arc::new);
        Ok(Node {
            inner: Arc::new(Inner {
                schedulers: protocol::endpoints::Endpoints::parse(&cfg.scheduler_url),
                cfg,
                sandboxes,
                client,
                state: Mutex::new(State::default()),
                tracker: TaskTracker::new(),
                detach: CancellationToken::new(),
                keep_tasks,
                metrics: NodeMetrics::default(),
                memory,
                shipped: std::sync::OnceLock::new(),
                shipper_status: std::sync::OnceLock::new(),
                agent_uid,
                claims,
                docker,
                docker_ok: std::sync::atomic::AtomicBool::new(false),
                pulls: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Registers, then heartbeats and reconciles until `cancel` fires; then kills every
    /// task (SIGTERM, SIGKILL after the grace) and returns once all are reaped. An
    /// unreachable control plane is retried forever; tasks keep running meanwhile.
    pub async fn run(&self, cancel: CancellationToken) -> Result<()> {
        let inner = &self.inner;
        if let Some(d) = &inner.docker {
            match d.ping().await {
                Ok(()) => {
                    inner.docker_ok.store(true, Ordering::Relaxed);
                    info!(node = %inner.cfg.name, socket = %d.socket().display(), "docker engine reachable: Docker apps run here");
                }
                Err(e) => {
                    warn!(node = %inner.cfg.name, socket = %d.socket().display(), error = %e, "docker engine not reachable: Docker apps are not offered here")
                }
            }
        }
        inner.rediscover().await;
        inner.adopt_containers().await;
        inner
            .tracker
            .spawn(Arc::clone(inner).collect_sandboxes(cancel.clone()));
        let wake = Arc::new(tokio::sync::Notify::new());
        inner
            .tracker
            .spawn(Arc::clone(inner).watch_desired(wake.clone(), cancel.clone()));
        let mut registered = false;
        let mut failures: u64 = 0;
        loop {
            if !registered {
                match inner.register().await {
                    Ok(()) => {
                        registered = true;
                        info!(node = %inner.cfg.name, scheduler = %inner.cfg.scheduler_url, "registered with the scheduler");
                    }
                    Err(e) => {
                        failures += 1;
                        if failures == 1 || failures.is_multiple_of(30) {
                            warn!(node = %inner.cfg.name, error = %e, failures, "registration failed, will retry");
                        }
                    }
                }
            }
            if registered {
                match inner.heartbeat().await {
                    Ok(Some(desired)) => {
                        if failures > 0 {
                            info!(node = %inner.cfg.name, failures, "scheduler reachable again");
                        }
                        failures = 0;
                        if inner.reconcile(desired).await {
                            // Report the launches now rather than a heartbeat later:
                            // it takes an interval off every deployment and
                            // replacement. The next answer launches nothing new, so
                            // this does not spin.
                            continue;
                        }
                    }
                    Ok(None) => {
                        warn!(node = %inner.cfg.name, "scheduler does not know this agent, registering again");
                        registered = false;
                        continue;
                    }
                    Err(e) => {
                        failures += 1;
                        inner
                            .metrics
                            .heartbeat_failures
                            .fetch_add(1, Ordering::Relaxed);
                        if failures == 1 || failures.is_multiple_of(30) {
                            warn!(node = %inner.cfg.name, error = %e, failures, "heartbeat failed, tasks keep running");
                        }
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(inner.cfg.heartbeat_interval) => {}
                _ = wake.notified() => {}
            }
        }
        inner.shutdown().await;
        Ok(())
    }

    /// Whether stopping the node leaves its tasks running (an agent restart) rather
    /// than killing them; see [`NodeConfig::keep_tasks_on_shutdown`].
    pub fn set_keep_tasks_on_shutdown(&self, keep: bool) {
        self.inner.keep_tasks.store(keep, Ordering::Relaxed);
    }

    /// Prometheus text format.
    pub fn metrics(&self) -> String {
        let m = &self.inner.metrics;
        let running = self
            .inner
            .state
            .lock()
            .expect("node state lock")
            .running
            .len();
        // `host`, the one label name for a host across every family (the shipper's
        // and the router's too), escaped by the writer: a node name is configuration.
        let host = [("host", self.inner.cfg.name.as_str())];
        let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let mut e = Exposition::new();
        e.family(
            "sandtrail_node_tasks_running",
            "Tasks currently running on this node.",
            Kind::Gauge,
        )
        .sample(&host, running);
        e.family(
            "sandtrail_node_tasks_launched_total",
            "Tasks started.",
            Kind::Counter,
        )
        .sample(&host, g(&m.launched));
        e.family(
            "sandtrail_node_launch_failures_total",
            "Tasks that could not be started.",
            Kind::Counter,
        )
        .sample(&host, g(&m.launch_failures));
        e.family(
            "sandtrail_node_task_exits_total",
            "Task exits by final state.",
            Kind::Counter,
        );
        for (state, n) in [
            (TASK_FINISHED, &m.finished),
            (TASK_FAILED, &m.failed),
            (TASK_KILLED, &m.killed),
        ] {
            e.sample(&[host[0], ("state", state)], g(n));
        }
        e.family(
            "sandtrail_node_heartbeats_total",
            "Successful heartbeats.",
            Kind::Counter,
        )
        .sample(&host, g(&m.heartbeats));
        e.family(
            "sandtrail_node_heartbeat_failures_total",
            "Heartbeats that failed.",
            Kind::Counter,
        )
        .sample(&host, g(&m.heartbeat_failures));
        e.family(
            "sandtrail_node_registrations_total",
            "Successful registrations.",
            Kind::Counter,
        )
        .sample(&host, g(&m.registrations));
        self.limits_and_gc_metrics(&mut e);
        e.finish()
    }
}

impl Inner {
    /// `path` on the scheduler in use (`scheduler_url` may list several, comma-separated).
    fn url(&self, path: &str) -> (usize, String) {
        let (i, base) = self.schedulers.current();
        (i, format!("{base}{path}"))
    }

    /// A request to scheduler `i` failed: without a connection, try the next one.
    fn sent(&self, i: usize, e: &reqwest::Error) {
        if e.is_connect() || e.is_timeout() {
            self.schedulers.failed(i);
        }
    }

    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.cfg.token {
            Some(t) => req.header(TOKEN_HEADER, t),
            None => req,
        }
    }

    async fn register(&self) -> Result<()> {
        let info = AgentInfo {
            name: self.cfg.name.clone(),
            address: self.cfg.address.clone(),
            router_url: self.cfg.router_url.clone(),
            resources: self.cfg.resources.clone(),
            attributes: self.cfg.attributes.clone(),
            last_heartbeat: None,
            state: String::new(),
            containerizers: if self.docker_ok.load(Ordering::Relaxed) {
                vec![protocol::CONTAINERIZER_DOCKER.to_string()]
            } else {
                Vec::new()
            },
        };
        let (at, url) = self.url("/v1/agents/register");
        let resp = self
            .authed(self.client.post(&url))
            .json(&protocol::AgentRegistration {
                info,
                ports: self.cfg.port_ranges.clone(),
            })
            .send()
            .await
            .inspect_err(|e| self.sent(at, e))?;
        check_status(&url, resp.status())?;
        self.metrics.registrations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Long-polls the scheduler's count of changes to what it wants on this agent
    /// (`/v1/agents/{name}/changes`) and wakes the heartbeat loop when it moves, so a
    /// placed task starts now rather than at the next heartbeat (up to
    /// `heartbeat_interval` later). A scheduler without the route (404) leaves the
    /// heartbeats to their interval; other failures are retried with a back-off.
    async fn watch_desired(
        self: Arc<Self>,
        wake: Arc<tokio::sync::Notify>,
        cancel: CancellationToken,
    ) {
        #[derive(serde::Deserialize)]
        struct Answer {
            changes: u64,
        }
        let wait_ms = CHANGES_WAIT.as_millis() as u64;
        let mut seen: Option<u64> = None;
        let mut failures: u32 = 0;
        loop {
            let (at, url) = self.url(&format!("/v1/agents/{}/changes", self.cfg.name));
            let mut req = self.client.get(&url).query(&[("wait_ms", wait_ms)]);
            if let Some(n) = seen {
                req = req.query(&[("after", n)]);
            }
            let asked = Instant::now();
            let answer = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.authed(req).send() => r.inspect_err(|e| self.sent(at, e)),
            };
            let pause = match answer {
                Ok(r) if r.status().is_success() => match r.json::<Answer>().await {
                    Ok(a) => {
                        let unchanged = seen == Some(a.changes);
                        if !unchanged {
                            wake.notify_one();
                        }
                        seen = Some(a.changes);
                        failures = 0;
                        // An unchanged answer long before its wait (a scheduler
                        // stopping, a proxy in between) must not make this spin.
                        if unchanged && asked.elapsed() < CHANGES_WAIT / 2 {
                            self.cfg.heartbeat_interval.min(CHANGES_WAIT)
                        } else {
                            continue;
                        }
                    }
                    Err(e) => self.changes_failed(&mut failures, &e.to_string()),
                },
                // A scheduler without the route: launches wait for heartbeats; ask
                // again now and then (it may be upgraded, or a proxy was restarting).
                Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
                    debug!(node = %self.cfg.name, "the scheduler has no changes feed; launches wait for heartbeats");
                    CHANGES_WAIT * 10
                }
                Ok(r) => self.changes_failed(&mut failures, &format!("status {}", r.status())),
                Err(e) => self.changes_failed(&mut failures, &e.to_string()),
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Counts a failed changes poll, logs the first and every 30th, and returns the
    /// pause before the next (growing to [`CHANGES_WAIT`]); heartbeats carry on.
    fn changes_failed(&self, failures: &mut u32, error: &str) -> Duration {
        *failures = failures.saturating_add(1);
        if *failures == 1 || failures.is_multiple_of(30) {
            warn!(node = %self.cfg.name, error, failures = *failures, "changes feed of the scheduler failed; launches wait for heartbeats meanwhile");
        }
        (self.cfg.heartbeat_interval * *failures).min(CHANGES_WAIT)
    }

    /// One heartbeat: `Ok(None)` when the scheduler does not know this agent (404).
    async fn heartbeat(&self) -> Result<Option<Vec<TaskSpec>>> {
        let (tasks, upto) = {
            let st = self.state.lock().expect("node state lock");
            let mut tasks: Vec<TaskStatus> = st
                .running
                .iter()
                .map(|(id, r)| TaskStatus {
                    task: id.clone(),
                    app: r.app.clone(),
                    state: TASK_RUNNING.into(),
                    ports: r.ports.clone(),
                    exit_code: None,
                    message: None,
                    instance: Some(r.instance),
                    health: r.health.clone(),
                    started_at: Some(r.started_at),
                })
                .collect();
            tasks.extend(st.pending.iter().map(|(_, s)| s.clone()));
            (tasks, st.next_seq)
        };
        let (at, url) = self.url(&format!("/v1/agents/{}/heartbeat", self.cfg.name));
        let resp = self
            .authed(self.client.post(&url))
            .json(&HeartbeatRequest {
                tasks,
                shipper: self.shipper_status.get().map(|f| f()),
            })
            .send()
            .await
            .inspect_err(|e| self.sent(at, e))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        check_status(&url, resp.status())?;
        let answer: HeartbeatResponse = resp.json().await?;
        self.state
            .lock()
            .expect("node state lock")
            .pending
            .retain(|(seq, _)| *seq >= upto);
        self.metrics.heartbeats.fetch_add(1, Ordering::Relaxed);
        Ok(Some(answer.tasks))
    }

    /// Converges on `desired`: launches what is missing, kills what is not wanted.
    /// Returns whether it launched any (a Docker task waiting for its image's pull
    /// is not launched yet: it is tried again on the next round).
    async fn reconcile(self: &Arc<Self>, desired: Vec<TaskSpec>) -> bool {
        let wanted: HashSet<&str> = desired.iter().map(|s| s.task.as_str()).collect();
        let (to_launch, to_kill) = {
            let mut st = self.state.lock().expect("node state lock");
            let st = &mut *st;
            let to_launch: Vec<TaskSpec> = desired
                .iter()
                .filter(|s| !st.running.contains_key(&s.task) && !st.done.contains(&s.task))
                .cloned()
                .collect();
            let to_kill: Vec<(String, String, u32, CancellationToken)> = st
                .running
                .iter()
                .filter(|(id, r)| !wanted.contains(id.as_str()) && !r.kill.is_cancelled())
                .map(|(id, r)| (id.clone(), r.app.clone(), r.pid, r.kill.clone()))
                .collect();
            // Forget finished ids once the scheduler has both seen the exit and stopped
            // asking for them; that keeps `done` as small as the desired set.
            let pending = &st.pending;
            st.done.retain(|id| {
                wanted.contains(id.as_str()) || pending.iter().any(|(_, s)| &s.task == id)
            });
            (to_launch, to_kill)
        };
        // A pull for a task no longer wanted is not waited for (it runs to its end).
        self.pulls
            .lock()
            .expect("pulls lock")
            .retain(|task, _| wanted.contains(task.as_str()));
        for spec in &desired {
            self.start_checks_of_adopted(spec);
        }
        for (task, app, pid, kill) in to_kill {
            info!(app, task, pid, "killing task no longer desired");
            kill.cancel();
        }
        let mut any = false;
        for spec in to_launch {
            let launched = match &spec.docker {
                Some(d) => self.launch_docker(&spec, d).await,
                None => self.launch(&spec).await.map(|()| true),
            };
            any |= matches!(launched, Ok(true));
            if let Err(e) = launched {
                self.metrics.launch_failures.fetch_add(1, Ordering::Relaxed);
                warn!(app = %spec.app, task = %spec.task, error = %e, "task launch failed");
                if let Ok(dir) = sandbox_dir(&self.sandboxes, &spec.app, &spec.task) {
                    mark_finished(&dir).await;
                }
                let mut st = self.state.lock().expect("node state lock");
                st.done.insert(spec.task.clone());
                let seq = st.next_seq;
                st.next_seq += 1;
                st.pending.push((
                    seq,
                    TaskStatus {
                        task: spec.task.clone(),
                        app: spec.app.clone(),
                        state: TASK_FAILED.into(),
                        ports: Vec::new(),
                        exit_code: None,
                        message: Some(format!("launch failed: {e}")),
                        instance: Some(spec.instance),
                        health: Vec::new(),
                        started_at: None,
                    },
                ));
            }
        }
        any
    }

    /// What every launch, process or container, does first: host ports chosen, the
    /// sandbox made with its `task.json`, the task's user decided, and `stdout` /
    /// `stderr` opened through the task logger.
    async fn prepare_launch(self: &Arc<Self>, spec: &TaskSpec) -> Result<Prepared> {
        let dir = sandbox_dir(&self.sandboxes, &spec.app, &spec.task)?;
        let taken: HashSet<u16> = {
            let st = self.state.lock().expect("node state lock");
            st.running
                .values()
                .flat_map(|r| r.ports.iter().copied())
                .collect()
        };
        let ports = ports::resolve_host_ports(&self.cfg.address, spec, &taken, |n, t| {
            allocate_ports(&self.cfg.address, n, t)
        })?;
        let meta = TaskMeta {
            host: self.cfg.name.clone(),
            app: spec.app.clone(),
            task: spec.task.clone(),
            instance: spec.instance,
            ports: ports.clone(),
        };
        let rotation = Rotation::for_budget(log_budget(spec, self.cfg.log_budget_bytes));
        let file = TaskFile {
            meta,
            log_budget_bytes: Some(rotation.budget_bytes),
        };
        let (user, stdout, stderr) = {
            let (inner, dir, spec) = (Arc::clone(self), dir.clone(), spec.clone());
            let rotation = self.cfg.log_rotation.then_some(rotation);
            tokio::task::spawn_blocking(move || {
                // Before the user: a dynamic uid's claim names the sandbox, and a claim
                // whose sandbox does not exist is free for the taking.
                make_sandbox_dir(&dir)?;
                let user = inner.task_user(&spec, &dir)?;
                let (out, err) = prepare_sandbox(&dir, &file, rotation, user.as_ref())?;
                Ok::<_, Error>((user, out, err))
            })
            .await
            .map_err(|e| Error::io(&self.sandboxes, std::io::Error::other(e)))??
        };
        Ok(Prepared {
            dir,
            ports,
            user,
            stdout,
            stderr,
        })
    }

    async fn launch(self: &Arc<Self>, spec: &TaskSpec) -> Result<()> {
        let Prepared {
            dir,
            ports,
            user,
            stdout,
            stderr,
        } = self.prepare_launch(spec).await?;

        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(&spec.cmd)
            .current_dir(&dir)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .env_clear();
        let env = task_env(&self.cfg, spec, &ports, &dir);
        for (k, v) in full_env(user.as_ref(), &dir, spec, &env) {
            cmd.env(k, v);
        }
        let cgroup = self.task_cgroup(spec).await?;
        if let Some(cg) = &cgroup {
            let fd = cg.procs_fd();
            // SAFETY: `join_from_child` is async-signal-safe, and `cgroup` keeps the
            // descriptor open until the spawn has returned.
            unsafe { cmd.pre_exec(move || cgroup::join_from_child(fd)) };
        }
        // After the cgroup join (moving into it needs the agent's privilege) and
        // after std's chdir into the sandbox.
        if let Some(u) = user.clone() {
            // SAFETY: `become_user` and `umask` are raw syscalls on memory prepared
            // before the fork, async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    task_user::become_user(&u)?;
                    // The binary's owner-only umask is for its own files, not a task's.
                    libc::umask(0o022);
                    Ok(())
                })
            };
        }
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                let e = match (&user, e.raw_os_error()) {
                    // Where setgroups/setgid/setuid refused the ids themselves.
                    (Some(u), Some(libc::EINVAL)) => Error::TaskUser {
                        user: u.name.clone(),
                        reason: format!(
                            "uid {} or gid {} cannot be taken on this agent (not mapped in its \
                             user namespace?): expected ids the agent can switch to; set \
                             [agent] task_user or the app's user",
                            u.uid, u.gid
                        ),
                    },
                    _ => Error::io(&dir, e),
                };
                if let Some(cg) = cgroup {
                    // It may wait for the kernel to empty the cgroup: off the runtime.
                    let cg_dir = cg.dir().to_path_buf();
                    drop(cg);
                    let _ = tokio::task::spawn_blocking(move || cgroup::remove(&cg_dir)).await;
                }
                return Err(e);
            }
        };
        drop(cgroup);
        let pid = child.id().unwrap_or_default();
        // The pid file lets a restarted node find the task again; a task without one
        // is merely not re-adopted, so a failed write is only logged.
        let pid_file = dir.join(PID_FILE);
        let started_at = chrono::Utc::now();
        let body = serde_json::to_vec(&PidFile {
            pid,
            start: process_start(pid),
            started_at: Some(started_at),
        })?;
        let write = {
            let pid_file = pid_file.clone();
            tokio::task::spawn_blocking(move || write_control_file(&pid_file, &body)).await
        };
        if let Err(e) = write.unwrap_or_else(|e| Err(std::io::Error::other(e))) {
            warn!(task = %spec.task, path = %pid_file.display(), error = %e, "could not write the pid file");
        }
        let kill = CancellationToken::new();
        self.state.lock().expect("node state lock").running.insert(
            spec.task.clone(),
            Running {
                app: spec.app.clone(),
                instance: spec.instance,
                pid,
                ports: ports.clone(),
                kill: kill.clone(),
                health: vec![HealthResult::default(); spec.health_checks.len()],
                started_at,
                container: None,
            },
        );
        self.spawn_health_checks(spec, &ports, &dir, &env, user.as_ref(), &kill);
        self.metrics.launched.fetch_add(1, Ordering::Relaxed);
        let uid = user.as_ref().map_or(self.agent_uid, |u| u.uid);
        info!(app = %spec.app, task = %spec.task, pid, uid, ports = ?ports, "task started");
        let inner = Arc::clone(self);
        let (app, task) = (spec.app.clone(), spec.task.clone());
        let grace = spec
            .kill_grace_seconds
            .map_or(self.cfg.kill_grace, health::secs);
        self.tracker.spawn(async move {
            let detach = inner.detach.clone();
            let Some(status) = supervise(child, pid, kill.clone(), detach, grace).await else {
                return;
            };
            let oom = inner.task_ended(&dir, &task).await;
            inner.on_exit(app, task, status, kill.is_cancelled(), oom);
            // Stops the task's health checkers too.
            kill.cancel();
            let _ = tokio::fs::remove_file(pid_file).await;
        });
        Ok(())
    }

    /// How `spec`'s task is to be run (see [`task_user::plan`]). Blocking: looking a
    /// user up may ask a directory server.
    fn plan(&self, spec: &TaskSpec) -> Result<Plan> {
        task_user::plan(
            spec.user.as_deref(),
            self.cfg.task_user.as_deref(),
            self.agent_uid,
            &TaskUser::lookup,
        )
    }

    /// The user `spec`'s task runs as in `sandbox` (which must exist: a dynamic uid is
    /// claimed for it); `None` is the agent's own. Blocking.
    fn task_user(&self, spec: &TaskSpec, sandbox: &Path) -> Result<Option<TaskUser>> {
        Ok(match self.plan(spec)? {
            Plan::Agent => None,
            Plan::User(u) => Some(u),
            Plan::Dynamic => Some(TaskUser::dynamic(self.claims.claim(sandbox)?)),
        })
    }

    fn on_exit(
        &self,
        app: String,
        task: String,
        status: std::io::Result<ExitStatus>,
        killed: bool,
        oom: Option<String>,
    ) {
        let report = with_oom(exit_report(&app, &task, status, killed), oom);
        self.record_exit(report);
    }

    /// Counts and logs a task's end and queues its report for the next heartbeat.
    fn record_exit(&self, report: TaskStatus) {
        let (app, task) = (report.app.clone(), report.task.clone());
        let counter = match report.state.as_str() {
            TASK_FINISHED => &self.metrics.finished,
            TASK_KILLED => &self.metrics.killed,
            _ => &self.metrics.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if report.state == TASK_FAILED {
            warn!(app, task, exit_code = ?report.exit_code, message = ?report.message, "task failed");
        } else {
            info!(app, task, exit_code = ?report.exit_code, state = %report.state, "task exited");
        }
        let mut st = self.state.lock().expect("node state lock");
        st.running.remove(&task);
        st.done.insert(task);
        let seq = st.next_seq;
        st.next_seq += 1;
        st.pending.push((seq, report));
    }

    /// Runs one health check of a task every `intervalSeconds` until the task ends,
    /// keeping its result in the task's entry for the next heartbeat. Failures before
    /// the first success and within `gracePeriodSeconds` are shown but not counted, as
    /// Marathon does; killing a task past `maxConsecutiveFailures` is the scheduler's
    /// decision, so that it can replace the task at the same time.
    async fn check_health(self: Arc<Self>, target: HealthTarget, stop: CancellationToken) {
        let check = &target.check;
        let interval = secs(check.interval_seconds).max(Duration::from_millis(10));
        let timeout = secs(check.timeout_seconds).max(Duration::from_millis(10));
        loop {
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.detach.cancelled() => return,
                r = run_check(&self.client, &target, timeout) => r,
            };
            if !self.record_health(&target, outcome) {
                return;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.detach.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// Stores one check result; false once the task is gone.
    fn record_health(
        &self,
        target: &HealthTarget,
        outcome: std::result::Result<(), String>,
    ) -> bool {
        let started = target.started;
        let grace = secs(target.check.grace_period_seconds);
        let now = chrono::Utc::now();
        let mut st = self.state.lock().expect("node state lock");
        let Some(result) = st
            .running
            .get_mut(&target.task)
            .and_then(|r| r.health.get_mut(target.index))
        else {
            return false;
        };
        match outcome {
            Ok(()) => {
                if !result.alive {
                    debug!(task = %target.task, check = target.index, "health check passing");
                }
                result.alive = true;
                result.consecutive_failures = 0;
                result.last_success = Some(now);
                result.first_success.get_or_insert(now);
            }
            Err(cause) => {
                let in_grace = result.first_success.is_none() && started.elapsed() < grace;
                if !in_grace {
                    result.consecutive_failures += 1;
                    warn!(task = %target.task, check = target.index, failures = result.consecutive_failures, cause = %cause, "health check failed");
                }
                result.alive = false;
                result.last_failure = Some(now);
                result.last_failure_cause = Some(cause);
            }
        }
        true
    }

    /// Takes over the tasks an earlier node on this work dir left running (and
    /// reports those that ended meanwhile as failed), so an agent restart neither
    /// loses nor duplicates them.
    async fn rediscover(self: &Arc<Self>) {
        let root = self.sandboxes.clone();
        let Ok((alive, ended)) = tokio::task::spawn_blocking(move || scan_sandboxes(&root)).await
        else {
            return;
        };
        let mut ooms = Vec::with_capacity(ended.len());
        for meta in &ended {
            let dir = sandbox_dir(&self.sandboxes, &meta.app, &meta.task);
            ooms.push(match dir {
                Ok(dir) => self.task_ended(&dir, &meta.task).await,
                Err(_) => None,
            });
        }
        let mut st = self.state.lock().expect("node state lock");
        for (meta, oom) in ended.into_iter().zip(ooms) {
            info!(app = %meta.app, task = %meta.task, "task ended while the node was down");
            st.done.insert(meta.task.clone());
            let seq = st.next_seq;
            st.next_seq += 1;
            st.pending.push((
                seq,
                TaskStatus {
                    task: meta.task,
                    app: meta.app,
                    state: TASK_FAILED.into(),
                    ports: Vec::new(),
                    exit_code: None,
                    message: Some(oom.unwrap_or_else(|| {
                        "ended while the node was down; exit status unknown".into()
                    })),
                    instance: Some(meta.instance),
                    health: Vec::new(),
                    started_at: None,
                },
            ));
        }
        for found in alive {
            let Found { meta, pid, dir } = found;
            if st.running.contains_key(&meta.task) {
                continue;
            }
            info!(app = %meta.app, task = %meta.task, pid = pid.pid, sandbox = %dir.display(), "running task found again");
            let kill = CancellationToken::new();
            st.running.insert(
                meta.task.clone(),
                Running {
                    app: meta.app.clone(),
                    instance: meta.instance,
                    pid: pid.pid,
                    ports: meta.ports.clone(),
                    kill: kill.clone(),
                    health: Vec::new(),
                    started_at: pid.started_at.unwrap_or_else(chrono::Utc::now),
                    container: None,
                },
            );
            let inner = Arc::clone(self);
            self.tracker.spawn(async move {
                let detach = inner.detach.clone();
                let grace = inner.cfg.kill_grace;
                let Some(killed) =
                    supervise_adopted(pid.pid, pid.start, kill.clone(), detach, grace).await
                else {
                    return;
                };
                let status = if killed {
                    // SIGTERM's status, as a child killed by the node reports it.
                    Ok(ExitStatus::from_raw(15))
                } else {
                    Err(std::io::Error::other(
                        "exit status unknown: the task was adopted after a node restart",
                    ))
                };
                let oom = inner.task_ended(&dir, &meta.task).await;
                inner.on_exit(meta.app, meta.task, status, killed, oom);
                kill.cancel();
                let _ = tokio::fs::remove_file(dir.join(PID_FILE)).await;
            });
        }
    }

    /// One checker per health check of `spec`, each stopping when `kill` fires (the
    /// task ended or is being killed). Shared by fresh launches and adopted tasks.
    fn spawn_health_checks(
        self: &Arc<Self>,
        spec: &TaskSpec,
        ports: &[u16],
        dir: &Path,
        env: &[(String, String)],
        user: Option<&TaskUser>,
        kill: &CancellationToken,
    ) {
        let env = full_env(user, dir, spec, env);
        self.spawn_checkers(spec, ports, dir, env, user.cloned(), None, kill);
    }

    /// The checkers of a process or container task (`container` set: COMMAND
    /// checks run inside it), the environment computed once for all of them.
    #[allow(clippy::too_many_arguments)]
    fn spawn_checkers(
        self: &Arc<Self>,
        spec: &TaskSpec,
        ports: &[u16],
        dir: &Path,
        env: Vec<(String, String)>,
        user: Option<TaskUser>,
        container: Option<(Arc<docker::Docker>, String)>,
        kill: &CancellationToken,
    ) {
        for (index, check) in spec.health_checks.iter().enumerate() {
            let target = HealthTarget {
                task: spec.task.clone(),
                started: std::time::Instant::now(),
                index,
                check: check.clone(),
                address: self.cfg.address.clone(),
                ports: ports.to_vec(),
                sandbox: dir.to_path_buf(),
                env: env.clone(),
                user: user.clone(),
                container: container.clone(),
            };
            let inner = Arc::clone(self);
            let stop = kill.clone();
            self.tracker
                .spawn(async move { inner.check_health(target, stop).await });
        }
    }

    /// Starts the health checkers of a task found again after a node restart, once
    /// its spec (and so its checks) is known.
    fn start_checks_of_adopted(self: &Arc<Self>, spec: &TaskSpec) {
        if spec.health_checks.is_empty() {
            return;
        }
        let (ports, kill, container) = {
            let mut st = self.state.lock().expect("node state lock");
            let Some(r) = st.running.get_mut(&spec.task) else {
                return;
            };
            if !r.health.is_empty() {
                return;
            }
            r.health = vec![HealthResult::default(); spec.health_checks.len()];
            (r.ports.clone(), r.kill.clone(), r.container.clone())
        };
        let Ok(dir) = sandbox_dir(&self.sandboxes, &spec.app, &spec.task) else {
            return;
        };
        if let Some(id) = container {
            self.spawn_container_checks(spec, &ports, &dir, &id, &kill);
            return;
        }
        // Who it runs as is looked up off the runtime (a user lookup may block).
        let (inner, spec) = (Arc::clone(self), spec.clone());
        self.tracker.spawn(async move {
            let (i, s, d) = (Arc::clone(&inner), spec.clone(), dir.clone());
            let Ok(Some(user)) = tokio::task::spawn_blocking(move || i.adopted_user(&s, &d)).await
            else {
                return;
            };
            let env = task_env(&inner.cfg, &spec, &ports, &dir);
            inner.spawn_health_checks(&spec, &ports, &dir, &env, user.as_ref(), &kill);
        });
    }

    /// The user an adopted task was launched as (`Some(None)`: the agent's own), the
    /// sandbox's owner for a dynamic uid; `None` (logged) when that cannot be told.
    /// Blocking.
    fn adopted_user(&self, spec: &TaskSpec, dir: &Path) -> Option<Option<TaskUser>> {
        use std::os::unix::fs::MetadataExt;
        match self.plan(spec) {
            Ok(Plan::Agent) => Some(None),
            Ok(Plan::User(u)) => Some(Some(u)),
            Ok(Plan::Dynamic) => match std::fs::metadata(dir) {
                Ok(m) if self.cfg.dynamic_uids.contains(&m.uid()) => {
                    Some(Some(TaskUser::dynamic(m.uid())))
                }
                _ => {
                    warn!(task = %spec.task, sandbox = %dir.display(), "cannot tell the adopted task's uid: its health checks are not run");
                    None
                }
            },
            Err(e) => {
                warn!(task = %spec.task, error = %e, "cannot tell the adopted task's user: its health checks are not run");
                None
            }
        }
    }

    async fn shutdown(&self) {
        if self.keep_tasks.load(Ordering::Relaxed) {
            let n = self.state.lock().expect("node state lock").running.len();
            info!(node = %self.cfg.name, tasks = n, "node stopping, leaving tasks running");
            self.detach.cancel();
            self.tracker.close();
            self.tracker.wait().await;
            return;
        }
        let n = {
            let st = self.state.lock().expect("node state lock");
            for r in st.running.values() {
                r.kill.cancel();
            }
            st.running.len()
        };
        info!(node = %self.cfg.name, tasks = n, "node stopping, killing tasks");
        self.tracker.close();
        self.tracker.wait().await;
        info!(node = %self.cfg.name, "node stopped");
    }
}

/// Answers "has the shipper read every log file of this sandbox to the end, and has
/// the indexer acknowledged it all?". Called off the async runtime, so it may block.
pub type ShippedCheck = Arc<dyn Fn(&Path) -> bool + Send + Sync>;

/// The current back-pressure figures of the shipper beside this node. Called on the
/// async runtime at every heartbeat, so it must be cheap and must not block (read
/// gauges, not files).
pub type ShipperStatusFn = Arc<dyn Fn() -> protocol::ShipperStatus + Send + Sync>;

impl Node {
    /// Gates sandbox GC on the shipper: a finished sandbox past its delay is removed
    /// only once `check` says it is fully shipped. Without a check (no shipper in
    /// this process), the delay alone decides. Set it before `run`; later calls are
    /// ignored.
    pub fn set_shipped_check(&self, check: ShippedCheck) {
        let _ = self.inner.shipped.set(check);
    }

    /// Reports the shipper's back-pressure in every heartbeat, so the scheduler (and
    /// its Hosts page) sees a full log budget or spool per agent. Without it the
    /// heartbeat carries no shipper figures. Set it before `run`; later calls are
    /// ignored.
    pub fn set_shipper_status(&self, status: ShipperStatusFn) {
        let _ = self.inner.shipper_status.set(status);
    }

    /// Whether this node enforces memory limits, and where or why not.
    pub fn memory_limits(&self) -> &MemoryLimits {
        &self.inner.memory
    }

    fn limits_and_gc_metrics(&self, e: &mut Exposition) {
        let m = &self.inner.metrics;
        let host = [("host", self.inner.cfg.name.as_str())];
        let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
        e.family(
            "sandtrail_node_memory_limits_enforced",
            "Whether tasks run under cgroup v2 memory limits (1) or unlimited (0, the agent log says why).",
            Kind::Gauge,
        )
        .sample(&host, u8::from(self.inner.memory.enforced()));
        e.family(
            "sandtrail_node_oom_kills_total",
            "Tasks that failed because they exceeded their memory limit.",
            Kind::Counter,
        )
        .sample(&host, g(&m.oom_kills));
        e.family(
            "sandtrail_node_sandboxes_collected_total",
            "Finished sandboxes removed after the GC delay.",
            Kind::Counter,
        )
        .sample(&host, g(&m.sandboxes_collected));
        e.family(
            "sandtrail_node_sandboxes_unshipped",
            "Finished sandboxes past the GC delay kept because the shipper has not read them to the end.",
            Kind::Gauge,
        )
        .sample(&host, g(&m.sandboxes_unshipped));
    }
}

impl Inner {
    /// The cgroup a task is to join, when limits are enforced and its app has a
    /// `mem`. A cgroup that cannot be made fails the launch: running the task
    /// unlimited on a host that promised limits would hide the problem.
    async fn task_cgroup(&self, spec: &TaskSpec) -> Result<Option<cgroup::TaskCgroup>> {
        let (Some(base), Some(limit)) =
            (self.memory.base(), spec.mem.and_then(cgroup::limit_bytes))
        else {
            return Ok(None);
        };
        let (base, task) = (base.to_path_buf(), spec.task.clone());
        let dir = base.join(&task);
        tokio::task::spawn_blocking(move || cgroup::TaskCgroup::create(&base, &task, limit))
            .await
            .map_err(|e| Error::io(&dir, std::io::Error::other(e)))?
            .map(Some)
            .map_err(|e| Error::io(&dir, e))
    }

    /// Cleans up after a task whose process has ended: removes its cgroup (killing
    /// anything of it still there) and marks its sandbox finished for GC. Returns the
    /// failure message when the OOM killer ended it.
    async fn task_ended(&self, sandbox: &Path, task: &str) -> Option<String> {
        mark_finished(sandbox).await;
        let dir = self.memory.base()?.join(task);
        if !tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            return None;
        }
        let d = dir.clone();
        let (ended, removed) = tokio::task::spawn_blocking(move || cgroup::finish(&d))
            .await
            .ok()?;
        if let Err(e) = removed {
            warn!(task, cgroup = %dir.display(), error = %e, "could not remove the task's cgroup");
        }
        if ended.oom_kills == 0 {
            return None;
        }
        self.metrics.oom_kills.fetch_add(1, Ordering::Relaxed);
        let limit = ended
            .limit
            .map(|b| format!(" of {} MiB", b.div_ceil(1 << 20)))
            .unwrap_or_default();
        Some(format!(
            "exceeded its memory limit{limit}: killed by the OOM killer ({} process(es) killed)",
            ended.oom_kills
        ))
    }

    /// Removes finished sandboxes past the GC delay that the shipper has read to the
    /// end, until `cancel` fires. Sweeps a few times per delay (at most once a
    /// minute), so a sandbox goes at most about half a delay late.
    async fn collect_sandboxes(self: Arc<Self>, cancel: CancellationToken) {
        let delay = self.cfg.gc_delay;
        let every = (delay / 2).clamp(Duration::from_millis(20), Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.detach.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let inner = Arc::clone(&self);
            let swept = tokio::task::spawn_blocking(move || {
                let shipped = inner.shipped.get().map(|c| c.as_ref());
                let swept = sweep_sandboxes(&inner.sandboxes, delay, shipped);
                // A removed sandbox frees its dynamic uid now, rather than whenever
                // a later claim happens upon the stale entry.
                for (dir, uid) in &swept.owners {
                    if inner.agent_uid == 0 && inner.cfg.dynamic_uids.contains(uid) {
                        if let Err(e) = inner.claims.release(*uid, dir) {
                            warn!(uid, sandbox = %dir.display(), error = %e, "could not release a task's uid");
                        }
                    }
                }
                swept
            })
            .await;
            let Ok(swept) = swept else { continue };
            for dir in &swept.removed {
                info!(sandbox = %dir.display(), "finished sandbox removed");
            }
            let m = &self.metrics;
            m.sandboxes_collected
                .fetch_add(swept.removed.len() as u64, Ordering::Relaxed);
            m.sandboxes_unshipped
                .store(swept.unshipped as u64, Ordering::Relaxed);
        }
    }
}

/// What the node decides about memory limits at start, logged once.
fn detect_memory_limits(cfg: &NodeConfig) -> MemoryLimits {
    let limits = if cfg.memory_limits {
        MemoryLimits::detect(cfg.cgroup_parent.as_deref())
    } else {
        MemoryLimits::Unavailable {
            reason: "turned off in the configuration".into(),
        }
    };
    match &limits {
        MemoryLimits::Enforced { base } => {
            info!(node = %cfg.name, cgroup = %base.display(), "memory limits enforced through cgroup v2")
        }
        MemoryLimits::Unavailable { reason } => {
            warn!(node = %cfg.name, reason = %reason, "memory limits not enforced: tasks run without a limit")
        }
    }
    limits
}

/// A task the OOM killer ended failed, whatever its exit status says (its shell may
/// have exited with a code after the kill); one the node killed stays killed.
fn with_oom(mut report: TaskStatus, oom: Option<String>) -> TaskStatus {
    if let Some(msg) = oom {
        if report.state != TASK_KILLED {
            report.state = TASK_FAILED.into();
            report.message = Some(msg);
        }
    }
    report
}

/// Waits for the task's process to exit; on a kill request signals its whole process
/// group with SIGTERM, then SIGKILL after `grace`. Once the leader is gone, whatever
/// it left behind in its group is killed too: a task ends as a whole.
async fn supervise(
    mut child: tokio::process::Child,
    pid: u32,
    kill: CancellationToken,
    detach: CancellationToken,
    grace: Duration,
) -> Option<std::io::Result<ExitStatus>> {
    let pgid = Pid::from_raw(pid as i32);
    let status = tokio::select! {
        s = child.wait() => s,
        // The node stops but the task stays: dropping the handle leaves it running.
        _ = detach.cancelled() => return None,
        _ = kill.cancelled() => {
            signal_group(pgid, Signal::SIGTERM);
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(s) => s,
                Err(_) => {
                    debug!(pid, "task ignored SIGTERM, sending SIGKILL");
                    signal_group(pgid, Signal::SIGKILL);
                    child.wait().await
                }
            }
        }
    };
    signal_group(pgid, Signal::SIGKILL);
    Some(status)
}

/// Like [`supervise`] for a task adopted from an earlier node: not our child, so its
/// exit is noticed by polling and its status is unknown. Returns whether it was
/// killed, `None` on detach.
async fn supervise_adopted(
    pid: u32,
    start: Option<u64>,
    kill: CancellationToken,
    detach: CancellationToken,
    grace: Duration,
) -> Option<bool> {
    const POLL: Duration = Duration::from_millis(200);
    let pgid = Pid::from_raw(pid as i32);
    loop {
        tokio::select! {
            _ = detach.cancelled() => return None,
            _ = kill.cancelled() => break,
            _ = tokio::time::sleep(POLL) => {
                if !same_process_alive(pid, start) {
                    signal_group(pgid, Signal::SIGKILL);
                    return Some(false);
                }
            }
        }
    }
    signal_group(pgid, Signal::SIGTERM);
    let end = tokio::time::Instant::now() + grace;
    while same_process_alive(pid, start) && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal_group(pgid, Signal::SIGKILL);
    Some(true)
}

/// Name of the file in a sandbox that records the task's process.
pub const PID_FILE: &str = ".sandtrail-pid";

/// What the pid file holds: the pid (also the process group) and the process's start
/// time in clock ticks since boot, so a reused pid is not mistaken for the task.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
struct PidFile {
    pid: u32,
    #[serde(default)]
    start: Option<u64>,
    /// Wall-clock launch time; absent in pid files of older nodes.
    #[serde(default)]
    started_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Field 22 of `/proc/<pid>/stat` (start time), and whether the process is a zombie.
fn proc_stat(pid: u32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let zombie = fields.first().is_some_and(|s| *s == "Z" || *s == "X");
    Some((fields.get(19)?.parse().ok()?, zombie))
}

fn process_start(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|(start, _)| start)
}

/// Whether `pid` still runs and is the process that started at `start`.
fn same_process_alive(pid: u32, start: Option<u64>) -> bool {
    match proc_stat(pid) {
        Some((s, zombie)) => !zombie && start.is_none_or(|want| want == s),
        None => false,
    }
}

/// A task an earlier node left running, found in its sandbox.
struct Found {
    meta: TaskMeta,
    pid: PidFile,
    dir: PathBuf,
}

/// Scans `sandboxes/*/*` for tasks with a pid file; returns those still running and
/// those that ended meanwhile (their pid files are removed). Blocking.
fn scan_sandboxes(root: &Path) -> (Vec<Found>, Vec<TaskMeta>) {
    let mut alive = Vec::new();
    let mut ended = Vec::new();
    let dirs = std::fs::read_dir(root).into_iter().flatten().flatten();
    for app in dirs {
        for task in std::fs::read_dir(app.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let dir = task.path();
            let Some(pid) = read_control_file(&dir.join(PID_FILE)) else {
                continue;
            };
            let Ok(pid) = serde_json::from_slice::<PidFile>(&pid) else {
                continue;
            };
            let Some(meta) = read_control_file(&dir.join("task.json")) else {
                continue;
            };
            let Ok(meta) = serde_json::from_slice::<TaskMeta>(&meta) else {
                continue;
            };
            if same_process_alive(pid.pid, pid.start) {
                alive.push(Found { meta, pid, dir });
            } else {
                let _ = std::fs::remove_file(dir.join(PID_FILE));
                ended.push(meta);
            }
        }
    }
    (alive, ended)
}

fn signal_group(pgid: Pid, sig: Signal) {
    match killpg(pgid, sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => {
            warn!(pgid = pgid.as_raw(), signal = %sig, error = %e, "signalling task group failed")
        }
    }
}

fn exit_report(
    app: &str,
    task: &str,
    status: std::io::Result<ExitStatus>,
    killed: bool,
) -> TaskStatus {
    let (state, exit_code, message) = match status {
        Ok(s) => match (s.code(), s.signal()) {
            _ if killed => (
                TASK_KILLED,
                s.code().or(s.signal().map(|sig| 128 + sig)),
                Some("killed by the node".to_string()),
            ),
            (Some(0), _) => (TASK_FINISHED, Some(0), None),
            (Some(c), _) => (TASK_FAILED, Some(c), Some(format!("exited with code {c}"))),
            (None, Some(sig)) => (
                TASK_FAILED,
                Some(128 + sig),
                Some(format!("killed by signal {sig}")),
            ),
            (None, None) => (TASK_FAILED, None, Some("exited with unknown status".into())),
        },
        Err(e) => (
            TASK_FAILED,
            None,
            Some(format!("waiting for the task failed: {e}")),
        ),
    };
    TaskStatus {
        task: task.to_string(),
        app: app.to_string(),
        state: state.to_string(),
        ports: Vec::new(),
        exit_code,
        message,
        instance: None,
        health: Vec::new(),
        started_at: None,
    }
}

/// The variables the node adds to a task's environment (after the spec's own env, so
/// these win).
fn task_env(
    cfg: &NodeConfig,
    spec: &TaskSpec,
    ports: &[u16],
    sandbox: &Path,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("HOST".to_string(), cfg.address.clone()),
        ("SANDTRAIL_APP_ID".into(), spec.app.clone()),
        ("SANDTRAIL_TASK_ID".into(), spec.task.clone()),
        ("SANDTRAIL_HOST".into(), cfg.name.clone()),
        ("SANDTRAIL_ROUTER".into(), cfg.router_url.clone()),
        (
            "MARATHON_APP_ID".into(),
            format!("/{}", spec.app.trim_start_matches('/')),
        ),
        ("MESOS_TASK_ID".into(), spec.task.clone()),
        ("MESOS_SANDBOX".into(), sandbox.display().to_string()),
    ];
    env.extend(ports::port_env(spec, ports));
    env
}

/// A task's whole environment, built from nothing (never the agent's own, which may
/// hold `SANDTRAIL_TOKEN`): [`INHERITED_ENV`], who it runs as, its spec's env, then
/// the node's variables `env` (later entries win).
fn full_env(
    user: Option<&TaskUser>,
    sandbox: &Path,
    spec: &TaskSpec,
    env: &[(String, String)],
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let inherit = |keys: &[&str], out: &mut Vec<(String, String)>| {
        for key in keys {
            if let Ok(v) = std::env::var(key) {
                out.push((key.to_string(), v));
            }
        }
    };
    inherit(INHERITED_ENV, &mut out);
    if !out.iter().any(|(k, _)| k == "PATH") {
        out.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    match user {
        None => inherit(INHERITED_AS_AGENT, &mut out),
        Some(u) => out.extend(identity_env(u, sandbox)),
    }
    out.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    out.extend(env.iter().cloned());
    out
}

/// `HOME`, `USER` and `LOGNAME` of a task run as `user`: its passwd home, else the
/// sandbox (the one directory it surely may write).
fn identity_env(user: &TaskUser, sandbox: &Path) -> Vec<(String, String)> {
    let home = user.home.as_deref().unwrap_or(sandbox);
    vec![
        ("HOME".into(), home.display().to_string()),
        ("USER".into(), user.name.clone()),
        ("LOGNAME".into(), user.name.clone()),
    ]
}

/// `root/<app>/<task>`, with `/` in the app id mapped to `_` (a leading `/` as in
/// Marathon ids dropped). Ids that could climb out of `root` are refused.
pub fn sandbox_dir(root: &Path, app: &str, task: &str) -> Result<PathBuf> {
    let bad = |what: &str, value: &str, why: &str| {
        Error::BadRequest(format!("{what} {value:?} cannot name a sandbox: {why}"))
    };
    let trimmed = app.trim_start_matches('/');
    if trimmed.is_empty() || trimmed.len() > 200 {
        return Err(bad("app id", app, "expected 1 to 200 characters"));
    }
    if trimmed.contains('\0') || trimmed.contains('\\') {
        return Err(bad("app id", app, "NUL and backslash are not allowed"));
    }
    if trimmed
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad(
            "app id",
            app,
            "expected no empty, '.' or '..' components",
        ));
    }
    if task.is_empty() || task.len() > 200 {
        return Err(bad("task id", task, "expected 1 to 200 characters"));
    }
    if task == "." || task == ".." || task.contains(['/', '\\', '\0']) {
        return Err(bad("task id", task, "expected a single path component"));
    }
    Ok(root.join(trimmed.replace('/', "_")).join(task))
}

/// Asks the kernel for `count` distinct free ports on `address` (falling back to all
/// interfaces when the address cannot be bound here) and releases them. Ports already
/// handed to running tasks are skipped, since those tasks may not have bound yet.
fn allocate_ports(address: &str, count: u16, taken: &HashSet<u16>) -> Result<Vec<u16>> {
    let mut holders = Vec::new();
    let mut ports = Vec::new();
    let mut attempts = 0;
    while ports.len() < count as usize {
        attempts += 1;
        if attempts > count as usize * 20 + 20 {
            return Err(Error::BadRequest(format!(
                "could not allocate {count} free ports on {address:?}"
            )));
        }
        let listener = std::net::TcpListener::bind((address, 0))
            .or_else(|_| std::net::TcpListener::bind(("0.0.0.0", 0)))
            .map_err(|e| Error::io(address, e))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::io(address, e))?
            .port();
        // Keep every listener open until all are chosen so the kernel cannot hand out
        // the same port twice.
        holders.push(listener);
        if !taken.contains(&port) && !ports.contains(&port) {
            ports.push(port);
        }
    }
    Ok(ports)
}

/// The log budget of a task in bytes: its app's `disk` (MiB) when set, else the
/// node's default.
fn log_budget(spec: &TaskSpec, default: u64) -> u64 {
    match spec.disk {
        Some(mib) if mib > 0.0 => (mib * 1024.0 * 1024.0) as u64,
        _ => default,
    }
}

/// Creates a sandbox directory, owner-only, and its app directory, searchable but
/// not listable by others (a task must reach its own sandbox, and learn no other
/// task's name). Blocking.
fn make_sandbox_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let app = dir.parent().unwrap_or(dir);
    // Once more if the GC sweep removed the empty app directory in between.
    std::fs::create_dir_all(app)
        .or_else(|_| std::fs::create_dir_all(app))
        .map_err(|e| Error::io(app, e))?;
    task_user::make_traversable(app).map_err(|e| Error::io(app, e))?;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// Writes a file of the node's into a sandbox (which its task may write too): a new
/// temporary file, never following a symlink the task may have put at its name, then
/// renamed over `path`, so the file is the agent's and whole. Blocking.
fn write_control_file(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{}.tmp", name.trim_start_matches('.')));
    protocol::fs::AtomicWrite::new(path)
        .tmp_path(tmp)
        .mode(0o644)
        // Rewritten at every launch and adoption; a crash loses nothing it holds.
        .sync_dir(protocol::fs::SyncDir::Skip)
        .write(body)
        .map_err(|e| e.source)
}

/// Reads a file the node wrote into a sandbox, only if it is still the node's: a
/// regular file (no symlink followed) owned by the agent's uid. A task owns its
/// sandbox and could put its own `.sandtrail-pid` there, naming any process for a
/// restarted node to adopt and kill. Blocking.
fn read_control_file(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let m = f.metadata().ok()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if !m.is_file() || m.uid() != euid {
        warn!(path = %path.display(), owner = m.uid(), "ignoring a control file the node did not write");
        return None;
    }
    let mut body = Vec::new();
    f.read_to_end(&mut body).ok()?;
    Some(body)
}

/// Writes `task.json` into the sandbox `dir` (made by [`make_sandbox_dir`]), hands the
/// sandbox to the task's `user` (if it is not the agent) and opens `stdout`/`stderr`
/// for appending, through the logger when `rotation` is set. Blocking: run off the
/// async runtime.
fn prepare_sandbox(
    dir: &Path,
    file: &TaskFile,
    rotation: Option<Rotation>,
    user: Option<&TaskUser>,
) -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    // A sandbox reused by a relaunch is not finished any more (review finding: the
    // old marker let the GC remove the sandbox of a running task).
    match std::fs::remove_file(dir.join(FINISHED_FILE)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(dir.join(FINISHED_FILE), e)),
    }
    let dst = dir.join("task.json");
    write_control_file(&dst, &serde_json::to_vec_pretty(file)?).map_err(|e| Error::io(&dst, e))?;
    if let Some(u) = user {
        // The task starts in its sandbox and its logger names files from there, so
        // both work regardless; only paths through the directories above fail.
        if let Err(e) = task_user::check_reachable(dir, u) {
            warn!(sandbox = %dir.display(), error = %e, "the task cannot reach its sandbox by path: MESOS_SANDBOX and paths above it fail for it");
        }
        std::os::unix::fs::chown(dir, Some(u.uid), Some(u.gid)).map_err(|e| Error::io(dir, e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(dir, e))?;
    }
    if let Some(rotation) = rotation {
        return crate::node::logger::spawn_as(dir, rotation, user);
    }
    let open = |name: &str| {
        let p = dir.join(name);
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&p)
            .map_err(|e| Error::io(&p, e))?;
        if let Some(u) = user {
            std::os::unix::fs::fchown(&f, Some(u.uid), Some(u.gid))
                .map_err(|e| Error::io(&p, e))?;
        }
        Ok::<_, Error>(f)
    };
    Ok((open("stdout")?.into(), open("stderr")?.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 15): a task's environment is built from nothing, so the
    /// agent's `SANDTRAIL_TOKEN` (or any `SANDTRAIL_*` setting) never reaches it; a
    /// task run as another user gets that user's `HOME`, `USER` and `LOGNAME`.
    #[test]
    fn a_task_env_holds_only_the_allowed_inherited_variables() {
        assert!(INHERITED_ENV
            .iter()
            .chain(INHERITED_AS_AGENT)
            .all(|k| !k.starts_with("SANDTRAIL")));
        let cfg = NodeConfig::new("node-1", "/w", "http://s");
        let spec = TaskSpec {
            app: "web".into(),
            task: "web.1".into(),
            env: [("GREETING".to_string(), "hi".to_string())].into(),
            ..TaskSpec::default()
        };
        let sandbox = Path::new("/w/sandboxes/web/web.1");
        let node_vars = task_env(&cfg, &spec, &[31000], sandbox);
        let user = TaskUser::dynamic(1_600_000_001);
        let env = full_env(Some(&user), sandbox, &spec, &node_vars);
        let allowed = |k: &str| {
            INHERITED_ENV.contains(&k)
                || ["HOME", "USER", "LOGNAME", "GREETING"].contains(&k)
                || node_vars.iter().any(|(n, _)| n == k)
        };
        for (k, _) in &env {
            assert!(allowed(k), "{k} must not reach a task");
        }
        let get = |k: &str| {
            env.iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("HOME"), Some("/w/sandboxes/web/web.1"));
        assert_eq!(get("USER"), Some("task-1600000001"));
        assert_eq!(get("GREETING"), Some("hi"));
        assert_eq!(get("PORT0"), Some("31000"));
        assert!(get("PATH").is_some());
        assert!(
            env.iter().all(|(k, _)| k != "TMPDIR"),
            "the agent's TMPDIR is not the task's"
        );
    }

    /// Regression (issue 15): the node wrote its files into a sandbox the task owns
    /// with plain writes, so a symlink the task left at `.sandtrail-finished` (or the
    /// pid file's name) had the agent truncate or overwrite any file, the token
    /// included, and a pid file the task wrote could name any process for a
    /// restarted node to adopt and kill.
    #[tokio::test]
    async fn node_files_in_a_sandbox_never_follow_a_symlink_and_must_be_the_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("token");
        std::fs::write(&secret, "secret\n").unwrap();
        let sandbox = dir.path().join("sb");
        std::fs::create_dir(&sandbox).unwrap();
        std::os::unix::fs::symlink(&secret, sandbox.join(FINISHED_FILE)).unwrap();
        std::os::unix::fs::symlink(&secret, sandbox.join(".sandtrail-pid.tmp")).unwrap();
        mark_finished(&sandbox).await;
        let pid = sandbox.join(PID_FILE);
        write_control_file(&pid, b"{\"pid\": 1}").unwrap();
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "secret\n");
        assert!(std::fs::symlink_metadata(sandbox.join(FINISHED_FILE))
            .unwrap()
            .is_file());
        assert_eq!(
            read_control_file(&pid).as_deref(),
            Some(&b"{\"pid\": 1}"[..])
        );

        std::fs::remove_file(&pid).unwrap();
        std::os::unix::fs::symlink(&secret, &pid).unwrap();
        assert_eq!(read_control_file(&pid), None, "a symlink is not read");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::fs::remove_file(&pid).unwrap();
            std::fs::write(&pid, b"{\"pid\": 1}").unwrap();
            std::os::unix::fs::chown(&pid, Some(65534), None).unwrap();
            assert_eq!(
                read_control_file(&pid),
                None,
                "a task's own file is not read"
            );
        }
    }

    #[test]
    fn log_budget_is_the_apps_disk_else_the_nodes_default() {
        let mut spec = TaskSpec::default();
        assert_eq!(log_budget(&spec, 7), 7, "no disk");
        spec.disk = Some(0.0);
        assert_eq!(log_budget(&spec, 7), 7, "disk 0 is unset");
        spec.disk = Some(2.5);
        assert_eq!(log_budget(&spec, 7), 5 * 512 * 1024);
    }

    #[test]
    fn sandbox_dir_maps_group_ids_and_rejects_traversal() {
        let root = Path::new("/w/sandboxes");
        assert_eq!(
            sandbox_dir(root, "fib", "fib.1").unwrap(),
            root.join("fib").join("fib.1")
        );
        assert_eq!(
            sandbox_dir(root, "/prod/fib", "t").unwrap(),
            root.join("prod_fib").join("t")
        );
        for (app, task) in [
            ("..", "t"),
            ("a/../b", "t"),
            ("a/./b", "t"),
            ("a//b", "t"),
            ("", "t"),
            ("/", "t"),
            ("fib", ".."),
            ("fib", "."),
            ("fib", "../../etc"),
            ("fib", "a/b"),
            ("fib", ""),
            ("fib", "a\0b"),
            ("a\\..", "t"),
        ] {
            let err = sandbox_dir(root, app, task).expect_err(&format!("{app:?} {task:?}"));
            assert!(err.to_string().contains("cannot name a sandbox"), "{err}");
        }
    }

    #[test]
    fn allocated_ports_are_distinct_and_skip_taken_ones() {
        let first = allocate_ports("127.0.0.1", 3, &HashSet::new()).unwrap();
        assert_eq!(first.len(), 3);
        let set: HashSet<u16> = first.iter().copied().collect();
        assert_eq!(set.len(), 3);
        let again = allocate_ports("127.0.0.1", 5, &set).unwrap();
        assert!(
            again.iter().all(|p| !set.contains(p)),
            "{again:?} vs {set:?}"
        );
        assert!(allocate_ports("127.0.0.1", 0, &set).unwrap().is_empty());
    }

    #[test]
    fn an_oom_kill_fails_the_task_unless_the_node_killed_it() {
        let oom = || Some("exceeded its memory limit of 50 MiB".to_string());
        // The shell around the task reports the kill as exit code 137.
        let r = with_oom(
            exit_report("a", "t", Ok(ExitStatus::from_raw(137 << 8)), false),
            oom(),
        );
        assert_eq!(r.state, TASK_FAILED);
        assert_eq!(r.message.as_deref(), oom().as_deref());
        let r = with_oom(
            exit_report("a", "t", Ok(ExitStatus::from_raw(0)), false),
            oom(),
        );
        assert_eq!(r.state, TASK_FAILED);
        let r = with_oom(
            exit_report("a", "t", Ok(ExitStatus::from_raw(15)), true),
            oom(),
        );
        assert_eq!(r.state, TASK_KILLED);
        let r = with_oom(
            exit_report("a", "t", Ok(ExitStatus::from_raw(0)), false),
            None,
        );
        assert_eq!(r.state, TASK_FINISHED);
    }

    #[test]
    fn exit_report_maps_codes_and_signals() {
        let ok = exit_report("a", "t", Ok(ExitStatus::from_raw(0)), false);
        assert_eq!((ok.state.as_str(), ok.exit_code), (TASK_FINISHED, Some(0)));
        let three = exit_report("a", "t", Ok(ExitStatus::from_raw(3 << 8)), false);
        assert_eq!(
            (three.state.as_str(), three.exit_code),
            (TASK_FAILED, Some(3))
        );
        let sig = exit_report("a", "t", Ok(ExitStatus::from_raw(9)), false);
        assert_eq!(
            (sig.state.as_str(), sig.exit_code),
            (TASK_FAILED, Some(137))
        );
        let killed = exit_report("a", "t", Ok(ExitStatus::from_raw(15)), true);
        assert_eq!(
            (killed.state.as_str(), killed.exit_code),
            (TASK_KILLED, Some(143))
        );
    }
}
