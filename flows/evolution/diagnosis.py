"""Where the champion loses: a per-scenario breakdown from the sandbox's summaries.

Latency is split into queueing (router hold + engine wait: ``queue_mean_s``),
prefill (TTFT beyond queueing) and decode (end-to-end beyond TTFT). SLO misses
come per scenario, worst first. The sandbox's summaries carry no per-replica
load, so imbalance is read from the tail: a p99/p50 TTFT ratio far above the
other scenarios' is what herding onto one replica looks like. Preemptions and
retries flag KV-cache overload and failures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def _f(summary: dict[str, float], key: str) -> float:
    v = summary.get(key, math.nan)
    return v if math.isfinite(v) else 0.0


def diagnose(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``results``: the ``Outcome.results`` rows (scenario, seed, summary, decision_stats)."""
    per: dict[str, list[dict[str, float]]] = {}
    for r in results:
        per.setdefault(r["scenario"], []).append(r["summary"])
    rows = []
    for name, sums in per.items():
        n = len(sums)

        def mean(key: str, sums: list[dict[str, float]] = sums, n: int = n) -> float:
            return sum(_f(s, key) for s in sums) / n

        queue, ttft, e2e = mean("queue_mean_s"), mean("ttft_mean_s"), mean("e2e_mean_s")
        prefill, decode = max(ttft - queue, 0.0), max(e2e - ttft, 0.0)
        total = queue + prefill + decode or 1.0
        parts = {"queueing": queue / total, "prefill": prefill / total, "decode": decode / total}
        p50 = mean("ttft_p50_s")
        rows.append(
            {
                "scenario": name,
                "slo_attainment": mean("slo_attainment"),
                "slo_miss": 1.0 - mean("slo_attainment"),
                "objective": mean("objective"),
                "time_share": parts,
                "dominant": max(parts, key=lambda k: parts[k]),
                "ttft_tail_ratio": mean("ttft_p99_s") / p50 if p50 > 0 else 0.0,
                "preemptions_per_request": mean("preemptions") / max(mean("requests"), 1.0),
                "retries": mean("retries"),
            }
        )
    rows.sort(key=lambda r: -r["slo_miss"])
    tails = sorted(r["ttft_tail_ratio"] for r in rows)
    median_tail = tails[len(tails) // 2] if tails else 0.0
    for r in rows:
        r["imbalance_suspected"] = bool(median_tail and r["ttft_tail_ratio"] > 2 * median_tail)
    return {"scenarios": rows}


def render(diag: dict[str, Any]) -> str:
    """Plain text for the prompt: one line per scenario, worst first."""
    lines = []
    for r in diag["scenarios"]:
        share = ", ".join(f"{k} {v:.0%}" for k, v in r["time_share"].items())
        flags = []
        if r["imbalance_suspected"]:
            flags.append("TTFT tail far above other scenarios: likely imbalance/herding")
        if r["preemptions_per_request"] > 0.01:
            flags.append(f"{r['preemptions_per_request']:.2f} KV preemptions per request")
        if r["retries"] > 0:
            flags.append(f"{r['retries']:.0f} retries after replica failures")
        extra = ("; " + "; ".join(flags)) if flags else ""
        lines.append(
            f"- {r['scenario']}: misses the SLO for {r['slo_miss']:.1%} of requests; "
            f"latency is {share} (dominant: {r['dominant']}); "
            f"TTFT p99/p50 = {r['ttft_tail_ratio']:.1f}{extra}"
        )
    return "\n".join(lines) if lines else "(no diagnosis available)"
