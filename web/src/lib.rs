//! Sandtrail's web UI: the Kibana replacement. Server-rendered pages (askama) for
//! search, live tail, traces, apps and hosts, with one small vanilla JavaScript file for
//! the live parts and one stylesheet, both compiled into the binary.
//!
//! The UI talks to the indexer and the scheduler only over their HTTP contracts (see
//! [`client`]), never through their internals, so `sandtrail web` can run as its own
//! process next to a remote indexer and scheduler, and in `sandtrail up` the same code
//! simply calls its own listener. The trade-off is one extra HTTP hop per page (and a
//! proxied SSE stream for the tail) in exchange for one code path in every deployment.
//!
//! All page state lives in the URL, so every view can be shared as a link; the only
//! session is the sign-in one ([`session`]), the only stored state the saved searches
//! ([`saved`]), and there is no front-end build step.
//! Every route but the sign-in page and the static assets needs a session or a token
//! with the read role; the UI calls the indexer and the scheduler with its own
//! credential (in `sandtrail up`, a read token), never the user's.

pub mod client;
pub mod error;
pub mod hops;
pub mod pages;
pub mod render;
pub mod saved;
pub mod session;

use protocol::metrics::{Exposition, Kind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use error::{Error, Result};

/// Where the UI finds the parts it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    /// Base URL of the indexer, e.g. `http://127.0.0.1:7280`.
    pub indexer_url: String,
    /// Base URL of the scheduler, e.g. `http://127.0.0.1:7280`.
    pub scheduler_url: String,
}

/// The web UI service: build it once, then take its [`router`](Web::router) and read its
/// [`metrics`](Web::metrics).
#[derive(Clone)]
pub struct Web {
    state: Arc<AppState>,
}

/// Shared by every handler.
#[derive(Clone)]
pub(crate) struct AppState {
    /// Who may sign in, and with which role. Open (no token) lets everyone in: the
    /// library's own tests; the binary always configures tokens.
    pub(crate) keyring: Arc<protocol::auth::Keyring>,
    pub(crate) sessions: Arc<session::Sessions>,
    /// Live-tail streams open at once through the UI.
    pub(crate) tail_limit: protocol::http::Limit,
    pub(crate) client: client::Client,
    /// What the Apps page's buttons change apps with (for deploy-role users only):
    /// the UI's own token unless [`Web::with_deploy_token`] gave a wider one, so the
    /// reads keep running with the least they need.
    pub(crate) deployer: client::Client,
    pub(crate) metrics: Arc<Metrics>,
    /// The search page's saved searches.
    pub(crate) saved: Arc<saved::SavedSearches>,
    /// Cancelled at shutdown; ends the proxied tail streams, which would otherwise keep
    /// a graceful shutdown waiting forever.
    pub(crate) shutdown: CancellationToken,
}

impl Web {
    pub fn new(config: WebConfig) -> Web {
        Web {
            state: Arc::new(AppState {
                keyring: Arc::default(),
                sessions: Arc::default(),
                tail_limit: protocol::http::Limit::new("tail", MAX_TAIL_STREAMS, |b| {
                    axum::response::IntoResponse::into_response(Error::from(b))
                }),
                client: client::Client::new(&config.indexer_url, &config.scheduler_url, None),
                deployer: client::Client::new(&config.indexer_url, &config.scheduler_url, None),
                metrics: Arc::default(),
                saved: Arc::new(saved::SavedSearches::in_memory()),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    fn with_state(self, f: impl FnOnce(&mut AppState)) -> Web {
        let mut st = (*self.state).clone();
        f(&mut st);
        Web {
            state: Arc::new(st),
        }
    }

    /// Accepts sign-ins (and per-request tokens) from `keyring`'s tokens with the read
    /// role or wider.
    pub fn with_keyring(self, keyring: protocol::auth::Keyring) -> Web {
        self.with_state(|st| st.keyring = Arc::new(keyring))
    }

    /// A one-time sign-in link (path and query, to append to the UI's base URL) that
    /// signs its first opener in with `role`; see [`session::ONCE_TTL`].
    pub fn one_time_link(&self, role: protocol::auth::Role) -> String {
        format!("/login?once={}", self.state.sessions.issue_once(role))
    }

    /// Sends `token` (`x-sandtrail-token`) on every call to the indexer and the
    /// scheduler: the UI's own credential, a read token is enough.
    pub fn with_token(self, token: Option<String>) -> Web {
        self.with_state(|st| {
            st.deployer = st.client.with_token(token.clone());
            st.client = st.client.with_token(token);
        })
    }

    /// The token the Apps page's buttons use to change apps on the scheduler (a
    /// deploy token; only users with the deploy role reach those buttons).
    pub fn with_deploy_token(self, token: Option<String>) -> Web {
        self.with_state(|st| st.deployer = st.client.with_token(token))
    }

    /// Keeps the saved searches in `path` (read now if it exists) rather than in
    /// memory only; see [`saved`]. Blocking: call it at start.
    pub fn with_saved_searches(self, path: std::path::PathBuf) -> Result<Web> {
        let saved = Arc::new(saved::SavedSearches::open(path)?);
        Ok(self.with_state(|st| st.saved = saved))
    }

    /// Ends every open live-tail stream when `token` is cancelled, so a graceful
    /// shutdown of the listener is not held up by browsers that keep a tail open.
    pub fn with_shutdown(self, token: CancellationToken) -> Web {
        self.with_state(|st| st.shutdown = token)
    }

    /// The UI's routes: `/`, `/context`, `/slow`, `/tail/{app}`, `/trace/{id}`, `/apps`,
    /// `/hosts`, `/ui/tail-stream`, `/ui/saved`, `/login`, `/logout` and `/static/...`. No `/healthz` or `/metrics`: the binary adds
    /// those.
    pub fn router(&self) -> axum::Router {
        pages::router(self.state.clone())
    }

    /// Counters in the Prometheus text format.
    pub fn metrics(&self) -> String {
        self.state.metrics.render()
    }
}

/// The UI's routes for `config`; shorthand for `Web::new(config).router()` when the
/// caller needs neither metrics nor a token.
pub fn router(config: WebConfig) -> axum::Router {
    Web::new(config).router()
}

/// Live-tail streams the UI proxies at once; more are answered 429.
pub const MAX_TAIL_STREAMS: usize = 256;

/// Request and upstream counters. Plain atomics: a handful of fixed series does not
/// justify a metrics registry.
#[derive(Default)]
pub(crate) struct Metrics {
    pub(crate) pages: [AtomicU64; Page::ALL.len()],
    pub(crate) indexer_errors: AtomicU64,
    pub(crate) scheduler_errors: AtomicU64,
    pub(crate) tail_streams: AtomicU64,
}

/// The pages counted in `sandtrail_web_requests_total`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Page {
    Search,
    Tail,
    TailStream,
    Trace,
    Apps,
    Hosts,
    Context,
    Slow,
}

impl Page {
    const ALL: [Page; 8] = [
        Page::Search,
        Page::Tail,
        Page::TailStream,
        Page::Trace,
        Page::Apps,
        Page::Hosts,
        Page::Context,
        Page::Slow,
    ];

    fn label(self) -> &'static str {
        match self {
            Page::Search => "search",
            Page::Tail => "tail",
            Page::TailStream => "tail_stream",
            Page::Trace => "trace",
            Page::Apps => "apps",
            Page::Hosts => "hosts",
            Page::Context => "context",
            Page::Slow => "slow",
        }
    }
}

impl Metrics {
    pub(crate) fn hit(&self, page: Page) {
        self.pages[page as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn upstream_error(&self, err: &Error) {
        match err.upstream() {
            Some(client::Service::Indexer) => self.indexer_errors.fetch_add(1, Ordering::Relaxed),
            Some(client::Service::Scheduler) => {
                self.scheduler_errors.fetch_add(1, Ordering::Relaxed)
            }
            None => return,
        };
    }

    fn render(&self) -> String {
        let mut e = Exposition::new();
        e.family(
            "sandtrail_web_requests_total",
            "Pages served by the web UI.",
            Kind::Counter,
        );
        for page in Page::ALL {
            e.sample(
                &[("page", page.label())],
                self.pages[page as usize].load(Ordering::Relaxed),
            );
        }
        e.family(
            "sandtrail_web_upstream_errors_total",
            "Failed calls to the indexer or scheduler.",
            Kind::Counter,
        )
        .sample(
            &[("upstream", "indexer")],
            self.indexer_errors.load(Ordering::Relaxed),
        )
        .sample(
            &[("upstream", "scheduler")],
            self.scheduler_errors.load(Ordering::Relaxed),
        );
        e.single(
            "sandtrail_web_tail_streams",
            "Live-tail streams open now.",
            Kind::Gauge,
            self.tail_streams.load(Ordering::Relaxed),
        );
        e.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_count_pages_and_streams() {
        let m = Metrics::default();
        m.hit(Page::Search);
        m.hit(Page::Search);
        m.hit(Page::Hosts);
        m.tail_streams.fetch_add(1, Ordering::Relaxed);
        let text = m.render();
        assert!(
            text.contains("sandtrail_web_requests_total{page=\"search\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("sandtrail_web_requests_total{page=\"hosts\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("sandtrail_web_requests_total{page=\"trace\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("sandtrail_web_tail_streams 1\n"), "{text}");
    }
}
