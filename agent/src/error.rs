//! The crate's one error type.
//!
//! Most failures inside the shipper are not fatal: a missing file is skipped, a failed
//! batch is retried. Only what stops [`crate::Shipper::run`] or
//! [`crate::Shipper::new`] from working at all surfaces as an [`Error`]; the
//! trade-off is that transient trouble shows up in logs and metrics, not in return
//! values.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid shipper config: {0}")]
    Config(String),
    #[error("i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint file {path} has version {version}, expected 1 or 2")]
    CheckpointVersion { path: PathBuf, version: u32 },
    #[error("could not build the http client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("shipper for host {0:?} is already running; run it once per work dir")]
    AlreadyRunning(String),
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("benchmark: {0}")]
    Bench(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// The agent serves no API of its own yet, but an embedding service (the binary's
/// status endpoints) can return these errors directly.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match &self {
            Error::Config(_) => StatusCode::BAD_REQUEST,
            Error::AlreadyRunning(_) => StatusCode::CONFLICT,
            Error::Io { .. }
            | Error::CheckpointVersion { .. }
            | Error::Client(_)
            | Error::Join(_)
            | Error::Bench(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, self.to_string()).into_response()
    }
}
