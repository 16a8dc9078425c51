//! Searching a sharded cluster (issue 21): an indexer in shard mode answers
//! `/api/v1/search` by asking one live owner of every shard, read from ZooKeeper
//! ([`crate::owners`]), for that shard's page (`shards=<n>`), and merging.
//!
//! One request per shard, not per owner: each shard's hits then come in that
//! shard's own exact order and cursor, and the merged page is a k-way merge by the
//! sort key (time, or latency) of pages each at least as long as the page asked
//! for, so its first `limit` hits are the true top. The next page's cursor holds,
//! per shard, that shard's cursor and how many hits of its page were already
//! handed out (`skip`): asking the shard again with `limit + skip` from the same
//! cursor and dropping `skip` continues it exactly, whichever owner answers. The
//! trade-off: a shard that contributes little to many pages is asked for longer
//! and longer pages until its page is used up, and six requests go out where
//! grouping by owner would send three.
//!
//! A shard's cursor is its owner's (`c1.<time>.<uid>`), and uids are each
//! indexer's own; but every owner of a shard indexes its records in the log's
//! order, so hits of one time come in the same order from each. The cursor
//! therefore also keeps which owner made it and how many hits of the last time
//! handed out were of this shard (`tie`): continued on another owner (a failure,
//! or ownership moved), the shard is asked from that time on, its first `tie`
//! hits dropped, and paging stays exact whichever owner answers.
//!
//! An owner that fails (refused connection, error status) is replaced by the
//! shard's next owner, then by a fresh read of the owners from ZooKeeper (the map
//! in memory, [`Owners::current`], may be up to [`crate::owners::OWNERS_STALE`]
//! old); a shard with none left is named in the answer's `shards.failed`
//! (Elasticsearch's `_shards`), its hits missing from that page, its cursor kept
//! as it was. Credentials of the caller are passed on: every indexer of a cluster
//! shares the tokens.
//!
//! The aggregations fan out the same way, one owner per shard, over a range fixed
//! to absolute times here: histogram buckets add up exactly; top field values add
//! up per value but each shard sends only its top [`shard_size`], so a count can
//! be low where a shard truncated ([`merge_fields`]); latency groups come with a
//! mergeable sketch ([`crate::sketch`]), so count, average and max are exact and
//! the percentiles within 1 % ([`merge_latency`]). The Elasticsearch API asks one
//! owner per shard the same way ([`ShardMode::es_each_shard`]) and merges in
//! [`crate::es::shards`]; the live tail follows one owner's stream per shard and
//! catches up by search after a switch ([`ShardMode::tail`]).

use crate::analytics::{
    top_n, ContextRequest, ContextResponse, FieldTop, FieldsResponse, GroupBy, LatencyGroup,
    LatencyResponse, Scope, MAX_EXTRA_KEYS, MAX_TOP_SIZE, SIDEBAR_FIELDS,
};
use crate::owners::Owners;
use crate::search::{SearchParams, Sort};
use crate::sketch::Sketch;
use crate::{Error, Result};
use axum::http::HeaderMap;
use protocol::{HistogramBucket, HistogramResponse, LogRecord, SearchResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// Tag of a fan-out cursor.
const CURSOR_TAG: &str = "s1.";

/// What shard mode needs at search time.
pub struct ShardMode {
    pub owners: Arc<Owners>,
    pub shards: u32,
    client: reqwest::Client,
    /// For the tail's streams, which may stay open for hours: no overall timeout.
    tail_client: reqwest::Client,
    /// [`catch_up_delay`] of this cluster's commit interval.
    catch_up_delay: Duration,
}

impl ShardMode {
    /// `commit_interval` is this indexer's, taken for every owner's (one cluster,
    /// one configuration).
    pub fn new(
        owners: Arc<Owners>,
        shards: u32,
        timeout: Duration,
        commit_interval: Duration,
    ) -> ShardMode {
        ShardMode {
            owners,
            shards,
            catch_up_delay: catch_up_delay(commit_interval),
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(timeout)
                .build()
                .expect("a plain http client builds"),
            tail_client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .build()
                .expect("a plain http client builds"),
        }
    }
}

/// Where the fan-out stands for one shard: its owner's cursor `c`, past which
/// `skip` hits were already handed out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCursor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c: Option<String>,
    #[serde(default)]
    pub skip: usize,
    #[serde(default)]
    pub done: bool,
    /// The owner (its URL) whose uids `c` holds; `None`: any owner's (no cursor,
    /// or one from a time alone, see [`resume_elsewhere`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The time (microseconds) of the last hit handed out of this shard, and how
    /// many hits of that time were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_ts: Option<i64>,
    #[serde(default)]
    pub tie: usize,
}

/// How a shard is continued on an owner other than the one whose uids its cursor
/// holds: from the time of the last hit handed out (that time included), the
/// `tie` hits of that time already handed out dropped. Exact because every owner
/// of a shard orders the hits of one time alike (uids in the log's order); `None`
/// for the latency order, whose cursor is then passed on as it is.
pub fn resume_elsewhere(sort: Sort, s: &ShardCursor) -> Option<(String, usize)> {
    use crate::query::Cursor;
    let t = s.tie_ts?;
    let c = match sort {
        Sort::NewestFirst => Cursor {
            ts_micros: t,
            uid: u64::MAX,
        }
        .encode(),
        Sort::OldestFirst => Cursor {
            ts_micros: t - 1,
            uid: u64::MAX,
        }
        .encode_oldest(),
        Sort::LatencyDesc => return None,
    };
    Some((c, s.tie))
}

/// Elasticsearch's `_shards`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardsSummary {
    pub total: u32,
    pub successful: u32,
    pub failed: Vec<u32>,
}

/// The answer of a fanned-out search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FanoutResponse {
    #[serde(flatten)]
    pub response: SearchResponse,
    pub shards: ShardsSummary,
}

pub fn encode_cursor(state: &BTreeMap<u32, ShardCursor>) -> String {
    let json = serde_json::to_vec(state).expect("a cursor serialises");
    let mut out = String::with_capacity(CURSOR_TAG.len() + json.len() * 2);
    out.push_str(CURSOR_TAG);
    for b in json {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The cursor `s` of a cluster of `shards` shards, decoded and checked: one entry
/// per shard, skips within a page, a tie time that can be stepped back from. A
/// cursor is the caller's text, so a forged one must be a 400, never an arithmetic
/// overflow or a shard that is not there.
pub fn decode_cursor(s: &str, shards: u32) -> Result<BTreeMap<u32, ShardCursor>> {
    let bad = || Error::Protocol(protocol::Error::BadCursor(s.chars().take(200).collect()));
    let hex = s.strip_prefix(CURSOR_TAG).ok_or_else(bad)?;
    if hex.len() % 2 != 0 {
        return Err(bad());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<std::result::Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    let state: BTreeMap<u32, ShardCursor> = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let fits = state.len() == shards as usize
        && state.keys().all(|n| *n < shards)
        && state.values().all(|c| {
            c.skip <= crate::search::MAX_LIMIT
                && c.tie <= u32::MAX as usize
                && c.tie_ts.is_none_or(|t| t > i64::MIN)
        });
    if fits {
        Ok(state)
    } else {
        Err(bad())
    }
}

/// Whether an owner's refusal is the caller's own mistake, the same on every
/// owner (a bad query, a body too large): then it is the caller's 400 at once.
/// A 401/403 (that owner's token differs), 404 (an older build) or 429 (busy)
/// says something of that owner only, so the next owner is asked.
fn callers_mistake(status: reqwest::StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 413 | 422)
}

/// The sort key of a hit, comparable so that smaller comes first.
fn key(sort: Sort, rec: &LogRecord) -> (i128, i128) {
    match sort {
        Sort::NewestFirst => (-(rec.ts.timestamp_nanos_opt().unwrap_or(0) as i128), 0),
        Sort::OldestFirst => (rec.ts.timestamp_nanos_opt().unwrap_or(0) as i128, 0),
        Sort::LatencyDesc => (
            -((rec.latency_ms.unwrap_or(0.0) * 1e6) as i128),
            -(rec.ts.timestamp_nanos_opt().unwrap_or(0) as i128),
        ),
    }
}

/// The owners of shard `n` to ask, in turn: ready ones (caught up with the log)
/// first, in slot order, then the others (a partial answer beats none).
fn urls_of(owners: &BTreeMap<u32, Vec<crate::owners::Owner>>, n: u32) -> Vec<String> {
    let mut o: Vec<&crate::owners::Owner> = owners
        .get(&n)
        .map(|o| o.iter().collect())
        .unwrap_or_default();
    o.sort_by_key(|o| !o.ready);
    o.into_iter().map(|o| o.url.clone()).collect()
}

/// One shard's page as fetched.
struct Page {
    total: u64,
    hits: Vec<LogRecord>,
    next: Option<String>,
}

/// What a shard was asked with: the cursor, how many hits past it to drop, whose
/// uids the cursor holds, and who answered.
struct Sent {
    cursor: Option<String>,
    skip: usize,
    by: Option<String>,
    url: String,
}

impl ShardMode {
    /// The fanned-out `/api/v1/search`. `pairs` is the caller's query string (its
    /// `cursor` is ours; `limit` and `sort` are passed on).
    pub async fn search(
        &self,
        params: &SearchParams,
        pairs: Vec<(String, String)>,
        headers: &HeaderMap,
    ) -> Result<FanoutResponse> {
        let sort = Sort::parse(params.sort.as_deref().unwrap_or(""))?;
        let limit = params.clone().into_request(chrono::Utc::now())?.limit;
        let mut state = match params.cursor.as_deref().filter(|c| !c.is_empty()) {
            Some(c) => decode_cursor(c, self.shards)?,
            None => (0..self.shards)
                .map(|n| (n, ShardCursor::default()))
                .collect(),
        };
        let owners = self.owners.current().await?;
        let passed: Vec<(String, String)> = pairs
            .into_iter()
            .filter(|(k, _)| !matches!(k.as_str(), "cursor" | "limit" | "shards" | "highlight"))
            .collect();
        let passed = &passed;
        let asks = state.iter().filter(|(_, s)| !s.done).map(|(&n, s)| {
            let urls = urls_of(&owners, n);
            let s = s.clone();
            async move {
                let mut r = self
                    .ask_page(n, &urls, sort, limit, &s, passed, headers)
                    .await;
                if matches!(r, Err(Error::Shards(_))) {
                    if let Some(urls) = self.fresh_urls(n, &urls).await {
                        r = self
                            .ask_page(n, &urls, sort, limit, &s, passed, headers)
                            .await;
                    }
                }
                (n, r)
            }
        });
        let answers = futures::future::join_all(asks).await;
        let mut summary = ShardsSummary {
            total: self.shards,
            successful: self.shards,
            failed: Vec::new(),
        };
        let mut total = 0;
        let mut pages: BTreeMap<u32, (Page, Sent)> = BTreeMap::new();
        for (n, answer) in answers {
            match answer {
                Ok((mut page, sent)) => {
                    let skip = sent.skip.min(page.hits.len());
                    page.hits.drain(..skip);
                    total += page.total;
                    pages.insert(n, (page, sent));
                }
                Err(e @ Error::BadParam { .. }) => return Err(e),
                Err(e) => {
                    warn!(shard = n, error = %e, "no owner of the shard answered");
                    summary.successful = summary.successful.saturating_sub(1);
                    summary.failed.push(n);
                }
            }
        }
        // Totals of shards already read to their end still count.
        let mut taken: BTreeMap<u32, usize> = pages.keys().map(|n| (*n, 0)).collect();
        let mut hits = Vec::with_capacity(limit);
        while hits.len() < limit {
            let best = pages
                .iter()
                .filter_map(|(n, (p, _))| p.hits.get(taken[n]).map(|h| (key(sort, h), *n)))
                .min();
            let Some((_, n)) = best else { break };
            let i = taken[&n];
            let hit = pages[&n].0.hits[i].clone();
            let s = state.get_mut(&n).expect("asked shards are in the state");
            let ts = hit.ts.timestamp_micros();
            if s.tie_ts == Some(ts) {
                s.tie += 1;
            } else {
                s.tie_ts = Some(ts);
                s.tie = 1;
            }
            hits.push(hit);
            *taken.get_mut(&n).expect("a fetched shard") += 1;
        }
        for (n, (page, sent)) in pages {
            let used = taken[&n];
            let s = state.get_mut(&n).expect("asked shards are in the state");
            if used == page.hits.len() {
                match page.next {
                    Some(c) => {
                        s.c = Some(c);
                        s.skip = 0;
                        s.by = Some(sent.url);
                    }
                    None => {
                        *s = ShardCursor {
                            done: true,
                            ..ShardCursor::default()
                        }
                    }
                }
            } else {
                s.c = sent.cursor;
                s.skip = sent.skip + used;
                s.by = sent.by;
            }
        }
        let next = (!state.values().all(|s| s.done) && limit > 0).then(|| encode_cursor(&state));
        Ok(FanoutResponse {
            response: SearchResponse { total, hits, next },
            shards: summary,
        })
    }

    /// Asks the owners at `urls` in turn for one shard's answer to `path`.
    async fn ask_json(
        &self,
        urls: &[String],
        path: &str,
        q: &[(String, String)],
        headers: &HeaderMap,
    ) -> Result<Value> {
        self.ask_json_with(urls, path, q, None, headers).await
    }

    /// [`ShardMode::ask_json`] with a JSON body: a `POST` then.
    async fn ask_json_with(
        &self,
        urls: &[String],
        path: &str,
        q: &[(String, String)],
        body: Option<&Value>,
        headers: &HeaderMap,
    ) -> Result<Value> {
        let mut last = "no live owner in zookeeper".to_string();
        for url in urls {
            let target = format!("{}{path}", url.trim_end_matches('/'));
            let mut req = match body {
                Some(b) => self.client.post(target).json(b),
                None => self.client.get(target),
            }
            .query(q);
            for name in ["authorization", protocol::TOKEN_HEADER] {
                if let Some(v) = headers.get(name) {
                    req = req.header(name, v.as_bytes());
                }
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => match resp.json::<Value>().await {
                    Ok(v) => return Ok(v),
                    Err(e) => last = format!("{url}: unreadable answer: {e}"),
                },
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.text().await.unwrap_or_default();
                    if callers_mistake(status) {
                        return Err(Error::BadParam {
                            name: "q",
                            value: body.chars().take(500).collect(),
                            expected: format!(
                                "a request every shard accepts (an owner answered {status})"
                            ),
                        });
                    }
                    last = format!(
                        "{url}: {status}: {}",
                        body.chars().take(300).collect::<String>()
                    );
                }
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(Error::Shards(last))
    }

    /// Asks the owners of shard `n` at `urls` in turn for its next page after `s`:
    /// with its cursor as it is when that owner made it (or any owner may read
    /// it), else resumed from the time of the last hit ([`resume_elsewhere`]).
    #[allow(clippy::too_many_arguments)]
    async fn ask_page(
        &self,
        n: u32,
        urls: &[String],
        sort: Sort,
        limit: usize,
        s: &ShardCursor,
        passed: &[(String, String)],
        headers: &HeaderMap,
    ) -> Result<(Page, Sent)> {
        let mut last = Error::Shards("no live owner in zookeeper".into());
        for url in urls {
            let moved = s.c.is_some() && s.by.as_ref().is_some_and(|by| by != url);
            let sent = match resume_elsewhere(sort, s).filter(|_| moved) {
                Some((cursor, skip)) => Sent {
                    cursor: Some(cursor),
                    skip,
                    by: None,
                    url: url.clone(),
                },
                None => Sent {
                    cursor: s.c.clone(),
                    skip: s.skip,
                    by: s.by.clone(),
                    url: url.clone(),
                },
            };
            let mut q = passed.to_vec();
            q.push(("shards".into(), n.to_string()));
            q.push((
                "limit".into(),
                (limit + sent.skip)
                    .min(crate::search::MAX_LIMIT)
                    .to_string(),
            ));
            if let Some(c) = &sent.cursor {
                q.push(("cursor".into(), c.clone()));
            }
            match self
                .ask_json(std::slice::from_ref(url), "/api/v1/search", &q, headers)
                .await
            {
                Ok(v) => {
                    let r: SearchResponse = serde_json::from_value(v)
                        .map_err(|e| Error::Shards(format!("unreadable search answer: {e}")))?;
                    let page = Page {
                        total: r.total,
                        hits: r.hits,
                        next: r.next,
                    };
                    return Ok((page, sent));
                }
                Err(e @ Error::BadParam { .. }) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The owners of shard `n` re-read from ZooKeeper after all of `tried`
    /// failed: `None` when they are the same (or cannot be read).
    async fn fresh_urls(&self, n: u32, tried: &[String]) -> Option<Vec<String>> {
        let fresh = self.owners.refresh().await.ok()?;
        let urls = urls_of(&fresh, n);
        (!urls.is_empty() && urls != tried).then_some(urls)
    }

    /// The fanned-out `/api/v1/histogram`: the range is fixed here (every shard
    /// counts the same buckets) and the shards' counts are summed per bucket.
    pub async fn histogram(
        &self,
        params: &SearchParams,
        headers: &HeaderMap,
    ) -> Result<HistogramFanout> {
        let req = params.clone().into_histogram_request(chrono::Utc::now())?;
        let start = req.start.ok_or_else(|| Error::BadParam {
            name: "start",
            value: String::new(),
            expected: "a start time: a histogram over every shard needs its range fixed".into(),
        })?;
        let end = req.end.unwrap_or_else(chrono::Utc::now);
        let fixed = |t: chrono::DateTime<chrono::Utc>| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
        };
        let mut q = vec![
            ("q".to_string(), req.q.clone()),
            ("start".to_string(), fixed(start)),
            ("end".to_string(), fixed(end)),
        ];
        if let Some(by) = req.by {
            q.push(("by".to_string(), by.to_string()));
        }
        let (answers, shards) = self
            .each_shard::<HistogramResponse>("/api/v1/histogram", &q, headers)
            .await?;
        let mut merged: Option<HistogramResponse> = None;
        for h in answers {
            merged = Some(match merged {
                None => h,
                Some(m) => sum_histograms(m, h)?,
            })
        }
        Ok(HistogramFanout {
            response: merged.unwrap_or_default(),
            shards,
        })
    }

    /// Asks one owner of every shard (the next one on failure) for `path` with the
    /// query `q` plus `shards=<n>`: the answers of the shards that answered, and
    /// which did not. The caller's own mistake (an owner's 4xx) is an error.
    async fn each_shard<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        q: &[(String, String)],
        headers: &HeaderMap,
    ) -> Result<(Vec<T>, ShardsSummary)> {
        let owners = self.owners.current().await?;
        let asks = (0..self.shards).map(|n| {
            let urls = urls_of(&owners, n);
            let mut q = q.to_vec();
            q.push(("shards".into(), n.to_string()));
            async move {
                let mut r = self.ask_json(&urls, path, &q, headers).await;
                if matches!(r, Err(Error::Shards(_))) {
                    if let Some(urls) = self.fresh_urls(n, &urls).await {
                        r = self.ask_json(&urls, path, &q, headers).await;
                    }
                }
                (n, r)
            }
        });
        let mut summary = ShardsSummary {
            total: self.shards,
            successful: self.shards,
            failed: Vec::new(),
        };
        let mut out = Vec::new();
        for (n, answer) in futures::future::join_all(asks).await {
            let parsed = answer.and_then(|v| {
                serde_json::from_value::<T>(v)
                    .map_err(|e| Error::Shards(format!("unreadable answer to {path}: {e}")))
            });
            match parsed {
                Ok(t) => out.push(t),
                Err(e @ Error::BadParam { .. }) => return Err(e),
                Err(e) => {
                    warn!(shard = n, path, error = %e, "no owner of the shard answered");
                    summary.successful = summary.successful.saturating_sub(1);
                    summary.failed.push(n);
                }
            }
        }
        Ok((out, summary))
    }

    /// Asks one owner of every shard (the next one on failure) for the
    /// Elasticsearch `path` (under [`crate::es::PREFIX`]) with `body` and
    /// `shards=<n>`: each answering shard's answer, and the failed shards with
    /// why. The caller's own mistake (an owner's 4xx) is an error.
    pub async fn es_each_shard(
        &self,
        path: &str,
        body: &Value,
        headers: &HeaderMap,
    ) -> Result<(Vec<(u32, Value)>, Vec<(u32, String)>)> {
        let owners = self.owners.current().await?;
        let asks = (0..self.shards).map(|n| {
            let urls = urls_of(&owners, n);
            let q = [("shards".to_string(), n.to_string())];
            async move {
                let mut r = self
                    .ask_json_with(&urls, path, &q, Some(body), headers)
                    .await;
                if matches!(r, Err(Error::Shards(_))) {
                    if let Some(urls) = self.fresh_urls(n, &urls).await {
                        r = self
                            .ask_json_with(&urls, path, &q, Some(body), headers)
                            .await;
                    }
                }
                (n, r)
            }
        });
        let mut answers = Vec::new();
        let mut failed = Vec::new();
        for (n, answer) in futures::future::join_all(asks).await {
            match answer {
                Ok(v) => answers.push((n, v)),
                Err(e @ Error::BadParam { .. }) => return Err(e),
                Err(e) => {
                    warn!(shard = n, path, error = %e, "no owner of the shard answered");
                    failed.push((n, e.to_string()));
                }
            }
        }
        Ok((answers, failed))
    }

    /// The fanned-out `/api/v1/fields`: every shard's top [`shard_size`] values
    /// per field, counts summed per value, the top `size` kept ([`merge_fields`]).
    pub async fn fields(
        &self,
        scope: &Scope,
        size: usize,
        headers: &HeaderMap,
    ) -> Result<FieldsFanout> {
        let mut q = scope_query(scope);
        q.push(("size".into(), shard_size(size).to_string()));
        let (answers, shards) = self
            .each_shard::<FieldsResponse>("/api/v1/fields", &q, headers)
            .await?;
        Ok(FieldsFanout {
            response: merge_fields(answers, size),
            shards,
        })
    }

    /// The fanned-out `/api/v1/latency`: every shard's groups with their sketches
    /// (`sketch=true`), merged per key ([`merge_latency`]). `keep_sketch` keeps
    /// the merged sketches in the answer.
    pub async fn latency(
        &self,
        scope: &Scope,
        by: GroupBy,
        keep_sketch: bool,
        headers: &HeaderMap,
    ) -> Result<LatencyFanout> {
        let mut q = scope_query(scope);
        q.push(("by".into(), by.field().to_string()));
        q.push(("sketch".into(), "true".into()));
        let (answers, shards) = self
            .each_shard::<LatencyResponse>("/api/v1/latency", &q, headers)
            .await?;
        let mut response = merge_latency(answers)?;
        if !keep_sketch {
            for g in &mut response.groups {
                g.sketch = None;
            }
        }
        Ok(LatencyFanout { response, shards })
    }
}

/// How often a fanned-out tail re-reads the shard owners, to leave an owner that
/// gave its shard up.
pub const TAIL_OWNER_CHECK: Duration = Duration::from_secs(1);

/// How long a fanned-out tail waits for every shard's stream before it answers.
pub const TAIL_CONNECT: Duration = Duration::from_secs(3);

/// How long a shard's tail, having switched owner, waits before searching the new
/// owner for the lines it had consumed before (see [`ShardMode::tail`]): what it
/// accepted before the stream was opened is committed (searchable) within its
/// commit interval; this leaves room for a slow commit.
pub const TAIL_CATCH_UP_DELAY: Duration = Duration::from_secs(1);

/// [`TAIL_CATCH_UP_DELAY`], or the commit interval and as much room again for a slow
/// commit when that is longer. Regression (review): with `commit_interval_ms` past
/// about 800 the catch-up searched before the new owner had committed what it
/// consumed before the stream opened, and those lines were lost from the tail.
pub fn catch_up_delay(commit_interval: Duration) -> Duration {
    TAIL_CATCH_UP_DELAY.max(commit_interval + Duration::from_millis(800))
}

/// At most this many lines are searched for to catch up after a switch, and at
/// most as many of the new owner's live lines held meanwhile (more are reported as
/// dropped).
pub const TAIL_CATCH_UP_MAX: usize = 10_000;

/// How far back a catch-up search looks at most.
const TAIL_CATCH_UP_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// What a shard's tail has passed on of one source: the newest offset, and that
/// line's time.
type Delivered = HashMap<String, (u64, chrono::DateTime<chrono::Utc>)>;

/// One item of a fanned-out tail.
#[derive(Debug, Clone, PartialEq)]
pub enum TailItem {
    Record(Box<LogRecord>),
    /// An owner dropped this many lines for a slow reader.
    Dropped(u64),
}

impl ShardMode {
    /// The fanned-out live tail: one task per shard follows one owner's
    /// `/api/v1/tail?shards=<n>` (ready owners first, the next on failure), and
    /// their records meet in one channel, each line once since each shard is
    /// followed once. It answers once every shard's stream is open (at most
    /// [`TAIL_CONNECT`]), so what is accepted after the client sees the answer is
    /// not missed.
    ///
    /// The trade-offs: the merged stream has no event ids and cannot resume (the
    /// owners' ids are per indexer, and a shard may change owner), so the handler
    /// answers `x-sandtrail-tail-resumed: false` and a client catches up by search,
    /// as after an indexer restart. When a shard changes owner (a failure, or the
    /// owner gave the shard up, seen within [`TAIL_OWNER_CHECK`]) or its stream is
    /// opened again, the new stream's lines are held while the owner is searched
    /// (`shards=<n>`, oldest first, after [`catch_up_delay`]) for the lines it
    /// had consumed before: per source, those past the offset already passed on
    /// (sources not seen yet: from the tail's opening time on), then the held
    /// lines, each line once by source and offset. The price: up to a second and
    /// a search per switch, and a catch-up of at most [`TAIL_CATCH_UP_MAX`] lines
    /// from the last hour.
    pub async fn tail(self: &Arc<Self>, q: &str, headers: &HeaderMap) -> Result<TailStream> {
        let owners = (*self.owners.current().await?).clone();
        let (owners_tx, owners_rx) = tokio::sync::watch::channel(owners);
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let auth: Vec<(&'static str, axum::http::HeaderValue)> =
            ["authorization", protocol::TOKEN_HEADER]
                .into_iter()
                .filter_map(|name| headers.get(name).map(|v| (name, v.clone())))
                .collect();
        let mut connected = Vec::new();
        for n in 0..self.shards {
            let (up_tx, up_rx) = tokio::sync::oneshot::channel();
            connected.push(up_rx);
            tokio::spawn(self.clone().follow_shard(
                n,
                q.to_string(),
                auth.clone(),
                owners_rx.clone(),
                tx.clone(),
                up_tx,
            ));
        }
        // One reader of ZooKeeper for every shard's task; it ends with the stream.
        let mode = self.clone();
        let closed = tx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TAIL_OWNER_CHECK);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = closed.closed() => return,
                }
                match mode.owners.current().await {
                    Ok(o) => {
                        owners_tx.send_if_modified(|old| {
                            let changed = *old != *o;
                            if changed {
                                *old = (*o).clone();
                            }
                            changed
                        });
                    }
                    Err(e) => warn!(error = %e, "tail: cannot read the shard owners"),
                }
            }
        });
        drop(tx);
        let _ = tokio::time::timeout(TAIL_CONNECT, futures::future::join_all(connected)).await;
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    /// Follows shard `n`'s owners' tail until `tx` closes.
    async fn follow_shard(
        self: Arc<Self>,
        n: u32,
        q: String,
        auth: Vec<(&'static str, axum::http::HeaderValue)>,
        mut owners: tokio::sync::watch::Receiver<BTreeMap<u32, Vec<crate::owners::Owner>>>,
        tx: tokio::sync::mpsc::Sender<TailItem>,
        up: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut up = Some(up);
        let mut tries = 0usize;
        let mut backoff = Duration::from_millis(100);
        // The newest offset delivered per source, across owner switches.
        let mut delivered = Delivered::new();
        let opened = chrono::Utc::now();
        let filter = crate::tail::TailFilter::parse(&q).unwrap_or_default();
        let mut first = true;
        while !tx.is_closed() {
            let urls = urls_of(&owners.borrow_and_update(), n);
            if let Some(url) = urls.get(tries % urls.len().max(1)).cloned() {
                tries += 1;
                let mut req = self
                    .tail_client
                    .get(format!("{}/api/v1/tail", url.trim_end_matches('/')))
                    .query(&[("q", q.as_str()), ("shards", &n.to_string())]);
                for (name, v) in &auth {
                    req = req.header(*name, v.clone());
                }
                let resp = tokio::select! {
                    r = req.send() => r,
                    _ = tx.closed() => return,
                };
                match resp {
                    Ok(r) if r.status().is_success() => {
                        if let Some(up) = up.take() {
                            let _ = up.send(());
                        }
                        backoff = Duration::from_millis(100);
                        // Every stream but the first may have missed lines.
                        let catch_up = (!first).then(|| {
                            let since = delivered
                                .values()
                                .map(|(_, ts)| *ts)
                                .chain([opened])
                                .min()
                                .unwrap_or(opened)
                                .max(chrono::Utc::now() - TAIL_CATCH_UP_WINDOW);
                            let mode = self.clone();
                            let (url, auth, filter) = (url.clone(), auth.clone(), filter.clone());
                            Box::pin(async move {
                                tokio::time::sleep(mode.catch_up_delay).await;
                                mode.catch_up(n, &url, since, &auth, &filter).await
                            }) as CatchUp
                        });
                        first = false;
                        relay(
                            n,
                            &url,
                            r,
                            &mut owners,
                            &mut delivered,
                            opened,
                            catch_up,
                            &tx,
                        )
                        .await;
                    }
                    Ok(r) => {
                        warn!(shard = n, url, status = %r.status(), "tail: a shard owner refused the stream")
                    }
                    Err(e) => {
                        warn!(shard = n, url, error = %e, "tail: a shard owner is unreachable")
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = tx.closed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

/// A fanned-out tail's items, as [`ShardMode::tail`] gives them.
pub type TailStream = tokio_stream::wrappers::ReceiverStream<TailItem>;

/// The lines a shard's new owner had consumed before its stream was opened.
type CatchUp = std::pin::Pin<Box<dyn std::future::Future<Output = Vec<LogRecord>> + Send>>;

impl ShardMode {
    /// Shard `n`'s lines at `url` from `since` on, oldest first, that `filter`
    /// passes (at most [`TAIL_CATCH_UP_MAX`]); what cannot be read is logged and
    /// left out.
    async fn catch_up(
        &self,
        n: u32,
        url: &str,
        since: chrono::DateTime<chrono::Utc>,
        auth: &[(&'static str, axum::http::HeaderValue)],
        filter: &crate::tail::TailFilter,
    ) -> Vec<LogRecord> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        let mut headers = HeaderMap::new();
        for (name, v) in auth {
            headers.insert(*name, v.clone());
        }
        let start = since.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        while out.len() < TAIL_CATCH_UP_MAX {
            let mut q = vec![
                ("shards".to_string(), n.to_string()),
                ("sort".to_string(), "oldest".to_string()),
                ("start".to_string(), start.clone()),
                ("limit".to_string(), "1000".to_string()),
            ];
            if let Some(c) = &cursor {
                q.push(("cursor".into(), c.clone()));
            }
            let page = match self
                .ask_json(&[url.to_string()], "/api/v1/search", &q, &headers)
                .await
                .and_then(|v| {
                    serde_json::from_value::<SearchResponse>(v)
                        .map_err(|e| Error::Shards(format!("unreadable search answer: {e}")))
                }) {
                Ok(page) => page,
                Err(e) => {
                    warn!(shard = n, url, error = %e, "tail: cannot catch up with the new owner");
                    break;
                }
            };
            out.extend(page.hits.into_iter().filter(|r| filter.matches(r)));
            match page.next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        out.truncate(TAIL_CATCH_UP_MAX);
        out
    }
}

/// Passes `item` on unless it is a line of a source at or below the offset
/// already passed on; false once `tx` is closed.
async fn pass(
    item: TailItem,
    delivered: &mut Delivered,
    tx: &tokio::sync::mpsc::Sender<TailItem>,
) -> bool {
    if let TailItem::Record(r) = &item {
        if r.offset > 0 {
            let newest = delivered.entry(r.source.clone()).or_insert((0, r.ts));
            if r.offset <= newest.0 {
                return true;
            }
            *newest = (r.offset, r.ts);
        }
    }
    tx.send(item).await.is_ok()
}

/// Passes one owner's tail of shard `n` on until it ends, `url` no longer owns
/// the shard, or `tx` closes. With `catch_up`, its lines are held until the lines
/// it finds are passed on (those of sources not passed on yet only from `opened`
/// on), then passed on after them.
#[allow(clippy::too_many_arguments)]
async fn relay(
    n: u32,
    url: &str,
    resp: reqwest::Response,
    owners: &mut tokio::sync::watch::Receiver<BTreeMap<u32, Vec<crate::owners::Owner>>>,
    delivered: &mut Delivered,
    opened: chrono::DateTime<chrono::Utc>,
    mut catch_up: Option<CatchUp>,
    tx: &tokio::sync::mpsc::Sender<TailItem>,
) {
    use futures::StreamExt;
    let mut body = resp.bytes_stream();
    let mut sse = protocol::sse::Sse::default();
    let mut held: Vec<TailItem> = Vec::new();
    let mut held_over = 0u64;
    loop {
        enum Next<C> {
            Chunk(C),
            Owners(bool),
            Closed,
            CaughtUp(Vec<LogRecord>),
        }
        let next = tokio::select! {
            c = body.next() => Next::Chunk(c),
            c = owners.changed() => Next::Owners(c.is_ok()),
            _ = tx.closed() => Next::Closed,
            found = async { catch_up.as_mut().expect("polled only when set").await }, if catch_up.is_some() => Next::CaughtUp(found),
        };
        let chunk = match next {
            Next::CaughtUp(found) => {
                catch_up = None;
                let mut caught = 0usize;
                for r in found {
                    // Past what was passed on; a source not seen yet only from
                    // the tail's opening on (older lines are not news).
                    if r.offset == 0 || (!delivered.contains_key(&r.source) && r.ts < opened) {
                        continue;
                    }
                    let known = delivered.get(&r.source).map(|d| d.0);
                    if known.is_none_or(|o| r.offset > o) {
                        caught += 1;
                    }
                    if !pass(TailItem::Record(Box::new(r)), delivered, tx).await {
                        return;
                    }
                }
                for item in std::mem::take(&mut held) {
                    if !pass(item, delivered, tx).await {
                        return;
                    }
                }
                if held_over > 0 {
                    if tx.send(TailItem::Dropped(held_over)).await.is_err() {
                        return;
                    }
                    held_over = 0;
                }
                tracing::info!(
                    shard = n,
                    url,
                    lines = caught,
                    "tail: caught up with the lines the shard's owner had before its stream"
                );
                continue;
            }
            Next::Closed | Next::Owners(false) => return,
            Next::Owners(true) => {
                if !urls_of(&owners.borrow_and_update(), n)
                    .iter()
                    .any(|u| u == url)
                {
                    tracing::info!(
                        shard = n,
                        url,
                        "tail: the owner gave the shard up; following another"
                    );
                    return;
                }
                continue;
            }
            Next::Chunk(Some(Ok(chunk))) => chunk,
            Next::Chunk(_) => {
                warn!(shard = n, url, "tail: a shard owner's stream ended");
                return;
            }
        };
        for event in sse.push(&chunk) {
            let item = match event.kind.as_str() {
                "message" => match serde_json::from_str::<LogRecord>(&event.data) {
                    Ok(r) => TailItem::Record(Box::new(r)),
                    Err(e) => {
                        warn!(shard = n, url, error = %e, "tail: an unreadable record");
                        continue;
                    }
                },
                "dropped" => TailItem::Dropped(
                    serde_json::from_str::<Value>(&event.data)
                        .ok()
                        .and_then(|v| v["dropped"].as_u64())
                        .unwrap_or(0),
                ),
                _ => continue,
            };
            if catch_up.is_some() {
                // Held until the lines before them are found and passed on.
                if held.len() < TAIL_CATCH_UP_MAX {
                    held.push(item);
                } else {
                    held_over += 1;
                }
                continue;
            }
            if !pass(item, delivered, tx).await {
                return;
            }
        }
    }
}

impl ShardMode {
    /// The fanned-out `/api/v1/context`: every shard's records around the one
    /// given (a task's stdout and stderr are different sources, possibly in
    /// different shards), merged ([`merge_context`]). Failed shards are left out
    /// of the records and named in the `shards` summary, as a search's.
    pub async fn context(
        &self,
        req: &ContextRequest,
        headers: &HeaderMap,
    ) -> Result<ContextFanout> {
        let q = vec![
            ("task".to_string(), req.task.clone()),
            (
                "ts".to_string(),
                req.ts.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            ),
            ("source".to_string(), req.source.clone()),
            ("offset".to_string(), req.offset.to_string()),
            ("n".to_string(), req.n.to_string()),
        ];
        let (answers, shards) = self
            .each_shard::<ContextResponse>("/api/v1/context", &q, headers)
            .await?;
        if shards.successful == 0 {
            return Err(Error::Shards(format!(
                "no shard answered the context of task {:?}",
                req.task
            )));
        }
        Ok(ContextFanout {
            response: merge_context(answers, req.n),
            shards,
        })
    }
}

/// The answer of a fanned-out `/api/v1/context`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContextFanout {
    #[serde(flatten)]
    pub response: ContextResponse,
    pub shards: ShardsSummary,
}

/// The shards' contexts of one record merged: the `n` newest of every shard's
/// records before it and the `n` oldest after it, by (time, offset) as each
/// shard orders them, and the record from the shard that holds it.
pub fn merge_context(answers: Vec<ContextResponse>, n: usize) -> ContextResponse {
    let order = |r: &LogRecord| (r.ts, r.offset);
    let mut before = Vec::new();
    let mut after = Vec::new();
    let mut record = None;
    for a in answers {
        before.extend(a.before);
        after.extend(a.after);
        record = record.or(a.record);
    }
    before.sort_by_key(order);
    before.drain(..before.len().saturating_sub(n));
    after.sort_by_key(order);
    after.truncate(n);
    ContextResponse {
        before,
        record,
        after,
    }
}

/// The query and range of `scope` as a query string with absolute times, so that
/// every shard counts over the same range.
fn scope_query(scope: &Scope) -> Vec<(String, String)> {
    let fixed =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let mut q = vec![("q".to_string(), scope.q.clone())];
    if let Some(start) = scope.start {
        q.push(("start".into(), fixed(start)));
    }
    if let Some(end) = scope.end {
        q.push(("end".into(), fixed(end)));
    }
    q
}

/// How many top values each shard is asked for when `size` are wanted: more than
/// `size`, as Elasticsearch's `shard_size` (`size * 1.5 + 10`), so that a value
/// just outside one shard's top still counts there (see [`merge_fields`]).
pub fn shard_size(size: usize) -> usize {
    (size + size / 2 + 10).min(MAX_TOP_SIZE)
}

/// The shards' top values merged: per field, a value's counts summed over the
/// shards, the `size` largest kept; the sidebar fields first in their fixed order,
/// then the `fields.*` keys of largest summed count ([`MAX_EXTRA_KEYS`]).
///
/// Approximate where a shard truncated: a value below a shard's top
/// [`shard_size`] is missing from that shard's count, so a merged count can be
/// low and a value that is frequent overall but never in a shard's top can be
/// missing (Elasticsearch's terms aggregation has the same error bound). With
/// fewer distinct values per shard than `shard_size` (hosts, apps, levels,
/// streams, usually) the counts are exact sums. The `fields.*` keys come from each
/// shard's sample of its newest matches, so the merged sample is larger than one
/// indexer's.
pub fn merge_fields(answers: Vec<FieldsResponse>, size: usize) -> FieldsResponse {
    let mut per: BTreeMap<String, HashMap<String, u64>> = BTreeMap::new();
    for answer in answers {
        for top in answer.fields {
            let counts = per.entry(top.field).or_default();
            for v in top.values {
                *counts.entry(v.value).or_default() += v.count;
            }
        }
    }
    let mut fields: Vec<FieldTop> = SIDEBAR_FIELDS
        .iter()
        .map(|name| FieldTop {
            field: name.to_string(),
            values: top_n(per.remove(*name).unwrap_or_default(), size),
        })
        .collect();
    let mut extra: Vec<(String, u64, HashMap<String, u64>)> = per
        .into_iter()
        .map(|(k, counts)| (k, counts.values().sum(), counts))
        .collect();
    extra.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    fields.extend(
        extra
            .into_iter()
            .take(MAX_EXTRA_KEYS)
            .map(|(field, _, counts)| FieldTop {
                field,
                values: top_n(counts, size),
            }),
    );
    FieldsResponse { fields }
}

/// The shards' latency groups merged per key through their sketches: count,
/// average and max exact, p50/p90/p99 within [`crate::sketch::RELATIVE_ACCURACY`]
/// of the exact ones over every shard's values. A group without a sketch (an owner
/// that was not asked for one) cannot be merged and is refused.
pub fn merge_latency(answers: Vec<LatencyResponse>) -> Result<LatencyResponse> {
    let mut per: BTreeMap<String, Sketch> = BTreeMap::new();
    for answer in answers {
        for g in answer.groups {
            let s = g.sketch.ok_or_else(|| {
                Error::Shards(format!(
                    "a shard answered latency group {:?} without its sketch",
                    g.key
                ))
            })?;
            per.entry(g.key).or_default().merge(&s);
        }
    }
    let mut groups: Vec<LatencyGroup> = per
        .into_iter()
        .map(|(key, s)| LatencyGroup {
            key,
            count: s.count,
            avg: s.avg(),
            p50: s.percentile(50.0),
            p90: s.percentile(90.0),
            p99: s.percentile(99.0),
            max: if s.count == 0 { 0.0 } else { s.max },
            sketch: Some(s),
        })
        .collect();
    groups.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
    Ok(LatencyResponse { groups })
}

/// The answer of a fanned-out `/api/v1/fields`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FieldsFanout {
    #[serde(flatten)]
    pub response: FieldsResponse,
    pub shards: ShardsSummary,
}

/// The answer of a fanned-out `/api/v1/latency`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyFanout {
    #[serde(flatten)]
    pub response: LatencyResponse,
    pub shards: ShardsSummary,
}

/// The answer of a fanned-out histogram.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistogramFanout {
    #[serde(flatten)]
    pub response: HistogramResponse,
    pub shards: ShardsSummary,
}

/// Two shards' histograms over the same range, added bucket by bucket.
pub fn sum_histograms(a: HistogramResponse, b: HistogramResponse) -> Result<HistogramResponse> {
    if a.interval_ms != b.interval_ms {
        return Err(Error::Shards(format!(
            "shards answered histograms of {} ms and {} ms buckets for the same range",
            a.interval_ms, b.interval_ms
        )));
    }
    let mut buckets: BTreeMap<chrono::DateTime<chrono::Utc>, HistogramBucket> = BTreeMap::new();
    for bucket in a.buckets.into_iter().chain(b.buckets) {
        match buckets.get_mut(&bucket.ts) {
            Some(m) => {
                m.count += bucket.count;
                for (k, v) in bucket.by {
                    *m.by.entry(k).or_default() += v;
                }
            }
            None => {
                buckets.insert(bucket.ts, bucket);
            }
        }
    }
    Ok(HistogramResponse {
        interval_ms: a.interval_ms,
        buckets: buckets.into_values().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_catch_up_waits_out_a_long_commit_interval() {
        assert_eq!(
            catch_up_delay(Duration::from_millis(200)),
            TAIL_CATCH_UP_DELAY
        );
        assert_eq!(
            catch_up_delay(Duration::from_secs(2)),
            Duration::from_millis(2800)
        );
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let mut s = BTreeMap::new();
        s.insert(
            0,
            ShardCursor {
                c: Some("c1.x".into()),
                skip: 3,
                done: false,
                by: Some("http://127.0.0.1:1".into()),
                tie_ts: Some(-5),
                tie: 2,
            },
        );
        s.insert(
            1,
            ShardCursor {
                done: true,
                ..Default::default()
            },
        );
        let c = encode_cursor(&s);
        assert!(c.starts_with("s1.") && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'));
        assert_eq!(decode_cursor(&c, 2).unwrap(), s);
        assert!(decode_cursor("c1.abc", 2).is_err());
        assert!(decode_cursor("s1.zz", 2).is_err());
    }

    #[test]
    fn only_a_bad_request_is_the_callers_mistake_the_rest_tries_the_next_owner() {
        use reqwest::StatusCode as S;
        for s in [
            S::BAD_REQUEST,
            S::PAYLOAD_TOO_LARGE,
            S::UNPROCESSABLE_ENTITY,
        ] {
            assert!(callers_mistake(s), "{s}");
        }
        for s in [
            S::UNAUTHORIZED,
            S::FORBIDDEN,
            S::NOT_FOUND,
            S::TOO_MANY_REQUESTS,
            S::INTERNAL_SERVER_ERROR,
            S::SERVICE_UNAVAILABLE,
        ] {
            assert!(!callers_mistake(s), "{s}");
        }
    }

    /// Bug: a forged `s1.` cursor (a shard past the count, a skip near
    /// usize::MAX, a tie time of i64::MIN) reached `limit + skip` and `t - 1`,
    /// which overflow, and `successful -= 1` once per phantom shard.
    #[test]
    fn forged_cursors_are_refused_before_any_arithmetic() {
        let good: BTreeMap<u32, ShardCursor> =
            (0..3).map(|n| (n, ShardCursor::default())).collect();
        assert!(decode_cursor(&encode_cursor(&good), 3).is_ok());
        let forged = [
            {
                let mut s = good.clone();
                s.insert(7, ShardCursor::default());
                s
            },
            {
                let mut s = good.clone();
                s.remove(&2);
                s
            },
            {
                let mut s = good.clone();
                s.get_mut(&1).unwrap().skip = usize::MAX;
                s
            },
            {
                let mut s = good.clone();
                s.get_mut(&1).unwrap().tie = usize::MAX;
                s
            },
            {
                let mut s = good.clone();
                s.get_mut(&0).unwrap().tie_ts = Some(i64::MIN);
                s
            },
        ];
        for s in forged {
            let text = encode_cursor(&s);
            let e = decode_cursor(&text, 3).unwrap_err();
            assert!(e.to_string().contains("s1."), "the cursor is named: {e}");
        }
    }

    #[test]
    fn a_shard_resumes_on_another_owner_from_the_time_of_its_last_hit() {
        use crate::query::Cursor;
        let s = ShardCursor {
            c: Some("c1.1000.7".into()),
            skip: 4,
            by: Some("http://a".into()),
            tie_ts: Some(1000),
            tie: 9,
            ..Default::default()
        };
        // Newest first: everything of that time and older, the 9 of that time
        // already handed out dropped.
        let (c, skip) = resume_elsewhere(Sort::NewestFirst, &s).unwrap();
        assert_eq!(skip, 9);
        assert_eq!(
            Cursor::decode(&c).unwrap(),
            Cursor {
                ts_micros: 1000,
                uid: u64::MAX
            }
        );
        // Oldest first: everything of that time and newer.
        let (c, _) = resume_elsewhere(Sort::OldestFirst, &s).unwrap();
        assert_eq!(
            Cursor::decode_oldest(&c).unwrap(),
            Cursor {
                ts_micros: 999,
                uid: u64::MAX
            }
        );
        assert_eq!(resume_elsewhere(Sort::LatencyDesc, &s), None);
        let fresh = ShardCursor::default();
        assert_eq!(resume_elsewhere(Sort::NewestFirst, &fresh), None);
    }

    #[test]
    fn histograms_add_up_bucket_by_bucket() {
        let t = |s: i64| chrono::DateTime::from_timestamp(s, 0).unwrap();
        let b = |s, count, err| HistogramBucket {
            ts: t(s),
            count,
            by: [("error".to_string(), err)].into(),
        };
        let a = HistogramResponse {
            interval_ms: 1000,
            buckets: vec![b(0, 2, 1), b(1, 3, 0)],
        };
        let c = HistogramResponse {
            interval_ms: 1000,
            buckets: vec![b(1, 4, 2), b(2, 1, 1)],
        };
        let m = sum_histograms(a.clone(), c).unwrap();
        assert_eq!(
            m.buckets.iter().map(|b| b.count).collect::<Vec<_>>(),
            vec![2, 7, 1]
        );
        assert_eq!(m.buckets[1].by["error"], 2);
        let other = HistogramResponse {
            interval_ms: 60_000,
            buckets: vec![],
        };
        assert!(sum_histograms(a, other).is_err());
    }

    fn top(field: &str, values: &[(&str, u64)]) -> FieldTop {
        FieldTop {
            field: field.to_string(),
            values: values
                .iter()
                .map(|(v, c)| crate::analytics::FieldValue {
                    value: v.to_string(),
                    count: *c,
                })
                .collect(),
        }
    }

    #[test]
    fn fields_sum_per_value_and_keep_the_top() {
        let a = FieldsResponse {
            fields: vec![
                top("host", &[("a", 5), ("b", 3)]),
                top("fields.user", &[("ann", 2)]),
            ],
        };
        let b = FieldsResponse {
            fields: vec![
                top("host", &[("b", 4), ("c", 1)]),
                top("app", &[("web", 9)]),
                top("fields.code", &[("200", 7), ("500", 1)]),
            ],
        };
        let m = merge_fields(vec![a, b], 2);
        let names: Vec<&str> = m.fields.iter().map(|f| f.field.as_str()).collect();
        // Sidebar fields first in their order (even empty), then keys by count.
        assert_eq!(
            names,
            [
                "host",
                "app",
                "level",
                "stream",
                "fields.code",
                "fields.user"
            ]
        );
        let host: Vec<(&str, u64)> = m.fields[0]
            .values
            .iter()
            .map(|v| (v.value.as_str(), v.count))
            .collect();
        assert_eq!(host, [("b", 7), ("a", 5)], "summed, top 2 of 3");
        assert_eq!(m.fields[1].values[0].count, 9);
        assert!(m.fields[2].values.is_empty());
        assert_eq!(shard_size(10), 25);
        assert_eq!(shard_size(MAX_TOP_SIZE), MAX_TOP_SIZE);
    }

    #[test]
    fn latency_groups_merge_through_their_sketches() {
        let group = |key: &str, values: &[f64]| LatencyGroup {
            sketch: Some(Sketch::of(values)),
            ..crate::analytics::summarize(key.to_string(), values.to_vec())
        };
        let low: Vec<f64> = (1..=50).map(f64::from).collect();
        let high: Vec<f64> = (51..=100).map(f64::from).collect();
        let a = LatencyResponse {
            groups: vec![group("web", &low), group("db", &[3.0])],
        };
        let b = LatencyResponse {
            groups: vec![group("web", &high)],
        };
        let m = merge_latency(vec![a, b]).unwrap();
        let web = &m.groups[0];
        assert_eq!((web.key.as_str(), web.count, web.max), ("web", 100, 100.0));
        assert!((web.avg - 50.5).abs() < 1e-9);
        for (got, want) in [(web.p50, 50.0), (web.p90, 90.0), (web.p99, 99.0)] {
            assert!(
                (got - want).abs() <= want * crate::sketch::RELATIVE_ACCURACY * 1.001,
                "{got} vs {want}"
            );
        }
        assert_eq!((m.groups[1].key.as_str(), m.groups[1].count), ("db", 1));
        let bare = LatencyResponse {
            groups: vec![crate::analytics::summarize("x".into(), vec![1.0])],
        };
        assert!(merge_latency(vec![bare]).is_err());
    }

    #[test]
    fn contexts_keep_the_nearest_records_of_every_shard() {
        let rec = |s: i64, offset: u64| -> LogRecord {
            serde_json::from_value(serde_json::json!({
                "ts": chrono::DateTime::from_timestamp(s, 0).unwrap().to_rfc3339(),
                "host": "h", "app": "a", "task": "t", "msg": format!("{s}/{offset}"),
                "source": "x", "offset": offset,
            }))
            .unwrap()
        };
        let a = ContextResponse {
            before: vec![rec(1, 1), rec(4, 1)],
            record: Some(rec(5, 7)),
            after: vec![rec(5, 9), rec(8, 1)],
        };
        let b = ContextResponse {
            before: vec![rec(2, 1), rec(5, 3)],
            record: None,
            after: vec![rec(6, 1), rec(9, 1)],
        };
        let m = merge_context(vec![b, a], 2);
        let key = |v: &[LogRecord]| v.iter().map(|r| r.msg.clone()).collect::<Vec<_>>();
        assert_eq!(key(&m.before), ["4/1", "5/3"]);
        assert_eq!(key(&m.after), ["5/9", "6/1"]);
        assert_eq!(m.record.map(|r| r.msg), Some("5/7".to_string()));
    }
}
