"""Step-time model (serving/steptime.py): closed form, monotonicity, anchors to the profiles."""

import random

import pytest

from serving.hardware import PROFILED, UnknownHardware
from serving.steptime import step_time_model

COMBOS = sorted(PROFILED)


@pytest.mark.parametrize(("model", "gpu", "tp"), COMBOS)
def test_decode_step_is_exactly_the_closed_form(model, gpu, tp):
    stm = step_time_model(model, gpu, tp)
    rng = random.Random(0)
    k0 = stm.decode_coeffs(1)[1]
    for batch in [0, 1, 2, 7, 64, 255, 256, 1024, 1025, 3000]:
        w, k = stm.decode_coeffs(batch)
        assert k == k0  # the KV-read cost per token does not depend on the batch either
        for _ in range(5):
            ctx = rng.randrange(0, 2_000_000)
            assert stm.step_s(batch, ctx, 0, 0) == w + k * ctx  # bit-for-bit


@pytest.mark.parametrize(("model", "gpu", "tp"), COMBOS)
def test_more_work_is_never_faster(model, gpu, tp):
    stm = step_time_model(model, gpu, tp)
    rng = random.Random(1)
    for _ in range(300):
        b, c = rng.randrange(0, 600), rng.randrange(0, 500_000)
        p = rng.choice([0, rng.randrange(1, 9000)])
        a = p * (rng.randrange(0, 20_000) + p / 2)
        t = stm.step_s(b, c, p, a)
        assert t > 0
        assert stm.step_s(b + 1, c, p, a) >= t
        assert stm.step_s(b, c + 100, p, a) >= t
        dp = rng.randrange(1, 600)
        assert stm.step_s(b, c, p + dp, a + dp * (p + dp / 2)) >= t
        if p:
            assert stm.step_s(b, c, p, a * 1.5 + 1) >= t


def test_8b_h100_decode_batch1_matches_profile():
    # 32 layers x ~0.2 ms (measured) + lm_head + CPU: the profile README's ~7.5 ms anchor.
    stm = step_time_model("llama-3-8b", "H100", 1)
    assert 0.007 <= stm.step_s(1, 1024, 0, 0) <= 0.009


def test_prefill_matches_measured_layer_stack():
    # 8B on H100, one 8192-token prompt: 32 x 6.62 ms measured (eager, + ~0.1 ms launch/layer).
    stm = step_time_model("llama-3-8b", "H100", 1)
    t = stm.step_s(0, 0, 8192, 8192 * 4096)
    assert 0.95 * 32 * 6.52e-3 < t < 1.1 * 32 * 6.62e-3


def test_tp8_faster_than_tp4_for_70b_big_batches():
    for gpu in ("H100", "A100", "H200"):
        tp4 = step_time_model("llama-3-70b", gpu, 4)
        tp8 = step_time_model("llama-3-70b", gpu, 8)
        for b in (64, 256, 512):
            assert tp8.step_s(b, b * 2048, 0, 0) < tp4.step_s(b, b * 2048, 0, 0)
        assert tp8.step_s(0, 0, 4096, 4096 * 2048) < tp4.step_s(0, 0, 4096, 4096 * 2048)


def test_gpu_ordering_for_decode():
    t = {
        g: step_time_model("llama-3-8b", g, 1).step_s(64, 64 * 1024, 0, 0)
        for g in ("A100", "H100", "H200")
    }
    assert t["H200"] < t["H100"] < t["A100"]


def test_cached_context_makes_prefill_chunks_dearer():
    stm = step_time_model("llama-3-70b", "H100", 4)
    fresh = stm.step_s(32, 32 * 1000, 2048, 2048 * 1024)
    deep = stm.step_s(32, 32 * 1000, 2048, 2048 * (60_000 + 1024))
    assert deep > 1.3 * fresh


def test_unknown_and_unprofiled():
    with pytest.raises(UnknownHardware, match="unknown GPU 'V100'"):
        step_time_model("llama-3-8b", "V100", 1)
    with pytest.raises(UnknownHardware, match="no step-time profile"):
        step_time_model("llama-3-8b", "H100", 4)
    with pytest.raises(UnknownHardware, match="does not fit"):
        step_time_model("llama-3-70b", "A100", 1)
    assert step_time_model("llama-3-8b", "H100", 1) is step_time_model("llama-3-8b", "H100", 1)
