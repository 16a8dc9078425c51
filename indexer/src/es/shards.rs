//! The Elasticsearch API of an indexer in shard mode (issue 21): a `_search`,
//! `_count` or `GET _doc` without `shards=` is asked of one owner of every shard
//! ([`crate::fanout::ShardMode::es_each_shard`], `shards=<n>`), and the answers
//! merged here, as Elasticsearch's coordinating node merges its shards' answers.
//!
//! [`plan`] rewrites the request each shard gets: `from`/`size` become `from: 0`,
//! `size: from + size` (each shard's first `from + size` hits hold the merged
//! page), `terms` asks [`crate::fanout::shard_size`] buckets, `avg` becomes a `sum`
//! plus a hidden `value_count`, and `date_histogram` asks non-empty buckets only.
//! [`merge`] puts the answers together: hits k-way by their sort values, totals
//! summed, `_shards` saying which shards failed, and per aggregation what
//! Elasticsearch itself does over shards: `date_histogram` and the `sum`,
//! `value_count`, `min`, `max` and `avg` exact, `terms` summed per key with the
//! same error bound as Elasticsearch's (`doc_count_error_upper_bound`). Exact
//! `percentiles` cannot be merged from the shards' answers, so they are refused
//! with a 400 naming the aggregation rather than answered from one shard.
//!
//! The trade-off of `search_after`: it is passed on to every shard, and the merged
//! order is (time, then each owner's uid): exact unless two shards' owners gave
//! hits of the same microsecond the same uid, where one of them can be skipped at
//! a page boundary.

use super::aggs::{parse_interval, MAX_BUCKETS};
use super::dsl::{bad, parse_sort};
use super::search::{DEFAULT_SIZE, MAX_WINDOW};
use crate::error::Result;
use crate::query::Cursor;
use chrono::{DateTime, SecondsFormat};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Prefix of the hidden `value_count` an `avg` is asked with.
const COUNT_OF: &str = "__sandtrail_count_of:";

/// How one aggregation's shard answers are merged.
#[derive(Debug, Clone, PartialEq)]
pub enum AggMerge {
    DateHistogram {
        interval_ms: i64,
        min_doc_count: u64,
    },
    Terms {
        size: usize,
    },
    Avg,
    Min,
    Max,
    Sum,
    ValueCount,
}

/// What [`plan`] makes of a request: what each shard is asked, and how to merge.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub shard_request: Value,
    pub from: usize,
    pub size: usize,
    pub asc: bool,
    pub aggs: Vec<(String, AggMerge)>,
}

fn usize_of(req: &Value, name: &str, default: usize) -> Result<usize> {
    match req.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| bad(format!("{name} must be a non-negative integer, got {v}"))),
    }
}

/// The request each shard is asked and how their answers merge; refuses what
/// cannot be merged exactly (see the module doc).
pub fn plan(req: &Value) -> Result<Plan> {
    let obj = req
        .as_object()
        .ok_or_else(|| bad("search body must be a JSON object"))?;
    let from = usize_of(req, "from", 0)?;
    let size = usize_of(req, "size", DEFAULT_SIZE)?;
    let window = from.saturating_add(size);
    if window > MAX_WINDOW {
        return Err(bad(format!(
            "from + size = {window} is more than {MAX_WINDOW}; use search_after to page deeper"
        )));
    }
    let asc = parse_sort(req.get("sort"))?;
    let mut shard = obj.clone();
    shard.insert("from".into(), json!(0));
    shard.insert("size".into(), json!(window));
    let mut merges = Vec::new();
    let key = if obj.contains_key("aggs") {
        "aggs"
    } else {
        "aggregations"
    };
    if let Some(aggs) = obj.get(key) {
        let aggs = aggs
            .as_object()
            .ok_or_else(|| bad("aggs must be an object"))?;
        let mut asked = Map::new();
        for (name, spec) in aggs {
            let Some((kind, body)) = spec
                .as_object()
                .and_then(|o| o.iter().find(|(k, _)| k.as_str() != "meta"))
            else {
                // The owners refuse it with their reason.
                asked.insert(name.clone(), spec.clone());
                continue;
            };
            let field = body.get("field").cloned().unwrap_or(Value::Null);
            let merge = match kind.as_str() {
                "date_histogram" => {
                    let interval = ["fixed_interval", "calendar_interval", "interval"]
                        .iter()
                        .find_map(|k| body.get(*k).and_then(Value::as_str))
                        .ok_or_else(|| {
                            bad(format!("date_histogram {name:?} needs fixed_interval"))
                        })?;
                    let min_doc_count = body
                        .get("min_doc_count")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    // Empty buckets are filled in after the merge, over every
                    // shard's range, not each shard's own.
                    let mut s = spec.clone();
                    s[kind.as_str()]["min_doc_count"] = json!(1);
                    asked.insert(name.clone(), s);
                    AggMerge::DateHistogram {
                        interval_ms: (parse_interval(interval)? / 1000).max(1),
                        min_doc_count,
                    }
                }
                "terms" => {
                    if !body.is_object() {
                        return Err(bad(format!("terms {name:?} must be an object, not {body}")));
                    }
                    let size = body.get("size").and_then(Value::as_u64).unwrap_or(10) as usize;
                    let mut s = spec.clone();
                    s["terms"]["size"] = json!(crate::fanout::shard_size(size).max(size));
                    asked.insert(name.clone(), s);
                    AggMerge::Terms { size }
                }
                "avg" => {
                    asked.insert(name.clone(), json!({ "sum": { "field": field } }));
                    asked.insert(
                        format!("{COUNT_OF}{name}"),
                        json!({ "value_count": { "field": field } }),
                    );
                    AggMerge::Avg
                }
                "min" | "max" | "sum" | "value_count" => {
                    asked.insert(name.clone(), spec.clone());
                    match kind.as_str() {
                        "min" => AggMerge::Min,
                        "max" => AggMerge::Max,
                        "sum" => AggMerge::Sum,
                        _ => AggMerge::ValueCount,
                    }
                }
                "percentiles" => {
                    return Err(bad(format!(
                        "aggregation {name:?}: percentiles cannot be merged exactly over the \
                         cluster's shards; ask /api/v1/latency (percentiles within 1 %) or one \
                         shard with ?shards=<n>"
                    )))
                }
                // The owners refuse it with their reason.
                _ => {
                    asked.insert(name.clone(), spec.clone());
                    continue;
                }
            };
            merges.push((name.clone(), merge));
        }
        shard.insert(key.into(), Value::Object(asked));
    }
    Ok(Plan {
        shard_request: Value::Object(shard),
        from,
        size,
        asc,
        aggs: merges,
    })
}

/// A hit's place in the merged order: its time and uid from its `sort` values.
fn sort_key(hit: &Value) -> (i64, u64) {
    let sort = hit["sort"].as_array();
    let cursor = sort
        .and_then(|s| s.iter().find_map(Value::as_str))
        .and_then(|c| Cursor::decode(c).ok());
    match cursor {
        Some(c) => (c.ts_micros, c.uid),
        None => (
            sort.and_then(|s| s.first())
                .and_then(Value::as_i64)
                .unwrap_or(0)
                .saturating_mul(1000),
            0,
        ),
    }
}

/// The shards' answers (`(shard, answer)`; `failed`: shard and why) merged into
/// one `_search` answer of `total` shards.
pub fn merge(
    plan: &Plan,
    total: u32,
    answers: Vec<(u32, Value)>,
    failed: Vec<(u32, String)>,
) -> Result<Value> {
    let mut hits: Vec<(u32, Value)> = Vec::new();
    let mut count = 0u64;
    let mut timed_out = false;
    for (n, a) in &answers {
        count += a
            .pointer("/hits/total/value")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        timed_out |= a["timed_out"].as_bool().unwrap_or(false);
        for h in a
            .pointer("/hits/hits")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            hits.push((*n, h.clone()));
        }
    }
    // Newest first (or oldest first), each shard's own order kept on ties.
    hits.sort_by(|(na, a), (nb, b)| {
        let (ka, kb) = (sort_key(a), sort_key(b));
        let by = if plan.asc { ka.cmp(&kb) } else { kb.cmp(&ka) };
        by.then(na.cmp(nb))
    });
    let page: Vec<Value> = hits
        .into_iter()
        .skip(plan.from)
        .take(plan.size)
        .map(|(_, h)| h)
        .collect();
    let failures: Vec<Value> = failed
        .iter()
        .map(|(n, why)| {
            json!({ "shard": n, "index": "sandtrail", "reason": {
                "type": "no_shard_available_action_exception", "reason": why } })
        })
        .collect();
    let mut shards = json!({
        "total": total,
        "successful": answers.len(),
        "skipped": 0,
        "failed": failed.len(),
    });
    if !failures.is_empty() {
        shards["failures"] = Value::Array(failures);
    }
    let mut out = json!({
        "timed_out": timed_out,
        "_shards": shards,
        "hits": {
            "total": { "value": count, "relation": "eq" },
            "max_score": null,
            "hits": page,
        },
    });
    if !plan.aggs.is_empty() {
        let shard_aggs: Vec<&Value> = answers.iter().map(|(_, a)| &a["aggregations"]).collect();
        let mut merged = Map::new();
        for (name, how) in &plan.aggs {
            let parts: Vec<&Value> = shard_aggs.iter().map(|a| &a[name.as_str()]).collect();
            let value = match how {
                AggMerge::DateHistogram {
                    interval_ms,
                    min_doc_count,
                } => merge_date_histogram(name, &parts, *interval_ms, *min_doc_count)?,
                AggMerge::Terms { size } => merge_terms(&parts, *size),
                AggMerge::Sum => json!({ "value": sum_of(&parts) }),
                AggMerge::ValueCount => json!({ "value": sum_of(&parts) as u64 }),
                AggMerge::Min | AggMerge::Max => {
                    let vals = parts.iter().filter_map(|p| p["value"].as_f64());
                    let v = if *how == AggMerge::Min {
                        vals.reduce(f64::min)
                    } else {
                        vals.reduce(f64::max)
                    };
                    json!({ "value": v })
                }
                AggMerge::Avg => {
                    let counts: Vec<&Value> = shard_aggs
                        .iter()
                        .map(|a| &a[format!("{COUNT_OF}{name}").as_str()])
                        .collect();
                    let n = sum_of(&counts);
                    let v = (n > 0.0).then(|| sum_of(&parts) / n);
                    json!({ "value": v })
                }
            };
            merged.insert(name.clone(), value);
        }
        out["aggregations"] = Value::Object(merged);
    }
    Ok(out)
}

fn sum_of(parts: &[&Value]) -> f64 {
    parts.iter().filter_map(|p| p["value"].as_f64()).sum()
}

/// Buckets summed per key, then the empty ones between the first and the last
/// filled in (as one index answers them) and `min_doc_count` applied.
fn merge_date_histogram(
    name: &str,
    parts: &[&Value],
    interval_ms: i64,
    min_doc_count: u64,
) -> Result<Value> {
    let mut counts: BTreeMap<i64, u64> = BTreeMap::new();
    for p in parts {
        for b in p["buckets"].as_array().into_iter().flatten() {
            if let Some(k) = b["key"].as_i64() {
                *counts.entry(k).or_default() += b["doc_count"].as_u64().unwrap_or(0);
            }
        }
    }
    let mut buckets = Vec::new();
    if let (Some(&first), Some(&last)) = (counts.keys().next(), counts.keys().last()) {
        if (last - first) / interval_ms > MAX_BUCKETS {
            return Err(bad(format!(
                "date_histogram {name:?}: interval {interval_ms} ms gives more than {MAX_BUCKETS} buckets"
            )));
        }
        let mut t = first;
        while t <= last {
            let c = counts.get(&t).copied().unwrap_or(0);
            if c >= min_doc_count {
                let key_str = DateTime::from_timestamp_millis(t)
                    .map(|d| d.to_rfc3339_opts(SecondsFormat::Millis, true))
                    .unwrap_or_default();
                buckets.push(json!({ "key_as_string": key_str, "key": t, "doc_count": c }));
            }
            t += interval_ms;
        }
    }
    Ok(json!({ "buckets": buckets }))
}

/// Counts summed per key over the shards' top buckets, the `size` largest kept.
/// As Elasticsearch's: a key outside a shard's top is missing from that shard's
/// count, by at most that shard's smallest returned count, which
/// `doc_count_error_upper_bound` adds up over the shards that left keys out.
fn merge_terms(parts: &[&Value], size: usize) -> Value {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut all = 0u64;
    let mut error = 0u64;
    for p in parts {
        let buckets = p["buckets"].as_array().cloned().unwrap_or_default();
        let other = p["sum_other_doc_count"].as_u64().unwrap_or(0);
        all += other;
        for b in &buckets {
            let c = b["doc_count"].as_u64().unwrap_or(0);
            all += c;
            let key = match &b["key"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            *counts.entry(key).or_default() += c;
        }
        if other > 0 {
            error += buckets
                .iter()
                .filter_map(|b| b["doc_count"].as_u64())
                .min()
                .unwrap_or(0);
        }
    }
    let mut sorted: Vec<(String, u64)> = counts.into_iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sorted.truncate(size);
    let kept: u64 = sorted.iter().map(|(_, c)| c).sum();
    json!({
        "doc_count_error_upper_bound": error,
        "sum_other_doc_count": all - kept,
        "buckets": sorted
            .into_iter()
            .map(|(k, c)| json!({ "key": k, "doc_count": c }))
            .collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(ts_ms: i64, uid: u64, msg: &str) -> Value {
        let c = Cursor {
            ts_micros: ts_ms * 1000,
            uid,
        };
        json!({ "_id": msg, "_source": { "message": msg }, "sort": [ts_ms, c.encode()] })
    }

    fn answer(total: u64, hits: Vec<Value>, aggs: Value) -> Value {
        json!({ "timed_out": false, "hits": { "total": { "value": total }, "hits": hits },
                "aggregations": aggs })
    }

    #[test]
    fn a_page_is_merged_from_each_shards_first_from_plus_size() {
        let p = plan(&json!({ "from": 1, "size": 2, "query": { "match_all": {} } })).unwrap();
        assert_eq!(p.shard_request["from"], 0);
        assert_eq!(p.shard_request["size"], 3);
        assert_eq!(p.shard_request["query"], json!({ "match_all": {} }));
        let a = answer(
            10,
            vec![hit(9, 1, "a9"), hit(5, 2, "a5"), hit(1, 3, "a1")],
            json!({}),
        );
        let b = answer(4, vec![hit(8, 1, "b8"), hit(7, 2, "b7")], json!({}));
        let m = merge(&p, 3, vec![(0, a), (1, b)], vec![(2, "gone".into())]).unwrap();
        let ids: Vec<&str> = m["hits"]["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["b8", "b7"], "newest first, the first one skipped");
        assert_eq!(m["hits"]["total"]["value"], 14);
        assert_eq!(m["_shards"]["total"], 3);
        assert_eq!(m["_shards"]["successful"], 2);
        assert_eq!(m["_shards"]["failed"], 1);
        assert_eq!(m["_shards"]["failures"][0]["shard"], 2);
        let asc = plan(&json!({ "size": 1, "sort": [{ "@timestamp": "asc" }] })).unwrap();
        let a = answer(1, vec![hit(3, 1, "a3")], json!({}));
        let b = answer(1, vec![hit(2, 1, "b2")], json!({}));
        let m = merge(&asc, 2, vec![(0, a), (1, b)], vec![]).unwrap();
        assert_eq!(m["hits"]["hits"][0]["_id"], "b2");
        assert!(m["_shards"].get("failures").is_none());
        assert!(plan(&json!({ "from": 9990, "size": 20 })).is_err());
    }

    /// Bug: `"terms": 5` (not an object) reached `s["terms"]["size"] = ...`,
    /// which panics in serde_json; the shard's handler died instead of a 400.
    #[test]
    fn a_terms_aggregation_that_is_not_an_object_is_a_400_not_a_panic() {
        for body in [json!(5), json!("host.name"), json!([1])] {
            let Err(e) = plan(&json!({ "aggs": { "t": { "terms": body } } })) else {
                panic!("terms {body} was accepted");
            };
            assert!(
                e.to_string().contains("terms \"t\" must be an object"),
                "{e}"
            );
        }
    }

    #[test]
    fn aggregations_merge_exactly_or_are_refused_by_name() {
        let p = plan(&json!({ "size": 0, "aggs": {
            "per": { "date_histogram": { "field": "@timestamp", "fixed_interval": "1s" } },
            "hosts": { "terms": { "field": "host.name", "size": 2 } },
            "mean": { "avg": { "field": "latency_ms" } },
            "low": { "min": { "field": "latency_ms" } },
            "high": { "max": { "field": "latency_ms" } },
            "total": { "sum": { "field": "latency_ms" } },
            "n": { "value_count": { "field": "latency_ms" } },
        }}))
        .unwrap();
        let asked = &p.shard_request["aggs"];
        assert_eq!(asked["hosts"]["terms"]["size"], 13, "shard_size(2)");
        assert_eq!(asked["mean"], json!({ "sum": { "field": "latency_ms" } }));
        assert_eq!(
            asked[format!("{COUNT_OF}mean").as_str()]["value_count"]["field"],
            "latency_ms"
        );
        assert_eq!(asked["per"]["date_histogram"]["min_doc_count"], 1);
        let b = |k: i64, c: u64| json!({ "key": k, "doc_count": c });
        let t = |k: &str, c: u64| json!({ "key": k, "doc_count": c });
        let a = answer(
            3,
            vec![],
            json!({
                "per": { "buckets": [b(1000, 2)] },
                "hosts": { "sum_other_doc_count": 1, "buckets": [t("x", 5), t("y", 2)] },
                "mean": { "value": 30.0 }, format!("{COUNT_OF}mean"): { "value": 3 },
                "low": { "value": 4.0 }, "high": { "value": 20.0 },
                "total": { "value": 30.0 }, "n": { "value": 3 },
            }),
        );
        let c = answer(
            1,
            vec![],
            json!({
                "per": { "buckets": [b(3000, 1)] },
                "hosts": { "sum_other_doc_count": 0, "buckets": [t("y", 4)] },
                "mean": { "value": 10.0 }, format!("{COUNT_OF}mean"): { "value": 1 },
                "low": { "value": null }, "high": { "value": 50.0 },
                "total": { "value": 10.0 }, "n": { "value": 1 },
            }),
        );
        let m = merge(&p, 2, vec![(0, a), (1, c)], vec![]).unwrap();
        let aggs = &m["aggregations"];
        let per: Vec<(i64, u64)> = aggs["per"]["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (b["key"].as_i64().unwrap(), b["doc_count"].as_u64().unwrap()))
            .collect();
        assert_eq!(
            per,
            [(1000, 2), (2000, 0), (3000, 1)],
            "summed, gaps filled"
        );
        assert_eq!(
            aggs["hosts"]["buckets"],
            json!([t("y", 6), t("x", 5)]),
            "summed per key"
        );
        assert_eq!(aggs["hosts"]["sum_other_doc_count"], 1);
        assert_eq!(aggs["hosts"]["doc_count_error_upper_bound"], 2);
        assert_eq!(aggs["mean"]["value"], 10.0, "(30 + 10) / (3 + 1)");
        assert_eq!(aggs["low"]["value"], 4.0);
        assert_eq!(aggs["high"]["value"], 50.0);
        assert_eq!(aggs["total"]["value"], 40.0);
        assert_eq!(aggs["n"]["value"], 4);
        assert!(aggs.get(format!("{COUNT_OF}mean")).is_none());

        let refused = plan(&json!({ "aggs": {
            "p": { "percentiles": { "field": "latency_ms" } } } }))
        .unwrap_err()
        .to_string();
        assert!(
            refused.contains("\"p\"") && refused.contains("percentiles"),
            "{refused}"
        );
    }
}
