//! The DNS listener: UDP and TCP on one address, each request decoded with
//! `hickory-proto`, answered from the current [`Zone`] snapshot, and sent back.
//!
//! A hand-rolled loop over `hickory-proto`'s codec rather than `hickory-server`: the
//! zone is one in-memory snapshot swapped on change, which a catalog of authorities
//! would only wrap, and the loop is short. The trade-off is that only what Mesos-DNS
//! does is done (no zone transfer, no DNSSEC, no forwarding to upstream resolvers:
//! names outside the domain are REFUSED).
//!
//! UDP is one task: an answer is a lookup in a snapshot (microseconds), so a socket
//! drained by one task keeps up with far more queries than a scheduler host sees.
//! TCP (RFC 7766, for answers too large for UDP) is a task per connection, at most
//! [`MAX_TCP_CONNECTIONS`], each closed after [`TCP_IDLE`] without a request.

use super::zone::{Zone, MAX_UDP_PAYLOAD};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use protocol::metrics::{Exposition, Kind};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// TCP connections served at once; more wait in the backlog.
pub const MAX_TCP_CONNECTIONS: usize = 256;

/// A TCP connection with no request for this long is closed (RFC 7766 suggests
/// seconds).
pub const TCP_IDLE: Duration = Duration::from_secs(10);

/// Classic DNS over UDP without EDNS: answers longer than this are truncated (TC set,
/// the client retries over TCP).
const PLAIN_UDP_PAYLOAD: usize = 512;

/// Queries answered, by outcome, for `/metrics`.
#[derive(Debug, Default)]
pub struct DnsCounters {
    pub answered: AtomicU64,
    pub nxdomain: AtomicU64,
    pub refused: AtomicU64,
    pub malformed: AtomicU64,
    pub truncated: AtomicU64,
}

impl DnsCounters {
    fn count(&self, resp: &Message) {
        let c = match resp.metadata.response_code {
            ResponseCode::NXDomain => &self.nxdomain,
            ResponseCode::Refused => &self.refused,
            ResponseCode::FormErr => &self.malformed,
            _ => &self.answered,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters in the Prometheus text format.
    pub fn metrics(&self) -> String {
        let mut e = Exposition::new();
        e.family(
            "sandtrail_dns_queries_total",
            "DNS queries answered, by response code.",
            Kind::Counter,
        );
        for (rcode, c) in [
            ("noerror", &self.answered),
            ("nxdomain", &self.nxdomain),
            ("refused", &self.refused),
            ("formerr", &self.malformed),
        ] {
            e.sample(&[("rcode", rcode)], c.load(Ordering::Relaxed));
        }
        e.single(
            "sandtrail_dns_truncated_total",
            "UDP answers truncated (the client retries over TCP).",
            Kind::Counter,
            self.truncated.load(Ordering::Relaxed),
        );
        e.finish()
    }
}

/// Binds UDP and TCP on `addr` (port 0: one free port for both) and returns them with
/// the address bound.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener, SocketAddr)> {
    // With port 0 the UDP port the kernel picks may be taken for TCP: try a few.
    let mut last = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind(addr).await?;
        let bound = udp.local_addr()?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp, bound)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port free for both udp and tcp")))
}

/// Serves DNS on `udp` and `tcp` from the latest zone of `zone` until `cancel`.
pub async fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    zone: watch::Receiver<Arc<Zone>>,
    counters: Arc<DnsCounters>,
    cancel: CancellationToken,
) {
    let addr = udp.local_addr().ok();
    info!(addr = ?addr, "dns listening (udp and tcp)");
    let udp_task = tokio::spawn(serve_udp(
        udp,
        zone.clone(),
        counters.clone(),
        cancel.clone(),
    ));
    serve_tcp(tcp, zone, counters, cancel).await;
    let _ = udp_task.await;
}

async fn serve_udp(
    socket: UdpSocket,
    zone: watch::Receiver<Arc<Zone>>,
    counters: Arc<DnsCounters>,
    cancel: CancellationToken,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors of earlier sends surface here; the socket is fine.
                    debug!(error = %e, "dns udp receive failed");
                    continue;
                }
            },
        };
        let Some(bytes) = respond(&buf[..n], &zone, &counters, Transport::Udp) else {
            continue;
        };
        if let Err(e) = socket.send_to(&bytes, peer).await {
            debug!(error = %e, %peer, "dns udp send failed");
        }
    }
}

async fn serve_tcp(
    listener: TcpListener,
    zone: watch::Receiver<Arc<Zone>>,
    counters: Arc<DnsCounters>,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "dns tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (zone, counters, cancel) = (zone.clone(), counters.clone(), cancel.clone());
        tracker.spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = tcp_connection(stream, &zone, &counters) => if let Err(e) = r {
                    debug!(error = %e, %peer, "dns tcp connection ended");
                },
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// Requests on one TCP connection, each a two-byte length and a message.
async fn tcp_connection(
    mut stream: TcpStream,
    zone: &watch::Receiver<Arc<Zone>>,
    counters: &DnsCounters,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(r) => r?,
        };
        buf.resize(usize::from(u16::from_be_bytes(len)), 0);
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request body"))??;
        let Some(bytes) = respond(&buf, zone, counters, Transport::Tcp) else {
            return Ok(());
        };
        let Ok(len) = u16::try_from(bytes.len()) else {
            return Ok(());
        };
        let mut out = Vec::with_capacity(bytes.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&bytes);
        stream.write_all(&out).await?;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// The encoded answer to the request in `bytes`, or `None` when there is nothing to
/// answer (not a query, or too broken to carry an id).
fn respond(
    bytes: &[u8],
    zone: &watch::Receiver<Arc<Zone>>,
    counters: &DnsCounters,
    transport: Transport,
) -> Option<Vec<u8>> {
    let req = match Message::from_vec(bytes) {
        Ok(m) => m,
        Err(_) => {
            counters.malformed.fetch_add(1, Ordering::Relaxed);
            // Answer FORMERR when at least the header's id is there.
            let id = u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]);
            let flags = *bytes.get(2)?;
            if flags & 0x80 != 0 {
                return None;
            }
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                .to_vec()
                .ok();
        }
    };
    if req.metadata.message_type != MessageType::Query {
        return None;
    }
    let zone = zone.borrow().clone();
    let resp = zone.answer(&req);
    counters.count(&resp);
    let encoded = resp.to_vec().ok()?;
    let limit = match (transport, &req.edns) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, Some(e)) => usize::from(e.max_payload().min(MAX_UDP_PAYLOAD)),
        (Transport::Udp, None) => PLAIN_UDP_PAYLOAD,
    }
    .max(PLAIN_UDP_PAYLOAD);
    if encoded.len() <= limit {
        return Some(encoded);
    }
    counters.truncated.fetch_add(1, Ordering::Relaxed);
    resp.truncate().to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_count_queries_by_rcode() {
        let c = DnsCounters::default();
        c.nxdomain.fetch_add(2, Ordering::Relaxed);
        c.truncated.fetch_add(1, Ordering::Relaxed);
        let text = c.metrics();
        assert_eq!(
            text.matches("# TYPE sandtrail_dns_queries_total counter\n")
                .count(),
            1,
            "{text}"
        );
        for want in [
            "sandtrail_dns_queries_total{rcode=\"nxdomain\"} 2\n",
            "sandtrail_dns_queries_total{rcode=\"noerror\"} 0\n",
            "sandtrail_dns_truncated_total 1\n",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
    }
}
