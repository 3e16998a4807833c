"""``autopoiesis bench evolution``: does evolution beat the best baseline on traffic it never saw?

Per scenario, one evolution runs on that scenario's **train** stretch (as a deployment
evolves on its own traffic), within a wall-clock budget; its best candidate is then
measured on the scenario's **test** stretches (``sandbox.splits``: disjoint by
construction) against every baseline, and the reference is the best baseline there,
never the seed. Reported per scenario: the champion's objective, the best baseline's
and its name, their ratio, the same for SLO capacity (when the run's objective is not
capacity already), and the headroom (the clairvoyant reference, where it is computed);
over scenarios: the mean and minimum ratio, the proposers' funnel (the LLM's included)
and evaluations per hour. A scenario where the champion loses stays in the table.

    >>> out = bench_evolution(EvolutionBench(scenarios=("prefix-heavy",), budget_wall_s=300))
    >>> out["mean_ratio"], out["scenarios"][0]["best_baseline_name"]
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from flows.evolution.config import Budget, EvolutionConfig, LLMConfig, Suite
from flows.evolution.loop import Progress as LoopProgress
from flows.evolution.proposals import STAGES
from flows.evolution.run import open_evolution
from sandbox.compare import Comparison, Setting, compare_to_baselines, sandboxed
from sandbox.objectives import Objective
from sandbox.protocol import Limits
from sandbox.scenarios import SCENARIO_NAMES

Progress = Callable[[str], None]


@dataclass(frozen=True)
class EvolutionBench:
    scenarios: tuple[str, ...] = SCENARIO_NAMES
    objective: Objective = field(default_factory=lambda: Objective("capacity"))
    budget_wall_s: float = 300.0
    """Per scenario: the evolution stops at the first generation boundary past this."""
    generations: int = 50
    """An upper bound: the wall budget ends a run first."""
    population: int = 2
    tune_trials: int = 8
    structure_share: float = 0.75
    train_seeds: tuple[int, ...] = (0,)
    test_seeds: tuple[int, ...] = (0, 1, 2)
    seed: int = 0
    parallel: int = 2
    backend: str = "process"
    llm: LLMConfig = field(default_factory=LLMConfig)
    headroom: bool = False
    """Also compute the clairvoyant reference of each scenario (in-process, minutes each)."""
    run_root: str | None = None
    """Where the runs' folders go (a temporary folder when None)."""

    def evolution(self, scenario: str) -> EvolutionConfig:
        return EvolutionConfig(
            quick=Suite((scenario,), self.train_seeds, 1.0, split="train"),
            full=None,
            generations=self.generations,
            population=self.population,
            tune_trials=self.tune_trials,
            structure_share=self.structure_share,
            seed=self.seed,
            parallel=self.parallel,
            backend=self.backend,
            llm=self.llm,
            objective=self.objective,
            budget=Budget(wall_s=self.budget_wall_s),
        )

    def test_setting(self, scenario: str, objective: Objective | None = None) -> Setting:
        return Setting(
            (scenario,), seeds=self.test_seeds, split="test", objective=objective or self.objective
        )


def evolve_one(
    bench: EvolutionBench, scenario: str, root: Path, progress: Progress
) -> tuple[str, dict[str, Any]]:
    """One evolution on ``scenario``'s train stretch: (best source, run summary)."""
    hooks = LoopProgress(
        generation=lambda g, best: progress(f"{scenario}: generation {g}, best {best:.4f} (train)")
    )
    evo = open_evolution(bench.evolution(scenario), root / scenario, fresh=True, progress=hooks)
    try:
        summary = evo.run()
        best = evo.archive.candidates[summary["best_candidate"]]
        return best.source, summary
    finally:
        evo.close()


def scenario_row(
    bench: EvolutionBench, scenario: str, source: str, evaluate, progress: Progress
) -> dict[str, Any]:
    """The champion on the test stretches against every baseline (and capacity, headroom)."""
    main = compare_to_baselines(
        source, bench.test_setting(scenario), name="champion", evaluate=evaluate
    )
    row = _row(main)
    capacity = bench.objective.name == "capacity"
    if not capacity:
        progress(f"{scenario}: capacity on the test stretches")
        cap = compare_to_baselines(
            source,
            bench.test_setting(scenario, Objective("capacity", target=bench.objective.target)),
            name="champion",
            evaluate=evaluate,
        )
        row["capacity_ratio"] = _row(cap)["ratio"]
    else:
        row["capacity_ratio"] = row["ratio"]
    row["headroom"] = _headroom(bench, scenario, progress) if bench.headroom else None
    return row


def _row(c: Comparison) -> dict[str, Any]:
    (s,) = c.scenarios
    best = s.baselines[s.best_baseline_name]
    return {
        "name": s.scenario,
        "champion": s.policy.objective,
        "best_baseline": s.best_baseline,
        "best_baseline_name": s.best_baseline_name,
        "ratio": s.ratio,
        "baselines": {k: v.objective for k, v in s.baselines.items()},
        # SLO attainment at the scenario's own load beside whatever the objective is, and
        # GPU time held over the starting plan's: a capacity won by holding GPUs shows.
        "champion_slo_attainment": s.policy.metrics.get("slo_attainment"),
        "best_baseline_slo_attainment": best.metrics.get("slo_attainment"),
        "champion_gpu_share": s.policy.metrics.get("gpu_share"),
        "best_baseline_gpu_share": best.metrics.get("gpu_share"),
        "champion_rejection": s.policy.rejection,
    }


def _headroom(bench: EvolutionBench, scenario: str, progress: Progress) -> dict[str, Any]:
    from sandbox.headroom import headroom

    progress(f"{scenario}: headroom (clairvoyant reference)")
    h = headroom(
        scenario,
        seeds=bench.test_seeds,
        split="test",
        target=bench.objective.target,
        capacity=bench.objective.name == "capacity",
    )
    side = h.clairvoyant_capacity if bench.objective.name == "capacity" else h.clairvoyant
    return {
        "clairvoyant": side.value if side else None,
        "clairvoyant_name": side.name if side else None,
        "no_contention_attainment": h.no_contention,
    }


def bench_evolution(bench: EvolutionBench, progress: Progress | None = None) -> dict[str, Any]:
    """Evolve on each scenario's train stretch, judge on its test stretches (module doc)."""
    tick = progress or (lambda _m: None)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-evolution-") as tmp:
        root = Path(bench.run_root or tmp)
        evaluate, evaluator = sandboxed(bench.backend, bench.parallel, Limits(wall_s=600.0))
        try:
            for scenario in bench.scenarios:
                tick(f"{scenario}: evolving on the train stretch ({bench.budget_wall_s:.0f} s)")
                source, summary = evolve_one(bench, scenario, root, tick)
                summaries.append(summary)
                tick(f"{scenario}: champion against every baseline on the test stretches")
                row = scenario_row(bench, scenario, source, evaluate, tick)
                row |= {
                    "train_objective": summary["best_objective"],
                    "seed_policy": summary["seed_policy"],
                    "best_origin": summary["best_origin"],
                    "evaluations": summary["sandbox_evaluations"],
                    "wall_s": summary["wall_s"],
                    "source": source,
                }
                rows.append(row)
                tick(f"{scenario}: ratio {row['ratio']:.3f} vs {row['best_baseline_name']}")
        finally:
            evaluator.close()
    return _totals(bench, rows, summaries, time.monotonic() - started)


def _totals(
    bench: EvolutionBench, rows: list[dict[str, Any]], summaries: list[dict[str, Any]], wall: float
) -> dict[str, Any]:
    def stat(key: str, f: Callable[[list[float]], float]) -> float:
        vals = [r[key] for r in rows if r[key] is not None and math.isfinite(r[key])]
        return f(vals) if vals else math.nan

    evaluations = sum(s["sandbox_evaluations"] for s in summaries)
    evo_wall = sum(s["wall_s"] for s in summaries)
    funnel: dict[str, dict[str, int]] = {}
    for s in summaries:
        llm = {"llm": s["llm"], "llm_compose": s["llm"].get("compose", {})}
        for kind, counts in {**llm, **s["proposers"]}.items():
            into = funnel.setdefault(kind, dict.fromkeys(STAGES, 0))
            for stage in STAGES:
                into[stage] += int(counts.get(stage, 0))
    return {
        "scenarios": rows,
        "mean_ratio": stat("ratio", lambda v: sum(v) / len(v)),
        "min_ratio": stat("ratio", min),
        "mean_capacity_ratio": stat("capacity_ratio", lambda v: sum(v) / len(v)),
        "min_capacity_ratio": stat("capacity_ratio", min),
        "wins": sum(1 for r in rows if r["ratio"] > 1.0),
        "losses": sum(1 for r in rows if r["ratio"] < 1.0),
        "llm": funnel.pop("llm"),
        "llm_compose": funnel.pop("llm_compose"),  # of those, the ones asked as compositions
        "proposers": funnel,
        "evaluations_per_hour": evaluations / evo_wall * 3600 if evo_wall > 0 else 0.0,
        "budget": {"wall_s": bench.budget_wall_s, "evaluations": evaluations},
        "wall_s": wall,
        "config": {k: v for k, v in asdict(replace(bench, llm=LLMConfig())).items() if k != "llm"}
        | {"llm": bench.llm.enabled, "objective": bench.objective.to_dict()},
    }


def plot(result: dict[str, Any], path: Path) -> Path:
    """Champion over best baseline per scenario (test stretches), capacity beside the run's
    objective when they differ, with the clairvoyant reference where it was computed."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    rows = result["scenarios"]
    names = [r["name"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(rows) + 2), 3.8))
    xs = range(len(rows))
    both = any(r["capacity_ratio"] != r["ratio"] for r in rows)
    width = 0.4 if both else 0.7
    ax.bar([x - (width / 2 if both else 0) for x in xs], [r["ratio"] for r in rows], width,
           label=f"{result['config']['objective']['name']} ratio")  # fmt: skip
    if both:
        ax.bar([x + width / 2 for x in xs], [r["capacity_ratio"] for r in rows], width,
               label="capacity ratio")  # fmt: skip
    for x, r in zip(xs, rows, strict=True):
        h = r.get("headroom") or {}
        if h.get("clairvoyant") and r["best_baseline"] > 0:
            ax.plot([x - 0.4, x + 0.4], [h["clairvoyant"] / r["best_baseline"]] * 2, color="k")
    ax.axhline(1.0, color="grey", linewidth=1, linestyle="--")
    ax.set_xticks(list(xs), names, rotation=30, ha="right")
    ax.set_ylabel("champion / best baseline (test)")
    ax.set_title(f"evolved vs best baseline: mean {result['mean_ratio']:.3f}, "
                 f"min {result['min_ratio']:.3f}")  # fmt: skip
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_to_mlflow(result: dict[str, Any], tracking_uri: str | None = None) -> str:
    """One run in experiment ``autopoiesis-benchmarks``: the figures as metrics (per
    scenario too), the config as parameters, the plot and the JSON as artifacts."""
    import json

    from mlflow.tracking import MlflowClient

    from flows.evolution.tracking import default_tracking_uri, ensure_experiment, flatten_params

    uri = tracking_uri or default_tracking_uri()
    client = MlflowClient(uri)
    exp = ensure_experiment(client, uri, "autopoiesis-benchmarks")
    run = client.create_run(exp, run_name="bench-evolution", tags={"bench": "evolution"})
    rid = run.info.run_id
    for k in ("mean_ratio", "min_ratio", "mean_capacity_ratio", "min_capacity_ratio",
              "evaluations_per_hour", "wins", "losses"):  # fmt: skip
        if isinstance(result[k], int | float) and math.isfinite(result[k]):
            client.log_metric(rid, k, float(result[k]))
    for r in result["scenarios"]:
        for k in ("ratio", "capacity_ratio", "champion", "best_baseline"):
            if r[k] is not None and math.isfinite(r[k]):
                client.log_metric(rid, f"{r['name']}.{k}", float(r[k]))
    for k, v in flatten_params(result["config"]).items():
        client.log_param(rid, k, v)
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifact(rid, str(plot(result, Path(tmp) / "evolution_vs_baselines.png")))
        p = Path(tmp) / "bench_evolution.json"
        p.write_text(json.dumps(result, indent=1, default=str))
        client.log_artifact(rid, str(p))
    client.set_terminated(rid)
    return rid
