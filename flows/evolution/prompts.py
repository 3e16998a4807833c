"""Prompts for the proposer, rendered from the templates in ``prompts/``.

Templates use ``string.Template`` (``$name``): policy code is full of braces,
which ``str.format`` would trip over.
"""

from __future__ import annotations

import random
from functools import cache
from importlib import resources
from string import Template

from flows.evolution.archive import Archive, Candidate
from flows.evolution.edits import mark

HINTS = (
    "Focus on the scenario with the most SLO misses.",
    "Try a different way of balancing load across replicas.",
    "Make better use of prefix-cache overlap without overloading one replica.",
    "Account for heterogeneous replicas (gpu type, tensor parallelism).",
    "Consider holding requests briefly when every replica is saturated.",
)
MAX_ARCHIVED_CHARS = 2500
"""Archived sources beyond this are cut: small local models have small contexts."""


@cache
def template(name: str) -> Template:
    text = resources.files("flows.evolution").joinpath("prompts", name).read_text("utf-8")
    return Template(text)


def _archived(cands: list[Candidate]) -> str:
    if not cands:
        return "(none yet)"
    return "\n".join(
        template("archived.md").safe_substitute(
            id=c.id,
            objective=_fmt(c.quick),
            origin=c.origin,
            source=c.source[:MAX_ARCHIVED_CHARS],
        )
        for c in cands
    )


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def build_messages(
    *,
    parent: Candidate,
    champion: Candidate,
    archive: Archive,
    diagnosis: str,
    workload: str,
    rng: random.Random,
    n_top: int = 2,
    n_diverse: int = 2,
    n_errors: int = 3,
) -> list[dict[str, str]]:
    system = template("system.md").safe_substitute(contract=template("contract.md").template)
    top = archive.top(n_top, exclude=(parent.id,))
    diverse = archive.diverse(n_diverse, rng, exclude=(parent.id, *[c.id for c in top]))
    errors = (
        "\n".join(f"- {c.id}: {c.stage}: {c.rejection}" for c in archive.failures(n_errors))
        or "(none)"
    )
    user = template("propose.md").safe_substitute(
        workload=workload,
        champion_objective=_fmt(champion.quick),
        diagnosis=diagnosis,
        parent_objective=_fmt(parent.quick),
        parent_origin=parent.origin,
        parent_source=mark(parent.source),
        top=_archived(top),
        diverse=_archived(diverse),
        errors=errors,
        hint=rng.choice(HINTS),
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


REPAIR_EDIT = (
    "Fix it with SEARCH/REPLACE blocks against the code above, or answer with the whole "
    "fixed function in one ```python block."
)
REWRITE_BLOCK = (
    "Rewrite instead: answer with the complete new function(s) in one ```python block "
    "(every line of each function you change, nothing else)."
)
REAL_CHANGE = (
    "That is the parent unchanged. Make a real change to its behaviour with SEARCH/REPLACE "
    "blocks against the code above."
)


def repair_messages(
    messages: list[dict[str, str]], answer: str, error: str, source: str, instruction: str
) -> list[dict[str, str]]:
    """The conversation so far, the failed answer, and what went wrong with it: one more turn.

    llama.cpp's server reuses the cached prompt prefix, so the turn costs the new text only.
    """
    turn = template("repair.md").safe_substitute(
        error=error, source=mark(source), instruction=instruction
    )
    return [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": turn}]


def describe_workload(scenarios: tuple[str, ...]) -> str:
    """One line per scenario of the suite, from the catalogue's own descriptions."""
    from sandbox import scenarios as catalogue

    lines = []
    for name in scenarios:
        # The catalogue keeps descriptions in its private table; absent ones read "custom".
        entry = getattr(catalogue, "_SCENARIOS", {}).get(name)
        lines.append(f"- {name}: {entry.description if entry else 'custom scenario'}")
    return "\n".join(lines)
