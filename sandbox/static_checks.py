"""Cheap static checks on a candidate policy, run on the host before any sandbox starts.

Defence in depth, not the boundary: these checks reject the obvious (a syntax
error, a 10 MB file, ``import os``, ``__import__``, ``().__class__.__bases__``)
in a millisecond and with a precise reason, so the sandbox is spent on
candidates that have a chance. Anything they miss is still contained by the
isolation backend (``sandbox.backends``); the hostile test suite runs part of
its cases with these checks switched off to prove it.

The rules, each with its own reason:

- size: the source is at most ``MAX_SOURCE_BYTES`` bytes and not empty;
- syntax: it parses (``ast.parse``; nothing is compiled or executed here);
- contract: ``route`` is bound at module level (a ``def`` taking three
  positional arguments, or another binding the loader will check);
- imports: absolute imports of modules on ``ALLOWED_IMPORTS`` only; a name
  imported *from* an allowed module must not itself be a module
  (``from typing import sys``), unless that module is allowed itself
  (``from serving import kit`` imports the allowed ``serving.kit``);
- modules are used only through attribute access (``math.sqrt(x)``), never
  aliased or passed around, never assigned to (``random.random = f``, a kit
  function rebound for every policy in the process), and never for their
  private or module-valued attributes (``random._os``, ``typing.sys``);
- escape hatches: builtins that reach the interpreter (``__import__``, ``eval``,
  ``exec``, ``compile``, ``open``, ``globals``, ``vars``, ``breakpoint``…),
  dunder names and attributes (``__builtins__``, ``__class__``,
  ``__subclasses__``, ``__globals__``…), frame and code attributes
  (``gi_frame``, ``f_globals``…), string literals naming a dunder (for
  ``getattr`` or ``str.format`` tricks), and ``getattr``/``setattr``/
  ``delattr``/``hasattr`` except with a constant, non-dunder attribute name.
"""

from __future__ import annotations

import ast
import importlib
import re
import types
from dataclasses import dataclass

MAX_SOURCE_BYTES = 256 * 1024

ALLOWED_IMPORTS: frozenset[str] = frozenset(
    {
        "__future__",
        "random",
        "math",
        "statistics",
        "itertools",
        "functools",
        "collections",
        "collections.abc",
        "heapq",
        "bisect",
        "dataclasses",
        "typing",
        "serving.contract",
        "serving.kit",  # functions and frozen values only: see the hostile cases kit_*
    }
)

FORBIDDEN_BUILTINS: frozenset[str] = frozenset(
    {
        "__import__",
        "__build_class__",
        "__loader__",
        "__spec__",
        "__builtins__",
        "eval",
        "exec",
        "compile",
        "open",
        "input",
        "globals",
        "locals",
        "vars",
        "dir",
        "breakpoint",
        "help",
        "exit",
        "quit",
        "memoryview",
    }
)

ATTR_FUNCS: frozenset[str] = frozenset({"getattr", "setattr", "delattr", "hasattr"})

ALLOWED_DUNDER_NAMES: frozenset[str] = frozenset({"__name__", "__doc__", "__all__"})
ALLOWED_DUNDER_ATTRS: frozenset[str] = frozenset({"__init__", "__post_init__", "__name__"})

FORBIDDEN_ATTRS: frozenset[str] = frozenset(
    {
        # frames, code and generator internals: a path to any module's globals
        "gi_frame",
        "gi_code",
        "gi_yieldfrom",
        "cr_frame",
        "cr_code",
        "ag_frame",
        "ag_code",
        "f_globals",
        "f_locals",
        "f_builtins",
        "f_back",
        "f_code",
        "tb_frame",
        "tb_next",
        "co_code",
        "co_consts",
        "func_globals",
        "mro",
    }
)

_ALLOWED_DUNDER_STRINGS = ALLOWED_DUNDER_NAMES | ALLOWED_DUNDER_ATTRS | {"__main__"}
_DUNDER_RE = re.compile(r"__[A-Za-z0-9_]+__")


@dataclass(frozen=True)
class Violation:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}" if self.line else self.reason


class StaticCheckError(ValueError):
    """Raised by ``require_clean``; ``violations`` holds every finding."""

    def __init__(self, violations: list[Violation]) -> None:
        self.violations = violations
        super().__init__(summarize(violations))


def summarize(violations: list[Violation]) -> str:
    if not violations:
        return ""
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return f"{violations[0]}{more}"


def check_source(source: str, *, max_bytes: int = MAX_SOURCE_BYTES) -> list[Violation]:
    """All violations in ``source``, in line order; empty when it passes."""
    if not isinstance(source, str):
        return [Violation(0, f"source must be text, not {type(source).__name__}")]
    size = len(source.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        return [Violation(0, f"source is {_fmt_bytes(size)}, over the {_fmt_bytes(max_bytes)} cap")]
    if not source.strip():
        return [Violation(0, "source is empty")]
    try:
        tree = ast.parse(source, filename="<candidate>")
    except SyntaxError as e:
        return [Violation(e.lineno or 0, f"does not parse: {type(e).__name__}: {e.msg}")]
    except (ValueError, RecursionError, MemoryError) as e:
        return [Violation(0, f"does not parse: {type(e).__name__}: {e}")]

    checker = _Checker()
    try:
        checker.visit(tree)
    except RecursionError:
        return [Violation(0, "source nests too deeply to check")]
    found = checker.violations
    if not _binds_route(tree):
        found.append(Violation(0, "does not define route(request, replicas, now)"))
    return sorted(found, key=lambda v: v.line)


def first_violation(source: str, *, max_bytes: int = MAX_SOURCE_BYTES) -> str | None:
    """The rejection reason for ``source``, or None when it passes."""
    return summarize(check_source(source, max_bytes=max_bytes)) or None


def require_clean(source: str, *, max_bytes: int = MAX_SOURCE_BYTES) -> None:
    found = check_source(source, max_bytes=max_bytes)
    if found:
        raise StaticCheckError(found)


# --- implementation ---------------------------------------------------------------


def _fmt_bytes(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MB"
    if n >= 1024:
        return f"{n / 1024:.0f} KB"
    return f"{n} bytes"


def _binds_route(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "route":
            return True
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name) and t.id == "route":
                    return True
        if (
            isinstance(node, ast.AnnAssign | ast.AugAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == "route"
        ):
            return True
        if isinstance(node, ast.ImportFrom) and any(
            (a.asname or a.name) == "route" for a in node.names
        ):
            return True
    return False


_module_cache: dict[str, types.ModuleType | None] = {}


def _allowed_module(name: str) -> types.ModuleType | None:
    """The allowed module itself (imported on the host: they are stdlib or our contract)."""
    if name not in _module_cache:
        try:
            _module_cache[name] = importlib.import_module(name)
        except ImportError:
            _module_cache[name] = None
    return _module_cache[name]


class _Checker(ast.NodeVisitor):
    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self.module_aliases: dict[str, str] = {}  # local name -> module name
        self._attr_value_ids: set[int] = set()  # Name nodes used as ``<module>.attr``
        self._attr_call_ids: set[int] = set()  # Name nodes of allowed getattr-style calls

    def add(self, node: ast.AST, reason: str) -> None:
        self.violations.append(Violation(getattr(node, "lineno", 0), reason))

    # imports
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name not in ALLOWED_IMPORTS:
                self.add(node, f"import of '{alias.name}' is not allowed ({_allowed_text()})")
                continue
            if alias.asname:
                self.module_aliases[alias.asname] = alias.name
            else:
                # ``import collections.abc`` binds ``collections``
                top = alias.name.split(".")[0]
                self.module_aliases[top] = top

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = node.module or ""
        if node.level:
            self.add(node, f"relative import 'from {'.' * node.level}{mod}' is not allowed")
            return
        if mod not in ALLOWED_IMPORTS and all(
            f"{mod}.{a.name}" in ALLOWED_IMPORTS for a in node.names
        ):
            for alias in node.names:  # ``from serving import kit``: allowed modules only
                self.module_aliases[alias.asname or alias.name] = f"{mod}.{alias.name}"
            return
        if mod not in ALLOWED_IMPORTS:
            self.add(node, f"import from '{mod}' is not allowed ({_allowed_text()})")
            return
        if mod == "__future__":
            return
        module = _allowed_module(mod)
        for alias in node.names:
            if alias.name == "*":
                continue
            if alias.name.startswith("_"):
                self.add(node, f"'from {mod} import {alias.name}': private names are not allowed")
                continue
            value = getattr(module, alias.name, None) if module is not None else None
            if isinstance(value, types.ModuleType):
                full = f"{mod}.{alias.name}"
                if full in ALLOWED_IMPORTS:
                    self.module_aliases[alias.asname or alias.name] = full
                else:
                    self.add(
                        node,
                        f"'from {mod} import {alias.name}': '{full}' is a module "
                        f"that is not allowed",
                    )

    # names
    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if name in FORBIDDEN_BUILTINS:
            self.add(node, f"use of '{name}' is not allowed")
        elif _DUNDER_RE.fullmatch(name) and name not in ALLOWED_DUNDER_NAMES:
            self.add(node, f"use of dunder name '{name}' is not allowed")
        elif name in ATTR_FUNCS and id(node) not in self._attr_call_ids:
            self.add(node, f"'{name}' is only allowed as a call with a constant attribute name")
        elif (
            name in self.module_aliases
            and isinstance(node.ctx, ast.Load)
            and id(node) not in self._attr_value_ids
        ):
            self.add(
                node,
                f"module '{self.module_aliases[name]}' may only be used as "
                f"'{name}.<attribute>', not passed around or aliased",
            )

    # attributes
    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        if _DUNDER_RE.fullmatch(attr) and attr not in ALLOWED_DUNDER_ATTRS:
            self.add(node, f"access to dunder attribute '{attr}' is not allowed")
        elif attr in FORBIDDEN_ATTRS:
            self.add(node, f"access to attribute '{attr}' is not allowed")
        base = node.value
        modname = self._module_of(base)
        if modname is not None:
            if isinstance(base, ast.Name):
                self._attr_value_ids.add(id(base))
            if not isinstance(node.ctx, ast.Load):
                self.add(node, f"assigning to module attribute '{modname}.{attr}' is not allowed")
            elif attr.startswith("_"):
                self.add(node, f"private module attribute '{modname}.{attr}' is not allowed")
            else:
                module = _allowed_module(modname)
                value = getattr(module, attr, None) if module is not None else None
                if isinstance(value, types.ModuleType):
                    full = f"{modname}.{attr}"
                    if full not in ALLOWED_IMPORTS:
                        self.add(
                            node,
                            f"'{full}' is a module that is not allowed "
                            f"(reached through '{modname}')",
                        )
        self.generic_visit(node)

    def _module_of(self, node: ast.expr) -> str | None:
        """The allowed module ``node`` names (``kit``, ``serving.kit``), if it names one."""
        if isinstance(node, ast.Name):
            return self.module_aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            parent = self._module_of(node.value)
            if parent is not None and f"{parent}.{node.attr}" in ALLOWED_IMPORTS:
                return f"{parent}.{node.attr}"
        return None

    # calls to getattr & co.
    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in ATTR_FUNCS:
            arg = node.args[1] if len(node.args) >= 2 else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                if _DUNDER_RE.search(arg.value):
                    self.add(
                        node, f"{func.id}() with dunder attribute {arg.value!r} is not allowed"
                    )
                elif arg.value.startswith("_") or arg.value in FORBIDDEN_ATTRS:
                    self.add(node, f"{func.id}() with attribute {arg.value!r} is not allowed")
                else:
                    self._attr_call_ids.add(id(func))
            else:
                self.add(node, f"{func.id}() with a computed attribute name is not allowed")
                self._attr_call_ids.add(id(func))  # one finding is enough
        self.generic_visit(node)

    # string literals naming dunders (getattr(x, "__cl" "ass__") is a Constant too)
    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str | bytes):
            text = node.value if isinstance(node.value, str) else node.value.decode("latin-1")
            m = _DUNDER_RE.search(text)
            if m and m.group(0) not in _ALLOWED_DUNDER_STRINGS:
                self.add(node, f"string literal mentioning '{m.group(0)}' is not allowed")

    def visit_Expr(self, node: ast.Expr) -> None:
        # A bare string statement (a docstring) is inert: nothing can reach it.
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return
        self.generic_visit(node)


def _allowed_text() -> str:
    shown = sorted(m for m in ALLOWED_IMPORTS if m != "__future__")
    return "allowed: " + ", ".join(shown)
