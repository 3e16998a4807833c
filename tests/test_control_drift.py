"""The drift test: Poisson rate ratio + KS on log lengths, Bonferroni, effect-size floors."""

from __future__ import annotations

import numpy as np

from flows.drift import DriftConfig, WindowSample, detect, rate_ratio_test


def window(rng, rate, dur, prompt_mu, out_mu, slo_p=None) -> WindowSample:
    n = rng.poisson(rate * dur)
    slo = None if slo_p is None else rng.random(n) < slo_p
    return WindowSample(
        dur,
        np.exp(rng.normal(prompt_mu, 0.8, n)).astype(np.int64) + 1,
        np.exp(rng.normal(out_mu, 0.7, n)).astype(np.int64) + 1,
        slo,
    )


def test_no_false_alarms_on_the_same_process():
    rng = np.random.default_rng(0)
    alarms = sum(
        detect(window(rng, 5, 120, 6.5, 5.0, 0.9), window(rng, 5, 120, 6.5, 5.0, 0.9)).trigger
        for _ in range(100)
    )
    assert alarms <= 2  # alpha = 0.01 family-wise, plus the effect-size floors


def test_detects_conversation_to_code_shift():
    rng = np.random.default_rng(1)
    conv = window(rng, 5, 120, 6.8, 5.5)
    code = window(rng, 9, 120, 7.6, 3.0)  # longer prompts, short outputs, higher rate
    rep = detect(conv, code)
    assert rep.drifted and rep.output_ks > 0.5 and rep.rate_ratio > 1.5
    assert any("output" in r for r in rep.reasons)


def test_rate_only_and_floors():
    ratio, p = rate_ratio_test(600, 120, 1200, 120)
    assert abs(ratio - 2) < 1e-9 and p < 1e-10
    rng = np.random.default_rng(2)
    # 10 % more traffic at this size is significant but below the 25 % floor: not drift.
    rep = detect(window(rng, 50, 120, 6, 5), window(rng, 55, 120, 6, 5))
    assert not rep.drifted


def test_slo_regression_and_too_little_data():
    rng = np.random.default_rng(3)
    rep = detect(window(rng, 5, 120, 6, 5, 0.95), window(rng, 5, 120, 6, 5, 0.6))
    assert rep.slo_regressed and not rep.drifted and rep.trigger
    small = detect(window(rng, 0.1, 100, 6, 5), window(rng, 5, 120, 6, 5), DriftConfig())
    assert not small.decided and not small.trigger
