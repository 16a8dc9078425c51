//! Running the services: `up` (everything in one process) and each part on its own.
//!
//! Every part exposes an axum router without `/healthz` and `/metrics`; this module
//! adds those and merges the routers that share a listener. Shutdown runs in stages,
//! because the order is what keeps the "nothing lost" promise: first the nodes stop
//! their tasks (so no new lines appear) and the routers finish their access records,
//! then the shippers send what they have read, then the HTTP servers stop and the
//! indexer commits.

use crate::config::{self, AgentSettings, Config, PartSettings, UpSettings, WebSettings};
use crate::tokens;
use anyhow::{bail, Context};
use axum::routing::get;
use axum::Router;
use protocol::auth::{AuthError, Keyring, Role};
use protocol::http::{gate, Gate};
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A `/metrics` source: each part renders its own Prometheus text.
type MetricsFn = Arc<dyn Fn() -> String + Send + Sync>;

/// Who may read `/metrics`: the `read` role (Prometheus sends a bearer token with
/// `authorization: {credentials_file: ...}`), or anyone with `[http] open_metrics`.
/// Metrics name apps and hosts, which is why they are not open by default.
#[derive(Clone)]
struct Ops {
    keyring: Arc<Keyring>,
    open_metrics: bool,
}

impl Ops {
    fn new(keyring: Keyring, cfg: &Config) -> Ops {
        Ops {
            keyring: Arc::new(keyring),
            open_metrics: cfg.http.open_metrics.unwrap_or(false),
        }
    }
}

fn refuse_plain(e: AuthError) -> axum::response::Response {
    let status =
        axum::http::StatusCode::from_u16(e.status()).unwrap_or(axum::http::StatusCode::FORBIDDEN);
    axum::response::IntoResponse::into_response((status, format!("{e}\n")))
}

/// Adds `/healthz` (always open: it tells only that the process answers) and
/// `/metrics` to a merged router.
fn with_ops(router: Router, mut metrics: Vec<MetricsFn>, ops: &Ops) -> Router {
    // Refusals and shedding, counted by the shared layers of every service.
    metrics.push(Arc::new(protocol::http::metrics));
    metrics.push(Arc::new(process_metrics));
    let mut metrics_route = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                let texts: Vec<String> = metrics.iter().map(|m| m()).collect();
                let text = merge_expositions(&texts);
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    text,
                )
            }
        }),
    );
    if !ops.open_metrics {
        metrics_route = metrics_route.route_layer(axum::middleware::from_fn_with_state(
            Gate::new(ops.keyring.clone(), &[Role::Read], refuse_plain),
            gate,
        ));
    }
    router
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(metrics_route)
}

/// The `process_*` families Prometheus's client libraries export (CPU, memory, open
/// descriptors, start time; Linux, from `/proc/self`) and `sandtrail_build_info`,
/// so that dashboards made for any exporter work here too (issue 17).
fn process_metrics() -> String {
    use protocol::metrics::{Exposition, Kind};
    let mut e = Exposition::new();
    // A value /proc did not give is left out rather than written as 0.
    let mut family = |name: &str, kind: Kind, help: &str, value: Option<f64>| {
        if let Some(v) = value {
            e.single(name, help, kind, v);
        }
    };
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as f64;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    family(
        "process_cpu_seconds_total",
        Kind::Counter,
        "Total user and system CPU time spent in seconds.",
        field(11).zip(field(12)).map(|(u, s)| (u + s) / ticks),
    );
    family(
        "process_resident_memory_bytes",
        Kind::Gauge,
        "Resident memory size in bytes.",
        field(21).map(|pages| pages * page),
    );
    family(
        "process_virtual_memory_bytes",
        Kind::Gauge,
        "Virtual memory size in bytes.",
        field(20),
    );
    family(
        "process_start_time_seconds",
        Kind::Gauge,
        "Start time of the process since unix epoch in seconds.",
        boot.zip(field(19)).map(|(b, t)| b + t / ticks),
    );
    family(
        "process_open_fds",
        Kind::Gauge,
        "Number of open file descriptors.",
        std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as f64),
    );
    e.family(
        "sandtrail_build_info",
        "The running build: always 1, its version as a label.",
        Kind::Gauge,
    )
    .sample(&[("version", env!("CARGO_PKG_VERSION"))], 1u8);
    e.finish()
}

/// Several parts' Prometheus texts as one exposition: each family's `# HELP` and
/// `# TYPE` once and all its samples together, in the order families first appear.
/// Under `up` every agent renders the same families; concatenated, each HELP line
/// came once per agent, which Prometheus's parser refuses (issue 17). A sample
/// belongs to the family of the last HELP or TYPE line before it in its own text.
fn merge_expositions(texts: &[String]) -> String {
    struct Family<'a> {
        help: Option<&'a str>,
        kind: Option<&'a str>,
        samples: Vec<&'a str>,
    }
    let mut order: Vec<&str> = Vec::new();
    let mut families: HashMap<&str, Family> = HashMap::new();
    for text in texts {
        let mut current: Option<&str> = None;
        for line in text.lines() {
            let (name, meta) = if let Some(rest) = line.strip_prefix("# HELP ") {
                (rest.split(' ').next().unwrap_or(""), Some(true))
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                (rest.split(' ').next().unwrap_or(""), Some(false))
            } else if line.starts_with('#') || line.trim().is_empty() {
                continue;
            } else {
                let own = line.split(['{', ' ']).next().unwrap_or("");
                (current.unwrap_or(own), None)
            };
            let family = families.entry(name).or_insert_with(|| {
                order.push(name);
                Family {
                    help: None,
                    kind: None,
                    samples: Vec::new(),
                }
            });
            match meta {
                Some(true) => {
                    family.help.get_or_insert(line);
                    current = Some(name);
                }
                Some(false) => {
                    family.kind.get_or_insert(line);
                    current = Some(name);
                }
                None => family.samples.push(line),
            }
        }
    }
    let mut out = String::new();
    for name in order {
        let f = &families[name];
        for line in f.help.iter().chain(&f.kind).chain(&f.samples) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn http_limits(cfg: &Config) -> crate::http::Limits {
    let d = crate::http::Limits::default();
    crate::http::Limits {
        header_timeout: cfg
            .http
            .header_timeout_secs
            .map_or(d.header_timeout, Duration::from_secs),
        max_connections: cfg.http.max_connections.unwrap_or(d.max_connections),
        allowed_hosts: cfg.http.allowed_hosts.clone(),
    }
}

async fn bind(addr: &str) -> anyhow::Result<(TcpListener, String)> {
    let listener = crate::http::listen(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let url = format!("http://{}", listener.local_addr()?);
    Ok((listener, url))
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    info!("shutdown requested");
}

/// Awaits a stage's tasks, logging (not propagating) their failures so the later
/// stages still run.
async fn join_all<T>(stage: &str, handles: Vec<JoinHandle<anyhow::Result<T>>>) {
    for h in handles {
        match h.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(stage, error = %format!("{e:#}"), "part stopped with an error"),
            Err(e) => warn!(stage, error = %e, "part panicked"),
        }
    }
}

fn spawn_part<F>(fut: F) -> JoinHandle<anyhow::Result<()>>
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    tokio::spawn(fut)
}

/// Makes the data dir searchable but not listable by others (0711): tasks, which run
/// as other users, must pass through it to their sandboxes, and must see nothing
/// else in it. What lies inside is the binary's alone (its umask is 077; the token is
/// 0600). A world-writable data dir (`/tmp`) is left as it is.
fn traversable_data_dir(dir: &Path) -> anyhow::Result<()> {
    scheduler::node::task_user::make_traversable(dir)
        .with_context(|| format!("cannot set the mode of data dir {}", dir.display()))?;
    // What an older version left readable to others (it ran with umask 022).
    lock_down(dir, &["token", "indexer", "scheduler"])?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.join("sandboxes").is_dir() {
            lock_down(&path, &["shipper", "router"])?;
        }
    }
    Ok(())
}

/// Takes the group and other permissions off the entries `names` of `dir` that are
/// ours (not recursively: a directory made owner-only closes all below it). Only
/// names the binary writes are touched, whatever else a data dir holds.
fn lock_down(dir: &Path, names: &[&str]) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    for name in names {
        let path = dir.join(name);
        let Ok(m) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if m.file_type().is_symlink() || m.uid() != euid || m.mode() & 0o077 == 0 {
            continue;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m.mode() & 0o700))
            .with_context(|| format!("cannot make {} owner-only", path.display()))?;
        info!(path = %path.display(), "made owner-only: tasks run as other users");
    }
    Ok(())
}

/// The admin token and every role token of `dir`: what a server started on a data
/// dir accepts. Without a configured token the admin one is `<dir>/token`, made on
/// first start (closed by default: there is no open mode in the binary).
fn server_keyring(dir: &Path, token: Option<String>) -> anyhow::Result<(String, Keyring)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let admin = match token.filter(|t| !t.trim().is_empty()) {
        Some(t) => t,
        None => tokens::ensure(dir, Role::Admin)?,
    };
    let mut keyring = tokens::load(dir)?;
    keyring.add(&admin, Role::Admin);
    Ok((admin, keyring))
}

pub(crate) fn indexer_config(
    dir: PathBuf,
    cfg: &Config,
    keyring: &Keyring,
) -> indexer::IndexerConfig {
    let mut c = indexer::IndexerConfig {
        data_dir: dir,
        tokens: keyring.clone(),
        ..Default::default()
    };
    if let Some(n) = cfg.indexer.max_concurrent_ingest {
        c.max_concurrent_ingest = n;
    }
    if let Some(n) = cfg.indexer.max_concurrent_searches {
        c.max_concurrent_searches = n;
    }
    if let Some(n) = cfg.indexer.max_tail_streams {
        c.max_tail_streams = n;
    }
    if let Some(mb) = cfg.indexer.max_body_mb {
        c.max_body_bytes = mb << 20;
    }
    if let Some(mb) = cfg.indexer.writer_memory_mb {
        c.writer_memory_bytes = mb << 20;
    }
    if let Some(ms) = cfg.indexer.search_timeout_ms {
        c.search_timeout = std::time::Duration::from_millis(ms.max(1));
    }
    // Range-checked when the config was parsed.
    if let Some(ms) = cfg.indexer.commit_interval_ms {
        c.commit_interval = std::time::Duration::from_millis(ms);
    }
    // Checked when the config was parsed.
    c.retention = cfg
        .indexer
        .retention
        .as_deref()
        .and_then(|r| indexer::parse_retention(r).ok());
    c
}

fn scheduler_config(
    dir: PathBuf,
    cfg: &Config,
    keyring: &Keyring,
) -> anyhow::Result<scheduler::SchedulerConfig> {
    let mut c = scheduler::SchedulerConfig {
        data_dir: dir,
        tokens: keyring.clone(),
        ..Default::default()
    };
    if let Some(s) = cfg.scheduler.agent_timeout_secs {
        c.agent_timeout = Duration::from_secs(s);
    }
    if let Some(d) = &cfg.scheduler.dns_domain {
        c.dns.domain = scheduler::dns::names::domain(d).with_context(|| {
            format!("[scheduler] dns_domain {d:?} is not a domain: expected labels of letters, digits and '-', like mesos or cluster.example")
        })?;
    }
    if let Some(t) = cfg.scheduler.dns_ttl_secs {
        c.dns.ttl = t;
    }
    Ok(c)
}

/// Serves the scheduler's Mesos-DNS on `addr` (UDP and TCP) until `cancel`, printing
/// `dns: ADDR` (what scripts and tests read).
async fn serve_dns(
    sched: &scheduler::Scheduler,
    addr: &str,
    cancel: CancellationToken,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let (udp, tcp, bound) = bind_dns(addr).await?;
    let h = sched.serve_dns(udp, tcp, cancel);
    info!(addr = %bound, "dns listening");
    println!("dns: {bound}");
    Ok(tokio::spawn(async move { Ok(h.await?) }))
}

/// Binds UDP and TCP for DNS on `addr` (`host:port`; port 0 picks one for both).
async fn bind_dns(
    addr: &str,
) -> anyhow::Result<(
    tokio::net::UdpSocket,
    tokio::net::TcpListener,
    std::net::SocketAddr,
)> {
    let sock: std::net::SocketAddr = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("dns listen address {addr:?}: expected host:port"))?
        .next()
        .with_context(|| format!("dns listen address {addr:?} resolves to nothing"))?;
    scheduler::dns::server::bind(sock)
        .await
        .with_context(|| format!("cannot serve dns on {addr}"))
}

/// One host's worth of parts: the node running tasks, the shipper, and a router.
struct HostParts {
    node: scheduler::node::Node,
    shipper: agent::Shipper,
}

struct HostSpec {
    name: String,
    work_dir: PathBuf,
    scheduler_url: String,
    indexer_url: String,
    address: String,
    router_url: String,
    /// The router on the Docker bridge's gateway, for bridged containers.
    bridge_router_url: Option<String>,
    token: Option<String>,
    resources: std::collections::BTreeMap<String, f64>,
    port_ranges: Vec<protocol::PortRange>,
    attributes: std::collections::BTreeMap<String, String>,
    /// Shipper tuning from `[agent]` (host, work dir, indexer and token are ours).
    shipper: agent::ShipperConfig,
    /// Node tuning from `[agent]`: sandbox GC delay, memory limits, log budget.
    node: config::NodeTuning,
}

/// `[agent]`'s node tuning, with the `--docker` flag over the file's `docker`.
fn node_tuning(cfg: &Config, docker_flag: Option<&str>) -> config::NodeTuning {
    let mut t = cfg.agent.node_tuning();
    if docker_flag.is_some() {
        t.docker = config::resolve_docker(docker_flag);
    }
    t
}

fn host_parts(spec: &HostSpec) -> anyhow::Result<HostParts> {
    std::fs::create_dir_all(&spec.work_dir)
        .with_context(|| format!("cannot create {}", spec.work_dir.display()))?;
    let mut node_cfg = scheduler::node::NodeConfig::new(
        spec.name.clone(),
        spec.work_dir.clone(),
        spec.scheduler_url.clone(),
    );
    node_cfg.address = spec.address.clone();
    node_cfg.router_url = spec.router_url.clone();
    node_cfg.bridge_router_url = spec.bridge_router_url.clone();
    node_cfg.token = spec.token.clone();
    node_cfg.resources = with_host_resources(&spec.work_dir, spec.resources.clone());
    node_cfg.attributes = spec.attributes.clone();
    spec.node.apply(&mut node_cfg);
    node_cfg.port_ranges = spec.port_ranges.clone();
    let node = scheduler::node::Node::new(node_cfg)?;
    let shipper = agent::Shipper::new(agent::ShipperConfig {
        host: spec.name.clone(),
        work_dir: spec.work_dir.clone(),
        indexer_url: spec.indexer_url.clone(),
        token: spec.token.clone(),
        ..spec.shipper.clone()
    })?;
    // Node and shipper share this process: a finished sandbox is removed only once
    // this shipper has read it to the end and the indexer acknowledged it all.
    let work_dir = spec.work_dir.clone();
    node.set_shipped_check(Arc::new(move |sandbox: &Path| {
        agent::checkpoint::sandbox_shipped(&work_dir, sandbox).unwrap_or_else(|e| {
            warn!(sandbox = %sandbox.display(), error = %e, "cannot tell whether the sandbox is shipped; keeping it");
            false
        })
    }));
    // Issue 14: the shipper's back-pressure rides on the node's heartbeats to the
    // Hosts page. Read from its Prometheus text, the one view of its gauges `agent`
    // exposes; rendering it is a few atomic loads, cheap enough for each heartbeat.
    let (sh, spool_max) = (shipper.clone(), spec.shipper.spool_max_bytes);
    node.set_shipper_status(Arc::new(move || shipper_status(&sh.metrics(), spool_max)));
    Ok(HostParts { node, shipper })
}

/// The heartbeat's shipper figures from the shipper's `/metrics` text (all its series
/// carry only this host's label) and its configured spool bound.
fn shipper_status(metrics: &str, spool_max_bytes: u64) -> protocol::ShipperStatus {
    let mut st = protocol::ShipperStatus {
        spool_max_bytes,
        ..Default::default()
    };
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let v = v as u64;
        match name.strip_prefix("sandtrail_agent_").unwrap_or_default() {
            "log_bytes_on_disk" => st.log_bytes_on_disk = v,
            "log_budget_bytes" => st.log_budget_bytes_total = v,
            "log_bytes_dropped_total" => st.log_bytes_dropped = v,
            "spool_bytes" => st.spool_bytes = v,
            "reading_paused" => st.reading_paused = v > 0,
            // One series per file: the host's lag is their sum.
            "lag_bytes" => st.lag_bytes = st.lag_bytes.saturating_add(v),
            _ => {}
        }
    }
    st
}

/// Adds the `cpus`, `mem` (MiB) and `disk` (MiB free in `work_dir`) of this host that
/// `declared` does not name, as a Mesos agent detects what it is not told: without them
/// the scheduler would place any number of tasks here and `/hosts` would show nothing.
/// `sandtrail up`'s local agents share one machine and each offers all of it; splitting
/// it would leave no room for a one-cpu app on a two-core machine.
fn with_host_resources(
    work_dir: &Path,
    mut declared: std::collections::BTreeMap<String, f64>,
) -> std::collections::BTreeMap<String, f64> {
    let detected = [
        (
            "cpus",
            std::thread::available_parallelism()
                .ok()
                .map(|n| n.get() as f64),
        ),
        (
            "mem",
            std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| mem_total_mib(&m)),
        ),
        ("disk", free_disk_mib(work_dir)),
    ];
    for (key, value) in detected {
        if let Some(v) = value {
            declared.entry(key.to_string()).or_insert(v);
        }
    }
    info!(work_dir = %work_dir.display(), resources = ?declared, "agent resources");
    declared
}

/// `MemTotal` of a `/proc/meminfo` text, in whole MiB.
fn mem_total_mib(meminfo: &str) -> Option<f64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kib / 1024.0).floor())
}

/// Space an unprivileged process can still use on the file system of `dir`, in MiB.
fn free_disk_mib(dir: &Path) -> Option<f64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs only writes into `st`, a plain C struct that zeroed memory
    // initialises validly, and reads the NUL-terminated `path`.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as f64 * st.f_frsize as f64 / (1024.0 * 1024.0)).floor())
}

/// A second listener for the router, on the Docker bridge's gateway address (at the
/// loopback router's port when free), with its URL: a container on a bridge network
/// has a loopback of its own, so `127.0.0.1` is not the host's for it. Only that
/// address, not `0.0.0.0`: the router stays off the host's other networks. `None`
/// (with a warning when Docker is there) without an engine or a bridge.
async fn bridge_listener(docker: Option<&str>, port: u16) -> Option<(TcpListener, String)> {
    let engine = scheduler::node::docker::Docker::new(docker?).ok()?;
    let gateway = match engine.bridge_gateway().await {
        Ok(ip) => ip,
        Err(e) => {
            warn!(error = %e, "no router for bridged containers: they cannot call apps");
            return None;
        }
    };
    let listener = match crate::http::listen((gateway, port)).await {
        Ok(l) => l,
        Err(_) => match crate::http::listen((gateway, 0)).await {
            Ok(l) => l,
            Err(e) => {
                warn!(%gateway, error = %e, "cannot listen on the docker bridge: bridged containers cannot call apps");
                return None;
            }
        },
    };
    let url = format!("http://{}", listener.local_addr().ok()?);
    info!(url, "router listening for bridged containers");
    Some((listener, url))
}

fn router_for(spec: &HostSpec) -> anyhow::Result<scheduler::proxy::Proxy> {
    let mut cfg = scheduler::proxy::ProxyConfig::new(
        spec.name.clone(),
        spec.scheduler_url.clone(),
        spec.work_dir.join("router").join("access.log"),
    );
    cfg.token = spec.token.clone();
    Ok(scheduler::proxy::Proxy::new(cfg)?)
}

pub async fn up(settings: UpSettings, cfg: Config) -> anyhow::Result<()> {
    let log_path = settings.log_path();
    let UpSettings {
        data_dir: dir,
        listen,
        router_listen,
        dns_listen,
        agents,
        demo,
        token,
        verbose,
        docker,
    } = settings;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    traversable_data_dir(&dir)?;
    // Every role gets its token file, so each part runs with the least it needs: the
    // agents with an agent token, the UI with a read token to call the APIs.
    let (admin_token, _) = server_keyring(&dir, token)?;
    let agent_token = tokens::ensure(&dir, Role::Agent)?;
    let read_token = tokens::ensure(&dir, Role::Read)?;
    let deploy_token = tokens::ensure(&dir, Role::Deploy)?;
    let mut keyring = tokens::load(&dir)?;
    keyring.add(&admin_token, Role::Admin);
    let ops = Ops::new(keyring.clone(), &cfg);
    let limits = http_limits(&cfg);
    if agents == 0 {
        bail!("--agents 0: expected at least one agent to run tasks on");
    }

    let (listener, url) = bind(&listen).await?;
    let (router_listener, router_url) = bind(&router_listen).await?;
    let tuning = node_tuning(&cfg, docker.as_deref());
    let (bridge_listener, bridge_url) = bridge_listener(
        tuning.docker.as_deref(),
        router_listener.local_addr()?.port(),
    )
    .await
    .unzip();

    let indexer = tokio::task::spawn_blocking({
        let c = indexer_config(dir.join("indexer"), &cfg, &keyring);
        move || indexer::Indexer::open(c)
    })
    .await??;
    let sched = scheduler::Scheduler::open(scheduler_config(dir.clone(), &cfg, &keyring)?)?;
    sched.set_leader(Some(listener.local_addr()?.to_string()));

    let hosts: Vec<HostSpec> = (1..=agents)
        .map(|i| HostSpec {
            name: format!("node-{i}"),
            work_dir: dir.join(format!("node-{i}")),
            scheduler_url: url.clone(),
            indexer_url: url.clone(),
            address: protocol::defaults::AGENT_ADDRESS.into(),
            router_url: router_url.clone(),
            bridge_router_url: bridge_url.clone(),
            token: Some(agent_token.clone()),
            resources: Default::default(),
            port_ranges: Vec::new(),
            attributes: Default::default(),
            shipper: cfg.agent.shipper_config(),
            node: tuning.clone(),
        })
        .collect();
    // One router stands for all local hosts: tasks on every node get the same
    // SANDTRAIL_ROUTER, and its access records are shipped by the first node.
    let router = router_for(&hosts[0])?;
    let parts: Vec<(Arc<scheduler::node::Node>, agent::Shipper)> = hosts
        .iter()
        .map(|h| host_parts(h).map(|p| (Arc::new(p.node), p.shipper)))
        .collect::<anyhow::Result<_>>()?;

    let http_cancel = CancellationToken::new();
    let web = web::Web::new(web::WebConfig {
        indexer_url: url.clone(),
        scheduler_url: url.clone(),
    })
    .with_token(Some(read_token))
    .with_deploy_token(Some(deploy_token.clone()))
    .with_keyring(keyring.clone())
    .with_shutdown(http_cancel.clone())
    .with_saved_searches(saved_searches_path(&dir))?;
    let sign_in = format!("{url}{}", web.one_time_link(Role::Admin));
    // Every part in this process on the one exposition: indexer, scheduler, UI, and
    // each host's node and shipper (their series told apart by `host`).
    let metrics: Vec<MetricsFn> = {
        let (i, s, w) = (indexer.clone(), sched.clone(), web.clone());
        let mut m: Vec<MetricsFn> = vec![
            Arc::new(move || i.metrics()),
            Arc::new(move || s.metrics()),
            Arc::new(move || w.metrics()),
        ];
        for (node, shipper) in &parts {
            let (n, sh) = (node.clone(), shipper.clone());
            m.push(Arc::new(move || n.metrics()));
            m.push(Arc::new(move || sh.metrics()));
        }
        m
    };
    let app = with_ops(
        indexer::router_beside_ui(indexer.clone())
            .merge(scheduler::router(sched.clone()))
            .merge(web.router()),
        metrics,
        &ops,
    );

    let tasks_cancel = CancellationToken::new();
    let ship_cancel = CancellationToken::new();
    let sched_cancel = CancellationToken::new();

    let http = crate::http::serve(listener, app, http_cancel.clone(), &limits)?;
    let router_metrics: Vec<MetricsFn> = {
        let r = router.clone();
        vec![Arc::new(move || r.metrics())]
    };
    let router_app = with_ops(router.axum_router(), router_metrics, &ops);
    let mut router_http = vec![crate::http::serve(
        router_listener,
        router_app.clone(),
        tasks_cancel.clone(),
        &limits,
    )?];
    if let Some(l) = bridge_listener {
        router_http.push(crate::http::serve(
            l,
            router_app,
            tasks_cancel.clone(),
            &limits,
        )?);
    }
    let sched_loop = sched.spawn(sched_cancel.clone());
    let dns = match &dns_listen {
        Some(addr) => Some(serve_dns(&sched, addr, sched_cancel.clone()).await?),
        None => None,
    };

    let mut node_handles = Vec::new();
    let mut ship_handles = Vec::new();
    for (node, shipper) in parts {
        let c = tasks_cancel.clone();
        node_handles.push(spawn_part(async move { Ok(node.run(c).await?) }));
        let c = ship_cancel.clone();
        ship_handles.push(spawn_part(async move { Ok(shipper.run(c).await?) }));
    }

    println!(
        "sandtrail is up with {agents} agents (data in {})",
        dir.display()
    );
    println!("  web UI:    {url}/");
    println!("  sign in:   {sign_in}   (opens once, then use a token from the data dir)");
    println!("  search:    {url}/?q=app:fib");
    println!("  tail:      {url}/tail/fib");
    println!("  apps:      {url}/apps");
    println!("  router:    {router_url}   (apps call apps at /<app>/...)");
    println!("  APIs:      {url}/api/v1/search  {url}/v2/apps");
    println!("  elasticsearch: {url}/es   (base URL for Elasticsearch clients and shippers)");
    println!(
        "  tokens:    {} (admin), {}.read, .deploy, .agent",
        tokens::path(&dir, Role::Admin).display(),
        tokens::path(&dir, Role::Admin).display()
    );
    println!(
        "  logs:      {}{}",
        log_path.display(),
        if verbose {
            "   (and here)"
        } else {
            "   (warnings also here; --verbose for all)"
        }
    );

    if demo {
        let (url, token) = (url.clone(), deploy_token);
        tokio::spawn(async move {
            match crate::demo::deploy_demo(&url, &token, agents as usize).await {
                Ok(()) => println!("  demo app fib deployed: curl {router_url}/fib/15"),
                Err(e) => warn!(error = %format!("{e:#}"), "demo app could not be deployed"),
            }
        });
    }

    shutdown_signal().await;
    tasks_cancel.cancel();
    join_all("nodes", node_handles).await;
    join_all("router", router_http).await;
    router.shutdown().await;
    ship_cancel.cancel();
    join_all("shippers", ship_handles).await;
    sched_cancel.cancel();
    let _ = sched_loop.await;
    join_all("dns", dns.into_iter().collect()).await;
    http_cancel.cancel();
    // Before awaiting the server: open tail streams only end when the indexer shuts
    // down, and the server's graceful stop waits for them. The shippers are done, so
    // no ingest of ours is in flight.
    indexer.shutdown().await;
    join_all("http", vec![http]).await;
    info!("stopped");
    Ok(())
}

pub async fn scheduler(settings: config::SchedulerSettings, cfg: Config) -> anyhow::Result<()> {
    let config::SchedulerSettings {
        part:
            PartSettings {
                data_dir: dir,
                listen,
                token,
            },
        dns_listen,
        zk,
        zk_session_timeout,
        advertise,
    } = settings;
    let configured = token.is_some();
    let (admin, keyring) = server_keyring(&dir, token)?;
    if !configured {
        info!(path = %tokens::path(&dir, Role::Admin).display(), "no token configured: using the data dir's admin token");
    }
    if let Some(zk) = zk {
        let ha = HaSettings {
            zk,
            session_timeout: zk_session_timeout,
            advertise,
            token: admin,
        };
        return scheduler_ha(dir, listen, dns_listen, ha, keyring, cfg).await;
    }
    let sched = scheduler::Scheduler::open(scheduler_config(dir, &cfg, &keyring)?)?;
    let (listener, url) = bind(&listen).await?;
    sched.set_leader(Some(listener.local_addr()?.to_string()));
    let s = sched.clone();
    let app = with_ops(
        scheduler::router(sched.clone()),
        vec![Arc::new(move || s.metrics())],
        &Ops::new(keyring, &cfg),
    );
    let cancel = CancellationToken::new();
    let http = crate::http::serve(listener, app, cancel.clone(), &http_limits(&cfg))?;
    let sched_loop = sched.spawn(cancel.clone());
    let dns = match &dns_listen {
        Some(addr) => Some(serve_dns(&sched, addr, cancel.clone()).await?),
        None => None,
    };
    info!(url = %url, "scheduler listening");
    println!("scheduler: {url}");
    shutdown_signal().await;
    cancel.cancel();
    join_all("http", vec![http]).await;
    join_all("dns", dns.into_iter().collect()).await;
    let _ = sched_loop.await;
    Ok(())
}

/// `--zk` and its companions.
struct HaSettings {
    zk: String,
    session_timeout: Duration,
    advertise: Option<String>,
    /// The cluster token, which a follower sends to fetch the leader's DNS zone.
    token: String,
}

/// What a scheduler that lost its leadership exits with, for its supervisor to restart
/// it (Marathon does the same, marathon#1553).
pub const EXIT_LOST_LEADERSHIP: i32 = 75;

/// `sandtrail scheduler --zk`: serve at once (followers forward to the leader), join
/// the election, and once elected load the state from ZooKeeper and act. Losing the
/// leadership (or abdicating) ends the process with [`EXIT_LOST_LEADERSHIP`].
async fn scheduler_ha(
    dir: PathBuf,
    listen: String,
    dns_listen: Option<String>,
    settings: HaSettings,
    keyring: Keyring,
    cfg: Config,
) -> anyhow::Result<()> {
    let zk_url: scheduler::ha::ZkUrl = settings.zk.parse()?;
    let (listener, url) = bind(&listen).await?;
    let me = match settings.advertise {
        Some(a) => a,
        None => listener.local_addr()?.to_string(),
    };
    let ha = scheduler::ha::Ha::connect(zk_url, me.clone(), settings.session_timeout).await?;
    info!(me = %me, session_timeout_ms = ha.session_timeout().as_millis() as u64, "joined zookeeper");
    let sched_config = scheduler_config(dir, &cfg, &keyring)?;
    let app = Arc::new(std::sync::OnceLock::new());
    let elected: Arc<std::sync::OnceLock<scheduler::Scheduler>> = Arc::default();
    let dns_counters = Arc::new(scheduler::dns::DnsCounters::default());
    let e = elected.clone();
    let counters = dns_counters.clone();
    let dns_on = dns_listen.is_some();
    let front = with_ops(
        scheduler::ha::front(ha.clone(), keyring.clone(), app.clone()),
        vec![Arc::new(move || match e.get() {
            // The leader's metrics include the DNS counters (the same ones).
            Some(s) => s.metrics(),
            None if dns_on => counters.metrics(),
            None => String::new(),
        })],
        &Ops::new(keyring.clone(), &cfg),
    );
    let cancel = CancellationToken::new();
    let http = crate::http::serve(listener, front, cancel.clone(), &http_limits(&cfg))?;
    info!(url = %url, "scheduler listening (following the zookeeper election)");
    println!("scheduler: {url}");
    // Every scheduler serves DNS from the start: the leader's zone while following,
    // its own once elected (scheduler::dns::follow).
    let zone = tokio::sync::watch::channel(Arc::new(scheduler::dns::Zone::empty(
        sched_config.dns.clone(),
    )))
    .0;
    let following = cancel.child_token();
    let (dns, dns_ns, follower) = match &dns_listen {
        Some(addr) => {
            let (udp, tcp, bound) = bind_dns(addr).await?;
            let h = tokio::spawn(scheduler::dns::server::serve(
                udp,
                tcp,
                zone.subscribe(),
                dns_counters.clone(),
                cancel.clone(),
            ));
            info!(addr = %bound, "dns listening");
            println!("dns: {bound}");
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {}", settings.token).parse()?,
            );
            let client = reqwest::Client::builder()
                .default_headers(headers)
                .connect_timeout(Duration::from_secs(2))
                .build()?;
            let follower = tokio::spawn(scheduler::dns::follow::follow(
                client,
                ha.leader_changes(),
                me.clone(),
                Some(bound.ip()),
                zone.clone(),
                following.clone(),
            ));
            (
                Some(tokio::spawn(async move { Ok(h.await?) })),
                Some(bound.ip()),
                Some(follower),
            )
        }
        None => (None, None, None),
    };
    let lost = ha.lost();
    tokio::select! {
        r = ha.campaign() => r?,
        _ = shutdown_signal() => {
            cancel.cancel();
            join_all("http", vec![http]).await;
            join_all("dns", dns.into_iter().collect()).await;
            return Ok(());
        }
    }
    let store = scheduler::ha::ZkStore::open(ha.clone()).await?;
    let sched =
        scheduler::Scheduler::open_counting_dns(sched_config, Box::new(store), dns_counters)?;
    sched.set_leader(Some(me.clone()));
    let _ = elected.set(sched.clone());
    let _ = app.set(scheduler::router(sched.clone()));
    let sched_loop = sched.spawn(cancel.clone());
    if let Some(follower) = follower {
        // Stopped for good before the mirror starts: a fetch finishing late must not
        // put the old leader's zone over ours.
        following.cancel();
        let _ = follower.await;
        tokio::spawn(scheduler::dns::follow::mirror(
            sched.zone_changes(),
            dns_ns,
            zone,
            cancel.clone(),
        ));
    }
    println!("leader: {me}");
    let code = tokio::select! {
        _ = shutdown_signal() => 0,
        _ = lost.cancelled() => EXIT_LOST_LEADERSHIP,
    };
    cancel.cancel();
    // Bounded: a deposed leader must not linger on open event streams.
    let stop = async {
        join_all("http", vec![http]).await;
        join_all("dns", dns.into_iter().collect()).await;
        let _ = sched_loop.await;
    };
    if tokio::time::timeout(Duration::from_secs(5), stop)
        .await
        .is_err()
    {
        warn!("shutdown took over 5 s: exiting anyway");
    }
    if code != 0 {
        tracing::error!(
            code,
            "leadership lost: exiting for the supervisor to restart this scheduler"
        );
        std::process::exit(code);
    }
    Ok(())
}

pub async fn indexer(
    settings: PartSettings,
    shards: Option<config::ShardSettings>,
    cfg: Config,
) -> anyhow::Result<()> {
    let PartSettings {
        data_dir: dir,
        listen,
        token,
    } = settings;
    let configured = token.is_some();
    let (_, keyring) = server_keyring(&dir, token)?;
    if !configured {
        info!(path = %tokens::path(&dir, Role::Admin).display(), "no token configured: using the data dir's admin token");
    }
    let c = indexer_config(dir.join("indexer"), &cfg, &keyring);
    let idx = tokio::task::spawn_blocking(move || indexer::Indexer::open(c)).await??;
    let (listener, url) = bind(&listen).await?;
    let i = idx.clone();
    let app = with_ops(
        indexer::router(idx.clone()),
        vec![Arc::new(move || i.metrics())],
        &Ops::new(keyring, &cfg),
    );
    let cancel = CancellationToken::new();
    let bound = listener.local_addr()?;
    let http = crate::http::serve(listener, app, cancel.clone(), &http_limits(&cfg))?;
    info!(url = %url, "indexer listening");
    println!("indexer: {url}");
    // Shard mode: owners in ZooKeeper, consumers of the ingest log, fan-out.
    let lost = match shards {
        Some(s) => {
            let me = s.advertise.clone().unwrap_or_else(|| bound.to_string());
            let owners = indexer::ingest_log::start_shard_mode(
                &idx,
                indexer::owners::OwnersConfig {
                    zk: s.zk.clone(),
                    id: me.clone(),
                    url: format!("http://{me}"),
                    shards: s.log.shards,
                    owners: s.owners,
                    session_timeout: s.session_timeout,
                },
                s.log.clone(),
            )
            .await?;
            println!("shard owner: {me}");
            Some(owners.lost())
        }
        None => None,
    };
    let code = tokio::select! {
        _ = shutdown_signal() => 0,
        _ = async { match &lost { Some(l) => l.cancelled().await, None => std::future::pending().await } } => EXIT_LOST_LEADERSHIP,
    };
    cancel.cancel();
    // Ends tail streams, which the server's graceful stop would otherwise wait for;
    // an ingest still in flight fails and its shipper retries it later.
    idx.shutdown().await;
    join_all("http", vec![http]).await;
    if code != 0 {
        tracing::error!(
            code,
            "zookeeper session lost: every shard given up; exiting for the supervisor to restart this indexer"
        );
        std::process::exit(code);
    }
    Ok(())
}

/// Where the web UI keeps its saved searches under a data dir.
fn saved_searches_path(dir: &Path) -> PathBuf {
    dir.join("web").join("saved-searches.json")
}

pub async fn web(settings: WebSettings, cfg: Config) -> anyhow::Result<()> {
    let WebSettings {
        listen,
        indexer_url,
        scheduler_url,
        token,
        deploy_token,
        data_dir,
    } = settings;
    // The UI's own token signs users in, as do the token files of `data_dir` when one
    // is configured.
    let mut keyring = match &data_dir {
        Some(dir) => tokens::load(dir)?,
        None => Keyring::new(),
    };
    keyring.add(&token, Role::Read);
    let cancel = CancellationToken::new();
    let scheduler_url = scheduler::ha::resolve_schedulers(&scheduler_url).await?;
    let web = web::Web::new(web::WebConfig {
        indexer_url,
        scheduler_url,
    })
    .with_token(Some(token))
    .with_keyring(keyring.clone())
    .with_shutdown(cancel.clone());
    // Without a deploy token the Apps and Hosts buttons and saving searches answer a
    // 403 naming the missing role (the scheduler refuses the UI's own token).
    let web = match deploy_token {
        Some(t) => web.with_deploy_token(Some(t)),
        None => web,
    };
    let web = match &data_dir {
        Some(dir) => web.with_saved_searches(saved_searches_path(dir))?,
        None => {
            tracing::warn!(
                "no data dir: saved searches are kept in memory only, lost at restart \
                 (give --data-dir to keep them)"
            );
            web
        }
    };
    let w = web.clone();
    let app = with_ops(
        web.router(),
        vec![Arc::new(move || w.metrics())],
        &Ops::new(keyring, &cfg),
    );
    let (listener, url) = bind(&listen).await?;
    let http = crate::http::serve(listener, app, cancel.clone(), &http_limits(&cfg))?;
    println!("web UI: {url}/");
    shutdown_signal().await;
    cancel.cancel();
    join_all("http", vec![http]).await;
    Ok(())
}

pub async fn agent(settings: AgentSettings, cfg: Config) -> anyhow::Result<()> {
    let AgentSettings {
        data_dir: dir,
        name,
        scheduler_url,
        indexer_url,
        router_listen,
        address,
        resources: resources_arg,
        attributes,
        token,
        docker,
        ingest_log,
    } = settings;
    let resources = config::parse_resources(&resources_arg)?;
    let port_ranges = config::parse_port_resources(&resources_arg)?;
    let attributes = config::parse_attributes(&attributes)?;
    // Its own token reads its /metrics, as do the data dir's tokens.
    let mut keyring = tokens::load(&dir)?;
    keyring.add(&token, Role::Admin);
    let (router_listener, bound) = bind(&router_listen).await?;
    // Tasks reach the router on loopback; a router bound to 0.0.0.0 is still there.
    let port = router_listener.local_addr()?.port();
    let router_url = if router_listener.local_addr()?.ip().is_unspecified() {
        format!("http://127.0.0.1:{port}")
    } else {
        bound
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    traversable_data_dir(&dir)?;
    let tuning = node_tuning(&cfg, docker.as_deref());
    let (bridge_listener, bridge_url) = bridge_listener(tuning.docker.as_deref(), port)
        .await
        .unzip();
    let spec = HostSpec {
        name: name.clone(),
        work_dir: dir.join(&name),
        scheduler_url: scheduler::ha::resolve_schedulers(&scheduler_url).await?,
        indexer_url,
        address,
        router_url: router_url.clone(),
        bridge_router_url: bridge_url,
        token: Some(token),
        resources,
        port_ranges,
        attributes,
        shipper: agent::ShipperConfig {
            ingest_log,
            ..cfg.agent.shipper_config()
        },
        node: tuning,
    };
    let parts = host_parts(&spec)?;
    let router = router_for(&spec)?;
    // An agent restart must not take its tasks down: the next agent finds them again.
    parts.node.set_keep_tasks_on_shutdown(true);
    let node = Arc::new(parts.node);
    let shipper = parts.shipper;
    let metrics: Vec<MetricsFn> = {
        let (r, s, n) = (router.clone(), shipper.clone(), node.clone());
        vec![
            Arc::new(move || r.metrics()),
            Arc::new(move || s.metrics()),
            Arc::new(move || n.metrics()),
        ]
    };
    let tasks_cancel = CancellationToken::new();
    let ship_cancel = CancellationToken::new();
    let router_app = with_ops(router.axum_router(), metrics, &Ops::new(keyring, &cfg));
    let mut router_http = vec![crate::http::serve(
        router_listener,
        router_app.clone(),
        tasks_cancel.clone(),
        &http_limits(&cfg),
    )?];
    if let Some(l) = bridge_listener {
        router_http.push(crate::http::serve(
            l,
            router_app,
            tasks_cancel.clone(),
            &http_limits(&cfg),
        )?);
    }
    let c = tasks_cancel.clone();
    let node_h = spawn_part(async move { Ok(node.run(c).await?) });
    let c = ship_cancel.clone();
    let ship_h = spawn_part(async move { Ok(shipper.run(c).await?) });
    println!("agent {name}: router {router_url}");
    shutdown_signal().await;
    tasks_cancel.cancel();
    join_all("node", vec![node_h]).await;
    join_all("router", router_http).await;
    router.shutdown().await;
    ship_cancel.cancel();
    join_all("shipper", vec![ship_h]).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_families_are_there_once_each() {
        let text = process_metrics();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
            "sandtrail_build_info",
        ] {
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name} in {text}"
            );
        }
        let rss: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(rss > 1e6, "{text}");
        assert!(text.contains(&format!(
            "sandtrail_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    }

    /// Issue 17: `up`'s `/metrics` repeated every agent family's HELP and TYPE once
    /// per agent, which Prometheus's text parser refuses.
    #[test]
    fn expositions_merge_into_one_family_each() {
        let agent = |host: &str, n: u32| {
            format!(
                "# HELP sandtrail_agent_lines_read_total Lines read.\n# TYPE sandtrail_agent_lines_read_total counter\nsandtrail_agent_lines_read_total{{host=\"{host}\"}} {n}\n# HELP sandtrail_agent_lag_bytes Lag.\n# TYPE sandtrail_agent_lag_bytes gauge\nsandtrail_agent_lag_bytes{{host=\"{host}\",source=\"a\"}} 1\n"
            )
        };
        let other = "# HELP sandtrail_indexer_commits_total Commits.\n# TYPE sandtrail_indexer_commits_total counter\nsandtrail_indexer_commits_total 7\n".to_string();
        let merged = merge_expositions(&[other, agent("node-1", 3), agent("node-2", 5)]);
        assert_eq!(
            merged,
            "# HELP sandtrail_indexer_commits_total Commits.\n# TYPE sandtrail_indexer_commits_total counter\nsandtrail_indexer_commits_total 7\n\
             # HELP sandtrail_agent_lines_read_total Lines read.\n# TYPE sandtrail_agent_lines_read_total counter\n\
             sandtrail_agent_lines_read_total{host=\"node-1\"} 3\nsandtrail_agent_lines_read_total{host=\"node-2\"} 5\n\
             # HELP sandtrail_agent_lag_bytes Lag.\n# TYPE sandtrail_agent_lag_bytes gauge\n\
             sandtrail_agent_lag_bytes{host=\"node-1\",source=\"a\"} 1\nsandtrail_agent_lag_bytes{host=\"node-2\",source=\"a\"} 1\n"
        );
        // A sample with no header of its own keeps its place under its own name.
        assert_eq!(merge_expositions(&["up 1\n".into()]), "up 1\n");
    }

    /// A data dir an older version wrote (umask 022) is closed to tasks at start:
    /// the token, the indexer and scheduler state, each agent's shipper and router
    /// state; the way to the sandboxes stays searchable, and nothing else is touched.
    #[test]
    fn an_old_data_dir_is_closed_to_tasks_but_the_way_to_sandboxes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let open = |p: &Path, mode| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        for sub in [
            "indexer",
            "scheduler",
            "node-1/sandboxes",
            "node-1/shipper",
            "node-1/router",
        ] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
            open(&d.join(sub), 0o755);
        }
        std::fs::write(d.join("token"), "t\n").unwrap();
        std::fs::write(d.join("notes.txt"), "mine\n").unwrap();
        for f in ["token", "notes.txt"] {
            open(&d.join(f), 0o644);
        }
        open(d, 0o755);
        traversable_data_dir(d).unwrap();
        let mode = |p: &str| std::fs::metadata(d.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(""), 0o711);
        assert_eq!(mode("token"), 0o600);
        for closed in ["indexer", "scheduler", "node-1/shipper", "node-1/router"] {
            assert_eq!(mode(closed), 0o700, "{closed}");
        }
        assert_eq!(mode("node-1/sandboxes"), 0o755, "set by the node, not here");
        assert_eq!(mode("notes.txt"), 0o644, "not ours to touch");
    }

    #[test]
    fn host_resources_fill_only_what_was_not_declared() {
        let dir = tempfile::tempdir().unwrap();
        let declared = [("cpus".to_string(), 0.5)].into();
        let r = with_host_resources(dir.path(), declared);
        assert_eq!(r["cpus"], 0.5, "a declared value is kept");
        assert!(r["mem"] > 0.0, "{r:?}");
        assert!(r["disk"] > 0.0, "{r:?}");
        let r = with_host_resources(dir.path(), Default::default());
        assert!(r["cpus"] >= 1.0, "{r:?}");
        assert_eq!(free_disk_mib(&dir.path().join("missing")), None);
    }

    /// Issue 14: the heartbeat's shipper figures are read from the shipper's own
    /// metrics text, per-file lag summed.
    #[test]
    fn shipper_status_reads_the_shippers_gauges() {
        let text = "# HELP sandtrail_agent_spool_bytes Bytes.\n\
            # TYPE sandtrail_agent_spool_bytes gauge\n\
            sandtrail_agent_spool_bytes{host=\"n 1\"} 4096\n\
            sandtrail_agent_log_bytes_on_disk{host=\"n 1\"} 5000\n\
            sandtrail_agent_log_budget_bytes{host=\"n 1\"} 8000\n\
            sandtrail_agent_log_bytes_dropped_total{host=\"n 1\"} 700\n\
            sandtrail_agent_log_files_dropped_total{host=\"n 1\"} 1\n\
            sandtrail_agent_reading_paused{host=\"n 1\"} 1\n\
            sandtrail_agent_lag_bytes{host=\"n 1\",source=\"a b@1\"} 10\n\
            sandtrail_agent_lag_bytes{host=\"n 1\",source=\"c@2\"} 32\n\
            sandtrail_agent_lag_seconds{host=\"n 1\",source=\"c@2\"} 2.500\n";
        let st = shipper_status(text, 1 << 30);
        assert_eq!(
            st,
            protocol::ShipperStatus {
                log_bytes_on_disk: 5000,
                log_budget_bytes_total: 8000,
                log_bytes_dropped: 700,
                spool_bytes: 4096,
                spool_max_bytes: 1 << 30,
                reading_paused: true,
                lag_bytes: 42,
            }
        );
        let st = shipper_status("sandtrail_agent_reading_paused{host=\"n\"} 0\n", 0);
        assert_eq!(st, protocol::ShipperStatus::default());
    }

    /// The real shipper renders every gauge the heartbeat reads, under the names
    /// `shipper_status` expects.
    #[test]
    fn shipper_status_names_match_the_shippers_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let sh = agent::Shipper::new(agent::ShipperConfig {
            host: "n1".into(),
            work_dir: dir.path().to_path_buf(),
            ..Default::default()
        })
        .unwrap();
        let text = sh.metrics();
        for name in [
            "log_bytes_on_disk",
            "log_budget_bytes",
            "log_bytes_dropped_total",
            "spool_bytes",
            "reading_paused",
        ] {
            assert!(
                text.contains(&format!("# TYPE sandtrail_agent_{name} ")),
                "{name} in {text}"
            );
        }
    }

    #[test]
    fn mem_total_is_read_in_mib() {
        let info = "MemTotal:        8029416 kB\nMemFree:          123 kB\n";
        assert_eq!(mem_total_mib(info), Some(7841.0));
        assert_eq!(mem_total_mib("MemFree: 1 kB\n"), None);
    }
}
