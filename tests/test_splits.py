"""Train and test splits: disjoint trace stretches by construction, whatever the seed."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from test_scenarios import needs_traces

from sandbox.scenarios import SCENARIO_NAMES, build_scenario
from sandbox.splits import SPLITS, TEST_FRACTION, pool_rows, split_by_time, split_regions
from sandbox.stretches import at_utilization, trace, trace_segment
from sandbox.workload import Workload
from serving.contract import ReplicaSpec

SEEDS = range(6)


def test_regions_partition_each_trace() -> None:
    for name in ("azure-conv", "azure-code", "mooncake", "a-live-trace"):
        train, (test,) = split_regions("train", name), split_regions("test", name)
        assert test[1] - test[0] == pytest.approx(TEST_FRACTION)
        parts = sorted([*train, test])
        assert parts[0][0] == 0.0 and parts[-1][1] == 1.0
        assert all(a[1] == b[0] for a, b in pairwise(parts))  # no gap
    # Mooncake trains on both ends of its span around a middle test part.
    assert split_regions("train", "mooncake") == ((0.0, 0.3), (0.7, 1.0))
    # A trace the catalogue does not know holds out its newest part, like `evolve --trace`.
    assert split_regions("test", "a-live-trace") == ((1 - TEST_FRACTION, 1.0),)


def test_unknown_split_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown split 'dev'; known: train, test"):
        split_regions("dev")
    with pytest.raises(ValueError, match="unknown split"):
        build_scenario("steady-conv", split="validation")


@needs_traces
@pytest.mark.parametrize("source", ["azure-conv", "azure-code", "mooncake"])
def test_train_and_test_stretches_never_share_a_request(source: str) -> None:
    w = trace(source)
    rate = at_utilization(0.9, "llama-3-8b", (ReplicaSpec("H100"), ReplicaSpec("H100")))
    ((test_lo, test_hi),) = (
        (lo * w.duration_s, hi * w.duration_s) for lo, hi in split_regions("test", source)
    )
    for split in SPLITS:
        regions = [(a * w.duration_s, b * w.duration_s) for a, b in split_regions(split, source)]
        for seed in range(20):
            out = trace_segment(w, rate, 60.0, np.random.default_rng(seed), split)
            start, end = out.meta["trace_span"]
            # Inside one region of its split, and so clear of the other split's part.
            assert any(lo <= start < end <= hi for lo, hi in regions), (split, seed, start, end)
            inside_test = test_lo <= start and end <= test_hi
            assert inside_test == (split == "test")


@needs_traces
@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_every_scenario_builds_on_both_splits_with_seed_diversity(name: str) -> None:
    for split in SPLITS:
        builds = [build_scenario(name, seed, split=split) for seed in SEEDS]
        assert all(b.workload.meta["split"] == split for b in builds)
        firsts = {tuple(b.workload.prompt_tokens[:20]) for b in builds}
        assert len(firsts) == len(builds), f"{name}/{split}: seeds replay the same stretch"


@needs_traces
def test_length_pool_rows_are_split_too() -> None:
    bwb = trace("bwb")
    train, test = pool_rows(bwb, "train"), pool_rows(bwb, "test")
    assert len(train) + len(test) == len(bwb)
    assert len(test) == pytest.approx(TEST_FRACTION * len(bwb), abs=1)
    pairs = lambda w: set(zip(w.arrival_s.tolist(), w.prompt_tokens.tolist(), strict=True))  # noqa: E731
    assert not pairs(train) & pairs(test)
    # A permutation, not the file's order: both sides have the pool's lengths.
    assert np.mean(test.output_tokens) == pytest.approx(np.mean(bwb.output_tokens), rel=0.03)


def test_split_by_time_holds_out_the_newest_part() -> None:
    n = 1000
    w = Workload(
        arrival_s=np.linspace(0.0, 100.0, n),
        prompt_tokens=np.arange(1, n + 1, dtype=np.int64),
        output_tokens=np.ones(n, dtype=np.int64),
        max_tokens=np.ones(n, dtype=np.int64),
    )
    train, test = split_by_time(w, 0.25)
    assert len(train) + len(test) == n
    assert train.prompt_tokens.max() < test.prompt_tokens.min()
    assert test.duration_s == pytest.approx(25.0, abs=0.2)
    assert train.arrival_s[0] == 0.0 and test.arrival_s[0] < 0.2
