//! The node's health checks: Marathon's HTTP, TCP and COMMAND checks, run by the
//! node beside each task, their results carried to the scheduler in heartbeats.
//!
//! Checks run where the task runs, not from the control plane, so they see the task as
//! its neighbours do and cost no cross-host traffic; the trade-off is that a check
//! says nothing about the path from elsewhere to the task.

use super::*;

/// What one health checker needs to know about its task.
pub(super) struct HealthTarget {
    pub(super) task: String,
    pub(super) started: std::time::Instant,
    pub(super) index: usize,
    pub(super) check: HealthCheck,
    pub(super) address: String,
    pub(super) ports: Vec<u16>,
    pub(super) sandbox: PathBuf,
    /// The task's whole environment.
    pub(super) env: Vec<(String, String)>,
    /// Who the task runs as: a COMMAND check runs as it too, never as the agent.
    pub(super) user: Option<TaskUser>,
    /// A Docker task's engine and container: a COMMAND check runs inside it.
    pub(super) container: Option<(Arc<docker::Docker>, String)>,
}

pub(super) fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::from_secs(86_400))
}

/// Runs one check once: `Err` carries the cause Marathon shows as `lastFailureCause`.
pub(super) async fn run_check(
    client: &reqwest::Client,
    t: &HealthTarget,
    timeout: Duration,
) -> std::result::Result<(), String> {
    let port = || {
        t.check
            .port
            .or_else(|| t.ports.get(usize::from(t.check.port_index)).copied())
            .ok_or_else(|| {
                format!(
                    "portIndex {} names no port of the task (it has {})",
                    t.check.port_index,
                    t.ports.len()
                )
            })
    };
    match t.check.protocol.to_ascii_uppercase().as_str() {
        "HTTP" | "MESOS_HTTP" | "HTTPS" | "MESOS_HTTPS" => {
            let path = t.check.path.as_deref().unwrap_or("/");
            let url = format!(
                "http://{}:{}/{}",
                t.address,
                port()?,
                path.trim_start_matches('/')
            );
            let resp = client
                .get(&url)
                .timeout(timeout)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            let code = resp.status().as_u16();
            // Marathon counts 200-399 as healthy.
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("GET {url}: status {code}, expected 200-399"))
            }
        }
        "TCP" | "MESOS_TCP" => {
            let addr = format!("{}:{}", t.address, port()?);
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("connect {addr}: {e}")),
                Err(_) => Err(format!("connect {addr}: timed out after {timeout:?}")),
            }
        }
        "COMMAND" => {
            let cmd = t.check.command.as_deref().unwrap_or("true");
            if let Some((docker, id)) = &t.container {
                return docker.exec(id, cmd, &t.env, timeout).await;
            }
            let mut c = tokio::process::Command::new("sh");
            c.arg("-c")
                .arg(cmd)
                .current_dir(&t.sandbox)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .env_clear();
            c.envs(t.env.iter().map(|(k, v)| (k, v)));
            if let Some(u) = t.user.clone() {
                // SAFETY: raw syscalls on memory prepared before the fork.
                unsafe { c.pre_exec(move || task_user::become_user(&u)) };
            }
            let child = c.spawn().map_err(|e| format!("{cmd:?}: {e}"))?;
            match tokio::time::timeout(timeout, child.wait_with_output()).await {
                Ok(Ok(out)) if out.status.success() => Ok(()),
                Ok(Ok(out)) => Err(format!("{cmd:?} exited with {}", out.status)),
                Ok(Err(e)) => Err(format!("{cmd:?}: {e}")),
                Err(_) => Err(format!("{cmd:?} timed out after {timeout:?}")),
            }
        }
        other => Err(format!(
            "health check protocol {other:?} is not supported: expected HTTP, TCP or COMMAND"
        )),
    }
}

pub(super) fn check_status(url: &str, status: reqwest::StatusCode) -> Result<()> {
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(Error::Unauthorized);
    }
    if !status.is_success() {
        return Err(Error::Upstream {
            addr: url.to_string(),
            reason: format!("status {status}, expected 2xx"),
        });
    }
    Ok(())
}
