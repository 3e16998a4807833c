"""Prompts for the proposer, rendered from the templates in ``prompts/``.

Templates use ``string.Template`` (``$name``): policy code is full of braces,
which ``str.format`` would trip over. The kit reference is generated from the
kit's own docstrings (one line per piece) and the examples are real policy files
(``prompts/examples/``, loaded and checked by the tests), so neither can drift
from the code.
"""

from __future__ import annotations

import ast
import inspect
import json
import random
from functools import cache
from importlib import resources
from string import Template
from typing import Any

from flows.evolution.archive import Archive, Candidate
from flows.evolution.edits import mark
from serving import kit
from serving.routing import SKIP_AHEAD

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


def _signature(name: str) -> str:
    obj = getattr(kit, name)
    if inspect.isclass(obj):
        return f"{name}()"
    parts = []
    for p in inspect.signature(obj).parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            parts.append(f"*{p.name}")
        elif p.default is not p.empty:
            parts.append(f"{p.name}={p.default!r}")
        else:
            parts.append(p.name)
    return f"{name}({', '.join(parts)})"


@cache
def kit_reference() -> str:
    """Every kit piece as ``kit.name(args): first docstring line``, grouped by kind."""
    lines = []
    for title, names in kit.SECTIONS:
        lines.append(f"{title}:")
        for name in names:
            summary = (inspect.getdoc(getattr(kit, name)) or "").splitlines()[0]
            summary = summary.replace("``", "")  # reST quoting costs tokens, says nothing
            lines.append(f"- kit.{_signature(name)}: {summary}")
    return "\n".join(lines)


EXAMPLES = ("ttft_weighted.py", "prefix_softmax_hold.py", "autoscale_on_risk.py")
"""Composed policies shown in every prompt (files in ``prompts/examples/``)."""


@cache
def example_sources() -> dict[str, str]:
    folder = resources.files("flows.evolution").joinpath("prompts", "examples")
    return {name: folder.joinpath(name).read_text("utf-8") for name in EXAMPLES}


def _example(name: str, source: str) -> str:
    """An example under its docstring's line as the heading (the docstring itself is cut)."""
    doc = ast.get_docstring(ast.parse(source)) or ""
    body = source.split('"""', 2)[2].strip() if doc else source.strip()
    return f"### {name}: {doc.splitlines()[0] if doc else ''}\n```python\n{body}\n```"


@cache
def system_prompt() -> str:
    contract = template("contract.md").safe_substitute(skip_ahead=SKIP_AHEAD)
    examples = "\n".join(_example(name, source) for name, source in example_sources().items())
    guide = template("kit.md").safe_substitute(reference=kit_reference(), examples=examples)
    return template("system.md").safe_substitute(contract=contract, kit=guide)


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
    system = system_prompt()
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


def compose_messages(
    *, parent: Candidate, genes: dict[str, Any], diagnosis: str, workload: str,
    rng: random.Random,
) -> list[dict[str, str]]:  # fmt: skip
    """Ask for a composition: the genes' meaning (from the kit, ``compose.gene_reference``)
    in the system prompt, which a local server caches across requests; the parent's
    composition, its score per scenario and where it loses in the user's turn."""
    from flows.evolution.compose import gene_reference, shown

    system = template("compose_system.md").safe_substitute(genes=gene_reference())
    by_scenario = ", ".join(f"{k} {v:.4f}" for k, v in sorted(parent.quick_by_scenario.items()))
    user = template("compose.md").safe_substitute(
        workload=workload,
        objective=_fmt(parent.quick),
        by_scenario=by_scenario or "n/a",
        composition=json.dumps(shown(genes), indent=1),
        diagnosis=diagnosis,
        hint=rng.choice(HINTS),
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def compose_repair_messages(
    messages: list[dict[str, str]], answer: str, error: str
) -> list[dict[str, str]]:
    """A composition that could not be used, and why: one more turn."""
    turn = template("compose_repair.md").safe_substitute(error=error)
    return [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": turn}]


def describe_workload(scenarios: tuple[str, ...]) -> str:
    """One line per scenario of the suite, from the catalogue's own descriptions."""
    from sandbox.scenarios import SCENARIO_DESCRIPTIONS

    return "\n".join(
        f"- {name}: {SCENARIO_DESCRIPTIONS.get(name, 'custom scenario')}" for name in scenarios
    )
