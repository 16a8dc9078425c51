//! The node's Docker containerizer against the machine's real Docker engine (issue
//! 19), with a fake control plane: output lands once in the sandbox through the task
//! logger, `mem` is the container's memory limit, a COMMAND check runs inside the
//! container, a kill removes the container, an OOM and a missing image are reported
//! as failures with a message, and a restarted node adopts the running container
//! under the same task id. Uses `debian:bookworm-slim` (made by
//! `scripts/base-image.sh` where it cannot be pulled).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::{DockerSpec, HealthCheck, TaskSpec};
use scheduler::node::docker::Docker;
use scheduler::node::{Node, NodeConfig};
use serde_json::{json, Value};

mod common;

use common::{eventually, fake_plane, metric, report, Running};

const IMAGE: &str = "debian:bookworm-slim";

fn docker_spec(task: &str, shell: &str, mem: f64) -> TaskSpec {
    TaskSpec {
        app: "dock".into(),
        task: task.into(),
        instance: 1,
        mem: Some(mem),
        cpus: Some(0.5),
        kill_grace_seconds: Some(1.0),
        docker: Some(DockerSpec {
            image: IMAGE.into(),
            network: "host".into(),
            shell: Some(shell.into()),
            ..DockerSpec::default()
        }),
        ..TaskSpec::default()
    }
}

/// A node on the machine's engine. Each test's node has a `name` of its own: a
/// node adopts every container labelled with its name, and so would take (and at
/// its stop kill) the containers of another test's node of the same name.
fn start(name: &str, work: &Path, url: &str) -> Running {
    start_with(name, work, url, "unix:///var/run/docker.sock")
}

/// A node on the engine at `docker`, heartbeating to `url` every 100 ms.
fn start_with(name: &str, work: &Path, url: &str, docker: &str) -> Running {
    let mut cfg = NodeConfig::new(name, work, url);
    cfg.heartbeat_interval = Duration::from_millis(100);
    cfg.docker = Some(docker.into());
    Running::spawn(Arc::new(Node::new(cfg).unwrap()))
}

async fn docker_or_skip() -> Option<Docker> {
    let d = Docker::new("unix:///var/run/docker.sock").unwrap();
    let ok = d.ping().await.is_ok() && d.image_present(IMAGE).await.unwrap_or(false);
    if !ok {
        eprintln!(
            "SKIPPED: no Docker engine at /var/run/docker.sock or no {IMAGE} image \
             (run scripts/base-image.sh); the Docker containerizer is NOT tested"
        );
        return None;
    }
    Some(d)
}

/// Waits for more than `lines` lines in the sandbox's stdout, then checks that
/// its `tick=N` lines are 1, 2, 3.. each once (no line lost or repeated across
/// `what`); returns the stdout.
async fn ticks_once_after(sandbox: &Path, lines: usize, what: &str) -> String {
    eventually(&format!("lines after {what}"), || {
        (read(&sandbox.join("stdout")).lines().count() > lines).then_some(())
    })
    .await;
    let out = read(&sandbox.join("stdout"));
    let ticks: Vec<u64> = out
        .lines()
        .filter_map(|l| l.strip_prefix("tick=")?.parse().ok())
        .collect();
    let expected: Vec<u64> = (1..=ticks.len() as u64).collect();
    assert_eq!(ticks, expected, "every line once, in order, across {what}");
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_task_logs_once_is_limited_checked_killed_and_adopted() {
    let Some(docker) = docker_or_skip().await else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let (plane, url) = fake_plane().await;
    let mut spec = docker_spec(
        "dock.main-1",
        "echo out-$MESOS_TASK_ID; echo err-line >&2; i=0; while true; do i=$((i+1)); echo tick=$i; sleep 0.2; done",
        64.0,
    );
    spec.health_checks = vec![HealthCheck {
        protocol: "COMMAND".into(),
        path: None,
        port_index: 0,
        port: None,
        command: Some(
            "test -d /mnt/mesos/sandbox && test \"$MESOS_SANDBOX\" = /mnt/mesos/sandbox".into(),
        ),
        grace_period_seconds: 30.0,
        interval_seconds: 0.2,
        timeout_seconds: 5.0,
        max_consecutive_failures: 3,
    }];
    plane.lock().unwrap().desired = vec![spec.clone()];
    let node = start("dock-main", work.path(), &url);
    let sandbox = work.path().join("sandboxes/dock/dock.main-1");
    eventually("the container's lines in the sandbox", || {
        let out = read(&sandbox.join("stdout"));
        (out.contains("out-dock.main-1") && read(&sandbox.join("stderr")).contains("err-line"))
            .then_some(())
    })
    .await;
    assert_eq!(
        plane.lock().unwrap().containerizers,
        vec!["docker".to_string()],
        "the node offers docker"
    );
    let healthy = eventually("the COMMAND check passing in the container", || {
        report(&plane, "dock.main-1", |s| {
            s.state == "TASK_RUNNING" && s.health.first().is_some_and(|h| h.alive)
        })
    })
    .await;
    assert_eq!(healthy.instance, Some(1));
    let ids = docker
        .list_labelled("sandtrail.task", "dock.main-1")
        .await
        .unwrap();
    assert_eq!(ids.len(), 1, "one container labelled with the task id");
    let state = docker.inspect(&ids[0]).await.unwrap().unwrap();
    assert!(state.running);
    assert_eq!(
        state.memory,
        64 << 20,
        "mem is the container's memory limit"
    );

    // An agent restart (tasks kept): the new node adopts the same container, and
    // the log keeps going without a line twice.
    node.node.set_keep_tasks_on_shutdown(true);
    node.stop().await;
    let before = read(&sandbox.join("stdout")).lines().count();
    plane.lock().unwrap().reports.clear();
    let node = start("dock-main", work.path(), &url);
    eventually("the adopted container reported running", || {
        report(&plane, "dock.main-1", |s| s.state == "TASK_RUNNING")
    })
    .await;
    assert!(docker.inspect(&ids[0]).await.unwrap().unwrap().running);
    ticks_once_after(&sandbox, before + 3, "the restart").await;

    // The stream cut while the container runs (as an engine restart cuts it; here
    // its pump is killed): the node follows the container's logs again from where
    // the old stream ended, so the lines written meanwhile are there, once.
    let pump_of = || -> Option<i32> {
        let v: Value = serde_json::from_str(&read(&sandbox.join(".sandtrail-container"))).ok()?;
        v["pump"].as_i64().map(|p| p as i32)
    };
    let pump = pump_of().expect("the container file names the pump");
    // SAFETY: kill has no memory preconditions; the pid is the pump this node forked.
    assert_eq!(unsafe { libc::kill(pump, libc::SIGKILL) }, 0);
    let cut = read(&sandbox.join("stdout")).lines().count();
    eventually("a new pump", || pump_of().filter(|p| *p != pump)).await;
    let out = ticks_once_after(&sandbox, cut + 10, "the cut stream").await;
    assert_eq!(
        out.matches("out-dock.main-1").count(),
        1,
        "the replayed start is not written again"
    );

    // Not wanted any more: stopped, reported killed, removed.
    plane.lock().unwrap().desired.clear();
    let killed = eventually("the kill report", || {
        report(&plane, "dock.main-1", |s| s.state != "TASK_RUNNING")
    })
    .await;
    assert_eq!(killed.state, "TASK_KILLED", "{killed:?}");
    assert!(
        docker.inspect(&ids[0]).await.unwrap().is_none(),
        "the container of a killed task is removed"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_and_a_missing_image_fail_the_task_with_a_message() {
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let (plane, url) = fake_plane().await;
    // `tail` holds a newline-free stream whole in memory: far past 16 MiB.
    let oom = docker_spec(
        "dock.oom-1",
        "head -c 200000000 /dev/zero | tail -n 1",
        16.0,
    );
    let mut missing = docker_spec("dock.missing-1", "true", 32.0);
    missing.docker.as_mut().unwrap().image = "sandtrail-no-such-image:never".into();
    let exit = docker_spec("dock.exit-1", "exit 3", 32.0);
    plane.lock().unwrap().desired = vec![oom, missing, exit];
    let node = start("dock-oom", work.path(), &url);
    let oom = eventually("the OOM report", || {
        report(&plane, "dock.oom-1", |s| s.state != "TASK_RUNNING")
    })
    .await;
    assert_eq!(oom.state, "TASK_FAILED", "{oom:?}");
    let msg = oom.message.unwrap_or_default();
    assert!(
        msg.contains("exceeded its memory limit of 16 MiB") && msg.contains("OOM"),
        "{msg}"
    );
    let missing = eventually("the missing image report", || {
        report(&plane, "dock.missing-1", |s| s.state != "TASK_RUNNING")
    })
    .await;
    assert_eq!(missing.state, "TASK_FAILED");
    let msg = missing.message.unwrap_or_default();
    assert!(
        msg.contains("image \"sandtrail-no-such-image:never\" is not on agent dock-oom and pulling it failed"),
        "{msg}"
    );
    let exit = eventually("the exit report", || {
        report(&plane, "dock.exit-1", |s| s.state != "TASK_RUNNING")
    })
    .await;
    assert_eq!(
        (exit.state.as_str(), exit.exit_code, exit.message.as_deref()),
        ("TASK_FAILED", Some(3), Some("container exited with code 3"))
    );
    node.stop().await;
}

/// A fake Docker engine on a unix socket, enough of the Engine API for one task:
/// every call is recorded; `/images/create` answers `pull_answer` (after `release`
/// is notified when `hold_pull`), as the engine streams a pull's progress; a created
/// container runs until the node stops it. Needs no real engine.
struct FakeEngine {
    url: String,
    release: Arc<tokio::sync::Notify>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl FakeEngine {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn pulling(&self) -> bool {
        self.calls().iter().any(|c| c.contains("/images/create"))
    }
}

async fn fake_engine(dir: &Path, hold_pull: bool, pull_answer: &'static str) -> FakeEngine {
    use axum::extract::Request;
    use axum::http::StatusCode;
    let release = Arc::new(tokio::sync::Notify::new());
    let calls = Arc::new(Mutex::new(Vec::new()));
    let (r, c) = (release.clone(), calls.clone());
    let app = axum::Router::new().fallback(move |req: Request| {
        let (release, calls) = (r.clone(), c.clone());
        async move {
            let path = req.uri().path().to_string();
            let call = format!("{} {}", req.method(), req.uri());
            calls.lock().unwrap().push(call);
            let get = req.method() == axum::http::Method::GET;
            if path.ends_with("/_ping") {
                (StatusCode::OK, "OK".to_string())
            } else if path.ends_with("/images/create") {
                if hold_pull {
                    release.notified().await;
                }
                (StatusCode::OK, pull_answer.to_string())
            } else if path.ends_with("/containers/json") {
                (StatusCode::OK, "[]".into())
            } else if path.ends_with("/containers/create") {
                (StatusCode::CREATED, "{\"Id\":\"fake1\"}".into())
            } else if path.ends_with("/fake1/attach") || path.ends_with("/fake1/start") {
                (StatusCode::OK, String::new())
            } else if path.ends_with("/fake1/wait") {
                std::future::pending::<()>().await;
                unreachable!()
            } else if get && path.ends_with("/containers/fake1/json") {
                let v = json!({"Id": "fake1", "State": {"Running": true, "Pid": 0,
                    "StartedAt": "2026-01-01T00:00:00Z"}, "Config": {"Labels": {}}});
                (StatusCode::OK, v.to_string())
            } else {
                (
                    StatusCode::NOT_FOUND,
                    "{\"message\":\"no such object\"}".into(),
                )
            }
        }
    });
    let sock = dir.join("docker.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    FakeEngine {
        url: format!("unix://{}", sock.display()),
        release,
        calls,
    }
}

/// `forcePullImage` with a registry that has the image: the node pulls it (name and
/// tag apart, as the engine takes them) before it creates the container, even though
/// the image may be on the engine already, and the task then runs. The real engine
/// here has no registry to pull from, so the engine is a fake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_pull_image_pulls_before_the_launch_and_the_task_runs() {
    let work = tempfile::tempdir().unwrap();
    let engine = fake_engine(
        work.path(),
        false,
        "{\"status\":\"Pulling from library/demo\"}\n{\"status\":\"Status: Image is up to date for demo:7\"}\n",
    )
    .await;
    let (plane, url) = fake_plane().await;
    let mut spec = docker_spec("dock.force-1", "true", 64.0);
    let d = spec.docker.as_mut().unwrap();
    d.image = "registry.example/demo:7".into();
    d.force_pull_image = true;
    plane.lock().unwrap().desired = vec![spec];
    let node = start_with("dock-fake", work.path(), &url, &engine.url);
    let running = eventually("the task running after the pull", || {
        report(&plane, "dock.force-1", |s| s.state == "TASK_RUNNING")
    })
    .await;
    assert_eq!(running.instance, Some(1));
    let calls = engine.calls();
    let pull = calls
        .iter()
        .position(|c| c.starts_with("POST") && c.contains("/images/create"))
        .expect("a pull request");
    assert!(
        calls[pull].contains("fromImage=registry.example%2Fdemo&tag=7"),
        "{calls:?}"
    );
    let create = calls
        .iter()
        .position(|c| c.contains("/containers/create"))
        .expect("a create request");
    assert!(pull < create, "pulled before the create: {calls:?}");
    assert!(
        !calls.iter().any(|c| c.contains("/images/registry.example")),
        "forcePullImage pulls without asking whether the image is there: {calls:?}"
    );
    node.stop().await;
}

/// Regression (issue 19 review): the pull of a missing image was awaited in the
/// node's heartbeat loop with no timeout, so a slow registry stopped the heartbeats
/// and the agent was declared lost. The pull now runs beside the loop; the node
/// keeps heartbeating while it hangs, and its failure fails the task with the
/// engine's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_image_pull_does_not_stop_the_heartbeats() {
    let work = tempfile::tempdir().unwrap();
    let engine = fake_engine(
        work.path(),
        true,
        "{\"status\":\"Pulling\"}\n{\"error\":\"registry unreachable\"}\n",
    )
    .await;
    let (plane, url) = fake_plane().await;
    let mut spec = docker_spec("dock.pull-1", "true", 64.0);
    spec.docker.as_mut().unwrap().image = "registry.example/slow:1".into();
    plane.lock().unwrap().desired = vec![spec];
    let node = start_with("dock-fake", work.path(), &url, &engine.url);
    eventually("the pull to start", || engine.pulling().then_some(())).await;
    let heartbeats = || metric(&node.node, "sandtrail_node_heartbeats_total");
    let before = heartbeats().expect("a heartbeat counter");
    eventually("heartbeats while the pull hangs", || {
        (heartbeats().unwrap_or(0) >= before + 5).then_some(())
    })
    .await;
    assert!(
        report(&plane, "dock.pull-1", |_| true).is_none(),
        "nothing to report while pulling"
    );
    engine.release.notify_waiters();
    let failed = eventually("the task failed by the pull", || {
        report(&plane, "dock.pull-1", |s| s.state == "TASK_FAILED")
    })
    .await;
    let message = failed.message.unwrap_or_default();
    assert!(
        message.contains("registry unreachable") && message.contains("registry.example/slow:1"),
        "{message}"
    );
    node.stop().await;
}
