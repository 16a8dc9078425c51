//! `GET /apps` and `GET /hosts`: the cluster at a glance, from the scheduler's API, each
//! entry linking to its logs.
//!
//! Both pages join two scheduler calls (apps or agents, plus tasks) made concurrently.
//! The tasks are the extra detail: if only they fail, the page still renders with a
//! notice rather than failing as a whole.

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use super::render;
use super::search::field_query;
use crate::client::MarathonTask;
use crate::error::{Error, Result};
use crate::render::{format_ago, format_ts, format_ts_str, href, url_encode};
use crate::{AppState, Page};

pub(crate) struct TaskView {
    id: String,
    host: String,
    host_href: String,
    state: String,
    state_class: &'static str,
    started: String,
    ports: String,
    /// This instance's own lines, searched and live.
    logs_href: String,
    tail_href: String,
}

pub(crate) struct AppView {
    name: String,
    instances: u32,
    running: u32,
    health: String,
    resources: String,
    cmd: String,
    search_href: String,
    tail_href: String,
    tasks: Vec<TaskView>,
}

#[derive(Template)]
#[template(path = "apps.html")]
struct AppsPage {
    nav: &'static str,
    apps: Vec<AppView>,
    notice: Option<String>,
}

pub(crate) struct AgentView {
    name: String,
    address: String,
    router_url: String,
    resources: String,
    attributes: String,
    state: String,
    state_class: &'static str,
    heartbeat: String,
    heartbeat_ago: String,
    tasks: usize,
    search_href: String,
}

#[derive(Template)]
#[template(path = "hosts.html")]
struct HostsPage {
    nav: &'static str,
    agents: Vec<AgentView>,
    notice: Option<String>,
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

pub(crate) async fn apps(State(state): State<Arc<AppState>>) -> Result<Response> {
    state.metrics.hit(Page::Apps);
    let (apps, tasks) = tokio::join!(state.client.apps(), state.client.tasks());
    let apps = apps.map_err(|e| fail(&state, e))?;
    let (tasks, notice) = tasks_or_notice(&state, tasks);

    let mut by_app: BTreeMap<&str, Vec<&MarathonTask>> = BTreeMap::new();
    for t in &tasks {
        by_app.entry(t.app_name()).or_default().push(t);
    }
    let mut views: Vec<AppView> = apps
        .iter()
        .map(|a| {
            let name = a.name().to_string();
            let mut tasks: Vec<TaskView> = by_app
                .get(name.as_str())
                .map(|ts| ts.iter().map(|t| task_view(t)).collect())
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
                search_href: search_href("app", &name),
                tail_href: format!("/tail/{}", url_encode(&name)),
                instances: a.instances,
                running: a.tasks_running,
                health,
                resources: format!("cpus {} · mem {} MB", a.cpus, a.mem),
                cmd: a.cmd.clone().unwrap_or_default(),
                tasks,
                name,
            }
        })
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    let page = AppsPage {
        nav: "apps",
        apps: views,
        notice,
    };
    Ok(render("apps", &page)?.into_response())
}

fn task_view(t: &MarathonTask) -> TaskView {
    TaskView {
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

pub(crate) async fn hosts(State(state): State<Arc<AppState>>) -> Result<Response> {
    state.metrics.hit(Page::Hosts);
    let (agents, tasks) = tokio::join!(state.client.agents(), state.client.tasks());
    let mut agents = agents.map_err(|e| fail(&state, e))?;
    let (tasks, notice) = tasks_or_notice(&state, tasks);
    agents.sort_by(|a, b| a.name.cmp(&b.name));

    let now = Utc::now();
    let views = agents
        .iter()
        .map(|a| AgentView {
            name: a.name.clone(),
            address: a.address.clone(),
            router_url: a.router_url.clone(),
            resources: a
                .resources
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(" · "),
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
            search_href: search_href("host", &a.name),
        })
        .collect();
    let page = HostsPage {
        nav: "hosts",
        agents: views,
        notice,
    };
    Ok(render("hosts", &page)?.into_response())
}
