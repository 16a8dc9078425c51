//! High availability on ZooKeeper (`sandtrail scheduler --zk zk://h1:2181,h2:2181/path`):
//! a leader election, the state kept in ZooKeeper by the leader alone, and the
//! front door that forwards a follower's requests to the leader.
//!
//! Layout under `<path>` (Marathon's, with Curator's `LeaderLatch` naming so ZooKeeper
//! tools show it as they show Marathon's):
//! - `<path>/leader-curator/_c_<uuid>-latch-<seq>`: one ephemeral sequential node per
//!   scheduler, holding its advertised `host:port`; the lowest sequence leads.
//! - `<path>/state`: the [`Saved`] state as gzip'd JSON. Compressed rather than split in
//!   chunks: one node keeps every write a single fenced multi op, and JSON of app
//!   definitions compresses ~10x, so ZooKeeper's 1 MiB node limit means ~10 MiB of
//!   state; a larger state is refused with an error naming the size.
//!
//! Every write is a multi op that first checks the writer's own election node still
//! exists and then sets the state node at the version last read or written, so a
//! deposed leader (its session expired, its node gone, or a successor having written)
//! can never overwrite its successor's state. The trade-off of the whole design is
//! Marathon's: a scheduler that loses leadership does not try to step down in place
//! (every piece of in-memory state would need resetting); it reports the loss through
//! [`Ha::lost`] and the binary exits non-zero for its supervisor to restart it.
//! Besides the session, a lease guards against a paused process (SIGSTOP, a long GC-like
//! stall): the leader pings ZooKeeper every third of the session timeout and, once
//! no ping has succeeded for a whole session timeout, stops answering and gives up.

use crate::control::store::{Saved, StateStore, FORMAT};
use crate::{Error, Result};
use axum::body::Body;
use axum::extract::{Request, State as AxState};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::future::BoxFuture;
use protocol::auth::{Keyring, Role};
use protocol::http::{gate, Gate};
use serde_json::json;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{error, info, warn};
use zookeeper_client as zk;

/// The loop guard of forwarded requests, like Marathon's `X-Marathon-Via`.
pub const VIA: &str = "x-sandtrail-via";

/// ZooKeeper refuses nodes above 1 MiB (`jute.maxbuffer`); some room for the request.
pub const MAX_NODE: usize = 1024 * 1024 - 4096;

/// Parsed in `protocol::zk`, shared with the indexer's shard owners.
pub use protocol::zk::ZkUrl;

fn zk_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Zk(format!("{what}: {e}"))
}

/// This scheduler's membership in the election.
pub struct Ha {
    client: zk::Client,
    url: ZkUrl,
    /// Our advertised `host:port`, the data of our election node.
    me: String,
    /// The leader's `host:port` as ZooKeeper shows it, kept current by a watch.
    leader: watch::Sender<Option<String>>,
    /// Our election node once we lead (dropping it deletes the node).
    lock: Mutex<Option<zk::OwnedLockClient>>,
    /// Fired once leadership (or the session) is lost: the binary then exits.
    lost: CancellationToken,
    /// Last time ZooKeeper answered our lease ping.
    last_ok: Mutex<Instant>,
    session_timeout: Duration,
}

impl std::fmt::Debug for Ha {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ha")
            .field("url", &self.url)
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl Ha {
    /// Connects to ZooKeeper with a session of `session_timeout` (the server clamps it
    /// to its own `minSessionTimeout..maxSessionTimeout`) and starts following the
    /// election; [`Ha::campaign`] then joins it.
    pub async fn connect(url: ZkUrl, me: String, session_timeout: Duration) -> Result<Arc<Ha>> {
        let client = zk::Client::connector()
            .with_session_timeout(session_timeout)
            .with_connection_timeout(session_timeout)
            .connect(&url.servers)
            .await
            .map_err(|e| zk_err(&format!("cannot connect to {}", url.servers), e))?;
        let session_timeout = client.session_timeout();
        let ha = Arc::new(Ha {
            client,
            url,
            me,
            leader: watch::channel(None).0,
            lock: Mutex::new(None),
            lost: CancellationToken::new(),
            last_ok: Mutex::new(Instant::now()),
            session_timeout,
        });
        ha.client
            .mkdir(
                &ha.election_dir(),
                &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
            )
            .await
            .or_else(|e| {
                if e == zk::Error::NodeExists {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| zk_err("cannot create the election node", e))?;
        tokio::spawn(Arc::clone(&ha).follow_leader());
        tokio::spawn(Arc::clone(&ha).watch_session());
        Ok(ha)
    }

    fn election_dir(&self) -> String {
        format!("{}/leader-curator", self.url.root)
    }

    fn state_path(&self) -> String {
        format!("{}/state", self.url.root)
    }

    /// The session timeout ZooKeeper granted.
    pub fn session_timeout(&self) -> Duration {
        self.session_timeout
    }

    /// Our advertised `host:port`.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The leader's `host:port`, when one is known.
    pub fn leader(&self) -> Option<String> {
        self.leader.borrow().clone()
    }

    /// Changes of [`Ha::leader`].
    pub fn leader_changes(&self) -> watch::Receiver<Option<String>> {
        self.leader.subscribe()
    }

    /// Whether we lead and have not lost it (as far as the lease tells).
    pub fn is_leader(&self) -> bool {
        self.lock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
            && !self.lost.is_cancelled()
    }

    /// Whether ZooKeeper answered us within the last session timeout: past that, our
    /// session may have expired and a successor may lead.
    pub fn lease_fresh(&self) -> bool {
        self.last_ok
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            < self.session_timeout
    }

    /// Fired when leadership or the session is lost (or given up): stop acting.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    fn lose(&self, why: &str) {
        if !self.lost.is_cancelled() {
            error!(reason = why, "zookeeper leadership lost: stopping");
            self.lost.cancel();
        }
    }

    /// Joins the election and resolves once we lead; starts the lease that watches
    /// our leadership from then on.
    pub async fn campaign(self: &Arc<Self>) -> Result<()> {
        let dir = self.election_dir();
        let prefix =
            zk::LockPrefix::new_curator(&dir, "latch-").map_err(|e| zk_err("election path", e))?;
        let options = zk::LockOptions::new(zk::Acls::anyone_all());
        let lock = tokio::select! {
            l = self.client.lock(prefix, self.me.as_bytes(), options) => l.map_err(|e| zk_err("election failed", e))?,
            _ = self.lost.cancelled() => return Err(Error::NoLeader("zookeeper session lost while waiting to lead".into())),
        };
        let path = lock.lock_path().to_string();
        *self.lock.lock().unwrap_or_else(|e| e.into_inner()) = Some(lock.into_owned());
        *self.last_ok.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        info!(node = %path, me = %self.me, "elected leader");
        tokio::spawn(Arc::clone(self).lease(path));
        Ok(())
    }

    /// Gives leadership up: deletes our election node (so the next in line leads at
    /// once, without waiting for our session to time out) and fires [`Ha::lost`].
    pub async fn abdicate(&self) -> Result<()> {
        let lock = self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(lock) = lock else {
            return Err(Error::NoLeader("this scheduler is not the leader".into()));
        };
        let path = lock.lock_path().to_string();
        // Fire first, so nothing acts between the delete and the exit.
        self.lost.cancel();
        std::mem::forget(lock);
        self.client
            .delete(&path, None)
            .await
            .map_err(|e| zk_err(&format!("cannot delete election node {path}"), e))?;
        info!(node = %path, "abdicated");
        Ok(())
    }

    /// Keeps [`Ha::leader`] current: the lowest sequence under the election node.
    async fn follow_leader(self: Arc<Self>) {
        let dir = self.election_dir();
        loop {
            let (children, _, watcher) = match self.client.get_and_watch_children(&dir).await {
                Ok(r) => r,
                Err(e @ (zk::Error::SessionExpired | zk::Error::ClientClosed)) => {
                    self.lose(&format!("cannot watch the election: {e}"));
                    return;
                }
                // A lost connection (one server of the ensemble gone) is retried; the
                // session outlives it, and the lease and the session watch judge it.
                Err(e) => {
                    warn!(error = %e, "watching the election failed: retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                        _ = self.lost.cancelled() => return,
                    }
                }
            };
            let leader = match lowest(&children) {
                Some(first) => match self.client.get_data(&format!("{dir}/{first}")).await {
                    Ok((data, _)) => String::from_utf8(data).ok(),
                    // Gone since listed: the watch fires, the next round sees it.
                    Err(_) => None,
                },
                None => None,
            };
            self.leader.send_if_modified(|l| {
                let changed = *l != leader;
                *l = leader.clone();
                changed
            });
            tokio::select! {
                _ = watcher.changed() => {}
                _ = self.lost.cancelled() => return,
            }
        }
    }

    /// An expired or closed session loses the election node with it.
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

    /// While we lead: pings ZooKeeper (our node's stat) every third of the session
    /// timeout; a missing node or a whole session timeout without an answer (a
    /// partition, or this process paused) is the end of our leadership.
    async fn lease(self: Arc<Self>, node: String) {
        let period = self.session_timeout / 3;
        let mut tick = tokio::time::interval(period.min(Duration::from_millis(500)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.lost.cancelled() => return,
            }
            if !self.lease_fresh() {
                self.lose("no answer from zookeeper for a whole session timeout");
                return;
            }
            let asked = Instant::now();
            match tokio::time::timeout(period, self.client.check_stat(&node)).await {
                Ok(Ok(Some(_))) => {
                    *self.last_ok.lock().unwrap_or_else(|e| e.into_inner()) = asked;
                }
                Ok(Ok(None)) => {
                    self.lose(&format!("election node {node} is gone"));
                    return;
                }
                Ok(Err(e)) => warn!(error = %e, "zookeeper lease ping failed"),
                Err(_) => warn!("zookeeper lease ping timed out"),
            }
        }
    }
}

/// A client's scheduler list: `zk://...` becomes the base URLs of the schedulers in
/// the election now, the leader first (`http://host:port,...`); anything else is
/// returned as given. A snapshot: schedulers that join later are not seen, which is
/// enough while any listed one lives, since each forwards to the leader.
pub async fn resolve_schedulers(list: &str) -> Result<String> {
    if !list.starts_with("zk://") {
        return Ok(list.to_string());
    }
    let url: ZkUrl = list
        .parse()
        .map_err(|e: protocol::zk::BadZkUrl| Error::BadRequest(e.0))?;
    let client = zk::Client::connect(&url.servers)
        .await
        .map_err(|e| zk_err(&format!("cannot connect to {}", url.servers), e))?;
    let dir = format!("{}/leader-curator", url.root);
    // No election node yet: no scheduler ever joined, said as below.
    let mut children = match client.list_children(&dir).await {
        Ok(c) => c,
        Err(zk::Error::NoNode) => Vec::new(),
        Err(e) => return Err(zk_err(&format!("cannot list {dir}"), e)),
    };
    children.retain(|c| lowest(std::slice::from_ref(c)).is_some());
    children.sort_by(|a, b| a[a.len() - 10..].cmp(&b[b.len() - 10..]));
    let mut urls = Vec::new();
    for c in children {
        if let Ok((data, _)) = client.get_data(&format!("{dir}/{c}")).await {
            if let Ok(addr) = String::from_utf8(data) {
                urls.push(format!("http://{addr}"));
            }
        }
    }
    if urls.is_empty() {
        return Err(Error::NoLeader(format!(
            "no scheduler is in the election at {list}: start one with --zk {list}"
        )));
    }
    Ok(urls.join(","))
}

/// The child with the lowest sequence (the last 10 digits), Curator's rule.
fn lowest(children: &[String]) -> Option<&String> {
    children
        .iter()
        .filter(|c| c.len() >= 10 && c[c.len() - 10..].bytes().all(|b| b.is_ascii_digit()))
        .min_by(|a, b| a[a.len() - 10..].cmp(&b[b.len() - 10..]))
}

/// The [`StateStore`] on ZooKeeper: `<path>/state`, written by the leader only, each
/// write fenced by the leader's election node and the state node's version.
#[derive(Debug)]
pub struct ZkStore {
    ha: Arc<Ha>,
    path: String,
    loaded: Saved,
    /// The generation last written and the state node's version (`None`: no node yet).
    written: tokio::sync::Mutex<(u64, Option<i32>)>,
}

impl ZkStore {
    /// Reads the state (call it once elected).
    pub async fn open(ha: Arc<Ha>) -> Result<ZkStore> {
        let path = ha.state_path();
        let (loaded, version) = match ha.client.get_data(&path).await {
            Ok((data, stat)) => (
                decode(&data).map_err(|e| zk_err(&format!("state node {path}"), e))?,
                Some(stat.version),
            ),
            Err(zk::Error::NoNode) => (Saved::default(), None),
            Err(e) => return Err(zk_err(&format!("cannot read {path}"), e)),
        };
        info!(path = %path, apps = loaded.apps.len(), "scheduler state read from zookeeper");
        Ok(ZkStore {
            ha,
            path,
            loaded,
            written: tokio::sync::Mutex::new((0, version)),
        })
    }

    async fn write(&self, generation: u64, mut saved: Saved) -> Result<()> {
        let mut written = self.written.lock().await;
        if generation <= written.0 {
            return Ok(());
        }
        if self.ha.lost.is_cancelled() {
            return Err(Error::NoLeader(
                "not writing: this scheduler lost its leadership".into(),
            ));
        }
        saved.format = FORMAT;
        let bytes = tokio::task::spawn_blocking(move || encode(&saved))
            .await
            .map_err(|e| zk_err("encoding the state", e))??;
        if bytes.len() > MAX_NODE {
            return Err(Error::Zk(format!(
                "state is {} bytes compressed, over zookeeper's node limit of {MAX_NODE} bytes",
                bytes.len()
            )));
        }
        let node = self
            .ha
            .lock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|l| l.lock_path().to_string());
        let Some(node) = node else {
            return Err(Error::NoLeader(
                "not writing: this scheduler is not the leader".into(),
            ));
        };
        // The fence: the multi op first checks our election node still exists.
        let mut writer = self
            .ha
            .client
            .new_check_writer(&node, None)
            .map_err(|e| zk_err("state write", e))?;
        let acls = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        match written.1 {
            Some(v) => writer.add_set_data(&self.path, &bytes, Some(v)),
            None => writer.add_create(&self.path, &bytes, &acls),
        }
        .map_err(|e| zk_err("state write", e))?;
        match writer.commit().await {
            Ok(mut results) => {
                let version = match results.remove(0) {
                    zk::MultiWriteResult::SetData { stat } => stat.version,
                    // A create in a multi op answers no stat (zookeeper-client gives
                    // an invalid one, version -1, which as an expected version would
                    // match anything and unfence the next write); a node just
                    // created is at version 0.
                    zk::MultiWriteResult::Create { .. } => 0,
                    other => {
                        return Err(Error::Zk(format!(
                            "unexpected state write result {other:?}"
                        )))
                    }
                };
                *written = (generation, Some(version));
                Ok(())
            }
            Err(zk::CheckWriteError::CheckFailed { source }) => {
                self.ha
                    .lose(&format!("fenced: our election node is gone ({source})"));
                Err(Error::NoLeader(format!(
                    "state write fenced off: this scheduler no longer leads ({source})"
                )))
            }
            Err(zk::CheckWriteError::OperationFailed { source, .. })
                if matches!(source, zk::Error::BadVersion | zk::Error::NodeExists) =>
            {
                self.ha.lose(&format!(
                    "fenced: the state was written by another ({source})"
                ));
                Err(Error::NoLeader(format!(
                    "state write fenced off: {} was changed by another scheduler ({source})",
                    self.path
                )))
            }
            Err(e) => Err(zk_err("state write failed", e)),
        }
    }
}

impl StateStore for ZkStore {
    fn location(&self) -> String {
        format!("zk://{}{}", self.ha.url.servers, self.path)
    }

    fn load(&self) -> Result<Saved> {
        Ok(self.loaded.clone())
    }

    fn save(&self, generation: u64, saved: Saved) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.write(generation, saved))
    }
}

/// gzip'd JSON.
pub fn encode(saved: &Saved) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(saved)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&json)
        .and_then(|_| gz.finish())
        .map_err(|e| zk_err("compressing the state", e))
}

/// The inverse of [`encode`]; refuses a state newer than this binary understands.
pub fn decode(bytes: &[u8]) -> std::result::Result<Saved, String> {
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut json)
        .map_err(|e| format!("not gzip'd json as sandtrail writes: {e}"))?;
    let saved: Saved =
        serde_json::from_slice(&json).map_err(|e| format!("corrupt scheduler state: {e}"))?;
    if saved.format > FORMAT {
        return Err(format!(
            "state format {} is newer than this binary understands (at most {FORMAT})",
            saved.format
        ));
    }
    Ok(saved)
}

// ---------------------------------------------------------------------------
// The front door
// ---------------------------------------------------------------------------

/// What [`front`] serves with.
#[derive(Clone)]
struct Front {
    ha: Arc<Ha>,
    /// The leader's API, set once we lead and have loaded the state.
    app: Arc<OnceLock<Router>>,
    http: reqwest::Client,
}

/// The scheduler's HTTP face under HA: `GET /v2/leader` from ZooKeeper, `DELETE
/// /v2/leader` to abdicate, and every other request either served by `app` (once set:
/// we lead) or forwarded to the leader, with [`VIA`] against loops.
pub fn front(ha: Arc<Ha>, keyring: Keyring, app: Arc<OnceLock<Router>>) -> Router {
    let g = Gate::by_method(Arc::new(keyring), &[Role::Read], &[Role::Deploy], |e| {
        Error::from(e).into_response()
    });
    let state = Front {
        ha,
        app,
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default(),
    };
    Router::new()
        .route("/v2/leader", get(get_leader).delete(delete_leader))
        .route_layer(from_fn_with_state(g, gate))
        .fallback(forward)
        .with_state(state)
}

async fn get_leader(AxState(f): AxState<Front>) -> Response {
    match f.ha.leader() {
        Some(l) => Json(json!({ "leader": l })).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"message": "there is no leader: none is elected in zookeeper yet"})),
        )
            .into_response(),
    }
}

async fn delete_leader(AxState(f): AxState<Front>, req: Request) -> Response {
    if !f.ha.is_leader() {
        return forward(AxState(f), req).await;
    }
    match f.ha.abdicate().await {
        Ok(()) => Json(json!({"message": "Leadership abdicated"})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn forward(AxState(f): AxState<Front>, mut req: Request) -> Response {
    if f.ha.is_leader() {
        if !f.ha.lease_fresh() {
            return Error::NoLeader(
                "this scheduler's zookeeper lease lapsed: it no longer acts as leader".into(),
            )
            .into_response();
        }
        return match f.app.get() {
            Some(app) => app
                .clone()
                .oneshot(req)
                .await
                .unwrap_or_else(|e| match e {}),
            None => Error::NoLeader(
                "this scheduler was just elected and is loading the state: retry".into(),
            )
            .into_response(),
        };
    }
    if let Some(via) = req.headers().get(VIA) {
        return Error::NoLeader(format!(
            "request already forwarded via {}, and this scheduler ({}) does not lead either: refusing to loop",
            via.to_str().unwrap_or("?"),
            f.ha.me
        ))
        .into_response();
    }
    let Some(leader) = f.ha.leader() else {
        return Error::NoLeader(
            "no scheduler leads yet (zookeeper shows no elected leader): retry".into(),
        )
        .into_response();
    };
    if leader == f.ha.me {
        return Error::NoLeader(
            "zookeeper names this scheduler leader but it has not taken over yet: retry".into(),
        )
        .into_response();
    }
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = format!("http://{leader}{path}");
    let headers = std::mem::take(req.headers_mut());
    let method = req.method().clone();
    let mut out = f
        .http
        .request(method, &url)
        .body(reqwest::Body::wrap_stream(
            req.into_body().into_data_stream(),
        ));
    for (k, v) in headers.iter() {
        if k != axum::http::header::HOST && !hop_by_hop(k) {
            out = out.header(k, v);
        }
    }
    let out = out.header(
        VIA,
        HeaderValue::from_str(&f.ha.me).unwrap_or(HeaderValue::from_static("?")),
    );
    match out.send().await {
        Ok(resp) => {
            let mut b = Response::builder().status(resp.status());
            for (k, v) in resp.headers().iter().filter(|(k, _)| !hop_by_hop(k)) {
                b = b.header(k, v);
            }
            b.body(Body::from_stream(resp.bytes_stream()))
                .unwrap_or_else(|e| {
                    Error::Upstream {
                        addr: leader,
                        reason: e.to_string(),
                    }
                    .into_response()
                })
        }
        Err(e) => Error::NoLeader(format!("cannot reach the leader {leader}: {e}")).into_response(),
    }
}

/// Headers of one connection, not of the request: never forwarded (RFC 9110 7.6.1);
/// the router's list.
fn hop_by_hop(name: &axum::http::HeaderName) -> bool {
    crate::proxy::HOP_BY_HOP.contains(&name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_sequence_leads_whatever_the_uuid() {
        let c = vec![
            "_c_b-latch-0000000007".to_string(),
            "_c_a-latch-0000000009".to_string(),
            "junk".to_string(),
        ];
        assert_eq!(lowest(&c).unwrap(), "_c_b-latch-0000000007");
        assert_eq!(lowest(&[]), None);
    }

    #[test]
    fn state_round_trips_compressed_and_refuses_garbage() {
        let saved = Saved {
            format: FORMAT,
            agents: vec!["node-1".into(); 1000],
            ..Saved::default()
        };
        let bytes = encode(&saved).unwrap();
        assert!(bytes.len() < serde_json::to_vec(&saved).unwrap().len() / 10);
        assert_eq!(decode(&bytes).unwrap(), saved);
        assert!(decode(b"{}").unwrap_err().contains("gzip"));
    }
}
