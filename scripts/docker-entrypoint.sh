#!/bin/sh
# Entrypoint of the Sandtrail image. Every argument list is a `sandtrail` command line
# (config keys come from SANDTRAIL_<SECTION>_<KEY> variables), with one addition for
# containers:
#   indexer-web [INDEXER FLAGS]   the indexer and the web UI in one container (two
#                                 processes; SIGTERM goes to both, the container ends
#                                 when either ends)
set -eu

if [ "${1:-}" = "indexer-web" ]; then
  shift
  web_listen="${SANDTRAIL_WEB_LISTEN:-0.0.0.0:7070}"
  indexer_listen="${SANDTRAIL_LISTEN:-0.0.0.0:7072}"
  port="${indexer_listen##*:}"
  sandtrail indexer --listen "$indexer_listen" "$@" &
  indexer=$!
  # SANDTRAIL_LISTEN is the indexer's; the web UI gets its own address.
  SANDTRAIL_LISTEN="$web_listen" sandtrail web \
    --indexer "${SANDTRAIL_INDEXER:-http://127.0.0.1:$port}" \
    --scheduler "${SANDTRAIL_SCHEDULER:-http://scheduler:7071}" &
  web=$!
  stop() { kill -TERM "$web" "$indexer" 2>/dev/null || true; }
  trap stop TERM INT
  # Whichever ends first (or a signal) stops the other; then wait for both, so the
  # indexer's final commit completes before the container exits.
  while kill -0 "$indexer" 2>/dev/null && kill -0 "$web" 2>/dev/null; do
    sleep 1 &
    wait $! 2>/dev/null || true
  done
  stop
  status=0
  wait "$indexer" || status=$?
  wait "$web" || true
  exit "$status"
fi

exec sandtrail "$@"
