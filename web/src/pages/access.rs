//! One routed call, as every page shows it: who called whom, served where, the
//! request, its status and latency, and the link to its trace.
//!
//! The search rows, the trace waterfall and the slow-calls table each used to build
//! these strings from an access record themselves; built once here, a change to how a
//! caller or a request reads reaches every page. The cells they share are one askama
//! macro, `templates/macros.html`. The trade-off: the view holds every string any page
//! wants (the search row uses `peer`, the tables `caller`), a few unused per page.

use protocol::{LogRecord, TraceId};

use super::search::status_class;
use crate::render::{format_latency, short_task};

pub(crate) struct AccessView {
    /// `app @ host` of the caller, as far as known; `client` when nothing is.
    pub caller: String,
    /// The caller's app alone, `client` when unknown.
    pub peer: String,
    pub callee: String,
    pub host: String,
    pub task: String,
    pub task_short: String,
    /// `METHOD /path`.
    pub request: String,
    pub status: String,
    pub status_class: &'static str,
    pub latency: String,
}

impl AccessView {
    pub fn of(r: &LogRecord) -> AccessView {
        AccessView {
            caller: match (&r.peer_app, &r.peer_host) {
                (Some(app), Some(host)) => format!("{app} @ {host}"),
                (Some(app), None) => app.clone(),
                (None, Some(host)) => format!("? @ {host}"),
                (None, None) => "client".to_string(),
            },
            peer: r.peer_app.clone().unwrap_or_else(|| "client".to_string()),
            callee: r.app.clone(),
            host: r.host.clone(),
            task: r.task.clone(),
            task_short: short_task(&r.app, &r.task),
            request: format!(
                "{} {}",
                r.method.as_deref().unwrap_or(""),
                r.path.as_deref().unwrap_or("")
            )
            .trim()
            .to_string(),
            status: r.status.map(|s| s.to_string()).unwrap_or_default(),
            status_class: status_class(r.status),
            latency: r.latency_ms.map(format_latency).unwrap_or_default(),
        }
    }
}

/// `/trace/{id}` for a record whose trace id has a trace page.
pub(crate) fn trace_href(r: &LogRecord) -> Option<String> {
    r.trace_id
        .as_deref()
        .filter(|id| TraceId::is_valid(id))
        .map(|id| format!("/trace/{id}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Stream, TaskMeta};

    #[test]
    fn a_call_reads_the_same_on_every_page() {
        let meta = TaskMeta {
            host: "node-2".into(),
            app: "fib".into(),
            task: "fib.0f3c1a2b-aaaa".into(),
            instance: 0,
            ports: vec![],
        };
        let mut r = LogRecord::new(chrono::Utc::now(), &meta, Stream::Access, "m");
        let v = AccessView::of(&r);
        assert_eq!((v.caller.as_str(), v.peer.as_str()), ("client", "client"));
        r.peer_app = Some("gateway".into());
        r.peer_host = Some("node-1".into());
        r.method = Some("GET".into());
        r.path = Some("/fib/10".into());
        r.status = Some(503);
        r.trace_id = Some("req-42_a.b".into());
        let v = AccessView::of(&r);
        assert_eq!(v.caller, "gateway @ node-1");
        assert_eq!(v.peer, "gateway");
        assert_eq!(v.request, "GET /fib/10");
        assert_eq!(v.status_class, "st-5xx");
        assert_eq!(v.task_short, "0f3c1a2b");
        assert_eq!(trace_href(&r).as_deref(), Some("/trace/req-42_a.b"));
        r.trace_id = Some("a b".into());
        assert_eq!(trace_href(&r), None);
    }
}
