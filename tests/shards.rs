//! Shard mode end to end (issue 21) with a real ZooKeeper and a real NATS JetStream:
//! three indexers own six shards twice over, consume numbered records from the
//! ingest log, and any of them answers a search for the whole cluster. A shard
//! owner killed with SIGKILL loses nothing and no shard goes unanswered; restarted,
//! it changes no count.

mod common;

use common::{client_with_token, eventually, Proc};
use protocol::ingest_log::LogConfig;
use protocol::shard;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

const TOKEN: &str = "shards-suite-token";
const SOURCES: u64 = 30;
const SESSION_MS: u64 = 2000;

/// Publishes lines `from..to` of every source, numbered `source * 1_000_000 + line`,
/// one message per source and 50 lines, as the shipper would.
async fn publish(nats: &str, from: u64, to: u64) -> anyhow::Result<()> {
    let (js, _) = protocol::ingest_log::open(&LogConfig::new(nats))
        .await
        .map_err(anyhow::Error::msg)?;
    let now = chrono::Utc::now();
    for s in 0..SOURCES {
        let source = format!("node-{}/app/task-{s}/stdout@{s:016x}", s % 3);
        let mut line = from;
        while line < to {
            let end = (line + 50).min(to);
            let records: Vec<protocol::LogRecord> = (line..end)
                .map(|l| {
                    serde_json::from_value(serde_json::json!({
                        "ts": now.to_rfc3339(),
                        "host": format!("node-{}", s % 3),
                        "app": "app",
                        "task": format!("task-{s}"),
                        "msg": format!("number {}", s * 1_000_000 + l),
                        "latency_ms": (l % 100 + 1) as f64,
                        "source": source,
                        // Offsets are the end of a line: never 0.
                        "offset": (l + 1) * 100,
                    }))
                    .unwrap()
                })
                .collect();
            let body = protocol::encode_ndjson(&records);
            js.send_publish(
                shard::subject(shard::shard_of(&source, shard::DEFAULT_SHARDS)),
                async_nats::jetstream::message::PublishMessage::build()
                    .payload(body.into())
                    .message_id(shard::message_id(&source, (line + 1) * 100, end * 100)),
            )
            .await?
            .await?;
            line = end;
        }
    }
    Ok(())
}

fn indexer(dir: &Path, zk: &str, nats: &str) -> anyhow::Result<(Proc, String)> {
    indexer_with_owners(dir, zk, nats, 2)
}

fn indexer_with_owners(
    dir: &Path,
    zk: &str,
    nats: &str,
    owners: u32,
) -> anyhow::Result<(Proc, String)> {
    indexer_with_env(dir, zk, nats, owners, &[])
}

fn indexer_with_env(
    dir: &Path,
    zk: &str,
    nats: &str,
    owners: u32,
    extra_env: &[(&str, String)],
) -> anyhow::Result<(Proc, String)> {
    let args: Vec<String> = [
        "indexer",
        "--data-dir",
        &dir.display().to_string(),
        "--listen",
        "127.0.0.1:0",
        "--zk",
        zk,
        "--ingest-log",
        nats,
        "--shards",
        "6",
        "--owners",
        &owners.to_string(),
        "--zk-session-timeout-ms",
        &SESSION_MS.to_string(),
    ]
    .map(String::from)
    .into();
    let mut env = vec![("SANDTRAIL_TOKEN", TOKEN.to_string())];
    env.extend_from_slice(extra_env);
    let (mut proc, url) = Proc::start("indexer", dir, &args, "indexer:", &env)?;
    proc.printed(&["shard owner:"])?;
    Ok((proc, url))
}

/// A fanned-out search of everything: (total, failed shards, next, numbers).
async fn search_all(
    http: &reqwest::Client,
    url: &str,
    limit: usize,
    cursor: Option<&str>,
) -> anyhow::Result<(u64, Vec<u64>, Option<String>, Vec<u64>)> {
    let mut q = vec![
        ("limit", limit.to_string()),
        ("start", "now-1h".to_string()),
    ];
    if let Some(c) = cursor {
        q.push(("cursor", c.to_string()));
    }
    let resp = http
        .get(format!("{url}/api/v1/search"))
        .query(&q)
        .send()
        .await?;
    if !resp.status().is_success() {
        anyhow::bail!("search: {} {}", resp.status(), resp.text().await?);
    }
    let v: Value = resp.json().await?;
    let failed = v["shards"]["failed"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let numbers = v["hits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["msg"].as_str()?.strip_prefix("number ")?.parse().ok())
        .collect();
    Ok((
        v["total"].as_u64().unwrap_or(0),
        failed,
        v["next"].as_str().map(String::from),
        numbers,
    ))
}

/// Waits until `url` counts `want` records with no failed shard.
async fn counts(
    http: &reqwest::Client,
    url: &str,
    want: u64,
    within: Duration,
) -> anyhow::Result<()> {
    eventually(
        &format!("{url} to count {want} with every shard"),
        within,
        || async {
            let (total, failed, _, _) = search_all(http, url, 0, None).await?;
            Ok((total == want && failed.is_empty()).then_some(()))
        },
    )
    .await
}

/// Every number of lines `0..lines` of every source, each exactly once, paging
/// through the fan-out's cursor.
async fn every_number_once(http: &reqwest::Client, url: &str, lines: u64) -> anyhow::Result<()> {
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let (_, failed, next, numbers) = search_all(http, url, 1000, cursor.as_deref()).await?;
        assert!(failed.is_empty(), "failed shards {failed:?}");
        seen.extend(numbers);
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    let unique: BTreeSet<u64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "a number came twice");
    let want: BTreeSet<u64> = (0..SOURCES)
        .flat_map(|s| (0..lines).map(move |l| s * 1_000_000 + l))
        .collect();
    assert_eq!(unique, want, "every number once");
    Ok(())
}

/// The fanned-out field sidebar and latency percentiles of everything: every
/// shard answers, and the merged counts are the sums over the three hosts (ten
/// sources each, `lines` lines per source), the percentiles those of latencies
/// 1..=100 equally often, within the sketch's 1 %.
async fn fields_and_latency_add_up(
    http: &reqwest::Client,
    url: &str,
    total: u64,
) -> anyhow::Result<()> {
    let get = |path: &'static str, q: Vec<(&'static str, &'static str)>| async move {
        let v: Value = http
            .get(format!("{url}{path}"))
            .query(&q)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        assert_eq!(v["shards"]["failed"], serde_json::json!([]), "{v}");
        assert_eq!(v["shards"]["successful"], 6, "{v}");
        anyhow::Ok(v)
    };
    let f = get("/api/v1/fields", vec![("start", "now-1h")]).await?;
    let count_of = |field: &str| -> BTreeMap<String, u64> {
        f["fields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["field"] == field)
            .flat_map(|t| t["values"].as_array().cloned().unwrap_or_default())
            .map(|v| {
                (
                    v["value"].as_str().unwrap_or_default().to_string(),
                    v["count"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    let per_host = total / 3;
    let want: BTreeMap<String, u64> = (0..3).map(|h| (format!("node-{h}"), per_host)).collect();
    assert_eq!(count_of("host"), want, "{f}");
    assert_eq!(
        count_of("app"),
        BTreeMap::from([("app".to_string(), total)]),
        "{f}"
    );

    let l = get("/api/v1/latency", vec![("start", "now-1h"), ("by", "host")]).await?;
    let groups = l["groups"].as_array().cloned().unwrap_or_default();
    assert_eq!(groups.len(), 3, "{l}");
    for g in &groups {
        assert_eq!(g["count"], per_host, "{g}");
        assert_eq!(g["max"], 100.0, "{g}");
        assert!(g.get("sketch").is_none(), "a sketch only when asked: {g}");
        let near = |k: &str, want: f64| {
            let got = g[k].as_f64().unwrap_or(f64::NAN);
            assert!(
                (got - want).abs() <= want * 0.011,
                "{k}: {got} vs {want}: {g}"
            );
        };
        near("avg", 50.5);
        near("p50", 50.0);
        near("p90", 90.0);
        near("p99", 99.0);
    }
    Ok(())
}

/// The Elasticsearch API's `_count` of everything, asked of `url`.
async fn es_count(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    Ok(http
        .get(format!("{url}/_count"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// Regression (issue 21, the Elasticsearch API saw only the asked indexer's own
/// documents in shard mode): `_count`, `_search` and its aggregations over ES's
/// API of one indexer answer for the whole cluster, with ES's `_shards` saying
/// every shard answered, and an aggregation that cannot be merged exactly is
/// refused by name rather than answered from part of the data.
async fn es_api_fans_out(http: &reqwest::Client, url: &str, total: u64) -> anyhow::Result<()> {
    let all_shards = serde_json::json!({ "total": 6, "successful": 6, "skipped": 0, "failed": 0 });
    let c = es_count(http, url).await?;
    assert_eq!(c["count"], total, "{c}");
    assert_eq!(c["_shards"], all_shards, "{c}");
    let s: Value = http
        .post(format!("{url}/es/_search"))
        .json(&serde_json::json!({
            "size": 5,
            "from": 3,
            "query": { "query_string": { "query": "number" } },
            "aggs": {
                "hosts": { "terms": { "field": "host.name" } },
                "per_second": { "date_histogram": { "field": "@timestamp", "fixed_interval": "1s" } },
                "mean": { "avg": { "field": "latency_ms" } },
                "most": { "max": { "field": "latency_ms" } },
            },
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(s["hits"]["total"]["value"], total, "{s}");
    assert_eq!(s["_shards"], all_shards, "{s}");
    assert_eq!(s["hits"]["hits"].as_array().map(Vec::len), Some(5), "{s}");
    let aggs = &s["aggregations"];
    let hosts: BTreeMap<String, u64> = aggs["hosts"]["buckets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            (
                b["key"].as_str().unwrap_or_default().to_string(),
                b["doc_count"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let want: BTreeMap<String, u64> = (0..3).map(|h| (format!("node-{h}"), total / 3)).collect();
    assert_eq!(hosts, want, "{aggs}");
    let per_second: u64 = aggs["per_second"]["buckets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["doc_count"].as_u64())
        .sum();
    assert_eq!(per_second, total, "{aggs}");
    assert_eq!(aggs["mean"]["value"], 50.5, "{aggs}");
    assert_eq!(aggs["most"]["value"], 100.0, "{aggs}");
    let refused = http
        .post(format!("{url}/_search"))
        .json(&serde_json::json!({ "size": 0, "aggs": {
            "p": { "percentiles": { "field": "latency_ms" } } } }))
        .send()
        .await?;
    assert_eq!(refused.status(), 400);
    let why = refused.text().await?;
    assert!(
        why.contains("percentiles") && why.contains("\\\"p\\\""),
        "{why}"
    );
    // Writes through the ES API would land in this indexer alone: refused in shard
    // mode, naming the ingest log, and nothing of them counted.
    let bulk = "{\"index\":{}}\n{\"message\":\"direct\"}\n";
    for (method, path, body) in [
        (reqwest::Method::POST, "_bulk", bulk.to_string()),
        (reqwest::Method::POST, "logs/_bulk", bulk.to_string()),
        (
            reqwest::Method::PUT,
            "logs/_doc/direct-1",
            "{\"message\":\"direct\"}".into(),
        ),
        (
            reqwest::Method::POST,
            "logs/_doc",
            "{\"message\":\"direct\"}".into(),
        ),
    ] {
        let refused = http
            .request(method.clone(), format!("{url}/es/{path}"))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await?;
        assert_eq!(refused.status(), 400, "{method} {path}");
        let why = refused.text().await?;
        assert!(
            why.contains("shard mode") && why.contains("--ingest-log"),
            "{why}"
        );
    }
    let c = es_count(http, url).await?;
    assert_eq!(
        c["count"], total,
        "nothing of the refused writes is kept: {c}"
    );
    // What every shard refuses is refused with the owners' own reason, as one
    // indexer words it.
    let refused = http
        .post(format!("{url}/_search"))
        .json(&serde_json::json!({ "size": 0, "aggs": {
            "t": { "terms": { "field": "message" } } } }))
        .send()
        .await?;
    assert_eq!(refused.status(), 400);
    let why: Value = refused.json().await?;
    assert!(
        why["error"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains(": terms \"t\": only on keyword fields")
                && r.matches("invalid query").count() == 1),
        "{why}"
    );
    Ok(())
}

/// The context of one record (found through `search_url`), asked of `url`
/// without `shards=`: its neighbours by offset, whichever shard holds them.
async fn context_fans_out(
    http: &reqwest::Client,
    search_url: &str,
    url: &str,
) -> anyhow::Result<()> {
    let found: Value = http
        .get(format!("{search_url}/api/v1/search"))
        .query(&[("q", "5000150"), ("start", "now-1h")])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let hit = &found["hits"][0];
    assert_eq!(hit["msg"], "number 5000150", "{found}");
    let c: Value = http
        .get(format!("{url}/api/v1/context"))
        .query(&[
            ("task", hit["task"].as_str().unwrap_or_default()),
            ("ts", hit["ts"].as_str().unwrap_or_default()),
            ("source", hit["source"].as_str().unwrap_or_default()),
            ("offset", &hit["offset"].to_string()),
            ("n", "3"),
        ])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let msgs = |k: &str| -> Vec<String> {
        c[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["msg"].as_str().map(String::from))
            .collect()
    };
    assert_eq!(c["record"]["msg"], "number 5000150", "{c}");
    // Regression (issue 21): the fanned-out context said nothing of its shards.
    assert_eq!(
        c["shards"],
        serde_json::json!({ "total": 6, "successful": 6, "failed": [] }),
        "{c}"
    );
    assert_eq!(
        msgs("before"),
        ["number 5000147", "number 5000148", "number 5000149"],
        "{c}"
    );
    assert_eq!(
        msgs("after"),
        ["number 5000151", "number 5000152", "number 5000153"],
        "{c}"
    );
    Ok(())
}

/// Who holds the slots of every shard: shard -> owner ids, read from ZooKeeper.
async fn slots(zk: &zookeeper_client::Client) -> anyhow::Result<BTreeMap<u32, Vec<String>>> {
    let mut out = BTreeMap::new();
    for n in 0..6u32 {
        let dir = format!("/shards/indexers/shards/{n}");
        let mut ids = Vec::new();
        for slot in zk.list_children(&dir).await? {
            if let Ok((data, _)) = zk.get_data(&format!("{dir}/{slot}")).await {
                let v: Value = serde_json::from_slice(&data)?;
                ids.push(v["id"].as_str().unwrap_or_default().to_string());
            }
        }
        out.insert(n, ids);
    }
    Ok(out)
}

/// Waits until every shard has two owners, both among `live` and distinct, and no
/// indexer holds more than its fair share `ceil(12 / live)`.
async fn balanced(
    zk: &zookeeper_client::Client,
    live: &[String],
    within: Duration,
) -> anyhow::Result<()> {
    let share = 12usize.div_ceil(live.len());
    eventually(
        &format!("every shard owned twice by {live:?}"),
        within,
        || async {
            let s = slots(zk).await?;
            let mut per: BTreeMap<&str, usize> = BTreeMap::new();
            let mut ok = true;
            for ids in s.values() {
                let distinct: BTreeSet<&String> = ids.iter().collect();
                ok &= ids.len() == 2 && distinct.len() == 2 && ids.iter().all(|i| live.contains(i));
                for i in ids {
                    *per.entry(i).or_default() += 1;
                }
            }
            ok &= per.values().all(|&n| n <= share);
            Ok(ok.then_some(()))
        },
    )
    .await
}

fn id_of(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_owners_lose_nothing_when_one_is_killed() -> anyhow::Result<()> {
    let zk = common::zk::ZooKeeper::start()?;
    let nats = common::nats::Nats::start()?;
    let zk_url = zk.url("shards");
    let http = client_with_token(TOKEN)?;
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;

    let mut procs = Vec::new();
    for d in &dirs {
        procs.push(indexer(d.path(), &zk_url, &nats.url())?);
    }
    let zkc = zookeeper_client::Client::connect(&format!("127.0.0.1:{}", zk.port)).await?;
    let ids: Vec<String> = procs.iter().map(|(_, u)| id_of(u)).collect();
    balanced(&zkc, &ids, Duration::from_secs(30)).await?;
    // Published once the shards are dealt out: each indexer holds four shards'
    // records, so a search of one indexer's own documents would count too few.
    publish(&nats.url(), 0, 100).await?;
    let first = SOURCES * 100;
    for (_, url) in &procs {
        counts(&http, url, first, Duration::from_secs(60)).await?;
    }
    es_api_fans_out(&http, &procs[1].1, first).await?;

    // Kill one owner while records keep coming: every shard still has a live owner
    // (its second one), so nothing fails and nothing is lost.
    let (killed, _) = procs.remove(1);
    killed.kill9()?;
    let killed_at = std::time::Instant::now();
    publish(&nats.url(), 100, 200).await?;
    let total = SOURCES * 200;
    let within = Duration::from_millis(SESSION_MS) + Duration::from_secs(20);
    for (_, url) in &procs {
        counts(&http, url, total, within).await?;
    }
    // Once its session is over, its slots are the survivors'.
    let live: Vec<String> = procs.iter().map(|(_, u)| id_of(u)).collect();
    balanced(&zkc, &live, within).await?;
    // BENCHMARKS.md quotes this: session timeout + the survivors' next tick.
    eprintln!(
        "takeover: every shard owned twice by the survivors {:?} after the kill (session timeout {SESSION_MS} ms)",
        killed_at.elapsed()
    );
    every_number_once(&http, &procs[0].1, 200).await?;
    // The histogram fans out too: its buckets add up to the same count.
    let h: Value = http
        .get(format!("{}/api/v1/histogram", procs[1].1))
        .query(&[("start", "now-1h")])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(h["shards"]["failed"], serde_json::json!([]), "{h}");
    let buckets: u64 = h["buckets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["count"].as_u64())
        .sum();
    assert_eq!(buckets, total, "{h}");
    fields_and_latency_add_up(&http, &procs[0].1, total).await?;

    // Back again on its own data dir: it takes shards again, and nothing changes.
    procs.push(indexer(dirs[1].path(), &zk_url, &nats.url())?);
    for (_, url) in &procs {
        counts(&http, url, total, Duration::from_secs(60)).await?;
    }
    every_number_once(&http, &procs[2].1, 200).await?;
    let ids: Vec<String> = procs.iter().map(|(_, u)| id_of(u)).collect();
    balanced(&zkc, &ids, Duration::from_secs(30)).await?;
    // Three indexers of four slots each: none owns every shard, so the context
    // and the tail of one need the others.
    context_fans_out(&http, &procs[0].1, &procs[1].1).await?;
    tail_sees_every_line_once(&http, &procs[0].1, &nats.url(), 200, 210).await?;
    let total = SOURCES * 210;

    // Paused past its session timeout: its slots go to the others, searches do not
    // ask it, and once resumed it gives up and exits 75 for its supervisor.
    let (mut paused, paused_url) = procs.remove(0);
    paused.signal("-STOP")?;
    let live: Vec<String> = procs.iter().map(|(_, u)| id_of(u)).collect();
    balanced(&zkc, &live, within).await?;
    assert!(
        !slots(&zkc)
            .await?
            .values()
            .flatten()
            .any(|i| *i == id_of(&paused_url)),
        "a paused indexer holds no slot"
    );
    counts(&http, &procs[0].1, total, Duration::from_secs(10)).await?;
    paused.signal("-CONT")?;
    let status = paused.wait_exit(Duration::from_secs(15))?;
    assert_eq!(
        status.code(),
        Some(75),
        "a resumed indexer that lost its session exits 75"
    );

    // After the takeover, each survivor's tail still has every shard's new lines,
    // each once.
    for (i, (_, url)) in procs.iter().enumerate() {
        let from = 210 + 10 * i as u64;
        tail_sees_every_line_once(&http, url, &nats.url(), from, from + 10).await?;
    }
    Ok(())
}

/// Regression (issue 21, a fan-out cursor continued after a shard's answering
/// owner changed repeated or skipped hits of one timestamp: each owner has its own
/// uids): two owners of every shard, the first one (slot 0, asked first) with
/// uids far ahead of the second's; half the hits paged with it, then it is killed
/// and the rest paged from the second. Every number comes exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_continues_exactly_on_another_owner() -> anyhow::Result<()> {
    let zk = common::zk::ZooKeeper::start()?;
    let nats = common::nats::Nats::start()?;
    let zk_url = zk.url("cursor");
    let http = client_with_token(TOKEN)?;
    let dirs: Vec<tempfile::TempDir> = (0..2)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    // Alone, the first indexer takes slot 0 of every shard.
    let (first, first_url) = indexer(dirs[0].path(), &zk_url, &nats.url())?;
    // Records of its own, two hours old (outside the searched range), move its
    // uids ahead of the other owner's.
    let old = chrono::Utc::now() - chrono::Duration::hours(2);
    let own: Vec<protocol::LogRecord> = (1..=500u64)
        .map(|i| {
            serde_json::from_value(serde_json::json!({
                "ts": old.to_rfc3339(), "host": "h", "app": "a", "task": "t",
                "msg": format!("own {i}"), "source": "own@1", "offset": i,
            }))
            .unwrap()
        })
        .collect();
    http.post(format!("{first_url}/api/v1/ingest"))
        .body(protocol::encode_ndjson(&own))
        .send()
        .await?
        .error_for_status()?;
    // 20 lines of 30 sources, every line of one timestamp.
    publish(&nats.url(), 0, 20).await?;
    let total = SOURCES * 20;
    counts(&http, &first_url, total, Duration::from_secs(60)).await?;
    let (_second, second_url) = indexer(dirs[1].path(), &zk_url, &nats.url())?;
    // The second has every shard indexed itself.
    eventually(
        "the second owner to hold every shard",
        Duration::from_secs(60),
        || async {
            let v: Value = http
                .get(format!("{second_url}/api/v1/search"))
                .query(&[
                    ("shards", "0,1,2,3,4,5"),
                    ("limit", "0"),
                    ("start", "now-1h"),
                ])
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            Ok((v["total"] == total).then_some(()))
        },
    )
    .await?;
    // Paged (through the second, which asks the first) until a shard is half
    // read with a cursor of the first's uids.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    while seen.len() < (total / 3) as usize || !mid_shard(cursor.as_deref())? {
        let (_, failed, next, numbers) =
            search_all(&http, &second_url, 35, cursor.as_deref()).await?;
        assert!(failed.is_empty(), "failed shards {failed:?}");
        seen.extend(numbers);
        cursor = next;
        anyhow::ensure!(
            cursor.is_some(),
            "paged to the end without a shard half read"
        );
    }
    first.kill9()?;
    while let Some(c) = cursor {
        let (_, failed, next, numbers) = search_all(&http, &second_url, 50, Some(&c)).await?;
        assert!(failed.is_empty(), "failed shards {failed:?}");
        seen.extend(numbers);
        cursor = next;
    }
    let unique: BTreeSet<u64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "a number came twice");
    let want: BTreeSet<u64> = (0..SOURCES)
        .flat_map(|s| (0..20).map(move |l| s * 1_000_000 + l))
        .collect();
    let missing: Vec<&u64> = want.difference(&unique).collect();
    assert!(
        missing.is_empty(),
        "{} numbers never came, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(unique, want, "every number once");
    Ok(())
}

/// Regression (issue 21, the merged live tail missed the lines a new owner had
/// consumed before the switch): the tail of the second of two owners of every
/// shard follows the first (slot 0); the first is paused, lines are published,
/// which only the second consumes; once the first's session is over the tail
/// switches to the second, and catches up: every line arrives exactly once,
/// those published after the switch too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merged_tail_catches_up_after_an_owner_change() -> anyhow::Result<()> {
    let zk = common::zk::ZooKeeper::start()?;
    let nats = common::nats::Nats::start()?;
    let zk_url = zk.url("shards");
    let http = client_with_token(TOKEN)?;
    let dirs: Vec<tempfile::TempDir> = (0..2)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    // Alone, the first indexer takes slot 0 of every shard: the tail follows it.
    let (mut first, first_url) = indexer(dirs[0].path(), &zk_url, &nats.url())?;
    counts(&http, &first_url, 0, Duration::from_secs(30)).await?;
    let (_second, second_url) = indexer(dirs[1].path(), &zk_url, &nats.url())?;
    let zkc = zookeeper_client::Client::connect(&format!("127.0.0.1:{}", zk.port)).await?;
    balanced(
        &zkc,
        &[id_of(&first_url), id_of(&second_url)],
        Duration::from_secs(30),
    )
    .await?;
    let resp = http
        .get(format!("{second_url}/api/v1/tail"))
        .send()
        .await?
        .error_for_status()?;
    let mut body = resp.bytes_stream();
    let mut sse = protocol::sse::Sse::default();
    let mut seen = Vec::new();
    let lines = |from: u64, to: u64| -> BTreeSet<u64> {
        (0..SOURCES)
            .flat_map(|s| (from..to).map(move |l| s * 1_000_000 + l))
            .collect()
    };
    publish(&nats.url(), 0, 5).await?;
    seen.extend(tail_until(&mut body, &mut sse, lines(0, 5)).await?);
    // Only the second consumes these: the first is paused, its streams stall.
    first.signal("-STOP")?;
    publish(&nats.url(), 5, 10).await?;
    seen.extend(tail_until(&mut body, &mut sse, lines(5, 10)).await?);
    // After the switch the tail follows the second directly.
    publish(&nats.url(), 10, 15).await?;
    seen.extend(tail_until(&mut body, &mut sse, lines(10, 15)).await?);
    let unique: BTreeSet<u64> = seen.iter().copied().collect();
    let want = lines(0, 15);
    let missing: Vec<&u64> = want.difference(&unique).collect();
    assert!(
        missing.is_empty(),
        "{} lines never came on the tail, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(unique.len(), seen.len(), "a line came twice on the tail");
    assert_eq!(unique, want);
    first.kill9()?;
    Ok(())
}

/// The numbers of the lines a tail's `body` brings until every one of `want`
/// came and a second more passed (or 30 s), in arrival order.
async fn tail_until<S, B>(
    body: &mut S,
    sse: &mut protocol::sse::Sse,
    want: BTreeSet<u64>,
) -> anyhow::Result<Vec<u64>>
where
    S: futures::Stream<Item = Result<B, reqwest::Error>> + Unpin,
    B: AsRef<[u8]>,
{
    use futures::StreamExt;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut quiet_until = None;
    loop {
        let next = tokio::time::timeout_at(quiet_until.unwrap_or(deadline), body.next());
        let chunk = match next.await {
            Ok(Some(chunk)) => chunk?,
            Ok(None) => anyhow::bail!("the tail ended"),
            Err(_) => break,
        };
        for event in sse.push(chunk.as_ref()) {
            if event.kind != "message" {
                continue;
            }
            let r: Value = serde_json::from_str(&event.data)?;
            if let Some(n) = r["msg"]
                .as_str()
                .and_then(|m| m.strip_prefix("number "))
                .and_then(|n| n.parse::<u64>().ok())
            {
                got.push(n);
            }
        }
        let have: BTreeSet<u64> = got.iter().copied().collect();
        if quiet_until.is_none() && want.is_subset(&have) {
            quiet_until = Some(tokio::time::Instant::now() + Duration::from_secs(1));
        }
    }
    Ok(got)
}

/// Issue 21: with a byte bound on the ingest log (`[indexer] ingest_log_max_mb`)
/// the stream is trimmed to it as soon as an indexer opens it, and a new owner
/// that cannot rebuild the trimmed records says so in
/// `sandtrail_indexer_ingest_log_trimmed_total` (it would otherwise look whole).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_bound_on_the_log_is_counted_when_it_trims() -> anyhow::Result<()> {
    let zk = common::zk::ZooKeeper::start()?;
    let nats = common::nats::Nats::start()?;
    let http = client_with_token(TOKEN)?;
    let dir = tempfile::tempdir()?;
    // About 2.5 MB of messages, more than the 1 MiB bound.
    publish(&nats.url(), 0, 300).await?;
    let (_proc, url) = indexer_with_env(
        dir.path(),
        &zk.url("bound"),
        &nats.url(),
        1,
        &[("SANDTRAIL_INDEXER_INGEST_LOG_MAX_MB", "1".to_string())],
    )?;
    let (_, mut stream) = protocol::ingest_log::open(&LogConfig::new(nats.url()))
        .await
        .map_err(anyhow::Error::msg)?;
    let info = stream.info().await?;
    assert_eq!(info.config.max_bytes, 1 << 20, "the indexer set the bound");
    assert!(
        info.state.bytes <= 1 << 20,
        "trimmed to it: {:?}",
        info.state
    );
    let trimmed = eventually(
        "the trimmed records counted",
        Duration::from_secs(30),
        || async {
            let text = http
                .get(format!("{url}/metrics"))
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?;
            let n = text
                .lines()
                .find_map(|l| l.strip_prefix("sandtrail_indexer_ingest_log_trimmed_total "))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0);
            Ok((n > 0).then_some(n))
        },
    )
    .await?;
    assert!(trimmed <= 6, "at most once per shard: {trimmed}");
    let (total, failed, _, _) = search_all(&http, &url, 0, None).await?;
    assert!(
        failed.is_empty() && total < SOURCES * 300,
        "{total} of {}",
        SOURCES * 300
    );
    Ok(())
}

/// Whether a fan-out cursor (`s1.<hex JSON>`) has a shard half read: with its
/// owner's cursor, not done.
fn mid_shard(cursor: Option<&str>) -> anyhow::Result<bool> {
    let Some(hex) = cursor.and_then(|c| c.strip_prefix("s1.")) else {
        return Ok(false);
    };
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()?;
    let state: BTreeMap<String, Value> = serde_json::from_slice(&bytes)?;
    Ok(state
        .values()
        .any(|s| s["c"].is_string() && s["done"] != true))
}

/// Opens `url`'s live tail (no `shards=`: the fan-out), publishes lines
/// `from..to` of every source, and reads the stream until each has come and a
/// second longer: every one exactly once, without event ids.
async fn tail_sees_every_line_once(
    http: &reqwest::Client,
    url: &str,
    nats: &str,
    from: u64,
    to: u64,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let resp = http
        .get(format!("{url}/api/v1/tail"))
        .send()
        .await?
        .error_for_status()?;
    assert_eq!(
        resp.headers()["x-sandtrail-tail-resumed"],
        "false",
        "a merged tail cannot resume"
    );
    publish(nats, from, to).await?;
    let want: BTreeSet<u64> = (0..SOURCES)
        .flat_map(|s| (from..to).map(move |l| s * 1_000_000 + l))
        .collect();
    let mut seen = Vec::new();
    let mut body = resp.bytes_stream();
    let mut sse = protocol::sse::Sse::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut quiet_until = None;
    loop {
        let chunk =
            match tokio::time::timeout_at(quiet_until.unwrap_or(deadline), body.next()).await {
                Ok(Some(chunk)) => chunk?,
                Ok(None) => anyhow::bail!("the tail of {url} ended"),
                Err(_) => break,
            };
        for event in sse.push(&chunk) {
            if event.kind != "message" {
                continue;
            }
            assert_eq!(event.id, None, "a merged tail has no event ids");
            let r: Value = serde_json::from_str(&event.data)?;
            // Lines of this round only: an owner that takes a shard over replays
            // older ones into its own tail.
            if let Some(n) = r["msg"]
                .as_str()
                .and_then(|m| m.strip_prefix("number "))
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|n| (from..to).contains(&(n % 1_000_000)))
            {
                seen.push(n);
            }
        }
        if quiet_until.is_none() && seen.len() >= want.len() {
            quiet_until = Some(tokio::time::Instant::now() + Duration::from_secs(1));
        }
    }
    let unique: BTreeSet<u64> = seen.iter().copied().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "a line came twice on {url}'s tail"
    );
    assert_eq!(unique, want, "every new line on {url}'s tail");
    Ok(())
}

/// BENCHMARKS.md: 60,000 records of 30 sources already in the log, then 1, 2 or 3
/// indexers (one owner per shard, so each indexes only its shards) start; the time
/// until a fanned-out search counts them all, then the median of 20 fanned-out
/// searches (newest 100 of everything).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: cargo test --test shards scale_out -- --ignored --nocapture"]
async fn scale_out() -> anyhow::Result<()> {
    let http = client_with_token(TOKEN)?;
    for n in 1..=3usize {
        let zk = common::zk::ZooKeeper::start()?;
        let nats = common::nats::Nats::start()?;
        publish(&nats.url(), 0, 2000).await?;
        let dirs: Vec<tempfile::TempDir> = (0..n)
            .map(|_| tempfile::tempdir())
            .collect::<Result<_, _>>()?;
        let started = std::time::Instant::now();
        let mut procs = Vec::new();
        for d in &dirs {
            procs.push(indexer_with_owners(
                d.path(),
                &zk.url("bench"),
                &nats.url(),
                1,
            )?);
        }
        counts(&http, &procs[0].1, SOURCES * 2000, Duration::from_secs(300)).await?;
        let ingest = started.elapsed();
        let mut lat = Vec::new();
        for _ in 0..20 {
            let t = std::time::Instant::now();
            let (total, failed, _, hits) = search_all(&http, &procs[0].1, 100, None).await?;
            lat.push(t.elapsed());
            assert!(total == SOURCES * 2000 && failed.is_empty() && hits.len() == 100);
        }
        lat.sort();
        eprintln!(
            "indexers={n}: 60000 records searchable after {ingest:?} ({:.0} records/s incl. startup), search p50 {:?} max {:?}",
            60_000.0 / ingest.as_secs_f64(),
            lat[10],
            lat[19]
        );
    }
    Ok(())
}
