//! Mesos-DNS end to end: the real binary's `sandtrail scheduler --dns-listen` and one
//! `sandtrail agent`, an app of 3 instances deployed, scaled to 5 and one task killed,
//! and after each change the SRV set asked of the DNS listener by two real DNS
//! clients (`hickory-resolver` over UDP, and `dig` over UDP and TCP) must equal the
//! running tasks' host ports within one second of the scheduler's API showing the
//! change; the Mesos-DNS HTTP API must answer the same set.
//!
//! The demo app finds its peers by SRV lookups there (`FIB_DNS`) with no router.
//!
//! `dig` comes from Debian's `dnsutils`, which `scripts/test-deps.sh` installs.

mod common;
use anyhow::{bail, Context};
use common::{dig, Proc};
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

const TOKEN: &str = "dns-suite-token";
const SRV: &str = "_fib._tcp.marathon.mesos.";

/// How soon after the API shows a change the DNS answer must show it (issue 18).
const FOLLOW_WITHIN: Duration = Duration::from_secs(1);

struct Cluster {
    _dir: tempfile::TempDir,
    _scheduler: Proc,
    _agent: Proc,
    url: String,
    dns: SocketAddr,
    http: reqwest::Client,
}

impl Cluster {
    fn start() -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let env = [("SANDTRAIL_TOKEN", TOKEN.to_string())];
        let d = |s: &str| dir.path().join(s).display().to_string();
        let args: Vec<String> = [
            "scheduler",
            "--data-dir",
            &d("s"),
            "--listen",
            "127.0.0.1:0",
            "--dns-listen",
            "127.0.0.1:0",
        ]
        .map(String::from)
        .into();
        let mut scheduler = Proc::spawn("scheduler", dir.path(), &args, &env, |_| {})?;
        let printed = scheduler.printed(&["scheduler:", "dns:"])?;
        let (url, dns) = (printed[0].clone(), printed[1].parse()?);
        let agent =
            common::agent_without_indexer(dir.path(), "node-1", &dir.path().join("a"), &url, &env)?;
        Ok(Cluster {
            _dir: dir,
            _scheduler: scheduler,
            _agent: agent,
            url,
            dns,
            http: common::client_with_token(TOKEN)?,
        })
    }

    /// Host ports of the app's running tasks, as the scheduler's API lists them, with
    /// their ids.
    async fn running(&self) -> anyhow::Result<Vec<(String, u16)>> {
        let resp = self
            .http
            .get(format!("{}/v2/apps/fib/tasks", self.url))
            .send()
            .await?;
        if resp.status() == 404 {
            return Ok(Vec::new());
        }
        let v: Value = resp.error_for_status()?.json().await?;
        Ok(v["tasks"]
            .as_array()
            .context("tasks")?
            .iter()
            .filter(|t| t["state"] == "TASK_RUNNING")
            .filter_map(|t| {
                Some((
                    t["id"].as_str()?.to_string(),
                    t["ports"][0].as_u64()? as u16,
                ))
            })
            .collect())
    }

    /// Waits until `want` tasks run, answering their host ports.
    async fn wait_running(&self, want: usize) -> anyhow::Result<Vec<(String, u16)>> {
        common::eventually(
            &format!("{want} running fib tasks"),
            Duration::from_secs(60),
            || async {
                let r = self.running().await?;
                Ok((r.len() == want).then_some(r))
            },
        )
        .await
    }

    async fn mesos_dns_http(&self) -> anyhow::Result<BTreeSet<u16>> {
        let v: Value =
            common::get_json(&self.http, &format!("{}/v1/services/{SRV}", self.url)).await?;
        let mut ports = BTreeSet::new();
        for e in v.as_array().context("array")? {
            // Mesos-DNS gives every value as a string, the port too.
            let port = e["port"].as_str().context("port as a string")?;
            if !port.is_empty() {
                assert_eq!(e["service"], SRV);
                assert_eq!(e["ip"], "127.0.0.1");
                ports.insert(port.parse()?);
            }
        }
        Ok(ports)
    }
}

fn resolver(dns: SocketAddr) -> anyhow::Result<TokioResolver> {
    let mut ns = NameServerConfig::udp_and_tcp(dns.ip());
    for c in &mut ns.connections {
        c.port = dns.port();
    }
    let config = ResolverConfig::from_parts(None, vec![], vec![ns]);
    let mut b = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
    // Each lookup must reach the server: a cache would answer from the last one.
    b.options_mut().cache_size = 0;
    b.options_mut().timeout = Duration::from_secs(2);
    Ok(b.build()?)
}

async fn srv_ports(r: &TokioResolver) -> anyhow::Result<BTreeSet<u16>> {
    match r.srv_lookup(SRV).await {
        Ok(l) => Ok(l
            .answers()
            .iter()
            .filter_map(|rec| match &rec.data {
                RData::SRV(s) => Some(s.port),
                _ => None,
            })
            .collect()),
        // No task ready: NXDOMAIN, an empty set.
        Err(e) if e.to_string().to_lowercase().contains("no record") => Ok(BTreeSet::new()),
        Err(e) => Err(e.into()),
    }
}

/// The SRV ports `dig` gets (`+short` lines are `priority weight port target`).
fn dig_ports(dns: SocketAddr, tcp: bool) -> anyhow::Result<BTreeSet<u16>> {
    dig(dns, SRV, "SRV", tcp)?
        .iter()
        .map(|l| {
            l.split_whitespace()
                .nth(2)
                .context("srv line")?
                .parse()
                .map_err(Into::into)
        })
        .collect()
}

/// `dig` with the full answer, for the status line.
fn dig_status(dns: SocketAddr, name: &str) -> anyhow::Result<String> {
    let (server, port) = (format!("@{}", dns.ip()), dns.port().to_string());
    let out = Command::new("dig")
        .args([
            server.as_str(),
            "-p",
            port.as_str(),
            "+time=2",
            "+tries=1",
            "A",
            name,
        ])
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    text.lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or("").to_string())
        .context("no status in dig's answer")
}

/// Asserts that DNS (both clients) and the HTTP API answer exactly `want` within
/// [`FOLLOW_WITHIN`], returning how long it took.
async fn follows(c: &Cluster, r: &TokioResolver, want: &BTreeSet<u16>) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let got = srv_ports(r).await?;
        if &got == want {
            break;
        }
        if start.elapsed() > FOLLOW_WITHIN {
            bail!("dns answered {got:?}, expected {want:?} within {FOLLOW_WITHIN:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = start.elapsed();
    // Once one client sees it, every face does (one snapshot serves them all).
    let dns = c.dns;
    let (udp, tcp) = tokio::task::spawn_blocking(move || {
        Ok::<_, anyhow::Error>((dig_ports(dns, false)?, dig_ports(dns, true)?))
    })
    .await??;
    assert_eq!(&udp, want, "dig over udp");
    assert_eq!(&tcp, want, "dig over tcp");
    assert_eq!(&c.mesos_dns_http().await?, want, "mesos-dns http api");
    Ok(took)
}

fn ports(tasks: &[(String, u16)]) -> BTreeSet<u16> {
    tasks.iter().map(|(_, p)| *p).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_follow_deploy_scale_and_kill_within_a_second() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    let r = resolver(c.dns)?;

    // Closed by default: the Mesos-DNS HTTP API needs a credential too.
    let anon = reqwest::get(format!("{}/v1/services/{SRV}", c.url)).await?;
    assert_eq!(anon.status(), 401);

    let app = json!({
        "id": "/fib", "cmd": "sleep 300", "instances": 3, "cpus": 0.01, "mem": 16,
        "portDefinitions": [{"port": 0, "name": "http"}],
    });
    let resp = c
        .http
        .post(format!("{}/v2/apps", c.url))
        .json(&app)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("deploy: {} {}", resp.status(), resp.text().await?);
    }
    let three = c.wait_running(3).await?;
    let t = follows(&c, &r, &ports(&three)).await?;
    eprintln!("deploy of 3 seen by dns {t:?} after the api");

    // The other names of the zone.
    let dns = c.dns;
    let other = tokio::task::spawn_blocking(move || {
        Ok::<_, anyhow::Error>((
            dig(dns, "fib.marathon.mesos", "A", false)?,
            dig(dns, "fib.marathon.slave.mesos", "A", false)?,
            dig(dns, "leader.mesos", "A", false)?,
            dig(dns, "_http._fib._tcp.marathon.mesos", "SRV", false)?,
            dig(dns, "mesos", "SOA", false)?,
            dig(dns, "mesos", "NS", false)?,
            dig_status(dns, "nope.marathon.mesos")?,
            dig_status(dns, "example.com")?,
        ))
    })
    .await??;
    assert_eq!(other.0, ["127.0.0.1"], "fib.marathon.mesos");
    assert_eq!(other.1, ["127.0.0.1"], "fib.marathon.slave.mesos");
    assert_eq!(other.2, ["127.0.0.1"], "leader.mesos");
    assert_eq!(other.3.len(), 3, "named port: {:?}", other.3);
    assert!(
        other.4[0].starts_with("ns1.mesos. root.ns1.mesos."),
        "{:?}",
        other.4
    );
    assert_eq!(other.5, ["ns1.mesos."]);
    assert_eq!(other.6, "NXDOMAIN");
    assert_eq!(other.7, "REFUSED");
    let hosts: Value = c
        .http
        .get(format!("{}/v1/hosts/fib.marathon.mesos", c.url))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        hosts,
        json!([{"host": "fib.marathon.mesos.", "ip": "127.0.0.1"}])
    );
    let none: Value = c
        .http
        .get(format!("{}/v1/services/_nope._tcp.marathon.mesos.", c.url))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        none,
        json!([{"service": "", "host": "", "ip": "", "port": ""}])
    );

    // Scale 3 -> 5.
    c.http
        .put(format!("{}/v2/apps/fib", c.url))
        .json(&json!({"instances": 5}))
        .send()
        .await?
        .error_for_status()?;
    let five = c.wait_running(5).await?;
    let t = follows(&c, &r, &ports(&five)).await?;
    eprintln!("scale to 5 seen by dns {t:?} after the api");

    // Kill one: it leaves the answer at once, its replacement joins when it runs.
    let (killed, killed_port) = five[0].clone();
    c.http
        .delete(format!("{}/v2/apps/fib/tasks/{killed}", c.url))
        .send()
        .await?
        .error_for_status()?;
    let mut without: BTreeSet<u16> = ports(&five);
    without.remove(&killed_port);
    let start = Instant::now();
    loop {
        let got = srv_ports(&r).await?;
        if !got.contains(&killed_port) {
            break;
        }
        if start.elapsed() > FOLLOW_WITHIN {
            bail!("killed task's port {killed_port} still answered after {FOLLOW_WITHIN:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "kill seen by dns {:?} after the api answered",
        start.elapsed()
    );
    let replaced = common::eventually("a replacement", Duration::from_secs(60), || async {
        let r = c.running().await?;
        Ok((r.len() == 5 && r.iter().all(|(id, _)| *id != killed)).then_some(r))
    })
    .await?;
    follows(&c, &r, &ports(&replaced)).await?;

    // Leave nothing running: the agent keeps its tasks when it is stopped.
    c.http
        .delete(format!("{}/v2/apps/fib", c.url))
        .send()
        .await?
        .error_for_status()?;
    common::eventually("tasks gone", Duration::from_secs(30), || async {
        Ok(c.running().await?.is_empty().then_some(()))
    })
    .await?;
    follows(&c, &r, &BTreeSet::new()).await?;
    Ok(())
}

/// Kills the demo tasks whose environment names `FIB_DNS=<addr>`: tasks outlive their
/// agent by design, and a failed test would leave them serving.
struct KillDemoTasks(String);
impl Drop for KillDemoTasks {
    fn drop(&mut self) {
        let needle = format!("FIB_DNS={}", self.0);
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if env.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_app_finds_its_peers_by_dns() -> anyhow::Result<()> {
    let _kill: KillDemoTasks;
    let c = Cluster::start()?;
    _kill = KillDemoTasks(c.dns.to_string());
    // Its router made unusable: fib(10) can only be computed through SRV lookups.
    let exe = env!("CARGO_BIN_EXE_sandtrail");
    let app = json!({
        "id": "/fib", "instances": 2, "cpus": 0.01, "mem": 32,
        "cmd": format!("SANDTRAIL_ROUTER=http://127.0.0.1:1 exec '{exe}' demo-fib"),
        "portDefinitions": [{"port": 0, "name": "http"}],
        "env": {"FIB_DNS": c.dns.to_string()},
    });
    c.http
        .post(format!("{}/v2/apps", c.url))
        .json(&app)
        .send()
        .await?
        .error_for_status()?;
    let two = c.wait_running(2).await?;
    let port = two[0].1;
    let body = common::eventually("fib(10) found by dns", Duration::from_secs(30), || async {
        let r = reqwest::get(format!("http://127.0.0.1:{port}/10")).await?;
        let ok = r.status().is_success();
        let text = r.text().await?;
        if !ok {
            bail!("fib(10) answered {text}");
        }
        Ok(Some(text))
    })
    .await?;
    assert_eq!(body.trim(), "55");
    Ok(())
}
