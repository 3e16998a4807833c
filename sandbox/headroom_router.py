"""Clairvoyant routing: least expected work, with known output lengths and fresh state.

A policy module (loaded from this file's text), not a baseline: no operator can run it.
It is the router of the headroom reference (``sandbox.headroom``), run where each
request's ``max_output_tokens`` is its true output length and engine snapshots are fresh.
It sends a request where the work already queued
there, plus its own uncached work, would finish first: the router's exact in-flight tokens
(prompt + output of what it sent and has not seen finish) and the request's prompt less the
prefix that replica already holds, over the replica's speed; a replica whose KV cache is
nearly full pays for the preemptions it is about to cause.

``SPEED`` is tokens/s of a replica at a saturated decode batch, by GPU and TP: filled in by
``sandbox.headroom`` from the step-time model (a policy module may not import it).
"""

from serving.contract import HOLD, Param, ReplicaView, Request

PARAMS: dict[str, Param] = {
    "KV_PENALTY": Param(0.0, 10.0),
    "KV_KNEE": Param(0.5, 1.0),
    "PREFILL_WEIGHT": Param(0.0, 4.0),
}
KV_PENALTY = 2.0
KV_KNEE = 0.9
PREFILL_WEIGHT = 1.0
"""Uncached prompt tokens count this much against output tokens (they block decodes)."""
SPEED: dict[str, float] = {}
"""``"<gpu>/tp<k>"`` -> relative throughput; replicas of an unknown kind count as 1."""


def route(request: Request, replicas: tuple[ReplicaView, ...], now: float) -> int | None:
    best, best_score = None, 0.0
    blocks = len(request.prefix_hashes)
    unit = request.prefix_block_tokens
    for r in replicas:
        if r.state != "serving":
            continue
        cached = min(r.prefix_overlap_blocks, blocks) * unit
        own = PREFILL_WEIGHT * max(request.prompt_tokens - cached, 1) + request.max_output_tokens
        score = (r.inflight_tokens + own) / SPEED.get(f"{r.gpu}/tp{r.tp}", 1.0)
        if r.kv_usage > KV_KNEE:
            score *= 1.0 + KV_PENALTY * (r.kv_usage - KV_KNEE) / (1.0 - KV_KNEE)
        if best is None or score < best_score:
            best, best_score = r.id, score
    return HOLD if best is None else best
