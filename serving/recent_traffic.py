"""The recent-traffic summary ``reschedule`` sees, kept by the router as requests pass.

A bounded deque of the last ``horizon_s`` seconds of arrivals; the summary is
computed only at a monitoring tick (about once a second), never per request.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import deque

from serving.contract import Request, WorkloadWindow


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return float(sorted_values[i])


class WindowTracker:
    def __init__(self, horizon_s: float = 60.0, max_requests: int = 100_000) -> None:
        self.horizon_s = horizon_s
        self._arrivals: deque[tuple[float, int, tuple[int, ...]]] = deque(maxlen=max_requests)
        self._outputs: deque[int] = deque(maxlen=10_000)

    def add(self, request: Request) -> None:
        self._arrivals.append((request.arrival, request.prompt_tokens, request.prefix_hashes))

    def finish(self, output_tokens: int) -> None:
        self._outputs.append(output_tokens)

    def summary(self, now: float) -> WorkloadWindow:
        while self._arrivals and self._arrivals[0][0] < now - self.horizon_s:
            self._arrivals.popleft()
        arr = list(self._arrivals)
        n = len(arr)
        times = [a[0] for a in arr]
        span = (times[-1] - times[0]) if n > 1 else 0.0
        iats = [b - a for a, b in itertools.pairwise(times)]
        cv = 0.0
        if len(iats) > 1 and statistics.fmean(iats) > 0:
            cv = statistics.pstdev(iats) / statistics.fmean(iats)
        prompts = sorted(float(a[1]) for a in arr)
        outputs = sorted(float(o) for o in self._outputs)
        seen: set[int] = set()
        reused = total = 0
        for _, _, hashes in arr:
            for h in hashes:
                total += 1
                if h in seen:
                    reused += 1
                else:
                    seen.add(h)
        return WorkloadWindow(
            duration_s=min(self.horizon_s, span) if n > 1 else 0.0,
            requests=n,
            arrival_rate=(n - 1) / span if span > 0 else 0.0,
            iat_cv=cv,
            input_p50=_pct(prompts, 0.5), input_p90=_pct(prompts, 0.9),
            input_p99=_pct(prompts, 0.99),
            output_p50=_pct(outputs, 0.5), output_p90=_pct(outputs, 0.9),
            output_p99=_pct(outputs, 0.99),
            prefix_reuse=reused / total if total else 0.0,
        )
