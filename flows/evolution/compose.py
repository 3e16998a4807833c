"""An LLM asked for a composition of kit pieces instead of code: every answer a valid policy.

When an LLM's parent is a composition (``composition.parse``), the model can be asked to
choose genes rather than write a module: its answer is one JSON object held by the
server to ``json_schema()`` (llama.cpp honours OpenAI's ``response_format`` with a
``json_schema``, turning the schema into a grammar), read back by ``genes_from_answer``
over the parent's genes (a gene the answer leaves out keeps the parent's value),
normalised and rendered (``composition_source.render``), then vetted like any drafted
module (``drafts.vetted``: contract, copy of the parent, duplicate of the archive).

A server that ignores the schema may answer anything: what is not a JSON object of
known genes with allowed values is a ``parse`` rejection naming what is wrong. A
constant outside its range is not: llama.cpp's grammar cannot bound a float, so the
value is clipped, as ``composition.normalised`` does for every composition.
"""

from __future__ import annotations

import ast
import inspect
import json
import math
from collections.abc import Mapping
from functools import cache
from typing import Any

from flows.evolution import composition
from flows.evolution.composition import CHOICES, FLOATS, INTS, SCORERS, Genes
from flows.evolution.composition_source import render
from flows.evolution.drafts import Draft, vetted
from serving import kit

REQUIRED = tuple(name for name in composition.normalised({}) if name in CHOICES)
"""The choices every composition has (all but those a reschedule mode opens), in the
order the prompt shows them: every answer states them. Asked with the local 0.5B model
(the same prompt and parent), answers free to leave genes out left the scorers out and
repeated the rest (3 copies of the parent in 3); answers that had to state every scorer
were new compositions in 3 of 4."""


class ComposeError(ValueError):
    """An answer that is not a composition; the message is one line."""


def _choice_schema(name: str) -> dict[str, Any]:
    options = CHOICES[name]
    if all(isinstance(o, bool) for o in options):
        return {"type": "boolean"}
    return {"type": "string", "enum": list(options)}


@cache
def json_schema() -> dict[str, Any]:
    """A JSON Schema of a composition: choices as enums or booleans, constants as numbers
    bounded by their ranges. Conditional genes are optional properties (``normalised``
    drops what a composition's choices leave unused and fills what they open)."""
    props: dict[str, Any] = {name: _choice_schema(name) for name in CHOICES}
    for name, (lo, hi) in INTS.items():
        props[name] = {"type": "integer", "minimum": lo, "maximum": hi}
    for name, (lo, hi, _) in FLOATS.items():
        props[name] = {"type": "number", "minimum": lo, "maximum": hi}
    # Required first: llama.cpp's grammar writes required properties before optional ones.
    order = [*REQUIRED, *(n for n in props if n not in REQUIRED)]
    return {
        "type": "object",
        "properties": {n: props[n] for n in order},
        "required": list(REQUIRED),
        "additionalProperties": False,
    }


def response_format() -> dict[str, Any]:
    """The OpenAI ``response_format`` that holds an answer to ``json_schema()``."""
    return {
        "type": "json_schema",
        "json_schema": {"name": "composition", "schema": json_schema(), "strict": False},
    }


def shown(genes: Mapping[str, Any]) -> Genes:
    """A composition as the prompt shows it: constants to four significant digits."""
    return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in genes.items()}


def genes_from_answer(text: str, parent: Mapping[str, Any]) -> tuple[Genes, list[str]]:
    """The composition an answer chose, over ``parent``'s genes, and the constants in use
    it clipped into range; raises ``ComposeError`` for what breaks the schema."""
    try:
        answer = json.loads(_unfenced(text))
    except ValueError as e:
        raise ComposeError(f"the answer is not JSON ({e}); is the schema honoured?") from None
    if not isinstance(answer, dict):
        raise ComposeError(f"the answer is JSON {type(answer).__name__}, not an object of genes")
    unknown = sorted(set(answer) - set(CHOICES) - set(FLOATS) - set(INTS))
    if unknown:
        raise ComposeError(f"unknown gene(s) {', '.join(map(repr, unknown[:5]))}")
    clipped = []
    rounded = shown(parent)
    for name, value in list(answer.items()):
        if name in CHOICES:
            if value not in CHOICES[name] or type(value) is not type(CHOICES[name][0]):
                allowed = ", ".join(json.dumps(c) for c in CHOICES[name])
                raise ComposeError(f"{name} is {json.dumps(value)}; allowed: {allowed}")
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):  # fmt: skip
            raise ComposeError(f"{name} is {json.dumps(value)}, not a number")
        if name in parent and value == rounded[name]:
            answer[name] = parent[name]  # the value it was shown: the parent's, not a change
            continue
        lo, hi = INTS[name] if name in INTS else FLOATS[name][:2]
        if not lo <= value <= hi:
            clipped.append((name, f"{name} {value} clipped into [{lo}, {hi}]"))
    genes = composition.normalised({**parent, **answer})
    return genes, [why for name, why in clipped if name in genes]  # unused ones are dropped


def _unfenced(text: str) -> str:
    # A model without the schema may still put its JSON in a fence.
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[-1].rsplit("```", 1)[0]
    return text


def compose_draft(text: str, parent: Genes, parent_source: str, known: frozenset[str]) -> Draft:
    """``text`` answered about the composition ``parent`` (the genes of ``parent_source``);
    ``known``: normalised hashes of what the archive holds."""
    if not isinstance(text, str) or not text.strip():
        return Draft(stage="parse", error="empty answer")
    try:
        genes, clipped = genes_from_answer(text, parent)
    except ComposeError as e:
        return Draft(stage="parse", error=str(e))
    if genes == composition.normalised(parent):
        return Draft(source=parent_source, stage="copy", kind="compose",
                     error="the parent's composition unchanged")  # fmt: skip
    d = vetted(render(genes), "compose", parent_source, known)
    d.repairs = clipped + d.repairs
    return d


# ---------------------------------------------------------------------- what genes mean
# Read off the modules the genes render to, so that it cannot drift from them: which kit
# pieces a choice's value brings in (against the choice's first value), what constants it
# opens, and where each constant goes (a kit call's parameter, or the comparison it is in).
# Each piece is described by its kit docstring's first line, as in the code prompt.


@cache
def gene_reference() -> str:
    """One line per gene: its values, the kit pieces and constants each value brings in."""
    pieces: dict[str, dict[Any, set[str]]] = {}
    trees: dict[str, dict[Any, ast.Module]] = {}
    for name, options in CHOICES.items():
        if name.startswith("use_"):
            continue
        ctx = _context(name)
        trees[name] = {v: ast.parse(render({**ctx, name: v})) for v in options}
        calls = {v: _kit_names(t) for v, t in trees[name].items()}
        first, rest = options[0], options[1:]
        pieces[name] = {first: calls[first] - set().union(*(calls[v] for v in rest))}
        pieces[name] |= {v: calls[v] - calls[first] for v in rest}
    # A conditional choice (the signal of a threshold) describes its own pieces.
    owned = {p for n, by in pieces.items() if _context(n) for ps in by.values() for p in ps}
    lines = []
    for name, by in pieces.items():
        ctx = _context(name)
        said, listed = [], set()  # a piece an earlier value brought in is not said twice
        for v, ps in by.items():
            ps = (ps if ctx else ps - owned) - listed
            listed |= ps
            opened = [n for n in composition.active(composition.normalised({**ctx, name: v}))
                      if n not in composition.active(composition.normalised(ctx))]  # fmt: skip
            roles = _roles(trees[name][v])
            bits = [f"kit.{p}: {_doc(p)}" for p in sorted(ps)]
            bits += [f"{n} {_range(n)} ({roles.get(n, 'a constant')})" for n in opened]
            if bits:
                said.append(f"{json.dumps(v)}: " + "; ".join(bits) + ".")
        when = f" (when reschedule is {json.dumps(ctx['reschedule'])})" if ctx else ""
        values = " | ".join(json.dumps(v) for v in CHOICES[name])
        lines.append(f"- {name}{when}: {values}. " + " ".join(said))
    for s in SCORERS:
        lines.append(f"- use_{s.name}: true adds W_{s.name.upper()} {_range(f'W_{s.name.upper()}')}"
                     f" x kit.{s.name} to the cost: {_doc(s.name)}.")  # fmt: skip
    return "\n".join(line.rstrip() for line in lines)


def _context(name: str) -> dict[str, Any]:
    """The reschedule mode under which a choice is in use ({} for the route's choices)."""
    for ctx in ({}, *({"reschedule": r} for r in CHOICES["reschedule"])):
        if name in composition.normalised(ctx):
            return ctx
    raise ValueError(f"{name} is in use under no reschedule mode")


def _kit_names(tree: ast.Module) -> set[str]:
    return {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name) and n.value.id == "kit"}  # fmt: skip


def _roles(tree: ast.Module) -> dict[str, str]:
    """Constant -> where it is read: ``limit of kit.kv_at_most``, or ``load > UP_UTIL``."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.func.__class__ is ast.Attribute:
            fn = node.func
            if isinstance(fn.value, ast.Name) and fn.value.id == "kit" and fn.attr != "weighted":
                params = list(inspect.signature(getattr(kit, fn.attr)).parameters)
                for param, arg in zip(params, node.args, strict=False):
                    if isinstance(arg, ast.Name) and arg.id.isupper():
                        out.setdefault(arg.id, f"{param} of kit.{fn.attr}")
        elif isinstance(node, ast.Compare):
            for arg in (node.left, *node.comparators):
                if isinstance(arg, ast.Name) and arg.id.isupper():
                    out.setdefault(arg.id, ast.unparse(node))
    return out


def _doc(name: str) -> str:
    return (inspect.getdoc(getattr(kit, name)) or "").splitlines()[0].replace("``", "").rstrip(".")


def _range(name: str) -> str:
    lo, hi = INTS[name] if name in INTS else FLOATS[name][:2]
    return f"{lo:g}..{hi:g}"
