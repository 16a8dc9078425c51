//! The Tantivy collectors and sort orders behind every read path: the native search
//! and histogram ([`crate::search`]), the sidebar, latency and context
//! ([`crate::analytics`]) and the Elasticsearch layer ([`crate::es`]).
//!
//! Each reads fast-field columns only (`ts` and `_uid` through the shared
//! [`crate::columns::ColumnCache`]), a block of documents at a time where the column
//! allows, and never loads a stored document. The trade-off: each collector is
//! written for one shape of answer instead of going through Tantivy's generic
//! aggregation framework, which costs a few dozen lines per new aggregation and saves
//! the framework's JSON round trip and per-document dispatch on every match.

mod order;
mod sortkey;
mod time;
mod top;
mod values;

pub(crate) use order::{ByTsOffset, NewestFirst, SlowestFirst, TimeOrder};
pub(crate) use sortkey::ByKey;
pub use time::{BucketLayout, TARGET_BUCKETS};
pub(crate) use time::{DateBuckets, HistogramCollector, MinTs, SplitHistogram};
pub(crate) use top::NewestTop;
pub(crate) use values::{KeywordCounts, LatencyByGroup, NumericColumn, NumericValues};
