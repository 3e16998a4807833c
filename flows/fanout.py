"""Candidate evaluations as Prefect tasks: the evolution engine's cascade, fanned out.

``TaskCascade`` is the engine's ``Cascade`` with one change: the evaluations it
does not find in the journal are submitted as ``evaluate_candidate`` tasks
(``.map``) on the flow's task runner -- threads by default, a Dask cluster
through ``prefect-dask`` -- instead of the in-process evaluator's thread pool.

Task runners (``task_runner(kind, ...)``): ``threads`` (Prefect's thread pool,
the default) or ``dask`` (``prefect-dask``'s ``DaskTaskRunner``): on the Dask
scheduler at ``dask_address`` (a multi-machine cluster, e.g.
``tcp://scheduler:8786``; every worker needs this package and a sandbox backend),
or, without an address, on a ``distributed.LocalCluster`` of ``dask_workers``
workers started for the run (process workers by default; ``dask_processes=False``
runs them as threads of this process). ``run_on(runner, fn)`` runs ``fn`` --
the evolution engine -- inside a flow with that runner, so its ``.map`` fan-out
lands there.

Retries: an evaluation that fails because of the sandbox (stage ``internal``,
or the sandbox could not start) raises ``InfrastructureError`` and Prefect
retries the task; a candidate's own failure (static, load, runtime, limit,
integrity) is a *result*, returned, never retried.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from flows.evolution.cascade import Cascade
from sandbox.evaluator import Evaluator
from sandbox.protocol import EvalRequest, EvalResponse


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


TASK_RUNNERS = ("threads", "dask")


def task_runner(
    kind: str = "threads",
    *,
    dask_address: str | None = None,
    dask_workers: int = 2,
    dask_processes: bool = True,
    threads: int | None = None,
) -> Any:
    """A Prefect task runner for the evaluation fan-out (see the module docstring)."""
    if kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=threads)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise RuntimeError(f"task runner 'dask' needs prefect-dask ({e})") from None
        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={
                "n_workers": max(1, int(dask_workers)),
                "threads_per_worker": 1,
                "processes": dask_processes,
                "dashboard_address": None,
            },
        )
    raise ValueError(f"unknown task runner {kind!r}; known: {', '.join(TASK_RUNNERS)}")


_CALLS: dict[str, Callable[[], Any]] = {}


@flow(name="evolve-fanout", log_prints=True)
def _fanout_flow(call: str) -> Any:
    # Prefect ships this flow with every task's context to the Dask workers, and
    # cloudpickle copies the globals its code names: so the callable (the engine, with
    # open files and locks) is looked up by a string key, never named or passed.
    import sys

    return sys.modules[__name__].__dict__["_CALLS"][call]()


def run_on(runner: Any, fn: Callable[[], Any], *, flow_name: str | None = None,
           run_name: str | None = None) -> Any:
    """``fn()`` inside a (sub)flow whose task runner is ``runner`` (its ``.map`` lands there).

    ``flow_name``/``run_name``: what the Prefect UI lists it as (``autopoiesis evolve``
    runs as flow ``evolve``, named after its run directory, beside the deployment's runs).
    """
    key = f"{id(fn):x}-{threading.get_ident():x}"
    _CALLS[key] = fn
    options: dict[str, Any] = {"task_runner": runner}
    if flow_name:
        options["name"] = flow_name
    if run_name:
        options["flow_run_name"] = run_name
    try:
        return _fanout_flow.with_options(**options)(key)
    finally:
        _CALLS.pop(key, None)


class TaskCascade(Cascade):
    """The engine's ``Cascade``, its fresh evaluations run as Prefect tasks (``.map``)."""

    def _evaluate(self, reqs: list[EvalRequest]) -> Iterator[EvalResponse]:
        futures = evaluate_candidate.map(
            [r.to_dict() for r in reqs],
            backend=unmapped(self.cfg.backend),
            parallel=unmapped(self.cfg.parallel),
            # Task runs named after the candidate (``g001-s000``, its tuning trials
            # ``g001-s000-trial2``), not the source hash: what the Prefect UI lists.
            name=[r.name for r in reqs],
        )
        for req, fut in zip(reqs, futures, strict=True):
            try:
                resp = EvalResponse.from_dict(fut.result())
            except InfrastructureError as e:  # retries spent: counted, not journaled
                resp = EvalResponse.reject(req, "internal", str(e))
            yield resp
