"""Small edits to a policy: evolvable regions, SEARCH/REPLACE diffs, whole-block rewrites.

A small model cannot rewrite a module reliably, but it can change a few lines.
The regions it may change are marked in the parent::

    def route(request, replicas, now):
        # EVOLVE-BLOCK-START
        ...
        # EVOLVE-BLOCK-END

(``mark`` adds the markers around the bodies of ``route`` and ``reschedule`` and
around the constants when a module has none), and the answer is one or more
SEARCH/REPLACE blocks, the format aider and OpenEvolve use::

    <<<<<<< SEARCH
    key = (r.inflight_requests, r.inflight_tokens, r.id)
    =======
    key = (r.inflight_requests + WAIT_WEIGHT * r.waiting, r.inflight_tokens, r.id)
    >>>>>>> REPLACE

Matching forgives what small models get wrong and does not matter: indentation
(the replacement is re-indented to where the search text was found), trailing
spaces and blank lines. When a diff does not apply, ``rewrite_block`` takes a
whole block, a whole function or a whole module instead. Nothing here executes code.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from flows.evolution.responses import assignment, is_docstring

START = "# EVOLVE-BLOCK-START"
END = "# EVOLVE-BLOCK-END"

_SR = re.compile(
    r"^[ \t]*<{5,9}[ \t]*SEARCH[^\n]*\n(.*?)"
    r"^[ \t]*={5,9}[ \t]*\n(.*?)"
    r"^[ \t]*>{5,9}[ \t]*REPLACE[^\n]*$",
    re.S | re.M,
)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
EVOLVED_FUNCTIONS = ("route", "reschedule")
_MODULE_LEVEL = (ast.Assign, ast.AnnAssign, ast.Import, ast.ImportFrom)


ANSWER_GRAMMAR = r"""root  ::= edit+ | fence
edit  ::= "<<<<<<< SEARCH\n" line+ "=======\n" line* ">>>>>>> REPLACE\n"
fence ::= "```python\n" line+ "```\n"
line  ::= [^<=>`\n] [^\n]* "\n" | "\n"
"""
"""llama.cpp's GBNF for an answer: SEARCH/REPLACE blocks, or one fenced Python block (what a
repair round may ask for). A code line cannot start with a marker's first character, so
the markers are the only way out of a block. Measured on Qwen2.5-Coder-0.5B without it:
"SEARCH" lines around copies of the parent, never a REPLACE."""


class EditError(ValueError):
    """The edit cannot be applied; the message (one line) goes back to the model."""


@dataclass(frozen=True)
class Block:
    """An evolvable region: lines ``start+1 .. end-1`` (0-based) lie between the markers."""

    start: int
    end: int
    indent: str


def blocks(source: str) -> list[Block]:
    lines = source.split("\n")
    out: list[Block] = []
    opened: int | None = None
    for i, line in enumerate(lines):
        text = line.strip()
        if text.startswith(START):
            opened = i
        elif text.startswith(END) and opened is not None:
            out.append(
                Block(opened, i, lines[opened][: len(lines[opened]) - len(lines[opened].lstrip())])
            )
            opened = None
    return out


def mark(source: str) -> str:
    """``source`` with markers around its constants and the bodies of route/reschedule.

    A module that has markers already is returned as it is: its author chose the regions.
    Docstrings stay outside the block (they are not behaviour).
    """
    if blocks(source):
        return source
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    lines = source.split("\n")
    regions: list[tuple[int, int, str]] = []  # (first line, last line) 0-based, indent
    consts: list[ast.stmt] = []  # the first run of constants: nothing else inside the block
    for node in tree.body:
        if _is_constant(node):
            consts.append(node)
        elif consts:
            break
    if consts:
        regions.append((consts[0].lineno - 1, consts[-1].end_lineno - 1, ""))  # type: ignore[operator]
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in EVOLVED_FUNCTIONS:
            body = node.body
            if is_docstring(body[0]) and len(body) > 1:
                body = body[1:]
            first = (
                min([body[0].lineno, *(d.lineno for d in getattr(body[0], "decorator_list", []))])
                - 1
            )
            indent = lines[first][: len(lines[first]) - len(lines[first].lstrip())]
            regions.append((first, body[-1].end_lineno - 1, indent))  # type: ignore[operator]
    for first, last, indent in sorted(regions, reverse=True):
        lines[last + 1 : last + 1] = [indent + END]
        lines[first:first] = [indent + START]
    return "\n".join(lines)


def _is_constant(node: ast.stmt) -> bool:
    """A top-level ``NAME = literal`` or the ``PARAMS`` table: the tunable surface."""
    if isinstance(node, ast.Assign | ast.AnnAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        if names == ["PARAMS"]:
            return True
        if names and names[0].isupper() and node.value is not None:
            try:
                ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, RecursionError):
                return False
            return True
    return False


def search_replace_pairs(text: str) -> list[tuple[str, str]]:
    """Every SEARCH/REPLACE block in an answer, fenced or not."""
    return [(s, r) for s, r in _SR.findall(text.replace("\r\n", "\n"))]


def apply_search_replace(source: str, pairs: list[tuple[str, str]]) -> str:
    """Apply each pair in turn; raises ``EditError`` naming the first that does not match."""
    if not pairs:
        raise EditError("no SEARCH/REPLACE block found")
    lines = source.split("\n")
    for n, (search, replace) in enumerate(pairs, 1):
        old = _content_lines(search)
        if not old:
            raise EditError(f"SEARCH block {n} is empty")
        span = _find_loose(lines, old)
        if span is None:
            raise EditError(f"SEARCH block {n} not found in the parent: {old[0].strip()[:60]!r}")
        at, end = span
        lines[at:end] = _reindent(_content_lines(replace), old[0], lines[at])
    return "\n".join(lines)


def _content_lines(text: str) -> list[str]:
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    while lines and not lines[0].strip():
        lines.pop(0)
    return lines


def _find_loose(lines: list[str], old: list[str]) -> tuple[int, int] | None:
    """The span of ``lines`` equal to ``old`` up to indentation, trailing space, blank lines."""
    want = [x.strip() for x in old if x.strip()]
    for i, line in enumerate(lines):
        if line.strip() != want[0]:
            continue
        j, k = i, 0
        while j < len(lines) and k < len(want):
            if not lines[j].strip():
                j += 1
                continue
            if lines[j].strip() != want[k]:
                break
            j, k = j + 1, k + 1
        if k == len(want):
            return i, j
    return None


def _reindent(new: list[str], search_first: str, found_first: str) -> list[str]:
    """Shift ``new`` so its indentation relative to the SEARCH text lands where it was found."""
    have = len(search_first) - len(search_first.lstrip())
    want = len(found_first) - len(found_first.lstrip())
    if have == want:
        return new
    out = []
    for line in new:
        lead = len(line) - len(line.lstrip())
        out.append(" " * max(0, lead - have + want) + line.lstrip() if line.strip() else "")
    return out


def rewrite_block(parent: str, code: str) -> str:
    """``parent`` with ``code`` in place of what it rewrites.

    ``code`` is a whole module (it defines route and something else at top level,
    such as imports or PARAMS), one or more whole top-level functions (each replaces
    the parent's function of that name, or is added), or the new content of the
    parent's only evolvable block.
    """
    code = code.strip("\n")
    try:
        tree = ast.parse(_dedent_common(code))
    except SyntaxError as e:
        raise EditError(f"line {e.lineno}: SyntaxError: {e.msg}") from None
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    others = [n for n in tree.body if not isinstance(n, ast.FunctionDef) and not is_docstring(n)]
    if defs and any(d.name == "route" for d in defs) and others:
        return _dedent_common(code) + "\n"
    if defs and not others:
        return _replace_functions(parent, _dedent_common(code), defs)
    if any(isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) for n in others):
        raise EditError("no top-level def route() among the answer's definitions")
    if not defs and all(isinstance(n, _MODULE_LEVEL) for n in others):
        return merge_constants(parent, _dedent_common(code))
    marked = blocks(parent)
    if len(marked) != 1:
        raise EditError(
            "a bare block needs exactly one EVOLVE block in the parent; answer with whole "
            "functions instead"
        )
    b = marked[0]
    lines = parent.split("\n")
    body = _dedent_common(code).split("\n")
    lines[b.start + 1 : b.end] = [b.indent + x if x.strip() else "" for x in body]
    return "\n".join(lines)


def merge_constants(parent: str, code: str) -> str:
    """``parent`` with the assignments and imports of ``code`` merged in, keeping the rest.

    Small models answer a request for new constants with the constants alone: each
    ``NAME = value`` replaces the parent's binding of that name (or joins the parent's
    constants), a ``PARAMS`` dict adds to and overrides the parent's entries, and an
    import the parent lacks is added. What the answer leaves out stays as it was.
    """
    tree = ast.parse(code)
    ptree = ast.parse(parent)
    lines = parent.split("\n")
    bound = {assignment(n)[0]: n for n in ptree.body if assignment(n)[0]}
    imported = {
        a.asname or a.name
        for n in ptree.body
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    edits: list[tuple[int, int, list[str]]] = []  # (first line, end line) 0-based, new text
    added: list[str] = []
    imports: list[str] = []
    for node in tree.body:
        text = ast.get_source_segment(code, node) or ast.unparse(node)
        name = assignment(node)[0]
        if isinstance(node, ast.Import | ast.ImportFrom):
            if not {(a.asname or a.name) for a in node.names} <= imported:
                imports.append(text)
        elif name is None:
            continue
        elif name in bound:
            old = bound[name]
            if name == "PARAMS":
                text = _merged_params(parent, old, code, node) or text
            edits.append((old.lineno - 1, old.end_lineno or old.lineno, text.split("\n")))
        else:
            added += text.split("\n")
    region = next((b for b in blocks(parent) if not b.indent), None)
    at = region.end if region else _after_imports(ptree)
    edits.append((at, at, added))
    first = _after_imports(ptree)
    edits.append((first, first, imports))
    for start, end, text in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        lines[start:end] = text
    return "\n".join(lines)


def _merged_params(parent: str, old: ast.stmt, code: str, new: ast.stmt) -> str | None:
    a, b = getattr(old, "value", None), getattr(new, "value", None)
    if not (isinstance(a, ast.Dict) and isinstance(b, ast.Dict)):
        return None
    entries: dict[str, str] = {}
    for src, d in ((parent, a), (code, b)):
        for k, v in zip(d.keys, d.values, strict=False):
            if isinstance(k, ast.Constant) and isinstance(k.value, str):
                entries[k.value] = ast.get_source_segment(src, v) or ast.unparse(v)
    head = (ast.get_source_segment(parent, old) or "").split("=", 1)[0].rstrip()
    body = "".join(f"    {k!r}: {v},\n" for k, v in entries.items())
    return f"{head} = {{\n{body}}}"


def _after_imports(tree: ast.Module) -> int:
    end = 0
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom) or is_docstring(node):
            end = node.end_lineno or end
    return end


def _dedent_common(code: str) -> str:
    lines = code.split("\n")
    lead = min((len(x) - len(x.lstrip()) for x in lines if x.strip()), default=0)
    return "\n".join(x[lead:] for x in lines)


def _replace_functions(parent: str, code: str, defs: list[ast.FunctionDef]) -> str:
    lines = parent.split("\n")
    code_lines = code.split("\n")
    try:
        tree = ast.parse(parent)
    except SyntaxError as e:
        raise EditError(f"parent does not parse: {e.msg}") from None
    where = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    edits: list[tuple[int, int, list[str]]] = []
    added: list[str] = []
    for d in defs:
        start = min([d.lineno, *(x.lineno for x in d.decorator_list)]) - 1
        text = code_lines[start : d.end_lineno]
        old = where.get(d.name)
        if old is None:
            added += ["", "", *text]
            continue
        first = min([old.lineno, *(x.lineno for x in old.decorator_list)]) - 1
        edits.append((first, old.end_lineno or old.lineno, text))
    for first, end, text in sorted(edits, reverse=True):
        lines[first:end] = text
    return "\n".join(lines).rstrip("\n") + "\n".join(added) + "\n"


def python_blocks(text: str) -> list[str]:
    """The fenced code blocks of an answer that are not diffs, longest first."""
    found = [
        body
        for lang, body in _FENCE.findall(text.replace("\r\n", "\n"))
        if lang.lower() not in ("diff", "patch") and not _SR.search(body)
    ]
    return sorted(found, key=len, reverse=True)
