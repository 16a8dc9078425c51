//! The scheduler crate's error type and its one mapping onto HTTP status codes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An app definition failed validation; every problem is listed.
    #[error("invalid app definition: {}", .0.join("; "))]
    InvalidApp(Vec<String>),
    #[error("app {0:?} does not exist")]
    UnknownApp(String),
    #[error("app {0:?} already exists")]
    AppExists(String),
    #[error("app {app:?} has no version {version:?}: see /v2/apps{app}/versions for those kept")]
    UnknownVersion { app: String, version: String },
    #[error("task {0:?} does not exist")]
    UnknownTask(String),
    #[error("deployment {0:?} does not exist")]
    UnknownDeployment(String),
    #[error("agent {0:?} is not registered")]
    UnknownAgent(String),
    #[error("missing or wrong token: expected `Authorization: Bearer <token>` or header `x-sandtrail-token`")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A task cannot run as the user its app (or the node's default) names.
    #[error("cannot run the task as user {user:?}: {reason}")]
    TaskUser { user: String, reason: String },
    #[error("no instance of app {0:?} is available")]
    NoInstance(String),
    /// The agent's Docker engine refused or failed a call.
    #[error("docker: {0}")]
    Docker(String),
    #[error("upstream {addr} failed: {reason}")]
    Upstream { addr: String, reason: String },
    /// ZooKeeper (`--zk`) failed or refused an operation.
    #[error("zookeeper: {0}")]
    Zk(String),
    /// This scheduler cannot answer now: it is not (or no longer) the leader and cannot
    /// forward the request to one.
    #[error("{0}")]
    NoLeader(String),
    #[error("io error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("http client error: {0}")]
    Http(#[from] reqwest::Error),
    #[error("json error: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<protocol::auth::AuthError> for Error {
    fn from(e: protocol::auth::AuthError) -> Error {
        match e {
            protocol::auth::AuthError::Forbidden { .. } => Error::Forbidden(e.to_string()),
            _ => Error::Unauthorized,
        }
    }
}

impl Error {
    /// Wraps an io error with the path it happened on, so the message names it.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            // Marathon answers 422 for invalid app definitions; clients rely on it.
            Error::InvalidApp(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::UnknownApp(_)
            | Error::UnknownVersion { .. }
            | Error::UnknownTask(_)
            | Error::UnknownAgent(_)
            | Error::UnknownDeployment(_) => StatusCode::NOT_FOUND,
            Error::AppExists(_) => StatusCode::CONFLICT,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::BadRequest(_) | Error::TaskUser { .. } | Error::Json(_) => {
                StatusCode::BAD_REQUEST
            }
            Error::NoInstance(_) | Error::NoLeader(_) | Error::Zk(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::Upstream { .. } | Error::Http(_) | Error::Docker(_) => StatusCode::BAD_GATEWAY,
            Error::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            Error::InvalidApp(details) => serde_json::json!({
                "message": "Object is not valid",
                "details": details.iter().map(|d| serde_json::json!({"path": "/", "errors": [d]})).collect::<Vec<_>>(),
            }),
            other => serde_json::json!({ "message": other.to_string() }),
        };
        (status, Json(body)).into_response()
    }
}
