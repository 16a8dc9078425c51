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
