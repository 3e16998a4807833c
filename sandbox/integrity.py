"""What the harness checks before it trusts a run (a failed check: stage ``integrity``).

Tamper detection: the harness takes a ``snapshot()`` of the trusted modules (the
standard modules a policy could patch to cheat the clock or the numbers, and everything
of ``serving`` and ``sandbox``) before it loads a candidate, and compares after loading
it and after every run: a replaced, deleted or added function or class member is a
rejection, not a score. Results: every metric and decision statistic a finite number,
in range.
"""

from __future__ import annotations

import math
import sys
import types
from typing import Any

_WATCHED_MODULES = ("builtins", "time", "random", "math", "json", "numpy")


def _watched() -> list[types.ModuleType]:
    mods = [sys.modules[m] for m in _WATCHED_MODULES if m in sys.modules]
    mods += [
        m
        for name, m in list(sys.modules.items())
        if isinstance(m, types.ModuleType) and name.split(".")[0] in ("serving", "sandbox")
    ]
    return mods


def snapshot() -> dict[tuple[str, str], int]:
    """Identity of every function and class (and class member) of the trusted modules.

    Plain data globals are left out: a module may legitimately rebind a cache.
    """
    snap: dict[tuple[str, str], int] = {}
    for mod in _watched():
        mname = mod.__name__
        for key, value in list(vars(mod).items()):
            if callable(value) or isinstance(value, types.ModuleType):
                snap[(mname, key)] = id(value)
            if isinstance(value, type) and getattr(value, "__module__", None) == mname:
                for ckey, cval in list(vars(value).items()):
                    if callable(cval) or isinstance(cval, staticmethod | classmethod | property):
                        snap[(mname, f"{key}.{ckey}")] = id(cval)
    return snap


def tampered(before: dict[tuple[str, str], int]) -> str | None:
    """What the policy replaced or deleted since ``before`` (a ``snapshot()``), if anything."""
    after = snapshot()
    for k, ident in before.items():
        if after.get(k) != ident:
            what = "replaced" if k in after else "deleted"
            return f"policy tampered with trusted code: {k[0]}.{k[1]} was {what}"
    # A member added to a trusted class can shadow an inherited one (``Simulation``
    # inherits its cluster side from ``sim_cluster.ClusterSide``).
    for k in sorted(after.keys() - before.keys()):
        owner, dot, _ = k[1].partition(".")
        if dot and (k[0], owner) in before:
            return f"policy tampered with trusted code: {k[0]}.{k[1]} was added"
    return None


def summary_problem(summary: dict[str, Any], stats: dict[str, Any]) -> str | None:
    """What makes a run's summary or decision stats untrustworthy, if anything."""
    for label, d in (("metric", summary), ("decision stat", stats)):
        for k, v in d.items():
            if isinstance(v, bool):
                continue
            if not isinstance(v, int | float):
                return f"{label} '{k}' is not a number ({type(v).__name__})"
            if not math.isfinite(v):
                return f"{label} '{k}' is {v} (non-finite)"
    slo = summary.get("slo_attainment")
    if slo is not None and not 0.0 <= slo <= 1.0:
        return f"metric 'slo_attainment' = {slo} is outside [0, 1]"
    for k in ("completed", "failed", "gpu_seconds", "makespan_s", "ttft_p50_s", "ttft_p99_s"):
        if k in summary and summary[k] < 0:
            return f"metric '{k}' = {summary[k]} is negative"
    return None
