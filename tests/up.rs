//! End to end: the real binary's `sandtrail up` on free ports, driven only through its
//! HTTP APIs, the way a user's curl and browser would. Proves the three jobs: search
//! by service, tail one app live, and trace which host served each hop of a call.

use anyhow::{bail, Context};
use futures::StreamExt;
use protocol::{LogRecord, Stream};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

mod common;

use common::{client_with_token, eventually, search, Proc, Up};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_search_tail_and_trace_end_to_end() -> anyhow::Result<()> {
    let up = Up::start()?;
    // Reading needs the token as much as writing (issue 15).
    let http = client_with_token(&up.token)?;
    let nodes: BTreeSet<String> = ["node-1", "node-2", "node-3"].map(String::from).into();

    // The demo app is deployed by `up` itself: wait for one running instance per node.
    let endpoints: Vec<protocol::ServiceEndpoint> =
        eventually("three fib instances", Duration::from_secs(60), || async {
            let resp = http
                .get(format!("{}/v1/services/fib", up.web))
                .header(protocol::TOKEN_HEADER, &up.token)
                .send()
                .await?;
            if !resp.status().is_success() {
                return Ok(None);
            }
            let eps: Vec<protocol::ServiceEndpoint> = resp.json().await?;
            Ok((eps.len() == 3).then_some(eps))
        })
        .await?;
    let hosts: BTreeSet<String> = endpoints.iter().map(|e| e.host.clone()).collect();
    assert_eq!(hosts, nodes, "one fib instance per node: {endpoints:?}");

    // The instances may still be binding their ports: retry until the answer comes.
    let (answer, trace_id) = eventually(
        "fib(10) through the router",
        Duration::from_secs(30),
        || async {
            let resp = http.get(format!("{}/fib/10", up.router)).send().await?;
            let trace = resp
                .headers()
                .get(protocol::TRACE_ID_HEADER)
                .context("X-Trace-Id missing")?
                .to_str()?
                .to_string();
            let status = resp.status();
            let body = resp.text().await?;
            if !status.is_success() {
                bail!("fib(10) answered {status}: {body}");
            }
            Ok(Some((body, trace)))
        },
    )
    .await?;
    assert_eq!(answer.trim(), "55");
    assert_eq!(trace_id.len(), 32, "trace id {trace_id:?}");

    // Search by service: lines of fib from every node, tagged with the task that ran there.
    let tasks: serde_json::Value = http
        .get(format!("{}/v2/tasks", up.web))
        .send()
        .await?
        .json()
        .await?;
    let task_host: std::collections::BTreeMap<String, String> = tasks["tasks"]
        .as_array()
        .context("tasks")?
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_string(),
                t["host"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let lines = eventually(
        "fib lines from all three nodes",
        Duration::from_secs(30),
        || async {
            let res = search(&http, &up.web, "app:fib AND stream:stdout", 1000).await?;
            let seen: BTreeSet<String> = res.hits.iter().map(|r| r.host.clone()).collect();
            Ok((seen == nodes).then_some(res))
        },
    )
    .await?;
    for r in &lines.hits {
        assert_eq!(r.app, "fib");
        assert_eq!(
            task_host.get(&r.task),
            Some(&r.host),
            "line tagged with task {} on {}, scheduler disagrees: {r:?}",
            r.task,
            r.host
        );
    }
    let newest_first = lines.hits.windows(2).all(|w| w[0].ts >= w[1].ts);
    assert!(newest_first, "hits must be newest first");
    let task_instance: std::collections::BTreeMap<String, u32> = lines
        .hits
        .iter()
        .map(|r| (r.task.clone(), r.instance))
        .collect();
    assert!(
        task_instance.values().any(|&i| i != 0),
        "three instances, not all numbered 0: {task_instance:?}"
    );
    let by_host = search(&http, &up.web, "app:fib AND host:node-2", 1000).await?;
    assert!(by_host.total > 0 && by_host.hits.iter().all(|r| r.host == "node-2"));

    // Trace: fib(10) is 177 routed calls, one access record each, every one naming the
    // host and task that served it.
    let q = format!("trace_id:{trace_id} AND stream:access");
    let hops = eventually(
        "177 access records of the trace",
        Duration::from_secs(30),
        || async {
            let res = search(&http, &up.web, &q, 1000).await?;
            Ok((res.total >= 177).then_some(res))
        },
    )
    .await?;
    assert_eq!(hops.total, 177, "exactly one access record per hop");
    let mut hop_hosts = BTreeSet::new();
    for h in &hops.hits {
        assert_eq!(h.stream, Stream::Access);
        assert_eq!(h.app, "fib");
        assert_eq!(h.status, Some(200), "{h:?}");
        assert!(h.latency_ms.is_some(), "{h:?}");
        assert_eq!(
            task_host.get(&h.task),
            Some(&h.host),
            "hop names its host: {h:?}"
        );
        // Regression: access records said instance 0 whatever task served the call.
        if let Some(i) = task_instance.get(&h.task) {
            assert_eq!(
                h.instance, *i,
                "hop names the instance that served it: {h:?}"
            );
        }
        hop_hosts.insert(h.host.clone());
    }
    assert_eq!(hop_hosts, nodes, "the calls fan out over every node");
    // The first hop came from outside; every other hop was called by a fib task.
    let roots: Vec<&LogRecord> = hops
        .hits
        .iter()
        .filter(|h| h.parent_span_id.is_none())
        .collect();
    assert_eq!(roots.len(), 1, "one root hop");
    assert_eq!(roots[0].peer_app.as_deref(), Some("external"));
    let inner = hops
        .hits
        .iter()
        .filter(|h| h.peer_app.as_deref() == Some("fib"))
        .count();
    assert_eq!(inner, 176, "every inner hop names fib as its caller");
    // And the app's own lines carry the same trace id, so they join the trace.
    // They are shipped from other files than the access records, so they may land a
    // batch later: wait for them, then check there is exactly one per request.
    let app_q = format!("trace_id:{trace_id} AND stream:stdout");
    let app_lines = eventually(
        "177 fib lines of the trace",
        Duration::from_secs(30),
        || async {
            let res = search(&http, &up.web, &app_q, 1000).await?;
            Ok((res.total >= 177).then_some(res))
        },
    )
    .await?;
    assert_eq!(
        app_lines.total, 177,
        "one fib line per request with the trace id"
    );

    // The trace and search pages render those hops for a person.
    let page = http
        .get(format!("{}/trace/{trace_id}", up.web))
        .send()
        .await?
        .text()
        .await?;
    for n in &nodes {
        assert!(page.contains(n.as_str()), "trace page names {n}");
    }

    // Tail: a line written after the stream opened arrives on it.
    let resp = http
        .get(format!("{}/api/v1/tail", up.web))
        .query(&[("q", "app:fib")])
        .send()
        .await?;
    assert!(resp.status().is_success());
    let mut stream = resp.bytes_stream();
    let answer = http
        .get(format!("{}/fib/3", up.router))
        .send()
        .await?
        .text()
        .await?;
    assert_eq!(answer.trim(), "2");
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = String::new();
        while let Some(chunk) = stream.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk?));
            for line in buf.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    if let Ok(r) = serde_json::from_str::<LogRecord>(data.trim()) {
                        if r.app == "fib" && r.msg.contains("fib(3) = 2") {
                            return anyhow::Ok(r);
                        }
                    }
                }
            }
        }
        bail!("tail stream ended")
    })
    .await
    .context("no tailed line within 20 s")??;
    assert!(nodes.contains(&got.host));

    // Regression (issue 16): the clients find the admin token `up` wrote in the data
    // dir given by `--data-dir` or by the config file's `data_dir`; they used to look
    // only in $SANDTRAIL_DATA_DIR or ./.sandtrail and got a 401.
    let elsewhere = tempfile::tempdir()?;
    let cli = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(env!("CARGO_BIN_EXE_sandtrail"))
            .args(args)
            .args(["--server", &up.web])
            .current_dir(elsewhere.path())
            .env_remove("SANDTRAIL_TOKEN")
            .env_remove("SANDTRAIL_DATA_DIR")
            .env_remove("SANDTRAIL_CONFIG")
            .env_remove("SANDTRAIL_SERVER")
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "sandtrail {args:?}: {}\n{stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    };
    let data_dir = up.dir.path().to_str().context("utf-8 temp dir")?;
    let apps = cli(&["apps", "--data-dir", data_dir])?;
    assert!(apps.contains("/fib"), "{apps}");
    std::fs::write(
        elsewhere.path().join("sandtrail.toml"),
        format!("data_dir = {data_dir:?}\n"),
    )?;
    let apps = cli(&["apps"])?;
    assert!(apps.contains("/fib"), "{apps}");
    let trace = cli(&["trace", &trace_id])?;
    assert!(trace.starts_with(&format!("trace {trace_id}:")), "{trace}");

    // A graceful shutdown exits 0.
    up.proc.stop()?;
    Ok(())
}

/// Issue 17: under `up` the port's `/` is the UI, so Elasticsearch clients could not
/// find the API; `<url>/es` is their base URL, `GET` of it included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_gives_elasticsearch_clients_a_base_url_beside_the_ui() -> anyhow::Result<()> {
    let up = Up::start()?;
    let http = client_with_token(&up.token)?;
    let ui = http.get(format!("{}/", up.web)).send().await?;
    assert!(ui.headers()["content-type"]
        .to_str()?
        .starts_with("text/html"));
    let es = format!("{}/es", up.web);
    let info = http.get(&es).send().await?;
    assert_eq!(info.headers()["x-elastic-product"], "Elasticsearch");
    let info: serde_json::Value = info.json().await?;
    assert!(
        info["version"]["number"]
            .as_str()
            .unwrap_or("")
            .starts_with("8."),
        "{info}"
    );
    let bulk = http
        .post(format!("{es}/_bulk?refresh=wait_for"))
        .header("content-type", "application/x-ndjson")
        .body("{\"index\":{\"_index\":\"esup\"}}\n{\"message\":\"hello via /es\"}\n")
        .send()
        .await?;
    assert_eq!(bulk.headers()["x-elastic-product"], "Elasticsearch");
    let bulk: serde_json::Value = bulk.json().await?;
    assert_eq!(bulk["errors"], false, "{bulk}");
    let count: serde_json::Value = http
        .get(format!("{es}/esup/_count"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(count["count"], 1, "{count}");
    // An API we lack is an Elasticsearch 404 under the prefix, the UI's 404 beside it.
    let missing = http.get(format!("{es}/esup/_mapping")).send().await?;
    assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);
    assert_eq!(missing.headers()["x-elastic-product"], "Elasticsearch");
    let missing: serde_json::Value = missing.json().await?;
    assert_eq!(missing["status"], 404, "{missing}");
    let ui_missing = http.get(format!("{}/no-such-page", up.web)).send().await?;
    assert_eq!(ui_missing.status(), reqwest::StatusCode::NOT_FOUND);
    assert!(!ui_missing.headers().contains_key("x-elastic-product"));
    Ok(())
}

/// Issue 17: every part's `/metrics` under `up` passes Prometheus's own checker
/// (`promtool check metrics`, Debian's `prometheus`, installed by
/// scripts/test-deps.sh): each family once (agents' families were repeated per
/// agent), latencies as histograms (they were `_sum` counters), escaped labels,
/// `process_*` and `sandtrail_build_info` present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_metrics_pass_promtool() -> anyhow::Result<()> {
    let up = Up::start()?;
    let http = client_with_token(&up.token)?;
    // One routed call, so the router's latency histogram has an observation.
    eventually("a routed call to fib", Duration::from_secs(60), || async {
        let r = http.get(format!("{}/fib/10", up.router)).send().await?;
        Ok(r.status().is_success().then_some(()))
    })
    .await?;
    for (part, url) in [("web port", &up.web), ("router", &up.router)] {
        let text = http
            .get(format!("{}/metrics", url.trim_end_matches('/')))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        common::promtool_check(part, &text)?;
        assert_eq!(
            text.matches("# TYPE process_cpu_seconds_total ").count(),
            1,
            "{part}"
        );
        assert!(text.contains("sandtrail_build_info{"), "{part}");
        if part == "router" {
            assert!(
                text.contains("# TYPE sandtrail_router_latency_seconds histogram"),
                "{text}"
            );
        } else {
            // Every part of the process: the nodes and the UI too (they were left
            // out), each host under the one label name `host`.
            for family in [
                "sandtrail_node_tasks_running{host=\"node-1\"}",
                "sandtrail_node_tasks_running{host=\"node-2\"}",
                "sandtrail_agent_lines_read_total{host=\"node-1\"}",
                "sandtrail_web_requests_total{page=",
                "sandtrail_scheduler_apps ",
                "sandtrail_indexer_search_seconds_bucket{",
                "sandtrail_indexer_tail_delivery_seconds_bucket{",
            ] {
                assert!(text.contains(family), "{family} in {text}");
            }
            assert!(!text.contains("node=\""), "{text}");
        }
    }
    Ok(())
}

/// Issue 17: `up` prints its short summary and writes its parts' log to
/// `<data-dir>/sandtrail.log`, so the URLs a newcomer needs do not scroll away;
/// stderr gets warnings only, or everything with `--verbose`.
#[test]
fn up_writes_its_log_to_the_data_dir() -> anyhow::Result<()> {
    for verbose in [false, true] {
        let dir = tempfile::tempdir()?;
        let err_dir = tempfile::tempdir()?;
        let err_path = err_dir.path().join("stderr");
        let mut args = vec![
            "up".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--router-listen".into(),
            "127.0.0.1:0".into(),
            "--agents".into(),
            "1".into(),
            "--no-demo".into(),
            "--data-dir".into(),
            dir.path().to_str().context("utf-8 temp dir")?.into(),
        ];
        if verbose {
            args.push("--verbose".into());
        }
        let env = [("SANDTRAIL_LOG", "info".to_string())];
        let err = std::fs::File::create(&err_path)?;
        let mut proc = Proc::spawn("up", dir.path(), &args, &env, |cmd| {
            cmd.stderr(err);
        })?
        .term_on_drop();
        let printed = proc.printed(&["web UI:", "logs:"])?;
        let log = dir.path().join("sandtrail.log");
        assert_eq!(std::path::PathBuf::from(&printed[1]), log);
        proc.stop()?;
        let text = std::fs::read_to_string(&log)?;
        for line in [
            "index writer started",
            "shutdown requested",
            "index writer stopped",
        ] {
            assert!(text.contains(line), "{line:?} in {text}");
        }
        let stderr = std::fs::read_to_string(&err_path)?;
        assert_eq!(
            stderr.contains("index writer started"),
            verbose,
            "verbose {verbose}: {stderr}"
        );
        if !verbose {
            assert!(!stderr.contains(" INFO "), "{stderr}");
        }
    }
    Ok(())
}
