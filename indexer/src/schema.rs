//! The Tantivy schema of a log record and the conversions between
//! `protocol::LogRecord` and Tantivy documents.
//!
//! Every searchable field is indexed (and keyword/numeric fields are also columnar
//! "fast" fields for sorting, ranges and aggregations), but none is stored on its own:
//! the whole record is stored once as JSON in `_source`, the way Elasticsearch does,
//! and hits are rebuilt from it. The trade-off: reading one field of a hit costs
//! decoding the whole record, in exchange for a doc store that holds each byte once
//! (and compresses well with zstd) and hits that round-trip exactly, unknown fields,
//! nanoseconds and all.

use crate::error::{Error, Result};
use protocol::LogRecord;
use std::collections::BTreeMap;
use tantivy::schema::{
    BytesOptions, DateOptions, DateTimePrecision, Field, IndexRecordOption, JsonObjectOptions,
    NumericOptions, OwnedValue, Schema, TextFieldIndexing, TextOptions, Value, FAST, INDEXED,
};
use tantivy::store::{Compressor, ZstdCompressor};
use tantivy::{DateTime, IndexSettings, TantivyDocument};

/// Doc store settings: zstd over 64 KiB blocks. Larger blocks than Tantivy's 16 KiB
/// default compress the repetitive JSON of log records much better; a hit costs one
/// block decompression (tens of microseconds), and newest-first hits tend to share
/// blocks.
pub fn index_settings() -> IndexSettings {
    IndexSettings {
        docstore_compression: Compressor::Zstd(ZstdCompressor {
            compression_level: Some(6),
        }),
        docstore_blocksize: 64 * 1024,
        ..IndexSettings::default()
    }
}

/// Raw single-token text without field norms: hits are ordered by time, never by
/// BM25, so norms (a byte per document and field) would be paid for nothing.
fn keyword_options() -> TextOptions {
    TextOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("raw")
                .set_index_option(IndexRecordOption::Basic)
                .set_fieldnorms(false),
        )
        .set_fast(Some("raw"))
}

/// Tokenised text with positions (phrases), without field norms.
fn text_options() -> TextOptions {
    TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer("default")
            .set_index_option(IndexRecordOption::WithFreqsAndPositions)
            .set_fieldnorms(false),
    )
}

/// The field names, as queries spell them.
pub const TS: &str = "ts";
pub const MSG: &str = "msg";
pub const UID: &str = "_uid";
pub const LATENCY: &str = "latency_ms";
/// The `_id` of a document sent through the Elasticsearch bulk API: a raw keyword
/// (fast, so search hits can report it without a stored field), used for dedup.
pub const ES_ID: &str = "_id";
pub const SOURCE_DOC: &str = "_source";

/// Keyword fields: indexed as one raw token (exact match) and fast.
pub const KEYWORDS: [&str; 12] = [
    "host",
    "app",
    "task",
    "stream",
    "level",
    "trace_id",
    "span_id",
    "parent_span_id",
    "method",
    "peer_host",
    "peer_app",
    "source",
];

/// Handles of every field, resolved once at open.
#[derive(Debug, Clone)]
pub struct Fields {
    pub schema: Schema,
    pub ts: Field,
    pub msg: Field,
    pub path: Field,
    pub fields: Field,
    pub instance: Field,
    pub status: Field,
    pub offset: Field,
    pub latency_ms: Field,
    /// Per-record tie-breaker (increasing in insertion order): (ts, uid) totally orders hits, which is what
    /// makes cursors exact when many records share a timestamp.
    pub uid: Field,
    /// The whole record as JSON; the only stored field.
    pub source_doc: Field,
    /// In the order of [`KEYWORDS`].
    pub keywords: [Field; 12],
    /// [`ES_ID`].
    pub es_id: Field,
}

impl Fields {
    pub fn new() -> Fields {
        let mut b = Schema::builder();
        let keywords = KEYWORDS.map(|name| b.add_text_field(name, keyword_options()));
        // Time, offset and latency are nearly unique per record: an inverted index
        // of them would hold a term per document. Ranges run on the fast columns
        // instead (Tantivy's RangeQuery uses them whenever a field is fast).
        let ts = b.add_date_field(
            TS,
            DateOptions::default()
                .set_fast()
                .set_precision(DateTimePrecision::Microseconds),
        );
        let msg = b.add_text_field(MSG, text_options());
        let path = b.add_text_field("path", text_options());
        let json_indexing = TextFieldIndexing::default()
            .set_tokenizer("default")
            .set_index_option(IndexRecordOption::WithFreqsAndPositions)
            .set_fieldnorms(false);
        let fields = b.add_json_field(
            "fields",
            JsonObjectOptions::default()
                .set_indexing_options(json_indexing)
                .set_expand_dots_enabled(),
        );
        let instance = b.add_u64_field("instance", INDEXED | FAST);
        let status = b.add_u64_field("status", INDEXED | FAST);
        let offset = b.add_u64_field("offset", NumericOptions::default().set_fast());
        let latency_ms = b.add_f64_field(LATENCY, NumericOptions::default().set_fast());
        let uid = b.add_u64_field(UID, FAST);
        let source_doc = b.add_bytes_field(SOURCE_DOC, BytesOptions::default().set_stored());
        let es_id = b.add_text_field(ES_ID, keyword_options());
        Fields {
            schema: b.build(),
            ts,
            msg,
            path,
            fields,
            instance,
            status,
            offset,
            latency_ms,
            uid,
            source_doc,
            keywords,
            es_id,
        }
    }

    /// Builds the document for `rec`; `uid` is its tie-breaker.
    pub fn to_document(&self, rec: &LogRecord, uid: u64) -> TantivyDocument {
        self.to_document_with_id(rec, uid, None)
    }

    /// Like [`Fields::to_document`], with the `_id` of a bulk-API document.
    pub fn to_document_with_id(
        &self,
        rec: &LogRecord,
        uid: u64,
        es_id: Option<&str>,
    ) -> TantivyDocument {
        let mut doc = TantivyDocument::new();
        if let Some(id) = es_id {
            doc.add_text(self.es_id, id);
        }
        let keyword_values: [Option<&str>; 12] = [
            Some(&rec.host),
            Some(&rec.app),
            Some(&rec.task),
            Some(rec.stream.as_str()),
            rec.level.map(|l| l.as_str()),
            rec.trace_id.as_deref(),
            rec.span_id.as_deref(),
            rec.parent_span_id.as_deref(),
            rec.method.as_deref(),
            rec.peer_host.as_deref(),
            rec.peer_app.as_deref(),
            Some(&rec.source),
        ];
        for (field, value) in self.keywords.iter().zip(keyword_values) {
            // Empty strings carry no information and would only match `field:""`.
            if let Some(v) = value.filter(|v| !v.is_empty()) {
                doc.add_text(*field, v);
            }
        }
        doc.add_date(self.ts, to_tantivy_date(&rec.ts));
        doc.add_text(self.msg, &rec.msg);
        if let Some(p) = &rec.path {
            doc.add_text(self.path, p);
        }
        if !rec.fields.is_empty() {
            let object: BTreeMap<String, OwnedValue> = rec
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), OwnedValue::from(v.clone())))
                .collect();
            doc.add_object(self.fields, object);
        }
        doc.add_u64(self.instance, u64::from(rec.instance));
        if let Some(s) = rec.status {
            doc.add_u64(self.status, u64::from(s));
        }
        doc.add_u64(self.offset, rec.offset);
        if let Some(l) = rec.latency_ms {
            doc.add_f64(self.latency_ms, l);
        }
        doc.add_u64(self.uid, uid);
        // Serialising plain data into a Vec cannot fail.
        let source = serde_json::to_vec(rec).expect("record serialises");
        doc.add_bytes(self.source_doc, &source);
        doc
    }

    /// Rebuilds the record from its stored `_source`.
    pub fn to_record(&self, doc: &TantivyDocument) -> Result<LogRecord> {
        let bytes = doc
            .get_first(self.source_doc)
            .and_then(|v| v.as_bytes())
            .ok_or_else(|| Error::Index("stored document has no _source".into()))?;
        serde_json::from_slice(bytes)
            .map_err(|e| Error::Index(format!("stored _source is not a record: {e}")))
    }

    /// Looks a keyword field up by name.
    pub fn keyword(&self, name: &str) -> Option<Field> {
        KEYWORDS
            .iter()
            .position(|k| *k == name)
            .map(|i| self.keywords[i])
    }
}

impl Default for Fields {
    fn default() -> Self {
        Fields::new()
    }
}

/// Converts to Tantivy's date at the microsecond precision the index keeps.
pub fn to_tantivy_date(ts: &chrono::DateTime<chrono::Utc>) -> DateTime {
    DateTime::from_timestamp_micros(ts.timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Level, Stream, TaskMeta};

    fn record() -> LogRecord {
        let meta = TaskMeta {
            host: "node-2".into(),
            app: "fib".into(),
            task: "fib.1".into(),
            instance: 3,
            ports: vec![],
        };
        let ts = "2026-11-23T10:00:00.123456789Z".parse().unwrap();
        let mut r = LogRecord::new(ts, &meta, Stream::Access, "GET /fib/10 took 300ms");
        r.level = Some(Level::Warn);
        r.latency_ms = Some(300.5);
        r.status = Some(503);
        r.trace_id = Some("abc".into());
        r.fields.insert("user".into(), serde_json::json!("alice"));
        r.source = "f1".into();
        r.offset = 42;
        r
    }

    #[test]
    fn record_round_trips_through_source_exactly() {
        let f = Fields::new();
        let r = record();
        let doc = f.to_document(&r, 7);
        assert_eq!(f.to_record(&doc).unwrap(), r, "nanoseconds and all survive");
    }

    #[test]
    fn only_source_is_stored() {
        let f = Fields::new();
        let stored: Vec<&str> = f
            .schema
            .fields()
            .filter(|(_, e)| e.is_stored())
            .map(|(_, e)| e.name())
            .collect();
        assert_eq!(stored, vec![SOURCE_DOC]);
    }

    #[test]
    fn keyword_lookup_finds_every_keyword() {
        let f = Fields::new();
        for k in KEYWORDS {
            let field = f.keyword(k).unwrap();
            assert_eq!(f.schema.get_field_name(field), k);
        }
        assert!(f.keyword("msg").is_none());
    }
}
