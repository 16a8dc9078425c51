//! Who may call the indexer's HTTP APIs and how many requests of each class may be in
//! flight: the layers both the native routes ([`crate::api`]) and the Elasticsearch
//! routes ([`crate::es`]) stand behind.
//!
//! One set of permits per class (ingest, search, tail) is shared by both APIs, so a
//! request costs the same whichever door it came through; each API only chooses the
//! error shape it refuses in. The trade-off: a burst of `_bulk` requests can shed
//! native ingest (and the other way round) instead of each having its own quota.

use crate::error::Error;
use axum::response::IntoResponse;
use protocol::auth::{AuthError, Keyring, Role};
use protocol::http::{Busy, Gate, Limit};
use std::sync::Arc;

/// What stands in front of the handlers: who may call (the cluster token as admin
/// plus the role tokens of the config) and how many may be in flight per class. The
/// Elasticsearch routes share the same permits, answering in their own error shape.
#[derive(Clone)]
pub(crate) struct Guards {
    pub(crate) keyring: Arc<Keyring>,
    pub(crate) ingest: Limit,
    pub(crate) search: Limit,
    pub(crate) tail: Limit,
}

impl Guards {
    pub(crate) fn new(c: &crate::IndexerConfig) -> Guards {
        let mut keyring = Keyring::with_admin(c.token.as_deref());
        keyring.extend(&c.tokens);
        Guards {
            keyring: Arc::new(keyring),
            ingest: Limit::new("ingest", c.max_concurrent_ingest, shed),
            search: Limit::new("search", c.max_concurrent_searches, shed),
            tail: Limit::new("tail", c.max_tail_streams, shed),
        }
    }

    pub(crate) fn gate(&self, needs: &'static [Role]) -> Gate {
        Gate::new(self.keyring.clone(), needs, refuse)
    }
}

fn refuse(e: AuthError) -> axum::response::Response {
    Error::from(e).into_response()
}

fn shed(b: Busy) -> axum::response::Response {
    Error::from(b).into_response()
}
