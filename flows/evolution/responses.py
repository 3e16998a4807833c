"""Source-level tools for candidates: unified diffs, duplicate hashing, baking tuned values.

``drafts`` turns an LLM answer into a candidate with these (and ``edits``); a
diff that does not apply is a ``ResponseError`` with a one-line reason that goes
back to the model. Nothing here executes the candidate: parsing uses ``ast`` only.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Mapping

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


class ResponseError(ValueError):
    """A diff that does not apply; the message says why in one line."""


def apply_unified_diff(parent: str, diff: str) -> str:
    """Apply a unified diff to ``parent``; hunks are located by content (models miscount)."""
    lines = parent.split("\n")
    hunks = _parse_hunks(diff)
    if not hunks:
        raise ResponseError("diff has no hunks")
    offset_hint = 0
    for old, new in hunks:
        at = _find(lines, old, offset_hint)
        if at is None:
            first = next((x for x in old if x.strip()), "")
            raise ResponseError(f"hunk context not found in parent: {first.strip()[:60]!r}")
        lines[at : at + len(old)] = new
        offset_hint = at + len(new)
    return "\n".join(lines)


def _parse_hunks(diff: str) -> list[tuple[list[str], list[str]]]:
    hunks: list[tuple[list[str], list[str]]] = []
    cur: tuple[list[str], list[str]] | None = None
    for raw in diff.split("\n"):
        if raw.startswith(("--- ", "+++ ", "diff ", "index ")):
            continue
        if _HUNK.match(raw) or raw.startswith("@@"):
            cur = ([], [])
            hunks.append(cur)
            continue
        if cur is None:
            continue
        if raw.startswith("+"):
            cur[1].append(raw[1:])
        elif raw.startswith("-"):
            cur[0].append(raw[1:])
        elif raw.startswith(" ") or raw == "":
            cur[0].append(raw[1:])
            cur[1].append(raw[1:])
        elif raw.startswith("\\"):
            continue  # "\ No newline at end of file"
    # Trailing blank context lines are usually an artefact of the fence, not context.
    for old, new in hunks:
        while old and new and old[-1] == "" and new[-1] == "":
            old.pop()
            new.pop()
    return [h for h in hunks if h[0] or h[1]]


def _find(lines: list[str], old: list[str], hint: int) -> int | None:
    if not old:
        return len(lines)
    n = len(old)
    order = list(range(hint, len(lines) - n + 1)) + list(range(0, min(hint, len(lines) - n + 1)))
    for exact in (True, False):
        for i in order:
            window = lines[i : i + n]
            if exact and window == old:
                return i
            if not exact and [w.rstrip() for w in window] == [o.rstrip() for o in old]:
                return i
    return None


class _Normalise(ast.NodeTransformer):
    """Drops what does not change behaviour: docstrings (comments are gone already)."""

    def _strip_doc(self, node: ast.AST) -> ast.AST:
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
        self.generic_visit(node)
        return node

    visit_Module = _strip_doc
    visit_FunctionDef = _strip_doc
    visit_AsyncFunctionDef = _strip_doc
    visit_ClassDef = _strip_doc


def normalised_hash(source: str) -> str:
    """Hash of the module's AST without comments, docstrings, layout: equal code, equal hash.

    Falls back to a hash of the raw text for source that does not parse (so two
    identical broken answers still count as duplicates).
    """
    try:
        tree = _Normalise().visit(ast.parse(source))
        text = ast.dump(tree, annotate_fields=False, include_attributes=False)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        text = "raw:" + source
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def behaviour_hash(source: str) -> str:
    """``normalised_hash`` after dropping module constants nothing reads (and their PARAMS
    entries): a child that only declares new, unused constants does what its parent does."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return normalised_hash(source)
    read = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
            and isinstance(n.ctx, ast.Load)}
    dead: set[str] = set()
    body = []
    for node in tree.body:
        target = assignment(node)[0]
        if target is not None and target != "PARAMS" and target not in read:
            dead.add(target)
            continue
        body.append(node)
    for node in body:
        value = getattr(node, "value", None)
        if assignment(node)[0] == "PARAMS" and isinstance(value, ast.Dict):
            keep = [(k, v) for k, v in zip(value.keys, value.values, strict=False)
                    if not (isinstance(k, ast.Constant) and k.value in dead)]
            value.keys, value.values = [k for k, _ in keep], [v for _, v in keep]
    tree.body = body
    return normalised_hash(ast.unparse(tree))


def assignment(node: ast.stmt) -> tuple[str | None, ast.expr | None]:
    """``(name, value)`` of a top-level ``NAME = value`` or ``NAME: T = value``, else Nones."""
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        t = node.targets[0]
        return (t.id if isinstance(t, ast.Name) else None), node.value
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id, node.value
    return None, None


def is_docstring(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(getattr(node, "value", None), ast.Constant)
        and isinstance(node.value.value, str)
    )


def bake_params(source: str, params: Mapping[str, float]) -> str:
    """``source`` with each top-level ``NAME = value`` in ``params`` set to the new value.

    Tuned constants become part of the module, so the registered policy is one
    self-contained file (the contract: the module global holds the value).
    """
    if not params:
        return source
    tree = ast.parse(source)
    lines = source.split("\n")
    edits: list[tuple[int, int, int, str]] = []
    for node in tree.body:
        target = value = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and target.id in params and value is not None:
            if value.lineno != value.end_lineno:
                continue
            edits.append(
                (
                    value.lineno - 1,
                    value.col_offset,
                    value.end_col_offset or 0,
                    _literal(params[target.id]),
                )
            )
    for line, start, end, text in sorted(edits, reverse=True):
        lines[line] = lines[line][:start] + text + lines[line][end:]
    return "\n".join(lines)


def _literal(value: float) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return repr(float(value))


def unified_diff(parent: str, child: str, name: str = "policy.py") -> str:
    import difflib

    return "".join(
        difflib.unified_diff(
            parent.splitlines(True), child.splitlines(True), f"a/{name}", f"b/{name}"
        )
    )
