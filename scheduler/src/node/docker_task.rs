//! The node's side of Docker tasks: launching a task as a container (see `docker`
//! for the engine calls and the attach pump), watching it until it ends, reporting
//! its end as Marathon does (exit code, OOM kill), and adopting the containers an
//! earlier node on this host left running.
//!
//! A Docker task shares everything with a process task but the process: the same
//! sandbox, `task.json`, task logger, host ports and health checks (a COMMAND check
//! runs inside the container). Its supervisor waits on the engine rather than on a
//! child process, so an adopted container's exit code is known too, unlike an
//! adopted process's.

use super::docker::{
    container_name, create_body, spawn_pump, ContainerState, Docker, Launch, LABEL_APP, LABEL_HOST,
    LABEL_INSTANCE, LABEL_KILL_GRACE, LABEL_TASK, SANDBOX_MOUNT,
};
use super::*;
use protocol::DockerSpec;

/// Longest an image pull may take before the task fails: a registry that never
/// answers fails the task well within the scheduler's staging timeout (300 s), with
/// a message, instead of leaving it to that timeout.
const PULL_TIMEOUT: Duration = Duration::from_secs(240);

/// How long a SIGKILLed container's OOM flag may lag behind its exit.
const OOM_EVENT_WAIT: Duration = Duration::from_millis(500);

/// A limited container killed by SIGKILL (137) that the engine has not (yet) flagged
/// as OOM-killed.
fn maybe_oom_unflagged(s: &ContainerState) -> bool {
    s.exit_code == 137 && !s.oom_killed && s.memory > 0
}

/// How often a watcher checks that its container's attach pump still runs.
const PUMP_CHECK: Duration = Duration::from_secs(1);

/// The file in a sandbox recording the task's container and the attach pump feeding
/// its logger, so a restarted node can tell whether the pump still runs.
pub const CONTAINER_FILE: &str = ".sandtrail-container";

/// Where the attach pump of container `id` keeps the bytes of each stream it has
/// seen: the node's own directory, not the sandbox, which the container writes.
fn offsets_path(cfg: &NodeConfig, id: &str) -> PathBuf {
    cfg.work_dir
        .join("containers")
        .join(format!("{id}.offsets"))
}

/// Opens (creating it empty when `fresh`) the offsets file of a container, and the
/// counts it holds. Blocking.
fn open_offsets(path: &Path, fresh: bool) -> std::io::Result<(std::os::fd::OwnedFd, [u64; 2])> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(fresh)
        .truncate(fresh)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut b = [0u8; 16];
    let skip = match f.read_exact(&mut b) {
        Ok(()) => [
            u64::from_ne_bytes(b[..8].try_into().expect("8 bytes")),
            u64::from_ne_bytes(b[8..].try_into().expect("8 bytes")),
        ],
        Err(_) => [0, 0],
    };
    Ok((f.into(), skip))
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ContainerFile {
    id: String,
    pump: u32,
    #[serde(default)]
    pump_start: Option<u64>,
    started_at: chrono::DateTime<chrono::Utc>,
}

/// A container's environment: the app's env, then the node's variables (later
/// wins), with `MESOS_SANDBOX` the mount inside the container. Nothing of the
/// agent's own environment: the image brings its `PATH`.
pub(super) fn container_env(
    cfg: &NodeConfig,
    spec: &TaskSpec,
    ports: &[u16],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // A container on a network of its own has its own loopback: the router is at
    // the bridge gateway for it.
    let own_network = spec
        .docker
        .as_ref()
        .is_some_and(|d| !matches!(d.network.as_str(), "host" | "none"));
    for (k, mut v) in task_env(cfg, spec, ports, Path::new(SANDBOX_MOUNT)) {
        if k == "SANDTRAIL_ROUTER" && own_network {
            if let Some(bridge) = &cfg.bridge_router_url {
                v = bridge.clone();
            }
        }
        env.retain(|(key, _)| *key != k);
        env.push((k, v));
    }
    env
}

/// The kill grace of an adopted container: the app's `taskKillGracePeriodSeconds`
/// from its label, else the node's default (a container labelled by an older node).
fn adopted_grace(state: &ContainerState, default: Duration) -> Duration {
    state
        .labels
        .get(LABEL_KILL_GRACE)
        .and_then(|g| g.parse::<f64>().ok())
        .map_or(default, health::secs)
}

/// Marathon's report of a container's end.
fn container_report(
    app: &str,
    task: &str,
    state: Option<&ContainerState>,
    killed: bool,
) -> TaskStatus {
    let (status, exit_code, message) = match state {
        None => (
            TASK_FAILED,
            None,
            Some("the container is gone (removed outside the agent?)".to_string()),
        ),
        Some(s) if killed => (
            TASK_KILLED,
            Some(s.exit_code as i32),
            Some("killed by the node".to_string()),
        ),
        Some(s) if s.oom_killed => {
            let limit = if s.memory > 0 {
                format!(" of {} MiB", s.memory.div_ceil(1 << 20))
            } else {
                String::new()
            };
            (
                TASK_FAILED,
                Some(s.exit_code as i32),
                Some(format!(
                    "exceeded its memory limit{limit}: the container was killed by the OOM killer (exit code {})",
                    s.exit_code
                )),
            )
        }
        Some(s) if s.exit_code == 0 => (TASK_FINISHED, Some(0), None),
        Some(s) => {
            let mut msg = format!("container exited with code {}", s.exit_code);
            if !s.error.is_empty() {
                msg.push_str(&format!(": {}", s.error));
            }
            (TASK_FAILED, Some(s.exit_code as i32), Some(msg))
        }
    };
    TaskStatus {
        task: task.to_string(),
        app: app.to_string(),
        state: status.to_string(),
        ports: Vec::new(),
        exit_code,
        message,
        instance: None,
        health: Vec::new(),
        started_at: None,
    }
}

impl Inner {
    fn docker(&self) -> Result<Arc<Docker>> {
        self.docker.clone().ok_or_else(|| {
            Error::Docker(format!(
                "agent {} has no docker engine: start it with --docker unix:///var/run/docker.sock",
                self.cfg.name
            ))
        })
    }

    /// Whether `d.image` is on the engine for `task`'s launch. A pull (when
    /// `forcePullImage` says so, or the image is missing, as Mesos does) runs in the
    /// background, at most [`PULL_TIMEOUT`]: awaited here it held the heartbeat loop
    /// for as long as the registry took, long enough to have the agent declared
    /// lost. Until it ends the launch is tried again each round; a failed pull fails
    /// the task with the engine's message.
    async fn image_ready(
        self: &Arc<Self>,
        docker: &Arc<Docker>,
        task: &str,
        d: &DockerSpec,
    ) -> Result<bool> {
        {
            let mut pulls = self.pulls.lock().expect("pulls lock");
            match pulls.get(task) {
                Some(None) => return Ok(false),
                Some(Some(_)) => {
                    let done = pulls.remove(task).flatten().expect("checked above");
                    return done.map(|()| true).map_err(Error::Docker);
                }
                None => {}
            }
        }
        if !d.force_pull_image && docker.image_present(&d.image).await? {
            return Ok(true);
        }
        self.pulls
            .lock()
            .expect("pulls lock")
            .insert(task.to_string(), None);
        let (inner, docker, task, image, forced) = (
            Arc::clone(self),
            Arc::clone(docker),
            task.to_string(),
            d.image.clone(),
            d.force_pull_image,
        );
        info!(task, image, "pulling image");
        self.tracker.spawn(async move {
            let pulled = match tokio::time::timeout(PULL_TIMEOUT, docker.pull(&image)).await {
                Ok(r) => r.map_err(|e| e.to_string().trim_start_matches("docker: ").to_string()),
                Err(_) => Err(format!("no answer within {PULL_TIMEOUT:?}")),
            };
            let outcome = pulled.map_err(|e| {
                let agent = &inner.cfg.name;
                if forced {
                    format!("forcePullImage: pulling image {image:?} on agent {agent} failed: {e}")
                } else {
                    format!("image {image:?} is not on agent {agent} and pulling it failed: {e}")
                }
            });
            if let Some(slot) = inner.pulls.lock().expect("pulls lock").get_mut(&task) {
                *slot = Some(outcome);
            }
        });
        Ok(false)
    }

    /// Launches `spec` as a container of image `d.image`; `false` while its image
    /// is still being pulled.
    pub(super) async fn launch_docker(
        self: &Arc<Self>,
        spec: &TaskSpec,
        d: &DockerSpec,
    ) -> Result<bool> {
        let docker = self.docker()?;
        if !self.image_ready(&docker, &spec.task, d).await? {
            return Ok(false);
        }
        // The sandbox and the logger are the task user's as for a process task; the
        // container itself runs as the image's user, or `user`.
        let Prepared {
            dir,
            ports,
            user: _,
            stdout,
            stderr,
        } = self.prepare_launch(spec).await?;
        let env = container_env(&self.cfg, spec, &ports);
        let body = create_body(&Launch {
            spec,
            docker: d,
            host: &self.cfg.name,
            address: &self.cfg.address,
            ports: &ports,
            sandbox: &dir,
            env: &env,
        });
        let name = container_name(&self.cfg.name, &spec.task);
        // Left by a launch of this task id that failed half way (ids are never reused).
        let _ = docker.remove(&name).await;
        let id = docker.create(&name, &body).await?;
        let started = async {
            let stream = {
                let (docker, id) = (Arc::clone(&docker), id.clone());
                tokio::task::spawn_blocking(move || docker.attach_blocking(&id))
                    .await
                    .map_err(|e| Error::Docker(e.to_string()))??
            };
            let offsets = offsets_path(&self.cfg, &id);
            let pump = tokio::task::spawn_blocking(move || {
                let (offsets, _) =
                    open_offsets(&offsets, true).map_err(|e| Error::io(&offsets, e))?;
                spawn_pump(stream, stdout, stderr, offsets, [0, 0])
            })
            .await
            .map_err(|e| Error::Docker(e.to_string()))??;
            docker.start(&id).await?;
            let state = docker
                .inspect(&id)
                .await?
                .ok_or_else(|| Error::Docker(format!("container {id} vanished after start")))?;
            Ok::<_, Error>((pump, state))
        }
        .await;
        let (pump, state) = match started {
            Ok(x) => x,
            Err(e) => {
                let _ = docker.remove(&id).await;
                return Err(e);
            }
        };
        let started_at = state.started_at.unwrap_or_else(chrono::Utc::now);
        let record = ContainerFile {
            id: id.clone(),
            pump,
            pump_start: process_start(pump),
            started_at,
        };
        let path = dir.join(CONTAINER_FILE);
        let body = serde_json::to_vec(&record)?;
        let p = path.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || write_control_file(&p, &body))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        {
            warn!(task = %spec.task, path = %path.display(), error = %e, "could not write the container file");
        }
        let kill = CancellationToken::new();
        self.state.lock().expect("node state lock").running.insert(
            spec.task.clone(),
            Running {
                app: spec.app.clone(),
                instance: spec.instance,
                pid: state.pid,
                ports: ports.clone(),
                kill: kill.clone(),
                health: vec![HealthResult::default(); spec.health_checks.len()],
                started_at,
                container: Some(id.clone()),
            },
        );
        self.spawn_container_checks(spec, &ports, &dir, &id, &kill);
        self.metrics.launched.fetch_add(1, Ordering::Relaxed);
        info!(app = %spec.app, task = %spec.task, container = %id, image = %d.image, pid = state.pid, ports = ?ports, "container started");
        let grace = spec
            .kill_grace_seconds
            .map_or(self.cfg.kill_grace, health::secs);
        self.watch_container(
            spec.app.clone(),
            spec.task.clone(),
            spec.instance,
            id,
            dir,
            kill,
            grace,
        );
        Ok(true)
    }

    /// Health checkers of a container task: HTTP and TCP against its host ports,
    /// COMMAND run inside the container.
    pub(super) fn spawn_container_checks(
        self: &Arc<Self>,
        spec: &TaskSpec,
        ports: &[u16],
        dir: &Path,
        id: &str,
        kill: &CancellationToken,
    ) {
        let Some(docker) = self.docker.clone() else {
            return;
        };
        let env = container_env(&self.cfg, spec, ports);
        let container = Some((docker, id.to_string()));
        self.spawn_checkers(spec, ports, dir, env, None, container, kill);
    }

    /// Watches a container until it stops (or stops it on a kill request, SIGKILL
    /// after `grace`), then reports its end, removes it and marks its sandbox
    /// finished. A detaching node leaves it running.
    #[allow(clippy::too_many_arguments)]
    fn watch_container(
        self: &Arc<Self>,
        app: String,
        task: String,
        instance: u32,
        id: String,
        dir: PathBuf,
        kill: CancellationToken,
        grace: Duration,
    ) {
        let inner = Arc::clone(self);
        self.tracker.spawn(async move {
            let Some(docker) = inner.docker.clone() else {
                return;
            };
            let detach = inner.detach.clone();
            let mut failures = 0u32;
            let mut wait = Box::pin(docker.wait(&id));
            let mut pump_check = tokio::time::interval(PUMP_CHECK);
            let killed = loop {
                tokio::select! {
                    _ = detach.cancelled() => return,
                    _ = kill.cancelled() => {
                        if let Err(e) = docker.stop(&id, grace).await {
                            warn!(app, task, container = %id, error = %e, "stopping the container failed");
                        }
                        break true;
                    }
                    _ = pump_check.tick() => inner.keep_the_stream(&docker, &id, &dir).await,
                    r = &mut wait => match r {
                        Ok(()) => break false,
                        Err(e) => {
                            // The engine restarting or unreachable: the container's
                            // fate is unknown, so keep asking.
                            failures += 1;
                            if failures == 1 || failures.is_multiple_of(30) {
                                warn!(app, task, container = %id, error = %e, "waiting for the container failed, retrying");
                            }
                            tokio::select! {
                                _ = detach.cancelled() => return,
                                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            }
                            wait = Box::pin(docker.wait(&id));
                        }
                    },
                }
            };
            drop(wait);
            let mut state = docker.inspect(&id).await.ok().flatten();
            if !killed && state.as_ref().is_some_and(maybe_oom_unflagged) {
                // The engine's OOM event can arrive after the exit (cgroup v1): a
                // SIGKILL of a limited container is asked about once more.
                tokio::time::sleep(OOM_EVENT_WAIT).await;
                if let Ok(Some(again)) = docker.inspect(&id).await {
                    state = Some(again);
                }
            }
            let mut report = container_report(&app, &task, state.as_ref(), killed);
            report.instance = Some(instance);
            if state.as_ref().is_some_and(|s| s.oom_killed) && !killed {
                inner.metrics.oom_kills.fetch_add(1, Ordering::Relaxed);
            }
            if let Err(e) = docker.remove(&id).await {
                warn!(app, task, container = %id, error = %e, "removing the container failed");
            }
            mark_finished(&dir).await;
            let _ = tokio::fs::remove_file(dir.join(CONTAINER_FILE)).await;
            let _ = tokio::fs::remove_file(offsets_path(&inner.cfg, &id)).await;
            inner.record_exit(report);
            kill.cancel();
        });
    }

    /// Takes over the containers of this host an earlier node left behind (found by
    /// their `sandtrail.host` label): the running ones are watched again, under the
    /// same task ids; those that ended meanwhile are reported and removed.
    pub(super) async fn adopt_containers(self: &Arc<Self>) {
        let Some(docker) = self.docker.clone() else {
            return;
        };
        let ids = match docker.list_labelled(LABEL_HOST, &self.cfg.name).await {
            Ok(ids) => ids,
            Err(e) => {
                warn!(node = %self.cfg.name, error = %e, "cannot list this host's containers: none adopted");
                return;
            }
        };
        for id in ids {
            let Ok(Some(state)) = docker.inspect(&id).await else {
                continue;
            };
            let (Some(task), Some(app)) = (
                state.labels.get(LABEL_TASK).cloned(),
                state.labels.get(LABEL_APP).cloned(),
            ) else {
                continue;
            };
            let instance = state
                .labels
                .get(LABEL_INSTANCE)
                .and_then(|i| i.parse().ok())
                .unwrap_or(0);
            if self
                .state
                .lock()
                .expect("node state lock")
                .running
                .contains_key(&task)
            {
                continue;
            }
            let Ok(dir) = sandbox_dir(&self.sandboxes, &app, &task) else {
                continue;
            };
            if !state.running {
                info!(app, task, container = %id, exit_code = state.exit_code, "container ended while the node was down");
                let mut report = container_report(&app, &task, Some(&state), false);
                report.instance = Some(instance);
                let _ = docker.remove(&id).await;
                mark_finished(&dir).await;
                let _ = tokio::fs::remove_file(offsets_path(&self.cfg, &id)).await;
                let mut st = self.state.lock().expect("node state lock");
                st.done.insert(task);
                let seq = st.next_seq;
                st.next_seq += 1;
                st.pending.push((seq, report));
                continue;
            }
            let d = dir.clone();
            let (meta, record) = tokio::task::spawn_blocking(move || {
                let meta = read_control_file(&d.join("task.json"))
                    .and_then(|b| serde_json::from_slice::<TaskFile>(&b).ok());
                let record = read_control_file(&d.join(CONTAINER_FILE))
                    .and_then(|b| serde_json::from_slice::<ContainerFile>(&b).ok());
                (meta, record)
            })
            .await
            .unwrap_or((None, None));
            let ports = meta
                .as_ref()
                .map(|m| m.meta.ports.clone())
                .unwrap_or_default();
            let pump_alive = record
                .as_ref()
                .is_some_and(|r| r.id == id && same_process_alive(r.pump, r.pump_start));
            if !pump_alive {
                self.reattach(&docker, &id, &dir, meta.as_ref()).await;
            }
            info!(app, task, container = %id, pid = state.pid, "running container found again");
            let kill = CancellationToken::new();
            self.state.lock().expect("node state lock").running.insert(
                task.clone(),
                Running {
                    app: app.clone(),
                    instance,
                    pid: state.pid,
                    ports,
                    kill: kill.clone(),
                    health: Vec::new(),
                    started_at: state
                        .started_at
                        .or(record.map(|r| r.started_at))
                        .unwrap_or_else(chrono::Utc::now),
                    container: Some(id.clone()),
                },
            );
            let grace = adopted_grace(&state, self.cfg.kill_grace);
            self.watch_container(app, task, instance, id, dir, kill, grace);
        }
    }

    /// Attaches again when the container's stream ended while it still runs (an
    /// engine restart cuts it; a pump killed by hand too): see [`Inner::reattach`].
    async fn keep_the_stream(&self, docker: &Arc<Docker>, id: &str, dir: &Path) {
        let d = dir.to_path_buf();
        let pump_alive = tokio::task::spawn_blocking(move || {
            read_control_file(&d.join(CONTAINER_FILE))
                .and_then(|b| serde_json::from_slice::<ContainerFile>(&b).ok())
                .is_none_or(|r| same_process_alive(r.pump, r.pump_start))
        })
        .await
        .unwrap_or(true);
        if pump_alive {
            return;
        }
        // A stopped container's stream ends too: the wait reports that one.
        if !matches!(docker.inspect(id).await, Ok(Some(s)) if s.running) {
            return;
        }
        let d = dir.to_path_buf();
        let meta = tokio::task::spawn_blocking(move || {
            read_control_file(&d.join("task.json"))
                .and_then(|b| serde_json::from_slice::<TaskFile>(&b).ok())
        })
        .await
        .ok()
        .flatten();
        self.reattach(docker, id, dir, meta.as_ref()).await;
    }

    /// Feeds a running container's output to a new logger when its attach pump is
    /// gone (the engine restarted, or the host's processes were killed). The new
    /// pump follows the container's logs from its start and skips what the old one
    /// delivered (its offsets file), so nothing written meanwhile is lost and no
    /// line is written twice. Without an offsets file (a container of an older
    /// node) it attaches to the live stream: what was written meanwhile is lost.
    async fn reattach(&self, docker: &Arc<Docker>, id: &str, dir: &Path, meta: Option<&TaskFile>) {
        use std::os::unix::fs::MetadataExt;
        let budget = meta
            .and_then(|m| m.log_budget_bytes)
            .unwrap_or(self.cfg.log_budget_bytes);
        let rotation = Rotation::for_budget(budget);
        let (docker, id, dir) = (Arc::clone(docker), id.to_string(), dir.to_path_buf());
        let agent_uid = self.agent_uid;
        let offsets = offsets_path(&self.cfg, &id);
        let done = tokio::task::spawn_blocking(move || {
            // The logger runs as the sandbox's owner, as it did at the launch.
            let owner = std::fs::metadata(&dir)
                .map_err(|e| Error::io(&dir, e))?
                .uid();
            let user = (owner != agent_uid).then(|| TaskUser::dynamic(owner));
            let (stream, offsets, skip, replayed) = match open_offsets(&offsets, false) {
                Ok((fd, skip)) => (docker.follow_logs_blocking(&id)?, fd, skip, true),
                Err(_) => {
                    let (fd, _) =
                        open_offsets(&offsets, true).map_err(|e| Error::io(&offsets, e))?;
                    (docker.attach_blocking(&id)?, fd, [0, 0], false)
                }
            };
            let (out, err) = logger::spawn_as(&dir, rotation, user.as_ref())?;
            let pump = spawn_pump(stream, out, err, offsets, skip)?;
            let record = ContainerFile {
                id: id.clone(),
                pump,
                pump_start: process_start(pump),
                started_at: chrono::Utc::now(),
            };
            let path = dir.join(CONTAINER_FILE);
            write_control_file(&path, &serde_json::to_vec(&record)?)
                .map_err(|e| Error::io(&path, e))?;
            Ok::<_, Error>((pump, dir, replayed))
        })
        .await;
        match done {
            Ok(Ok((pump, dir, true))) => {
                info!(sandbox = %dir.display(), pump, "the container's log stream was gone: following its logs again from where it ended")
            }
            Ok(Ok((pump, dir, false))) => {
                warn!(sandbox = %dir.display(), pump, "the container's log stream was gone: attached again; its output meanwhile is not in the sandbox")
            }
            Ok(Err(e)) => warn!(error = %e, "could not attach to a running container again"),
            Err(e) => warn!(error = %e, "could not attach to a running container again"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ends_are_reported_as_marathon_does() {
        let s = |exit_code, oom_killed| ContainerState {
            exit_code,
            oom_killed,
            memory: 32 << 20,
            ..ContainerState::default()
        };
        let r = container_report("a", "a.1", Some(&s(0, false)), false);
        assert_eq!((r.state.as_str(), r.exit_code), (TASK_FINISHED, Some(0)));
        let r = container_report("a", "a.1", Some(&s(3, false)), false);
        assert_eq!(r.state, TASK_FAILED);
        assert_eq!(r.message.as_deref(), Some("container exited with code 3"));
        let r = container_report("a", "a.1", Some(&s(137, true)), false);
        assert_eq!((r.state.as_str(), r.exit_code), (TASK_FAILED, Some(137)));
        assert!(
            r.message
                .as_deref()
                .unwrap()
                .starts_with("exceeded its memory limit of 32 MiB"),
            "{r:?}"
        );
        let r = container_report("a", "a.1", Some(&s(143, false)), true);
        assert_eq!(r.state, TASK_KILLED);
        assert_eq!(container_report("a", "a.1", None, false).state, TASK_FAILED);
    }

    /// Regression: on cgroup v1 the engine sometimes flags an OOM kill only after
    /// the exit, and the task was reported "container exited with code 137".
    #[test]
    fn a_limited_sigkilled_container_is_asked_again_about_an_oom() {
        let s = |exit_code, oom_killed, memory| ContainerState {
            exit_code,
            oom_killed,
            memory,
            ..ContainerState::default()
        };
        assert!(maybe_oom_unflagged(&s(137, false, 16 << 20)));
        assert!(
            !maybe_oom_unflagged(&s(137, true, 16 << 20)),
            "flagged already"
        );
        assert!(
            !maybe_oom_unflagged(&s(137, false, 0)),
            "no limit, no OOM kill"
        );
        assert!(!maybe_oom_unflagged(&s(1, false, 16 << 20)));
    }

    /// Regression (issue 19 review): an adopted container was stopped with the
    /// node's default grace, not its app's `taskKillGracePeriodSeconds`.
    #[test]
    fn an_adopted_container_keeps_its_apps_kill_grace() {
        let default = Duration::from_secs(5);
        let mut s = ContainerState::default();
        assert_eq!(adopted_grace(&s, default), default, "no label: the default");
        s.labels.insert(LABEL_KILL_GRACE.into(), "30".into());
        assert_eq!(adopted_grace(&s, default), Duration::from_secs(30));
        s.labels.insert(LABEL_KILL_GRACE.into(), "0.5".into());
        assert_eq!(adopted_grace(&s, default), Duration::from_millis(500));
        s.labels.insert(LABEL_KILL_GRACE.into(), "soon".into());
        assert_eq!(
            adopted_grace(&s, default),
            default,
            "unreadable: the default"
        );
    }

    #[test]
    fn the_container_env_has_the_sandbox_mount_and_the_apps_env_loses_to_the_nodes() {
        let cfg = NodeConfig::new("node-1", "/tmp/x", "http://s");
        let spec = TaskSpec {
            app: "web".into(),
            task: "web.1".into(),
            port_count: 1,
            env: [
                ("A".to_string(), "1".to_string()),
                ("HOST".to_string(), "bad".to_string()),
            ]
            .into(),
            ..TaskSpec::default()
        };
        let env = container_env(&cfg, &spec, &[31000]);
        let get = |k: &str| {
            env.iter()
                .filter(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("MESOS_SANDBOX"), vec![SANDBOX_MOUNT]);
        assert_eq!(get("PORT0"), vec!["31000"]);
        assert_eq!(get("A"), vec!["1"]);
        assert_eq!(get("HOST"), vec!["127.0.0.1"]);
        assert!(get("PATH").is_empty(), "the image brings its PATH");
    }

    #[test]
    fn a_bridged_container_reaches_the_router_at_the_bridge_gateway() {
        let mut cfg = NodeConfig::new("node-1", "/tmp/x", "http://s");
        cfg.router_url = "http://127.0.0.1:4000".into();
        cfg.bridge_router_url = Some("http://172.17.0.1:4000".into());
        let mut spec = TaskSpec {
            app: "web".into(),
            task: "web.1".into(),
            docker: Some(DockerSpec {
                image: "demo".into(),
                network: "bridge".into(),
                ..DockerSpec::default()
            }),
            ..TaskSpec::default()
        };
        let router = |env: Vec<(String, String)>| {
            env.into_iter()
                .find(|(k, _)| k == "SANDTRAIL_ROUTER")
                .map(|(_, v)| v)
        };
        assert_eq!(
            router(container_env(&cfg, &spec, &[])).as_deref(),
            Some("http://172.17.0.1:4000")
        );
        spec.docker.as_mut().unwrap().network = "host".into();
        assert_eq!(
            router(container_env(&cfg, &spec, &[])).as_deref(),
            Some("http://127.0.0.1:4000"),
            "HOST networking shares the host's loopback"
        );
    }
}
