//! Shards of the durable ingest log (issue 21): which shard a source's records go
//! to, the JetStream names both ends agree on, and the message id that lets
//! JetStream drop a resent batch.
//!
//! A source always lands in one shard, `stable_hash(source) % shards`, so one shard
//! owner sees every record of a source, in order, and the indexer's dedup by
//! (source, offset) keeps working per shard. The hash is FNV-1a over the source id's
//! bytes: fixed forever, unlike `std`'s `DefaultHasher`, which may change between
//! Rust releases. The trade-off is that the shard count is fixed per cluster: a new
//! count would move sources between shards and their owners' dedup state with them.
//! So the count is written into the stream's description when the stream is made
//! ([`describe`]) and every client compares it with its own ([`check_description`])
//! and refuses to run on a mismatch instead of silently hashing elsewhere.

/// Shards of a cluster unless configured otherwise.
pub const DEFAULT_SHARDS: u32 = 6;

/// The JetStream stream holding every batch.
pub const STREAM: &str = "SANDTRAIL_LOGS";

/// Subjects of the stream: `sandtrail.logs.<shard>`.
pub const SUBJECT_PREFIX: &str = "sandtrail.logs";

/// Source ids starting with this are not log sources but the committed stream
/// position of a shard, kept in the indexer's per-source offsets (see
/// [`position_source`]). Real source ids (`base@<hex>`) never start with `!`.
pub const POSITION_PREFIX: &str = "!shard/";

/// FNV-1a 64 of `source`.
pub fn stable_hash(source: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in source.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The shard of `source` among `shards` (which must be at least 1).
pub fn shard_of(source: &str, shards: u32) -> u32 {
    (stable_hash(source) % u64::from(shards.max(1))) as u32
}

/// `sandtrail.logs.<shard>`.
pub fn subject(shard: u32) -> String {
    format!("{SUBJECT_PREFIX}.{shard}")
}

/// The stream's subject filter: `sandtrail.logs.*`.
pub fn subjects() -> String {
    format!("{SUBJECT_PREFIX}.*")
}

/// `<source>:<first>-<last>`: the same records sent again carry the same id, so
/// JetStream stores them once within its duplicate window.
pub fn message_id(source: &str, first: u64, last: u64) -> String {
    format!("{source}:{first}-{last}")
}

/// The stream's description, naming the shard count it was made for.
pub fn describe(shards: u32) -> String {
    format!("sandtrail ingest log, shards={shards}")
}

/// Checks a stream's description against our shard count: `Ok` when it names
/// the same count, an error naming both otherwise (also when it names none).
pub fn check_description(description: Option<&str>, shards: u32) -> Result<(), String> {
    let found = description
        .and_then(|d| d.rsplit_once("shards="))
        .and_then(|(_, n)| n.trim().parse::<u32>().ok());
    match found {
        Some(n) if n == shards => Ok(()),
        Some(n) => Err(format!(
            "stream {STREAM} was made for {n} shards, this process is configured for {shards}: \
             the shard count is fixed per cluster"
        )),
        None => Err(format!(
            "stream {STREAM} has description {description:?}, expected one naming its shard \
             count (\"shards=N\"); was it made by something else?"
        )),
    }
}

/// The pseudo-source whose "offset" is the last stream sequence of `shard`
/// committed with the documents: positions and documents commit together.
pub fn position_source(shard: u32) -> String {
    format!("{POSITION_PREFIX}{shard}")
}

/// Whether `source` is a [`position_source`].
pub fn is_position_source(source: &str) -> bool {
    source.starts_with(POSITION_PREFIX)
}

/// Parses a shard list `0,3,5` (what `shards=` of the search API takes); each must
/// be below `shards`.
pub fn parse_list(list: &str, shards: u32) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let n: u32 = part
            .parse()
            .map_err(|_| format!("shard {part:?} is not a number, expected e.g. shards=0,3"))?;
        if n >= shards {
            return Err(format!(
                "shard {n} is out of range, expected below {shards}"
            ));
        }
        if !out.contains(&n) {
            out.push(n);
        }
    }
    if out.is_empty() {
        return Err(format!(
            "shard list {list:?} is empty, expected e.g. shards=0,3"
        ));
    }
    out.sort_unstable();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_hash_is_fixed() {
        // FNV-1a 64 reference values: a change here moves every source's shard.
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn descriptions_carry_the_count() {
        assert!(check_description(Some(&describe(6)), 6).is_ok());
        let e = check_description(Some(&describe(6)), 4).unwrap_err();
        assert!(
            e.contains("6 shards") && e.contains("configured for 4"),
            "{e}"
        );
        assert!(check_description(None, 6).is_err());
        assert!(check_description(Some("someone else's"), 6).is_err());
    }

    #[test]
    fn shard_lists() {
        assert_eq!(parse_list("3, 0,3", 6).unwrap(), vec![0, 3]);
        assert!(parse_list("6", 6).unwrap_err().contains("below 6"));
        assert!(parse_list("x", 6).is_err());
        assert!(parse_list("", 6).is_err());
    }

    #[test]
    fn positions_are_not_sources() {
        assert!(is_position_source(&position_source(3)));
        assert!(!is_position_source(
            "node-1/app/task/stdout@0123456789abcdef"
        ));
    }

    proptest! {
        #[test]
        fn every_source_has_one_shard_in_range(source in ".{0,40}", shards in 1u32..64) {
            let s = shard_of(&source, shards);
            prop_assert!(s < shards);
            prop_assert_eq!(s, shard_of(&source, shards));
        }
    }
}
