#!/usr/bin/env python3
"""Compatibility test: the `marathon` client from PyPI against a real Sandtrail cluster.

Starts `target/debug/sandtrail scheduler` and one `sandtrail agent` on loopback, then
drives the scheduler only through the client (create, list, scale, restart, kill a task
with scale, list and read app versions, delete, list tasks and deployments, the event
stream). Tasks really run:
each instance is `python3 -m http.server` with an HTTP health check, and the test fetches
a page from every endpoint `/v1/services/{app}` lists.

Run from the repository root after `cargo build` (scripts/test.sh does both):
    python3 tests/marathon_client.py
"""

import collections
import collections.abc
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

# marathon 0.13's JSON encoder still uses `collections.Iterable`, gone since Python
# 3.10; without this, the client cannot send an app with health checks or constraints.
if not hasattr(collections, "Iterable"):
    collections.Iterable = collections.abc.Iterable

from marathon import MarathonClient  # noqa: E402
from marathon.models import MarathonApp, MarathonHealthCheck  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.environ.get("SANDTRAIL_BIN", os.path.join(ROOT, "target", "debug", "sandtrail"))
DEADLINE = 60.0
APP = "/compat/web"
# Every call needs a token, reads included (issue 15); the client sends it as the
# Basic password, as Marathon's own clients send credentials.
TOKEN = "marathon-compat-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def eventually(what, cond, timeout=DEADLINE):
    """Polls cond() until it returns something truthy; fails naming `what`."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            last = cond()
        except Exception as e:  # the server may be mid-change; retry until the deadline
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def start(args, env, log):
    return subprocess.Popen(
        [BINARY] + args,
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
        text=True,
        start_new_session=True,
    )


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def get_json(url):
    with urllib.request.urlopen(urllib.request.Request(url, headers=AUTH), timeout=5) as r:
        return json.load(r)


def heartbeats(url):
    """Agent heartbeats the scheduler has handled, from its /metrics."""
    with urllib.request.urlopen(urllib.request.Request(url + "/metrics", headers=AUTH), timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("sandtrail_scheduler_heartbeats_total "):
                return int(line.split()[1])
    raise AssertionError("no sandtrail_scheduler_heartbeats_total in /metrics")


def healthy_tasks(client, n):
    tasks = client.list_tasks(APP)
    ok = [
        t
        for t in tasks
        if t.state == "TASK_RUNNING"
        and t.health_check_results
        and all(h.alive for h in t.health_check_results)
    ]
    return ok if len(ok) == n and len(tasks) == n else None


def main():
    if not os.path.exists(BINARY):
        sys.exit(f"{BINARY} is missing: run `cargo build` first")
    tmp = tempfile.mkdtemp(prefix="sandtrail-marathon-")
    # Tasks run as users of their own (SECURITY.md, "Tasks"): the directory above the
    # data dirs must let them pass to their sandboxes, as /var/lib does; mkdtemp's
    # 0700 would hide $MESOS_SANDBOX from them (http.server serves its cwd by path).
    os.chmod(tmp, 0o711)
    # No indexer runs here: the agent's shipper retries quietly in the background.
    env = dict(os.environ, SANDTRAIL_LOG="info,agent=error")
    env["SANDTRAIL_TOKEN"] = TOKEN
    log = open(os.path.join(tmp, "cluster.log"), "w")
    procs = []
    try:
        sched = start(
            ["scheduler", "--listen", "127.0.0.1:0", "--data-dir", os.path.join(tmp, "sched")],
            env,
            log,
        )
        procs.append(sched)
        url = None
        for line in sched.stdout:
            if line.startswith("scheduler: "):
                url = line.split(": ", 1)[1].strip()
                break
        assert url, "the scheduler did not print its url"
        agent_args = [
                "agent",
                "--name", "compat-node",
                "--scheduler", url,
                "--indexer", "http://127.0.0.1:9",
                "--data-dir", os.path.join(tmp, "agent"),
                "--router-listen", "127.0.0.1:0",
                "--resources", "cpus:4;mem:4096",
                "--attributes", "rack:a",
        ]
        agent = start(agent_args, env, log)
        procs.append(agent)
        eventually("the agent to register", lambda: get_json(url + "/v1/agents"))

        client = MarathonClient(url, username="marathon", password=TOKEN)
        events = []
        stream_done = threading.Event()

        def follow():
            try:
                for e in client.event_stream():
                    events.append(e.event_type)
                    if stream_done.is_set():
                        return
            except Exception as e:  # the stream ends when the scheduler stops
                events.append(f"stream ended: {e}")

        threading.Thread(target=follow, daemon=True).start()
        time.sleep(0.3)  # let the stream subscribe before the first change

        check = MarathonHealthCheck(
            protocol="HTTP",
            path="/",
            port_index=0,
            grace_period_seconds=30,
            interval_seconds=1,
            timeout_seconds=2,
            max_consecutive_failures=3,
        )
        app = MarathonApp(
            cmd="exec python3 -m http.server $PORT0 --bind 127.0.0.1",
            instances=1,
            cpus=0.1,
            mem=64,
            health_checks=[check],
            constraints=[["hostname", "CLUSTER", "compat-node"]],
            labels={"team": "compat"},
        )
        created = client.create_app(APP, app)
        assert created.id == APP, created
        assert created.instances == 1
        t0 = time.monotonic()
        eventually("one healthy task", lambda: healthy_tasks(client, 1))
        print(f"create: 1 healthy task after {time.monotonic() - t0:.2f}s")

        apps = client.list_apps()
        assert [a.id for a in apps] == [APP], apps
        got = client.get_app(APP)
        assert got.labels == {"team": "compat"}, got.labels
        assert got.tasks_healthy == 1, got

        t0 = time.monotonic()
        dep = client.scale_app(APP, 2)
        assert "deploymentId" in dep, dep
        first = eventually("two healthy tasks", lambda: healthy_tasks(client, 2))
        print(f"scale to 2: healthy after {time.monotonic() - t0:.2f}s")
        assert eventually("the scale deployment to finish", lambda: client.list_deployments() == [])

        endpoints = get_json(f"{url}/v1/services/{APP.lstrip('/')}")
        assert len(endpoints) == 2, endpoints
        for ep in endpoints:
            with urllib.request.urlopen(f"http://{ep['address']}:{ep['port']}/", timeout=5) as r:
                assert r.status == 200

        t0 = time.monotonic()
        dep = client.restart_app(APP)
        assert "deploymentId" in dep, dep
        old = {t.id for t in first}

        def replaced():
            tasks = healthy_tasks(client, 2)
            return tasks if tasks and not old & {t.id for t in tasks} else None

        second = eventually("a rolling restart onto new tasks", replaced)
        eventually("the restart deployment to finish", lambda: client.list_deployments() == [])
        print(f"rolling restart of 2: done after {time.monotonic() - t0:.2f}s")

        victim = second[0].id
        killed = client.kill_task(APP, victim, scale=True)
        assert killed, killed
        eventually("instances to drop to 1", lambda: client.get_app(APP).instances == 1)
        left = eventually("one task left", lambda: healthy_tasks(client, 1))
        assert left[0].id != victim

        # Every change recorded a version (create, scale, restart, kill with scale),
        # newest first, each readable as the app was then.
        versions = client.list_versions(APP)
        assert len(versions) == 4 and versions == sorted(versions, reverse=True), versions
        assert client.get_app(APP).version == versions[0], versions
        assert client.get_version(APP, versions[-1]).instances == 1
        assert client.get_version(APP, versions[-2]).instances == 2
        print(f"versions: {len(versions)} listed and read back")

        # An agent restart leaves the task running; the new agent reports it again and
        # the scheduler keeps it (same id, nothing relaunched).
        t0 = time.monotonic()
        stop(agent)
        procs.remove(agent)
        beats = heartbeats(url)
        agent = start(agent_args, env, log)
        procs.append(agent)
        # Three heartbeats of the new agent: a task it did not report would have been
        # replaced by then.
        eventually("the restarted agent's heartbeats", lambda: heartbeats(url) >= beats + 3)
        after = eventually("the task after the agent restart", lambda: healthy_tasks(client, 1))
        assert after[0].id == left[0].id, (after, left)
        print(f"agent restart: task kept, healthy {time.monotonic() - t0:.2f}s after the stop")

        all_tasks = client.list_tasks()
        assert all(t.app_id == APP for t in all_tasks), all_tasks

        client.delete_app(APP)
        eventually("the app to go", lambda: client.list_apps() == [])
        eventually("its tasks to go", lambda: client.list_tasks() == [])

        # Issue 19: Marathon's docs Docker example ("bridged-webapp"), unchanged but
        # for the image, which must be one this machine has (nothing can be pulled).
        # The image lacks python3, so its tasks fail and are retried: only creation,
        # the shape read back and the deletion are checked here (tests/docker_up.rs
        # runs Docker apps for real).
        docs_example = {
            "id": "bridged-webapp",
            "cmd": "python3 -m http.server 8080",
            "cpus": 0.5,
            "mem": 64.0,
            "instances": 2,
            "container": {
                "type": "DOCKER",
                "docker": {
                    "image": "debian:bookworm-slim",
                    "network": "BRIDGE",
                    "portMappings": [
                        {"containerPort": 8080, "hostPort": 0, "servicePort": 9000, "protocol": "tcp"},
                        {"containerPort": 161, "hostPort": 0, "protocol": "udp"},
                    ],
                },
            },
            "healthChecks": [
                {
                    "protocol": "HTTP",
                    "portIndex": 0,
                    "path": "/",
                    "gracePeriodSeconds": 5,
                    "intervalSeconds": 20,
                    "maxConsecutiveFailures": 3,
                }
            ],
        }
        docker_app = client.create_app("bridged-webapp", MarathonApp.from_json(docs_example))
        assert docker_app.id == "/bridged-webapp", docker_app
        back = get_json(url + "/v2/apps/bridged-webapp")["app"]
        assert back["container"]["docker"]["image"] == "debian:bookworm-slim", back
        assert back["container"]["docker"]["portMappings"][0]["containerPort"] == 8080, back
        client.delete_app("bridged-webapp")
        eventually("the docker app to go", lambda: client.list_apps() == [])
        eventually("its tasks to go", lambda: client.list_tasks() == [])
        print("marathon client: the docs' Docker example created and deleted")

        stream_done.set()
        want = {"deployment_info", "deployment_success", "status_update_event", "health_status_changed_event"}
        eventually(f"events {want}", lambda: want <= set(events), timeout=10)
        print(f"event stream: {len(events)} events, types {sorted(set(events))}")
        print("marathon client compatibility: ok")
    except BaseException:
        log.flush()
        with open(os.path.join(tmp, "cluster.log")) as f:
            sys.stderr.write(f.read()[-6000:])
        raise
    finally:
        for p in reversed(procs):
            stop(p)
        # The agent leaves tasks running when it stops; end whatever a failed run left.
        for dirpath, _, files in os.walk(os.path.join(tmp, "agent")):
            if ".sandtrail-pid" in files:
                try:
                    with open(os.path.join(dirpath, ".sandtrail-pid")) as f:
                        os.killpg(json.load(f)["pid"], signal.SIGKILL)
                except (OSError, ValueError, KeyError):
                    pass
        # And whatever containers it left (issue 19).
        subprocess.run(
            "ids=$(docker ps -aq --filter label=sandtrail.host=compat-node 2>/dev/null);"
            ' [ -z "$ids" ] || docker rm -f $ids',
            shell=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        log.close()


if __name__ == "__main__":
    main()
