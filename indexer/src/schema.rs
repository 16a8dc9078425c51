//! The Tantivy schema of a log record and the conversions between
//! `protocol::LogRecord` and Tantivy documents.
//!
//! Every searchable field is indexed (and keyword/numeric fields are also columnar
//! "fast" fields for sorting, ranges and aggregations). A hit is rebuilt from two
//! places: the fast columns, for every keyword and number (they are there anyway,
//! exact), and one stored JSON field `_stored` for what has no column: `msg`,
//! `fields`, `path`, the nanoseconds below the microsecond `ts` column, and which
//! optional keywords were present but empty. The trade-off: a hit costs a store
//! block decompression plus a dozen column lookups, in exchange for a doc store that
//! holds no byte a column already holds (on the benchmark corpus the store of whole
//! records as JSON was 0.31 of the raw text at 256 KiB blocks; see BENCHMARKS.md).
//!
//! `msg` is indexed in two fields: its words (tokens without a digit) in `msg` with
//! positions, its ids (numbers, IPs, hex ids: tokens with a digit) in `msg_ids` with
//! documents only. Ids were most of the distinct terms and half of the token
//! occurrences of the benchmark corpus, and positions of them serve only phrases,
//! which `crate::msg` answers from the word positions and the stored message
//! instead. The trade-off: a phrase with an id reads the stored message of each
//! candidate document.
//!
//! A document sent through the Elasticsearch bulk API whose ECS rendering would not
//! give back what the client sent also keeps its document as sent, in the same
//! stored JSON (`es`), so that its hits' `_source` is the client's own (see
//! `crate::es`). Native records never carry it.

use crate::error::{Error, Result};
use protocol::LogRecord;
use std::collections::BTreeMap;
use tantivy::schema::{
    BytesOptions, DateOptions, DateTimePrecision, Field, IndexRecordOption, JsonObjectOptions,
    NumericOptions, OwnedValue, Schema, TextFieldIndexing, TextOptions, Value, FAST,
};
use tantivy::store::{Compressor, ZstdCompressor};
use tantivy::tokenizer::{
    LowerCaser, RemoveLongFilter, SimpleTokenizer, TextAnalyzer, Token, TokenFilter, TokenStream,
    Tokenizer, TokenizerManager,
};
use tantivy::{DateTime, DocId, IndexSettings, SegmentReader, TantivyDocument};

/// Doc store block size: 512 KiB of stored parts per zstd block.
///
/// Measured on 1M corpus records (`examples/size_lab.rs`, BENCHMARKS.md). With whole
/// records stored as JSON the store was 0.369 of the raw text at 64 KiB / level 6,
/// 0.313 at 256 KiB / level 6 and 0.286 at 512 KiB / level 12. With only the stored
/// part (see the module doc): 0.227 at 256 KiB / level 6 or 9, 0.219 at 512 KiB /
/// level 6, 0.214 at 512 KiB / level 9 (level 15 at 256 KiB: 0.203, but it compresses
/// about three times slower than level 6 and would hold ingest back). A hit costs one
/// block decompression: 100 newest hits (neighbours, one or two blocks) take ~1 ms at
/// any of these sizes, but 100 hits scattered over the index (one block each, the
/// worst case, with cold readers) take ~22 ms at 256 KiB and ~40 ms at 512 KiB.
/// 512 KiB at level 9 is what brings the whole index under half the raw text
/// (BENCHMARKS.md), so the scattered worst case pays for it; compression runs at
/// ~60 MB/s on Tantivy's store thread, well above what ingest feeds it.
/// Changing it is compatible: a block's size is implicit in the store's skip index
/// and its compressor is named in each segment's store footer.
pub const DOCSTORE_BLOCK_BYTES: usize = 512 * 1024;

/// Blocks the doc store of each segment keeps decompressed: bounds the cache at
/// 6 MiB per segment, about what Tantivy's default of 100 blocks cost at 64 KiB.
pub const DOCSTORE_CACHE_BLOCKS: usize = 12;

/// Doc store settings: zstd level 9 over [`DOCSTORE_BLOCK_BYTES`] blocks. Larger
/// blocks than Tantivy's 16 KiB default compress the repetitive JSON of log records
/// much better, and newest-first hits tend to share blocks.
pub fn index_settings() -> IndexSettings {
    IndexSettings {
        docstore_compression: Compressor::Zstd(ZstdCompressor {
            compression_level: Some(9),
        }),
        docstore_blocksize: DOCSTORE_BLOCK_BYTES,
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
        .set_fast("raw")
}

/// Tokenised text with positions (phrases), without field norms.
fn text_options(tokenizer: &str) -> TextOptions {
    TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(tokenizer)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions)
            .set_fieldnorms(false),
    )
}

/// Tokenizer of `msg`: the words of the message (tokens without a digit).
pub const MSG_WORDS_TOKENIZER: &str = "msg_words";
/// Tokenizer of [`MSG_IDS`]: the tokens of the message that contain a digit.
pub const MSG_IDS_TOKENIZER: &str = "msg_ids";

/// Whether a token of a message is an "id" (numbers, ports, hex ids, `ssh2`): one
/// that contains an ASCII digit. Ids go to [`MSG_IDS`], words to `msg`; the query
/// side routes each token with the same test (see `crate::msg`).
pub fn is_id_token(token: &str) -> bool {
    token.bytes().any(|b| b.is_ascii_digit())
}

/// The tokenizer of a whole message, words and ids: Tantivy's `default` (split on
/// non-alphanumerics, tokens over 40 bytes dropped, lowercased). Queries, phrase
/// verification and highlighting use it; each indexed field keeps a part of it,
/// with the positions of the whole.
pub fn msg_tokenizer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .build()
}

fn msg_part_tokenizer(ids: bool) -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(KeepIds(ids))
        .build()
}

/// Tantivy's tokenizers plus the two halves of `msg`. Every index of this schema
/// must be built with them ([`Fields::index_builder`]): without, indexing a
/// document fails on the unknown tokenizer name.
pub fn tokenizers() -> TokenizerManager {
    let manager = TokenizerManager::default();
    manager.register(MSG_WORDS_TOKENIZER, msg_part_tokenizer(false));
    manager.register(MSG_IDS_TOKENIZER, msg_part_tokenizer(true));
    manager
}

/// Keeps the id tokens (`true`) or the word tokens (`false`) of a stream; the
/// positions of the kept ones are those of the whole stream, so a phrase over the
/// words of a message still knows how far apart they are.
#[derive(Clone)]
struct KeepIds(bool);

impl TokenFilter for KeepIds {
    type Tokenizer<T: Tokenizer> = KeepIdsTokenizer<T>;
    fn transform<T: Tokenizer>(self, inner: T) -> KeepIdsTokenizer<T> {
        KeepIdsTokenizer(inner, self.0)
    }
}

#[derive(Clone)]
struct KeepIdsTokenizer<T>(T, bool);

impl<T: Tokenizer> Tokenizer for KeepIdsTokenizer<T> {
    type TokenStream<'a> = KeepIdsStream<T::TokenStream<'a>>;
    fn token_stream<'a>(&'a mut self, text: &'a str) -> Self::TokenStream<'a> {
        KeepIdsStream(self.0.token_stream(text), self.1)
    }
}

struct KeepIdsStream<S>(S, bool);

impl<S: TokenStream> TokenStream for KeepIdsStream<S> {
    fn advance(&mut self) -> bool {
        while self.0.advance() {
            if is_id_token(&self.0.token().text) == self.1 {
                return true;
            }
        }
        false
    }
    fn token(&self) -> &Token {
        self.0.token()
    }
    fn token_mut(&mut self) -> &mut Token {
        self.0.token_mut()
    }
}

/// The field names, as queries spell them.
pub const TS: &str = "ts";
pub const MSG: &str = "msg";
/// The id tokens of `msg` (see [`is_id_token`]), indexed for which documents hold
/// them only: no frequencies, no positions. On the benchmark corpus (digits
/// scrambled) ids are 1.35M of the 1.35M distinct terms of 1M messages and half of
/// the token occurrences; their positions and frequencies were 0.09 of the raw text.
/// A phrase with an id in it is matched on the word positions and the ids' postings,
/// then checked against the stored message (`crate::msg`).
pub const MSG_IDS: &str = "msg_ids";
pub const UID: &str = "_uid";
pub const LATENCY: &str = "latency_ms";
/// The `_id` of a document sent through the Elasticsearch bulk API: a raw keyword
/// (fast, so search hits can report it without a stored field), used for dedup.
pub const ES_ID: &str = "_id";
/// What the fast columns cannot give back (see the module doc). Renamed from the
/// `_source` of whole records, so that an index of that layout fails the schema
/// check instead of being misread.
pub const SOURCE_DOC: &str = "_stored";

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
    /// [`MSG_IDS`].
    pub msg_ids: Field,
    pub path: Field,
    pub fields: Field,
    pub instance: Field,
    pub status: Field,
    pub offset: Field,
    pub latency_ms: Field,
    /// Per-record tie-breaker (increasing in insertion order): (ts, uid) totally orders hits, which is what
    /// makes cursors exact when many records share a timestamp.
    pub uid: Field,
    /// The stored part of the record as JSON (see the module doc); the only stored field.
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
        let msg = b.add_text_field(MSG, text_options(MSG_WORDS_TOKENIZER));
        let msg_ids = b.add_text_field(
            MSG_IDS,
            TextOptions::default().set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer(MSG_IDS_TOKENIZER)
                    .set_index_option(IndexRecordOption::Basic)
                    .set_fieldnorms(false),
            ),
        );
        let path = b.add_text_field("path", text_options("default"));
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
        // Indexed without field norms (`INDEXED` would add them): norms only feed
        // BM25, and they cost a byte per document and field (0.9 % of the raw text
        // for these two).
        let indexed_fast = || NumericOptions::default().set_indexed().set_fast();
        let instance = b.add_u64_field("instance", indexed_fast());
        let status = b.add_u64_field("status", indexed_fast());
        let offset = b.add_u64_field("offset", NumericOptions::default().set_fast());
        let latency_ms = b.add_f64_field(LATENCY, NumericOptions::default().set_fast());
        let uid = b.add_u64_field(UID, FAST);
        let source_doc = b.add_bytes_field(SOURCE_DOC, BytesOptions::default().set_stored());
        let es_id = b.add_text_field(ES_ID, keyword_options());
        Fields {
            schema: b.build(),
            ts,
            msg,
            msg_ids,
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
        self.to_document_with_id(rec, uid, None, None)
    }

    /// Like [`Fields::to_document`], with the `_id` of a bulk-API document and,
    /// when the record's ECS rendering differs from it, the document as sent.
    pub fn to_document_with_id(
        &self,
        rec: &LogRecord,
        uid: u64,
        es_id: Option<&str>,
        es_source: Option<&serde_json::Value>,
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
        doc.add_text(self.msg_ids, &rec.msg);
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
        let empty: Vec<&str> = KEYWORDS
            .iter()
            .zip(keyword_values)
            .filter(|(_, v)| v == &Some(""))
            .map(|(k, _)| *k)
            // Required keywords (host, app, task, source) read back as "" anyway.
            .filter(|k| !matches!(*k, "host" | "app" | "task" | "source"))
            .collect();
        let stored = StoredRef {
            msg: &rec.msg,
            fields: &rec.fields,
            path: rec.path.as_deref(),
            nanos: rec.ts.timestamp_subsec_nanos() % 1000,
            empty,
            es: es_source,
        };
        // Serialising plain data into a Vec cannot fail.
        let bytes = serde_json::to_vec(&stored).expect("record serialises");
        doc.add_bytes(self.source_doc, &bytes);
        doc
    }

    /// Rebuilds the record of document `doc_id` of `segment` from its stored part
    /// (`stored`, read from the doc store) and the segment's fast columns. For
    /// many hits, [`RecordReader`] opens each segment's columns once.
    pub fn to_record(
        &self,
        stored: &TantivyDocument,
        segment: &SegmentReader,
        doc_id: DocId,
    ) -> Result<LogRecord> {
        Columns::open(segment)?.record(self, stored, doc_id)
    }

    /// An index builder with this schema, [`index_settings`] and [`tokenizers`]: the
    /// one way indexes of this schema are created or opened.
    pub fn index_builder(&self) -> tantivy::IndexBuilder {
        tantivy::Index::builder()
            .schema(self.schema.clone())
            .settings(index_settings())
            .tokenizers(tokenizers())
    }

    /// The fields that index `msg`: its words and its ids.
    pub fn msg_fields(&self) -> [Field; 2] {
        [self.msg, self.msg_ids]
    }

    /// Looks a keyword field up by name.
    pub fn keyword(&self, name: &str) -> Option<Field> {
        KEYWORDS
            .iter()
            .position(|k| *k == name)
            .map(|i| self.keywords[i])
    }
}

/// Reads the records of hits, opening the columns of each segment once: opening a
/// dozen columns per hit made 100 hits cost 3 ms more than the doc store reads.
pub struct RecordReader<'a> {
    fields: &'a Fields,
    columns: std::collections::HashMap<u32, Columns>,
}

impl<'a> RecordReader<'a> {
    pub fn new(fields: &'a Fields) -> RecordReader<'a> {
        RecordReader {
            fields,
            columns: Default::default(),
        }
    }

    /// The record of `doc_id` in `segment`, whose ordinal in the searcher is
    /// `segment_ord` (the cache key: one reader serves one searcher).
    pub fn read(
        &mut self,
        stored: &TantivyDocument,
        segment_ord: u32,
        segment: &SegmentReader,
        doc_id: DocId,
    ) -> Result<LogRecord> {
        let columns = match self.columns.entry(segment_ord) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Columns::open(segment)?),
        };
        columns.record(self.fields, stored, doc_id)
    }

    /// Like [`RecordReader::read`], with the document as a bulk-API client sent it
    /// when one was kept (see the module doc).
    pub fn read_with_source(
        &mut self,
        stored: &TantivyDocument,
        segment_ord: u32,
        segment: &SegmentReader,
        doc_id: DocId,
    ) -> Result<(LogRecord, Option<serde_json::Value>)> {
        let columns = match self.columns.entry(segment_ord) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Columns::open(segment)?),
        };
        let mut parsed = Stored::of(self.fields, stored)?;
        let es = parsed.es.take();
        Ok((columns.record_of(parsed, doc_id)?, es))
    }
}

/// The fast columns of one segment a record is rebuilt from; `None` where no
/// document of the segment has the field.
struct Columns {
    keywords: Vec<Option<tantivy::columnar::StrColumn>>,
    ts: Option<tantivy::columnar::Column<DateTime>>,
    instance: Option<tantivy::columnar::Column<u64>>,
    status: Option<tantivy::columnar::Column<u64>>,
    offset: Option<tantivy::columnar::Column<u64>>,
    latency: Option<tantivy::columnar::Column<f64>>,
}

impl Columns {
    fn open(segment: &SegmentReader) -> Result<Columns> {
        let ff = segment.fast_fields();
        Ok(Columns {
            keywords: KEYWORDS
                .iter()
                .map(|k| ff.str(k))
                .collect::<tantivy::Result<_>>()?,
            ts: ff.column_opt(TS)?,
            instance: ff.column_opt("instance")?,
            status: ff.column_opt("status")?,
            offset: ff.column_opt("offset")?,
            latency: ff.column_opt(LATENCY)?,
        })
    }

    fn record(&self, f: &Fields, stored: &TantivyDocument, doc_id: DocId) -> Result<LogRecord> {
        self.record_of(Stored::of(f, stored)?, doc_id)
    }

    fn record_of(&self, stored: Stored, doc_id: DocId) -> Result<LogRecord> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            Error::Index(format!("fast column {what} of doc {doc_id}: {e}"))
        };
        let keyword = |name: &str| -> Result<Option<String>> {
            let i = KEYWORDS.iter().position(|k| *k == name).expect("a keyword");
            let Some(col) = &self.keywords[i] else {
                return Ok(None);
            };
            let Some(ord) = col.term_ords(doc_id).next() else {
                return Ok(None);
            };
            let mut out = String::new();
            col.ord_to_str(ord, &mut out).map_err(|e| bad(name, &e))?;
            Ok(Some(out))
        };
        let optional = |name: &str| -> Result<Option<String>> {
            Ok(match keyword(name)? {
                Some(v) => Some(v),
                None if stored.empty.iter().any(|e| e == name) => Some(String::new()),
                None => None,
            })
        };
        let first =
            |c: &Option<tantivy::columnar::Column<u64>>| c.as_ref().and_then(|c| c.first(doc_id));
        let micros = self
            .ts
            .as_ref()
            .and_then(|c| c.first(doc_id))
            .ok_or_else(|| bad(TS, &"missing"))?
            .into_timestamp_micros();
        let ts = chrono::DateTime::from_timestamp_micros(micros).ok_or_else(|| bad(TS, &micros))?
            + chrono::Duration::nanoseconds(i64::from(stored.nanos));
        let stream = match keyword("stream")? {
            Some(s) => serde_json::from_value(serde_json::Value::String(s))
                .map_err(|e| bad("stream", &e))?,
            None => protocol::Stream::default(),
        };
        let level = match keyword("level")? {
            Some(l) => Some(
                serde_json::from_value(serde_json::Value::String(l))
                    .map_err(|e| bad("level", &e))?,
            ),
            None => None,
        };
        Ok(LogRecord {
            ts,
            host: keyword("host")?.unwrap_or_default(),
            app: keyword("app")?.unwrap_or_default(),
            task: keyword("task")?.unwrap_or_default(),
            instance: first(&self.instance)
                .map(|i| u32::try_from(i).map_err(|e| bad("instance", &e)))
                .transpose()?
                .unwrap_or_default(),
            stream,
            level,
            msg: stored.msg,
            fields: stored.fields,
            trace_id: optional("trace_id")?,
            span_id: optional("span_id")?,
            parent_span_id: optional("parent_span_id")?,
            latency_ms: self.latency.as_ref().and_then(|c| c.first(doc_id)),
            status: first(&self.status)
                .map(|s| u16::try_from(s).map_err(|e| bad("status", &e)))
                .transpose()?,
            method: optional("method")?,
            path: stored.path,
            peer_host: optional("peer_host")?,
            peer_app: optional("peer_app")?,
            source: keyword("source")?.unwrap_or_default(),
            offset: first(&self.offset).unwrap_or_default(),
        })
    }
}

/// The stored part of a record, as written.
#[derive(serde::Serialize)]
struct StoredRef<'a> {
    msg: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    fields: &'a BTreeMap<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    /// Nanoseconds below the microsecond the `ts` column keeps.
    #[serde(skip_serializing_if = "is_zero")]
    nanos: u32,
    /// Optional keywords present but empty (an empty string is not indexed, so the
    /// column alone would read them back as absent).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    empty: Vec<&'a str>,
    /// A bulk-API document as sent, when its ECS rendering differs from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    es: Option<&'a serde_json::Value>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The stored part of a record, as read.
#[derive(serde::Deserialize)]
struct Stored {
    msg: String,
    #[serde(default)]
    fields: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    nanos: u32,
    #[serde(default)]
    empty: Vec<String>,
    #[serde(default)]
    es: Option<serde_json::Value>,
}

impl Stored {
    fn of(f: &Fields, doc: &TantivyDocument) -> Result<Stored> {
        let bytes = doc
            .get_first(f.source_doc)
            .and_then(|v| v.as_bytes())
            .ok_or_else(|| Error::Index(format!("stored document has no {SOURCE_DOC}")))?;
        serde_json::from_slice(bytes)
            .map_err(|e| Error::Index(format!("stored {SOURCE_DOC} is not valid: {e}")))
    }
}

/// Only the message of a stored part: phrase verification reads nothing else.
#[derive(serde::Deserialize)]
struct StoredMsg<'a> {
    #[serde(borrow)]
    msg: std::borrow::Cow<'a, str>,
}

/// The message of a stored part (the bytes of [`SOURCE_DOC`]).
pub fn stored_msg(bytes: &[u8]) -> Result<std::borrow::Cow<'_, str>> {
    serde_json::from_slice::<StoredMsg>(bytes)
        .map(|s| s.msg)
        .map_err(|e| Error::Index(format!("stored {SOURCE_DOC} is not valid: {e}")))
}

impl Fields {
    /// The `fields` of a record from its stored part alone: the field sidebar reads
    /// 500 records for these only and has no use for the column lookups of a whole
    /// record.
    pub fn stored_fields(
        &self,
        doc: &TantivyDocument,
    ) -> Result<BTreeMap<String, serde_json::Value>> {
        Ok(Stored::of(self, doc)?.fields)
    }
}

impl Default for Fields {
    fn default() -> Self {
        Fields::new()
    }
}

/// Checks that the index in `dir` was written with the `expected` schema.
///
/// Tantivy refuses a mismatch only with "An index exists but the schema does not
/// match"; this names the directory and the fields that differ, so whoever opens an
/// old data dir with a newer indexer (or the reverse) knows what happened and what
/// to do, instead of the index being misread.
pub fn check_schema(dir: &std::path::Path, existing: &Schema, expected: &Schema) -> Result<()> {
    if existing == expected {
        return Ok(());
    }
    let describe = |s: &Schema| -> BTreeMap<String, String> {
        s.fields()
            .map(|(_, e)| {
                let json = serde_json::to_string(e).unwrap_or_default();
                (e.name().to_string(), json)
            })
            .collect()
    };
    let (old, new) = (describe(existing), describe(expected));
    let differing: std::collections::BTreeSet<&str> = old
        .keys()
        .chain(new.keys())
        .filter(|k| old.get(*k) != new.get(*k))
        .map(String::as_str)
        .collect();
    Err(Error::Index(format!(
        "index {dir:?} was written with a different schema than this indexer's (fields \
         that differ: {}); it cannot be read: move it aside (or reindex its records) \
         and restart",
        differing.into_iter().collect::<Vec<_>>().join(", ")
    )))
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

    /// Indexes `records` in RAM and reads every one back the way hits are read.
    fn round_trip(records: &[LogRecord]) -> Vec<LogRecord> {
        let f = Fields::new();
        let index = f.index_builder().create_in_ram().unwrap();
        let mut w: tantivy::IndexWriter = index.writer(15 << 20).unwrap();
        for (i, r) in records.iter().enumerate() {
            w.add_document(f.to_document(r, i as u64)).unwrap();
        }
        w.commit().unwrap();
        let searcher = index.reader().unwrap().searcher();
        let segment = &searcher.segment_readers()[0];
        (0..records.len() as u32)
            .map(|d| {
                let doc: TantivyDocument = searcher.doc(tantivy::DocAddress::new(0, d)).unwrap();
                f.to_record(&doc, segment, d).unwrap()
            })
            .collect()
    }

    #[test]
    fn record_round_trips_through_store_and_columns_exactly() {
        let r = record();
        assert_eq!(
            round_trip(std::slice::from_ref(&r)),
            [r],
            "nanoseconds and all survive"
        );
    }

    #[test]
    fn sparse_and_empty_values_round_trip() {
        let full = record();
        // Absent everywhere but required fields, empty strings, a path, and a
        // document without the columns the neighbour has.
        let nobody = TaskMeta {
            host: String::new(),
            app: String::new(),
            task: String::new(),
            instance: 0,
            ports: vec![],
        };
        let mut bare = LogRecord::new(full.ts, &nobody, Stream::Stdout, "");
        bare.source = String::new();
        let mut odd = full.clone();
        odd.trace_id = Some(String::new());
        odd.method = Some(String::new());
        odd.path = Some("/fib/10".into());
        odd.level = None;
        odd.latency_ms = None;
        odd.status = Some(0);
        odd.instance = u32::MAX;
        odd.offset = u64::MAX;
        odd.ts = "1969-12-31T23:59:59.999999001Z".parse().unwrap();
        let records = vec![full, bare, odd];
        assert_eq!(round_trip(&records), records);
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
    fn numeric_fields_have_no_field_norms() {
        let f = Fields::new();
        let with_norms: Vec<&str> = f
            .schema
            .fields()
            .filter(|(_, e)| e.has_fieldnorms())
            .map(|(_, e)| e.name())
            .collect();
        assert!(with_norms.is_empty(), "norms on {with_norms:?}");
    }

    #[test]
    fn schema_check_names_the_fields_that_differ() {
        let f = Fields::new();
        assert!(check_schema(std::path::Path::new("/x"), &f.schema, &f.schema).is_ok());
        // The schema before field norms were dropped from the numeric fields.
        let mut b = Schema::builder();
        for (_, e) in f.schema.fields() {
            let mut e = e.clone();
            if matches!(e.name(), "instance" | "status") {
                e = tantivy::schema::FieldEntry::new_u64(
                    e.name().to_string(),
                    NumericOptions::default()
                        .set_indexed()
                        .set_fieldnorm()
                        .set_fast(),
                );
            }
            b.add_field(e);
        }
        let old = b.build();
        let err = check_schema(std::path::Path::new("/data/index/x"), &old, &f.schema)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/data/index/x"), "{err}");
        assert!(err.contains("instance, status"), "{err}");
    }

    /// A partition written before `msg` was split into words and ids (`msg` with
    /// Tantivy's `default` tokenizer, no `msg_ids`) must be refused by name, not read
    /// with the ids missing from every query.
    #[test]
    fn schema_check_refuses_the_layout_before_the_msg_split() {
        let f = Fields::new();
        let mut b = Schema::builder();
        for (_, e) in f.schema.fields() {
            match e.name() {
                MSG_IDS => continue,
                MSG => b.add_text_field(MSG, text_options("default")),
                _ => b.add_field(e.clone()),
            };
        }
        let err = check_schema(std::path::Path::new("/data/index/y"), &b.build(), &f.schema)
            .unwrap_err()
            .to_string();
        assert!(err.contains("fields that differ: msg, msg_ids"), "{err}");
    }

    #[test]
    fn msg_tokens_split_into_words_and_ids_keep_their_positions() {
        let text = "Failed password for root from 10.2.3.4 port 22 ssh2";
        let run = |name: &str| {
            let mut t = tokenizers().get(name).unwrap();
            let mut s = t.token_stream(text);
            let mut out = Vec::new();
            while let Some(tok) = s.next() {
                out.push((tok.position, tok.text.clone()));
            }
            out
        };
        let words = run(MSG_WORDS_TOKENIZER);
        let ids = run(MSG_IDS_TOKENIZER);
        assert_eq!(
            words.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 9]
        );
        assert_eq!(
            ids.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
            ["10", "2", "3", "4", "22", "ssh2"]
        );
        // Together, the whole message as Tantivy's default tokenizer sees it.
        let mut all: Vec<_> = words.into_iter().chain(ids).collect();
        all.sort();
        let mut t = msg_tokenizer();
        let mut s = t.token_stream(text);
        let mut whole = Vec::new();
        while let Some(tok) = s.next() {
            whole.push((tok.position, tok.text.clone()));
        }
        assert_eq!(all, whole);
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
