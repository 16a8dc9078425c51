//! The command-line clients that change apps: `deploy`, `scale`, `restart`, `kill`,
//! `versions`, `rollback`, on the scheduler's Marathon API.
//!
//! Each change is a Marathon deployment; the command follows it to its end, as
//! Nomad's `job run` does, by polling `/v2/deployments` rather than holding the event
//! stream open: a poll every half second costs nothing at this scale and survives a
//! scheduler restart or a proxy that cuts long streams. While it waits it prints why
//! the app is not there yet (the queue's reason, a task failure of this deployment)
//! when that changes, and it ends non-zero on `--timeout` or when the deployment was
//! replaced by another change or rolled back.

use crate::client::{error_of, ServerArgs};
use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a change is followed.
#[derive(Args, Debug, Clone)]
pub struct WaitArgs {
    /// Give up (exit 1) when the deployment has not finished within this long: 90s,
    /// 5m, 1h.
    #[arg(long, default_value = "5m", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Start the change and return without following it.
    #[arg(long)]
    pub detach: bool,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    indexer::parse_retention(s).map_err(|_| {
        format!("{s:?} is not a duration: expected a whole number of s, m or h, like 90s or 5m")
    })
}

/// The path of app `id` under `/v2/apps`, without doubled slashes.
fn app_path(id: &str) -> String {
    format!("/v2/apps/{}", id.trim_matches('/'))
}

async fn call(
    server: &ServerArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let client = server.client()?;
    let resp = server
        .send_to(path, |url| {
            let req = client.request(method.clone(), url);
            match body {
                Some(b) => req.json(b),
                None => req,
            }
        })
        .await?;
    if !resp.status().is_success() {
        return Err(error_of(resp).await);
    }
    let text = resp.text().await?;
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text)
        .with_context(|| format!("the scheduler answered {path} with no json"))
}

async fn get(server: &ServerArgs, path: &str) -> anyhow::Result<Value> {
    call(server, reqwest::Method::GET, path, None).await
}

/// The app, or `None` when the scheduler does not know it.
async fn get_app(server: &ServerArgs, id: &str) -> anyhow::Result<Option<Value>> {
    let client = server.client()?;
    let resp = server.send_to(&app_path(id), |url| client.get(url)).await?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !resp.status().is_success() {
        return Err(error_of(resp).await);
    }
    let body: Value = resp.json().await?;
    Ok(Some(body["app"].clone()))
}

/// `sandtrail deploy FILE`: creates the app, or updates it (`PUT`) when it exists.
pub async fn deploy(server: &ServerArgs, file: &Path, wait: &WaitArgs) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let app: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", file.display()))?;
    let Some(id) = app["id"]
        .as_str()
        .filter(|id| !id.trim_matches('/').is_empty())
    else {
        bail!(
            "{} has no \"id\": expected an app definition like {{\"id\": \"/fib\", \"cmd\": ...}}",
            file.display()
        );
    };
    let (verb, dep) = if get_app(server, id).await?.is_some() {
        let dep = call(server, reqwest::Method::PUT, &app_path(id), Some(&app)).await?;
        ("updated", dep)
    } else {
        let created = call(server, reqwest::Method::POST, "/v2/apps", Some(&app)).await?;
        let dep = json!({
            "deploymentId": created["deployments"][0]["id"],
            "version": created["version"],
        });
        ("created", dep)
    };
    println!("{verb} {id}");
    follow(server, id, &dep, wait).await
}

/// `sandtrail scale APP N`.
pub async fn scale(server: &ServerArgs, app: &str, n: u32, wait: &WaitArgs) -> anyhow::Result<()> {
    let change = json!({ "instances": n });
    put_and_follow(server, app, &change, &format!("scaling {app} to {n}"), wait).await
}

/// `PUT /v2/apps/{app}` with `change`, says `what`, and follows the deployment.
async fn put_and_follow(
    server: &ServerArgs,
    app: &str,
    change: &Value,
    what: &str,
    wait: &WaitArgs,
) -> anyhow::Result<()> {
    let dep = call(server, reqwest::Method::PUT, &app_path(app), Some(change)).await?;
    println!("{what}");
    follow(server, app, &dep, wait).await
}

/// `sandtrail restart APP`: a rolling restart.
pub async fn restart(server: &ServerArgs, app: &str, wait: &WaitArgs) -> anyhow::Result<()> {
    let path = format!("{}/restart", app_path(app));
    let dep = call(server, reqwest::Method::POST, &path, None).await?;
    println!("restarting {app}");
    follow(server, app, &dep, wait).await
}

/// `sandtrail kill TASK [--scale]`: the task's app is looked up in `/v2/tasks`.
pub async fn kill(
    server: &ServerArgs,
    task: &str,
    scale: bool,
    wait: &WaitArgs,
) -> anyhow::Result<()> {
    let tasks = get(server, "/v2/tasks").await?;
    let Some(app) = tasks["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["id"].as_str() == Some(task))
        .and_then(|t| t["appId"].as_str())
        .map(String::from)
    else {
        bail!("task {task:?} does not exist: expected a task id as `sandtrail apps` lists them");
    };
    let path = format!("{}/tasks/{task}?scale={scale}", app_path(&app));
    let out = call(server, reqwest::Method::DELETE, &path, None).await?;
    if scale {
        println!("killed {task}; {app} scaled down by one");
        follow(server, &app, &out, wait).await
    } else {
        println!("killed {task}; {app} will replace it");
        Ok(())
    }
}

/// `sandtrail versions APP`: newest first, the current one marked, each with its
/// instances and command so the one to roll back to can be picked.
pub async fn versions(server: &ServerArgs, app: &str) -> anyhow::Result<()> {
    let list = get(server, &format!("{}/versions", app_path(app))).await?;
    let versions: Vec<&str> = list["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    println!("{:<26} {:>9}  COMMAND", "VERSION", "INSTANCES");
    for (i, v) in versions.iter().enumerate() {
        let def = get(server, &format!("{}/versions/{v}", app_path(app))).await?;
        let what = def["cmd"]
            .as_str()
            .map(String::from)
            .or_else(|| {
                def["container"]["docker"]["image"]
                    .as_str()
                    .map(|i| format!("docker {i}"))
            })
            .unwrap_or_default();
        let current = if i == 0 { " (current)" } else { "" };
        println!("{v:<26} {:>9}  {what}{current}", def["instances"]);
    }
    Ok(())
}

/// `sandtrail rollback APP [VERSION]`: back to VERSION, by default the one before
/// the current.
pub async fn rollback(
    server: &ServerArgs,
    app: &str,
    version: Option<&str>,
    wait: &WaitArgs,
) -> anyhow::Result<()> {
    let version = match version {
        Some(v) => v.to_string(),
        None => {
            let list = get(server, &format!("{}/versions", app_path(app))).await?;
            match list["versions"].get(1).and_then(Value::as_str) {
                Some(v) => v.to_string(),
                None => bail!("{app} has one version only: there is nothing to roll back to"),
            }
        }
    };
    let change = json!({ "version": version });
    let what = format!("rolling {app} back to {version}");
    put_and_follow(server, app, &change, &what, wait).await
}

/// Waits for deployment `dep` (`{"deploymentId", "version"}` as the API answers a
/// change) to leave `/v2/deployments`, printing why the app waits when that changes.
async fn follow(
    server: &ServerArgs,
    app: &str,
    dep: &Value,
    wait: &WaitArgs,
) -> anyhow::Result<()> {
    let Some(id) = dep["deploymentId"].as_str() else {
        // A change that changed nothing starts no deployment.
        println!("nothing to deploy: {app} is already so");
        return Ok(());
    };
    let version = dep["version"].as_str().unwrap_or_default().to_string();
    if wait.detach {
        println!("deployment {id} started (version {version})");
        return Ok(());
    }
    let deadline = Instant::now() + wait.timeout;
    let mut said: Option<String> = None;
    loop {
        let deployments = get(server, "/v2/deployments").await?;
        let running = deployments
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d["id"].as_str() == Some(id));
        let state = get_app(server, app).await?;
        if !running {
            return finished(app, id, &version, state.as_ref());
        }
        let why = waiting_for(server, app, &version, state.as_ref()).await?;
        if why.is_some() && why != said {
            eprintln!("{app}: {}", why.as_deref().unwrap_or_default());
            said = why.clone();
        }
        if Instant::now() >= deadline {
            let because = said.map(|w| format!(": {w}")).unwrap_or_default();
            bail!(
                "deployment {id} of {app} did not finish within {}s{because}",
                wait.timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The end of a deployment: success when the app is at its version, else a failure
/// naming what replaced it.
fn finished(app: &str, id: &str, version: &str, state: Option<&Value>) -> anyhow::Result<()> {
    let Some(state) = state else {
        // A destroyed app ends its own deployment by being gone.
        bail!("deployment {id} ended without {app}: the app was destroyed");
    };
    let now = state["version"].as_str().unwrap_or_default();
    if !version.is_empty() && now != version {
        bail!("deployment {id} of {app} was replaced or rolled back: the app is at version {now}, not {version}");
    }
    println!(
        "deployment {id} finished: {app} has {} of {} instances running",
        state["tasksRunning"], state["instances"]
    );
    Ok(())
}

/// Why the app is not at the deployment yet, as the scheduler tells it: the queue's
/// reason for tasks it cannot place, or a task of this deployment that failed.
async fn waiting_for(
    server: &ServerArgs,
    app: &str,
    version: &str,
    state: Option<&Value>,
) -> anyhow::Result<Option<String>> {
    let queue = get(server, "/v2/queue").await?;
    let key = format!("/{}", app.trim_matches('/'));
    let queued = queue["queue"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|q| q["app"]["id"].as_str() == Some(key.as_str()))
        .and_then(|q| q["message"].as_str());
    if let Some(m) = queued {
        return Ok(Some(format!("waiting in the queue: {m}")));
    }
    let failure = state.map(|s| &s["lastTaskFailure"]).filter(|f| {
        // Only this deployment's: versions and timestamps are the server's clock,
        // in one format, so they compare as strings.
        f["timestamp"].as_str().is_some_and(|t| t >= version)
    });
    Ok(failure.map(|f| {
        format!(
            "task {} {} on {}: {}",
            f["taskId"].as_str().unwrap_or("?"),
            f["state"].as_str().unwrap_or("failed"),
            f["host"].as_str().unwrap_or("?"),
            f["message"].as_str().unwrap_or("")
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_durations_and_bad_ones_are_named() {
        assert_eq!(parse_timeout("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("5m"), Ok(Duration::from_secs(300)));
        for bad in ["", "5", "0s", "soon", "-1m"] {
            let e = parse_timeout(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn a_deployment_replaced_by_another_version_is_a_failure() {
        let app = json!({"version": "2026-01-01T00:00:01.000Z", "tasksRunning": 1, "instances": 1});
        assert!(finished("/fib", "d1", "2026-01-01T00:00:01.000Z", Some(&app)).is_ok());
        let e = finished("/fib", "d1", "2026-01-01T00:00:00.000Z", Some(&app)).unwrap_err();
        assert!(e.to_string().contains("rolled back"), "{e}");
        assert!(finished("/fib", "d1", "x", None).is_err());
    }
}
