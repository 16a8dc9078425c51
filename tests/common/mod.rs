//! What the end-to-end suites share: a `sandtrail` child process started with its
//! token and environment, whose URL is read from the line it prints, and which is
//! killed with SIGKILL when dropped (so a failing test leaves nothing behind; a
//! `sandtrail up` whose tasks must end with it is stopped with SIGTERM first, see
//! [`Proc::term_on_drop`]); a whole `sandtrail up` ([`Up`]); an HTTP client with a
//! token; [`search`]; [`eventually`]; the demo app's Docker image
//! ([`demo_image`]); and [`dig`] for the DNS suites.
//!
//! Each suite keeps its own cluster shape (which parts, which data dirs); only the
//! process handling lives here.

pub mod nats;
pub mod zk;

use anyhow::{bail, Context};
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An HTTP client that sends `Authorization: Bearer TOKEN` with every request.
#[allow(dead_code)] // not every suite talks to the parts itself
pub fn client_with_token(token: &str) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse()?,
    );
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}

/// Polls `check` every 100 ms until it answers `Some`, failing after `within` with
/// the last error it gave.
#[allow(dead_code)] // not every suite waits on a condition of its own
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    loop {
        let last = match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        if Instant::now() > deadline {
            bail!("timed out waiting for {what} (last error: {last:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts `sandtrail agent` `name` on `data_dir` for `scheduler` (one URL or a
/// comma-separated list) without an indexer (its shipper retries, which the control
/// plane suites do not look at) and a router on a free port.
#[allow(dead_code)] // only the control plane suites run a bare agent
pub fn agent_without_indexer(
    cwd: &Path,
    name: &str,
    data_dir: &Path,
    scheduler: &str,
    env: &[(&str, String)],
) -> anyhow::Result<Proc> {
    let args: Vec<String> = [
        "agent",
        "--data-dir",
        &data_dir.display().to_string(),
        "--name",
        name,
        "--scheduler",
        scheduler,
        "--indexer",
        "http://127.0.0.1:1",
        "--router-listen",
        "127.0.0.1:0",
    ]
    .map(String::from)
    .into();
    Ok(Proc::start("agent", cwd, &args, &format!("agent {name}:"), env)?.0)
}

/// `GET url` answered 2xx, its JSON body.
#[allow(dead_code)] // not every suite reads JSON
pub async fn get_json(http: &reqwest::Client, url: &str) -> anyhow::Result<serde_json::Value> {
    Ok(http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// One `sandtrail` process, killed with SIGKILL when dropped.
pub struct Proc {
    child: Child,
    name: &'static str,
    /// Its stdout, a line at a time.
    lines: std::sync::mpsc::Receiver<String>,
    /// Send SIGTERM and wait (up to 30 s) before the SIGKILL of drop.
    term_on_drop: bool,
}

impl Proc {
    /// Starts `sandtrail ARGS` in `cwd` with `env` (and `SANDTRAIL_LOG=warn`) and
    /// returns it with the first word after `prefix` on a line of its stdout (its
    /// URL; an agent's "router" before it is skipped).
    #[allow(dead_code)] // the suites of `up` read several lines with `printed`
    pub fn start(
        name: &'static str,
        cwd: &Path,
        args: &[String],
        prefix: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<(Proc, String)> {
        let mut proc = Proc::spawn(name, cwd, args, env, |_| {})?;
        let url = proc.printed(&[prefix])?.remove(0);
        Ok((proc, url))
    }

    /// Starts `sandtrail ARGS` as [`Proc::start`] does (without a token inherited
    /// from the test's environment), after `with` has set what else the command
    /// needs (a user to run as, say); its stdout is read with [`Proc::printed`].
    pub fn spawn(
        name: &'static str,
        cwd: &Path,
        args: &[String],
        env: &[(&str, String)],
        with: impl FnOnce(&mut Command),
    ) -> anyhow::Result<Proc> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandtrail"));
        cmd.args(args)
            .current_dir(cwd)
            .env("SANDTRAIL_LOG", "warn,scheduler=error")
            .env_remove("SANDTRAIL_TOKEN")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        with(&mut cmd);
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        Ok(Proc {
            child,
            name,
            lines,
            term_on_drop: false,
        })
    }

    /// Makes drop stop it with SIGTERM first, as a user would: a `sandtrail up` then
    /// ends its tasks instead of leaving them running after a failed test.
    #[allow(dead_code)] // not every suite runs tasks
    pub fn term_on_drop(mut self) -> Proc {
        self.term_on_drop = true;
        self
    }

    /// The first word after each of `prefixes` on lines of its stdout, in any
    /// order, waiting up to 60 s for them all ("router" before it is skipped).
    pub fn printed(&mut self, prefixes: &[&str]) -> anyhow::Result<Vec<String>> {
        let mut found: Vec<Option<String>> = vec![None; prefixes.len()];
        let deadline = Instant::now() + Duration::from_secs(60);
        while found.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .with_context(|| format!("{} did not print {prefixes:?}", self.name))?;
            for (i, prefix) in prefixes.iter().enumerate() {
                if let Some(rest) = line.trim().strip_prefix(prefix) {
                    let rest = rest.trim().trim_start_matches("router").trim();
                    found[i] = Some(rest.split_whitespace().next().unwrap_or("").to_string());
                }
            }
        }
        Ok(found.into_iter().flatten().collect())
    }

    #[allow(dead_code)] // not every suite looks at the pid
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&mut self, sig: &str) -> anyhow::Result<()> {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()?
            .success();
        if !ok {
            bail!("kill {sig} {} failed", self.name);
        }
        Ok(())
    }

    /// Waits up to `within` for it to exit on its own, with its status.
    #[allow(dead_code)] // only the HA suite waits for a part to give up
    pub fn wait_exit(&mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} still runs after {within:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (what `Child::kill` sends), reaped.
    #[allow(dead_code)] // not every suite kills a part
    pub fn kill9(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM and wait for a clean exit (the agent ships what it read and saves).
    #[allow(dead_code)] // not every suite stops a part cleanly
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.signal("-TERM")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("{} exited with {status}", self.name);
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} did not stop within 30 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.term_on_drop && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.signal("-TERM");
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `promtool check metrics` (Debian's `prometheus`, installed by
/// scripts/test-deps.sh) over a `/metrics` text, failing with what it said.
#[allow(dead_code)] // only the metrics suites check expositions
pub fn promtool_check(what: &str, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("promtool (Debian's prometheus; scripts/test-deps.sh installs it)")?;
    check
        .stdin
        .take()
        .context("stdin")?
        .write_all(text.as_bytes())?;
    let out = check.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "promtool refused the {what}'s /metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A running `sandtrail up` on free ports, stopped with SIGTERM (a graceful
/// shutdown, which ends its tasks) when dropped.
#[allow(dead_code)] // only the `up` suites start one
pub struct Up {
    pub proc: Proc,
    pub web: String,
    pub router: String,
    pub token: String,
    pub dir: tempfile::TempDir,
}

#[allow(dead_code)] // only the `up` suites start one
impl Up {
    /// `sandtrail up` with its demo app.
    pub fn start() -> anyhow::Result<Up> {
        Up::start_with(&[])
    }

    /// `sandtrail up` with `extra` arguments (e.g. `--no-demo`).
    pub fn start_with(extra: &[&str]) -> anyhow::Result<Up> {
        let dir = tempfile::tempdir()?;
        let args = [
            "up",
            "--listen",
            "127.0.0.1:0",
            "--router-listen",
            "127.0.0.1:0",
            // The parts' log on stderr too (it goes to the data dir's sandtrail.log),
            // so a failing test shows it.
            "--verbose",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .chain([
            "--data-dir".to_string(),
            dir.path().to_str().context("utf-8 temp dir")?.to_string(),
        ])
        .collect::<Vec<_>>();
        let env = [("SANDTRAIL_LOG", "info".to_string())];
        let mut proc = Proc::spawn("up", dir.path(), &args, &env, |_| {})?.term_on_drop();
        let urls = proc.printed(&["web UI:", "router:"])?;
        let token = std::fs::read_to_string(dir.path().join("token"))?
            .trim()
            .to_string();
        Ok(Up {
            proc,
            web: urls[0].trim_end_matches('/').to_string(),
            router: urls[1].clone(),
            token,
            dir,
        })
    }
}

/// `GET /api/v1/search` over the last hour, at most `limit` hits.
#[allow(dead_code)] // only some suites search
pub async fn search(
    http: &reqwest::Client,
    web: &str,
    q: &str,
    limit: usize,
) -> anyhow::Result<protocol::SearchResponse> {
    let resp = http
        .get(format!("{web}/api/v1/search"))
        .query(&[("q", q), ("limit", &limit.to_string()), ("start", "now-1h")])
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("search {q:?}: {} {}", resp.status(), resp.text().await?);
    }
    Ok(resp.json().await?)
}

/// The base the demo image is built on: `scripts/base-image.sh` makes it locally,
/// since nothing can be pulled on these machines.
#[allow(dead_code)] // only the Docker suites build images
pub const BASE_IMAGE: &str = "debian:bookworm-slim";

/// The demo app's image, `sandtrail-demo:<hash>`: the `sandtrail` binary under test
/// (stripped) on [`BASE_IMAGE`], running `sandtrail demo-fib` by default, built with
/// `docker build` when missing. Its tag is the binary's SHA-256, so a rerun with the
/// same binary reuses the image and a rebuilt binary gets a new one (older
/// `sandtrail-demo` tags are removed). `None` (the caller skips, saying so) without
/// a Docker engine or the base image.
#[allow(dead_code)] // only the Docker suites build images
pub fn demo_image() -> anyhow::Result<Option<String>> {
    // The tests of one suite run on threads side by side: one build, not one each.
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let docker = |args: &[&str]| Command::new("docker").args(args).output();
    if !docker(&["image", "inspect", BASE_IMAGE]).is_ok_and(|o| o.status.success()) {
        return Ok(None);
    }
    let exe = env!("CARGO_BIN_EXE_sandtrail");
    let sum = Command::new("sha256sum").arg(exe).output()?;
    anyhow::ensure!(sum.status.success(), "sha256sum {exe} failed");
    let hash = String::from_utf8(sum.stdout)?;
    let image = format!(
        "sandtrail-demo:{}",
        hash.get(..16).context("sha256sum output")?
    );
    if docker(&["image", "inspect", &image])?.status.success() {
        return Ok(Some(image));
    }
    let ctx = tempfile::tempdir()?;
    let bin = ctx.path().join("sandtrail");
    // Stripped, the debug binary is a fraction of the build context.
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(&bin)
        .arg(exe)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(exe, &bin)?;
    }
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM {BASE_IMAGE}\n\
             COPY sandtrail /usr/local/bin/sandtrail\n\
             LABEL sandtrail.test-image=demo\n\
             ENTRYPOINT [\"/usr/local/bin/sandtrail\"]\n\
             CMD [\"demo-fib\"]\n"
        ),
    )?;
    let start = Instant::now();
    let out = Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "-t", &image])
        .arg(ctx.path())
        .output()?;
    if !out.status.success() {
        bail!(
            "docker build of {image} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("built {image} in {:?}", start.elapsed());
    // Older demo images (of earlier binaries) go: only the newest is worth keeping.
    if let Ok(o) = docker(&[
        "images",
        "sandtrail-demo",
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ]) {
        for old in String::from_utf8_lossy(&o.stdout).lines() {
            if old != image {
                let _ = docker(&["rmi", old]);
            }
        }
    }
    Ok(Some(image))
}

/// `dig +short` of `name` and `qtype` at the server (`+tcp` with `tcp`).
#[allow(dead_code)] // only the DNS suites ask with dig
pub fn dig(
    dns: std::net::SocketAddr,
    name: &str,
    qtype: &str,
    tcp: bool,
) -> anyhow::Result<Vec<String>> {
    let (server, port) = (format!("@{}", dns.ip()), dns.port().to_string());
    let out = Command::new("dig")
        .args([
            server.as_str(),
            "-p",
            port.as_str(),
            "+short",
            "+time=2",
            "+tries=1",
            if tcp { "+tcp" } else { "+notcp" },
            qtype,
            name,
        ])
        .output()
        .context("dig not found: run scripts/test-deps.sh (Debian dnsutils)")?;
    if !out.status.success() {
        bail!("dig failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .map(str::to_string)
        .collect())
}
