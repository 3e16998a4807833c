"""Hand-built policy inputs for the kit and policy tests: replica views and requests."""

from __future__ import annotations

from serving.contract import DEFAULT_PREFILL_TPS, ReplicaState, ReplicaView, Request


def rv(
    i: int,
    *,
    state: ReplicaState = "serving",
    running: int = 0,
    waiting: int = 0,
    kv: int = 0,
    inflight: int = 0,
    tokens: int = 0,
    overlap: int = 0,
    gpu: str = "H100",
    tp: int = 1,
    weight: float = 1.0,
    tps: float = DEFAULT_PREFILL_TPS,
    queued: float = 0.0,
) -> ReplicaView:
    """A replica snapshot; ``kv`` is blocks used out of 100, so kv_usage = kv / 100."""
    return ReplicaView(
        id=i, gpu=gpu, tp=tp, state=state, running=running, waiting=waiting,
        kv_blocks_used=kv, kv_blocks_total=100, inflight_requests=inflight,
        inflight_tokens=tokens, prefix_overlap_blocks=overlap, snapshot_age=0.1,
        weight=weight, prefill_tps=tps, queued_prefill_tokens=queued,
    )  # fmt: skip


def req(blocks: int = 0, session: str = "", prompt: int | None = None) -> Request:
    """Request 0: ``blocks`` prefix blocks of 16 tokens (the prompt, unless given)."""
    return Request(
        id=0, arrival=0.0, prompt_tokens=prompt if prompt is not None else 16 * max(blocks, 1),
        max_output_tokens=64, prefix_hashes=tuple(range(blocks)), session_id=session,
    )  # fmt: skip
