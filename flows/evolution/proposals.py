"""The seam between the loop and whatever proposes children: slots, proposers, counters.

A generation has ``population`` slots. For each slot the loop asks its proposers
in order; the first that takes the slot fills it::

    class Proposer(Protocol):
        kind: str                      # "llm", "tune", "structure", ...
        counters: Counters             # proposed, parsed, contract_ok, unique, evaluated, improving
        def bind(self, shop: Workshop) -> None
        def fill(self, slot: Slot) -> Fill
        def report(self) -> dict           # the counts, and what else the kind reports
        def close(self) -> None

An asynchronous proposer (the LLM, answering in the background) comes first and
declines a slot when it has nothing ready; a search proposer (Optuna tuning, or
``Mix`` of several) comes last and always takes it. A new kind of search slots in
as another proposer (or a ``Mix`` member): the loop does not change.

``Workshop`` is what proposers may use of the run: the archive, the champion,
the quick-suite evaluator and Optuna tuning of a child's constants.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from flows.evolution.archive import Archive, Candidate, cell_of, descriptors_of
from flows.evolution.cascade import Cascade, Outcome
from flows.evolution.config import EvolutionConfig
from flows.evolution.responses import normalised_hash
from flows.evolution.tuning import read_params, tune
from sandbox.protocol import sha256_text

STAGES = ("proposed", "parsed", "contract_ok", "unique", "evaluated", "improving")
"""What the measurement issue's ``bench evolution`` reports per proposer kind, in order:
each stage counts the proposals that got that far."""


@dataclass(frozen=True)
class Slot:
    generation: int
    index: int
    island: int
    seed: int
    """The run's seed; every random choice of a slot derives from (seed, generation, index)."""

    @property
    def id(self) -> str:
        return f"g{self.generation:03d}-s{self.index:03d}"

    def rng(self, purpose: str = "") -> random.Random:
        # The Optuna-only run has drawn from "seed/g/s" since before proposers existed.
        tail = f"/{purpose}" if purpose else ""
        return random.Random(f"{self.seed}/{self.generation}/{self.index}{tail}")


@dataclass
class Fill:
    """What a proposer did with a slot: the candidates it made (rejected ones too, for the
    archive's record and the prompts' error list) and whether it took the slot."""

    candidates: list[Candidate] = field(default_factory=list)
    took: bool = False


@dataclass
class Counters:
    """Per proposer kind: the proposals that reached each stage (a proposal counts once per
    stage, however many answers or repairs it took)."""

    seen: dict[str, set[str]] = field(default_factory=lambda: {s: set() for s in STAGES})

    def note(self, proposal: str, *stages: str) -> None:
        for s in stages:
            self.seen[s].add(proposal)

    def counts(self) -> dict[str, int]:
        return {s: len(v) for s, v in self.seen.items()}


class Proposer(Protocol):
    kind: str
    counters: Counters

    def bind(self, shop: Workshop) -> None: ...

    def fill(self, slot: Slot) -> Fill: ...

    def report(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class Workshop:
    """The run as proposers see it. The loop owns the archive and the champion; a
    proposer reads them and makes, evaluates and tunes candidates through here."""

    def __init__(
        self,
        cfg: EvolutionConfig,
        evaluator: Cascade,
        archive: Archive,
        champion: Callable[[], Candidate | None],
        diagnosis: Callable[[], str],
        advance: Callable[[str], None],
    ) -> None:
        self.cfg = cfg
        self.evaluator = evaluator
        self.archive = archive
        self._champion = champion
        self._diagnosis = diagnosis
        self.advance = advance

    @property
    def champion(self) -> Candidate:
        champ = self._champion()
        assert champ is not None, "proposers run after generation 0"
        return champ

    @property
    def diagnosis(self) -> str:
        return self._diagnosis()

    def evaluate(self, cands: Sequence[Candidate]) -> None:
        """Each candidate on the quick suite, in the sandbox (together, so in parallel)."""
        outs = self.evaluator.evaluate_many(
            [c.source for c in cands], self.cfg.quick, names=[c.id for c in cands]
        )
        for c, out in zip(cands, outs, strict=True):
            apply(c, out)

    def tuned(self, parent: Candidate, slot: Slot, cid: str, island: int) -> Candidate | None:
        """The best of ``tune_trials`` Optuna trials over ``parent``'s PARAMS, or None when
        the parent's own values won (nothing new) or every trial failed."""
        trial_no = itertools.count()
        trials = tune(
            parent.source,
            # Task runs named after the candidate and trial (what the Prefect UI lists).
            lambda srcs: self.evaluator.evaluate_many(
                srcs, self.cfg.quick, names=[f"{cid}-trial{next(trial_no)}" for _ in srcs]
            ),
            trials=self.cfg.tune_trials,
            seed=slot.rng("tune").randrange(2**31),
            batch=max(1, self.cfg.parallel),
        )
        ok = [t for t in trials if t.outcome.ok]
        if not ok:
            return None
        best = max(ok, key=lambda t: t.outcome.objective or -math.inf)  # first of equals
        c = new_candidate(cid, best.source, slot.generation, island, "tune", (parent.id,))
        if c.ast_hash == parent.ast_hash or c.ast_hash in self.archive.known_hashes():
            return None  # the parent's own values won: nothing new
        c.params = dict(best.params)
        c.tuning = [t.outcome.objective if t.outcome.ok else math.nan for t in trials]
        # Every trial's sandbox time is this candidate's; ``apply`` adds the winner's.
        c.eval_s = sum(t.outcome.wall_s for t in trials if t is not best)
        apply(c, best.outcome)
        return c

    def tunable(self, c: Candidate) -> bool:
        return self.cfg.tune_trials > 0 and bool(read_params(c.source))

    def improves(self, c: Candidate, parent: Candidate) -> bool:
        return c.ok and (c.quick or -math.inf) > (parent.quick or -math.inf) + self.cfg.min_gain


def new_candidate(
    cid: str, source: str, g: int, island: int, origin: str, parents: tuple[str, ...] = ()
) -> Candidate:
    return Candidate(
        id=cid,
        source=source,
        sha256=sha256_text(source),
        ast_hash=normalised_hash(source),
        generation=g,
        island=island,
        origin=origin,
        parent_ids=parents,
    )


def apply(c: Candidate, out: Outcome) -> None:
    """A sandbox outcome onto its candidate: the score and descriptors, or the rejection."""
    c.eval_s += out.wall_s
    if not out.ok:
        c.rejection, c.stage = out.reason or "rejected", out.stage
        return
    c.quick = out.objective
    c.quick_by_scenario = out.by_scenario
    c.descriptors = descriptors_of(out.summaries, c.source)
    c.cell = cell_of(c.descriptors)
    c.results = out.results


class Mix:
    """Several search proposers sharing the search slots, drawn by weight with the slot's
    own random stream (so a rerun or a resume draws the same)."""

    kind = "mix"

    def __init__(self, members: Sequence[tuple[Proposer, float]]) -> None:
        if not members or any(w < 0 for _, w in members) or sum(w for _, w in members) <= 0:
            raise ValueError("a Mix needs members with non-negative weights, one positive")
        self.members = list(members)
        self.counters = Counters()

    def bind(self, shop: Workshop) -> None:
        for p, _ in self.members:
            p.bind(shop)

    def fill(self, slot: Slot) -> Fill:
        rng = slot.rng("mix")
        x = rng.random() * sum(w for _, w in self.members)
        for p, w in self.members:
            x -= w
            if x < 0:
                return p.fill(slot)
        return self.members[-1][0].fill(slot)

    def report(self) -> dict[str, Any]:
        return {p.kind: p.report() for p, _ in self.members}

    def close(self) -> None:
        for p, _ in self.members:
            p.close()

    def parts(self) -> list[Proposer]:
        return [p for p, _ in self.members]
