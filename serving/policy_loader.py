"""Load a policy module from its source text and check it against the contract.

One loader for every place a policy is used (router, simulator, sandbox,
evolution), so "is this a valid policy?" has a single answer. Each call builds a
fresh, independent module object: module globals are the policy's state (a
round-robin counter, an autoscaler's streaks), so two loads never share it.

This is validation, not isolation: loading executes the module's top level in
this process. Untrusted candidates are loaded inside the sandbox, never here in
the control plane.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import linecache
import math
import sys
import traceback
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from serving.contract import CONTRACT_VERSION, ClusterView, Param, Plan, ReplicaView, Request

__all__ = [
    "BUILTIN_POLICIES",
    "LoadedPolicy",
    "PolicyError",
    "builtin_policy",
    "builtin_source",
    "load_policy",
    "load_policy_file",
]

RouteFn = Callable[[Request, tuple[ReplicaView, ...], float], "int | None"]
RescheduleFn = Callable[[ClusterView, float], "Plan | None"]

BUILTIN_POLICIES: tuple[str, ...] = (
    "round_robin",
    "random_choice",
    "least_outstanding",
    "shortest_queue",
    "least_kv",
    "power_of_two",
    "llmd_weighted",
    "prefix_affinity",
    "static_plan",
    "threshold_autoscaler",
    "reconfigure_if_pays",
)
"""Short names of the baseline policies in ``serving/policies/``."""

# Gives each load's module a distinct __name__ (they are never put in sys.modules).
_load_counter = itertools.count()


class PolicyError(ValueError):
    """A policy that cannot be used; the message is one line naming the problem."""


@dataclass(frozen=True, eq=False)
class LoadedPolicy:
    """A validated policy module, ready to call.

    ``params`` are the current values of the ``PARAMS`` globals after overrides;
    ``param_space`` is the module's ``PARAMS`` (name -> ``Param``). Both are
    read-only views; to try other values, load again (``with_params``), which
    also gives fresh module state.
    """

    name: str
    source: str
    sha256: str
    route: RouteFn
    reschedule: RescheduleFn | None
    params: Mapping[str, float]
    param_space: Mapping[str, Param]
    module: types.ModuleType = field(repr=False)

    def with_params(self, params: Mapping[str, float]) -> LoadedPolicy:
        """A fresh load of the same source with ``params`` layered over the current values."""
        return load_policy(self.source, name=self.name, params={**self.params, **params})


def load_policy(
    source: str, *, name: str = "policy", params: Mapping[str, float] | None = None
) -> LoadedPolicy:
    """Compile ``source`` as a new module, validate it and apply ``params`` overrides.

    Raises ``PolicyError`` (one-line message) when the source does not parse,
    fails at import, or does not meet the contract.
    """
    if not isinstance(source, str):
        raise PolicyError(f"policy '{name}': source must be text, not {type(source).__name__}")
    if not source.strip():
        raise PolicyError(f"policy '{name}' is empty")

    sha = hashlib.sha256(source.encode("utf-8")).hexdigest()
    serial = next(_load_counter)
    # A pseudo-filename keyed by the source hash lets tracebacks show the policy's
    # lines; repeated loads of one source (tuning) share one linecache entry.
    filename = f"<policy {name} {sha[:12]}>"
    try:
        code = compile(source, filename, "exec", dont_inherit=True)
    except SyntaxError as e:  # includes IndentationError / TabError
        raise PolicyError(
            f"policy '{name}' line {e.lineno}: {type(e).__name__}: {e.msg}"
        ) from None
    except ValueError as e:  # e.g. NUL bytes in the source
        raise PolicyError(f"policy '{name}': cannot compile: {e}") from None

    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType(f"autopoiesis_policy_{serial}")
    module.__file__ = filename
    # Registered only while the top level runs: @dataclass (and typing) look a
    # class's module up in sys.modules. Left there, every load would leak.
    sys.modules[module.__name__] = module
    try:
        exec(code, module.__dict__)
    except (Exception, SystemExit) as e:
        line = _error_line(e, filename)
        where = f" line {line}" if line else ""
        raise PolicyError(
            f"policy '{name}'{where}: {type(e).__name__} at import: {_one_line(e)}"
        ) from None
    finally:
        sys.modules.pop(module.__name__, None)

    route = _check_callable(module, name, "route", 3, "(request, replicas, now)", required=True)
    reschedule = _check_callable(module, name, "reschedule", 2, "(cluster, now)", required=False)
    _check_contract_version(module, name)
    space = _check_params(module, name)
    _apply_overrides(module, name, space, params or {})

    return LoadedPolicy(
        name=name,
        source=source,
        sha256=sha,
        route=route,
        reschedule=reschedule,
        params=MappingProxyType({k: getattr(module, k) for k in space}),
        param_space=MappingProxyType(dict(space)),
        module=module,
    )


def load_policy_file(
    path: str | Path, params: Mapping[str, float] | None = None
) -> LoadedPolicy:
    """Load a policy from a ``.py`` file; its name is the file name."""
    p = Path(path)
    try:
        source = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"policy file '{p}' not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(f"policy file '{p}': cannot read: {_one_line(e)}") from None
    return load_policy(source, name=p.name, params=params)


def builtin_source(name: str) -> str:
    """The source text of a baseline policy (e.g. as a seed for evolution)."""
    if name not in BUILTIN_POLICIES:
        raise PolicyError(
            f"no builtin policy '{name}' (known: {', '.join(BUILTIN_POLICIES)})"
        )
    return resources.files("serving.policies").joinpath(f"{name}.py").read_text("utf-8")


def builtin_policy(name: str, params: Mapping[str, float] | None = None) -> LoadedPolicy:
    """Load a baseline policy by short name, through the same path as any other policy."""
    return load_policy(builtin_source(name), name=name, params=params)


# --- validation helpers -------------------------------------------------------------


def _check_callable(
    module: types.ModuleType,
    name: str,
    attr: str,
    nargs: int,
    shape: str,
    *,
    required: bool,
) -> Any:
    fn = getattr(module, attr, None)
    if fn is None:
        if required:
            raise PolicyError(f"policy '{name}' does not define {attr}()")
        return None
    if not callable(fn):
        raise PolicyError(f"policy '{name}': {attr} is not callable")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return fn  # builtins and odd callables carry no signature; nothing to check
    # The router calls it positionally with exactly nargs arguments: any
    # signature that binds them (extra defaulted params, *args) is accepted.
    try:
        sig.bind(*([None] * nargs))
    except TypeError:
        raise PolicyError(
            f"policy '{name}': {attr} must take {shape}, not {attr}{sig}"
        ) from None
    return fn


def _check_contract_version(module: types.ModuleType, name: str) -> None:
    if not hasattr(module, "CONTRACT_VERSION"):
        return
    v = module.CONTRACT_VERSION
    if isinstance(v, bool) or v != CONTRACT_VERSION:
        raise PolicyError(
            f"policy '{name}': CONTRACT_VERSION {v!r} does not match the router's "
            f"{CONTRACT_VERSION}"
        )


def _check_params(module: types.ModuleType, name: str) -> dict[str, Param]:
    if not hasattr(module, "PARAMS"):
        return {}
    space = module.PARAMS
    if not isinstance(space, dict):
        raise PolicyError(
            f"policy '{name}': PARAMS must be a dict of name -> Param, "
            f"not {type(space).__name__}"
        )
    for key, spec in space.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise PolicyError(f"policy '{name}': PARAMS key {key!r} is not a global name")
        if not isinstance(spec, Param):
            raise PolicyError(
                f"policy '{name}': PARAMS[{key!r}] must be a Param, not {type(spec).__name__}"
            )
        if not hasattr(module, key):
            raise PolicyError(f"policy '{name}': PARAMS[{key!r}]: no module global {key}")
        _check_value(name, f"PARAMS[{key!r}]", getattr(module, key), spec)
    return dict(space)


def _apply_overrides(
    module: types.ModuleType,
    name: str,
    space: Mapping[str, Param],
    overrides: Mapping[str, float],
) -> None:
    # Validate every override before rebinding any, so a rejected set leaves no trace.
    coerced: dict[str, float] = {}
    for key, value in overrides.items():
        if key not in space:
            raise PolicyError(f"policy '{name}': params[{key!r}]: not in PARAMS")
        coerced[key] = _check_value(name, f"params[{key!r}]", value, space[key])
    for key, value in coerced.items():
        setattr(module, key, value)


def _check_value(name: str, label: str, value: object, spec: Param) -> float:
    """Check one value against its Param; return it as int (integer Param) or float."""
    # bool is an int subclass; True as a "weight" is a bug, not a number.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(f"policy '{name}': {label} = {value!r} is not a number")
    if not math.isfinite(value):
        raise PolicyError(f"policy '{name}': {label} = {value!r} is not a finite number")
    if not spec.low <= value <= spec.high:
        raise PolicyError(
            f"policy '{name}': {label} = {value!r} is outside [{_number_text(spec.low)}, "
            f"{_number_text(spec.high)}]"
        )
    if spec.integer:
        if value != int(value):
            raise PolicyError(f"policy '{name}': {label} = {value!r} is not an integer")
        return int(value)
    return float(value)


def _number_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _error_line(exc: BaseException, filename: str) -> int | None:
    """The deepest line of the policy's own source in the traceback, if any."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == filename:
            line = frame.lineno
    return line


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] if text else type(exc).__name__
