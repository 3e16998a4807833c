"""MLflow lineage of an evolution: one run per evolution, a nested run per candidate.

The store defaults to sqlite under ``mlruns/`` (``MLFLOW_TRACKING_URI``, which
the Makefile exports) with artifacts in ``mlruns/artifacts``. A resumed
evolution reopens its own run (its id is kept in the run directory) and skips
candidates already logged, so lineage has no duplicates after a kill.

What the MLflow UI shows: the experiment opens on its runs (its kind is set to
model development, not GenAI); every run has a user, source, git commit and a
description, and, when made inside a Prefect flow run, that run's id and URL
(``flows.links``). The evolution run's per-generation series (``GENERATION_SERIES``)
are logged at steps 0..n only; its end-of-run summary never re-logs them at
step 0. A candidate run lasts as long as its sandbox evaluations did. The
registered challenger is an MLflow model (``flows.policy_model``) whose version
describes its objective per scenario, parent, origin and evolution run.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from flows import links
from flows.evolution.archive import Archive, Candidate
from flows.evolution.config import EvolutionConfig

MODEL_NAME = "autopoiesis-policy"
MODEL_DESCRIPTION = (
    "Evolved serving policies, one Python module each (an MLflow pyfunc model whose "
    "artifact data/policy.py is the source; loading it never runs the policy, predict "
    "scores it in the sandbox). Aliases: challenger (set by evolution), champion (set by "
    "promotion: what the router runs)."
)
EXPERIMENT = "autopoiesis-evolution"
ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
"""Opens the experiment on its runs in MLflow 3's UI, not on the GenAI overview."""
GENERATION_SERIES = ("archive_best_objective", "generation_mean_objective", "archive_cells",
                     "sandbox_evaluations")
"""The evolution run's metrics logged once per generation (step = generation)."""


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT / 'mlruns' / 'mlflow.db'}"


def ensure_experiment(client: Any, uri: str, name: str) -> str:
    """The experiment's id, created if missing: artifacts beside a sqlite store (not in
    the working directory), kind set so the UI opens on runs."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        artifacts = None
        if uri.startswith("sqlite:///"):
            artifacts = (Path(uri[len("sqlite:///") :]).parent / "artifacts").as_uri()
        exp_id = str(client.create_experiment(name, artifact_location=artifacts))
    else:
        exp_id = str(exp.experiment_id)
        if (exp.tags or {}).get(EXPERIMENT_KIND[0]) == EXPERIMENT_KIND[1]:
            return exp_id
    client.set_experiment_tag(exp_id, *EXPERIMENT_KIND)
    return exp_id


def config_params(cfg: EvolutionConfig) -> dict[str, str]:
    """The run's parameters: the config flattened; the LLM section only when one is used."""
    d = cfg.to_dict()
    if not cfg.llm.enabled:
        d["llm"] = {"enabled": False}
    params = flatten_params(d)
    params |= {"quick.hash": cfg.quick.digest, "full.hash": cfg.full.digest if cfg.full else ""}
    return params


def describe_config(cfg: EvolutionConfig) -> str:
    llm = ", ".join(m.name for m in cfg.llm.models) if cfg.llm.enabled else "none (Optuna only)"
    full = f"{len(cfg.full.scenarios)} scenarios" if cfg.full else "none"
    return (
        f"Evolution of serving policies: {cfg.generations} generations of {cfg.population} "
        f"candidates on {', '.join(cfg.quick.scenarios)} (scale {cfg.quick.scale}, seeds "
        f"{list(cfg.quick.seeds)}); full suite {full}; LLM {llm}."
    )


def flatten_params(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flatten_params(v, key + ".")
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
        self.experiment_id = ensure_experiment(self.client, self.uri, experiment)
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
            links.link_flow_run(self.uri, self.experiment_id, run_id, "evolution run")
            return run_id
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={
                "kind": "evolution",
                "scenario_set": cfg.quick.digest,
                "full_scenario_set": cfg.full.digest if cfg.full else "",
                **links.run_tags(links.default_source(), describe_config(cfg)),
            },
        )
        self.run_id = run.info.run_id
        self._params(self.run_id, config_params(cfg))
        links.link_flow_run(self.uri, self.experiment_id, self.run_id, "evolution run")
        return self.run_id

    @property
    def run_url(self) -> str | None:
        return links.mlflow_run_url(self.uri, self.experiment_id, self.run_id) \
            if self.run_id else None

    def _params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def _metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
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
                **dict(zip(GENERATION_SERIES, (best, mean, coverage, evals), strict=True)),
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

        # The run spans the candidate's sandbox time, ending now (its evaluations just
        # finished): the UI's duration column then says what evaluating it took.
        end_ms = int(time.time() * 1000)
        run = self.client.create_run(
            self.experiment_id,
            run_name=c.id,
            start_time=end_ms - int(c.eval_s * 1000),
            tags={
                "mlflow.parentRunId": self.run_id,
                "candidate_id": c.id,
                "origin": c.origin,
                "source_sha256": c.sha256,
                "status": "ok" if c.ok else f"rejected:{c.stage}",
                **links.run_tags(links.default_source(), describe_candidate(c)),
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
        # Objective first: MLflow's compare view charts the first metric the runs share.
        metrics: dict[str, float] = {}
        if c.quick is not None:
            metrics["objective"] = c.quick
        if c.full is not None:
            metrics["full_objective"] = c.full
        metrics["eval_wall_s"] = c.eval_s
        if c.origin == "llm":  # zero for every other origin: not a column worth charting
            metrics |= {"tokens": c.tokens, "cost_usd": c.cost_usd}
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
        self.client.set_terminated(rid, "FINISHED" if c.ok else "FAILED", end_time=end_ms)
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
        """Register ``c`` as a new version of ``autopoiesis-policy``, alias ``challenger``.

        The version is the pyfunc model logged on the candidate's run; its description
        gives the objective per scenario, origin, parents and links to both runs.
        """
        from flows import policy_model

        run_id = self._candidate_run(c) or self.run_id
        assert run_id and self.run_id
        tags = {
            "source_sha256": c.sha256,
            "objective": f"{c.quick}",
            "full_objective": f"{c.full}",
            "scenario_set": scenario_hash,
            "candidate_id": c.id,
            "origin": c.origin,
            "parent_ids": ",".join(c.parent_ids) or "-",
            "evolution_run": self.run_id,
            "evolution_run_url": self.run_url or "",
        }
        exp = self.experiment_id
        lines = [
            f"**{c.id}**, origin `{c.origin}`, generation {c.generation}; parents: "
            f"{', '.join(c.parent_ids) or 'none'}.",
            "",
            f"Full-suite objective: {c.full if c.full is not None else 'not run'}.",
            "",
            f"[candidate run]({links.mlflow_run_path(exp, run_id)}) · "
            f"[evolution run]({links.mlflow_run_path(exp, self.run_id)})",
        ]
        return policy_model.register_version(
            self.client, exp, run_id, c.source, c.id, tags=tags, alias="challenger",
            description=policy_model.describe(c.quick, c.quick_by_scenario, lines),
            model=MODEL_NAME, model_description=MODEL_DESCRIPTION,
        )

    def registered_source(self, version: str) -> str:
        """The policy source stored with a registered version (what promotion would load)."""
        from flows import policy_model

        return policy_model.read_source(self.client.get_model_version(MODEL_NAME, version).source)

    def finish(
        self,
        summary: dict[str, Any],
        archive: Archive,
        history: list[dict[str, float]],
        status: str = "FINISHED",
    ) -> None:
        assert self.run_id
        from flows.evolution import plots

        # The generation series end at their last generation: logged again at step 0
        # here, the UI's charts would jump back. Nested numbers are flattened
        # (llm.proposed, proposers.tune.evaluated).
        numbers = _numbers(summary)
        self._metrics(
            self.run_id, {k: v for k, v in numbers.items() if k not in GENERATION_SERIES}
        )
        self.client.set_tag(self.run_id, links.NOTE, describe_result(
            self.client.get_run(self.run_id).data.tags.get(links.NOTE, ""), summary))
        self.client.log_text(
            self.run_id, json.dumps(summary, indent=2, default=str), "summary.json"
        )
        self.client.log_text(self.run_id, json.dumps(archive.snapshot(), indent=1), "archive.json")
        with tempfile.TemporaryDirectory() as tmp:
            for path in plots.write_plots(Path(tmp), archive, history):
                self.client.log_artifact(self.run_id, str(path), "plots")
        self.client.set_terminated(self.run_id, status)
        links.markdown_artifact("evolution-summary", self.report(summary),
                                "What this evolution found, with links to MLflow.")

    def report(self, summary: dict[str, Any]) -> str:
        """The evolution's result as markdown (the flow run's artifact)."""
        version = summary.get("registered_version")
        ui = links.mlflow_ui_url(self.uri)
        registered = (f"[{MODEL_NAME} v{version}]({ui}/#/models/{MODEL_NAME}/versions/{version})"
                      " (alias challenger)" if version else "nothing (no candidate qualified)")
        rows = [
            ("seed champion", f"{summary.get('seed_policy')}: {summary.get('seed_objective')}"),
            ("best candidate", f"{summary.get('best_candidate')} ({summary.get('best_origin')}):"
                               f" {summary.get('best_objective')}"),
            ("improvement", summary.get("improvement")),
            ("registered", registered),
            ("candidates (rejected)",
             f"{summary.get('candidates')} ({summary.get('candidates_rejected')})"),
            ("sandbox evaluations", summary.get("sandbox_evaluations")),
            ("quick suite", ", ".join(summary.get("quick_suite") or [])),
            ("wall time s", summary.get("wall_s")),
        ]
        return "\n".join([f"## Evolution [{self.run_id}]({self.run_url})", "",
                          links.markdown_table(rows)])


def describe_candidate(c: Candidate) -> str:
    parents = ", ".join(c.parent_ids) or "none"
    score = f"quick-suite objective {c.quick:.4f}" if c.quick is not None else "not scored"
    if c.full is not None:
        score += f", full suite {c.full:.4f}"
    status = "" if c.ok else f" Rejected ({c.stage}): {c.rejection}"
    return (f"Candidate {c.id} ({c.origin}) of generation {c.generation}, island {c.island}; "
            f"parents: {parents}; {score}.{status}")


def describe_result(before: str, summary: dict[str, Any]) -> str:
    """The evolution run's description once it ended: what it set out to do, what came of it."""
    version = summary.get("registered_version")
    outcome = (f"registered version {version} as challenger" if version else
               "nothing registered: no candidate qualified (beat the champion on the quick "
               "suite, held on the full one and, when on, in the replay stage)")
    best, seed = summary.get("best_objective"), summary.get("seed_objective")
    figures = (f"best {best:.4f} vs seed {summary.get('seed_policy')} {seed:.4f}"
               if isinstance(best, float) and isinstance(seed, float) else "")
    return f"{before}\n\nResult: {figures}; {outcome}.".strip()
