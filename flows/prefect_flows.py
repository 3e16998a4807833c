"""The three Prefect flows of the control plane: ``pull-telemetry``, ``evolve``, ``promote``.

They run without a Prefect server (Prefect starts a temporary local API) and,
served by ``autopoiesis deploy``, as scheduled deployments. A flow that
triggers the next one runs its deployment (``run_deployment``) when
``chain="deployment"``, calls it in-process when ``chain="inline"`` (the demo
and the tests), or stops when ``chain="none"``.

State between runs lives in ``state_dir`` (default ``mlruns/control``; see
``flows.control_state``); each decision is an MLflow run of the control experiment
(``flows.control_tracking``).

Scenarios: the pull flow saves each window's requests with the live fleet
(``cluster``, a ``parse_cluster`` spec; default one H100 per replica seen) and
hands ``evolve`` the window's replay and augmented variants plus the guard
scenarios; the nearest catalogue scenarios are kept as the fallback, used when
the window files are gone (``flows.pulled_window.resolve_scenarios``).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows import links
from flows.control_state import (
    ensure_dir,
    load_state,
    read_reference,
    record_event,
    save_state,
    scenarios_to_replay,
    set_reference,
    windows_dir_of,
)
from flows.control_tracking import log_control_run, window_plot
from flows.drift import DriftConfig, WindowSample, detect
from flows.live import AdminClient, WatchConfig, watch
from flows.promotion import PromotionConfig, compare
from flows.pulled_window import (
    build_window,
    default_fleet,
    sample_from,
    scenarios_for,
    window_scenarios,
)
from flows.registry import CHALLENGER, CHAMPION, PolicyRegistry
from serving.telemetry import read_telemetry

DEFAULT_STATE = Path("mlruns") / "control"
SETTLE_S = 5.0
HOLDOUT_FRACTION = 0.25
"""The newest quarter of each window is kept from evolution and judges promotion."""
"""Rows are written when requests finish, so a request that arrived just before the
newest one may still be in flight: only arrivals this much older than the newest row
are consumed, and the watermark never passes an unfinished stretch."""


def _run_name(kind: str) -> Callable[[], str]:
    """Flow run names that say what and when (``evolve-20250101-030000``), not Prefect's
    random adjective-animal; the evolution's MLflow run takes the same name."""
    return lambda: f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def _chain(chain: str, deployment: str, fn: Any, params: dict[str, Any]) -> Any:
    if chain == "deployment":
        from prefect.deployments import run_deployment

        fr = run_deployment(name=deployment, parameters=params, timeout=0)
        return {"flow_run_id": str(fr.id), "deployment": deployment}
    if chain == "inline":
        return fn(**params)
    return None


# --------------------------------------------------------------------------- pull
def _new_rows(
    telemetry_dir: str, state: Path, settle_s: float, min_requests: int, log: Any
) -> tuple[Any, dict[str, Any] | None]:
    """The telemetry rows past the watermark that have settled, or why there are none to
    judge (the flow's result then)."""
    if not Path(telemetry_dir).exists():
        log.info("no telemetry yet at %s (the router writes it once it serves): nothing "
                 "to pull", telemetry_dir)
        return None, {"requests": 0, "trigger": False, "reason": "no telemetry yet"}
    mark = load_state(state / "watermark.json", {"arrival_unix_s": None})
    since = mark["arrival_unix_s"]
    frame = read_telemetry(telemetry_dir, since_unix_s=since)
    if since is not None:
        frame = frame[frame.arrival_unix_s > since]
    if frame.empty:
        log.info("no new requests in %s since the watermark (%s)", telemetry_dir, since)
        return None, {"requests": 0, "trigger": False, "reason": "no new requests"}
    cutoff = float(frame.arrival_unix_s.max()) - settle_s
    frame = frame[frame.arrival_unix_s <= cutoff]
    if len(frame) < min_requests:
        log.info("%d new requests, fewer than %d: waiting for more", len(frame), min_requests)
        return None, {"requests": len(frame), "trigger": False, "reason": "too few new requests"}
    return frame, None


def _save_windows(
    frame: Any, fleet: str, wdir: str, fallback: list[str], log: Any
) -> tuple[str | None, list[str], list[str]]:
    """Window files of the window's older part (what evolution sees) and of its newest
    part (held back: promotion judges the challenger on traffic it was not tuned on);
    (sha256 of the first, its scenarios, the held-back scenarios)."""
    from sandbox.window_scenarios import save_window

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
        return None, fallback, fallback
    return sha, scen, holdout


# Long for a reason: a flow's parameters and their Args lines are its deployment's
# parameter form in the Prefect UI; the steps themselves are the helpers above.
@flow(name="pull-telemetry", log_prints=True, flow_run_name=_run_name("pull"))
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

    No telemetry yet (a fresh install, a router that has not served) is a normal
    state: the run logs it and completes.

    Args:
        telemetry_dir: The router's telemetry folder (Parquet segments), absolute.
        state_dir: Watermark, reference window, events and window files (absolute).
        tracking_uri: MLflow tracking URI; empty: MLFLOW_TRACKING_URI, else the local sqlite.
        chain: How a drift starts evolve: "deployment" (run the evolve deployment),
            "inline" (call it in this run) or "none".
        settle_s: Only arrivals this much older than the newest row are consumed (rows
            are written when requests finish).
        alpha: Significance level of the drift tests (Bonferroni-corrected).
        min_requests: Fewest new requests a window needs to be tested.
        evolve_params: Extra parameters for the evolve run a drift starts.
        cluster: The live fleet the window replays on, MODEL@COUNTxGPU[/tpK],...;
            empty: one H100 per replica seen in the window.
        windows_dir: Where window files are saved; empty: <state_dir>/windows.
    """
    log = get_run_logger()
    state = Path(state_dir)
    frame, skipped = _new_rows(telemetry_dir, state, settle_s, min_requests, log)
    if skipped is not None:
        return skipped
    save_state(state / "watermark.json", {"arrival_unix_s": float(frame.arrival_unix_s.max())})
    window = build_window(frame)
    cur = sample_from(frame)
    ref_rec = read_reference(state)
    ref = WindowSample.from_dict(ref_rec["sample"]) if ref_rec else None
    fallback = list(scenarios_for(window))
    wdir = windows_dir_of(state, windows_dir)
    fleet = cluster or default_fleet(window)
    sha, scen, holdout = _save_windows(frame, fleet, wdir, fallback, log)
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
    out["mlflow_run_id"] = log_control_run(
        tracking_uri, "pull-telemetry", "pull", metrics,
        {"scenarios": ",".join(scen), "telemetry_dir": telemetry_dir,
         "window_sha256": str(sha), "fleet": fleet},
        {"window.json": json.dumps(out, indent=1, default=str)}, window_plot(ref, cur),
        description=f"Telemetry window of {window.requests} requests; "
        + "; ".join(out.get("reasons") or [out.get("reason", "no drift")]),
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


def _champion(reg: PolicyRegistry) -> tuple[str, str] | None:
    """(name, source) of the registered champion, the evolution's first parent; None yet."""
    if reg.version_of(CHAMPION) is None:
        return None
    p = reg.fetch(CHAMPION)
    return p.name, p.source


# Long for a reason: a flow's parameters and their Args lines are its deployment's
# parameter form in the Prefect UI; the steps themselves are the helpers above.
@flow(name="evolve", log_prints=True, flow_run_name=_run_name("evolve"))
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
    llm_wait_s: float | None = 0.0,
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

    The search defaults (2 generations of 2, 4 Optuna trials, scale 0.05, no full
    suite) are sized for what triggers this flow: a drift or the nightly schedule,
    on the control plane's node, done in minutes. ``autopoiesis evolve`` defaults to a
    deliberate search (4 x 4, 12 trials, scale 0.2, then the full suite).

    Args:
        scenarios: Quick-suite scenario names; empty: the reference window's.
        state_dir: Reference window, events, run journals (absolute path).
        tracking_uri: MLflow tracking URI; empty: MLFLOW_TRACKING_URI, else the local sqlite.
        chain: How a registered challenger reaches promote: "deployment" (run the
            promote deployment), "inline" (call it in this run) or "none".
        generations: Generations after the seed policies.
        population: Candidates per generation.
        tune_trials: Optuna trials per tuned candidate (each one sandbox evaluation).
        scale: Scenario size in (0, 1]; smaller is faster and noisier.
        llm_base_url: OpenAI-compatible endpoint that proposes code; empty: Optuna only.
        llm_model: Model name(s) at that endpoint, NAME[=weight],...
        llm_wait_s: Seconds a slot waits for the LLM before search takes it (0: never);
            null: every slot waits for one answer (reproducible, as slow as the LLM).
        backend: Sandbox of the evaluations: process (bubblewrap), docker or auto.
        parallel: Sandboxes at once.
        seed: Seed of every random choice (a rerun with the same seed is the same run).
        seeds_policies: Baseline policies of generation 0; empty: the engine's list.
        promote_params: Extra parameters for the promote run this one starts.
        fallback_scenarios: Catalogue scenarios used when window files are missing.
        windows_dir: Folder of window files; empty: <state_dir>/windows.
        task_runner: Where evaluations run: threads (this flow's pool) or dask.
        dask_address: Dask scheduler (tcp://host:8786); empty: a local cluster.
        dask_workers: Workers of that local Dask cluster.
        holdout_scenarios: Scenarios promote judges on (the held-back newest part of
            the window); empty: the same as scenarios.
        confirm: Replay-stage settings (ConfirmStage fields); empty: off.
    """
    from flows.evolution.config import EvolutionConfig, LLMConfig, Suite
    from flows.evolution.run import run_evolution
    from flows.evolution.tracking import Tracker
    from flows.fanout import TASK_RUNNERS

    log = get_run_logger()
    if task_runner not in TASK_RUNNERS:
        raise ValueError(f"unknown task runner {task_runner!r}; known: {', '.join(TASK_RUNNERS)}")
    wdir = windows_dir_of(state_dir, windows_dir)
    scenarios = scenarios_to_replay(state_dir, scenarios, wdir, fallback_scenarios)
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
        llm_wait_s=llm_wait_s,
        confirm=_confirm_stage(confirm or {}),
    )
    if seeds_policies:
        cfg = cfg.with_(seeds_policies=tuple(seeds_policies))
    champ = _champion(PolicyRegistry(tracking_uri))
    # Named after the flow run, so the evolution's MLflow run reads like it.
    run_name = (links.current_flow_run() or {}).get("name", "evolve")
    runs = ensure_dir(Path(state_dir) / "runs")
    run_dir = Path(tempfile.mkdtemp(prefix=f"{run_name}-", dir=runs))
    # Evaluations fan out as Prefect tasks: on this flow's runner, or on a Dask cluster.
    summary = run_evolution(
        cfg, run_dir, fanout="prefect" if task_runner == "threads" else task_runner,
        dask_address=dask_address, dask_workers=dask_workers,
        tracker=Tracker(tracking_uri), champion=champ,
    )
    log.info("evolution: seed %s %.4f -> best %s %.4f; %s", summary["seed_policy"],
             summary["seed_objective"], summary["best_candidate"], summary["best_objective"],
             f"registered version {summary['registered_version']} as challenger"
             if summary["registered_version"] is not None
             else "nothing registered: no candidate qualified as challenger")
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


def _swap_and_watch(
    admin: AdminClient, reg: PolicyRegistry, version: str, previous: str,
    state_dir: str | Path, telemetry_dir: str | None, watch_cfg: WatchConfig,
) -> dict[str, Any] | None:
    """Load ``version`` into the live router; then, given telemetry, watch it for the
    dwell period and roll back on a regression. The watch's result; None unwatched."""
    swapped_at = time.time()
    admin.load(reg.fetch(version))
    record_event(state_dir, "swapped", version=version)
    if not telemetry_dir:
        return None
    rollback = make_rollback(admin, reg, version, previous, state_dir)
    return watch(telemetry_dir, version, previous, swapped_at, watch_cfg, rollback)


def _decision_artifact(verdict: str, champ: Any, chal: Any, dec: dict[str, Any]) -> None:
    """The decision as a Prefect markdown artifact on this flow run."""
    links.markdown_artifact("promotion-decision", "\n".join([
        f"## {verdict}", "", links.markdown_table([
            ("champion", f"v{champ.version} ({champ.name})"),
            ("challenger", f"v{chal.version} ({chal.name})"),
            ("mean paired gain", dec["mean_diff"]),
            ("95 % interval", f"[{dec['ci_low']:+.4f}, {dec['ci_high']:+.4f}]"),
            *((f"gain on {k}", v) for k, v in dec["by_scenario"].items()),
            ("reasons", "; ".join(dec["reasons"])),
        ])]), "The promotion decision: paired held-back comparison of challenger and champion.")


# Long for a reason: a flow's parameters and their Args lines are its deployment's
# parameter form in the Prefect UI; the steps themselves are the helpers above.
@flow(name="promote", log_prints=True, flow_run_name="promote-{challenger}")
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

    Args:
        challenger: Registry version or alias to judge.
        state_dir: Reference window and events (absolute path).
        tracking_uri: MLflow tracking URI; empty: MLFLOW_TRACKING_URI, else the local sqlite.
        scenarios: Held-back scenarios; empty: the reference window's.
        seeds: Held-back seeds; empty: seeds evolution never used.
        scale: Scenario size in (0, 1]: the evolve flow's default, so both judge alike.
        margin: The challenger's 95 % lower bound of the mean paired gain must clear this.
        tolerance: Largest loss allowed on any one scenario.
        admin_url: The router's admin API; empty: decide and move the alias only.
        admin_token: Bearer token; empty: AUTOPOIESIS_ADMIN_TOKEN or the file named by
            AUTOPOIESIS_ADMIN_TOKEN_FILE (never pass it as a deployment parameter).
        telemetry_dir: Live telemetry watched during the dwell period after a swap.
        dwell_s: Seconds of live watching after a swap; 0: no watch.
        rollback_tolerance: SLO-attainment drop that rolls the swap back.
        min_live_requests: Fewest live requests the watch needs to judge.
        windows_dir: Folder of window files; empty: <state_dir>/windows.
        backend: Sandbox of the paired re-runs: process, docker or auto.
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
        log.info("no champion yet: version %s (%s) becomes the champion as it is",
                 chal.version, chal.name)
        return {"promoted": True, "version": chal.version, "reasons": ["no champion yet"]}
    champ = reg.fetch(CHAMPION)
    wdir = windows_dir_of(state_dir, windows_dir)
    if not scenarios and read_reference(state_dir) is None:
        scenarios = list(PromotionConfig().scenarios)
    scenarios = scenarios_to_replay(state_dir, scenarios, wdir, None)
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
    log.info("challenger v%s (%s) vs champion v%s (%s) on %s, seeds %s: mean paired gain "
             "%+.4f, 95%% interval [%+.4f, %+.4f]; %s: %s", chal.version, chal.name,
             champ.version, champ.name, ", ".join(scenarios), list(cfg.seeds),
             dec["mean_diff"], dec["ci_low"], dec["ci_high"],
             "PROMOTED" if dec["promote"] else "not promoted", "; ".join(dec["reasons"]))
    if dec["promote"]:
        reg.set_alias(CHAMPION, chal.version)
        reg.tag(chal.version, "promoted_from", champ.version)
        record_event(state_dir, "promoted", version=chal.version, previous=champ.version,
                     scenarios=scenarios)
        if admin_url and admin_token:
            w = _swap_and_watch(
                AdminClient(admin_url, admin_token), reg, chal.version, champ.version, state_dir,
                telemetry_dir if dwell_s > 0 else None,
                WatchConfig(dwell_s=dwell_s, tolerance=rollback_tolerance,
                            min_requests=min_live_requests),
            )
            if w is not None:
                out["rolled_back"] = w["rolled_back"]
                out["live"] = w
                metrics |= {f"live_before.{k}": v for k, v in w["before"].items()}
                metrics |= {f"live_after.{k}": v for k, v in w["after"].items()}
                metrics["rolled_back"] = float(w["rolled_back"])
    else:
        record_event(state_dir, "not_promoted", version=chal.version, reasons=dec["reasons"])
    verdict = (f"v{chal.version} promoted over v{champ.version}" if dec["promote"]
               else f"v{chal.version} not promoted (v{champ.version} stays champion)")
    if out["rolled_back"]:
        verdict += ", then rolled back on a live regression"
    out["mlflow_run_id"] = log_control_run(
        tracking_uri, f"promote-v{chal.version}", "promotion", metrics, params,
        {"decision.json": json.dumps(out, indent=1, default=str)},
        description=f"{verdict}: {'; '.join(dec['reasons'])}",
    )
    _decision_artifact(verdict, champ, chal, dec)
    return out
