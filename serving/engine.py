"""The vLLM engine model: V1 continuous batching over a paged, prefix-cached KV cache.

One engine is one replica in virtual time. Every step the scheduler (as in
vLLM V1's ``Scheduler.schedule``) first gives each running sequence its next
tokens in admission order -- one for a decoding sequence, a chunk of the
prompt for a prefilling one, within the per-step token budget -- preempting
the newest running sequence by recompute when the KV cache has no block left;
then, if nothing was preempted, it admits waiting sequences first-come
first-served while sequences, budget and blocks allow, reusing cached prefix
blocks. The step lasts as long as the step-time model says.

Two implementations share that scheduler:

* ``ReferenceEngine`` runs one step per event and moves every sequence token by
  token, recording each token's time: slow and obviously correct.
* ``FastEngine`` (``serving/engine_fast.py``) keeps decoding sequences in
  aggregate (a shared step counter, a heap of finishing steps, a histogram of
  block-boundary phases) and jumps over whole spans of pure-decode steps in
  closed form, from one change of the batch to the next. It must agree with the
  reference; tests hold it to that.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from serving.kvcache import KVCache

INF = math.inf


@dataclass(frozen=True)
class EngineConfig:
    """vLLM V1 scheduler settings that shape batching."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        if self.max_num_seqs > self.max_num_batched_tokens:
            # Decodes are scheduled before prefills; this keeps them all in budget.
            raise ValueError("max_num_seqs must not exceed max_num_batched_tokens")


class StepTime(Protocol):
    def decode_coeffs(self, batch: int) -> tuple[float, float]: ...

    def step_s(
        self, decode_batch: int, decode_context: int, prefill_tokens: int, prefill_attn: float
    ) -> float: ...


@dataclass(slots=True, eq=False)
class Sequence:
    """A request inside one engine."""

    rid: int
    prompt: int
    output: int
    arrival: float
    hashes: tuple[int, ...] = ()
    unit_blocks: int = 1
    """Engine blocks covered by one prefix hash."""
    computed: int = 0
    generated: int = 0
    private_blocks: int = 0
    entries: list[int] = field(default_factory=list)
    published_units: int = 0
    first_scheduled: float = INF
    first_token: float = INF
    finish: float = INF
    preemptions: int = 0
    token_times: list[float] | None = None
    # FastEngine's aggregate decode state: computed == c0 + (counter - g0).
    c0: int = 0
    g0: int = 0
    finish_at: int = 0
    decoding: bool = False
    """Prefill done since the last admission: one token per step from now on."""
    aggregated: bool = False
    """FastEngine only: tracked in aggregate rather than by its own fields."""

    @property
    def num_tokens(self) -> int:
        return self.prompt + self.generated

    @property
    def tpot(self) -> float:
        if self.token_times is not None:
            gaps = [b - a for a, b in zip(self.token_times, self.token_times[1:], strict=False)]
            return sum(gaps) / len(gaps) if gaps else math.nan
        return (self.finish - self.first_token) / (self.output - 1) if self.output > 1 else math.nan


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class EngineCore:
    """State and scheduling shared by both engines (``ReferenceEngine`` below,
    ``serving.engine_fast.FastEngine``)."""

    def __init__(
        self, config: EngineConfig, steptime: StepTime, kv_blocks: int, *, record_tokens: bool
    ) -> None:
        self.config = config
        self.steptime = steptime
        self.bs = config.block_size
        self.cache = KVCache(kv_blocks, prefix_caching=config.enable_prefix_caching)
        self.running: dict[Sequence, None] = {}  # admission order; dict for O(1) removal
        self.waiting: deque[Sequence] = deque()
        self.record_tokens = record_tokens
        self.step_start = 0.0
        self.step_end = INF
        self.epoch = 0
        """Bumped whenever ``step_end`` moves, so stale timer events can be told apart."""
        self.steps = 0
        self.preemptions = 0

    # -- public API ------------------------------------------------------------
    def fits(self, seq: Sequence) -> bool:
        """Whether the sequence could ever run here (vLLM rejects longer ones)."""
        return ceil_div(seq.prompt + seq.output, self.bs) <= self.cache.capacity

    def enqueue(self, seq: Sequence, now: float) -> None:
        if self.record_tokens and seq.token_times is None:
            seq.token_times = []
        self.waiting.append(seq)
        if self.step_end == INF:
            self._start(now)

    @property
    def idle(self) -> bool:
        return self.step_end == INF

    def abort(self) -> list[Sequence]:
        """Drop everything (the replica died or lost its GPUs); return what was unfinished."""
        lost = [*self.running, *self.waiting]
        self.running.clear()
        self.waiting.clear()
        self._set_end(INF)
        return lost

    # -- shared scheduler pieces -------------------------------------------------
    def _set_end(self, t: float) -> None:
        self.step_end = t
        self.epoch += 1

    def _blocks_held(self, seq: Sequence) -> int:
        return seq.private_blocks + len(seq.entries) * seq.unit_blocks

    def _preempt(self, seq: Sequence) -> None:
        del self.running[seq]
        self._free(seq)
        seq.computed = 0
        seq.decoding = False
        seq.published_units = 0
        seq.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(seq)

    def _free(self, seq: Sequence) -> None:
        self.cache.release(seq.private_blocks)
        seq.private_blocks = 0
        for h in seq.entries:
            self.cache.deref(h)
        seq.entries = []

    def _admit(self, budget: int, now: float) -> tuple[list[tuple[Sequence, int]], int]:
        """Admit waiting sequences FCFS; stop at the first that does not fit.

        Sets ``admission_stable``: whether the refusal (if any) must hold until a
        sequence finishes or is preempted. It holds when sequences are full, or
        blocks are short and none of the head's cache hits could be evicted --
        evicting one would shrink what the head must pin and might let it in.
        """
        self.admission_stable = True
        if not self.waiting:
            return [], budget
        admitted: list[tuple[Sequence, int]] = []
        cache, bs = self.cache, self.bs
        while self.waiting:
            if len(self.running) >= self.config.max_num_seqs:
                break
            if budget <= 0:
                self.admission_stable = False
                break
            seq = self.waiting[0]
            unit_tokens = seq.unit_blocks * bs
            # At least the last token is recomputed, as vLLM does on a full hit.
            hit_units = cache.match(seq.hashes, (seq.num_tokens - 1) // unit_tokens)
            hit_tokens = hit_units * unit_tokens
            new = min(seq.num_tokens - hit_tokens, budget)
            need = ceil_div(hit_tokens + new, bs) - hit_units * seq.unit_blocks
            hits = seq.hashes[:hit_units]
            pinned = cache.evictable_among(hits)
            if need > cache.available() - pinned:
                self.admission_stable = pinned == 0
                break
            self.waiting.popleft()
            for h in hits:
                cache.ref(h)
            cache.take(need)
            seq.entries = list(hits)
            seq.published_units = hit_units
            seq.private_blocks = need
            seq.computed = hit_tokens
            seq.first_scheduled = min(seq.first_scheduled, now)
            self.running[seq] = None
            admitted.append((seq, new))
            budget -= new
        return admitted, budget

    def _schedule_explicit(self, now: float) -> tuple[list[tuple[Sequence, int]], bool]:
        """vLLM V1 scheduling over explicit per-sequence state."""
        scheduled: list[tuple[Sequence, int]] = []
        budget = self.config.max_num_batched_tokens
        preempted = False
        for seq in list(self.running):
            if seq not in self.running:
                continue  # preempted earlier in this loop
            if budget <= 0:
                break
            new = min(seq.num_tokens - seq.computed, budget)
            need = ceil_div(seq.computed + new, self.bs) - self._blocks_held(seq)
            while need > self.cache.available():
                victim = next(reversed(self.running))
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            else:
                self.cache.take(need)
                seq.private_blocks += need
                scheduled.append((seq, new))
                budget -= new
        if not preempted:
            admitted, budget = self._admit(budget, now)
            scheduled += admitted
        return scheduled, preempted

    def _publish(self, seq: Sequence) -> None:
        """Computed prompt chunks with a known hash become shared cache entries."""
        unit_tokens = seq.unit_blocks * self.bs
        limit = min(seq.computed, seq.prompt) // unit_tokens
        while seq.published_units < min(limit, len(seq.hashes)):
            h = seq.hashes[seq.published_units]
            if self.cache.publish(h, seq.unit_blocks):
                seq.private_blocks -= seq.unit_blocks
                seq.entries.append(h)
            seq.published_units += 1

    def _start(self, now: float) -> None:
        raise NotImplementedError


class ReferenceEngine(EngineCore):
    """One event per step; every sequence advances token by token."""

    def __init__(self, config: EngineConfig, steptime: StepTime, kv_blocks: int) -> None:
        super().__init__(config, steptime, kv_blocks, record_tokens=True)
        self._batch: list[tuple[Sequence, int]] = []
        self.emitted: list[Sequence] = []
        """Sequences that received a token in the last ``on_step_end`` (finished ones
        included), in batch order: the simulated engine server streams exactly these."""

    def snapshot(self, now: float) -> tuple[int, int, int]:
        return len(self.running), len(self.waiting), self.cache.used

    def cancel(self, seq: Sequence) -> None:
        """Drop one sequence as vLLM aborts a request whose client went away: a running
        one gives its KV blocks back, a waiting one leaves the queue."""
        if seq in self.running:
            del self.running[seq]
            self._free(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def _start(self, now: float) -> None:
        while True:
            batch, preempted = self._schedule_explicit(now)
            if batch or not preempted:
                break
        self._batch = batch
        if not batch:
            self._set_end(INF)
            return
        dec_n = dec_ctx = pre_n = 0
        pre_attn = 0.0
        for seq, new in batch:
            if seq.decoding:
                dec_n += 1
                dec_ctx += seq.computed + 1
            else:
                pre_n += new
                pre_attn += new * (seq.computed + new / 2)
        self.step_start = now
        self._set_end(now + self.steptime.step_s(dec_n, dec_ctx, pre_n, pre_attn))

    def on_step_end(self, now: float) -> list[Sequence]:
        finished = []
        emitted = self.emitted = []
        for seq, new in self._batch:
            seq.computed += new
            self._publish(seq)
            if seq.computed == seq.num_tokens:
                emitted.append(seq)
                seq.generated += 1
                seq.decoding = True
                seq.token_times.append(now)
                if seq.first_token == INF:
                    seq.first_token = now
                if seq.generated == seq.output:
                    seq.finish = now
                    del self.running[seq]
                    self._free(seq)
                    finished.append(seq)
        self.steps += 1
        self._start(now)
        return finished
