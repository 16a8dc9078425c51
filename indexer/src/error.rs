//! The indexer's one error type and its mapping onto HTTP status codes.
//!
//! Every failure a client can cause (a bad gzip or zstd body, a bad line, a bad
//! query, a missing token) is its own variant so the HTTP layer can answer 4xx with a message that
//! names the bad value; everything the client cannot fix collapses into a few 5xx
//! variants. The trade-off: Tantivy errors are flattened to strings when they must
//! be handed to several waiters (group commit), losing their structure.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "missing or wrong token: expected header `{}`, `Authorization: Bearer`, Basic with the token as password or `ApiKey` of base64(id:token)",
        protocol::TOKEN_HEADER
    )]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
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
    /// An Elasticsearch setup object (template, policy, pipeline, data stream) that is
    /// asked for: none is kept, since their setup calls are accepted and ignored.
    #[error("{api} [{name}] not found: setup calls are accepted and ignored, so none is kept")]
    NotKept { api: &'static str, name: String },
    /// A path the Elasticsearch API does not serve (Elasticsearch's own words, then
    /// what is served).
    #[error("no handler found for uri [{uri}] and method [{method}]: this Elasticsearch API serves _bulk, _search, _count and the calls clients and shippers make when they start")]
    NoHandler { method: String, uri: String },
    /// A served Elasticsearch path asked with a method it does not take.
    #[error("incorrect HTTP method for uri [{uri}] and method [{method}]")]
    WrongMethod { method: String, uri: String },
    #[error("the indexer is overloaded: {reason}; retry later")]
    Overloaded { reason: String },
    #[error("the search was stopped at its time budget of {budget_ms} ms (indexer.search_timeout_ms); narrow the time range or the query")]
    SearchTimeout { budget_ms: u64 },
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
    /// The ingest log or ZooKeeper of shard mode (issue 21) could not be used.
    #[error("shards: {0}")]
    Shards(String),
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

impl From<protocol::http::Busy> for Error {
    fn from(b: protocol::http::Busy) -> Error {
        Error::Overloaded {
            reason: b.to_string(),
        }
    }
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::BadBody(_)
            | Error::Protocol(_)
            | Error::BadQuery { .. }
            | Error::BadParam { .. } => StatusCode::BAD_REQUEST,
            Error::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::NotKept { .. } | Error::NoHandler { .. } => StatusCode::NOT_FOUND,
            Error::WrongMethod { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::ShuttingDown | Error::Shards(_) => StatusCode::SERVICE_UNAVAILABLE,
            // Not 503: a retry of the same search would only time out again.
            Error::SearchTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Error::Tantivy(_)
            | Error::Index(_)
            | Error::Io { .. }
            | Error::BadPayload { .. }
            | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Elasticsearch's name for this kind of failure (its exception type), for the
    /// error bodies of the Elasticsearch-compatible endpoints.
    pub fn es_type(&self) -> &'static str {
        match self {
            Error::Unauthorized | Error::Forbidden(_) => "security_exception",
            Error::BadBody(_) | Error::BadQuery { .. } => "parsing_exception",
            Error::Protocol(protocol::Error::BadCursor(_))
            | Error::BadParam { .. }
            | Error::BodyTooLarge { .. } => "illegal_argument_exception",
            Error::Protocol(_) => "parsing_exception",
            Error::NotKept {
                api: "_data_stream",
                ..
            } => "index_not_found_exception",
            Error::NotKept { .. } | Error::NoHandler { .. } => "resource_not_found_exception",
            Error::WrongMethod { .. } => "illegal_argument_exception",
            Error::Overloaded { .. } => "es_rejected_execution_exception",
            Error::ShuttingDown => "node_closed_exception",
            Error::Shards(_) => "no_shard_available_action_exception",
            Error::SearchTimeout { .. } => "search_phase_execution_exception",
            Error::Tantivy(_)
            | Error::Index(_)
            | Error::Io { .. }
            | Error::BadPayload { .. }
            | Error::Internal(_) => "exception",
        }
    }

    /// Logs the failure and answers `body` with its status (and the headers its
    /// status calls for).
    fn respond(&self, body: serde_json::Value) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), error = %self, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %self, "request rejected");
        }
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            // What Elasticsearch sends, so clients know to retry with Basic auth.
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Basic realm=\"sandtrail\" charset=\"UTF-8\""),
            );
        }
        resp
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.to_string() });
        self.respond(body)
    }
}

/// An [`Error`] answered the way Elasticsearch answers errors, for the
/// Elasticsearch-compatible endpoints: clients such as opensearch-py read the
/// exception type from `error.type` (a plain string there breaks them).
#[derive(Debug)]
pub struct EsError(pub Error);

impl From<Error> for EsError {
    fn from(e: Error) -> EsError {
        EsError(e)
    }
}

impl IntoResponse for EsError {
    fn into_response(self) -> Response {
        let cause = serde_json::json!({
            "type": self.0.es_type(),
            "reason": self.0.to_string(),
        });
        let body = serde_json::json!({
            "error": {
                "root_cause": [cause.clone()],
                "type": cause["type"],
                "reason": cause["reason"],
            },
            "status": self.0.status().as_u16(),
        });
        self.0.respond(body)
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

    async fn body_of(resp: Response) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, headers, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn es_errors_have_elasticsearch_shape_and_type() {
        let cases = [
            (
                Error::BadQuery {
                    query: "(query DSL)".into(),
                    reason: "query type \"fuzzy\" is not supported".into(),
                },
                400,
                "parsing_exception",
            ),
            (Error::BadBody("not JSON".into()), 400, "parsing_exception"),
            (
                Error::NotKept {
                    api: "_ilm/policy",
                    name: "logs".into(),
                },
                404,
                "resource_not_found_exception",
            ),
            (
                Error::NotKept {
                    api: "_data_stream",
                    name: "logs-app".into(),
                },
                404,
                "index_not_found_exception",
            ),
            (
                Error::BadParam {
                    name: "size",
                    value: "x".into(),
                    expected: "a non-negative integer".into(),
                },
                400,
                "illegal_argument_exception",
            ),
            (
                Error::Overloaded {
                    reason: "queue full".into(),
                },
                429,
                "es_rejected_execution_exception",
            ),
            (Error::Unauthorized, 401, "security_exception"),
            (Error::Internal("boom".into()), 500, "exception"),
        ];
        for (err, status, kind) in cases {
            let reason = err.to_string();
            let (got, headers, body) = body_of(EsError(err).into_response()).await;
            assert_eq!(got.as_u16(), status, "{body}");
            assert_eq!(
                body,
                serde_json::json!({
                    "error": {
                        "root_cause": [{ "type": kind, "reason": reason }],
                        "type": kind,
                        "reason": reason,
                    },
                    "status": status,
                })
            );
            assert_eq!(headers.contains_key("retry-after"), status == 429);
            assert_eq!(headers.contains_key("www-authenticate"), status == 401);
        }
    }

    #[tokio::test]
    async fn native_errors_keep_their_plain_shape() {
        let (status, _, body) = body_of(Error::BadBody("x".into()).into_response()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            serde_json::json!({ "error": "invalid request body: x" })
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
