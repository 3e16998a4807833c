#!/usr/bin/env bash
# Build the sandbox image on a machine that cannot pull images:
#   1. the shared local base (infra/images/build-base.sh: a Debian rootfs with python3
#      made by debootstrap from the apt mirror this machine already uses, `docker
#      import`ed as the base tag);
#   2. the project image built FROM that base (infra/sandbox/Dockerfile.local) with
#      the harness's wheels (downloaded on the host, installed offline inside) and
#      the serving/ + sandbox/ code.
# Skips everything when the image exists with the same build hash (code +
# requirements + Dockerfile); skips step 1 when the base tag exists.
#
# Environment: AUTOPOIESIS_SANDBOX_IMAGE (default autopoiesis-sandbox:latest),
# AUTOPOIESIS_SANDBOX_BASE (default $AUTOPOIESIS_BASE_IMAGE or autopoiesis-base:bookworm),
# PYTHON (default .venv/bin/python), AUTOPOIESIS_SANDBOX_SRC (the folder holding serving/ and
# sandbox/, default the repository), DEBIAN_MIRROR (default: from apt's sources),
# FORCE=1 to rebuild both.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$ROOT/infra/sandbox"
IMAGE="${AUTOPOIESIS_SANDBOX_IMAGE:-autopoiesis-sandbox:latest}"
BASE="${AUTOPOIESIS_SANDBOX_BASE:-${AUTOPOIESIS_BASE_IMAGE:-autopoiesis-base:bookworm}}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
SUITE="${DEBIAN_SUITE:-bookworm}"
WORK="${AUTOPOIESIS_SANDBOX_BUILD_DIR:-/var/tmp/autopoiesis-sandbox-build}"
export DOCKER_BUILDKIT=0  # the classic builder: no buildx plugin needed, --network none works

say() { echo "[sandbox-image] $*" >&2; }
t0=$SECONDS

command -v docker >/dev/null || { say "docker CLI not found"; exit 1; }
docker info >/dev/null 2>&1 || { say "no Docker daemon answers (start dockerd first)"; exit 1; }

# The code to bake in: the working tree, or a snapshot of it (infra/images/build.sh
# builds the sandbox and app images from one snapshot so that both hold the same code).
SRC="${AUTOPOIESIS_SANDBOX_SRC:-$ROOT}"
code_hash="$(cd "$ROOT" && "$PY" -c 'import sys; from pathlib import Path
from sandbox.backends import code_hash; print(code_hash(Path(sys.argv[1])))' "$SRC")"
build_hash="$( (echo "$code_hash"; cat "$HERE/requirements.txt" "$HERE/Dockerfile.local" "$0"; echo "$SUITE") \
  | sha256sum | cut -c1-32)"

have="$(docker image inspect "$IMAGE" --format '{{ index .Config.Labels "autopoiesis.build-hash" }}' 2>/dev/null || true)"
if [[ "${FORCE:-0}" != 1 && "$have" == "$build_hash" ]]; then
  say "$IMAGE is up to date (build hash $build_hash)"
  exit 0
fi

# --- 1. the base: debootstrap rootfs -> docker import (shared with the other images) -------
FORCE="${FORCE_BASE:-${FORCE:-0}}" bash "$ROOT/infra/images/build-base.sh" "$BASE"

# --- 2. the project image -------------------------------------------------------------
ctx="$WORK/context"
rm -rf "$ctx"; mkdir -p "$ctx/wheels" "$ctx/app"
cp "$HERE/Dockerfile.local" "$HERE/requirements.txt" "$ctx/"
# Pin to what the project's venv runs, so the sandbox computes what the host would.
pins="$("$PY" - "$HERE/requirements.txt" <<'EOF'
import sys
from importlib import metadata
for line in open(sys.argv[1]):
    name = line.split("#")[0].strip()
    if name:
        try:
            print(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            print(name)
EOF
)"
echo "$pins" > "$ctx/requirements.txt"
say "wheels: $(echo $pins)"
# shellcheck disable=SC2086
"$PY" -m pip download --quiet --only-binary=:all: --python-version 3.11 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$ctx/wheels" $pins
tar -C "$SRC" --exclude=__pycache__ --exclude='*.pyc' -cf - serving sandbox | tar -C "$ctx/app" -xf -

say "building $IMAGE FROM $BASE (offline: --network none)"
docker build --network none -q \
  --build-arg BASE="$BASE" --build-arg CODE_HASH="$code_hash" --build-arg BUILD_HASH="$build_hash" \
  -t "$IMAGE" -f "$ctx/Dockerfile.local" "$ctx" >/dev/null
rm -rf "$ctx"
docker image prune -f --filter "label=autopoiesis.code-hash" >/dev/null 2>&1 || true  # the replaced build
say "built $IMAGE in $((SECONDS - t0)) s ($(docker image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}'))"
