//! Schedulers in HA on a real ZooKeeper (issue 18): three `sandtrail scheduler --zk`
//! processes on one ZooKeeper 3.8 (tests/common/zk.rs), one leader; kill -9 of the
//! leader hands the lead to a survivor, which loads the state (an app deployed just
//! before the kill is there) and accepts writes, forwarded by a follower; a paused
//! leader (SIGSTOP past its session) exits on SIGCONT instead of acting; `DELETE
//! /v2/leader` moves the lead; a store whose leadership is gone, or whose version is
//! stale, cannot write, and a state over the node limit is refused by size; ZooKeeper
//! down at startup or under a leader ends the scheduler; a follower's Mesos-DNS follows
//! the leader's within a second; and the CLI finds the schedulers by `zk://`.

mod common;
use anyhow::{bail, Context};
use common::zk::ZooKeeper;
use common::Proc;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const TOKEN: &str = "zk-suite-token";
/// Short, so failovers take seconds; ZooKeeper's tick (100 ms) allows it.
const SESSION_MS: u64 = 1500;
/// What the binary exits with after losing the lead (src/serve.rs).
const EXIT_LOST_LEADERSHIP: i32 = 75;
/// The tasks' command, `sleep` of an odd length so their pids can be found in /proc.
/// Each cluster's tasks sleep a number of seconds of their own, by which its test finds
/// their processes: the tests of this file run in parallel, and with one shared number
/// one test counted (and killed) another's task.
static NEXT_SLEEP: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(86_417);

fn unique_sleep() -> u32 {
    NEXT_SLEEP.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Pids of the tasks' `sleep` processes.
fn task_pids(sleep: u32) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c == format!("sleep\0{sleep}\0").as_bytes())
        })
        .collect();
    pids.sort();
    pids
}

/// Kills the tasks, which outlive their agent by design.
struct KillTasks(u32);
impl Drop for KillTasks {
    fn drop(&mut self) {
        for pid in task_pids(self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }
}

struct Member {
    proc: Option<Proc>,
    url: String,
    addr: String,
    /// Its Mesos-DNS (`--dns-listen`), when asked for.
    dns: Option<std::net::SocketAddr>,
}

struct Ha {
    zk: ZooKeeper,
    dir: tempfile::TempDir,
    members: Vec<Member>,
    http: reqwest::Client,
    /// What this cluster's tasks sleep (see [`unique_sleep`]).
    sleep: u32,
}

impl Ha {
    fn start(n: usize) -> anyhow::Result<Ha> {
        let zk = ZooKeeper::start()?;
        let dir = tempfile::tempdir()?;
        let mut ha = Ha {
            zk,
            dir,
            members: Vec::new(),
            http: common::client_with_token(TOKEN)?,
            sleep: unique_sleep(),
        };
        for i in 0..n {
            ha.add(i)?;
        }
        Ok(ha)
    }

    fn add(&mut self, i: usize) -> anyhow::Result<()> {
        self.add_with(i, false)
    }

    /// Adds scheduler `i`, serving Mesos-DNS on a free port with `dns`.
    fn add_with(&mut self, i: usize, dns: bool) -> anyhow::Result<()> {
        let data = self.dir.path().join(format!("s{i}")).display().to_string();
        let mut args: Vec<String> = [
            "scheduler",
            "--data-dir",
            &data,
            "--listen",
            "127.0.0.1:0",
            "--zk",
            &self.zk.url("sandtrail"),
            "--zk-session-timeout-ms",
            &SESSION_MS.to_string(),
        ]
        .map(String::from)
        .into();
        if dns {
            args.extend(["--dns-listen".to_string(), "127.0.0.1:0".to_string()]);
        }
        let env = [
            ("SANDTRAIL_TOKEN", TOKEN.to_string()),
            // Short, so the lost-agent test sees a replacement within seconds.
            ("SANDTRAIL_SCHEDULER_AGENT_TIMEOUT_SECS", "3".to_string()),
        ];
        let (mut proc, url) = Proc::start("scheduler", self.dir.path(), &args, "scheduler:", &env)?;
        let dns = match dns {
            true => Some(proc.printed(&["dns:"])?.remove(0).parse()?),
            false => None,
        };
        let addr = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        self.members.push(Member {
            proc: Some(proc),
            url,
            addr,
            dns,
        });
        Ok(())
    }

    /// The leader every live member names, once they all agree and it answers as leader.
    async fn leader(&self, within: Duration) -> anyhow::Result<usize> {
        common::eventually("one agreed leader", within, || async {
            let mut named = Vec::new();
            for m in self.members.iter().filter(|m| m.proc.is_some()) {
                let v: Value =
                    common::get_json(&self.http, &format!("{}/v2/leader", m.url)).await?;
                named.push(v["leader"].as_str().unwrap_or("").to_string());
            }
            named.dedup();
            if named.len() != 1 {
                bail!("members name different leaders: {named:?}");
            }
            let Some(i) = self
                .members
                .iter()
                .position(|m| m.addr == named[0] && m.proc.is_some())
            else {
                bail!("leader {} is not a live member", named[0]);
            };
            // Elected and serving (state loaded): its own API answers.
            self.http
                .get(format!("{}/v2/apps", self.members[i].url))
                .send()
                .await?
                .error_for_status()?;
            Ok(Some(i))
        })
        .await
    }

    fn follower(&self, leader: usize) -> usize {
        (0..self.members.len())
            .find(|&i| i != leader && self.members[i].proc.is_some())
            .expect("a live follower")
    }

    async fn deploy(&self, via: usize, id: &str) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .post(format!("{}/v2/apps", self.members[via].url))
            .json(&json!({"id": id, "cmd": format!("sleep {}", self.sleep), "instances": 1, "cpus": 0.1, "mem": 16}))
            .send()
            .await?)
    }

    /// Ids of the running tasks of `/before` once there is one.
    async fn running(&self, via: usize, within: Duration) -> anyhow::Result<Vec<String>> {
        common::eventually("a running task of /before", within, || async {
            let v: Value =
                common::get_json(&self.http, &format!("{}/v2/tasks", self.members[via].url))
                    .await?;
            let ids: Vec<String> = v["tasks"]
                .as_array()
                .context("tasks")?
                .iter()
                .filter(|t| t["appId"] == "/before" && t["state"] == "TASK_RUNNING")
                .filter_map(|t| t["id"].as_str().map(String::from))
                .collect();
            Ok((!ids.is_empty()).then_some(ids))
        })
        .await
    }

    async fn apps(&self, via: usize) -> anyhow::Result<Vec<String>> {
        let v: Value =
            common::get_json(&self.http, &format!("{}/v2/apps", self.members[via].url)).await?;
        Ok(v["apps"]
            .as_array()
            .context("apps")?
            .iter()
            .filter_map(|a| a["id"].as_str().map(String::from))
            .collect())
    }
}

/// Kill -9 of the leader, then a write through a follower until one is accepted:
/// the failover time the bench reports.
async fn kill_and_time_failover(ha: &mut Ha, app: &str) -> anyhow::Result<(usize, Duration)> {
    let leader = ha.leader(Duration::from_secs(30)).await?;
    ha.members[leader]
        .proc
        .take()
        .context("leader proc")?
        .kill9()?;
    let killed = Instant::now();
    let via = ha.follower(leader);
    common::eventually(
        "a write accepted after the kill",
        Duration::from_millis(SESSION_MS) + Duration::from_secs(15),
        || async {
            let r = ha.deploy(via, app).await?;
            Ok(r.status().is_success().then_some(()))
        },
    )
    .await?;
    Ok((via, killed.elapsed()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_leader_fails_over_with_the_state_and_followers_forward() -> anyhow::Result<()>
{
    // Declared first so that it drops last, after the agent.
    let _kill: KillTasks;
    let mut ha = Ha::start(3)?;
    _kill = KillTasks(ha.sleep);
    let leader = ha.leader(Duration::from_secs(30)).await?;
    let follower = ha.follower(leader);
    // An agent that knows every scheduler, starting with the one about to die.
    let mut list: Vec<String> = vec![ha.members[leader].url.clone()];
    list.extend(
        ha.members
            .iter()
            .filter(|m| m.addr != ha.members[leader].addr)
            .map(|m| m.url.clone()),
    );
    let env = [("SANDTRAIL_TOKEN", TOKEN.to_string())];
    let agent_dir = ha.dir.path().join("a");
    let _agent =
        common::agent_without_indexer(ha.dir.path(), "node-1", &agent_dir, &list.join(","), &env)?;
    // A follower forwards the write to the leader (and the answer back).
    let r = ha.deploy(follower, "/before").await?;
    assert_eq!(r.status(), 201, "{}", r.text().await?);
    assert_eq!(ha.apps(follower).await?, vec!["/before"]);
    let running = ha.running(follower, Duration::from_secs(30)).await?;
    // TASK_RUNNING is reported once the task's process is started, which on a busy
    // machine may be a moment before its shell has exec'd `sleep`. Regression: read
    // at once, /proc held no `sleep` yet and the test failed ("one task process: []").
    let pids = common::eventually("the task's sleep process", Duration::from_secs(10), || {
        let pids = task_pids(ha.sleep);
        async move { Ok((!pids.is_empty()).then_some(pids)) }
    })
    .await?;
    assert_eq!(pids.len(), 1, "one task process: {pids:?}");
    // A request that was already forwarded once is refused, not bounced around.
    let r = ha
        .http
        .get(format!("{}/v2/apps", ha.members[follower].url))
        .header("x-sandtrail-via", "127.0.0.1:1")
        .send()
        .await?;
    assert_eq!(r.status(), 503);
    assert!(r.text().await?.contains("refusing to loop"));

    let dead = ha.members[leader].url.clone();
    let (via, took) = kill_and_time_failover(&mut ha, "/after").await?;
    // The CLI given the dead leader first moves on to the next scheduler.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandtrail"))
        .args([
            "apps",
            "--server",
            &format!("{dead},{}", ha.members[via].url),
        ])
        .env("SANDTRAIL_TOKEN", TOKEN)
        .current_dir(ha.dir.path())
        .output()?;
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listed.contains("/before"),
        "{listed} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "failover: kill -9 to first accepted write {} ms",
        took.as_millis()
    );
    let new_leader = ha.leader(Duration::from_secs(10)).await?;
    assert_ne!(new_leader, leader);
    let mut apps = ha.apps(via).await?;
    apps.sort();
    assert_eq!(
        apps,
        vec!["/after", "/before"],
        "the app deployed before the kill survives"
    );
    // The agent moved to a survivor, re-registered and reported its task, which the new
    // leader adopted: same id, same process (not restarted).
    let after = ha.running(via, Duration::from_secs(30)).await?;
    assert!(
        after.contains(&running[0]),
        "task {} kept its id: {after:?}",
        running[0]
    );
    assert_eq!(
        task_pids(ha.sleep)[0],
        pids[0],
        "the task's process was not restarted"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_still_detects_a_lost_agent_and_replaces_its_task() -> anyhow::Result<()> {
    let _kill: KillTasks;
    let mut ha = Ha::start(2)?;
    _kill = KillTasks(ha.sleep);
    let leader = ha.leader(Duration::from_secs(30)).await?;
    // These agents find the schedulers through ZooKeeper (`--scheduler zk://...`).
    let list = ha.zk.url("sandtrail");
    let env = [("SANDTRAIL_TOKEN", TOKEN.to_string())];
    let mut agents = Vec::new();
    for name in ["node-1", "node-2"] {
        let dir = ha.dir.path().join(name);
        agents.push(Some(common::agent_without_indexer(
            ha.dir.path(),
            name,
            &dir,
            &list,
            &env,
        )?));
    }
    let r = ha.deploy(leader, "/before").await?;
    assert_eq!(r.status(), 201);
    let first = ha.running(leader, Duration::from_secs(30)).await?.remove(0);
    let task_host = |id: &str, tasks: &Value| {
        tasks["tasks"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["id"] == id)
            .map(|t| t["host"].as_str().unwrap_or("").to_string())
    };
    let tasks = common::get_json(&ha.http, &format!("{}/v2/tasks", ha.members[leader].url)).await?;
    let host = task_host(&first, &tasks).context("task host")?;
    ha.members[leader].proc.take().context("leader")?.kill9()?;
    let next = ha.leader(Duration::from_secs(20)).await?;
    // The agent running the task dies under the new leader.
    let i = if host == "node-1" { 0 } else { 1 };
    agents[i].take().context("agent")?.kill9()?;
    let replaced = common::eventually(
        "a replacement on the other agent",
        Duration::from_secs(30),
        || async {
            let tasks =
                common::get_json(&ha.http, &format!("{}/v2/tasks", ha.members[next].url)).await?;
            let other = tasks["tasks"].as_array().into_iter().flatten().find(|t| {
                t["id"] != first.as_str()
                    && t["state"] == "TASK_RUNNING"
                    && t["host"] != host.as_str()
            });
            Ok(other.map(|t| t["id"].clone()))
        },
    )
    .await?;
    assert_ne!(replaced, first);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_v2_leader_abdicates_and_the_lead_moves() -> anyhow::Result<()> {
    let mut ha = Ha::start(2)?;
    let leader = ha.leader(Duration::from_secs(30)).await?;
    let r = ha
        .http
        .delete(format!("{}/v2/leader", ha.members[leader].url))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await?["message"], "Leadership abdicated");
    let status = ha.members[leader]
        .proc
        .as_mut()
        .context("leader")?
        .wait_exit(Duration::from_secs(10))?;
    assert_eq!(status.code(), Some(EXIT_LOST_LEADERSHIP));
    ha.members[leader].proc = None;
    let next = ha.leader(Duration::from_secs(10)).await?;
    assert_ne!(next, leader);
    // A reader may ask who leads but not depose it.
    let reader = reqwest::Client::new()
        .delete(format!("{}/v2/leader", ha.members[next].url))
        .send()
        .await?;
    assert_eq!(reader.status(), 401);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_session_exits_on_resume_instead_of_acting() -> anyhow::Result<()>
{
    let mut ha = Ha::start(2)?;
    let leader = ha.leader(Duration::from_secs(30)).await?;
    let other = ha.follower(leader);
    let proc = ha.members[leader].proc.as_mut().context("leader")?;
    proc.signal("-STOP")?;
    let paused = Instant::now();
    // The survivor takes over once the paused one's session expires.
    common::eventually("the survivor leads", Duration::from_secs(20), || async {
        let v: Value =
            common::get_json(&ha.http, &format!("{}/v2/leader", ha.members[other].url)).await?;
        Ok((v["leader"] == ha.members[other].addr.as_str()).then_some(()))
    })
    .await?;
    let wait = Duration::from_millis(SESSION_MS * 2).saturating_sub(paused.elapsed());
    tokio::time::sleep(wait).await; // past its session for sure: nothing to await while it is stopped
    let proc = ha.members[leader].proc.as_mut().context("leader")?;
    proc.signal("-CONT")?;
    let status = proc.wait_exit(Duration::from_secs(10))?;
    assert_eq!(status.code(), Some(EXIT_LOST_LEADERSHIP));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_leadership_is_gone_cannot_write() -> anyhow::Result<()> {
    use scheduler::control::store::{Saved, StateStore};
    use scheduler::ha::{Ha, ZkStore};
    let zk = ZooKeeper::start()?;
    let url: scheduler::ha::ZkUrl = zk.url("fence").parse()?;
    let session = Duration::from_secs(10);
    let a = Ha::connect(url.clone(), "a:1".into(), session).await?;
    a.campaign().await?;
    let store_a = ZkStore::open(a.clone()).await?;
    let agents = |n: &str| Saved {
        agents: vec![n.to_string()],
        ..Saved::default()
    };
    store_a.save(1, agents("from-a")).await?;
    // A's election node vanishes behind its back (as when its session expires).
    let raw = zookeeper_client::Client::connect(&url.servers).await?;
    let dir = "/fence/leader-curator";
    let nodes = raw.list_children(dir).await?;
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    raw.delete(&format!("{dir}/{}", nodes[0]), None).await?;
    let b = Ha::connect(url, "b:1".into(), session).await?;
    b.campaign().await?;
    let store_b = ZkStore::open(b.clone()).await?;
    assert_eq!(
        store_b.load()?.agents,
        vec!["from-a"],
        "b reads what a wrote"
    );
    store_b.save(1, agents("from-b")).await?;
    let err = store_a
        .save(2, agents("late-a"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no longer leads") || err.contains("lost"),
        "{err}"
    );
    assert!(a.lost().is_cancelled(), "a knows it lost");
    let (data, _) = raw.get_data("/fence/state").await?;
    let saved = scheduler::ha::decode(&data).map_err(anyhow::Error::msg)?;
    assert_eq!(saved.agents, vec!["from-b"], "a's late write did not land");
    Ok(())
}

/// BENCHMARKS.md's failover figure: kill -9 of the leader to the first write accepted
/// through a follower, over 10 runs (session timeout [`SESSION_MS`]). Run with
/// `cargo test --test zk_ha failover_time -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it by name"]
async fn failover_time_over_10_runs() -> anyhow::Result<()> {
    let mut took = Vec::new();
    for run in 0..10 {
        let mut ha = Ha::start(3)?;
        let (_, t) = kill_and_time_failover(&mut ha, "/bench").await?;
        println!("run {run}: {} ms", t.as_millis());
        took.push(t);
    }
    took.sort();
    println!(
        "failover (session timeout {SESSION_MS} ms): min {} ms, median {} ms, max {} ms",
        took[0].as_millis(),
        took[took.len() / 2].as_millis(),
        took[took.len() - 1].as_millis()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_leader_is_unreachable_answers_503_saying_so() -> anyhow::Result<()> {
    let zk = ZooKeeper::start()?;
    // A leader that is in the election but cannot be reached (its node comes first).
    let raw = zookeeper_client::Client::connect(&format!("127.0.0.1:{}", zk.port)).await?;
    let dir = "/sandtrail/leader-curator";
    let persistent =
        zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
    raw.mkdir(dir, &persistent).await?;
    let ephemeral = zookeeper_client::CreateMode::EphemeralSequential
        .with_acls(zookeeper_client::Acls::anyone_all());
    raw.create(
        &format!("{dir}/_c_ghost-latch-"),
        b"127.0.0.1:1",
        &ephemeral,
    )
    .await?;
    let mut ha = Ha {
        zk,
        dir: tempfile::tempdir()?,
        members: Vec::new(),
        http: common::client_with_token(TOKEN)?,
        sleep: unique_sleep(),
    };
    ha.add(0)?;
    let url = &ha.members[0].url;
    let leader = common::eventually(
        "the ghost named leader",
        Duration::from_secs(20),
        || async {
            let v = common::get_json(&ha.http, &format!("{url}/v2/leader")).await?;
            Ok(v["leader"].as_str().map(String::from))
        },
    )
    .await?;
    assert_eq!(leader, "127.0.0.1:1");
    let r = ha.http.get(format!("{url}/v2/apps")).send().await?;
    assert_eq!(r.status(), 503);
    let body = r.text().await?;
    assert!(
        body.contains("cannot reach the leader 127.0.0.1:1"),
        "{body}"
    );
    Ok(())
}

/// Host ports of the running tasks of `/web`, as the scheduler's API lists them.
async fn web_ports(ha: &Ha, via: usize) -> anyhow::Result<Vec<(String, u16)>> {
    let v: Value = common::get_json(&ha.http, &format!("{}/v2/tasks", ha.members[via].url)).await?;
    Ok(v["tasks"]
        .as_array()
        .context("tasks")?
        .iter()
        .filter(|t| t["appId"] == "/web" && t["state"] == "TASK_RUNNING")
        .filter_map(|t| {
            Some((
                t["id"].as_str()?.to_string(),
                t["ports"][0].as_u64()? as u16,
            ))
        })
        .collect())
}

/// The SRV ports of `_web._tcp.marathon.mesos` at `dns` (dig over UDP).
async fn dig_web(dns: std::net::SocketAddr) -> anyhow::Result<std::collections::BTreeSet<u16>> {
    let lines = tokio::task::spawn_blocking(move || {
        common::dig(dns, "_web._tcp.marathon.mesos", "SRV", false)
    })
    .await??;
    lines
        .iter()
        .map(|l| Ok(l.split_whitespace().nth(2).context("srv line")?.parse()?))
        .collect()
}

/// Waits until `want` tasks of `/web` run (by the API), then until the follower's DNS
/// answers exactly their ports: answers how long that took after the API showed them.
async fn follower_follows(
    ha: &Ha,
    leader: usize,
    follower: usize,
    want: usize,
) -> anyhow::Result<(Vec<(String, u16)>, Duration)> {
    let tasks = common::eventually(
        &format!("{want} running tasks of /web"),
        Duration::from_secs(30),
        || async {
            let t = web_ports(ha, leader).await?;
            Ok((t.len() == want).then_some(t))
        },
    )
    .await?;
    let seen = Instant::now();
    let ports: std::collections::BTreeSet<u16> = tasks.iter().map(|t| t.1).collect();
    let dns = ha.members[follower].dns.context("follower dns")?;
    loop {
        let got = dig_web(dns).await?;
        if got == ports {
            return Ok((tasks, seen.elapsed()));
        }
        if seen.elapsed() > Duration::from_secs(1) {
            bail!("the follower's dns answers {got:?}, the api {ports:?}, a second later");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_dns_follows_deploy_scale_and_kill_within_a_second_and_its_own_once_elected(
) -> anyhow::Result<()> {
    let _kill: KillTasks;
    let mut ha = Ha::start(0)?;
    _kill = KillTasks(ha.sleep);
    ha.add_with(0, true)?;
    ha.add_with(1, true)?;
    let leader = ha.leader(Duration::from_secs(30)).await?;
    let follower = ha.follower(leader);
    let list: Vec<String> = ha.members.iter().map(|m| m.url.clone()).collect();
    let env = [("SANDTRAIL_TOKEN", TOKEN.to_string())];
    let agent_dir = ha.dir.path().join("a");
    let _agent =
        common::agent_without_indexer(ha.dir.path(), "node-1", &agent_dir, &list.join(","), &env)?;
    let r = ha
        .http
        .post(format!("{}/v2/apps", ha.members[follower].url))
        .json(
            &json!({"id": "web", "cmd": format!("sleep {}", ha.sleep), "instances": 1,
                      "cpus": 0.1, "mem": 16, "portDefinitions": [{"port": 0, "name": "http"}]}),
        )
        .send()
        .await?;
    assert_eq!(r.status(), 201, "{}", r.text().await?);
    let (_, t) = follower_follows(&ha, leader, follower, 1).await?;
    eprintln!("deploy seen by the follower's dns {t:?} after the api");
    ha.http
        .put(format!("{}/v2/apps/web", ha.members[follower].url))
        .json(&json!({"instances": 3}))
        .send()
        .await?
        .error_for_status()?;
    let (three, t) = follower_follows(&ha, leader, follower, 3).await?;
    eprintln!("scale to 3 seen by the follower's dns {t:?} after the api");
    // The leader's own DNS answers the same.
    let leader_dns = ha.members[leader].dns.context("leader dns")?;
    let want: std::collections::BTreeSet<u16> = three.iter().map(|t| t.1).collect();
    assert_eq!(dig_web(leader_dns).await?, want);
    ha.http
        .delete(format!(
            "{}/v2/apps/web/tasks/{}?scale=true",
            ha.members[follower].url, three[0].0
        ))
        .send()
        .await?
        .error_for_status()?;
    let (two, t) = follower_follows(&ha, leader, follower, 2).await?;
    assert!(!two.iter().any(|t| t.0 == three[0].0), "{two:?}");
    eprintln!("kill seen by the follower's dns {t:?} after the api");
    // leader.mesos on the follower names the leader (from the leader's zone).
    let dns = ha.members[follower].dns.context("follower dns")?;
    let a =
        tokio::task::spawn_blocking(move || common::dig(dns, "leader.mesos", "A", false)).await??;
    assert_eq!(a, ["127.0.0.1"]);
    // The follower, elected once the leader dies, answers from its own state now.
    ha.members[leader].proc.take().context("leader")?.kill9()?;
    let next = ha.leader(Duration::from_secs(20)).await?;
    assert_eq!(next, follower);
    ha.http
        .put(format!("{}/v2/apps/web", ha.members[next].url))
        .json(&json!({"instances": 3}))
        .send()
        .await?
        .error_for_status()?;
    let (_, t) = follower_follows(&ha, next, next, 3).await?;
    eprintln!("scale under the new leader seen by its dns {t:?} after the api");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_finds_the_schedulers_through_zookeeper() -> anyhow::Result<()> {
    let ha = Ha::start(2)?;
    let leader = ha.leader(Duration::from_secs(30)).await?;
    let r = ha.deploy(leader, "/listed").await?;
    assert_eq!(r.status(), 201);
    let zk = ha.zk.url("sandtrail");
    let cli = |server: Option<&str>, env: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sandtrail"));
        cmd.arg("apps")
            .env("SANDTRAIL_TOKEN", TOKEN)
            .env_remove("SANDTRAIL_SERVER")
            .current_dir(ha.dir.path());
        if let Some(s) = server {
            cmd.args(["--server", s]);
        }
        if let Some(e) = env {
            cmd.env("SANDTRAIL_SERVER", e);
        }
        cmd.output()
    };
    for (flag, env) in [(Some(zk.as_str()), None), (None, Some(zk.as_str()))] {
        let out = cli(flag, env)?;
        let listed = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && listed.contains("/listed"),
            "--server {flag:?} SANDTRAIL_SERVER {env:?}: {listed} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A path with no scheduler in its election says so.
    let out = cli(Some(&ha.zk.url("nobody")), None)?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no scheduler is in the election"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_at_a_stale_version_is_fenced_off() -> anyhow::Result<()> {
    use scheduler::control::store::{Saved, StateStore};
    use scheduler::ha::{Ha, ZkStore};
    let zk = ZooKeeper::start()?;
    let url: scheduler::ha::ZkUrl = zk.url("stale").parse()?;
    let a = Ha::connect(url.clone(), "a:1".into(), Duration::from_secs(10)).await?;
    a.campaign().await?;
    let store = ZkStore::open(a.clone()).await?;
    let agents = |n: &str| Saved {
        agents: vec![n.to_string()],
        ..Saved::default()
    };
    store.save(1, agents("first")).await?;
    // Someone else writes the state node while a's election node still stands: a's
    // next write carries the version it last wrote, now stale.
    let raw = zookeeper_client::Client::connect(&url.servers).await?;
    let other = scheduler::ha::encode(&agents("other"))?;
    raw.set_data("/stale/state", &other, None).await?;
    let err = store.save(2, agents("late")).await.unwrap_err().to_string();
    assert!(err.contains("changed by another scheduler"), "{err}");
    assert!(a.lost().is_cancelled(), "a knows it lost");
    let (data, _) = raw.get_data("/stale/state").await?;
    let saved = scheduler::ha::decode(&data).map_err(anyhow::Error::msg)?;
    assert_eq!(saved.agents, vec!["other"], "the stale write did not land");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_over_the_node_limit_is_refused_naming_its_size() -> anyhow::Result<()> {
    use scheduler::control::store::{Saved, StateStore};
    use scheduler::ha::{Ha, ZkStore, MAX_NODE};
    let zk = ZooKeeper::start()?;
    let url: scheduler::ha::ZkUrl = zk.url("big").parse()?;
    let a = Ha::connect(url.clone(), "a:1".into(), Duration::from_secs(10)).await?;
    a.campaign().await?;
    let store = ZkStore::open(a.clone()).await?;
    // ~3 MB of names that barely compress (hex of an xorshift stream: ~2x).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let names = (0..48_000)
        .map(|_| {
            (0..4)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    format!("{x:016x}")
                })
                .collect::<String>()
        })
        .collect();
    let big = Saved {
        agents: names,
        ..Saved::default()
    };
    let err = store.save(1, big).await.unwrap_err().to_string();
    assert!(
        err.contains("bytes compressed, over zookeeper's node limit")
            && err.contains(&MAX_NODE.to_string()),
        "{err}"
    );
    assert!(
        !a.lost().is_cancelled(),
        "a refused write is no lost leadership"
    );
    let raw = zookeeper_client::Client::connect(&url.servers).await?;
    assert!(
        raw.check_stat("/big/state").await?.is_none(),
        "nothing written"
    );
    // A state that fits is written after it.
    store
        .save(
            2,
            Saved {
                agents: vec!["small".into()],
                ..Saved::default()
            },
        )
        .await?;
    assert!(raw.check_stat("/big/state").await?.is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_down_at_startup_ends_the_scheduler_saying_so() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sandtrail"))
        .args([
            "scheduler",
            "--data-dir",
            &dir.path().join("s").display().to_string(),
            "--listen",
            "127.0.0.1:0",
            "--zk",
            &format!("zk://127.0.0.1:{port}/sandtrail"),
            "--zk-session-timeout-ms",
            "1000",
        ])
        .env("SANDTRAIL_TOKEN", TOKEN)
        .env("SANDTRAIL_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the scheduler still runs 30 s after failing to reach zookeeper");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().context("stderr")?, &mut err)?;
    assert!(!status.success());
    assert!(
        err.contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_lost_under_the_leader_ends_it_with_75() -> anyhow::Result<()> {
    let mut ha = Ha::start(1)?;
    let leader = ha.leader(Duration::from_secs(30)).await?;
    ha.zk.kill();
    let lost = Instant::now();
    let proc = ha.members[leader].proc.as_mut().context("leader")?;
    // Its lease runs out after one session timeout without an answer.
    let status = proc.wait_exit(Duration::from_millis(SESSION_MS) + Duration::from_secs(10))?;
    assert_eq!(status.code(), Some(EXIT_LOST_LEADERSHIP));
    eprintln!("exited {:?} after zookeeper died", lost.elapsed());
    Ok(())
}
