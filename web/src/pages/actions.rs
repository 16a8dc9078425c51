//! `POST /apps/action`: the Apps page's buttons (scale, suspend, restart, destroy),
//! for sessions and tokens with the deploy role.
//!
//! Each is a plain form post that the web turns into one Marathon call on the
//! scheduler with its own token, then redirects back to the Apps page (post, redirect,
//! get), so it works without JavaScript and a reload does not repeat it. Cross-site
//! posts are refused twice over, as for sign-out: the session cookie is SameSite=Strict
//! and an `Origin` of another site is refused. Destroying asks for the app's name typed
//! again, a confirmation that needs no script and cannot be clicked through by accident.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use protocol::auth::Role;
use protocol::http::Caller;
use serde::Deserialize;
use serde_json::json;

use super::login::same_origin;
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
}

/// Whether the caller may change apps (the page shows the buttons only then).
pub(crate) fn may_deploy(caller: Option<&Extension<Caller>>) -> bool {
    caller.is_some_and(|Extension(Caller(role))| role.allows(Role::Deploy))
}

pub(crate) async fn act(
    State(state): State<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    Form(f): Form<ActionForm>,
) -> Result<Response> {
    same_origin(&headers)?;
    if !may_deploy(caller.as_ref()) {
        let role = caller.map_or("none".to_string(), |Extension(Caller(r))| r.to_string());
        return Err(Error::Forbidden(format!(
            "changing apps needs the deploy role; this session has {role}"
        )));
    }
    let app = f.app.trim_matches('/');
    if !valid_app_name(app) {
        return Err(Error::BadAppName(f.app));
    }
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
        _ => {
            return Err(Error::BadParam {
                name: "action",
                value: f.action,
                expected: "scale, suspend, restart or destroy",
            })
        }
    }
    tracing::info!(app, action = f.action, "app changed from the web ui");
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/apps".to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
    )
        .into_response())
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
