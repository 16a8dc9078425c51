//! Issue 17: each part run on its own (`sandtrail scheduler`, `indexer`, `agent`,
//! `web`) serves a `/metrics` that Prometheus's own checker accepts
//! (`promtool check metrics`), with each family once, the `process_*` and
//! `sandtrail_build_info` families, durations as histograms, and one label name for
//! a host across every family (`host`; the node's families said `node`).

mod common;

use common::{client_with_token, eventually, Proc};
use std::time::Duration;

const TOKEN: &str = "metrics-s3cret";
const HOST: &str = "node-1";

fn arg(s: &str) -> String {
    s.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_standalone_part_passes_promtool() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = |p: &str| dir.path().join(p).display().to_string();
    let env = [("SANDTRAIL_TOKEN", TOKEN.to_string())];
    let start = |name: &'static str, args: Vec<String>, prefix: &str| {
        Proc::start(name, dir.path(), &args, prefix, &env)
    };
    let (_scheduler, scheduler) = start(
        "scheduler",
        vec![
            arg("scheduler"),
            arg("--data-dir"),
            path("scheduler"),
            arg("--listen"),
            arg("127.0.0.1:0"),
        ],
        "scheduler:",
    )?;
    let (_indexer, indexer) = start(
        "indexer",
        vec![
            arg("indexer"),
            arg("--data-dir"),
            path("indexer"),
            arg("--listen"),
            arg("127.0.0.1:0"),
        ],
        "indexer:",
    )?;
    let (_agent, agent) = start(
        "agent",
        vec![
            arg("agent"),
            arg("--data-dir"),
            path("agent"),
            arg("--name"),
            arg(HOST),
            arg("--scheduler"),
            scheduler.clone(),
            arg("--indexer"),
            indexer.clone(),
            arg("--router-listen"),
            arg("127.0.0.1:0"),
        ],
        &format!("agent {HOST}:"),
    )?;
    let (_web, web) = start(
        "web",
        vec![
            arg("web"),
            arg("--listen"),
            arg("127.0.0.1:0"),
            arg("--indexer"),
            indexer.clone(),
            arg("--scheduler"),
            scheduler.clone(),
        ],
        "web UI:",
    )?;
    let http = client_with_token(TOKEN)?;
    // A search, so the search histogram has an observation to render.
    http.get(format!("{indexer}/api/v1/search?q=*"))
        .send()
        .await?
        .error_for_status()?;
    // The agent's node registered, so its families are live.
    eventually("the agent registered", Duration::from_secs(30), || async {
        let agents: serde_json::Value = http
            .get(format!("{scheduler}/v1/agents"))
            .send()
            .await?
            .json()
            .await?;
        Ok(agents.to_string().contains("node-").then_some(()))
    })
    .await?;
    for (part, url, families) in [
        ("scheduler", &scheduler, vec!["\nsandtrail_scheduler_apps "]),
        (
            "indexer",
            &indexer,
            vec![
                "# TYPE sandtrail_indexer_commit_seconds histogram",
                "# TYPE sandtrail_indexer_search_seconds histogram",
                "# TYPE sandtrail_indexer_tail_delivery_seconds histogram",
                "sandtrail_indexer_search_seconds_count 1\n",
            ],
        ),
        (
            "agent",
            &agent,
            vec![
                "# TYPE sandtrail_router_latency_seconds histogram",
                "sandtrail_router_requests_total{host=",
                "sandtrail_agent_lines_read_total{host=",
                "sandtrail_node_tasks_running{host=",
            ],
        ),
        (
            "web",
            &web,
            vec!["# TYPE sandtrail_web_requests_total counter"],
        ),
    ] {
        let text = http
            .get(format!("{}/metrics", url.trim_end_matches('/')))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        common::promtool_check(part, &text)?;
        for family in families
            .into_iter()
            .chain(["# TYPE process_cpu_seconds_total ", "sandtrail_build_info{"])
        {
            assert_eq!(
                text.matches(family).count(),
                1,
                "{family} in {part}: {text}"
            );
        }
        assert!(!text.contains("node=\""), "{part}: {text}");
        if part == "agent" {
            // Every series of a host (router, shipper, node) names it the same way.
            let host_series = text
                .lines()
                .filter(|l| !l.starts_with('#') && l.contains("host="))
                .count();
            assert!(host_series > 10, "{text}");
            assert_eq!(
                text.matches("host=\"node-1\"").count(),
                host_series,
                "{part}: {text}"
            );
        }
    }
    Ok(())
}
