"""``autopoiesis evolve --trace FILE``: evolve on the earlier part of a trace, judge on the rest.

A user brings a trace in any format ``sandbox.traces.load_trace`` reads. ``prepare``
cuts it by time (``sandbox.splits.split_by_time``): the earlier ``1 - holdout`` of its
span is what evolution may see, the later ``holdout`` is held out. Each part becomes a
content-addressed window file (``sandbox.window_scenarios``) on one fleet, so both are replayed as
window scenarios (the replay and its augmented variants) like a pulled live window:
the train part is the run's quick suite, the test part judges the run's best candidate
against every baseline (``judge``), never seen by the search. ``record_holdout`` keeps
the figures in the run's folder and on its MLflow run.

Window scenarios ignore the ``split`` of an evaluation request (a window is already one
side of a split): the test part is the test window's own file, whose arrival times
continue the train window's (``arrival_unix_s`` keeps each request's place in the trace).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.workload import Workload

if TYPE_CHECKING:
    from flows.evolution.config import Suite
    from sandbox.compare import Comparison, Evaluate
    from sandbox.objectives import Objective

DEFAULT_MODEL = "llama-3-8b"
DEFAULT_GPU = "H100"
UTILISATION = 0.70
"""The default fleet runs the train part's mean rate at this share of its capacity."""
MIN_REPLICAS = 2
"""A default fleet has a choice to route between, even for a trickle of traffic."""
HOLDOUT_SEEDS: tuple[int, ...] = (0, 1, 2)


@dataclass(frozen=True)
class TraceSplit:
    """A trace cut into a train and a test window, both on one fleet."""

    trace: str
    cluster: str
    holdout: float
    windows_dir: str
    train_sha: str
    test_sha: str
    train_requests: int
    test_requests: int

    @property
    def train_names(self) -> tuple[str, ...]:
        from sandbox.window_scenarios import window_names

        return window_names(self.train_sha, self.cluster)

    @property
    def test_names(self) -> tuple[str, ...]:
        from sandbox.window_scenarios import window_names

        return window_names(self.test_sha, self.cluster)

    def quick_suite(self, scale: float = 1.0) -> Suite:
        """What evolution scores every candidate on: the train window's scenarios, seed 0."""
        from flows.evolution.config import Suite

        return Suite(self.train_names, (0,), scale, windows_dir=self.windows_dir)


def fleet_for(w: Workload, model: str = DEFAULT_MODEL, gpu: str = DEFAULT_GPU) -> str:
    """The fewest single-GPU ``gpu`` replicas (at least ``MIN_REPLICAS``) whose estimated
    capacity covers ``w``'s mean arrival rate at ``UTILISATION``.

    Capacity is the planner's back-of-the-envelope (``serving.capacity.saturation_rps``
    through ``sandbox.stretches.fleet_capacity``) for requests of ``w``'s mean prompt and
    output lengths, the same estimate the catalogue scenarios set their loads with. It is
    linear in replicas, so the count is the rate over one replica's capacity at that share.
    """
    from sandbox.stretches import fleet_capacity
    from serving.contract import ReplicaSpec

    rate = (len(w) - 1) / w.duration_s if w.duration_s > 0 else 0.0
    one = fleet_capacity(
        model, (ReplicaSpec(gpu, 1),), float(w.prompt_tokens.mean()), float(w.output_tokens.mean())
    )
    return f"{model}@{max(MIN_REPLICAS, math.ceil(rate / (UTILISATION * one)))}x{gpu}"


def check_cluster(spec: str) -> str:
    """``spec`` itself, or a one-line ValueError naming it and what is wrong."""
    from sandbox.scenario_spec import parse_cluster

    try:
        cluster = parse_cluster(spec)
    except ValueError as e:
        raise ValueError(str(e) if repr(spec) in str(e) else f"cluster spec {spec!r}: {e}") from e
    if not cluster.plan.replicas:
        raise ValueError(f"cluster spec {spec!r}: no replicas")
    return spec


def prepare(
    trace: Path,
    windows_dir: Path,
    *,
    cluster: str | None = None,
    holdout: float = 0.25,
    max_requests: int | None = None,
) -> TraceSplit:
    """Load ``trace`` (its first ``max_requests``), cut it, save both windows.

    Raises ValueError (``WorkloadError`` for the trace) with a one-line message.
    """
    from sandbox.splits import split_by_time
    from sandbox.trace_formats.telemetry import workload_frame
    from sandbox.traces import load_trace
    from sandbox.transforms import head
    from sandbox.window_scenarios import save_window

    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be between 0 and 1 (exclusive), got {holdout:g}")
    if max_requests is not None and max_requests < 4:
        raise ValueError(f"max requests must be at least 4, got {max_requests}")
    if cluster is not None:
        check_cluster(cluster)
    w = load_trace(trace)
    if max_requests is not None and len(w) > max_requests:
        w = head(w, max_requests)
    train, test = split_by_time(w, holdout)
    fleet = cluster or fleet_for(train)
    base = float(w.meta.get("start_unix_s", 0.0))
    # split_by_time re-zeroes each part; the test part starts where the cut is, which is
    # the trace's span less how far the test part's last arrival lies from that cut.
    test_start = base + w.duration_s - float(test.arrival_s[-1])
    train_sha = save_window(workload_frame(train, base), fleet, windows_dir)
    test_sha = save_window(workload_frame(test, test_start), fleet, windows_dir)
    return TraceSplit(
        str(trace),
        fleet,
        holdout,
        str(Path(windows_dir).resolve()),
        train_sha,
        test_sha,
        len(train),
        len(test),
    )


def judge(
    split: TraceSplit,
    source: str,
    objective: Objective,
    *,
    backend: str = "process",
    parallel: int = 2,
    seeds: tuple[int, ...] = HOLDOUT_SEEDS,
    evaluate: Evaluate | None = None,
) -> dict[str, Any]:
    """``source`` and every baseline on the test window's scenarios: ``holdout_report``."""
    from sandbox.compare import Setting, compare_to_baselines, sandboxed

    setting = Setting(
        split.test_names,
        seeds=seeds,
        split="test",
        objective=objective,
        windows_dir=split.windows_dir,
    )
    owned = None
    if evaluate is None:
        evaluate, owned = sandboxed(backend, parallel)
    try:
        comparison = compare_to_baselines(source, setting, name="champion", evaluate=evaluate)
    finally:
        if owned is not None:
            owned.close()
    return holdout_report(split, comparison)


def holdout_report(split: TraceSplit, comparison: Comparison) -> dict[str, Any]:
    """The champion and each baseline as their mean objective over the test scenarios.

    ``best_baseline`` is the one baseline an operator would have configured for the whole
    held-out stretch (the best mean); ``ratio`` is the champion's mean over it.
    ``mean_ratio``/``min_ratio`` are the stricter per-scenario view: each scenario against
    its own best baseline (``scenarios`` has the rows).
    """
    rows = comparison.scenarios
    champion = sum(r.policy.objective for r in rows) / len(rows)
    baselines = {
        name: sum(r.baselines[name].objective for r in rows) / len(rows)
        for name in rows[0].baselines
    }
    best_name = max(baselines, key=lambda n: baselines[n])
    best = baselines[best_name]

    def finite(x: float) -> float | None:  # JSON has no NaN
        return x if math.isfinite(x) else None

    return {
        "champion": champion,
        "baselines": baselines,
        "best_baseline": best,
        "best_baseline_name": best_name,
        "ratio": finite(champion / best) if best > 0 else None,
        "mean_ratio": finite(comparison.mean_ratio),
        "min_ratio": finite(comparison.min_ratio),
        "train_requests": split.train_requests,
        "test_requests": split.test_requests,
        "cluster": split.cluster,
        "holdout": split.holdout,
        "trace": split.trace,
        "train_window": split.train_sha,
        "test_window": split.test_sha,
        "seeds": list(comparison.seeds),
        "scenarios": [
            {k: finite(v) if isinstance(v, float) else v for k, v in s.to_dict().items()}
            for s in rows
        ],
    }


def holdout_table(report: dict[str, Any]):
    """The report as a rich table: each test scenario, then the ``mean`` row."""
    from rich.table import Table

    def ratio(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    table = Table(
        title=f"Held out: the last {report['holdout']:.0%} of {report['trace']} "
        f"({report['test_requests']} requests, {report['cluster']})"
    )
    for col in ("scenario", "champion", "best baseline", "ratio"):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for row in report["scenarios"]:
        table.add_row(
            row["name"],
            f"{row['champion']['objective']:.4f}",
            f"{row['best_baseline']['objective']:.4f} {row['best_baseline_name']}",
            ratio(row["ratio"]),
        )
    table.add_row(
        "mean",
        f"{report['champion']:.4f}",
        f"{report['best_baseline']:.4f} {report['best_baseline_name']}",
        ratio(report["ratio"]),
        style="bold",
    )
    return table


def record_holdout(
    report: dict[str, Any], run_dir: Path, run_id: str | None, tracking_uri: str | None = None
) -> None:
    """The holdout figures beside the run's summary (``holdout.json`` in its folder) and,
    when it has one, on its MLflow run (``log_holdout``)."""
    (Path(run_dir) / "holdout.json").write_text(json.dumps(report, indent=2))
    if run_id:
        log_holdout(report, run_id, tracking_uri)


def log_holdout(report: dict[str, Any], run_id: str, tracking_uri: str | None = None) -> None:
    """``holdout_*`` metrics on the evolution's MLflow run, the best baseline's name as a
    tag, ``holdout.json`` and a bar chart of every policy against the best baseline."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from flows.evolution.tracking import default_tracking_uri

    client = MlflowClient(tracking_uri or default_tracking_uri())
    figures = {
        "holdout_champion": report["champion"],
        "holdout_best_baseline": report["best_baseline"],
        "holdout_ratio": report["ratio"],
        "holdout_mean_ratio": report["mean_ratio"],
        "holdout_min_ratio": report["min_ratio"],
        "holdout_test_requests": report["test_requests"],
        **{f"holdout_baseline.{k}": v for k, v in report["baselines"].items()},
    }
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in figures.items() if v is not None]
    client.log_batch(run_id, metrics=metrics)
    client.set_tag(run_id, "holdout_best_baseline", report["best_baseline_name"])
    client.log_text(run_id, json.dumps(report, indent=1), "holdout.json")
    client.log_figure(run_id, holdout_plot(report), "plots/holdout.png")


def holdout_plot(report: dict[str, Any]):
    """Bars: the champion and every baseline on the held-out part, as % over the best
    baseline (objectives near 1 differ in their last digits; the difference is the news)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = report["best_baseline"] or 1.0
    scores = {"champion": report["champion"], **report["baselines"]}
    names = list(scores)
    colours = [
        "tab:green"
        if n == "champion"
        else "tab:orange"
        if n == report["best_baseline_name"]
        else "tab:gray"
        for n in names
    ]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(names, [100 * (scores[n] / best - 1) for n in names], color=colours)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel(f"% vs {report['best_baseline_name']}")
    ax.set_title(
        f"Held-out {report['holdout']:.0%} of {Path(report['trace']).name} on {report['cluster']}"
    )
    ax.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    plt.close(fig)
    return fig
