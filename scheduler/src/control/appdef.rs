//! A Marathon app definition: its validation (every rule Marathon clients rely on, in
//! this one module) and the typed [`AppDef`] the rest of the control plane works with.
//!
//! App JSON is validated by hand from a `serde_json::Value` rather than by a derived
//! `Deserialize`, because Marathon clients expect every problem of a definition listed
//! at once (serde stops at the first) and unknown fields named (so a typo such as
//! `instnces` is not silently dropped). The trade-off is more code per field; fields
//! Marathon knows but we do not act on yet are accepted and kept verbatim.
//!
//! The Marathon fields that are acted on but have no column of their own
//! (`healthChecks`, `constraints`, `upgradeStrategy`, `killSelection`, `user`) are
//! kept twice: verbatim, because clients read back exactly what they sent, and typed,
//! parsed once when the definition is accepted or loaded, so that a heartbeat or a
//! placement never parses JSON. The typed form is derived from the verbatim one and
//! private, so the two cannot drift apart: change them through [`AppDef::set_extra`].

use crate::control::container::{parse_container, Container, PortMapping};
use crate::control::placement::{self, Constraint, Operator};
use crate::{Error, Result};
use chrono::{DateTime, Utc};
use protocol::{HealthCheck, PortLabel};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// One entry of an app's `portDefinitions`. As in Marathon, `port` is the service port
/// and the host port is dynamic (from the agent's port ranges, or any free one),
/// unless the app sets `requirePorts`: then a non-zero `port` is the exact host port
/// and no two tasks needing it share an agent. `port: 0` is always dynamic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortDefinition {
    #[serde(default)]
    pub port: u16,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn default_protocol() -> String {
    "tcp".to_string()
}

/// Marathon's `versionInfo`: when the app was last scaled or changed at all, and when
/// anything but `instances` last changed (the version its tasks must run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    pub last_scaling_at: DateTime<Utc>,
    pub last_config_change_at: DateTime<Utc>,
}

/// A validated app definition, serialised in Marathon's camelCase shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "StoredAppDef")]
pub struct AppDef {
    /// Normalised with a leading slash: `/fib`, `/prod/fib`.
    pub id: String,
    #[serde(default)]
    pub cmd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    pub instances: u32,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub cpus: f64,
    pub mem: f64,
    /// Scratch disk in MiB; Marathon's default is 0.
    #[serde(default)]
    pub disk: f64,
    #[serde(default)]
    pub port_definitions: Vec<PortDefinition>,
    /// Marathon's `requirePorts`: the declared non-zero ports are the host ports.
    #[serde(default)]
    pub require_ports: bool,
    pub backoff_seconds: f64,
    pub backoff_factor: f64,
    pub max_launch_delay_seconds: f64,
    /// The other Marathon fields, kept verbatim so they are shown back and survive
    /// restarts; the ones acted on are also held typed in `parsed`.
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
    pub version: DateTime<Utc>,
    /// Set by the state when the app is created or changed (never by a client), and
    /// saved with the app so it survives a restart. `None` only in files written
    /// before it existed: shown as the app's `version` then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_info: Option<VersionInfo>,
    /// `extra`'s acted-on fields, parsed.
    #[serde(skip)]
    parsed: Parsed,
}

/// How an [`AppDef`] is read back from the state file: the same shape, without the
/// typed part, which is derived from `extra` on the way in.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredAppDef {
    id: String,
    #[serde(default)]
    cmd: Option<String>,
    #[serde(default)]
    args: Option<Vec<String>>,
    instances: u32,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cpus: f64,
    mem: f64,
    #[serde(default)]
    disk: f64,
    #[serde(default)]
    port_definitions: Vec<PortDefinition>,
    #[serde(default)]
    require_ports: bool,
    backoff_seconds: f64,
    backoff_factor: f64,
    max_launch_delay_seconds: f64,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
    version: DateTime<Utc>,
    #[serde(default)]
    version_info: Option<VersionInfo>,
}

impl From<StoredAppDef> for AppDef {
    fn from(s: StoredAppDef) -> AppDef {
        // Validated when it was accepted; problems cannot arise and are not reported.
        let parsed = Parsed::read(&s.extra, None, &mut Vec::new());
        AppDef {
            id: s.id,
            cmd: s.cmd,
            args: s.args,
            instances: s.instances,
            env: s.env,
            cpus: s.cpus,
            mem: s.mem,
            disk: s.disk,
            port_definitions: s.port_definitions,
            require_ports: s.require_ports,
            backoff_seconds: s.backoff_seconds,
            backoff_factor: s.backoff_factor,
            max_launch_delay_seconds: s.max_launch_delay_seconds,
            extra: s.extra,
            version: s.version,
            version_info: s.version_info,
            parsed,
        }
    }
}

/// Marathon's `upgradeStrategy`: during a rolling replacement, the share of
/// `instances` that must stay healthy and the share that may run on top.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpgradeStrategy {
    pub minimum_health_capacity: f64,
    pub maximum_over_capacity: f64,
}

impl Default for UpgradeStrategy {
    /// Marathon's defaults: keep every instance, and allow as many again on top.
    fn default() -> Self {
        UpgradeStrategy {
            minimum_health_capacity: 1.0,
            maximum_over_capacity: 1.0,
        }
    }
}

/// Marathon's `killSelection`: which tasks go first when an app scales down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KillSelection {
    #[default]
    YoungestFirst,
    OldestFirst,
}

/// The typed form of the verbatim fields an [`AppDef`] acts on.
#[derive(Debug, Clone, Default)]
struct Parsed {
    health_checks: Vec<HealthCheck>,
    constraints: Vec<Constraint>,
    upgrade_strategy: UpgradeStrategy,
    kill_selection: KillSelection,
    user: Option<String>,
    container: Option<Container>,
    kill_grace_seconds: Option<f64>,
}

/// Always equal: `Parsed` is a function of `extra`, which `AppDef`'s equality compares
/// (and `Constraint`, holding a compiled regex, has no equality of its own).
impl PartialEq for Parsed {
    fn eq(&self, _: &Parsed) -> bool {
        true
    }
}

impl Parsed {
    /// Validates and parses the acted-on fields of `extra`, adding one problem per bad
    /// value. With `port_count`, a health check's `portIndex` naming no port of the app
    /// is a problem too.
    fn read(
        extra: &BTreeMap<String, Value>,
        port_count: Option<usize>,
        problems: &mut Vec<String>,
    ) -> Parsed {
        let container = parse_container(extra.get("container"), extra.get("networks"), problems);
        // With port mappings, those are the app's ports (its portDefinitions are empty).
        let port_count = match &container {
            Some(c) if c.maps_ports() => Some(c.port_mappings.len()),
            _ => port_count,
        };
        let kill_grace_seconds = match extra.get("taskKillGracePeriodSeconds") {
            None | Some(Value::Null) => None,
            Some(v) => match v
                .as_f64()
                .filter(|n| n.is_finite() && (0.0..=86_400.0).contains(n))
            {
                Some(n) => Some(n),
                None => {
                    problems.push(format!(
                        "taskKillGracePeriodSeconds must be a number from 0 to 86400, got {}",
                        describe(v)
                    ));
                    None
                }
            },
        };
        let health_checks = extra
            .get("healthChecks")
            .filter(|v| !v.is_null())
            .map(|v| parse_health_checks(v, port_count, problems))
            .unwrap_or_default();
        let constraints = extra
            .get("constraints")
            .filter(|v| !v.is_null())
            .map(|v| parse_constraints(v, problems))
            .unwrap_or_default();
        // Marathon's `user`: whether it exists is for the agent to say (accounts differ
        // between hosts); here only that it can be a user name at all.
        let mut user = None;
        if let Some(v) = extra.get("user").filter(|v| !v.is_null()) {
            let ok = v.as_str().is_some_and(|u| {
                (1..=64).contains(&u.len()) && !u.contains(['\0', '/', ':']) && u.trim() == u
            });
            if !ok {
                problems.push(format!(
                    "user must be a user name (1 to 64 characters, no NUL, '/' or ':', no \
                     surrounding spaces), got {}",
                    describe(v)
                ));
            }
            user = v.as_str().map(str::to_string);
        }
        let mut upgrade_strategy = UpgradeStrategy::default();
        if let Some(v) = extra.get("upgradeStrategy").filter(|v| !v.is_null()) {
            match v.as_object() {
                Some(us) => {
                    for (k, val) in us {
                        match k.as_str() {
                            "minimumHealthCapacity" | "maximumOverCapacity" => {
                                if !val.as_f64().is_some_and(|n| (0.0..=1.0).contains(&n)) {
                                    problems.push(format!(
                                        "upgradeStrategy.{k} must be a number from 0 to 1, got {}",
                                        describe(val)
                                    ));
                                }
                            }
                            other => problems.push(format!(
                                "upgradeStrategy: unknown field {other:?}, expected minimumHealthCapacity or maximumOverCapacity"
                            )),
                        }
                    }
                }
                None => problems.push(format!(
                    "upgradeStrategy must be an object, got {}",
                    describe(v)
                )),
            }
            let get = |k: &str| {
                v.get(k)
                    .and_then(Value::as_f64)
                    .unwrap_or(1.0)
                    .clamp(0.0, 1.0)
            };
            upgrade_strategy = UpgradeStrategy {
                minimum_health_capacity: get("minimumHealthCapacity"),
                maximum_over_capacity: get("maximumOverCapacity"),
            };
        }
        let kill_selection = match extra.get("killSelection").and_then(Value::as_str) {
            Some("OLDEST_FIRST") => KillSelection::OldestFirst,
            _ => KillSelection::YoungestFirst,
        };
        Parsed {
            health_checks,
            constraints,
            upgrade_strategy,
            kill_selection,
            user,
            container,
            kill_grace_seconds,
        }
    }
}

impl AppDef {
    /// The id without its leading slash: what nodes, task ids and logs call the app.
    pub fn name(&self) -> &str {
        self.id.trim_start_matches('/')
    }

    /// The shell command a node runs: `cmd`, or `args` quoted for the shell.
    pub fn command(&self) -> String {
        match (&self.cmd, &self.args) {
            (Some(cmd), _) => cmd.clone(),
            (None, Some(args)) => args
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
            (None, None) => String::new(),
        }
    }

    pub fn port_count(&self) -> u16 {
        let n = match self.port_mappings() {
            Some(m) => m.len(),
            None => self.port_definitions.len(),
        };
        u16::try_from(n).unwrap_or(u16::MAX)
    }

    /// One entry per port: `Some(p)` for a fixed host port, `None` for a dynamic one.
    pub fn requested_ports(&self) -> Vec<Option<u16>> {
        if let Some(m) = self.port_mappings() {
            return m
                .iter()
                .map(|m| (m.host_port != 0).then_some(m.host_port))
                .collect();
        }
        self.port_definitions
            .iter()
            .map(|d| (self.require_ports && d.port != 0).then_some(d.port))
            .collect()
    }

    /// What one task of the app takes from its agent.
    pub fn resources(&self) -> placement::Resources {
        placement::Resources {
            cpus: self.cpus,
            mem: self.mem,
            disk: self.disk,
        }
    }

    /// Whether `other` runs the same thing (everything but `instances` and `version`
    /// equal): if not, the running tasks have to be replaced.
    pub fn same_config(&self, other: &AppDef) -> bool {
        let strip = |a: &AppDef| AppDef {
            instances: 0,
            version: DateTime::UNIX_EPOCH,
            version_info: None,
            ..a.clone()
        };
        strip(self) == strip(other)
    }

    /// Whether `other` is this definition exactly, its version aside: a `PUT` of it
    /// changes nothing.
    pub fn same_but_version(&self, other: &AppDef) -> bool {
        let strip = |a: &AppDef| AppDef {
            version: DateTime::UNIX_EPOCH,
            version_info: None,
            ..a.clone()
        };
        strip(self) == strip(other)
    }

    pub(crate) fn backoff_base(&self) -> f64 {
        self.backoff_seconds
    }

    /// The Marathon fields kept verbatim (everything but the ones with a field here).
    pub fn extra(&self) -> &BTreeMap<String, Value> {
        &self.extra
    }

    /// Sets (or with `null`, removes) one verbatim Marathon field and re-reads the
    /// typed ones from it, leniently: validation is [`parse_app`]'s.
    pub fn set_extra(&mut self, key: &str, value: Value) {
        if value.is_null() {
            self.extra.remove(key);
        } else {
            self.extra.insert(key.to_string(), value);
        }
        self.parsed = Parsed::read(&self.extra, None, &mut Vec::new());
    }

    /// The app's Marathon `user` (validated when the app was accepted): who its tasks
    /// run as; unset, the node decides (see `task_user`).
    pub fn user(&self) -> Option<String> {
        self.parsed.user.clone()
    }

    /// The app's `container` (validated when the app was accepted).
    pub fn container(&self) -> Option<&Container> {
        self.parsed.container.as_ref()
    }

    /// Whether the app's tasks run from a Docker image (on agents offering docker).
    pub fn runs_image(&self) -> bool {
        self.container().is_some_and(Container::runs_image)
    }

    /// The container's `portMappings` when they are the app's ports (bridge or
    /// container networking).
    pub fn port_mappings(&self) -> Option<&[PortMapping]> {
        self.container()
            .filter(|c| c.maps_ports())
            .map(|c| c.port_mappings.as_slice())
    }

    /// What the node runs for a task of a Docker app; `None` for a process task.
    pub fn docker_spec(&self) -> Option<protocol::DockerSpec> {
        self.container()
            .filter(|c| c.runs_image())
            .map(|c| c.spec(self.cmd.as_deref(), self.args.as_deref(), self.port_count()))
    }

    /// Marathon's `taskKillGracePeriodSeconds`, when set.
    pub fn kill_grace_seconds(&self) -> Option<f64> {
        self.parsed.kill_grace_seconds
    }

    /// The app's `healthChecks` (validated when the app was accepted).
    pub fn health_checks(&self) -> &[HealthCheck] {
        &self.parsed.health_checks
    }

    /// The app's `constraints` (validated when the app was accepted).
    pub fn constraints(&self) -> &[Constraint] {
        &self.parsed.constraints
    }

    /// `upgradeStrategy` as (minimumHealthCapacity, maximumOverCapacity), Marathon's
    /// defaults (1, 1) for what is not given.
    pub fn upgrade_strategy(&self) -> (f64, f64) {
        let us = self.parsed.upgrade_strategy;
        (us.minimum_health_capacity, us.maximum_over_capacity)
    }

    /// `killSelection`: which tasks go first on a scale down.
    pub fn kill_selection(&self) -> KillSelection {
        self.parsed.kill_selection
    }
}

fn shell_quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if safe {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

// ---------------------------------------------------------------------------
// Validation of Marathon app JSON
// ---------------------------------------------------------------------------

/// Fields this version reads.
const HANDLED_FIELDS: &[&str] = &[
    "id",
    "cmd",
    "args",
    "instances",
    "env",
    "cpus",
    "mem",
    "disk",
    "portDefinitions",
    "ports",
    "requirePorts",
    "backoffSeconds",
    "backoffFactor",
    "maxLaunchDelaySeconds",
];

/// Marathon fields accepted and kept verbatim. `healthChecks`, `constraints`,
/// `upgradeStrategy` and `killSelection` are validated here and acted on through
/// `AppDef`'s accessors; the others are not acted on yet.
const KEPT_FIELDS: &[&str] = &[
    "acceptedResourceRoles",
    "constraints",
    "container",
    "dependencies",
    "executor",
    "executorResources",
    "fetch",
    "gpus",
    "healthChecks",
    "ipAddress",
    "killSelection",
    "labels",
    "networks",
    "readinessChecks",
    "residency",
    "resourceLimits",
    "role",
    "secrets",
    "storeUrls",
    "taskKillGracePeriodSeconds",
    "tty",
    "unreachableStrategy",
    "upgradeStrategy",
    "uris",
    "user",
];

/// Fields Marathon shows but that a client cannot set; accepted (so an app read from
/// `GET` can be sent back) and ignored.
const READ_ONLY_FIELDS: &[&str] = &[
    "version",
    "versionInfo",
    "tasksRunning",
    "tasksStaged",
    "tasksHealthy",
    "tasksUnhealthy",
    "deployments",
    "tasks",
    "lastTaskFailure",
    "taskStats",
    "readinessCheckResults",
];

const MAX_INSTANCES: i64 = 10_000;
const MAX_PORTS: usize = 100;

/// A bad value as shown in an error message, cut short so a huge value cannot flood it.
pub(crate) fn describe(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_ascii_lowercase().chars().collect();
    let b: Vec<char> = b.to_ascii_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn suggestion(field: &str) -> Option<&'static str> {
    HANDLED_FIELDS
        .iter()
        .chain(KEPT_FIELDS)
        .chain(READ_ONLY_FIELDS)
        .map(|k| (levenshtein(field, k), *k))
        .filter(|(d, k)| *d <= 2.min(k.len() / 3).max(1))
        .min()
        .map(|(_, k)| k)
}

/// Whether one segment of an app id is valid: lowercase letters, digits, `-` and `.`,
/// starting and ending with a letter or digit (Marathon's rule).
fn valid_segment(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.chars().all(|c| alnum(c) || c == '-' || c == '.')
        && s.starts_with(alnum)
        && s.ends_with(alnum)
}

/// Validates an app id and normalises it to a leading slash.
fn parse_id(raw: &str, problems: &mut Vec<String>) -> Option<String> {
    let trimmed = raw.strip_prefix('/').unwrap_or(raw);
    if trimmed.is_empty() {
        problems.push(format!(
            "id {raw:?} is empty: expected a name such as \"fib\" or \"/prod/fib\""
        ));
        return None;
    }
    if !trimmed.split('/').all(valid_segment) {
        problems.push(format!(
            "id {raw:?} is invalid: each /-separated part must be lowercase letters, digits, '-' or '.', starting and ending with a letter or digit"
        ));
        return None;
    }
    Some(format!("/{trimmed}"))
}

fn number(
    obj: &Map<String, Value>,
    key: &str,
    default: f64,
    min: f64,
    max: f64,
    problems: &mut Vec<String>,
) -> f64 {
    match obj.get(key) {
        None | Some(Value::Null) => default,
        Some(v) => match v.as_f64() {
            Some(n) if n.is_finite() && (min..=max).contains(&n) => n,
            _ => {
                problems.push(format!(
                    "{key} must be a number from {min} to {max}, got {}",
                    describe(v)
                ));
                default
            }
        },
    }
}

fn string_map(v: &Value, what: &str, problems: &mut Vec<String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(obj) = v.as_object() else {
        problems.push(format!(
            "{what} must be an object of strings, got {}",
            describe(v)
        ));
        return out;
    };
    for (k, val) in obj {
        match val.as_str() {
            Some(s) => {
                out.insert(k.clone(), s.to_string());
            }
            None => problems.push(format!(
                "{what}.{k} must be a string, got {}",
                describe(val)
            )),
        }
    }
    out
}

fn port_number(v: &Value, what: &str, problems: &mut Vec<String>) -> u16 {
    match v.as_u64().and_then(|n| u16::try_from(n).ok()) {
        Some(p) => p,
        None => {
            problems.push(format!(
                "{what} must be a port number from 0 to 65535, got {}",
                describe(v)
            ));
            0
        }
    }
}

fn port_definitions(obj: &Map<String, Value>, problems: &mut Vec<String>) -> Vec<PortDefinition> {
    let defs = obj.get("portDefinitions").filter(|v| !v.is_null());
    let ports = obj.get("ports").filter(|v| !v.is_null());
    let non_empty = |v: Option<&Value>| v.and_then(Value::as_array).is_some_and(|a| !a.is_empty());
    if non_empty(defs) && non_empty(ports) {
        problems.push("ports and portDefinitions are mutually exclusive: give one of them".into());
    }
    let mut out = Vec::new();
    if let Some(v) = defs {
        let Some(arr) = v.as_array() else {
            problems.push(format!(
                "portDefinitions must be a list, got {}",
                describe(v)
            ));
            return out;
        };
        for (i, d) in arr.iter().enumerate() {
            let what = format!("portDefinitions[{i}]");
            let Some(d) = d.as_object() else {
                problems.push(format!("{what} must be an object, got {}", describe(d)));
                continue;
            };
            let mut def = PortDefinition {
                port: 0,
                protocol: "tcp".into(),
                name: None,
                labels: BTreeMap::new(),
            };
            for (k, val) in d {
                match k.as_str() {
                    "port" => def.port = port_number(val, &format!("{what}.port"), problems),
                    "protocol" => match val.as_str() {
                        Some(p @ ("tcp" | "udp" | "udp,tcp" | "tcp,udp")) => {
                            def.protocol = p.into()
                        }
                        _ => problems.push(format!(
                            "{what}.protocol must be \"tcp\", \"udp\" or \"udp,tcp\", got {}",
                            describe(val)
                        )),
                    },
                    "name" => match val.as_str() {
                        Some(n) => def.name = Some(n.into()),
                        None => problems.push(format!(
                            "{what}.name must be a string, got {}",
                            describe(val)
                        )),
                    },
                    "labels" => def.labels = string_map(val, &format!("{what}.labels"), problems),
                    other => problems.push(format!(
                        "{what}: unknown field {other:?}, expected port, protocol, name or labels"
                    )),
                }
            }
            out.push(def);
        }
    } else if let Some(v) = ports {
        let Some(arr) = v.as_array() else {
            problems.push(format!(
                "ports must be a list of port numbers, got {}",
                describe(v)
            ));
            return out;
        };
        for (i, p) in arr.iter().enumerate() {
            out.push(PortDefinition {
                port: port_number(p, &format!("ports[{i}]"), problems),
                protocol: "tcp".into(),
                name: None,
                labels: BTreeMap::new(),
            });
        }
    } else {
        // Marathon's default: one dynamic port.
        out.push(PortDefinition {
            port: 0,
            protocol: "tcp".into(),
            name: None,
            labels: BTreeMap::new(),
        });
    }
    if out.len() > MAX_PORTS {
        problems.push(format!(
            "at most {MAX_PORTS} ports are supported, got {}",
            out.len()
        ));
    }
    let what = if defs.is_some() {
        "portDefinitions"
    } else {
        "ports"
    };
    // Marathon refuses the same port twice in one app: as a service port it would be
    // ambiguous, as a fixed host port (requirePorts) the second could never bind.
    let mut seen_ports: BTreeMap<u16, usize> = BTreeMap::new();
    let mut seen_names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, d) in out.iter().enumerate() {
        if d.port != 0 {
            if let Some(first) = seen_ports.insert(d.port, i) {
                problems.push(format!(
                    "{what}[{i}].port {} is also {what}[{first}].port: the ports of an app must differ",
                    d.port
                ));
            }
        }
        let Some(name) = &d.name else { continue };
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            problems.push(format!(
                "{what}[{i}].name {name:?} is invalid: expected 1 to 63 letters, digits, '-' or '_' (it names the variable PORT_<NAME>)"
            ));
            continue;
        }
        if let Some(first) = seen_names.insert(PortLabel::env_name(name), i) {
            problems.push(format!(
                "{what}[{i}].name {name:?} is also {what}[{first}]'s: port names of an app must differ (ignoring case, '-' and '_')"
            ));
        }
    }
    out
}

/// Parses Marathon `healthChecks`, with Marathon's defaults (grace 300 s, interval
/// 60 s, timeout 20 s, 3 failures), adding one problem per bad value.
/// With `port_count`, a `portIndex` naming no port of the app is a problem too.
pub fn parse_health_checks(
    v: &Value,
    port_count: Option<usize>,
    problems: &mut Vec<String>,
) -> Vec<HealthCheck> {
    let mut out = Vec::new();
    let Some(list) = v.as_array() else {
        problems.push(format!("healthChecks must be a list, got {}", describe(v)));
        return out;
    };
    for (i, c) in list.iter().enumerate() {
        let what = format!("healthChecks[{i}]");
        let Some(o) = c.as_object() else {
            problems.push(format!("{what} must be an object, got {}", describe(c)));
            continue;
        };
        let before = problems.len();
        for k in o.keys() {
            const KNOWN: &[&str] = &[
                "protocol",
                "path",
                "portIndex",
                "port",
                "command",
                "gracePeriodSeconds",
                "intervalSeconds",
                "timeoutSeconds",
                "maxConsecutiveFailures",
                "delaySeconds",
                "ignoreHttp1xx",
                "ipProtocol",
            ];
            if !KNOWN.contains(&k.as_str()) {
                problems.push(format!(
                    "{what}: unknown field {k:?}, expected one of {}",
                    KNOWN.join(", ")
                ));
            }
        }
        let protocol = match o.get("protocol") {
            None | Some(Value::Null) => "HTTP".to_string(),
            Some(p) => match p.as_str().map(str::to_ascii_uppercase) {
                Some(p)
                    if [
                        "HTTP",
                        "HTTPS",
                        "TCP",
                        "COMMAND",
                        "MESOS_HTTP",
                        "MESOS_HTTPS",
                        "MESOS_TCP",
                    ]
                    .contains(&p.as_str()) =>
                {
                    p
                }
                _ => {
                    problems.push(format!(
                        "{what}.protocol must be HTTP, TCP or COMMAND, got {}",
                        describe(p)
                    ));
                    String::new()
                }
            },
        };
        let command = match o.get("command") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(c) => match c.get("value").and_then(Value::as_str) {
                Some(s) => Some(s.to_string()),
                None => {
                    problems.push(format!(
                        "{what}.command must be {{\"value\": \"shell command\"}}, got {}",
                        describe(c)
                    ));
                    None
                }
            },
        };
        if protocol == "COMMAND" && command.is_none() {
            problems.push(format!(
                "{what}: a COMMAND health check needs command.value"
            ));
        }
        let path = match o.get("path") {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) => Some(p.clone()),
            Some(p) => {
                problems.push(format!("{what}.path must be a string, got {}", describe(p)));
                None
            }
        };
        let port_index = match o.get("portIndex") {
            None | Some(Value::Null) => 0,
            Some(p) => p
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .unwrap_or_else(|| {
                    problems.push(format!(
                        "{what}.portIndex must be a non-negative integer, got {}",
                        describe(p)
                    ));
                    0
                }),
        };
        let port = o
            .get("port")
            .filter(|p| !p.is_null())
            .map(|p| port_number(p, &format!("{what}.port"), problems));
        if let Some(n) = port_count.filter(|n| port.is_none() && usize::from(port_index) >= *n) {
            problems.push(format!(
                "{what}.portIndex {port_index} names no port: the app has {n} port(s)"
            ));
        }
        let grace = number(o, "gracePeriodSeconds", 300.0, 0.0, 86_400.0, problems);
        let interval = number(o, "intervalSeconds", 60.0, 0.01, 86_400.0, problems);
        let timeout = number(o, "timeoutSeconds", 20.0, 0.01, 86_400.0, problems);
        let max = number(o, "maxConsecutiveFailures", 3.0, 0.0, 1e6, problems);
        if problems.len() == before {
            out.push(HealthCheck {
                protocol,
                path,
                port_index,
                port,
                command,
                grace_period_seconds: grace,
                interval_seconds: interval,
                timeout_seconds: timeout,
                max_consecutive_failures: max as u32,
            });
        }
    }
    out
}

/// Validates a Marathon app definition, listing every problem at once in
/// `Error::InvalidApp`. `path_id` is the id from the URL of a `PUT` (the body's `id`
/// must then match it, or be absent).
pub fn parse_app(
    body: &Value,
    path_id: Option<&str>,
    version: chrono::DateTime<chrono::Utc>,
) -> Result<AppDef> {
    let mut problems = Vec::new();
    let Some(obj) = body.as_object() else {
        return Err(Error::InvalidApp(vec![format!(
            "an app definition must be a json object, got {}",
            describe(body)
        )]));
    };

    let mut unknown: Vec<&String> = obj
        .keys()
        .filter(|k| {
            !HANDLED_FIELDS.contains(&k.as_str())
                && !KEPT_FIELDS.contains(&k.as_str())
                && !READ_ONLY_FIELDS.contains(&k.as_str())
        })
        .collect();
    unknown.sort();
    for k in unknown {
        match suggestion(k) {
            Some(s) => problems.push(format!("unknown field {k:?} (did you mean {s:?}?)")),
            None => problems.push(format!("unknown field {k:?}: not a marathon app field")),
        }
    }

    let path_given = path_id.is_some();
    let path_id = path_id.and_then(|p| parse_id(p, &mut problems));
    let body_id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => parse_id(s, &mut problems),
        Some(v) => {
            problems.push(format!("id must be a string, got {}", describe(v)));
            None
        }
    };
    let id = match (path_id, body_id) {
        (Some(p), Some(b)) if p != b => {
            problems.push(format!("id {b:?} does not match the app {p:?} in the path"));
            None
        }
        (Some(p), _) => Some(p),
        (None, Some(b)) => Some(b),
        (None, None) => {
            // An invalid id was reported already; only a missing one is left to report.
            if !path_given && obj.get("id").is_none_or(Value::is_null) {
                problems.push("id is required: a name such as \"fib\" or \"/prod/fib\"".into());
            }
            None
        }
    };

    let cmd = match obj.get("cmd") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(v) => {
            problems.push(format!(
                "cmd must be a non-empty shell command, got {}",
                describe(v)
            ));
            None
        }
    };
    let args = match obj.get("args") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => Some(
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect::<Vec<_>>(),
        ),
        Some(v) => {
            problems.push(format!(
                "args must be a non-empty list of strings, got {}",
                describe(v)
            ));
            None
        }
    };
    let has = |k: &str| obj.get(k).is_some_and(|v| !v.is_null());
    // A Docker app may run its image's own command.
    let has_image = obj
        .get("container")
        .and_then(|c| c.get("docker"))
        .and_then(|d| d.get("image"))
        .is_some_and(|i| !i.is_null());
    if has("cmd") && has("args") {
        problems.push("cmd and args are mutually exclusive: give one of them".into());
    } else if !has("cmd") && !has("args") && !has_image {
        problems.push("cmd is required: the shell command that runs the app (or args)".into());
    }

    let instances = match obj.get("instances") {
        None | Some(Value::Null) => 1,
        Some(v) => match v.as_i64() {
            Some(n) if (0..=MAX_INSTANCES).contains(&n) => n as u32,
            Some(n) if n < 0 => {
                problems.push(format!("instances must be a non-negative integer, got {n}"));
                0
            }
            _ => {
                problems.push(format!(
                    "instances must be an integer from 0 to {MAX_INSTANCES}, got {}",
                    describe(v)
                ));
                0
            }
        },
    };

    let env = match obj.get("env") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(v) => {
            let env = string_map(v, "env", &mut problems);
            for k in env.keys() {
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    problems.push(format!(
                        "env name {k:?} is invalid: expected a name without '=' or NUL"
                    ));
                }
            }
            env
        }
    };

    let cpus = number(obj, "cpus", 0.1, 0.0, 1e6, &mut problems);
    let mem = number(obj, "mem", 128.0, 0.0, 1e12, &mut problems);
    let disk = number(obj, "disk", 0.0, 0.0, 1e12, &mut problems);
    let require_ports = match obj.get("requirePorts") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            problems.push(format!(
                "requirePorts must be true or false, got {}",
                describe(v)
            ));
            false
        }
    };
    let backoff_seconds = number(obj, "backoffSeconds", 1.0, 0.0, 86_400.0, &mut problems);
    let backoff_factor = number(obj, "backoffFactor", 1.15, 1.0, 1e6, &mut problems);
    let max_launch_delay_seconds = number(
        obj,
        "maxLaunchDelaySeconds",
        300.0,
        0.0,
        86_400.0,
        &mut problems,
    );
    let container = obj.get("container");
    let maps_ports = parse_container(container, obj.get("networks"), &mut Vec::new())
        .is_some_and(|c| c.maps_ports());
    let port_definitions = if maps_ports {
        // Marathon: with bridge or container networking the ports are the
        // container's portMappings, and portDefinitions must be left out.
        let non_empty = |k: &str| {
            obj.get(k)
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
        };
        if non_empty("portDefinitions") || non_empty("ports") {
            problems.push(
                "portDefinitions and ports are not allowed with bridge or container networking: declare the ports as the container's portMappings"
                    .into(),
            );
        }
        Vec::new()
    } else {
        port_definitions(obj, &mut problems)
    };
    let extra: BTreeMap<String, Value> = obj
        .iter()
        .filter(|(k, v)| KEPT_FIELDS.contains(&k.as_str()) && !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let parsed = Parsed::read(&extra, Some(port_definitions.len()), &mut problems);

    match id {
        Some(id) if problems.is_empty() => Ok(AppDef {
            id,
            cmd,
            args,
            instances,
            env,
            cpus,
            mem,
            disk,
            port_definitions,
            require_ports,
            backoff_seconds,
            backoff_factor,
            max_launch_delay_seconds,
            extra,
            version,
            version_info: None,
            parsed,
        }),
        _ => Err(Error::InvalidApp(problems)),
    }
}

/// Parses Marathon `constraints` (a list of `[field, OPERATOR, value?]`), adding one
/// problem per bad entry.
pub fn parse_constraints(v: &Value, problems: &mut Vec<String>) -> Vec<Constraint> {
    let mut out = Vec::new();
    let Some(list) = v.as_array() else {
        problems.push(format!(
            "constraints must be a list of [field, operator, value] lists, got {v}"
        ));
        return out;
    };
    for (i, c) in list.iter().enumerate() {
        let parts: Option<Vec<&str>> = c
            .as_array()
            .and_then(|a| a.iter().map(Value::as_str).collect());
        let Some(parts) = parts.filter(|p| (2..=3).contains(&p.len())) else {
            problems.push(format!(
                "constraints[{i}] must be a list of 2 or 3 strings [field, operator, value], got {c}"
            ));
            continue;
        };
        let (field, op, value) = (
            parts[0],
            parts[1].to_ascii_uppercase(),
            parts.get(2).copied(),
        );
        let text = parts.join(" ");
        let regex = |value: Option<&str>, problems: &mut Vec<String>| -> Option<regex::Regex> {
            let Some(v) = value else {
                problems.push(format!(
                    "constraints[{i}] ({text}): {op} needs a regular expression as its value"
                ));
                return None;
            };
            match regex::Regex::new(&format!("^(?:{v})$")) {
                Ok(r) => Some(r),
                Err(e) => {
                    problems.push(format!(
                        "constraints[{i}] ({text}): invalid regular expression {v:?}: {e}"
                    ));
                    None
                }
            }
        };
        let op = match op.as_str() {
            "UNIQUE" => Some(Operator::Unique),
            "CLUSTER" => Some(Operator::Cluster(value.unwrap_or("").to_string())),
            "GROUP_BY" => Some(Operator::GroupBy),
            "LIKE" => regex(value, problems).map(Operator::Like),
            "UNLIKE" => regex(value, problems).map(Operator::Unlike),
            "MAX_PER" => match value
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|n| *n > 0)
            {
                Some(n) => Some(Operator::MaxPer(n)),
                None => {
                    problems.push(format!(
                        "constraints[{i}] ({text}): MAX_PER needs a positive integer value"
                    ));
                    None
                }
            },
            _ => {
                problems.push(format!(
                    "constraints[{i}] ({text}): unknown operator {op:?}, expected UNIQUE, CLUSTER, GROUP_BY, LIKE, UNLIKE or MAX_PER"
                ));
                None
            }
        };
        if field.is_empty() {
            problems.push(format!(
                "constraints[{i}]: the field is empty, expected hostname or an agent attribute"
            ));
            continue;
        }
        if let Some(op) = op {
            out.push(Constraint {
                field: field.to_string(),
                op,
                text,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v() -> chrono::DateTime<chrono::Utc> {
        "2026-11-23T10:00:00Z".parse().unwrap()
    }

    fn problems(body: Value) -> Vec<String> {
        match parse_app(&body, None, v()) {
            Err(Error::InvalidApp(p)) => p,
            other => panic!("expected invalid app, got {other:?}"),
        }
    }

    #[test]
    fn a_minimal_app_gets_marathon_defaults() {
        let def = parse_app(&json!({"id": "fib", "cmd": "./fib"}), None, v()).unwrap();
        assert_eq!(def.id, "/fib");
        assert_eq!(def.instances, 1);
        assert_eq!((def.cpus, def.mem), (0.1, 128.0));
        assert_eq!(def.port_count(), 1);
        assert_eq!(
            (
                def.backoff_seconds,
                def.backoff_factor,
                def.max_launch_delay_seconds
            ),
            (1.0, 1.15, 300.0)
        );
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let p = problems(json!({
            "id": "Bad_Id",
            "instnces": 2,
            "instances": -1,
            "env": {"OK": "yes", "N": 3},
            "cpus": "lots",
        }));
        let all = p.join("\n");
        assert_eq!(p.len(), 6, "{all}");
        assert!(
            all.contains("unknown field \"instnces\" (did you mean \"instances\"?)"),
            "{all}"
        );
        assert!(all.contains("id \"Bad_Id\" is invalid"), "{all}");
        assert!(all.contains("cmd is required"), "{all}");
        assert!(
            all.contains("instances must be a non-negative integer, got -1"),
            "{all}"
        );
        assert!(all.contains("env.N must be a string, got 3"), "{all}");
        assert!(
            all.contains("cpus must be a number from 0 to 1000000, got \"lots\""),
            "{all}"
        );
    }

    #[test]
    fn cpus_problem_is_reported_too() {
        let p = problems(json!({"id": "x", "cmd": "true", "cpus": "lots", "mem": -5}));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].contains("cpus must be a number") && p[0].contains("\"lots\""),
            "{p:?}"
        );
        assert!(p[1].contains("mem must be a number"), "{p:?}");
    }

    #[test]
    fn empty_id_and_missing_id_are_reported() {
        assert!(problems(json!({"id": "", "cmd": "x"}))[0].contains("is empty"));
        assert!(problems(json!({"id": "/", "cmd": "x"}))[0].contains("is empty"));
        assert!(problems(json!({"cmd": "x"}))[0].contains("id is required"));
        assert!(problems(json!({"id": "/a//b", "cmd": "x"}))[0].contains("invalid"));
        assert!(problems(json!({"id": "../etc", "cmd": "x"}))[0].contains("invalid"));
    }

    #[test]
    fn health_checks_constraints_and_upgrade_strategy_are_validated() {
        let def = parse_app(
            &json!({"id": "a", "cmd": "x",
                    "healthChecks": [{"protocol": "COMMAND", "command": {"value": "true"}},
                                     {"protocol": "HTTP", "path": "/health", "intervalSeconds": 2}],
                    "constraints": [["rack", "GROUP_BY"]],
                    "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0}}),
            None,
            v(),
        )
        .unwrap();
        let checks = def.health_checks();
        assert_eq!(checks.len(), 2);
        assert_eq!(checks[0].command.as_deref(), Some("true"));
        assert_eq!(
            (checks[1].interval_seconds, checks[1].grace_period_seconds),
            (2.0, 300.0)
        );
        assert_eq!(def.upgrade_strategy(), (0.5, 0.0));
        assert_eq!(def.constraints().len(), 1);
        let p = problems(json!({"id": "a", "cmd": "x",
            "healthChecks": [{"protocol": "UDP"}, {"protocol": "COMMAND"}, {"portIndex": 3}, {"intervalSecs": 1}],
            "constraints": [["hostname", "NEAR"]],
            "upgradeStrategy": {"minimumHealthCapacity": 2}}));
        let all = p.join("\n");
        assert_eq!(p.len(), 6, "{all}");
        assert!(
            all.contains("healthChecks[0].protocol must be HTTP, TCP or COMMAND"),
            "{all}"
        );
        assert!(
            all.contains("healthChecks[1]: a COMMAND health check needs command.value"),
            "{all}"
        );
        assert!(
            all.contains("healthChecks[2].portIndex 3 names no port"),
            "{all}"
        );
        assert!(
            all.contains("healthChecks[3]: unknown field \"intervalSecs\""),
            "{all}"
        );
        assert!(all.contains("unknown operator \"NEAR\""), "{all}");
        assert!(
            all.contains("upgradeStrategy.minimumHealthCapacity must be a number from 0 to 1"),
            "{all}"
        );
    }

    #[test]
    fn known_marathon_fields_are_accepted_and_kept() {
        let def = parse_app(
            &json!({
                "id": "/prod/fib", "cmd": "x",
                "labels": {"team": "a"}, "healthChecks": [{"protocol": "HTTP"}],
                "constraints": [["hostname", "UNIQUE"]],
                "tasksRunning": 3, "version": "2020-01-01T00:00:00Z"
            }),
            None,
            v(),
        )
        .unwrap();
        assert_eq!(def.id, "/prod/fib");
        assert!(def.extra.contains_key("labels") && def.extra.contains_key("constraints"));
        assert!(
            !def.extra.contains_key("tasksRunning"),
            "read-only fields are dropped"
        );
        assert_eq!(def.version, v());
    }

    /// Marathon's `user` was kept and ignored (issue 15); it now reaches the node, so
    /// it must at least be a user name.
    #[test]
    fn user_is_kept_for_the_node_and_must_be_a_user_name() {
        let def = parse_app(&json!({"id": "a", "cmd": "x", "user": "nobody"}), None, v()).unwrap();
        assert_eq!(def.user().as_deref(), Some("nobody"));
        let def = parse_app(&json!({"id": "a", "cmd": "x"}), None, v()).unwrap();
        assert_eq!(def.user(), None);
        for bad in [json!(7), json!(""), json!("a/b"), json!(" x"), json!("a:b")] {
            let err = parse_app(&json!({"id": "a", "cmd": "x", "user": bad}), None, v())
                .unwrap_err()
                .to_string();
            assert!(err.contains("user must be a user name"), "{bad}: {err}");
        }
    }

    /// Marathon's docs' Docker example (issue 19): accepted as it is, its ports are
    /// the container's portMappings, and the node is told to run the image.
    #[test]
    fn a_docker_app_from_the_marathon_docs() {
        let body = json!({
            "id": "bridged-webapp", "cmd": "python3 -m http.server 8080",
            "cpus": 0.5, "mem": 64.0, "instances": 2,
            "container": {"type": "DOCKER", "docker": {"image": "python:3", "network": "BRIDGE",
                "portMappings": [{"containerPort": 8080, "hostPort": 0, "servicePort": 9000, "protocol": "tcp"},
                                 {"containerPort": 161, "hostPort": 0, "protocol": "udp"}]}},
            "healthChecks": [{"protocol": "HTTP", "portIndex": 1, "path": "/",
                              "gracePeriodSeconds": 5, "intervalSeconds": 20, "maxConsecutiveFailures": 3}],
            "taskKillGracePeriodSeconds": 7
        });
        let def = parse_app(&body, None, v()).unwrap();
        assert!(def.runs_image());
        assert!(def.port_definitions.is_empty());
        assert_eq!(def.port_count(), 2);
        assert_eq!(def.requested_ports(), vec![None, None]);
        assert_eq!(def.kill_grace_seconds(), Some(7.0));
        let spec = def.docker_spec().unwrap();
        assert_eq!(spec.image, "python:3");
        assert_eq!(spec.shell.as_deref(), Some("python3 -m http.server 8080"));
        assert_eq!(spec.port_mappings[0].container_port, 8080);
        // The definition survives the state file with its typed part.
        let back: AppDef = serde_json::from_str(&serde_json::to_string(&def).unwrap()).unwrap();
        assert_eq!(back.docker_spec(), def.docker_spec());
        assert_eq!(back.port_count(), 2);
        // No cmd: the image's own command. A fixed hostPort is a requested port.
        let def = parse_app(
            &json!({"id": "a", "container": {"docker": {"image": "demo:1"},
                     "portMappings": [{"containerPort": 80, "hostPort": 31080}]},
                    "networks": [{"mode": "container/bridge"}]}),
            None,
            v(),
        )
        .unwrap();
        assert_eq!(def.requested_ports(), vec![Some(31080)]);
        assert_eq!(def.docker_spec().unwrap().shell, None);
        // Process apps are unchanged: no docker spec, cmd still required.
        assert!(parse_app(&json!({"id": "a", "cmd": "x"}), None, v())
            .unwrap()
            .docker_spec()
            .is_none());
        let p = problems(json!({"id": "a", "container": {"type": "MESOS"}}));
        assert!(p.iter().any(|p| p.contains("cmd is required")), "{p:?}");
        let p = problems(json!({"id": "a", "portDefinitions": [{"port": 0}],
            "healthChecks": [{"protocol": "TCP", "portIndex": 2}],
            "taskKillGracePeriodSeconds": -1,
            "container": {"docker": {"image": "demo", "network": "BRIDGE",
                "portMappings": [{"containerPort": 80}]}}}));
        let all = p.join("\n");
        assert_eq!(p.len(), 3, "{all}");
        assert!(
            all.contains("portDefinitions and ports are not allowed with bridge"),
            "{all}"
        );
        assert!(
            all.contains("healthChecks[0].portIndex 2 names no port: the app has 1 port(s)"),
            "{all}"
        );
        assert!(
            all.contains("taskKillGracePeriodSeconds must be a number"),
            "{all}"
        );
    }

    #[test]
    fn ports_and_port_definitions() {
        let def = parse_app(
            &json!({"id": "a", "cmd": "x", "ports": [0, 0, 0]}),
            None,
            v(),
        )
        .unwrap();
        assert_eq!(def.port_count(), 3);
        let def = parse_app(
            &json!({"id": "a", "cmd": "x", "portDefinitions": [{"port": 0, "name": "http"}, {"port": 10001, "protocol": "udp"}]}),
            None,
            v(),
        )
        .unwrap();
        assert_eq!(def.port_count(), 2);
        let def = parse_app(
            &json!({"id": "a", "cmd": "x", "portDefinitions": []}),
            None,
            v(),
        )
        .unwrap();
        assert_eq!(def.port_count(), 0);
        let p = problems(
            json!({"id": "a", "cmd": "x", "ports": [1], "portDefinitions": [{"port": 70000, "prot": "tcp"}]}),
        );
        assert_eq!(p.len(), 3, "{p:?}");
    }

    #[test]
    fn cmd_and_args() {
        let def = parse_app(&json!({"id": "a", "args": ["echo", "hi there"]}), None, v()).unwrap();
        assert_eq!(def.command(), "echo 'hi there'");
        let p = problems(json!({"id": "a", "cmd": "x", "args": ["y"]}));
        assert!(p[0].contains("mutually exclusive"), "{p:?}");
    }

    #[test]
    fn path_id_must_match_body_id() {
        assert!(parse_app(&json!({"cmd": "x"}), Some("fib"), v()).is_ok());
        assert!(parse_app(&json!({"id": "/fib", "cmd": "x"}), Some("fib"), v()).is_ok());
        let err = parse_app(&json!({"id": "/other", "cmd": "x"}), Some("fib"), v()).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn non_object_body_is_invalid() {
        assert!(problems(json!([1, 2]))[0].contains("json object"));
    }

    #[test]
    fn args_are_quoted_for_the_shell() {
        let a = parse_app(
            &json!({"id": "x", "args": ["echo", "it's here", "$HOME"]}),
            None,
            v(),
        )
        .unwrap();
        assert_eq!(a.command(), r#"echo 'it'\''s here' '$HOME'"#);
    }

    #[test]
    fn the_typed_fields_survive_the_state_file_and_are_not_shown() {
        let def = parse_app(
            &json!({"id": "a", "cmd": "x", "user": "nobody", "killSelection": "OLDEST_FIRST",
                    "healthChecks": [{"protocol": "TCP"}], "constraints": [["hostname", "UNIQUE"]],
                    "upgradeStrategy": {"minimumHealthCapacity": 0.5}}),
            None,
            v(),
        )
        .unwrap();
        let shown = serde_json::to_value(&def).unwrap();
        let keys: Vec<&str> = shown
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "backoffFactor",
                "backoffSeconds",
                "cmd",
                "constraints",
                "cpus",
                "disk",
                "env",
                "healthChecks",
                "id",
                "instances",
                "killSelection",
                "maxLaunchDelaySeconds",
                "mem",
                "portDefinitions",
                "requirePorts",
                "upgradeStrategy",
                "user",
                "version"
            ],
            "the JSON shape Marathon clients read stays as it was"
        );
        let back: AppDef = serde_json::from_value(shown).unwrap();
        assert_eq!(back, def);
        assert_eq!(back.health_checks().len(), 1);
        assert_eq!(back.constraints().len(), 1);
        assert_eq!(back.upgrade_strategy(), (0.5, 1.0));
        assert_eq!(back.kill_selection(), KillSelection::OldestFirst);
        assert_eq!(back.user().as_deref(), Some("nobody"));
    }

    #[test]
    fn set_extra_re_reads_the_typed_fields() {
        let mut def = parse_app(&json!({"id": "a", "cmd": "x"}), None, v()).unwrap();
        assert!(def.health_checks().is_empty());
        def.set_extra("healthChecks", json!([{"protocol": "HTTP", "path": "/"}]));
        assert_eq!(def.health_checks()[0].path.as_deref(), Some("/"));
        def.set_extra("healthChecks", Value::Null);
        assert!(def.health_checks().is_empty() && !def.extra().contains_key("healthChecks"));
    }

    #[test]
    fn bad_constraints_are_all_reported() {
        let mut p = Vec::new();
        let v: Value = serde_json::from_str(
            r#"[["hostname", "UNIQUE"], ["a"], ["rack", "NEAR"], ["rack", "LIKE", "("], ["rack", "MAX_PER", "x"]]"#,
        )
        .unwrap();
        let out = parse_constraints(&v, &mut p);
        assert_eq!(out.len(), 1);
        assert_eq!(p.len(), 4, "{p:?}");
    }
}
