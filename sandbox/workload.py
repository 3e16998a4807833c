"""A workload: the requests a scenario replays, as columns.

Columns are numpy arrays of equal length, sorted by arrival. ``prefix_hashes``
holds, per request, the hashes of consecutive prompt chunks of
``prefix_block_tokens`` tokens (empty tuples when the trace has none).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class WorkloadError(ValueError):
    """A trace or workload that cannot be used, with what is wrong in the message."""


@dataclass(frozen=True)
class Workload:
    arrival_s: np.ndarray  # float64, seconds from the workload's start, non-decreasing
    prompt_tokens: np.ndarray  # int64 >= 1
    output_tokens: np.ndarray  # int64 >= 1: what the engine will generate
    max_tokens: np.ndarray  # int64: the client's cap, policies' max_output_tokens (traces.py)
    prefix_hashes: tuple[tuple[int, ...], ...] = ()
    prefix_block_tokens: int = 16
    session_ids: tuple[str, ...] = ()
    name: str = "workload"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        for col in ("prompt_tokens", "output_tokens", "max_tokens"):
            if len(getattr(self, col)) != n:
                got = len(getattr(self, col))
                raise WorkloadError(f"{self.name}: column {col} has {got} rows, expected {n}")
        for col in ("prefix_hashes", "session_ids"):
            if getattr(self, col) and len(getattr(self, col)) != n:
                got = len(getattr(self, col))
                raise WorkloadError(f"{self.name}: column {col} has {got} rows, expected {n}")
        if n and np.any(np.diff(self.arrival_s) < 0):
            raise WorkloadError(f"{self.name}: arrivals are not sorted by time")
        if n and (self.prompt_tokens.min() < 1 or self.output_tokens.min() < 1):
            raise WorkloadError(f"{self.name}: prompt and output lengths must be >= 1 token")

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) > 1 else 0.0

    @property
    def has_prefixes(self) -> bool:
        return bool(self.prefix_hashes)

    def take(
        self,
        index: np.ndarray | slice,
        *,
        arrival_s: np.ndarray | None = None,
        name: str | None = None,
    ) -> Workload:
        """The requests at ``index`` (a slice, a boolean mask or positions).

        Arrival times are kept unless ``arrival_s`` gives new ones (one per
        selected request); either way the result must be sorted by arrival.
        """
        if isinstance(index, slice):
            pos = np.arange(len(self))[index]
        else:
            index = np.asarray(index)
            pos = np.flatnonzero(index) if index.dtype == bool else index.astype(np.int64)
        return Workload(
            arrival_s=self.arrival_s[pos] if arrival_s is None else np.asarray(arrival_s),
            prompt_tokens=self.prompt_tokens[pos],
            output_tokens=self.output_tokens[pos],
            max_tokens=self.max_tokens[pos],
            prefix_hashes=tuple(self.prefix_hashes[i] for i in pos) if self.prefix_hashes else (),
            prefix_block_tokens=self.prefix_block_tokens,
            session_ids=tuple(self.session_ids[i] for i in pos) if self.session_ids else (),
            name=self.name if name is None else name,
            meta=dict(self.meta),
        )

    def slice(self, start: int, stop: int | None = None) -> Workload:
        """Requests ``start:stop`` by position (not by time; see transforms.time_slice)."""
        return self.take(slice(start, stop))
