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
* ``FastEngine`` keeps decoding sequences in aggregate (a shared step counter,
  a heap of finishing steps, a histogram of block-boundary phases) and jumps
  over whole spans of pure-decode steps in closed form, from one change of the
  batch to the next. It must agree with the reference; tests hold it to that.
"""

from __future__ import annotations

import heapq
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


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class _EngineCore:
    """State and scheduling shared by both engines."""

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
        return _ceil_div(seq.prompt + seq.output, self.bs) <= self.cache.capacity

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
            need = _ceil_div(hit_tokens + new, bs) - hit_units * seq.unit_blocks
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
            need = _ceil_div(seq.computed + new, self.bs) - self._blocks_held(seq)
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


class ReferenceEngine(_EngineCore):
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


class FastEngine(_EngineCore):
    """Decoding sequences in aggregate; pure-decode spans jumped in closed form.

    Invariants: running order is [decoders..., prefillers...] (a sequence only
    starts decoding after everything admitted before it has), every decoder
    gains exactly one token per step, and a decoder with ``c`` computed tokens
    needs a new block exactly when ``c % block_size == 0``.
    """

    def __init__(self, config: EngineConfig, steptime: StepTime, kv_blocks: int) -> None:
        super().__init__(config, steptime, kv_blocks, record_tokens=False)
        self.counter = 0
        self.n_dec = 0
        self.ctx_base = 0  # sum over decoders of (c0 - g0)
        self.phase = [0] * self.bs  # decoders by (c0 - g0) mod block_size
        self.finishing: list[tuple[int, int, Sequence]] = []  # (finish_at, rid, seq)
        self.prefilling: dict[Sequence, None] = {}
        """Running sequences not yet decoding, in admission order: the only ones a
        step must visit one by one."""
        self._prefill: list[tuple[Sequence, int]] = []
        self._span = 0
        self._span_ok = True
        self._coef = (0.0, 0.0, 0.0)  # step j lasts a + b*j; a, b, first-step time

    # -- aggregate decode bookkeeping -----------------------------------------
    def _add_decoder(self, seq: Sequence) -> None:
        seq.decoding = seq.aggregated = True
        self.prefilling.pop(seq, None)
        seq.c0, seq.g0 = seq.computed, self.counter
        seq.finish_at = self.counter + seq.output - seq.generated
        self.n_dec += 1
        self.ctx_base += seq.c0 - seq.g0
        self.phase[(seq.c0 - seq.g0) % self.bs] += 1
        heapq.heappush(self.finishing, (seq.finish_at, seq.rid, seq))

    def _drop_decoder(self, seq: Sequence) -> None:
        """Make a decoder explicit again (its entry in the heap goes stale)."""
        seq.aggregated = False
        seq.computed = seq.c0 + self.counter - seq.g0
        seq.generated = seq.output - (seq.finish_at - self.counter)
        seq.private_blocks = _ceil_div(seq.computed, self.bs) - len(seq.entries) * seq.unit_blocks
        self.n_dec -= 1
        self.ctx_base -= seq.c0 - seq.g0
        self.phase[(seq.c0 - seq.g0) % self.bs] -= 1

    def _blocks_for(self, steps: int) -> int:
        """Blocks the decoders allocate over the next ``steps`` steps."""
        cycles, rest = divmod(steps, self.bs)
        total = cycles * self.n_dec
        for j in range(rest):
            total += self.phase[-(self.counter + cycles * self.bs + j) % self.bs]
        return total

    def _steps_until_full(self, free: int, first: int) -> int:
        """Most pure-decode steps, from step ``first`` on, whose new blocks fit into ``free``."""
        if self.n_dec == 0:
            return 1 << 60
        cycles = free // self.n_dec
        left = free - cycles * self.n_dec
        steps = cycles * self.bs
        for _ in range(self.bs):
            left -= self.phase[-(self.counter + first + steps) % self.bs]
            if left < 0:
                return steps
            steps += 1
        return steps

    def _elapsed(self, steps: int) -> float:
        a, b, first = self._coef
        if self._prefill:
            return first if steps else 0.0
        return steps * a + b * steps * (steps - 1) / 2

    # -- scheduling -------------------------------------------------------------
    def _start(self, now: float) -> None:
        self.step_start = now
        if not self.running and not self.waiting:
            self._set_end(INF)
            return
        need = self._blocks_for(1)
        prefill: list[tuple[Sequence, int]] = []
        budget = self.config.max_num_batched_tokens - self.n_dec
        fits = need <= self.cache.available()
        if fits:
            reserved = need
            for seq in self.prefilling:
                if budget <= 0:
                    break
                new = min(seq.num_tokens - seq.computed, budget)
                extra = _ceil_div(seq.computed + new, self.bs) - self._blocks_held(seq)
                if reserved + extra > self.cache.available():
                    fits = False
                    break
                reserved += extra
                prefill.append((seq, new))
                budget -= new
        if fits:
            self.cache.take(need)
            for seq, new in prefill:
                extra = _ceil_div(seq.computed + new, self.bs) - self._blocks_held(seq)
                self.cache.take(extra)
                seq.private_blocks += extra
            admitted, budget = self._admit(budget, now)
            for seq, _ in admitted:
                self.prefilling[seq] = None
            prefill += admitted
            self._span_ok = self.admission_stable
        else:
            prefill = self._schedule_with_preemption(now)
            # Admission was skipped because of the preemption, not refused: the
            # next step may admit, so no span may jump over it.
            self._span_ok = False
        self._prefill = prefill
        self._begin_span(now)

    def _schedule_with_preemption(self, now: float) -> list[tuple[Sequence, int]]:
        """The rare step that runs out of blocks: fall back to explicit scheduling."""
        for seq in self.running:
            if seq.aggregated:
                self._drop_decoder(seq)
        self.finishing.clear()
        while True:
            batch, preempted = self._schedule_explicit(now)
            if batch or not preempted:
                break
        # Decoders were given their block by the explicit pass; re-aggregate them
        # one step back so the common span code advances them uniformly.
        prefill = []
        for seq, new in batch:
            if seq.decoding:
                self._add_decoder(seq)
            else:
                prefill.append((seq, new))
        self.prefilling = {seq: None for seq in self.running if not seq.aggregated}
        return prefill

    def _begin_span(self, now: float) -> None:
        if self.n_dec == 0 and not self._prefill:
            self._set_end(INF)
            return
        w, k = self.steptime.decode_coeffs(self.n_dec)
        ctx = self.ctx_base + self.n_dec * (self.counter + 1)
        if self._prefill:
            pre_n = sum(new for _, new in self._prefill)
            pre_attn = sum(new * (s.computed + new / 2) for s, new in self._prefill)
            first = self.steptime.step_s(self.n_dec, ctx, pre_n, pre_attn)
            self._coef = (first, 0.0, first)
            self._span = 1
        else:
            self._coef = (w + k * ctx, k * self.n_dec, 0.0)
            until_finish = self.finishing[0][0] - self.counter
            # The first step's block was already taken by _start.
            fit = 1 + self._steps_until_full(self.cache.available(), first=1)
            self._span = max(1, min(until_finish, fit)) if self._span_ok else 1
        self._set_end(now + self._elapsed(self._span))

    def enqueue(self, seq: Sequence, now: float) -> None:
        super().enqueue(seq, now)
        if self._span > 1 and self.step_end != INF:
            # A pure-decode span is cut at the first step boundary after the
            # arrival: the scheduler looks at the waiting queue there.
            steps = self._steps_started_before(now - self.step_start)
            if steps < self._span:
                self._span = steps
                self._set_end(self.step_start + self._elapsed(steps))

    def _steps_started_before(self, dt: float) -> int:
        a, b, _ = self._coef
        if b > 0:
            s = math.ceil((-(a - b / 2) + math.sqrt((a - b / 2) ** 2 + 2 * b * dt)) / b)
        else:
            s = math.ceil(dt / a) if a > 0 else 1
        s = max(1, s)
        while s > 1 and self._elapsed(s - 1) >= dt:
            s -= 1
        while self._elapsed(s) < dt:
            s += 1
        return s

    def snapshot(self, now: float) -> tuple[int, int, int]:
        used = self.cache.used
        if self._span > 1 and self.step_end != INF:
            done = self._steps_started_before(now - self.step_start)
            while done > 0 and self._elapsed(done) > now - self.step_start:
                done -= 1
            # The reference allocates a step's blocks when the step starts: by
            # now steps 0..done have started, and step 0's are already taken.
            used += self._blocks_for_range(1, min(done, self._span - 1) + 1)
        return len(self.running), len(self.waiting), used

    def abort(self) -> list[Sequence]:
        lost = super().abort()
        self.n_dec = self.ctx_base = self._span = 0
        self.phase = [0] * self.bs
        self.finishing.clear()
        self.prefilling.clear()
        self._prefill = []
        return lost

    def _blocks_for_range(self, first: int, last: int) -> int:
        """Decoder blocks for steps ``first``..``last - 1`` of the current span."""
        if last <= first:
            return 0
        self.counter += first
        n = self._blocks_for(last - first)
        self.counter -= first
        return n

    def on_step_end(self, now: float) -> list[Sequence]:
        span = self._span
        # Step 0's blocks were taken when it started; take the rest now.
        self.cache.take(self._blocks_for_range(1, span))
        self.counter += span
        self.steps += span
        finished: list[Sequence] = []
        for seq, new in self._prefill:
            seq.computed += new
            self._publish(seq)
            if seq.computed == seq.num_tokens:
                seq.generated += 1
                if seq.first_token == INF:
                    seq.first_token = now
                if seq.generated == seq.output:
                    seq.finish = now
                    del self.running[seq]
                    del self.prefilling[seq]
                    self._free(seq)
                    finished.append(seq)
                else:
                    self._add_decoder(seq)
        while self.finishing and self.finishing[0][0] <= self.counter:
            _, _, seq = heapq.heappop(self.finishing)
            if not seq.aggregated:
                continue  # preempted since it was pushed
            self._drop_decoder(seq)
            seq.finish = now
            del self.running[seq]
            self._free(seq)
            finished.append(seq)
        self._prefill = []
        self._span = 0
        self._start(now)
        return finished


def make_engine(
    config: EngineConfig, steptime: StepTime, kv_blocks: int, *, reference: bool = False
) -> ReferenceEngine | FastEngine:
    cls = ReferenceEngine if reference else FastEngine
    return cls(config, steptime, kv_blocks)
