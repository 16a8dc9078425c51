//! `POST /apps/action`: the Apps page's buttons (scale, suspend, restart, destroy),
//! and `GET|POST /apps/edit`: an app's definition edited as JSON, the scheduler's
//! validation errors listed above the text kept as typed; and `POST /hosts/action`,
//! drain or undrain an agent; for sessions and tokens with the deploy role.
//!
//! Each is a plain form post that the web turns into one Marathon call on the
//! scheduler with its own token, then redirects back to the Apps page (post, redirect,
//! get), so it works without JavaScript and a reload does not repeat it. Cross-site
//! posts are refused twice over, as for sign-out: the session cookie is SameSite=Strict
//! and an `Origin` of another site is refused. Destroying asks for the app's name typed
//! again, a confirmation that needs no script and cannot be clicked through by accident.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use protocol::auth::Role;
use protocol::http::Caller;
use serde::Deserialize;
use serde_json::json;

use super::login::same_origin;
use super::render;
use crate::error::{Error, Result};
use crate::render::valid_app_name;
use crate::AppState;

/// Most instances the page will ask for, as the scheduler's own cap.
const MAX_INSTANCES: u32 = 10_000;

#[derive(Debug, Deserialize)]
pub(crate) struct ActionForm {
    app: String,
    action: String,
    instances: Option<String>,
    /// Destroy: the app's name typed again.
    confirm: Option<String>,
    /// Rollback: the version to go back to.
    version: Option<String>,
}

/// Whether the caller may change apps (the page shows the buttons only then).
pub(crate) fn may_deploy(caller: Option<&Extension<Caller>>) -> bool {
    caller.is_some_and(|Extension(Caller(role))| role.allows(Role::Deploy))
}

/// Refuses a caller without the deploy role (403), naming the role it has.
fn need_deploy(caller: Option<&Extension<Caller>>) -> Result<()> {
    if may_deploy(caller) {
        return Ok(());
    }
    let role = caller.map_or("none".to_string(), |Extension(Caller(r))| r.to_string());
    Err(Error::Forbidden(format!(
        "changing apps needs the deploy role; this session has {role}"
    )))
}

/// An app name from a form or query, checked, without its slashes.
fn app_name(raw: &str) -> Result<&str> {
    let app = raw.trim_matches('/');
    if valid_app_name(app) {
        Ok(app)
    } else {
        Err(Error::BadAppName(raw.to_string()))
    }
}

/// Fields of `GET /v2/apps/{id}/versions/{v}` that name the version rather than
/// define the app: left out of the editor and the diff.
const NOT_DEFINITION: &[&str] = &["version", "versionInfo"];

#[derive(Template)]
#[template(path = "edit.html")]
struct EditPage {
    nav: &'static str,
    app: String,
    json: String,
    /// The scheduler's reasons (or ours: not JSON) for refusing the last submission.
    errors: Vec<String>,
    versions: Vec<VersionView>,
}

/// One kept version of the app, with what differs from the current definition.
struct VersionView {
    version: String,
    current: bool,
    /// `field: then → now`, one per field that differs.
    changes: Vec<String>,
}

/// Versions shown on the edit page, newest first; older ones stay in the API.
const VERSIONS_SHOWN: usize = 10;

/// Fields whose value differs between definitions `then` and `now`, as `field: then →
/// now` (a field-level diff: app definitions are flat enough that this is the one a
/// person reads; nested values are shown whole).
fn changes(then: &serde_json::Value, now: &serde_json::Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (a, b) = (
        then.as_object().unwrap_or(&empty),
        now.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let show = |v: Option<&serde_json::Value>| v.map_or("(unset)".to_string(), |v| v.to_string());
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {} → {}", show(a.get(k)), show(b.get(k))))
        .collect()
}

/// The app's current definition (its newest version, which is what a `PUT` is merged
/// onto) and its kept versions, each diffed against it.
async fn definition_and_versions(
    state: &AppState,
    app: &str,
) -> Result<(serde_json::Value, Vec<VersionView>)> {
    let list = state.deployer.app_versions(app).await?;
    let mut defs = Vec::new();
    for v in list.iter().take(VERSIONS_SHOWN) {
        let mut def = state.deployer.app_version(app, v).await?;
        if let Some(obj) = def.as_object_mut() {
            obj.retain(|k, _| !NOT_DEFINITION.contains(&k.as_str()));
        }
        defs.push((v.clone(), def));
    }
    let now = defs.first().map(|(_, d)| d.clone()).unwrap_or_default();
    let views = defs
        .iter()
        .enumerate()
        .map(|(i, (v, then))| VersionView {
            version: v.clone(),
            current: i == 0,
            changes: changes(then, &now),
        })
        .collect();
    Ok((now, views))
}

#[derive(Debug, Deserialize)]
pub(crate) struct EditQuery {
    app: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct EditForm {
    app: String,
    json: String,
}

/// `GET /apps/edit?app=NAME`: the definition in a text area.
pub(crate) async fn edit_page(
    State(state): State<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
    Query(q): Query<EditQuery>,
) -> Result<Response> {
    need_deploy(caller.as_ref())?;
    let app = app_name(&q.app)?;
    let (now, versions) = definition_and_versions(&state, app).await?;
    let json = serde_json::to_string_pretty(&now).unwrap_or_default();
    edit_form(StatusCode::OK, app, json, Vec::new(), versions)
}

/// `POST /apps/edit`: `PUT`s the text; refused, the page again with the reasons.
pub(crate) async fn edit_submit(
    State(state): State<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    Form(f): Form<EditForm>,
) -> Result<Response> {
    same_origin(&headers)?;
    need_deploy(caller.as_ref())?;
    let app = app_name(&f.app)?;
    let def: serde_json::Value = match serde_json::from_str(&f.json) {
        Ok(v) => v,
        Err(e) => {
            let why = format!("not valid JSON: {e}");
            return edit_form(StatusCode::BAD_REQUEST, app, f.json, vec![why], Vec::new());
        }
    };
    let path = format!("/v2/apps/{app}");
    match state
        .deployer
        .change(reqwest::Method::PUT, &path, Some(&def))
        .await
    {
        Ok(_) => {
            tracing::info!(app, "app definition edited from the web ui");
            Ok(back_to_apps())
        }
        Err(Error::Refused { status, reasons }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            edit_form(status, app, f.json, reasons, Vec::new())
        }
        Err(e) => Err(e),
    }
}

fn edit_form(
    status: StatusCode,
    app: &str,
    json: String,
    errors: Vec<String>,
    versions: Vec<VersionView>,
) -> Result<Response> {
    let page = EditPage {
        nav: "apps",
        app: app.to_string(),
        json,
        errors,
        versions,
    };
    let html = render("edit", &page)?;
    Ok((status, [(header::CACHE_CONTROL, "no-store")], html).into_response())
}

fn back_to_apps() -> Response {
    back_to("/apps")
}

/// Post, redirect, get: a reload does not repeat the change.
fn back_to(page: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, page.to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
    )
        .into_response()
}

pub(crate) async fn act(
    State(state): State<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    Form(f): Form<ActionForm>,
) -> Result<Response> {
    same_origin(&headers)?;
    need_deploy(caller.as_ref())?;
    let app = app_name(&f.app)?;
    let path = format!("/v2/apps/{app}");
    let put = reqwest::Method::PUT;
    match f.action.as_str() {
        "scale" => {
            let n = parse_instances(f.instances.as_deref())?;
            let body = json!({ "instances": n });
            state.deployer.change(put, &path, Some(&body)).await?;
        }
        "suspend" => {
            let body = json!({ "instances": 0 });
            state.deployer.change(put, &path, Some(&body)).await?;
        }
        "restart" => {
            let path = format!("{path}/restart");
            state
                .deployer
                .change(reqwest::Method::POST, &path, None)
                .await?;
        }
        "destroy" => {
            if f.confirm.as_deref().map(|c| c.trim().trim_matches('/')) != Some(app) {
                return Err(Error::BadParam {
                    name: "confirm",
                    value: f.confirm.unwrap_or_default(),
                    expected: "the app's name typed again to destroy it",
                });
            }
            state
                .deployer
                .change(reqwest::Method::DELETE, &path, None)
                .await?;
        }
        "rollback" => {
            let version = f.version.clone().unwrap_or_default();
            let body = json!({ "version": version });
            state.deployer.change(put, &path, Some(&body)).await?;
        }
        _ => {
            return Err(Error::BadParam {
                name: "action",
                value: f.action,
                expected: "scale, suspend, restart, destroy or rollback",
            })
        }
    }
    tracing::info!(app, action = f.action, "app changed from the web ui");
    Ok(back_to_apps())
}

#[derive(Debug, Deserialize)]
pub(crate) struct HostForm {
    agent: String,
    action: String,
}

/// `POST /hosts/action`: drain an agent (or undrain it), deploy role only.
pub(crate) async fn host_act(
    State(state): State<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    Form(f): Form<HostForm>,
) -> Result<Response> {
    same_origin(&headers)?;
    need_deploy(caller.as_ref())?;
    // Agent names are host names: the app name rules (letters, digits, `.-_`) hold.
    if !valid_app_name(&f.agent) || f.agent.contains('/') {
        return Err(Error::BadParam {
            name: "agent",
            value: f.agent,
            expected: "a host name as the Hosts page lists it",
        });
    }
    let path = format!("/v1/agents/{}/drain", f.agent);
    let method = match f.action.as_str() {
        "drain" => reqwest::Method::POST,
        "undrain" => reqwest::Method::DELETE,
        _ => {
            return Err(Error::BadParam {
                name: "action",
                value: f.action,
                expected: "drain or undrain",
            })
        }
    };
    state.deployer.change(method, &path, None).await?;
    tracing::info!(
        agent = f.agent,
        action = f.action,
        "agent changed from the web ui"
    );
    Ok(back_to("/hosts"))
}

fn parse_instances(v: Option<&str>) -> Result<u32> {
    let raw = v.unwrap_or("").trim();
    raw.parse::<u32>()
        .ok()
        .filter(|n| *n <= MAX_INSTANCES)
        .ok_or_else(|| Error::BadParam {
            name: "instances",
            value: raw.to_string(),
            expected: "a whole number from 0 to 10000",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_lists_the_fields_that_differ_from_now() {
        let then = json!({"cmd": "sleep 1", "instances": 2, "env": {"A": "1"}});
        let now = json!({"cmd": "sleep 2", "instances": 2, "mem": 32});
        assert_eq!(
            changes(&then, &now),
            vec![
                "cmd: \"sleep 1\" → \"sleep 2\"",
                "env: {\"A\":\"1\"} → (unset)",
                "mem: (unset) → 32",
            ]
        );
        assert!(changes(&now, &now).is_empty());
    }

    #[test]
    fn instances_are_whole_numbers_within_the_cap() {
        assert_eq!(parse_instances(Some(" 3 ")).unwrap(), 3);
        assert_eq!(parse_instances(Some("0")).unwrap(), 0);
        for bad in [
            None,
            Some(""),
            Some("-1"),
            Some("2.5"),
            Some("10001"),
            Some("x"),
        ] {
            let e = parse_instances(bad).unwrap_err();
            assert!(e.to_string().contains("instances"), "{e}");
        }
    }
}
