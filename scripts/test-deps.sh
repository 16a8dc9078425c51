#!/usr/bin/env bash
# Installs what the test suite needs beyond cargo, idempotently and quietly: Debian's
# chromium + chromium-driver (browser tests), rsyslog's omelasticsearch (a real ES
# shipper against our _bulk), syslog-ng's elasticsearch-http destination (another),
# Prometheus's promtool (checks every /metrics), ZooKeeper (the HA suite), NATS (the ingest log), dig (Debian dnsutils: the Mesos-DNS suite),
# debootstrap (the multi-host suite makes its base image,
# since no image can be pulled here), and the Python clients the suites drive.
# Called by scripts/test.sh, so the README's one test command works on a fresh machine.
set -euo pipefail

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

missing=()
command -v chromedriver >/dev/null || missing+=(chromium chromium-driver)
[ -e /usr/lib/x86_64-linux-gnu/rsyslog/omelasticsearch.so ] || missing+=(rsyslog rsyslog-elasticsearch)
command -v promtool >/dev/null || missing+=(prometheus)
# tests/dns.rs asks the scheduler's Mesos-DNS with dig, over UDP and TCP.
command -v dig >/dev/null || missing+=(dnsutils)
# tests/zk_ha.rs runs a real ZooKeeper 3.8 (zkServer.sh start-foreground) for the HA
# suite; the package's own service is not used (the harness starts its own server).
[ -x /usr/share/zookeeper/bin/zkServer.sh ] || missing+=(zookeeperd)
# tests/shards.rs and tests/ingest_log.rs run real NATS servers with JetStream (2.9),
# the durable ingest log of issue 21; the package's own service is not used.
command -v nats-server >/dev/null || missing+=(nats-server)
if command -v docker >/dev/null; then
  command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# syslog-ng (core, its http module and the SCL that defines elasticsearch-http) cannot
# be installed beside rsyslog: both packages provide and conflict with
# system-log-daemon. Its .debs are unpacked into SYSLOG_NG_ROOT instead, with the
# libraries it links installed normally; tests/python/test_syslog_ng.py runs it from
# there as a plain foreground process with its own config.
SYSLOG_NG_ROOT="${SANDTRAIL_SYSLOG_NG_ROOT:-/opt/sandtrail-test/syslog-ng}"
if [ ! -e "$SYSLOG_NG_ROOT/usr/lib/syslog-ng/3.38/libhttp.so" ] \
   || [ ! -e "$SYSLOG_NG_ROOT/usr/share/syslog-ng/include/scl/elasticsearch/elastic-http.conf" ]; then
  echo "unpacking syslog-ng into $SYSLOG_NG_ROOT"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    libivykis0 libnet1 libwrap0 libpcre3 libjson-c5 libcurl4 libglib2.0-0 >/dev/null
  debs=$(mktemp -d)
  chmod 777 "$debs"   # apt-get download runs as _apt where it can
  (cd "$debs" && apt-get download -qq syslog-ng-core syslog-ng-mod-http syslog-ng-scl 2>/dev/null)
  $SUDO mkdir -p "$SYSLOG_NG_ROOT"
  for deb in "$debs"/*.deb; do $SUDO dpkg-deb -x "$deb" "$SYSLOG_NG_ROOT"; done
  rm -rf "$debs"
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
