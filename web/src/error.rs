//! The web crate's one error type and its mapping to HTTP responses.
//!
//! Every error becomes an HTML page inside the normal layout (a person is reading it,
//! not a program), with a status that says whose fault it was: 400 for what the user
//! typed (a bad query, a malformed trace id), 502 when the indexer or scheduler could
//! not be reached or answered nonsense, 500 only for our own rendering bugs. The search
//! page catches [`Error::BadQuery`] itself so the query box stays on screen for fixing.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use crate::client::Service;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The indexer rejected the query (HTTP 400); `message` is its own explanation.
    #[error("{message}")]
    BadQuery { message: String },
    #[error(transparent)]
    BadTraceId(#[from] protocol::BadTraceId),
    #[error("invalid app name {0:?}: expected 1 to 128 letters, digits, '.', '_', '-' or '/'")]
    BadAppName(String),
    #[error("invalid {name} {value:?}: expected {expected}")]
    BadParam {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{service} at {url} is unreachable: {source}")]
    Unreachable {
        service: Service,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{service} at {url} answered {status}: {body}")]
    UpstreamStatus {
        service: Service,
        url: String,
        status: u16,
        body: String,
    },
    #[error("{service} at {url} answered with unexpected json: {source}")]
    Decode {
        service: Service,
        url: String,
        #[source]
        source: serde_json::Error,
    },
    /// No session and no token: pages redirect to the sign-in page instead; this is
    /// what the live-tail stream and other non-page routes answer.
    #[error("sign in first: expected a session cookie or a token (`Authorization: Bearer`)")]
    Unauthorized,
    /// A token or session whose role may not read (an agent token).
    #[error("{0}")]
    Forbidden(String),
    /// Too many live-tail streams open.
    #[error("{0}")]
    Busy(String),
    /// The scheduler refused a change (an invalid app, an unknown one, a conflict):
    /// its reasons, every one, shown where the change was asked for.
    #[error("the scheduler refused the change: {}", reasons.join("; "))]
    Refused { status: u16, reasons: Vec<String> },
    /// A cross-site form post (sign-in or sign-out from another origin).
    #[error("cross-site request refused: origin {0:?} is not this site")]
    CrossSite(String),
    /// A saved search's name taken, or the list full.
    #[error("{0}")]
    Conflict(String),
    /// The saved-search file could not be read or written.
    #[error("saved searches: {0}")]
    Store(String),
    /// A task of ours failed (panicked or was cancelled): our bug, not the user's.
    #[error("internal error: {0}")]
    Internal(String),
    #[error("rendering page {page}: {source}")]
    Render {
        page: &'static str,
        #[source]
        source: askama::Error,
    },
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
        Error::Busy(b.to_string())
    }
}

impl Error {
    /// The status this error is served with; the one place that decides it.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadQuery { .. }
            | Error::BadTraceId(_)
            | Error::BadAppName(_)
            | Error::BadParam { .. } => StatusCode::BAD_REQUEST,
            Error::Unreachable { .. } | Error::UpstreamStatus { .. } | Error::Decode { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Error::Render { .. } | Error::Internal(_) | Error::Store(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) | Error::CrossSite(_) => StatusCode::FORBIDDEN,
            Error::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::Refused { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST)
            }
        }
    }

    /// Which upstream failed, when one did.
    pub fn upstream(&self) -> Option<Service> {
        match self {
            Error::Unreachable { service, .. }
            | Error::UpstreamStatus { service, .. }
            | Error::Decode { service, .. } => Some(*service),
            Error::BadQuery { .. } => Some(Service::Indexer),
            _ => None,
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    nav: &'static str,
    status: u16,
    reason: &'a str,
    message: String,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "web page failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %self, "web request rejected");
        }
        let page = ErrorPage {
            nav: "",
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("error"),
            message: self.to_string(),
        };
        match page.render() {
            Ok(html) => (status, Html(html)).into_response(),
            // The error page itself failing leaves only plain text.
            Err(_) => (status, self.to_string()).into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_errors_are_400_and_upstream_errors_502() {
        assert_eq!(
            Error::BadTraceId(protocol::BadTraceId("x y".into())).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            Error::BadQuery {
                message: "unexpected ')'".into()
            }
            .status(),
            StatusCode::BAD_REQUEST
        );
        let e = Error::UpstreamStatus {
            service: Service::Scheduler,
            url: "http://s/v2/apps".into(),
            status: 500,
            body: "boom".into(),
        };
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(e.upstream(), Some(Service::Scheduler));
        assert!(e.to_string().contains("http://s/v2/apps"), "{e}");
    }

    #[test]
    fn error_page_escapes_the_message() {
        let page = ErrorPage {
            nav: "",
            status: 400,
            reason: "Bad Request",
            message: Error::BadAppName("<b>x</b>".into()).to_string(),
        };
        let html = page.render().unwrap();
        assert!(html.contains("&#60;b&#62;x&#60;/b&#62;"), "{html}");
        assert!(!html.contains("<b>x"), "{html}");
    }
}
