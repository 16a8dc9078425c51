//! Mesos-DNS, served by the scheduler itself: `<app>.marathon.<domain>` A records,
//! `_<app>._tcp.marathon.<domain>` SRV records (one per healthy task and port, host
//! ports), `<app>.marathon.slave.<domain>`, `leader.<domain>`, SOA and NS, over UDP
//! and TCP ([`server`]), and Mesos-DNS's HTTP API (`/v1/services/_<app>._tcp...`,
//! `/v1/hosts/...`, in `crate::api`), both read from one [`Zone`] snapshot.
//!
//! The zone is rebuilt when the control plane's state changes ([`crate::control::State::view_changes`]:
//! every task event, health change and agent registration) or the leader changes,
//! not on a poll: Mesos-DNS polls the master every 60 s, and a task killed is then
//! answered for up to a minute. Here an answer follows a change within milliseconds;
//! what remains is the answers' TTL (`dns_ttl_secs`, default 5 s) in resolvers that
//! cache. The trade-off is a rebuild per burst of changes under the state's lock: a
//! walk over the tasks, coalesced (changes during a rebuild make one more rebuild).
//!
//! Under HA every scheduler serves DNS: the leader from its own zone, followers from
//! the leader's, fetched with a long poll ([`follow`]).

pub mod client;
pub mod follow;
pub mod names;
pub mod server;
pub mod zone;

pub use server::DnsCounters;
pub use zone::{SrvEntry, Zone, ZoneConfig};

use crate::api::Scheduler;
use crate::control::Now;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Shortest time between two rebuilds: a burst of heartbeats makes one rebuild, not
/// one each, and still an answer follows within this of a change.
pub const MIN_REBUILD_GAP: Duration = Duration::from_millis(20);

/// Keeps `zone` current with `scheduler`'s state and leader until `cancel`.
pub(crate) async fn maintain(
    scheduler: Scheduler,
    zone: watch::Sender<Arc<Zone>>,
    mut leader: watch::Receiver<Option<String>>,
    ns: watch::Receiver<Option<IpAddr>>,
    config: ZoneConfig,
    cancel: CancellationToken,
) {
    let mut view = scheduler.with_state(|st| st.view_changes());
    let mut ns = ns;
    // Serials only grow, across restarts too: seeded from the clock.
    let mut serial = (Now::current().wall.timestamp().max(0) as u64 & 0x7fff_ffff) as u32;
    loop {
        serial = serial.wrapping_add(1);
        let leader_now = leader.borrow_and_update().clone();
        let ns_now = *ns.borrow_and_update();
        view.borrow_and_update();
        let built = scheduler.with_state(|st| {
            Zone::build(st, config.clone(), leader_now.as_deref(), ns_now, serial)
        });
        zone.send_replace(Arc::new(built));
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = view.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
            r = ns.changed() => if r.is_err() { return },
        }
        tokio::time::sleep(MIN_REBUILD_GAP).await;
    }
}
