//! How an indexer is set up: [`IndexerConfig`], its defaults, and the parsing of the
//! one setting that has a syntax of its own (the retention).
//!
//! Plain data with a `Default`: the binary resolves flags, environment and config file
//! into it, library tests and embedders fill it in directly. The trade-off: nothing
//! here checks that the limits make sense together (a body cap above the in-flight
//! budget, say); each limit is enforced on its own where it applies.

use crate::error::{Error, Result};
use std::path::PathBuf;

/// How the indexer is set up.
#[derive(Debug, Clone)]
pub struct IndexerConfig {
    /// The partitions live in `data_dir/index/YYYY-MM-DD/`.
    pub data_dir: PathBuf,
    /// The cluster token, admin of everything. With neither it nor `tokens` the API is
    /// open (library tests and embedders); the binary always sets at least this one.
    pub token: Option<String>,
    /// Tokens with narrower roles: `read` searches and tails, `agent` ingests.
    pub tokens: protocol::auth::Keyring,
    /// Ingest requests (native and `_bulk`) in flight at once; more are shed with 429.
    pub max_concurrent_ingest: usize,
    /// Searches (native, histogram, fields, `_search`, `_count`) in flight at once.
    pub max_concurrent_searches: usize,
    /// Live-tail streams open at once.
    pub max_tail_streams: usize,
    /// Cap on the inflated size of one ingest body (the gzip-bomb guard).
    pub max_body_bytes: usize,
    /// Tantivy's indexing memory budget.
    pub writer_memory_bytes: usize,
    /// Inflated ingest bytes (native and bulk) that may be decoded or queued for the
    /// writer at once; beyond it ingest answers 429 with `Retry-After`, so memory
    /// stays bounded whatever the ingest rate.
    pub max_inflight_bytes: usize,
    /// Day partitions wholly older than this are dropped (checked at open and every
    /// minute); the newest partition is always kept.
    pub retention: Option<std::time::Duration>,
    /// Time budget of one search, histogram or aggregation (see [`crate::budget`]): past
    /// it the request is answered with an error saying so, and its threads are free.
    pub search_timeout: std::time::Duration,
    /// Commits are at least this far apart: longer means fewer commits, at the price
    /// of that much more time before a record is searchable, and writes answered at
    /// the commit wait up to that long. At rest a record is still committed as soon
    /// as it arrives. (Like Elasticsearch's `refresh_interval`, except that there a
    /// quiet index is not refreshed at once and a bulk write does not wait for it.)
    pub commit_interval: std::time::Duration,
}

/// Default of [`IndexerConfig::search_timeout`]: Kibana's own request timeout is 30 s;
/// a third of it still covers a month of logs on one core (BENCHMARKS.md).
pub const DEFAULT_SEARCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Default for IndexerConfig {
    fn default() -> Self {
        IndexerConfig {
            data_dir: PathBuf::from("./.sandtrail/indexer"),
            token: None,
            tokens: protocol::auth::Keyring::new(),
            max_concurrent_ingest: 64,
            max_concurrent_searches: 32,
            max_tail_streams: 256,
            max_body_bytes: 64 << 20,
            writer_memory_bytes: 128 << 20,
            max_inflight_bytes: 512 << 20,
            retention: None,
            search_timeout: DEFAULT_SEARCH_TIMEOUT,
            commit_interval: crate::writer::COMMIT_INTERVAL,
        }
    }
}

/// Parses a retention like `7d`, `36h`, `90m` or `3600s` (a positive whole number
/// and a unit).
pub fn parse_retention(s: &str) -> Result<std::time::Duration> {
    let bad = || Error::BadParam {
        name: "retention",
        value: s.to_string(),
        expected: "a positive whole number of d, h, m or s, like 7d".to_string(),
    };
    let t = s.trim();
    let unit = t.chars().last().ok_or_else(bad)?;
    let secs_per = match unit {
        'd' => 86_400,
        'h' => 3_600,
        'm' => 60,
        's' => 1,
        _ => return Err(bad()),
    };
    let n: u64 = t[..t.len() - 1].parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(bad());
    }
    n.checked_mul(secs_per)
        .map(std::time::Duration::from_secs)
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_parses_units_and_names_bad_values() {
        assert_eq!(parse_retention("7d").unwrap().as_secs(), 7 * 86_400);
        assert_eq!(parse_retention(" 36h ").unwrap().as_secs(), 36 * 3_600);
        assert_eq!(parse_retention("90m").unwrap().as_secs(), 5_400);
        assert_eq!(parse_retention("5s").unwrap().as_secs(), 5);
        for bad in [
            "",
            "7",
            "d",
            "0d",
            "-1d",
            "7w",
            "1.5d",
            "99999999999999999999d",
        ] {
            let err = parse_retention(bad).unwrap_err().to_string();
            assert!(err.contains("retention"), "{bad}: {err}");
        }
    }
}
