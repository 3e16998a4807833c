"""The sandbox self-test: the hostile suite against a real backend, and ``evaluate``.

``run_selftest("process" | "docker")`` evaluates every candidate in
``sandbox/hostile/`` (package data; the same files and expectations
``tests/test_hostile.py`` uses) and, for the cases that matter for containment,
again with the static checks switched off, so the isolation boundary is shown to
hold on its own.
Each case passes ("contained") when:

- it ends as a rejection with the expected stage and a reason containing the
  expected text (never as a score);
- it leaves nothing behind: no process carrying its sandbox marker, no
  container, no file at the host paths it tried to write, no connection to the
  loopback listener it tried to reach, no secret from the host environment in
  the response;
- a well-behaved candidate evaluated right after it still succeeds.

``mean_overhead_s`` is what the sandbox adds to one evaluation over running
the same request in this process (warm pool, steady state);
``cold_overhead_s`` the same without a pre-started sandbox.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sandbox.backends import (
    Backend,
    DockerBackend,
    choose_backend,
    leftover_processes,
)
from sandbox.objectives import Objective
from sandbox.protocol import EvalRequest, EvalResponse, Limits
from sandbox.static_checks import MAX_SOURCE_BYTES

HOSTILE_DIR = Path(__file__).resolve().parent / "hostile"
"""The cases, as package data: Python sources stored as ``<name>.py.txt``."""
GOOD_CASE = HOSTILE_DIR / "good.py.txt"
SCENARIO = "sandbox-tiny"
SECRET_NAME = "AUTOPOIESIS_FAKE_SECRET_TOKEN"
HOSTILE_LIMITS = Limits(wall_s=5.0, memory_mb=768, cpus=1.0, pids=32, output_bytes=1 << 20)
DEADLINE = "wall-clock deadline"


@dataclass(frozen=True)
class Case:
    """One hostile candidate and how it must end.

    ``static``: (stage, reason substring) with the static checks on.
    ``boundary``: the same with the static checks off (None: not run that way,
    because the case is a static-check matter only or behaves identically).
    """

    name: str
    static: tuple[str, str]
    boundary: tuple[str, str] | None = None
    note: str = ""

    @property
    def file(self) -> Path:
        return HOSTILE_DIR / f"{self.name}.py.txt"


CASES: tuple[Case, ...] = (
    Case("infinite_loop", ("limit", DEADLINE)),
    Case("deep_recursion", ("runtime", "RecursionError")),
    Case("memory_bomb", ("limit", "memory limit"), ("limit", "memory limit")),
    Case("fork_bomb", ("static", "import of 'os' is not allowed"), ("limit", DEADLINE)),
    Case("network_connect", ("static", "import of 'socket' is not allowed"), ("load", "Error")),
    Case("write_outside_tmp", ("static", "use of 'open' is not allowed"), ("load", "wrote: []")),
    Case("read_env_secret", ("static", "import of 'os' is not allowed"), ("load", "found: []")),
    Case("import_dunder", ("static", "use of '__import__' is not allowed")),
    Case("import_importlib", ("static", "import of 'importlib' is not allowed")),
    Case("builtins_lookup", ("static", "'__builtins__' is not allowed")),
    Case("subclasses_escape", ("static", "dunder attribute")),
    Case("getattr_trick", ("static", "computed attribute name")),
    Case("module_reexport", ("static", "'typing.sys' is a module")),
    Case("sys_exit", ("static", "import of 'sys' is not allowed"), ("runtime", "exit")),
    Case("raise_systemexit", ("runtime", "tried to exit the process")),
    Case("os_exit", ("static", "import of 'os' is not allowed"), ("runtime", "without answering")),
    Case("raises_in_route", ("runtime", "route raised ValueError: boom")),
    Case("wrong_return_type", ("runtime", "route returned str")),
    Case("unknown_replica", ("runtime", "route returned 999")),
    Case("returns_nan", ("runtime", "route returned float")),
    Case("nan_weights", ("runtime", "plan.weights must be finite")),
    Case("too_many_gpus", ("runtime", "plan needs 64 H100 GPUs but the pool has 2")),
    Case("stdout_flood", ("limit", DEADLINE)),
    Case(
        "forge_response",
        ("static", "import of 'os' is not allowed"),
        ("integrity", "does not answer this request"),
    ),
    Case("sleep_past_deadline", ("static", "import of 'time' is not allowed"), ("limit", DEADLINE)),
    Case(
        "patch_time",
        ("static", "import of 'time' is not allowed"),
        ("integrity", "tampered with trusted code: time."),
    ),
    Case(
        "tamper_simulator",
        ("static", "import of 'sandbox.simulator' is not allowed"),
        ("integrity", "tampered with trusted code: sandbox.simulator.Simulation._decide"),
    ),
    Case(
        "kit_globals_escape",
        ("static", "dunder attribute '__globals__'"),
        ("load", "found: []"),
    ),
    Case(
        "kit_tamper",
        ("static", "assigning to module attribute 'serving.kit.least_inflight'"),
        ("integrity", "tampered with trusted code: serving.kit.least_inflight"),
    ),
    Case("mutate_views", ("runtime", "route raised AttributeError")),
    Case("mutate_views_setattr", ("static", "dunder attribute '__setattr__'")),
    Case("syntax_error", ("static", "does not parse: SyntaxError"), ("load", "SyntaxError")),
    Case("empty", ("static", "source is empty"), ("load", "is empty")),
    Case(
        "huge_file",
        ("static", f"over the {MAX_SOURCE_BYTES // 1024} KB cap"),
        note="10 MB, generated at run time",
    ),
)

CASES_BY_NAME = {c.name: c for c in CASES}


def huge_source(size: int = 10 * 1024 * 1024) -> str:
    """A valid policy padded with comments to ``size`` bytes (never committed to the repo)."""
    head = GOOD_CASE.read_text()
    line = "# " + "x" * 97 + "\n"
    return head + line * ((size - len(head)) // len(line) + 1)


@dataclass
class Environment:
    """What a hostile case may try to reach on the host, made fresh for each case."""

    port: int
    target: Path
    secret: str

    def fill(self, text: str) -> str:
        return (
            text.replace("@@PORT@@", str(self.port))
            .replace("@@TARGET@@", str(self.target))
            .replace("@@SECRET_NAME@@", SECRET_NAME)
        )


@contextlib.contextmanager
def hostile_environment() -> Iterator[tuple[Environment, socket.socket]]:
    """A loopback listener, a host path to (not) write, a fake secret in our environment."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    tmp = Path(tempfile.mkdtemp(prefix="autopoiesis-hostile-"))
    secret = "s3cr3t-" + secrets.token_hex(8)
    old = os.environ.get(SECRET_NAME)
    os.environ[SECRET_NAME] = secret
    try:
        yield Environment(listener.getsockname()[1], tmp / "pwned.txt", secret), listener
    finally:
        listener.close()
        if old is None:
            os.environ.pop(SECRET_NAME, None)
        else:
            os.environ[SECRET_NAME] = old
        for p in sorted(tmp.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        tmp.rmdir()


def case_source(case: Case, env: Environment) -> str:
    if case.name == "huge_file":
        return huge_source()
    return env.fill(case.file.read_text())


def good_source() -> str:
    return GOOD_CASE.read_text()


@dataclass
class CaseOutcome:
    """How one hostile case ended, and what was wrong with that (nothing: contained)."""

    case: str
    static_checks: bool
    expected: tuple[str, str]
    response: EvalResponse
    problems: list[str]

    @property
    def contained(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {
            "case": self.case,
            "static_checks": self.static_checks,
            "expected": list(self.expected),
            "stage": self.response.stage,
            "reason": self.response.reason,
            "wall_s": round(self.response.wall_s, 3),
            "problems": self.problems,
            "contained": self.contained,
        }


def run_case(
    backend: Backend,
    case: Case,
    *,
    static_checks: bool = True,
    limits: Limits = HOSTILE_LIMITS,
    check_next: bool = True,
) -> CaseOutcome:
    """Evaluate one hostile case and check everything it must (not) have done."""
    expected = case.static if static_checks else case.boundary
    if expected is None:
        raise ValueError(f"case {case.name} has no boundary expectation")
    problems: list[str] = []
    with hostile_environment() as (env, listener):
        req = EvalRequest.build(
            case_source(case, env),
            [SCENARIO],
            limits=limits,
            name=case.name,
            static_checks=static_checks,
        )
        resp = backend.evaluate(req)
        stage, reason = expected
        if resp.ok:
            problems.append(f"was scored (objective {resp.objective()}) instead of rejected")
        elif resp.stage != stage or reason not in (resp.reason or ""):
            problems.append(
                f"ended as {resp.stage}: {resp.reason!r}; expected {stage}: ...{reason!r}"
            )
        # Nothing left behind.
        backend.flush()
        markers = backend.last_markers[-1:] if resp.stage != "static" else []
        for m in markers:
            left = leftover_processes(m)
            if left:
                problems.append(f"processes left behind: {left}")
        if isinstance(backend, DockerBackend):
            left = backend.leftover_containers()
            if left:
                problems.append(f"containers left behind: {[c[:12] for c in left]}")
        if env.target.exists():
            problems.append(f"wrote {env.target} on the host")
        try:
            conn, _ = listener.accept()
            conn.close()
            problems.append("a connection reached the host's loopback listener")
        except BlockingIOError:
            pass
        if env.secret in resp.to_json() or env.secret in (
            resp.rejection.detail if resp.rejection else ""
        ):
            problems.append("the host's secret leaked into the response")
    if check_next:
        nxt = backend.evaluate(EvalRequest.build(good_source(), [SCENARIO], limits=limits))
        if not nxt.ok:
            problems.append(f"the next evaluation failed: {nxt.rejection}")
    return CaseOutcome(case.name, static_checks, expected, resp, problems)


def all_runs() -> list[tuple[Case, bool]]:
    """Every (case, static_checks) pair the self-test runs."""
    runs = [(c, True) for c in CASES]
    runs += [(c, False) for c in CASES if c.boundary is not None]
    return runs


def measure_overhead(backend: Backend, reps: int = 5, *, warm: bool = True) -> float:
    """Mean seconds the sandbox adds to one evaluation over the same one in-process."""
    from sandbox.harness import evaluate as in_process

    limits = Limits(wall_s=60.0)
    deltas = []
    in_process(EvalRequest.build(good_source(), [SCENARIO], limits=limits))  # warm imports here
    for _ in range(reps):
        if warm:
            backend.warm_up(limits)
        req = EvalRequest.build(good_source(), [SCENARIO], limits=limits)
        t0 = time.perf_counter()
        local = in_process(req)
        t_local = time.perf_counter() - t0
        t0 = time.perf_counter()
        resp = backend.evaluate(req)
        t_sandbox = time.perf_counter() - t0
        if not (local.ok and resp.ok):
            raise RuntimeError(f"overhead measurement failed: {resp.rejection or local.rejection}")
        deltas.append(t_sandbox - t_local)
    return statistics.mean(deltas)


def run_selftest(backend: str = "auto", *, cases: list[str] | None = None) -> dict:
    """Run the hostile suite on ``backend``; the JSON the CLI prints."""
    t0 = time.perf_counter()
    b = choose_backend(backend, prewarm=1)
    try:
        b.warm_up(HOSTILE_LIMITS)
        outcomes = []
        for case, static in all_runs():
            if cases and case.name not in cases:
                continue
            outcomes.append(run_case(b, case, static_checks=static))
        overhead = measure_overhead(b, warm=True)
    finally:
        b.close()
    cold = choose_backend(backend, prewarm=0)
    try:
        cold_overhead = measure_overhead(cold, reps=3, warm=False)
    finally:
        cold.close()
    failures = [o.as_dict() for o in outcomes if not o.contained]
    return {
        "backend": b.name,
        "isolation": b.describe(HOSTILE_LIMITS),
        "cases": len(outcomes),
        "contained": sum(o.contained for o in outcomes),
        "failures": failures,
        "mean_overhead_s": round(overhead, 4),
        "cold_overhead_s": round(cold_overhead, 4),
        "wall_s": round(time.perf_counter() - t0, 1),
        "outcomes": [o.as_dict() for o in outcomes],
    }


def evaluate(
    policy_path: str | Path,
    scenarios: list[str] | tuple[str, ...],
    backend: str = "auto",
    *,
    seeds: tuple[int, ...] = (0,),
    scale: float = 1.0,
    limits: Limits | None = None,
    split: str = "train",
    objective: Objective | None = None,
) -> dict:
    """Evaluate one policy file in the sandbox; the JSON the CLI prints."""
    source = Path(policy_path).read_text(encoding="utf-8")
    b = choose_backend(backend, prewarm=0)
    try:
        req = EvalRequest.build(
            source,
            list(scenarios),
            seeds=seeds,
            limits=limits,
            name=Path(policy_path).name,
            scale=scale,
            split=split,
            objective=objective,
        )
        resp = b.evaluate(req)
    finally:
        b.close()
    out = resp.to_dict()
    out["objective"] = resp.objective()
    out["source_sha256"] = req.source_sha256
    return out
