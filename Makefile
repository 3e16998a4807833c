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

.PHONY: demo test lint env clean

$(BIN)/autopoiesis: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

env: $(BIN)/autopoiesis

demo: env
	$(BIN)/autopoiesis bench baselines --json mlruns/baselines.json --plot mlruns/baselines.png

test: env
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: env
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .prefect .pytest_cache
