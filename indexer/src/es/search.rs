//! One `_search` run against the current reader: the query built by [`super::dsl`],
//! a page of hits in time order (newest first unless `sort` asks otherwise), each hit
//! with its `_id`, its `_source` (the document as sent when one was kept, else the
//! record's ECS rendering), `sort` values and `highlight`, and the
//! aggregations of [`super::aggs`] over the same matches.
//!
//! The common case (newest first from the top) counts and pages in one pass of
//! [`crate::collect::NewestTop`]; a cursor or the oldest-first order costs a second
//! pass for the count.

use super::aggs::run_aggs;
use super::bulk::ecs_source;
use super::dsl::{bad, parse_search_after, parse_sort, target, Builder, Target};
use crate::collect::{ByKey, NewestTop, TimeOrder};
use crate::error::Result;
use crate::highlight::{self, FragmentOptions};
use crate::query::{after_cursor, all_of, before_cursor, Cursor};
use crate::schema::{RecordReader, ES_ID};
use crate::search::IndexView;
use serde_json::{json, Value};
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{AllQuery, Query};
use tantivy::TantivyDocument;

/// Default and largest `size` (and `from + size`) of a search.
pub const DEFAULT_SIZE: usize = 10;
pub const MAX_WINDOW: usize = 10_000;

/// What a `highlight` request asks of `msg`, the one field we highlight.
#[derive(Debug, Clone, PartialEq)]
struct HighlightSpec {
    /// The field name as the client spelled it (`message`, `msg`), the key of each
    /// hit's `highlight`.
    key: String,
    opts: FragmentOptions,
}

/// Elasticsearch's defaults: 5 fragments of 100 characters, `<em>` tags.
const ES_FRAGMENT_SIZE: usize = 100;
const ES_FRAGMENTS: usize = 5;

/// `{"fields": {"message": {..}}, "pre_tags": [..], "post_tags": [..],
/// "fragment_size": n, "number_of_fragments": n}`, options per field or for all;
/// `fields` may also be a list of one-field objects. Fields other than the message
/// (or `*`) are accepted and not highlighted. Fragments are always HTML-escaped (as
/// with Elasticsearch's `"encoder": "html"`): log text is untrusted.
fn parse_highlight(v: Option<&Value>) -> Result<Option<HighlightSpec>> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let obj = v
        .as_object()
        .ok_or_else(|| bad(format!("highlight must be an object, got {v}")))?;
    let fields: Vec<(String, Value)> = match obj.get("fields") {
        Some(Value::Object(f)) => f.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_object)
            .flat_map(|f| f.iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect(),
        other => {
            return Err(bad(format!(
                "highlight needs \"fields\", an object of field names, got {}",
                other.map_or("nothing".to_string(), Value::to_string)
            )))
        }
    };
    let Some((name, options)) = fields
        .into_iter()
        .find(|(name, _)| name == "*" || target(name) == Target::Text("msg"))
    else {
        return Ok(None);
    };
    let option = |key: &str| options.get(key).or_else(|| obj.get(key));
    let count = |key: &str, default: usize| -> Result<usize> {
        match option(key) {
            None | Some(Value::Null) => Ok(default),
            Some(n) => n.as_u64().map(|n| n as usize).ok_or_else(|| {
                bad(format!(
                    "highlight {key} must be a non-negative integer, got {n}"
                ))
            }),
        }
    };
    let tag = |key: &str, default: &str| -> Result<String> {
        match option(key) {
            None | Some(Value::Null) => Ok(default.to_string()),
            Some(Value::Array(tags)) => match tags.first() {
                None => Ok(default.to_string()),
                Some(Value::String(t)) => Ok(t.clone()),
                Some(other) => Err(bad(format!(
                    "highlight {key} must hold strings, got {other}"
                ))),
            },
            Some(Value::String(t)) => Ok(t.clone()),
            Some(other) => Err(bad(format!(
                "highlight {key} must be a list of strings, got {other}"
            ))),
        }
    };
    let number = count("number_of_fragments", ES_FRAGMENTS)?;
    let opts = FragmentOptions {
        // 0 fragments: the whole field, highlighted.
        size: if number == 0 {
            0
        } else {
            count("fragment_size", ES_FRAGMENT_SIZE)?
        },
        max: number,
        pre_tag: tag("pre_tags", highlight::PRE_TAG)?,
        post_tag: tag("post_tags", highlight::POST_TAG)?,
    };
    Ok(Some(HighlightSpec {
        key: if name == "*" { "message".into() } else { name },
        opts,
    }))
}

fn usize_param(req: &Value, name: &str, default: usize) -> Result<usize> {
    match req.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| bad(format!("{name} must be a non-negative integer, got {v}"))),
    }
}

/// Runs one `_search` request against the current reader; blocking.
pub fn run_search(view: &IndexView, index: &str, req: &Value) -> Result<Value> {
    let b = Builder { view };
    let mut parts = vec![match req.get("query") {
        None | Some(Value::Null) => Box::new(AllQuery) as Box<dyn Query>,
        Some(q) => b.query(q)?,
    }];
    parts.extend(b.index_filter(index));
    // In shard mode, `shards=` leaves only those shards' documents.
    let matching = view.restricted(all_of(parts));
    let size = usize_param(req, "size", DEFAULT_SIZE)?;
    let from = usize_param(req, "from", 0)?;
    let window = from.saturating_add(size);
    if window > MAX_WINDOW {
        return Err(bad(format!(
            "from + size = {window} is more than {MAX_WINDOW}; use search_after to page deeper"
        )));
    }
    let asc = parse_sort(req.get("sort"))?;
    let cursor = parse_search_after(req.get("search_after"), asc)?;
    let mut highlight = parse_highlight(req.get("highlight"))?
        .map(|spec| -> Result<_> {
            let words = highlight::positive_terms(&*matching, &view.fields.msg_fields());
            let tokenizer = crate::schema::msg_tokenizer();
            Ok((spec, words, tokenizer))
        })
        .transpose()?;
    let searcher = view.searcher();
    let columns = view.parts.columns();
    let (total, top_hits) = if !asc && cursor.is_none() {
        // Newest first from the top, the common case (Kibana's Discover): the count
        // and the page in one pass, reading `_uid` only for contenders.
        let top = NewestTop {
            // Nothing to show: count only, without gathering `from` hits to drop.
            k: if size == 0 { 0 } else { window },
            columns: columns.clone(),
        };
        let (total, hits) = searcher.search(&*matching, &top)?;
        (total, hits.into_iter().skip(from).collect())
    } else {
        let total = searcher.search(&*matching, &Count)?;
        let page = match cursor {
            None => matching.box_clone(),
            Some(c) if asc => all_of(vec![matching.box_clone(), after_cursor(&view.fields, c)]),
            Some(c) => all_of(vec![matching.box_clone(), before_cursor(&view.fields, c)]),
        };
        let hits = if size > 0 {
            let top = TopDocs::with_limit(size)
                .and_offset(from)
                .order_by(ByKey::new(TimeOrder {
                    asc,
                    columns: columns.clone(),
                }));
            searcher.search(&*page, &top)?
        } else {
            Vec::new()
        };
        (total, hits)
    };
    let mut hits = Vec::new();
    if size > 0 {
        let mut records = RecordReader::new(&view.fields);
        // The `_id` column, opened once per segment like the record's own columns.
        let mut ids: std::collections::HashMap<u32, Option<tantivy::columnar::StrColumn>> =
            std::collections::HashMap::new();
        for ((k_ts, k_uid), addr) in top_hits {
            let (ts_micros, uid) = if asc {
                (k_ts.saturating_neg(), u64::MAX - k_uid)
            } else {
                (k_ts, k_uid)
            };
            let doc: TantivyDocument = searcher.doc(addr)?;
            let segment = searcher.segment_reader(addr.segment_ord);
            let (rec, sent) =
                records.read_with_source(&doc, addr.segment_ord, segment, addr.doc_id)?;
            let ids_col = match ids.entry(addr.segment_ord) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(segment.fast_fields().str(ES_ID)?)
                }
            };
            let id = ids_col
                .as_ref()
                .and_then(|col| {
                    let ord = col.term_ords(addr.doc_id).next()?;
                    let mut s = String::new();
                    col.ord_to_str(ord, &mut s).ok()?.then_some(s)
                })
                .unwrap_or_else(|| format!("{uid:016x}"));
            let hit_index = rec
                .source
                .strip_prefix("es:")
                .unwrap_or("sandtrail")
                .to_string();
            let mut hit = json!({
                "_index": hit_index,
                "_id": id,
                "_score": null,
                "_source": sent.unwrap_or_else(|| ecs_source(&rec)),
                "sort": [ts_micros.div_euclid(1000), Cursor { ts_micros, uid }.encode()],
            });
            if let Some((spec, words, tokenizer)) = &mut highlight {
                let ranges = highlight::match_ranges(tokenizer, words, &rec.msg);
                let fragments = highlight::fragments(&rec.msg, &ranges, &spec.opts);
                // Like Elasticsearch: no `highlight` on a hit where nothing matched.
                if !fragments.is_empty() {
                    hit["highlight"] = json!({ spec.key.as_str(): fragments });
                }
            }
            hits.push(hit);
        }
    }
    let mut resp = json!({
        "timed_out": false,
        "_shards": { "total": 1, "successful": 1, "skipped": 0, "failed": 0 },
        "hits": {
            "total": { "value": total, "relation": "eq" },
            "max_score": null,
            "hits": hits,
        },
    });
    if let Some(aggs) = req.get("aggs").or_else(|| req.get("aggregations")) {
        let out = run_aggs(view, &*matching, aggs)?;
        resp["aggregations"] = out;
    }
    Ok(resp)
}
