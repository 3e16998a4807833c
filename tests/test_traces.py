"""Trace loaders: real shared traces, fixture slices, and malformed files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from sandbox.trace_formats.checks import client_cap
from sandbox.traces import (
    TRACE_FILES,
    detect_format,
    load_trace,
    poisson_arrivals,
    trace_path,
)
from sandbox.workload import Workload, WorkloadError
from serving.shared_data import shared_dir

FIXTURES = Path(__file__).parent / "fixtures"
needs_shared = pytest.mark.shared("traces")


# -- fixtures (always available) ---------------------------------------------


def test_fixture_formats_detected() -> None:
    assert detect_format(FIXTURES / "azure_code_head.csv") == "azure"
    assert detect_format(FIXTURES / "splitwise_code_head.csv") == "vidur"
    assert detect_format(FIXTURES / "sharegpt_head.csv") == "lengths"
    assert detect_format(FIXTURES / "mooncake_head.jsonl") == "mooncake"


def test_azure_and_vidur_fixtures_agree() -> None:
    # The Vidur splitwise file is the Azure trace re-expressed in relative seconds.
    az = load_trace(FIXTURES / "azure_code_head.csv")
    vi = load_trace(FIXTURES / "splitwise_code_head.csv")
    assert len(az) == len(vi) == 200
    assert az.arrival_s[0] == 0.0
    np.testing.assert_allclose(az.arrival_s, vi.arrival_s, atol=1e-3)
    np.testing.assert_array_equal(az.prompt_tokens, vi.prompt_tokens)
    np.testing.assert_array_equal(az.max_tokens, vi.max_tokens)
    assert az.arrival_s.dtype == np.float64 and az.prompt_tokens.dtype == np.int64
    assert az.meta["format"] == "azure"


def test_client_cap_is_the_largest_output_rounded_up_to_a_power_of_two() -> None:
    cases = {1: 1, 2: 2, 3: 4, 1000: 1024, 1024: 1024, 1025: 2048}
    assert {n: client_cap(np.array([n])) for n in cases} == cases
    assert client_cap(np.array([5, 700, 9])) == 1024


@pytest.mark.parametrize("fixture", ["azure_code_head.csv", "mooncake_head.jsonl"])
def test_a_trace_without_caps_gives_every_request_one_shared_cap(fixture: str) -> None:
    # Public traces record only what was generated: a per-request cap would be the length.
    w = load_trace(FIXTURES / fixture)
    assert len(set(w.max_tokens.tolist())) == 1
    cap = int(w.max_tokens[0])
    assert cap == client_cap(w.output_tokens) >= w.output_tokens.max()
    assert len(set(w.output_tokens.tolist())) > 1  # so the lengths really are hidden
    part = w.slice(10, 40)  # a stretch keeps the trace's cap, not one of its own
    assert set(part.max_tokens.tolist()) == {cap}


def test_length_sets_take_the_cap_of_the_whole_file() -> None:
    path = FIXTURES / "sharegpt_head.csv"
    whole = load_trace(path, rate=4.0, seed=7)
    few = load_trace(path, rate=4.0, seed=7, n=5)
    assert set(few.max_tokens.tolist()) == set(whole.max_tokens.tolist())
    assert int(whole.max_tokens[0]) == client_cap(whole.output_tokens)


def test_mooncake_fixture_has_512_token_blocks() -> None:
    w = load_trace(FIXTURES / "mooncake_head.jsonl")
    assert len(w) == 60 and w.prefix_block_tokens == 512
    assert len(w.prefix_hashes) == 60
    # hash_ids cover the prompt: ceil(input / 512) blocks.
    assert all(
        len(h) == -(-p // 512) for h, p in zip(w.prefix_hashes, w.prompt_tokens, strict=True)
    )


def test_lengths_need_arrivals_and_seeds_reproduce() -> None:
    path = FIXTURES / "sharegpt_head.csv"
    with pytest.raises(WorkloadError, match="rate="):
        load_trace(path)
    a = load_trace(path, rate=4.0, seed=7)
    b = load_trace(path, rate=4.0, seed=7)
    c = load_trace(path, rate=4.0, seed=8)
    assert len(a) == 200 and a.arrival_s[0] == 0.0
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    np.testing.assert_array_equal(a.prompt_tokens, b.prompt_tokens)
    assert not np.array_equal(a.arrival_s, c.arrival_s)
    assert sorted(a.prompt_tokens.tolist()) == sorted(c.prompt_tokens.tolist())  # same rows
    n = load_trace(path, rate=4.0, seed=7, n=500)  # more than the file: with replacement
    assert len(n) == 500


def test_lengths_with_arrivals_from() -> None:
    arrivals = load_trace(FIXTURES / "azure_code_head.csv")
    w = load_trace(FIXTURES / "sharegpt_head.csv", arrivals_from=arrivals, seed=1)
    np.testing.assert_array_equal(w.arrival_s, arrivals.arrival_s)


def test_poisson_arrivals_rate() -> None:
    t = poisson_arrivals(20_000, 10.0, seed=0)
    assert t[0] == 0.0 and np.all(np.diff(t) >= 0)
    assert len(t) / t[-1] == pytest.approx(10.0, rel=0.05)


def test_bad_options_and_names() -> None:
    with pytest.raises(WorkloadError, match="format azure does not take option rate"):
        load_trace(FIXTURES / "azure_code_head.csv", rate=3)
    with pytest.raises(WorkloadError, match="unknown trace name"):
        trace_path("nope")
    with pytest.raises(WorkloadError, match="no such file"):
        load_trace("/nonexistent/trace.csv")


def test_missing_shared_dir_is_clear(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AUTOPOIESIS_SHARED", str(tmp_path / "absent"))
    assert shared_dir() == tmp_path / "absent"
    with pytest.raises(WorkloadError, match="AUTOPOIESIS_SHARED"):
        trace_path("azure-code")


# -- malformed files ----------------------------------------------------------


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


AZ_HEAD = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("empty.csv", "", "empty file"),
        ("header_only.csv", AZ_HEAD, "no rows"),
        (
            "missing.csv",
            "TIMESTAMP,ContextTokens\n2023-11-16 18:17:03.97,10\n",
            "missing column GeneratedTokens",
        ),
        (
            "text.csv",
            AZ_HEAD + "2023-11-16 18:17:03.97,10,5\n2023-11-16 18:17:04.0,abc,5\n",
            "non-numeric value 'abc' on line 3",
        ),
        (
            "blank.csv",
            AZ_HEAD + "2023-11-16 18:17:03.97,10,\n",
            "missing value on line 2",
        ),
        (
            "negative.csv",
            AZ_HEAD + "2023-11-16 18:17:03.97,10,5\n2023-11-16 18:17:04.0,-4,5\n",
            "negative length -4 on line 3",
        ),
        (
            "zero.csv",
            AZ_HEAD + "2023-11-16 18:17:03.97,10,0\n",
            "must be >= 1",
        ),
        (
            "fraction.csv",
            AZ_HEAD + "2023-11-16 18:17:03.97,10.5,3\n",
            "non-integer length 10.5",
        ),
        (
            "unsorted.csv",
            AZ_HEAD + "2023-11-16 18:17:05,10,5\n2023-11-16 18:17:04,10,5\n",
            "not sorted.*line 3",
        ),
        (
            "badtime.csv",
            AZ_HEAD + "2023-11-16 18:17:05,10,5\nyesterday-ish,10,5\n",
            "unparseable timestamp 'yesterday-ish' on line 3",
        ),
        (
            "vidur_unsorted.csv",
            "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n5,1,1\n2,1,1\n",
            "not sorted.*line 4",
        ),
        ("unknown.csv", "a,b,c\n1,2,3\n", "unknown trace format"),
        (
            "bad.jsonl",
            '{"timestamp": 0, "input_length": 5, "output_length": 1}\n{oops\n',
            "invalid JSON on line 2",
        ),
        ("nofield.jsonl", '{"timestamp": 0, "input_length": 5}\n', "missing field output_length"),
        (
            "mc_text.jsonl",
            '{"timestamp": 0, "input_length": "many", "output_length": 1}\n',
            "non-numeric value 'many' on line 1",
        ),
        (
            "mc_unsorted.jsonl",
            '{"timestamp": 9, "input_length": 5, "output_length": 1}\n'
            '{"timestamp": 3, "input_length": 5, "output_length": 1}\n',
            "not sorted.*line 2",
        ),
    ],
)
def test_malformed_files_name_the_problem(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = _write(tmp_path, name, text)
    with pytest.raises(WorkloadError, match=message) as info:
        load_trace(path)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg


def test_empty_jsonl_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="empty file"):
        load_trace(_write(tmp_path, "e.jsonl", "\n\n"), format="mooncake")
    with pytest.raises(WorkloadError, match="unknown format 'xml'"):
        load_trace(FIXTURES / "azure_code_head.csv", format="xml")


# -- the real shared traces ----------------------------------------------------


def _timed(name: str, **opts: object) -> tuple[Workload, float]:
    start = time.perf_counter()
    w = load_trace(name, **opts)
    return w, time.perf_counter() - start


@needs_shared
@pytest.mark.parametrize(
    ("name", "rows", "span_s", "input_mean", "output_mean"),
    [
        ("azure-code", 8819, 3436, 2048, 27.9),
        ("azure-conv", 19366, 3502, 1155, 211),
        ("splitwise-code", 8819, 3436, 2048, 27.9),
        ("splitwise-conv", 19366, 3502, 1155, 211),
        ("mooncake", 3993, 1022, 15325, 149),
    ],
)
def test_timestamped_shared_traces_match_readme(
    name: str, rows: int, span_s: float, input_mean: float, output_mean: float
) -> None:
    w, elapsed = _timed(name)
    assert len(w) == rows
    assert len(set(w.max_tokens.tolist())) == 1 and w.max_tokens[0] >= w.output_tokens.max()
    assert w.duration_s == pytest.approx(span_s, abs=1.0)
    assert w.arrival_s[0] == 0.0
    assert w.prompt_tokens.mean() == pytest.approx(input_mean, rel=0.005)
    assert w.output_tokens.mean() == pytest.approx(output_mean, rel=0.005)
    assert elapsed < 2.0
    if name == "mooncake":
        assert w.prefix_block_tokens == 512 and len(w.prefix_hashes) == rows


@needs_shared
@pytest.mark.parametrize(
    ("name", "rows", "input_mean", "output_mean"),
    [("sharegpt", 30731, 2340, 439), ("arxiv", 28257, 2588, 291), ("bwb", 33768, 1067, 1613)],
)
def test_length_only_shared_traces(
    name: str, rows: int, input_mean: float, output_mean: float
) -> None:
    w, elapsed = _timed(name, rate=5.0, seed=0)
    assert len(w) == rows
    assert w.prompt_tokens.mean() == pytest.approx(input_mean, rel=0.005)
    assert w.output_tokens.mean() == pytest.approx(output_mean, rel=0.005)
    assert len(w) / w.duration_s == pytest.approx(5.0, rel=0.05)
    assert elapsed < 2.0


@needs_shared
def test_servegen_pool_window() -> None:
    w = load_trace("servegen", pool="deepseek-r1", start_s=0, end_s=1800, seed=3)
    again = load_trace("servegen", pool="deepseek-r1", start_s=0, end_s=1800, seed=3)
    np.testing.assert_array_equal(w.arrival_s, again.arrival_s)
    assert w.arrival_s.min() >= 0 and w.arrival_s.max() < 1800
    # Whole windows are generated at the recorded rate: compare with the source rates.
    import pandas as pd

    rates = pd.read_csv(trace_path("servegen"))
    pool = rates[(rates.model_pool == "deepseek-r1") & (rates.window_start_s < 1800)]
    expected = pool.rate_rps.sum() * 600
    assert len(w) == pytest.approx(expected, rel=0.02)
    assert w.prompt_tokens.mean() == pytest.approx(1268, rel=0.1)
    assert w.output_tokens.mean() == pytest.approx(1527, rel=0.1)
    # One cap from the pool's length distribution, whatever was drawn.
    assert len(set(w.max_tokens.tolist())) == 1 and w.max_tokens[0] >= w.output_tokens.max()
    short = load_trace("servegen", pool="deepseek-r1", start_s=0, end_s=60, seed=3)
    assert set(short.max_tokens.tolist()) == set(w.max_tokens.tolist())
    with pytest.raises(WorkloadError, match="unknown model pool"):
        load_trace("servegen", pool="m-huge")


def test_trace_names_cover_readme_files() -> None:
    assert {"azure-code", "azure-conv", "mooncake", "sharegpt", "arxiv", "bwb", "servegen"} <= set(
        TRACE_FILES
    )


def test_mooncake_round_trip_through_json(tmp_path: Path) -> None:
    recs = [
        {"timestamp": 0, "input_length": 1000, "output_length": 3, "hash_ids": [1, 2]},
        {"timestamp": 1500, "input_length": 600, "output_length": 9, "hash_ids": [1, 7]},
    ]
    path = _write(tmp_path, "t.jsonl", "\n".join(json.dumps(r) for r in recs) + "\n")
    w = load_trace(path)
    np.testing.assert_allclose(w.arrival_s, [0.0, 1.5])
    assert w.prefix_hashes == ((1, 2), (1, 7))
