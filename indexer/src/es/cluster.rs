//! The calls Elasticsearch clients and shippers make before they send anything:
//! `GET /` (the version every official client and Filebeat, Logstash and Vector read),
//! `_license` and `_xpack` (Filebeat's licence check), `_nodes` (sniffing clients),
//! `_cluster/health` (Vector's health check), and the setup calls for index and
//! component templates, ILM policies, legacy templates, ingest pipelines and data
//! streams.
//!
//! There is one schema and no index lifecycle here, so the setup calls are accepted
//! and ignored: a `PUT` answers `acknowledged`, a `GET` or `HEAD` answers 404 (nothing
//! is kept, so a shipper puts it again on its next start, which costs one request),
//! and what was ignored is logged once per kind and name. The trade-off: a shipper
//! that insists on reading back what it put would fail; none of the ones named above
//! do. Every answer of the Elasticsearch API carries `X-Elastic-Product:
//! Elasticsearch` ([`product_header`]), which the official clients require on every
//! successful answer.

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

/// The Elasticsearch version this API answers as: an 8.x, so 8.x clients and
/// shippers take it as their own major version (7.x clients accept it too).
pub const VERSION: &str = "8.15.0";
const LUCENE_VERSION: &str = "9.11.1";
const CLUSTER_NAME: &str = "sandtrail";
/// Fixed, since there is one node and one "cluster": a client that compares it
/// between calls sees the same one.
const CLUSTER_UUID: &str = "c2FuZHRyYWlsLWNsdXN0ZXI";
const NODE_ID: &str = "c2FuZHRyYWlsLW5vZGUtMQ";
const BUILD_DATE: &str = "2024-08-05T10:05:34.233336849Z";

/// The header the official clients check (elasticsearch-py raises
/// `UnsupportedProductError` on a 2xx without it).
pub const PRODUCT_HEADER: &str = "x-elastic-product";

/// Sets `X-Elastic-Product: Elasticsearch` on an answer: the layer over the whole
/// Elasticsearch API, so errors and refusals carry it as well as successes.
pub async fn product_header(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(PRODUCT_HEADER, HeaderValue::from_static("Elasticsearch"));
    resp
}

/// `GET /`: who answers, in Elasticsearch's shape.
pub async fn info() -> Json<Value> {
    Json(json!({
        "name": "sandtrail",
        "cluster_name": CLUSTER_NAME,
        "cluster_uuid": CLUSTER_UUID,
        "version": {
            "number": VERSION,
            "build_flavor": "default",
            "build_type": "tar",
            "build_hash": "1a77947f34deddb41af25e6f0ddb8e830159c179",
            "build_date": BUILD_DATE,
            "build_snapshot": false,
            "lucene_version": LUCENE_VERSION,
            "minimum_wire_compatibility_version": "7.17.0",
            "minimum_index_compatibility_version": "7.0.0",
        },
        "tagline": "You Know, for Search",
    }))
}

/// `HEAD /`: the ping of the official clients.
pub async fn ping() -> StatusCode {
    StatusCode::OK
}

fn license_body() -> Value {
    json!({
        "status": "active",
        "uid": "5361a8e2-7f4b-4a0c-9b53-73616e647472",
        "type": "basic",
        "issue_date": "2024-01-01T00:00:00.000Z",
        "issue_date_in_millis": 1_704_067_200_000_u64,
        "max_nodes": 1000,
        "max_resource_units": null,
        "issued_to": CLUSTER_NAME,
        "issuer": "elasticsearch",
        "start_date_in_millis": -1,
    })
}

/// `GET /_license`: a basic licence, active, which is what Filebeat requires.
pub async fn license() -> Json<Value> {
    Json(json!({ "license": license_body() }))
}

/// `GET /_xpack`: what Filebeat 7 asks; the features that matter to shippers.
pub async fn xpack() -> Json<Value> {
    let feature = |available: bool| json!({ "available": available, "enabled": available });
    Json(json!({
        "build": { "hash": "1a77947f34deddb41af25e6f0ddb8e830159c179", "date": BUILD_DATE },
        "license": {
            "uid": license_body()["uid"],
            "type": "basic",
            "mode": "basic",
            "status": "active",
        },
        "features": {
            "ilm": feature(true),
            "monitoring": feature(false),
            "security": feature(true),
            "ml": feature(false),
            "watcher": feature(false),
        },
        "tagline": "You know, for X",
    }))
}

/// `GET /_nodes[/...]`: one node, reachable at the address the client used, so a
/// sniffing client keeps talking to the same place.
pub async fn nodes(headers: HeaderMap) -> Json<Value> {
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1:7072")
        .to_string();
    Json(json!({
        "_nodes": { "total": 1, "successful": 1, "failed": 0 },
        "cluster_name": CLUSTER_NAME,
        "nodes": {
            NODE_ID: {
                "name": "sandtrail",
                "transport_address": host,
                "host": host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h),
                "ip": host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h),
                "version": VERSION,
                "build_flavor": "default",
                "build_type": "tar",
                "roles": ["data", "ingest", "master"],
                "attributes": {},
                "http": {
                    "bound_address": [host],
                    "publish_address": host,
                    "max_content_length_in_bytes": 104_857_600,
                },
            }
        },
    }))
}

/// `GET /_cluster/health[/{index}]`: one node, green while it answers.
pub async fn cluster_health() -> Json<Value> {
    Json(json!({
        "cluster_name": CLUSTER_NAME,
        "status": "green",
        "timed_out": false,
        "number_of_nodes": 1,
        "number_of_data_nodes": 1,
        "active_primary_shards": 1,
        "active_shards": 1,
        "relocating_shards": 0,
        "initializing_shards": 0,
        "unassigned_shards": 0,
        "delayed_unassigned_shards": 0,
        "number_of_pending_tasks": 0,
        "number_of_in_flight_fetch": 0,
        "task_max_waiting_in_queue_millis": 0,
        "active_shards_percent_as_number": 100.0,
    }))
}

/// The setup APIs accepted and ignored, by their path segment.
pub const IGNORED: &[&str] = &[
    "_index_template",
    "_component_template",
    "_template",
    "_ilm/policy",
    "_ingest/pipeline",
    "_data_stream",
];

/// How many ignored names are remembered for logging once: names come from clients,
/// so the set is capped; past it nothing more is logged.
const MAX_REMEMBERED: usize = 1024;

/// Whether `(api, name)` is ignored here for the first time in this process: what
/// is ignored is logged once, not on every shipper restart.
fn first_time(api: &str, name: &str) -> bool {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    seen.len() < MAX_REMEMBERED && seen.insert(format!("{api}/{name}"))
}

/// A setup call (`PUT`, `POST`, `GET`, `HEAD`, `DELETE` of a template, policy,
/// pipeline or data stream): acknowledged and ignored, or not found.
pub fn ignore(api: &'static str, method: Method, name: String) -> Response {
    if first_time(api, &name) {
        tracing::info!(
            api,
            name = %name,
            method = %method,
            "elasticsearch setup call accepted and ignored: sandtrail has one schema and its own retention"
        );
    }
    if method == Method::PUT || method == Method::POST || method == Method::DELETE {
        return Json(json!({ "acknowledged": true })).into_response();
    }
    if method == Method::HEAD {
        return StatusCode::NOT_FOUND.into_response();
    }
    crate::error::EsError(crate::Error::NotKept { api, name }).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_ignored_is_logged_once_per_name() {
        assert!(first_time("_test_api", "a"));
        assert!(!first_time("_test_api", "a"));
        assert!(first_time("_test_api", "b"));
    }

    #[tokio::test]
    async fn info_answers_an_8x_default_flavour() {
        let Json(v) = info().await;
        assert!(v["version"]["number"].as_str().unwrap().starts_with("8."));
        assert_eq!(v["version"]["build_flavor"], "default");
        assert_eq!(v["tagline"], "You Know, for Search");
    }
}
