//! End to end (issue 19): Docker apps under the real binary's `sandtrail up`, which
//! offers the machine's Docker engine by default. The app is the demo `fib` baked
//! into a small image built here on the debootstrapped base (`common::demo_image`):
//! 3 instances, hostname UNIQUE, one container per agent; `mem` is each container's
//! memory limit; calls through the router reach them and the trace names the host
//! and task of every hop; their lines are searchable by app and host; an app over
//! its `mem` is OOM-killed and reported as Marathon reports it; a scale down removes
//! a container.

use anyhow::Context;
use std::collections::BTreeSet;
use std::time::Duration;

mod common;

use common::{client_with_token, demo_image, eventually, search, Proc, Up};

/// The demo image, or `None` (the test skips, saying so) without Docker.
fn docker_ready() -> anyhow::Result<Option<String>> {
    let image = demo_image()?;
    if image.is_none() {
        eprintln!(
            "SKIPPED: no Docker engine or no {} image (run scripts/base-image.sh); \
             Docker apps under `up` are NOT tested",
            common::BASE_IMAGE
        );
    }
    Ok(image)
}

/// Sends `req`, failing with the answer unless it is a success.
async fn ok(req: reqwest::RequestBuilder) -> anyhow::Result<()> {
    let resp = req.send().await?;
    let status = resp.status();
    anyhow::ensure!(status.is_success(), "{status}: {}", resp.text().await?);
    Ok(())
}

/// Containers of the app `fib` the engine runs, by the node's labels.
fn containers() -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            "label=sandtrail.app=fib",
            "--filter",
            "label=sandtrail.host",
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_app_under_up_is_limited_spread_routed_searchable_oom_reported_and_scaled_down(
) -> anyhow::Result<()> {
    let Some(image) = docker_ready()? else {
        return Ok(());
    };
    let up = Up::start_with(&["--no-demo"])?;
    let (web, router) = (up.web.clone(), up.router.clone());
    let http = client_with_token(&up.token)?;
    // No `cmd`: the image's own entrypoint and command run the demo.
    let app = serde_json::json!({
        "id": "/fib", "instances": 3, "cpus": 0.5, "mem": 64,
        "portDefinitions": [{"port": 0, "name": "http"}],
        "constraints": [["hostname", "UNIQUE"]],
        "healthChecks": [{"protocol": "COMMAND", "command": {"value": "test -x /usr/local/bin/sandtrail && test -d \"$MESOS_SANDBOX\""},
                          "gracePeriodSeconds": 30, "intervalSeconds": 1, "maxConsecutiveFailures": 3}],
        "container": {"type": "DOCKER", "docker": {"image": image, "network": "HOST"}}
    });
    ok(http.post(format!("{web}/v2/apps")).json(&app)).await?;

    let nodes: BTreeSet<String> = ["node-1", "node-2", "node-3"].map(String::from).into();
    let endpoints: Vec<protocol::ServiceEndpoint> = eventually(
        "three healthy fib containers",
        Duration::from_secs(90),
        || async {
            let resp = http.get(format!("{web}/v1/services/fib")).send().await?;
            if !resp.status().is_success() {
                return Ok(None);
            }
            let eps: Vec<protocol::ServiceEndpoint> = resp.json().await?;
            Ok((eps.len() == 3).then_some(eps))
        },
    )
    .await?;
    let hosts: BTreeSet<String> = endpoints.iter().map(|e| e.host.clone()).collect();
    assert_eq!(hosts, nodes, "one container per agent: {endpoints:?}");
    let ids = containers();
    assert_eq!(ids.len(), 3, "three containers labelled for fib");
    for id in &ids {
        let out = std::process::Command::new("docker")
            .args(["inspect", "--format", "{{.HostConfig.Memory}}", id])
            .output()?;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            (64u64 << 20).to_string(),
            "mem 64 is the container's memory limit (docker inspect {id})"
        );
    }

    let (answer, trace_id) = eventually(
        "fib(10) through the router",
        Duration::from_secs(30),
        || async {
            let resp = http.get(format!("{router}/fib/10")).send().await?;
            if !resp.status().is_success() {
                return Ok(None);
            }
            let trace = resp
                .headers()
                .get(protocol::TRACE_ID_HEADER)
                .context("X-Trace-Id missing")?
                .to_str()?
                .to_string();
            Ok(Some((resp.text().await?, trace)))
        },
    )
    .await?;
    assert_eq!(answer.trim(), "55");

    // The trace: fib(10) is 177 routed calls between the containers, one access
    // record each, naming the host and the task (container) that served it.
    let task_host: std::collections::BTreeMap<String, String> = endpoints
        .iter()
        .map(|e| (e.task.clone(), e.host.clone()))
        .collect();
    let q = format!("trace_id:{trace_id} AND stream:access");
    let hops = eventually(
        "177 access records of the trace",
        Duration::from_secs(30),
        || async {
            let res = search(&http, &web, &q, 1000).await?;
            Ok((res.total >= 177).then_some(res))
        },
    )
    .await?;
    assert_eq!(hops.total, 177, "exactly one access record per hop");
    let mut hop_hosts = BTreeSet::new();
    for h in &hops.hits {
        assert_eq!(h.app, "fib");
        assert_eq!(h.status, Some(200), "{h:?}");
        assert_eq!(
            task_host.get(&h.task),
            Some(&h.host),
            "the hop names the container's task and its host: {h:?}"
        );
        hop_hosts.insert(h.host.clone());
    }
    assert_eq!(
        hop_hosts, nodes,
        "177 hops spread over the three containers"
    );

    let lines = eventually(
        "fib lines from all three hosts",
        Duration::from_secs(30),
        || async {
            let res = search(&http, &web, "app:fib AND stream:stdout", 1000).await?;
            let seen: BTreeSet<String> = res.hits.iter().map(|r| r.host.clone()).collect();
            Ok((seen == nodes).then_some(res))
        },
    )
    .await?;
    assert!(lines.hits.iter().all(|r| r.app == "fib"));
    let by_host = search(&http, &web, "app:fib AND host:node-2", 1000).await?;
    assert!(by_host.total > 0 && by_host.hits.iter().all(|r| r.host == "node-2"));

    // A BRIDGE container has a loopback of its own: it calls fib through the
    // router's listener on the Docker bridge gateway, given as SANDTRAIL_ROUTER.
    let caller = serde_json::json!({
        "id": "/caller", "instances": 1, "mem": 32,
        "cmd": "while true; do curl -fsS \"$SANDTRAIL_ROUTER/fib/7\" && echo \" = fib(7) via $SANDTRAIL_ROUTER\"; sleep 0.5; done",
        "container": {"type": "DOCKER", "docker": {"image": image, "network": "BRIDGE"}}
    });
    ok(http.post(format!("{web}/v2/apps")).json(&caller)).await?;
    let called = eventually(
        "the bridged container's answer from fib",
        Duration::from_secs(60),
        || async {
            let res = search(&http, &web, "app:caller AND stream:stdout", 10).await?;
            Ok(res.hits.into_iter().find(|h| h.msg.contains("fib(7)")))
        },
    )
    .await?;
    assert!(
        called.msg.starts_with("13 = fib(7) via http://") && !called.msg.contains("127.0.0.1"),
        "the bridged container called the router at the bridge gateway: {}",
        called.msg
    );
    ok(http.delete(format!("{web}/v2/apps/caller"))).await?;

    // An app over its `mem`: the OOM kill is the app's `lastTaskFailure`, as
    // Marathon shows a Mesos OOM (`tail` holds a newline-free stream whole).
    let hog = serde_json::json!({
        "id": "/hog", "instances": 1, "mem": 16,
        "cmd": "head -c 200000000 /dev/zero | tail -n 1",
        "container": {"type": "DOCKER", "docker": {"image": image}}
    });
    ok(http.post(format!("{web}/v2/apps")).json(&hog)).await?;
    let failure = eventually(
        "the OOM as the hog's lastTaskFailure",
        Duration::from_secs(60),
        || async {
            let v: serde_json::Value = http
                .get(format!("{web}/v2/apps/hog"))
                .send()
                .await?
                .json()
                .await?;
            let f = &v["app"]["lastTaskFailure"];
            Ok((f["state"] == "TASK_FAILED").then(|| f.clone()))
        },
    )
    .await?;
    let message = failure["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("exceeded its memory limit of 16 MiB") && message.contains("OOM"),
        "{failure}"
    );
    assert!(
        failure["taskId"]
            .as_str()
            .is_some_and(|t| t.starts_with("hog.")),
        "{failure}"
    );
    ok(http.delete(format!("{web}/v2/apps/hog"))).await?;

    // Scale down: one container is stopped and removed.
    ok(http
        .put(format!("{web}/v2/apps/fib"))
        .json(&serde_json::json!({"instances": 2})))
    .await?;
    eventually("two containers left", Duration::from_secs(30), || async {
        Ok((containers().len() == 2).then_some(()))
    })
    .await?;
    up.proc.stop()?;
    // `up` kills its tasks when it stops: no container is left behind.
    eventually("no container left", Duration::from_secs(30), || async {
        Ok(containers().is_empty().then_some(()))
    })
    .await?;
    Ok(())
}

/// Issue 19: `kill -9` of an agent leaves its containers running (as it leaves
/// process tasks), and the restarted agent adopts them under the same task ids:
/// same containers, same tasks in `/v2/tasks`, nothing relaunched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_restarted_keeps_its_containers_under_the_same_task_ids(
) -> anyhow::Result<()> {
    let Some(image) = docker_ready()? else {
        return Ok(());
    };
    const TOKEN: &str = "docker-agent-token";
    let env = [("SANDTRAIL_TOKEN", TOKEN.to_string())];
    let dir = tempfile::tempdir()?;
    let path = |p: &str| dir.path().join(p).display().to_string();
    let args: Vec<String> = [
        "scheduler",
        "--data-dir",
        &path("s"),
        "--listen",
        "127.0.0.1:0",
    ]
    .map(String::from)
    .into();
    let (_sched, url) = Proc::start("scheduler", dir.path(), &args, "scheduler:", &env)?;
    let sched = url.trim_end_matches('/').to_string();
    let args: Vec<String> = [
        "indexer",
        "--data-dir",
        &path("i"),
        "--listen",
        "127.0.0.1:0",
    ]
    .map(String::from)
    .into();
    let (_indexer, idx) = Proc::start("indexer", dir.path(), &args, "indexer:", &env)?;
    let agent_args: Vec<String> = [
        "agent",
        "--data-dir",
        &path("a"),
        "--name",
        "dock-1",
        "--scheduler",
        &sched,
        "--indexer",
        idx.trim_end_matches('/'),
        "--router-listen",
        "127.0.0.1:0",
        "--docker",
        "unix:///var/run/docker.sock",
    ]
    .map(String::from)
    .into();
    let start_agent = || Proc::start("agent", dir.path(), &agent_args, "agent dock-1:", &env);
    let (agent, _) = start_agent()?;
    let http = client_with_token(TOKEN)?;
    let app = serde_json::json!({
        "id": "/keep", "cmd": "while true; do echo alive; sleep 1; done", "instances": 2,
        "mem": 32, "container": {"type": "DOCKER", "docker": {"image": image}}
    });
    ok(http.post(format!("{sched}/v2/apps")).json(&app)).await?;
    let running = || async {
        let v: serde_json::Value = http
            .get(format!("{sched}/v2/apps/keep/tasks"))
            .send()
            .await?
            .json()
            .await?;
        let ids: BTreeSet<String> = v["tasks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["state"] == "TASK_RUNNING")
            .filter_map(|t| t["id"].as_str().map(str::to_string))
            .collect();
        anyhow::Ok(ids)
    };
    let labelled = || -> BTreeSet<String> {
        let out = std::process::Command::new("docker")
            .args([
                "ps",
                "--filter",
                "label=sandtrail.host=dock-1",
                "--format",
                "{{.ID}} {{.Label \"sandtrail.task\"}}",
            ])
            .output()
            .expect("docker ps");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    };
    let before = eventually(
        "two running containers",
        Duration::from_secs(60),
        || async {
            let ids = running().await?;
            Ok((ids.len() == 2).then_some(ids))
        },
    )
    .await?;
    let containers = labelled();
    assert_eq!(containers.len(), 2, "{containers:?}");
    agent.kill9()?;
    assert_eq!(labelled(), containers, "the containers outlive the agent");
    let (agent, _) = start_agent()?;
    // Let the restarted agent heartbeat a few times: nothing may be relaunched.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = eventually(
        "the tasks running again",
        Duration::from_secs(30),
        || async {
            let ids = running().await?;
            Ok((ids.len() == 2).then_some(ids))
        },
    )
    .await?;
    assert_eq!(after, before, "the same task ids");
    assert_eq!(labelled(), containers, "the same containers, none new");
    // Deleting the app stops and removes them.
    ok(http.delete(format!("{sched}/v2/apps/keep"))).await?;
    eventually(
        "the containers removed",
        Duration::from_secs(30),
        || async { Ok(labelled().is_empty().then_some(())) },
    )
    .await?;
    agent.stop()?;
    Ok(())
}
