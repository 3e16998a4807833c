"""The live side of promotion: the router's admin API, live SLOs from telemetry, rollback.

``AdminClient`` speaks the router's admin API (bearer token; loads are
sha256-checked by the router). ``live_metrics`` turns telemetry rows into SLO
attainment and latency percentiles. ``watch`` is the dwell period after a
swap: it compares the new version's live attainment with the previous
version's just before the swap and, on a regression, rolls back both the
router and the ``champion`` alias.
"""

from __future__ import annotations

import json
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serving.admin import RegistryPolicy
from serving.telemetry import read_telemetry


class AdminError(RuntimeError):
    pass


def admin_token_from_env() -> str | None:
    """The router's admin token from ``AUTOPOIESIS_ADMIN_TOKEN``, else from the file named
    by ``AUTOPOIESIS_ADMIN_TOKEN_FILE`` (deployments: a secret is never a flow parameter)."""
    token = os.environ.get("AUTOPOIESIS_ADMIN_TOKEN", "").strip()
    path = os.environ.get("AUTOPOIESIS_ADMIN_TOKEN_FILE", "")
    if not token and path and Path(path).is_file():
        token = Path(path).read_text().strip()
    return token or None


class AdminClient:
    def __init__(self, url: str, token: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise AdminError(f"{method} {path}: HTTP {e.code}: {e.read()[:300]!r}") from e
        except (urllib.error.URLError, OSError) as e:
            raise AdminError(f"{method} {path}: {e}") from e

    def policy(self) -> dict[str, Any]:
        return self._call("GET", "/admin/policy")

    def load(self, p: RegistryPolicy) -> dict[str, Any]:
        return self._call(
            "POST",
            "/admin/policy",
            {"source": p.source, "sha256": p.sha256, "version": p.version, "name": p.name},
        )

    def rollback(self) -> dict[str, Any]:
        return self._call("POST", "/admin/rollback", {})


@dataclass(frozen=True)
class LiveSLO:
    ttft_s: float = 2.0
    tpot_s: float = 0.1


def slo_met(frame: pd.DataFrame, slo: LiveSLO) -> np.ndarray:
    """One bool per row: finished ok within both SLOs (a one-token reply has no TPOT)."""
    if frame.empty:
        return np.zeros(0, dtype=bool)
    ok = frame["status"].to_numpy() == "ok"
    ttft = frame["ttft_s"].to_numpy(dtype=float)
    tpot = frame["tpot_s"].to_numpy(dtype=float)
    return ok & (ttft <= slo.ttft_s) & (np.isnan(tpot) | (tpot <= slo.tpot_s))


def live_metrics(frame: pd.DataFrame, slo: LiveSLO | None = None) -> dict[str, float]:
    slo = slo or LiveSLO()
    met = slo_met(frame, slo)

    def pct(col: str, q: float) -> float:
        v = frame[col].to_numpy(dtype=float) if not frame.empty else np.zeros(0)
        v = v[~np.isnan(v)]
        return float(np.quantile(v, q)) if len(v) else math.nan

    return {
        "requests": float(len(frame)),
        "slo_attainment": float(met.mean()) if len(met) else math.nan,
        "ttft_p50_s": pct("ttft_s", 0.5),
        "ttft_p99_s": pct("ttft_s", 0.99),
        "e2e_p50_s": pct("e2e_s", 0.5),
        "e2e_p99_s": pct("e2e_s", 0.99),
    }


@dataclass(frozen=True)
class WatchConfig:
    dwell_s: float = 30.0
    poll_s: float = 2.0
    min_requests: int = 30
    """Fewer rows of the new version by the end of the dwell: no verdict, keep it."""
    tolerance: float = 0.05
    """Roll back when live attainment falls more than this below the previous version's."""
    baseline_s: float = 60.0
    """How far before the swap the previous version's attainment is measured."""
    slo: LiveSLO = LiveSLO()


def watch(
    telemetry_dir: str | Path,
    version: str,
    previous_version: str | None,
    swapped_at: float,
    cfg: WatchConfig,
    on_regression: Callable[[dict[str, float]], None],
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Dwell after a swap; call ``on_regression`` (rollback) if live SLOs regress."""
    frame = read_telemetry(telemetry_dir, since_unix_s=swapped_at - cfg.baseline_s)
    before = frame[(frame.arrival_unix_s < swapped_at)]
    if previous_version is not None:
        before = before[before.policy_version == previous_version]
    base = live_metrics(before, cfg.slo)
    deadline = time.time() + cfg.dwell_s
    after: dict[str, float] = {}
    while True:  # bounded by the dwell deadline
        cur = read_telemetry(telemetry_dir, since_unix_s=swapped_at)
        # A request the new policy held until it timed out carries no version: it counts.
        cur = cur[(cur.policy_version == version) | (cur.policy_version.fillna("") == "")]
        after = live_metrics(cur, cfg.slo)
        regressed = (
            after["requests"] >= cfg.min_requests
            and not math.isnan(base["slo_attainment"])
            and after["slo_attainment"] < base["slo_attainment"] - cfg.tolerance
        )
        if regressed:
            on_regression(after)
            return {"rolled_back": True, "before": base, "after": after}
        if time.time() >= deadline:
            return {"rolled_back": False, "before": base, "after": after}
        sleep(min(cfg.poll_s, max(0.0, deadline - time.time())))
