"""Trace loaders: every public trace in ``shared/traces`` and our own telemetry, as a Workload.

``load_trace(path)`` detects the format from the file name and header; every
problem with the file becomes a one-line ``WorkloadError`` naming the file, and
where it applies the column and line. Conventions for every format:

- arrival times are seconds relative to the first request (which arrives at 0);
- the simulated engine stops each request at its ``output_tokens`` (what was
  generated); ``max_tokens`` is the client's cap, which policies see as
  ``Request.max_output_tokens``. Only our telemetry records it (a row without one,
  logged as 0, gets the router's ``DEFAULT_MAX_OUTPUT_TOKENS``, as live). Public
  traces log only what was generated, and a cap equal to each request's length would
  tell a policy in simulation what no router knows live; so every request of such a
  trace gets the same cap, the trace's largest output rounded up to a power of two
  (what a client that never wants a truncated answer sends; ``client_cap``), taken
  over the whole file (length-only sets) or the whole distribution (ServeGen), never
  a sample: Azure code 2,048 (largest output 1,899), Azure conv 1,024 (1,000),
  Mooncake 1,024 (893), BWB 4,096 (2,858). A workload that mixes traces keeps each
  request's own trace's cap, as clients of different services send different caps;
- the result is sorted by arrival; a trace whose timestamps go backwards is
  rejected rather than silently sorted, because that usually means a broken file
  (telemetry is the exception: rows are logged in completion order).

Formats (``format=``): ``azure`` (Azure LLM 2023 CSV), ``vidur`` (Vidur processed
traces with ``arrived_at``), ``lengths`` (length-only sets: ShareGPT, arXiv, BWB;
need ``rate=`` and ``seed=``, or ``arrivals_from=``), ``mooncake`` (JSONL with
512-token prefix block hashes), ``servegen`` (per-client arrival statistics of a
model pool, turned into requests), ``telemetry`` (the router's Parquet log).

The readers, one per format, live in ``sandbox/trace_formats/``.
"""

from __future__ import annotations

import gzip
import inspect
import os
from collections.abc import Callable
from pathlib import Path

# ``X as X``: public names of this module that now live with their format's reader.
from sandbox.trace_formats.csv_formats import load_azure, load_lengths, load_vidur
from sandbox.trace_formats.csv_formats import poisson_arrivals as poisson_arrivals
from sandbox.trace_formats.mooncake import MOONCAKE_BLOCK_TOKENS as MOONCAKE_BLOCK_TOKENS
from sandbox.trace_formats.mooncake import load_mooncake
from sandbox.trace_formats.servegen import SERVEGEN_WINDOW_S as SERVEGEN_WINDOW_S
from sandbox.trace_formats.servegen import load_servegen
from sandbox.trace_formats.telemetry import load_telemetry
from sandbox.workload import Workload, WorkloadError
from serving.shared_data import SHARED_ENV, shared_dir

FORMATS = ("azure", "vidur", "lengths", "mooncake", "servegen", "telemetry")

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


def trace_path(name: str) -> Path:
    """The path of a named shared trace (``"azure-code"``, ``"mooncake"``, … see TRACE_FILES)."""
    if name not in TRACE_FILES:
        raise WorkloadError(f"unknown trace name {name!r}; known: {', '.join(TRACE_FILES)}")
    root = shared_dir()
    if not root.is_dir():
        raise WorkloadError(
            f"shared data folder {root} is missing: set {SHARED_ENV} or check out shared/ "
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


_LOADERS: dict[str, Callable[..., Workload]] = {
    "azure": load_azure,
    "vidur": load_vidur,
    "lengths": load_lengths,
    "mooncake": load_mooncake,
    "servegen": load_servegen,
    "telemetry": load_telemetry,
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
