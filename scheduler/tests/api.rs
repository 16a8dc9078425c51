//! The control plane over real HTTP: fake agents register and heartbeat against
//! `scheduler::router()` served on 127.0.0.1:0, the way nodes do.

use protocol::{AgentInfo, ServiceEndpoint, TaskSpec, TaskStatus};
use scheduler::{HeartbeatResponse, Scheduler, SchedulerConfig};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "s3cret";

struct Server {
    base: String,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    http: reqwest::Client,
}

impl Server {
    async fn start(dir: &Path) -> Server {
        let scheduler = Scheduler::open(SchedulerConfig {
            data_dir: dir.to_path_buf(),
            token: Some(TOKEN.into()),
            ..SchedulerConfig::default()
        })
        .unwrap();
        let cancel = CancellationToken::new();
        let reconcile = scheduler.spawn(cancel.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = scheduler::router(scheduler);
        let stop = cancel.clone();
        let serve = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .unwrap();
        });
        Server {
            base,
            cancel,
            tasks: vec![reconcile, serve],
            http: reqwest::Client::new(),
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        for t in self.tasks {
            t.await.unwrap();
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        // Reads need a token as much as writes (issue 15).
        let r = self
            .http
            .get(self.url(path))
            .header(protocol::TOKEN_HEADER, TOKEN)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path)).json(body);
        if let Some(t) = token {
            req = req.header(protocol::TOKEN_HEADER, t);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, body, Some(TOKEN))
            .await
    }

    async fn register(&self, name: &str, address: &str) {
        let info = AgentInfo {
            name: name.into(),
            address: address.into(),
            router_url: format!("http://{address}:4140"),
            resources: BTreeMap::new(),
            attributes: BTreeMap::new(),
            last_heartbeat: None,
            state: String::new(),
            containerizers: Vec::new(),
        };
        let (status, body) = self
            .post("/v1/agents/register", &serde_json::to_value(info).unwrap())
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["state"], "active");
    }

    async fn heartbeat(&self, agent: &str, tasks: &[TaskStatus]) -> Vec<TaskSpec> {
        let (status, body) = self
            .post(
                &format!("/v1/agents/{agent}/heartbeat"),
                &json!({ "tasks": tasks }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value::<HeartbeatResponse>(body)
            .unwrap()
            .tasks
    }
}

fn report(spec: &TaskSpec, state: &str, ports: &[u16]) -> TaskStatus {
    TaskStatus {
        task: spec.task.clone(),
        app: spec.app.clone(),
        state: state.into(),
        ports: ports.to_vec(),
        exit_code: (state == "TASK_FAILED").then_some(1),
        message: None,
        instance: None,
        health: Vec::new(),
        started_at: None,
    }
}

fn fib_app() -> Value {
    json!({
        "id": "/fib",
        "cmd": "./fib --port $PORT0",
        "instances": 3,
        "env": {"FIB_MAX": "40"},
        "cpus": 0.2,
        "mem": 64,
        "portDefinitions": [{"port": 0, "name": "http"}],
        "labels": {"team": "demo"},
        // Small so the replacement after a failure shows up quickly.
        "backoffSeconds": 0.05,
    })
}

#[tokio::test]
async fn agents_get_tasks_report_them_and_failed_tasks_are_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let agents = [
        ("node-1", "10.0.0.1"),
        ("node-2", "10.0.0.2"),
        ("node-3", "10.0.0.3"),
    ];
    for (name, addr) in agents {
        server.register(name, addr).await;
    }

    let (status, app) = server.post("/v2/apps", &fib_app()).await;
    assert_eq!(status, 201, "{app}");
    assert_eq!(app["id"], "/fib");
    assert_eq!(app["instances"], 3);
    assert_eq!(
        app["labels"]["team"], "demo",
        "known marathon fields are kept"
    );
    let (status, _) = server.post("/v2/apps", &fib_app()).await;
    assert_eq!(status, 409, "same id twice");

    // Each agent gets exactly one of the three instances.
    let mut specs = BTreeMap::new();
    for (name, _) in agents {
        let got = server.heartbeat(name, &[]).await;
        assert_eq!(got.len(), 1, "{name}: {got:?}");
        let spec = got.into_iter().next().unwrap();
        assert_eq!(spec.app, "fib");
        assert!(spec.task.starts_with("fib."), "{}", spec.task);
        assert_eq!(spec.cmd, "./fib --port $PORT0");
        assert_eq!(spec.env.get("FIB_MAX").map(String::as_str), Some("40"));
        assert_eq!(spec.port_count, 1);
        specs.insert(name, spec);
    }
    let mut instances: Vec<u32> = specs.values().map(|s| s.instance).collect();
    instances.sort();
    assert_eq!(instances, vec![0, 1, 2]);

    // node-1 reports its task running: it becomes an endpoint of the service.
    let running = report(&specs["node-1"], "TASK_RUNNING", &[31001]);
    let again = server
        .heartbeat("node-1", std::slice::from_ref(&running))
        .await;
    assert_eq!(
        again,
        vec![specs["node-1"].clone()],
        "a running task stays desired"
    );
    let (code, body) = server.get("/v1/services/fib").await;
    assert_eq!(code, 200, "{body}");
    let eps: Vec<ServiceEndpoint> = serde_json::from_value(body).unwrap();
    assert_eq!(
        eps,
        vec![ServiceEndpoint {
            app: "fib".into(),
            task: specs["node-1"].task.clone(),
            host: "node-1".into(),
            address: "10.0.0.1".into(),
            port: 31001,
            instance: specs["node-1"].instance,
        }]
    );
    let (code, body) = server.get("/v1/services//fib").await;
    assert_eq!(
        (code, body.as_array().map(Vec::len)),
        (200, Some(1)),
        "leading slash accepted"
    );
    let (code, _) = server.get("/v1/services/nope").await;
    assert_eq!(code, 404);

    let (_, apps) = server.get("/v2/apps").await;
    assert_eq!(apps["apps"][0]["tasksRunning"], 1, "{apps}");
    assert_eq!(apps["apps"][0]["tasksStaged"], 2, "{apps}");
    let (_, one) = server.get("/v2/apps/fib").await;
    assert_eq!(one["app"]["tasks"].as_array().unwrap().len(), 3, "{one}");
    let (_, tasks) = server.get("/v2/apps/fib/tasks").await;
    let tasks = tasks["tasks"].as_array().unwrap().clone();
    let t = tasks.iter().find(|t| t["id"] == running.task).unwrap();
    assert_eq!(t["state"], "TASK_RUNNING");
    assert_eq!(t["host"], "node-1");
    assert_eq!(t["slaveId"], "node-1");
    assert_eq!(t["appId"], "/fib");
    assert_eq!(t["ports"], json!([31001]));
    assert!(
        t["startedAt"].is_string() && t["stagedAt"].is_string(),
        "{t}"
    );

    // node-2's task fails: after the back-off a replacement with the same instance
    // number shows up (the node that had it is the least loaded, so it gets it).
    let failed = specs["node-2"].clone();
    server
        .heartbeat("node-2", &[report(&failed, "TASK_FAILED", &[])])
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let replacement = loop {
        let mut found = None;
        for (name, _) in agents {
            let report: Vec<TaskStatus> = if name == "node-1" {
                vec![running.clone()]
            } else {
                vec![]
            };
            for spec in server.heartbeat(name, &report).await {
                if spec.instance == failed.instance {
                    found = Some(spec);
                }
            }
        }
        if let Some(spec) = found.filter(|s| s.task != failed.task) {
            break spec;
        }
        assert!(
            Instant::now() < deadline,
            "no replacement for instance {}",
            failed.instance
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_ne!(replacement.task, failed.task);
    let (_, all) = server.get("/v2/tasks").await;
    let ids: Vec<&str> = all["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(!ids.contains(&failed.task.as_str()));
    // Marathon's shape has no restarts (the `marathon` client refuses unknown keys);
    // /v1/tasks adds them: the replaced instance counts one.
    assert!(all["tasks"][0].get("restarts").is_none(), "{all}");
    let (_, ours) = server.get("/v1/tasks").await;
    let restarts_of = |id: &str| {
        ours["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .map(|t| t["restarts"].as_u64().unwrap())
    };
    assert_eq!(restarts_of(&replacement.task), Some(1), "{ours}");

    // Scale down to one: the highest instance numbers go.
    let (code, body) = server
        .send(
            reqwest::Method::PUT,
            "/v2/apps/fib",
            &json!({"instances": 1}),
            Some(TOKEN),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert!(body["deploymentId"].is_string());
    // Task JSON carries no instance number (the marathon client rejects unknown
    // fields), so ask the node protocol, whose specs do.
    let mut left = Vec::new();
    for (name, _) in agents {
        let report: Vec<TaskStatus> = if name == "node-1" {
            vec![running.clone()]
        } else {
            vec![]
        };
        left.extend(
            server
                .heartbeat(name, &report)
                .await
                .iter()
                .map(|t| t.instance),
        );
    }
    assert_eq!(left, vec![0]);
    let (_, app) = server.get("/v2/apps/fib").await;
    assert_eq!(
        app["app"]["cmd"], "./fib --port $PORT0",
        "a scale keeps the definition"
    );

    let (code, _) = server
        .post("/v1/agents/ghost/heartbeat", &json!({"tasks": []}))
        .await;
    assert_eq!(code, 404, "unknown agent must re-register");
    let (code, agents_list) = server.get("/v1/agents").await;
    assert_eq!(code, 200);
    assert_eq!(agents_list.as_array().unwrap().len(), 3);
    assert_eq!(agents_list[0]["state"], "active");
    assert!(agents_list[0]["last_heartbeat"].is_string());

    server.stop().await;
}

/// Issue 14: the shipper figures a heartbeat carries show under `shipper` in
/// `/v1/agents`, per agent; an agent whose heartbeats carry none (an older node) has
/// no `shipper` key, and a later heartbeat without figures clears stale ones.
#[tokio::test]
async fn heartbeat_shipper_status_shows_in_the_agent_list() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    server.register("node-1", "10.0.0.1").await;
    server.register("node-2", "10.0.0.2").await;
    let status = protocol::ShipperStatus {
        log_bytes_on_disk: 3 << 20,
        log_budget_bytes_total: 8 << 20,
        log_bytes_dropped: 4096,
        spool_bytes: 1 << 20,
        spool_max_bytes: 1 << 30,
        reading_paused: true,
        lag_bytes: 777,
    };
    let (code, body) = server
        .post(
            "/v1/agents/node-1/heartbeat",
            &json!({"tasks": [], "shipper": status}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    server.heartbeat("node-2", &[]).await;

    let by_name = |list: &Value, name: &str| -> Value {
        list.as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in {list}"))
    };
    let (code, list) = server.get("/v1/agents").await;
    assert_eq!(code, 200);
    let shown: protocol::ShipperStatus =
        serde_json::from_value(by_name(&list, "node-1")["shipper"].clone()).unwrap();
    assert_eq!(shown, status);
    assert_eq!(by_name(&list, "node-1")["shipper"]["reading_paused"], true);
    assert!(by_name(&list, "node-2").get("shipper").is_none(), "{list}");

    server.heartbeat("node-1", &[]).await;
    let (_, list) = server.get("/v1/agents").await;
    assert!(by_name(&list, "node-1").get("shipper").is_none(), "{list}");
    server.stop().await;
}

#[tokio::test]
async fn invalid_app_is_422_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let (code, body) = server
        .post(
            "/v2/apps",
            &json!({"id": "Not Valid", "instnces": 2, "instances": -3, "env": {"A": 1}}),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    let details: Vec<String> = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["errors"][0].as_str().unwrap().to_string())
        .collect();
    let all = details.join("\n");
    assert_eq!(details.len(), 5, "{all}");
    for needle in [
        "\"instnces\"",
        "id \"Not Valid\"",
        "cmd is required",
        "got -3",
        "env.A",
    ] {
        assert!(all.contains(needle), "{needle} missing in:\n{all}");
    }
    let (_, apps) = server.get("/v2/apps").await;
    assert_eq!(apps["apps"], json!([]), "nothing created");

    let (code, body) = server
        .send(reqwest::Method::POST, "/v2/apps", &json!("x"), Some(TOKEN))
        .await;
    assert_eq!(code, 422, "{body}");
    let r = server
        .http
        .post(server.url("/v2/apps"))
        .header(protocol::TOKEN_HEADER, TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    server.stop().await;
}

#[tokio::test]
async fn writes_and_agent_calls_need_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let (code, _) = server
        .send(reqwest::Method::POST, "/v2/apps", &fib_app(), None)
        .await;
    assert_eq!(code, 401);
    let (code, _) = server
        .send(reqwest::Method::POST, "/v2/apps", &fib_app(), Some("wrong"))
        .await;
    assert_eq!(code, 401);
    let agent = json!({"name": "node-1", "address": "127.0.0.1"});
    let (code, _) = server
        .send(reqwest::Method::POST, "/v1/agents/register", &agent, None)
        .await;
    assert_eq!(code, 401);
    let (code, _) = server
        .send(
            reqwest::Method::POST,
            "/v1/agents/node-1/heartbeat",
            &json!({}),
            None,
        )
        .await;
    assert_eq!(code, 401);
    let (code, _) = server
        .send(reqwest::Method::DELETE, "/v2/apps/fib", &json!({}), None)
        .await;
    assert_eq!(code, 401);
    // Bearer works as well as the sandtrail header.
    let r = server
        .http
        .post(server.url("/v2/apps"))
        .bearer_auth(TOKEN)
        .json(&fib_app())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    // Reads need the token too (issue 15); `/ping` stays open for probes.
    assert_eq!(server.get("/v2/apps").await.0, 200);
    let (code, _) = server
        .send(reqwest::Method::GET, "/v2/apps", &json!({}), None)
        .await;
    assert_eq!(code, 401);
    let pong = server
        .http
        .get(server.url("/ping"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(pong, "pong");
    let (code, info) = server.get("/v2/info").await;
    assert_eq!(code, 200);
    assert_eq!(info["name"], "sandtrail");
    server.stop().await;
}

#[tokio::test]
async fn reopened_scheduler_keeps_apps_and_adopts_running_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    server.register("node-1", "10.0.0.1").await;
    let mut app = fib_app();
    app["instances"] = json!(1);
    assert_eq!(server.post("/v2/apps", &app).await.0, 201);
    let (code, _) = server
        .post(
            "/v2/apps",
            &json!({"id": "/prod/web", "cmd": "web", "instances": 0}),
        )
        .await;
    assert_eq!(code, 201);
    let spec = server.heartbeat("node-1", &[]).await.remove(0);
    let running = report(&spec, "TASK_RUNNING", &[31001]);
    server
        .heartbeat("node-1", std::slice::from_ref(&running))
        .await;
    server.stop().await;

    let server = Server::start(dir.path()).await;
    let (code, body) = server.get("/v2/apps/fib").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["app"]["env"]["FIB_MAX"], "40");
    assert_eq!(body["app"]["labels"]["team"], "demo");
    assert_eq!(server.get("/v2/apps/prod/web").await.0, 200);
    // The node heartbeats, learns it is unknown, registers again, reports its task:
    // the scheduler adopts it instead of starting a second one.
    let (code, _) = server
        .post("/v1/agents/node-1/heartbeat", &json!({"tasks": [running]}))
        .await;
    assert_eq!(code, 404);
    server.register("node-1", "10.0.0.1").await;
    let desired = server
        .heartbeat("node-1", std::slice::from_ref(&running))
        .await;
    assert_eq!(desired.len(), 1, "{desired:?}");
    assert_eq!(desired[0].task, spec.task);
    let (_, tasks) = server.get("/v2/tasks").await;
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 1, "{tasks}");
    assert_eq!(tasks["tasks"][0]["state"], "TASK_RUNNING");

    let (code, _) = server
        .send(
            reqwest::Method::DELETE,
            "/v2/apps/fib",
            &json!({}),
            Some(TOKEN),
        )
        .await;
    assert_eq!(code, 200);
    assert!(
        server.heartbeat("node-1", &[running]).await.is_empty(),
        "deleted app's task leaves the desired set"
    );
    server.stop().await;

    let server = Server::start(dir.path()).await;
    assert_eq!(
        server.get("/v2/apps/fib").await.0,
        404,
        "the delete was persisted"
    );
    server.stop().await;
}

/// Reads server-sent events until `want` event types were all seen (or the deadline).
async fn read_events(resp: reqwest::Response, want: &[&str]) -> Vec<(String, Value)> {
    use futures::StreamExt;
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut seen: Vec<(String, Value)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !want.iter().all(|w| seen.iter().any(|(k, _)| k == w)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, stream.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {want:?}, saw {seen:?}"))
            .expect("stream open")
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let kind = block
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or("");
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                seen.push((kind.to_string(), serde_json::from_str(data).unwrap()));
            }
        }
    }
    seen
}

#[tokio::test]
async fn restart_patch_kill_and_deployments_over_http_with_events() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    s.register("node-1", "10.0.0.1").await;
    let events = s
        .http
        .get(s.url("/v2/events"))
        .header(protocol::TOKEN_HEADER, TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status().as_u16(), 200);

    let (status, body) = s
        .post(
            "/v2/apps",
            &json!({"id": "/prod/web", "cmd": "./web", "instances": 2,
                    "healthChecks": [{"protocol": "TCP", "portIndex": 0}],
                    "upgradeStrategy": {"minimumHealthCapacity": 1, "maximumOverCapacity": 0.5}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, deps) = s.get("/v2/deployments").await;
    assert_eq!(deps.as_array().unwrap().len(), 1, "{deps}");
    assert_eq!(deps[0]["affectedApps"][0], "/prod/web");
    let specs = s.heartbeat("node-1", &[]).await;
    assert_eq!(specs.len(), 2);
    let healthy = |sp: &TaskSpec| {
        let mut st = report(sp, "TASK_RUNNING", &[31000]);
        st.health = vec![protocol::HealthResult {
            alive: true,
            ..Default::default()
        }];
        st
    };
    let all: Vec<TaskStatus> = specs.iter().map(healthy).collect();
    s.heartbeat("node-1", &all).await;
    let (_, app) = s.get("/v2/apps/prod/web").await;
    assert_eq!(app["app"]["tasksHealthy"], 2, "{app}");
    assert_eq!(
        app["app"]["tasks"][0]["healthCheckResults"][0]["alive"], true,
        "{app}"
    );
    let (_, deps) = s.get("/v2/deployments").await;
    assert_eq!(
        deps,
        json!([]),
        "the start deployment is done once all are healthy"
    );

    // Rolling restart, min health 1 / over 0.5: one new task at a time, old ones
    // killed only after a new one is healthy.
    let (status, body) = s.post("/v2/apps/prod/web/restart", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let dep = body["deploymentId"].as_str().unwrap().to_string();
    let step = s.heartbeat("node-1", &all).await;
    assert_eq!(step.len(), 3, "{step:?}");
    let new1 = step
        .iter()
        .find(|t| specs.iter().all(|o| o.task != t.task))
        .unwrap()
        .clone();
    let mut report_now = all.clone();
    report_now.push(report(&new1, "TASK_RUNNING", &[31001]));
    assert_eq!(
        s.heartbeat("node-1", &report_now).await.len(),
        3,
        "not healthy yet: nothing killed"
    );
    report_now.pop();
    report_now.push(healthy(&new1));
    let step = s.heartbeat("node-1", &report_now).await;
    assert_eq!(
        step.len(),
        3,
        "one old killed, one more new started: {step:?}"
    );
    assert_eq!(
        step.iter()
            .filter(|t| specs.iter().any(|o| o.task == t.task))
            .count(),
        1
    );
    let (_, deps) = s.get("/v2/deployments").await;
    assert_eq!(deps[0]["id"], dep.as_str());
    let new: Vec<TaskStatus> = step
        .iter()
        .filter(|t| specs.iter().all(|o| o.task != t.task))
        .map(healthy)
        .collect();
    let old_left: Vec<TaskStatus> = step
        .iter()
        .filter(|t| specs.iter().any(|o| o.task == t.task))
        .map(healthy)
        .collect();
    let mut r = new.clone();
    r.extend(old_left);
    let fin = s.heartbeat("node-1", &r).await;
    assert_eq!(fin.len(), 2);
    assert!(
        fin.iter().all(|t| specs.iter().all(|o| o.task != t.task)),
        "{fin:?}"
    );
    let (_, deps) = s.get("/v2/deployments").await;
    assert_eq!(deps, json!([]));

    // PATCH scales; killing a task with scale=true lowers instances.
    let (status, body) = s
        .send(
            reqwest::Method::PATCH,
            "/v2/apps/prod/web",
            &json!({"instances": 3}),
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, app) = s.get("/v2/apps/prod/web").await;
    assert_eq!(app["app"]["instances"], 3);
    let victim = &fin[0].task;
    let (status, body) = s
        .send(
            reqwest::Method::DELETE,
            &format!("/v2/apps/prod/web/tasks/{victim}?scale=true"),
            &json!({}),
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["deploymentId"].is_string(), "{body}");
    let (_, app) = s.get("/v2/apps/prod/web").await;
    assert_eq!(app["app"]["instances"], 2);
    let (status, _) = s
        .send(
            reqwest::Method::DELETE,
            "/v2/apps/prod/web/tasks/prod_web.nope",
            &json!({}),
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, 404);

    // A deployment that cannot finish (no room for 5 with UNIQUE) is shown, can be
    // rolled back, and the app says why it waits.
    let (status, _) = s
        .send(
            reqwest::Method::PUT,
            "/v2/apps/prod/web",
            &json!({"instances": 5, "constraints": [["hostname", "UNIQUE"]]}),
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, 200);
    let (_, app) = s.get("/v2/apps/prod/web").await;
    let msg = app["app"]["lastTaskFailure"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("hostname UNIQUE"), "{app}");
    let (_, q) = s.get("/v2/queue").await;
    assert!(
        q["queue"][0]["message"]
            .as_str()
            .unwrap()
            .contains("UNIQUE"),
        "{q}"
    );
    let (_, deps) = s.get("/v2/deployments").await;
    let id = deps[0]["id"].as_str().unwrap().to_string();
    let (status, body) = s
        .send(
            reqwest::Method::DELETE,
            &format!("/v2/deployments/{id}"),
            &json!({}),
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, app) = s.get("/v2/apps/prod/web").await;
    assert_eq!(app["app"]["instances"], 2, "rolled back");
    assert!(app["app"].get("constraints").is_none(), "{app}");

    let seen = read_events(
        events,
        &[
            "deployment_info",
            "deployment_success",
            "status_update_event",
            "health_status_changed_event",
            "deployment_failed",
        ],
    )
    .await;
    let running = seen
        .iter()
        .find(|(k, v)| k == "status_update_event" && v["taskStatus"] == "TASK_RUNNING")
        .unwrap();
    assert_eq!(running.1["appId"], "/prod/web");
    assert_eq!(running.1["eventType"], "status_update_event");
    s.stop().await;
}

#[tokio::test]
async fn fixed_host_ports_conflict_across_two_agents_and_the_queue_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    // node-1 offers a Mesos port range; node-2 declares none (its node picks ports).
    let (code, body) = server
        .post(
            "/v1/agents/register",
            &json!({"name": "node-1", "address": "10.0.0.1",
                    "resources": {"disk": 2048}, "ports": [{"begin": 31000, "end": 31010}]}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    server.register("node-2", "10.0.0.2").await;
    let app = json!({
        "id": "/lb", "cmd": "./lb --port $PORT_HTTP", "instances": 3, "disk": 512,
        "requirePorts": true,
        "portDefinitions": [{"port": 31005, "name": "http"}, {"port": 0, "name": "admin"}],
    });
    let (code, body) = server.post("/v2/apps", &app).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(
        (body["disk"].as_f64(), &body["requirePorts"]),
        (Some(512.0), &json!(true))
    );

    let on1 = server.heartbeat("node-1", &[]).await;
    let on2 = server.heartbeat("node-2", &[]).await;
    assert_eq!((on1.len(), on2.len()), (1, 1), "{on1:?} {on2:?}");
    assert_eq!(on1[0].ports[0], 31005);
    assert!(
        (31000..=31010).contains(&on1[0].ports[1]),
        "{:?}",
        on1[0].ports
    );
    assert_eq!(on2[0].ports, vec![31005, 0], "node-2 picks the dynamic one");
    assert_eq!(on1[0].port_definitions[1].name, "admin");

    let (_, queue) = server.get("/v2/queue").await;
    let message = queue["queue"][0]["message"].as_str().unwrap_or_default();
    for needle in [
        "cannot place 1 task",
        "node-1: host port 31005 is already in use",
        "node-2: host port 31005 is already in use",
    ] {
        assert!(message.contains(needle), "{needle} missing in {queue}");
    }
    let (_, lb) = server.get("/v2/apps/lb").await;
    assert!(lb["app"]["lastTaskFailure"]["message"]
        .as_str()
        .unwrap()
        .contains("31005"));
    assert_eq!(lb["app"]["disk"], 512.0);

    let (_, agents) = server.get("/v1/agents").await;
    let node1 = agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "node-1")
        .unwrap()
        .clone();
    assert_eq!(node1["ports"], json!([{"begin": 31000, "end": 31010}]));
    assert_eq!(node1["used"]["disk"], 512.0);
    let mut ports = on1[0].ports.clone();
    ports.sort();
    assert_eq!(node1["used"]["ports"], json!(ports), "{node1}");
    server.stop().await;
}

#[tokio::test]
async fn app_versions_are_listed_newest_first_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut app = fib_app();
    app["instances"] = json!(1);
    let (code, created) = server.post("/v2/apps", &app).await;
    assert_eq!(code, 201, "{created}");
    let put = |body: Value| {
        let server = &server;
        async move {
            let (code, body) = server
                .send(reqwest::Method::PUT, "/v2/apps/fib", &body, Some(TOKEN))
                .await;
            assert_eq!(code, 200, "{body}");
            body["version"].as_str().unwrap().to_string()
        }
    };
    let scaled = put(json!({"instances": 2})).await;
    let same = put(json!({"instances": 2})).await;
    assert_eq!(
        same, scaled,
        "an update that changes nothing keeps the version"
    );
    let (code, body) = server
        .send(
            reqwest::Method::PATCH,
            "/v2/apps/fib",
            &json!({"env": {"FIB_MAX": "50"}}),
            Some(TOKEN),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let patched = body["version"].as_str().unwrap().to_string();

    let created = created["version"].as_str().unwrap().to_string();
    check_versions(&server, &created, &scaled, &patched).await;
    server.stop().await;

    let server = Server::start(dir.path()).await;
    check_versions(&server, &created, &scaled, &patched).await;
    let (code, body) = server
        .get("/v2/apps/fib/versions/2001-01-01T00:00:00.000Z")
        .await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = server.get("/v2/apps/fib/versions/yesterday").await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(server.get("/v2/apps/nope/versions").await.0, 404);
    server.stop().await;
}

/// Draining an agent (issue 20): its tasks move to the others, each replacement
/// started and running before the drained task is killed (the app never runs short),
/// nothing new is placed on it, it stays drained across a restart, and undraining puts
/// it back in use.
#[tokio::test]
async fn a_drained_agent_gets_no_tasks_and_its_tasks_move_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    server.register("node-1", "10.0.0.1").await;
    server.register("node-2", "10.0.0.2").await;
    let mut app = fib_app();
    app["instances"] = json!(2);
    let (code, body) = server.post("/v2/apps", &app).await;
    assert_eq!(code, 201, "{body}");
    let on1 = server.heartbeat("node-1", &[]).await;
    let on2 = server.heartbeat("node-2", &[]).await;
    assert_eq!((on1.len(), on2.len()), (1, 1), "spread over both");

    let drain = |method: reqwest::Method, agent: &'static str, token: Option<&'static str>| {
        let server = &server;
        async move {
            server
                .send(
                    method,
                    &format!("/v1/agents/{agent}/drain"),
                    &json!({}),
                    token,
                )
                .await
        }
    };
    assert_eq!(drain(reqwest::Method::POST, "node-1", None).await.0, 401);
    let (code, body) = drain(reqwest::Method::POST, "node-9", Some(TOKEN)).await;
    assert_eq!(code, 404, "{body}");
    let run1 = report(&on1[0], "TASK_RUNNING", &[31001]);
    let run2 = report(&on2[0], "TASK_RUNNING", &[31002]);
    server
        .heartbeat("node-1", std::slice::from_ref(&run1))
        .await;
    server
        .heartbeat("node-2", std::slice::from_ref(&run2))
        .await;
    let (code, body) = drain(reqwest::Method::POST, "node-1", Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    // The replacement first: node-1 keeps its task while node-2 starts another.
    assert_eq!(
        server
            .heartbeat("node-1", std::slice::from_ref(&run1))
            .await,
        on1,
        "not killed before its replacement runs"
    );
    let now2 = server
        .heartbeat("node-2", std::slice::from_ref(&run2))
        .await;
    assert_eq!(now2.len(), 2, "the replacement goes to node-2: {now2:?}");
    let (_, tasks) = server.get("/v2/tasks").await;
    let tasks = tasks["tasks"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        tasks.len(),
        3,
        "both old tasks and the replacement: {tasks:?}"
    );
    // Once it runs, the drained task goes.
    let both: Vec<TaskStatus> = now2
        .iter()
        .zip([31002, 31003])
        .map(|(t, port)| report(t, "TASK_RUNNING", &[port]))
        .collect();
    assert_eq!(
        server.heartbeat("node-2", &both).await.len(),
        2,
        "onto node-2"
    );
    assert!(
        server.heartbeat("node-1", &[]).await.is_empty(),
        "moved off node-1"
    );
    let drained = |agents: &Value, name: &str| {
        agents
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .unwrap()["drained"]
            .clone()
    };
    let (_, agents) = server.get("/v1/agents").await;
    assert_eq!(drained(&agents, "node-1"), json!(true));
    assert_eq!(drained(&agents, "node-2"), json!(false));
    server.stop().await;

    let server = Server::start(dir.path()).await;
    server.register("node-1", "10.0.0.1").await;
    let (_, agents) = server.get("/v1/agents").await;
    assert_eq!(
        drained(&agents, "node-1"),
        json!(true),
        "kept across a restart"
    );
    let (code, _) = server
        .send(
            reqwest::Method::DELETE,
            "/v1/agents/node-1/drain",
            &json!({}),
            Some(TOKEN),
        )
        .await;
    assert_eq!(code, 200);
    let (_, agents) = server.get("/v1/agents").await;
    assert_eq!(drained(&agents, "node-1"), json!(false));
    server.stop().await;
}

/// Marathon's rollback: `PUT /v2/apps/{id}` with `{"version": V}` alone.
#[tokio::test]
async fn a_put_of_a_version_alone_rolls_the_app_back_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut app = fib_app();
    app["instances"] = json!(1);
    let (code, created) = server.post("/v2/apps", &app).await;
    assert_eq!(code, 201, "{created}");
    let created = created["version"].as_str().unwrap().to_string();
    let put = |body: Value| {
        let server = &server;
        async move {
            server
                .send(reqwest::Method::PUT, "/v2/apps/fib", &body, Some(TOKEN))
                .await
        }
    };
    let (code, body) = put(json!({"instances": 3, "env": {"FIB_MAX": "7"}})).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = put(json!({ "version": created })).await;
    assert_eq!(code, 200, "{body}");
    let rolled = body["version"].as_str().unwrap().to_string();
    assert_ne!(rolled, created, "a rollback is a new version");
    let (_, now) = server.get("/v2/apps/fib").await;
    assert_eq!(now["app"]["instances"], 1, "{now}");
    assert_eq!(now["app"]["env"]["FIB_MAX"], "40", "{now}");
    let (_, versions) = server.get("/v2/apps/fib/versions").await;
    assert_eq!(versions["versions"][0], json!(rolled));

    // Bad versions are named; a version beside other fields is the read-only one.
    let (code, body) = put(json!({"version": "2001-01-01T00:00:00.000Z"})).await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = put(json!({"version": "yesterday"})).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.to_string().contains("yesterday"), "{body}");
    let (code, body) = put(json!({"version": 5})).await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = put(json!({"version": "yesterday", "instances": 2})).await;
    assert_eq!(code, 200, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn version_info_tells_scaling_from_config_changes_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut app = fib_app();
    app["instances"] = json!(1);
    let (code, created) = server.post("/v2/apps", &app).await;
    assert_eq!(code, 201, "{created}");
    let created = created["version"].as_str().unwrap().to_string();
    let change = |method: reqwest::Method, body: Value| {
        let server = &server;
        async move {
            let (code, body) = server
                .send(method, "/v2/apps/fib", &body, Some(TOKEN))
                .await;
            assert_eq!(code, 200, "{body}");
            body["version"].as_str().unwrap().to_string()
        }
    };
    assert_eq!(info(&server).await, (created.clone(), created.clone()));

    let scaled = change(reqwest::Method::PUT, json!({"instances": 2})).await;
    assert_ne!(scaled, created);
    assert_eq!(
        info(&server).await,
        (scaled.clone(), created.clone()),
        "scaling moves only lastScalingAt"
    );
    let patched = change(reqwest::Method::PATCH, json!({"env": {"FIB_MAX": "50"}})).await;
    assert_eq!(
        info(&server).await,
        (patched.clone(), patched.clone()),
        "a config change moves both"
    );
    let rescaled = change(reqwest::Method::PATCH, json!({"instances": 3})).await;
    let want = (rescaled.clone(), patched.clone());
    assert_eq!(info(&server).await, want);
    // The list shows it too, and each kept version carries its own.
    let (_, list) = server.get("/v2/apps").await;
    assert_eq!(
        list["apps"][0]["versionInfo"]["lastConfigChangeAt"],
        json!(patched)
    );
    let (_, old) = server.get(&format!("/v2/apps/fib/versions/{scaled}")).await;
    assert_eq!(
        old["versionInfo"],
        json!({"lastScalingAt": scaled, "lastConfigChangeAt": created})
    );
    server.stop().await;

    let server = Server::start(dir.path()).await;
    assert_eq!(info(&server).await, want, "kept across a restart");
    server.stop().await;
}

/// `/fib`'s `versionInfo` as (lastScalingAt, lastConfigChangeAt).
async fn info(server: &Server) -> (String, String) {
    let (code, app) = server.get("/v2/apps/fib").await;
    assert_eq!(code, 200, "{app}");
    let v = &app["app"]["versionInfo"];
    (
        v["lastScalingAt"].as_str().unwrap().to_string(),
        v["lastConfigChangeAt"].as_str().unwrap().to_string(),
    )
}

/// What `app_versions_are_listed_newest_first_and_survive_a_restart` expects of `/fib`
/// after its create, scale and patch, before and after the restart.
async fn check_versions(server: &Server, created: &str, scaled: &str, patched: &str) {
    let (code, body) = server.get("/v2/apps/fib/versions").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, json!({"versions": [patched, scaled, created]}));
    let (_, app) = server.get("/v2/apps/fib").await;
    assert_eq!(app["app"]["version"], json!(patched));
    let (code, first) = server
        .get(&format!("/v2/apps/fib/versions/{created}"))
        .await;
    assert_eq!(code, 200, "{first}");
    assert_eq!(first["instances"], 1);
    assert_eq!(first["env"]["FIB_MAX"], "40");
    assert_eq!(first["version"], json!(created));
    assert!(
        first.get("tasks").is_none(),
        "a definition, not the live app"
    );
    let (_, second) = server.get(&format!("/v2/apps/fib/versions/{scaled}")).await;
    assert_eq!(second["instances"], 2);
    assert_eq!(second["env"]["FIB_MAX"], "40");
}

#[tokio::test]
async fn invalid_ports_disk_and_require_ports_are_422_listed_with_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let (code, body) = server
        .post(
            "/v2/apps",
            &json!({
                "id": "/web", "cmd": "x", "disk": -1, "requirePorts": "yes", "instnces": 1,
                "portDefinitions": [
                    {"port": 70000}, {"port": 8080, "name": "http"},
                    {"port": 8080, "name": "HTTP"}, {"port": 0, "name": "no spaces"}
                ],
            }),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    let details: Vec<String> = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["errors"][0].as_str().unwrap().to_string())
        .collect();
    let all = details.join("\n");
    for needle in [
        "portDefinitions[0].port must be a port number from 0 to 65535, got 70000",
        "portDefinitions[2].port 8080 is also portDefinitions[1].port",
        "portDefinitions[2].name \"HTTP\" is also portDefinitions[1]'s",
        "portDefinitions[3].name \"no spaces\" is invalid",
        "disk must be a number from 0",
        "requirePorts must be true or false, got \"yes\"",
        "unknown field \"instnces\"",
    ] {
        assert!(all.contains(needle), "{needle} missing in:\n{all}");
    }
    assert_eq!(details.len(), 7, "{all}");
    let (code, body) = server
        .post(
            "/v2/apps",
            &json!({"id": "/web", "cmd": "x", "ports": [9000, 9000]}),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body.to_string()
            .contains("ports[1].port 9000 is also ports[0].port"),
        "{body}"
    );
    server.stop().await;
}

/// `/v1/agents/{name}/changes` answers at once without `after`, holds a long-poll
/// until a task is placed on that agent (not on another), and times out unchanged.
#[tokio::test]
async fn changes_feed_wakes_only_the_agent_a_task_was_placed_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    server.register("node-1", "10.0.0.1").await;
    server.register("node-2", "10.0.0.2").await;
    let changes = |agent: &str, query: &str| {
        let req = server
            .http
            .get(server.url(&format!("/v1/agents/{agent}/changes{query}")))
            .header(protocol::TOKEN_HEADER, TOKEN);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, now) = changes("node-1", "").await;
    assert_eq!(status, 200, "{now}");
    // Counts start at the scheduler's start time, not 0: a restarted scheduler's
    // counts must not meet what a node saw before.
    let base = now["changes"].as_u64().unwrap();
    assert!(base > 1_700_000_000_000, "{now}");

    // Unchanged: the long-poll ends at its wait, with the same count.
    let t = Instant::now();
    let (_, same) = changes("node-1", &format!("?after={base}&wait_ms=300")).await;
    assert_eq!(same["changes"], base);
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );

    // A one-instance app with a constraint lands on node-1: its poll returns long
    // before the wait is over; node-2's does not move.
    let poll1 = tokio::spawn(changes("node-1", &format!("?after={base}&wait_ms=4000")));
    let poll2 = tokio::spawn(changes("node-2", &format!("?after={base}&wait_ms=1000")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let mut app = fib_app();
    app["instances"] = json!(1);
    app["constraints"] = json!([["hostname", "CLUSTER", "node-1"]]);
    let (status, body) = server.post("/v2/apps", &app).await;
    assert_eq!(status, 201, "{body}");
    let (_, moved) = poll1.await.unwrap();
    assert_eq!(moved["changes"], base + 1);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let (_, other) = poll2.await.unwrap();
    assert_eq!(other["changes"], base, "node-2 had nothing placed");

    // Deleting the app kills its task: node-1's count moves again.
    let (status, body) = server
        .send(
            reqwest::Method::DELETE,
            "/v2/apps/fib",
            &json!({}),
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, killed) = changes("node-1", &format!("?after={}", base + 1)).await;
    assert_eq!(killed["changes"], base + 2);

    // Bad parameters are a 400 naming them; no token is a 401.
    let (status, body) = changes("node-1", "?after=soon").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string().contains("`after` is \\\"soon\\\""),
        "{body}"
    );
    let (status, body) = changes("node-1", "?later=1").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("`later`"), "{body}");
    let r = server
        .http
        .get(server.url("/v1/agents/node-1/changes"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    server.stop().await;
}

/// Regression (issue 14's pipeline benchmark): a node learnt of a placed task only at
/// its next heartbeat, up to `heartbeat_interval` (1 s) after the deploy, the whole
/// idle start of a run. With the changes feed it starts at once, whatever the interval.
#[tokio::test]
async fn a_node_starts_a_placed_task_without_waiting_for_its_heartbeat() {
    use scheduler::node::{Node, NodeConfig};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("scheduler")).await;
    let mut cfg = NodeConfig::new("node-1", dir.path().join("node"), &server.base);
    cfg.heartbeat_interval = Duration::from_secs(60);
    cfg.token = Some(TOKEN.into());
    cfg.kill_grace = Duration::from_secs(2);
    let node = std::sync::Arc::new(Node::new(cfg).unwrap());
    let cancel = CancellationToken::new();
    let runner = {
        let (node, cancel) = (node.clone(), cancel.clone());
        tokio::spawn(async move { node.run(cancel).await })
    };
    // Registered and past its first heartbeat (the next one is a minute away).
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, agents) = server.get("/v1/agents").await;
        if agents.to_string().contains("node-1") {
            break;
        }
        assert!(Instant::now() < end, "node never registered: {agents}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t = Instant::now();
    let (status, body) = server
        .post(
            "/v2/apps",
            &json!({"id": "sleeper", "cmd": "sleep 300", "instances": 1, "cpus": 0.01, "mem": 16}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let running = loop {
        let (_, tasks) = server.get("/v2/tasks").await;
        if tasks.to_string().contains("TASK_RUNNING") {
            break true;
        }
        if t.elapsed() > Duration::from_secs(10) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    cancel.cancel();
    runner.await.unwrap().unwrap();
    server.stop().await;
    assert!(running, "the task was not running 10 s after the deploy");
}

/// `GET /v1/dns/zone?after=SERIAL`, what follower schedulers serve DNS from: held while
/// the zone is unchanged, answered as soon as a change rebuilds it.
#[tokio::test]
async fn the_dns_zone_long_poll_answers_on_the_next_change() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let anon = s.http.get(s.url("/v1/dns/zone")).send().await.unwrap();
    assert_eq!(anon.status(), 401);
    // The first build replaces the empty zone (serial 0) right after start.
    let deadline = Instant::now() + Duration::from_secs(5);
    let serial = loop {
        let (status, z) = s.get("/v1/dns/zone").await;
        assert_eq!(status, 200, "{z}");
        let serial = z["serial"].as_u64().unwrap();
        if serial != 0 {
            break serial;
        }
        assert!(Instant::now() < deadline, "no zone built within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let path = format!("/v1/dns/zone?after={serial}");
    let (http, url) = (s.http.clone(), s.url(&path));
    let poll = tokio::spawn(async move {
        let r = http
            .get(url)
            .header(protocol::TOKEN_HEADER, TOKEN)
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "held while nothing changes");
    let asked = Instant::now();
    s.register("node-1", "10.0.0.1").await;
    let z = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("answered after the change")
        .unwrap();
    assert_ne!(z["serial"].as_u64().unwrap(), serial);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    s.stop().await;
}
