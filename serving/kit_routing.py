"""The routing half of the policy kit (re-exported by ``serving.kit``; import that).

Modelled on llm-d's endpoint picker: filters narrow the replicas, scorers give
each a cost, normalisation puts costs on one scale, a picker chooses; admission
rules say when to hold instead. Conventions, so that pieces compose without
reading their code:

- a filter takes replicas and returns a list of them (possibly empty: ``or`` a
  fallback list to fail open);
- a scorer takes ``(request, replicas)`` and returns one cost per replica, in
  order, **lower is better**; it never looks at other replicas' values unless
  its docstring says so;
- a picker returns the id of a *serving* replica: it passes over any other in
  its list, and returns HOLD (None) when none serves -- a composition can never
  name a starting or draining replica;
- randomness comes from the ``random`` module's global generator, which the
  simulator seeds (the baselines' exact draws are preserved).

Pure functions over read-only views: no state, no module objects, nothing of the
router's or simulator's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import exp
from random import choice as _choice
from random import random as _random
from random import sample as _sample

from serving.contract import HOLD, ReplicaView, Request

Replicas = Sequence[ReplicaView]
Costs = Sequence[float]

TIE_TOLERANCE = 1e-9
"""Costs closer than this are a tie for ``argmin_random`` (float noise is not a preference)."""


# --- filters -------------------------------------------------------------------------


def serving_only(replicas: Replicas) -> list[ReplicaView]:
    """Replicas whose state is "serving" (the only ones route may return)."""
    return [r for r in replicas if r.state == "serving"]


def kv_at_most(replicas: Replicas, limit: float) -> list[ReplicaView]:
    """Replicas whose KV-cache use (0..1) is at most ``limit``."""
    return [
        r
        for r in replicas
        if (r.kv_blocks_used / r.kv_blocks_total if r.kv_blocks_total else 1.0) <= limit
    ]


def waiting_at_most(replicas: Replicas, limit: float) -> list[ReplicaView]:
    """Replicas with at most ``limit`` requests waiting in the engine queue."""
    return [r for r in replicas if r.waiting <= limit]


def inflight_at_most(replicas: Replicas, limit: float) -> list[ReplicaView]:
    """Replicas with at most ``limit`` requests in flight from the router."""
    return [r for r in replicas if r.inflight_requests <= limit]


def on_gpus(replicas: Replicas, gpus: Sequence[str]) -> list[ReplicaView]:
    """Replicas on one of the GPU types ``gpus`` (e.g. ("H100", "H200"))."""
    return [r for r in replicas if r.gpu in gpus]


def near_best(replicas: Replicas, costs: Costs, tolerance: float) -> list[ReplicaView]:
    """Replicas whose cost is within ``tolerance`` of the lowest (a band of near-ties)."""
    cut = min(costs) + tolerance + 1e-12  # equal values from different totals still tie
    return [r for r, c in zip(replicas, costs, strict=True) if c <= cut]


def best_prefix(request: Request, replicas: Replicas, min_ratio: float) -> list[ReplicaView]:
    """Replicas with the longest cached prefix, if it covers > ``min_ratio`` of it; else [].

    The ratio is cached blocks over the request's blocks (SGLang's cache threshold).
    """
    blocks = len(request.prefix_hashes)
    best = max(r.prefix_overlap_blocks for r in replicas)
    if not blocks or min(best, blocks) / blocks <= min_ratio:
        return []
    return [r for r in replicas if r.prefix_overlap_blocks == best]


def sample(replicas: Replicas, k: int) -> list[ReplicaView]:
    """``k`` distinct replicas drawn at random (all of them if fewer), in random order."""
    return _sample(list(replicas), min(k, len(replicas)))


# --- scorers: one cost per replica, lower is better ------------------------------------


def waiting(request: Request, replicas: Replicas) -> list[float]:
    """Requests waiting in each engine's queue (engine metrics: ``snapshot_age`` old)."""
    return [r.waiting for r in replicas]


def running(request: Request, replicas: Replicas) -> list[float]:
    """Requests each engine is running (engine metrics: ``snapshot_age`` old)."""
    return [r.running for r in replicas]


def inflight(request: Request, replicas: Replicas) -> list[float]:
    """Requests the router has in flight on each replica (exact, never stale)."""
    return [r.inflight_requests for r in replicas]


def inflight_tokens(request: Request, replicas: Replicas) -> list[float]:
    """Prompt + max output tokens the router has in flight on each replica (exact)."""
    return [r.inflight_tokens for r in replicas]


def inflight_per_weight(request: Request, replicas: Replicas) -> list[float]:
    """In-flight requests divided by the plan's dispatch weight (weight 0: never)."""
    return [r.inflight_requests / r.weight if r.weight > 0 else 1e18 for r in replicas]


def kv_use(request: Request, replicas: Replicas) -> list[float]:
    """KV-cache use of each replica, 0 (empty) .. 1 (full)."""
    # ReplicaView.kv_usage inlined: a property call per replica triples the cost.
    return [r.kv_blocks_used / r.kv_blocks_total if r.kv_blocks_total else 1.0 for r in replicas]


def prefix_miss(request: Request, replicas: Replicas) -> list[float]:
    """Fraction of the request's prompt blocks NOT cached on each replica (0 = all hit)."""
    blocks = len(request.prefix_hashes)
    if not blocks:
        return [1.0] * len(replicas)
    return [1.0 - min(r.prefix_overlap_blocks, blocks) / blocks for r in replicas]


def session_miss(request: Request, replicas: Replicas) -> list[float]:
    """0..1 per replica, lowest on the session's home replica (rendezvous hash); 0s if none.

    Stable as replicas come and go: only the sessions of a replica that leaves move.
    """
    if not request.session_id:
        return [0.0] * len(replicas)
    return [1.0 - _fnv(f"{request.session_id}/{r.id}") / 2.0**64 for r in replicas]


def gpu_slowness(request: Request, replicas: Replicas) -> list[float]:
    """Each replica's prefill time per token relative to the fastest here (1.0 = fastest)."""
    fastest = max(r.prefill_tps for r in replicas)
    return [fastest / max(r.prefill_tps, 1.0) for r in replicas]


def inflight_per_speed(request: Request, replicas: Replicas) -> list[float]:
    """(In-flight requests + 1) x ``gpu_slowness``: least outstanding across GPU types.

    A replica that prefills twice as fast takes twice the requests before it looks as
    loaded; on one GPU type it orders replicas exactly as ``inflight`` does.
    """
    fastest = max(r.prefill_tps for r in replicas)
    return [(r.inflight_requests + 1) * fastest / max(r.prefill_tps, 1.0) for r in replicas]


def est_ttft(request: Request, replicas: Replicas) -> list[float]:
    """Estimated seconds to first token: (uncached prompt + queued prefill) / prefill rate.

    Per replica: prompt tokens left after its prefix hit plus its
    ``queued_prefill_tokens``, over its ``prefill_tps`` -- the quantity NVIDIA Dynamo's
    KV router and llm-d's precise prefix scorer approximate. Ignores decode load.
    """
    prompt, block = request.prompt_tokens, request.prefix_block_tokens
    return [
        (max(prompt - r.prefix_overlap_blocks * block, 0) + r.queued_prefill_tokens)
        / (r.prefill_tps or 1.0)
        for r in replicas
    ]


# --- normalisation and combination -------------------------------------------------------


def minmax(values: Costs) -> list[float]:
    """Rescale to 0 (lowest) .. 1 (highest); all 0 when every value is equal."""
    lo, hi = min(values), max(values)
    if hi == lo:
        return [0.0] * len(values)
    return [(v - lo) / (hi - lo) for v in values]


def by_max(values: Costs) -> list[float]:
    """Divide by the largest value (0..1 for non-negative costs); all 0 when it is 0."""
    hi = max(values)
    return [v / hi for v in values] if hi else [0.0] * len(values)


def weighted(*terms: tuple[float, Costs]) -> list[float]:
    """Sum of weight * costs, replica by replica: weighted((2, a), (0.5, b))."""
    total: list[float] | None = None
    for w, costs in terms:
        if not w:
            continue  # a zero weight switches its term off, whatever its costs
        if total is None:
            total = [w * c for c in costs]
        else:
            total = [t + w * c for t, c in zip(total, costs, strict=True)]
    return total if total is not None else [0.0] * len(terms[0][1])


# --- pickers: return the id of a serving replica, or HOLD ---------------------------------


def argmin(replicas: Replicas, costs: Costs, *then: Costs) -> int | None:
    """Id of the lowest cost; ties go to the next cost lists in ``then``, then the lowest id."""
    best = _lowest(replicas, costs, then, by_id=True)
    return replicas[best].id if best >= 0 else HOLD


def least_inflight(request: Request, replicas: Replicas) -> int | None:
    """Id with the fewest requests in flight, then fewest tokens, then lowest id.

    Least outstanding requests: the baseline every routing policy must beat.
    """
    best = None
    for r in replicas:
        if r.state != "serving":
            continue
        key = (r.inflight_requests, r.inflight_tokens, r.id)
        if best is None or key < best:
            best = key
    return HOLD if best is None else best[2]


def argmin_random(replicas: Replicas, costs: Costs, tolerance: float = TIE_TOLERANCE) -> int | None:
    """Id of the lowest cost, at random among those tied within ``tolerance``."""
    best_cost = None
    best: list[int] = []
    for r, c in zip(replicas, costs, strict=True):
        if r.state != "serving":
            continue
        if best_cost is None or c < best_cost - tolerance:
            best_cost, best = c, [r.id]
        elif c <= best_cost + tolerance:
            best.append(r.id)
    return _choice(best) if best else HOLD


def softmax(replicas: Replicas, costs: Costs, temperature: float) -> int | None:
    """Id drawn with probability ~ exp(-cost / temperature); temperature <= 0: argmin.

    Spreads load over near-equal replicas instead of herding onto one (NVIDIA
    Dynamo's KV router samples this way).
    """
    if temperature <= 0:
        return argmin(replicas, costs)
    pairs = [(r, c) for r, c in zip(replicas, costs, strict=True) if r.state == "serving"]
    if not pairs:
        return HOLD
    lo = min(c for _, c in pairs)
    odds = [exp(-(c - lo) / temperature) for _, c in pairs]
    x = _random() * sum(odds)
    for (r, _), o in zip(pairs, odds, strict=True):
        x -= o
        if x < 0:
            return r.id
    return pairs[-1][0].id


def power_of_k(request: Request, replicas: Replicas, k: int, *scorers) -> int | None:
    """Id lowest on ``scorers`` among ``k`` random replicas (power of k choices).

    ``scorers`` are scorer functions (kit.inflight, ...), later ones break ties, then
    the sample order (random).
    """
    picked = sample(serving_only(replicas), k)
    if not picked:
        return HOLD
    first, *then = [score(request, picked) for score in scorers]
    return picked[_lowest(picked, first, then, by_id=False)].id


def uniform(replicas: Replicas) -> int | None:
    """Id of a replica drawn uniformly at random."""
    ids = [r.id for r in replicas if r.state == "serving"]
    return _choice(ids) if ids else HOLD


def rotate(replicas: Replicas, n: int) -> int | None:
    """Id of the ``n``-th replica (mod their number) in id order: round robin with a counter."""
    ids = sorted(r.id for r in replicas if r.state == "serving")
    return ids[n % len(ids)] if ids else HOLD


def session_home(request: Request, replicas: Replicas, load_factor: float) -> int | None:
    """Id of the session's home replica (rendezvous hash) with bounded load, or None.

    Replicas are tried in the session's hash ranking; one with more than
    ``load_factor`` x the mean in-flight + 1 is passed over. None without a session
    or when every replica is over that bound.
    """
    serving = serving_only(replicas)
    if not request.session_id or not serving:
        return None
    ranked = sorted(serving, key=lambda r: _fnv(f"{request.session_id}/{r.id}"), reverse=True)
    mean = sum(r.inflight_requests for r in serving) / len(serving)
    cap = load_factor * mean + 1  # +1: an idle cluster still takes the session's first request
    for r in ranked:
        if r.inflight_requests <= cap:
            return r.id
    return None


# --- checks and admission: True / False ------------------------------------------------------


def imbalanced(replicas: Replicas, abs_gap: float, rel_gap: float) -> bool:
    """True when in-flight loads differ by > ``abs_gap`` and max > ``rel_gap`` x min.

    SGLang's cache-aware balance check: then balance load instead of chasing cache.
    """
    loads = [r.inflight_requests for r in replicas]
    hi, lo = max(loads), min(loads)
    return hi - lo > abs_gap and hi > rel_gap * lo


def any_unsaturated(replicas: Replicas, max_waiting: float, max_kv: float) -> bool:
    """True while some replica has waiting <= ``max_waiting`` and KV use <= ``max_kv``.

    llm-d's saturation detector: when every replica is saturated, hold.
    """
    return any(r.waiting <= max_waiting and r.kv_usage <= max_kv for r in replicas)


def any_inflight_below(replicas: Replicas, limit: float) -> bool:
    """Admit while some replica has fewer than ``limit`` requests in flight."""
    return any(r.inflight_requests < limit for r in replicas)


def ttft_within(request: Request, replicas: Replicas, seconds: float) -> bool:
    """Admit when the best ``est_ttft`` over the replicas is at most ``seconds``."""
    return min(est_ttft(request, replicas)) <= seconds


def _lowest(replicas: Replicas, costs: Costs, then: Sequence[Costs], by_id: bool) -> int:
    """Index of the serving replica lowest on (cost, *then), -1 if none serves; remaining
    ties to the lowest id (``by_id``) or the first. A flat loop: no tuple per replica."""
    best = -1
    for i, r in enumerate(replicas):
        if r.state != "serving":
            continue
        if best < 0:
            best = i
            continue
        c, b = costs[i], costs[best]
        if c < b:
            best = i
        elif c == b:
            for t in then:
                if t[i] != t[best]:
                    if t[i] < t[best]:
                        best = i
                    break
            else:
                if by_id and r.id < replicas[best].id:
                    best = i
    return best


def _fnv(text: str) -> int:
    # FNV-1a, because Python's hash() of a str changes between processes and the
    # router, simulator and sandbox must agree on where a session lives.
    h = 0xCBF29CE484222325
    for b in text.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h
