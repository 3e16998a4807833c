"""MLflow lineage of an evolution: one run per evolution, a nested run per candidate.

The store defaults to sqlite under ``mlruns/`` (``MLFLOW_TRACKING_URI``, which
the Makefile exports) with artifacts in ``mlruns/artifacts``. A resumed
evolution reopens its own run (its id is kept in the run directory) and skips
candidates already logged, so lineage has no duplicates after a kill.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from flows.evolution.archive import Archive, Candidate
from flows.evolution.config import EvolutionConfig

MODEL_NAME = "autopoiesis-policy"
EXPERIMENT = "autopoiesis-evolution"
ROOT = Path(__file__).resolve().parents[2]


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT / 'mlruns' / 'mlflow.db'}"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _flatten(v, key + ".")
        else:
            out[key] = str(v)[:500]
    return out


def _numbers(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a nested summary, keyed by dotted path (lists and text left out)."""
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _numbers(v, f"{prefix}{k}.")
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


class Tracker:
    def __init__(self, tracking_uri: str | None = None, experiment: str = EXPERIMENT) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow
        from mlflow import MlflowClient

        self.uri = tracking_uri or default_tracking_uri()
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            artifacts = None
            if self.uri.startswith("sqlite:///"):  # artifacts beside the database, not in cwd
                artifacts = (Path(self.uri[len("sqlite:///") :]).parent / "artifacts").as_uri()
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=artifacts
            )
        else:
            self.experiment_id = exp.experiment_id
        self.run_id: str | None = None
        self.logged: set[str] = set()

    # --- the evolution run ---------------------------------------------------------
    def start(self, cfg: EvolutionConfig, run_id: str | None, name: str) -> str:
        if run_id:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            for r in self.client.search_runs(
                [self.experiment_id],
                f"tags.`mlflow.parentRunId` = '{run_id}'",
                max_results=5000,
            ):
                self.logged.add(r.data.tags.get("candidate_id", ""))
            return run_id
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={
                "kind": "evolution",
                "scenario_set": cfg.quick.digest,
                "full_scenario_set": cfg.full.digest if cfg.full else "",
            },
        )
        self.run_id = run.info.run_id
        params = _flatten(cfg.to_dict())
        params |= {"quick.hash": cfg.quick.digest, "full.hash": cfg.full.digest if cfg.full else ""}
        self._params(self.run_id, params)
        return self.run_id

    def _params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def _metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if v is not None and math.isfinite(float(v))
        ]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i : i + 500])

    def generation(
        self, gen: int, best: float, mean: float, coverage: int, evals: int,
        proposals: dict[str, float] | None = None,
    ) -> None:
        """``proposals``: per proposer kind and stage, e.g. ``llm.evaluated``, this generation's."""
        assert self.run_id
        self._metrics(
            self.run_id,
            {
                "best_objective": best,
                "mean_objective": mean,
                "archive_cells": coverage,
                "evaluations": evals,
                **{f"proposals.{k}": v for k, v in (proposals or {}).items()},
            },
            step=gen,
        )

    # --- candidates ----------------------------------------------------------------
    def candidate(
        self, c: Candidate, parent_source: str | None, evaluation: dict[str, Any]
    ) -> None:
        assert self.run_id
        if c.id in self.logged:
            return
        from flows.evolution.responses import unified_diff

        run = self.client.create_run(
            self.experiment_id,
            run_name=c.id,
            tags={
                "mlflow.parentRunId": self.run_id,
                "candidate_id": c.id,
                "origin": c.origin,
                "source_sha256": c.sha256,
                "status": "ok" if c.ok else f"rejected:{c.stage}",
            },
        )
        rid = run.info.run_id
        self._params(
            rid,
            {
                "parent_ids": ",".join(c.parent_ids) or "-",
                "generation": str(c.generation),
                "island": str(c.island),
                "model": c.model or "-",
                "origin": c.origin,
                **{f"param.{k}": str(v) for k, v in c.params.items()},
            },
        )
        metrics: dict[str, float] = {"tokens": c.tokens, "cost_usd": c.cost_usd}
        if c.quick is not None:
            metrics["objective"] = c.quick
        if c.full is not None:
            metrics["full_objective"] = c.full
        metrics |= {f"quick.{k}": v for k, v in c.quick_by_scenario.items()}
        metrics |= {f"full.{k}": v for k, v in c.full_by_scenario.items()}
        metrics |= {f"descriptor.{k}": v for k, v in c.descriptors.items()}
        self._metrics(rid, metrics)
        for i, v in enumerate(c.tuning):
            self._metrics(rid, {"tuning_trial_objective": v}, step=i)
        self.client.log_text(rid, c.source, "policy/policy.py")
        if parent_source is not None:
            self.client.log_text(rid, unified_diff(parent_source, c.source), "policy/parent.diff")
        if c.prompt:
            self.client.log_text(rid, c.prompt, "llm/prompt.json")
            self.client.log_text(rid, c.response, "llm/response.txt")
        self.client.log_text(rid, json.dumps(evaluation, indent=1, default=str), "evaluation.json")
        self.client.set_terminated(rid, "FINISHED" if c.ok else "FAILED")
        self.logged.add(c.id)

    def _candidate_run(self, c: Candidate) -> str | None:
        """The nested run ``candidate`` logged for ``c`` in this evolution, if any."""
        runs = self.client.search_runs(
            [self.experiment_id],
            f"tags.candidate_id = '{c.id}' and tags.`mlflow.parentRunId` = '{self.run_id}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def confirmation(self, c: Candidate) -> None:
        """The replay stage's measurement, on the candidate's run: ``confirm.*`` metrics,
        the verdict as a tag, the whole result as ``confirmation.json``."""
        rid = self._candidate_run(c)
        if rid is None:
            return
        replay = c.confirmation.get("replay") or {}
        metrics = {f"confirm.{k}": v for k, v in (replay.get("summary") or {}).items()}
        metrics |= {f"confirm.sim.{k}": v for k, v in (replay.get("simulated") or {}).items()}
        metrics |= {f"confirm.agreement.{k}": v for k, v in (replay.get("agreement") or {}).items()}
        metrics |= {"confirm.wall_s": replay.get("wall_s"), "confirm.failures":
                    replay.get("failures"), "confirm.fallbacks":
                    sum((replay.get("fallbacks") or {}).values())}
        if c.confirmed is not None:
            metrics["confirmed_objective"] = c.confirmed
        self._metrics(rid, metrics)
        self.client.set_tag(rid, "confirm", c.confirmation.get("verdict", "")[:500])
        self.client.log_text(
            rid, json.dumps(c.confirmation, indent=1, default=str), "confirmation.json"
        )

    # --- end of run ----------------------------------------------------------------
    def register(self, c: Candidate, scenario_hash: str) -> str:
        """Register ``c`` as a new version of ``autopoiesis-policy``, alias ``challenger``."""
        from mlflow.exceptions import MlflowException

        run_id = self._candidate_run(c) or self.run_id
        assert run_id
        with contextlib.suppress(MlflowException):  # it exists after the first registration
            self.client.create_registered_model(
                MODEL_NAME,
                description=(
                    "Evolved serving policies, one Python module each; "
                    "aliases: challenger, champion."
                ),
            )
        tags = {
            "source_sha256": c.sha256,
            "objective": f"{c.quick}",
            "full_objective": f"{c.full}",
            "scenario_set": scenario_hash,
            "candidate_id": c.id,
            "evolution_run": self.run_id or "",
        }
        source = f"{self.client.get_run(run_id).info.artifact_uri}/policy"
        mv = self.client.create_model_version(MODEL_NAME, source, run_id=run_id, tags=tags)
        self.client.set_registered_model_alias(MODEL_NAME, "challenger", mv.version)
        return str(mv.version)

    def registered_source(self, version: str) -> str | None:
        """The policy source stored with a registered version (what promotion would load)."""
        mv = self.client.get_model_version(MODEL_NAME, version)
        if not mv.run_id:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_artifacts(mv.run_id, "policy/policy.py", tmp)
            return Path(path).read_text("utf-8")

    def finish(
        self,
        summary: dict[str, Any],
        archive: Archive,
        history: list[dict[str, float]],
        status: str = "FINISHED",
    ) -> None:
        assert self.run_id
        from flows.evolution import plots

        self._metrics(self.run_id, _numbers(summary))  # llm.proposed, proposers.tune.evaluated
        self.client.log_text(
            self.run_id, json.dumps(summary, indent=2, default=str), "summary.json"
        )
        self.client.log_text(self.run_id, json.dumps(archive.snapshot(), indent=1), "archive.json")
        with tempfile.TemporaryDirectory() as tmp:
            for path in plots.write_plots(Path(tmp), archive, history):
                self.client.log_artifact(self.run_id, str(path), "plots")
        self.client.set_terminated(self.run_id, status)
