//! The Docker containerizer: runs a task whose app has a Docker `container` as a
//! container of the agent's Docker engine, talking to it over its Engine API on a
//! unix socket (`--docker unix:///var/run/docker.sock`).
//!
//! The API is spoken with hyper directly (already built for the router) rather than
//! through `bollard`: the node needs a dozen JSON calls and one hijacked stream, and
//! bollard's generated API types and extra HTTP stack would cost more to build than
//! the calls cost to write. The trade-off is that the request and answer shapes are
//! the Engine API's JSON, written here by hand (API version [`API_VERSION`], Docker
//! 20.10 and later).
//!
//! A container's output takes the same road as a process task's: a per-task logger
//! (see `logger`) writes and rotates `stdout`/`stderr` in the sandbox, and the
//! shipper ships them once with host, app, task and instance. What feeds the
//! logger's pipes is an attach pump: a small forked process (double fork, own
//! session, async-signal-safe calls only, like the logger) holding the container's
//! attach stream (`POST /containers/{id}/attach`, opened before the container
//! starts, so no line is missed) and copying its multiplexed frames into the two
//! pipes. Neither it nor the logger is the node's child, so both outlive an agent
//! restart and no line is read twice or skipped across one. An engine restart cuts
//! the stream; the node then follows the container's logs from its start and the
//! pump skips the bytes it counted already (see [`spawn_pump`]).
//!
//! Containers carry labels with their task (`sandtrail.task`, `sandtrail.app`,
//! `sandtrail.host`, `sandtrail.instance`): a restarted node adopts the running
//! ones by label, and reports and removes those that ended while it was down. A
//! container is removed as soon as its exit is recorded; its logs are in the
//! sandbox already.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use protocol::{DockerSpec, TaskSpec};
use serde_json::{json, Value};

use crate::{Error, Result};

/// The Engine API version the node speaks (Docker 20.10).
pub const API_VERSION: &str = "v1.41";
/// The standard socket, used by default when it exists.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Where the task's sandbox is mounted in its container, as Mesos mounts it.
pub const SANDBOX_MOUNT: &str = "/mnt/mesos/sandbox";
/// Labels a task's container carries.
pub const LABEL_TASK: &str = "sandtrail.task";
pub const LABEL_APP: &str = "sandtrail.app";
pub const LABEL_HOST: &str = "sandtrail.host";
pub const LABEL_INSTANCE: &str = "sandtrail.instance";
/// The app's `taskKillGracePeriodSeconds`, so that a node adopting the container
/// after a restart stops it with the app's grace rather than its default.
pub const LABEL_KILL_GRACE: &str = "sandtrail.kill-grace-seconds";
/// Longest an ordinary API call may take (a pull or a wait has none).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer body read from the engine.
const MAX_ANSWER: usize = 16 << 20;

/// A Docker engine reached on a unix socket.
#[derive(Debug, Clone)]
pub struct Docker {
    socket: PathBuf,
}

/// A container as [`Docker::inspect`] sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerState {
    pub id: String,
    pub running: bool,
    pub pid: u32,
    pub exit_code: i64,
    pub oom_killed: bool,
    pub error: String,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub labels: std::collections::BTreeMap<String, String>,
    /// `HostConfig.Memory` in bytes (0: unlimited).
    pub memory: u64,
}

impl Docker {
    /// `unix:///path/to.sock` or a plain path; other schemes are refused.
    pub fn new(url: &str) -> Result<Docker> {
        let path = match url.strip_prefix("unix://") {
            Some(p) => p,
            None if url.starts_with('/') => url,
            None => {
                return Err(Error::Docker(format!(
                    "docker endpoint {url:?} is not supported: expected unix:///path/to/docker.sock"
                )))
            }
        };
        if path.is_empty() {
            return Err(Error::Docker(format!(
                "docker endpoint {url:?} names no socket: expected unix:///path/to/docker.sock"
            )));
        }
        Ok(Docker {
            socket: PathBuf::from(path),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// One API call; `timeout` `None` waits as long as the engine takes.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<(StatusCode, Bytes)> {
        let what = format!("{method} {path}");
        let fut = async {
            let stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|e| {
                    Error::Docker(format!(
                        "cannot reach the docker engine at {}: {e}",
                        self.socket.display()
                    ))
                })?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| Error::Docker(format!("{what}: {e}")))?;
            tokio::spawn(conn);
            let body = match body {
                Some(b) => Body::from(serde_json::to_vec(b)?),
                None => Body::empty(),
            };
            let req = hyper::Request::builder()
                .method(method.clone())
                .uri(format!("/{API_VERSION}{path}"))
                .header(hyper::header::HOST, "docker")
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(body)
                .map_err(|e| Error::Docker(format!("{what}: {e}")))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| Error::Docker(format!("{what}: {e}")))?;
            let status = resp.status();
            let bytes = axum::body::to_bytes(Body::new(resp.into_body()), MAX_ANSWER)
                .await
                .map_err(|e| Error::Docker(format!("{what}: reading the answer: {e}")))?;
            Ok((status, bytes))
        };
        match timeout {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .map_err(|_| Error::Docker(format!("{what}: no answer within {t:?}")))?,
            None => fut.await,
        }
    }

    /// A call that must succeed, its JSON answer (`Null` when it has none).
    async fn json(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let (status, bytes) = self
            .call(method.clone(), path, body, Some(CALL_TIMEOUT))
            .await?;
        if !status.is_success() {
            return Err(Error::Docker(format!(
                "{method} {path}: {}",
                engine_message(status, &bytes)
            )));
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Whether the engine answers at all.
    pub async fn ping(&self) -> Result<()> {
        let (status, bytes) = self
            .call(Method::GET, "/_ping", None, Some(Duration::from_secs(5)))
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(Error::Docker(engine_message(status, &bytes)))
        }
    }

    pub async fn image_present(&self, image: &str) -> Result<bool> {
        let path = format!("/images/{}/json", encode(image));
        let (status, bytes) = self
            .call(Method::GET, &path, None, Some(CALL_TIMEOUT))
            .await?;
        match status {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(Error::Docker(format!(
                "inspecting image {image:?}: {}",
                engine_message(s, &bytes)
            ))),
        }
    }

    /// Pulls `image` from its registry. The engine answers 200 and then streams
    /// progress, so a failure may only show as an `error` in that stream.
    pub async fn pull(&self, image: &str) -> Result<()> {
        let (name, tag) = split_tag(image);
        let mut path = format!("/images/create?fromImage={}", encode(name));
        if let Some(tag) = tag {
            path.push_str(&format!("&tag={}", encode(tag)));
        }
        let (status, bytes) = self.call(Method::POST, &path, None, None).await?;
        if !status.is_success() {
            return Err(Error::Docker(engine_message(status, &bytes)));
        }
        for line in bytes.split(|b| *b == b'\n') {
            if let Ok(v) = serde_json::from_slice::<Value>(line) {
                if let Some(e) = v.get("error").and_then(Value::as_str) {
                    return Err(Error::Docker(e.to_string()));
                }
            }
        }
        Ok(())
    }

    /// Creates a container named `name`; returns its id.
    pub async fn create(&self, name: &str, body: &Value) -> Result<String> {
        let v = self
            .json(
                Method::POST,
                &format!("/containers/create?name={}", encode(name)),
                Some(body),
            )
            .await?;
        v.get("Id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| Error::Docker(format!("creating container {name}: no Id in {v}")))
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        self.json(Method::POST, &format!("/containers/{id}/start"), None)
            .await
            .map(drop)
    }

    /// Waits for the container to stop (no timeout).
    pub async fn wait(&self, id: &str) -> Result<()> {
        let path = format!("/containers/{id}/wait?condition=not-running");
        let (status, bytes) = self.call(Method::POST, &path, None, None).await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(Error::Docker(engine_message(status, &bytes)))
        }
    }

    /// Stops with SIGTERM, SIGKILL after `grace` (the engine does both).
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        let t = grace.as_secs_f64().ceil() as u64;
        let path = format!("/containers/{id}/stop?t={t}");
        let (status, bytes) = self
            .call(
                Method::POST,
                &path,
                None,
                Some(grace + Duration::from_secs(30)),
            )
            .await?;
        // 304: already stopped; 404: already gone.
        if status.is_success()
            || status == StatusCode::NOT_MODIFIED
            || status == StatusCode::NOT_FOUND
        {
            Ok(())
        } else {
            Err(Error::Docker(engine_message(status, &bytes)))
        }
    }

    /// Removes the container (killing it if it still runs); gone already is fine.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let path = format!("/containers/{id}?force=true&v=true");
        let (status, bytes) = self
            .call(Method::DELETE, &path, None, Some(CALL_TIMEOUT))
            .await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(Error::Docker(engine_message(status, &bytes)))
        }
    }

    /// `None` when no such container exists.
    pub async fn inspect(&self, id: &str) -> Result<Option<ContainerState>> {
        let path = format!("/containers/{}/json", encode(id));
        let (status, bytes) = self
            .call(Method::GET, &path, None, Some(CALL_TIMEOUT))
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(Error::Docker(engine_message(status, &bytes)));
        }
        let v: Value = serde_json::from_slice(&bytes)?;
        Ok(Some(container_state(&v)))
    }

    /// The IPv4 gateway of the engine's default `bridge` network (the host's address
    /// on it, `172.17.0.1` usually): what a bridged container reaches the host at.
    pub async fn bridge_gateway(&self) -> Result<std::net::IpAddr> {
        let v = self.json(Method::GET, "/networks/bridge", None).await?;
        bridge_gateway(&v["IPAM"]).ok_or_else(|| {
            Error::Docker(format!(
                "the bridge network has no IPv4 gateway: expected one in {}",
                v["IPAM"]
            ))
        })
    }

    /// The ids of every container (running or not) carrying `label=value`.
    pub async fn list_labelled(&self, label: &str, value: &str) -> Result<Vec<String>> {
        let filters = json!({"label": [format!("{label}={value}")]}).to_string();
        let v = self
            .json(
                Method::GET,
                &format!("/containers/json?all=true&filters={}", encode(&filters)),
                None,
            )
            .await?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.get("Id").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Runs `sh -c cmd` in the running container with `env`, as a COMMAND health
    /// check: `Ok` on exit code 0, `Err` with the cause otherwise.
    pub async fn exec(
        &self,
        id: &str,
        cmd: &str,
        env: &[(String, String)],
        timeout: Duration,
    ) -> std::result::Result<(), String> {
        let run = async {
            let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let created = self
                .json(
                    Method::POST,
                    &format!("/containers/{id}/exec"),
                    Some(&json!({"Cmd": ["/bin/sh", "-c", cmd], "Env": env,
                                 "AttachStdout": false, "AttachStderr": false})),
                )
                .await
                .map_err(|e| e.to_string())?;
            let exec = created
                .get("Id")
                .and_then(Value::as_str)
                .ok_or("the engine gave the exec no id")?
                .to_string();
            self.json(
                Method::POST,
                &format!("/exec/{exec}/start"),
                Some(&json!({"Detach": true})),
            )
            .await
            .map_err(|e| e.to_string())?;
            loop {
                let v = self
                    .json(Method::GET, &format!("/exec/{exec}/json"), None)
                    .await
                    .map_err(|e| e.to_string())?;
                if v.get("Running").and_then(Value::as_bool) == Some(false) {
                    return match v.get("ExitCode").and_then(Value::as_i64) {
                        Some(0) => Ok(()),
                        Some(c) => Err(format!("{cmd:?} exited with code {c} in the container")),
                        None => Err(format!("{cmd:?}: no exit code from the engine")),
                    };
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "{cmd:?} timed out after {timeout:?} in the container"
            )),
        }
    }

    /// Opens the container's attach stream (stdout and stderr, multiplexed) and
    /// returns the socket once the engine has switched it to the raw stream.
    /// Blocking: run off the async runtime.
    pub fn attach_blocking(&self, id: &str) -> Result<std::os::unix::net::UnixStream> {
        self.raw_stream_blocking(
            id,
            &format!(
                "POST /{API_VERSION}/containers/{id}/attach?stream=1&stdout=1&stderr=1 HTTP/1.1\r\n\
                 Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n"
            ),
        )
    }

    /// The container's whole output since it started, then what it writes until it
    /// stops: `GET /containers/{id}/logs?follow=1`, the same multiplexed frames as
    /// the attach stream. Asked in HTTP/1.0 so that the engine sends the frames raw
    /// (no chunked encoding) and ends the stream by closing. Blocking.
    pub fn follow_logs_blocking(&self, id: &str) -> Result<std::os::unix::net::UnixStream> {
        self.raw_stream_blocking(
            id,
            &format!(
                "GET /{API_VERSION}/containers/{id}/logs?follow=1&stdout=1&stderr=1 HTTP/1.0\r\n\
                 Host: docker\r\n\r\n"
            ),
        )
    }

    /// Sends `request` on a new connection and returns the socket after the answer's
    /// headers, read byte by byte so that no byte of the stream is taken from the pump.
    fn raw_stream_blocking(
        &self,
        id: &str,
        request: &str,
    ) -> Result<std::os::unix::net::UnixStream> {
        use std::io::{Read, Write};
        let err = |e: std::io::Error| {
            Error::Docker(format!(
                "attaching to container {id} on {}: {e}",
                self.socket.display()
            ))
        };
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket).map_err(err)?;
        s.set_read_timeout(Some(CALL_TIMEOUT)).map_err(err)?;
        s.write_all(request.as_bytes()).map_err(err)?;
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 16 * 1024 {
                return Err(Error::Docker(format!(
                    "attaching to container {id}: answer headers too long"
                )));
            }
            match s.read(&mut b).map_err(err)? {
                0 => {
                    return Err(Error::Docker(format!(
                        "attaching to container {id}: the engine closed the connection"
                    )))
                }
                _ => head.push(b[0]),
            }
        }
        let head = String::from_utf8_lossy(&head);
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status != "101" && status != "200" {
            return Err(Error::Docker(format!(
                "attaching to container {id}: {}",
                head.lines().next().unwrap_or("")
            )));
        }
        s.set_read_timeout(None).map_err(err)?;
        Ok(s)
    }
}

/// The IPv4 gateway in a network's `IPAM`: its `Gateway`, else the first address
/// of its `Subnet`, which the engine gives the bridge when none is configured (its
/// IPAM then lists the subnet alone).
fn bridge_gateway(ipam: &Value) -> Option<std::net::IpAddr> {
    let configs = ipam["Config"].as_array()?;
    let explicit = configs
        .iter()
        .filter_map(|c| c["Gateway"].as_str()?.parse::<std::net::Ipv4Addr>().ok())
        .next();
    let first_of_subnet = || {
        configs.iter().find_map(|c| {
            let (net, len) = c["Subnet"].as_str()?.split_once('/')?;
            let net: std::net::Ipv4Addr = net.parse().ok()?;
            let len: u32 = len.parse().ok().filter(|l| *l <= 30)?;
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            Some(std::net::Ipv4Addr::from((u32::from(net) & mask) + 1))
        })
    };
    explicit.or_else(first_of_subnet).map(std::net::IpAddr::V4)
}

/// The engine's `{"message": ...}` of a failed call, else its status.
fn engine_message(status: StatusCode, body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| format!("the engine answered {status}"))
}

fn container_state(v: &Value) -> ContainerState {
    let st = &v["State"];
    ContainerState {
        id: v["Id"].as_str().unwrap_or_default().to_string(),
        running: st["Running"].as_bool().unwrap_or(false),
        pid: st["Pid"].as_u64().unwrap_or(0) as u32,
        exit_code: st["ExitCode"].as_i64().unwrap_or(0),
        oom_killed: st["OOMKilled"].as_bool().unwrap_or(false),
        error: st["Error"].as_str().unwrap_or_default().to_string(),
        started_at: st["StartedAt"].as_str().and_then(|s| s.parse().ok()),
        labels: v["Config"]["Labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
        memory: v["HostConfig"]["Memory"].as_u64().unwrap_or(0),
    }
}

/// Percent-encodes a query or path value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `name[:tag]` with the tag apart (a registry port is not a tag; a digest stays).
fn split_tag(image: &str) -> (&str, Option<&str>) {
    if image.contains('@') {
        return (image, None);
    }
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => (&image[..i], Some(&image[i + 1..])),
        _ => (image, None),
    }
}

/// The container name of a task on a host: unique per launch like the task id.
pub fn container_name(host: &str, task: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("sandtrail-{}-{}", clean(host), clean(task))
}

/// What the node knows about one launch, for [`create_body`].
pub struct Launch<'a> {
    pub spec: &'a TaskSpec,
    pub docker: &'a DockerSpec,
    pub host: &'a str,
    /// Where published ports are bound on the host (the agent's address).
    pub address: &'a str,
    pub ports: &'a [u16],
    pub sandbox: &'a Path,
    /// The container's whole environment.
    pub env: &'a [(String, String)],
}

/// The body of `POST /containers/create` for a task: command, env, labels, the
/// sandbox mounted at [`SANDBOX_MOUNT`], the app's `mem` and `cpus` as limits, its
/// network and published ports, volumes and `docker.parameters`.
pub fn create_body(l: &Launch<'_>) -> Value {
    let d = l.docker;
    let spec = l.spec;
    let mut labels = serde_json::Map::new();
    labels.insert(LABEL_TASK.into(), spec.task.clone().into());
    labels.insert(LABEL_APP.into(), spec.app.clone().into());
    labels.insert(LABEL_HOST.into(), l.host.into());
    labels.insert(LABEL_INSTANCE.into(), spec.instance.to_string().into());
    if let Some(g) = spec
        .kill_grace_seconds
        .filter(|g| g.is_finite() && *g >= 0.0)
    {
        labels.insert(LABEL_KILL_GRACE.into(), g.to_string().into());
    }
    let mut env: Vec<String> = l.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut config = serde_json::Map::new();
    config.insert("Image".into(), d.image.clone().into());
    match (&d.shell, &d.args) {
        // Mesos runs a Docker app's `cmd` with a shell, in place of the entrypoint.
        (Some(cmd), _) => {
            config.insert("Entrypoint".into(), json!(["/bin/sh", "-c"]));
            config.insert("Cmd".into(), json!([cmd]));
        }
        (None, Some(args)) => {
            config.insert("Cmd".into(), json!(args));
        }
        (None, None) => {}
    }
    config.insert("AttachStdout".into(), true.into());
    config.insert("AttachStderr".into(), true.into());
    config.insert("Tty".into(), false.into());
    config.insert("OpenStdin".into(), false.into());
    config.insert("WorkingDir".into(), SANDBOX_MOUNT.into());
    if let Some(u) = &spec.user {
        config.insert("User".into(), u.clone().into());
    }
    let mut host = serde_json::Map::new();
    let mut binds = vec![format!("{}:{SANDBOX_MOUNT}", l.sandbox.display())];
    binds.extend(d.volumes.iter().map(|v| {
        format!(
            "{}:{}:{}",
            v.host_path,
            v.container_path,
            if v.read_only { "ro" } else { "rw" }
        )
    }));
    host.insert("Binds".into(), json!(binds));
    if let Some(mem) = spec.mem.filter(|m| *m > 0.0) {
        let bytes = (mem * 1024.0 * 1024.0) as u64;
        // Docker's floor is 6 MiB; below it the create call would fail.
        let bytes = bytes.max(6 << 20);
        host.insert("Memory".into(), bytes.into());
        // No swap on top: `mem` is the whole of it, so exceeding it is an OOM kill.
        host.insert("MemorySwap".into(), bytes.into());
    }
    if let Some(cpus) = spec.cpus.filter(|c| *c > 0.0) {
        host.insert("CpuShares".into(), ((cpus * 1024.0) as u64).max(2).into());
        host.insert("NanoCpus".into(), ((cpus.max(0.01) * 1e9) as u64).into());
    }
    host.insert("Privileged".into(), d.privileged.into());
    let network = d.network.as_str();
    host.insert("NetworkMode".into(), network.into());
    if network != "host" && network != "none" {
        let mut exposed = serde_json::Map::new();
        let mut bindings = serde_json::Map::new();
        for (i, m) in d.port_mappings.iter().enumerate() {
            let Some(&host_port) = l.ports.get(i) else {
                continue;
            };
            let inner = if m.container_port == 0 {
                host_port
            } else {
                m.container_port
            };
            for proto in m.protocol.split(',') {
                let key = format!("{inner}/{}", proto.trim());
                exposed.insert(key.clone(), json!({}));
                bindings.insert(
                    key,
                    json!([{"HostIp": l.address, "HostPort": host_port.to_string()}]),
                );
            }
        }
        config.insert("ExposedPorts".into(), Value::Object(exposed));
        host.insert("PortBindings".into(), Value::Object(bindings));
    }
    for (k, v) in &d.parameters {
        let mut push = |key: &str, value: Value| match host.get_mut(key) {
            Some(Value::Array(a)) => a.push(value),
            _ => {
                host.insert(key.into(), json!([value]));
            }
        };
        match k.as_str() {
            "add-host" => push("ExtraHosts", v.clone().into()),
            "cap-add" => push("CapAdd", v.clone().into()),
            "cap-drop" => push("CapDrop", v.clone().into()),
            "dns" => push("Dns", v.clone().into()),
            "security-opt" => push("SecurityOpt", v.clone().into()),
            "ulimit" => {
                // name=soft[:hard]
                if let Some((name, limits)) = v.split_once('=') {
                    let (soft, hard) = limits.split_once(':').unwrap_or((limits, limits));
                    if let (Ok(s), Ok(h)) = (soft.parse::<i64>(), hard.parse::<i64>()) {
                        push("Ulimits", json!({"Name": name, "Soft": s, "Hard": h}));
                    }
                }
            }
            "shm-size" => {
                if let Some(b) = parse_size(v) {
                    host.insert("ShmSize".into(), b.into());
                }
            }
            "memory-swap" => {
                if let Some(b) = parse_size(v) {
                    host.insert("MemorySwap".into(), b.into());
                }
            }
            "init" => {
                host.insert("Init".into(), (v != "false").into());
            }
            "read-only" => {
                host.insert("ReadonlyRootfs".into(), (v != "false").into());
            }
            "label" => {
                let (lk, lv) = v.split_once('=').unwrap_or((v, ""));
                // The task labels are the node's: a parameter cannot forge them.
                if !lk.starts_with("sandtrail.") {
                    labels.insert(lk.into(), lv.into());
                }
            }
            "env" => env.push(v.clone()),
            "hostname" => {
                config.insert("Hostname".into(), v.clone().into());
            }
            "user" => {
                config.insert("User".into(), v.clone().into());
            }
            "workdir" => {
                config.insert("WorkingDir".into(), v.clone().into());
            }
            "entrypoint" => {
                config.insert("Entrypoint".into(), json!([v]));
            }
            _ => {}
        }
    }
    config.insert("Env".into(), json!(env));
    config.insert("Labels".into(), Value::Object(labels));
    config.insert("HostConfig".into(), Value::Object(host));
    Value::Object(config)
}

/// `64m`, `1g`, `512k` or plain bytes.
fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim().to_ascii_lowercase();
    let v = v.strip_suffix('b').unwrap_or(&v);
    let (num, mult) = match v.chars().last()? {
        'k' => (&v[..v.len() - 1], 1u64 << 10),
        'm' => (&v[..v.len() - 1], 1 << 20),
        'g' => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    num.parse::<u64>().ok().map(|n| n * mult)
}

/// Starts the attach pump: a process of its own (double fork, new session) that
/// copies the container's multiplexed stream on `stream` into `out` (stdout frames)
/// and `err` (stderr frames), the logger's pipes, until the stream ends (the
/// container stopped). Returns its pid. Blocking (fork and wait for the
/// intermediate child).
///
/// `offsets` is a file where the pump keeps how many bytes of each stream it has
/// seen (two native-endian u64s, stdout's then stderr's, rewritten after each
/// frame); it skips the first `skip` bytes of each stream, so that a stream that
/// replays the container's output from its start ([`Docker::follow_logs_blocking`])
/// resumes exactly where a cut one ended, with no line twice.
pub fn spawn_pump(
    stream: std::os::unix::net::UnixStream,
    out: OwnedFd,
    err: OwnedFd,
    offsets: OwnedFd,
    skip: [u64; 2],
) -> Result<u32> {
    let fds = [
        stream.as_raw_fd(),
        out.as_raw_fd(),
        err.as_raw_fd(),
        offsets.as_raw_fd(),
    ];
    let mut buf = vec![0u8; 64 * 1024];
    let (pid_r, pid_w) = pipe_pair().map_err(|e| Error::io("attach pump", e))?;
    let pid_w_fd = pid_w.as_raw_fd();
    // SAFETY: after fork the children only run raw syscalls on memory allocated
    // before the fork (`buf`, `fds`), and never return.
    match unsafe { libc::fork() } {
        -1 => return Err(Error::io("attach pump", std::io::Error::last_os_error())),
        0 => unsafe {
            libc::setsid();
            // Not dumpable: it is a copy of the agent's memory.
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
            let pid = libc::fork();
            if pid == 0 {
                pump_child(fds, skip, &mut buf);
            }
            let bytes = pid.to_ne_bytes();
            libc::write(pid_w_fd, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(0)
        },
        child => {
            let mut status = 0;
            // SAFETY: waits for the intermediate child forked just above.
            unsafe { libc::waitpid(child, &mut status, 0) };
        }
    }
    drop(pid_w);
    let mut bytes = [0u8; 4];
    let n = unsafe { libc::read(pid_r.as_raw_fd(), bytes.as_mut_ptr().cast(), 4) };
    if n != 4 {
        return Err(Error::io(
            "attach pump",
            std::io::Error::other("the pump's pid did not arrive"),
        ));
    }
    let pid = i32::from_ne_bytes(bytes);
    if pid <= 0 {
        return Err(Error::io(
            "attach pump",
            std::io::Error::other("the pump could not be forked"),
        ));
    }
    drop((stream, out, err, offsets));
    Ok(pid as u32)
}

fn pipe_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads exactly `buf.len()` bytes; false at end of stream or on an error.
unsafe fn read_full(fd: i32, buf: &mut [u8]) -> bool {
    let mut got = 0;
    while got < buf.len() {
        let n = libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got);
        if n < 0 && *libc::__errno_location() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            return false;
        }
        got += n as usize;
    }
    true
}

/// Writes all of `data`; false when the reader is gone.
unsafe fn write_all(fd: i32, data: &[u8]) -> bool {
    let mut done = 0;
    while done < data.len() {
        let n = libc::write(fd, data[done..].as_ptr().cast(), data.len() - done);
        if n < 0 && *libc::__errno_location() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            return false;
        }
        done += n as usize;
    }
    true
}

/// The pump's whole life: frames of `[stream, 0, 0, 0, size (u32 BE)]` then `size`
/// bytes, stream 1 to stdout and 2 to stderr, less the first `skip` bytes of each;
/// the bytes seen per stream go to the offsets file after each frame. Never returns.
///
/// # Safety
/// Only call in a freshly forked child.
unsafe fn pump_child(fds: [i32; 4], skip: [u64; 2], buf: &mut [u8]) -> ! {
    for fd in 0..4096 {
        if !fds.contains(&fd) {
            libc::close(fd);
        }
    }
    // A logger gone (it never is before the stream ends) must not kill the pump by
    // SIGPIPE mid-frame; the write error ends it instead.
    libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    let [sock, out, err, offsets] = fds;
    let mut seen = [0u64; 2];
    let mut header = [0u8; 8];
    while read_full(sock, &mut header) {
        let size = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        // stdin frames (0) are never sent: stdin is not attached.
        let (k, target) = match header[0] {
            2 => (1, err),
            _ => (0, out),
        };
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len());
            if !read_full(sock, &mut buf[..n]) {
                libc::_exit(0);
            }
            // The part of this chunk past what an earlier pump already delivered.
            let new_from = skip[k].saturating_sub(seen[k]).min(n as u64) as usize;
            if new_from < n && !write_all(target, &buf[new_from..n]) {
                libc::_exit(1);
            }
            seen[k] += n as u64;
            left -= n;
        }
        let mut record = [0u8; 16];
        record[..8].copy_from_slice(&seen[0].to_ne_bytes());
        record[8..].copy_from_slice(&seen[1].to_ne_bytes());
        libc::pwrite(offsets, record.as_ptr().cast(), record.len(), 0);
    }
    libc::_exit(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_names() {
        assert_eq!(
            Docker::new("unix:///var/run/docker.sock").unwrap().socket(),
            Path::new("/var/run/docker.sock")
        );
        assert!(Docker::new("tcp://1.2.3.4:2375").is_err());
        assert_eq!(split_tag("a/b:1"), ("a/b", Some("1")));
        assert_eq!(split_tag("reg:5000/b"), ("reg:5000/b", None));
        assert_eq!(
            container_name("node-1", "prod_web.1234"),
            "sandtrail-node-1-prod_web.1234"
        );
        assert_eq!(parse_size("64m"), Some(64 << 20));
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn the_bridge_gateway_is_the_configured_one_else_the_subnets_first_address() {
        let gw = |v: Value| bridge_gateway(&v).map(|ip| ip.to_string());
        assert_eq!(
            gw(json!({"Config": [{"Subnet": "172.18.0.0/16", "Gateway": "172.18.0.254"}]})),
            Some("172.18.0.254".into())
        );
        // Docker 20.10's default bridge lists its subnet alone.
        assert_eq!(
            gw(json!({"Config": [{"Subnet": "172.17.0.0/16"}], "Driver": "default"})),
            Some("172.17.0.1".into())
        );
        assert_eq!(
            gw(json!({"Config": [{"Subnet": "fd00::/64"}, {"Subnet": "10.9.8.0/24"}]})),
            Some("10.9.8.1".into())
        );
        assert_eq!(gw(json!({"Config": []})), None);
        assert_eq!(gw(json!({"Config": [{"Subnet": "junk"}]})), None);
        assert_eq!(gw(json!({})), None);
    }

    #[test]
    fn the_create_body_carries_limits_ports_labels_and_the_sandbox() {
        let docker = DockerSpec {
            image: "demo:1".into(),
            network: "bridge".into(),
            port_mappings: vec![
                protocol::DockerPortMapping {
                    container_port: 8080,
                    protocol: "tcp".into(),
                },
                protocol::DockerPortMapping {
                    container_port: 0,
                    protocol: "udp,tcp".into(),
                },
            ],
            shell: Some("serve --port 8080".into()),
            parameters: vec![
                ("label".into(), "team=a".into()),
                ("label".into(), "sandtrail.task=forged".into()),
                ("cap-drop".into(), "ALL".into()),
            ],
            ..DockerSpec::default()
        };
        let spec = TaskSpec {
            app: "web".into(),
            task: "web.1".into(),
            instance: 2,
            mem: Some(64.0),
            kill_grace_seconds: Some(2.5),
            cpus: Some(0.5),
            user: Some("nobody".into()),
            ..TaskSpec::default()
        };
        let env = vec![("PORT0".to_string(), "31000".to_string())];
        let body = create_body(&Launch {
            spec: &spec,
            docker: &docker,
            host: "node-1",
            address: "127.0.0.1",
            ports: &[31000, 31001],
            sandbox: Path::new("/sb/web/web.1"),
            env: &env,
        });
        assert_eq!(body["Image"], "demo:1");
        assert_eq!(body["Entrypoint"], json!(["/bin/sh", "-c"]));
        assert_eq!(body["Cmd"], json!(["serve --port 8080"]));
        assert_eq!(body["User"], "nobody");
        assert_eq!(body["Env"], json!(["PORT0=31000"]));
        assert_eq!(body["Labels"][LABEL_TASK], "web.1");
        assert_eq!(body["Labels"][LABEL_INSTANCE], "2");
        assert_eq!(body["Labels"][LABEL_KILL_GRACE], "2.5");
        assert_eq!(body["Labels"]["team"], "a");
        let h = &body["HostConfig"];
        assert_eq!(h["Memory"], 64u64 << 20);
        assert_eq!(h["MemorySwap"], 64u64 << 20);
        assert_eq!(h["NanoCpus"], 500_000_000u64);
        assert_eq!(h["Binds"], json!(["/sb/web/web.1:/mnt/mesos/sandbox"]));
        assert_eq!(h["CapDrop"], json!(["ALL"]));
        assert_eq!(
            h["PortBindings"]["8080/tcp"],
            json!([{"HostIp": "127.0.0.1", "HostPort": "31000"}])
        );
        // containerPort 0: the host port's number inside too, per protocol.
        assert_eq!(h["PortBindings"]["31001/udp"][0]["HostPort"], "31001");
        assert_eq!(h["PortBindings"]["31001/tcp"][0]["HostPort"], "31001");
    }
}
