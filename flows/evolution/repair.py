"""Before any sandbox: repair what is mechanical in a candidate, then check the contract.

Measured with Qwen2.5-Coder-0.5B, most rejected proposals failed on something a
program can fix or name without running the code: a ``PARAMS`` entry without its
module global, an empty (reversed) ``Param`` range, a value outside its range, a
contract name (``Param``, ``HOLD``) or ``math`` used but not imported. ``repair``
fixes those and says what it did; ``contract_error`` names the first thing that
would still fail (the sandbox's own static checks, then an undefined name, then a
``PARAMS`` entry the loader would refuse), in one line, for the repair round.

Everything here reads the source with ``ast`` and ``symtable``: nothing is executed.
"""

from __future__ import annotations

import ast
import builtins
import math
import symtable

from flows.evolution.responses import assignment, is_docstring
from sandbox.static_checks import first_violation

CONTRACT_NAMES = (
    "HOLD",
    "Param",
    "Plan",
    "ReplicaSpec",
    "ReplicaView",
    "Request",
    "ClusterView",
    "WorkloadWindow",
)
STDLIB_MODULES = (
    "math",
    "random",
    "statistics",
    "itertools",
    "functools",
    "collections",
    "heapq",
    "bisect",
)
_BUILTINS = frozenset(dir(builtins))


def repair(source: str) -> tuple[str, list[str]]:
    """``(repaired source, what was repaired)``; a module that does not parse is returned as is."""
    done: list[str] = []
    for fix in (_fix_params, _fix_imports):
        try:
            source, notes = fix(source)
        except (SyntaxError, ValueError, RecursionError):
            return source, done
        done += notes
    return source, done


# ---------------------------------------------------------------- PARAMS and globals
def _fix_params(source: str) -> tuple[str, list[str]]:
    tree = ast.parse(source)
    params = _params_node(tree)
    if params is None:
        return source, []
    lines = source.split("\n")
    notes: list[str] = []
    values = _literal_globals(tree)
    edits: list[tuple[int, int, int, int, str]] = []  # (line, col, end line, end col, text)
    missing: list[str] = []
    for key, call in zip(params.keys, params.values, strict=False):
        if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
            continue
        spec = _param_args(call)
        if spec is None:
            continue
        low, high, integer, log = spec
        if low > high:
            low, high = high, low
            a, b = call.args[0], call.args[1]  # type: ignore[attr-defined]
            edits.append((b.lineno, b.col_offset, b.end_lineno, b.end_col_offset, _num(high)))
            edits.append((a.lineno, a.col_offset, a.end_lineno, a.end_col_offset, _num(low)))
            notes.append(f"PARAMS[{key.value!r}]: reversed range swapped")
        name = key.value
        if name not in values:
            missing.append(f"{name} = {_num(_default(low, high, integer, log), integer)}")
            notes.append(f"PARAMS[{name!r}]: module global added at the range's default")
            continue
        value, node = values[name]
        if value is None or node is None:
            continue  # not a literal: the loader judges it
        fixed = min(max(value, low), high)
        if integer:
            fixed = round(fixed)
        if fixed != value:
            edits.append(
                (
                    node.lineno,
                    node.col_offset,
                    node.end_lineno,
                    node.end_col_offset,
                    _num(fixed, integer),
                )
            )
            notes.append(f"{name} = {_num(value)} moved into its range: {_num(fixed, integer)}")
    for line, col, end_line, end_col, text in sorted(edits, reverse=True):
        if line != end_line:
            continue
        row = lines[line - 1]
        lines[line - 1] = row[:col] + text + row[end_col:]
    if missing:
        at = _statement_of(tree, params).end_lineno or 0
        lines[at:at] = missing
    return "\n".join(lines), notes


def _params_node(tree: ast.Module) -> ast.Dict | None:
    for node in tree.body:
        target, value = assignment(node)
        if target == "PARAMS" and isinstance(value, ast.Dict):
            return value
    return None


def _statement_of(tree: ast.Module, value: ast.expr) -> ast.stmt:
    return next(n for n in tree.body if getattr(n, "value", None) is value)


def _literal_globals(tree: ast.Module) -> dict[str, tuple[float | None, ast.expr | None]]:
    """Top-level bindings: ``{name: (number, its node)}`` for number literals, ``(None,
    None)`` for anything else (a def, an expression the loader will evaluate)."""
    out: dict[str, tuple[float | None, ast.expr | None]] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            out[node.name] = (None, None)
            continue
        target, value = assignment(node)
        if target is None or value is None:
            continue
        try:
            lit = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError, RecursionError):
            lit = None
        number = isinstance(lit, int | float) and not isinstance(lit, bool)
        out[target] = (float(lit), value) if number else (None, None)  # type: ignore[arg-type]
    return out


def _param_args(node: ast.expr) -> tuple[float, float, bool, bool] | None:
    if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Param"):
        return None
    try:
        args = [ast.literal_eval(a) for a in node.args]
        kw = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return None
    if len(args) < 2 or not all(isinstance(a, int | float) for a in args[:2]):
        return None
    integer = bool(kw.get("integer", args[2] if len(args) > 2 else False))
    log = bool(kw.get("log", args[3] if len(args) > 3 else False))
    return float(args[0]), float(args[1]), integer, log


def _default(low: float, high: float, integer: bool, log: bool) -> float:
    mid = math.sqrt(low * high) if log and low > 0 else (low + high) / 2
    return round(mid) if integer else mid


def _num(x: float, integer: bool = False) -> str:
    if integer or float(x).is_integer():
        return str(int(x)) if integer else repr(float(x))
    return repr(float(x))


# ---------------------------------------------------------------- imports
def _fix_imports(source: str) -> tuple[str, list[str]]:
    undefined = undefined_names(source)
    contract = [n for n in CONTRACT_NAMES if n in undefined]
    modules = [m for m in STDLIB_MODULES if m in undefined]
    if not contract and not modules:
        return source, []
    added = [f"import {m}" for m in modules]
    if contract:
        added.append(f"from serving.contract import {', '.join(contract)}")
    tree = ast.parse(source)
    at = 0  # after the module docstring and any __future__ import
    for node in tree.body:
        if is_docstring(node) or (isinstance(node, ast.ImportFrom) and node.module == "__future__"):
            at = node.end_lineno or at
        else:
            break
    lines = source.split("\n")
    lines[at:at] = added
    return "\n".join(lines), [f"missing import added: {a}" for a in added]


def undefined_names(source: str) -> list[str]:
    """Names read somewhere in the module that nothing binds (a NameError waiting to happen)."""
    top = symtable.symtable(source, "policy", "exec")
    bound = {
        s.get_name()
        for s in top.get_symbols()
        if s.is_assigned() or s.is_imported() or s.is_namespace()
    }
    bound |= _assigned_through_global(top)
    missing: list[str] = []

    def visit(table: symtable.SymbolTable) -> None:
        for s in table.get_symbols():
            name = s.get_name()
            if not s.is_referenced() or name in bound or name in _BUILTINS:
                continue
            global_read = table is top or s.is_global()
            if global_read and not (table is not top and s.is_local()) and name not in missing:
                missing.append(name)
        for child in table.get_children():
            visit(child)

    visit(top)
    return missing


def _assigned_through_global(table: symtable.SymbolTable) -> set[str]:
    out = {s.get_name() for s in table.get_symbols() if s.is_declared_global() and s.is_assigned()}
    for child in table.get_children():
        out |= _assigned_through_global(child)
    return out


def contract_error(source: str) -> str | None:
    """The first reason the sandbox would reject ``source`` before running it, or None."""
    violation = first_violation(source)
    if violation:
        return violation
    try:
        undefined = undefined_names(source)
    except (SyntaxError, ValueError, RecursionError) as e:
        return f"cannot analyse: {type(e).__name__}"
    if undefined:
        return (
            f"line {_first_use(source, undefined[0])}: NameError: name "
            f"{undefined[0]!r} is not defined"
        )
    return _params_error(source)


def _first_use(source: str, name: str) -> int:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and node.id == name:
            return node.lineno
    return 0


def _params_error(source: str) -> str | None:
    tree = ast.parse(source)
    params = _params_node(tree)
    if params is None:
        return None
    values = _literal_globals(tree)
    for key, call in zip(params.keys, params.values, strict=False):
        name = key.value if isinstance(key, ast.Constant) else None
        if not isinstance(name, str):
            return "PARAMS keys must be string names of module globals"
        spec = _param_args(call)
        if spec is None:
            return f"PARAMS[{name!r}] must be Param(low, high) with number literals"
        low, high, _integer, log = spec
        if low > high:
            return f"PARAMS[{name!r}]: Param range is empty: low={low} > high={high}"
        if log and low <= 0:
            return f"PARAMS[{name!r}]: a log-scaled Param needs low > 0"
        if name not in values:
            return f"PARAMS[{name!r}]: no module global {name}"
    return None
