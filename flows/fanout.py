"""Candidate evaluations as Prefect tasks: the evolution engine's cascade, fanned out.

``TaskCascade`` is the engine's ``Cascade`` with one change: the evaluations it
does not find in the journal are submitted as ``evaluate_candidate`` tasks
(``.map``) on the flow's task runner -- threads by default, a Dask cluster
through ``prefect-dask`` -- instead of the in-process evaluator's thread pool.

Retries: an evaluation that fails because of the sandbox (stage ``internal``,
or the sandbox could not start) raises ``InfrastructureError`` and Prefect
retries the task; a candidate's own failure (static, load, runtime, limit,
integrity) is a *result*, returned, never retried.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from prefect import task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from flows.evolution.cascade import Cascade, Outcome
from flows.evolution.config import Suite
from sandbox.evaluator import Evaluator
from sandbox.protocol import EvalRequest, EvalResponse, Limits


class InfrastructureError(RuntimeError):
    """The sandbox, not the candidate, failed: worth retrying."""


_evaluators: dict[tuple[str, int], Evaluator] = {}
_lock = threading.Lock()


def _evaluator(backend: str, parallel: int) -> Evaluator:
    # One evaluator per worker process (threads share it; each Dask worker has its own).
    with _lock:
        key = (backend, parallel)
        if key not in _evaluators:
            _evaluators[key] = Evaluator(backend, max_parallel=parallel, cache=False)
        return _evaluators[key]


def close_evaluators() -> None:
    with _lock:
        for ev in _evaluators.values():
            ev.close()
        _evaluators.clear()


def _infra_only(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except InfrastructureError:
        return True
    except Exception:
        return False
    return False


@task(
    name="evaluate-candidate",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=1),
    retry_condition_fn=_infra_only,
    task_run_name="evaluate-{name}",
)
def evaluate_candidate(
    request: dict[str, Any], backend: str = "process", parallel: int = 2, name: str = "candidate"
) -> dict[str, Any]:
    """One sandbox evaluation; returns the response as a dict (rejections included)."""
    from sandbox.backends import SandboxUnavailable

    req = EvalRequest.from_dict(request)
    try:
        resp = _evaluator(backend, parallel).submit(req).result()
    except SandboxUnavailable as e:
        raise InfrastructureError(str(e)) from e
    if resp.stage == "internal":
        raise InfrastructureError(f"sandbox failure: {resp.reason}")
    return resp.to_dict()


class TaskCascade(Cascade):
    def evaluate_many(self, sources: Sequence[str], suite: Suite) -> list[Outcome]:
        limits = Limits(wall_s=self.cfg.eval_wall_s, memory_mb=self.cfg.eval_memory_mb)
        reqs = [
            EvalRequest.build(
                src, suite.scenarios, seeds=suite.seeds, scale=suite.scale, limits=limits,
                name="candidate",
            )
            for src in sources
        ]
        out: list[Outcome | None] = [None] * len(reqs)
        todo: list[tuple[int, EvalRequest]] = []
        for i, req in enumerate(reqs):
            rec = self.journal.get(f"eval/{req.key}")
            if rec is not None:
                out[i] = self._outcome(EvalResponse.from_dict(rec["response"]), cached=True)
            else:
                todo.append((i, req))
        if todo:
            futures = evaluate_candidate.map(
                [r.to_dict() for _, r in todo],
                backend=unmapped(self.cfg.backend),
                parallel=unmapped(self.cfg.parallel),
                name=[r.source_sha256[:10] for _, r in todo],
            )
            for (i, req), fut in zip(todo, futures, strict=True):
                try:
                    resp = EvalResponse.from_dict(fut.result())
                except InfrastructureError as e:  # retries spent: count it, don't journal it
                    resp = EvalResponse.reject(req, "internal", str(e))
                self.sandbox_evaluations += 1
                self.sandbox_seconds += resp.wall_s
                if resp.stage != "internal":
                    rec = {"kind": "eval", "response": resp.to_dict()}
                    self.journal.put(f"eval/{req.key}", rec)
                out[i] = self._outcome(resp)
        return [o for o in out if o is not None]
