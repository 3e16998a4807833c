"""Search proposers: children without an LLM.

``TuningProposer`` is Optuna over an archived policy's ``PARAMS``: the parent is
drawn uniformly from the slot's island's tunable elites (any island's when that
one has none) and the best of its ``tune_trials`` trials is the child. It always
takes its slot, which is what lets the loop give a slot to search whenever the
LLM has nothing ready. Structural search over the policy kit slots in beside it
(``proposals.Mix``).
"""

from __future__ import annotations

from flows.evolution.proposals import Counters, Fill, Slot, Workshop
from flows.evolution.rundir import EvolutionError
from flows.evolution.tuning import read_params


class TuningProposer:
    kind = "tune"

    def __init__(self) -> None:
        self.counters = Counters()
        self.shop: Workshop | None = None

    def bind(self, shop: Workshop) -> None:
        self.shop = shop

    def fill(self, slot: Slot) -> Fill:
        shop = self.shop
        assert shop is not None, "bind() first"
        rng = slot.rng()
        archive = shop.archive
        tunable = [c for c in archive.elites(slot.island) if read_params(c.source)]
        tunable = tunable or [c for c in archive.elites() if read_params(c.source)]
        if not tunable:
            raise EvolutionError("no archived policy has PARAMS to tune and no LLM is set")
        parent = rng.choice(tunable)
        self.counters.note(slot.id, "proposed")
        child = shop.tuned(parent, slot, slot.id, slot.island)
        shop.advance("tuned")
        if child is None:
            return Fill(took=True)
        self.counters.note(slot.id, "parsed", "contract_ok", "unique", "evaluated")
        if shop.improves(child, parent):
            self.counters.note(slot.id, "improving")
        return Fill([child], took=True)

    def report(self) -> dict[str, int]:
        return self.counters.counts()

    def close(self) -> None:
        pass
