# The step harness the container suites source (tests/compose/run.sh,
# tests/compose-ha/run.sh, tests/compose-scale/run.sh): timing, logging, polling with a
# deadline, container lookups, the image builds they share, the table of steps and the
# traps that tear a cluster down also on failure.
# A suite sets ROOT, COMPOSE (the docker-compose command as an array) and LOGDIR,
# defines `teardown` (and optionally `print_table_extra`), calls `harness_start NAME`
# and then `run_step NAME FUNCTION` per step; the suite's exit status is $FAILED.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
secs_since() { local d=$(( $(now_ms) - $1 )); printf '%d.%d' $(( d / 1000 )) $(( d % 1000 / 100 )); }
SUITE_START=$(now_ms)
STEPS=()      # "name|status|seconds|note"
FAILED=0
NOTE=""
CURRENT_STEP="" CURRENT_T0=0

log() { printf '  [%6ss] %s\n' "$(secs_since "$SUITE_START")" "$*"; }
fail() { NOTE="$*"; log "FAIL: $*"; return 1; }

# wait_until SECONDS DESCRIPTION CMD...: polls CMD every 0.25 s until it succeeds.
wait_until() {
  local limit=$1 what=$2; shift 2
  local deadline=$(( $(now_ms) + limit * 1000 ))
  while ! "$@" >/dev/null 2>&1; do
    if [ "$(now_ms)" -ge "$deadline" ]; then
      fail "timed out after ${limit}s waiting for: $what"
      return 1
    fi
    sleep 0.25
  done
}

cid() { "${COMPOSE[@]}" ps -q "$1"; }
dexec() { local c; c=$(cid "$1"); shift; docker exec "$c" "$@"; }
health() { docker inspect -f '{{.State.Health.Status}}' "$(cid "$1")" 2>/dev/null; }
healthy() { [ "$(health "$1")" = healthy ]; }

# build_sandtrail_image: the Sandtrail image $SANDTRAIL_IMAGE from SANDTRAIL_COMPOSE_BIN
# (else `cargo build`'s debug binary), FROM the local base image.
build_sandtrail_image() {
  local bin="${SANDTRAIL_COMPOSE_BIN:-}"
  if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    cargo build --bin sandtrail --locked -q || { fail "cargo build"; return 1; }
    bin="${CARGO_TARGET_DIR:-$ROOT/target}/debug/sandtrail"
  fi
  mkdir -p "$ROOT/target/docker"
  strip -o "$ROOT/target/docker/sandtrail" "$bin" 2>/dev/null || cp "$bin" "$ROOT/target/docker/sandtrail"
  bash "$ROOT/scripts/base-image.sh" debian:bookworm-slim || { fail "base image"; return 1; }
  local old_id new_id
  old_id=$(docker image inspect -f '{{.Id}}' "$SANDTRAIL_IMAGE" 2>/dev/null)
  DOCKER_BUILDKIT=0 docker build -q --target prebuilt -t "$SANDTRAIL_IMAGE" "$ROOT" >/dev/null \
    || { fail "docker build $SANDTRAIL_IMAGE"; return 1; }
  new_id=$(docker image inspect -f '{{.Id}}' "$SANDTRAIL_IMAGE")
  # The previous build would otherwise linger, untagged.
  if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then docker rmi "$old_id" >/dev/null 2>&1; fi
  return 0
}

# build_zk_image: the ZooKeeper image $SANDTRAIL_ZK_IMAGE (tests/compose-ha/zookeeper).
# apt inside the build fetches the JRE and ZooKeeper once; later runs hit the cache.
# A container may have no route to a mirror where the host has one: then the same
# packages go into a base made by debootstrap on the host (as scripts/base-image.sh
# makes Sandtrail's), and the build only copies the config. SANDTRAIL_ZK_DEBOOTSTRAP=1
# takes that path at once.
build_zk_image() {
  if [ "${SANDTRAIL_ZK_DEBOOTSTRAP:-0}" = 1 ] \
      || ! DOCKER_BUILDKIT=0 docker build -q -t "$SANDTRAIL_ZK_IMAGE" "$ROOT/tests/compose-ha/zookeeper" >/dev/null; then
    log "ZooKeeper image: base by debootstrap on the host (apt inside docker build skipped or failed)"
    SANDTRAIL_BASE_INCLUDE=default-jre-headless,libzookeeper-java \
      bash "$ROOT/scripts/base-image.sh" sandtrail-zk-base:local || { fail "debootstrap base for ZooKeeper"; return 1; }
    DOCKER_BUILDKIT=0 docker build -q --build-arg BASE=sandtrail-zk-base:local \
      -t "$SANDTRAIL_ZK_IMAGE" "$ROOT/tests/compose-ha/zookeeper" >/dev/null \
      || { fail "docker build $SANDTRAIL_ZK_IMAGE"; return 1; }
  fi
  return 0
}

print_table() {
  echo
  printf '%-4s %-56s %-6s %8s  %s\n' '#' 'step' 'result' 'seconds' 'note'
  local i=0 row name status secs note
  for row in "${STEPS[@]}"; do
    i=$((i+1)); IFS='|' read -r name status secs note <<<"$row"
    printf '%-4s %-56s %-6s %8s  %s\n' "$i" "$name" "$status" "$secs" "$note"
  done
  printf '%-4s %-56s %-6s %8s\n' '' 'total' "$([ $FAILED -eq 0 ] && echo pass || echo FAIL)" \
    "$(secs_since "$SUITE_START")"
  if declare -F print_table_extra >/dev/null; then print_table_extra; fi
}

on_exit() {
  local t0; t0=$(now_ms)
  teardown
  STEPS+=("teardown (docker-compose down -v)|pass|$(secs_since "$t0")|")
  print_table
}

run_step() { # NAME FUNCTION
  local name=$1 fn=$2 t0 secs
  if [ "$FAILED" -ne 0 ]; then STEPS+=("$name|skip|-|"); return; fi
  echo "== $name"
  NOTE=""
  t0=$(now_ms)
  CURRENT_STEP=$name CURRENT_T0=$t0
  if "$fn"; then
    secs=$(secs_since "$t0")
    STEPS+=("$name|pass|$secs|")
  else
    secs=$(secs_since "$t0")
    FAILED=1
    STEPS+=("$name|FAIL|$secs|$NOTE")
  fi
  CURRENT_STEP=""
}

interrupted() {
  FAILED=1
  [ -n "$CURRENT_STEP" ] && STEPS+=("$CURRENT_STEP|INTR|$(secs_since "$CURRENT_T0")|interrupted by a signal")
  exit 130
}

# compose_teardown "SERVICES": on failure keeps each service's log, `ps` and, if the
# suite defines `extra_logs`, what it prints (into LOGDIR/extra.txt); then, unless
# SANDTRAIL_COMPOSE_KEEP=1, unpauses (a paused container blocks `down`) and removes
# the cluster with its volumes.
compose_teardown() {
  local s c
  if [ "$FAILED" -ne 0 ]; then
    mkdir -p "$LOGDIR"
    for s in $1; do
      c=$(cid $s 2>/dev/null)
      [ -n "$c" ] && docker logs "$c" >"$LOGDIR/$s.log" 2>&1
    done
    "${COMPOSE[@]}" ps >"$LOGDIR/ps.txt" 2>&1
    if declare -F extra_logs >/dev/null; then extra_logs >"$LOGDIR/extra.txt" 2>&1; fi
    echo "container logs kept in $LOGDIR/"
  fi
  if [ "${SANDTRAIL_COMPOSE_KEEP:-0}" = 1 ]; then
    echo "SANDTRAIL_COMPOSE_KEEP=1: cluster left running (project $COMPOSE_PROJECT_NAME)"
  else
    for s in $1; do docker unpause "$(cid $s 2>/dev/null)" >/dev/null 2>&1; done
    "${COMPOSE[@]}" down -v --remove-orphans -t 5 >/dev/null 2>&1
  fi
}

# harness_start NAME: checks the tools, clears LOGDIR and sets the traps.
harness_start() {
  local tool
  for tool in docker docker-compose python3 curl; do
    command -v $tool >/dev/null || { echo "$1: $tool is required" >&2; exit 1; }
  done
  mkdir -p "$ROOT/target"
  rm -rf "$LOGDIR"
  trap on_exit EXIT
  trap interrupted INT TERM
}
