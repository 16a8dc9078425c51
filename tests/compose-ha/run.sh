#!/usr/bin/env bash
# The HA suite (issue 18): builds the Sandtrail image as tests/compose/run.sh does and
# a ZooKeeper image (tests/compose-ha/zookeeper, FROM the same local base image), brings
# up tests/compose-ha/docker-compose.yml (ZooKeeper, three schedulers in one election,
# three agents knowing all three), and proves with real containers that:
#   - kill -9 of the leader: the survivors name a new leader within 20 s, a follower
#     accepts a write (forwarded to the new leader), fib keeps answering through the
#     router, and no task is restarted (same ids, same hosts);
#   - `docker start` of the old leader brings it back as a follower;
#   - every scheduler answers Mesos-DNS (`dig SRV _fib._tcp.marathon.mesos`, followers
#     from the leader's zone), and the answers follow a scale within 2 s;
#   - a leader paused past its session timeout does not act as leader once unpaused:
#     it exits 75 (EXIT_LOST_LEADERSHIP) for its supervisor.
# Prints a table of steps with pass/fail and timings; tears everything down at the end,
# also on failure; keeps the containers' logs of a failed run under
# target/compose-ha-logs/.
#
# Run from anywhere: bash tests/compose-ha/run.sh
# Env: SANDTRAIL_COMPOSE_BIN  use this sandtrail binary instead of `cargo build`'s
#      SANDTRAIL_COMPOSE_KEEP=1 leave the cluster running after the suite (debugging)
#      SANDTRAIL_ZK_DEBOOTSTRAP=1 make the ZooKeeper image's base by debootstrap on the
#        host, the fallback used when apt inside `docker build` cannot reach a mirror
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
ST="python3 $ROOT/tests/compose/st.py"
# shellcheck source=tests/compose/harness.sh
source "$ROOT/tests/compose/harness.sh"

export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-sandtrailha}"
export SANDTRAIL_TOKEN="compose-ha-$(date +%s)-$RANDOM"
export SANDTRAIL_AGENT_TIMEOUT_SECS=10
export SANDTRAIL_IMAGE="${SANDTRAIL_IMAGE:-sandtrail:compose-test}"
export SANDTRAIL_ZK_IMAGE="${SANDTRAIL_ZK_IMAGE:-sandtrail-zk:compose-test}"
# The schedulers' --zk-session-timeout-ms (docker-compose.yml).
SESSION_S=4
export SANDTRAIL_SCHEDULER_1_PORT="$(free_port)" SANDTRAIL_SCHEDULER_2_PORT="$(free_port)"
export SANDTRAIL_SCHEDULER_3_PORT="$(free_port)" SANDTRAIL_ROUTER_PORT="$(free_port)"
export SANDTRAIL_DNS_1_PORT="$(free_port)" SANDTRAIL_DNS_2_PORT="$(free_port)" SANDTRAIL_DNS_3_PORT="$(free_port)"
ROUTER="http://127.0.0.1:$SANDTRAIL_ROUTER_PORT"
LOGDIR="$ROOT/target/compose-ha-logs"
COMPOSE=(docker-compose -f "$ROOT/tests/compose-ha/docker-compose.yml")
SERVICES="zookeeper scheduler-1 scheduler-2 scheduler-3 node-1 node-2 node-3"

all_healthy() { for s in $SERVICES; do healthy "$s" || return 1; done; }
# The host URL of scheduler-N.
url_of() { local n=${1#scheduler-}; local v="SANDTRAIL_SCHEDULER_${n}_PORT"; echo "http://127.0.0.1:${!v}"; }
# What scheduler-N's GET /v2/leader names, as a service name (scheduler-2:7071 -> scheduler-2).
leader_per() {
  curl -fsS --max-time 3 -H "Authorization: Bearer $SANDTRAIL_TOKEN" "$(url_of "$1")/v2/leader" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"].split(":")[0])'
}
# agree_on_leader S...: every named scheduler names the same leader, not one of EXCLUDE.
LEADER="" EXCLUDE=""
agree_on_leader() {
  local s l first=""
  for s in "$@"; do
    l=$(leader_per "$s") || return 1
    [ -n "$l" ] || return 1
    case " $EXCLUDE " in *" $l "*) return 1 ;; esac
    [ -z "$first" ] && first=$l
    [ "$l" = "$first" ] || return 1
  done
  LEADER=$first
}
post_app() { # SCHEDULER JSON
  curl -fsS --max-time 10 -X POST -H "Authorization: Bearer $SANDTRAIL_TOKEN" \
    -H 'Content-Type: application/json' "$(url_of "$1")/v2/apps" -d "$2" >/dev/null
}
running_count() { $ST tasks "$(url_of "$1")" "$2" | wc -l; }
app_running() { [ "$(running_count "$1" "$2")" -eq "$3" ]; }
running_ids() { $ST all-tasks "$(url_of "$1")" | awk '$4=="TASK_RUNNING" {print $1, $2}'; }
fib() { curl -fsS --max-time 10 "$ROUTER/fib/$1"; }
fib_ok() { [ "$(fib 12)" = 144 ]; }
fib_10_in_a_row() { local i; for i in $(seq 10); do fib_ok || { fail "fib call $i failed"; return 1; }; done; }
# Any scheduler other than $1 (and $2), in order.
others() { local s; for s in scheduler-1 scheduler-2 scheduler-3; do [ "$s" != "$1" ] && [ "$s" != "${2:-}" ] && echo "$s"; done; }
# The SRV ports scheduler-N's Mesos-DNS answers for fib, sorted, one a line.
dns_fib_ports() {
  local n=${1#scheduler-}; local v="SANDTRAIL_DNS_${n}_PORT"
  dig @127.0.0.1 -p "${!v}" +short +time=1 +tries=1 SRV _fib._tcp.marathon.mesos | awk '{print $3}' | sort -n
}
state_of() { docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$(cid "$1")"; }

# ---------------------------------------------------------------------------- steps

step_images() {
  # Same Sandtrail image as the first compose suite (the tag too): after it, a cache hit.
  build_sandtrail_image || return 1
  build_zk_image || return 1
  log "images $SANDTRAIL_IMAGE and $SANDTRAIL_ZK_IMAGE"
}

FIB_HOSTS=""
step_up() {
  "${COMPOSE[@]}" down -v --remove-orphans -t 2 >/dev/null 2>&1
  "${COMPOSE[@]}" up -d >/dev/null 2>"$LOGDIR.up.err" || { cat "$LOGDIR.up.err" >&2; fail "docker-compose up"; return 1; }
  rm -f "$LOGDIR.up.err"
  wait_until 120 "all seven containers healthy" all_healthy || return 1
  wait_until 20 "the three schedulers naming one leader" agree_on_leader scheduler-1 scheduler-2 scheduler-3 || return 1
  log "7 containers healthy; leader $LEADER"
  # Deployed through a follower: forwarded to the leader.
  local follower; follower=$(others "$LEADER" | head -n1)
  post_app "$follower" '{"id":"fib","cmd":"sandtrail demo-fib","instances":3,"portDefinitions":[{"port":0,"name":"http"}],"constraints":[["hostname","UNIQUE"]]}' \
    || { fail "POST /v2/apps fib to follower $follower"; return 1; }
  wait_until 60 "3 fib tasks running" app_running "$LEADER" fib 3 || return 1
  FIB_HOSTS=$($ST tasks "$(url_of "$LEADER")" fib | awk '{print $2}' | sort -u | tr '\n' ' ')
  [ "$(echo $FIB_HOSTS | wc -w)" -eq 3 ] || { fail "fib not one per agent: on $FIB_HOSTS"; return 1; }
  wait_until 30 "fib answering through node-1's router" fib_ok || return 1
  log "fib deployed through follower $follower, running on $FIB_HOSTS"
}

OLD_LEADER="" IDS_BEFORE="" FAILOVER_S="" WRITE_S=""
step_kill_leader() {
  OLD_LEADER=$LEADER
  IDS_BEFORE=$(running_ids "$OLD_LEADER")
  [ -n "$IDS_BEFORE" ] || { fail "no running tasks listed before the kill"; return 1; }
  local survivors t0 follower
  survivors=$(others "$OLD_LEADER" | xargs)
  t0=$(now_ms)
  docker kill -s KILL "$(cid "$OLD_LEADER")" >/dev/null || { fail "docker kill $OLD_LEADER"; return 1; }
  log "docker kill -s KILL $OLD_LEADER returned after $(secs_since "$t0")s"
  EXCLUDE=$OLD_LEADER
  wait_until 20 "survivors $survivors naming a new leader" agree_on_leader $survivors || return 1
  FAILOVER_S=$(secs_since "$t0")
  log "$OLD_LEADER killed (-9); $LEADER named leader by $survivors after ${FAILOVER_S}s (session timeout ${SESSION_S}s)"
  follower=$(others "$OLD_LEADER" "$LEADER")
  # The first write a follower gets accepted (forwarded to the new leader, which may
  # still be loading the state for a moment: 503 until then).
  wait_until 20 "POST /v2/apps to follower $follower accepted" \
    post_app "$follower" '{"id":"after-failover","cmd":"sleep 86401","instances":1}' || return 1
  WRITE_S=$(secs_since "$t0")
  log "POST /v2/apps to follower $follower accepted ${WRITE_S}s after the kill"
  wait_until 30 "app after-failover running" app_running "$LEADER" after-failover 1 || return 1
  wait_until 30 "fib answering after the failover" fib_ok || return 1
  fib_10_in_a_row || return 1
  log "fib answered 10 calls in a row"
  same_ids() { [ "$(running_ids "$LEADER" | grep -v after-failover)" = "$IDS_BEFORE" ]; }
  wait_until 30 "the new leader lists the same running task ids" same_ids || {
    printf 'before:\n%s\nafter:\n%s\n' "$IDS_BEFORE" "$(running_ids "$LEADER")" >&2; return 1; }
  # Stable past the agent timeout: adopted, not lost and replaced a moment later.
  sleep $(( SANDTRAIL_AGENT_TIMEOUT_SECS + 2 ))
  same_ids || { fail "running tasks changed after the failover: $(running_ids "$LEADER" | tr '\n' ';')"; return 1; }
  log "$(echo "$IDS_BEFORE" | wc -l) tasks kept their ids and hosts past the agent timeout (${SANDTRAIL_AGENT_TIMEOUT_SECS}s)"
}

step_restart_old_leader() {
  docker start "$(cid "$OLD_LEADER")" >/dev/null || { fail "docker start $OLD_LEADER"; return 1; }
  wait_until 60 "$OLD_LEADER healthy again" healthy "$OLD_LEADER" || return 1
  EXCLUDE=""
  local was=$LEADER
  wait_until 20 "all three naming one leader" agree_on_leader scheduler-1 scheduler-2 scheduler-3 || return 1
  [ "$LEADER" = "$was" ] || { fail "the lead moved to $LEADER when $OLD_LEADER came back"; return 1; }
  [ "$LEADER" != "$OLD_LEADER" ] || { fail "$OLD_LEADER leads again"; return 1; }
  # A read through it is forwarded to the leader and sees the leader's state.
  app_running "$OLD_LEADER" after-failover 1 || { fail "$OLD_LEADER does not show the leader's apps"; return 1; }
  log "$OLD_LEADER is back as a follower of $LEADER and forwards to it"
}

step_dns() {
  command -v dig >/dev/null || { fail "dig is not installed (scripts/test-deps.sh: dnsutils)"; return 1; }
  local want s
  want=$($ST ports "$(url_of "$LEADER")" fib)
  all_answer() { for s in scheduler-1 scheduler-2 scheduler-3; do [ "$(dns_fib_ports $s)" = "$want" ] || return 1; done; }
  wait_until 10 "SRV _fib._tcp.marathon.mesos on all three = the fib ports ($(echo $want))" all_answer || {
    for s in scheduler-1 scheduler-2 scheduler-3; do echo "$s: $(dns_fib_ports $s | tr '\n' ' ')"; done >&2; return 1; }
  log "all three schedulers answer SRV _fib._tcp with ports $(echo $want) (leader $LEADER)"
  # Scale 3 -> 2 through a follower: every scheduler's answer follows.
  local follower t0; follower=$(others "$LEADER" | head -n1)
  curl -fsS --max-time 10 -X PUT -H "Authorization: Bearer $SANDTRAIL_TOKEN" -H 'Content-Type: application/json' \
    "$(url_of "$follower")/v2/apps/fib" -d '{"instances":2}' >/dev/null || { fail "scale fib to 2"; return 1; }
  wait_until 30 "2 fib tasks running" app_running "$LEADER" fib 2 || return 1
  t0=$(now_ms)
  want=$($ST ports "$(url_of "$LEADER")" fib)
  wait_until 2 "SRV answers of all three following the scale to 2" all_answer || return 1
  log "scale to 2: all three answer the 2 ports $(echo $want) within $(secs_since "$t0")s of the api"
  wait_until 30 "fib answering with 2 instances" fib_ok || return 1
}

step_pause_leader() {
  local victim=$LEADER survivors t0 st
  survivors=$(others "$victim" | xargs)
  IDS_BEFORE=$(running_ids "$victim" | grep -v after-failover)
  docker pause "$(cid "$victim")" >/dev/null || { fail "docker pause $victim"; return 1; }
  t0=$(now_ms)
  EXCLUDE=$victim
  wait_until 20 "survivors $survivors naming a new leader while $victim is paused" agree_on_leader $survivors || {
    docker unpause "$(cid "$victim")" >/dev/null 2>&1; return 1; }
  log "$victim paused; $LEADER named leader after $(secs_since "$t0")s"
  # Past the session timeout for sure, then wake it up.
  while [ $(( $(now_ms) - t0 )) -lt $(( (SESSION_S + 2) * 1000 )) ]; do sleep 0.25; done
  docker unpause "$(cid "$victim")" >/dev/null || { fail "docker unpause $victim"; return 1; }
  exited_75() { [ "$(state_of "$victim")" = "exited 75" ]; }
  wait_until 15 "$victim exiting 75 once unpaused" exited_75 || { log "state: $(state_of "$victim")"; return 1; }
  log "$victim unpaused after $(secs_since "$t0")s: it exited 75 instead of acting as leader"
  local follower; follower=$(others "$victim" "$LEADER")
  post_app "$follower" '{"id":"after-pause","cmd":"sleep 86402","instances":1}' \
    || { fail "POST /v2/apps to follower $follower after the pause"; return 1; }
  wait_until 30 "app after-pause running" app_running "$LEADER" after-pause 1 || return 1
  [ "$(running_ids "$LEADER" | grep -v -e after-failover -e after-pause)" = "$IDS_BEFORE" ] \
    || { fail "running tasks changed across the pause"; return 1; }
  fib_10_in_a_row || return 1
  log "writes go on under $LEADER; same task ids; fib answers"
}

# ------------------------------------------------------------------------- harness

teardown() { compose_teardown "$SERVICES"; }

print_table_extra() {
  [ -n "$FAILOVER_S" ] && echo "failover: new leader named ${FAILOVER_S}s after kill -9, first write accepted after ${WRITE_S:-?}s"
  return 0
}

harness_start tests/compose-ha/run.sh

run_step "0 images (sandtrail, zookeeper)" step_images
run_step "1 up: zk, 3 schedulers, 3 agents; fib x3 via a follower" step_up
run_step "2 kill -9 the leader: new leader, write, same tasks" step_kill_leader
run_step "3 docker start the old leader: back as a follower" step_restart_old_leader
run_step "4 Mesos-DNS on every scheduler follows a scale" step_dns
run_step "5 pause the leader past its session: exits 75" step_pause_leader

exit "$FAILED"
