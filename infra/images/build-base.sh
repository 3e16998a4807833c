#!/usr/bin/env bash
# The shared base image every project image is built FROM: Debian bookworm with
# python3 and python3-venv, tagged autopoiesis-base:bookworm and passed to the
# Dockerfiles as `--build-arg BASE=<tag>`. Two ways to make it, same contents:
#
#   public       infra/images/base/Dockerfile FROM the pinned public Debian image
#                (DEBIAN_IMAGE, default debian:bookworm-20250520-slim): where images
#                can be pulled.
#   debootstrap  a rootfs made by debootstrap --variant=minbase from the apt mirror
#                this machine already uses, `docker import`ed: where nothing can be
#                pulled (this project's CI). It is never tagged with the public name:
#                it is not that image.
#
# AUTOPOIESIS_BASE_SOURCE=auto (default) uses the public image when it is present or
# can be pulled, else debootstrap. Either way the base's apt sources name a Debian
# mirror, so `apt-get install` works in a build that can reach it.
#
# Usage: infra/images/build-base.sh [TAG]
#   TAG default: $AUTOPOIESIS_BASE_IMAGE or autopoiesis-base:bookworm.
# Skips everything when TAG exists (FORCE=1 rebuilds). Environment: DEBIAN_SUITE
# (bookworm), DEBIAN_MIRROR (default: from apt's sources), AUTOPOIESIS_BASE_BUILD_DIR.
set -euo pipefail

TAG="${1:-${AUTOPOIESIS_BASE_IMAGE:-autopoiesis-base:bookworm}}"
SUITE="${DEBIAN_SUITE:-bookworm}"
WORK="${AUTOPOIESIS_BASE_BUILD_DIR:-/var/tmp/autopoiesis-base-build}"
say() { echo "[base-image] $*" >&2; }

command -v docker >/dev/null || { say "docker CLI not found"; exit 1; }
docker info >/dev/null 2>&1 || { say "no Docker daemon answers (start dockerd first)"; exit 1; }

if [[ "${FORCE:-0}" != 1 ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
  say "$TAG exists"
  exit 0
fi

t0=$SECONDS
PUBLIC="${DEBIAN_IMAGE:-debian:bookworm-20250520-slim}"
source_="${AUTOPOIESIS_BASE_SOURCE:-auto}"
if [[ "$source_" == auto ]]; then
  source_=debootstrap
  if docker image inspect "$PUBLIC" >/dev/null 2>&1 || timeout 300 docker pull -q "$PUBLIC" >/dev/null 2>&1; then
    source_=public
  fi
fi
if [[ "$source_" == public ]]; then
  say "building $TAG FROM $PUBLIC (+ python3, python3-venv)"
  DOCKER_BUILDKIT=0 docker build -q --build-arg DEBIAN_IMAGE="$PUBLIC" --build-arg SOURCE="$PUBLIC" \
    -t "$TAG" "$(cd "$(dirname "$0")" && pwd)/base" >/dev/null
  say "built $TAG in $((SECONDS - t0)) s"
  exit 0
fi
say "$PUBLIC cannot be had here: debootstrap instead"
if ! command -v debootstrap >/dev/null; then
  if [[ $(id -u) == 0 ]]; then
    say "installing debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  else
    say "debootstrap is missing (apt-get install debootstrap)"; exit 1
  fi
fi
mirror="${DEBIAN_MIRROR:-}"
if [[ -z "$mirror" ]]; then
  # The mirror apt already uses (deb822 .sources first, then one-line .list files).
  mirror="$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' \
    | grep -v security | head -n1 || true)"
  [[ -z "$mirror" ]] && mirror="$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
    | awk '{print $2}' | grep -v security | head -n1 || true)"
  mirror="${mirror:-http://deb.debian.org/debian}"
fi
rootfs="$WORK/rootfs"
rm -rf "$rootfs"; mkdir -p "$WORK"
say "debootstrap $SUITE from $mirror (minbase + python3, python3-venv)"
debootstrap --variant=minbase --include=python3,python3-venv "$SUITE" "$rootfs" "$mirror" \
  >"$WORK/debootstrap.log" 2>&1 || { tail -n 30 "$WORK/debootstrap.log" >&2; exit 1; }
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
say "debootstrap took $((SECONDS - t0)) s; importing as $TAG"
tar -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL autopoiesis.base=debootstrap-$SUITE-minbase" \
  --change 'CMD ["/usr/bin/python3"]' - "$TAG" >/dev/null
rm -rf "$rootfs"
say "built $TAG in $((SECONDS - t0)) s"
