"""The three Prefect flows of the control plane: ``pull-telemetry``, ``evolve``, ``promote``.

They run without a Prefect server (Prefect starts a temporary local API) and,
served by ``autopoiesis deploy``, as scheduled deployments. A flow that
triggers the next one runs its deployment (``run_deployment``) when
``chain="deployment"``, calls it in-process when ``chain="inline"`` (the demo
and the tests), or stops when ``chain="none"``.

State between runs lives in ``state_dir`` (default ``mlruns/control``):
``watermark.json`` (the latest arrival already consumed), ``reference.json``
(the window the champion was evolved on, as the drift test's sample) and
``events.jsonl`` (one line per decision, for the demo's timings) and
``windows/`` (the pulled windows as content-addressed window files, which the
``window:`` scenarios name; ``sandbox.windows``).

Scenarios: the pull flow saves each window's requests with the live fleet
(``cluster``, a ``parse_cluster`` spec; default one H100 per replica seen) and
hands ``evolve`` the window's replay and augmented variants plus the guard
scenarios; the nearest catalogue scenarios are kept as the fallback, used when
the window files are gone (``flows.window.resolve_scenarios``).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.drift import DriftConfig, WindowSample, detect
from flows.live import AdminClient, WatchConfig, watch
from flows.promotion import PromotionConfig, compare
from flows.registry import CHALLENGER, CHAMPION, PolicyRegistry
from flows.window import (
    build_window,
    default_fleet,
    resolve_scenarios,
    sample_from,
    scenarios_for,
    window_scenarios,
)
from serving.telemetry import read_telemetry

DEFAULT_STATE = Path("mlruns") / "control"
SETTLE_S = 5.0
HOLDOUT_FRACTION = 0.25
"""The newest quarter of each window is kept from evolution and judges promotion."""
"""Rows are written when requests finish, so a request that arrived just before the
newest one may still be in flight: only arrivals this much older than the newest row
are consumed, and the watermark never passes an unfinished stretch."""


# --------------------------------------------------------------------------- state
def _read(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.exists() else default


def _write(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1, default=str))
    tmp.replace(path)


def record_event(state_dir: str | Path, kind: str, **data: Any) -> None:
    path = Path(state_dir) / "events.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"event": kind, "t": time.time(), **data}, default=str) + "\n")


def read_events(state_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(state_dir) / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def set_reference(state_dir: str | Path, sample: WindowSample, scenarios: list[str],
                  fallback: list[str] | None = None) -> None:
    _write(Path(state_dir) / "reference.json",
           {"sample": sample.to_dict(), "scenarios": scenarios, "fallback": fallback or []})


def windows_dir_of(state_dir: str | Path, windows_dir: str | None = None) -> str:
    """Where window files live: ``windows_dir``, or ``<state_dir>/windows`` (absolute)."""
    return str(Path(windows_dir or Path(state_dir) / "windows").resolve())


DEFAULT_FALLBACK = ["bursty-code", "steady-conv"]


def _scenarios(state_dir: str, scenarios: list[str] | None, windows_dir: str,
               fallback: list[str] | None) -> list[str]:
    """The scenarios to replay: given, else the reference's; window files checked."""
    ref = _read(Path(state_dir) / "reference.json", None) or {}
    if not scenarios:
        scenarios = ref.get("scenarios") or list(DEFAULT_FALLBACK)
    fallback = fallback or ref.get("fallback") or list(DEFAULT_FALLBACK)
    return list(resolve_scenarios(scenarios, windows_dir, fallback))


def _log_run(tracking_uri: str | None, name: str, kind: str, metrics: dict[str, float],
             params: dict[str, str], texts: dict[str, str], figure: Any = None) -> str:
    import math

    from mlflow.entities import Metric, Param

    reg = PolicyRegistry(tracking_uri)
    c = reg.client
    run = c.create_run(reg.experiment_id(), run_name=name, tags={"kind": kind})
    rid = run.info.run_id
    now = int(time.time() * 1000)
    ms = [Metric(k, float(v), now, 0) for k, v in metrics.items()
          if v is not None and math.isfinite(float(v))]
    ps = [Param(k, str(v)[:500]) for k, v in params.items()]
    c.log_batch(rid, metrics=ms, params=ps)
    for path, text in texts.items():
        c.log_text(rid, text, path)
    if figure is not None:
        c.log_figure(rid, figure, "window.png")
    c.set_terminated(rid, "FINISHED")
    return rid


def _window_plot(ref: WindowSample | None, cur: WindowSample) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, what in zip(axes, ("prompt_tokens", "output_tokens"), strict=True):
        bins = np.linspace(0, 12, 40)
        if ref is not None:
            ax.hist(np.log1p(getattr(ref, what)), bins=bins, alpha=0.5, density=True,
                    label="reference")
        ax.hist(np.log1p(getattr(cur, what)), bins=bins, alpha=0.5, density=True, label="window")
        ax.set_xlabel(f"log1p({what})")
        ax.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig


def _chain(chain: str, deployment: str, fn: Any, params: dict[str, Any]) -> Any:
    if chain == "deployment":
        from prefect.deployments import run_deployment

        fr = run_deployment(name=deployment, parameters=params, timeout=0)
        return {"flow_run_id": str(fr.id), "deployment": deployment}
    if chain == "inline":
        return fn(**params)
    return None


# --------------------------------------------------------------------------- pull
@flow(name="pull-telemetry", log_prints=True)
def pull_telemetry(
    telemetry_dir: str,
    state_dir: str = str(DEFAULT_STATE),
    tracking_uri: str | None = None,
    chain: str = "deployment",
    settle_s: float = SETTLE_S,
    alpha: float = 0.01,
    min_requests: int = 50,
    evolve_params: dict[str, Any] | None = None,
    cluster: str | None = None,
    windows_dir: str | None = None,
) -> dict[str, Any]:
    """Read telemetry past the watermark, test for drift / SLO regression, maybe evolve.

    ``cluster``: the live fleet (``MODEL@COUNTxGPU[/tpK],...``) the window's
    scenarios replay on; default one H100 per replica seen in the window.
    """
    from sandbox.windows import save_window

    log = get_run_logger()
    state = Path(state_dir)
    mark = _read(state / "watermark.json", {"arrival_unix_s": None})
    since = mark["arrival_unix_s"]
    frame = read_telemetry(telemetry_dir, since_unix_s=since)
    if since is not None:
        frame = frame[frame.arrival_unix_s > since]
    if frame.empty:
        return {"requests": 0, "trigger": False}
    cutoff = float(frame.arrival_unix_s.max()) - settle_s
    frame = frame[frame.arrival_unix_s <= cutoff]
    if len(frame) < min_requests:
        return {"requests": len(frame), "trigger": False, "reason": "too few new requests"}
    _write(state / "watermark.json", {"arrival_unix_s": float(frame.arrival_unix_s.max())})
    window = build_window(frame)
    cur = sample_from(frame)
    ref_rec = _read(state / "reference.json", None)
    ref = WindowSample.from_dict(ref_rec["sample"]) if ref_rec else None
    fallback = list(scenarios_for(window))
    wdir = windows_dir_of(state, windows_dir)
    fleet = cluster or default_fleet(window)
    # Evolution sees the older part of the window; the newest part is held back so
    # that promotion judges the challenger on traffic it was not tuned on.
    cut = float(frame.arrival_unix_s.quantile(1 - HOLDOUT_FRACTION))
    learn, held = frame[frame.arrival_unix_s <= cut], frame[frame.arrival_unix_s > cut]
    try:
        sha = save_window(learn, fleet, wdir)
        scen = list(window_scenarios(sha, fleet))
        holdout = scen
        if len(held):
            holdout = list(window_scenarios(save_window(held, fleet, wdir), fleet))
    except Exception as e:  # an unknown fleet, a full disk: the catalogue stands in
        log.warning("window not saved (%s): nearest catalogue scenarios instead", e)
        sha, scen, holdout = None, fallback, fallback
    out: dict[str, Any] = {"requests": window.requests, "window": window.to_dict(),
                           "scenarios": scen, "holdout_scenarios": holdout,
                           "fallback_scenarios": fallback,
                           "window_sha256": sha, "fleet": fleet, "trigger": False}
    if ref is None:
        set_reference(state, cur, scen, fallback)
        out["reason"] = "first window: kept as the reference"
        report = None
    else:
        report = detect(ref, cur, DriftConfig(alpha=alpha, min_requests=min_requests))
        out |= {"trigger": report.trigger, "drift": report.metrics(), "reasons": report.reasons}
    metrics = window.metrics() | ({f"drift.{k}": v for k, v in report.metrics().items()}
                                  if report else {})
    out["mlflow_run_id"] = _log_run(
        tracking_uri, "pull-telemetry", "pull", metrics,
        {"scenarios": ",".join(scen), "telemetry_dir": telemetry_dir,
         "window_sha256": str(sha), "fleet": fleet},
        {"window.json": json.dumps(out, indent=1, default=str)}, _window_plot(ref, cur),
    )
    log.info("window: %d requests, %.2f req/s; %s", window.requests, window.rate,
             "; ".join(out.get("reasons") or [out.get("reason", "no drift")]))
    if out["trigger"]:
        record_event(state, "drift", reasons=out["reasons"], window_end=window.end_unix_s)
        params = {"scenarios": scen, "holdout_scenarios": holdout,
                  "fallback_scenarios": fallback, "state_dir": state_dir,
                  "windows_dir": wdir, "tracking_uri": tracking_uri, "chain": chain,
                  **(evolve_params or {})}
        out["evolve"] = _chain(chain, "evolve/evolve", evolve, params)
        # The new traffic is what the next champion is evolved on.
        set_reference(state, cur, scen, fallback)
    return out


# --------------------------------------------------------------------------- evolve
def _confirm_stage(settings: dict[str, Any]) -> Any:
    from flows.evolution.config import ConfirmStage

    # A flow parameter arrives as JSON: name a mistyped key instead of a TypeError.
    known = {f.name for f in dataclasses.fields(ConfirmStage)}
    if unknown := sorted(set(settings) - known):
        raise ValueError(f"confirm: unknown setting(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(known))}")
    return ConfirmStage(**{k: tuple(v) if k == "gpu_ids" else v for k, v in settings.items()})


@flow(name="evolve", log_prints=True)
def evolve(
    scenarios: list[str] | None = None,
    state_dir: str = str(DEFAULT_STATE),
    tracking_uri: str | None = None,
    chain: str = "deployment",
    generations: int = 2,
    population: int = 2,
    tune_trials: int = 4,
    scale: float = 0.05,
    llm_base_url: str | None = None,
    llm_model: str | None = None,
    backend: str = "process",
    parallel: int = 2,
    seed: int = 0,
    seeds_policies: list[str] | None = None,
    promote_params: dict[str, Any] | None = None,
    fallback_scenarios: list[str] | None = None,
    windows_dir: str | None = None,
    task_runner: str = "threads",
    dask_address: str | None = None,
    dask_workers: int = 2,
    holdout_scenarios: list[str] | None = None,
    confirm: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The evolution engine as a flow; candidate evaluations are ``evaluate-candidate`` tasks.

    Scenarios: ``scenarios`` (default: the reference window's), ``window:`` ones
    only where their file is in ``windows_dir`` (default ``<state_dir>/windows``),
    else ``fallback_scenarios``. ``task_runner``: ``threads`` (this flow's pool) or
    ``dask`` (the scheduler at ``dask_address``, or a local cluster of
    ``dask_workers`` workers), see ``flows.fanout``. ``confirm``: the replay stage's
    settings (``flows.evolution.config.ConfirmStage`` fields, e.g. ``{"top_k": 2,
    "target": "http://127.0.0.1:8001"}`` on a GPU runner); off by default.
    """
    from flows.evolution.config import EvolutionConfig, LLMConfig, Suite
    from flows.evolution.run import run_evolution
    from flows.evolution.tracking import Tracker
    from flows.fanout import TASK_RUNNERS

    log = get_run_logger()
    if task_runner not in TASK_RUNNERS:
        raise ValueError(f"unknown task runner {task_runner!r}; known: {', '.join(TASK_RUNNERS)}")
    wdir = windows_dir_of(state_dir, windows_dir)
    scenarios = _scenarios(state_dir, scenarios, wdir, fallback_scenarios)
    log.info("evolve on %s (task runner %s)", ", ".join(scenarios), task_runner)
    cfg = EvolutionConfig(
        quick=Suite(tuple(scenarios), (0,), scale, windows_dir=wdir),
        full=None,
        generations=generations,
        population=population,
        islands=1,
        tune_trials=tune_trials,
        backend=backend,
        parallel=parallel,
        seed=seed,
        llm=LLMConfig.from_env(llm_base_url, llm_model) if llm_base_url else LLMConfig(),
        confirm=_confirm_stage(confirm or {}),
    )
    if seeds_policies:
        cfg = cfg.with_(seeds_policies=tuple(seeds_policies))
    reg = PolicyRegistry(tracking_uri)
    champ = None
    if reg.version_of(CHAMPION) is not None:
        p = reg.fetch(CHAMPION)
        champ = (p.name, p.source)
    run_dir = Path(tempfile.mkdtemp(prefix="evolve-", dir=_ensure(Path(state_dir) / "runs")))
    # Evaluations fan out as Prefect tasks: on this flow's runner, or on a Dask cluster.
    summary = run_evolution(
        cfg, run_dir, fanout="prefect" if task_runner == "threads" else task_runner,
        dask_address=dask_address, dask_workers=dask_workers,
        tracker=Tracker(tracking_uri), champion=champ,
    )
    log.info("evolution: seed %.4f -> best %.4f, registered %s", summary["seed_objective"],
             summary["best_objective"], summary["registered_version"])
    record_event(state_dir, "evolved", version=summary["registered_version"],
                 best=summary["best_objective"], seed=summary["seed_objective"],
                 scenarios=scenarios)
    summary["scenarios"] = scenarios
    if summary["registered_version"] is not None:
        # Promotion judges on the held-back part of the window (and held-back seeds).
        params = {"challenger": summary["registered_version"], "state_dir": state_dir,
                  "tracking_uri": tracking_uri, "scenarios": holdout_scenarios or scenarios,
                  "windows_dir": wdir,
                  **(promote_params or {})}
        summary["promote"] = _chain(chain, "promote/promote", promote, params)
    return summary


def _ensure(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


# --------------------------------------------------------------------------- promote
def make_rollback(admin: AdminClient, reg: PolicyRegistry, version: str, previous: str,
                  state_dir: str | Path) -> Any:
    """What a regression during the dwell does: router back, alias back, both recorded."""

    def rollback(after: dict[str, float]) -> None:
        admin.rollback()
        reg.set_alias(CHAMPION, previous)
        reg.tag(version, "rolled_back", json.dumps(after, default=str))
        record_event(state_dir, "rolled_back", version=version, live=after)

    return rollback


@task(name="paired-comparison", cache_policy=NO_CACHE)
def _compare_task(champion_source: str, challenger_source: str,
                  cfg: PromotionConfig) -> dict[str, Any]:
    return compare(champion_source, challenger_source, cfg).to_dict()


@flow(name="promote", log_prints=True)
def promote(
    challenger: str = CHALLENGER,
    state_dir: str = str(DEFAULT_STATE),
    tracking_uri: str | None = None,
    scenarios: list[str] | None = None,
    seeds: list[int] | None = None,
    scale: float = 0.05,
    margin: float = 0.002,
    tolerance: float = 0.01,
    admin_url: str | None = None,
    admin_token: str | None = None,
    telemetry_dir: str | None = None,
    dwell_s: float = 30.0,
    rollback_tolerance: float = 0.05,
    min_live_requests: int = 30,
    windows_dir: str | None = None,
    backend: str = "process",
) -> dict[str, Any]:
    """Challenger vs champion, paired and held back; promote, swap live, watch, roll back.

    ``backend``: the sandbox the paired re-runs use (``process``, ``docker`` or ``auto``).

    ``admin_token``: default ``AUTOPOIESIS_ADMIN_TOKEN`` or the file named by
    ``AUTOPOIESIS_ADMIN_TOKEN_FILE`` (``flows.live.admin_token_from_env``).
    """
    from flows.live import admin_token_from_env
    from flows.promotion import HELD_BACK_SEEDS

    log = get_run_logger()
    admin_token = admin_token or admin_token_from_env()
    reg = PolicyRegistry(tracking_uri)
    chal = reg.fetch(challenger)  # hash-checked
    champ_version = reg.version_of(CHAMPION)
    if champ_version is None:
        # Nothing to beat: the first registered policy becomes the champion as it is.
        reg.set_alias(CHAMPION, chal.version)
        return {"promoted": True, "version": chal.version, "reasons": ["no champion yet"]}
    champ = reg.fetch(CHAMPION)
    wdir = windows_dir_of(state_dir, windows_dir)
    if not scenarios and _read(Path(state_dir) / "reference.json", None) is None:
        scenarios = list(PromotionConfig().scenarios)
    scenarios = _scenarios(state_dir, scenarios, wdir, None)
    cfg = PromotionConfig(scenarios=tuple(scenarios), seeds=tuple(seeds or HELD_BACK_SEEDS),
                          scale=scale, margin=margin, tolerance=tolerance, windows_dir=wdir,
                          backend=backend)
    dec = _compare_task(champ.source, chal.source, cfg)
    out: dict[str, Any] = {"champion": champ.version, "challenger": chal.version,
                           "promoted": dec["promote"], "reasons": dec["reasons"],
                           "decision": dec, "rolled_back": False}
    metrics = {k: v for k, v in dec.items() if isinstance(v, int | float) and v is not None}
    metrics |= {f"diff.{k}": v for k, v in dec["by_scenario"].items()}
    params = {"champion_version": champ.version, "challenger_version": chal.version,
              "scenarios": ",".join(scenarios), "seeds": ",".join(map(str, cfg.seeds)),
              "margin": str(margin), "tolerance": str(tolerance)}
    log.info("promotion decision: %s", "; ".join(dec["reasons"]))
    if dec["promote"]:
        reg.set_alias(CHAMPION, chal.version)
        reg.tag(chal.version, "promoted_from", champ.version)
        record_event(state_dir, "promoted", version=chal.version, previous=champ.version,
                     scenarios=scenarios)
        if admin_url and admin_token:
            admin = AdminClient(admin_url, admin_token)
            swapped_at = time.time()
            admin.load(reg.fetch(chal.version))
            record_event(state_dir, "swapped", version=chal.version)
            if telemetry_dir and dwell_s > 0:
                rollback = make_rollback(admin, reg, chal.version, champ.version, state_dir)
                w = watch(telemetry_dir, chal.version, champ.version, swapped_at,
                          WatchConfig(dwell_s=dwell_s, tolerance=rollback_tolerance,
                                      min_requests=min_live_requests), rollback)
                out["rolled_back"] = w["rolled_back"]
                out["live"] = w
                metrics |= {f"live_before.{k}": v for k, v in w["before"].items()}
                metrics |= {f"live_after.{k}": v for k, v in w["after"].items()}
                metrics["rolled_back"] = float(w["rolled_back"])
    else:
        record_event(state_dir, "not_promoted", version=chal.version, reasons=dec["reasons"])
    out["mlflow_run_id"] = _log_run(tracking_uri, f"promote-v{chal.version}", "promotion",
                                    metrics, params,
                                    {"decision.json": json.dumps(out, indent=1, default=str)})
    return out
