//! `_bulk` bodies and the ECS mapping: action and document lines parsed into items,
//! each document mapped onto a `LogRecord`, and records rendered back in ECS shape
//! for search hits.
//!
//! A document is mapped: ECS names land on the record's own fields and everything
//! else in `fields`, flattened to dotted keys, which is what is indexed. When the
//! ECS rendering of that record ([`ecs_source`]) is not the document the client
//! sent, the document is kept too ([`BulkItem::source`]) and is what hits return
//! as `_source` (see the module doc of `crate::es` for the trade-off).

use crate::error::{Error, Result};
use crate::query::parse_time;
use chrono::{DateTime, SecondsFormat, Utc};
use protocol::{Level, LogRecord, Stream};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// A failed bulk item, in Elasticsearch's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemError {
    pub status: u16,
    pub kind: &'static str,
    pub reason: String,
}

/// One action of a bulk body.
#[derive(Debug)]
pub struct BulkItem {
    /// `index` or `create` (or the unsupported action, echoed back).
    pub action: String,
    pub index: String,
    pub id: String,
    pub doc: std::result::Result<LogRecord, ItemError>,
    /// The document as sent, when [`ecs_source`] of `doc` would not give it back.
    pub source: Option<Value>,
}

static GENERATED_IDS: AtomicU64 = AtomicU64::new(0);

/// A unique-enough id for documents sent without one: time plus a process counter.
fn generate_id() -> String {
    let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64;
    let n = GENERATED_IDS.fetch_add(1, Ordering::Relaxed);
    format!("{nanos:x}{n:06x}")
}

/// Splits a bulk body into items. A malformed action line (or a missing document
/// line) fails the whole request with the line number, as Elasticsearch does; a
/// document that cannot be mapped fails only its item.
pub fn parse_bulk(body: &[u8], default_index: Option<&str>) -> Result<Vec<BulkItem>> {
    let text = std::str::from_utf8(body)
        .map_err(|e| Error::BadBody(format!("bulk body is not UTF-8: {e}")))?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let mut items = Vec::new();
    while let Some((n, line)) = lines.next() {
        let lineno = n + 1;
        let action: Map<String, Value> = serde_json::from_str(line).map_err(|e| {
            Error::BadBody(format!("bulk line {lineno}: invalid action {line:?}: {e}"))
        })?;
        let (name, meta) = match action.iter().next() {
            Some((k, v)) if action.len() == 1 => (k.clone(), v.clone()),
            _ => {
                return Err(Error::BadBody(format!(
                    "bulk line {lineno}: expected one action (index, create) in {line:?}"
                )))
            }
        };
        let index = meta
            .get("_index")
            .and_then(Value::as_str)
            .map(String::from)
            .or_else(|| default_index.map(String::from))
            .unwrap_or_default();
        let id = match meta.get("_id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => generate_id(),
        };
        let needs_doc = name != "delete";
        let doc_line = if needs_doc {
            Some(lines.next().ok_or_else(|| {
                Error::BadBody(format!(
                    "bulk line {lineno}: action {name:?} is missing its document line"
                ))
            })?)
        } else {
            None
        };
        let mut source = None;
        let doc = match (name.as_str(), doc_line) {
            ("index" | "create", Some((dn, dl))) if !index.is_empty() => {
                match serde_json::from_str::<Value>(dl) {
                    Ok(Value::Object(obj)) => {
                        let sent = Value::Object(obj.clone());
                        let rec = record_from_es(&index, obj).map_err(|reason| ItemError {
                            status: 400,
                            kind: "mapper_parsing_exception",
                            reason: format!("line {}: {reason}", dn + 1),
                        });
                        if rec.as_ref().is_ok_and(|r| ecs_source(r) != sent) {
                            source = Some(sent);
                        }
                        rec
                    }
                    Ok(_) => Err(ItemError {
                        status: 400,
                        kind: "mapper_parsing_exception",
                        reason: format!("line {}: the document is not a JSON object", dn + 1),
                    }),
                    Err(e) => Err(ItemError {
                        status: 400,
                        kind: "mapper_parsing_exception",
                        reason: format!("line {}: invalid JSON: {e}", dn + 1),
                    }),
                }
            }
            ("index" | "create", _) => Err(ItemError {
                status: 400,
                kind: "action_request_validation_exception",
                reason: "index is missing: give _index or use /{index}/_bulk".into(),
            }),
            (other, _) => Err(ItemError {
                status: 400,
                kind: "action_request_validation_exception",
                reason: format!(
                    "action {other:?} is not supported: logs are append-only (index, create)"
                ),
            }),
        };
        items.push(BulkItem {
            action: name,
            index,
            id,
            doc,
            source,
        });
    }
    Ok(items)
}

/// Flattens nested objects into dotted keys (`{"host":{"name":"a"}}` →
/// `host.name`); arrays and scalars are leaves.
fn flatten(prefix: &str, obj: Map<String, Value>, out: &mut BTreeMap<String, Value>) {
    for (k, v) in obj {
        let key = if prefix.is_empty() {
            k
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Object(inner) => flatten(&key, inner, out),
            other => {
                out.insert(key, other);
            }
        }
    }
}

/// Maps an ECS (or Sandtrail-shaped) document onto a record; the error names the
/// field and what was expected.
pub fn record_from_es(
    index: &str,
    doc: Map<String, Value>,
) -> std::result::Result<LogRecord, String> {
    let mut flat = BTreeMap::new();
    flatten("", doc, &mut flat);
    let mut take = |names: &[&str]| names.iter().find_map(|n| flat.remove(*n));
    fn string(name: &str, v: Value) -> std::result::Result<String, String> {
        match v {
            Value::String(s) => Ok(s),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            other => Err(format!("field {name}: expected a string, got {other}")),
        }
    }
    let ts = match take(&["@timestamp", "ts", "timestamp"]) {
        None | Some(Value::Null) => Utc::now(),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(DateTime::from_timestamp_millis)
            .ok_or_else(|| format!("field @timestamp: {n} is not epoch milliseconds"))?,
        Some(Value::String(s)) => parse_time("@timestamp", &s, Utc::now()).map_err(|_| {
            format!("field @timestamp: {s:?} is not an RFC 3339 time or epoch milliseconds")
        })?,
        Some(other) => return Err(format!("field @timestamp: expected a time, got {other}")),
    };
    let opt_string =
        |v: Option<Value>, name: &str| -> std::result::Result<Option<String>, String> {
            v.filter(|v| !v.is_null())
                .map(|v| string(name, v))
                .transpose()
        };
    let msg = opt_string(take(&["message", "msg"]), "message")?.unwrap_or_default();
    let host = opt_string(
        take(&["host.name", "host.hostname", "host", "hostname"]),
        "host.name",
    )?
    .unwrap_or_default();
    let app = opt_string(take(&["service.name", "app"]), "service.name")?.unwrap_or_default();
    let task = opt_string(take(&["task", "service.instance.id"]), "task")?.unwrap_or_default();
    let mut rec = LogRecord {
        ts,
        host,
        app,
        task,
        instance: 0,
        stream: Stream::Stdout,
        level: None,
        msg,
        fields: BTreeMap::new(),
        trace_id: None,
        span_id: None,
        parent_span_id: None,
        latency_ms: None,
        status: None,
        method: None,
        path: None,
        peer_host: None,
        peer_app: None,
        source: format!("es:{index}"),
        offset: 0,
    };
    if let Some(level) = opt_string(take(&["log.level", "level"]), "log.level")? {
        match Level::parse(&level) {
            Some(l) => rec.level = Some(l),
            // Keep what cannot be mapped rather than drop it.
            None => {
                rec.fields.insert("log.level".into(), Value::String(level));
            }
        }
    }
    if let Some(s) = opt_string(take(&["stream", "log.origin.stream"]), "stream")? {
        rec.stream = match s.as_str() {
            "stderr" => Stream::Stderr,
            "access" => Stream::Access,
            _ => Stream::Stdout,
        };
    }
    if let Some(id) = opt_string(take(&["trace.id", "trace_id"]), "trace.id")? {
        match protocol::TraceId::parse(&id) {
            Ok(_) => rec.trace_id = Some(id),
            // Indexed as `trace_id` only what has a trace page; the rest is kept.
            Err(_) => {
                rec.fields.insert("trace.id".into(), Value::String(id));
            }
        }
    }
    rec.span_id = opt_string(take(&["span.id", "span_id"]), "span.id")?;
    rec.parent_span_id = opt_string(take(&["parent.id", "parent_span_id"]), "parent.id")?;
    rec.method = opt_string(
        take(&["http.request.method", "method"]),
        "http.request.method",
    )?;
    rec.path = opt_string(take(&["url.path", "path"]), "url.path")?;
    rec.peer_host = opt_string(take(&["peer_host"]), "peer_host")?;
    rec.peer_app = opt_string(take(&["peer_app"]), "peer_app")?;
    match take(&["latency_ms"]) {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => rec.latency_ms = n.as_f64(),
        Some(other) => return Err(format!("field latency_ms: expected a number, got {other}")),
    }
    match take(&["http.response.status_code", "status"]) {
        None | Some(Value::Null) => {}
        Some(v) => {
            let code = v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .and_then(|c| u16::try_from(c).ok())
                .ok_or_else(|| {
                    format!("field http.response.status_code: expected an HTTP status, got {v}")
                })?;
            rec.status = Some(code);
        }
    }
    match take(&["instance"]) {
        None | Some(Value::Null) => {}
        Some(v) => {
            rec.instance = v
                .as_u64()
                .and_then(|c| u32::try_from(c).ok())
                .ok_or_else(|| format!("field instance: expected a small integer, got {v}"))?;
        }
    }
    // `fields.x` from a Sandtrail-shaped document and everything else land in fields.
    for (k, v) in flat {
        let key = k.strip_prefix("fields.").map(String::from).unwrap_or(k);
        rec.fields.insert(key, v);
    }
    Ok(rec)
}

/// The ECS rendering of a record, as search hits return it.
pub fn ecs_source(rec: &LogRecord) -> Value {
    let mut o = Map::new();
    o.insert(
        "@timestamp".into(),
        json!(rec.ts.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    );
    o.insert("message".into(), json!(rec.msg));
    o.insert("host".into(), json!({ "name": rec.host }));
    o.insert("service".into(), json!({ "name": rec.app }));
    let mut log = Map::new();
    if let Some(l) = rec.level {
        log.insert("level".into(), json!(l.as_str()));
    }
    o.insert("log".into(), Value::Object(log));
    if let Some(t) = &rec.trace_id {
        o.insert("trace".into(), json!({ "id": t }));
    }
    if let Some(s) = &rec.span_id {
        o.insert("span".into(), json!({ "id": s }));
    }
    o.insert("task".into(), json!(rec.task));
    o.insert("stream".into(), json!(rec.stream.as_str()));
    for (k, v) in [
        ("latency_ms", rec.latency_ms.map(|l| json!(l))),
        ("status", rec.status.map(|s| json!(s))),
        ("method", rec.method.as_ref().map(|s| json!(s))),
        ("path", rec.path.as_ref().map(|s| json!(s))),
    ] {
        if let Some(v) = v {
            o.insert(k.into(), v);
        }
    }
    for (k, v) in &rec.fields {
        o.entry(k.clone()).or_insert_with(|| v.clone());
    }
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecs_documents_map_onto_the_record() {
        let doc = json!({
            "@timestamp": "2025-06-01T10:00:00.5Z",
            "message": "GET /x took 12ms",
            "host": { "name": "node-1" },
            "service": { "name": "fib" },
            "log": { "level": "WARNING" },
            "trace": { "id": "abc" },
            "latency_ms": 12.5,
            "http": { "response": { "status_code": 503 } },
            "user": { "name": "alice" },
        });
        let Value::Object(obj) = doc else {
            unreachable!()
        };
        let r = record_from_es("logs", obj).unwrap();
        assert_eq!(
            r.ts,
            "2025-06-01T10:00:00.5Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!((r.host.as_str(), r.app.as_str()), ("node-1", "fib"));
        assert_eq!(r.level, Some(Level::Warn));
        assert_eq!(r.trace_id.as_deref(), Some("abc"));
        assert_eq!((r.latency_ms, r.status), (Some(12.5), Some(503)));
        assert_eq!(r.fields.get("user.name"), Some(&json!("alice")));
        assert_eq!(r.source, "es:logs");
        let back = ecs_source(&r);
        assert_eq!(back["host"]["name"], "node-1");
        assert_eq!(back["service"]["name"], "fib");
        assert_eq!(back["user.name"], "alice");
    }

    /// Issue 16: `trace_id` holds only a `protocol::TraceId` (what the web can link
    /// to); another value is kept in `fields`, as an unmappable `log.level` is.
    #[test]
    fn trace_ids_go_through_the_one_parse() {
        let doc = |id: &str| {
            let Value::Object(obj) = json!({ "message": "m", "trace": { "id": id } }) else {
                unreachable!()
            };
            record_from_es("logs", obj).unwrap()
        };
        let r = doc("req-42_a.b");
        assert_eq!(r.trace_id.as_deref(), Some("req-42_a.b"));
        let r = doc("not a trace");
        assert_eq!(r.trace_id, None);
        assert_eq!(r.fields.get("trace.id"), Some(&json!("not a trace")));
    }

    #[test]
    fn wrong_types_name_the_field() {
        for (doc, field) in [
            (json!({"latency_ms": "slow"}), "latency_ms"),
            (json!({"@timestamp": "yesterday"}), "@timestamp"),
            (json!({"http.response.status_code": 99999}), "status_code"),
            (json!({"message": ["a"]}), "message"),
        ] {
            let Value::Object(obj) = doc else {
                unreachable!()
            };
            let err = record_from_es("i", obj).unwrap_err();
            assert!(err.contains(field), "{err}");
        }
    }

    /// Issue 17: the document as sent is kept only when the mapping's rendering
    /// would not give it back, so documents shaped like our own hits (a reindex from
    /// Sandtrail) cost nothing more.
    #[test]
    fn the_document_is_kept_only_when_its_rendering_differs() {
        let rendered = ecs_source(&record_from_es("a", Map::new()).unwrap());
        let body = format!(
            "{{\"index\":{{}}}}\n{rendered}\n{{\"index\":{{}}}}\n{{\"message\":\"m\",\"user\":{{\"name\":\"x\"}}}}\n"
        );
        let items = parse_bulk(body.as_bytes(), Some("a")).unwrap();
        assert_eq!(items[0].source, None);
        assert_eq!(
            items[1].source,
            Some(json!({ "message": "m", "user": { "name": "x" } }))
        );
    }

    #[test]
    fn bulk_parsing_keeps_order_and_isolates_bad_items() {
        let body = concat!(
            "{\"index\":{\"_index\":\"a\",\"_id\":\"1\"}}\n{\"message\":\"one\"}\n",
            "{\"create\":{\"_id\":2}}\n{\"message\":\"two\"}\n",
            "{\"delete\":{\"_index\":\"a\",\"_id\":\"1\"}}\n",
            "{\"index\":{}}\nnot json\n",
        );
        let items = parse_bulk(body.as_bytes(), Some("dflt")).unwrap();
        assert_eq!(items.len(), 4);
        assert_eq!((items[0].index.as_str(), items[0].id.as_str()), ("a", "1"));
        assert_eq!(
            (items[1].index.as_str(), items[1].id.as_str()),
            ("dflt", "2")
        );
        assert_eq!(items[1].doc.as_ref().unwrap().msg, "two");
        assert!(items[2].doc.as_ref().unwrap_err().reason.contains("delete"));
        let e = items[3].doc.as_ref().unwrap_err();
        assert!(e.reason.contains("line 7"), "{e:?}");
        assert!(!items[3].id.is_empty(), "an id is generated");

        let err = parse_bulk(b"{\"index\":{}}\n", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 1") && err.contains("document line"),
            "{err}"
        );
        let err = parse_bulk(b"[1]\n", None).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
