"""A policy module as an MLflow model: what every registry version of ``autopoiesis-policy`` is.

The model is a ``python_function`` (pyfunc) model whose data is the policy's
source, ``policy.py``, and whose loader is this module (``loader_module``), so
the MLflow UI shows a real model (MLmodel, signature, the source as an
artifact) and ``mlflow.pyfunc.load_model("models:/autopoiesis-policy@champion")``
works.

Loading never executes the policy. Policies are untrusted code (LLM-written),
and loading a model is something people do casually in the control plane: so
``_load_pyfunc`` only reads the source text and checks its sha256, and nothing
executable is taken from the artifact store (no pickle, no model-from-code: the
loader is this installed module, named in MLmodel). ``predict`` evaluates the
policy *in the sandbox* (bubblewrap or Docker, ``sandbox.evaluator``) on the
scenarios it is given and returns their scores; routing live requests is the
router's job, which loads a version hash-checked into its guarded runtime
(``flows.registry.PolicyRegistry.fetch``), never through this model.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from pathlib import Path
from typing import Any

from sandbox.protocol import sha256_text

SOURCE_FILE = "policy.py"
MODEL_NAME_IN_RUN = "policy"
OUTPUT_COLUMNS = ("objective", "slo_attainment", "ttft_p99_s", "e2e_p99_s", "requests")


class PolicyModelError(RuntimeError):
    """A model whose source is missing or does not hash to what was recorded."""


def signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema(
        [
            ColSpec("string", "scenario"),
            ColSpec("long", "seed", required=False),
            ColSpec("double", "scale", required=False),
        ]
    )
    outputs = Schema(
        [
            ColSpec("string", "scenario"),
            ColSpec("long", "seed"),
            *(ColSpec("double", c) for c in OUTPUT_COLUMNS),
            ColSpec("string", "rejection", required=False),
        ]
    )
    params = ParamSchema(
        [ParamSpec("backend", "string", "auto"), ParamSpec("wall_s", "double", 120.0)]
    )
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def log_policy_model(
    client: Any, experiment_id: str, run_id: str, source: str, name: str, tags: dict[str, str]
) -> str:
    """Log ``source`` as a pyfunc model output of run ``run_id``; returns its model id.

    The logged model is created here, in the run's experiment (``Model.log`` alone would
    file it under the fluent API's active experiment), then filled and marked ready.
    ``Model.log`` writes through the global tracking URI, which ``client``'s owner set.
    """
    import mlflow
    from mlflow.entities import LoggedModelStatus
    from mlflow.models import Model

    lm = client.create_logged_model(
        experiment_id=experiment_id,
        name=MODEL_NAME_IN_RUN,
        source_run_id=run_id,
        tags=tags,
        model_type="policy",
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / SOURCE_FILE
        path.write_text(source, "utf-8")
        Model.log(
            artifact_path=None,
            name=MODEL_NAME_IN_RUN,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=lm.model_id,
            loader_module=__name__,
            data_path=str(path),
            signature=signature(),
            # Written, not inferred: inference would load the model in a subprocess.
            pip_requirements=["autopoiesis"],
            metadata={"policy_name": name, "source_sha256": sha256_text(source)},
        )
    client.finalize_logged_model(lm.model_id, LoggedModelStatus.READY)
    return str(lm.model_id)


def register_version(
    client: Any,
    experiment_id: str,
    run_id: str,
    source: str,
    name: str,
    *,
    tags: dict[str, str],
    description: str,
    model: str,
    model_description: str,
    alias: str | None = None,
) -> str:
    """``source`` as a new version of registered model ``model``: the pyfunc model logged
    on ``run_id``, with ``tags``, a markdown ``description`` and optionally ``alias``."""
    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):  # it exists after the first registration
        client.create_registered_model(model, description=model_description)
    model_id = log_policy_model(
        client,
        experiment_id,
        run_id,
        source,
        name,
        {"candidate": name, "source_sha256": tags["source_sha256"]},
    )
    mv = client.create_model_version(
        model,
        f"models:/{model_id}",
        run_id=run_id,
        tags=tags,
        description=description,
        model_id=model_id,
    )
    if alias:
        client.set_registered_model_alias(model, alias, mv.version)
    return str(mv.version)


def read_source(model_uri: str) -> str:
    """The policy source a model (``models:/…`` or a run's model folder) holds."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        # A pyfunc model keeps its data under data/; versions registered before policies
        # were models point at a run folder holding the file itself.
        for path in (Path(local) / "data" / SOURCE_FILE, Path(local) / SOURCE_FILE):
            if path.exists():
                return path.read_text("utf-8")
        raise PolicyModelError(f"{model_uri}: no {SOURCE_FILE} in the model")


class PolicyPyfunc:
    """What ``mlflow.pyfunc.load_model`` returns for a policy: its source, not its code."""

    def __init__(self, source: str, name: str = "policy") -> None:
        self.source = source
        self.sha256 = sha256_text(source)
        self.name = name

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        """Score the policy in the sandbox on each row's scenario (seed 0, scale 1 default)."""
        import pandas as pd

        from sandbox.evaluator import Evaluator
        from sandbox.protocol import EvalRequest, Limits

        frame = pd.DataFrame(model_input)
        if "scenario" not in frame:
            raise ValueError("policy model input needs a 'scenario' column")
        params = params or {}
        limits = Limits(wall_s=float(params.get("wall_s", 120.0)))
        reqs = [
            EvalRequest.build(
                self.source,
                [str(row["scenario"])],
                seeds=[int(_get(row, "seed", 0))],
                scale=float(_get(row, "scale", 1.0)),
                limits=limits,
                name=self.name,
            )
            for _, row in frame.iterrows()
        ]
        with Evaluator(str(params.get("backend", "auto")), max_parallel=2) as ev:
            responses = ev.evaluate_many(reqs)
        return pd.DataFrame([_row(req, resp) for req, resp in zip(reqs, responses, strict=True)])


def _get(row: Any, key: str, default: float) -> float:
    v = row.get(key, default)
    return default if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _row(req: Any, resp: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"scenario": req.scenarios[0], "seed": req.seeds[0]}
    summary = resp.results[0].summary if resp.ok and resp.results else {}
    for col in OUTPUT_COLUMNS:
        out[col] = float(summary.get(col, math.nan))
    out["rejection"] = None if resp.ok else f"{resp.stage}: {resp.reason}"
    return out


def _load_pyfunc(data_path: str) -> PolicyPyfunc:
    """MLflow's pyfunc loader hook: read (never run) the policy source, check its hash."""
    path = Path(data_path)
    if path.is_dir():
        path = path / SOURCE_FILE
    source = path.read_text("utf-8")
    mlmodel = path.parent.parent / "MLmodel"  # the data file is <model>/data/policy.py
    if mlmodel.exists():
        import yaml

        meta = (yaml.safe_load(mlmodel.read_text()) or {}).get("metadata") or {}
        want = meta.get("source_sha256")
        if want and want != sha256_text(source):
            raise PolicyModelError(
                f"{path}: source hashes to {sha256_text(source)[:12]}, MLmodel says {want[:12]}"
            )
        return PolicyPyfunc(source, str(meta.get("policy_name", "policy")))
    return PolicyPyfunc(source)


def describe(objective: float | None, by_scenario: dict[str, float], lines: list[str]) -> str:
    """A registry version's description (markdown): objective per scenario, then ``lines``."""
    rows = [f"**objective** {objective:.4f}" if objective is not None else "**objective** -", ""]
    if by_scenario:
        rows += ["| scenario | objective |", "|---|---:|"]
        rows += [f"| {k} | {v:.4f} |" for k, v in sorted(by_scenario.items())]
        rows.append("")
    return "\n".join(rows + lines)
