//! The smallest Mesos-DNS client: one SRV question over UDP to one server, answered
//! as `(address, port)` pairs, for tasks that find their peers by DNS (the demo app's
//! `FIB_DNS`) rather than through the router.
//!
//! No resolver library: a task asks the scheduler's DNS directly, one question, no
//! cache, no search list, no retries beyond the caller's. The trade-off is that it
//! speaks to exactly one server and trusts its additional section for addresses (a
//! target without an A record there is returned by name, for the caller to resolve).

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;

/// The SRV records of `name` at `server`: each target's address (its A record from the
/// additional section, else its name without the trailing dot) and port, in the
/// server's order. An empty list when the name has none; an error when the server
/// does not answer within `timeout` or answers anything but NOERROR/NXDOMAIN.
pub async fn srv(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> std::io::Result<Vec<(String, u16)>> {
    let bad = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    let qname = Name::from_ascii(name).map_err(|e| bad(format!("{name:?}: {e}")))?;
    let mut req = Message::query();
    req.metadata.id = rand::random();
    req.add_query(Query::query(qname, RecordType::SRV));
    let bytes = req
        .to_vec()
        .map_err(|e| bad(format!("encoding the query: {e}")))?;
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(server).await?;
    sock.send(&bytes).await?;
    let mut buf = vec![0u8; 4096];
    let resp = loop {
        let n = tokio::time::timeout(timeout, sock.recv(&mut buf))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer from dns server {server} within {timeout:?}"),
                )
            })??;
        let resp =
            Message::from_vec(&buf[..n]).map_err(|e| bad(format!("answer from {server}: {e}")))?;
        // Someone else's (late) answer: keep waiting for ours.
        if resp.metadata.id == req.metadata.id {
            break resp;
        }
    };
    match resp.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Ok(Vec::new()),
        other => {
            return Err(bad(format!(
                "dns server {server} answered {other} for {name}"
            )))
        }
    }
    let address_of = |target: &Name| {
        resp.additionals
            .iter()
            .find(|r| &r.name == target)
            .and_then(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                RData::AAAA(a) => Some(format!("[{}]", a.0)),
                _ => None,
            })
            .unwrap_or_else(|| target.to_ascii().trim_end_matches('.').to_string())
    };
    Ok(resp
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((address_of(&s.target), s.port)),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::zone::tests::zone;
    use crate::dns::{server, DnsCounters};
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn srv_answers_the_healthy_tasks_addresses_and_ports() {
        let (z, mut want) = zone();
        let (udp, tcp, addr) = server::bind(([127, 0, 0, 1], 0).into()).await.unwrap();
        let cancel = CancellationToken::new();
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(z));
        tokio::spawn(server::serve(
            udp,
            tcp,
            rx,
            Arc::new(DnsCounters::default()),
            cancel.clone(),
        ));
        let t = Duration::from_secs(2);
        let got = srv(addr, "_fib-prod._tcp.marathon.mesos.", t)
            .await
            .unwrap();
        let mut ports: Vec<u16> = got.iter().map(|(_, p)| *p).collect();
        ports.sort();
        want.sort();
        assert_eq!(ports, want);
        assert!(got.iter().all(|(a, _)| a.starts_with("10.0.0.")), "{got:?}");
        assert!(srv(addr, "_nope._tcp.marathon.mesos.", t)
            .await
            .unwrap()
            .is_empty());
        // Outside the zone the server refuses: an error, not an empty list.
        let e = srv(addr, "_x._tcp.example.com.", t).await.unwrap_err();
        assert!(e.to_string().contains("Refused"), "{e}");
        cancel.cancel();
    }

    #[tokio::test]
    async fn a_silent_server_times_out_naming_it() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let e = srv(addr, "_a._tcp.marathon.mesos.", Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }
}
