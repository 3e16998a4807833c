#!/usr/bin/env bash
# Make this machine able to run the sandbox tests for real:
#   bubblewrap (process backend), docker.io + a running dockerd (Docker backend),
#   debootstrap + the sandbox image (built locally: nothing is pulled).
# Needs root for the installs and dockerd; without root it only reports what is
# missing (the tests then skip, unless AUTOPOIESIS_REQUIRE_* make them fail).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
say() { echo "[sandbox-ci] $*" >&2; }
t0=$SECONDS

missing=()
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
# The CPU stack smoke test (infra/smoke/cpu-stack.sh) wants Compose: v2 or Debian's 1.29.
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null || missing+=(docker-compose)
if ((${#missing[@]})); then
  if [[ $(id -u) != 0 ]]; then
    say "not root: cannot install ${missing[*]}; sandbox tests that need them will skip"
    exit 0
  fi
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  say "installed in $((SECONDS - t0)) s"
fi

if ! docker info >/dev/null 2>&1; then
  if [[ $(id -u) != 0 ]]; then
    say "no Docker daemon answers and not root: Docker sandbox tests will skip"
    exit 0
  fi
  log=/var/tmp/autopoiesis-dockerd.log
  say "starting dockerd --iptables=false --bridge=none (log: $log)"
  setsid nohup dockerd --iptables=false --bridge=none </dev/null >"$log" 2>&1 &
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  if ! docker info >/dev/null 2>&1; then
    say "dockerd did not come up within 60 s:"; tail -n 30 "$log" >&2; exit 1
  fi
  say "dockerd is up"
fi

t1=$SECONDS
bash "$ROOT/infra/sandbox/build-local-base.sh"
say "sandbox image ready in $((SECONDS - t1)) s; setup took $((SECONDS - t0)) s in all"
