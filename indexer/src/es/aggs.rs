//! Aggregations in Elasticsearch's JSON: `date_histogram` (fixed intervals),
//! `terms` on keyword fields, and `percentiles`, `avg`, `min`, `max`, `sum` and
//! `value_count` on numeric fields, each one pass of a collector of
//! [`crate::collect`] over the matches of the search.
//!
//! Percentiles are exact (every value is held and sorted), as the native latency
//! table; sub-aggregations are refused rather than approximated.

use super::dsl::{bad, target, Target};
use crate::analytics::percentile_of_sorted;
use crate::collect::{DateBuckets, KeywordCounts, NumericColumn, NumericValues};
use crate::error::Result;
use crate::search::IndexView;
use chrono::{DateTime, SecondsFormat};
use serde_json::{json, Map, Value};
use tantivy::query::Query;

/// Default `percents` of a `percentiles` aggregation, as in Elasticsearch.
pub const DEFAULT_PERCENTS: [f64; 7] = [1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0];
/// Most buckets a `date_histogram` may produce.
pub const MAX_BUCKETS: i64 = 65_536;

/// The `aggs` (or `aggregations`) of a search, over its matches; blocking.
pub(super) fn run_aggs(view: &IndexView, matching: &dyn Query, aggs: &Value) -> Result<Value> {
    let aggs = aggs
        .as_object()
        .ok_or_else(|| bad("aggs must be an object"))?;
    let searcher = view.searcher();
    let mut out = Map::new();
    for (name, spec) in aggs {
        let obj = spec
            .as_object()
            .ok_or_else(|| bad(format!("aggregation {name:?} must be an object")))?;
        if obj.contains_key("aggs") || obj.contains_key("aggregations") {
            return Err(bad(format!(
                "aggregation {name:?}: sub-aggregations are not supported"
            )));
        }
        let (kind, body) = obj
            .iter()
            .find(|(k, _)| k.as_str() != "meta")
            .ok_or_else(|| bad(format!("aggregation {name:?} has no type")))?;
        let field = body
            .get("field")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let result = match kind.as_str() {
            "date_histogram" => {
                if target(field) != Target::Ts {
                    return Err(bad(format!(
                        "date_histogram {name:?}: only on @timestamp, not {field:?}"
                    )));
                }
                let interval = ["fixed_interval", "calendar_interval", "interval"]
                    .iter()
                    .find_map(|k| body.get(*k).and_then(Value::as_str))
                    .ok_or_else(|| bad(format!("date_histogram {name:?} needs fixed_interval")))?;
                let micros = parse_interval(interval)?;
                let min_doc_count = body.get("min_doc_count").and_then(Value::as_u64).unwrap_or(0);
                let counts = searcher.search(matching, &DateBuckets {
                        interval: micros,
                        columns: view.parts.columns().clone(),
                    })?;
                let mut buckets = Vec::new();
                if let (Some(first), Some(last)) = (counts.keys().next(), counts.keys().last()) {
                    if (last - first) / micros > MAX_BUCKETS {
                        return Err(bad(format!(
                            "date_histogram {name:?}: interval {interval} gives more than {MAX_BUCKETS} buckets"
                        )));
                    }
                    let mut t = *first;
                    while t <= *last {
                        let c = counts.get(&t).copied().unwrap_or(0);
                        if c >= min_doc_count {
                            let key = t.div_euclid(1000);
                            let key_str = DateTime::from_timestamp_millis(key)
                                .map(|d| d.to_rfc3339_opts(SecondsFormat::Millis, true))
                                .unwrap_or_default();
                            buckets.push(json!({ "key_as_string": key_str, "key": key, "doc_count": c }));
                        }
                        t += micros;
                    }
                }
                json!({ "buckets": buckets })
            }
            "terms" => {
                let Target::Keyword(kw) = target(field) else {
                    return Err(bad(format!(
                        "terms {name:?}: only on keyword fields (host.name, service.name, log.level, ...), not {field:?}"
                    )));
                };
                let size = body.get("size").and_then(Value::as_u64).unwrap_or(10) as usize;
                let mut counts = searcher
                    .search(matching, &KeywordCounts { fields: vec![kw] })?
                    .pop()
                    .unwrap_or_default()
                    .into_iter()
                    .collect::<Vec<_>>();
                counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                let other: u64 = counts.iter().skip(size).map(|(_, c)| c).sum();
                let buckets: Vec<Value> = counts
                    .into_iter()
                    .take(size)
                    .map(|(k, c)| json!({ "key": k, "doc_count": c }))
                    .collect();
                json!({ "doc_count_error_upper_bound": 0, "sum_other_doc_count": other, "buckets": buckets })
            }
            "percentiles" | "avg" | "min" | "max" | "sum" | "value_count" => {
                let column = match target(field) {
                    Target::F64(n) => NumericColumn::F64(n),
                    Target::U64(n) => NumericColumn::U64(n),
                    _ => {
                        return Err(bad(format!(
                            "{kind} {name:?}: only on numeric fields (latency_ms, http.response.status_code), not {field:?}"
                        )))
                    }
                };
                let mut values = searcher.search(matching, &NumericValues { column })?;
                values.sort_by(f64::total_cmp);
                let n = values.len();
                let some = |x: f64| if n == 0 { Value::Null } else { json!(x) };
                match kind.as_str() {
                    "percentiles" => {
                        let percents: Vec<f64> = match body.get("percents") {
                            Some(Value::Array(a)) => a
                                .iter()
                                .map(|p| p.as_f64().filter(|p| (0.0..=100.0).contains(p)))
                                .collect::<Option<_>>()
                                .ok_or_else(|| bad(format!("percentiles {name:?}: percents must be numbers from 0 to 100")))?,
                            _ => DEFAULT_PERCENTS.to_vec(),
                        };
                        let mut vals = Map::new();
                        for p in percents {
                            vals.insert(format!("{p:?}"), some(percentile_of_sorted(&values, p)));
                        }
                        json!({ "values": vals })
                    }
                    "avg" => json!({ "value": some(values.iter().sum::<f64>() / n.max(1) as f64) }),
                    "min" => json!({ "value": some(values.first().copied().unwrap_or(0.0)) }),
                    "max" => json!({ "value": some(values.last().copied().unwrap_or(0.0)) }),
                    "sum" => json!({ "value": values.iter().sum::<f64>() }),
                    _ => json!({ "value": n }),
                }
            }
            other => {
                return Err(bad(format!(
                    "aggregation type {other:?} is not supported (date_histogram, terms, percentiles, avg, min, max, sum, value_count)"
                )))
            }
        };
        out.insert(name.clone(), result);
    }
    Ok(Value::Object(out))
}

/// `30s`, `5m`, `1h`, `1d`, `1w`, or `minute`/`hour`/`day`/`week`, in micros.
pub(super) fn parse_interval(s: &str) -> Result<i64> {
    let named = match s {
        "second" | "1s" => Some(1),
        "minute" | "1m" => Some(60),
        "hour" | "1h" => Some(3600),
        "day" | "1d" => Some(86_400),
        "week" | "1w" => Some(7 * 86_400),
        _ => None,
    };
    if let Some(secs) = named {
        return Ok(secs * 1_000_000);
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| bad(format!("interval {s:?}: expected e.g. 30s, 5m, 1h, 1d")))?;
    let (digits, unit) = s.split_at(split);
    let n: i64 = digits
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| bad(format!("interval {s:?}: expected a positive amount")))?;
    let unit_micros = match unit {
        "ms" => 1_000,
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        "w" => 7 * 86_400_000_000,
        _ => {
            return Err(bad(format!(
            "interval {s:?}: unit must be ms, s, m, h, d or w (months and years are not supported)"
        )))
        }
    };
    n.checked_mul(unit_micros)
        .ok_or_else(|| bad(format!("interval {s:?} is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse() {
        assert_eq!(parse_interval("30s").unwrap(), 30_000_000);
        assert_eq!(parse_interval("hour").unwrap(), 3_600_000_000);
        assert!(parse_interval("1M").unwrap_err().to_string().contains("1M"));
    }
}
