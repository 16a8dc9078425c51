//! `GET /apps` and `GET /hosts`: the cluster at a glance, from the scheduler's API, each
//! entry linking to its logs.
//!
//! Both pages join scheduler calls (apps or agents, plus tasks) made concurrently. The
//! tasks are the extra detail: if only they fail, the page still renders with a notice
//! rather than failing as a whole. A host's "used" resources are the scheduler's own
//! figure (`used` in `GET /v1/agents`, what its placement counts), not recomputed here.
//! So are its shipper's back-pressure figures (`shipper`, from the agent's last
//! heartbeat): a full log budget or spool shows per host, where an operator looks
//! first, not only in `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use super::render;
use super::search::field_query;
use crate::client::{HealthCheckResult, MarathonTask};
use crate::error::{Error, Result};
use crate::render::{format_ago, format_ts, format_ts_str, href, url_encode};
use crate::{AppState, Page};
use protocol::ShipperStatus;

pub(crate) struct TaskView {
    id: String,
    host: String,
    host_href: String,
    state: String,
    state_class: &'static str,
    started: String,
    ports: String,
    health: Health,
    /// Why the health is what it is (the last failure cause, or why it is unknown).
    health_why: String,
    restarts: u32,
    /// This instance's own lines, searched and live.
    logs_href: String,
    tail_href: String,
}

pub(crate) struct AppView {
    name: String,
    instances: u32,
    running: u32,
    health: String,
    /// Restarts of all its instances together.
    restarts: u32,
    resources: String,
    cmd: String,
    search_href: String,
    tail_href: String,
    tasks: Vec<TaskView>,
    /// The deployment in progress, as its action (`ScaleApplication`...).
    deploying: Option<String>,
    /// Why tasks wait in the queue, as the scheduler says.
    waiting: Option<String>,
}

#[derive(Template)]
#[template(path = "apps.html")]
struct AppsPage {
    nav: &'static str,
    apps: Vec<AppView>,
    /// The caller has the deploy role: the buttons are shown.
    can_deploy: bool,
    notice: Option<String>,
}

pub(crate) struct AgentView {
    name: String,
    address: String,
    router_url: String,
    attributes: String,
    state: String,
    state_class: &'static str,
    heartbeat: String,
    heartbeat_ago: String,
    tasks: usize,
    /// `used / offered` per resource, for the bars of the resources column.
    usage: Vec<UsageView>,
    /// `None` when the agent reported no shipper figures.
    shipper: Option<ShipperView>,
    search_href: String,
    drained: bool,
}

/// The log shipping column of one host: how close its tasks' logs are to their
/// budgets and its spool to its bound, and whether either has already cost something.
pub(crate) struct ShipperView {
    /// Task log files on disk, MiB.
    logs: String,
    /// The tasks' log budgets together, MiB; empty when unknown.
    budget: String,
    /// Share of the budget on disk, 0-100, for the bar; `None` without a budget.
    logs_percent: Option<u32>,
    /// More on disk than the budgets allow: the shipper is dropping or about to.
    logs_over: bool,
    /// Log bytes given up on for a budget since the agent started.
    dropped: u64,
    /// Spooled batches, MiB, and the spool's bound (empty: the spool is off).
    spool: String,
    spool_max: String,
    spool_percent: Option<u32>,
    /// The indexer is not keeping up: batches wait on disk.
    spooling: bool,
    /// Bytes not yet acknowledged by the indexer, MiB.
    lag: String,
    reading_paused: bool,
}

#[derive(Template)]
#[template(path = "hosts.html")]
struct HostsPage {
    nav: &'static str,
    agents: Vec<AgentView>,
    /// The caller has the deploy role: the drain buttons are shown.
    can_deploy: bool,
    notice: Option<String>,
}

/// One resource of a host: what its tasks take and what it offers.
pub(crate) struct UsageView {
    name: String,
    used: String,
    /// Empty when the agent does not limit this resource.
    offered: String,
    unit: &'static str,
    /// Share in use, 0-100, for the bar; `None` when not limited.
    percent: Option<u32>,
    over: bool,
}

/// A task's health as the scheduler's health checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    Healthy,
    Unhealthy,
    /// No checks defined, or not every check has reported yet.
    Unknown,
}

impl Health {
    fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task's health from the results of an app with `checks` health checks. A failing
/// result wins even before every check reported, since it is already actionable; a
/// task counts as healthy only with a passing result for every check, as the
/// scheduler's `tasksHealthy` does.
pub(crate) fn task_health(checks: usize, results: &[HealthCheckResult]) -> (Health, String) {
    if let Some(bad) = results.iter().find(|r| !r.alive) {
        let why = match bad.last_failure_cause.as_deref().filter(|c| !c.is_empty()) {
            Some(cause) => format!(
                "{cause} ({} consecutive failures)",
                bad.consecutive_failures
            ),
            None => format!("{} consecutive failures", bad.consecutive_failures),
        };
        return (Health::Unhealthy, why);
    }
    if checks == 0 && results.is_empty() {
        return (Health::Unknown, "the app defines no health checks".into());
    }
    if results.len() < checks {
        return (
            Health::Unknown,
            format!("{} of {checks} health checks reported", results.len()),
        );
    }
    (
        Health::Healthy,
        format!("{} health checks pass", results.len()),
    )
}

/// Numbers as a person reads them: at most two decimals, no trailing zeros, so that
/// three tasks of 0.1 cpus show as 0.3 and not 0.30000000000000004.
fn amount(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// Bytes as MiB for reading; a few bytes show as `<0.01`, not as an empty-looking 0.
fn mib(bytes: u64) -> String {
    let s = amount(bytes as f64 / (1024.0 * 1024.0));
    if bytes > 0 && s == "0" {
        "<0.01".into()
    } else {
        s
    }
}

/// `part` of `whole` as a bar width, 0-100; `None` when there is no whole.
fn percent(part: u64, whole: u64) -> Option<u32> {
    (whole > 0).then(|| {
        ((part as f64 / whole as f64) * 100.0)
            .clamp(0.0, 100.0)
            .round() as u32
    })
}

fn shipper_view(s: &ShipperStatus) -> ShipperView {
    let known = |v: u64| if v > 0 { mib(v) } else { String::new() };
    ShipperView {
        logs: mib(s.log_bytes_on_disk),
        budget: known(s.log_budget_bytes_total),
        logs_percent: percent(s.log_bytes_on_disk, s.log_budget_bytes_total),
        logs_over: s.log_budget_bytes_total > 0 && s.log_bytes_on_disk > s.log_budget_bytes_total,
        dropped: s.log_bytes_dropped,
        spool: mib(s.spool_bytes),
        spool_max: known(s.spool_max_bytes),
        spool_percent: percent(s.spool_bytes, s.spool_max_bytes),
        spooling: s.spool_bytes > 0,
        lag: mib(s.lag_bytes),
        reading_paused: s.reading_paused,
    }
}

/// The resources column of one host: cpus, mem and disk always (used, and offered
/// when declared), then any other resource the agent declares. `used` is `None` when
/// the app list was unavailable, and then only the offers are shown.
fn usage_views(offered: &BTreeMap<String, f64>, used: Option<[f64; 3]>) -> Vec<UsageView> {
    const KNOWN: [(&str, &str); 3] = [("cpus", ""), ("mem", "MiB"), ("disk", "MiB")];
    let mut out = Vec::new();
    for (i, (name, unit)) in KNOWN.iter().enumerate() {
        let total = offered.get(*name).copied();
        let u = used.map(|u| u[i]);
        if total.is_none() && u.is_none_or(|u| u == 0.0) {
            continue;
        }
        out.push(UsageView {
            name: name.to_string(),
            used: u.map(amount).unwrap_or_default(),
            offered: total.map(amount).unwrap_or_default(),
            unit,
            percent: match (u, total) {
                (Some(u), Some(t)) if t > 0.0 => {
                    Some(((u / t) * 100.0).clamp(0.0, 100.0).round() as u32)
                }
                _ => None,
            },
            over: matches!((u, total), (Some(u), Some(t)) if u > t + 1e-9),
        });
    }
    for (name, total) in offered {
        if KNOWN.iter().any(|(k, _)| k == name) {
            continue;
        }
        out.push(UsageView {
            name: name.clone(),
            used: String::new(),
            offered: amount(*total),
            unit: "",
            percent: None,
            over: false,
        });
    }
    out
}

fn task_state_class(state: &str) -> &'static str {
    match state {
        "TASK_RUNNING" => "state-ok",
        "TASK_STAGING" | "TASK_STARTING" | "TASK_KILLING" => "state-pending",
        "TASK_FAILED" | "TASK_LOST" | "TASK_ERROR" => "state-bad",
        _ => "state-other",
    }
}

fn search_href(field: &str, value: &str) -> String {
    href("/", &[("q", &field_query(field, value))])
}

/// Splits the task list, keeping what a failure means for the page.
fn tasks_or_notice(
    state: &AppState,
    tasks: Result<Vec<MarathonTask>>,
) -> (Vec<MarathonTask>, Option<String>) {
    match tasks {
        Ok(t) => (t, None),
        Err(e) => {
            state.metrics.upstream_error(&e);
            tracing::warn!(error = %e, "task list unavailable");
            (Vec::new(), Some(format!("tasks unavailable: {e}")))
        }
    }
}

fn fail(state: &AppState, e: Error) -> Error {
    state.metrics.upstream_error(&e);
    e
}

pub(crate) async fn apps(
    State(state): State<Arc<AppState>>,
    caller: Option<axum::Extension<protocol::http::Caller>>,
) -> Result<Response> {
    state.metrics.hit(Page::Apps);
    let (apps, tasks, progress) = tokio::join!(
        state.client.apps(),
        state.client.tasks(),
        state.client.deployments_and_queue()
    );
    let apps = apps.map_err(|e| fail(&state, e))?;
    let (tasks, notice) = tasks_or_notice(&state, tasks);
    // Extra detail like the tasks: without it the page still shows the apps.
    let (deployments, queue) = progress.unwrap_or_default();

    let mut by_app: BTreeMap<&str, Vec<&MarathonTask>> = BTreeMap::new();
    for t in &tasks {
        by_app.entry(t.app_name()).or_default().push(t);
    }
    let mut views: Vec<AppView> = apps
        .iter()
        .map(|a| {
            let name = a.name().to_string();
            let checks = a.health_checks.len();
            let mut tasks: Vec<TaskView> = by_app
                .get(name.as_str())
                .map(|ts| ts.iter().map(|t| task_view(t, checks)).collect())
                .unwrap_or_default();
            tasks.sort_by(|x, y| x.host.cmp(&y.host).then(x.id.cmp(&y.id)));
            let health = if a.tasks_healthy + a.tasks_unhealthy > 0 {
                format!(
                    "{} healthy, {} unhealthy",
                    a.tasks_healthy, a.tasks_unhealthy
                )
            } else {
                String::new()
            };
            AppView {
                restarts: tasks.iter().map(|t| t.restarts).sum(),
                search_href: search_href("app", &name),
                tail_href: format!("/tail/{}", url_encode(&name)),
                instances: a.instances,
                running: a.tasks_running,
                health,
                resources: format!("cpus {} · mem {} MB", a.cpus, a.mem),
                cmd: a.cmd.clone().unwrap_or_default(),
                tasks,
                deploying: deployment_of(&deployments, &a.id),
                waiting: queue_reason(&queue, &a.id),
                name,
            }
        })
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    let page = AppsPage {
        nav: "apps",
        apps: views,
        can_deploy: super::actions::may_deploy(caller.as_ref()),
        notice,
    };
    Ok(render("apps", &page)?.into_response())
}

/// The action of app `id`'s deployment in progress (Marathon's `GET /v2/deployments`).
fn deployment_of(deployments: &serde_json::Value, id: &str) -> Option<String> {
    let key = format!("/{}", id.trim_matches('/'));
    deployments.as_array()?.iter().find_map(|d| {
        let actions = d["currentActions"].as_array()?;
        actions
            .iter()
            .find(|a| a["app"].as_str() == Some(key.as_str()))
            .and_then(|a| a["action"].as_str())
            .map(String::from)
    })
}

/// Why app `id` waits in the queue (Marathon's `GET /v2/queue`, our `message`).
fn queue_reason(queue: &serde_json::Value, id: &str) -> Option<String> {
    let key = format!("/{}", id.trim_matches('/'));
    queue["queue"].as_array()?.iter().find_map(|q| {
        (q["app"]["id"].as_str() == Some(key.as_str())).then(|| {
            q["message"]
                .as_str()
                .unwrap_or("waiting to be placed")
                .to_string()
        })
    })
}

fn task_view(t: &MarathonTask, checks: usize) -> TaskView {
    let (health, health_why) = task_health(checks, &t.health_check_results);
    TaskView {
        health,
        health_why,
        restarts: t.restarts,
        id: t.id.clone(),
        logs_href: search_href("task", &t.id),
        tail_href: href(
            &format!("/tail/{}", url_encode(t.app_name())),
            &[("filter", &field_query("task", &t.id))],
        ),
        host_href: search_href("host", &t.host),
        host: t.host.clone(),
        state_class: task_state_class(&t.state),
        state: t.state.clone(),
        started: t
            .started_at
            .as_deref()
            .or(t.staged_at.as_deref())
            .map(format_ts_str)
            .unwrap_or_default(),
        ports: t
            .ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

pub(crate) async fn hosts(
    State(state): State<Arc<AppState>>,
    caller: Option<axum::Extension<protocol::http::Caller>>,
) -> Result<Response> {
    state.metrics.hit(Page::Hosts);
    let (agents, tasks) = tokio::join!(state.client.agents(), state.client.tasks());
    let mut agents = agents.map_err(|e| fail(&state, e))?;
    let (tasks, notice) = tasks_or_notice(&state, tasks);
    agents.sort_by(|a, b| a.info.name.cmp(&b.info.name));

    let now = Utc::now();
    let views = agents
        .iter()
        .map(|agent| (agent, &agent.info, agent.used, agent.shipper.as_ref()))
        .map(|(agent, a, used, shipper)| AgentView {
            drained: agent.drained,
            name: a.name.clone(),
            address: a.address.clone(),
            router_url: a.router_url.clone(),
            attributes: a
                .attributes
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(" "),
            state_class: match a.state.as_str() {
                "active" => "state-ok",
                "lost" => "state-bad",
                _ => "state-other",
            },
            state: a.state.clone(),
            heartbeat: a.last_heartbeat.map(format_ts).unwrap_or_default(),
            heartbeat_ago: a
                .last_heartbeat
                .map(|t| format_ago(now, t))
                .unwrap_or_default(),
            tasks: tasks.iter().filter(|t| t.host == a.name).count(),
            // An older scheduler without `used`: the offers alone, not an idle host.
            usage: usage_views(&a.resources, used.map(|u| [u.cpus, u.mem, u.disk])),
            shipper: shipper.map(shipper_view),
            search_href: search_href("host", &a.name),
        })
        .collect();
    let page = HostsPage {
        nav: "hosts",
        agents: views,
        can_deploy: super::actions::may_deploy(caller.as_ref()),
        notice,
    };
    Ok(render("hosts", &page)?.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(alive: bool, cause: Option<&str>) -> HealthCheckResult {
        HealthCheckResult {
            alive,
            consecutive_failures: u32::from(!alive) * 3,
            last_failure_cause: cause.map(str::to_string),
        }
    }

    #[test]
    fn health_needs_every_check_but_a_failure_wins_at_once() {
        assert_eq!(task_health(0, &[]).0, Health::Unknown);
        assert_eq!(task_health(2, &[result(true, None)]).0, Health::Unknown);
        assert_eq!(
            task_health(2, &[result(true, None), result(true, None)]).0,
            Health::Healthy
        );
        let (h, why) = task_health(2, &[result(false, Some("HTTP 503"))]);
        assert_eq!(h, Health::Unhealthy);
        assert_eq!(why, "HTTP 503 (3 consecutive failures)");
        // Results of an app whose checks did not parse still count.
        assert_eq!(task_health(0, &[result(true, None)]).0, Health::Healthy);
    }

    #[test]
    fn amounts_are_rounded_for_reading() {
        assert_eq!(amount(0.1 + 0.1 + 0.1), "0.3");
        assert_eq!(amount(8192.0), "8192");
        assert_eq!(amount(0.0), "0");
        assert_eq!(amount(1.005), "1");
    }

    #[test]
    fn shipper_figures_read_in_mib_with_bars_only_against_a_bound() {
        const MIB: u64 = 1024 * 1024;
        let v = shipper_view(&ShipperStatus {
            log_bytes_on_disk: 96 * MIB,
            log_budget_bytes_total: 64 * MIB,
            log_bytes_dropped: 4096,
            spool_bytes: 512 * MIB,
            spool_max_bytes: 1024 * MIB,
            reading_paused: true,
            lag_bytes: 100,
        });
        assert_eq!((v.logs.as_str(), v.budget.as_str()), ("96", "64"));
        assert_eq!((v.logs_percent, v.logs_over), (Some(100), true));
        assert_eq!((v.spool.as_str(), v.spool_max.as_str()), ("512", "1024"));
        assert_eq!((v.spool_percent, v.spooling), (Some(50), true));
        assert_eq!((v.dropped, v.lag.as_str()), (4096, "<0.01"));
        assert!(v.reading_paused);

        // An unknown budget and a spool that is off: no bar, nothing over.
        let v = shipper_view(&ShipperStatus {
            log_bytes_on_disk: 3 * MIB / 2,
            ..ShipperStatus::default()
        });
        assert_eq!((v.logs.as_str(), v.budget.as_str()), ("1.5", ""));
        assert_eq!((v.logs_percent, v.logs_over), (None, false));
        assert_eq!((v.spool.as_str(), v.spool_max.as_str()), ("0", ""));
        assert_eq!((v.spool_percent, v.spooling), (None, false));
        assert!(!v.reading_paused);
    }

    #[test]
    fn usage_shows_used_of_offered() {
        // What the scheduler reports for a host running 3 x (0.1, 32) and 1 x (1, 256).
        let n1 = [0.1 + 0.1 + 0.1 + 1.0, 352.0, 0.0];
        assert_eq!(amount(n1[0]), "1.3");

        let offered: BTreeMap<String, f64> = [("cpus".into(), 2.0), ("gpus".into(), 1.0)].into();
        let v = usage_views(&offered, Some(n1));
        let shown: Vec<String> = v
            .iter()
            .map(|u| format!("{} {}/{} {:?}", u.name, u.used, u.offered, u.percent))
            .collect();
        // mem is used but not limited; disk is neither; gpus is offered only.
        assert_eq!(
            shown,
            ["cpus 1.3/2 Some(65)", "mem 352/ None", "gpus /1 None"]
        );

        let over = usage_views(&[("cpus".into(), 1.0)].into(), Some(n1));
        assert!(over[0].over);
        assert_eq!(over[0].percent, Some(100));
        // Usage unknown: the offers alone.
        let v = usage_views(&offered, None);
        assert_eq!(
            v.iter().map(|u| u.used.as_str()).collect::<Vec<_>>(),
            ["", ""]
        );
    }
}
