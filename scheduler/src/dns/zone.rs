//! The record set: a snapshot of what the control plane runs, in the shape DNS answers
//! need ([`Zone`]), rebuilt whenever the state changes (see `crate::dns`), and the one
//! function that answers a DNS query from it ([`Zone::answer`]). The HTTP API
//! (`/v1/services/_<app>._tcp...`, `/v1/hosts/...`) reads the same snapshot, so both
//! faces always agree.
//!
//! A snapshot costs one walk over the tasks under the state's lock per change; a query
//! costs a lookup in it and never takes that lock, so a DNS load does not slow the
//! scheduler. The trade-off is memory for a copy of each ready task's address and
//! ports, a few hundred bytes each.

use super::names::{self, DnsName, Proto, FRAMEWORK};
use crate::control::State;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// How the zone is named and cached.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ZoneConfig {
    /// The domain served, as [`names::domain`] returns it (default `mesos`).
    pub domain: String,
    /// TTL of every answer and of negative answers (SOA minimum), in seconds.
    pub ttl: u32,
}

impl Default for ZoneConfig {
    fn default() -> Self {
        ZoneConfig {
            domain: "mesos".into(),
            ttl: 5,
        }
    }
}

/// Where a task is reached: its agent's address, an IP or a host name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Addr {
    Ip(IpAddr),
    /// A host name, fully qualified with its dot (an SRV target as is).
    Host(String),
}

impl Addr {
    fn parse(address: &str) -> Addr {
        match address.parse::<IpAddr>() {
            Ok(ip) => Addr::Ip(ip),
            Err(_) => Addr::Host(format!("{}.", address.trim_end_matches('.'))),
        }
    }

    fn ip(&self) -> Option<IpAddr> {
        match self {
            Addr::Ip(ip) => Some(*ip),
            Addr::Host(_) => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TaskEntry {
    /// `<app>-<tag>`, the task's own host name under `marathon.<domain>`.
    host: String,
    addr: Addr,
    /// Running and passing its health checks: what the plain names and SRVs list.
    ready: bool,
    /// Host ports with the protocol and name of their port definition.
    ports: Vec<(u16, String, Option<String>)>,
}

/// One SRV answer: where, and the address of `target` when it is one of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvEntry {
    pub target: String,
    pub port: u16,
    pub ip: Option<IpAddr>,
}

/// A snapshot of every name this server answers. Serializable: a follower scheduler
/// serves the leader's (`GET /v1/dns/zone`, `crate::dns::follow`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Zone {
    config: ZoneConfig,
    serial: u32,
    /// Tasks by app label (running ones; `ready` tells which are served).
    apps: BTreeMap<String, Vec<TaskEntry>>,
    /// Task host labels to their agent's IP.
    hosts: BTreeMap<String, IpAddr>,
    leader: Option<(Addr, u16)>,
    /// Address of `ns1.<domain>`: the DNS listener's, when it is a specific one.
    ns: Option<IpAddr>,
}

impl Zone {
    /// A zone with nothing in it but the apex.
    pub fn empty(config: ZoneConfig) -> Zone {
        Zone {
            config,
            serial: 0,
            apps: BTreeMap::new(),
            hosts: BTreeMap::new(),
            leader: None,
            ns: None,
        }
    }

    /// The zone of `state`: every running task of every app, with `leader` (the
    /// leading scheduler's `host:port`) and `ns` (this server's address), numbered
    /// `serial` (the SOA serial; it only grows).
    pub fn build(
        state: &State,
        config: ZoneConfig,
        leader: Option<&str>,
        ns: Option<IpAddr>,
        serial: u32,
    ) -> Zone {
        let mut apps: BTreeMap<String, Vec<TaskEntry>> = BTreeMap::new();
        let mut hosts = BTreeMap::new();
        for def in state.apps() {
            let label = names::app_label(&def.id);
            let checks = def.health_checks().len();
            for t in state.tasks_of(&def.id) {
                if t.state != crate::control::TaskState::Running {
                    continue;
                }
                let Some(agent) = state.agent(&t.agent) else {
                    continue;
                };
                let addr = Addr::parse(&agent.address);
                let host = names::task_label(&label, &t.id);
                if let Some(ip) = addr.ip() {
                    hosts.insert(host.clone(), ip);
                }
                let ports = t
                    .ports
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let d = def.port_definitions.get(i);
                        (
                            *p,
                            d.map_or_else(|| "tcp".to_string(), |d| d.protocol.clone()),
                            d.and_then(|d| d.name.as_deref()).map(names::label),
                        )
                    })
                    .collect();
                apps.entry(label.clone()).or_default().push(TaskEntry {
                    host,
                    addr,
                    ready: t.ready(checks),
                    ports,
                });
            }
        }
        let leader = leader.and_then(|l| {
            let (host, port) = l.rsplit_once(':')?;
            let port = port.parse().ok()?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let addr = Addr::parse(host);
            // An unspecified listen address (0.0.0.0) names no host to reach.
            (addr.ip().is_none_or(|ip| !ip.is_unspecified())).then_some((addr, port))
        });
        Zone {
            config,
            serial,
            apps,
            hosts,
            leader,
            ns: ns.filter(|ip| !ip.is_unspecified()),
        }
    }

    /// The same zone with `ns1.<domain>` at `ns` (this server's DNS address, when a
    /// specific one): a follower serving the leader's zone names itself.
    pub fn with_ns(mut self, ns: Option<IpAddr>) -> Zone {
        self.ns = ns.filter(|ip| !ip.is_unspecified());
        self
    }

    pub fn domain(&self) -> &str {
        &self.config.domain
    }

    pub fn serial(&self) -> u32 {
        self.serial
    }

    fn fqdn(&self, head: &str) -> String {
        if head.is_empty() {
            format!("{}.", self.config.domain)
        } else {
            format!("{head}.{}.", self.config.domain)
        }
    }

    /// The addresses `name` resolves to (A and AAAA), or `None` when the name does not
    /// exist. For `/v1/hosts/{host}` and DNS alike.
    pub fn addresses(&self, name: &DnsName) -> Option<Vec<IpAddr>> {
        let mut ips: Vec<IpAddr> = match name {
            DnsName::Apex | DnsName::LeaderService { .. } | DnsName::Service { .. } => {
                return self.exists(name).then(Vec::new)
            }
            DnsName::Ns => self.ns.into_iter().collect(),
            DnsName::Leader => self.leader.iter().filter_map(|(a, _)| a.ip()).collect(),
            DnsName::App { label, slave } => match self.apps.get(label) {
                Some(tasks) => tasks
                    .iter()
                    .filter(|t| *slave || t.ready)
                    .filter_map(|t| t.addr.ip())
                    .collect(),
                None if !slave => return self.hosts.get(label).map(|ip| vec![*ip]),
                None => return None,
            },
        };
        ips.sort();
        ips.dedup();
        if ips.is_empty() && !self.exists(name) {
            return None;
        }
        Some(ips)
    }

    /// The SRV answers of `name`, or `None` when it does not exist.
    pub fn services(&self, name: &DnsName) -> Option<Vec<SrvEntry>> {
        match name {
            DnsName::LeaderService { proto: Proto::Tcp } => {
                let (addr, port) = self.leader.as_ref()?;
                let target = match addr {
                    Addr::Ip(_) => self.fqdn("leader"),
                    Addr::Host(h) => h.clone(),
                };
                Some(vec![SrvEntry {
                    target,
                    port: *port,
                    ip: addr.ip(),
                }])
            }
            DnsName::Service {
                app,
                proto,
                port_name,
                slave,
            } => {
                let tasks = self.apps.get(app)?;
                let mut out = Vec::new();
                for t in tasks.iter().filter(|t| t.ready) {
                    for (port, protocol, pname) in &t.ports {
                        if !proto.in_protocol(protocol) {
                            continue;
                        }
                        if port_name.is_some() && port_name != pname {
                            continue;
                        }
                        let target = match (&t.addr, slave) {
                            (Addr::Host(h), _) => h.clone(),
                            (Addr::Ip(_), false) => self.fqdn(&format!("{}.{FRAMEWORK}", t.host)),
                            (Addr::Ip(_), true) => self.fqdn(&format!("{app}.{FRAMEWORK}.slave")),
                        };
                        out.push(SrvEntry {
                            target,
                            port: *port,
                            ip: t.addr.ip(),
                        });
                    }
                }
                if out.is_empty() && !tasks.iter().any(|t| t.ready) {
                    return None;
                }
                Some(out)
            }
            other => self.exists(other).then(Vec::new),
        }
    }

    /// Whether `name` exists at all (has records of some type), which tells NODATA
    /// from NXDOMAIN.
    fn exists(&self, name: &DnsName) -> bool {
        match name {
            DnsName::Apex => true,
            DnsName::Ns => self.ns.is_some(),
            DnsName::Leader => self.leader.as_ref().is_some_and(|(a, _)| a.ip().is_some()),
            DnsName::LeaderService { proto } => *proto == Proto::Tcp && self.leader.is_some(),
            DnsName::App { label, slave } => match self.apps.get(label) {
                Some(tasks) => *slave || tasks.iter().any(|t| t.ready),
                None => !slave && self.hosts.contains_key(label),
            },
            DnsName::Service { .. } => self.services(name).is_some_and(|s| !s.is_empty()),
        }
    }

    fn soa(&self) -> Record {
        let ns = Name::from_ascii(self.fqdn("ns1")).unwrap_or_default();
        let rname = Name::from_ascii(self.fqdn("root.ns1")).unwrap_or_default();
        let ttl = self.config.ttl;
        // Mesos-DNS's refresh, retry and expire; the minimum (the negative-answer TTL)
        // is ours, so a name appearing is seen as soon as a positive one would be.
        Record::from_rdata(
            self.apex(),
            ttl,
            RData::SOA(SOA::new(ns, rname, self.serial, 60, 600, 86400, ttl)),
        )
    }

    fn apex(&self) -> Name {
        Name::from_ascii(self.fqdn("")).unwrap_or_default()
    }

    /// The answer to one DNS request: authoritative for the domain, REFUSED outside
    /// it (this server is no resolver), NXDOMAIN for names that do not exist, and
    /// NODATA (no error, no answer, the SOA) for types a name has none of, so a
    /// resolver asking AAAA first does not cache the name as absent.
    pub fn answer(&self, req: &Message) -> Message {
        let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
        resp.metadata.recursion_desired = req.metadata.recursion_desired;
        resp.queries = req.queries.clone();
        if req.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(MAX_UDP_PAYLOAD);
            resp.edns = Some(edns);
        }
        if req.metadata.message_type != MessageType::Query || req.metadata.op_code != OpCode::Query
        {
            resp.metadata.response_code = ResponseCode::NotImp;
            return resp;
        }
        let [q] = req.queries.as_slice() else {
            resp.metadata.response_code = ResponseCode::FormErr;
            return resp;
        };
        let qname = q.name().to_lowercase();
        let parsed = match names::parse(&qname.to_ascii(), &self.config.domain) {
            Err(names::OutOfZone) => {
                resp.metadata.response_code = ResponseCode::Refused;
                return resp;
            }
            Ok(p) => p,
        };
        resp.metadata.authoritative = true;
        if !matches!(q.query_class(), DNSClass::IN | DNSClass::ANY) {
            resp.metadata.response_code = ResponseCode::Refused;
            resp.metadata.authoritative = false;
            return resp;
        }
        let Some(name) = parsed.filter(|n| self.exists(n)) else {
            resp.metadata.response_code = ResponseCode::NXDomain;
            resp.authorities.push(self.soa());
            return resp;
        };
        let owner = q.name().clone();
        let ttl = self.config.ttl;
        let qtype = q.query_type();
        let any = qtype == RecordType::ANY;
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        if name == DnsName::Apex {
            if any || qtype == RecordType::SOA {
                answers.push(self.soa());
            }
            if any || qtype == RecordType::NS {
                let ns = Name::from_ascii(self.fqdn("ns1")).unwrap_or_default();
                answers.push(Record::from_rdata(owner.clone(), ttl, RData::NS(NS(ns))));
                if let Some(ip) = self.ns {
                    additionals.push(addr_record(
                        Name::from_ascii(self.fqdn("ns1")).unwrap_or_default(),
                        ttl,
                        ip,
                    ));
                }
            }
        }
        if any || matches!(qtype, RecordType::A | RecordType::AAAA) {
            let mut ips = self.addresses(&name).unwrap_or_default();
            // Mesos-DNS shuffles, as a rudimentary balance across tasks.
            ips.shuffle(&mut rand::rng());
            for ip in ips {
                let wanted = any
                    || (qtype == RecordType::A && ip.is_ipv4())
                    || (qtype == RecordType::AAAA && ip.is_ipv6());
                if wanted {
                    answers.push(addr_record(owner.clone(), ttl, ip));
                }
            }
        }
        if any || qtype == RecordType::SRV {
            let mut srvs = self.services(&name).unwrap_or_default();
            srvs.shuffle(&mut rand::rng());
            for s in srvs {
                let Ok(target) = Name::from_ascii(&s.target) else {
                    continue;
                };
                answers.push(Record::from_rdata(
                    owner.clone(),
                    ttl,
                    RData::SRV(SRV::new(0, 1, s.port, target.clone())),
                ));
                if let Some(ip) = s.ip {
                    let rec = addr_record(target, ttl, ip);
                    if !additionals.contains(&rec) {
                        additionals.push(rec);
                    }
                }
            }
        }
        if answers.is_empty() {
            resp.authorities.push(self.soa());
        }
        resp.answers = answers;
        resp.additionals = additionals;
        resp
    }
}

/// The payload size this server offers over UDP with EDNS (the DNS flag day 2020
/// value, which avoids IP fragmentation).
pub const MAX_UDP_PAYLOAD: u16 = 1232;

fn addr_record(name: Name, ttl: u32, ip: IpAddr) -> Record {
    match ip {
        IpAddr::V4(v4) => Record::from_rdata(name, ttl, RData::A(A(v4))),
        IpAddr::V6(v6) => Record::from_rdata(name, ttl, RData::AAAA(AAAA(v6))),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::control::testkit::{agent, cluster, with_health_check};
    use crate::control::{testkit, Now};
    use hickory_proto::op::Query;
    use protocol::{HealthResult, TaskStatus};

    fn query(name: &str, t: RecordType) -> Message {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m
    }

    /// Two agents, app `/prod/fib` with 3 tasks (one unhealthy), app `/web` with one;
    /// answers the zone and the host ports of fib's healthy tasks (leader and ns at
    /// 10.0.0.9, serial 7). The DNS client and follower tests use it too.
    pub(crate) fn zone() -> (Zone, Vec<u16>) {
        let now = Now::current();
        let mut s = cluster(&[], now);
        for (name, addr) in [("a", "10.0.0.1"), ("b", "10.0.0.2")] {
            let mut info = agent(name);
            info.address = addr.into();
            s.register_agent(info, now).unwrap();
        }
        s.create_app(with_health_check(testkit::app("/prod/fib", 3), 3), now)
            .unwrap();
        let mut web = testkit::app("/web", 1);
        web.port_definitions[0].name = Some("http".into());
        s.create_app(web, now).unwrap();
        let mut next = 31000u16;
        let mut healthy = Vec::new();
        let mut unhealthy_left = 1;
        for a in ["a", "b"] {
            let statuses: Vec<TaskStatus> = s
                .desired(a)
                .iter()
                .map(|sp| {
                    next += 1;
                    let mut st = testkit::status(sp, "TASK_RUNNING", &[next]);
                    if sp.app == "prod/fib" {
                        let alive = unhealthy_left == 0;
                        unhealthy_left = 0;
                        if alive {
                            healthy.push(next);
                        }
                        st.health = vec![HealthResult {
                            alive,
                            ..HealthResult::default()
                        }];
                    }
                    st
                })
                .collect();
            s.heartbeat(a, statuses, now).unwrap();
        }
        let z = Zone::build(
            &s,
            ZoneConfig::default(),
            Some("10.0.0.9:7071"),
            Some("10.0.0.9".parse().unwrap()),
            7,
        );
        (z, healthy)
    }

    #[test]
    fn a_zone_answers_the_same_after_a_json_round_trip_as_followers_get_it() {
        let (z, _) = zone();
        let back: Zone = serde_json::from_str(&serde_json::to_string(&z).unwrap()).unwrap();
        assert_eq!(back.serial(), 7);
        for (name, t) in [
            ("_fib-prod._tcp.marathon.mesos.", RecordType::SRV),
            ("fib-prod.marathon.mesos.", RecordType::A),
            ("leader.mesos.", RecordType::A),
            ("ns1.mesos.", RecordType::A),
        ] {
            // Answers come shuffled: compared as sorted sets.
            let set = |rs: &[Record]| {
                let mut v: Vec<String> = rs
                    .iter()
                    .map(|r| format!("{} {}", r.name, r.data))
                    .collect();
                v.sort();
                v
            };
            let (a, b) = (z.answer(&query(name, t)), back.answer(&query(name, t)));
            assert!(!a.answers.is_empty(), "{name}");
            assert_eq!(set(&a.answers), set(&b.answers), "{name}");
            assert_eq!(set(&a.additionals), set(&b.additionals), "{name}");
        }
        // A follower names itself as ns1, never an unspecified address.
        let own = back.clone().with_ns(Some("10.0.0.3".parse().unwrap()));
        let ns1 = own.answer(&query("ns1.mesos.", RecordType::A));
        assert_eq!(ns1.answers[0].data.to_string(), "10.0.0.3");
        let none = back.with_ns(Some("0.0.0.0".parse().unwrap()));
        assert!(none
            .answer(&query("ns1.mesos.", RecordType::A))
            .answers
            .is_empty());
    }

    #[test]
    fn srv_lists_one_record_per_healthy_task_with_its_host_port() {
        let (z, mut want) = zone();
        let resp = z.answer(&query("_fib-prod._tcp.marathon.mesos.", RecordType::SRV));
        assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
        assert!(resp.metadata.authoritative);
        let mut got: Vec<u16> = resp
            .answers
            .iter()
            .map(|r| match &r.data {
                RData::SRV(s) => s.port,
                other => panic!("{other:?}"),
            })
            .collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "the unhealthy task is left out");
        assert!(!resp.additionals.is_empty(), "targets' addresses are added");
        let http = z.answer(&query("_http._web._tcp.marathon.mesos.", RecordType::SRV));
        assert_eq!(http.answers.len(), 1);
    }

    #[test]
    fn a_records_name_the_agents_and_other_names_are_nxdomain_or_nodata() {
        let (z, _) = zone();
        let a = z.answer(&query("fib-prod.marathon.mesos.", RecordType::A));
        let ips: std::collections::BTreeSet<String> =
            a.answers.iter().map(|r| r.data.to_string()).collect();
        assert!(!ips.is_empty() && ips.iter().all(|ip| ip.starts_with("10.0.0.")));
        let slave = z.answer(&query("fib-prod.marathon.slave.mesos.", RecordType::A));
        assert_eq!(slave.answers.len(), 2, "both agents run a task");
        let leader = z.answer(&query("leader.mesos.", RecordType::A));
        assert_eq!(leader.answers[0].data.to_string(), "10.0.0.9");
        let nx = z.answer(&query("nope.marathon.mesos.", RecordType::A));
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert!(matches!(nx.authorities[0].data, RData::SOA(_)));
        let nodata = z.answer(&query("fib-prod.marathon.mesos.", RecordType::AAAA));
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty() && !nodata.authorities.is_empty());
        let soa = z.answer(&query("mesos.", RecordType::SOA));
        match &soa.answers[0].data {
            RData::SOA(s) => assert_eq!(s.serial, 7),
            other => panic!("{other:?}"),
        }
        let ns = z.answer(&query("mesos.", RecordType::NS));
        assert_eq!(ns.answers.len(), 1);
        let out = z.answer(&query("example.com.", RecordType::A));
        assert_eq!(out.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn srv_targets_resolve_to_their_task_s_agent() {
        let (z, _) = zone();
        let resp = z.answer(&query("_fib-prod._tcp.marathon.mesos.", RecordType::SRV));
        for r in &resp.answers {
            let RData::SRV(s) = &r.data else { panic!() };
            let a = z.answer(&query(&s.target.to_ascii(), RecordType::A));
            assert_eq!(a.answers.len(), 1, "{}", s.target);
        }
    }
}
