#!/usr/bin/env bash
# The CPU stack smoke test: build the images, bring up infra/compose/compose.yaml +
# compose.cpu.yaml (PostgreSQL, Prefect server + Docker worker, MLflow server, router,
# two simulated engines), then run one short evolve and the promote it chains, both as
# flow runs the worker executes in app containers from the Docker work pool, with
# every candidate evaluated in a sandbox container through the mounted docker socket.
#
# Asserts: every service healthy; the router serves completions through the engines;
# the evolve and promote flow runs COMPLETED; MLflow (server on PostgreSQL) holds the
# seeded champion, the registered challenger and a promotion decision, the rows really
# are in PostgreSQL; sandbox containers ran; after a promotion, the router runs the new
# champion. Prints timings; tears everything down, also on failure (logs of the
# services first). KEEP=1 leaves the stack up.
#
# Ports are ten free ones from 15400 up and the compose project is its own, so it does
# not collide with a stack on the default ports or other work on the machine. Needs:
# docker, docker compose v2 or docker-compose 1.29, the project venv (.venv, for the image
# build), the shared data (AUTOPOIESIS_SHARED, default ../shared).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
COMPOSE_DIR="$ROOT/infra/compose"
PROJECT="${SMOKE_PROJECT:-autopoiesis-smoke}"
say() { echo "[cpu-stack] $(date +%H:%M:%S) $*" >&2; }
declare -A T
t_all=$SECONDS

if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
  COMPOSE=(docker-compose)
else
  say "neither 'docker compose' nor docker-compose is installed"; exit 1
fi
dc() { (cd "$COMPOSE_DIR" && "${COMPOSE[@]}" -p "$PROJECT" -f compose.yaml -f compose.cpu.yaml "$@"); }

# --- settings: fresh secrets, offset ports, a private state folder ---------------------
secret() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }
export POSTGRES_PASSWORD="$(secret)" PREFECT_DB_PASSWORD="$(secret)" MLFLOW_DB_PASSWORD="$(secret)"
export AUTOPOIESIS_ADMIN_TOKEN="$(secret)"
export AUTOPOIESIS_POLICY="${SMOKE_CHAMPION:-round_robin}" AUTOPOIESIS_GPUS=none
export AUTOPOIESIS_IMAGE_PULL_POLICY=Never COMPOSE_PROFILES=
export AUTOPOIESIS_APP_IMAGE="${AUTOPOIESIS_APP_IMAGE:-autopoiesis-app:latest}"
export AUTOPOIESIS_SANDBOX_IMAGE="${AUTOPOIESIS_SANDBOX_IMAGE:-autopoiesis-sandbox:latest}"
export AUTOPOIESIS_POSTGRES_IMAGE="${AUTOPOIESIS_POSTGRES_IMAGE:-autopoiesis-postgres:15}"
shared="${AUTOPOIESIS_SHARED:-$ROOT/../shared}"
[[ -d "$shared/traces" ]] || { say "shared data not found at $shared (set AUTOPOIESIS_SHARED)"; exit 1; }
export AUTOPOIESIS_SHARED="$(cd "$shared" && pwd)"
# Ten consecutive free loopback ports from SMOKE_PORT_BASE (default 15400) upwards: the
# machine may run other stacks (or a stack on the default ports).
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
base="${SMOKE_PORT_BASE:-15400}"
while :; do
  busy=0
  for i in $(seq 0 9); do in_use $((base + i)) && { busy=1; break; }; done
  ((busy == 0)) && break
  base=$((base + 10))
  ((base < 30000)) || { say "no ten free ports below 30000"; exit 1; }
done
export POSTGRES_PORT=$base PREFECT_PORT=$((base + 1)) PREFECT_WORKER_HEALTH_PORT=$((base + 2))
export MLFLOW_PORT=$((base + 3)) ROUTER_PORT=$((base + 4)) ROUTER_ADMIN_PORT=$((base + 5))
export ENGINE_BASE_PORT=$((base + 6)) ENGINE_PORT_1=$((base + 7))

# The client side runs in the app image, on the host network, beside the stack.
drive() {
  docker run --rm --network host -v "$ROOT/infra/smoke:/smoke:ro" \
    -v "$AUTOPOIESIS_STATE_DIR:$AUTOPOIESIS_STATE_DIR:ro" \
    -e PREFECT_API_URL="http://127.0.0.1:$PREFECT_PORT/api" \
    -e MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT" \
    -e ADMIN_URL="http://127.0.0.1:$ROUTER_ADMIN_PORT" \
    -e AUTOPOIESIS_ADMIN_TOKEN_FILE="$AUTOPOIESIS_STATE_DIR/secrets/admin-token" \
    -e SMOKE_CHAMPION="$AUTOPOIESIS_POLICY" \
    -e SMOKE_SCENARIOS="${SMOKE_SCENARIOS:-mixed-pool}" -e SMOKE_SCALE="${SMOKE_SCALE:-0.05}" \
    --user 0:0 "$AUTOPOIESIS_APP_IMAGE" python /smoke/drive.py "$@"
}

ok=0
teardown() {
  local rc=$?
  if [[ $ok != 1 ]]; then
    say "FAILED (exit $rc): service states and logs follow"
    dc ps || true
    for svc in $(dc config --services 2>/dev/null); do
      echo "----- $svc -----" >&2
      dc logs --no-color --tail "${SMOKE_LOG_LINES:-80}" "$svc" >&2 2>/dev/null || true
    done
  fi
  if [[ "${KEEP:-0}" == 1 ]]; then
    say "KEEP=1: stack left up (project $PROJECT, state $AUTOPOIESIS_STATE_DIR)"
    return
  fi
  local t=$SECONDS
  dc down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$AUTOPOIESIS_STATE_DIR"
  say "torn down in $((SECONDS - t)) s"
}
export AUTOPOIESIS_STATE_DIR="$(mktemp -d /var/tmp/autopoiesis-smoke.XXXXXX)"
trap teardown EXIT

# --- 1. images -------------------------------------------------------------------------
t=$SECONDS
bash "$ROOT/infra/images/build.sh"
T[images]=$((SECONDS - t))
app_code="$(docker image inspect "$AUTOPOIESIS_APP_IMAGE" --format '{{ index .Config.Labels "autopoiesis.code-hash" }}')"
sbx_code="$(docker image inspect "$AUTOPOIESIS_SANDBOX_IMAGE" --format '{{ index .Config.Labels "autopoiesis.code-hash" }}')"
[[ "$app_code" == "$sbx_code" ]] || { say "app and sandbox images hold different code ($app_code vs $sbx_code)"; exit 1; }

# --- 2. the stack ----------------------------------------------------------------------
say "compose: ${COMPOSE[*]} ($("${COMPOSE[@]}" version --short 2>/dev/null || true)); ports $base-$((base + 9)); state $AUTOPOIESIS_STATE_DIR"
t=$SECONDS
dc up -d
wait_healthy() {
  local deadline=$((SECONDS + ${SMOKE_UP_TIMEOUT_S:-300})) svc cid state pending
  while :; do
    pending=()
    for svc in postgres prefect-server prefect-worker mlflow router engine-0 engine-1; do
      cid="$(dc ps -q "$svc")"
      state="$( [[ -n "$cid" ]] && docker inspect --format '{{ if .State.Health }}{{ .State.Health.Status }}{{ else }}{{ .State.Status }}{{ end }}' "$cid" || echo missing)"
      [[ "$state" == healthy ]] || pending+=("$svc=$state")
    done
    ((${#pending[@]} == 0)) && return 0
    ((SECONDS > deadline)) && { say "not healthy in time: ${pending[*]}"; return 1; }
    sleep 2
  done
}
wait_healthy
T[stack_up]=$((SECONDS - t))
say "all services healthy in ${T[stack_up]} s"
for svc in state-init sandbox prefect-init; do
  code="$(docker inspect --format '{{ .State.ExitCode }}' "$(dc ps -q "$svc")")"
  [[ "$code" == 0 ]] || { say "one-shot service $svc exited $code"; exit 1; }
done

# --- 3. traffic through the router -----------------------------------------------------
t=$SECONDS
for i in $(seq 1 10); do
  curl -fsS --max-time 30 "http://127.0.0.1:$ROUTER_PORT/v1/completions" -H 'Content-Type: application/json' \
    -d "{\"model\": \"llama-3-8b\", \"prompt\": \"smoke test request $i\", \"max_tokens\": 8}" >/dev/null
done
T[router_requests]=$((SECONDS - t))
say "10 completions through the router in ${T[router_requests]} s"

# --- 4. evolve and promote through the servers and the worker -----------------------------
t=$SECONDS
drive seed
T[seed]=$((SECONDS - t))
t_events="$(date +%s)"
t=$SECONDS
out="$(drive evolve)" || { echo "$out"; exit 1; }
echo "$out"
T[evolve_and_promote]=$((SECONDS - t))
T[evolve]="$(echo "$out" | python3 -c 'import json,sys; print(json.loads(sys.stdin.read().splitlines()[-1])["evolve"]["seconds"])')"
T[promote]="$(echo "$out" | python3 -c 'import json,sys; print(json.loads(sys.stdin.read().splitlines()[-1])["promote"]["seconds"])')"
sandboxes="$(docker events --since "$t_events" --until "$(date +%s)" --filter event=start \
  --filter label=autopoiesis.sandbox --format '{{.ID}}' | wc -l)"
say "sandbox containers started during evolve + promote: $sandboxes"
((sandboxes > 0)) || { say "no sandbox container ran"; exit 1; }

# --- 5. what the servers hold ------------------------------------------------------------
t=$SECONDS
drive check
pg() { dc exec -T postgres psql -h /var/run/postgresql -U postgres -d "$1" -tAc "$2"; }
mv_rows="$(pg "${MLFLOW_DB_NAME:-mlflow}" 'select count(*) from model_versions')"
run_rows="$(pg "${MLFLOW_DB_NAME:-mlflow}" 'select count(*) from runs')"
fr_rows="$(pg "${PREFECT_DB_NAME:-prefect}" "select count(*) from flow_run where state_type = 'COMPLETED'")"
say "PostgreSQL: mlflow model_versions=$mv_rows runs=$run_rows; prefect completed flow runs=$fr_rows"
((mv_rows >= 2 && run_rows > 0 && fr_rows >= 2)) || { say "PostgreSQL does not hold what the servers reported"; exit 1; }
T[checks]=$((SECONDS - t))

ok=1
T[total]=$((SECONDS - t_all))
say "PASSED. timings (s): images ${T[images]}, stack up ${T[stack_up]}, router requests ${T[router_requests]}, seed ${T[seed]}, evolve ${T[evolve]}, promote ${T[promote]} (evolve+promote wall ${T[evolve_and_promote]}), checks ${T[checks]}, total ${T[total]} (teardown follows)"
