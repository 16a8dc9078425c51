//! The names Mesos-DNS gives Marathon's tasks, read and written: an app id becomes one
//! RFC 1123 label (`/prod/fib` → `fib-prod`, Marathon's task name `fib.prod` with the
//! dot replaced, as Mesos-DNS does), and a query name within the domain is parsed into
//! the one thing it can mean ([`DnsName`]).
//!
//! Parsing is by shape alone, not against the zone: the zone then says whether the
//! thing named exists (NXDOMAIN) or has no record of the asked type (NODATA). The
//! trade-off is that `<x>.marathon.<domain>` is read as an app and looked up as a task
//! host name only when no app has that label, as in Mesos-DNS, where both share the
//! namespace.

/// The framework label every app name carries, as Marathon registers with Mesos.
pub const FRAMEWORK: &str = "marathon";

/// The longest DNS label (RFC 1035).
pub const MAX_LABEL: usize = 63;

/// The longest app or task label: one less than [`MAX_LABEL`], so that its service
/// name `_<label>` is a label too. Regression (proptest): 63-character app labels made
/// SRV names no DNS library could encode.
pub const MAX_APP_LABEL: usize = MAX_LABEL - 1;

/// What a query name within the domain names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsName {
    /// The domain itself: SOA and NS.
    Apex,
    /// `ns1.<domain>`: this server.
    Ns,
    /// `leader.<domain>`: the leading scheduler.
    Leader,
    /// `_leader._tcp.<domain>`: the leading scheduler's HTTP port.
    LeaderService { proto: Proto },
    /// `<app>.marathon.<domain>` (the agents of its ready tasks), or with `slave`,
    /// `<app>.marathon.slave.<domain>` (the agents of its running tasks). Also how a
    /// task's own host name (`<app>-<tag>.marathon.<domain>`) reads.
    App { label: String, slave: bool },
    /// `[_<port name>.]_<app>._<proto>.marathon[.slave].<domain>`: one SRV per ready
    /// task and port of that protocol (and name).
    Service {
        app: String,
        proto: Proto,
        port_name: Option<String>,
        slave: bool,
    },
}

/// The transport of a service name (`_tcp`, `_udp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn parse(label: &str) -> Option<Proto> {
        match label {
            "_tcp" => Some(Proto::Tcp),
            "_udp" => Some(Proto::Udp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// Whether a Marathon port definition's `protocol` (`tcp`, `udp`, `udp,tcp`)
    /// carries this one.
    pub fn in_protocol(self, protocol: &str) -> bool {
        protocol
            .split(',')
            .any(|p| p.trim().eq_ignore_ascii_case(self.as_str()))
    }
}

/// `name` as the zone keys it: lower case, one trailing dot, surrounding blanks gone.
/// `None` for an empty name or one with an empty label (`a..b`).
pub fn normalize(name: &str) -> Option<String> {
    let n = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if n.is_empty() || n.split('.').any(str::is_empty) {
        return None;
    }
    Some(format!("{n}."))
}

/// `domain` as configured (`mesos`, `Mesos.`, `cluster.example`) in the form
/// [`parse`] expects: lower case, no dot at either end. `None` if it is not a domain.
pub fn domain(domain: &str) -> Option<String> {
    let d = normalize(domain)?;
    let d = d.trim_end_matches('.').to_string();
    let valid = d.split('.').all(|l| {
        l.len() <= MAX_LABEL
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    valid.then_some(d)
}

/// Parses `name` (any case, with or without its trailing dot) within `domain` (as
/// [`domain`] returns it). `Err(OutOfZone)` for a name outside the domain, `Ok(None)`
/// for one inside it that names nothing this server knows of.
pub fn parse(name: &str, domain: &str) -> Result<Option<DnsName>, OutOfZone> {
    let Some(n) = normalize(name) else {
        return Err(OutOfZone);
    };
    let n = &n[..n.len() - 1];
    let rest = if n == domain {
        ""
    } else if let Some(r) = n
        .strip_suffix(domain)
        .and_then(|r| r.strip_suffix('.'))
        .filter(|_| !domain.is_empty())
    {
        r
    } else {
        return Err(OutOfZone);
    };
    if rest.is_empty() {
        return Ok(Some(DnsName::Apex));
    }
    let labels: Vec<&str> = rest.split('.').collect();
    Ok(match labels.as_slice() {
        ["ns1"] => Some(DnsName::Ns),
        ["leader"] => Some(DnsName::Leader),
        ["_leader", p] => Proto::parse(p).map(|proto| DnsName::LeaderService { proto }),
        [app, FRAMEWORK] => plain(app).map(|label| DnsName::App {
            label,
            slave: false,
        }),
        [app, FRAMEWORK, "slave"] => plain(app).map(|label| DnsName::App { label, slave: true }),
        [head @ .., p, FRAMEWORK] => service(head, p, false),
        [head @ .., p, FRAMEWORK, "slave"] => service(head, p, true),
        _ => None,
    })
}

/// The query name was not within the served domain (answered REFUSED: this server
/// is no resolver).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfZone;

/// An app or task label: no leading underscore (that is a service name's).
fn plain(label: &str) -> Option<String> {
    (!label.starts_with('_')).then(|| label.to_string())
}

fn service(head: &[&str], proto: &str, slave: bool) -> Option<DnsName> {
    let proto = Proto::parse(proto)?;
    let under = |l: &str| {
        l.strip_prefix('_')
            .filter(|s| !s.is_empty())
            .map(String::from)
    };
    let (port_name, app) = match head {
        [app] => (None, under(app)?),
        [port, app] => (Some(under(port)?), under(app)?),
        _ => return None,
    };
    Some(DnsName::Service {
        app,
        proto,
        port_name,
        slave,
    })
}

/// An app id as one DNS label, as Mesos-DNS names Marathon's tasks: the path's
/// segments in reverse order (Marathon's task name, `fib.prod` for `/prod/fib`), joined
/// by `-`, lower case, every other character than a letter, digit or `-` made a `-`,
/// no `-` at either end, at most [`MAX_APP_LABEL`] characters. Distinct ids can meet in one label
/// (`/prod/fib` and `/fib-prod`); their tasks then answer together.
pub fn app_label(app_id: &str) -> String {
    let reversed: Vec<&str> = app_id.split('/').filter(|s| !s.is_empty()).rev().collect();
    label(&reversed.join("-"))
}

/// `s` made a valid DNS label (see [`app_label`]); an empty result is `x`, so every
/// app keeps a name.
pub fn label(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut out = mapped.trim_matches('-').to_string();
    if out.len() > MAX_APP_LABEL {
        out.truncate(MAX_APP_LABEL);
        out = out.trim_end_matches('-').to_string();
    }
    if out.is_empty() {
        out.push('x');
    }
    out
}

/// A task's own host name label, `<app>-<tag>` (Mesos-DNS's `<task>-<random>`), with
/// `tag` from the task id's unique part, so it is stable across rebuilds of the zone.
pub fn task_label(app_label: &str, task_id: &str) -> String {
    let unique = task_id.rsplit('.').next().unwrap_or(task_id);
    let tag: String = unique
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    let room = MAX_APP_LABEL.saturating_sub(tag.len() + 1);
    let head = &app_label[..app_label.len().min(room)];
    label(&format!("{}-{tag}", head.trim_end_matches('-')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(name: &str) -> Option<DnsName> {
        parse(name, "mesos").expect("within the zone")
    }

    #[test]
    fn the_names_mesos_dns_answers_parse() {
        assert_eq!(p("mesos."), Some(DnsName::Apex));
        assert_eq!(p("MESOS"), Some(DnsName::Apex));
        assert_eq!(p("ns1.mesos."), Some(DnsName::Ns));
        assert_eq!(p("leader.mesos"), Some(DnsName::Leader));
        assert_eq!(
            p("_leader._tcp.mesos."),
            Some(DnsName::LeaderService { proto: Proto::Tcp })
        );
        assert_eq!(
            p("Fib.Marathon.Mesos."),
            Some(DnsName::App {
                label: "fib".into(),
                slave: false
            })
        );
        assert_eq!(
            p("fib.marathon.slave.mesos"),
            Some(DnsName::App {
                label: "fib".into(),
                slave: true
            })
        );
        assert_eq!(
            p("_fib._tcp.marathon.mesos."),
            Some(DnsName::Service {
                app: "fib".into(),
                proto: Proto::Tcp,
                port_name: None,
                slave: false
            })
        );
        assert_eq!(
            p("_http._fib-prod._udp.marathon.slave.mesos"),
            Some(DnsName::Service {
                app: "fib-prod".into(),
                proto: Proto::Udp,
                port_name: Some("http".into()),
                slave: true
            })
        );
    }

    #[test]
    fn other_names_in_the_zone_name_nothing_and_names_outside_are_out_of_zone() {
        for name in [
            "foo.mesos",
            "fib.chronos.mesos",
            "_fib._sctp.marathon.mesos",
            "_fib.marathon.mesos",
            "fib._tcp.marathon.mesos",
            "_a._b._c._tcp.marathon.mesos",
            "__tcp.marathon.mesos",
            "_fib.marathon.slave.mesos",
        ] {
            assert_eq!(p(name), None, "{name}");
        }
        for name in [
            "example.com.",
            "mesos.example.",
            "xmesos.",
            "",
            ".",
            "a..mesos",
        ] {
            assert_eq!(parse(name, "mesos"), Err(OutOfZone), "{name:?}");
        }
        assert_eq!(
            parse("fib.marathon.cluster.example.", "cluster.example"),
            Ok(Some(DnsName::App {
                label: "fib".into(),
                slave: false
            }))
        );
    }

    #[test]
    fn app_ids_become_mesos_dns_labels() {
        assert_eq!(app_label("/fib"), "fib");
        assert_eq!(app_label("/prod/fib"), "fib-prod");
        assert_eq!(app_label("/a/b/c"), "c-b-a");
        assert_eq!(app_label("/My_App.v2"), "my-app-v2");
        assert_eq!(app_label("/"), "x");
        assert_eq!(app_label(&format!("/{}", "a".repeat(80))).len(), 62);
        assert_eq!(
            task_label("fib", "fib.1b4e28ba-2fa1-11d2-883f-0016d3cca427"),
            "fib-1b4e28ba"
        );
        assert_eq!(domain("Mesos."), Some("mesos".into()));
        assert_eq!(domain("a b"), None);
    }

    fn valid_label(l: &str) -> bool {
        !l.is_empty()
            && l.len() <= MAX_APP_LABEL
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    }

    proptest! {
        #[test]
        fn every_app_id_gets_a_valid_label_that_parses_back(id in "(/[a-zA-Z0-9._~ -]{0,40}){1,4}") {
            let l = app_label(&id);
            prop_assert!(valid_label(&l), "{l:?}");
            let host = format!("{l}.marathon.mesos.");
            prop_assert_eq!(p(&host), Some(DnsName::App { label: l.clone(), slave: false }));
            let srv = format!("_{l}._tcp.marathon.mesos");
            prop_assert_eq!(p(&srv), Some(DnsName::Service { app: l.clone(), proto: Proto::Tcp, port_name: None, slave: false }));
            // What a real DNS library makes of the names is what we parse.
            let wire = hickory_proto::rr::Name::from_ascii(&srv).unwrap().to_lowercase().to_ascii();
            prop_assert_eq!(p(&wire), p(&srv));
        }

        #[test]
        fn task_labels_are_valid(app in "[a-z0-9-]{1,63}", task in "[a-z0-9_.-]{0,60}") {
            let l = task_label(&label(&app), &task);
            prop_assert!(valid_label(&l), "{l:?}");
        }

        #[test]
        fn parsing_never_panics_and_ignores_case_and_the_final_dot(name in "[a-zA-Z0-9_.-]{0,60}") {
            let a = parse(&name, "mesos");
            let b = parse(&format!("{}.", name.to_ascii_uppercase()), "mesos");
            if normalize(&name).is_some() {
                prop_assert_eq!(a, b);
            }
        }
    }
}
