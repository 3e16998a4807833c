"""Turn an LLM answer into a candidate module, robustly; hash candidates for duplicates.

An answer may hold a whole module (fenced or not, possibly among prose and
several code blocks) or a unified diff against the parent. Anything else is a
``ResponseError`` with a one-line reason that goes back into later prompts.
Nothing here executes the candidate: parsing uses ``ast`` only.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Mapping

MAX_SOURCE_CHARS = 40_000

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


class ResponseError(ValueError):
    """The answer holds no usable candidate; the message says why in one line."""


def extract_candidate(text: object, parent: str | None = None) -> tuple[str, str]:
    """The candidate module in ``text``: ``(source, kind)``, kind "module" or "diff"."""
    if not isinstance(text, str) or not text.strip():
        raise ResponseError("empty answer")
    text = text.replace("\r\n", "\n").replace("\x00", "")
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    diffs = [b for lang, b in blocks if lang in ("diff", "patch") or _looks_like_diff(b)]
    if not blocks and _looks_like_diff(text):
        diffs = [text]
    if diffs and parent is not None:
        errors = []
        for d in diffs:
            try:
                return _checked(apply_unified_diff(parent, d)), "diff"
            except ResponseError as e:
                errors.append(str(e))
        if not [b for lang, b in blocks if lang not in ("diff", "patch")]:
            raise ResponseError(f"diff does not apply to the parent: {errors[0]}")
    # The longest block that defines route() wins: models often show a snippet first.
    modules = [b for lang, b in blocks if lang not in ("diff", "patch") and "def route" in b]
    if not blocks and "def route" in text:
        modules = [_strip_prose(text)]
    if not modules:
        raise ResponseError("no Python module defining route() and no applicable diff found")
    errors = []
    for body in sorted(modules, key=len, reverse=True):
        try:
            return _checked(body), "module"
        except ResponseError as e:
            errors.append(str(e))
    raise ResponseError(errors[0])


def _looks_like_diff(text: str) -> bool:
    return bool(re.search(r"^@@ -\d+", text, re.M)) and bool(
        re.search(r"^(---|\+\+\+) ", text, re.M)
    )


def _strip_prose(text: str) -> str:
    # An unfenced answer: start at the first line that looks like Python module code.
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if re.match(r'(from |import |"""|def |[A-Z_]+ *[:=]|#)', line):
            return "\n".join(lines[i:])
    return text


def _checked(source: str) -> str:
    source = source.strip("\n") + "\n"
    if len(source) > MAX_SOURCE_CHARS:
        raise ResponseError(f"module is {len(source)} characters; the cap is {MAX_SOURCE_CHARS}")
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ResponseError(f"line {e.lineno}: SyntaxError: {e.msg}") from None
    except (ValueError, RecursionError, MemoryError) as e:
        raise ResponseError(f"cannot parse: {type(e).__name__}") from None
    if not any(isinstance(n, ast.FunctionDef) and n.name == "route" for n in tree.body):
        raise ResponseError("module does not define route() at top level")
    return source


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
