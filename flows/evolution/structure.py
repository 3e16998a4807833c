"""Structural search: new policies composed from the kit, without an LLM.

``StructureProposer`` keeps one Optuna study over compositions for the whole run
(conditional TPE: a scorer's weight is searched only while the scorer is on; see
``composition``). It starts from the compositions that restate the hand-written
baselines, so search begins where an operator would. Each slot it takes makes
``tune_trials`` compositions, evaluated ``parallel`` at a time on the quick suite:

- most are asked of TPE, which learns from every evaluation of the run;
- a share (``MUTATE_SHARE``, once the archive holds compositions) are children of
  archived compositions, on the slot's island first: a mutation (one to three genes)
  or, with another archived composition, a crossover (one's ``route``, the other's
  ``reschedule``). They go to TPE as enqueued trials, so it learns from them too.

The best of the slot's compositions is its child (a readable module, archived and
registered like any candidate); the others are told to TPE and dropped. A study
seeded with the run's seed asks the same compositions when a killed run resumes,
and the journal answers their evaluations.
"""

from __future__ import annotations

import logging
import math
import random
import warnings
from typing import Any

import optuna

from flows.evolution import composition
from flows.evolution.cascade import Outcome
from flows.evolution.composition_source import render
from flows.evolution.proposals import Counters, Fill, Slot, Workshop, apply, new_candidate
from flows.evolution.tuning import FAILED_VALUE

optuna.logging.set_verbosity(logging.WARNING)
# ``group=True`` (TPE over conditional spaces by the parameters trials share) is marked
# experimental; it is what a space where genes come and go needs.
warnings.filterwarnings(
    "ignore", message=".*``group``.*", category=optuna.exceptions.ExperimentalWarning
)
log = logging.getLogger(__name__)

MUTATE_SHARE = 0.4
"""Of a slot's compositions, the share made from archived ones (mutation, crossover)."""
CROSSOVER_SHARE = 0.3
"""Of those, the share that are crossovers (when two compositions are archived)."""

_LEAST_OUTSTANDING = {"use_inflight": True}
BASELINE_COMPOSITIONS: tuple[dict[str, Any], ...] = (
    _LEAST_OUTSTANDING,
    # llm-d's weighted scorer: sheddable filter, queue 2 + KV 2 + prefix 3, random ties.
    {"filter": "sheddable", "FILTER_MAX_WAITING": 5, "FILTER_MAX_KV": 0.8,
     "use_waiting": True, "W_WAITING": 2.0, "use_kv_use": True, "W_KV_USE": 2.0,
     "use_prefix_miss": True, "W_PREFIX_MISS": 3.0, "picker": "argmin_random"},
    # SGLang's cache-aware router with session homes (prefix_affinity).
    {"prefix_gate": True, "PREFIX_MIN_RATIO": 0.5, "BALANCE_ABS_GAP": 32,
     "BALANCE_REL_GAP": 1.1, "session": True, "SESSION_LOAD_FACTOR": 1.25,
     "use_inflight": True, "use_kv_use": True, "W_KV_USE": 0.01},
    # The HPA-style threshold autoscaler.
    {**_LEAST_OUTSTANDING, "reschedule": "threshold", "signal": "saturation",
     "UP_QUEUE": 5.0, "UP_KV": 0.8, "DOWN_QUEUE": 0.5, "DOWN_KV": 0.4, "UP_TICKS": 2,
     "DOWN_TICKS": 12, "COOLDOWN_S": 30.0, "MIN_REPLICAS": 1},
)  # fmt: skip
"""The baselines restated as compositions: the study's first trials."""


class StructureProposer:
    kind = "structure"

    def __init__(self, seed: int = 0) -> None:
        self.counters = Counters()
        self.shop: Workshop | None = None
        sampler = optuna.samplers.TPESampler(
            seed=seed,
            multivariate=True,
            group=True,
            n_startup_trials=8,
        )
        self.study = optuna.create_study(direction="maximize", sampler=sampler)
        for genes in BASELINE_COMPOSITIONS:
            self.study.enqueue_trial(composition.normalised(genes))

    def bind(self, shop: Workshop) -> None:
        self.shop = shop

    def fill(self, slot: Slot) -> Fill:
        shop = self.shop
        assert shop is not None, "bind() first"
        rng = slot.rng("structure")
        self.counters.note(slot.id, "proposed")
        values: list[float] = []  # every composition's objective, in the order asked
        best: tuple[str, Outcome] | None = None
        spent = 0.0  # sandbox seconds of every composition the slot made
        n = max(1, shop.cfg.tune_trials)
        trial_no = 0
        while trial_no < n:
            batch = min(max(1, shop.cfg.parallel), n - trial_no)
            asked = [self._ask(slot, rng) for _ in range(batch)]
            sources = [render(g) for _, g in asked]
            names = [f"{slot.id}-compose{trial_no + i}" for i in range(batch)]
            outs = shop.evaluator.evaluate_many(sources, shop.cfg.quick, names=names)
            for (trial, _), src, out in zip(asked, sources, outs, strict=True):
                value = out.objective if out.ok and out.objective is not None else FAILED_VALUE
                self.study.tell(trial, value)
                values.append(value)
                spent += out.wall_s
                if out.ok and (best is None or value > best[1].objective):
                    best = (src, out)
            trial_no += batch
            shop.advance("composed")
        if best is None:
            return Fill(took=True)
        src, out = best
        child = new_candidate(slot.id, src, slot.generation, slot.island, "structure")
        if child.ast_hash in shop.archive.known_hashes():
            return Fill(took=True)  # the best was one already archived: nothing new
        self.counters.note(slot.id, "parsed", "contract_ok", "unique", "evaluated")
        child.tuning = [v if v != FAILED_VALUE else math.nan for v in values]
        # Every composition's sandbox time is this child's, as tuning charges its trials;
        # ``apply`` adds the winner's own.
        child.eval_s = spent - out.wall_s
        apply(child, out)
        if shop.improves(child, shop.champion):
            self.counters.note(slot.id, "improving")
        return Fill([child], took=True)

    def _ask(self, slot: Slot, rng: random.Random) -> tuple[optuna.Trial, dict[str, Any]]:
        """A trial: TPE's, or one enqueued from an archived composition."""
        assert self.shop is not None
        elites = self._archived(slot.island)
        if elites and rng.random() < MUTATE_SHARE:
            genes = rng.choice(elites)
            if len(elites) > 1 and rng.random() < CROSSOVER_SHARE:
                other = rng.choice([e for e in elites if e is not genes])
                genes = composition.crossover(genes, other)
            else:
                genes = composition.mutate(genes, rng, rng.choice((1, 2, 3)))
            self.study.enqueue_trial(genes)
        trial = self.study.ask()
        return trial, composition.suggest(trial)

    def _archived(self, island: int) -> list[dict[str, Any]]:
        assert self.shop is not None
        archive = self.shop.archive
        found = [g for c in archive.elites(island) if (g := composition.parse(c.source))]
        return found or [g for c in archive.elites() if (g := composition.parse(c.source))]

    def report(self) -> dict[str, int]:
        return self.counters.counts()

    def close(self) -> None:
        pass
