//! `zk://h1:2181,h2:2181/path` URLs, as the scheduler's HA (issue 18) and the
//! indexer's shard owners (issue 21) both take them. Only the parsing lives here:
//! each part links its ZooKeeper client itself, so the crates that never speak to
//! ZooKeeper (the agent, external clients of `protocol`) do not build one.

/// `zk://h1:2181,h2:2181/path`, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ZkUrl {
    /// `h1:2181,h2:2181`, as the client connects.
    pub servers: String,
    /// `/path`, the root of this cluster's nodes.
    pub root: String,
}

/// A `zk://` URL that does not parse, with what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct BadZkUrl(pub String);

impl std::str::FromStr for ZkUrl {
    type Err = BadZkUrl;

    fn from_str(s: &str) -> Result<ZkUrl, BadZkUrl> {
        let bad = |why: &str| {
            BadZkUrl(format!(
                "zookeeper url {s:?} {why}: expected zk://host:port[,host:port...]/path"
            ))
        };
        let rest = s
            .strip_prefix("zk://")
            .ok_or_else(|| bad("does not start with zk://"))?;
        let (servers, path) = rest.split_once('/').ok_or_else(|| bad("has no path"))?;
        if servers.is_empty()
            || servers.split(',').any(|h| {
                h.rsplit_once(':')
                    .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            })
        {
            return Err(bad("has a server without host:port"));
        }
        let path = path.trim_end_matches('/');
        if path.is_empty() || path.split('/').any(str::is_empty) {
            return Err(bad("has an empty path or path segment"));
        }
        Ok(ZkUrl {
            servers: servers.to_string(),
            root: format!("/{path}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zk_urls_parse_or_say_what_is_wrong() {
        let u: ZkUrl = "zk://h1:2181,h2:2182/sandtrail/prod/".parse().unwrap();
        assert_eq!(u.servers, "h1:2181,h2:2182");
        assert_eq!(u.root, "/sandtrail/prod");
        for bad in [
            "h1:2181/x",
            "zk://h1:2181",
            "zk://h1/x",
            "zk://h1:2181/",
            "zk://:1/x",
            "zk://h:1//x",
        ] {
            let e = bad.parse::<ZkUrl>().unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("expected zk://"), "{e}");
        }
    }
}
