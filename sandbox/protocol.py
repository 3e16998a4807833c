"""The sandbox protocol: what the control plane sends into a sandbox and what comes back.

One evaluation request goes in as a single line of JSON on the harness's stdin;
one response comes back as a single line of JSON on its stdout. Both carry
``PROTOCOL_VERSION``; a side that sees another version refuses the message
instead of guessing.

A request names the candidate by its source *and* that source's sha256, the
scenarios and seeds to replay, and the limits the sandbox enforces. A response
is either per-(scenario, seed) results (the simulator's summary and the policy's
decision-time statistics) or a ``Rejection``: a ``stage`` saying where the
candidate failed and a one-line ``reason`` saying why.

Stages:

``static``     rejected by the static checks before any sandbox started
``load``       the module failed to compile, import or meet the contract
``runtime``    the policy misbehaved while the simulator ran it
``limit``      a resource limit ended it: wall-clock deadline, CPU, memory, pids, output size
``integrity``  a result that cannot be trusted: NaN/inf metrics, tampering with
               time or simulator objects, a forged or corrupt response
``internal``   the sandbox itself failed (not the candidate's fault; retry-worthy)

Scenario names are catalogue names (``sandbox.scenarios``), the harness's local
ones, or ``window:<sha256 prefix>:<variant>``: a pulled live window replayed from
its content-addressed file (``sandbox.window_scenarios``). ``windows_dir`` names the host
folder of those files; the backend mounts it read-only into the sandbox (at
``/windows``), and the harness checks each file's sha256 against its name before
use (a mismatch is an ``integrity`` rejection). The folder is not part of the key:
the name's hash prefix already pins the content.

``split`` (``train`` or ``test``, ``sandbox.splits``) picks the trace region the
catalogue scenarios replay; ``objective`` (``sandbox.objectives``) what each run's
summary carries as ``objective``, with ``capacity_hints`` (per scenario: a rate
multiple to start the capacity search from, e.g. the parent's answer).

The reproducibility key of an evaluation is ``EvalRequest.key``: a hash of the
source hash, the scenario set, the seeds, the parameter overrides, the simulation
mode, the scale, the split, the objective and the capacity hints (which move where
the search probes). The same key must give the same results.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from sandbox.objectives import Objective, mean_objective
from sandbox.splits import check_split

PROTOCOL_VERSION = 3
"""2: ``EvalRequest.windows_dir`` (the host folder of content-addressed window files).
3: ``EvalRequest.split``, ``objective`` and ``capacity_hints``."""

Stage = Literal["static", "load", "runtime", "limit", "integrity", "internal"]
STAGES: tuple[str, ...] = ("static", "load", "runtime", "limit", "integrity", "internal")

MAX_REQUEST_BYTES = 64 * 1024 * 1024
"""Upper bound on a request line the harness will read (sources are capped far lower)."""


class ProtocolError(ValueError):
    """A message that does not follow the protocol (wrong version, missing field, bad JSON)."""


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Limits:
    """What a sandbox enforces on one evaluation."""

    wall_s: float = 60.0
    """Wall-clock deadline for the whole evaluation, from the moment the request is sent."""
    memory_mb: int = 1024
    """Address space (process backend) or cgroup memory (Docker) for the sandbox."""
    cpus: float = 1.0
    """CPU share (Docker ``nano_cpus``); CPU-seconds cap = ``wall_s * cpus`` + slack."""
    pids: int = 64
    """Maximum processes/threads in the sandbox (cgroup pids, or RLIMIT_NPROC)."""
    output_bytes: int = 4 * 1024 * 1024
    """Cap on what the host reads from the sandbox's stdout and stderr, each."""
    file_bytes: int = 16 * 1024 * 1024
    """Largest file the candidate may write in its private /tmp (RLIMIT_FSIZE)."""

    def __post_init__(self) -> None:
        if not (self.wall_s > 0 and math.isfinite(self.wall_s)):
            raise ValueError(f"Limits.wall_s must be a positive number, not {self.wall_s!r}")
        if self.memory_mb < 64:
            raise ValueError(f"Limits.memory_mb must be at least 64, not {self.memory_mb!r}")
        if not self.cpus > 0:
            raise ValueError(f"Limits.cpus must be positive, not {self.cpus!r}")
        if self.pids < 1:
            raise ValueError(f"Limits.pids must be at least 1, not {self.pids!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Limits:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class EvalRequest:
    source: str
    source_sha256: str
    scenarios: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    limits: Limits = field(default_factory=Limits)
    name: str = "policy"
    params: Mapping[str, float] | None = None
    mode: str = "fast"
    scale: float = 1.0
    """Scenario size (0 < scale <= 1), passed to the catalogue's ``build_scenario``."""
    static_checks: bool = True
    """Run the static checks (host side, before the sandbox). Tests turn this off to
    prove that the isolation boundary contains a candidate on its own."""
    nonce: str = ""
    """Random per-request token the response must echo (guards against a canned reply)."""
    windows_dir: str | None = None
    """Host folder of window files for ``window:`` scenarios (mounted read-only)."""
    split: str = "train"
    """Which region of the traces catalogue scenarios replay (``sandbox.splits``)."""
    objective: Objective = field(default_factory=Objective)
    """What each run's ``objective`` is (``sandbox.objectives``)."""
    capacity_hints: Mapping[str, float] | None = None
    """``capacity`` objective: per scenario, the rate multiple its search starts from."""
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        check_split(self.split)

    @classmethod
    def build(
        cls,
        source: str,
        scenarios: Sequence[str],
        *,
        seeds: Sequence[int] = (0,),
        limits: Limits | None = None,
        name: str = "policy",
        params: Mapping[str, float] | None = None,
        mode: str = "fast",
        scale: float = 1.0,
        static_checks: bool = True,
        windows_dir: str | None = None,
        split: str = "train",
        objective: Objective | None = None,
        capacity_hints: Mapping[str, float] | None = None,
    ) -> EvalRequest:
        """``windows_dir`` defaults to ``$AUTOPOIESIS_WINDOWS`` when a scenario is a window."""
        if isinstance(scenarios, str):
            scenarios = (scenarios,)
        if not scenarios:
            raise ValueError("an evaluation needs at least one scenario")
        if not seeds:
            raise ValueError("an evaluation needs at least one seed")
        return cls(
            source=source,
            source_sha256=sha256_text(source),
            scenarios=tuple(scenarios),
            seeds=tuple(int(s) for s in seeds),
            limits=limits or Limits(),
            name=name,
            params=dict(params) if params else None,
            mode=mode,
            scale=float(scale),
            static_checks=static_checks,
            nonce=secrets.token_hex(16),
            windows_dir=_windows_dir(windows_dir, scenarios),
            split=split,
            objective=objective or Objective(),
            capacity_hints=(
                {str(k): float(v) for k, v in capacity_hints.items()} if capacity_hints else None
            ),
        )

    def renewed(self) -> EvalRequest:
        """The same evaluation with a fresh nonce (a retry must not replay a response)."""
        return replace(self, nonce=secrets.token_hex(16))

    @property
    def key(self) -> str:
        """Reproducibility key: everything that decides the results (see the module doc)."""
        ident = {
            "v": PROTOCOL_VERSION,
            "source": self.source_sha256,
            "scenarios": sorted(self.scenarios),
            "seeds": sorted(self.seeds),
            "params": sorted((self.params or {}).items()),
            "mode": self.mode,
            "scale": self.scale,
            "split": self.split,
            "objective": self.objective.to_dict(),
            "capacity_hints": sorted((self.capacity_hints or {}).items()),
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scenarios"] = list(self.scenarios)
        d["seeds"] = list(self.seeds)
        d["params"] = dict(self.params) if self.params else None
        d["capacity_hints"] = dict(self.capacity_hints) if self.capacity_hints else None
        return d

    def to_json(self) -> str:
        """One line of JSON (no raw newlines), as the harness reads it."""
        return json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalRequest:
        _check_version(d, "request")
        try:
            return cls(
                source=d["source"],
                source_sha256=d["source_sha256"],
                scenarios=tuple(d["scenarios"]),
                seeds=tuple(int(s) for s in d.get("seeds", (0,))),
                limits=Limits.from_dict(d.get("limits") or {}),
                name=str(d.get("name", "policy")),
                params=d.get("params"),
                mode=str(d.get("mode", "fast")),
                scale=float(d.get("scale", 1.0)),
                static_checks=bool(d.get("static_checks", True)),
                nonce=str(d.get("nonce", "")),
                windows_dir=None if d.get("windows_dir") is None else str(d["windows_dir"]),
                split=str(d.get("split", "train")),
                objective=Objective.from_dict(d.get("objective")),
                capacity_hints=(
                    {str(k): float(v) for k, v in d["capacity_hints"].items()}
                    if d.get("capacity_hints")
                    else None
                ),
                version=int(d["version"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"malformed request: {type(e).__name__}: {e}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> EvalRequest:
        return cls.from_dict(_loads(text, "request"))


@dataclass(frozen=True)
class ScenarioResult:
    scenario: str
    seed: int
    summary: dict[str, float]
    decision_stats: dict[str, float]
    wall_s: float = 0.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScenarioResult:
        return cls(
            scenario=str(d["scenario"]),
            seed=int(d["seed"]),
            summary={str(k): float(v) for k, v in dict(d["summary"]).items()},
            decision_stats={str(k): float(v) for k, v in dict(d["decision_stats"]).items()},
            wall_s=float(d.get("wall_s", 0.0)),
        )


@dataclass(frozen=True)
class Rejection:
    stage: str
    reason: str
    scenario: str | None = None
    seed: int | None = None
    detail: str = ""
    """Extra context (a traceback tail, stderr tail); never needed to understand ``reason``."""

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown rejection stage {self.stage!r} (known: {STAGES})")

    def __str__(self) -> str:
        where = f" [{self.scenario} seed {self.seed}]" if self.scenario is not None else ""
        return f"{self.stage}: {self.reason}{where}"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Rejection:
        return cls(
            stage=str(d["stage"]),
            reason=str(d["reason"]),
            scenario=d.get("scenario"),
            seed=d.get("seed"),
            detail=str(d.get("detail", "")),
        )


@dataclass(frozen=True)
class EvalResponse:
    key: str
    results: tuple[ScenarioResult, ...] = ()
    rejection: Rejection | None = None
    nonce: str = ""
    backend: str = ""
    """Which isolation produced it (filled in by the host, not trusted from the sandbox)."""
    wall_s: float = 0.0
    """Host-measured wall time of the evaluation, sandbox start included."""
    version: int = PROTOCOL_VERSION

    @property
    def ok(self) -> bool:
        return self.rejection is None

    @property
    def stage(self) -> str | None:
        return self.rejection.stage if self.rejection else None

    @property
    def reason(self) -> str | None:
        return self.rejection.reason if self.rejection else None

    def objective(self) -> float | None:
        """Mean ``objective`` over all results, or None for a rejection."""
        if not self.ok:
            return None
        return mean_objective(self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "key": self.key,
            "nonce": self.nonce,
            "backend": self.backend,
            "wall_s": self.wall_s,
            "ok": self.ok,
            "results": [asdict(r) for r in self.results],
            "rejection": asdict(self.rejection) if self.rejection else None,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalResponse:
        _check_version(d, "response")
        try:
            rej = d.get("rejection")
            return cls(
                key=str(d["key"]),
                results=tuple(ScenarioResult.from_dict(r) for r in d.get("results") or ()),
                rejection=Rejection.from_dict(rej) if rej else None,
                nonce=str(d.get("nonce", "")),
                backend=str(d.get("backend", "")),
                wall_s=float(d.get("wall_s", 0.0)),
                version=int(d["version"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"malformed response: {type(e).__name__}: {e}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> EvalResponse:
        return cls.from_dict(_loads(text, "response"))

    @classmethod
    def reject(cls, request: EvalRequest, stage: str, reason: str, **kw: Any) -> EvalResponse:
        return cls(key=request.key, rejection=Rejection(stage, reason, **kw), nonce=request.nonce)


def _windows_dir(explicit: str | None, scenarios: Sequence[str]) -> str | None:
    import os

    if explicit is not None:
        return str(explicit)
    if any(str(s).startswith("window:") for s in scenarios):
        return os.environ.get("AUTOPOIESIS_WINDOWS") or None
    return None


def _loads(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        d = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ProtocolError(f"{what} is not a JSON object")
    return d


def _check_version(d: Mapping[str, Any], what: str) -> None:
    v = d.get("version")
    if v != PROTOCOL_VERSION:
        raise ProtocolError(
            f"{what} has protocol version {v!r}; this side speaks {PROTOCOL_VERSION}"
        )
