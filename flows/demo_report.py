"""What the closed-loop demo (``flows.demo``) reports: live metrics before and after the
swap, beside the best static baseline replayed live on the same requests, and the
verdict, metric by metric, of what improved and what did not.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.demo_traffic import FLEET, DemoConfig, best_baseline, traffic_scenario
from flows.live import LiveSLO, live_metrics
from flows.live_cluster import LiveCluster
from sandbox.replay.loadgen import Shot, run_load

if TYPE_CHECKING:
    from flows.demo import ControlLoop, DemoSetup


def phase_metrics(results: list[Any], slo: LiveSLO) -> dict[str, float]:
    import pandas as pd

    frame = pd.DataFrame(
        {
            "status": ["ok" if r.ok else "error" for r in results],
            "ttft_s": [r.ttft_s for r in results],
            "tpot_s": [r.tpot_s for r in results],
            "e2e_s": [r.e2e_s for r in results],
        }
    )
    return live_metrics(frame, slo)


def _first(events: list[dict[str, Any]], kind: str) -> float | None:
    """When the first event of ``kind`` happened (unix s); None: it did not."""
    ts = [e["t"] for e in events if e["event"] == kind]
    return min(ts) if ts else None


def split_at_swap(
    code: list[Shot], code_results: list[Any], t0: float, swap_t: float | None
) -> tuple[list[Any], list[int]]:
    """The code traffic's results sent before the swap (all of them without one), and the
    indices of the requests sent 2 s or more after it (none without one)."""
    before = [
        r for s, r in zip(code, code_results, strict=True) if swap_t is None or t0 + s.at < swap_t
    ]
    after_idx = [i for i, s in enumerate(code) if swap_t is not None and t0 + s.at >= swap_t + 2.0]
    return before, after_idx


def report(
    cfg: DemoConfig,
    setup: DemoSetup,
    conv: list[Shot],
    code: list[Shot],
    results: list[Any],
    control: ControlLoop,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The run's result: live metrics of the code traffic before and after the swap,
    beside the best static choice, and when the loop reacted."""
    from flows.control_state import read_events
    from flows.registry import CHAMPION, PolicyRegistry

    t0 = control.t0
    events = read_events(setup.state)
    shift_at = t0 + cfg.conv_s
    drift_t, swap_t = _first(events, "drift"), _first(events, "swapped")
    code_results = results[len(conv) :]
    before, after_idx = split_at_swap(code, code_results, t0, swap_t)
    after = [code_results[i] for i in after_idx]
    champion_now = PolicyRegistry(setup.uri).version_of(CHAMPION)
    # The static choice is measured on the requests the live result it is set beside
    # served: those after the swap, or (no promotion) the whole post-shift traffic.
    static = best_static(
        cfg,
        code,
        after_idx or list(range(len(code))),
        setup.work / f"telemetry-static-{setup.stamp}",
        log,
    )
    before_m = phase_metrics(before, cfg.slo)
    after_m = phase_metrics(after, cfg.slo) if after else None
    live_now = after_m if after else phase_metrics(code_results, cfg.slo)
    return {
        "champion": setup.champion,
        "before": before_m,
        "after": after_m,
        "best_static": static,
        "verdict": {
            "after_vs_before": verdict(after_m, before_m),
            "live_vs_best_static": verdict(live_now, static["metrics"] if static else None),
        },
        "conversation": phase_metrics(results[: len(conv)], cfg.slo),
        "promoted_version": champion_now if champion_now != setup.version else None,
        "baseline_version": setup.version,
        "drift_detected_s": None if drift_t is None else drift_t - shift_at,
        "promoted_s": None if swap_t is None else swap_t - shift_at,
        "events": events,
        "control_error": control.error,
        "pulls": control.cycles,
        "tracking_uri": setup.uri,
        "telemetry_dir": str(setup.telemetry),
    }


def best_static(
    cfg: DemoConfig, code: list[Shot], same: list[int], telemetry: Path, log: Callable[[str], None]
) -> dict[str, Any] | None:
    """The best baseline for the post-shift traffic, replayed live on the same requests.

    Chosen in the simulator on the post-shift traffic (what an operator who knew the new
    traffic would configure), then run from a fresh cluster on the same code shots; its
    metrics are over the requests ``same`` (indices into ``code``).
    """
    if not cfg.replay_best_static:
        return None
    from serving.policy_loader import builtin_source

    name, scores = best_baseline(traffic_scenario("code", cfg.code_rate, cfg.code_s, cfg.seed, cfg))
    log(f"best static baseline for the post-shift traffic: {name}; replaying it live")
    replay = [Shot(s.at - cfg.conv_s, s.prompt, s.max_tokens, s.session_id) for s in code]
    cluster = LiveCluster(FLEET, cfg.time_scale, telemetry, engines=cfg.engines)
    extra = {"ignore_eos": True} if cfg.engines == "llamacpp" else None

    async def main() -> list[Any]:
        await cluster.start(builtin_source(name), "static", name)
        try:
            results, _ = await run_load(cluster.url, replay, timeout_s=120.0, extra_body=extra)
            return results
        finally:
            await cluster.close()

    results = asyncio.run(main())
    return {
        "name": name,
        "simulated_objectives": scores,
        "metrics": phase_metrics([results[i] for i in same], cfg.slo),
    }


LOWER_IS_BETTER = ("ttft_p50_s", "ttft_p99_s", "e2e_p50_s", "e2e_p99_s")
ATTAINMENT_NOISE = 0.005
"""Attainment differences below this are "unchanged" (one request in 200)."""
LATENCY_NOISE = 0.05
"""Relative latency differences below this are "unchanged"."""


def verdict(now: dict[str, float] | None, ref: dict[str, float] | None) -> dict[str, list[str]]:
    """Metric by metric, whether ``now`` is better, worse or unchanged against ``ref``."""
    out: dict[str, list[str]] = {"better": [], "worse": [], "unchanged": [], "missing": []}
    for key in ("slo_attainment", *LOWER_IS_BETTER):
        a, b = (now or {}).get(key, math.nan), (ref or {}).get(key, math.nan)
        if math.isnan(a) or math.isnan(b):
            out["missing"].append(key)
            continue
        if key == "slo_attainment":
            delta, noise, text = a - b, ATTAINMENT_NOISE, f"{key} {b:.3f} -> {a:.3f}"
        else:
            delta = (b - a) / b if b > 0 else 0.0  # positive: faster
            noise, text = LATENCY_NOISE, f"{key} {b:.2f}s -> {a:.2f}s"
        side = "better" if delta > noise else "worse" if delta < -noise else "unchanged"
        out[side].append(text)
    return out


def verdict_line(label: str, v: dict[str, list[str]]) -> str:
    parts = [
        f"{side}: {', '.join(v[side])}" for side in ("better", "worse", "unchanged") if v[side]
    ]
    return f"{label}: " + ("; ".join(parts) if parts else "nothing to compare")
