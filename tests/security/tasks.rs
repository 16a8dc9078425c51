//! Security suite: what a task can reach (issue 15, "apps cannot reach the control
//! plane's secrets"). A real `sandtrail up` (run as root, as CI does: the suite needs
//! root to see users switched for real) is given hostile apps: one reading the
//! token through `../../../../token`, one turning its `stdout` into a symlink to the
//! token, one dumping its environment, one reading another task's sandbox, and apps
//! naming a Marathon `user`. Each case is kept as a regression test.

use crate::common::Proc;
use anyhow::{bail, Context};
use protocol::{SearchResponse, TOKEN_HEADER};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use std::time::Duration;

/// `sandtrail up` with one agent and no demo, in its own data dir.
struct Cluster {
    /// `None` when the caller runs `up` itself.
    _proc: Option<Proc>,
    url: String,
    token: String,
    data: PathBuf,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Cluster {
    /// Starts `up`; `env` is added to its environment (`SANDTRAIL_TOKEN` among them
    /// sets the token, else `up` makes one in `<data dir>/token`).
    fn start(env: &[(&str, String)]) -> anyhow::Result<Cluster> {
        Cluster::start_in(None, env)
    }

    /// [`Cluster::start`] with the data dir at `sub` below the temporary directory.
    fn start_in(sub: Option<&str>, env: &[(&str, String)]) -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let data = match sub {
            Some(s) => dir.path().join(s),
            None => dir.path().to_path_buf(),
        };
        let args: Vec<String> = [
            "up",
            "--listen",
            "127.0.0.1:0",
            "--router-listen",
            "127.0.0.1:0",
            "--agents",
            "1",
            "--no-demo",
            "--data-dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([data.display().to_string()])
        .collect();
        let (proc, url) = Proc::start("up", dir.path(), &args, "web UI:", env)?;
        let token = match env.iter().find(|(k, _)| *k == "SANDTRAIL_TOKEN") {
            Some((_, t)) => t.clone(),
            None => std::fs::read_to_string(data.join("token"))?
                .trim()
                .to_string(),
        };
        Ok(Cluster {
            _proc: Some(proc),
            url: url.trim_end_matches('/').to_string(),
            token,
            data,
            _dir: dir,
            http: reqwest::Client::new(),
        })
    }

    fn data(&self) -> PathBuf {
        self.data.clone()
    }

    fn token_path(&self) -> PathBuf {
        self.data().join("token")
    }

    async fn deploy(&self, app: serde_json::Value) -> anyhow::Result<()> {
        let resp = self
            .http
            .post(format!("{}/v2/apps", self.url))
            .header(TOKEN_HEADER, &self.token)
            .json(&app)
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("deploy {app}: {} {}", resp.status(), resp.text().await?);
        }
        Ok(())
    }

    async fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .header(TOKEN_HEADER, &self.token)
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("GET {path}: {} {}", resp.status(), resp.text().await?);
        }
        Ok(resp.json().await?)
    }

    async fn search(&self, q: &str) -> anyhow::Result<SearchResponse> {
        let resp = self
            .http
            .get(format!("{}/api/v1/search", self.url))
            .header(TOKEN_HEADER, &self.token)
            .query(&[("q", q), ("limit", "1000"), ("start", "now-1h")])
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("search {q:?}: {} {}", resp.status(), resp.text().await?);
        }
        Ok(resp.json().await?)
    }

    /// The first sandbox of `app` once it has one.
    async fn sandbox(&self, app: &str) -> anyhow::Result<PathBuf> {
        let app_dir = self.data().join("node-1/sandboxes").join(app);
        eventually(&format!("a sandbox of {app}"), || {
            let first = std::fs::read_dir(&app_dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .find(|p| p.join("task.json").exists());
            async move { Ok(first) }
        })
        .await
    }

    /// `stream` of `app`'s first task once it holds `needle`.
    async fn output(&self, app: &str, stream: &str, needle: &str) -> anyhow::Result<String> {
        let sandbox = self.sandbox(app).await?;
        eventually(&format!("{needle:?} in {app}'s {stream}"), || {
            let text = std::fs::read_to_string(sandbox.join(stream)).unwrap_or_default();
            async move { Ok(text.contains(needle).then_some(text)) }
        })
        .await
    }

    /// The value of a counter of the agent in `up`'s `/metrics`.
    async fn metric(&self, name: &str) -> anyhow::Result<u64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .header(TOKEN_HEADER, &self.token)
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum())
    }
}

/// [`crate::common::eventually`] within the suite's 60 s.
async fn eventually<T, F, Fut>(what: &str, check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    crate::common::eventually(what, Duration::from_secs(60), check).await
}

fn app(id: &str, cmd: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id, "cmd": cmd, "instances": 1, "cpus": 0.1, "mem": 64,
        "backoffSeconds": 60,
    })
}

/// The uid `id -u` printed as the first line of a task's stdout.
fn printed_uid(stdout: &str) -> anyhow::Result<u32> {
    let line = stdout.lines().next().context("no output")?;
    line.trim()
        .parse()
        .with_context(|| format!("{line:?} is not a uid"))
}

fn owner(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.uid()).unwrap_or(u32::MAX)
}

/// The issue's own case (issue 15: an app deployed as `cat ../../../../token; id`
/// printed the cluster token and `uid=0(root)`), with what else a task could reach:
/// another task's sandbox, the listing of the sandboxes, and the agent's environment,
/// which here holds the token as `SANDTRAIL_TOKEN` (as `up` started by a service
/// manager would have it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_reads_no_token_no_other_sandbox_and_no_credential_in_its_env() -> anyhow::Result<()>
{
    let token = format!("tok{:x}", std::process::id() as u64 * 7_919 + 0x5eed_cafe);
    let c = Cluster::start(&[
        ("SANDTRAIL_TOKEN", token.clone()),
        ("SANDTRAIL_EXTRA_SECRET", "agent-only-value".into()),
    ])?;

    // The token, four levels up from the sandbox, as the issue found it (with
    // `SANDTRAIL_TOKEN` set, `up` writes no file: put it where `up` would).
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(c.token_path())?
            .write_all(format!("{token}\n").as_bytes())?;
    }
    c.deploy(app(
        "/thief",
        "id -u; cat ../../../../token; id; env; ls -l /proc/self/fd; echo > mine-secret; \
         for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/environ; done 2>/dev/null \
         | grep '^SANDTRAIL_TOKEN' | sed 's/^/environ of another process: /'; \
         echo thief-done; echo thief-err-done >&2; sleep 600",
    ))
    .await?;
    let out = c.output("thief", "stdout", "thief-done").await?;
    // Wait for a marker written last: `cat` writes its message in several calls,
    // and a read between them saw the path without "Permission denied".
    let err = c.output("thief", "stderr", "thief-err-done").await?;
    assert!(
        err.contains("Permission denied"),
        "reading the token must be refused: {err}"
    );
    // Its own logger is a fork of the agent, environment included: made
    // non-dumpable, its `/proc/<pid>/environ` is not the task's to read.
    assert!(!out.contains(&token), "the token leaked: {out}");
    let thief_uid = printed_uid(&out)?;
    assert_ne!(thief_uid, 0, "a task must not run as root: {out}");
    assert!(!out.contains("uid=0("), "{out}");
    let thief_box = c.sandbox("thief").await?;
    assert_eq!(
        owner(&thief_box),
        thief_uid,
        "the sandbox is the task's own"
    );

    // Its environment: nothing of the agent's but the documented variables.
    let env: Vec<&str> = out.lines().filter(|l| l.contains('=')).collect();
    let documented = [
        "SANDTRAIL_APP_ID=",
        "SANDTRAIL_TASK_ID=",
        "SANDTRAIL_HOST=",
        "SANDTRAIL_ROUTER=",
    ];
    for line in &env {
        if line.starts_with("SANDTRAIL_") {
            assert!(
                documented.iter().any(|d| line.starts_with(d)),
                "an agent variable reached the task: {line}"
            );
        }
        assert!(!line.contains("agent-only-value"), "{line}");
    }
    // No descriptor of the agent (its sockets, index, state or token files) is
    // inherited: `ls` sees its stdio and the directory it reads, nothing else.
    let fds: Vec<&str> = out.lines().filter(|l| l.contains(" -> ")).collect();
    assert!(!fds.is_empty(), "no fd listing in {out}");
    for fd in &fds {
        let target = fd.rsplit(" -> ").next().unwrap_or_default();
        assert!(
            target == "/dev/null" || target.starts_with("pipe:") || target.starts_with("/proc/"),
            "the task inherited {fd}"
        );
    }
    for wanted in [
        "MESOS_SANDBOX=",
        "MARATHON_APP_ID=/thief",
        "HOST=",
        "PORT0=",
    ] {
        assert!(
            env.iter().any(|l| l.starts_with(wanted)),
            "{wanted} missing from {env:?}"
        );
    }

    // A second task (no `user` either) gets a uid of its own and cannot read the
    // first one's sandbox, nor list the sandboxes.
    let victim_file = thief_box.join("mine-secret");
    c.deploy(app(
        "/neighbour",
        &format!(
            "id -u; cat {}; ls ..; ls ../..; echo neighbour-done; echo neighbour-err-done >&2; sleep 600",
            victim_file.display()
        ),
    ))
    .await?;
    let out = c.output("neighbour", "stdout", "neighbour-done").await?;
    let err = c
        .output("neighbour", "stderr", "neighbour-err-done")
        .await?;
    let uid = printed_uid(&out)?;
    assert!(uid != 0 && uid != thief_uid, "uids {uid} and {thief_uid}");
    assert!(
        err.matches("Permission denied").count() >= 3,
        "another sandbox and the listings must be refused: {err}"
    );

    // What the shipper sent holds no token either.
    eventually("the thief's lines in search", || async {
        let r = c.search("app:thief").await?;
        Ok(r.hits
            .iter()
            .any(|h| h.msg.contains("thief-done"))
            .then_some(()))
    })
    .await?;
    let r = c.search("app:thief").await?;
    assert!(
        r.hits.iter().all(|h| !h.msg.contains(&token)),
        "the token is searchable"
    );
    Ok(())
}

/// Marathon's `user` was accepted and ignored; it is honoured now, and a user that
/// does not exist (or root) fails the task with a reason in the app's last failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marathon_user_is_honoured_and_a_missing_or_root_user_fails_the_task() -> anyhow::Result<()>
{
    let c = Cluster::start(&[])?;
    let mut named = app("/named", "id -u; id -un; echo named-done; sleep 600");
    named["user"] = "nobody".into();
    c.deploy(named).await?;
    let out = c.output("named", "stdout", "named-done").await?;
    assert_eq!(out.lines().take(2).collect::<Vec<_>>(), ["65534", "nobody"]);

    for (id, user, reason) in [
        ("/ghost", "no-such-user-sandtrail", "no such user"),
        ("/rooted", "root", "never run as root"),
    ] {
        let mut a = app(id, "echo should-not-run");
        a["user"] = user.into();
        c.deploy(a).await?;
        let failure = eventually(&format!("{id}'s launch failure"), || async {
            let v = c.get_json(&format!("/v2/apps{id}")).await?;
            Ok(v["app"]["lastTaskFailure"]["message"]
                .as_str()
                .map(str::to_string))
        })
        .await?;
        assert!(
            failure.contains(user) && failure.contains(reason),
            "{id}: {failure}"
        );
    }
    Ok(())
}

/// The shipper followed a `stdout` that is a symlink to any file the agent (root)
/// can read, the token included (issue 15). A task links its `stdout` and a rotation
/// name to the token: nothing of it is shipped, and the refusals are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdout_symlinked_to_the_token_ships_nothing_of_it() -> anyhow::Result<()> {
    let c = Cluster::start(&[])?;
    let token = c.token.clone();
    let cmd = format!(
        "echo linker-ready; while [ ! -e go ]; do sleep 0.1; done; \
         rm stdout; ln -s {tok} stdout; ln -s {tok} stdout.7; mkfifo stderr.9; \
         echo linked >&2; sleep 600",
        tok = c.token_path().display()
    );
    c.deploy(app("/linker", &cmd)).await?;
    // Its first line is shipped before the swap, so the shipper follows the sandbox.
    eventually("linker-ready in search", || async {
        let r = c.search("app:linker").await?;
        Ok(r.hits.iter().any(|h| h.msg == "linker-ready").then_some(()))
    })
    .await?;
    let before = c.metric("sandtrail_agent_files_refused_total").await?;
    let sandbox = c.sandbox("linker").await?;
    std::fs::write(sandbox.join("go"), "")?;
    c.output("linker", "stderr", "linked").await?;
    eventually("the refusals counted", || async {
        let n = c.metric("sandtrail_agent_files_refused_total").await?;
        Ok((n >= before + 3).then_some(()))
    })
    .await?;
    // The line after the swap is shipped, so the shipper has scanned past the links.
    eventually("linked in search", || async {
        let r = c.search("app:linker").await?;
        Ok(r.hits.iter().any(|h| h.msg == "linked").then_some(()))
    })
    .await?;
    let r = c.search(&token).await?;
    assert_eq!(r.total, 0, "the token is searchable: {:?}", r.hits);
    let r = c.search("app:linker").await?;
    assert!(
        r.hits.iter().all(|h| !h.msg.contains(&token)),
        "{:?}",
        r.hits
    );
    Ok(())
}

/// `sandtrail up` run as `nobody` (the suite runs as root), killed when dropped.
struct Unprivileged {
    _proc: Proc,
    url: String,
}

impl Unprivileged {
    fn start(dir: &Path) -> anyhow::Result<Unprivileged> {
        std::os::unix::fs::chown(dir, Some(65534), Some(65534))?;
        let args: Vec<String> = [
            "up",
            "--listen",
            "127.0.0.1:0",
            "--router-listen",
            "127.0.0.1:0",
            "--agents",
            "1",
            "--no-demo",
            "--data-dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([dir.display().to_string()])
        .collect();
        let mut proc = Proc::spawn("up as nobody", dir, &args, &[], |cmd| {
            cmd.uid(65534).gid(65534);
        })?;
        let url = proc.printed(&["web UI:"])?.remove(0);
        Ok(Unprivileged {
            _proc: proc,
            url: url.trim_end_matches('/').to_string(),
        })
    }
}

/// An agent that is not root cannot switch users: its tasks run as itself, and an
/// app naming another user fails saying why, rather than running as the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprivileged_agent_runs_tasks_as_itself_and_refuses_other_users() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let up = Unprivileged::start(dir.path())?;
    let c = Cluster {
        _proc: None,
        url: up.url.clone(),
        token: std::fs::read_to_string(dir.path().join("token"))?
            .trim()
            .to_string(),
        data: dir.path().to_path_buf(),
        _dir: dir,
        http: reqwest::Client::new(),
    };
    c.deploy(app("/plain", "id -u; echo plain-done; sleep 600"))
        .await?;
    let out = c.output("plain", "stdout", "plain-done").await?;
    assert_eq!(printed_uid(&out)?, 65534, "{out}");
    let mut other = app("/other", "echo should-not-run");
    other["user"] = "daemon".into();
    c.deploy(other).await?;
    let failure = eventually("/other's launch failure", || async {
        let v = c.get_json("/v2/apps/other").await?;
        Ok(v["app"]["lastTaskFailure"]["message"]
            .as_str()
            .map(str::to_string))
    })
    .await?;
    assert!(
        failure.contains("\"daemon\"") && failure.contains("uid 65534, not root"),
        "{failure}"
    );
    drop(up);
    Ok(())
}

/// A data dir below a directory only its owner may search (`mkdtemp`'s 0700, a home
/// directory): tasks cannot reach their sandbox by path, yet they run in it and
/// their lines are shipped, because the task and its logger enter it before
/// dropping privileges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_and_ship_under_a_data_dir_below_a_private_directory() -> anyhow::Result<()> {
    let c = Cluster::start_in(Some("private/data"), &[])?;
    {
        use std::os::unix::fs::PermissionsExt;
        let private = c.data().parent().context("parent")?.to_path_buf();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))?;
    }
    c.deploy(app("/hidden", "id -u; echo hidden-line; sleep 600"))
        .await?;
    let out = c.output("hidden", "stdout", "hidden-line").await?;
    assert_ne!(printed_uid(&out)?, 0);
    eventually("hidden-line in search", || async {
        let r = c.search("app:hidden").await?;
        Ok(r.hits.iter().any(|h| h.msg == "hidden-line").then_some(()))
    })
    .await?;
    Ok(())
}

/// `[agent] task_user` (here as `SANDTRAIL_AGENT_TASK_USER`) runs apps without a
/// `user` as that one user instead of a uid of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_task_user_runs_apps_without_a_user() -> anyhow::Result<()> {
    let c = Cluster::start(&[("SANDTRAIL_AGENT_TASK_USER", "nobody".into())])?;
    c.deploy(app("/plain", "id -un; echo plain-done; sleep 600"))
        .await?;
    let out = c.output("plain", "stdout", "plain-done").await?;
    assert_eq!(out.lines().next(), Some("nobody"), "{out}");
    Ok(())
}
