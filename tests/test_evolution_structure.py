"""Structural search: compositions of kit pieces, rendered as policies, searched by Optuna."""

from __future__ import annotations

import dataclasses
import json
import random

import optuna
import pytest
from evolution_support import MICRO, config
from sandbox_support import process_backend
from test_scenarios import needs_traces

from flows.evolution import composition
from flows.evolution.composition_source import render
from flows.evolution.responses import bake_params
from flows.evolution.run import run_evolution
from flows.evolution.structure import BASELINE_COMPOSITIONS, StructureProposer
from sandbox.scenarios import build_scenario
from sandbox.simulator import simulate
from sandbox.static_checks import check_source
from serving.policy_loader import builtin_policy, load_policy


def _sampled(n: int, seed: int = 0) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(composition.suggest(trial))
        study.tell(trial, 0.0)
    return out


def test_every_composition_renders_a_policy_that_passes_the_checks() -> None:
    rng = random.Random(3)
    genes = _sampled(40)
    genes += [composition.mutate(g, rng, 3) for g in genes]
    genes += [composition.crossover(a, b) for a, b in zip(genes, reversed(genes), strict=True)]
    for g in genes:
        src = render(g)
        assert check_source(src) == [], src
        load_policy(src, name="composed")  # imports and meets the contract


def test_a_rendered_module_carries_its_composition_and_tuned_constants() -> None:
    for g in _sampled(20, seed=1):
        src = render(g)
        assert composition.parse(src) == composition.normalised(g)
        names = composition.active(g)
        if not names:
            continue
        lo = {n: (composition.INTS[n][0] if n in composition.INTS else composition.FLOATS[n][0])
              for n in names}  # fmt: skip
        tuned = bake_params(src, lo)  # what Optuna tuning does to a child
        assert {n: composition.parse(tuned)[n] for n in names} == lo


def test_parse_refuses_what_is_not_a_composition() -> None:
    assert composition.parse("def route(request, replicas, now):\n    return 0\n") is None
    assert composition.parse("# kit-composition: {not json}\n") is None
    assert composition.parse('# kit-composition: ["a list"]\n') is None


def test_genes_out_of_range_or_unknown_are_brought_back() -> None:
    g = composition.normalised(
        {"filter": "sheddable", "FILTER_MAX_KV": 7.0, "FILTER_MAX_WAITING": -3, "picker": "x",
         "use_inflight": False, "reschedule": "threshold", "signal": "utilization"}
    )  # fmt: skip
    assert g["FILTER_MAX_KV"] == 1.0 and g["FILTER_MAX_WAITING"] == 0
    assert g["picker"] == "argmin"
    assert g["use_inflight"] is True  # no scorer on: least outstanding
    assert {"UP_UTIL", "DOWN_UTIL", "UP_TICKS"} <= set(g)
    assert "UP_QUEUE" not in g  # another signal's constants are not genes of this one


def test_crossover_grafts_one_reschedule_onto_another_route() -> None:
    route_from = composition.normalised({"prefix_gate": True, "use_prefix_miss": True})
    plan_from = composition.normalised(BASELINE_COMPOSITIONS[3])
    child = composition.crossover(route_from, plan_from)
    assert child["prefix_gate"] and child["use_prefix_miss"]
    assert child["reschedule"] == "threshold" and child["signal"] == "saturation"


@needs_traces
@pytest.mark.parametrize(
    ("genes", "baseline"),
    [
        (BASELINE_COMPOSITIONS[0], "least_outstanding"),
        (BASELINE_COMPOSITIONS[1], "llmd_weighted"),
        (BASELINE_COMPOSITIONS[3], "threshold_autoscaler"),
    ],
)
def test_the_seed_compositions_decide_as_the_baselines_they_restate(genes, baseline) -> None:
    scenario = build_scenario("gpu-loss", 0, split="train")
    # Decision time is charged to virtual time, and a composition spends more of it: with
    # none charged, the same decisions must give the same run.
    scenario = dataclasses.replace(
        scenario, cluster=dataclasses.replace(scenario.cluster, decision_time_factor=0.0)
    )
    mine = simulate(scenario, load_policy(render(genes), name="composed"), seed=0).summary()
    theirs = simulate(scenario, builtin_policy(baseline), seed=0).summary()
    assert mine == theirs


@pytest.mark.slow
def test_structural_search_composes_children_in_an_evolution(tmp_path) -> None:
    process_backend().close()
    cfg = config(None, generations=2, population=2, quick=MICRO, structure_share=1.0)
    summary = run_evolution(cfg, tmp_path / "run")
    report = summary["proposers"]["structure"]
    assert report["proposed"] == 4
    assert report["evaluated"] >= 1
    archive = json.loads((tmp_path / "run" / "archive.json").read_text())
    assert any(c["origin"] == "structure" for c in archive["candidates"].values())
    # The same seed asks the same compositions: a second run ends where the first did.
    again = run_evolution(cfg, tmp_path / "again")
    assert again["best_objective"] == summary["best_objective"]
    assert again["proposers"] == summary["proposers"]


def test_the_proposer_starts_from_the_baselines() -> None:
    p = StructureProposer(seed=0)
    first = [composition.suggest(p.study.ask()) for _ in BASELINE_COMPOSITIONS]
    assert first == [composition.normalised(g) for g in BASELINE_COMPOSITIONS]
