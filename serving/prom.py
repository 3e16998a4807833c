"""Minimal Prometheus text exposition: counters, gauges and histograms.

The router and the simulated engine each expose a handful of metrics; the
``prometheus_client`` package would add a dependency and a global registry
(awkward with several servers in one test process) for what is a few lines of
text. Metric names and formats follow the exposition format 0.0.4.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(
        f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in labels.items()
    )
    return "{" + inner + "}"


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def sample(name: str, value: float, labels: Mapping[str, str] | None = None) -> str:
    return f"{name}{_labels(labels or {})} {_num(value)}\n"


def header(name: str, kind: str, doc: str) -> str:
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"


class Histogram:
    """Cumulative-bucket histogram; ``observe`` is a bisect and two adds."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = sorted(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def render(self, name: str, labels: Mapping[str, str] | None = None) -> str:
        labels = dict(labels or {})
        out = []
        acc = 0
        for bound, n in zip([*self.bounds, math.inf], self.counts, strict=True):
            acc += n
            out.append(sample(f"{name}_bucket", acc, {**labels, "le": _num(bound)}))
        out.append(sample(f"{name}_sum", self.total, labels))
        out.append(sample(f"{name}_count", self.count, labels))
        return "".join(out)
