"""CSV traces: Azure LLM 2023, Vidur processed (``arrived_at``), and length-only sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sandbox.trace_formats.checks import (
    checked_lengths,
    checked_relative_times,
    checked_workload,
    client_cap,
    line_number,
    numeric_column,
    read_csv_columns,
)
from sandbox.workload import Workload, WorkloadError


def load_azure(path: Path, name: str | None) -> Workload:
    frame = read_csv_columns(path, ("TIMESTAMP", "ContextTokens", "GeneratedTokens"))
    prompt = checked_lengths(path, numeric_column(path, frame, "ContextTokens"), "ContextTokens")
    output = checked_lengths(
        path, numeric_column(path, frame, "GeneratedTokens"), "GeneratedTokens"
    )
    stamps = pd.to_datetime(frame["TIMESTAMP"], format="mixed", errors="coerce")
    bad = stamps.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise WorkloadError(
            f"{path}: unparseable timestamp {frame['TIMESTAMP'].iloc[i]!r} on line {line_number(i)}"
        )
    # Nanosecond integers first: float seconds since 1970 would lose sub-µs precision.
    ns = stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    rel = checked_relative_times(path, (ns - ns[0]).astype(np.float64) / 1e9, "TIMESTAMP")
    return checked_workload(
        path, "azure", rel, prompt, output, name, meta={"start": str(stamps.iloc[0])}
    )


def load_vidur(path: Path, name: str | None) -> Workload:
    frame = read_csv_columns(path, ("arrived_at", "num_prefill_tokens", "num_decode_tokens"))
    t = numeric_column(path, frame, "arrived_at")
    if not np.all(np.isfinite(t)):
        i = int(np.argmax(~np.isfinite(t)))
        raise WorkloadError(f"{path}: column arrived_at is not finite on line {line_number(i)}")
    rel = checked_relative_times(path, t, "arrived_at")
    prompt = checked_lengths(
        path, numeric_column(path, frame, "num_prefill_tokens"), "num_prefill_tokens"
    )
    output = checked_lengths(
        path, numeric_column(path, frame, "num_decode_tokens"), "num_decode_tokens"
    )
    return checked_workload(path, "vidur", rel, prompt, output, name)


def poisson_arrivals(n: int, rate: float, seed: int) -> np.ndarray:
    """``n`` Poisson arrival times at ``rate`` req/s, the first at 0."""
    if not rate > 0:
        raise WorkloadError(f"rate must be > 0 req/s, got {rate}")
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=n)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def load_lengths(
    path: Path,
    name: str | None,
    *,
    rate: float | None = None,
    seed: int | None = None,
    arrivals_from: Workload | None = None,
    n: int | None = None,
) -> Workload:
    frame = read_csv_columns(path, ("num_prefill_tokens", "num_decode_tokens"))
    prompt = checked_lengths(
        path, numeric_column(path, frame, "num_prefill_tokens"), "num_prefill_tokens"
    )
    output = checked_lengths(
        path, numeric_column(path, frame, "num_decode_tokens"), "num_decode_tokens"
    )
    if arrivals_from is not None:
        src = arrivals_from.arrival_s
        arrivals = src - (src[0] if len(src) else 0.0)
        count = len(arrivals)
        how = f"arrivals of {arrivals_from.name}"
    elif rate is not None and seed is not None:
        count = len(prompt) if n is None else n
        arrivals = poisson_arrivals(count, rate, seed)
        how = f"Poisson {rate:g} req/s seed {seed}"
    else:
        raise WorkloadError(
            f"{path}: length-only trace has no arrival times: pass rate= (req/s) and seed=, "
            "or arrivals_from= a Workload"
        )
    # Length files carry no meaningful order, and may be sorted by a filter; draw rows
    # in a seeded random order (with replacement only when more are asked for than exist).
    rng = np.random.default_rng(0 if seed is None else seed + 1)
    replace = count > len(prompt)
    idx = rng.choice(len(prompt), size=count, replace=replace)
    return checked_workload(
        path,
        "lengths",
        arrivals,
        prompt[idx],
        output[idx],
        name,
        max_tokens=client_cap(output),  # the file's, not the sample's: one cap per trace
        meta={"arrivals": how},
    )
