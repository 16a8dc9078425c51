//! Turning one raw line into a [`LogRecord`]: JSON lines, logfmt-ish text and plain
//! text, plus the router's access records.
//!
//! Everything here is a pure function of the bytes (and the read time), so it is
//! tested directly and fuzzed with proptest. The trade-off is leniency over
//! precision: detection is heuristic (a level word among the first tokens, a leading
//! timestamp, `key=value` pairs) and never fails; a line that matches nothing is still
//! shipped with `msg` = the line and `ts` = the time it was read.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use protocol::{Level, LogRecord, Stream, TaskMeta, TraceId};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// How many leading tokens of a text line may carry its level.
const LEVEL_TOKENS: usize = 6;

/// What was recognised in a line; `None` fields were not found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    pub ts: Option<DateTime<Utc>>,
    pub level: Option<Level>,
    /// `None` means "the line itself".
    pub msg: Option<String>,
    pub fields: BTreeMap<String, Value>,
    pub trace_id: Option<TraceId>,
    pub span_id: Option<String>,
    pub parent_span_id: Option<String>,
    pub latency_ms: Option<f64>,
    pub status: Option<u16>,
}

/// A raw line made safe to index: lossily decoded, without its line ending, cut to
/// `max_bytes` at a char boundary. `original_bytes` is set when it was cut.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub text: String,
    pub original_bytes: Option<u64>,
}

/// Decodes `raw` (invalid UTF-8 becomes U+FFFD, never dropped) and truncates it.
/// `dropped` counts bytes of this line the tailer already discarded (the tail of an
/// overlong line that was never buffered), so `original_bytes` is the line's full
/// length without its line ending.
pub fn prepare_line(raw: &[u8], dropped: u64, max_bytes: usize) -> Line {
    let mut raw = raw;
    if let Some(r) = raw.strip_suffix(b"\n") {
        raw = r;
    }
    if let Some(r) = raw.strip_suffix(b"\r") {
        raw = r;
    }
    prepare_stripped(raw, dropped, max_bytes)
}

/// [`prepare_line`] for a line already without its line ending.
fn prepare_stripped(raw: &[u8], dropped: u64, max_bytes: usize) -> Line {
    // Decode at most a little more than we keep, so a huge line costs no huge string.
    let keep_raw = &raw[..raw.len().min(max_bytes.saturating_add(4))];
    let mut text = String::from_utf8_lossy(keep_raw).into_owned();
    let mut cut = dropped > 0 || raw.len() > keep_raw.len();
    if text.len() > max_bytes {
        let mut end = max_bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        cut = true;
    }
    Line {
        text,
        original_bytes: cut.then_some(raw.len() as u64 + dropped),
    }
}

/// [`prepare_line`] for a line the caller owns: a valid, short line (nearly every
/// line) becomes the `String` without being copied.
pub fn prepare_owned(mut raw: Vec<u8>, dropped: u64, max_bytes: usize) -> Line {
    if raw.last() == Some(&b'\n') {
        raw.pop();
    }
    if raw.last() == Some(&b'\r') {
        raw.pop();
    }
    if dropped == 0 && raw.len() <= max_bytes {
        match String::from_utf8(raw) {
            Ok(text) => {
                return Line {
                    text,
                    original_bytes: None,
                }
            }
            Err(e) => raw = e.into_bytes(),
        }
    }
    // Regression (found by the proptest): handing the already stripped line to
    // `prepare_line` stripped a second line ending from a line that had two.
    prepare_stripped(&raw, dropped, max_bytes)
}

/// Appends the NDJSON of one line of a task's stdout/stderr to `out`: the same record
/// [`sandbox_record`] builds, with `source` and `offset` set, but serialised from
/// borrowed data (no owned record per line; this is the shipper's hot path).
pub fn encode_sandbox_line(
    line: &Line,
    meta: &TaskMeta,
    stream: Stream,
    now: DateTime<Utc>,
    source: &str,
    offset: u64,
    out: &mut Vec<u8>,
) {
    let mut parsed = parse_line(&line.text);
    if let Some(n) = line.original_bytes {
        mark_truncated(&mut parsed.fields, n);
    }
    protocol::LogRecordRef {
        ts: parsed.ts.unwrap_or(now),
        host: &meta.host,
        app: &meta.app,
        task: &meta.task,
        instance: meta.instance,
        stream,
        level: parsed.level,
        msg: parsed.msg.as_deref().unwrap_or(&line.text),
        fields: &parsed.fields,
        trace_id: parsed.trace_id.as_ref().map(TraceId::as_str),
        span_id: parsed.span_id.as_deref(),
        parent_span_id: parsed.parent_span_id.as_deref(),
        latency_ms: parsed.latency_ms,
        status: parsed.status,
        method: None,
        path: None,
        peer_host: None,
        peer_app: None,
        source,
        offset,
    }
    .write_ndjson(out);
}

/// The record for one line of a task's stdout/stderr, tagged with its task.
pub fn sandbox_record(
    line: &Line,
    meta: &TaskMeta,
    stream: Stream,
    now: DateTime<Utc>,
) -> LogRecord {
    let parsed = parse_line(&line.text);
    let mut rec = LogRecord::new(parsed.ts.unwrap_or(now), meta, stream, String::new());
    rec.msg = parsed.msg.unwrap_or_else(|| line.text.clone());
    rec.level = parsed.level;
    rec.fields = parsed.fields;
    rec.trace_id = parsed.trace_id.map(String::from);
    rec.span_id = parsed.span_id;
    rec.parent_span_id = parsed.parent_span_id;
    rec.latency_ms = parsed.latency_ms;
    rec.status = parsed.status;
    if let Some(n) = line.original_bytes {
        mark_truncated(&mut rec.fields, n);
    }
    rec
}

/// The record for one line of the router's access log. The router writes complete
/// records; a line that is not one (torn, truncated, foreign) is kept as a plain
/// warn-level record of app `router` rather than dropped.
pub fn access_record(line: &Line, host: &str, now: DateTime<Utc>) -> LogRecord {
    if line.original_bytes.is_none() {
        if let Ok(mut rec) = serde_json::from_str::<LogRecord>(&line.text) {
            rec.stream = Stream::Access;
            return rec;
        }
    }
    let meta = TaskMeta {
        host: host.to_string(),
        app: "router".into(),
        task: "router".into(),
        instance: 0,
        ports: Vec::new(),
    };
    let mut rec = LogRecord::new(now, &meta, Stream::Access, line.text.clone());
    rec.level = Some(Level::Warn);
    if let Some(n) = line.original_bytes {
        mark_truncated(&mut rec.fields, n);
    }
    rec
}

fn mark_truncated(fields: &mut BTreeMap<String, Value>, original_bytes: u64) {
    fields.insert("truncated".into(), Value::Bool(true));
    fields.insert("original_bytes".into(), Value::from(original_bytes));
}

/// Recognises what it can in one line (already decoded, without its newline).
pub fn parse_line(line: &str) -> Parsed {
    let trimmed = line.trim_start();
    if trimmed.starts_with('{') {
        if let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(trimmed) {
            return parse_json(obj);
        }
    }
    parse_text(line)
}

fn parse_json(mut obj: Map<String, Value>) -> Parsed {
    let level = take_first(&mut obj, &["level", "lvl", "severity"], json_level);
    let msg = take_first(&mut obj, &["msg", "message"], |v| {
        v.as_str().map(str::to_string)
    });
    let ts = take_first(
        &mut obj,
        &["ts", "time", "timestamp", "@timestamp"],
        json_ts,
    );
    let trace_id = take_first(
        &mut obj,
        &["trace_id", "traceId", "trace.id"],
        json_trace_id,
    )
    .or_else(|| take_nested_id(&mut obj, "trace", json_trace_id));
    let span_id = take_first(&mut obj, &["span_id", "spanId", "span.id"], json_id)
        .or_else(|| take_nested_id(&mut obj, "span", json_id));
    let parent_span_id = take_first(&mut obj, &["parent_span_id", "parentSpanId"], json_id);
    let latency_ms = take_first(&mut obj, &["latency_ms"], |v| {
        v.as_f64().filter(|f| f.is_finite())
    });
    let status = take_first(&mut obj, &["status"], json_status);
    Parsed {
        ts,
        level,
        msg,
        fields: obj.into_iter().collect(),
        trace_id,
        span_id,
        parent_span_id,
        latency_ms,
        status,
    }
}

/// Removes and converts the first key that converts; keys whose value does not
/// convert stay in the object, so nothing the line said is lost.
fn take_first<T>(
    obj: &mut Map<String, Value>,
    keys: &[&str],
    convert: impl Fn(&Value) -> Option<T>,
) -> Option<T> {
    for key in keys {
        if let Some(out) = obj.get(*key).and_then(&convert) {
            obj.remove(*key);
            return Some(out);
        }
    }
    None
}

/// `{"trace": {"id": "..."}}` (ECS style): takes `id` and drops the object if empty.
fn take_nested_id<T>(
    obj: &mut Map<String, Value>,
    key: &str,
    convert: impl Fn(&Value) -> Option<T>,
) -> Option<T> {
    let inner = obj.get_mut(key)?.as_object_mut()?;
    let id = convert(inner.get("id")?)?;
    inner.remove("id");
    if inner.is_empty() {
        obj.remove(key);
    }
    Some(id)
}

fn json_level(v: &Value) -> Option<Level> {
    match v {
        Value::String(s) => Level::parse(s),
        // Bunyan/pino numeric levels.
        Value::Number(n) => match n.as_u64()? {
            10 => Some(Level::Trace),
            20 => Some(Level::Debug),
            30 => Some(Level::Info),
            40 => Some(Level::Warn),
            50 => Some(Level::Error),
            60 => Some(Level::Fatal),
            _ => None,
        },
        _ => None,
    }
}

fn json_ts(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::String(s) => parse_timestamp(s),
        Value::Number(n) => epoch_to_ts(n.as_f64()?),
        _ => None,
    }
}

/// Epoch milliseconds; small values are taken as seconds (1e11 ms is 1973, 1e11 s is
/// the year 5138, so the two ranges do not overlap for real clocks).
fn epoch_to_ts(n: f64) -> Option<DateTime<Utc>> {
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let ms = if n < 1e11 { n * 1000.0 } else { n };
    if ms > 1e15 {
        return None;
    }
    DateTime::from_timestamp_millis(ms as i64)
}

fn json_id(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// A trace id only if it is one by [`TraceId::parse`]: what gets indexed as
/// `trace_id` must have a trace page. Any other value stays in `fields`.
fn json_trace_id(v: &Value) -> Option<TraceId> {
    TraceId::parse(v.as_str()?).ok()
}

fn json_status(v: &Value) -> Option<u16> {
    let n = match v {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) => s.parse::<u64>().ok()?,
        _ => return None,
    };
    (100..=999).contains(&n).then_some(n as u16)
}

/// RFC 3339, or the common `YYYY-MM-DD HH:MM:SS[.fff]` without a zone (taken as UTC).
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    if s.len() < 19 || s.len() > 40 || !looks_like_date(s) {
        return None;
    }
    if let Some(t) = protocol::wire::parse_utc_fast(s) {
        return Some(t);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    // Log4j-style `,123` milliseconds.
    let fixed;
    let s = if s.contains(',') {
        fixed = s.replacen(',', ".", 1);
        fixed.as_str()
    } else {
        s
    };
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(Utc.from_utc_datetime(&t));
        }
    }
    None
}

/// `YYYY-MM-DD` at the start: the cheap test that spares most tokens the parsers.
fn looks_like_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit)
}

fn parse_text(line: &str) -> Parsed {
    let mut p = Parsed::default();
    // Tokens are taken lazily and only as far as needed: cutting every line into
    // its first eight tokens was the largest part of parsing it.
    let mut tokens = line.split_ascii_whitespace();
    let first = tokens.next();
    // A second token looked at for a two-part timestamp that is not part of it.
    let mut second_unused = None;
    let mut level_from_first = false;
    if let Some(first_tok) = first {
        let bare = first_tok.trim_matches(|c| matches!(c, '[' | ']'));
        if let Some(ts) = parse_timestamp(bare) {
            p.ts = Some(ts);
        } else {
            level_from_first = true;
            if bare.len() == 10 && looks_like_date(bare) {
                if let Some(second) = tokens.next() {
                    let joined = format!("{bare} {}", second.trim_end_matches(']'));
                    match parse_timestamp(&joined) {
                        Some(ts) => {
                            p.ts = Some(ts);
                            level_from_first = false;
                        }
                        None => second_unused = Some(second),
                    }
                }
            }
        }
    }
    p.level = first
        .filter(|_| level_from_first)
        .into_iter()
        .chain(second_unused)
        .chain(tokens)
        .take(LEVEL_TOKENS)
        .enumerate()
        .find_map(|(i, tok)| token_level(tok, i == 0));

    let pairs = logfmt_pairs(line);
    for (k, v) in &pairs {
        match k.as_str() {
            "trace_id" | "traceid" | "traceId" => {
                if let (None, Ok(id)) = (&p.trace_id, TraceId::parse(v)) {
                    p.trace_id = Some(id);
                }
            }
            "span_id" | "spanId" if is_id(v) => {
                p.span_id.get_or_insert_with(|| v.clone());
            }
            "parent_span_id" | "parentSpanId" if is_id(v) => {
                p.parent_span_id.get_or_insert_with(|| v.clone());
            }
            "latency_ms" => {
                if let Ok(f) = v.parse::<f64>() {
                    if f.is_finite() {
                        p.latency_ms.get_or_insert(f);
                    }
                }
            }
            _ => {}
        }
    }
    if let Some((trace, span)) = find_traceparent(line) {
        p.trace_id.get_or_insert(trace);
        p.span_id.get_or_insert(span);
    }
    if p.trace_id.is_none() {
        p.trace_id = find_request_id(line);
    }
    if pairs.len() >= 2 {
        if let Some(status) = pairs
            .iter()
            .find(|(k, _)| k == "status")
            .and_then(|(_, v)| json_status(&Value::String(v.clone())))
        {
            p.status = Some(status);
        }
        p.fields = pairs
            .into_iter()
            .map(|(k, v)| (k, logfmt_value(v)))
            .collect();
    }
    p
}

/// A level word: `INFO`, `[WARN]`, `level=error`, `ERROR:`, `<info>`. Bare lowercase
/// words count only as the first token after the timestamp, so that prose such as
/// "all is fine" or "more info" does not set a level.
fn token_level(tok: &str, first: bool) -> Option<Level> {
    for prefix in ["level=", "lvl=", "severity="] {
        if tok.len() >= prefix.len()
            && tok.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        {
            return Level::parse(tok[prefix.len()..].trim_matches(|c| matches!(c, '"' | '\'')));
        }
    }
    let decorated = tok.starts_with(['[', '(', '<']) || tok.ends_with([':', ']', ')', '>', '|']);
    let word = tok.trim_matches(|c: char| !c.is_ascii_alphabetic());
    if word.is_empty() {
        return None;
    }
    let upper = word.chars().all(|c| c.is_ascii_uppercase());
    if decorated || upper || first {
        Level::parse(word)
    } else {
        None
    }
}

fn is_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// `traceparent=00-<32 hex>-<16 hex>-<2 hex>` (or `traceparent: ...`) anywhere.
fn find_traceparent(line: &str) -> Option<(TraceId, String)> {
    let mut from = 0;
    while let Some(pos) = find_ignore_ascii_case(&line.as_bytes()[from..], b"traceparent", 5) {
        let start = from + pos + "traceparent".len();
        from = start;
        let rest = line[start..].trim_start_matches([':', '=', ' ', '"', '\'']);
        let value: String = rest
            .chars()
            .take_while(|c| c.is_ascii_hexdigit() || *c == '-')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let parts: Vec<&str> = value.split('-').collect();
        if parts.len() >= 4
            && parts[0].len() == 2
            && parts[1].len() == 32
            && parts[2].len() == 16
            && parts[1].bytes().any(|b| b != b'0')
        {
            let trace = TraceId::parse(parts[1]).expect("32 hex digits are a trace id");
            return Some((trace, parts[2].to_string()));
        }
    }
    None
}

/// `X-Request-Id: <id>` or `x-request-id=<id>`, case-insensitive.
fn find_request_id(line: &str) -> Option<TraceId> {
    let pos = find_ignore_ascii_case(line.as_bytes(), b"x-request-id", 4)?;
    let rest = line[pos + "x-request-id".len()..].trim_start_matches([':', '=', ' ', '"', '\'']);
    let id: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    TraceId::parse(&id).ok()
}

/// Where `needle` (lower-case ASCII) first occurs in `hay`, ignoring ASCII case.
/// Candidates are found with `memchr` on `needle[anchor]`, a byte chosen to be rare
/// in log text, so a line without the needle costs one SIMD scan and no lower-cased
/// copy (this runs on every line shipped).
fn find_ignore_ascii_case(hay: &[u8], needle: &[u8], anchor: usize) -> Option<usize> {
    let a = needle[anchor];
    let (lo, up) = (a, a.to_ascii_uppercase());
    let mut from = anchor;
    while from < hay.len() {
        let i = from + memchr::memchr2(lo, up, &hay[from..])?;
        let start = i - anchor;
        if hay
            .get(start..start + needle.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(needle))
        {
            return Some(start);
        }
        from = i + 1;
    }
    None
}

/// `key=value` and `key="quoted value"` pairs anywhere in the line; the first
/// occurrence of a key wins. A key is a run of key bytes starting with a letter at
/// the start of a token (after whitespace, the line start, or a pair's value).
/// Driven by `memchr` over the `=` signs rather than walking every byte: most lines
/// have none or a few, and this runs for every line shipped.
fn logfmt_pairs(line: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let bytes = line.as_bytes();
    // Where the last value ended: a token may start right after it.
    let mut boundary = 0;
    let mut from = 0;
    while let Some(at) = memchr::memchr(b'=', &bytes[from..]) {
        let eq = from + at;
        from = eq + 1;
        let mut key_start = eq;
        while key_start > boundary && is_key_byte(bytes[key_start - 1]) {
            key_start -= 1;
        }
        let at_token_start = key_start == boundary || bytes[key_start - 1].is_ascii_whitespace();
        if key_start == eq || !at_token_start || !bytes[key_start].is_ascii_alphabetic() {
            continue;
        }
        let (value, end) = logfmt_value_at(line, eq + 1);
        let key = &line[key_start..eq];
        if !out.iter().any(|(k, _)| k == key) {
            out.push((key.to_string(), value));
        }
        boundary = end;
        from = end;
        if from >= bytes.len() {
            break;
        }
    }
    out
}

/// The value starting at `i` (just past a `=`) and where it ends: a quoted value
/// with `\` escapes up to its closing quote (or the line end), else up to whitespace.
fn logfmt_value_at(line: &str, mut i: usize) -> (String, usize) {
    let bytes = line.as_bytes();
    if i < bytes.len() && bytes[i] == b'"' {
        i += 1;
        let mut v = String::new();
        let mut chars = line[i..].char_indices();
        let mut end = line.len();
        while let Some((off, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        v.push(n);
                    }
                }
                '"' => {
                    end = i + off + 1;
                    break;
                }
                c => v.push(c),
            }
        }
        (v, end)
    } else {
        let len = bytes[i..]
            .iter()
            .position(u8::is_ascii_whitespace)
            .unwrap_or(bytes.len() - i);
        (line[i..i + len].to_string(), i + len)
    }
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

fn logfmt_value(v: String) -> Value {
    if let Ok(i) = v.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(f) = v.parse::<f64>() {
        if f.is_finite() && v.bytes().any(|b| b.is_ascii_digit()) {
            return Value::from(f);
        }
    }
    match v.as_str() {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn meta() -> TaskMeta {
        TaskMeta {
            host: "node-1".into(),
            app: "fib".into(),
            task: "fib.1".into(),
            instance: 3,
            ports: vec![],
        }
    }

    fn now() -> DateTime<Utc> {
        "2030-01-01T00:00:00Z".parse().unwrap()
    }

    fn rec(line: &str) -> LogRecord {
        let l = prepare_line(line.as_bytes(), 0, 1 << 20);
        sandbox_record(&l, &meta(), Stream::Stdout, now())
    }

    #[test]
    fn json_line_promotes_known_keys_and_keeps_the_rest() {
        let r = rec(
            r#"{"level":"WARN","msg":"slow call","ts":"2026-11-23T10:00:00.250Z","trace_id":"abc123","span_id":"s1","latency_ms":12.5,"status":503,"user":"alice"}"#,
        );
        assert_eq!(r.level, Some(Level::Warn));
        assert_eq!(r.msg, "slow call");
        assert_eq!(
            r.ts,
            "2026-11-23T10:00:00.250Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(r.trace_id.as_deref(), Some("abc123"));
        assert_eq!(r.span_id.as_deref(), Some("s1"));
        assert_eq!(r.latency_ms, Some(12.5));
        assert_eq!(r.status, Some(503));
        assert_eq!(r.fields.len(), 1, "{:?}", r.fields);
        assert_eq!(r.fields["user"], json!("alice"));
        assert_eq!(
            (r.host.as_str(), r.app.as_str(), r.task.as_str(), r.instance),
            ("node-1", "fib", "fib.1", 3)
        );
    }

    #[test]
    fn json_line_alternative_spellings() {
        let r = rec(
            r#"{"severity":"error","message":"boom","@timestamp":1795428000123,"trace":{"id":"t9"}}"#,
        );
        assert_eq!(r.level, Some(Level::Error));
        assert_eq!(r.msg, "boom");
        assert_eq!(r.ts.timestamp_millis(), 1795428000123);
        assert_eq!(r.trace_id.as_deref(), Some("t9"));
        assert!(r.fields.is_empty(), "{:?}", r.fields);

        let r = rec(r#"{"lvl":30,"traceId":"x","trace.id":"y","time":"nonsense"}"#);
        assert_eq!(r.level, Some(Level::Info));
        assert_eq!(r.trace_id.as_deref(), Some("x"));
        assert_eq!(
            r.ts,
            now(),
            "an unparseable time falls back to the read time"
        );
        assert_eq!(r.fields["time"], json!("nonsense"));
        assert_eq!(
            r.msg,
            r#"{"lvl":30,"traceId":"x","trace.id":"y","time":"nonsense"}"#
        );
    }

    /// Issue 16: a trace id is indexed only if the web can show its trace; a JSON
    /// value that is not a `TraceId` stays in `fields`, and one that is (dots and
    /// all) is the record's `trace_id`.
    #[test]
    fn json_trace_ids_go_through_the_one_parse() {
        let r = rec(r#"{"msg":"m","trace_id":"not an id","trace":{"id":"a/b"}}"#);
        assert_eq!(r.trace_id, None);
        assert_eq!(r.fields["trace_id"], json!("not an id"));
        assert_eq!(r.fields["trace"], json!({"id": "a/b"}));
        let r = rec(r#"{"msg":"m","trace_id":"req-42_a.b"}"#);
        assert_eq!(r.trace_id.as_deref(), Some("req-42_a.b"));
        let r = rec("done trace_id=req-42_a.b");
        assert_eq!(r.trace_id.as_deref(), Some("req-42_a.b"));
    }

    #[test]
    fn json_non_object_is_text() {
        let r = rec("[1,2,3]");
        assert_eq!(r.msg, "[1,2,3]");
        assert!(r.fields.is_empty());
        let r = rec("{not json at all");
        assert_eq!(r.msg, "{not json at all");
    }

    #[test]
    fn text_line_timestamp_and_level() {
        let r = rec("2026-11-23T10:00:00.5Z INFO started server on :8080");
        assert_eq!(
            r.ts,
            "2026-11-23T10:00:00.5Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(r.level, Some(Level::Info));
        assert_eq!(r.msg, "2026-11-23T10:00:00.5Z INFO started server on :8080");

        let r = rec("2026-11-23 10:00:01,123 [WARN] disk almost full");
        assert_eq!(r.ts.timestamp_millis() % 1000, 123);
        assert_eq!(r.level, Some(Level::Warn));

        assert_eq!(rec("ERROR: cannot open file").level, Some(Level::Error));
        assert_eq!(rec("ts=1 level=error msg=x").level, Some(Level::Error));
        assert_eq!(rec("warning something odd").level, Some(Level::Warn));
        assert_eq!(rec("something <debug> here").level, Some(Level::Debug));
    }

    #[test]
    fn prose_words_do_not_set_a_level() {
        assert_eq!(rec("all is fine and more info later").level, None);
        assert_eq!(rec("hello world").level, None);
        assert_eq!(
            rec("a b c d e f g ERROR").level,
            None,
            "only the first tokens count"
        );
    }

    #[test]
    fn text_trace_ids() {
        let r = rec("handled request trace_id=4bf92f3577b34da6a3ce929d0e0e4736 ok");
        assert_eq!(
            r.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let r = rec(
            "got traceparent=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 from caller",
        );
        assert_eq!(
            r.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(r.span_id.as_deref(), Some("00f067aa0ba902b7"));
        let r = rec("headers: X-Request-Id: req-42_a.b done");
        assert_eq!(r.trace_id.as_deref(), Some("req-42_a.b"));
        let r = rec("traceparent=00-00000000000000000000000000000000-00f067aa0ba902b7-01");
        assert_eq!(r.trace_id, None, "an all-zero trace id is invalid");
    }

    #[test]
    fn logfmt_pairs_become_fields_when_two_or_more() {
        let r =
            rec(r#"level=info msg="user logged in" user=alice latency_ms=12.5 status=200 ok=true"#);
        assert_eq!(r.level, Some(Level::Info));
        assert_eq!(r.latency_ms, Some(12.5));
        assert_eq!(r.status, Some(200));
        assert_eq!(r.fields["msg"], json!("user logged in"));
        assert_eq!(r.fields["user"], json!("alice"));
        assert_eq!(r.fields["status"], json!(200));
        assert_eq!(r.fields["ok"], json!(true));
        let r = rec("retrying in a bit attempt=3");
        assert!(
            r.fields.is_empty(),
            "one pair is not structure: {:?}",
            r.fields
        );
        let r = rec("took latency_ms=7");
        assert_eq!(r.latency_ms, Some(7.0));
    }

    #[test]
    fn long_lines_are_truncated_at_a_char_boundary_and_flagged() {
        let line = "é".repeat(10); // 20 bytes
        let l = prepare_line(line.as_bytes(), 0, 5);
        assert_eq!(l.text, "éé");
        assert_eq!(l.original_bytes, Some(20));
        let r = sandbox_record(&l, &meta(), Stream::Stderr, now());
        assert_eq!(r.fields["truncated"], json!(true));
        assert_eq!(r.fields["original_bytes"], json!(20));
        assert_eq!(r.stream, Stream::Stderr);

        // The tailer may have dropped bytes already: the original length still counts.
        let l = prepare_line(b"abcde", 8995, 5);
        assert_eq!(l.text, "abcde");
        assert_eq!(l.original_bytes, Some(9000));

        let l = prepare_line(b"short\r\n", 0, 5);
        assert_eq!(l.text, "short");
        assert_eq!(l.original_bytes, None, "the line ending does not count");
    }

    #[test]
    fn invalid_utf8_is_kept_lossily() {
        let l = prepare_line(b"bad \xff\xfe bytes\n", 0, 100);
        assert_eq!(l.text, "bad \u{fffd}\u{fffd} bytes");
    }

    #[test]
    fn access_lines_keep_router_fields() {
        let mut src = LogRecord::new(now(), &meta(), Stream::Access, "GET /fib/10 200");
        src.trace_id = Some("t1".into());
        src.latency_ms = Some(3.0);
        src.peer_app = Some("web".into());
        let text = serde_json::to_string(&src).unwrap();
        let l = prepare_line(text.as_bytes(), 0, 1 << 20);
        let r = access_record(&l, "node-9", now());
        assert_eq!(r, src);

        let l = prepare_line(b"garbage line", 0, 1 << 20);
        let r = access_record(&l, "node-9", now());
        assert_eq!((r.host.as_str(), r.app.as_str()), ("node-9", "router"));
        assert_eq!(r.stream, Stream::Access);
        assert_eq!(r.level, Some(Level::Warn));
        assert_eq!(r.msg, "garbage line");
    }

    /// `parse_timestamp` without the direct reader (chrono only).
    fn parse_timestamp_slow(s: &str) -> Option<DateTime<Utc>> {
        let s = s.replacen(',', ".", 1);
        ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(&s, f).ok())
            .map(|t| Utc.from_utc_datetime(&t))
    }

    /// The token-by-token scanner `logfmt_pairs` replaced (it walked every byte of
    /// every line); kept to pin that the two agree.
    fn logfmt_pairs_reference(line: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let bytes = line.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            // Start of a token.
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            let key_start = i;
            while i < bytes.len() && is_key_byte(bytes[i]) {
                i += 1;
            }
            let key_end = i;
            if key_end > key_start
                && i < bytes.len()
                && bytes[i] == b'='
                && bytes[key_start].is_ascii_alphabetic()
            {
                i += 1;
                let value = if i < bytes.len() && bytes[i] == b'"' {
                    i += 1;
                    let mut v = String::new();
                    let mut chars = line[i..].char_indices();
                    let mut end = line.len();
                    while let Some((off, c)) = chars.next() {
                        match c {
                            '\\' => {
                                if let Some((_, n)) = chars.next() {
                                    v.push(n);
                                }
                            }
                            '"' => {
                                end = i + off + 1;
                                break;
                            }
                            c => v.push(c),
                        }
                    }
                    i = end;
                    v
                } else {
                    let start = i;
                    while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                        i += 1;
                    }
                    line[start..i].to_string()
                };
                let key = &line[key_start..key_end];
                if !out.iter().any(|(k, _)| k == key) {
                    out.push((key.to_string(), value));
                }
            } else {
                // Skip the rest of this token.
                while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                    i += 1;
                }
            }
        }
        out
    }

    proptest! {
        /// Regression guard for the memchr-driven scanner: same pairs as the old
        /// byte-by-byte one on lines full of the tricky cases.
        #[test]
        fn logfmt_pairs_match_the_reference_scanner(
            line in "([a-z][a-z0-9_.-]{0,3}|[0-9]|x:|é|=|==|\"|\\\\| |\t|[a-z]=\"[a-z =]{0,4}\"?|[a-z]=[a-z=]{0,3}){0,14}",
        ) {
            prop_assert_eq!(logfmt_pairs(&line), logfmt_pairs_reference(&line));
        }

        /// The shipper's hot path (borrowed, encoded in place) and the owned record
        /// agree on every line, valid UTF-8 or not, cut or not.
        #[test]
        fn encoding_in_place_matches_the_owned_record(
            raw in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300),
                "(2026-11-23T10:00:00Z |\\[?ERROR\\]? |level=warn |trace_id=ab12 |latency_ms=1.5 |traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 |X-Request-Id: r-1 |\\{\"msg\":\"m\",\"status\":503\\} |[a-z=\" ]{0,12}){0,6}"
                    .prop_map(String::into_bytes),
            ],
            max in 8usize..400,
            dropped in prop_oneof![Just(0u64), 1u64..100],
        ) {
            let line = prepare_owned(raw.clone(), dropped, max);
            prop_assert_eq!(&line, &prepare_line(&raw, dropped, max));
            let mut out = Vec::new();
            encode_sandbox_line(&line, &meta(), Stream::Stderr, now(), "src", 42, &mut out);
            let mut want = sandbox_record(&line, &meta(), Stream::Stderr, now());
            want.source = "src".into();
            want.offset = 42;
            prop_assert_eq!(String::from_utf8(out).unwrap(), String::from_utf8(protocol::encode_ndjson(&[want])).unwrap());
        }

        /// The direct reader of `...Z` timestamps agrees with chrono on every string
        /// of that shape it accepts, and leaves the rest to chrono.
        #[test]
        fn fast_utc_timestamps_agree_with_chrono(
            s in "[0-9]{4}-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-6][0-9]:[0-6][0-9](\\.[0-9]{1,10})?[Zz+]",
        ) {
            let chrono = DateTime::parse_from_rfc3339(&s).ok().map(|t| t.with_timezone(&Utc));
            if let Some(fast) = protocol::wire::parse_utc_fast(&s) {
                prop_assert_eq!(Some(fast), chrono, "{}", s);
            }
            prop_assert_eq!(parse_timestamp(&s), chrono.or_else(|| parse_timestamp_slow(&s)));
        }

        /// The memchr-anchored search finds what a lower-cased copy would.
        #[test]
        fn case_insensitive_search_matches_lowercasing(
            hay in "([xX]-[rR][eE][qQ][uU][eE][sS][tT]-[iI][dD]|[tT][rR][aA][cC][eE][pP][aA][rR][eE][nN][tT]|[a-zA-Z -]{0,5}|é){0,8}",
        ) {
            for (needle, anchor) in [(&b"x-request-id"[..], 4), (b"traceparent", 5)] {
                let want = hay.to_ascii_lowercase().find(std::str::from_utf8(needle).unwrap());
                prop_assert_eq!(find_ignore_ascii_case(hay.as_bytes(), needle, anchor), want);
            }
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(raw in proptest::collection::vec(any::<u8>(), 0..600), max in 1usize..300) {
            let l = prepare_line(&raw, 0, max);
            prop_assert!(l.text.len() <= max);
            let r = sandbox_record(&l, &meta(), Stream::Stdout, now());
            prop_assert!(serde_json::to_string(&r).is_ok());
            let _ = access_record(&l, "h", now());
        }

        #[test]
        fn never_panics_on_line_like_text(s in r#"[ a-zA-Z0-9=:"\\\[\]{}\-.,_é]{0,200}"#) {
            let _ = parse_line(&s);
            let _ = parse_line(&format!("{{\"msg\":{s:?}}}"));
            let _ = parse_line(&format!("2026-11-23T10:00:00Z {s}"));
        }
    }
}
