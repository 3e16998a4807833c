"""Benchmarks of the evaluation plane: baselines × scenarios, and the simulator itself."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sandbox.scenario_spec import ClusterSpec, Scenario
from sandbox.scenarios import SCENARIO_NAMES, build_scenario
from sandbox.simulator import PolicyFault, simulate
from sandbox.traces import load_trace
from sandbox.transforms import repeat_to, scale_rate
from serving.contract import Plan, ReplicaSpec
from serving.policy_loader import BUILTIN_POLICIES, builtin_policy

Progress = Callable[[str], None]

# Columns of the baseline table, in the order people read them.
TABLE_METRICS = ("objective", "slo_attainment", "ttft_p99_s", "tpot_p99_s", "e2e_mean_s")


def bench_baselines(
    scenarios: Sequence[str] = SCENARIO_NAMES,
    policies: Sequence[str] = BUILTIN_POLICIES,
    *,
    seeds: Sequence[int] = (0,),
    scale: float = 1.0,
    split: str = "train",
    on_result: Progress | None = None,
) -> pd.DataFrame:
    """One row per (policy, scenario): the summary metrics, mean over ``seeds``.

    A policy fault on any seed makes the row a fault (objective -inf). ``best`` marks the
    best objective of each scenario.
    """
    rows = []
    for scenario_name in scenarios:
        built = [build_scenario(scenario_name, seed=s, scale=scale, split=split) for s in seeds]
        for policy_name in policies:
            started = time.perf_counter()
            row: dict[str, object] = {"scenario": scenario_name, "policy": policy_name}
            try:
                summaries = [
                    simulate(sc, builtin_policy(policy_name), seed=s).summary()
                    for s, sc in zip(seeds, built, strict=True)
                ]
                row |= {k: float(np.mean([x[k] for x in summaries])) for k in summaries[0]}
                row["fault"] = ""
            except PolicyFault as fault:
                row |= {"objective": float("-inf"), "fault": fault.reason}
            row["wall_s"] = time.perf_counter() - started
            rows.append(row)
            if on_result is not None:
                on_result(f"{scenario_name} / {policy_name}")
    table = pd.DataFrame(rows)
    best = table.groupby("scenario")["objective"].transform("max")
    table["best"] = table["objective"] == best
    return table


def plot_baselines(table: pd.DataFrame, path: Path) -> Path:
    """Heat map of SLO attainment, the best policy of each scenario outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = table.pivot(index="policy", columns="scenario", values="slo_attainment")
    best = table.pivot(index="policy", columns="scenario", values="best").fillna(False)
    fig, ax = plt.subplots(figsize=(1.3 * len(grid.columns) + 3, 0.45 * len(grid.index) + 2))
    image = ax.imshow(grid.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(grid.columns)), grid.columns, rotation=30, ha="right")
    ax.set_yticks(range(len(grid.index)), grid.index)
    for i in range(len(grid.index)):
        for j in range(len(grid.columns)):
            value = grid.iat[i, j]
            is_best = bool(best.iat[i, j])
            ax.text(
                j,
                i,
                f"{value:.2f}" + (" ★" if is_best else ""),
                ha="center",
                va="center",
                color="black" if value > 0.6 else "white",
                fontsize=8,
                fontweight="bold" if is_best else "normal",
            )
    fig.colorbar(image, ax=ax, label="SLO attainment")
    ax.set_title("Baseline policies × scenarios (★ best objective per scenario)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def standard_scenario(
    requests: int = 24_000, replicas: int = 8, rate_scale: float = 30.0
) -> Scenario:
    """The simulator benchmark: Azure conversations on 8 H100s, near saturation.

    At 30× the trace's rate least-outstanding routing meets the SLO for about
    80 % of requests: queues form, batches are large and preemption is possible.
    Decision time is not charged so that both modes replay identical inputs.
    """
    workload = scale_rate(repeat_to(load_trace("azure-conv"), requests), rate_scale)
    plan = Plan(tuple(ReplicaSpec("H100") for _ in range(replicas)))
    cluster = ClusterSpec("llama-3-8b", {"H100": replicas}, plan, decision_time_factor=0.0)
    return Scenario("standard-conv-8xH100", "bench simulator", workload, cluster)


QUANTILE_KEYS = tuple(f"{m}_p{q}_s" for m in ("ttft", "tpot", "e2e") for q in (50, 99))


def bench_simulator(
    policy: str = "least_outstanding", seed: int = 0, repeats: int = 3
) -> dict[str, object]:
    """Both modes on the standard scenario in one run; their agreement and speed.

    The modes alternate ``repeats`` times and the medians are compared, so a
    burst of load from elsewhere on the machine cannot decide the ratio.
    """
    scenario = standard_scenario()
    fast_runs, reference_runs = [], []
    for _ in range(repeats):
        fast_runs.append(simulate(scenario, builtin_policy(policy), seed=seed, mode="fast"))
        reference_runs.append(
            simulate(scenario, builtin_policy(policy), seed=seed, mode="reference")
        )
    fast, reference = fast_runs[0], reference_runs[0]
    fs, rs = fast.summary(), reference.summary()
    deviations = {
        k: abs(fs[k] - rs[k]) / abs(rs[k]) if rs[k] else abs(fs[k]) for k in QUANTILE_KEYS
    }
    fast_wall = float(np.median([r.wall_s for r in fast_runs]))
    reference_wall = float(np.median([r.wall_s for r in reference_runs]))
    return {
        "scenario": scenario.name,
        "requests": len(scenario.workload),
        "replicas": len(scenario.cluster.plan.replicas),
        "slo_attainment": fs["slo_attainment"],
        "repeats": repeats,
        "wall_s": fast_wall,
        "requests_per_s": len(scenario.workload) / fast_wall,
        "engine_steps": fast.engine_steps,
        "reference_wall_s": reference_wall,
        "speedup_vs_reference": reference_wall / fast_wall,
        "max_rel_deviation": max(deviations.values()),
        "deviations": deviations,
        "max_request_e2e_abs_diff_s": float(np.nanmax(np.abs(fast.e2e_s - reference.e2e_s))),
        "wall_s_runs": [r.wall_s for r in fast_runs],
        "reference_wall_s_runs": [r.wall_s for r in reference_runs],
    }
