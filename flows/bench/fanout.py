"""``autopoiesis bench fanout``: evaluations per hour on Prefect's threads vs a Dask cluster.

The same batch of sandboxed candidate evaluations (the builtin baselines, each made a
distinct source so nothing is answered from a cache) is fanned out through
``flows.fanout.evaluate_candidate`` -- the task the evolution engine maps -- once on
the thread-pool task runner and once on a ``distributed.LocalCluster`` of ``workers``
process workers, alternating for ``rounds`` rounds in one run. Both give the batch the
same concurrency (``workers`` sandboxes at a time), so the figure compares what the
engine itself costs: task submission, result shipping, per-worker sandbox warm-up.

Each run first maps one warm-up evaluation per worker (imports, the sandbox's first
start), timed as ``warmup_s``; ``evaluations_per_hour`` is then measured over the batch
alone -- the steady state an evolution of many generations runs at, since its cluster
lives for the whole run. ``startup_s`` is the rest of the flow's wall time (the Dask
cluster's start and stop, the flow's own bookkeeping), also paid once per evolution.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from flows.evolution.config import QUICK_SUITE, Suite
from flows.fanout import close_evaluators, evaluate_candidate, run_on, task_runner
from sandbox.protocol import EvalRequest, Limits
from serving.policy_loader import BUILTIN_POLICIES, builtin_source

RUNNERS = ("threads", "dask")


@dataclass(frozen=True)
class FanoutBenchConfig:
    candidates: int = 12
    """Evaluations per runner per round."""
    workers: int = 2
    """Dask workers, and the thread pool's width: the same concurrency for both."""
    rounds: int = 2
    suite: Suite = QUICK_SUITE
    backend: str = "process"
    wall_s: float = 120.0


def _requests(cfg: FanoutBenchConfig, tag: str, n: int) -> list[EvalRequest]:
    limits = Limits(wall_s=cfg.wall_s)
    return [
        EvalRequest.build(
            # A comment makes each source (and so each reproducibility key) unique.
            builtin_source(BUILTIN_POLICIES[i % len(BUILTIN_POLICIES)]) + f"\n# {tag}-{i}\n",
            cfg.suite.scenarios, seeds=cfg.suite.seeds, scale=cfg.suite.scale,
            limits=limits, name=f"{tag}-{i}",
        )
        for i in range(n)
    ]


def _one_run(cfg: FanoutBenchConfig, kind: str, tag: str) -> dict[str, Any]:
    from prefect import unmapped

    warm, reqs = _requests(cfg, f"{tag}-warm", cfg.workers), _requests(cfg, tag, cfg.candidates)
    # Threads share one evaluator of `workers` sandboxes; each Dask worker has its own.
    parallel = cfg.workers if kind == "threads" else 1
    runner = task_runner(kind, dask_workers=cfg.workers, threads=cfg.workers)
    timed: dict[str, float] = {}

    def evaluate(batch: list[EvalRequest]) -> list[dict[str, Any]]:
        futures = evaluate_candidate.map(
            [r.to_dict() for r in batch], backend=unmapped(cfg.backend),
            parallel=unmapped(parallel), name=[r.name for r in batch],
        )
        return [f.result() for f in futures]

    def fan_out() -> list[dict[str, Any]]:
        started = time.perf_counter()
        evaluate(warm)
        timed["warmup_s"] = time.perf_counter() - started
        started = time.perf_counter()
        out = evaluate(reqs)
        timed["fanout_s"] = time.perf_counter() - started
        return out

    started = time.perf_counter()
    try:
        responses = run_on(runner, fan_out)
    finally:
        close_evaluators()  # the next run starts its sandboxes cold, like this one did
    total_s = time.perf_counter() - started
    ok = sum(1 for r in responses if r["ok"])
    return {
        "runner": kind,
        "evaluations": len(responses),
        "ok": ok,
        "fanout_s": timed["fanout_s"],
        "warmup_s": timed["warmup_s"],
        "startup_s": total_s - timed["fanout_s"] - timed["warmup_s"],
        "evaluations_per_hour": len(responses) / timed["fanout_s"] * 3600,
    }


def bench_fanout(
    cfg: FanoutBenchConfig = FanoutBenchConfig(),
    runners: Sequence[str] = RUNNERS,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Alternating runs of each runner on the same batch size; medians per runner."""
    # A first flow starts Prefect's temporary local API (when no server is configured):
    # paid once here, not by whichever runner happens to go first.
    run_on(task_runner("threads"), lambda: None)
    runs = []
    for rnd in range(cfg.rounds):
        for kind in runners:
            run = _one_run(cfg, kind, tag=f"r{rnd}-{kind}")
            runs.append(run)
            if progress:
                progress(f"round {rnd + 1}/{cfg.rounds} {kind}: "
                         f"{run['evaluations_per_hour']:.0f} evaluations/hour")
    summary: dict[str, Any] = {}
    for kind in runners:
        mine = [r for r in runs if r["runner"] == kind]
        summary[kind] = {
            "evaluations_per_hour": statistics.median(r["evaluations_per_hour"] for r in mine),
            "warmup_s": statistics.median(r["warmup_s"] for r in mine),
            "startup_s": statistics.median(r["startup_s"] for r in mine),
            "failed": sum(r["evaluations"] - r["ok"] for r in mine),
        }
    result: dict[str, Any] = {
        "workers": cfg.workers,
        "candidates": cfg.candidates,
        "rounds": cfg.rounds,
        "suite": list(cfg.suite.scenarios),
        "scale": cfg.suite.scale,
        "backend": cfg.backend,
        "runners": summary,
        "runs": runs,
    }
    if "threads" in summary and "dask" in summary:
        result["dask_vs_threads"] = (
            summary["dask"]["evaluations_per_hour"] / summary["threads"]["evaluations_per_hour"]
        )
    return result
