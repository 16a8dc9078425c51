//! End to end: the real binary's `sandtrail up` removes finished sandboxes after the
//! configured GC delay, and only sandboxes whose lines its shipper delivered: every
//! task whose sandbox went is found in search.

use anyhow::{bail, Context};
use protocol::SearchResponse;
use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `sandtrail up` with one agent, stopped with SIGTERM when dropped.
struct Up {
    child: Child,
    web: String,
}

impl Up {
    fn start(dir: &Path, config: &Path) -> anyhow::Result<Up> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sandtrail"))
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--router-listen",
                "127.0.0.1:0",
            ])
            .args(["--agents", "1", "--no-demo"])
            .arg("--data-dir")
            .arg(dir)
            .arg("--config")
            .arg(config)
            .env("SANDTRAIL_LOG", "info")
            .env_remove("SANDTRAIL_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                println!("[up] {line}");
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).context("up did not print its URLs")?;
            if let Some(u) = line.trim().strip_prefix("web UI:") {
                let web = u.trim().trim_end_matches('/').to_string();
                return Ok(Up { child, web });
            }
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}

/// The task directories under `app_dir` now.
fn sandboxes(app_dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(app_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_sandboxes_are_collected_once_shipped() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("sandtrail.toml");
    std::fs::write(&config, "[agent]\ngc_delay_secs = 1\n")?;
    let up = Up::start(dir.path(), &config)?;
    let token = std::fs::read_to_string(dir.path().join("token"))?
        .trim()
        .to_string();
    // Reading needs the token as much as writing (issue 15).
    let http = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {}", token).parse()?,
            )]
            .into_iter()
            .collect(),
        )
        .build()?;

    // Each task prints its id and ends; the scheduler starts the next one.
    let app = serde_json::json!({
        "id": "/gcdemo",
        "cmd": "echo \"gc-line $MESOS_TASK_ID\"; sleep 0.2",
        "instances": 1,
        "cpus": 0.1,
        "mem": 32,
        "backoffSeconds": 0.2,
        "backoffFactor": 1.0,
    });
    let resp = http
        .post(format!("{}/v2/apps", up.web))
        .header(protocol::TOKEN_HEADER, &token)
        .json(&app)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("deploy: {} {}", resp.status(), resp.text().await?);
    }

    // Watch sandboxes come and go until a few were collected.
    let app_dir = dir.path().join("node-1/sandboxes/gcdemo");
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let removed = loop {
        let now = sandboxes(&app_dir);
        seen.extend(now.iter().cloned());
        let removed: BTreeSet<String> = seen.difference(&now).cloned().collect();
        if removed.len() >= 3 {
            break removed;
        }
        if Instant::now() > deadline {
            bail!("only {removed:?} of {seen:?} were collected within 90 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Removed only once shipped: each removed task's line was acknowledged, so it is
    // (or within the indexer's refresh interval becomes) searchable.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let res: SearchResponse = http
            .get(format!("{}/api/v1/search", up.web))
            .query(&[("q", "app:gcdemo"), ("limit", "1000"), ("start", "now-1h")])
            .send()
            .await?
            .json()
            .await?;
        let shipped: BTreeSet<String> = res
            .hits
            .iter()
            .filter(|r| r.msg.starts_with("gc-line "))
            .map(|r| r.task.clone())
            .collect();
        let missing: Vec<&String> = removed.difference(&shipped).collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("sandboxes of {missing:?} were removed but their lines are not in search");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(up);
    Ok(())
}
