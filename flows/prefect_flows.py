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

Each flow reads as its steps; the steps live in ``flows.pull_steps``,
``flows.evolve_steps`` and ``flows.promote_steps``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows import evolve_steps, promote_steps
from flows.control_state import (
    record_event,
    save_state,
    scenarios_to_replay,
    set_reference,
    windows_dir_of,
)
from flows.drift import DriftConfig
from flows.live import AdminClient, WatchConfig
from flows.pull_steps import (
    SETTLE_S,
    judge_drift,
    log_window_run,
    new_rows,
    outcome,
    reference_sample,
    save_windows,
    window_result,
)
from flows.pulled_window import build_window, default_fleet, sample_from, scenarios_for
from flows.registry import CHALLENGER, CHAMPION, PolicyRegistry

DEFAULT_STATE = Path("mlruns") / "control"


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
# Long by its parameter form (signature + Args: the deployment's UI form); the body is its steps.
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
    frame, skipped = new_rows(telemetry_dir, state, settle_s, min_requests, log)
    if skipped is not None:
        return skipped
    save_state(state / "watermark.json", {"arrival_unix_s": float(frame.arrival_unix_s.max())})
    window, cur, ref = build_window(frame), sample_from(frame), reference_sample(state)
    fallback = list(scenarios_for(window))
    wdir = windows_dir_of(state, windows_dir)
    fleet = cluster or default_fleet(window)
    sha, scen, holdout = save_windows(frame, fleet, wdir, fallback, log)
    out = window_result(window, sha, scen, holdout, fallback, fleet)
    report, judged = judge_drift(
        state, ref, cur, scen, fallback, DriftConfig(alpha=alpha, min_requests=min_requests)
    )
    out |= judged
    out["mlflow_run_id"] = log_window_run(
        tracking_uri, telemetry_dir, window, report, ref, cur, out
    )
    log.info("window: %d requests, %.2f req/s; %s", window.requests, window.rate, outcome(out))
    if out["trigger"]:
        record_event(state, "drift", reasons=out["reasons"], window_end=window.end_unix_s)
        params = {
            "scenarios": scen,
            "holdout_scenarios": holdout,
            "fallback_scenarios": fallback,
            "state_dir": state_dir,
            "windows_dir": wdir,
            "tracking_uri": tracking_uri,
            "chain": chain,
            **(evolve_params or {}),
        }
        out["evolve"] = _chain(chain, "evolve/evolve", evolve, params)
        # The new traffic is what the next champion is evolved on.
        set_reference(state, cur, scen, fallback)
    return out


# --------------------------------------------------------------------------- evolve
# Long by its parameter form (signature + Args: the deployment's UI form); the body is its steps.
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
    log = get_run_logger()
    evolve_steps.check_task_runner(task_runner)
    wdir = windows_dir_of(state_dir, windows_dir)
    scenarios = scenarios_to_replay(state_dir, scenarios, wdir, fallback_scenarios)
    log.info("evolve on %s (task runner %s)", ", ".join(scenarios), task_runner)
    cfg = evolve_steps.evolution_config(
        scenarios,
        wdir,
        generations=generations,
        population=population,
        tune_trials=tune_trials,
        scale=scale,
        llm_base_url=llm_base_url,
        llm_model=llm_model,
        llm_wait_s=llm_wait_s,
        backend=backend,
        parallel=parallel,
        seed=seed,
        seeds_policies=seeds_policies,
        confirm=confirm,
    )
    summary = evolve_steps.run_here(
        cfg, state_dir, tracking_uri, task_runner, dask_address, dask_workers
    )
    evolve_steps.report(summary, state_dir, scenarios, log)
    summary["scenarios"] = scenarios
    if summary["registered_version"] is not None:
        # Promotion judges on the held-back part of the window (and held-back seeds).
        params = {
            "challenger": summary["registered_version"],
            "state_dir": state_dir,
            "tracking_uri": tracking_uri,
            "scenarios": holdout_scenarios or scenarios,
            "windows_dir": wdir,
            **(promote_params or {}),
        }
        summary["promote"] = _chain(chain, "promote/promote", promote, params)
    return summary


# --------------------------------------------------------------------------- promote
# Long by its parameter form (signature + Args: the deployment's UI form); the body is its steps.
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

    log = get_run_logger()
    admin_token = admin_token or admin_token_from_env()
    reg = PolicyRegistry(tracking_uri)
    chal = reg.fetch(challenger)  # hash-checked
    if reg.version_of(CHAMPION) is None:
        return promote_steps.first_champion(reg, chal, log)
    champ = reg.fetch(CHAMPION)
    cfg = promote_steps.promotion_config(
        state_dir,
        scenarios,
        seeds,
        windows_dir,
        scale=scale,
        margin=margin,
        tolerance=tolerance,
        backend=backend,
    )
    dec = promote_steps.compare_task(champ.source, chal.source, cfg)
    out = promote_steps.decision_result(champ, chal, dec)
    metrics = promote_steps.decision_metrics(dec)
    promote_steps.log_decision(champ, chal, cfg, dec, log)
    if dec["promote"]:
        promote_steps.crown(reg, chal, champ, state_dir, list(cfg.scenarios))
        if admin_url and admin_token:
            admin = AdminClient(admin_url, admin_token)
            watched = telemetry_dir if dwell_s > 0 else None
            watch_cfg = WatchConfig(
                dwell_s=dwell_s, tolerance=rollback_tolerance, min_requests=min_live_requests
            )
            w = promote_steps.swap_and_watch(
                admin, reg, chal.version, champ.version, state_dir, watched, watch_cfg
            )
            if w is not None:
                out |= {"rolled_back": w["rolled_back"], "live": w}
                metrics |= promote_steps.watch_metrics(w)
    else:
        record_event(state_dir, "not_promoted", version=chal.version, reasons=dec["reasons"])
    verdict = promote_steps.verdict_of(champ, chal, dec["promote"], out["rolled_back"])
    out["mlflow_run_id"] = promote_steps.log_decision_run(
        tracking_uri, champ, chal, cfg, metrics, out, verdict
    )
    promote_steps.decision_artifact(verdict, champ, chal, dec)
    return out
