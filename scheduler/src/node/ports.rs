//! The node's side of host ports: turning the ports a task's spec asks for (fixed by
//! the scheduler, or 0 for "any") into the ports the task gets.
//!
//! The scheduler decides fixed ports and ports from an agent's declared ranges, since
//! only it sees every task of the agent; the node only checks that such a port can be
//! bound right now, so a port held by something outside Sandtrail fails the launch
//! with a message naming the port instead of a task that dies on its own bind. The
//! trade-off is a check-then-use race: the port can still be taken between the check
//! and the task's own bind, which the task then reports as any failed start.

use crate::{Error, Result};
use protocol::{PortLabel, TaskSpec};
use std::collections::HashSet;

/// The host ports of a task about to launch: those of `spec.ports` that are set, each
/// checked to be bindable on `address` (or on all interfaces, when `address` is not
/// local), and `allocate(n, taken)` for the others.
pub(crate) fn resolve_host_ports(
    address: &str,
    spec: &TaskSpec,
    taken: &HashSet<u16>,
    allocate: impl FnOnce(u16, &HashSet<u16>) -> Result<Vec<u16>>,
) -> Result<Vec<u16>> {
    let count = usize::from(spec.port_count);
    let wanted: Vec<u16> = (0..count)
        .map(|i| spec.ports.get(i).copied().unwrap_or(0))
        .collect();
    let mut avoid = taken.clone();
    for &p in wanted.iter().filter(|p| **p != 0) {
        if taken.contains(&p) {
            return Err(Error::BadRequest(format!(
                "host port {p} is already given to another task on this agent"
            )));
        }
        // Bound on the task's address, or on all interfaces when that address is not
        // one of this host's (the same fallback as for kernel-picked ports).
        let bound = std::net::TcpListener::bind((address, p))
            .or_else(|_| std::net::TcpListener::bind(("0.0.0.0", p)));
        if let Err(e) = bound {
            return Err(Error::BadRequest(format!(
                "host port {p} cannot be bound on {address}: {e}"
            )));
        }
        avoid.insert(p);
    }
    let dynamic = wanted.iter().filter(|p| **p == 0).count();
    let mut picked = allocate(u16::try_from(dynamic).unwrap_or(u16::MAX), &avoid)?.into_iter();
    Ok(wanted
        .into_iter()
        .map(|p| {
            if p == 0 {
                picked.next().unwrap_or(0)
            } else {
                p
            }
        })
        .collect())
}

/// The port variables of a task, as Marathon sets them: `PORT0`.. by index, `PORT` as
/// `PORT0`, `PORTS` comma-separated, `PORT_<NAME>` for each named port (see
/// [`PortLabel::env_name`]), and `PORT_<port>` for each declared non-zero port
/// (the host port it got; a dynamic port is listed under its own number).
pub fn port_env(spec: &TaskSpec, ports: &[u16]) -> Vec<(String, String)> {
    let mut env = vec![(
        "PORTS".to_string(),
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(","),
    )];
    if let Some(p) = ports.first() {
        env.push(("PORT".into(), p.to_string()));
    }
    for (i, p) in ports.iter().enumerate() {
        env.push((format!("PORT{i}"), p.to_string()));
        let label = spec.port_definitions.get(i);
        let declared = label.map_or(0, |l| l.port);
        // Marathon sets PORT_<declared port> only for declared ones; a dynamic port's
        // own number could collide with another definition's declared port.
        if declared != 0 {
            env.push((format!("PORT_{declared}"), p.to_string()));
        }
        if let Some(name) = label.map(|l| l.name.as_str()).filter(|n| !n.is_empty()) {
            env.push((PortLabel::env_name(name), p.to_string()));
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::PortLabel;
    use std::collections::BTreeMap;

    fn spec(ports: Vec<u16>, labels: Vec<PortLabel>) -> TaskSpec {
        TaskSpec {
            app: "web".into(),
            task: "web.1".into(),
            instance: 0,
            cmd: "true".into(),
            env: BTreeMap::new(),
            port_count: 2,
            ports,
            port_definitions: labels,
            ..TaskSpec::default()
        }
    }

    fn fake_alloc(n: u16, avoid: &HashSet<u16>) -> Result<Vec<u16>> {
        Ok((40_000..)
            .filter(|p| !avoid.contains(p))
            .take(n.into())
            .collect())
    }

    #[test]
    fn set_ports_are_kept_and_the_rest_allocated() {
        // A port nobody holds: bind one, note it, release it.
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let got = resolve_host_ports(
            "127.0.0.1",
            &spec(vec![0, free], vec![]),
            &HashSet::new(),
            fake_alloc,
        )
        .unwrap();
        assert_eq!(got, vec![40_000, free]);
        let got = resolve_host_ports(
            "127.0.0.1",
            &spec(vec![], vec![]),
            &HashSet::new(),
            fake_alloc,
        )
        .unwrap();
        assert_eq!(got, vec![40_000, 40_001], "no ports set: all allocated");
    }

    #[test]
    fn a_held_or_taken_port_fails_the_launch_naming_it() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let err = resolve_host_ports(
            "127.0.0.1",
            &spec(vec![port, 0], vec![]),
            &HashSet::new(),
            fake_alloc,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(&format!("host port {port} cannot be bound")),
            "{err}"
        );
        drop(held);
        let taken: HashSet<u16> = [port].into();
        let err = resolve_host_ports("127.0.0.1", &spec(vec![port], vec![]), &taken, fake_alloc)
            .unwrap_err()
            .to_string();
        assert!(err.contains("already given to another task"), "{err}");
    }

    #[test]
    fn port_env_has_marathon_names() {
        let labels = vec![
            PortLabel {
                port: 8080,
                name: "http".into(),
            },
            PortLabel {
                port: 0,
                name: "admin-ui".into(),
            },
        ];
        let env: BTreeMap<String, String> = port_env(&spec(vec![], labels), &[8080, 31002])
            .into_iter()
            .collect();
        let want: BTreeMap<String, String> = [
            ("PORTS", "8080,31002"),
            ("PORT", "8080"),
            ("PORT0", "8080"),
            ("PORT1", "31002"),
            ("PORT_8080", "8080"),
            ("PORT_HTTP", "8080"),
            ("PORT_ADMIN_UI", "31002"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(env, want);
    }
}
