"""Train and test splits: which part of a trace evolution may see, and which is held out.

A scenario replays a stretch of a public trace; its seed picks where the stretch starts.
The split decides *where the seed may pick from*, so that train and test stretches are
disjoint by construction, whatever the seeds: ``test`` draws from a reserved
``TEST_FRACTION`` of each trace's time span, ``train`` from the rest.

The reserved part is the newest one (the future, as a deployed policy meets it), except
where that part is not like the rest (``TEST_REGIONS``): the newest part of the Azure code
trace holds a six-minute lull at a seventh of its mean rate, which no stretch can span at
a calibrated load, so both Azure traces reserve their oldest part; Mooncake's prefix reuse
grows steadily over its span (9 % of prompt blocks reused within a 150 s stretch at its
start, 60 % at its end), so it reserves its middle and trains on both ends. A stretch
never straddles two parts: the train side of Mooncake is two separate regions.

Length-only sets (BWB, ShareGPT, ...) have no time order: their rows are split by a fixed
seeded permutation instead (``pool_rows``). Evolution, tuning and promotion score on
``train`` only; reports of a champion against the baselines use ``test`` only.

A pulled live window (``window:`` scenarios) is already one side of the pull flow's own
split (the older part of the window is evolved on, the newest part judges promotion), so
window scenarios ignore ``split``. ``split_by_time`` is the same cut for any workload
(``evolve --trace``).
"""

from __future__ import annotations

import zlib
from typing import Literal, cast

import numpy as np

from sandbox.transforms import time_slice
from sandbox.workload import Workload, WorkloadError

Split = Literal["train", "test"]
SPLITS: tuple[Split, ...] = ("train", "test")

TEST_FRACTION = 0.4
"""40 % of each trace is held out: test stretches (up to ~25 % of a trace's span at the
calibrated loads) fit in it with room for the seeds to differ."""

TEST_REGIONS: dict[str, tuple[float, float]] = {
    "azure-conv": (0.0, TEST_FRACTION),
    "azure-code": (0.0, TEST_FRACTION),
    "mooncake": (0.3, 0.3 + TEST_FRACTION),
}
"""Where each catalogue trace's test part lies (fractions of its span); any other trace
holds out its newest ``TEST_FRACTION``."""

Regions = tuple[tuple[float, float], ...]


def check_split(split: str) -> Split:
    """``split`` itself, or a one-line ValueError naming the known splits."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    return cast(Split, split)


def split_regions(split: str, trace: str = "", test_fraction: float = TEST_FRACTION) -> Regions:
    """The parts of trace ``trace``'s span (fractions ``(lo, hi)``) that ``split`` draws from."""
    check_split(split)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction must be in (0, 1), got {test_fraction!r}")
    lo, hi = TEST_REGIONS.get(trace, (1.0 - test_fraction, 1.0))
    if split == "test":
        return ((lo, hi),)
    return tuple(part for part in ((0.0, lo), (hi, 1.0)) if part[1] > part[0])


def split_by_time(w: Workload, test_fraction: float = TEST_FRACTION) -> tuple[Workload, Workload]:
    """``(train, test)``: the requests before and from the cut at ``1 - test_fraction`` of
    ``w``'s span, each re-zeroed to start at its own first instant."""
    ((lo, hi),) = split_regions("test", test_fraction=test_fraction)
    if len(w) < 4:
        raise WorkloadError(f"{w.name}: {len(w)} requests cannot be split into train and test")
    t0, span = float(w.arrival_s[0]), w.duration_s
    cut = t0 + lo * span
    train = time_slice(w, t0, cut)
    test = time_slice(w, cut, t0 + hi * span + 1e-9)
    if len(train) < 2 or len(test) < 2:
        raise WorkloadError(f"{w.name}: splitting at {lo:.0%} of its span leaves a side empty")
    return train, test


def pool_rows(w: Workload, split: str, test_fraction: float = TEST_FRACTION) -> Workload:
    """The rows of a length-only pool that ``split`` may draw from.

    A permutation seeded by the pool's name (crc32: stable across processes) assigns
    ``test_fraction`` of the rows to ``test``; the file's row order (often sorted) plays
    no part, so both sides have the pool's length distribution.
    """
    check_split(split)
    order = np.random.default_rng(zlib.crc32(f"split/{w.name}".encode())).permutation(len(w))
    n_test = round(test_fraction * len(w))
    rows = np.sort(order[:n_test] if split == "test" else order[n_test:])
    if len(rows) == 0:
        raise WorkloadError(f"{w.name}: no rows left for the {split} split")
    return w.take(rows)
