"""Trace loaders: every public trace in ``shared/traces`` and our own telemetry, as a Workload.

``load_trace(path)`` detects the format from the file name and header; every
problem with the file becomes a one-line ``WorkloadError`` naming the file, and
where it applies the column and line. Conventions for every format:

- arrival times are seconds relative to the first request (which arrives at 0);
- ``max_tokens`` is the output length unless the trace records what the client
  asked for (only our telemetry does): public traces log what was generated, and
  replaying with that as the limit makes the simulated engine stop where the
  real one did;
- the result is sorted by arrival; a trace whose timestamps go backwards is
  rejected rather than silently sorted, because that usually means a broken file
  (telemetry is the exception: rows are logged in completion order).

Formats (``format=``): ``azure`` (Azure LLM 2023 CSV), ``vidur`` (Vidur processed
traces with ``arrived_at``), ``lengths`` (length-only sets: ShareGPT, arXiv, BWB;
need ``rate=`` and ``seed=``, or ``arrivals_from=``), ``mooncake`` (JSONL with
512-token prefix block hashes), ``servegen`` (per-client arrival statistics of a
model pool, turned into requests), ``telemetry`` (the router's Parquet log).
"""

from __future__ import annotations

import gzip
import inspect
import json
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from sandbox.workload import Workload, WorkloadError

FORMATS = ("azure", "vidur", "lengths", "mooncake", "servegen", "telemetry")

MOONCAKE_BLOCK_TOKENS = 512
SERVEGEN_WINDOW_S = 600.0

_REPO_ROOT = Path(__file__).resolve().parents[1]

TRACE_FILES: dict[str, str] = {
    "azure-code": "traces/azure_llm_2023/AzureLLMInferenceTrace_code.csv",
    "azure-conv": "traces/azure_llm_2023/AzureLLMInferenceTrace_conv.csv",
    "splitwise-code": "traces/vidur_processed/splitwise_code.csv",
    "splitwise-conv": "traces/vidur_processed/splitwise_conv.csv",
    "arxiv": "traces/vidur_processed/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv",
    "sharegpt": "traces/sarathi_serve/sharegpt_8k_filtered_stats_llama2_tokenizer.csv",
    "bwb": "traces/etalon/bwb_stats_llama2_tokenizer_filtered_v2.csv",
    "mooncake": "traces/mooncake/synthetic_trace.jsonl",
    "servegen": "traces/servegen/servegen_client_arrivals.csv.gz",
    "servegen-lengths": "traces/servegen/servegen_pool_length_pmf.csv.gz",
    "servegen-length-summary": "traces/servegen/servegen_client_length_summary.csv.gz",
}


def shared_dir() -> Path:
    """The shared data folder: ``$AUTOPOIESIS_SHARED`` if set, else ``<repo>/../shared``.

    Resolved at each call so tests and deployments can point it elsewhere.
    """
    env = os.environ.get("AUTOPOIESIS_SHARED")
    return Path(env) if env else _REPO_ROOT.parent / "shared"


SHARED_DIR = shared_dir()
"""``shared_dir()`` at import time; prefer calling ``shared_dir()``."""


def trace_path(name: str) -> Path:
    """The path of a named shared trace (``"azure-code"``, ``"mooncake"``, … see TRACE_FILES)."""
    if name not in TRACE_FILES:
        raise WorkloadError(f"unknown trace name {name!r}; known: {', '.join(TRACE_FILES)}")
    root = shared_dir()
    if not root.is_dir():
        raise WorkloadError(
            f"shared data folder {root} is missing: set AUTOPOIESIS_SHARED or check out shared/ "
            "next to the repository"
        )
    path = root / TRACE_FILES[name]
    if not path.is_file():
        raise WorkloadError(f"trace {name!r}: {path} is missing from the shared folder")
    return path


# ---------------------------------------------------------------------------
# Format detection


def _read_head(path: Path) -> str:
    """The first line of a (possibly gzipped) text file; '' when empty."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.strip():
                    return line.strip()
    except (OSError, EOFError) as exc:
        raise WorkloadError(f"{path}: cannot read ({exc})") from exc
    return ""


def detect_format(path: str | os.PathLike[str]) -> str:
    """Which of ``FORMATS`` a file is, from its extension and first line."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "telemetry"
    if path.is_dir():
        # A telemetry directory of segments.
        return "telemetry"
    head = _read_head(path)
    if not head:
        raise WorkloadError(f"{path}: empty file")
    if name.endswith((".jsonl", ".json", ".jsonl.gz")) or head.startswith("{"):
        return "mooncake"
    cols = {c.strip().strip('"') for c in head.split(",")}
    if "rate_rps" in cols or "model_pool" in cols:
        return "servegen"
    if cols & {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}:
        return "azure"
    if "arrived_at" in cols:
        return "vidur"
    if cols & {"num_prefill_tokens", "num_decode_tokens"}:
        return "lengths"
    raise WorkloadError(f"{path}: unknown trace format (first line: {head[:80]!r})")


# ---------------------------------------------------------------------------
# Column checks shared by the CSV formats


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        # Everything as text first: pandas would otherwise coerce or guess, and we
        # want to say which line holds the bad value.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError as exc:
        raise WorkloadError(f"{path}: empty file") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise WorkloadError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from exc
    frame.columns = [c.strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise WorkloadError(
            f"{path}: missing column {', '.join(missing)} (has {', '.join(frame.columns)})"
        )
    if frame.empty:
        raise WorkloadError(f"{path}: no rows after the header")
    return frame


def _line(i: int, header: bool = True) -> int:
    return i + 2 if header else i + 1


def _numeric(path: Path, frame: pd.DataFrame, col: str, header: bool = True) -> np.ndarray:
    raw = frame[col]
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        text = str(raw.iloc[i])
        what = "a missing value" if text.strip() == "" else f"non-numeric value {text!r}"
        raise WorkloadError(f"{path}: column {col} has {what} on line {_line(i, header)}")
    return values.to_numpy(dtype=np.float64)


def _lengths(path: Path, values: np.ndarray, col: str, header: bool = True) -> np.ndarray:
    """Token counts: integers >= 1, or a WorkloadError naming the first bad line."""
    if not np.all(np.isfinite(values)):
        i = int(np.argmax(~np.isfinite(values)))
        raise WorkloadError(f"{path}: column {col} is not finite on line {_line(i, header)}")
    neg = values < 0
    if neg.any():
        i = int(np.argmax(neg))
        raise WorkloadError(
            f"{path}: column {col} has negative length {values[i]:g} on line {_line(i, header)}"
        )
    zero = values < 1
    if zero.any():
        i = int(np.argmax(zero))
        raise WorkloadError(
            f"{path}: column {col} has length {values[i]:g} on line {_line(i, header)}; "
            "lengths must be >= 1 token"
        )
    frac = values != np.floor(values)
    if frac.any():
        i = int(np.argmax(frac))
        raise WorkloadError(
            f"{path}: column {col} has non-integer length {values[i]:g} on line {_line(i, header)}"
        )
    return values.astype(np.int64)


def _relative_sorted(path: Path, t: np.ndarray, col: str, header: bool = True) -> np.ndarray:
    """Arrival seconds relative to the first row; rejects going back in time."""
    back = np.diff(t) < 0
    if back.any():
        i = int(np.argmax(back)) + 1
        raise WorkloadError(
            f"{path}: timestamps are not sorted: column {col} on line {_line(i, header)} "
            f"is earlier than the line before"
        )
    return t - t[0]


def _workload(
    path: Path,
    fmt: str,
    arrival_s: np.ndarray,
    prompt: np.ndarray,
    output: np.ndarray,
    name: str | None,
    *,
    max_tokens: np.ndarray | None = None,
    meta: dict | None = None,
    **extra: object,
) -> Workload:
    return Workload(
        arrival_s=np.ascontiguousarray(arrival_s, dtype=np.float64),
        prompt_tokens=np.ascontiguousarray(prompt, dtype=np.int64),
        output_tokens=np.ascontiguousarray(output, dtype=np.int64),
        max_tokens=np.ascontiguousarray(
            output if max_tokens is None else max_tokens, dtype=np.int64
        ),
        name=name or path.name.split(".")[0],
        meta={"source": str(path), "format": fmt, **(meta or {})},
        **extra,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------------------
# Loaders


def _load_azure(path: Path, name: str | None) -> Workload:
    frame = _read_csv(path, ("TIMESTAMP", "ContextTokens", "GeneratedTokens"))
    prompt = _lengths(path, _numeric(path, frame, "ContextTokens"), "ContextTokens")
    output = _lengths(path, _numeric(path, frame, "GeneratedTokens"), "GeneratedTokens")
    stamps = pd.to_datetime(frame["TIMESTAMP"], format="mixed", errors="coerce")
    bad = stamps.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise WorkloadError(
            f"{path}: unparseable timestamp {frame['TIMESTAMP'].iloc[i]!r} on line {_line(i)}"
        )
    # Nanosecond integers first: float seconds since 1970 would lose sub-µs precision.
    ns = stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    rel = _relative_sorted(path, (ns - ns[0]).astype(np.float64) / 1e9, "TIMESTAMP")
    return _workload(path, "azure", rel, prompt, output, name, meta={"start": str(stamps.iloc[0])})


def _load_vidur(path: Path, name: str | None) -> Workload:
    frame = _read_csv(path, ("arrived_at", "num_prefill_tokens", "num_decode_tokens"))
    t = _numeric(path, frame, "arrived_at")
    if not np.all(np.isfinite(t)):
        i = int(np.argmax(~np.isfinite(t)))
        raise WorkloadError(f"{path}: column arrived_at is not finite on line {_line(i)}")
    rel = _relative_sorted(path, t, "arrived_at")
    prompt = _lengths(path, _numeric(path, frame, "num_prefill_tokens"), "num_prefill_tokens")
    output = _lengths(path, _numeric(path, frame, "num_decode_tokens"), "num_decode_tokens")
    return _workload(path, "vidur", rel, prompt, output, name)


def poisson_arrivals(n: int, rate: float, seed: int) -> np.ndarray:
    """``n`` Poisson arrival times at ``rate`` req/s, the first at 0."""
    if not rate > 0:
        raise WorkloadError(f"rate must be > 0 req/s, got {rate}")
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=n)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def _load_lengths(
    path: Path,
    name: str | None,
    *,
    rate: float | None = None,
    seed: int | None = None,
    arrivals_from: Workload | None = None,
    n: int | None = None,
) -> Workload:
    frame = _read_csv(path, ("num_prefill_tokens", "num_decode_tokens"))
    prompt = _lengths(path, _numeric(path, frame, "num_prefill_tokens"), "num_prefill_tokens")
    output = _lengths(path, _numeric(path, frame, "num_decode_tokens"), "num_decode_tokens")
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
    return _workload(
        path, "lengths", arrivals, prompt[idx], output[idx], name, meta={"arrivals": how}
    )


def _load_mooncake(path: Path, name: str | None) -> Workload:
    opener = gzip.open if path.name.endswith(".gz") else open
    stamps: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    hashes: list[tuple[int, ...]] = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise WorkloadError(f"{path}: invalid JSON on line {lineno} ({exc.msg})") from exc
            if not isinstance(rec, dict):
                raise WorkloadError(f"{path}: line {lineno} is not a JSON object")
            for key in ("timestamp", "input_length", "output_length"):
                if key not in rec:
                    raise WorkloadError(f"{path}: missing field {key} on line {lineno}")
                value = rec[key]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise WorkloadError(
                        f"{path}: field {key} has non-numeric value {value!r} on line {lineno}"
                    )
            ids = rec.get("hash_ids", [])
            if not isinstance(ids, list) or not all(isinstance(h, int) for h in ids):
                raise WorkloadError(f"{path}: hash_ids on line {lineno} is not a list of integers")
            stamps.append(float(rec["timestamp"]))
            prompt.append(rec["input_length"])
            output.append(rec["output_length"])
            hashes.append(tuple(ids))
    if not stamps:
        raise WorkloadError(f"{path}: empty file")
    t = np.asarray(stamps) / 1000.0  # the trace's timestamps are milliseconds
    rel = _relative_sorted(path, t, "timestamp", header=False)
    p = _lengths(path, np.asarray(prompt, dtype=np.float64), "input_length", header=False)
    o = _lengths(path, np.asarray(output, dtype=np.float64), "output_length", header=False)
    return _workload(
        path,
        "mooncake",
        rel,
        p,
        o,
        name,
        prefix_hashes=tuple(hashes),
        prefix_block_tokens=MOONCAKE_BLOCK_TOKENS,
    )


def _load_telemetry(
    path: Path,
    name: str | None,
    *,
    since_unix_s: float | None = None,
    statuses: tuple[str, ...] | None = None,
) -> Workload:
    # Imported here so the sandbox only needs serving's telemetry when it replays it.
    from serving.telemetry import TelemetryError, read_telemetry

    try:
        frame = read_telemetry(path, since_unix_s=since_unix_s)
    except TelemetryError as exc:
        raise WorkloadError(str(exc)) from exc
    if statuses is not None:
        frame = frame[frame["status"].isin(statuses)].reset_index(drop=True)
    if frame.empty:
        raise WorkloadError(f"{path}: no telemetry rows to replay")
    t = frame["arrival_unix_s"].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(t)):
        raise WorkloadError(f"{path}: telemetry has a non-finite arrival_unix_s")
    prompt = frame["prompt_tokens"].to_numpy(dtype=np.int64)
    if (prompt < 1).any():
        i = int(np.argmax(prompt < 1))
        raise WorkloadError(
            f"{path}: request {frame['request_id'].iloc[i]} has prompt_tokens {prompt[i]} (< 1)"
        )
    # A request that failed, was cancelled or rejected generated fewer tokens than it
    # would have: its logged output is a lower bound on its demand, kept >= 1 token.
    logged = frame["output_tokens"].to_numpy(dtype=np.int64)
    output = np.maximum(logged, 1)
    max_tokens = np.maximum(frame["max_tokens"].to_numpy(dtype=np.int64), output)
    hashes: tuple[tuple[int, ...], ...] = ()
    block = 16
    has = frame["prefix_hashes"].map(len).to_numpy() > 0
    if has.any():
        blocks = np.unique(frame["prefix_block_tokens"].to_numpy()[has])
        if len(blocks) > 1:
            raise WorkloadError(
                f"{path}: rows mix prefix_block_tokens {blocks.tolist()}; replay one at a time"
            )
        block = int(blocks[0])
        hashes = tuple(tuple(int(h) for h in hs) for hs in frame["prefix_hashes"])
    sessions = frame["session_id"].fillna("").astype(str)
    session_ids = tuple(sessions) if (sessions != "").any() else ()
    non_ok = int((frame["status"] != "ok").sum())
    return _workload(
        path,
        "telemetry",
        t - t[0],
        prompt,
        output,
        name,
        max_tokens=max_tokens,
        meta={"start_unix_s": float(t[0]), "non_ok_rows": non_ok},
        prefix_hashes=hashes,
        prefix_block_tokens=block,
        session_ids=session_ids,
    )


# ---------------------------------------------------------------------------
# ServeGen: per-client arrival statistics turned into requests


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


def _load_servegen(
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
    arrivals = _servegen_arrivals(str(path), path.stat().st_mtime_ns)
    pools = sorted(arrivals["model_pool"].unique())
    if pool not in pools:
        raise WorkloadError(f"{path}: unknown model pool {pool!r}; has {', '.join(pools)}")
    w0 = arrivals["window_start_s"].to_numpy()
    sel = arrivals[
        (arrivals["model_pool"] == pool)
        & (arrivals["rate_rps"] > 0)
        & (w0 + SERVEGEN_WINDOW_S > start_s)
        & (w0 < end_s)
    ]
    rng = np.random.default_rng(seed)
    rate = sel["rate_rps"].to_numpy(dtype=np.float64)
    # Whole-window counts so each window keeps its rate; stochastic rounding keeps the mean.
    expected = rate * SERVEGEN_WINDOW_S
    counts = np.floor(expected).astype(np.int64)
    counts += rng.random(len(counts)) < (expected - counts)
    total = int(counts.sum())
    if total > max_requests:
        raise WorkloadError(
            f"{path}: pool {pool} over [{start_s}, {end_s}) holds ~{total} requests, more than "
            f"max_requests={max_requests}; narrow the time range"
        )
    keep = counts > 0
    counts = counts[keep]
    shape = sel["dist_shape"].to_numpy(dtype=np.float64)[keep]
    scale = sel["dist_scale"].to_numpy(dtype=np.float64)[keep]
    is_weibull = sel["iat_dist"].to_numpy()[keep] == "Weibull"
    starts = sel["window_start_s"].to_numpy(dtype=np.float64)[keep]
    # Per window with k arrivals: draw k+1 gaps from the client's fitted distribution
    # (shape carries its burstiness), then rescale them to span the window exactly, so
    # the window holds k arrivals at the recorded rate.
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
    t = (starts[seg] + within)[~last]
    t = np.sort(t[(t >= start_s) & (t < end_s)])
    if len(t) == 0:
        raise WorkloadError(f"{path}: pool {pool} has no requests in [{start_s}, {end_s})")
    lpath = Path(lengths_path or path.with_name("servegen_pool_length_pmf.csv.gz"))
    if not lpath.is_file():
        raise WorkloadError(f"{path}: ServeGen length file {lpath} is missing")
    pmf = _servegen_pmf(str(lpath), lpath.stat().st_mtime_ns)
    pmf = pmf[pmf["model_pool"] == pool]
    fields = set(pmf["field"].unique())
    n = len(t)
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
    return _workload(
        path,
        "servegen",
        t - start_s,
        np.maximum(prompt, 1),
        np.maximum(output, 1),
        name or f"servegen-{pool}",
        meta={"pool": pool, "start_s": start_s, "end_s": end_s, "seed": seed},
    )


_LOADERS: dict[str, Callable[..., Workload]] = {
    "azure": _load_azure,
    "vidur": _load_vidur,
    "lengths": _load_lengths,
    "mooncake": _load_mooncake,
    "servegen": _load_servegen,
    "telemetry": _load_telemetry,
}


def load_trace(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    name: str | None = None,
    **opts: object,
) -> Workload:
    """Load a trace file (or a named shared trace, see ``TRACE_FILES``) as a Workload.

    ``format`` overrides detection. Options by format:

    - ``lengths``: ``rate`` (req/s) and ``seed`` for Poisson arrivals, or
      ``arrivals_from`` (a Workload whose arrival times to reuse); ``n`` requests
      (default: as many rows as the file has, or as ``arrivals_from`` has).
    - ``servegen``: ``pool`` (m-large, m-mid, m-small, deepseek-r1, mm-image),
      ``start_s``/``end_s`` (seconds from the data's start; the result is re-zeroed
      at ``start_s``, so it may not start with an arrival at exactly 0), ``seed``,
      ``lengths_path``, ``max_requests``.
    - ``telemetry``: ``since_unix_s``, ``statuses`` (keep only these; default all,
      since every request, failed or not, was load on the cluster).
    """
    if isinstance(path, str) and path in TRACE_FILES and not Path(path).exists():
        name = name or path
        path = trace_path(path)
    path = Path(path)
    if not path.exists():
        raise WorkloadError(f"{path}: no such file")
    fmt = format or detect_format(path)
    if fmt not in _LOADERS:
        raise WorkloadError(f"{path}: unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if fmt != "telemetry" and path.is_file() and path.stat().st_size == 0:
        raise WorkloadError(f"{path}: empty file")
    loader = _LOADERS[fmt]
    accepted = [
        p.name for p in inspect.signature(loader).parameters.values() if p.kind == p.KEYWORD_ONLY
    ]
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        raise WorkloadError(
            f"{path}: format {fmt} does not take option {', '.join(unknown)} "
            f"(it takes: {', '.join(accepted) or 'none'})"
        )
    return loader(path, name, **opts)
