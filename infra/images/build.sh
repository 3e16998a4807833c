#!/usr/bin/env bash
# Build every image of the deployment, each skipped when its build hash is unchanged:
#
#   autopoiesis-base:bookworm   infra/images/build-base.sh (pinned public Debian + python3,
#                               or the same made by debootstrap where nothing can be pulled)
#   autopoiesis-sandbox:latest  infra/sandbox/build-local-base.sh, FROM the base
#   autopoiesis-app:latest      infra/images/app/Dockerfile, FROM the base: the whole project
#                               + Prefect, prefect-docker, MLflow, docker SDK, PG drivers
#   autopoiesis-postgres:15     infra/images/postgres/Dockerfile, FROM the base
#
# Python packages never come from inside a build: they are built into wheels on this
# host (`pip wheel`, pinned to the versions the project's venv runs, so the images
# compute what the host does) and installed offline (`--no-index`) in a build that
# has no network. Only the PostgreSQL image installs Debian packages, from the
# base's apt mirror (`--network host`: the daemon here has no bridge network).
#
# Usage: infra/images/build.sh [base|sandbox|app|postgres ...]   (default: all)
# Environment: AUTOPOIESIS_BASE_IMAGE, AUTOPOIESIS_SANDBOX_IMAGE, AUTOPOIESIS_APP_IMAGE,
# AUTOPOIESIS_POSTGRES_IMAGE (tags), PYTHON (default .venv/bin/python), FORCE=1.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$ROOT/infra/images"
BASE="${AUTOPOIESIS_BASE_IMAGE:-autopoiesis-base:bookworm}"
SANDBOX="${AUTOPOIESIS_SANDBOX_IMAGE:-autopoiesis-sandbox:latest}"
APP="${AUTOPOIESIS_APP_IMAGE:-autopoiesis-app:latest}"
PG="${AUTOPOIESIS_POSTGRES_IMAGE:-autopoiesis-postgres:15}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
WORK="${AUTOPOIESIS_IMAGES_BUILD_DIR:-/var/tmp/autopoiesis-images-build}"
export DOCKER_BUILDKIT=0  # the classic builder: no buildx plugin needed, --network none works

say() { echo "[images] $*" >&2; }
have_hash() { docker image inspect "$1" --format '{{ index .Config.Labels "autopoiesis.build-hash" }}' 2>/dev/null || true; }
base_id() { docker image inspect "$BASE" --format '{{.Id}}'; }
# Hash of files (contents and paths), stable across checkouts and mtimes.
files_hash() { (cd "$SRC" && find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 \
  | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-32; }

build_base() {
  local t=$SECONDS
  bash "$HERE/build-base.sh" "$BASE"
  say "base: $((SECONDS - t)) s"
}

build_sandbox() {
  local t=$SECONDS
  AUTOPOIESIS_SANDBOX_BASE="$BASE" AUTOPOIESIS_SANDBOX_IMAGE="$SANDBOX" PYTHON="$PY" \
    AUTOPOIESIS_SANDBOX_SRC="$SRC" FORCE_BASE=0 \
    bash "$ROOT/infra/sandbox/build-local-base.sh"
  say "sandbox: $((SECONDS - t)) s"
}

# The app image's pins: the project's dependencies and the extras, each at the version the
# venv runs (the extras at their pinned version); everything else constrained by the venv.
app_pins() {
  "$PY" - "$ROOT/pyproject.toml" "$HERE/app/requirements-extra.txt" <<'PYEOF'
import re
import sys
import tomllib
from importlib import metadata

deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
extra = [s.split("#")[0].strip() for s in open(sys.argv[2])]
for d in [*deps, *(e for e in extra if e)]:
    name = re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0]
    marker = d.split(";", 1)[1].strip() if ";" in d else ""
    if "==" in d.split(";")[0]:
        pin = d.split(";")[0].strip()
    else:
        try:
            pin = f"{name}=={metadata.version(name)}"
        except metadata.PackageNotFoundError:
            sys.exit(f"{name} is not installed in the project venv (make env)")
    print(pin + (f"; {marker}" if marker else ""))
PYEOF
}

APP_FILES=(flows serving sandbox prefect.yaml pyproject.toml infra/prefect)

build_app() {
  local t=$SECONDS pins code_hash build_hash ctx
  pins="$(app_pins)"
  code_hash="$(cd "$ROOT" && "$PY" -c 'import sys; from pathlib import Path
from sandbox.backends import code_hash; print(code_hash(Path(sys.argv[1])))' "$SRC")"
  build_hash="$( (echo "$pins"; base_id; files_hash "${APP_FILES[@]}"; cat "$HERE/app/Dockerfile" "$0") \
    | sha256sum | cut -c1-32)"
  if [[ "${FORCE:-0}" != 1 && "$(have_hash "$APP")" == "$build_hash" ]]; then
    say "$APP is up to date (build hash $build_hash)"; return
  fi
  ctx="$WORK/app"
  rm -rf "$ctx"; mkdir -p "$ctx/app" "$ctx/wheels"
  echo "$pins" > "$ctx/requirements.txt"
  "$PY" -m pip freeze --exclude-editable | grep -v '^#' > "$WORK/constraints.txt"
  say "wheels for $APP ($(echo "$pins" | wc -l) pinned requirements + their dependencies)"
  local t1=$SECONDS
  # pip wheel: wheels from the index (or its cache), sdist-only packages built here.
  "$PY" -m pip wheel --quiet --disable-pip-version-check -r "$ctx/requirements.txt" \
    -c "$WORK/constraints.txt" -w "$ctx/wheels" 2> >(grep -v '^WARNING: Location' >&2)
  say "wheels: $(ls "$ctx/wheels" | wc -l) files, $(du -sh "$ctx/wheels" | cut -f1) in $((SECONDS - t1)) s"
  cp -a "$SRC/." "$ctx/app/"
  cp "$HERE/app/Dockerfile" "$ctx/Dockerfile"
  say "building $APP FROM $BASE (offline: --network none)"
  docker build --network none -q --build-arg BASE="$BASE" --build-arg CODE_HASH="$code_hash" \
    --build-arg BUILD_HASH="$build_hash" -t "$APP" "$ctx" >/dev/null
  rm -rf "$ctx"
  say "app: built $APP in $((SECONDS - t)) s ($(docker image inspect "$APP" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}'))"
}

build_postgres() {
  local t=$SECONDS build_hash
  build_hash="$( (base_id; cat "$HERE/postgres/Dockerfile" "$HERE/postgres/entrypoint.sh" "$0") \
    | sha256sum | cut -c1-32)"
  if [[ "${FORCE:-0}" != 1 && "$(have_hash "$PG")" == "$build_hash" ]]; then
    say "$PG is up to date (build hash $build_hash)"; return
  fi
  say "building $PG FROM $BASE (Debian's postgresql-15; --network host for the apt mirror)"
  docker build --network host -q --build-arg BASE="$BASE" --build-arg BUILD_HASH="$build_hash" \
    -t "$PG" "$HERE/postgres" >/dev/null
  say "postgres: built $PG in $((SECONDS - t)) s ($(docker image inspect "$PG" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}'))"
}

command -v docker >/dev/null || { say "docker CLI not found"; exit 1; }
docker info >/dev/null 2>&1 || { say "no Docker daemon answers (start dockerd first)"; exit 1; }
mkdir -p "$WORK"
t0=$SECONDS
# One snapshot of the code for every image: the sandbox and app images must hold the same
# serving/ and sandbox/ (their code-hash labels are compared by the Docker sandbox backend),
# even while the working tree changes under the build.
SRC="$WORK/src"
rm -rf "$SRC"; mkdir -p "$SRC"
(cd "$ROOT" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - "${APP_FILES[@]}") | tar -C "$SRC" -xf -
targets=("$@")
((${#targets[@]})) || targets=(base sandbox app postgres)
# Everything is built FROM the base: make sure it exists first.
[[ " ${targets[*]} " == *" base "* ]] || docker image inspect "$BASE" >/dev/null 2>&1 || build_base
for target in "${targets[@]}"; do
  case "$target" in
    base) build_base ;;
    sandbox) build_sandbox ;;
    app) build_app ;;
    postgres) build_postgres ;;
    *) say "unknown image '$target' (base, sandbox, app, postgres)"; exit 2 ;;
  esac
done
docker image prune -f --filter "label=autopoiesis.build-hash" >/dev/null 2>&1 || true  # replaced builds
rm -rf "$SRC"
say "images ready in $((SECONDS - t0)) s"
