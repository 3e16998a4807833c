"""The evaluation harness: the program that runs *inside* the sandbox.

    python -m sandbox.harness            # one request line on stdin, one response line on stdout

It imports the trusted code first (simulator, loader, scenarios: a warm sandbox
has paid that cost before the request arrives), then reads one
``EvalRequest`` line, loads the candidate, runs the simulator for every
(scenario, seed), checks that the results can be trusted, and writes one
``EvalResponse`` line.

The candidate shares this process, so the protocol channel is protected
before any of its code runs: file descriptor 1 is duplicated to a private
descriptor for the response and then pointed at ``/dev/null``, so whatever the
policy prints goes nowhere. The process ends with ``os._exit`` so that
``atexit`` hooks or threads a candidate left behind do not run or linger.

Nothing here enforces a limit: the backend around the harness does (deadline,
memory, pids, network, filesystem). The harness turns what it can observe into
precise reasons: a ``PolicyFault`` from the simulator, a ``MemoryError``,
tampering with ``time`` or with the simulator's modules, non-finite metrics.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from sandbox.integrity import snapshot, summary_problem, tampered
from sandbox.objectives import run_objective
from sandbox.protocol import (
    MAX_REQUEST_BYTES,
    EvalRequest,
    EvalResponse,
    ProtocolError,
    ScenarioResult,
    sha256_text,
)
from sandbox.slo_capacity import CapacitySearch, scenario_capacity

_clock = time.perf_counter  # bound before any candidate code can rebind time.perf_counter
_REASON_MAX = 400
_DETAIL_MAX = 4000

# Local scenarios for self-tests and smoke checks: tiny, quick, independent of the
# scenario catalogue (which lives in ``sandbox.scenarios``).
LOCAL_SCENARIOS: dict[str, Callable[[int], Any]] = {}


def _tiny_scenario(seed: int, n: int = 300, rate: float = 20.0, name: str = "sandbox-tiny"):
    import numpy as np

    from sandbox.scenario_spec import ClusterSpec, Scenario
    from sandbox.trace_formats.checks import client_cap
    from sandbox.workload import Workload
    from serving.contract import Plan, ReplicaSpec

    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n))
    prompt = rng.integers(64, 1024, n).astype(np.int64)
    output = rng.integers(16, 256, n).astype(np.int64)
    workload = Workload(
        arrival_s=arrivals - arrivals[0],
        prompt_tokens=prompt,
        output_tokens=output,
        max_tokens=np.full(n, client_cap(output)),  # one cap for all, as a trace's
        name=name,
    )
    cluster = ClusterSpec(
        model="llama-3-8b",
        gpus={"H100": 2},
        plan=Plan((ReplicaSpec("H100"), ReplicaSpec("H100"))),
    )
    return Scenario(
        name=name,
        description=f"{n} requests at {rate}/s on 2 x H100",
        workload=workload,
        cluster=cluster,
    )


LOCAL_SCENARIOS["sandbox-tiny"] = _tiny_scenario
LOCAL_SCENARIOS["sandbox-micro"] = lambda seed: _tiny_scenario(seed, n=60, name="sandbox-micro")


def build(
    name: str,
    seed: int,
    scale: float = 1.0,
    windows_dir: str | None = None,
    split: str = "train",
):
    """A scenario by name: a ``window:`` one, the catalogue's, then the local ones."""
    if name.startswith("window:"):
        from sandbox.window_scenarios import build_window_scenario

        return build_window_scenario(name, seed, scale=scale, directory=windows_dir)
    try:
        from sandbox import scenarios as catalogue  # type: ignore[attr-defined]
    except ImportError:
        catalogue = None
    if catalogue is not None and name in getattr(catalogue, "SCENARIO_NAMES", ()):
        return catalogue.build_scenario(name, seed=seed, scale=scale, split=split)
    if name in LOCAL_SCENARIOS:
        return LOCAL_SCENARIOS[name](seed)
    known = sorted(set(getattr(catalogue, "SCENARIO_NAMES", ())) | set(LOCAL_SCENARIOS))
    raise KeyError(f"unknown scenario '{name}' (known: {', '.join(known)})")


# --- evaluation -------------------------------------------------------------------


def _one_line(text: str, limit: int = _REASON_MAX) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _tb(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))[-_DETAIL_MAX:]


def _classify(exc: BaseException, what: str, req: EvalRequest) -> tuple[str, str]:
    """(stage, reason) for an exception that escaped the policy or the simulator."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, MemoryError) or "MemoryError" in text:
        return "limit", f"memory limit of {req.limits.memory_mb} MB exceeded ({what}: MemoryError)"
    if isinstance(exc, SystemExit):
        return "runtime", f"policy tried to exit the process ({what}: SystemExit {exc.code!r})"
    if isinstance(exc, KeyboardInterrupt | GeneratorExit):
        return "runtime", f"{what}: {type(exc).__name__}"
    return "runtime", f"{what}: {_one_line(text)}"


class _Rejected(Exception):
    """A run ended in a rejection (carried out of a capacity search's probes)."""

    def __init__(self, response: EvalResponse) -> None:
        super().__init__(str(response.rejection))
        self.response = response


def evaluate(req: EvalRequest) -> EvalResponse:
    """Evaluate ``req`` in this process; every failure becomes a rejection."""

    def reject(stage: str, reason: str, **kw: Any) -> EvalResponse:
        return EvalResponse.reject(req, stage, _one_line(reason), **kw)

    if sha256_text(req.source) != req.source_sha256:
        return reject("integrity", "source does not match its sha256 (corrupted in transit?)")
    if req.static_checks:
        from sandbox.static_checks import first_violation

        bad = first_violation(req.source)
        if bad:
            return reject("static", bad)

    import sandbox.simulator  # noqa: F401 -- trusted code, imported before the snapshot
    import serving.kit  # noqa: F401 -- the policy kit is trusted code: watched from the snapshot

    try:
        scenarios = _build_scenarios(req)
    except _Rejected as r:
        return r.response
    before = snapshot()
    results: list[ScenarioResult] = []
    for (name, seed), scenario in scenarios.items():
        t0 = _clock()
        try:
            summary, stats = _run(req, scenario, name, seed, before)
            if req.objective.name == "capacity":
                summary |= _capacity(req, scenario, name, seed, before)
        except _Rejected as r:
            return r.response
        wall = _clock() - t0
        summary["objective"] = run_objective(summary, req.objective)
        results.append(
            ScenarioResult(
                scenario=name,
                seed=seed,
                summary={k: float(v) for k, v in summary.items()},
                decision_stats={k: float(v) for k, v in stats.items()},
                wall_s=wall,
            )
        )
    return EvalResponse(key=req.key, results=tuple(results), nonce=req.nonce)


def _build_scenarios(req: EvalRequest) -> dict[tuple[str, int], Any]:
    """Every (scenario, seed) of ``req``, built before any candidate code runs: a bad
    name is the caller's error (or the catalogue's), never the policy's; _Rejected."""
    from sandbox.window_scenarios import WINDOWS_ENV, WindowIntegrityError

    def reject(stage: str, reason: str, **kw: Any) -> _Rejected:
        return _Rejected(EvalResponse.reject(req, stage, _one_line(reason), **kw))

    # Inside a sandbox the backend mounted the windows folder and names it in the
    # environment; run in-process (trusted), the request's host folder is used.
    windows_dir = os.environ.get(WINDOWS_ENV) or req.windows_dir
    scenarios = {}
    for name in dict.fromkeys(req.scenarios):
        for seed in req.seeds:
            try:
                scenarios[(name, seed)] = build(name, seed, req.scale, windows_dir, req.split)
            except WindowIntegrityError as e:
                raise reject("integrity", str(e), scenario=name, seed=seed) from None
            except Exception as e:  # the catalogue's fault or the caller's, never the policy's
                raise reject(
                    "internal",
                    f"cannot build scenario: {_one_line(str(e))}",
                    scenario=name,
                    seed=seed,
                    detail=_tb(e),
                ) from None
    return scenarios


def _capacity(req: EvalRequest, scenario: Any, name: str, seed: int, before) -> dict[str, float]:
    """The policy's SLO capacity on ``scenario``: each probe a fresh run (``_run``)."""

    def attainment(probe: Any) -> float:
        return _run(req, probe, name, seed, before)[0]["slo_attainment"]

    hint = (req.capacity_hints or {}).get(name, 1.0)
    found = scenario_capacity(scenario, attainment, CapacitySearch(req.objective.target), hint)
    return found.summary_fields()


def _run(
    req: EvalRequest, scenario: Any, name: str, seed: int, before: dict[tuple[str, str], int]
) -> tuple[dict[str, float], dict[str, float]]:
    """One simulation of a freshly loaded policy: (summary, decision stats), or _Rejected."""
    from sandbox.simulator import PolicyFault, simulate
    from serving.policy_loader import PolicyError, load_policy

    where = {"scenario": name, "seed": seed}

    def reject(stage: str, reason: str, **kw: Any) -> _Rejected:
        return _Rejected(EvalResponse.reject(req, stage, _one_line(reason), **where, **kw))

    random.seed(seed)
    # A fresh load for every run: module globals are policy state, and a
    # run must not depend on which runs came before it.
    try:
        policy = load_policy(req.source, name=req.name, params=req.params)
    except PolicyError as e:
        msg = str(e)
        if "MemoryError" in msg:
            raise reject(
                "limit", f"memory limit of {req.limits.memory_mb} MB exceeded at import ({msg})"
            ) from None
        raise reject("load", msg) from None
    except BaseException as e:  # SystemExit/KeyboardInterrupt raised at import
        stage, reason = _classify(e, "at import", req)
        raise reject(stage, reason, detail=_tb(e)) from None
    bad = tampered(before)
    if bad:
        raise reject("integrity", bad)

    try:
        sim = simulate(scenario, policy, seed=seed, mode=req.mode)
        summary = dict(sim.summary())
        stats = dict(sim.decision_stats())
    except PolicyFault as e:
        reason = getattr(e, "reason", None) or str(e)
        if "MemoryError" in reason:
            raise reject(
                "limit",
                f"memory limit of {req.limits.memory_mb} MB exceeded ({reason})",
                detail=_tb(e),
            ) from None
        raise reject("runtime", reason, detail=_tb(e)) from None
    except RecursionError as e:
        raise reject("runtime", f"RecursionError: {_one_line(str(e))}", detail=_tb(e)) from None
    except BaseException as e:
        stage, reason = _classify(e, "during simulation", req)
        raise reject(stage, reason, detail=_tb(e)) from None

    bad = tampered(before)
    if bad:
        raise reject("integrity", bad)
    stats = {k: v for k, v in stats.items() if isinstance(v, int | float)}
    bad = summary_problem(summary, stats)
    if bad:
        raise reject("integrity", bad)
    return summary, stats


# --- process entry point ----------------------------------------------------------


def _protect_stdout() -> int:
    """Move the protocol channel off fd 1; everything printed afterwards goes to /dev/null."""
    sys.stdout.flush()
    out_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - lives as long as the process
    return out_fd


def _self_limit(req: EvalRequest) -> None:
    """Lower this process's own rlimits to the request's before any candidate code runs.

    The backend's limits (cgroup, container) are the boundary; these make the common
    case fail early and precisely (a MemoryError instead of an OOM kill), and they
    cannot be raised again by the candidate (soft = hard).
    """
    import resource

    wanted = (
        (resource.RLIMIT_AS, req.limits.memory_mb * 1024 * 1024),
        (resource.RLIMIT_CPU, int(req.limits.wall_s * max(req.limits.cpus, 1.0)) + 5),
        (resource.RLIMIT_FSIZE, req.limits.file_bytes),
        (resource.RLIMIT_CORE, 0),
    )
    for res, value in wanted:
        try:
            _soft, hard = resource.getrlimit(res)
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            resource.setrlimit(res, (value, value))
        except (ValueError, OSError):
            pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _preload() -> None:
    """Import the trusted code before the request: a warm sandbox has already paid for it."""
    import sandbox.simulator
    import sandbox.static_checks
    import serving.kit
    import serving.policy_loader  # noqa: F401

    with contextlib.suppress(ImportError):
        import sandbox.scenarios
        import sandbox.window_scenarios  # noqa: F401


def main() -> None:
    out_fd = _protect_stdout()
    exit_ = os._exit  # bound before the candidate can rebind os._exit
    dumps = json.dumps
    try:
        _preload()
        # Signal readiness (stderr, not the protocol channel): a warm pool can wait for it.
        sys.stderr.write("autopoiesis-harness: ready\n")
        sys.stderr.flush()
        line = sys.stdin.buffer.readline(MAX_REQUEST_BYTES + 1)
        if not line.strip():
            exit_(3)  # nothing to do (a warm sandbox discarded unused)
        try:
            req = EvalRequest.from_json(line)
        except ProtocolError as e:
            from sandbox.protocol import PROTOCOL_VERSION

            resp = {
                "version": PROTOCOL_VERSION,
                "key": "",
                "ok": False,
                "results": [],
                "nonce": "",
                "rejection": {"stage": "internal", "reason": str(e)},
            }
            _write_all(out_fd, (dumps(resp) + "\n").encode())
            exit_(2)
        _self_limit(req)
        try:
            resp = evaluate(req)
        except BaseException as e:  # the harness must answer whatever happened
            stage, reason = _classify(e, "harness", req)
            resp = EvalResponse.reject(req, stage, reason, detail=_tb(e))
        try:
            data = resp.to_json()
        except ValueError as e:  # NaN slipped through: never let it out as a number
            data = EvalResponse.reject(req, "integrity", f"unserialisable result: {e}").to_json()
        _write_all(out_fd, (data + "\n").encode())
    except BaseException:
        try:
            sys.stderr.write(traceback.format_exc()[-_DETAIL_MAX:])
            sys.stderr.flush()
        finally:
            exit_(1)
    exit_(0)


def run_in_process(req: EvalRequest) -> EvalResponse:
    """Evaluate without any isolation (trusted policies, and the overhead baseline)."""
    return evaluate(req)


if __name__ == "__main__":
    main()
