//! `POST /ui/saved` and `POST /ui/saved/delete`: save the search page's current search
//! under a name, or delete a saved one ([`crate::saved`] keeps them). The list itself is
//! part of the search page.
//!
//! Saving and deleting need the deploy role, as a Kibana saved object needs more than
//! read privileges: a saved search is shared by everyone, so a read-only token (the
//! one handed to a dashboard screen, say) must not be able to rename or remove what
//! others rely on. Everyone who may read sees and opens them. Cross-site posts are
//! refused as for the Apps page's buttons (SameSite=Strict cookie, `Origin` checked);
//! post, redirect, get, so a reload does not save twice.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use protocol::auth::Role;
use protocol::http::Caller;
use serde::Deserialize;

use super::login::same_origin;
use super::search::saved_params;
use crate::error::{Error, Result};
use crate::saved::{valid_name, SavedSearch};
use crate::AppState;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct SaveForm {
    name: String,
    /// Overwrite a saved search of the same name.
    replace: Option<String>,
    q: Option<String>,
    range: Option<String>,
    start: Option<String>,
    end: Option<String>,
    sort: Option<String>,
    cols: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct DeleteForm {
    name: String,
}

/// Whether the caller may save and delete (the page shows the controls only then).
pub(crate) fn may_save(caller: Option<&Extension<Caller>>) -> bool {
    caller.is_some_and(|Extension(Caller(role))| role.allows(Role::Deploy))
}

fn need_save_role(caller: Option<&Extension<Caller>>) -> Result<()> {
    if may_save(caller) {
        return Ok(());
    }
    let role = caller.map_or("none".to_string(), |Extension(Caller(r))| r.to_string());
    Err(Error::Forbidden(format!(
        "saving and deleting searches needs the deploy role; this session has {role}"
    )))
}

/// `POST /ui/saved`: saves, then shows the saved search.
pub(crate) async fn save(
    State(state): State<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    Form(f): Form<SaveForm>,
) -> Result<Response> {
    same_origin(&headers)?;
    need_save_role(caller.as_ref())?;
    let name = valid_name(&f.name)?;
    let params = saved_params(
        f.q.as_deref().unwrap_or(""),
        f.range.as_deref(),
        f.start.as_deref(),
        f.end.as_deref(),
        f.sort.as_deref(),
        f.cols.as_deref(),
    )?;
    let search = SavedSearch {
        name: name.clone(),
        params,
        saved_at: chrono::Utc::now(),
    };
    let to = search.href();
    let replace = f.replace.is_some_and(|r| !r.is_empty());
    state.saved.save(search, replace).await?;
    tracing::info!(name, replace, "search saved from the web ui");
    Ok(see_other(&to))
}

/// `POST /ui/saved/delete`: deletes, then back to the search page.
pub(crate) async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    Form(f): Form<DeleteForm>,
) -> Result<Response> {
    same_origin(&headers)?;
    need_save_role(caller.as_ref())?;
    state.saved.delete(f.name.trim()).await?;
    tracing::info!(name = f.name.trim(), "saved search deleted from the web ui");
    Ok(see_other("/"))
}

fn see_other(to: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, to.to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
    )
        .into_response()
}
