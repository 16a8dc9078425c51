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
use tracing::{debug, info, warn};

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
    // One warning per leader that refuses our token; other failures (a leader being
    // replaced, or just elected and still loading: 503) are retried quietly.
    let mut warned = false;
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
                warned = false;
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
                let refused = e.status().is_some_and(|s| s == 401 || s == 403);
                if warned || !refused {
                    debug!(leader = %addr, error = %e, "dns: cannot fetch the leader's zone: retrying");
                } else {
                    warn!(leader = %addr, error = %e, "dns: cannot fetch the leader's zone (the schedulers must share the cluster token): retrying");
                    warned = true;
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::zone::tests::zone;
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};

    fn ns1(z: &Zone) -> Vec<String> {
        let mut m = Message::query();
        m.add_query(Query::query(
            Name::from_ascii("ns1.mesos.").unwrap(),
            RecordType::A,
        ));
        z.answer(&m)
            .answers
            .iter()
            .map(|r| r.data.to_string())
            .collect()
    }

    #[tokio::test]
    async fn a_follower_serves_the_leaders_zone_naming_itself_ns1() {
        let (leader_zone, _) = zone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let leader_addr = listener.local_addr().unwrap().to_string();
        let app = axum::Router::new().route(
            "/v1/dns/zone",
            axum::routing::get(move || {
                let z = leader_zone.clone();
                async move { axum::Json(z) }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let (_leader_tx, leader_rx) = watch::channel(Some(leader_addr));
        let (tx, mut rx) = watch::channel(Arc::new(Zone::empty(Default::default())));
        let cancel = CancellationToken::new();
        tokio::spawn(follow(
            reqwest::Client::new(),
            leader_rx,
            "127.0.0.1:1".into(),
            Some("10.0.0.3".parse().unwrap()),
            tx,
            cancel.clone(),
        ));
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                rx.changed().await.unwrap();
                let z = rx.borrow_and_update().clone();
                if z.serial() == 7 {
                    return z;
                }
            }
        })
        .await
        .expect("the leader's zone within 5 s");
        assert_eq!(
            ns1(&got),
            ["10.0.0.3"],
            "ns1 is the follower, not the leader"
        );
        cancel.cancel();
    }

    #[tokio::test]
    async fn the_leader_never_fetches_from_itself_and_mirrors_its_own_zone() {
        let (own, _) = zone();
        let (_leader_tx, leader_rx) = watch::channel(Some("127.0.0.1:1".to_string()));
        let (tx, mut rx) = watch::channel(Arc::new(Zone::empty(Default::default())));
        let cancel = CancellationToken::new();
        // Named leader itself: nothing to fetch (127.0.0.1:1 would refuse anyway).
        tokio::spawn(follow(
            reqwest::Client::new(),
            leader_rx,
            "127.0.0.1:1".into(),
            None,
            tx.clone(),
            cancel.clone(),
        ));
        assert!(
            tokio::time::timeout(Duration::from_millis(300), rx.changed())
                .await
                .is_err(),
            "no zone fetched from itself"
        );
        let (_own_tx, own_rx) = watch::channel(Arc::new(own));
        tokio::spawn(mirror(
            own_rx,
            Some("10.0.0.4".parse().unwrap()),
            tx,
            cancel.clone(),
        ));
        tokio::time::timeout(Duration::from_secs(2), rx.changed())
            .await
            .expect("mirrored")
            .unwrap();
        let z = rx.borrow().clone();
        assert_eq!(z.serial(), 7);
        assert_eq!(ns1(&z), ["10.0.0.4"]);
        cancel.cancel();
    }
}
