"""An LLM answer made into a candidate the sandbox may see, or the one-line reason it is not.

In order: the code is taken from the answer (SEARCH/REPLACE blocks against the
code the model was shown; else whole functions, a whole module, a bare block or
a unified diff), repaired where that is mechanical (``repair``), checked against
the contract without running it, and compared with its parent and the archive
(normalised AST: a reformatted copy is still a copy). Each failure names its
stage, which is also the stage the proposal stopped at in the counters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from flows.evolution.edits import (
    EditError,
    apply_search_replace,
    python_blocks,
    rewrite_block,
    search_replace_pairs,
)
from flows.evolution.repair import contract_error, repair
from flows.evolution.responses import (
    ResponseError,
    apply_unified_diff,
    behaviour_hash,
    normalised_hash,
)

MAX_SOURCE_CHARS = 40_000
"""A policy is a page or two; an answer past this is runaway generation, not a policy."""
REACHED: dict[str | None, tuple[str, ...]] = {
    "llm": (),  # the endpoint gave no answer
    "parse": (),
    "contract": ("parsed",),
    "copy": ("parsed", "contract_ok"),
    "duplicate": ("parsed", "contract_ok"),
    None: ("parsed", "contract_ok", "unique"),
}
"""The counter stages a draft got through, by the stage it stopped at (None: usable)."""


@dataclass
class Draft:
    source: str | None = None
    stage: str | None = None
    """None: usable; else where it stopped (a key of ``REACHED``)."""
    error: str | None = None
    kind: str = ""
    """How the code was taken from the answer: search-replace, functions, module, block, diff,
    compose (a composition rendered, ``compose``)."""
    repairs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.stage is None

    def reached(self) -> tuple[str, ...]:
        return REACHED[self.stage]


def make_draft(text: str, base: str, parent: str, known: frozenset[str]) -> Draft:
    """``text`` answered about ``base`` (the marked source the model was shown), whose
    parent is ``parent``; ``known``: normalised hashes of what the archive holds."""
    try:
        source, kind = source_from_answer(text, base)
    except (EditError, ResponseError) as e:
        return Draft(stage="parse", error=str(e))
    if len(source) > MAX_SOURCE_CHARS:
        return Draft(
            stage="parse",
            error=f"module is {len(source)} characters; the cap is {MAX_SOURCE_CHARS}",
        )
    return vetted(source, kind, parent, known)


def vetted(source: str, kind: str, parent: str, known: frozenset[str]) -> Draft:
    """A module however it was made (``kind``), repaired where that is mechanical, checked
    against the contract and compared with its parent and the archive."""
    source, repairs = repair(source)
    d = Draft(source=source, kind=kind, repairs=repairs)
    err = contract_error(source)
    if err:
        d.stage, d.error = "contract", err
        return d
    h = normalised_hash(source)
    if h == normalised_hash(parent) or behaviour_hash(source) == behaviour_hash(parent):
        d.stage, d.error = (
            "copy",
            ("copy of its parent (the same code once normalised, new constants unused)"),
        )
    elif h in known:
        d.stage, d.error = "duplicate", "duplicate of an archived candidate"
    return d


def source_from_answer(text: str, base: str) -> tuple[str, str]:
    """``(source, kind)``; raises ``EditError`` with the most useful reason when nothing fits."""
    if not isinstance(text, str) or not text.strip():
        raise EditError("empty answer")
    text = text.replace("\r\n", "\n").replace("\x00", "")
    errors: list[str] = []
    pairs = search_replace_pairs(text)
    if pairs:
        try:
            return apply_search_replace(base, pairs), "search-replace"
        except EditError as e:
            errors.append(str(e))
    for code in python_blocks(text) or _unfenced(text):
        if re.search(r"^@@ -\d+", code, re.M):
            try:
                return apply_unified_diff(base, code), "diff"
            except ResponseError as e:
                errors.append(str(e))
            continue
        try:
            source = rewrite_block(base, code)
        except EditError as e:
            errors.append(str(e))
            continue
        return source, _shape(code)
    raise EditError(
        errors[0] if errors else "no SEARCH/REPLACE block and no Python code in the answer"
    )


def _unfenced(text: str) -> list[str]:
    # An answer without fences: the code starts at its first line that looks like Python.
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if re.match(r"(from |import |def |[A-Z_]+ *[:=]|@@ )", line):
            return ["\n".join(lines[i:])]
    return []


def _shape(code: str) -> str:
    if re.search(r"^def route\b", code, re.M) and re.search(r"^(import|from|PARAMS)", code, re.M):
        return "module"
    return "functions" if re.search(r"^\s*def ", code, re.M) else "block"
