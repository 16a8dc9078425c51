#!/usr/bin/env python3
"""JSON helpers for the container suites (tests/compose*/run.sh): their checks that
need more than curl.

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


def search_page(indexer, q, cursor=None, limit=1000, start="now-24h"):
    params = {"q": q, "limit": str(limit), "start": start}
    if cursor:
        params["cursor"] = cursor
    return get(f"{indexer}/api/v1/search?{urllib.parse.urlencode(params)}")


def cmd_shard_count(indexer, q):
    """Shard mode (tests/compose-scale): the total of q and the shards that failed,
    as `TOTAL FAILED,...` (`-` for none). Exit 1 when a shard failed."""
    d = search_page(indexer, q, limit=0)
    failed = d.get("shards", {}).get("failed", [])
    print(d["total"], ",".join(map(str, failed)) or "-")
    return 1 if failed else 0


NUM = re.compile(r"\bn=(\d+)\b")


def cmd_numbers_once(indexer, q, tasks, lines, limit="1000"):
    """Shard mode: pages through every hit of q with the fanned-out cursor (`limit`
    hits a page) and checks that each of `tasks` tasks has n=1..lines exactly once,
    and that no page had a failed shard. Prints the number of hits."""
    tasks, lines = int(tasks), int(lines)
    counts, hits, cursor, failed = {}, 0, None, set()
    while True:
        d = search_page(indexer, q, cursor, int(limit))
        failed.update(d.get("shards", {}).get("failed", []))
        for h in d["hits"]:
            hits += 1
            m = NUM.search(h["msg"])
            key = (h["task"], int(m.group(1)) if m else -1)
            counts[key] = counts.get(key, 0) + 1
        cursor = d.get("next")
        if not cursor or not d["hits"]:
            break
    print(hits)
    problems = []
    if failed:
        problems.append(f"failed shards {sorted(failed)}")
    by_task = {}
    for (task, n), c in counts.items():
        by_task.setdefault(task, {})[n] = c
    if len(by_task) != tasks:
        problems.append(f"{len(by_task)} tasks, expected {tasks}")
    for task, ns in sorted(by_task.items()):
        missing = [n for n in range(1, lines + 1) if n not in ns]
        doubled = [n for n, c in ns.items() if c > 1]
        extra = [n for n in ns if not 1 <= n <= lines]
        if missing or doubled or extra:
            problems.append(f"task {task}: {len(missing)} missing {missing[:10]}, "
                            f"{len(doubled)} doubled {doubled[:10]}, stray {extra[:10]}")
    for p in problems[:20]:
        print(p, file=sys.stderr)
    return 1 if problems else 0


def zk_dump(host, port):
    """ZooKeeper's `dump` (four-letter word; a standalone server or the leader): the
    ephemeral nodes of each live session, as {session: [path, ...]}."""
    import socket
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"dump")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    sessions, current = {}, None
    text = data.decode()
    _, _, ephemerals = text.partition("ephemeral nodes dump:")
    for line in ephemerals.splitlines():
        if line.startswith("0x"):
            current = line.rstrip(":").strip()
            sessions[current] = []
        elif line.startswith(("\t", " ")) and current and line.strip().startswith("/"):
            sessions[current].append(line.strip())
    return sessions


def cmd_shard_owners(zk, root, shards):
    """Shard mode's owner nodes in ZooKeeper (`zk` is host:port): one line per shard,
    `SHARD MEMBER...`, the member id (advertised address) of the session holding each
    `<root>/indexers/shards/<n>/owner-<k>`, `?` for a session with no member node."""
    host, _, port = zk.rpartition(":")
    sessions = zk_dump(host, port)
    members_dir = f"{root}/indexers/members/"
    shards_dir = f"{root}/indexers/shards/"
    owners = {n: [] for n in range(int(shards))}
    for paths in sessions.values():
        member = next((p[len(members_dir):] for p in paths if p.startswith(members_dir)), "?")
        for p in paths:
            if p.startswith(shards_dir):
                n, _, slot = p[len(shards_dir):].partition("/")
                if slot.startswith("owner-") and n.isdigit() and int(n) in owners:
                    owners[int(n)].append(member)
    for n, ms in sorted(owners.items()):
        print(n, *sorted(ms))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = globals().get("cmd_" + cmd.replace("-", "_"))
    if fn is None:
        sys.exit(f"unknown subcommand {cmd}")
    sys.exit(fn(*args) or 0)


if __name__ == "__main__":
    main()
