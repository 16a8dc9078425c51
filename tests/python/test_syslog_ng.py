"""syslog-ng's elasticsearch-http destination (Debian's syslog-ng-mod-http and the
SCL block that wraps it) shipping a file to the indexer's `_bulk`, unchanged: a
`file()` source follows a log file, elasticsearch-http posts it in bulk with Basic
auth, and every line becomes searchable exactly once, across a restart of syslog-ng
(its persist file keeps its place in the file).

syslog-ng runs as a plain foreground process with its own config, persist file,
pid file and control socket in a temporary directory, as `nobody` when the suite
runs as root. Debian's syslog-ng and rsyslog packages conflict (both are the
system-log-daemon), so scripts/test-deps.sh unpacks syslog-ng's packages into
SANDTRAIL_SYSLOG_NG_ROOT (default /opt/sandtrail-test/syslog-ng); a syslog-ng
installed system-wide is used when that is missing. Run: python3
tests/python/test_syslog_ng.py (SANDTRAIL_BIN overrides the binary).
"""

import collections
import json
import os
import pwd
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_es_clients import BIN, TOKEN, Indexer  # noqa: E402

INDEX = "syslog-ng-test"
LINES = 40
DEADLINE_S = 30
VERSION = "3.38"


def find_syslog_ng():
    """(binary, module dir, SCL include dir, library dir) of an unpacked or
    installed syslog-ng with the http module and the elasticsearch-http SCL."""
    unpacked = os.environ.get("SANDTRAIL_SYSLOG_NG_ROOT", "/opt/sandtrail-test/syslog-ng")
    for root in (unpacked, "/"):
        layout = (
            os.path.join(root, "usr/sbin/syslog-ng"),
            os.path.join(root, f"usr/lib/syslog-ng/{VERSION}"),
            os.path.join(root, "usr/share/syslog-ng/include"),
            os.path.join(root, "usr/lib/syslog-ng"),
        )
        binary, modules, include, _ = layout
        if (
            os.path.exists(binary)
            and os.path.exists(os.path.join(modules, "libhttp.so"))
            and os.path.exists(os.path.join(include, "scl/elasticsearch/elastic-http.conf"))
        ):
            return layout
    return None


SYSLOG_NG = find_syslog_ng()


class SyslogNg:
    """syslog-ng following `log` and shipping it to the indexer at `url`, with all
    its state in `work`."""

    def __init__(self, work, log, url):
        self.work = work
        binary, modules, include, libs = SYSLOG_NG
        self.conf = os.path.join(work, "syslog-ng.conf")
        with open(self.conf, "w") as f:
            f.write(f"""@version: {VERSION}
@include "{include}/scl/elasticsearch/elastic-http.conf"
options {{ stats-freq(0); frac-digits(6); }};
source s_file {{ file("{log}" follow-freq(0.1) flags(no-parse)); }};
destination d_es {{
  elasticsearch-http(
    url("{url}/_bulk")
    index("{INDEX}")
    type("")
    user("elastic")
    password("{TOKEN}")
    template("$(format-json @timestamp=${{ISODATE}} message=${{MESSAGE}} host.name=syslog-ng-host service.name=filetest)")
  );
}};
log {{ source(s_file); destination(d_es); }};
""")
        self.ctl = os.path.join(work, "syslog-ng.ctl")
        self.argv = [
            binary,
            "--foreground",
            "--stderr",
            "--no-caps",
            f"--module-path={modules}",
            f"--cfgfile={self.conf}",
            f"--persist-file={os.path.join(work, 'syslog-ng.persist')}",
            f"--pidfile={os.path.join(work, 'syslog-ng.pid')}",
            f"--control={self.ctl}",
        ]
        self.ctl_argv = [os.path.join(os.path.dirname(binary), "syslog-ng-ctl"), f"--control={self.ctl}"]
        self.env = dict(os.environ, LD_LIBRARY_PATH=libs)
        # Unprivileged: as root (CI), syslog-ng runs as nobody in a directory it owns.
        self.user = None
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self.user = (nobody.pw_uid, nobody.pw_gid)
            for path in (work, self.conf):
                os.chown(path, *self.user)
        self.proc = None
        self.err_path = os.path.join(work, "syslog-ng.err")

    def start(self):
        err = open(self.err_path, "a")
        kw = {}
        if self.user:
            kw = {"user": self.user[0], "group": self.user[1], "extra_groups": []}
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=err, env=self.env, **kw)
        err.close()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self):
        with open(self.err_path) as f:
            return f.read()

    def written(self):
        """The destination's `written` and `queued` counters, from the control socket
        (None while it does not answer yet)."""
        kw = {"user": self.user[0], "group": self.user[1], "extra_groups": []} if self.user else {}
        r = subprocess.run(self.ctl_argv[:1] + ["stats"] + self.ctl_argv[1:], capture_output=True, text=True,
                           env=self.env, **kw)
        if r.returncode != 0:
            return None
        counters = collections.defaultdict(int)
        for line in r.stdout.splitlines():
            parts = line.split(";")
            if len(parts) == 6 and parts[0].startswith("dst.http") and parts[4] in ("written", "queued"):
                counters[parts[4]] += int(parts[5])
        return counters["written"], counters["queued"]


@unittest.skipUnless(SYSLOG_NG, "syslog-ng with syslog-ng-mod-http is not installed: run scripts/test-deps.sh")
class SyslogNgElasticsearchHttp(unittest.TestCase):
    def setUp(self):
        self.ix = Indexer()
        self.dir = tempfile.TemporaryDirectory(prefix="sandtrail-syslog-ng-")
        self.log = os.path.join(self.dir.name, "app.log")
        open(self.log, "w").close()
        os.chmod(self.dir.name, 0o755)
        os.chmod(self.log, 0o644)
        work = os.path.join(self.dir.name, "work")
        os.mkdir(work)
        self.sng = SyslogNg(work, self.log, self.ix.url)

    def tearDown(self):
        self.sng.stop()
        self.ix.stop()
        self.dir.cleanup()

    def append(self, first, n):
        with open(self.log, "a") as f:
            for i in range(first, first + n):
                f.write(f"syslog-ng line {i} shipped once\n")

    def es(self, path, body):
        req = urllib.request.Request(
            f"{self.ix.url}/{INDEX}/{path}",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json", "authorization": f"Bearer {TOKEN}"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def messages(self):
        hits = self.es("_search", {"size": 1000, "sort": [{"@timestamp": "asc"}]})["hits"]["hits"]
        return [h["_source"]["message"] for h in hits]

    def await_delivery(self, n):
        """Waits until syslog-ng says it wrote `n` lines and holds none, then returns
        what the index holds: anything sent twice would be there by then."""
        deadline = time.monotonic() + DEADLINE_S
        state = None
        while time.monotonic() < deadline:
            if self.sng.proc.poll() is not None:
                self.fail("syslog-ng exited: " + self.sng.log())
            state = self.sng.written()
            if state == (n, 0) and len(self.messages()) >= n:
                return self.messages()
            time.sleep(0.2)  # polling an external process's progress: no event to await
        self.fail(f"syslog-ng wrote {state} (written, queued) of {n} lines; index has "
                  f"{len(self.messages())}; log: {self.sng.log()}")

    def test_a_file_shipped_by_syslog_ng_arrives_once_and_is_searchable(self):
        self.append(0, LINES)
        self.sng.start()
        got = self.await_delivery(LINES)
        want = [f"syslog-ng line {i} shipped once" for i in range(LINES)]
        self.assertEqual(sorted(got), sorted(want))

        # A restart resumes from the persist file: nothing is sent again.
        self.sng.stop()
        self.append(LINES, LINES)
        self.sng.start()
        self.await_delivery(LINES)  # this run's counters start at zero
        got = self.messages()
        want = [f"syslog-ng line {i} shipped once" for i in range(2 * LINES)]
        dupes = [m for m, c in collections.Counter(got).items() if c > 1]
        self.assertEqual(dupes, [])
        self.assertEqual(sorted(got), sorted(want))

        # Searchable like any record: by words of the message and by ECS fields.
        r = self.es("_search", {"query": {"match_phrase": {"message": "line 57 shipped"}}})
        self.assertEqual([h["_source"]["message"] for h in r["hits"]["hits"]], ["syslog-ng line 57 shipped once"])
        r = self.es("_count", {"query": {"query_string": {"query": "host.name:syslog-ng-host AND service.name:filetest"}}})
        self.assertEqual(r["count"], 2 * LINES)
        hit = self.es("_search", {"size": 1})["hits"]["hits"][0]["_source"]
        self.assertEqual((hit["host"]["name"], hit["service"]["name"]), ("syslog-ng-host", "filetest"))


if __name__ == "__main__":
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: run cargo build first")
    if not SYSLOG_NG:
        # Loud: the suite installs it (scripts/test-deps.sh); a skip here is a gap.
        print("SKIPPED: syslog-ng with syslog-ng-mod-http is not installed (run scripts/test-deps.sh)",
              file=sys.stderr)
    unittest.main(verbosity=2)
