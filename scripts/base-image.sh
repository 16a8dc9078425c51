#!/usr/bin/env bash
# Makes the `debian:bookworm-slim` base image locally when it is missing, for machines
# that cannot pull images: debootstrap a minimal Debian from the apt mirror this machine
# already uses and `docker import` it under the name the Dockerfile starts FROM.
# Only Debian packages are downloaded. curl is included so that building the Sandtrail
# image needs no network at all (the Dockerfile installs curl only when it is missing).
#
# Usage: bash scripts/base-image.sh [IMAGE]   (default debian:bookworm-slim)
# Env:   SANDTRAIL_BASE_INCLUDE  more Debian packages, comma-separated (the HA suite's
#        ZooKeeper image when apt inside `docker build` cannot reach a mirror)
#        SANDTRAIL_DEBIAN_MIRROR  mirror URL (default: the first deb.debian.org-style URI
#        in /etc/apt/sources.list*, else http://deb.debian.org/debian)
set -euo pipefail
IMAGE="${1:-debian:bookworm-slim}"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "base image $IMAGE present"
  exit 0
fi

mirror="${SANDTRAIL_DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  # First main-archive URI the machine's apt uses (deb822 or one-line format).
  mirror="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
      | awk '/^URIs:/ {print $2}' | grep -v -- '-security' | head -n1 || true)"
fi
if [ -z "$mirror" ]; then
  mirror="$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | grep -vE 'security|\[' | awk '{print $2}' | head -n1 || true)"
fi
mirror="${mirror:-http://deb.debian.org/debian}"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

if ! command -v debootstrap >/dev/null 2>&1 && [ ! -x /usr/sbin/debootstrap ]; then
  echo "installing debootstrap"
  $SUDO apt-get install -y -qq debootstrap >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq debootstrap >/dev/null; }
fi
DEBOOTSTRAP="$(command -v debootstrap || echo /usr/sbin/debootstrap)"

dir="$(mktemp -d "${TMPDIR:-/tmp}/sandtrail-rootfs.XXXXXX")"
cleanup() { $SUDO rm -rf "$dir"; }
trap cleanup EXIT

echo "debootstrap bookworm from $mirror (a minute or two)"
start=$(date +%s)
if ! $SUDO "$DEBOOTSTRAP" --variant=minbase \
      --include="curl,ca-certificates${SANDTRAIL_BASE_INCLUDE:+,$SANDTRAIL_BASE_INCLUDE}" \
      bookworm "$dir" "$mirror" >"$dir.log" 2>&1; then
  tail -n 30 "$dir.log" >&2
  rm -f "$dir.log"
  exit 1
fi
rm -f "$dir.log"
# Same trims as the official slim image: no apt lists or caches in the layer.
$SUDO rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb
$SUDO tar -C "$dir" -c . | docker import \
  -c 'CMD ["bash"]' -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  - "$IMAGE" >/dev/null
echo "base image $IMAGE imported in $(( $(date +%s) - start ))s"
