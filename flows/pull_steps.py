"""The steps of the ``pull-telemetry`` flow (``flows.prefect_flows.pull_telemetry``).

Settled rows past the watermark; the window saved as two window files, the part
evolution learns on and the newest part held back for promotion; the drift test
against the reference window; the window's run in the control experiment.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flows.control_state import load_state, read_reference, set_reference
from flows.control_tracking import log_control_run, window_plot
from flows.drift import DriftConfig, DriftReport, WindowSample, detect
from flows.pulled_window import Window, window_scenarios
from serving.telemetry import read_telemetry

SETTLE_S = 5.0
"""Rows are written when requests finish, so a request that arrived just before the
newest one may still be in flight: only arrivals this much older than the newest row
are consumed, and the watermark never passes an unfinished stretch."""
HOLDOUT_FRACTION = 0.25
"""The newest quarter of each window is kept from evolution and judges promotion."""


def new_rows(
    telemetry_dir: str, state: Path, settle_s: float, min_requests: int, log: Any
) -> tuple[Any, dict[str, Any] | None]:
    """The telemetry rows past the watermark that have settled, or why there are none to
    judge (the flow's result then)."""
    if not Path(telemetry_dir).exists():
        log.info(
            "no telemetry yet at %s (the router writes it once it serves): nothing to pull",
            telemetry_dir,
        )
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


def save_windows(
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


def window_result(
    window: Window,
    sha: str | None,
    scen: list[str],
    holdout: list[str],
    fallback: list[str],
    fleet: str,
) -> dict[str, Any]:
    """The flow's result for a window, before the drift test adds its verdict."""
    return {
        "requests": window.requests,
        "window": window.to_dict(),
        "scenarios": scen,
        "holdout_scenarios": holdout,
        "fallback_scenarios": fallback,
        "window_sha256": sha,
        "fleet": fleet,
        "trigger": False,
    }


def reference_sample(state: Path) -> WindowSample | None:
    """The reference window's sample, the one drift is measured against; None: none yet."""
    rec = read_reference(state)
    return WindowSample.from_dict(rec["sample"]) if rec else None


def judge_drift(
    state: Path,
    ref: WindowSample | None,
    cur: WindowSample,
    scen: list[str],
    fallback: list[str],
    cfg: DriftConfig,
) -> tuple[DriftReport | None, dict[str, Any]]:
    """The drift report of ``cur`` against ``ref`` and what it adds to the flow's result;
    the first window has nothing to be judged against and becomes the reference."""
    if ref is None:
        set_reference(state, cur, scen, fallback)
        return None, {"reason": "first window: kept as the reference"}
    report = detect(ref, cur, cfg)
    return report, {"trigger": report.trigger, "drift": report.metrics(), "reasons": report.reasons}


def outcome(out: dict[str, Any]) -> str:
    """The window's drift reasons, or why there are none, as one line."""
    return "; ".join(out.get("reasons") or [out.get("reason", "no drift")])


def log_window_run(
    tracking_uri: str | None,
    telemetry_dir: str,
    window: Window,
    report: DriftReport | None,
    ref: WindowSample | None,
    cur: WindowSample,
    out: dict[str, Any],
) -> str:
    """The window's run in the control experiment: its statistics, the drift test, its
    scenarios, the flow's result as ``window.json`` and the window's plot."""
    metrics = window.metrics() | (
        {f"drift.{k}": v for k, v in report.metrics().items()} if report else {}
    )
    return log_control_run(
        tracking_uri,
        "pull-telemetry",
        "pull",
        metrics,
        {
            "scenarios": ",".join(out["scenarios"]),
            "telemetry_dir": telemetry_dir,
            "window_sha256": str(out["window_sha256"]),
            "fleet": out["fleet"],
        },
        {"window.json": json.dumps(out, indent=1, default=str)},
        window_plot(ref, cur),
        description=f"Telemetry window of {window.requests} requests; " + outcome(out),
    )
