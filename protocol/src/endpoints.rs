//! A comma-separated list of equivalent servers' base URLs (`--scheduler
//! http://s1:7071,http://s2:7071`: schedulers in HA, any of which serves or forwards to
//! the leader), with the one in use.
//!
//! Clients use one URL until a connection to it fails, then move to the next: the
//! trade-off is that a server that accepts connections but answers errors is kept
//! (an answer, even 503, is the server's to give; only "nobody there" moves on).

use std::sync::atomic::{AtomicUsize, Ordering};

/// The list and the index of the URL in use.
#[derive(Debug)]
pub struct Endpoints {
    urls: Vec<String>,
    current: AtomicUsize,
}

impl Clone for Endpoints {
    fn clone(&self) -> Endpoints {
        Endpoints {
            urls: self.urls.clone(),
            current: AtomicUsize::new(self.current.load(Ordering::Relaxed)),
        }
    }
}

impl Endpoints {
    /// Splits `list` at commas, trimming blanks and trailing slashes; empty entries are
    /// dropped (an empty list keeps one empty URL, which fails on use).
    pub fn parse(list: &str) -> Endpoints {
        let mut urls: Vec<String> = list
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            urls.push(String::new());
        }
        Endpoints {
            urls,
            current: AtomicUsize::new(0),
        }
    }

    /// The URL in use and its index (for [`Endpoints::failed`]).
    pub fn current(&self) -> (usize, &str) {
        let i = self.current.load(Ordering::Relaxed) % self.urls.len();
        (i, &self.urls[i])
    }

    /// The URL in use joined with `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.current().1)
    }

    /// The connection to URL `index` failed: move to the next, unless another caller
    /// has moved on already.
    pub fn failed(&self, index: usize) {
        let next = (index + 1) % self.urls.len();
        let _ = self
            .current
            .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Every URL, in order.
    pub fn all(&self) -> &[String] {
        &self.urls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_url_moves_to_the_next_once_and_wraps() {
        let e = Endpoints::parse(" http://s1:7071/, ,http://s2:7071");
        assert_eq!(e.all(), ["http://s1:7071", "http://s2:7071"]);
        assert_eq!(e.url("/v2/apps"), "http://s1:7071/v2/apps");
        e.failed(0);
        // A second caller that saw s1 fail too does not skip s2.
        e.failed(0);
        assert_eq!(e.current(), (1, "http://s2:7071"));
        e.failed(1);
        assert_eq!(e.current().1, "http://s1:7071");
        assert_eq!(Endpoints::parse("").url("/x"), "/x");
    }
}
