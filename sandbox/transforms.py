"""Pure Workload → Workload transforms for building scenarios, and workload summaries.

Every random transform takes an explicit ``seed``: the same inputs and seed give
the same workload, so challenger and champion can be replayed on identical
traffic. Transforms never mutate their inputs (Workload columns are shared,
never written).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from sandbox.workload import Workload, WorkloadError
from serving.contract import WorkloadWindow


def _meta(w: Workload, step: str) -> dict:
    """Copy of ``w.meta`` with ``step`` appended to its transform history."""
    meta = dict(w.meta)
    meta["transforms"] = [*meta.get("transforms", []), step]
    return meta


def time_slice(w: Workload, start_s: float, end_s: float) -> Workload:
    """Requests arriving in ``[start_s, end_s)``, with times shifted so ``start_s`` is 0.

    The shift is by ``start_s``, not by the first request's arrival: the idle
    lead-in before the first request belongs to the slice.
    """
    if not end_s > start_s:
        raise WorkloadError(f"{w.name}: empty time slice [{start_s}, {end_s})")
    lo, hi = np.searchsorted(w.arrival_s, [start_s, end_s], side="left")
    out = w.take(slice(int(lo), int(hi)))
    return replace(
        out,
        arrival_s=out.arrival_s - start_s,
        meta=_meta(w, f"time_slice({start_s:g},{end_s:g})"),
    )


def head(w: Workload, n: int) -> Workload:
    """The first ``n`` requests."""
    if n < 0:
        raise WorkloadError(f"{w.name}: head needs n >= 0, got {n}")
    return replace(w.take(slice(0, n)), meta=_meta(w, f"head({n})"))


def scale_rate(w: Workload, factor: float) -> Workload:
    """Multiply the arrival rate by ``factor`` by compressing every inter-arrival gap.

    Unlike resampling Poisson arrivals at a new rate, this keeps the trace's burst
    structure (which requests arrive together) and its order.
    """
    if not factor > 0:
        raise WorkloadError(f"{w.name}: scale_rate factor must be > 0, got {factor}")
    t0 = w.arrival_s[0] if len(w) else 0.0
    return replace(
        w, arrival_s=t0 + (w.arrival_s - t0) / factor, meta=_meta(w, f"scale_rate({factor:g})")
    )


def _draw(source: Workload, arrival_s: np.ndarray, rng: np.random.Generator) -> Workload:
    """Requests at ``arrival_s`` with (prompt, output, max, prefix) drawn iid from ``source``."""
    if len(source) == 0:
        raise WorkloadError(f"{source.name}: cannot draw lengths from an empty workload")
    idx = rng.integers(0, len(source), size=len(arrival_s))
    return Workload(
        arrival_s=arrival_s,
        prompt_tokens=source.prompt_tokens[idx],
        output_tokens=source.output_tokens[idx],
        max_tokens=source.max_tokens[idx],
        prefix_hashes=tuple(source.prefix_hashes[i] for i in idx) if source.has_prefixes else (),
        prefix_block_tokens=source.prefix_block_tokens,
        name=source.name,
    )


def resample_lengths(w: Workload, source: Workload, seed: int) -> Workload:
    """Keep ``w``'s arrivals, draw each request's (prompt, output, max_tokens) from ``source``.

    Pairs are drawn together so the prompt/output correlation of ``source`` is kept.
    Prefix hashes belong to the prompt, so they come from ``source`` too (or are
    dropped when ``source`` has none).
    """
    drawn = _draw(source, w.arrival_s, np.random.default_rng(seed))
    return replace(
        w,
        prompt_tokens=drawn.prompt_tokens,
        output_tokens=drawn.output_tokens,
        max_tokens=drawn.max_tokens,
        prefix_hashes=drawn.prefix_hashes,
        prefix_block_tokens=source.prefix_block_tokens,
        meta=_meta(w, f"resample_lengths({source.name},seed={seed})"),
    )


def _aligned(a: Workload, b: Workload) -> tuple[tuple, tuple, int]:
    """Prefix hash and session columns of ``a`` + ``b``, padded where one lacks them."""
    if a.has_prefixes and b.has_prefixes and a.prefix_block_tokens != b.prefix_block_tokens:
        raise WorkloadError(
            f"cannot combine {a.name} and {b.name}: prefix blocks of "
            f"{a.prefix_block_tokens} and {b.prefix_block_tokens} tokens"
        )
    hashes: tuple = ()
    if a.has_prefixes or b.has_prefixes:
        hashes = (a.prefix_hashes or ((),) * len(a)) + (b.prefix_hashes or ((),) * len(b))
    sessions: tuple = ()
    if a.session_ids or b.session_ids:
        sessions = (a.session_ids or ("",) * len(a)) + (b.session_ids or ("",) * len(b))
    block = a.prefix_block_tokens if a.has_prefixes or not b.has_prefixes else b.prefix_block_tokens
    return hashes, sessions, block


def _stack(a: Workload, b: Workload, b_arrival: np.ndarray, name: str, meta: dict) -> Workload:
    """``a`` then ``b`` (with ``b_arrival``), sorted stably by arrival: ties keep a first."""
    hashes, sessions, block = _aligned(a, b)
    arrival = np.concatenate([a.arrival_s, b_arrival])
    order = np.argsort(arrival, kind="stable")
    return Workload(
        arrival_s=arrival[order],
        prompt_tokens=np.concatenate([a.prompt_tokens, b.prompt_tokens])[order],
        output_tokens=np.concatenate([a.output_tokens, b.output_tokens])[order],
        max_tokens=np.concatenate([a.max_tokens, b.max_tokens])[order],
        prefix_hashes=tuple(hashes[i] for i in order) if hashes else (),
        prefix_block_tokens=block,
        session_ids=tuple(sessions[i] for i in order) if sessions else (),
        name=name,
        meta=meta,
    )


def mix(a: Workload, b: Workload) -> Workload:
    """Both workloads' requests on one timeline, merged by arrival (ties: ``a`` first).

    Prefix hashes are kept as they are: equal hashes in ``a`` and ``b`` count as a
    shared prefix, which is right when both come from one trace.
    """
    return _stack(a, b, b.arrival_s, f"{a.name}+{b.name}", _meta(a, f"mix({b.name})"))


def concat(a: Workload, b: Workload, gap_s: float = 0.0) -> Workload:
    """``b`` played after ``a``: b's time 0 is ``gap_s`` after a's last arrival.

    E.g. a length shift: ``concat(conv, code)`` switches from chat to code traffic.
    """
    if gap_s < 0:
        raise WorkloadError(f"concat gap_s must be >= 0, got {gap_s}")
    end = a.arrival_s[-1] if len(a) else 0.0
    b_start = b.arrival_s[0] if len(b) else 0.0
    offset = end + gap_s - min(b_start, 0.0)
    return _stack(a, b, b.arrival_s + offset, f"{a.name}>{b.name}", _meta(a, f"concat({b.name})"))


def inject_burst(
    w: Workload,
    at_s: float,
    duration_s: float,
    extra_rate: float,
    seed: int,
    lengths_from: Workload | None = None,
) -> Workload:
    """Add Poisson arrivals at ``extra_rate`` req/s during ``[at_s, at_s + duration_s)``.

    Burst lengths (and prefix hashes) are drawn from ``lengths_from``, or from
    ``w`` itself. Burst requests get session ids ``burst-<i>`` when ``w`` has sessions.
    """
    if duration_s <= 0 or extra_rate <= 0:
        raise WorkloadError(f"{w.name}: a burst needs duration_s > 0 and extra_rate > 0")
    rng = np.random.default_rng(seed)
    n = int(rng.poisson(extra_rate * duration_s))
    times = np.sort(at_s + rng.random(n) * duration_s)
    burst = _draw(lengths_from if lengths_from is not None else w, times, rng)
    if w.session_ids:
        burst = replace(burst, session_ids=tuple(f"burst-{i}" for i in range(n)))
    step = f"inject_burst(at={at_s:g},dur={duration_s:g},rate={extra_rate:g},seed={seed})"
    return _stack(w, burst, burst.arrival_s, w.name, _meta(w, step))


def repeat_to(w: Workload, n: int) -> Workload:
    """``w`` played again and again until it holds ``n`` requests (cut at ``n``).

    Each copy starts one mean inter-arrival gap after the previous one ends.
    Prefix hashes repeat too, so later copies find earlier prefixes cached.
    """
    if len(w) == 0:
        raise WorkloadError(f"{w.name}: cannot repeat an empty workload")
    copies = -(-n // len(w))
    period = w.duration_s + (w.duration_s / (len(w) - 1) if len(w) > 1 else 1.0)
    rel = w.arrival_s - w.arrival_s[0]
    arrival = (w.arrival_s[0] + rel[None, :] + period * np.arange(copies)[:, None]).ravel()[:n]
    idx = np.tile(np.arange(len(w)), copies)[:n]
    return replace(w.take(idx, arrival_s=arrival), meta=_meta(w, f"repeat_to({n})"))


# ---------------------------------------------------------------------------
# Summaries


def prefix_reuse(w: Workload) -> float:
    """Fraction of all prompt blocks whose hash appeared in an earlier request.

    Set membership, not leading-prefix matching: trace hashes are chained (a
    block's hash covers everything before it), so an earlier equal hash means the
    whole prefix up to it was seen. 0 when the workload has no hashes.
    """
    if not w.has_prefixes:
        return 0.0
    seen: set[int] = set()
    total = reused = 0
    for hashes in w.prefix_hashes:
        total += len(hashes)
        reused += sum(1 for h in hashes if h in seen)
        seen.update(hashes)
    return reused / total if total else 0.0


def _q(values: np.ndarray, q: float) -> float:
    return float(np.quantile(values, q)) if len(values) else 0.0


def summarize(w: Workload, duration_s: float | None = None) -> dict[str, float]:
    """Arrival rate, IAT CV, length quantiles and prefix reuse of ``w``.

    The rate is requests / ``duration_s`` (default: first to last arrival, which
    matches the traces README). The IAT CV is std / mean of the gaps, 1 for
    Poisson; 0 when there are fewer than two gaps or all arrive at once.
    """
    n = len(w)
    span = w.duration_s if duration_s is None else duration_s
    gaps = np.diff(w.arrival_s)
    mean_gap = float(gaps.mean()) if len(gaps) >= 2 else 0.0
    return {
        "duration_s": float(span),
        "requests": n,
        "arrival_rate": n / span if span > 0 else 0.0,
        "iat_cv": float(gaps.std() / mean_gap) if mean_gap > 0 else 0.0,
        "input_mean": float(w.prompt_tokens.mean()) if n else 0.0,
        "input_p50": _q(w.prompt_tokens, 0.5),
        "input_p90": _q(w.prompt_tokens, 0.9),
        "input_p99": _q(w.prompt_tokens, 0.99),
        "output_mean": float(w.output_tokens.mean()) if n else 0.0,
        "output_p50": _q(w.output_tokens, 0.5),
        "output_p90": _q(w.output_tokens, 0.9),
        "output_p99": _q(w.output_tokens, 0.99),
        "prefix_reuse": prefix_reuse(w),
    }


_WINDOW_FIELDS = tuple(WorkloadWindow.__dataclass_fields__)


def to_window(w: Workload, start_s: float, end_s: float) -> WorkloadWindow:
    """The ``WorkloadWindow`` that ``reschedule`` sees for traffic in ``[start_s, end_s)``.

    The rate is over the whole window length, idle time included.
    """
    part = time_slice(w, start_s, end_s)
    stats = summarize(part, duration_s=end_s - start_s)
    return WorkloadWindow(**{k: stats[k] for k in _WINDOW_FIELDS})
