"""The fast vLLM engine model: pure-decode spans jumped in closed form.

The simulator's engine. It schedules exactly as ``serving.engine.ReferenceEngine``
(both are ``EngineCore``: vLLM V1's scheduler over a paged, prefix-cached KV cache)
but keeps decoding sequences in aggregate -- a shared step counter, a heap of
finishing steps, a histogram of block-boundary phases -- so it advances from one
change of the batch to the next instead of token by token. Tests hold it to the
reference, token time for token time.
"""

from __future__ import annotations

import heapq
import math

from serving.engine import (
    INF,
    EngineConfig,
    EngineCore,
    ReferenceEngine,
    Sequence,
    StepTime,
    ceil_div,
)


class FastEngine(EngineCore):
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
        seq.private_blocks = ceil_div(seq.computed, self.bs) - len(seq.entries) * seq.unit_blocks
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
                extra = ceil_div(seq.computed + new, self.bs) - self._blocks_held(seq)
                if reserved + extra > self.cache.available():
                    fits = False
                    break
                reserved += extra
                prefill.append((seq, new))
                budget -= new
        if fits:
            self.cache.take(need)
            for seq, new in prefill:
                extra = ceil_div(seq.computed + new, self.bs) - self._blocks_held(seq)
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
    """The simulator's engine: this fast one, or the token-by-token reference."""
    cls = ReferenceEngine if reference else FastEngine
    return cls(config, steptime, kv_blocks)
