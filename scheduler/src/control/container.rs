//! Marathon's `container` of an app definition: validated here into a [`Container`]
//! that placement and the node act on.
//!
//! Both shapes Marathon has accepted are read: the old one (1.4 and before), with
//! `network` and `portMappings` inside `container.docker`, and the current one, with
//! `networks: [{"mode": "host" | "container/bridge" | "container"}]` on the app and
//! `portMappings` on the container. Every problem is listed, as for the rest of the
//! app. `docker.parameters` are `docker run` options; only those with an Engine API
//! equivalent the node applies are accepted, and any other is refused by name
//! rather than silently dropped (a typo'd or unsupported option would otherwise
//! change what runs without a word).

use super::appdef::describe;
use protocol::{DockerPortMapping, DockerSpec, DockerVolume};
use serde_json::{Map, Value};

/// The `docker.parameters` keys the node applies (see `node::docker`).
pub const SUPPORTED_PARAMETERS: &[&str] = &[
    "add-host",
    "cap-add",
    "cap-drop",
    "dns",
    "entrypoint",
    "env",
    "hostname",
    "init",
    "label",
    "memory-swap",
    "read-only",
    "security-opt",
    "shm-size",
    "ulimit",
    "user",
    "workdir",
];

/// How a container's network is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// The agent's network: the task binds its host ports itself.
    Host,
    /// Docker's bridge: `portMappings` are published on host ports.
    Bridge,
    /// A user-defined Docker network (`mode: container` with a `name`); mappings with
    /// a `hostPort` are published as in bridge mode.
    User(String),
    /// No network at all.
    None,
}

/// One entry of `portMappings`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// 0: the same number as the host port, as Marathon does.
    pub container_port: u16,
    /// 0: any host port (from the agent's ranges); a fixed one otherwise.
    pub host_port: u16,
    pub service_port: u16,
    pub protocol: String,
    pub name: Option<String>,
}

/// A validated Marathon `container`.
#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    /// `DOCKER` or `MESOS`.
    pub kind: String,
    /// The image; `None` only for a `MESOS` container without one (a plain process).
    pub image: Option<String>,
    pub network: Network,
    pub port_mappings: Vec<PortMapping>,
    pub parameters: Vec<(String, String)>,
    pub force_pull_image: bool,
    pub privileged: bool,
    pub volumes: Vec<DockerVolume>,
}

impl Container {
    /// Whether the task is run from an image (by the node's Docker containerizer).
    pub fn runs_image(&self) -> bool {
        self.image.is_some()
    }

    /// Whether the app's ports are its `portMappings` (not its `portDefinitions`).
    pub fn maps_ports(&self) -> bool {
        self.runs_image() && matches!(self.network, Network::Bridge | Network::User(_))
    }

    /// The node's form: `cmd` run by a shell in the container, else `args`.
    pub fn spec(&self, cmd: Option<&str>, args: Option<&[String]>, ports: u16) -> DockerSpec {
        let network = match &self.network {
            Network::Host => "host".to_string(),
            Network::Bridge => "bridge".to_string(),
            Network::None => "none".to_string(),
            Network::User(n) => n.clone(),
        };
        let port_mappings = if self.maps_ports() {
            self.port_mappings
                .iter()
                .map(|m| DockerPortMapping {
                    container_port: m.container_port,
                    protocol: m.protocol.clone(),
                })
                .collect()
        } else {
            // Host networking: the task binds each host port itself.
            (0..ports)
                .map(|_| DockerPortMapping {
                    container_port: 0,
                    protocol: "tcp".into(),
                })
                .collect()
        };
        DockerSpec {
            image: self.image.clone().unwrap_or_default(),
            network,
            port_mappings,
            shell: cmd.map(str::to_string),
            args: args.map(<[String]>::to_vec),
            parameters: self.parameters.clone(),
            force_pull_image: self.force_pull_image,
            privileged: self.privileged,
            volumes: self.volumes.clone(),
        }
    }
}

fn string_field(
    o: &Map<String, Value>,
    key: &str,
    what: &str,
    problems: &mut Vec<String>,
) -> Option<String> {
    match o.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => {
            problems.push(format!(
                "{what}.{key} must be a string, got {}",
                describe(v)
            ));
            None
        }
    }
}

fn bool_field(o: &Map<String, Value>, key: &str, what: &str, problems: &mut Vec<String>) -> bool {
    match o.get(key) {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            problems.push(format!(
                "{what}.{key} must be true or false, got {}",
                describe(v)
            ));
            false
        }
    }
}

fn unknown_fields(o: &Map<String, Value>, known: &[&str], what: &str, problems: &mut Vec<String>) {
    for k in o.keys() {
        if !known.contains(&k.as_str()) {
            problems.push(format!(
                "{what}: unknown field {k:?}, expected one of {}",
                known.join(", ")
            ));
        }
    }
}

fn port_field(o: &Map<String, Value>, key: &str, what: &str, problems: &mut Vec<String>) -> u16 {
    match o.get(key) {
        None | Some(Value::Null) => 0,
        Some(v) => match v.as_u64().and_then(|n| u16::try_from(n).ok()) {
            Some(p) => p,
            None => {
                problems.push(format!(
                    "{what}.{key} must be a port number from 0 to 65535, got {}",
                    describe(v)
                ));
                0
            }
        },
    }
}

/// A Docker image reference as Docker accepts one: no spaces or control characters,
/// lowercase repository, an optional `:tag` and/or `@digest`.
fn valid_image(image: &str) -> bool {
    if image.is_empty() || image.len() > 512 || image.chars().any(|c| c.is_whitespace()) {
        return false;
    }
    let name = image.split('@').next().unwrap_or("");
    // The tag is after the last ':' unless that ':' belongs to a registry's port.
    let repo = match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    };
    let path = repo.split_once('/').map_or(repo, |(first, rest)| {
        if first.contains(['.', ':']) || first == "localhost" {
            rest
        } else {
            repo
        }
    });
    !path.is_empty()
        && path
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c))
}

fn port_mappings(v: &Value, what: &str, problems: &mut Vec<String>) -> Vec<PortMapping> {
    let Some(list) = v.as_array() else {
        problems.push(format!("{what} must be a list, got {}", describe(v)));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let what = format!("{what}[{i}]");
        let Some(o) = m.as_object() else {
            problems.push(format!("{what} must be an object, got {}", describe(m)));
            continue;
        };
        unknown_fields(
            o,
            &[
                "containerPort",
                "hostPort",
                "servicePort",
                "protocol",
                "name",
                "labels",
                "networkNames",
            ],
            &what,
            problems,
        );
        let protocol = match o.get("protocol") {
            None | Some(Value::Null) => "tcp".to_string(),
            Some(p) => match p.as_str() {
                Some(p @ ("tcp" | "udp" | "udp,tcp" | "tcp,udp")) => p.to_string(),
                _ => {
                    problems.push(format!(
                        "{what}.protocol must be \"tcp\", \"udp\" or \"udp,tcp\", got {}",
                        describe(p)
                    ));
                    "tcp".to_string()
                }
            },
        };
        out.push(PortMapping {
            container_port: port_field(o, "containerPort", &what, problems),
            host_port: port_field(o, "hostPort", &what, problems),
            service_port: port_field(o, "servicePort", &what, problems),
            protocol,
            name: string_field(o, "name", &what, problems),
        });
    }
    let mut seen = std::collections::BTreeMap::new();
    for (i, m) in out.iter().enumerate() {
        if m.host_port != 0 {
            if let Some(first) = seen.insert(m.host_port, i) {
                problems.push(format!(
                    "{what}[{i}].hostPort {} is also {what}[{first}].hostPort: host ports of an app must differ",
                    m.host_port
                ));
            }
        }
    }
    out
}

fn parameters(v: &Value, problems: &mut Vec<String>) -> Vec<(String, String)> {
    let what = "container.docker.parameters";
    let Some(list) = v.as_array() else {
        problems.push(format!(
            "{what} must be a list of {{\"key\", \"value\"}}, got {}",
            describe(v)
        ));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let what = format!("{what}[{i}]");
        let Some(o) = p.as_object() else {
            problems.push(format!("{what} must be an object, got {}", describe(p)));
            continue;
        };
        unknown_fields(o, &["key", "value"], &what, problems);
        let key = string_field(o, "key", &what, problems);
        let value = string_field(o, "value", &what, problems);
        match (key, value) {
            (Some(k), Some(v)) => {
                let k = k.trim_start_matches('-').to_string();
                if SUPPORTED_PARAMETERS.contains(&k.as_str()) {
                    out.push((k, v));
                } else {
                    problems.push(format!(
                        "{what}.key {k:?} is not supported by this scheduler: expected one of {}",
                        SUPPORTED_PARAMETERS.join(", ")
                    ));
                }
            }
            _ => problems.push(format!("{what} needs both a key and a value")),
        }
    }
    out
}

fn volumes(v: &Value, problems: &mut Vec<String>) -> Vec<DockerVolume> {
    let what = "container.volumes";
    let Some(list) = v.as_array() else {
        problems.push(format!("{what} must be a list, got {}", describe(v)));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, vol) in list.iter().enumerate() {
        let what = format!("{what}[{i}]");
        let Some(o) = vol.as_object() else {
            problems.push(format!("{what} must be an object, got {}", describe(vol)));
            continue;
        };
        if o.contains_key("persistent") || o.contains_key("external") || o.contains_key("secret") {
            problems.push(format!(
                "{what}: persistent, external and secret volumes are not supported: expected a host volume (containerPath, hostPath, mode)"
            ));
            continue;
        }
        unknown_fields(o, &["containerPath", "hostPath", "mode"], &what, problems);
        let container_path = string_field(o, "containerPath", &what, problems).unwrap_or_default();
        let host_path = string_field(o, "hostPath", &what, problems).unwrap_or_default();
        if !container_path.starts_with('/') || container_path.contains(':') {
            problems.push(format!(
                "{what}.containerPath must be an absolute path without ':', got {container_path:?}"
            ));
        }
        if !host_path.starts_with('/') || host_path.contains(':') {
            problems.push(format!(
                "{what}.hostPath must be an absolute path without ':', got {host_path:?}"
            ));
        }
        let read_only = match o.get("mode").and_then(Value::as_str) {
            Some("RO") => true,
            Some("RW") => false,
            _ => {
                problems.push(format!(
                    "{what}.mode must be \"RO\" or \"RW\", got {}",
                    o.get("mode").map_or("nothing".to_string(), describe)
                ));
                false
            }
        };
        out.push(DockerVolume {
            container_path,
            host_path,
            read_only,
        });
    }
    out
}

/// The app-level `networks` (Marathon 1.5+): `None` when absent.
fn app_networks(v: Option<&Value>, problems: &mut Vec<String>) -> Option<Network> {
    let v = v.filter(|v| !v.is_null())?;
    let Some(list) = v.as_array() else {
        problems.push(format!("networks must be a list, got {}", describe(v)));
        return None;
    };
    let mut modes = Vec::new();
    for (i, n) in list.iter().enumerate() {
        let what = format!("networks[{i}]");
        let Some(o) = n.as_object() else {
            problems.push(format!("{what} must be an object, got {}", describe(n)));
            continue;
        };
        unknown_fields(o, &["mode", "name", "labels"], &what, problems);
        let name = string_field(o, "name", &what, problems);
        match (o.get("mode").and_then(Value::as_str), name) {
            (Some("host") | None, _) => modes.push(Network::Host),
            (Some("container/bridge"), _) => modes.push(Network::Bridge),
            (Some("container"), Some(name)) if !name.is_empty() => modes.push(Network::User(name)),
            (Some("container"), _) => problems.push(format!(
                "{what}: mode \"container\" needs the name of a Docker network"
            )),
            (Some(m), _) => problems.push(format!(
                "{what}.mode must be \"host\", \"container/bridge\" or \"container\", got {m:?}"
            )),
        }
    }
    if modes.len() > 1 {
        problems.push(format!(
            "networks: {} networks given, expected one (a task joins a single network here)",
            modes.len()
        ));
    }
    modes.into_iter().next()
}

/// Validates the app's `container` (with its app-level `networks`), adding one
/// problem per bad value. `None` when the app has no container.
pub fn parse_container(
    container: Option<&Value>,
    networks: Option<&Value>,
    problems: &mut Vec<String>,
) -> Option<Container> {
    let app_network = app_networks(networks, problems);
    let Some(v) = container.filter(|v| !v.is_null()) else {
        if matches!(app_network, Some(Network::Bridge | Network::User(_))) {
            problems.push(
                "networks: container networking needs a container (container.type DOCKER)".into(),
            );
        }
        return None;
    };
    let Some(c) = v.as_object() else {
        problems.push(format!("container must be an object, got {}", describe(v)));
        return None;
    };
    unknown_fields(
        c,
        &["type", "docker", "volumes", "portMappings", "linuxInfo"],
        "container",
        problems,
    );
    let kind = match c.get("type") {
        None | Some(Value::Null) => "DOCKER".to_string(),
        Some(t) => match t.as_str() {
            Some(k @ ("DOCKER" | "MESOS")) => k.to_string(),
            _ => {
                problems.push(format!(
                    "container.type must be \"DOCKER\" or \"MESOS\", got {}",
                    describe(t)
                ));
                "DOCKER".to_string()
            }
        },
    };
    let docker = match c.get("docker") {
        None | Some(Value::Null) => None,
        Some(Value::Object(d)) => Some(d),
        Some(d) => {
            problems.push(format!(
                "container.docker must be an object, got {}",
                describe(d)
            ));
            None
        }
    };
    let empty = Map::new();
    let d = docker.unwrap_or(&empty);
    unknown_fields(
        d,
        &[
            "image",
            "network",
            "portMappings",
            "parameters",
            "forcePullImage",
            "privileged",
            "pullConfig",
            "credential",
        ],
        "container.docker",
        problems,
    );
    for k in ["pullConfig", "credential"] {
        if d.get(k).is_some_and(|v| !v.is_null()) {
            problems.push(format!(
                "container.docker.{k} is not supported: images come from the agent's Docker engine as it is configured"
            ));
        }
    }
    let image = string_field(d, "image", "container.docker", problems);
    match &image {
        None if kind == "DOCKER" => problems.push(
            "container.docker.image is required for a DOCKER container: the image to run, e.g. \"python:3\""
                .into(),
        ),
        Some(i) if !valid_image(i) => problems.push(format!(
            "container.docker.image {i:?} is not a valid image reference: expected [registry/]name[:tag][@digest] in lowercase"
        )),
        _ => {}
    }
    let old_network = match d.get("network") {
        None | Some(Value::Null) => None,
        Some(n) => match n.as_str() {
            Some("HOST") => Some(Network::Host),
            Some("BRIDGE") => Some(Network::Bridge),
            Some("NONE") => Some(Network::None),
            Some("USER") => {
                problems.push(
                    "container.docker.network USER needs a network name: give networks: [{\"mode\": \"container\", \"name\": ...}] instead"
                        .into(),
                );
                None
            }
            _ => {
                problems.push(format!(
                    "container.docker.network must be \"HOST\", \"BRIDGE\" or \"NONE\", got {}",
                    describe(n)
                ));
                None
            }
        },
    };
    if old_network.is_some() && app_network.is_some() {
        problems.push(
            "container.docker.network and networks are mutually exclusive: give networks only"
                .into(),
        );
    }
    let old_mappings = d.get("portMappings").filter(|v| !v.is_null());
    let new_mappings = c.get("portMappings").filter(|v| !v.is_null());
    if old_mappings.is_some() && new_mappings.is_some() {
        problems.push(
            "container.docker.portMappings and container.portMappings are mutually exclusive: give container.portMappings only"
                .into(),
        );
    }
    let port_mappings = match (old_mappings, new_mappings) {
        (Some(m), _) => port_mappings(m, "container.docker.portMappings", problems),
        (None, Some(m)) => port_mappings(m, "container.portMappings", problems),
        (None, None) => Vec::new(),
    };
    let network = old_network.or(app_network).unwrap_or(Network::Host);
    if image.is_none() && network != Network::Host {
        problems.push(
            "a MESOS container without docker.image runs on the host network: container networking needs an image"
                .into(),
        );
    }
    if !port_mappings.is_empty() && matches!(network, Network::Host | Network::None) {
        problems.push(
            "portMappings need bridge or container networking: with host networking give portDefinitions"
                .into(),
        );
    }
    let parameters = d
        .get("parameters")
        .filter(|v| !v.is_null())
        .map(|v| parameters(v, problems))
        .unwrap_or_default();
    let force_pull_image = bool_field(d, "forcePullImage", "container.docker", problems);
    let privileged = bool_field(d, "privileged", "container.docker", problems);
    let volumes = c
        .get("volumes")
        .filter(|v| !v.is_null())
        .map(|v| volumes(v, problems))
        .unwrap_or_default();
    Some(Container {
        kind,
        image,
        network,
        port_mappings,
        parameters,
        force_pull_image,
        privileged,
        volumes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(c: Value, networks: Option<Value>) -> (Option<Container>, Vec<String>) {
        let mut p = Vec::new();
        let c = parse_container(Some(&c), networks.as_ref(), &mut p);
        (c, p)
    }

    #[test]
    fn the_old_docker_shape_with_bridge_port_mappings() {
        let (c, p) = parse(
            json!({"type": "DOCKER", "docker": {"image": "python:3", "network": "BRIDGE",
                "portMappings": [{"containerPort": 8080, "hostPort": 0, "servicePort": 9000, "protocol": "tcp"},
                                 {"containerPort": 161, "hostPort": 31161, "protocol": "udp"}],
                "forcePullImage": true, "parameters": [{"key": "label", "value": "a=b"}]},
                "volumes": [{"containerPath": "/etc/a", "hostPath": "/var/data/a", "mode": "RO"}]}),
            None,
        );
        assert!(p.is_empty(), "{p:?}");
        let c = c.unwrap();
        assert_eq!(c.image.as_deref(), Some("python:3"));
        assert_eq!(c.network, Network::Bridge);
        assert!(c.maps_ports() && c.force_pull_image);
        assert_eq!(
            (
                c.port_mappings[0].container_port,
                c.port_mappings[0].service_port
            ),
            (8080, 9000)
        );
        assert_eq!(
            (
                c.port_mappings[1].host_port,
                c.port_mappings[1].protocol.as_str()
            ),
            (31161, "udp")
        );
        assert_eq!(c.parameters, vec![("label".into(), "a=b".into())]);
        assert!(c.volumes[0].read_only);
        let spec = c.spec(Some("run"), None, 2);
        assert_eq!(spec.network, "bridge");
        assert_eq!(spec.port_mappings[0].container_port, 8080);
        assert_eq!(spec.shell.as_deref(), Some("run"));
    }

    #[test]
    fn the_networks_shape_and_host_default() {
        let (c, p) = parse(
            json!({"type": "DOCKER", "docker": {"image": "python:3"},
                   "portMappings": [{"containerPort": 8080, "hostPort": 0}]}),
            Some(json!([{"mode": "container/bridge"}])),
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(c.unwrap().network, Network::Bridge);
        let (c, p) = parse(
            json!({"docker": {"image": "registry.local:5000/team/app:1.2"}}),
            None,
        );
        assert!(p.is_empty(), "{p:?}");
        let c = c.unwrap();
        assert_eq!((c.kind.as_str(), &c.network), ("DOCKER", &Network::Host));
        assert!(!c.maps_ports());
        assert_eq!(c.spec(None, None, 2).port_mappings.len(), 2);
        let (c, p) = parse(
            json!({"type": "DOCKER", "docker": {"image": "a"}}),
            Some(json!([{"mode": "container", "name": "dcos"}])),
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(c.unwrap().network, Network::User("dcos".into()));
        // A MESOS container without an image is a plain process.
        let (c, p) = parse(json!({"type": "MESOS"}), None);
        assert!(p.is_empty(), "{p:?}");
        assert!(!c.unwrap().runs_image());
    }

    #[test]
    fn every_container_problem_is_listed() {
        let (_, p) = parse(
            json!({"type": "RKT", "docker": {"network": "BRDIGE", "imgae": "x",
                "forcePullImage": "yes", "parameters": [{"key": "volume-driver", "value": "x"}, {"key": "label"}],
                "portMappings": [{"containerPort": 70000, "hostPort": 80}, {"hostPort": 80, "protocol": "sctp"}]},
                "volumes": [{"containerPath": "rel", "hostPath": "/x"}, {"containerPath": "/d", "persistent": {"size": 1}}]}),
            None,
        );
        let all = p.join("\n");
        for want in [
            "container.type must be \"DOCKER\" or \"MESOS\", got \"RKT\"",
            "container.docker: unknown field \"imgae\"",
            "container.docker.network must be \"HOST\", \"BRIDGE\" or \"NONE\", got \"BRDIGE\"",
            "container.docker.forcePullImage must be true or false",
            "container.docker.parameters[0].key \"volume-driver\" is not supported",
            "container.docker.parameters[1] needs both a key and a value",
            "container.docker.portMappings[0].containerPort must be a port number",
            "container.docker.portMappings[1].protocol must be",
            "container.docker.portMappings[1].hostPort 80 is also container.docker.portMappings[0].hostPort",
            "container.volumes[0].containerPath must be an absolute path",
            "container.volumes[0].mode must be \"RO\" or \"RW\", got nothing",
            "container.volumes[1]: persistent, external and secret volumes are not supported",
            "portMappings need bridge or container networking",
        ] {
            assert!(all.contains(want), "missing {want:?} in\n{all}");
        }
        let (_, p) = parse(json!({"type": "DOCKER", "docker": {}}), None);
        assert!(
            p.join("\n")
                .contains("container.docker.image is required for a DOCKER container"),
            "{p:?}"
        );
        let (_, p) = parse(json!({"docker": {"image": "Bad Image"}}), None);
        assert!(p[0].contains("is not a valid image reference"), "{p:?}");
        let (_, p) = parse(
            json!({"docker": {"image": "a", "network": "HOST"}}),
            Some(json!([{"mode": "host"}])),
        );
        assert!(p[0].contains("mutually exclusive"), "{p:?}");
        let (_, p) = parse(
            json!({"docker": {"image": "a"}}),
            Some(json!([{"mode": "container"}])),
        );
        assert!(p[0].contains("needs the name of a Docker network"), "{p:?}");
    }

    #[test]
    fn image_references() {
        for ok in [
            "python:3",
            "sandtrail-demo:test",
            "library/python",
            "localhost:5000/a/b:c",
            "a@sha256:0123",
        ] {
            assert!(valid_image(ok), "{ok}");
        }
        for bad in ["", "Python", "a b", "Team/app"] {
            assert!(!valid_image(bad), "{bad}");
        }
    }
}
