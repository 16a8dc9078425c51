//! Mesos-DNS on a follower scheduler: the leader's zone, fetched with a long poll of
//! its `GET /v1/dns/zone?after=SERIAL`, so every scheduler in HA answers DNS, not
//! only the one that leads.
//!
//! A follower has no state of its own to build a zone from (the leader alone holds the
//! tasks, their health and the agents); the state node in ZooKeeper would do for apps,
//! but it is written on changes that must survive a failover, not on each health
//! check. The trade-off: a follower's answers trail the leader's by one HTTP round
//! trip (milliseconds), and while no leader answers it keeps serving the last zone it
//! got, which is what a resolver would have cached anyway.

use super::Zone;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// Pause after a failed fetch: a leader being replaced answers again within the
/// session timeout, and this keeps a follower from spinning meanwhile.
const RETRY: Duration = Duration::from_millis(250);

/// Longer than the leader's hold of an unchanged zone (20 s).
const POLL_TIMEOUT: Duration = Duration::from_secs(30);

/// Keeps `zone` the leader's zone (with `ns1` at `ns`) until `cancel`. `leader` names
/// the leader's `host:port` (from the election); `me` is ours, never fetched from.
/// `http` carries the token (a read role is enough).
pub async fn follow(
    http: reqwest::Client,
    mut leader: watch::Receiver<Option<String>>,
    me: String,
    ns: Option<IpAddr>,
    zone: watch::Sender<Arc<Zone>>,
    cancel: CancellationToken,
) {
    let mut serial: Option<u32> = None;
    loop {
        let current = leader.borrow_and_update().clone();
        let Some(addr) = current.filter(|l| *l != me) else {
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = leader.changed() => if r.is_err() { return },
            }
            continue;
        };
        let url = match serial {
            Some(s) => format!("http://{addr}/v1/dns/zone?after={s}"),
            None => format!("http://{addr}/v1/dns/zone"),
        };
        let fetch = async {
            let resp = http
                .get(&url)
                .timeout(POLL_TIMEOUT)
                .send()
                .await?
                .error_for_status()?;
            resp.json::<Zone>().await
        };
        let got = tokio::select! {
            _ = cancel.cancelled() => return,
            // A new leader: ask it instead, from scratch.
            r = leader.changed() => {
                if r.is_err() { return }
                serial = None;
                continue;
            }
            got = fetch => got,
        };
        match got {
            Ok(z) => {
                if serial.is_none() {
                    info!(leader = %addr, serial = z.serial(), "dns: serving the leader's zone");
                }
                serial = Some(z.serial());
                zone.send_replace(Arc::new(z.with_ns(ns)));
            }
            Err(e) => {
                debug!(leader = %addr, error = %e, "dns: cannot fetch the leader's zone: retrying");
                serial = None;
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}

/// Keeps `zone` a copy of `from` (the elected scheduler's own zone), with `ns1` at
/// `ns`, until `cancel`.
pub async fn mirror(
    mut from: watch::Receiver<Arc<Zone>>,
    ns: Option<IpAddr>,
    zone: watch::Sender<Arc<Zone>>,
    cancel: CancellationToken,
) {
    loop {
        let z = (**from.borrow_and_update()).clone();
        zone.send_replace(Arc::new(z.with_ns(ns)));
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = from.changed() => if r.is_err() { return },
        }
    }
}
