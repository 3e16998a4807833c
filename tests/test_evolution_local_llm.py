"""One short evolution with the real local model (Qwen2.5-Coder-0.5B via xllamacpp).

Skipped unless `make llm` has installed the server wheel and the model wheels. No
assertion on the model's cleverness: only that a real answer went through the loop
(proposal, extraction or a recorded rejection, sandbox, MLflow) and was accounted.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from evolution_support import config
from sandbox_support import process_backend

from flows.evolution import llm_local
from flows.evolution.config import LLMConfig, ModelChoice
from flows.evolution.run import run_evolution
from flows.evolution.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]
# The Qwen parts (`make llm`), not only the server and SmolLM (`make engines`, which CI
# installs): on SmolLM2-135M this run takes longer than the test's time limit.
QWEN_PART = llm_local.MODELS["qwen"].packages[0]
WHY = llm_local.available() or (
    None if llm_local.package_dir(QWEN_PART) else "Qwen parts not installed"
)
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"local LLM not installed: {WHY}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a real model on two shared cores: minutes per answer
def test_one_short_run_with_the_local_model(tmp_path):
    process_backend().close()
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows.evolution.llm_local",
            "serve",
            "--port",
            str(port),
            "--ctx",
            "8192",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        url = f"http://127.0.0.1:{port}/v1"
        assert llm_local.wait_ready(url, 120), "local server did not come up"
        llm = LLMConfig(
            base_url=url,
            models=(ModelChoice("qwen2.5-coder-0.5b-instruct"),),
            max_tokens=384,  # an edit, not a module
            timeout_s=1200,  # two cores shared with the sandbox and whatever else runs
            max_retries=1,
        )
        cfg = config(None, generations=1, population=1, islands=1, llm=llm, tune_trials=0)
        tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
        summary = run_evolution(cfg, tmp_path / "run", tracker=tracker)
    finally:
        server.terminate()
        server.wait(30)
    assert summary["llm_tokens"] > 0 and summary["llm"]["proposed"] == 1
    runs = tracker.client.search_runs(
        [tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{summary['mlflow_run_id']}'"
    )
    llm_runs = [r for r in runs if r.data.tags.get("origin") == "llm"]
    assert len(llm_runs) == 1
    arts = {a.path for a in tracker.client.list_artifacts(llm_runs[0].info.run_id, "llm")}
    assert {"llm/prompt.json", "llm/response.txt"} <= arts
