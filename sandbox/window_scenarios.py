"""Window scenarios: the traffic the live cluster really saw, replayed in the sandbox.

The pull flow saves each workload window as one **window file**: the window's
telemetry rows in the router's own Parquet format (``serving.telemetry``),
with the live fleet in the file's key-value metadata
(``autopoiesis.window.cluster``, a ``sandbox.scenario_spec.parse_cluster`` spec such
as ``llama-3-8b@1xH100,1xA100``; optionally ``autopoiesis.window.slo``, JSON
``{"ttft_s": .., "tpot_s": ..}``). The file is content-addressed: its name is
``<sha256 of its bytes>.parquet``, so the fleet is covered by the same hash as
the traffic and one name pins both.

A scenario name ``window:<sha256 prefix>:<variant>`` (the prefix at least
``MIN_PREFIX`` hex digits; the flows use 16) resolves, in a windows directory,
to the one file whose name starts with the prefix; its bytes are hashed and
must match the file name, or the build fails with ``WindowIntegrityError``
(the harness reports it as an ``integrity`` rejection). Variants:

``replay``      the window as it arrived, on the fleet it ran on
``rate-1.5x``   every inter-arrival gap divided by 1.5 (burst structure kept)
``burst``       an extra burst at 40 % of the run lasting 20 % of it, at the
                window's mean rate (so the rate doubles during it); lengths drawn
                from the window itself; where the burst sits is fixed, its
                arrivals depend on the seed
``gpu-loss``    the GPUs of half the replicas of the largest GPU type (at least
                one replica, never all of the fleet) leave at 30 % of the run and
                return at 65 %; builds on two replicas or more, and is one of a
                window's default variants (``window_names``) from three on, so
                that routing still has a choice while the GPUs are gone (on two,
                one survivor takes everything and the variant mostly measures
                the returning replica's cold start)

``scale`` (0 < scale <= 1) shortens the replay to the first ``scale`` of the
window's span, but never below ``MIN_REQUESTS`` requests: a window is already
the live fleet's load, so it is cut, never thinned. A window of fewer requests
is played again until it has ``MIN_REQUESTS`` (``transforms.repeat_to``, one
mean gap between copies), so that one request is at most 0.5 % of a
scenario's SLO attainment (the promotion tolerance is 1 %).

Inside a sandbox the directory is mounted read-only at ``/windows`` and named
by ``$AUTOPOIESIS_WINDOWS``; on the host, by ``EvalRequest.windows_dir``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import replace
from pathlib import Path

from sandbox.scenario_spec import SLO, ClusterEvent, ClusterSpec, Scenario, parse_cluster
from sandbox.workload import Workload, WorkloadError

PREFIX = "window:"
VARIANTS: tuple[str, ...] = ("replay", "rate-1.5x", "burst", "gpu-loss")
MIN_PREFIX = 8
MIN_REQUESTS = 200
CLUSTER_KEY = b"autopoiesis.window.cluster"
SLO_KEY = b"autopoiesis.window.slo"
WINDOWS_ENV = "AUTOPOIESIS_WINDOWS"

_NAME = re.compile(rf"^window:([0-9a-f]{{{MIN_PREFIX},64}}):([a-z0-9.-]+)$")


class WindowIntegrityError(WorkloadError):
    """A window file whose bytes do not hash to its name (tampered or corrupt)."""


def is_window_name(name: str) -> bool:
    return name.startswith(PREFIX)


def window_name(sha256: str, variant: str = "replay", prefix: int = 16) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown window variant {variant!r}; known: {', '.join(VARIANTS)}")
    return f"{PREFIX}{sha256[:prefix]}:{variant}"


def window_names(sha256: str, cluster: ClusterSpec | str | None = None) -> tuple[str, ...]:
    """The window's replay and its augmented variants (``gpu-loss`` from 3 replicas on)."""
    if isinstance(cluster, str):
        cluster = parse_cluster(cluster)
    variants = [
        v for v in VARIANTS if v != "gpu-loss" or cluster is None or len(cluster.plan.replicas) > 2
    ]
    return tuple(window_name(sha256, v) for v in variants)


def parse_name(name: str) -> tuple[str, str]:
    """``window:<prefix>:<variant>`` -> (prefix, variant); ValueError when malformed."""
    m = _NAME.match(name)
    if not m:
        raise ValueError(
            f"window scenario {name!r}: expected window:<sha256 prefix, {MIN_PREFIX}-64 lowercase "
            f"hex>:<variant>"
        )
    prefix, variant = m.groups()
    if variant not in VARIANTS:
        raise ValueError(
            f"window scenario {name!r}: unknown variant {variant!r}; known: {', '.join(VARIANTS)}"
        )
    return prefix, variant


def default_dir() -> str | None:
    return os.environ.get(WINDOWS_ENV) or None


# --------------------------------------------------------------------------- writing
def window_bytes(frame, cluster: str, slo: SLO | None = None) -> bytes:
    """A telemetry frame (``serving.telemetry`` columns) as window-file bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from serving.telemetry import TELEMETRY_SCHEMA

    parse_cluster(cluster)  # refuse a fleet the simulator cannot build
    frame = frame[list(TELEMETRY_SCHEMA.names)].reset_index(drop=True)
    meta = dict(TELEMETRY_SCHEMA.metadata or {})
    meta[CLUSTER_KEY] = cluster.encode()
    if slo is not None:
        meta[SLO_KEY] = json.dumps({"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s}).encode()
    table = pa.Table.from_pandas(frame, schema=TELEMETRY_SCHEMA, preserve_index=False)
    table = table.replace_schema_metadata(meta)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def save_window(frame, cluster: str, directory: str | os.PathLike[str],
                slo: SLO | None = None) -> str:
    """Write the window file into ``directory`` (atomically, once); returns its sha256."""
    data = window_bytes(frame, cluster, slo)
    sha = hashlib.sha256(data).hexdigest()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    # Readable by the sandbox's unprivileged user (a container runs as nobody).
    d.chmod(0o755)
    final = d / f"{sha}.parquet"
    if not final.exists():
        tmp = d / f".{sha}.tmp"
        tmp.write_bytes(data)
        tmp.chmod(0o644)
        os.replace(tmp, final)
    return sha


# --------------------------------------------------------------------------- reading
def find_window(prefix: str, directory: str | os.PathLike[str]) -> Path:
    d = Path(directory)
    if not os.access(d, os.R_OK | os.X_OK):
        raise WorkloadError(f"windows folder {d} is missing or not readable")
    hits = sorted(d.glob(f"{prefix}*.parquet"))
    if not hits:
        raise WorkloadError(f"no window file {prefix}….parquet in {d}")
    if len(hits) > 1:
        raise WorkloadError(f"window prefix {prefix} is ambiguous in {d} ({len(hits)} files)")
    return hits[0]


def exists(name: str, directory: str | os.PathLike[str] | None) -> bool:
    """Whether a ``window:`` name resolves to exactly one file in ``directory``."""
    if directory is None:
        return False
    try:
        find_window(parse_name(name)[0], directory)
    except (ValueError, WorkloadError):
        return False
    return True


def verified_bytes(path: Path) -> bytes:
    """The file's bytes, after checking that they hash to its name."""
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if sha != path.stem:
        raise WindowIntegrityError(
            f"window file {path.name} does not match its sha256 (it hashes to {sha[:16]}…): "
            "tampered or corrupt"
        )
    return data


def _load(data: bytes, name: str) -> tuple[Workload, ClusterSpec, SLO]:
    import pyarrow.parquet as pq

    from sandbox.trace_formats.telemetry import workload_from_frame

    meta = pq.read_schema(io.BytesIO(data)).metadata or {}
    if CLUSTER_KEY not in meta:
        raise WorkloadError(f"{name}: window file has no fleet ({CLUSTER_KEY.decode()})")
    cluster = parse_cluster(meta[CLUSTER_KEY].decode())
    slo = SLO(**json.loads(meta[SLO_KEY])) if SLO_KEY in meta else SLO()
    # Parsed from the verified bytes, never from the file again (a second read could
    # see other bytes than the ones just hashed).
    from serving.telemetry import TELEMETRY_SCHEMA, TelemetryError, validate_schema

    try:
        validate_schema(pq.read_schema(io.BytesIO(data)), name)
    except TelemetryError as e:
        raise WorkloadError(str(e)) from e
    table = pq.read_table(io.BytesIO(data), columns=list(TELEMETRY_SCHEMA.names))
    frame = table.cast(TELEMETRY_SCHEMA).to_pandas()
    frame = frame.sort_values("arrival_unix_s", kind="stable", ignore_index=True)
    w = workload_from_frame(frame, name, name)
    return w, cluster, slo


def _gpu_loss(cluster: ClusterSpec, duration: float) -> tuple[ClusterEvent, ...]:
    reps = cluster.plan.replicas
    if len(reps) < 2:
        raise ValueError("window variant gpu-loss needs a fleet of at least two replicas")
    by_gpu: dict[str, list[int]] = {}
    for r in reps:
        by_gpu.setdefault(r.gpu, []).append(r.tp)
    gpu = max(by_gpu, key=lambda g: (sum(by_gpu[g]), g))
    tps = by_gpu[gpu]
    lose = max(1, len(tps) // 2)
    if lose == len(reps):  # never the whole fleet
        lose -= 1
    count = sum(sorted(tps)[:lose])
    return (
        ClusterEvent(at_s=round(0.30 * duration, 3), kind="remove_gpus", gpu=gpu, count=count),
        ClusterEvent(at_s=round(0.65 * duration, 3), kind="add_gpus", gpu=gpu, count=count),
    )


def build_window_scenario(
    name: str, seed: int = 0, *, scale: float = 1.0,
    directory: str | os.PathLike[str] | None = None,
) -> Scenario:
    """The scenario a ``window:`` name stands for (see the module docstring)."""
    from sandbox.transforms import head, inject_burst, repeat_to, scale_rate, time_slice

    prefix, variant = parse_name(name)
    if not (isinstance(scale, int | float) and 0 < scale <= 1):
        raise ValueError(f"scale must be in (0, 1], got {scale!r}")
    directory = directory or default_dir()
    if directory is None:
        raise WorkloadError(f"{name}: no windows directory (${WINDOWS_ENV} unset)")
    path = find_window(prefix, directory)
    w, cluster, slo = _load(verified_bytes(path), name)
    if len(w) < MIN_REQUESTS:
        w = repeat_to(w, MIN_REQUESTS)
    elif scale < 1.0 and len(w) > MIN_REQUESTS:
        cut = time_slice(w, 0.0, max(w.duration_s * scale, 1e-9))
        w = cut if len(cut) >= MIN_REQUESTS else head(w, MIN_REQUESTS)
    span = max(w.duration_s, 1e-9)
    events: tuple[ClusterEvent, ...] = ()
    if variant == "rate-1.5x":
        w = scale_rate(w, 1.5)
    elif variant == "burst":
        rate = (len(w) - 1) / span if len(w) > 1 else 1.0
        w = inject_burst(w, 0.4 * span, 0.2 * span, rate, seed)
    elif variant == "gpu-loss":
        events = _gpu_loss(cluster, span)
    w = replace(w, name=name, meta={**w.meta, "scenario": name, "seed": seed, "scale": scale,
                                    "window_sha256": path.stem})
    return Scenario(
        name=name,
        description=f"live window {path.stem[:16]} ({len(w)} requests), variant {variant}",
        workload=w,
        cluster=cluster,
        events=events,
        slo=slo,
    )
