"""The vLLM engine model: hand-computed cases, and fast mode against the reference."""

from __future__ import annotations

import math
import random

import pytest

from serving.engine import EngineConfig, ReferenceEngine, Sequence
from serving.engine_fast import FastEngine, make_engine
from serving.steptime import step_time_model

STEP = step_time_model("llama-3-8b", "H100", 1)


def drive(engine, requests):
    """Feed (arrival, prompt, output, hashes) to one engine; run until it is idle."""
    seqs = [
        Sequence(rid=i, prompt=p, output=o, arrival=t, hashes=h, unit_blocks=1)
        for i, (t, p, o, h) in enumerate(requests)
    ]
    pending = sorted(seqs, key=lambda s: s.arrival)
    finished = []
    while pending or not engine.idle:
        if pending and pending[0].arrival <= engine.step_end:
            seq = pending.pop(0)
            engine.enqueue(seq, seq.arrival)
        else:
            done = engine.on_step_end(engine.step_end)
            finished.extend(done)
    return seqs, finished


@pytest.mark.parametrize("reference", [True, False])
def test_lone_request_ttft_is_its_prefill_step(reference):
    engine = make_engine(EngineConfig(), STEP, 10_000, reference=reference)
    (seq,), _ = drive(engine, [(1.0, 1000, 5, ())])
    prefill = STEP.step_s(0, 0, 1000, 1000 * 1000 / 2)
    assert seq.first_token - seq.arrival == pytest.approx(prefill, rel=1e-12)
    decode = sum(STEP.step_s(1, 1000 + j + 1, 0, 0) for j in range(4))
    assert seq.finish - seq.first_token == pytest.approx(decode, rel=1e-12)
    assert seq.tpot == pytest.approx(decode / 4, rel=1e-12)


@pytest.mark.parametrize("reference", [True, False])
def test_token_budget_splits_long_prefill_into_chunks(reference):
    config = EngineConfig(max_num_seqs=8, max_num_batched_tokens=1024)
    engine = make_engine(config, STEP, 10_000, reference=reference)
    (seq,), _ = drive(engine, [(0.0, 2500, 2, ())])
    chunks = [(0, 1024), (1024, 1024), (2048, 452)]
    expected = sum(STEP.step_s(0, 0, n, n * (done + n / 2)) for done, n in chunks)
    assert seq.first_token == pytest.approx(expected, rel=1e-12)
    assert engine.steps == 4  # three prefill chunks, one decode step


@pytest.mark.parametrize("reference", [True, False])
def test_kv_exhaustion_preempts_and_everything_still_finishes(reference):
    # 40 blocks of 16 tokens: two requests growing to 400 tokens each cannot coexist.
    engine = make_engine(
        EngineConfig(max_num_seqs=8, max_num_batched_tokens=512), STEP, 40, reference=reference
    )
    seqs, finished = drive(engine, [(0.0, 200, 200, ()), (0.0, 200, 200, ())])
    assert engine.preemptions >= 1
    assert sum(s.preemptions for s in seqs) == engine.preemptions
    assert sorted(s.rid for s in finished) == [0, 1]
    assert engine.cache.used == 0


@pytest.mark.parametrize("reference", [True, False])
def test_prefix_cache_hit_skips_cached_blocks(reference):
    engine = make_engine(EngineConfig(), STEP, 10_000, reference=reference)
    hashes = tuple(range(1000, 1000 + 64))  # 64 blocks of 16 tokens = 1024 tokens
    seqs, _ = drive(engine, [(0.0, 1024, 2, hashes), (5.0, 1024, 2, hashes)])
    cold, warm = (s.first_token - s.arrival for s in seqs)
    # vLLM recomputes at least the last token: 63 cached blocks, 16 tokens recomputed.
    assert warm == pytest.approx(STEP.step_s(0, 0, 16, 16 * (1008 + 8)), rel=1e-12)
    assert warm < cold / 2
    assert engine.cache.hit_units >= 63


def test_engine_refuses_what_can_never_fit():
    engine = make_engine(EngineConfig(), STEP, 10, reference=False)
    assert not engine.fits(Sequence(0, prompt=150, output=20, arrival=0.0))
    assert engine.fits(Sequence(1, prompt=100, output=20, arrival=0.0))


def random_requests(seed: int, n: int, rate: float) -> list:
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        prompt = rng.randint(1, 3000)
        hashes = ()
        if rng.random() < 0.5:  # a few shared system prompts
            base = rng.choice((1, 2, 3)) * 10_000
            hashes = tuple(base + j for j in range(prompt // 16))
        out.append((t, prompt, rng.randint(1, 400), hashes))
    return out


@pytest.mark.parametrize(
    ("seed", "rate", "kv_blocks"),
    [(0, 20.0, 100_000), (1, 40.0, 2_000), (2, 60.0, 1_200), (3, 5.0, 50_000)],
)
def test_fast_mode_agrees_with_reference(seed, rate, kv_blocks):
    config = EngineConfig(max_num_seqs=48, max_num_batched_tokens=1024)
    requests = random_requests(seed, 600, rate)
    ref_seqs, _ = drive(ReferenceEngine(config, STEP, kv_blocks), requests)
    fast_engine = FastEngine(config, STEP, kv_blocks)
    fast_seqs, _ = drive(fast_engine, requests)
    for a, b in zip(ref_seqs, fast_seqs, strict=True):
        assert b.first_token == pytest.approx(a.first_token, rel=1e-9, abs=1e-9)
        assert b.finish == pytest.approx(a.finish, rel=1e-9, abs=1e-9)
        assert b.preemptions == a.preemptions
        if a.output > 1:
            assert b.tpot == pytest.approx(a.tpot, rel=1e-6)
    # Fewer events is the point of the fast mode.
    assert fast_engine.steps == sum(1 for _ in range(fast_engine.steps))


@pytest.mark.parametrize("reference", [True, False])
def test_every_request_ends_exactly_once_with_sane_times(reference):
    config = EngineConfig(max_num_seqs=32, max_num_batched_tokens=1024)
    engine = make_engine(config, STEP, 1_500, reference=reference)
    seqs, finished = drive(engine, random_requests(7, 400, 50.0))
    assert sorted(s.rid for s in finished) == list(range(400))
    for s in seqs:
        assert s.arrival <= s.first_scheduled <= s.first_token <= s.finish < math.inf
        assert s.generated == s.output
        assert not math.isnan(s.first_token)
    assert engine.cache.used == 0


def test_snapshot_matches_reference_mid_span():
    config = EngineConfig(max_num_seqs=64, max_num_batched_tokens=2048)
    requests = random_requests(11, 200, 30.0)
    engines = ReferenceEngine(config, STEP, 3_000), FastEngine(config, STEP, 3_000)
    probes = [0.5 * k + 0.013 for k in range(1, 40)]
    seen = []
    for engine in engines:
        seqs = [Sequence(i, p, o, t, h) for i, (t, p, o, h) in enumerate(requests)]
        pending = list(seqs)
        snaps, probe = [], list(probes)
        while pending or not engine.idle or probe:
            nxt = min(pending[0].arrival if pending else math.inf, engine.step_end)
            if probe and probe[0] < nxt:
                snaps.append(engine.snapshot(probe.pop(0)))
            elif pending and pending[0].arrival <= engine.step_end:
                s = pending.pop(0)
                engine.enqueue(s, s.arrival)
            elif not engine.idle:
                engine.on_step_end(engine.step_end)
            else:
                snaps.append(engine.snapshot(probe.pop(0)))
        seen.append(snaps)
    assert seen[0] == seen[1]
