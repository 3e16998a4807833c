"""The proposer seam: slots, counters, and search proposers sharing slots by weight."""

from __future__ import annotations

import pytest

from flows.evolution.proposals import STAGES, Counters, Fill, Mix, Slot


class Recorder:
    """A search proposer that takes every slot it is given and remembers which."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.counters = Counters()
        self.slots: list[str] = []

    def bind(self, shop) -> None:
        pass

    def fill(self, slot: Slot) -> Fill:
        self.slots.append(slot.id)
        self.counters.note(slot.id, "proposed")
        return Fill(took=True)

    def report(self) -> dict[str, int]:
        return self.counters.counts()

    def close(self) -> None:
        pass


def test_a_mix_shares_slots_by_weight_and_draws_the_same_on_a_rerun():
    def draw() -> tuple[list[str], list[str]]:
        tune, structure = Recorder("tune"), Recorder("structure")
        mix = Mix([(tune, 1.0), (structure, 3.0)])
        for g in range(1, 51):
            for s in range(4):
                assert mix.fill(Slot(g, s, s % 2, seed=7)).took
        assert mix.report() == {"tune": tune.report(), "structure": structure.report()}
        return tune.slots, structure.slots

    first = draw()
    assert first == draw()  # the slot's own random stream decides
    assert 0.15 < len(first[0]) / 200 < 0.35 and len(first[0]) + len(first[1]) == 200


def test_a_mix_needs_a_positive_weight():
    with pytest.raises(ValueError, match="weights"):
        Mix([(Recorder("a"), 0.0)])
    with pytest.raises(ValueError, match="weights"):
        Mix([])


def test_counters_count_each_proposal_once_per_stage():
    c = Counters()
    c.note("q0001", "proposed", "parsed")
    c.note("q0001", "parsed", "contract_ok")  # its repair round got further
    c.note("q0002", "proposed")
    assert c.counts() == dict.fromkeys(STAGES, 0) | {"proposed": 2, "parsed": 1, "contract_ok": 1}


def test_slot_streams_are_those_the_optuna_only_run_always_used():
    import random

    slot = Slot(3, 2, 0, seed=5)
    assert slot.id == "g003-s002"
    assert slot.rng().random() == random.Random("5/3/2").random()
    assert slot.rng("tune").random() == random.Random("5/3/2/tune").random()
