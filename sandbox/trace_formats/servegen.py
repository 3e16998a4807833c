"""ServeGen: per-client arrival statistics of a model pool, turned into requests."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from sandbox.trace_formats.checks import checked_workload, client_cap
from sandbox.workload import Workload, WorkloadError

SERVEGEN_WINDOW_S = 600.0


@lru_cache(maxsize=2)
def _servegen_arrivals(path: str, mtime_ns: int) -> pd.DataFrame:
    # 650k rows take ~0.5 s to parse; scenarios build many windows from one file.
    frame = pd.read_csv(path)
    for col in ("model_pool", "client_id", "window_start_s", "rate_rps", "iat_dist"):
        if col not in frame.columns:
            raise WorkloadError(f"{path}: missing column {col}")
    return frame


@lru_cache(maxsize=2)
def _servegen_pmf(path: str, mtime_ns: int) -> pd.DataFrame:
    frame = pd.read_csv(path)
    for col in ("model_pool", "field", "value", "prob"):
        if col not in frame.columns:
            raise WorkloadError(f"{path}: missing column {col}")
    return frame


def _sample_pmf(pmf: pd.DataFrame, field: str, n: int, rng: np.random.Generator) -> np.ndarray:
    rows = pmf[pmf["field"] == field]
    prob = rows["prob"].to_numpy(dtype=np.float64)
    prob = prob / prob.sum()
    return rows["value"].to_numpy()[rng.choice(len(rows), size=n, p=prob)].astype(np.int64)


def load_servegen(
    path: Path,
    name: str | None,
    *,
    pool: str = "m-large",
    start_s: float = 0.0,
    end_s: float = 3600.0,
    seed: int = 0,
    lengths_path: str | os.PathLike[str] | None = None,
    max_requests: int = 5_000_000,
) -> Workload:
    if not end_s > start_s:
        raise WorkloadError(f"{path}: empty time range [{start_s}, {end_s})")
    windows = _pool_windows(path, pool, start_s, end_s)
    rng = np.random.default_rng(seed)
    counts = _window_counts(windows, rng)
    total = int(counts.sum())
    if total > max_requests:
        raise WorkloadError(
            f"{path}: pool {pool} over [{start_s}, {end_s}) holds ~{total} requests, more than "
            f"max_requests={max_requests}; narrow the time range"
        )
    t = _arrival_times(windows, counts, rng)
    t = np.sort(t[(t >= start_s) & (t < end_s)])
    if len(t) == 0:
        raise WorkloadError(f"{path}: pool {pool} has no requests in [{start_s}, {end_s})")
    lpath = Path(lengths_path or path.with_name("servegen_pool_length_pmf.csv.gz"))
    if not lpath.is_file():
        raise WorkloadError(f"{path}: ServeGen length file {lpath} is missing")
    prompt, output, cap = _pool_lengths(lpath, pool, len(t), rng)
    return checked_workload(
        path,
        "servegen",
        t - start_s,
        np.maximum(prompt, 1),
        np.maximum(output, 1),
        name or f"servegen-{pool}",
        max_tokens=cap,
        meta={"pool": pool, "start_s": start_s, "end_s": end_s, "seed": seed},
    )


def _pool_windows(path: Path, pool: str, start_s: float, end_s: float) -> pd.DataFrame:
    """The pool's client windows with traffic that overlap [start_s, end_s)."""
    arrivals = _servegen_arrivals(str(path), path.stat().st_mtime_ns)
    pools = sorted(arrivals["model_pool"].unique())
    if pool not in pools:
        raise WorkloadError(f"{path}: unknown model pool {pool!r}; has {', '.join(pools)}")
    w0 = arrivals["window_start_s"].to_numpy()
    return arrivals[
        (arrivals["model_pool"] == pool)
        & (arrivals["rate_rps"] > 0)
        & (w0 + SERVEGEN_WINDOW_S > start_s)
        & (w0 < end_s)
    ]


def _window_counts(windows: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """Arrivals in each window: whole counts so each window keeps its rate; stochastic
    rounding keeps the mean."""
    rate = windows["rate_rps"].to_numpy(dtype=np.float64)
    expected = rate * SERVEGEN_WINDOW_S
    counts = np.floor(expected).astype(np.int64)
    counts += rng.random(len(counts)) < (expected - counts)
    return counts


def _arrival_times(
    windows: pd.DataFrame, counts: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Absolute arrival times of every window's ``counts`` arrivals (unsorted, unclipped).

    Per window with k arrivals: draw k+1 gaps from the client's fitted distribution
    (shape carries its burstiness), then rescale them to span the window exactly, so
    the window holds k arrivals at the recorded rate.
    """
    keep = counts > 0
    counts = counts[keep]
    shape = windows["dist_shape"].to_numpy(dtype=np.float64)[keep]
    scale = windows["dist_scale"].to_numpy(dtype=np.float64)[keep]
    is_weibull = windows["iat_dist"].to_numpy()[keep] == "Weibull"
    starts = windows["window_start_s"].to_numpy(dtype=np.float64)[keep]
    k1 = counts + 1
    seg = np.repeat(np.arange(len(counts)), k1)
    sh, sc = shape[seg], scale[seg]
    gaps = np.where(
        is_weibull[seg],
        rng.weibull(np.maximum(sh, 1e-6)) * sc,
        rng.gamma(np.maximum(sh, 1e-6), sc),
    )
    gaps = np.maximum(gaps, 0.0)
    offsets = np.concatenate(([0], np.cumsum(k1)[:-1]))
    sums = np.add.reduceat(gaps, offsets)
    gaps = gaps / np.where(sums > 0, sums, 1.0)[seg] * SERVEGEN_WINDOW_S
    within = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[offsets] - gaps[offsets], k1)
    last = np.zeros(len(gaps), dtype=bool)
    last[offsets + k1 - 1] = True  # the (k+1)-th gap only closes the window
    return (starts[seg] + within)[~last]


def _pool_lengths(
    lpath: Path, pool: str, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, int]:
    """(prompt, output, max_tokens cap) of ``n`` requests from the pool's length PMFs."""
    pmf = _servegen_pmf(str(lpath), lpath.stat().st_mtime_ns)
    pmf = pmf[pmf["model_pool"] == pool]
    fields = set(pmf["field"].unique())
    # Pool-level PMFs are marginals: input and output are drawn independently.
    if "input_tokens" in fields:
        prompt = _sample_pmf(pmf, "input_tokens", n, rng)
    elif {"text_tokens", "image_tokens"} <= fields:
        prompt = _sample_pmf(pmf, "text_tokens", n, rng) + _sample_pmf(pmf, "image_tokens", n, rng)
    else:
        raise WorkloadError(f"{lpath}: pool {pool} has no input length distribution")
    if "output_tokens" not in fields:
        raise WorkloadError(f"{lpath}: pool {pool} has no output_tokens distribution")
    output = _sample_pmf(pmf, "output_tokens", n, rng)
    # The cap comes from the distribution, not the sample: one cap per pool.
    support = pmf[(pmf["field"] == "output_tokens") & (pmf["prob"] > 0)]["value"]
    return prompt, output, client_cap(support.to_numpy())
