//! The indexer's one error type and its mapping onto HTTP status codes.
//!
//! Every failure a client can cause (bad gzip, a bad line, a bad query, a missing
//! token) is its own variant so the HTTP layer can answer 4xx with a message that
//! names the bad value; everything the client cannot fix collapses into a few 5xx
//! variants. The trade-off: Tantivy errors are flattened to strings when they must
//! be handed to several waiters (group commit), losing their structure.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "missing or wrong cluster token: expected header `{}` or `Authorization: Bearer`",
        protocol::TOKEN_HEADER
    )]
    Unauthorized,
    #[error("invalid request body: {0}")]
    BadBody(String),
    #[error("request body too large: it inflates to more than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error(transparent)]
    Protocol(#[from] protocol::Error),
    #[error("invalid query {query:?}: {reason}")]
    BadQuery { query: String, reason: String },
    #[error("invalid parameter `{name}` = {value:?}: expected {expected}")]
    BadParam {
        name: &'static str,
        value: String,
        expected: String,
    },
    #[error("the indexer is overloaded: {reason}; retry later")]
    Overloaded { reason: String },
    #[error("the indexer is shutting down")]
    ShuttingDown,
    #[error("index error: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("index error: {0}")]
    Index(String),
    #[error("index directory {path:?}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid commit payload {payload:?}: {reason}")]
    BadPayload { payload: String, reason: String },
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::BadBody(_)
            | Error::Protocol(_)
            | Error::BadQuery { .. }
            | Error::BadParam { .. } => StatusCode::BAD_REQUEST,
            Error::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Error::Tantivy(_)
            | Error::Index(_)
            | Error::Io { .. }
            | Error::BadPayload { .. }
            | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = self.to_string();
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), error = %message, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %message, "request rejected");
        }
        let mut resp = (status, Json(serde_json::json!({ "error": message }))).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_map_to_4xx_and_server_errors_to_5xx() {
        assert_eq!(Error::Unauthorized.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            Error::BodyTooLarge { limit: 1 }.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            Error::Protocol(protocol::Error::BadCursor("x".into())).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            Error::Overloaded { reason: "x".into() }.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "bulk clients retry 429s"
        );
        assert_eq!(
            Error::Index("disk full".into()).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn bad_param_names_the_value() {
        let e = Error::BadParam {
            name: "limit",
            value: "abc".into(),
            expected: "an integer from 0 to 10000".into(),
        };
        let msg = e.to_string();
        assert!(msg.contains("limit") && msg.contains("abc"), "{msg}");
    }
}
