"""Building blocks of the scenario catalogue: stretches of a trace at a calibrated load.

``trace_segment`` cuts a stretch of a shared trace out of one split's region and
compresses its gaps to a target rate (so the trace's burst structure is kept);
``at_utilization`` states that rate as a fraction of a fleet's capacity; ``ramp`` warps a
stretch's clock into a linear load ramp; ``thin`` drops whole request groups (sessions or
prefix groups) so that a smaller fleet sees the same per-replica load *and* the same
prefix sharing. ``sandbox.scenarios`` composes them into the named scenarios.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache

import numpy as np

from sandbox.splits import split_regions
from sandbox.traces import load_trace, trace_path
from sandbox.workload import Workload, WorkloadError
from serving.capacity import saturation_rps
from serving.contract import ReplicaSpec
from serving.engine import EngineConfig
from serving.hardware import kv_block_capacity
from serving.steptime import step_time_model

# Length-only sets have no arrival times: they are loaded as a pool of (prompt, output)
# pairs to draw from (the arrivals given here are placeholders, never replayed).
_LENGTH_ONLY = frozenset({"arxiv", "sharegpt", "bwb"})


@lru_cache(maxsize=16)
def _cached_trace(name: str, path: str, mtime_ns: int) -> Workload:
    # Keyed by path and mtime so a changed AUTOPOIESIS_SHARED or file is reloaded.
    if name in _LENGTH_ONLY:
        return load_trace(path, name=name, rate=1.0, seed=0)
    return load_trace(path, name=name)


def trace(name: str) -> Workload:
    """A named shared trace, loaded once per process (benches build many scenarios)."""
    path = trace_path(name)
    return _cached_trace(name, str(path), path.stat().st_mtime_ns)


def fleet_capacity(
    model: str, specs: tuple[ReplicaSpec, ...], prompt: float, output: float
) -> float:
    """Estimated saturation throughput (req/s) of ``specs`` for requests of these mean lengths.

    ``serving.capacity.saturation_rps`` summed over the replicas: the planner's own
    back-of-the-envelope, which tracks the simulated knee to ~10 % on these traces.
    """
    config = EngineConfig()
    return sum(
        saturation_rps(
            step_time_model(model, s.gpu, s.tp),
            kv_block_capacity(model, s.gpu, s.tp, config.gpu_memory_utilization, config.block_size),
            config,
            prompt,
            output,
        )
        for s in specs
    )


def at_utilization(
    util: float, model: str, specs: tuple[ReplicaSpec, ...]
) -> Callable[[Workload], float]:
    """A rate rule for ``trace_segment``: ``util`` x the fleet's capacity for the stretch.

    Normalising on work, not on request count, is what keeps seeds at one load: the Azure
    conv trace's mean prompt drifts from ~860 to ~1,400 tokens between stretches, which
    moves a llama-3-70b TP4 replica's knee from ~12 to ~9 req/s.
    """

    def rate(stretch: Workload) -> float:
        prompt = float(stretch.prompt_tokens.mean())
        output = float(stretch.output_tokens.mean())
        return util * fleet_capacity(model, specs, prompt, output)

    return rate


def trace_segment(
    source: Workload,
    rate: float | Callable[[Workload], float],
    duration_s: float,
    rng: np.random.Generator,
    split: str = "train",
) -> Workload:
    """A stretch of ``source`` from ``split``'s region, rate-scaled to ``duration_s``.

    ``rate`` (req/s) is a number, or a rule computing it from the stretch
    (``at_utilization``). The stretch holds the ``rate x duration_s`` consecutive
    requests of the trace from its first one, so that once its gaps are compressed it
    lasts ``duration_s`` at that rate; it lies inside one of the split's regions of the
    trace (``sandbox.splits``), so train and test stretches never share a request. The
    seed (``rng``) draws where it sits, as a relative position among the requests a
    stretch can start from (0: the region's first, 1: as late as it still fits); the rate is
    normalised on the stretch itself (a few fixed-point steps) because the traces drift
    (Azure conv: 37-507 req/min over the hour), so a fixed factor would put different
    seeds at different loads.
    """
    arrivals, span = source.arrival_s, source.duration_s
    # Each region's requests are [first, end); a stretch ends before the request after its
    # last one, which must still be in the region: a stretch never straddles two regions.
    regions = [
        (int(np.searchsorted(arrivals, lo * span)), int(np.searchsorted(arrivals, hi * span)))
        for lo, hi in split_regions(split, source.name)
    ]

    def target(stretch: Workload) -> float:
        return float(rate(stretch)) if callable(rate) else float(rate)

    def first_of(count: int) -> int:
        return _first_request(regions, count, position, source.name, duration_s, split)

    position = float(rng.uniform(0.0, 1.0))
    count = max(2, round(duration_s * target(source.slice(*regions[0]))))
    for _ in range(4):
        first = first_of(count)
        count = max(2, round(duration_s * target(source.slice(first, first + count))))
    return _compressed(source, first_of(count), count, duration_s, split)


def _first_request(
    regions: list[tuple[int, int]],
    count: int,
    position: float,
    name: str,
    duration_s: float,
    split: str,
) -> int:
    """The first request of a ``count``-request stretch at relative ``position``: it runs
    over every region's possible first requests in turn."""
    rooms = [(first, end - first - count) for first, end in regions if end - first > count]
    if not rooms:
        have = max(end - first for first, end in regions)
        raise WorkloadError(
            f"{name}: {duration_s:g} s at {count / duration_s:.3g} req/s needs "
            f"{count} consecutive requests, its {split} region has {have}"
        )
    at = round(position * (sum(room for _, room in rooms) - 1))
    for first, room in rooms:
        if at < room:
            return first + at
        at -= room
    raise AssertionError("unreachable: position is within the rooms")


def _compressed(
    source: Workload, first: int, count: int, duration_s: float, split: str
) -> Workload:
    """Requests [first, first + count) compressed to exactly ``duration_s`` (its rate is
    then the target), the first at time 0: every gap divided by one factor, as
    ``scale_rate`` does."""
    arrivals = source.arrival_s
    start = float(arrivals[first])
    length = float(arrivals[first + count]) - start
    factor = length / duration_s
    stretch = slice(first, first + count)
    out = source.take(stretch, arrival_s=(arrivals[stretch] - start) / factor)
    step = f"stretch({start:g},{start + length:g},x{factor:g})"
    meta = {**source.meta, "split": split, "trace_span": [start, start + length]}
    meta["transforms"] = [*meta.get("transforms", []), step]
    return replace(out, meta=meta)


def ramp(w: Workload, lo: float, hi: float) -> Workload:
    """Warp ``w``'s clock so its rate ramps linearly in time from ``lo`` x to ``hi`` x its mean.

    A continuous version of concatenating windows at increasing ``scale_rate``: the local
    gap structure is kept, only the clock runs ever faster. The request at source time s
    (of a span S) moves to the time t by which the ramped rate has delivered as many
    requests as the flat one had by s: lo*t + k*t^2/2 = s, with k = (hi - lo) / D and
    the result lasting D = 2 S / (lo + hi).
    """
    if not 0 < lo < hi:
        raise WorkloadError(f"ramp needs 0 < lo < hi, got {lo}, {hi}")
    s = w.arrival_s - w.arrival_s[0]
    span = max(float(s[-1]), 1e-9)
    d = 2.0 * span / (lo + hi)
    k = (hi - lo) / d
    # Requests delivered by time t at rate (lo + k t) x mean equal those by s at 1 x mean.
    t = (np.sqrt(lo * lo + 2.0 * k * s) - lo) / k
    meta = dict(w.meta)
    meta["transforms"] = [*meta.get("transforms", []), f"ramp({lo:g},{hi:g})"]
    return replace(w, arrival_s=t, meta=meta)


def request_groups(w: Workload) -> np.ndarray:
    """A group id per request: requests that must be kept or dropped together.

    A session (its id) or, without sessions, a prefix group: requests whose first prefix
    block is equal. Prefix caching only ever matches a *leading* prefix, so every cache
    hit a request can get comes from its own group; dropping whole groups keeps every hit
    among the requests that stay. A request with neither is a group of its own.
    """
    n = len(w)
    if w.session_ids:
        keys: list[object] = list(w.session_ids)
    elif w.has_prefixes:
        keys = [h[0] if h else ("solo", i) for i, h in enumerate(w.prefix_hashes)]
    else:
        return np.arange(n)
    ids: dict[object, int] = {}
    return np.fromiter((ids.setdefault(k, len(ids)) for k in keys), dtype=np.int64, count=n)


def thin(w: Workload, keep: float, rng: np.random.Generator) -> Workload:
    """Each request group (``request_groups``) kept with probability ``keep``.

    Same time structure and, for what is kept, the same prefix sharing; fewer requests.
    The first request's group is always kept, so the run still starts at time 0.
    """
    if keep >= 1.0:
        return w
    groups = request_groups(w)
    kept = rng.random(int(groups.max()) + 1) < keep
    kept[groups[0]] = True
    return replace(w.take(kept[groups]), meta={**w.meta, "thinned": keep})
