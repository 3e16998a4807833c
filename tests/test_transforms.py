"""Workload transforms: invariants, seeds, summaries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sandbox.traces import load_trace
from sandbox.transforms import (
    concat,
    head,
    inject_burst,
    mix,
    prefix_reuse,
    repeat_to,
    resample_lengths,
    scale_rate,
    summarize,
    time_slice,
    to_window,
)
from sandbox.workload import Workload, WorkloadError
from serving.contract import WorkloadWindow

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def code() -> Workload:
    return load_trace(FIXTURES / "azure_code_head.csv")


@pytest.fixture(scope="module")
def moon() -> Workload:
    return load_trace(FIXTURES / "mooncake_head.jsonl")


def _wl(arrivals: list[float], prompt: int = 10, sessions: bool = False) -> Workload:
    n = len(arrivals)
    return Workload(
        arrival_s=np.asarray(arrivals, dtype=np.float64),
        prompt_tokens=np.full(n, prompt, dtype=np.int64),
        output_tokens=np.full(n, 2, dtype=np.int64),
        max_tokens=np.full(n, 2, dtype=np.int64),
        session_ids=tuple(f"s{i}" for i in range(n)) if sessions else (),
        name=f"p{prompt}",
    )


def test_scale_rate_doubles_rate_and_keeps_order(code: Workload) -> None:
    fast = scale_rate(code, 2.0)
    assert len(fast) == len(code)
    assert summarize(fast)["arrival_rate"] == pytest.approx(2 * summarize(code)["arrival_rate"])
    np.testing.assert_array_equal(fast.prompt_tokens, code.prompt_tokens)
    np.testing.assert_allclose(np.diff(fast.arrival_s), np.diff(code.arrival_s) / 2)
    # Burstiness is a property of gap ratios, so it must not change.
    assert summarize(fast)["iat_cv"] == pytest.approx(summarize(code)["iat_cv"])
    assert code.meta.get("transforms") is None  # input untouched
    with pytest.raises(WorkloadError):
        scale_rate(code, 0)


def test_time_slice_is_rezeroed_and_half_open(code: Workload) -> None:
    w = time_slice(code, 30.0, 40.0)
    inside = (code.arrival_s >= 30.0) & (code.arrival_s < 40.0)
    assert len(w) == int(inside.sum()) > 0
    np.testing.assert_allclose(w.arrival_s, code.arrival_s[inside] - 30.0)
    assert w.arrival_s.min() >= 0 and w.arrival_s.max() < 10.0
    assert len(time_slice(code, 1e6, 1e6 + 1)) == 0
    with pytest.raises(WorkloadError, match="empty time slice"):
        time_slice(code, 5, 5)


def test_head(code: Workload) -> None:
    assert len(head(code, 10)) == 10
    assert len(head(code, 10_000)) == len(code)


def test_concat_plays_b_after_a() -> None:
    a, b = _wl([0, 1, 2], prompt=10), _wl([0, 0.5], prompt=99)
    c = concat(a, b, gap_s=3)
    assert len(c) == 5
    np.testing.assert_allclose(c.arrival_s, [0, 1, 2, 5, 5.5])
    assert c.prompt_tokens.tolist() == [10, 10, 10, 99, 99]


def test_mix_merges_by_arrival_and_pads_columns(moon: Workload) -> None:
    a = _wl([0, 2, 4], prompt=10, sessions=True)
    b = head(moon, 3)
    m = mix(a, b)
    assert len(m) == len(a) + len(b)
    assert np.all(np.diff(m.arrival_s) >= 0)
    assert m.prefix_block_tokens == 512
    assert len(m.prefix_hashes) == len(m.session_ids) == len(m)
    # Every request of each input is there exactly once.
    assert sorted(m.prompt_tokens.tolist()) == sorted(
        a.prompt_tokens.tolist() + b.prompt_tokens.tolist()
    )
    # Ties keep a first (stable merge).
    t = mix(_wl([1.0], prompt=1), _wl([1.0], prompt=2))
    assert t.prompt_tokens.tolist() == [1, 2]


def test_inject_burst_adds_requests_in_range(code: Workload, moon: Workload) -> None:
    out = inject_burst(code, at_s=3.0, duration_s=2.0, extra_rate=100.0, seed=5)
    extra = len(out) - len(code)
    assert 140 < extra < 260  # Poisson(200)
    assert np.all(np.diff(out.arrival_s) >= 0)
    again = inject_burst(code, at_s=3.0, duration_s=2.0, extra_rate=100.0, seed=5)
    np.testing.assert_array_equal(out.arrival_s, again.arrival_s)
    np.testing.assert_array_equal(out.prompt_tokens, again.prompt_tokens)
    other = inject_burst(code, at_s=3.0, duration_s=2.0, extra_rate=100.0, seed=6)
    assert not np.array_equal(out.arrival_s, other.arrival_s)
    with_hashes = inject_burst(code, 3.0, 2.0, 100.0, seed=5, lengths_from=moon)
    assert with_hashes.prefix_block_tokens == 512
    assert set(with_hashes.prompt_tokens.tolist()) - set(code.prompt_tokens.tolist())


def test_resample_lengths_draws_from_source(code: Workload) -> None:
    src = _wl([0, 1], prompt=77)
    out = resample_lengths(code, src, seed=1)
    np.testing.assert_array_equal(out.arrival_s, code.arrival_s)
    assert set(out.prompt_tokens.tolist()) == {77}
    a = resample_lengths(code, code, seed=3)
    b = resample_lengths(code, code, seed=3)
    np.testing.assert_array_equal(a.prompt_tokens, b.prompt_tokens)


def test_repeat_to(moon: Workload) -> None:
    r = repeat_to(moon, 150)
    assert len(r) == 150
    assert np.all(np.diff(r.arrival_s) >= 0)
    assert r.prompt_tokens[60] == moon.prompt_tokens[0]
    assert prefix_reuse(r) > prefix_reuse(moon)


def test_summarize_and_prefix_reuse() -> None:
    w = Workload(
        arrival_s=np.array([0.0, 1.0, 2.0, 3.0]),
        prompt_tokens=np.array([32, 32, 48, 16]),
        output_tokens=np.array([1, 2, 3, 4]),
        max_tokens=np.array([1, 2, 3, 4]),
        prefix_hashes=((1, 2), (1, 2), (1, 2, 3), (9,)),
    )
    s = summarize(w)
    assert s["requests"] == 4 and s["duration_s"] == 3.0
    assert s["arrival_rate"] == pytest.approx(4 / 3)
    assert s["iat_cv"] == 0.0  # evenly spaced
    assert s["prefix_reuse"] == pytest.approx(4 / 8)
    assert s["output_p50"] == pytest.approx(2.5)
    empty = summarize(head(w, 0))
    assert empty["requests"] == 0 and empty["arrival_rate"] == 0.0


def test_to_window_matches_contract(code: Workload) -> None:
    win = to_window(code, 30.0, 40.0)
    assert isinstance(win, WorkloadWindow)
    assert win.duration_s == 10.0
    assert win.requests == int(((code.arrival_s >= 30) & (code.arrival_s < 40)).sum())
    assert win.arrival_rate == pytest.approx(win.requests / 10.0)
    assert win.input_p50 <= win.input_p90 <= win.input_p99
