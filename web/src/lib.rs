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
//! All page state lives in the URL, so every view can be shared as a link; there is no
//! session and no front-end build step.

pub mod client;
pub mod error;
pub mod pages;
pub mod render;

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
pub(crate) struct AppState {
    pub(crate) client: client::Client,
    pub(crate) metrics: Arc<Metrics>,
    /// Cancelled at shutdown; ends the proxied tail streams, which would otherwise keep
    /// a graceful shutdown waiting forever.
    pub(crate) shutdown: CancellationToken,
}

impl Web {
    pub fn new(config: WebConfig) -> Web {
        Web {
            state: Arc::new(AppState {
                client: client::Client::new(&config.indexer_url, &config.scheduler_url, None),
                metrics: Arc::default(),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// Sends `token` as the cluster token (`x-sandtrail-token`) on every call to the
    /// indexer and the scheduler.
    pub fn with_token(self, token: Option<String>) -> Web {
        let old = &self.state;
        Web {
            state: Arc::new(AppState {
                client: old.client.with_token(token),
                metrics: old.metrics.clone(),
                shutdown: old.shutdown.clone(),
            }),
        }
    }

    /// Ends every open live-tail stream when `token` is cancelled, so a graceful
    /// shutdown of the listener is not held up by browsers that keep a tail open.
    pub fn with_shutdown(self, token: CancellationToken) -> Web {
        let old = &self.state;
        Web {
            state: Arc::new(AppState {
                client: old.client.clone(),
                metrics: old.metrics.clone(),
                shutdown: token,
            }),
        }
    }

    /// The UI's routes: `/`, `/context`, `/slow`, `/tail/{app}`, `/trace/{id}`, `/apps`,
    /// `/hosts`, `/ui/tail-stream` and `/static/...`. No `/healthz` or `/metrics`: the binary adds
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
        let mut out = String::new();
        out.push_str("# HELP sandtrail_web_requests_total Pages served by the web UI.\n");
        out.push_str("# TYPE sandtrail_web_requests_total counter\n");
        for page in Page::ALL {
            out.push_str(&format!(
                "sandtrail_web_requests_total{{page=\"{}\"}} {}\n",
                page.label(),
                self.pages[page as usize].load(Ordering::Relaxed)
            ));
        }
        out.push_str(
            "# HELP sandtrail_web_upstream_errors_total Failed calls to the indexer or scheduler.\n",
        );
        out.push_str("# TYPE sandtrail_web_upstream_errors_total counter\n");
        out.push_str(&format!(
            "sandtrail_web_upstream_errors_total{{upstream=\"indexer\"}} {}\n",
            self.indexer_errors.load(Ordering::Relaxed)
        ));
        out.push_str(&format!(
            "sandtrail_web_upstream_errors_total{{upstream=\"scheduler\"}} {}\n",
            self.scheduler_errors.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP sandtrail_web_tail_streams Live-tail streams open now.\n");
        out.push_str("# TYPE sandtrail_web_tail_streams gauge\n");
        out.push_str(&format!(
            "sandtrail_web_tail_streams {}\n",
            self.tail_streams.load(Ordering::Relaxed)
        ));
        out
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
