//! `sandtrail.toml`: one file, a section per part, every key optional.
//!
//! Precedence is command-line flag, then `SANDTRAIL_*` environment variable, then this
//! file, then the built-in default (`protocol::defaults`), so `sandtrail up` needs no
//! file at all; the functions at the end (`up`, `agent`, `client`...) apply it, once
//! per command, for servers and clients alike. Flags and
//! their variables (`SANDTRAIL_LISTEN`...) come from clap; every key of the file can also
//! be set as `SANDTRAIL_<SECTION>_<KEY>` (`SANDTRAIL_AGENT_COMPRESSION=gzip`), which is
//! what containers and systemd units want. Unknown keys are errors, and all of them are reported in one go: a config file is
//! usually edited by hand, and fixing typos one restart at a time is miserable. That is
//! why the file is first read as a plain table and checked against the known keys before
//! serde (whose `deny_unknown_fields` stops at the first one) sees it.

use crate::client::ServerArgs;
use crate::{AgentArgs, IndexerArgs, SchedulerArgs, UpArgs, WebArgs};
use anyhow::{bail, Context};
use protocol::auth::Role;
use protocol::defaults;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub data_dir: Option<PathBuf>,
    pub token: Option<String>,
    #[serde(default)]
    pub up: UpSection,
    #[serde(default)]
    pub indexer: IndexerSection,
    #[serde(default)]
    pub scheduler: SchedulerSection,
    #[serde(default)]
    pub agent: AgentSection,
    #[serde(default)]
    pub web: WebSection,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub client: ClientSection,
}

/// Where the command-line clients (`apps`, `deploy`, `search`...) find the cluster,
/// for `up` and for separate parts alike.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSection {
    /// The scheduler's base URL (in `up`, the one address of everything).
    pub server: Option<String>,
    /// The indexer's base URL when it is not at `server` (separate parts).
    pub indexer: Option<String>,
    /// The token to send; `token_file` names a file holding it instead (its first
    /// line that is not a comment), so the config can be shared without the secret.
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
}

/// What every listener of this process shares (see SECURITY.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Host names (no port) requests may be addressed to, comma-separated, or `*` for
    /// any. Default: loopback names for a loopback listener, any name otherwise.
    pub allowed_hosts: Option<String>,
    /// A client must send a request's headers within this long, and an idle
    /// keep-alive connection is closed after it.
    pub header_timeout_secs: Option<u64>,
    /// Open connections per listener; more wait in the kernel's backlog.
    pub max_connections: Option<usize>,
    /// Serve `/metrics` without a token (for a scraper on a trusted network).
    pub open_metrics: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpSection {
    pub listen: Option<String>,
    pub router_listen: Option<String>,
    pub agents: Option<u32>,
    pub demo: Option<bool>,
    /// Every part's log on stderr too, not only in `<data_dir>/sandtrail.log`.
    pub verbose: Option<bool>,
    /// Serve Mesos-DNS on this UDP+TCP address (default: no DNS listener).
    pub dns_listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexerSection {
    pub listen: Option<String>,
    /// Cap on the decompressed size of one ingest request.
    pub max_body_mb: Option<usize>,
    /// Tantivy writer memory budget.
    pub writer_memory_mb: Option<usize>,
    /// Day partitions wholly older than this (`7d`, `36h`) are dropped.
    pub retention: Option<String>,
    /// Time budget of one search (default 10000): past it the search is stopped and
    /// answered with 504 saying so.
    pub search_timeout_ms: Option<u64>,
    /// Commits at least this far apart (default 200; 1 to 10000). Longer means fewer
    /// commits and records searchable that much later; writes answered at the commit
    /// (the Elasticsearch API, plain `/api/v1/ingest`) wait up to this long, hence the
    /// cap below common client timeouts.
    pub commit_interval_ms: Option<u64>,
    /// Ingest requests in flight at once; more are answered 429 with Retry-After.
    pub max_concurrent_ingest: Option<usize>,
    /// Searches in flight at once; more are answered 429 with Retry-After.
    pub max_concurrent_searches: Option<usize>,
    /// Live-tail streams open at once; more are answered 429 with Retry-After.
    pub max_tail_streams: Option<usize>,
    /// Shard mode (issue 21): ZooKeeper URL, ingest log, shard count (default 6),
    /// owners per shard (default 2), advertised host:port, session timeout, and the
    /// stream's replicas when this indexer creates it (default 1; 3 on a cluster of
    /// three NATS servers). Whoever starts first creates the stream, an indexer or
    /// an agent, so both ends need the setting.
    pub zk: Option<String>,
    pub ingest_log: Option<String>,
    pub shards: Option<u32>,
    pub owners: Option<u32>,
    pub advertise: Option<String>,
    pub zk_session_timeout_ms: Option<u64>,
    pub ingest_log_replicas: Option<usize>,
    /// Shard mode: a byte bound on the ingest log's stream (default none). The
    /// stream already drops what is older than `retention` plus a day; past this
    /// bound it drops its oldest records too, which a new shard owner then cannot
    /// rebuild (it logs so and counts it in
    /// `sandtrail_indexer_ingest_log_trimmed_total`).
    pub ingest_log_max_mb: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSection {
    pub listen: Option<String>,
    /// Heartbeat silence after which an agent's tasks are marked lost.
    pub agent_timeout_secs: Option<u64>,
    /// Serve Mesos-DNS on this UDP+TCP address (default: no DNS listener; the
    /// Mesos-DNS HTTP API is served either way).
    pub dns_listen: Option<String>,
    /// The Mesos-DNS domain (default `mesos`: `_fib._tcp.marathon.mesos`).
    pub dns_domain: Option<String>,
    /// TTL of DNS answers, negative ones included (default 5).
    pub dns_ttl_secs: Option<u32>,
    /// `zk://h1:2181,h2:2181/path`: leader election and state in ZooKeeper.
    pub zk: Option<String>,
    /// ZooKeeper session timeout (default 10000 ms).
    pub zk_session_timeout_ms: Option<u64>,
    /// `host:port` written into the election (default: the bound listen address).
    pub advertise: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    pub name: Option<String>,
    pub scheduler: Option<String>,
    pub indexer: Option<String>,
    pub router_listen: Option<String>,
    pub address: Option<String>,
    pub resources: Option<String>,
    pub attributes: Option<String>,
    /// Shipper tuning (also used by the local agents of `sandtrail up`): the disk
    /// spool bound (0 turns the spool off)...
    pub spool_max_mb: Option<u64>,
    /// ...how long a multiline event waits for a continuation (0 turns joining off)...
    pub multiline_flush_ms: Option<u64>,
    /// ...the line cap (longer lines are cut and flagged)...
    pub max_line_kb: Option<usize>,
    /// ...and when a batch is sent: at this size or this age.
    pub batch_max_kb: Option<usize>,
    pub batch_max_wait_ms: Option<u64>,
    /// Batch compression on the wire: `auto` (default: none to an indexer on this
    /// host, zstd to any other), `zstd`, `gzip` or `none`.
    pub compression: Option<String>,
    /// How long a finished task's sandbox is kept before it is removed, once shipped
    /// (Mesos's `--gc_delay`; default an hour).
    pub gc_delay_secs: Option<u64>,
    /// Enforce apps' `mem` through cgroup v2 where the host allows it (default true).
    pub memory_limits: Option<bool>,
    /// The cgroup task cgroups are made under, e.g. `/sandtrail.slice` (default the
    /// agent's own).
    pub cgroup_parent: Option<String>,
    /// Log disk budget of a task whose app sets no `disk` (default 512): its
    /// `stdout`/`stderr` and their rotations. At least 1.
    pub log_budget_mb: Option<u64>,
    /// Who tasks of apps without a Marathon `user` run as on a root agent: unset, a
    /// uid of each task's own (isolated from every other task); a user name (e.g.
    /// `nobody`) runs them all as that user. Never root.
    pub task_user: Option<String>,
    /// The Docker engine apps with a Docker `container` run on
    /// (`unix:///var/run/docker.sock`); `none` offers no Docker. Default: the
    /// standard socket when it exists.
    pub docker: Option<String>,
    /// The durable ingest log to publish to instead of the indexer (NATS
    /// JetStream, `nats://h:4222,...`; issue 21), its shard count (default 6, fixed
    /// per cluster) and the stream's replicas when this agent creates it (default 1).
    pub ingest_log: Option<String>,
    pub shards: Option<u32>,
    pub ingest_log_replicas: Option<usize>,
}

/// The Docker endpoint a node uses: `given` (`none`, `off` or empty: no Docker),
/// else the standard socket when it exists on this host.
pub fn resolve_docker(given: Option<&str>) -> Option<String> {
    match given.map(str::trim) {
        Some("" | "none" | "off") => None,
        Some(url) => Some(url.to_string()),
        None => Path::new(scheduler::node::docker::DEFAULT_SOCKET)
            .exists()
            .then(|| format!("unix://{}", scheduler::node::docker::DEFAULT_SOCKET)),
    }
}

/// The node's settings from `[agent]`: sandbox GC, memory limits, log budget.
#[derive(Debug, Clone, Default)]
pub struct NodeTuning {
    pub gc_delay: Option<std::time::Duration>,
    pub memory_limits: Option<bool>,
    pub cgroup_parent: Option<String>,
    pub log_budget_bytes: Option<u64>,
    pub task_user: Option<String>,
    /// Resolved already (see [`resolve_docker`]): `None` offers no Docker.
    pub docker: Option<String>,
}

impl NodeTuning {
    pub fn apply(&self, c: &mut scheduler::node::NodeConfig) {
        if let Some(d) = self.gc_delay {
            c.gc_delay = d;
        }
        if let Some(m) = self.memory_limits {
            c.memory_limits = m;
        }
        if let Some(p) = &self.cgroup_parent {
            c.cgroup_parent = Some(p.clone());
        }
        if let Some(b) = self.log_budget_bytes {
            c.log_budget_bytes = b;
        }
        if let Some(u) = &self.task_user {
            c.task_user = Some(u.clone());
        }
        c.docker = self.docker.clone();
    }
}

impl AgentSection {
    pub fn node_tuning(&self) -> NodeTuning {
        NodeTuning {
            gc_delay: self.gc_delay_secs.map(std::time::Duration::from_secs),
            memory_limits: self.memory_limits,
            cgroup_parent: self.cgroup_parent.clone(),
            log_budget_bytes: self.log_budget_mb.map(|mb| mb.saturating_mul(1 << 20)),
            task_user: self.task_user.clone(),
            docker: resolve_docker(self.docker.as_deref()),
        }
    }

    /// The shipper defaults with this section's tuning applied; host, work dir,
    /// indexer and token are left for the caller.
    pub fn shipper_config(&self) -> agent::ShipperConfig {
        let mut c = agent::ShipperConfig::default();
        if let Some(mb) = self.spool_max_mb {
            c.spool_max_bytes = mb << 20;
        }
        if let Some(ms) = self.multiline_flush_ms {
            c.multiline_flush = (ms > 0).then(|| std::time::Duration::from_millis(ms));
        }
        if let Some(kb) = self.max_line_kb {
            c.max_line_bytes = kb << 10;
        }
        if let Some(kb) = self.batch_max_kb {
            c.batch_max_bytes = kb << 10;
        }
        if let Some(ms) = self.batch_max_wait_ms {
            c.batch_max_wait = std::time::Duration::from_millis(ms);
        }
        if let Some(codec) = self
            .compression
            .as_deref()
            .and_then(agent::ship::Codec::parse)
        {
            c.compression = codec;
        }
        c
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSection {
    pub listen: Option<String>,
    pub indexer: Option<String>,
    pub scheduler: Option<String>,
    /// A deploy (or admin) token for the Apps and Hosts buttons; without one they
    /// answer 403 naming the role.
    pub deploy_token: Option<String>,
}

const TOP: &[&str] = &[
    "data_dir",
    "token",
    "up",
    "indexer",
    "scheduler",
    "agent",
    "web",
    "http",
    "client",
];
const SECTIONS: &[(&str, &[&str])] = &[
    (
        "up",
        &[
            "listen",
            "router_listen",
            "agents",
            "demo",
            "verbose",
            "dns_listen",
        ],
    ),
    (
        "indexer",
        &[
            "listen",
            "max_body_mb",
            "writer_memory_mb",
            "retention",
            "search_timeout_ms",
            "commit_interval_ms",
            "max_concurrent_ingest",
            "max_concurrent_searches",
            "max_tail_streams",
            "zk",
            "ingest_log",
            "shards",
            "owners",
            "advertise",
            "zk_session_timeout_ms",
            "ingest_log_replicas",
            "ingest_log_max_mb",
        ],
    ),
    (
        "scheduler",
        &[
            "listen",
            "agent_timeout_secs",
            "dns_listen",
            "dns_domain",
            "dns_ttl_secs",
            "zk",
            "zk_session_timeout_ms",
            "advertise",
        ],
    ),
    (
        "agent",
        &[
            "name",
            "scheduler",
            "indexer",
            "router_listen",
            "address",
            "resources",
            "attributes",
            "spool_max_mb",
            "multiline_flush_ms",
            "max_line_kb",
            "batch_max_kb",
            "batch_max_wait_ms",
            "compression",
            "gc_delay_secs",
            "memory_limits",
            "cgroup_parent",
            "log_budget_mb",
            "task_user",
            "docker",
            "ingest_log",
            "shards",
            "ingest_log_replicas",
        ],
    ),
    ("web", &["listen", "indexer", "scheduler", "deploy_token"]),
    ("client", &["server", "indexer", "token", "token_file"]),
    (
        "http",
        &[
            "allowed_hosts",
            "header_timeout_secs",
            "max_connections",
            "open_metrics",
        ],
    ),
];

/// Every key of `table` that the schema above does not know, as `section.key`.
fn unknown_keys(table: &toml::Table) -> Vec<String> {
    let mut bad = Vec::new();
    for (key, value) in table {
        if !TOP.contains(&key.as_str()) {
            bad.push(key.clone());
            continue;
        }
        let Some((_, known)) = SECTIONS.iter().find(|(s, _)| s == key) else {
            continue;
        };
        if let toml::Value::Table(section) = value {
            for k in section.keys() {
                if !known.contains(&k.as_str()) {
                    bad.push(format!("{key}.{k}"));
                }
            }
        }
    }
    bad
}

/// Sets every `SANDTRAIL_<SECTION>_<KEY>` that `env` knows into `table`. A value is
/// read as a TOML value when it is one (`64`, `true`, `"x"`), else as a plain string,
/// so `SANDTRAIL_INDEXER_RETENTION=7d` needs no quotes.
fn apply_env(table: &mut toml::Table, env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    let mut applied = Vec::new();
    for (section, keys) in SECTIONS {
        for key in *keys {
            let var = format!(
                "SANDTRAIL_{}_{}",
                section.to_ascii_uppercase(),
                key.to_ascii_uppercase()
            );
            let Some(raw) = env(&var) else {
                continue;
            };
            let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(raw));
            if let toml::Value::Table(sec) = table
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            {
                sec.insert(key.to_string(), value);
            }
            applied.push(var);
        }
    }
    applied
}

impl Config {
    /// [`Config::parse_with_env`] without the environment (tests).
    #[cfg(test)]
    pub fn parse(text: &str, origin: &Path) -> anyhow::Result<Config> {
        Config::parse_with_env(text, origin, &|_| None)
    }

    /// [`Config::parse`] with `SANDTRAIL_<SECTION>_<KEY>` overrides looked up in `env`.
    pub fn parse_with_env(
        text: &str,
        origin: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Config> {
        let mut table: toml::Table = toml::from_str(text)
            .with_context(|| format!("config {} is not valid TOML", origin.display()))?;
        let bad = unknown_keys(&table);
        if !bad.is_empty() {
            bail!(
                "config {}: unknown keys {} (known sections: up, indexer, scheduler, agent, web, http, client)",
                origin.display(),
                bad.join(", ")
            );
        }
        let applied = apply_env(&mut table, env);
        let config: Config = toml::Value::Table(table).try_into().with_context(|| {
            if applied.is_empty() {
                format!("config {}", origin.display())
            } else {
                format!(
                    "config {} with {} from the environment",
                    origin.display(),
                    applied.join(", ")
                )
            }
        })?;
        if let Some(c) = &config.agent.compression {
            if agent::ship::Codec::parse(c).is_none() {
                bail!(
                    "config {}: agent.compression is {c:?}, expected \"auto\", \"zstd\", \"gzip\" or \"none\"",
                    origin.display()
                );
            }
        }
        if config.agent.log_budget_mb == Some(0) {
            bail!(
                "config {}: agent.log_budget_mb is 0, expected at least 1 (MiB)",
                origin.display()
            );
        }
        if let Some(ms) = config.indexer.commit_interval_ms {
            if !(1..=10_000).contains(&ms) {
                bail!(
                    "config {}: indexer.commit_interval_ms is {ms}, expected 1 to 10000 (ms)",
                    origin.display()
                );
            }
        }
        if let Some(r) = &config.indexer.retention {
            indexer::parse_retention(r)
                .with_context(|| format!("config {}: indexer.retention", origin.display()))?;
        }
        Ok(config)
    }

    /// Loads `path` if given (it must exist), else the default file if present (see
    /// [`default_path`]), else the defaults.
    pub fn load(path: Option<&Path>, for_client: bool) -> anyhow::Result<Config> {
        let env = |k: &str| std::env::var(k).ok();
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (default_path(for_client, &env), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Config::parse_with_env(&text, &path, &env),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                Config::parse_with_env("", &path, &env)
            }
            Err(e) => Err(e).with_context(|| format!("cannot read config {}", path.display())),
        }
    }
}

/// `./sandtrail.toml`; for a client without one, the user's
/// `$XDG_CONFIG_HOME/sandtrail/sandtrail.toml` (default `~/.config/...`), so one file
/// names the cluster wherever the command is run. Servers never read the home dir:
/// what a service runs with must not depend on who starts it.
fn default_path(for_client: bool, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    let here = PathBuf::from("sandtrail.toml");
    if !for_client || here.exists() {
        return here;
    }
    let config_home = env("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".config")));
    match config_home {
        Some(dir) => dir.join("sandtrail").join("sandtrail.toml"),
        None => here,
    }
}

// ---------------------------------------------------------------------------------
// Resolution: what each command runs with, decided here and nowhere else. A value is
// the flag's (clap also reads the flag's `SANDTRAIL_*` variable), else the file's
// (with its `SANDTRAIL_<SECTION>_<KEY>` overrides), else the default of
// `protocol::defaults`. The clients resolve the same way as the servers, so a
// `data_dir` in the file reaches `sandtrail deploy` as it reaches `sandtrail up`.

/// The data dir: flag > file's `data_dir` > the default.
pub fn data_dir(flag: Option<PathBuf>, cfg: &Config) -> PathBuf {
    flag.or_else(|| cfg.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(defaults::DATA_DIR))
}

/// The token given to the process: `--token` or `SANDTRAIL_TOKEN` > file's `token`.
pub fn given_token(flag: Option<String>, cfg: &Config) -> Option<String> {
    flag.or_else(|| cfg.token.clone())
}

/// The first token of the first of `roles` whose file in `dir` holds one.
fn token_from_dir(dir: &Path, roles: &[Role]) -> Option<String> {
    roles
        .iter()
        .map(|r| defaults::token_path(dir, *r))
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| first_line(&text))
}

/// `sandtrail up`.
#[derive(Debug)]
pub struct UpSettings {
    pub data_dir: PathBuf,
    pub listen: String,
    pub router_listen: String,
    pub dns_listen: Option<String>,
    pub agents: u32,
    pub demo: bool,
    pub token: Option<String>,
    /// `--docker` (over `[agent] docker`): see [`resolve_docker`].
    pub docker: Option<String>,
    /// Logs on stderr too (they always go to [`UpSettings::log_path`]).
    pub verbose: bool,
}

/// The file in the data dir where `up` writes the log of all its parts.
pub const UP_LOG: &str = "sandtrail.log";

impl UpSettings {
    /// `<data_dir>/sandtrail.log`.
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join(UP_LOG)
    }
}

/// What `up`'s logging needs before anything else runs: its data dir and whether
/// stderr gets every line (as [`up`] resolves them).
pub fn up_logging(args: &UpArgs, cfg: &Config) -> (PathBuf, bool) {
    (
        data_dir(args.data_dir.clone(), cfg),
        args.verbose || cfg.up.verbose.unwrap_or(false),
    )
}

pub fn up(args: UpArgs, cfg: &Config, token: Option<String>) -> UpSettings {
    let (data_dir, verbose) = up_logging(&args, cfg);
    UpSettings {
        data_dir,
        listen: args
            .listen
            .or(cfg.up.listen.clone())
            .unwrap_or_else(|| defaults::LISTEN.into()),
        router_listen: args
            .router_listen
            .or(cfg.up.router_listen.clone())
            .unwrap_or_else(|| defaults::ROUTER_LISTEN.into()),
        dns_listen: args.dns_listen.or(cfg.up.dns_listen.clone()),
        agents: args.agents.or(cfg.up.agents).unwrap_or(defaults::UP_AGENTS),
        demo: !args.no_demo && cfg.up.demo.unwrap_or(true),
        token: given_token(token, cfg),
        verbose,
        docker: args.docker,
    }
}

/// `sandtrail scheduler` and `sandtrail indexer`: one part on a data dir.
#[derive(Debug)]
pub struct PartSettings {
    pub data_dir: PathBuf,
    pub listen: String,
    pub token: Option<String>,
}

/// `sandtrail scheduler`: the part's settings and where it serves DNS.
#[derive(Debug)]
pub struct SchedulerSettings {
    pub part: PartSettings,
    pub dns_listen: Option<String>,
    /// HA on ZooKeeper, when set.
    pub zk: Option<String>,
    pub zk_session_timeout: std::time::Duration,
    pub advertise: Option<String>,
}

pub fn scheduler(args: SchedulerArgs, cfg: &Config, token: Option<String>) -> SchedulerSettings {
    SchedulerSettings {
        part: PartSettings {
            data_dir: data_dir(args.data_dir, cfg),
            listen: args
                .listen
                .or(cfg.scheduler.listen.clone())
                .unwrap_or_else(|| defaults::SCHEDULER_LISTEN.into()),
            token: given_token(token, cfg),
        },
        dns_listen: args.dns_listen.or(cfg.scheduler.dns_listen.clone()),
        zk: args.zk.or(cfg.scheduler.zk.clone()),
        zk_session_timeout: std::time::Duration::from_millis(
            args.zk_session_timeout_ms
                .or(cfg.scheduler.zk_session_timeout_ms)
                .unwrap_or(10_000),
        ),
        advertise: args.advertise.or(cfg.scheduler.advertise.clone()),
    }
}

pub fn indexer(args: IndexerArgs, cfg: &Config, token: Option<String>) -> PartSettings {
    PartSettings {
        data_dir: data_dir(args.data_dir, cfg),
        listen: args
            .listen
            .or(cfg.indexer.listen.clone())
            .unwrap_or_else(|| defaults::INDEXER_LISTEN.into()),
        token: given_token(token, cfg),
    }
}

/// `sandtrail indexer --zk ... --ingest-log ...`: shard mode (issue 21).
#[derive(Debug, Clone)]
pub struct ShardSettings {
    pub zk: protocol::zk::ZkUrl,
    pub log: protocol::ingest_log::LogConfig,
    pub owners: u32,
    pub advertise: Option<String>,
    pub session_timeout: std::time::Duration,
}

/// Shard mode's settings, when `--zk` or `--ingest-log` is given (both are then
/// needed).
pub fn indexer_shards(args: &IndexerArgs, cfg: &Config) -> anyhow::Result<Option<ShardSettings>> {
    let c = &cfg.indexer;
    let zk = args.zk.clone().or(c.zk.clone());
    let log = args.ingest_log.clone().or(c.ingest_log.clone());
    let (zk, log) = match (zk, log) {
        (None, None) => return Ok(None),
        (Some(zk), Some(log)) => (zk, log),
        (Some(_), None) => {
            anyhow::bail!("--zk needs --ingest-log (shard mode consumes the ingest log)")
        }
        (None, Some(_)) => {
            anyhow::bail!("--ingest-log needs --zk (shard owners are kept in ZooKeeper)")
        }
    };
    let log = protocol::ingest_log::LogConfig {
        urls: log,
        shards: args
            .shards
            .or(c.shards)
            .unwrap_or(protocol::shard::DEFAULT_SHARDS),
        replicas: c.ingest_log_replicas.unwrap_or(1),
        // The stream keeps what the indexers keep (retention is checked at parse).
        limits: Some(protocol::ingest_log::Limits::for_retention(
            c.retention
                .as_deref()
                .and_then(|r| indexer::parse_retention(r).ok()),
            c.ingest_log_max_mb.map(|mb| mb.saturating_mul(1 << 20)),
        )),
    };
    log.validate().map_err(anyhow::Error::msg)?;
    let owners = args.owners.or(c.owners).unwrap_or(2);
    if owners == 0 {
        anyhow::bail!("--owners is 0, expected at least 1 owner per shard");
    }
    Ok(Some(ShardSettings {
        zk: zk.parse()?,
        log,
        owners,
        advertise: args.advertise.clone().or(c.advertise.clone()),
        session_timeout: std::time::Duration::from_millis(
            args.zk_session_timeout_ms
                .or(c.zk_session_timeout_ms)
                .unwrap_or(10_000),
        ),
    }))
}

/// `sandtrail web`.
#[derive(Debug)]
pub struct WebSettings {
    pub listen: String,
    pub indexer_url: String,
    pub scheduler_url: String,
    /// The UI's own credential upstream (a read token is enough).
    pub token: String,
    /// What the Apps and Hosts buttons change things with: `--deploy-token` >
    /// `[web] deploy_token`.
    pub deploy_token: Option<String>,
    /// Its tokens sign users in and its `web/saved-searches.json` keeps the saved
    /// searches: `--data-dir` > the file's `data_dir`; none, in memory only.
    pub data_dir: Option<PathBuf>,
}

pub fn web(args: WebArgs, cfg: &Config, token: Option<String>) -> anyhow::Result<WebSettings> {
    Ok(WebSettings {
        listen: args
            .listen
            .or(cfg.web.listen.clone())
            .unwrap_or_else(|| defaults::LISTEN.into()),
        indexer_url: args
            .indexer
            .or(cfg.web.indexer.clone())
            .context("--indexer URL is required (or [web] indexer in sandtrail.toml)")?,
        scheduler_url: args
            .scheduler
            .or(cfg.web.scheduler.clone())
            .context("--scheduler URL is required (or [web] scheduler in sandtrail.toml)")?,
        token: given_token(token, cfg)
            .filter(|t| !t.trim().is_empty())
            .context("--token is required: the UI calls the indexer and scheduler with it (a read token is enough)")?,
        deploy_token: args
            .deploy_token
            .or(cfg.web.deploy_token.clone())
            .filter(|t| !t.trim().is_empty()),
        data_dir: args.data_dir.or(cfg.data_dir.clone()),
    })
}

/// `sandtrail agent`.
#[derive(Debug)]
pub struct AgentSettings {
    pub data_dir: PathBuf,
    pub name: String,
    pub scheduler_url: String,
    pub indexer_url: String,
    pub router_listen: String,
    pub address: String,
    pub resources: String,
    pub attributes: String,
    /// Given, else the data dir's agent token, else its admin one (an agent sharing
    /// a data dir with a scheduler, a single-host setup).
    pub token: String,
    /// `--docker` (over `[agent] docker`): see [`resolve_docker`].
    pub docker: Option<String>,
    /// `--ingest-log` (over `[agent] ingest_log`), with the shard count and replicas.
    pub ingest_log: Option<protocol::ingest_log::LogConfig>,
}

pub fn agent(
    args: AgentArgs,
    cfg: &Config,
    token: Option<String>,
) -> anyhow::Result<AgentSettings> {
    let c = &cfg.agent;
    let data_dir = data_dir(args.data_dir, cfg);
    let name = match args.name.or(c.name.clone()) {
        Some(n) => n,
        None => hostname()?,
    };
    let scheduler_url = args
        .scheduler
        .or(c.scheduler.clone())
        .context("--scheduler URL is required (or [agent] scheduler in sandtrail.toml)")?;
    let ingest_log = match args.ingest_log.or(c.ingest_log.clone()) {
        Some(urls) => {
            let log = protocol::ingest_log::LogConfig {
                urls,
                shards: args
                    .shards
                    .or(c.shards)
                    .unwrap_or(protocol::shard::DEFAULT_SHARDS),
                replicas: c.ingest_log_replicas.unwrap_or(1),
                // The indexers set the stream's limits; a shipper knows neither.
                limits: None,
            };
            log.validate().map_err(anyhow::Error::msg)?;
            Some(log)
        }
        None => None,
    };
    let indexer_url = match (args.indexer.or(c.indexer.clone()), &ingest_log) {
        (Some(url), _) => url,
        // Unused: batches go to the ingest log.
        (None, Some(_)) => defaults::SERVER_URL.to_string(),
        (None, None) => anyhow::bail!(
            "--indexer URL is required (or [agent] indexer in sandtrail.toml), or --ingest-log"
        ),
    };
    let token = match given_token(token, cfg).filter(|t| !t.trim().is_empty()) {
        Some(t) => t,
        None => token_from_dir(&data_dir, &[Role::Agent, Role::Admin]).with_context(|| {
            format!(
                "--token is required (an agent-role token; or {} in the data dir)",
                defaults::token_path(&data_dir, Role::Agent).display()
            )
        })?,
    };
    Ok(AgentSettings {
        name,
        scheduler_url,
        indexer_url,
        router_listen: args
            .router_listen
            .or(c.router_listen.clone())
            .unwrap_or_else(|| defaults::ROUTER_LISTEN.into()),
        address: args
            .address
            .or(c.address.clone())
            .unwrap_or_else(|| defaults::AGENT_ADDRESS.into()),
        resources: args.resources.or(c.resources.clone()).unwrap_or_default(),
        attributes: args.attributes.or(c.attributes.clone()).unwrap_or_default(),
        token,
        data_dir,
        docker: args.docker,
        ingest_log,
    })
}

fn hostname() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if name.is_empty() {
        bail!("cannot tell this machine's host name: pass --name");
    }
    Ok(name)
}

/// The command-line clients, each setting flag > env > file > default:
/// - the scheduler: `--server`, `SANDTRAIL_SERVER`, `[client] server`, `up`'s address;
/// - the indexer: `--indexer`, `SANDTRAIL_INDEXER`, `[client] indexer`, the scheduler's;
/// - the token: `--token`, `SANDTRAIL_TOKEN`, `[client] token`, `[client] token_file`,
///   the file's top-level `token`, else the admin one `up` wrote into the data dir (the
///   data dir resolved as the servers resolve it).
pub fn client(
    mut server: ServerArgs,
    cfg: &Config,
    token: Option<String>,
) -> anyhow::Result<ServerArgs> {
    let c = &cfg.client;
    server.server = server
        .server
        .or_else(|| c.server.clone())
        .or_else(|| Some(defaults::SERVER_URL.to_string()));
    server.indexer = server.indexer.or_else(|| c.indexer.clone());
    let from_file = match &c.token_file {
        Some(path) if c.token.is_none() => Some(first_token_line(path)?),
        _ => None,
    };
    let dir = data_dir(server.data_dir.take(), cfg);
    server.token = token
        .or_else(|| c.token.clone())
        .or(from_file)
        .or_else(|| cfg.token.clone())
        .or_else(|| token_from_dir(&dir, &[Role::Admin]));
    Ok(server)
}

/// The token in `[client] token_file`: its first line that is not blank or a comment.
fn first_token_line(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read [client] token_file {}", path.display()))?;
    first_line(&text).with_context(|| {
        format!(
            "[client] token_file {} holds no token: expected one on a line of its own",
            path.display()
        )
    })
}

/// The first line of a token file that is not blank or a `#` comment.
fn first_line(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
}

/// Parses `cpus:4;mem:8192` into a map; every bad pair is named. A Mesos port range
/// (`ports:[31000-32000]`) is not a number: [`parse_port_resources`] reads it.
pub fn parse_resources(s: &str) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let mut out = std::collections::BTreeMap::new();
    let mut bad = Vec::new();
    for pair in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        if port_pair(pair).is_some() {
            continue;
        }
        match pair
            .split_once(':')
            .map(|(k, v)| (k.trim(), v.trim().parse::<f64>()))
        {
            Some((k, Ok(v))) if !k.is_empty() && v >= 0.0 => {
                out.insert(k.to_string(), v);
            }
            _ => bad.push(pair.to_string()),
        }
    }
    if !bad.is_empty() {
        bail!(
            "invalid resources {}: expected name:number pairs separated by ';', like cpus:4;mem:8192",
            bad.join(", ")
        );
    }
    Ok(out)
}

/// The value of a `ports:...` pair of `--resources`.
fn port_pair(pair: &str) -> Option<&str> {
    let (k, v) = pair.split_once(':')?;
    (k.trim() == "ports").then_some(v)
}

/// The host port ranges of `--resources`, Mesos style (`ports:[31000-32000]`);
/// none when it names no ports.
pub fn parse_port_resources(s: &str) -> anyhow::Result<Vec<protocol::PortRange>> {
    match s.split(';').filter_map(port_pair).next() {
        Some(v) => Ok(protocol::parse_port_ranges(v)?),
        None => Ok(Vec::new()),
    }
}

/// Parses `rack:a;zone:1` into a map; every bad pair is named.
pub fn parse_attributes(s: &str) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut out = std::collections::BTreeMap::new();
    let mut bad = Vec::new();
    for pair in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once(':') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.insert(k.trim().to_string(), v.trim().to_string());
            }
            _ => bad.push(pair.to_string()),
        }
    }
    if !bad.is_empty() {
        bail!(
            "invalid attributes {}: expected name:value pairs separated by ';', like rack:a;zone:1",
            bad.join(", ")
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_args(data_dir: Option<&Path>) -> ServerArgs {
        ServerArgs {
            server: None,
            indexer: None,
            data_dir: data_dir.map(Path::to_path_buf),
            token: None,
        }
    }

    /// Regression (issue 16): the clients looked for `up`'s admin token only in
    /// `$SANDTRAIL_DATA_DIR` or ./.sandtrail, ignoring `--data-dir` and the config
    /// file's `data_dir`, so `sandtrail deploy` could miss the token `up` wrote.
    #[test]
    fn clients_find_the_token_up_wrote_in_the_configured_data_dir() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(defaults::token_path(&dir, Role::Admin), "tok-1\n").unwrap();
        let text = format!("data_dir = {:?}\n", dir.display().to_string());
        let from_file = Config::parse(&text, Path::new("t.toml")).unwrap();
        let none = Config::default();

        let c = client(client_args(None), &from_file, None).unwrap();
        assert_eq!(c.token.as_deref(), Some("tok-1"), "the file's data_dir");
        let c = client(client_args(Some(&dir)), &none, None).unwrap();
        assert_eq!(c.token.as_deref(), Some("tok-1"), "--data-dir");
        // A flag beats the file; a given token beats the data dir.
        let other = Config::parse("data_dir = \"/nonexistent\"\n", Path::new("t.toml")).unwrap();
        let c = client(client_args(Some(&dir)), &other, None).unwrap();
        assert_eq!(c.token.as_deref(), Some("tok-1"));
        let c = client(client_args(Some(&dir)), &none, Some("given".into())).unwrap();
        assert_eq!(c.token.as_deref(), Some("given"));
        let c = client(client_args(None), &from_file, None).unwrap();
        assert_eq!(c.server.as_deref(), Some("http://127.0.0.1:7070"));
    }

    #[test]
    fn the_client_section_names_the_cluster_below_flags_and_env() {
        let d = tempfile::tempdir().unwrap();
        let tok = d.path().join("tok");
        std::fs::write(&tok, "# comment\n\n from-file \n").unwrap();
        let text = format!(
            "token = \"top\"\n[client]\nserver = \"http://s:1\"\nindexer = \"http://i:2\"\ntoken_file = {:?}\n",
            tok.display().to_string()
        );
        let cfg = Config::parse(&text, Path::new("t.toml")).unwrap();
        let c = client(client_args(None), &cfg, None).unwrap();
        assert_eq!(c.server.as_deref(), Some("http://s:1"));
        assert_eq!(c.indexer.as_deref(), Some("http://i:2"));
        assert_eq!(
            c.token.as_deref(),
            Some("from-file"),
            "token_file beats top-level token"
        );
        // Flags (and their env, which clap folds in) beat the file.
        let mut args = client_args(None);
        args.server = Some("http://flag:3".into());
        args.indexer = Some("http://flag:4".into());
        let c = client(args, &cfg, Some("given".into())).unwrap();
        assert_eq!(c.server.as_deref(), Some("http://flag:3"));
        assert_eq!(c.indexer.as_deref(), Some("http://flag:4"));
        assert_eq!(c.token.as_deref(), Some("given"));
        // `token` beats `token_file`; SANDTRAIL_CLIENT_* env beats the file too.
        let env = |k: &str| (k == "SANDTRAIL_CLIENT_TOKEN").then(|| "env".to_string());
        let cfg = Config::parse_with_env(&text, Path::new("t.toml"), &env).unwrap();
        assert_eq!(
            client(client_args(None), &cfg, None)
                .unwrap()
                .token
                .as_deref(),
            Some("env")
        );
        // A token file that is missing or empty is named.
        std::fs::write(&tok, "# nothing\n").unwrap();
        let cfg = Config::parse(&text, Path::new("t.toml")).unwrap();
        let e = client(client_args(None), &cfg, None).unwrap_err();
        assert!(format!("{e:#}").contains("holds no token"), "{e:#}");
        let bad = Config::parse("[client]\nsrever = \"x\"\n", Path::new("t.toml")).unwrap_err();
        assert!(bad.to_string().contains("client.srever"), "{bad}");
    }

    fn no_scheduler_flags() -> SchedulerArgs {
        SchedulerArgs {
            data_dir: None,
            listen: None,
            dns_listen: None,
            zk: None,
            zk_session_timeout_ms: None,
            advertise: None,
        }
    }

    #[test]
    fn servers_resolve_flag_over_file_over_default() {
        let cfg = Config::parse(
            "token = \"f\"\n[scheduler]\nlisten = \"0.0.0.0:1\"\ndns_listen = \"127.0.0.1:53\"\n[indexer]\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let s = scheduler(no_scheduler_flags(), &cfg, None);
        assert_eq!(s.dns_listen.as_deref(), Some("127.0.0.1:53"));
        assert_eq!(s.zk, None, "no zookeeper unless asked");
        assert_eq!(s.zk_session_timeout, std::time::Duration::from_secs(10));
        let s = s.part;
        assert_eq!(
            (s.listen.as_str(), s.token.as_deref()),
            ("0.0.0.0:1", Some("f"))
        );
        assert_eq!(s.data_dir, PathBuf::from("./.sandtrail"));
        let i = indexer(
            IndexerArgs {
                data_dir: Some("/d".into()),
                listen: None,
                zk: None,
                ingest_log: None,
                shards: None,
                owners: None,
                advertise: None,
                zk_session_timeout_ms: None,
            },
            &cfg,
            Some("flag".into()),
        );
        assert_eq!(
            (i.listen.as_str(), i.token.as_deref()),
            ("127.0.0.1:7072", Some("flag"))
        );
        assert_eq!(i.data_dir, PathBuf::from("/d"));
        let ha = Config::parse(
            "[scheduler]\nzk = \"zk://z1:2181/st\"\nzk_session_timeout_ms = 3000\nadvertise = \"s1:7071\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let s = scheduler(no_scheduler_flags(), &ha, None);
        assert_eq!(
            (
                s.zk.as_deref(),
                s.zk_session_timeout,
                s.advertise.as_deref()
            ),
            (
                Some("zk://z1:2181/st"),
                std::time::Duration::from_secs(3),
                Some("s1:7071")
            )
        );
        let u = up(
            UpArgs {
                data_dir: None,
                listen: Some("127.0.0.1:9".into()),
                router_listen: None,
                agents: None,
                no_demo: false,
                verbose: false,
                dns_listen: Some("127.0.0.1:8053".into()),
                docker: None,
            },
            &cfg,
            None,
        );
        assert_eq!(
            (
                u.listen.as_str(),
                u.router_listen.as_str(),
                u.agents,
                u.demo
            ),
            ("127.0.0.1:9", "127.0.0.1:7080", 3, true)
        );
        assert!(!u.verbose);
        assert_eq!(u.log_path(), PathBuf::from("./.sandtrail/sandtrail.log"));
        assert_eq!(u.dns_listen.as_deref(), Some("127.0.0.1:8053"));
    }

    #[test]
    fn agent_node_keys_tune_gc_and_memory_limits() {
        let c = Config::parse(
            "[agent]\ngc_delay_secs = 5\nmemory_limits = false\ncgroup_parent = \"/sandtrail.slice\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let mut n = scheduler::node::NodeConfig::new("n", "/w", "http://s");
        assert_eq!(n.gc_delay, scheduler::node::DEFAULT_GC_DELAY);
        assert!(n.memory_limits);
        c.agent.node_tuning().apply(&mut n);
        assert_eq!(n.gc_delay, std::time::Duration::from_secs(5));
        assert!(!n.memory_limits);
        assert_eq!(n.cgroup_parent.as_deref(), Some("/sandtrail.slice"));
    }

    #[test]
    fn agent_log_budget_sets_the_nodes_default_from_file_or_environment() {
        let mut n = scheduler::node::NodeConfig::new("n", "/w", "http://s");
        assert_eq!(
            n.log_budget_bytes,
            scheduler::node::DEFAULT_LOG_BUDGET_BYTES
        );
        assert_eq!(n.log_budget_bytes, 512 << 20);
        let c = Config::parse("[agent]\nlog_budget_mb = 64\n", Path::new("t.toml")).unwrap();
        c.agent.node_tuning().apply(&mut n);
        assert_eq!(n.log_budget_bytes, 64 << 20);
        let env = |k: &str| (k == "SANDTRAIL_AGENT_LOG_BUDGET_MB").then(|| "32".to_string());
        let c = Config::parse_with_env("[agent]\nlog_budget_mb = 64\n", Path::new("t.toml"), &env)
            .unwrap();
        c.agent.node_tuning().apply(&mut n);
        assert_eq!(
            n.log_budget_bytes,
            32 << 20,
            "the environment wins over the file"
        );
        let err = format!(
            "{:#}",
            Config::parse("[agent]\nlog_budget_mb = 0\n", Path::new("t.toml")).unwrap_err()
        );
        assert!(err.contains("agent.log_budget_mb"), "{err}");
    }

    #[test]
    fn task_user_reaches_the_node_from_the_file_and_the_environment() {
        let mut n = scheduler::node::NodeConfig::new("n", "/w", "http://s");
        assert_eq!(n.task_user, None, "a uid of its own per task by default");
        let c = Config::parse("[agent]\ntask_user = \"nobody\"\n", Path::new("t.toml")).unwrap();
        c.agent.node_tuning().apply(&mut n);
        assert_eq!(n.task_user.as_deref(), Some("nobody"));
        let env = |k: &str| (k == "SANDTRAIL_AGENT_TASK_USER").then(|| "daemon".to_string());
        let c = Config::parse_with_env("", Path::new("t.toml"), &env).unwrap();
        c.agent.node_tuning().apply(&mut n);
        assert_eq!(n.task_user.as_deref(), Some("daemon"));
    }

    #[test]
    fn indexer_retention_is_checked_at_parse() {
        let c = Config::parse("[indexer]\nretention = \"7d\"\n", Path::new("t.toml")).unwrap();
        assert_eq!(c.indexer.retention.as_deref(), Some("7d"));
        let err =
            Config::parse("[indexer]\nretention = \"week\"\n", Path::new("t.toml")).unwrap_err();
        assert!(format!("{err:#}").contains("week"), "{err:#}");
    }

    #[test]
    fn indexer_commit_interval_is_range_checked_and_reaches_the_indexer() {
        let env = |k: &str| (k == "SANDTRAIL_INDEXER_COMMIT_INTERVAL_MS").then(|| "2000".into());
        let c = Config::parse_with_env("", Path::new("t.toml"), &env).unwrap();
        assert_eq!(c.indexer.commit_interval_ms, Some(2000));
        let ix = crate::serve::indexer_config("/d".into(), &c, &protocol::auth::Keyring::new());
        assert_eq!(ix.commit_interval, std::time::Duration::from_secs(2));
        let default = Config::parse("", Path::new("t.toml")).unwrap();
        let ix =
            crate::serve::indexer_config("/d".into(), &default, &protocol::auth::Keyring::new());
        assert_eq!(
            ix.commit_interval,
            indexer::IndexerConfig::default().commit_interval
        );
        for bad in ["0", "10001"] {
            let text = format!("[indexer]\ncommit_interval_ms = {bad}\n");
            let err = format!(
                "{:#}",
                Config::parse(&text, Path::new("t.toml")).unwrap_err()
            );
            assert!(
                err.contains(&format!(
                    "indexer.commit_interval_ms is {bad}, expected 1 to 10000"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn agent_shipper_tuning_is_applied() {
        let c = Config::parse(
            "[agent]\nspool_max_mb = 64\nmultiline_flush_ms = 0\nmax_line_kb = 16\nbatch_max_kb = 512\nbatch_max_wait_ms = 50\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let s = c.agent.shipper_config();
        assert_eq!(s.spool_max_bytes, 64 << 20);
        assert_eq!(s.multiline_flush, None);
        assert_eq!(s.max_line_bytes, 16 << 10);
        assert_eq!(s.batch_max_bytes, 512 << 10);
        assert_eq!(s.batch_max_wait, std::time::Duration::from_millis(50));
        let c = Config::parse("[agent]\nmultiline_flush_ms = 250\n", Path::new("t.toml")).unwrap();
        let s = c.agent.shipper_config();
        assert_eq!(
            s.multiline_flush,
            Some(std::time::Duration::from_millis(250))
        );
        // Untouched keys keep the shipper's defaults.
        let d = agent::ShipperConfig::default();
        assert_eq!(s.spool_max_bytes, d.spool_max_bytes);
        assert_eq!(s.batch_max_bytes, d.batch_max_bytes);
        let err = Config::parse("[agent]\nspool_max_bytes = 1\n", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("agent.spool_max_bytes"), "{err}");
        assert_eq!(d.compression, agent::ship::Codec::Auto);
        let c = Config::parse("[agent]\ncompression = \"gzip\"\n", Path::new("t.toml")).unwrap();
        assert_eq!(
            c.agent.shipper_config().compression,
            agent::ship::Codec::Gzip
        );
        let err = Config::parse("[agent]\ncompression = \"lz4\"\n", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("agent.compression") && err.contains("lz4"),
            "{err}"
        );
    }

    #[test]
    fn every_key_can_be_set_from_the_environment_over_the_file() {
        let env = |k: &str| match k {
            "SANDTRAIL_AGENT_COMPRESSION" => Some("gzip".to_string()),
            "SANDTRAIL_AGENT_SPOOL_MAX_MB" => Some("64".to_string()),
            "SANDTRAIL_INDEXER_RETENTION" => Some("7d".to_string()),
            "SANDTRAIL_SCHEDULER_AGENT_TIMEOUT_SECS" => Some("9".to_string()),
            _ => None,
        };
        let c = Config::parse_with_env("[agent]\nspool_max_mb = 1\n", Path::new("t.toml"), &env)
            .unwrap();
        assert_eq!(c.agent.compression.as_deref(), Some("gzip"));
        assert_eq!(
            c.agent.spool_max_mb,
            Some(64),
            "the environment wins over the file"
        );
        assert_eq!(c.indexer.retention.as_deref(), Some("7d"));
        assert_eq!(c.scheduler.agent_timeout_secs, Some(9));
        let bad = |k: &str| (k == "SANDTRAIL_UP_AGENTS").then(|| "three".to_string());
        let err = format!(
            "{:#}",
            Config::parse_with_env("", Path::new("t.toml"), &bad).unwrap_err()
        );
        assert!(err.contains("SANDTRAIL_UP_AGENTS"), "{err}");
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("", Path::new("t.toml")).unwrap();
        assert!(c.data_dir.is_none() && c.up.listen.is_none());
    }

    #[test]
    fn known_keys_parse() {
        let c = Config::parse(
            "data_dir = \"/x\"\n[up]\nagents = 5\n[indexer]\nmax_body_mb = 8\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(c.up.agents, Some(5));
        assert_eq!(c.indexer.max_body_mb, Some(8));
        assert_eq!(c.data_dir.as_deref(), Some(Path::new("/x")));
    }

    #[test]
    fn every_unknown_key_is_reported_at_once() {
        let err = Config::parse(
            "dta_dir = 1\n[up]\nagnets = 5\n[indexr]\nx = 1\n[web]\nlisten = \"a\"\nport = 1\n",
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        for key in ["dta_dir", "up.agnets", "indexr", "web.port"] {
            assert!(err.contains(key), "{key} missing from {err}");
        }
    }

    #[test]
    fn wrong_type_is_an_error() {
        let err = Config::parse("[up]\nagents = \"three\"\n", Path::new("t.toml")).unwrap_err();
        assert!(format!("{err:#}").contains("agents"), "{err:#}");
    }

    #[test]
    fn resources_and_attributes_parse_and_report_bad_pairs() {
        let r = parse_resources("cpus:4; mem:8192").unwrap();
        assert_eq!(r["cpus"], 4.0);
        assert_eq!(r["mem"], 8192.0);
        let err = parse_resources("cpus:x;mem;disk:1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cpus:x") && err.contains("mem"), "{err}");
        let r = parse_resources("cpus:4;ports:[31000-32000];disk:1024").unwrap();
        assert_eq!(r.len(), 2, "{r:?}");
        let p = parse_port_resources("cpus:4; ports:[31000-32000, 8080-8080]").unwrap();
        assert_eq!(protocol::format_port_ranges(&p), "[8080-8080,31000-32000]");
        assert!(parse_port_resources("cpus:4").unwrap().is_empty());
        assert!(parse_port_resources("ports:[2-1]").is_err());
        let a = parse_attributes("rack:a;zone:1").unwrap();
        assert_eq!(a["rack"], "a");
        assert!(parse_attributes(":a").is_err());
    }

    #[test]
    fn indexer_shard_mode_needs_both_zk_and_the_log() {
        let args = || IndexerArgs {
            data_dir: None,
            listen: None,
            zk: None,
            ingest_log: None,
            shards: None,
            owners: None,
            advertise: None,
            zk_session_timeout_ms: None,
        };
        let none = Config::parse("", Path::new("t.toml")).unwrap();
        assert!(
            indexer_shards(&args(), &none).unwrap().is_none(),
            "no flags, no shard mode"
        );
        let c = Config::parse(
            "[indexer]\nzk = \"zk://z1:2181/st\"\ningest_log = \"nats://n1:4222\"\nshards = 4\nowners = 3\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let s = indexer_shards(&args(), &c).unwrap().unwrap();
        assert_eq!((s.zk.root.as_str(), s.log.shards, s.owners), ("/st", 4, 3));
        assert_eq!(s.session_timeout, std::time::Duration::from_secs(10));
        let half = IndexerArgs {
            zk: Some("zk://z1:2181/st".into()),
            ..args()
        };
        let e = indexer_shards(&half, &none).unwrap_err().to_string();
        assert!(e.contains("--ingest-log"), "{e}");
        // The stream keeps what the indexers keep: no retention, no age limit.
        assert_eq!(
            s.log.limits,
            Some(protocol::ingest_log::Limits::default()),
            "an indexer sets the limits, none here"
        );
    }

    #[test]
    fn the_ingest_log_keeps_a_day_past_the_retention_and_an_optional_byte_bound() {
        let env = |k: &str| (k == "SANDTRAIL_INDEXER_INGEST_LOG_MAX_MB").then(|| "64".to_string());
        let c = Config::parse_with_env(
            "[indexer]\nzk = \"zk://z1:2181/st\"\ningest_log = \"nats://n1:4222\"\nretention = \"7d\"\n",
            Path::new("t.toml"),
            &env,
        )
        .unwrap();
        let args = IndexerArgs {
            data_dir: None,
            listen: None,
            zk: None,
            ingest_log: None,
            shards: None,
            owners: None,
            advertise: None,
            zk_session_timeout_ms: None,
        };
        let s = indexer_shards(&args, &c).unwrap().unwrap();
        let limits = s.log.limits.expect("an indexer sets the stream's limits");
        assert_eq!(
            limits.max_age,
            Some(std::time::Duration::from_secs(8 * 86_400)),
            "7d of retention and a day"
        );
        assert_eq!(limits.max_bytes, Some(64 << 20));
    }

    /// The stream is created by whoever connects first, an indexer as often as an
    /// agent: before tests/compose-scale the indexer always created it with one
    /// replica, whatever the agents were told, so a cluster of three NATS servers
    /// kept the log on one of them.
    #[test]
    fn an_indexer_creates_the_stream_with_its_configured_replicas() {
        let env = |k: &str| (k == "SANDTRAIL_INDEXER_INGEST_LOG_REPLICAS").then(|| "3".to_string());
        let c = Config::parse_with_env(
            "[indexer]\nzk = \"zk://z1:2181/st\"\ningest_log = \"nats://n1:4222\"\n",
            Path::new("t.toml"),
            &env,
        )
        .unwrap();
        let args = IndexerArgs {
            data_dir: None,
            listen: None,
            zk: None,
            ingest_log: None,
            shards: None,
            owners: None,
            advertise: None,
            zk_session_timeout_ms: None,
        };
        let s = indexer_shards(&args, &c).unwrap().unwrap();
        assert_eq!(s.log.replicas, 3);
        let bad = Config::parse(
            "[indexer]\nzk = \"zk://z1:2181/st\"\ningest_log = \"nats://n1:4222\"\ningest_log_replicas = 9\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let e = indexer_shards(&args, &bad).unwrap_err().to_string();
        assert!(e.contains("replicas 9"), "{e}");
    }
}
