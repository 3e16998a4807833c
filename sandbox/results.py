"""What a simulation produces: one row per request, and its aggregates.

``SimResult.summary()`` has the aggregates every objective is computed from, and
``objective`` under the default one (``slo``); ``sandbox.objectives`` defines the
objectives and how an evaluation's runs combine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sandbox.objectives import gpu_share, slo_objective

STATUS_OK, STATUS_TIMEOUT, STATUS_REJECTED = 0, 1, 2
STATUS_NAMES = {STATUS_OK: "ok", STATUS_TIMEOUT: "timeout", STATUS_REJECTED: "rejected"}


@dataclass
class DecisionTimes:
    """Wall time a policy spent deciding, per call."""

    route: list[float] = field(default_factory=list)
    reschedule: list[float] = field(default_factory=list)
    charged_s: float = 0.0

    def stats(self) -> dict[str, float]:
        out: dict[str, float] = {"charged_s": self.charged_s}
        for name, times in (("route", self.route), ("reschedule", self.reschedule)):
            arr = np.asarray(times) if times else np.zeros(1)
            out[f"{name}_calls"] = float(len(times))
            out[f"{name}_mean_s"] = float(arr.mean())
            out[f"{name}_p99_s"] = float(np.percentile(arr, 99))
            out[f"{name}_max_s"] = float(arr.max())
        return out


class RequestOutcomes:
    """Each request's outcome as a simulation records it, one write at a time.

    Plain lists (writing one element of a numpy array costs several times more), made
    arrays once, for the ``SimResult``, at the end. A request never finished stays a
    timeout, NaN latencies, replica -1.
    """

    __slots__ = ("e2e", "preemptions", "queue", "replica", "retries", "status", "tpot", "ttft")

    def __init__(self, n: int) -> None:
        nan = math.nan
        self.ttft = [nan] * n
        self.tpot = [nan] * n
        self.e2e = [nan] * n
        self.queue = [nan] * n
        self.replica = [-1] * n
        self.preemptions = [0] * n
        self.retries = [0] * n
        self.status = [STATUS_TIMEOUT] * n

    def columns(self) -> dict[str, np.ndarray]:
        """The ``SimResult`` per-request columns."""
        return {
            "ttft_s": np.array(self.ttft, dtype=float),
            "tpot_s": np.array(self.tpot, dtype=float),
            "e2e_s": np.array(self.e2e, dtype=float),
            "queue_s": np.array(self.queue, dtype=float),
            "replica": np.array(self.replica, dtype=np.int64),
            "preemptions": np.array(self.preemptions, dtype=np.int64),
            "retries": np.array(self.retries, dtype=np.int64),
            "status": np.array(self.status, dtype=np.int8),
        }


@dataclass
class SimResult:
    scenario: str
    policy: str
    arrival_s: np.ndarray
    ttft_s: np.ndarray
    tpot_s: np.ndarray
    e2e_s: np.ndarray
    queue_s: np.ndarray
    replica: np.ndarray
    preemptions: np.ndarray
    retries: np.ndarray
    status: np.ndarray
    slo_ttft_s: float
    slo_tpot_s: float
    gpu_seconds: float
    end_s: float
    decisions: DecisionTimes
    replans: int = 0
    engine_steps: int = 0
    wall_s: float = 0.0
    plan_gpus: int = 0
    """GPUs of the scenario's starting plan: the reference of ``gpu_share``."""

    def slo_met(self) -> np.ndarray:
        ok = self.status == STATUS_OK
        # A single-token answer has no TPOT; like vLLM's benchmarks, it cannot miss it.
        tpot_ok = np.isnan(self.tpot_s) | (self.tpot_s <= self.slo_tpot_s)
        return ok & (self.ttft_s <= self.slo_ttft_s) & tpot_ok

    def summary(self) -> dict[str, float]:
        n = len(self.status)
        ok = self.status == STATUS_OK
        met = self.slo_met()
        out: dict[str, float] = {
            "requests": float(n),
            "completed": float(ok.sum()),
            "failed": float(n - ok.sum()),
            "slo_attainment": float(met.mean()) if n else 0.0,
        }
        first = float(self.arrival_s[0]) if n else 0.0
        last_finish = float(np.max((self.arrival_s + self.e2e_s)[ok])) if ok.any() else first
        out["makespan_s"] = last_finish - first
        span = max(float(self.arrival_s[-1]) - first, 1e-9) if n else 1e-9
        out["goodput_rps"] = float(met.sum()) / max(out["makespan_s"], span)
        for name, values in (("ttft", self.ttft_s), ("tpot", self.tpot_s), ("e2e", self.e2e_s)):
            v = values[ok & ~np.isnan(values)]
            if len(v) == 0:
                v = np.array([math.nan])
            out[f"{name}_mean_s"] = float(v.mean())
            for q in (50, 90, 99):
                out[f"{name}_p{q}_s"] = float(np.percentile(v, q))
        out["queue_mean_s"] = float(np.nanmean(self.queue_s[ok])) if ok.any() else math.nan
        out["preemptions"] = float(self.preemptions.sum())
        out["retries"] = float(self.retries.sum())
        out["gpu_seconds"] = self.gpu_seconds
        out["gpu_share"] = gpu_share(self.gpu_seconds, self.plan_gpus, self.end_s)
        out["replans"] = float(self.replans)
        out["objective"] = slo_objective(out["slo_attainment"], out["e2e_mean_s"])
        return out

    def decision_stats(self) -> dict[str, float]:
        return self.decisions.stats()

    def requests_frame(self):  # pandas is optional here to keep the hot path lean
        import pandas as pd

        return pd.DataFrame(
            {
                "arrival_s": self.arrival_s,
                "ttft_s": self.ttft_s,
                "tpot_s": self.tpot_s,
                "e2e_s": self.e2e_s,
                "queue_s": self.queue_s,
                "replica": self.replica,
                "preemptions": self.preemptions,
                "retries": self.retries,
                "status": [STATUS_NAMES[int(s)] for s in self.status],
            }
        )
