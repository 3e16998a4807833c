"""The evaluation fan-out on a Dask cluster (prefect-dask), as ``evolve --task-runner dask``."""

from __future__ import annotations

import threading

import pytest
from prefect_support import offline_prefect
from sandbox_support import process_backend

from serving.policy_loader import builtin_source


@pytest.fixture(scope="module", autouse=True)
def prefect_env(tmp_path_factory):
    with offline_prefect(tmp_path_factory.mktemp("prefect")):
        yield


def test_task_runner_choices():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.fanout import task_runner

    assert isinstance(task_runner(), ThreadPoolTaskRunner)
    remote = task_runner("dask", dask_address="tcp://scheduler:8786")
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://scheduler:8786"
    with pytest.raises(ValueError, match="unknown task runner"):
        task_runner("ray")


def test_fanout_on_a_local_dask_cluster_of_two_workers():
    from prefect import unmapped

    process_backend().close()  # bubblewrap usable here (or skip / fail as the suite says)

    from flows.fanout import evaluate_candidate, run_on, task_runner
    from sandbox.protocol import EvalRequest, Limits

    reqs = [
        EvalRequest.build(builtin_source(p), ["sandbox-micro"], limits=Limits(wall_s=60.0))
        for p in ("round_robin", "least_outstanding")
    ]
    # Process workers (processes=True, the default): each has its own sandbox evaluator.
    runner = task_runner("dask", dask_workers=2)
    assert runner.cluster_kwargs["n_workers"] == 2 and runner.cluster_kwargs["processes"]

    held = threading.Lock()  # the engine holds locks and open files: never shipped to workers

    def fan_out() -> list[dict]:
        assert held is not None
        futures = evaluate_candidate.map(
            [r.to_dict() for r in reqs], backend=unmapped("process"),
            parallel=unmapped(1), name=["rr", "lo"],
        )
        return [f.result() for f in futures]

    out = run_on(runner, fan_out)
    assert [o["ok"] for o in out] == [True, True], out
    assert [o["key"] for o in out] == [r.key for r in reqs]


def test_bench_fanout_compares_threads_and_dask_on_the_same_batch():
    process_backend().close()

    from flows.bench.fanout import FanoutBenchConfig, bench_fanout
    from flows.evolution.config import Suite

    cfg = FanoutBenchConfig(candidates=2, rounds=1, suite=Suite(("sandbox-micro",), (0,), 0.2))
    lines: list[str] = []
    out = bench_fanout(cfg, progress=lines.append)
    assert [r["runner"] for r in out["runs"]] == ["threads", "dask"]
    for run in out["runs"]:
        assert run["evaluations"] == run["ok"] == 2, run
        assert run["fanout_s"] > 0 and run["warmup_s"] > 0 and run["startup_s"] >= 0
    for kind in ("threads", "dask"):
        assert out["runners"][kind]["failed"] == 0
        assert out["runners"][kind]["evaluations_per_hour"] > 0
    assert out["dask_vs_threads"] == pytest.approx(
        out["runners"]["dask"]["evaluations_per_hour"]
        / out["runners"]["threads"]["evaluations_per_hour"])
    assert len(lines) == 2
