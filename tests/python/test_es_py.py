"""The indexer's Elasticsearch API driven by the official Elasticsearch client,
elasticsearch-py 8 from PyPI, which refuses any server that does not answer `GET /`
as an Elasticsearch 8 and carry `X-Elastic-Product: Elasticsearch` (issue 17):
info, helpers.bulk, search with search_after, count, a date_histogram, and the setup
calls shippers make when they start.

Starts `target/debug/sandtrail indexer --listen 127.0.0.1:0` like test_es_clients.py
(same harness), and stops it at the end. Run: python3 tests/python/test_es_py.py
(SANDTRAIL_BIN overrides the binary).
"""

import os
import sys
import unittest

from elasticsearch import AuthenticationException, Elasticsearch, NotFoundError, helpers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_es_clients import BIN, TOKEN, Indexer, docs  # noqa: E402


def client(url, **auth):
    if not auth:
        auth = {"basic_auth": ("elastic", TOKEN)}
    return Elasticsearch(url, request_timeout=30, **auth)


class ElasticsearchPyAgainstSandtrail(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ix = Indexer()
        cls.es = client(cls.ix.url)
        ok, errors = helpers.bulk(cls.es, docs(200), chunk_size=64)
        assert (ok, errors) == (200, []), (ok, errors)

    @classmethod
    def tearDownClass(cls):
        cls.es.close()
        cls.ix.stop()

    def test_info_is_an_elasticsearch_8(self):
        info = self.es.info()
        self.assertTrue(info["version"]["number"].startswith("8."), info)
        self.assertEqual(info["version"]["build_flavor"], "default")
        self.assertEqual(info["tagline"], "You Know, for Search")
        self.assertEqual(info.meta.headers["x-elastic-product"], "Elasticsearch")
        self.assertTrue(self.es.ping())

    def test_every_way_of_passing_the_token(self):
        for auth in (
            {"basic_auth": ("elastic", TOKEN)},
            {"bearer_auth": TOKEN},
            # An Elasticsearch API key: any id, the token as the key.
            {"api_key": ("sandtrail", TOKEN)},
            {"headers": {"x-sandtrail-token": TOKEN}},
        ):
            with client(self.ix.url, **auth) as es:
                self.assertEqual(es.count(index="app-logs")["count"], 200, auth)

    def test_the_prefix_is_a_base_url_too(self):
        # Under `sandtrail up` the port's `/` is the UI: clients use `<url>/es`.
        with client(self.ix.url + "/es") as es:
            self.assertTrue(es.info()["version"]["number"].startswith("8."))
            self.assertEqual(es.count(index="app-logs")["count"], 200)

    def test_wrong_token_is_refused(self):
        with client(self.ix.url, basic_auth=("elastic", "wrong")) as es:
            with self.assertRaises(AuthenticationException) as ctx:
                es.count(index="app-logs")
        self.assertEqual(ctx.exception.meta.headers["x-elastic-product"], "Elasticsearch")

    def test_count(self):
        self.assertEqual(self.es.count(index="app-logs")["count"], 200)
        r = self.es.count(index="app-logs", query={"term": {"trace.id": "trace-42"}})
        self.assertEqual(r["count"], 1)
        r = self.es.count(index="app-logs", q="log.level:error AND host.name:node-0")
        self.assertEqual(r["count"], 7)

    def test_search_after_pages_every_document_once(self):
        seen, after = [], None
        while True:
            kw = {"search_after": after} if after is not None else {}
            r = self.es.search(
                index="app-logs", size=70, sort=[{"@timestamp": "asc"}], query={"match_all": {}}, **kw
            )
            hits = r["hits"]["hits"]
            if not hits:
                break
            seen += [h["_id"] for h in hits]
            after = hits[-1]["sort"]
        self.assertEqual(seen, [f"doc-{i}" for i in range(200)])

    # Issue 17: hits carried an ECS rendering of the record (dotted keys flattened,
    # `task` and `stream` added); the document as sent is kept when it differs.
    def test_source_comes_back_as_sent(self):
        sent = next(d for d in docs(200) if d["_id"] == "doc-42")
        sent = {k: v for k, v in sent.items() if not k.startswith("_")}
        hit = self.es.search(index="app-logs", query={"term": {"trace.id": "trace-42"}})["hits"]["hits"][0]
        self.assertEqual(hit["_source"], sent)

    def test_single_documents(self):
        doc = {"message": "indexed alone", "labels": {"k": "v"}}
        r = self.es.index(index="single", id="s1", document=doc)
        self.assertEqual(r["result"], "created")
        self.assertEqual(self.es.get(index="single", id="s1")["_source"], doc)
        self.assertTrue(self.es.exists(index="single", id="s1"))
        self.assertFalse(self.es.exists(index="single", id="nope"))
        self.assertEqual(self.es.count(index="single", q="labels.k:v")["count"], 1)

    def test_date_histogram(self):
        r = self.es.search(
            index="app-logs",
            size=0,
            aggs={"per_minute": {"date_histogram": {"field": "@timestamp", "fixed_interval": "1m"}}},
        )
        buckets = r["aggregations"]["per_minute"]["buckets"]
        self.assertEqual([b["doc_count"] for b in buckets], [60, 60, 60, 20])
        self.assertEqual(buckets[0]["key_as_string"][:19], "2025-06-01T10:00:00")

    def test_startup_calls_shippers_make(self):
        self.assertEqual(self.es.license.get()["license"]["status"], "active")
        self.assertEqual(self.es.xpack.info()["license"]["mode"], "basic")
        nodes = self.es.nodes.info(metric="http")["nodes"]
        self.assertEqual(len(nodes), 1)
        self.assertEqual(self.es.cluster.health()["status"], "green")
        # Templates, policies and data streams are accepted and ignored.
        self.assertFalse(self.es.indices.exists_index_template(name="logs-app"))
        r = self.es.indices.put_index_template(name="logs-app", index_patterns=["logs-app-*"], data_stream={})
        self.assertTrue(r["acknowledged"])
        r = self.es.cluster.put_component_template(name="logs-settings", template={"settings": {}})
        self.assertTrue(r["acknowledged"])
        r = self.es.ilm.put_lifecycle(name="logs", policy={"phases": {"hot": {"actions": {}}}})
        self.assertTrue(r["acknowledged"])
        with self.assertRaises(NotFoundError):
            self.es.indices.get_data_stream(name="logs-app-default")


if __name__ == "__main__":
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: run cargo build first")
    unittest.main(verbosity=2)
