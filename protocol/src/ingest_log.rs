//! The durable ingest log on NATS JetStream (issue 21), as both ends open it: the
//! shipper publishes batches into it, the indexer's shard owners consume from it.
//! Behind the `nats` feature, so only the parts that speak to it link `async-nats`.
//!
//! One stream, [`crate::shard::STREAM`], over the subjects `sandtrail.logs.<shard>`,
//! file storage, replicas as configured (1 by default: a single server; 3 for a
//! cluster of three), a two-minute duplicate window for message ids. Whoever comes
//! first creates it; everyone checks its description names their shard count
//! ([`crate::shard::check_description`]).
//!
//! Its limits follow the indexers ([`Limits`], set by every indexer when it opens
//! the log, created or updated; the shipper leaves them as they are): a new shard
//! owner rebuilds its index by replaying the stream, so the stream keeps what the
//! indexers keep, records up to `[indexer] retention` plus one day (retention
//! drops whole day partitions, so an index holds up to a day more), and
//! everything when no retention is set. A byte bound may be set on top; the
//! trade-off is then stated, not hidden: a new owner cannot rebuild what the
//! bound trimmed, which it logs and counts when it happens. Trimming by every
//! owner's committed position instead would need those positions gathered,
//! which nothing does.

use crate::shard;
use async_nats::jetstream::{self, stream};
use std::time::Duration;

/// How to reach and shape the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `nats://h1:4222,nats://h2:4222` (the scheme may be left out).
    pub urls: String,
    /// Shards of the cluster, fixed for its life ([`shard::DEFAULT_SHARDS`]).
    pub shards: u32,
    /// Replicas of the stream when this process creates it.
    pub replicas: usize,
    /// The stream's limits, applied (on creation, or as an update) when `Some`:
    /// the indexers'; `None` leaves an existing stream's alone (the shipper).
    pub limits: Option<Limits>,
}

/// How much the stream keeps. `None` is no bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Messages older than this (since publishing) are removed.
    pub max_age: Option<Duration>,
    /// The oldest messages are removed past this many bytes of stream.
    pub max_bytes: Option<u64>,
}

/// A day: a partition's span, kept beyond the retention (see the module doc).
pub const RETENTION_SLACK: Duration = Duration::from_secs(86_400);

impl Limits {
    /// The stream's limits for an indexer with `retention` and a byte bound of
    /// `max_bytes`.
    pub fn for_retention(retention: Option<Duration>, max_bytes: Option<u64>) -> Limits {
        Limits {
            max_age: retention.map(|r| r.saturating_add(RETENTION_SLACK)),
            max_bytes,
        }
    }

    /// JetStream's `max_age` (zero: none) and `max_bytes` (-1: none).
    fn jetstream(&self) -> (Duration, i64) {
        (
            self.max_age.unwrap_or(Duration::ZERO),
            self.max_bytes
                .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
        )
    }

    /// `config` with these limits, or `None` when it already has them.
    pub fn apply(&self, config: &stream::Config) -> Option<stream::Config> {
        let (max_age, max_bytes) = self.jetstream();
        // A stream created without a byte bound reports 0 or -1.
        let bytes_now = if config.max_bytes <= 0 {
            -1
        } else {
            config.max_bytes
        };
        if config.max_age == max_age && bytes_now == max_bytes {
            return None;
        }
        Some(stream::Config {
            max_age,
            max_bytes,
            ..config.clone()
        })
    }
}

impl LogConfig {
    pub fn new(urls: impl Into<String>) -> LogConfig {
        LogConfig {
            urls: urls.into(),
            shards: shard::DEFAULT_SHARDS,
            replicas: 1,
            limits: None,
        }
    }

    /// Checks the shape without connecting: addresses that parse, shards and
    /// replicas in range.
    pub fn validate(&self) -> Result<(), String> {
        addresses(&self.urls)?;
        if self.shards == 0 || self.shards > 1024 {
            return Err(format!(
                "ingest log shards {} is out of range, expected 1..=1024",
                self.shards
            ));
        }
        if self.replicas == 0 || self.replicas > 5 {
            return Err(format!(
                "ingest log replicas {} is out of range, expected 1..=5 (JetStream's limit)",
                self.replicas
            ));
        }
        Ok(())
    }
}

/// The server addresses of a comma-separated list.
pub fn addresses(urls: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    let addrs = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>().map_err(|e| {
                format!("ingest log url {u:?} does not parse ({e}), expected nats://host:port")
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err(format!(
            "ingest log {urls:?} names no server, expected nats://host:port[,...]"
        ));
    }
    Ok(addrs)
}

/// The stream as `config` creates it.
pub fn stream_config(config: &LogConfig) -> stream::Config {
    let base = stream::Config {
        name: shard::STREAM.to_string(),
        subjects: vec![shard::subjects()],
        description: Some(shard::describe(config.shards)),
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        duplicate_window: Duration::from_secs(120),
        // Trimming removes the oldest messages, never refuses new ones.
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    };
    match config.limits.as_ref().and_then(|l| l.apply(&base)) {
        Some(limited) => limited,
        None => base,
    }
}

/// Connects (failing fast when no server answers: callers retry with their own
/// back-off) and returns the JetStream context with the stream ensured and checked,
/// its limits updated to `config.limits` when those are given and differ.
pub async fn open(config: &LogConfig) -> Result<(jetstream::Context, stream::Stream), String> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(addresses(&config.urls)?)
        .await
        .map_err(|e| format!("cannot connect to the ingest log {}: {e}", config.urls))?;
    let js = jetstream::new(client);
    let mut stream = js
        .get_or_create_stream(stream_config(config))
        .await
        .map_err(|e| format!("cannot open stream {}: {e}", shard::STREAM))?;
    let info = stream
        .info()
        .await
        .map_err(|e| format!("cannot read stream {}: {e}", shard::STREAM))?
        .clone();
    shard::check_description(info.config.description.as_deref(), config.shards)?;
    if let Some(updated) = config.limits.as_ref().and_then(|l| l.apply(&info.config)) {
        js.update_stream(&updated).await.map_err(|e| {
            format!(
                "cannot set stream {}'s limits (max_age {:?}, max_bytes {}): {e}",
                shard::STREAM,
                updated.max_age,
                updated.max_bytes
            )
        })?;
        stream = js
            .get_stream(shard::STREAM)
            .await
            .map_err(|e| format!("cannot open stream {}: {e}", shard::STREAM))?;
    }
    Ok((js, stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_checked() {
        assert!(LogConfig::new("nats://127.0.0.1:4222,h2:4222")
            .validate()
            .is_ok());
        assert!(LogConfig::new(" , ")
            .validate()
            .unwrap_err()
            .contains("names no server"));
        let mut c = LogConfig::new("nats://h:4222");
        c.shards = 0;
        assert!(c.validate().unwrap_err().contains("shards 0"));
        c.shards = 6;
        c.replicas = 0;
        assert!(c.validate().unwrap_err().contains("replicas 0"));
    }

    #[test]
    fn the_stream_keeps_what_the_indexers_keep() {
        // The shipper sets no limits: everything is kept (and an existing
        // stream's limits are left alone).
        let plain = stream_config(&LogConfig::new("nats://h:4222"));
        assert_eq!((plain.max_age, plain.max_bytes), (Duration::ZERO, 0));
        let week = Duration::from_secs(7 * 86_400);
        let mut c = LogConfig::new("nats://h:4222");
        c.limits = Some(Limits::for_retention(Some(week), Some(1 << 30)));
        let s = stream_config(&c);
        assert_eq!(
            s.max_age,
            week + RETENTION_SLACK,
            "a day past the retention"
        );
        assert_eq!(s.max_bytes, 1 << 30);
        assert_eq!(s.discard, stream::DiscardPolicy::Old);
        assert_eq!(s.name, shard::STREAM);
        // Unchanged limits need no update; changed ones (or removed) do.
        let l = c.limits.unwrap();
        assert_eq!(l.apply(&s), None);
        let none = Limits::for_retention(None, None);
        let cleared = none.apply(&s).expect("limits removed");
        assert_eq!((cleared.max_age, cleared.max_bytes), (Duration::ZERO, -1));
        assert_eq!(none.apply(&plain), None, "0 bytes reads as no bound");
        assert_eq!(none.apply(&cleared), None);
    }
}
