//! The one `sandtrail` binary: every service of the cluster (`up` runs them all in one
//! process, the others run one part each, so they can live on separate hosts), the
//! small command-line clients, and the demo app.
//!
//! Only wiring lives here: parsing flags and config, opening each part, putting their
//! HTTP routers on listeners, and shutting them down in the order that loses nothing
//! (tasks first, then the shippers' last batches, then the indexer's commit).

mod bench_pipeline;
mod client;
mod config;
mod demo;
mod http;
mod ops;
mod serve;
mod tokens;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "sandtrail",
    version,
    about = "Log shipping, search and a small cluster scheduler in one binary"
)]
struct Cli {
    /// Config file (default: ./sandtrail.toml when present).
    #[arg(long, global = true, env = "SANDTRAIL_CONFIG")]
    config: Option<PathBuf>,
    /// Cluster token the parts authenticate to each other with.
    #[arg(long, global = true, env = "SANDTRAIL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Ingest throughput against raw Tantivy, index size, freshness, search latency.
    Ingest(BenchIngestArgs),
    /// Shipper throughput on one core into a discarding sink, CPU per GB, RSS, idle CPU.
    Ship(BenchShipArgs),
    /// The indexer alone as a child process at scale (10M records): its own peak RSS
    /// while ingesting, then search latency over HTTP.
    Indexer(BenchIndexerArgs),
    /// The whole pipeline end to end: tasks writing the corpus through the real
    /// logger, agents and indexer of `sandtrail up`, against a raw Tantivy loop.
    Pipeline(BenchPipelineArgs),
}

#[derive(Args, Debug)]
struct BenchPipelineArgs {
    /// gen_corpus.py's `.txt`: the lines the tasks write (the raw loop indexes the
    /// records the shipper's parser makes of them).
    #[arg(long, default_value = "/tmp/sandtrail-bench/corpus-1000000.txt")]
    corpus: PathBuf,
    #[arg(long, default_value = "/tmp/sandtrail-bench/pipeline")]
    work_dir: PathBuf,
    /// Lines each busy task writes.
    #[arg(long, default_value_t = 200_000)]
    lines: usize,
    /// Scenarios to run: `1x1` (one busy task, one agent), `3x3` (three busy tasks
    /// on three agents), `50slow` (50 tasks at --slow-rate lines/s on 3 agents).
    #[arg(long, value_delimiter = ',', default_value = "1x1,3x3,50slow")]
    scenarios: Vec<String>,
    /// Lines each task of `50slow` writes, and how fast.
    #[arg(long, default_value_t = 2_000)]
    slow_lines: usize,
    #[arg(long, default_value_t = 100)]
    slow_rate: u64,
    /// Runs of each scenario, one after another (each with its own raw loop); with
    /// more than one, the medians of the ratios are printed after the table.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,
    /// Internal: run as a paced writer task (this file's lines at --rate per second).
    #[arg(long, hide = true)]
    write: Option<PathBuf>,
    #[arg(long, hide = true, default_value_t = 100)]
    rate: u64,
}

#[derive(Args, Debug)]
struct BenchIndexerArgs {
    #[arg(long, default_value_t = 10_000_000)]
    records: usize,
    /// gen_corpus.py's NDJSON (default /tmp/sandtrail-bench/corpus-RECORDS.ndjson).
    #[arg(long)]
    ndjson: Option<PathBuf>,
    /// The indexer's --data-dir; emptied first, left loaded afterwards.
    #[arg(long, default_value = "/tmp/sandtrail-bench/indexer-data")]
    data_dir: PathBuf,
    /// Timed runs of each search.
    #[arg(long, default_value_t = 30)]
    search_runs: usize,
}

#[derive(Args, Debug)]
struct BenchShipArgs {
    /// Log text, one record per line (gen_corpus.py's .txt).
    #[arg(long, default_value = "/tmp/sandtrail-bench/corpus-1000000.txt")]
    corpus: PathBuf,
    #[arg(long, default_value = "/tmp/sandtrail-bench/ship")]
    work_dir: PathBuf,
    /// Busy files; each holds the whole corpus.
    #[arg(long, default_value_t = 4)]
    files: usize,
    /// Quiet files of the idle measurement (0 skips it).
    #[arg(long, default_value_t = 100)]
    idle_files: usize,
    #[arg(long, default_value_t = 20)]
    idle_secs: u64,
    /// Internal: run as the benchmark's indexer sink.
    #[arg(long, hide = true)]
    sink: bool,
}

#[derive(Args, Debug)]
struct BenchIngestArgs {
    #[arg(long, default_value_t = 200_000)]
    records: usize,
    /// Use this NDJSON corpus instead of generating one with gen_corpus.py.
    #[arg(long)]
    ndjson: Option<PathBuf>,
    #[arg(long, default_value = "/tmp/sandtrail-bench")]
    work_dir: PathBuf,
    /// Records per second of the freshness run.
    #[arg(long, default_value_t = 10_000)]
    fresh_rate: usize,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Scheduler, indexer, web UI, router and local agents in one process, with a demo app.
    Up(UpArgs),
    /// The control plane alone (Marathon-style API, agent endpoints, services).
    Scheduler(SchedulerArgs),
    /// The indexer alone (ingest, search, tail).
    Indexer(IndexerArgs),
    /// The web UI alone, talking to an indexer and a scheduler over HTTP.
    Web(WebArgs),
    /// One host: runs tasks, ships their logs, routes their calls.
    Agent(AgentArgs),
    /// Create or update an app from a Marathon-style JSON file and follow the
    /// deployment to its end.
    Deploy {
        file: PathBuf,
        #[command(flatten)]
        wait: ops::WaitArgs,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Set an app's instances (0 suspends it) and follow the deployment.
    Scale {
        app: String,
        instances: u32,
        #[command(flatten)]
        wait: ops::WaitArgs,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Replace every task of an app, a few at a time, and follow the deployment.
    Restart {
        app: String,
        #[command(flatten)]
        wait: ops::WaitArgs,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Kill one task (its app starts another unless --scale).
    Kill {
        task: String,
        /// Lower the app's instances by one instead of replacing the task.
        #[arg(long)]
        scale: bool,
        #[command(flatten)]
        wait: ops::WaitArgs,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// List an app's versions, newest (current) first.
    Versions {
        app: String,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Put an app back to an earlier version (default: the one before the current).
    Rollback {
        app: String,
        version: Option<String>,
        #[command(flatten)]
        wait: ops::WaitArgs,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Print a completion script for a shell: `sandtrail completions bash >
    /// /etc/bash_completion.d/sandtrail`.
    Completions { shell: clap_complete::Shell },
    /// List apps and their tasks.
    Apps {
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Search logs, newest first.
    Search {
        query: String,
        /// How far back to look: 5m, 15m, 1h, 24h, 7d (ignored with --from).
        #[arg(long, default_value = "15m")]
        since: String,
        /// Start of the range: RFC 3339 (2026-12-05T10:00:00Z) or relative (now-1h).
        #[arg(long)]
        from: Option<String>,
        /// End of the range, as --from; default now.
        #[arg(long)]
        to: Option<String>,
        /// Records per page.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Follow the `next` cursor to the last page.
        #[arg(long)]
        all: bool,
        /// text (oldest at the bottom), json (the API's answer) or ndjson (a record a line).
        #[arg(short = 'o', long = "output", value_enum, default_value_t = client::Output::Text)]
        output: client::Output,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Follow the logs of apps' instances live, reconnecting when the stream drops.
    Tail {
        /// Apps to follow (none: every app, narrowed by --query). An argument that is
        /// not an app name is a regular expression searched in app names, as stern's
        /// pod query: `sandtrail tail 'fib|web'`.
        apps: Vec<String>,
        /// Follow every app whose name matches this regular expression (unanchored;
        /// `^fib$` for one name).
        #[arg(long = "app-regex")]
        app_regex: Option<String>,
        /// Tail filter, ANDed: `level:error timeout -host:node-2`.
        #[arg(long, short = 'q', default_value = "")]
        query: String,
        /// Print the lines of this last stretch first: 5m, 1h.
        #[arg(long)]
        since: Option<String>,
        /// text, or json / ndjson (a record a line).
        #[arg(short = 'o', long = "output", value_enum, default_value_t = client::Output::Text)]
        output: client::Output,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Show the hops of one call and the lines logged under its trace id.
    Trace {
        id: String,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// The demo app: fib(n) computed by calling itself through the router.
    DemoFib,
    /// Measure the indexer or the shipper (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Where every part keeps its state.
    #[arg(long, env = "SANDTRAIL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// UI and all HTTP APIs (default 127.0.0.1:7070).
    #[arg(long, env = "SANDTRAIL_LISTEN")]
    pub listen: Option<String>,
    /// The router apps call each other through (default 127.0.0.1:7080).
    #[arg(long, env = "SANDTRAIL_ROUTER_LISTEN")]
    pub router_listen: Option<String>,
    /// How many local agents (hosts) to start (default 3).
    #[arg(long, env = "SANDTRAIL_AGENTS")]
    pub agents: Option<u32>,
    /// Do not deploy the demo app.
    #[arg(long)]
    pub no_demo: bool,
    /// Show every part's log on stderr too (it always goes to
    /// `<data-dir>/sandtrail.log`; without this flag stderr gets warnings only).
    #[arg(long, short)]
    pub verbose: bool,
    /// Serve Mesos-DNS (UDP and TCP) on this address, like 127.0.0.1:8053.
    #[arg(long, env = "SANDTRAIL_DNS_LISTEN")]
    pub dns_listen: Option<String>,
    /// Docker engine for apps with a Docker container, like
    /// unix:///var/run/docker.sock; `none` for no Docker (default: that socket when
    /// it exists).
    #[arg(long, env = "SANDTRAIL_DOCKER")]
    pub docker: Option<String>,
}

#[derive(Args, Debug)]
pub struct SchedulerArgs {
    #[arg(long, env = "SANDTRAIL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Default 127.0.0.1:7071.
    #[arg(long, env = "SANDTRAIL_LISTEN")]
    pub listen: Option<String>,
    /// Serve Mesos-DNS (UDP and TCP) on this address, like 0.0.0.0:53 (default: none;
    /// domain and TTL are `[scheduler] dns_domain` and `dns_ttl_secs`).
    #[arg(long, env = "SANDTRAIL_DNS_LISTEN")]
    pub dns_listen: Option<String>,
    /// High availability: join the leader election and keep the state in ZooKeeper,
    /// like zk://h1:2181,h2:2181/sandtrail (default: none, a lone scheduler with its
    /// state file).
    #[arg(long, env = "SANDTRAIL_ZK")]
    pub zk: Option<String>,
    /// ZooKeeper session timeout in milliseconds (default 10000): how long a leader
    /// that vanished keeps the lead before another takes over.
    #[arg(long, env = "SANDTRAIL_ZK_SESSION_TIMEOUT_MS")]
    pub zk_session_timeout_ms: Option<u64>,
    /// `host:port` the other schedulers and clients reach this one at, written into
    /// the election (default: the listener's bound address).
    #[arg(long, env = "SANDTRAIL_ADVERTISE")]
    pub advertise: Option<String>,
}

#[derive(Args, Debug)]
pub struct IndexerArgs {
    #[arg(long, env = "SANDTRAIL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Default 127.0.0.1:7072.
    #[arg(long, env = "SANDTRAIL_LISTEN")]
    pub listen: Option<String>,
    /// Shard mode (issue 21): own shards of the ingest log, listed in ZooKeeper at
    /// zk://host:port[,...]/path, and fan searches out to their owners. Needs
    /// --ingest-log.
    #[arg(long, env = "SANDTRAIL_ZK")]
    pub zk: Option<String>,
    /// The durable ingest log the shard owners consume (NATS JetStream,
    /// nats://host:4222[,...]).
    #[arg(long, env = "SANDTRAIL_INGEST_LOG")]
    pub ingest_log: Option<String>,
    /// Shards of the cluster (default 6, fixed per cluster).
    #[arg(long, env = "SANDTRAIL_SHARDS")]
    pub shards: Option<u32>,
    /// Owners of each shard (default 2).
    #[arg(long, env = "SANDTRAIL_OWNERS")]
    pub owners: Option<u32>,
    /// host:port peers reach this indexer at (default: the bound listen address).
    #[arg(long, env = "SANDTRAIL_ADVERTISE")]
    pub advertise: Option<String>,
    /// ZooKeeper session timeout in ms (default 10000): a paused or cut-off indexer
    /// gives its shards up after it.
    #[arg(long, env = "SANDTRAIL_ZK_SESSION_TIMEOUT_MS")]
    pub zk_session_timeout_ms: Option<u64>,
}

#[derive(Args, Debug)]
pub struct WebArgs {
    /// Default 127.0.0.1:7070.
    #[arg(long, env = "SANDTRAIL_LISTEN")]
    pub listen: Option<String>,
    #[arg(long, env = "SANDTRAIL_INDEXER")]
    pub indexer: Option<String>,
    /// Scheduler base URL, several comma-separated (schedulers in HA, tried in turn),
    /// or the schedulers' zk://host:port/path.
    #[arg(long, env = "SANDTRAIL_SCHEDULER")]
    pub scheduler: Option<String>,
    /// A deploy or admin token for the Apps and Hosts pages' buttons (scale, restart,
    /// drain...); without it they answer 403 naming the role.
    #[arg(long, env = "SANDTRAIL_DEPLOY_TOKEN")]
    pub deploy_token: Option<String>,
    /// Its token files sign users in; `web/saved-searches.json` in it keeps the saved
    /// searches (without one they live in memory only).
    #[arg(long, env = "SANDTRAIL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    #[arg(long, env = "SANDTRAIL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Host name used on every record and by the scheduler (default: the machine's).
    #[arg(long, env = "SANDTRAIL_NAME")]
    pub name: Option<String>,
    /// Scheduler base URL, several comma-separated (schedulers in HA, tried in turn),
    /// or the schedulers' zk://host:port/path.
    #[arg(long, env = "SANDTRAIL_SCHEDULER")]
    pub scheduler: Option<String>,
    #[arg(long, env = "SANDTRAIL_INDEXER")]
    pub indexer: Option<String>,
    /// Router, /healthz and /metrics of this agent (default 127.0.0.1:7080).
    #[arg(long, env = "SANDTRAIL_ROUTER_LISTEN")]
    pub router_listen: Option<String>,
    /// Address other hosts reach this host's tasks at (default 127.0.0.1).
    #[arg(long, env = "SANDTRAIL_ADDRESS")]
    pub address: Option<String>,
    /// Declared resources, like cpus:4;mem:8192;disk:10240;ports:[31000-32000] (the
    /// Mesos port range dynamic host ports are picked from).
    #[arg(long, env = "SANDTRAIL_RESOURCES")]
    pub resources: Option<String>,
    /// Attributes for constraints, like rack:a;zone:1.
    #[arg(long, env = "SANDTRAIL_ATTRIBUTES")]
    pub attributes: Option<String>,
    /// Docker engine for apps with a Docker container, like
    /// unix:///var/run/docker.sock; `none` for no Docker (default: that socket when
    /// it exists).
    #[arg(long, env = "SANDTRAIL_DOCKER")]
    pub docker: Option<String>,
    /// Publish logs to this durable ingest log (NATS JetStream,
    /// nats://host:4222[,nats://host2:4222...]) instead of an indexer's API; the
    /// indexers' shard owners consume it (issue 21). --indexer is then not needed.
    #[arg(long, env = "SANDTRAIL_INGEST_LOG")]
    pub ingest_log: Option<String>,
    /// Shards of the ingest log (fixed per cluster; default 6): must match the
    /// stream's and the indexers'.
    #[arg(long, env = "SANDTRAIL_SHARDS")]
    pub shards: Option<u32>,
}

/// Where the binary's own log goes besides stderr.
enum LogFile {
    /// Nowhere: stderr has it all (every command but `up`).
    None,
    /// `up`: all of it to this file (appended), and to stderr only warnings, or
    /// all of it with `verbose`. Its parts log much at start and while they run;
    /// on a terminal that pushed the URLs `up` prints out of sight.
    Up { path: PathBuf, verbose: bool },
}

/// The binary's own log: to stderr (and for `up` to a file, see [`LogFile`]),
/// filtered by `SANDTRAIL_LOG` (an `EnvFilter` such as `info,indexer=debug`), as
/// text or, with `SANDTRAIL_LOG_FORMAT=json`, one JSON object per line for a
/// collector. Colour codes only on a terminal: in a file or a pipe they were noise
/// in every line. Lines are written as they come (as to stderr): a log line is one
/// small write, and buffering them in a thread would lose the last ones in a crash.
fn init_tracing(file: LogFile) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    type Boxed = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;
    let filter = EnvFilter::try_from_env("SANDTRAIL_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,tantivy=warn,hyper=warn,reqwest=warn"));
    let format = std::env::var("SANDTRAIL_LOG_FORMAT").unwrap_or_default();
    let format = format.trim().to_ascii_lowercase();
    let json = format == "json";
    fn layer<W>(writer: W, json: bool, ansi: bool) -> Boxed
    where
        W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
    {
        let l = tracing_subscriber::fmt::layer().with_writer(writer);
        if json {
            l.json().with_ansi(false).boxed()
        } else {
            l.with_ansi(ansi).boxed()
        }
    }
    let stderr = layer(std::io::stderr, json, std::io::stderr().is_terminal());
    let mut layers: Vec<Boxed> = Vec::new();
    match file {
        LogFile::None => layers.push(stderr),
        LogFile::Up { path, verbose } => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot open the log file {}", path.display()))?;
            layers.push(layer(std::sync::Mutex::new(out), json, false));
            layers.push(if verbose {
                stderr
            } else {
                stderr.with_filter(LevelFilter::WARN).boxed()
            });
        }
    }
    tracing_subscriber::registry()
        .with(layers.with_filter(filter))
        .init();
    if !matches!(format.as_str(), "" | "text" | "json") {
        tracing::warn!(
            value = format,
            "SANDTRAIL_LOG_FORMAT is not \"text\" or \"json\"; logging as text"
        );
    }
    Ok(())
}

/// The client commands' `--server` et al. (`config::client`), with a `zk://` scheduler
/// list resolved to the schedulers in the election now, as agents and `web` do.
async fn client_args(
    server: client::ServerArgs,
    cfg: &config::Config,
    token: Option<String>,
) -> anyhow::Result<client::ServerArgs> {
    let mut server = config::client(server, cfg, token)?;
    if let Some(list) = server.server.as_deref().filter(|s| s.starts_with("zk://")) {
        server.server = Some(scheduler::ha::resolve_schedulers(list).await?);
    }
    Ok(server)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Everything the binary writes (state, indexes, checkpoints, spools, the token) is
    // its own alone unless a mode says otherwise: tasks run as other users on this
    // host (SECURITY.md, "Tasks"). The few directories tasks must pass through are
    // made searchable explicitly; tasks get back a umask of 022.
    // SAFETY: umask only sets this process's file mode mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    let cli = Cli::parse();
    let for_client = !matches!(
        cli.command,
        Command::Up(_)
            | Command::Scheduler(_)
            | Command::Indexer(_)
            | Command::Web(_)
            | Command::Agent(_)
            | Command::DemoFib
            | Command::Bench(_)
    );
    let cfg = config::Config::load(cli.config.as_deref(), for_client)?;
    // Every command's settings are resolved in `config`, flag > env > file > default.
    let token = cli.token;
    match &cli.command {
        Command::DemoFib => {}
        Command::Up(args) => {
            let (data_dir, verbose) = config::up_logging(args, &cfg);
            init_tracing(LogFile::Up {
                path: data_dir.join(config::UP_LOG),
                verbose,
            })?;
        }
        _ => init_tracing(LogFile::None)?,
    }
    if matches!(
        cli.command,
        Command::Apps { .. }
            | Command::Versions { .. }
            | Command::Completions { .. }
            | Command::Search { .. }
            | Command::Tail { .. }
            | Command::Trace { .. }
    ) {
        // Clients end quietly when their reader goes away (`sandtrail search ... | head`)
        // instead of panicking on a broken pipe; servers keep Rust's default of
        // ignoring SIGPIPE and handle EPIPE as an error.
        // SAFETY: only restores the default action for SIGPIPE; no handler of ours is replaced.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match cli.command {
        Command::Up(args) => serve::up(config::up(args, &cfg, token), cfg).await,
        Command::Scheduler(args) => {
            serve::scheduler(config::scheduler(args, &cfg, token), cfg).await
        }
        Command::Indexer(args) => {
            let shards = config::indexer_shards(&args, &cfg)?;
            serve::indexer(config::indexer(args, &cfg, token), shards, cfg).await
        }
        Command::Web(args) => serve::web(config::web(args, &cfg, token)?, cfg).await,
        Command::Agent(args) => serve::agent(config::agent(args, &cfg, token)?, cfg).await,
        Command::Deploy { file, wait, server } => {
            ops::deploy(&client_args(server, &cfg, token).await?, &file, &wait).await
        }
        Command::Scale {
            app,
            instances,
            wait,
            server,
        } => {
            ops::scale(
                &client_args(server, &cfg, token).await?,
                &app,
                instances,
                &wait,
            )
            .await
        }
        Command::Restart { app, wait, server } => {
            ops::restart(&client_args(server, &cfg, token).await?, &app, &wait).await
        }
        Command::Kill {
            task,
            scale,
            wait,
            server,
        } => {
            ops::kill(
                &client_args(server, &cfg, token).await?,
                &task,
                scale,
                &wait,
            )
            .await
        }
        Command::Versions { app, server } => {
            ops::versions(&client_args(server, &cfg, token).await?, &app).await
        }
        Command::Rollback {
            app,
            version,
            wait,
            server,
        } => {
            let server = client_args(server, &cfg, token).await?;
            ops::rollback(&server, &app, version.as_deref(), &wait).await
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "sandtrail",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Apps { server } => client::apps(&client_args(server, &cfg, token).await?).await,
        Command::Search {
            query,
            since,
            from,
            to,
            limit,
            all,
            output,
            server,
        } => {
            let args = client::SearchArgs {
                query,
                since,
                from,
                to,
                limit,
                all,
                output,
            };
            client::search(&client_args(server, &cfg, token).await?, &args).await
        }
        Command::Tail {
            apps,
            app_regex,
            query,
            since,
            output,
            server,
        } => {
            let (apps, patterns) = client::app_selectors(apps, app_regex)?;
            let args = client::TailArgs {
                apps,
                patterns,
                query,
                since,
                output,
            };
            client::tail(&client_args(server, &cfg, token).await?, &args).await
        }
        Command::Trace { id, server } => {
            client::trace(&client_args(server, &cfg, token).await?, &id).await
        }
        Command::DemoFib => demo::fib().await.context("demo-fib"),
        Command::Bench(BenchCommand::Ingest(a)) => {
            let report = indexer::bench::run(indexer::bench::BenchOptions {
                records: a.records,
                ndjson: a.ndjson,
                work_dir: a.work_dir,
                fresh_rate: a.fresh_rate,
                ..Default::default()
            })
            .await?;
            print!("{}", report.to_markdown());
            Ok(())
        }
        Command::Bench(BenchCommand::Indexer(a)) => {
            let exe = std::env::current_exe().context("cannot find this executable")?;
            let report = indexer::bench::external::run(indexer::bench::external::ExternalOptions {
                binary: exe,
                ndjson: a.ndjson.unwrap_or_else(|| {
                    PathBuf::from(format!("/tmp/sandtrail-bench/corpus-{}.ndjson", a.records))
                }),
                records: a.records,
                data_dir: a.data_dir,
                search_runs: a.search_runs,
                ..Default::default()
            })
            .await?;
            print!("{}", report.to_markdown());
            Ok(())
        }
        Command::Bench(BenchCommand::Pipeline(a)) => {
            if let Some(file) = a.write {
                return tokio::task::spawn_blocking(move || {
                    bench_pipeline::write_paced(&file, a.rate)
                })
                .await?;
            }
            let mut scenarios = Vec::new();
            for name in &a.scenarios {
                let (agents, tasks, lines, rate) = match name.as_str() {
                    "1x1" => (1, 1, a.lines, 0),
                    "3x3" => (3, 3, a.lines, 0),
                    "50slow" => (3, 50, a.slow_lines, a.slow_rate),
                    other => {
                        anyhow::bail!("unknown scenario {other:?}: expected 1x1, 3x3 or 50slow")
                    }
                };
                for _ in 0..a.runs {
                    scenarios.push(bench_pipeline::Scenario {
                        name: name.clone(),
                        agents,
                        tasks,
                        lines,
                        rate,
                    });
                }
            }
            let rows = bench_pipeline::run(bench_pipeline::Options {
                corpus: a.corpus,
                work_dir: a.work_dir,
                scenarios,
                writer_memory: indexer::IndexerConfig::default().writer_memory_bytes,
            })
            .await?;
            print!("{}", bench_pipeline::to_markdown(&rows));
            print!("{}", bench_pipeline::medians(&rows));
            Ok(())
        }
        Command::Bench(BenchCommand::Ship(a)) => {
            if a.sink {
                return Ok(tokio::task::spawn_blocking(agent::bench::sink_main).await??);
            }
            let exe = std::env::current_exe().context("cannot find this executable")?;
            let opts = agent::bench::BenchOptions {
                corpus: a.corpus,
                work_dir: a.work_dir,
                files: a.files,
                idle_files: a.idle_files,
                idle_secs: a.idle_secs,
                sink_command: vec![
                    exe.to_string_lossy().into_owned(),
                    "bench".into(),
                    "ship".into(),
                    "--sink".into(),
                ],
                ..Default::default()
            };
            let report = tokio::task::spawn_blocking(move || agent::bench::run(opts)).await??;
            print!("{}", report.to_markdown());
            Ok(())
        }
    }
}
