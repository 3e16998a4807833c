#!/usr/bin/env bash
# guidellm, an established external OpenAI benchmark client, against `autopoiesis serve`
# (simulated engines + the router): a fixed request rate, synthetic prompts, offline.
#
#   make bench-env            # once: guidellm, gguf and the SmolLM2 GGUF in .venv-bench
#   infra/router/guidellm.sh  # then this; results in $OUT (default mlruns/guidellm)
#
# Knobs (environment): RATE=10 DURATION=30 PROMPT_TOKENS=128 OUTPUT_TOKENS=64 PORT=18000
# OUT=mlruns/guidellm. The tokenizer guidellm sizes prompts with is rebuilt once from a
# local GGUF (infra/router/gguf_tokenizer.py); docs/guidellm.md has measured figures.
set -euo pipefail
cd "$(dirname "$0")/../.."

RATE=${RATE:-10}
DURATION=${DURATION:-30}
PROMPT_TOKENS=${PROMPT_TOKENS:-128}
OUTPUT_TOKENS=${OUTPUT_TOKENS:-64}
PORT=${PORT:-18000}
OUT=${OUT:-mlruns/guidellm}
BENCH=.venv-bench/bin

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=true
export PREFECT_HOME="$PWD/.prefect" PREFECT_SERVER_ANALYTICS_ENABLED=false
export MLFLOW_DISABLE_TELEMETRY=true

[ -x "$BENCH/guidellm" ] || { echo "no $BENCH/guidellm: run 'make bench-env' first" >&2; exit 1; }
[ -x .venv/bin/autopoiesis ] || { echo "no .venv: run 'make env' first" >&2; exit 1; }
mkdir -p "$OUT"
TOKENIZER="$OUT/tokenizer"
[ -f "$TOKENIZER/tokenizer.json" ] || "$BENCH/python" infra/router/gguf_tokenizer.py "$TOKENIZER"

# The router and its engines live until guidellm is done (then SIGTERM: a clean stop
# that flushes the router's telemetry); --duration is only a backstop.
rm -rf "$OUT/telemetry"
.venv/bin/autopoiesis serve --port "$PORT" --admin-port $((PORT + 100)) \
    --telemetry-dir "$OUT/telemetry" --duration $((DURATION + 300)) >"$OUT/serve.log" 2>&1 &
SERVE=$!
trap 'kill "$SERVE" 2>/dev/null || true; wait "$SERVE" 2>/dev/null || true' EXIT
.venv/bin/python - "$PORT" <<'EOF'
import sys, time, urllib.request
for _ in range(120):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=1):
            sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit("router did not become healthy; see serve.log")
EOF

"$BENCH/guidellm" run \
    --backend "kind=openai_http,target=http://127.0.0.1:$PORT,model=llama-3-8b" \
    --profile "kind=constant,rate=$RATE" \
    --constraint "kind=max_duration,seconds=$DURATION" \
    --tokenizer "kind=huggingface_auto,model=$TOKENIZER" \
    --data "kind=synthetic_text,prompt_tokens=$PROMPT_TOKENS,output_tokens=$OUTPUT_TOKENS" \
    --output "kind=json,path=$OUT/benchmarks.json" --output kind=console \
    --disable-progress >"$OUT/guidellm.log" 2>&1 || { tail -40 "$OUT/guidellm.log"; exit 1; }

kill "$SERVE" && wait "$SERVE" || true
trap - EXIT

# guidellm's figures (client side) next to the router's own telemetry rows.
.venv/bin/python - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
from serving.telemetry import read_telemetry

out = Path(sys.argv[1])
b = json.loads((out / "benchmarks.json").read_text())["benchmarks"][0]
m = b["metrics"]
def pct(name, q):
    return m[name]["successful"]["percentiles"][q]
totals = m["request_totals"]
print(f"guidellm: {totals['successful']} ok, {totals['errored']} errored, "
      f"{totals['incomplete']} incomplete (cut at the end) in {b['duration']:.1f} s; "
      f"{m['requests_per_second']['successful']['mean']:.2f} req/s, "
      f"{m['output_tokens_per_second']['successful']['mean']:.0f} output tok/s")
print(f"  TTFT ms p50 {pct('time_to_first_token_ms', 'p50'):.2f}  "
      f"p95 {pct('time_to_first_token_ms', 'p95'):.2f}  "
      f"p99 {pct('time_to_first_token_ms', 'p99'):.2f};  "
      f"ITL ms p50 {pct('inter_token_latency_ms', 'p50'):.2f}  "
      f"p99 {pct('inter_token_latency_ms', 'p99'):.2f};  "
      f"request latency s p50 {pct('request_latency', 'p50'):.3f}")
rows = read_telemetry(out / "telemetry")
ok = rows[rows.status == "ok"]
print(f"router telemetry: {len(rows)} rows ({len(ok)} ok); TTFT ms p50 "
      f"{ok.ttft_s.median() * 1000:.2f}  p99 {ok.ttft_s.quantile(0.99) * 1000:.2f}; "
      f"TPOT ms p50 {ok.tpot_s.median() * 1000:.2f}; "
      f"output tokens p50 {ok.output_tokens.median():.0f}")
EOF
