//! The cluster's built-in defaults: where each part listens when nothing says
//! otherwise, where a data dir is, and which file in it holds each role's tokens.
//!
//! They are contracts, not details of one command: `sandtrail up` writes the admin
//! token where `sandtrail deploy` later looks for it, and the CLI's default server is
//! the address `up` listens on. Written once here, so the two sides cannot drift. The
//! trade-off: a default that only one part uses still lives here, away from that part,
//! because a reader looking for "what port is 7071" should find all of them together.

use crate::auth::Role;
use std::path::{Path, PathBuf};

/// `sandtrail up` (UI and every API) and `sandtrail web`.
pub const LISTEN: &str = "127.0.0.1:7070";
/// `sandtrail scheduler`.
pub const SCHEDULER_LISTEN: &str = "127.0.0.1:7071";
/// `sandtrail indexer`.
pub const INDEXER_LISTEN: &str = "127.0.0.1:7072";
/// The router of `sandtrail up` and of `sandtrail agent`.
pub const ROUTER_LISTEN: &str = "127.0.0.1:7080";
/// The address other hosts reach an agent's tasks at.
pub const AGENT_ADDRESS: &str = "127.0.0.1";
/// Where the command-line clients send their calls: `up`'s [`LISTEN`].
pub const SERVER_URL: &str = "http://127.0.0.1:7070";
/// Local agents `sandtrail up` starts.
pub const UP_AGENTS: u32 = 3;
/// Where every part keeps its state, and where the clients find the admin token.
pub const DATA_DIR: &str = "./.sandtrail";

/// The file holding `role`'s tokens in data dir `dir`: `token` for the admin (the
/// cluster token), `token.<role>` for the others.
pub fn token_path(dir: &Path, role: Role) -> PathBuf {
    match role {
        Role::Admin => dir.join("token"),
        other => dir.join(format!("token.{}", other.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_are_named_by_role() {
        let d = Path::new("/d");
        assert_eq!(token_path(d, Role::Admin), Path::new("/d/token"));
        assert_eq!(token_path(d, Role::Read), Path::new("/d/token.read"));
        assert_eq!(token_path(d, Role::Agent), Path::new("/d/token.agent"));
        assert_eq!(token_path(d, Role::Deploy), Path::new("/d/token.deploy"));
    }

    #[test]
    fn the_clients_default_server_is_where_up_listens() {
        assert_eq!(SERVER_URL, format!("http://{LISTEN}"));
    }
}
