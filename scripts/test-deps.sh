#!/usr/bin/env bash
# Installs what the test suite needs beyond cargo, idempotently and quietly: Debian's
# chromium + chromium-driver (browser tests), rsyslog's omelasticsearch (a real ES
# shipper against our _bulk), Prometheus's promtool (checks every /metrics), debootstrap (the multi-host suite makes its base image,
# since no image can be pulled here), and the Python clients the suites drive.
# Called by scripts/test.sh, so the README's one test command works on a fresh machine.
set -euo pipefail

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

missing=()
command -v chromedriver >/dev/null || missing+=(chromium chromium-driver)
[ -e /usr/lib/x86_64-linux-gnu/rsyslog/omelasticsearch.so ] || missing+=(rsyslog rsyslog-elasticsearch)
command -v promtool >/dev/null || missing+=(prometheus)
if command -v docker >/dev/null; then
  command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

pips=()
python3 -c 'import opensearchpy' 2>/dev/null || pips+=("opensearch-py==3.2.0")
python3 -c 'import sys, elasticsearch; sys.exit(elasticsearch.__version__[0] != 8)' 2>/dev/null || pips+=("elasticsearch==8.19.0")
python3 -c 'import marathon' 2>/dev/null || pips+=("marathon==0.13.0")
python3 -c 'import selenium' 2>/dev/null || pips+=("selenium==4.51.0")
if [ ${#pips[@]} -gt 0 ]; then
  echo "installing Python packages: ${pips[*]}"
  python3 -m pip install -q "${pips[@]}"
fi

# The Docker containerizer tests (scheduler/tests/node_docker.rs) run containers of
# the debootstrapped base image; nothing can be pulled. Idempotent: kept by tag.
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  bash "$(dirname "$0")/base-image.sh"
fi
