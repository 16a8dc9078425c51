//! End to end: the real binary's `sandtrail up` removes finished sandboxes after the
//! configured GC delay, and only sandboxes whose lines its shipper delivered: every
//! task whose sandbox went is found in search.

use anyhow::{bail, Context};
use protocol::SearchResponse;
use std::collections::BTreeSet;
use std::path::Path;

use std::time::{Duration, Instant};

mod common;

use common::Up;

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
    let conf_dir = tempfile::tempdir()?;
    let config = conf_dir.path().join("sandtrail.toml");
    std::fs::write(&config, "[agent]\ngc_delay_secs = 1\n")?;
    let config = config.to_str().context("utf-8 temp dir")?;
    let up = Up::start_with(&["--agents", "1", "--no-demo", "--config", config])?;
    let dir = &up.dir;
    // Reading needs the token as much as writing (issue 15).
    let http = common::client_with_token(&up.token)?;

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
        .header(protocol::TOKEN_HEADER, &up.token)
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
