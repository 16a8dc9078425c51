//! Shard ownership in ZooKeeper (issue 21): which indexers own which shards of the
//! ingest log, kept the way SolrCloud keeps its shard leaders.
//!
//! Layout under the cluster's root (`zk://h:2181/<root>`):
//! - `<root>/indexers/members/<id>`: one ephemeral node per live indexer.
//! - `<root>/indexers/shards/<n>/owner-<k>` (`k < owners`): ephemeral, holding
//!   `{"id": ..., "url": "http://host:port", "ready": bool}` of the indexer owning
//!   slot `k` of shard `n` (`ready` once its consumer caught up with the log).
//!   Creating the node is taking the slot; ZooKeeper's "node exists" refuses a
//!   second taker.
//!
//! Every tick (a third of the session timeout, at most 500 ms) an indexer reads the
//! live members and deals the slots of all shards out to them round robin, in the
//! order of their ids ([`desired_shards`]): each gets `ceil` or `floor(shards *
//! owners / members)`, the owners of a shard are all different, and every indexer
//! computes the same plan. It takes free slots of its planned shards, and lets go
//! (one a tick) of a shard no longer planned for it once another indexer holds it
//! too, so a move never leaves a shard without an owner. A deterministic plan
//! rather than "take what is free up to a fair share": with the latter, two
//! indexers making room for a third gave up the same shards, and the third could
//! not take two slots of one shard, so those shards stayed one owner short. The
//! price: a membership change moves more shards than strictly needed (each new
//! owner replays its shard from the log). A dead peer's slots free themselves when
//! its session ends, the plan then leaves it out, and the next ticks take its slots.
//!
//! Losing the session (expiry, or no answer from ZooKeeper for a whole session
//! timeout: a partition, or this process paused) gives up every shard at once:
//! their consumers stop and [`Owners::lost`] fires, and the binary exits for its
//! supervisor to restart it, as the scheduler does on losing leadership. The
//! trade-off: a restart replays nothing (the index keeps its positions), but for
//! the session timeout after a crash the dead owner's slots stay held, so a shard
//! whose every owner died is unowned until then; a restarted indexer deletes the
//! nodes its previous session left under its id at once.
//!
//! Searches read the owner map from memory ([`Owners::current`]): the same tick
//! re-reads it from ZooKeeper, and a map older than [`OWNERS_STALE`] (a stalled
//! tick) is re-read by the search itself, so a search sees a change of owners at
//! most that late; a fan-out whose owners all failed re-reads it at once
//! ([`Owners::refresh`]). A watch would see changes sooner, but needs re-arming
//! per shard and per slot after every event; the tick is already there.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use zookeeper_client as zk;

/// What an owner node holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub id: String,
    pub url: String,
    /// Set once its consumer caught up with the log (everything there when it took
    /// the shard is committed): the fan-out asks ready owners first, since a new
    /// owner replaying the shard would answer with part of it.
    #[serde(default)]
    pub ready: bool,
}

/// How this indexer takes part.
#[derive(Debug, Clone)]
pub struct OwnersConfig {
    pub zk: protocol::zk::ZkUrl,
    /// Unique per indexer (default: its advertised address).
    pub id: String,
    /// `http://host:port`, where peers send it searches.
    pub url: String,
    pub shards: u32,
    /// Slots per shard (owners of each shard).
    pub owners: u32,
    pub session_timeout: Duration,
}

/// Called when a slot is taken: the shard, a token cancelled when it is let go, and
/// the sender to fire once the shard's consumer has caught up (marks it ready).
pub type OnTake = Box<dyn Fn(u32, CancellationToken, oneshot::Sender<()>) + Send + Sync>;

/// How old the owner map a search uses may be before the search re-reads it
/// itself (the balancing tick refreshes it more often: every third of the session
/// timeout, at most 500 ms).
pub const OWNERS_STALE: Duration = Duration::from_secs(1);

/// The owners of every shard, by slot order.
pub type OwnerMap = BTreeMap<u32, Vec<Owner>>;

pub struct Owners {
    client: zk::Client,
    /// The owner map as last read, and when.
    cached: Mutex<Option<(Instant, Arc<OwnerMap>)>>,
    config: OwnersConfig,
    /// Held slots: shard -> (slot, its consumer's token).
    held: Mutex<BTreeMap<u32, (u32, CancellationToken)>>,
    lost: CancellationToken,
    last_ok: Mutex<Instant>,
    session_timeout: Duration,
    on_take: OnTake,
}

fn zk_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Shards(format!("{what}: {e}"))
}

fn options(mode: zk::CreateMode) -> zk::CreateOptions<'static> {
    mode.with_acls(zk::Acls::anyone_all())
}

/// The shards `me` should own among the sorted `members`: the slots of all shards,
/// in order, dealt out round robin (`shard * owners + j` to member
/// `(shard * owners + j) % members`), so every member gets
/// `ceil` or `floor(shards * owners / members)` of them and the owners of one shard
/// are consecutive members, all different (with fewer members than owners, each
/// member owns every shard once).
pub fn desired_shards(members: &[String], me: &str, shards: u32, owners: u32) -> BTreeSet<u32> {
    let m = members.len();
    let mut out = BTreeSet::new();
    if m == 0 {
        return out;
    }
    for n in 0..shards {
        for j in 0..(owners as usize).min(m) {
            if members[(n as usize * owners as usize + j) % m] == me {
                out.insert(n);
            }
        }
    }
    out
}

impl Owners {
    /// Connects, registers as a member (dropping what a previous session of the same
    /// id left behind) and starts taking slots.
    pub async fn start(config: OwnersConfig, on_take: OnTake) -> Result<Arc<Owners>> {
        if config.shards == 0 || config.owners == 0 {
            return Err(Error::Shards(format!(
                "shards {} and owners {} must both be at least 1",
                config.shards, config.owners
            )));
        }
        let client = zk::Client::connector()
            .with_session_timeout(config.session_timeout)
            .with_connection_timeout(config.session_timeout)
            .connect(&config.zk.servers)
            .await
            .map_err(|e| zk_err(&format!("cannot connect to {}", config.zk.servers), e))?;
        let session_timeout = client.session_timeout();
        let this = Arc::new(Owners {
            client,
            cached: Mutex::default(),
            config,
            held: Mutex::default(),
            lost: CancellationToken::new(),
            last_ok: Mutex::new(Instant::now()),
            session_timeout,
            on_take,
        });
        for n in 0..this.config.shards {
            this.client
                .mkdir(&this.shard_dir(n), &options(zk::CreateMode::Persistent))
                .await
                .map_err(|e| zk_err("cannot create the shard nodes", e))?;
        }
        this.client
            .mkdir(&this.members_dir(), &options(zk::CreateMode::Persistent))
            .await
            .map_err(|e| zk_err("cannot create the members node", e))?;
        this.forget_previous_session().await?;
        let me = this.me_json();
        this.client
            .create(
                &this.member_path(),
                &me,
                &options(zk::CreateMode::Ephemeral),
            )
            .await
            .map_err(|e| zk_err("cannot register as a member", e))?;
        info!(id = %this.config.id, shards = this.config.shards, owners = this.config.owners, session_timeout_ms = session_timeout.as_millis() as u64, "joined the shard owners");
        tokio::spawn(Arc::clone(&this).watch_session());
        tokio::spawn(Arc::clone(&this).balance());
        Ok(this)
    }

    fn indexers_dir(&self) -> String {
        format!("{}/indexers", self.config.zk.root)
    }

    fn members_dir(&self) -> String {
        format!("{}/members", self.indexers_dir())
    }

    fn member_path(&self) -> String {
        format!("{}/{}", self.members_dir(), self.config.id)
    }

    fn shard_dir(&self, n: u32) -> String {
        format!("{}/shards/{n}", self.indexers_dir())
    }

    fn slot_path(&self, n: u32, k: u32) -> String {
        format!("{}/owner-{k}", self.shard_dir(n))
    }

    fn me_json(&self) -> Vec<u8> {
        self.owner_json(false)
    }

    fn owner_json(&self, ready: bool) -> Vec<u8> {
        serde_json::to_vec(&Owner {
            id: self.config.id.clone(),
            url: self.config.url.clone(),
            ready,
        })
        .expect("an owner serialises")
    }

    /// The shards this indexer owns now.
    pub fn owned(&self) -> Vec<u32> {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// Fired once the session is lost: every shard was given up.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// The session timeout ZooKeeper granted.
    pub fn session_timeout(&self) -> Duration {
        self.session_timeout
    }

    pub fn shards(&self) -> u32 {
        self.config.shards
    }

    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// The owner map from memory, re-read first when older than [`OWNERS_STALE`].
    pub async fn current(&self) -> Result<Arc<OwnerMap>> {
        let cached = self
            .cached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match cached {
            Some((at, map)) if at.elapsed() < OWNERS_STALE => Ok(map),
            _ => self.refresh().await,
        }
    }

    /// Reads the owner map from ZooKeeper now and keeps it for [`Owners::current`].
    pub async fn refresh(&self) -> Result<Arc<OwnerMap>> {
        let asked = Instant::now();
        let map = Arc::new(self.live_owners().await?);
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        // A slower read that started earlier does not replace a newer one.
        if cached.as_ref().is_none_or(|(at, _)| *at <= asked) {
            *cached = Some((asked, map.clone()));
        }
        Ok(map)
    }

    /// The live owners of every shard, by slot order, read from ZooKeeper.
    pub async fn live_owners(&self) -> Result<OwnerMap> {
        let mut out = BTreeMap::new();
        for n in 0..self.config.shards {
            let mut slots = self
                .client
                .list_children(&self.shard_dir(n))
                .await
                .map_err(|e| zk_err("cannot list shard owners", e))?;
            slots.sort();
            let mut owners = Vec::new();
            for slot in slots {
                match self
                    .client
                    .get_data(&format!("{}/{slot}", self.shard_dir(n)))
                    .await
                {
                    Ok((data, _)) => match serde_json::from_slice::<Owner>(&data) {
                        Ok(o) => owners.push(o),
                        Err(e) => warn!(shard = n, slot, error = %e, "unreadable owner node"),
                    },
                    Err(zk::Error::NoNode) => {}
                    Err(e) => return Err(zk_err("cannot read a shard owner", e)),
                }
            }
            out.insert(n, owners);
        }
        Ok(out)
    }

    /// Deletes the member and owner nodes a previous session of our id left (a
    /// crash: they would stay until that session times out).
    async fn forget_previous_session(&self) -> Result<()> {
        let _ = self.client.delete(&self.member_path(), None).await;
        for n in 0..self.config.shards {
            for k in 0..self.config.owners {
                let path = self.slot_path(n, k);
                if let Ok((data, _)) = self.client.get_data(&path).await {
                    if serde_json::from_slice::<Owner>(&data).is_ok_and(|o| o.id == self.config.id)
                    {
                        info!(
                            shard = n,
                            slot = k,
                            "dropping a slot our previous session held"
                        );
                        let _ = self.client.delete(&path, None).await;
                    }
                }
            }
        }
        Ok(())
    }

    fn lose(&self, why: &str) {
        if self.lost.is_cancelled() {
            return;
        }
        let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(|e| e.into_inner()));
        error!(reason = why, shards = ?held.keys().collect::<Vec<_>>(), "zookeeper session lost: giving up every shard");
        for (_, (_, token)) in held {
            token.cancel();
        }
        self.lost.cancel();
    }

    async fn watch_session(self: Arc<Self>) {
        let mut states = self.client.state_watcher();
        loop {
            let state = tokio::select! {
                s = states.changed() => s,
                _ = self.lost.cancelled() => return,
            };
            match state {
                zk::SessionState::Expired
                | zk::SessionState::Closed
                | zk::SessionState::AuthFailed => {
                    self.lose(&format!("zookeeper session {state}"));
                    return;
                }
                other => warn!(state = %other, "zookeeper connection state changed"),
            }
        }
    }

    /// The lease and the balancing, every third of the session timeout.
    async fn balance(self: Arc<Self>) {
        let period = (self.session_timeout / 3).min(Duration::from_millis(500));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.lost.cancelled() => return,
            }
            let fresh = self
                .last_ok
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed()
                < self.session_timeout;
            if !fresh {
                self.lose("no answer from zookeeper for a whole session timeout");
                return;
            }
            let asked = Instant::now();
            match tokio::time::timeout(self.session_timeout / 3, self.round()).await {
                Ok(Ok(())) => {
                    *self.last_ok.lock().unwrap_or_else(|e| e.into_inner()) = asked;
                    // The searches' owner map, fresh every tick; bounded like
                    // the round, so that a hung ZooKeeper cannot stop the lease
                    // check above.
                    match tokio::time::timeout(self.session_timeout / 3, self.refresh()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => warn!(error = %e, "cannot re-read the shard owners"),
                        Err(_) => warn!("re-reading the shard owners timed out"),
                    }
                }
                Ok(Err(e)) => warn!(error = %e, "shard balancing round failed"),
                Err(_) => warn!("shard balancing round timed out"),
            }
            if self.lost.is_cancelled() {
                return;
            }
        }
    }

    /// One look at the members and slots: our member node must still exist (else
    /// the session is gone), then take or let go of slots toward the plan.
    async fn round(self: &Arc<Self>) -> Result<()> {
        if self
            .client
            .check_stat(&self.member_path())
            .await
            .map_err(|e| zk_err("cannot check our member node", e))?
            .is_none()
        {
            self.lose("our member node is gone");
            return Ok(());
        }
        let mut members = self
            .client
            .list_children(&self.members_dir())
            .await
            .map_err(|e| zk_err("cannot list members", e))?;
        members.sort();
        let desired = desired_shards(
            &members,
            &self.config.id,
            self.config.shards,
            self.config.owners,
        );
        let mut taken: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        for n in 0..self.config.shards {
            let slots = self
                .client
                .list_children(&self.shard_dir(n))
                .await
                .map_err(|e| zk_err("cannot list shard owners", e))?;
            taken.insert(
                n,
                slots
                    .iter()
                    .filter_map(|s| s.strip_prefix("owner-")?.parse().ok())
                    .collect(),
            );
        }
        // A slot we hold whose node is gone (deleted behind our back) is let go.
        let held: Vec<(u32, u32)> = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, (k, _))| (*n, *k))
            .collect();
        for (n, k) in &held {
            if !taken.get(n).is_some_and(|t| t.contains(k)) {
                warn!(
                    shard = n,
                    slot = k,
                    "our owner node is gone: giving the shard up"
                );
                self.release(*n, false).await;
            }
        }
        let mine = self.owned();
        // One shard a tick that is no longer ours goes, once another indexer holds
        // it too (or it has no free slot for the indexer it is meant for).
        let holders = |n: &u32| taken.get(n).map_or(0, BTreeSet::len);
        if let Some(n) = mine.iter().find(|n| {
            !desired.contains(n) && (holders(n) >= 2 || holders(n) >= self.config.owners as usize)
        }) {
            info!(
                shard = n,
                members = members.len(),
                "letting a shard go to its new owner"
            );
            self.release(*n, true).await;
        }
        for &n in &desired {
            if mine.contains(&n) {
                continue;
            }
            let t = taken.get(&n).cloned().unwrap_or_default();
            let Some(k) = (0..self.config.owners).find(|k| !t.contains(k)) else {
                continue;
            };
            match self
                .client
                .create(
                    &self.slot_path(n, k),
                    &self.me_json(),
                    &options(zk::CreateMode::Ephemeral),
                )
                .await
            {
                Ok(_) => {
                    let token = CancellationToken::new();
                    self.held
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(n, (k, token.clone()));
                    info!(shard = n, slot = k, "took a shard");
                    let (caught_up, ready) = oneshot::channel();
                    (self.on_take)(n, token.clone(), caught_up);
                    let (me, path) = (Arc::clone(self), self.slot_path(n, k));
                    tokio::spawn(async move {
                        tokio::select! {
                            r = ready => if r.is_ok() {
                                match me.client.set_data(&path, &me.owner_json(true), None).await {
                                    Ok(_) => info!(shard = n, slot = k, "shard caught up: ready for searches"),
                                    Err(e) => warn!(shard = n, error = %e, "cannot mark the shard ready"),
                                }
                            },
                            _ = token.cancelled() => {}
                        }
                    });
                }
                Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(zk_err("cannot take a slot", e)),
            }
        }
        Ok(())
    }

    /// Stops consuming shard `n` and, when `delete`, frees its slot.
    async fn release(&self, n: u32, delete: bool) {
        let slot = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&n);
        if let Some((k, token)) = slot {
            token.cancel();
            if delete {
                if let Err(e) = self.client.delete(&self.slot_path(n, k), None).await {
                    warn!(shard = n, slot = k, error = %e, "cannot free a slot");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shard_gets_its_owners_and_every_member_its_share() {
        let ids = |n: usize| {
            (0..n)
                .map(|i| format!("127.0.0.1:{}", 7000 + i))
                .collect::<Vec<_>>()
        };
        for (m, owners, shards) in [
            (3, 2, 6),
            (2, 2, 6),
            (1, 2, 6),
            (4, 2, 6),
            (3, 1, 6),
            (5, 3, 7),
        ] {
            let members = ids(m);
            let per: Vec<BTreeSet<u32>> = members
                .iter()
                .map(|me| desired_shards(&members, me, shards, owners))
                .collect();
            let want = (owners as usize).min(m);
            for n in 0..shards {
                assert_eq!(
                    per.iter().filter(|d| d.contains(&n)).count(),
                    want,
                    "shard {n} of {m} members"
                );
            }
            let slots = shards as usize * want;
            for d in &per {
                assert!(
                    d.len() <= slots.div_ceil(m) && d.len() >= slots / m,
                    "{m} members: {}",
                    d.len()
                );
            }
        }
    }
}
