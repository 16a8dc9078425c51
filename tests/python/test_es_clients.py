"""The indexer's Elasticsearch-compatible subset, driven by a client no one here wrote:
opensearch-py from PyPI (helpers.bulk, search and count).

Starts `target/debug/sandtrail indexer --listen 127.0.0.1:0` itself, reads the URL it
prints, and stops it at the end. Run: python3 tests/python/test_es_clients.py
(SANDTRAIL_BIN overrides the binary).
"""

import os
import subprocess
import sys
import tempfile
import threading
import unittest

from opensearchpy import OpenSearch, helpers
from opensearchpy.exceptions import AuthenticationException, RequestError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("SANDTRAIL_BIN", os.path.join(ROOT, "target", "debug", "sandtrail"))
TOKEN = "py-s3cret"
START_TIMEOUT_S = 30


class Indexer:
    """A real `sandtrail indexer` on a free port with its own data directory."""

    def __init__(self):
        self.dir = tempfile.TemporaryDirectory(prefix="sandtrail-es-")
        env = dict(os.environ, SANDTRAIL_TOKEN=TOKEN, RUST_LOG="warn")
        self.proc = subprocess.Popen(
            [BIN, "indexer", "--listen", "127.0.0.1:0", "--data-dir", self.dir.name],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        found = {}

        def read_url():
            for line in self.proc.stdout:
                if line.startswith("indexer: "):
                    found["url"] = line.split(" ", 1)[1].strip()
                    return

        reader = threading.Thread(target=read_url, daemon=True)
        reader.start()
        reader.join(START_TIMEOUT_S)
        if "url" not in found:
            self.stop()
            raise RuntimeError(f"{BIN} did not print its URL within {START_TIMEOUT_S}s")
        self.url = found["url"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.dir.cleanup()


def client(url, password=TOKEN):
    return OpenSearch(hosts=[url], http_auth=("elastic", password), timeout=30)


def docs(n, index="app-logs"):
    for i in range(n):
        yield {
            "_index": index,
            "_id": f"doc-{i}",
            "@timestamp": f"2025-06-01T10:{i // 60:02d}:{i % 60:02d}Z",
            "message": f"GET /fib/{i} {'timed out' if i % 10 == 0 else 'ok'}",
            "host": {"name": f"node-{i % 3}"},
            "service": {"name": "fib" if i % 2 == 0 else "web"},
            "log": {"level": "error" if i % 10 == 0 else "info"},
            "trace": {"id": f"trace-{i}"},
            "latency_ms": float(i),
            "user": {"name": "alice" if i < 50 else "bob"},
        }


class OpenSearchPyAgainstSandtrail(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ix = Indexer()
        cls.es = client(cls.ix.url)
        ok, errors = helpers.bulk(cls.es, docs(200), chunk_size=64)
        assert (ok, errors) == (200, []), (ok, errors)

    @classmethod
    def tearDownClass(cls):
        cls.ix.stop()

    def test_bulk_replay_is_deduplicated_by_id(self):
        ok, errors = helpers.bulk(self.es, docs(200), chunk_size=100)
        self.assertEqual((ok, errors), (200, []))
        r = self.es.search(index="app-logs", body={"size": 0})
        self.assertEqual(r["hits"]["total"]["value"], 200)

    def test_create_conflict_is_reported_per_item(self):
        ok, errors = helpers.bulk(
            self.es,
            [{"_op_type": "create", **d} for d in docs(2)],
            raise_on_error=False,
        )
        self.assertEqual(ok, 0)
        self.assertEqual([e["create"]["status"] for e in errors], [409, 409])

    def test_wrong_password_is_refused(self):
        with self.assertRaises(AuthenticationException):
            helpers.bulk(client(self.ix.url, "wrong"), docs(1, "other"))

    def test_search_with_bool_term_range_and_sort(self):
        r = self.es.search(
            index="app-logs",
            body={
                "query": {
                    "bool": {
                        "filter": [
                            {"term": {"service.name": "fib"}},
                            {"range": {"@timestamp": {"gte": "2025-06-01T10:01:00Z"}}},
                        ],
                        "must": [{"match_phrase": {"message": "timed out"}}],
                    }
                },
                "sort": [{"@timestamp": {"order": "desc"}}],
                "size": 3,
            },
        )
        self.assertEqual(r["hits"]["total"]["value"], 14)  # i = 60, 70, .., 190
        got = [h["_source"]["message"] for h in r["hits"]["hits"]]
        self.assertEqual(got, ["GET /fib/190 timed out", "GET /fib/180 timed out", "GET /fib/170 timed out"])
        self.assertEqual(r["hits"]["hits"][0]["_id"], "doc-190")
        self.assertEqual(r["hits"]["hits"][0]["_source"]["host"]["name"], "node-1")

    def test_trace_lookup_and_query_string(self):
        r = self.es.search(index="app-logs", body={"query": {"term": {"trace.id": "trace-42"}}})
        self.assertEqual([h["_id"] for h in r["hits"]["hits"]], ["doc-42"])
        r = self.es.search(index="app-logs", q="log.level:error AND host.name:node-0", size=0)
        self.assertEqual(r["hits"]["total"]["value"], 7)  # multiples of 30 below 200

    def test_count(self):
        self.assertEqual(self.es.count(index="app-logs")["count"], 200)
        r = self.es.count(index="app-logs", body={"query": {"term": {"trace.id": "trace-42"}}})
        self.assertEqual(r["count"], 1)
        r = self.es.count(index="app-logs", q="log.level:error AND host.name:node-0")
        self.assertEqual(r["count"], 7)

    def test_search_after_pages_every_document_once(self):
        seen, after = [], None
        while True:
            body = {"size": 70, "sort": [{"@timestamp": "asc"}], "query": {"match_all": {}}}
            if after is not None:
                body["search_after"] = after
            hits = self.es.search(index="app-logs", body=body)["hits"]["hits"]
            if not hits:
                break
            seen += [h["_id"] for h in hits]
            after = hits[-1]["sort"]
        self.assertEqual(seen, [f"doc-{i}" for i in range(200)])

    def test_aggregations(self):
        r = self.es.search(
            index="app-logs",
            body={
                "size": 0,
                "aggs": {
                    "per_minute": {"date_histogram": {"field": "@timestamp", "fixed_interval": "1m"}},
                    "apps": {"terms": {"field": "service.name"}},
                    "lat": {"percentiles": {"field": "latency_ms", "percents": [50, 99]}},
                    "avg_lat": {"avg": {"field": "latency_ms"}},
                },
            },
        )
        aggs = r["aggregations"]
        self.assertEqual([b["doc_count"] for b in aggs["per_minute"]["buckets"]], [60, 60, 60, 20])
        self.assertEqual({b["key"]: b["doc_count"] for b in aggs["apps"]["buckets"]}, {"fib": 100, "web": 100})
        self.assertEqual(aggs["lat"]["values"]["50.0"], 99.0)
        self.assertEqual(aggs["lat"]["values"]["99.0"], 197.0)
        self.assertAlmostEqual(aggs["avg_lat"]["value"], 99.5)

    def test_bad_query_is_a_request_error(self):
        with self.assertRaises(RequestError) as ctx:
            self.es.search(index="app-logs", body={"query": {"fuzzy": {"message": "x"}}})
        # The client reads the exception type from Elasticsearch's error body.
        self.assertEqual(ctx.exception.status_code, 400)
        self.assertEqual(ctx.exception.error, "parsing_exception")
        self.assertIn("fuzzy", ctx.exception.info["error"]["reason"])

    def test_search_highlights_the_message(self):
        r = self.es.search(
            index="app-logs",
            body={"size": 1, "query": {"match": {"message": "timed"}},
                  "highlight": {"fields": {"message": {}}}},
        )
        hit = r["hits"]["hits"][0]
        self.assertEqual(hit["highlight"]["message"], [hit["_source"]["message"].replace("timed", "<em>timed</em>")])


if __name__ == "__main__":
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: run cargo build first")
    unittest.main(verbosity=2)
