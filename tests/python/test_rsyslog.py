"""rsyslog's omelasticsearch (Debian's rsyslog-elasticsearch) shipping a file to the
indexer's `_bulk`, unchanged: imfile reads a log file, omelasticsearch posts it in
bulk mode with Basic auth, and every line becomes searchable.

Starts `target/debug/sandtrail indexer` and `rsyslogd -n` itself. Skips when rsyslogd
or its omelasticsearch module is not installed (`.ci/run` installs both).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_es_clients import TOKEN, Indexer  # noqa: E402

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
MODULE = "/usr/lib/x86_64-linux-gnu/rsyslog/omelasticsearch.so"
LINES = 50
DEADLINE_S = 30


@unittest.skipUnless(os.path.exists(RSYSLOGD) and os.path.exists(MODULE), "rsyslog-elasticsearch is not installed")
class RsyslogOmelasticsearch(unittest.TestCase):
    def setUp(self):
        self.ix = Indexer()
        self.dir = tempfile.TemporaryDirectory(prefix="sandtrail-rsyslog-")
        d = self.dir.name
        self.log = os.path.join(d, "app.log")
        with open(self.log, "w") as f:
            for i in range(LINES):
                f.write(f"rsyslog line {i} shipped unchanged\n")
        port = urllib.parse.urlparse(self.ix.url).port
        os.makedirs(os.path.join(d, "work"))
        conf = os.path.join(d, "rsyslog.conf")
        with open(conf, "w") as f:
            f.write(f"""
global(workDirectory="{d}/work")
module(load="imfile")
module(load="omelasticsearch")
template(name="ecs" type="string"
  string="{{\\"@timestamp\\":\\"%timereported:::date-rfc3339%\\",\\"message\\":\\"%msg:::json%\\",\\"host\\":{{\\"name\\":\\"rsyslog-host\\"}},\\"service\\":{{\\"name\\":\\"filetest\\"}}}}")
ruleset(name="toes") {{
  action(type="omelasticsearch" server="127.0.0.1" serverport="{port}"
         searchIndex="rsyslog-test" template="ecs" bulkmode="on"
         uid="elastic" pwd="{TOKEN}" errorfile="{d}/es-errors.json"
         action.resumeRetryCount="-1")
}}
input(type="imfile" File="{self.log}" Tag="app" ruleset="toes")
""")
        self.err = open(os.path.join(d, "rsyslogd.err"), "w")
        self.rsyslog = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", conf, "-i", os.path.join(d, "rsyslogd.pid")],
            stdout=subprocess.DEVNULL,
            stderr=self.err,
        )

    def tearDown(self):
        if self.rsyslog.poll() is None:
            self.rsyslog.terminate()
            try:
                self.rsyslog.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.rsyslog.kill()
                self.rsyslog.wait()
        self.err.close()
        self.ix.stop()
        self.dir.cleanup()

    def read(self, name):
        path = os.path.join(self.dir.name, name)
        if not os.path.exists(path):
            return ""
        with open(path) as f:
            return f.read()

    def search(self):
        body = json.dumps({"size": 100, "sort": [{"@timestamp": "asc"}]}).encode()
        req = urllib.request.Request(
            f"{self.ix.url}/rsyslog-test/_search",
            data=body,
            # Reading needs the token as much as writing (issue 15).
            headers={"content-type": "application/json", "authorization": f"Bearer {TOKEN}"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def test_a_file_shipped_by_rsyslog_is_searchable(self):
        deadline = time.monotonic() + DEADLINE_S
        found = []
        while time.monotonic() < deadline:
            hits = self.search()["hits"]["hits"]
            found = sorted(h["_source"]["message"].strip() for h in hits)
            if len(found) >= LINES or self.rsyslog.poll() is not None:
                break
            time.sleep(0.2)  # polling an external process's progress: no event to await
        errors = self.read("es-errors.json")
        if self.rsyslog.poll() is not None:
            self.fail("rsyslogd exited: " + self.read("rsyslogd.err"))
        log = self.read("rsyslogd.err")
        self.assertEqual(found, sorted(f"rsyslog line {i} shipped unchanged" for i in range(LINES)), errors + log)
        hit = self.search()["hits"]["hits"][0]["_source"]
        self.assertEqual((hit["host"]["name"], hit["service"]["name"]), ("rsyslog-host", "filetest"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
