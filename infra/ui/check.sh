#!/usr/bin/env bash
# What Prefect and MLflow show a user (issue 16): real `prefect server start` and `mlflow
# server` on loopback, `autopoiesis deploy`, a pull, an evolve deployment run (with the
# promote it chains) and a CLI evolve, checked through both REST APIs and in headless
# Chromium. About 5 minutes on a busy 2-core machine. Installs Debian's chromium and
# chromedriver when missing (selenium drives them; it downloads no browser).
#   bash infra/ui/check.sh                # the check (what .ci/run runs)
#   bash infra/ui/check.sh --shots docs   # and refresh the README's screenshots
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true
export HF_HUB_OFFLINE=1 AUTOPOIESIS_SHARED="${AUTOPOIESIS_SHARED:-$(cd .. && pwd)/shared}"
exec .venv/bin/python infra/ui/check.py "$@"
