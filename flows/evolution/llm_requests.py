"""What the LLM proposer asks: a request per proposal, and the proposal's one repair round.

A proposal asks for an edit of its parent (SEARCH/REPLACE blocks against the parent
shown with its EVOLVE-BLOCKs, ``prompts.build_messages``) or, when the run asks for
compositions (``LLMConfig.compose``) and the parent is one, for a composition
(``prompts.compose_messages``; the answer is held to ``compose.json_schema()``).
Everything a request carries is fixed when it is built, from the archive as it
stands then: that is what lets a resumed run ask the same requests again.
"""

from __future__ import annotations

import random
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

from flows.evolution import composition, prompts
from flows.evolution.archive import Archive, Candidate
from flows.evolution.config import EvolutionConfig, ModelChoice
from flows.evolution.diagnosis import diagnose, render
from flows.evolution.drafts import Draft
from flows.evolution.edits import mark
from flows.evolution.proposals import Workshop
from flows.evolution.proposer import pick_model


@dataclass
class Request:
    key: str
    root: str
    """The proposal it belongs to: its own key, or the key whose sandbox repair it is."""
    parent: Candidate
    base: str
    """The marked source the model is shown and its edits apply to."""
    messages: list[dict[str, str]]
    model: ModelChoice
    seed: int
    island: int
    known: frozenset[str]
    """Normalised hashes a usable answer must not repeat (the archive when it was asked)."""
    kind: str = "propose"
    """``propose``; or the proposal's one repair round: ``repair`` (before the sandbox) or
    ``sandbox-repair`` (after it); a repair round gets no further one."""
    genes: dict[str, Any] | None = None
    """The parent's composition when the request asks for one (``compose``), else None."""
    future: Future[dict[str, Any]] = field(default_factory=Future, repr=False)
    """The journal record of the answer (text, or the endpoint's error)."""
    draft: Draft | None = field(default=None, repr=False)

    @property
    def answer(self) -> dict[str, Any]:
        return self.future.result()


def proposal(n: int, cfg: EvolutionConfig, shop: Workshop, workload: str) -> Request:
    """The ``n``-th request of the run (``q0007``), from the archive as it stands."""
    rng = random.Random(f"{cfg.seed}/llm/{n}")
    island = n % cfg.islands
    parent = shop.archive.sample_parent(rng, island) or shop.champion
    genes = None
    if cfg.llm.compose:
        parent, genes = composed_parent(shop.archive, parent, rng, island)
    model = pick_model(cfg.llm.models, rng)
    if genes is not None:
        messages = prompts.compose_messages(
            parent=parent,
            genes=genes,
            diagnosis=render(diagnose(parent.results)) if parent.results else shop.diagnosis,
            workload=workload,
            rng=rng,
        )
    else:
        messages = prompts.build_messages(
            parent=parent,
            champion=shop.champion,
            archive=shop.archive,
            diagnosis=shop.diagnosis,
            workload=workload,
            rng=rng,
            n_top=cfg.prompt_top,
            n_diverse=cfg.prompt_diverse,
            n_errors=cfg.prompt_errors,
        )
    key = f"q{n:04d}"
    known = frozenset(shop.archive.known_hashes())
    return Request(key, key, parent, mark(parent.source), messages, model,
                   rng.randrange(2**31), island, known, genes=genes)  # fmt: skip


def composed_parent(
    archive: Archive, parent: Candidate, rng: random.Random, island: int
) -> tuple[Candidate, dict[str, Any] | None]:
    """The parent and its composition. A parent that is none gives way to an archived
    composition (the island's elites first, then any elite, then any scored): asked for
    code, a small model's answers mostly fail before the sandbox; asked for genes, every
    answer is a policy. With no composition archived yet: the parent as sampled, and None
    (it is asked for an edit)."""
    genes = composition.parse(parent.source)
    if genes is not None:
        return parent, genes
    found = (
        _compositions(archive.elites(island))
        or _compositions(archive.elites())
        or archived_compositions(archive)
    )
    if not found:
        return parent, None
    chosen = rng.choice(found)
    return chosen, composition.parse(chosen.source)


def archived_compositions(archive: Archive) -> list[Candidate]:
    """Every composition the archive scored, elite or not (by id: a stable order)."""
    return _compositions(sorted(archive.candidates.values(), key=lambda c: c.id))


def _compositions(cands: list[Candidate]) -> list[Candidate]:
    return [c for c in cands if c.ok and composition.parse(c.source) is not None]


def repair_round(req: Request, failed: Candidate | None = None) -> Request:
    """The proposal's one repair round: its error and what it gave, fed back.

    ``failed``: the child the sandbox rejected; else the draft failed before it.
    """
    d = req.draft
    assert d is not None
    answer = req.answer.get("text", "")
    if req.genes is not None:  # a composition: asked again, held to the schema again
        messages = prompts.compose_repair_messages(req.messages, answer, d.error or "")
        return replace(req, key=f"{req.key}/repair", messages=messages, kind="repair",
                       future=Future(), draft=None)  # fmt: skip
    if failed is not None:
        kind, key, shown = "sandbox-repair", f"{req.key}r", failed.source
        error = f"in the sandbox ({failed.stage}): {failed.rejection}"
        instruction = prompts.REPAIR_EDIT
        known = req.known | {failed.ast_hash}
    else:
        kind, key, shown, error = "repair", f"{req.key}/repair", d.source or req.base, d.error
        instruction = (
            prompts.REWRITE_BLOCK
            if d.stage == "parse"
            else prompts.REAL_CHANGE
            if d.stage in ("copy", "duplicate")
            else prompts.REPAIR_EDIT
        )
        known = req.known
    messages = prompts.repair_messages(req.messages, answer, error or "", shown, instruction)
    return Request(key, req.root, req.parent, mark(shown), messages, req.model, req.seed,
                   req.island, known, kind=kind)  # fmt: skip
