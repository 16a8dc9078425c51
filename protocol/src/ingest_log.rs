//! The durable ingest log on NATS JetStream (issue 21), as both ends open it: the
//! shipper publishes batches into it, the indexer's shard owners consume from it.
//! Behind the `nats` feature, so only the parts that speak to it link `async-nats`.
//!
//! One stream, [`crate::shard::STREAM`], over the subjects `sandtrail.logs.<shard>`,
//! file storage, replicas as configured (1 by default: a single server; 3 for a
//! cluster of three), a two-minute duplicate window for message ids. Whoever comes
//! first creates it; everyone checks its description names their shard count
//! ([`crate::shard::check_description`]). The trade-off: the stream keeps
//! everything (no age limit), since a new shard owner rebuilds its index by
//! replaying it; trimming it safely needs every owner's committed position, which
//! nothing gathers yet.

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
}

impl LogConfig {
    pub fn new(urls: impl Into<String>) -> LogConfig {
        LogConfig {
            urls: urls.into(),
            shards: shard::DEFAULT_SHARDS,
            replicas: 1,
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

/// Connects (failing fast when no server answers: callers retry with their own
/// back-off) and returns the JetStream context with the stream ensured and checked.
pub async fn open(config: &LogConfig) -> Result<(jetstream::Context, stream::Stream), String> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(addresses(&config.urls)?)
        .await
        .map_err(|e| format!("cannot connect to the ingest log {}: {e}", config.urls))?;
    let js = jetstream::new(client);
    let mut stream = js
        .get_or_create_stream(stream::Config {
            name: shard::STREAM.to_string(),
            subjects: vec![shard::subjects()],
            description: Some(shard::describe(config.shards)),
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot open stream {}: {e}", shard::STREAM))?;
    let info = stream
        .info()
        .await
        .map_err(|e| format!("cannot read stream {}: {e}", shard::STREAM))?;
    shard::check_description(info.config.description.as_deref(), config.shards)?;
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
}
