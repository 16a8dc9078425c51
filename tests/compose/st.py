#!/usr/bin/env python3
"""JSON helpers for tests/compose/run.sh: the suite's checks that need more than curl.

Standard library only (the CI machine has python3 and nothing else is installed for
this). Every subcommand exits 0 when its check holds and prints why when it does not.
"""
import json
import os
import re
import sys
import urllib.parse
import urllib.request


def get(url):
    # Reading needs the token as much as writing (issue 15).
    token = os.environ.get("SANDTRAIL_TOKEN", "")
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=20) as r:
        return json.load(r)


def search_all(indexer, q, start="now-24h"):
    """Every hit of `q`, following the cursor."""
    hits, cursor = [], None
    while True:
        params = {"q": q, "limit": "1000", "start": start}
        if cursor:
            params["cursor"] = cursor
        d = get(f"{indexer}/api/v1/search?{urllib.parse.urlencode(params)}")
        hits.extend(d["hits"])
        cursor = d.get("next")
        if not cursor or not d["hits"]:
            return hits


def cmd_count(indexer, q):
    d = get(f"{indexer}/api/v1/search?" + urllib.parse.urlencode(
        {"q": q, "limit": "1", "start": "now-24h"}))
    print(d["total"])


def cmd_hosts(indexer, q):
    """Distinct hosts of all hits of q, space separated."""
    print(" ".join(sorted({h["host"] for h in search_all(indexer, q)})))


def cmd_tasks(scheduler, app, state="TASK_RUNNING"):
    """One line per task of the app in that state: id host startedAt."""
    d = get(f"{scheduler}/v2/apps/{app}")
    for t in d["app"].get("tasks", []):
        if state == "any" or t["state"] == state:
            print(t["id"], t["host"], t.get("startedAt") or "-", t["state"])


def cmd_ports(scheduler, app):
    """The first host port of each running task of the app, sorted, one a line."""
    d = get(f"{scheduler}/v2/apps/{app}")
    ports = sorted(t["ports"][0] for t in d["app"].get("tasks", [])
                   if t["state"] == "TASK_RUNNING" and t.get("ports"))
    for p in ports:
        print(p)


def cmd_all_tasks(scheduler):
    """Every task of every app, sorted: id host startedAt state."""
    d = get(f"{scheduler}/v2/tasks")
    rows = sorted((t["id"], t["host"], t.get("startedAt") or "-", t["state"])
                  for t in d["tasks"])
    for r in rows:
        print(*r)


def cmd_agent_state(scheduler, name):
    for a in get(f"{scheduler}/v1/agents"):
        if a["name"] == name:
            print(a["state"])
            return
    print("absent")


SEQ = re.compile(r"\bseq=(\d+)\b")


def cmd_seq(indexer, task, upto):
    """Checks that seq=1..upto of one task are each indexed exactly once. Prints the
    indexed maximum (so the caller can wait for it); exit 1 on any gap or duplicate,
    exit 2 while the maximum is still below upto (not yet shipped)."""
    upto = int(upto)
    counts = {}
    for h in search_all(indexer, f'task:"{task}" AND stream:stdout'):
        m = SEQ.search(h["msg"])
        if m:
            n = int(m.group(1))
            counts[n] = counts.get(n, 0) + 1
    top = max(counts, default=0)
    print(top)
    if top < upto:
        return 2
    missing = [n for n in range(1, upto + 1) if counts.get(n, 0) == 0]
    doubled = [n for n in range(1, upto + 1) if counts.get(n, 0) > 1]
    if missing or doubled:
        print(f"task {task}: seq 1..{upto}: {len(missing)} missing {missing[:20]}, "
              f"{len(doubled)} doubled {doubled[:20]}", file=sys.stderr)
        return 1
    return 0


def cmd_prom_value(api, query, expect=None):
    """The value of a Prometheus instant query (`api` is its /api/v1/query): exits
    0 when it is one finite number (equal to `expect` when given), printing it."""
    with urllib.request.urlopen(f"{api}?{urllib.parse.urlencode({'query': query})}", timeout=10) as r:
        d = json.load(r)
    result = d.get("data", {}).get("result", [])
    if d.get("status") != "success" or len(result) != 1:
        print(f"{query}: {d}", file=sys.stderr)
        return 1
    value = float(result[0]["value"][1])
    print(f"{value:g}")
    if value != value or value in (float("inf"), float("-inf")):
        return 1
    if expect is not None and value != float(expect):
        return 1
    return 0


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = globals().get("cmd_" + cmd.replace("-", "_"))
    if fn is None:
        sys.exit(f"unknown subcommand {cmd}")
    sys.exit(fn(*args) or 0)


if __name__ == "__main__":
    main()
