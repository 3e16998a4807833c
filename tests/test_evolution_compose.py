"""An LLM asked for a composition: the schema, the answer read back, the loop around it.

The loop tests run a real sandbox and the real ``openai`` client against the scripted
server on loopback (``llm_double``). ``fixtures/qwen05b_compositions.json`` holds answers
the real Qwen2.5-Coder-0.5B gave to the composition prompt with the schema on.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, replace
from pathlib import Path

import optuna
import pytest
from evolution_support import GOOD_A, config
from llm_double import LLMDouble, fenced
from sandbox_support import process_backend

from flows.evolution import compose, composition
from flows.evolution.compose import ComposeError, compose_draft, genes_from_answer, json_schema
from flows.evolution.composition_source import render
from flows.evolution.responses import normalised_hash
from flows.evolution.run import open_evolution
from flows.evolution.structure import BASELINE_COMPOSITIONS
from serving import kit
from serving.policy_loader import load_policy

LEAST = composition.normalised({"use_inflight": True, "W_INFLIGHT": 1.0})
WEIGHTED = composition.normalised(BASELINE_COMPOSITIONS[1])  # llm-d's weighted scorer
REAL = json.loads((Path(__file__).parent / "fixtures" / "qwen05b_compositions.json").read_text())


def _holds(schema: dict, genes: dict) -> list[str]:
    """What of ``genes`` breaks ``schema`` (the subset of JSON Schema it uses)."""
    props = schema["properties"]
    bad = [f"missing {n}" for n in schema["required"] if n not in genes]
    for name, value in genes.items():
        p = props.get(name)
        if p is None:
            bad.append(f"unknown {name}")
        elif "enum" in p and value not in p["enum"]:
            bad.append(f"{name} not in enum")
        elif p["type"] == "boolean" and not isinstance(value, bool):
            bad.append(f"{name} not boolean")
        elif p["type"] in ("number", "integer") and not p["minimum"] <= value <= p["maximum"]:
            bad.append(f"{name} out of range")
        elif p["type"] == "integer" and not isinstance(value, int):
            bad.append(f"{name} not integer")
    return bad


def test_every_composition_meets_the_schema_and_the_schema_admits_nothing_else() -> None:
    schema = json_schema()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5))
    for _ in range(40):
        genes = composition.suggest(study.ask())
        assert _holds(schema, genes) == [], genes
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {*composition.CHOICES, *composition.FLOATS,
                                         *composition.INTS}  # fmt: skip
    assert _holds(schema, {**LEAST, "picker": "fastest"}) == ["picker not in enum"]
    assert _holds(schema, {**LEAST, "W_INFLIGHT": 11.0}) == ["W_INFLIGHT out of range"]


def test_an_answer_is_read_over_its_parent() -> None:
    answer = json.dumps({**{k: LEAST[k] for k in compose.REQUIRED}, "use_kv_use": True,
                         "W_KV_USE": 42.0, "picker": "softmax"})  # fmt: skip
    genes, clipped = genes_from_answer(answer, LEAST)
    assert genes["W_INFLIGHT"] == 1.0  # left out: the parent's value
    assert genes["W_KV_USE"] == 10.0 and clipped == ["W_KV_USE 42.0 clipped into [0.01, 10.0]"]
    assert genes["TEMPERATURE"] == pytest.approx(0.316, abs=1e-3)  # opened: its midpoint
    # The value the prompt showed (rounded) is the parent's, not a change.
    tuned = {**LEAST, "W_INFLIGHT": 1.234567}
    same, _ = genes_from_answer(json.dumps(compose.shown(tuned)), tuned)
    assert same == tuned


@pytest.mark.parametrize(
    "answer, why",
    [
        ("Sure! Here is a better policy: use kv", "not JSON"),
        ("[1, 2]", "JSON list, not an object"),
        ('{"filter": "none", "QUEUE_RATIO": 0.3}', "unknown gene(s) 'QUEUE_RATIO'"),
        ('{"picker": "fastest"}', 'picker is "fastest"; allowed: "argmin"'),
        ('{"session": 1}', "session is 1; allowed: false, true"),
        ('{"W_INFLIGHT": "high"}', 'W_INFLIGHT is "high", not a number'),
    ],
)
def test_what_breaks_the_schema_is_refused_with_its_reason(answer: str, why: str) -> None:
    with pytest.raises(ComposeError, match=None) as e:
        genes_from_answer(answer, LEAST)
    assert why in str(e.value)
    d = compose_draft(answer, LEAST, render(LEAST), frozenset())
    assert d.stage == "parse" and why in d.error


def test_a_draft_is_a_module_unless_it_repeats_its_parent_or_the_archive() -> None:
    parent = render(LEAST)
    answer = json.dumps({**LEAST, "picker": "argmin_random"})
    d = compose_draft(answer, LEAST, parent, frozenset())
    assert d.ok and d.kind == "compose" and d.reached() == ("parsed", "contract_ok", "unique")
    assert composition.parse(d.source) == {**LEAST, "picker": "argmin_random"}
    assert load_policy(d.source).route is not None
    again = compose_draft(answer, LEAST, parent, frozenset({normalised_hash(d.source)}))
    assert again.stage == "duplicate"
    copy = compose_draft(json.dumps(LEAST), LEAST, parent, frozenset())
    assert copy.stage == "copy" and copy.reached() == ("parsed", "contract_ok")


@pytest.mark.parametrize("rec", REAL, ids=[r["id"] for r in REAL])
def test_real_answers_of_the_local_model(rec: dict) -> None:
    parent = composition.normalised(rec["parent"])
    d = compose_draft(rec["answer"], parent, render(parent), frozenset())
    assert (d.stage, d.repairs) == (rec["stage"], rec["repairs"]), d.error
    if d.ok:
        load_policy(d.source)


def test_the_gene_reference_is_read_off_the_kit_and_the_rendered_modules() -> None:
    ref = compose.gene_reference()
    lines = ref.splitlines()
    assert [line.split(":")[0].split(" (")[0][2:] for line in lines] == [
        *(n for n in composition.CHOICES if not n.startswith("use_")),
        *(f"use_{s.name}" for s in composition.SCORERS),
    ]
    for name in [*composition.FLOATS, *composition.INTS]:
        assert name in ref, name
    pieces = set(re.findall(r"kit\.(\w+)", ref))
    assert {"softmax", "session_home", "fill_pool", "slo_risk", "est_ttft"} <= pieces
    assert all(hasattr(kit, p) for p in pieces), pieces
    assert "FILTER_MAX_KV 0.3..1 (limit of kit.kv_at_most)" in ref
    assert "UP_UTIL 0.4..1.5 (load > UP_UTIL)" in ref


def test_the_schema_goes_out_as_response_format_instead_of_the_edit_grammar() -> None:
    from flows.evolution.config import LLMConfig, ModelChoice
    from flows.evolution.proposer import Proposer

    with LLMDouble(lambda u: [{"content": "{}"}]) as d:
        p = Proposer(LLMConfig(base_url=d.url, grammar=True, timeout_s=5))
        p.complete([{"role": "user", "content": "x"}], ModelChoice("m"), seed=1,
                   response_format=compose.response_format())  # fmt: skip
        p.close()
    (body,) = d.calls
    assert "grammar" not in body
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == json_schema()


# ------------------------------------------------------------------ in the loop


@pytest.fixture(scope="module")
def _sandbox():
    process_backend().close()  # skips (or fails, if required) without bubblewrap


def _run(cfg, run_dir, **kw) -> tuple[dict, dict]:
    """One evolution; its summary and its candidates (sources and stages included)."""
    evo = open_evolution(cfg, run_dir, **kw)
    try:
        return evo.run(), {cid: asdict(c) for cid, c in evo.archive.candidates.items()}
    finally:
        evo.close()


def _compose_config(url: str, **kw):
    cfg = config(url, generations=1, islands=1, **kw)
    return cfg.with_(llm=replace(cfg.llm, compose=True, grammar=True))


def test_a_composed_parent_gets_compositions_and_a_bad_answer_is_counted(_sandbox, tmp_path):
    chosen = {**WEIGHTED, "use_inflight": True, "W_INFLIGHT": 0.5}
    answers = {
        "q0000": json.dumps(compose.shown(chosen), indent=1),
        "q0001": "I would turn on the prefix scorer.",  # a server that ignores the schema
        "q0001/repair": json.dumps(compose.shown(WEIGHTED)),  # the parent again: a copy
    }
    # Asked ahead, q0002 is never consumed: three slots, one answer each.
    with LLMDouble(lambda user: [{"content": answers.get(user, "{}")}]) as d:
        s, cands = _run(_compose_config(d.url, population=3), tmp_path / "run",
                        champion=("weighted", render(WEIGHTED)))  # fmt: skip
        calls = {c["user"]: c for c in d.calls}
    assert set(answers) < set(calls)
    for body in calls.values():
        assert body["response_format"]["json_schema"]["schema"] == json_schema()
        assert "grammar" not in body
    assert '"W_PREFIX_MISS": 3.0' in calls["q0000"]["messages"][1]["content"]
    assert "not JSON" in calls["q0001/repair"]["messages"][-1]["content"]
    child = cands["g001-q0000"]
    assert child["rejection"] is None and child["quick"] is not None and child["origin"] == "llm"
    assert composition.parse(child["source"]) == chosen
    bad = cands["g001-q0001"]
    assert "not JSON" in bad["rejection"] and bad["stage"] == "parse"
    assert cands["g001-q0001-repair"]["stage"] == "copy"
    funnel = {"proposed": 2, "parsed": 2, "contract_ok": 2, "unique": 1, "evaluated": 1}
    assert {k: s["llm"]["compose"][k] for k in funnel} == funnel
    assert {k: s["llm"][k] for k in funnel} == funnel
    assert s["llm"]["repair_rounds"] == 1 and s["llm"]["sandbox_repairs"] == 0


def test_without_a_composition_to_start_from_the_llm_still_edits(_sandbox, tmp_path):
    with LLMDouble(lambda user: [{"content": fenced(GOOD_A)}]) as d:
        s, cands = _run(_compose_config(d.url, population=1), tmp_path / "run")
        body = next(c for c in d.calls if c["user"] == "q0000")
    assert "response_format" not in body and "grammar" in body  # the edit format, held
    assert s["llm"]["evaluated"] == 1 and s["llm"]["compose"]["proposed"] == 0
    assert cands["g001-q0000"]["rejection"] is None and cands["g001-q0000"]["source"] == GOOD_A


def test_the_prompt_shows_the_composition_and_what_every_gene_means() -> None:
    from flows.evolution import prompts
    from flows.evolution.proposals import new_candidate

    parent = new_candidate("p", render(WEIGHTED), 1, 0, "structure")
    parent.quick, parent.quick_by_scenario = 0.5, {"bursty-code": 0.5}
    system, user = prompts.compose_messages(
        parent=parent, genes=WEIGHTED, diagnosis="- bursty-code: misses",
        workload="- bursty-code: bursts", rng=random.Random(0),
    )  # fmt: skip
    assert compose.gene_reference() in system["content"]
    assert json.loads(user["content"].split("```json\n")[1].split("```")[0]) == WEIGHTED
    assert "bursty-code 0.5000" in user["content"] and "- bursty-code: misses" in user["content"]
    assert len(system["content"]) + len(user["content"]) < 9000  # ~2.2k tokens


def test_asking_for_compositions_is_part_of_a_runs_identity() -> None:
    plain = config("http://127.0.0.1:1/v1")
    composed = plain.with_(llm=replace(plain.llm, compose=True))
    assert plain.fingerprint != composed.fingerprint  # a resume cannot switch it silently


def test_while_search_composes_the_llm_waits_for_a_composition_to_start_from(_sandbox, tmp_path):
    answer = json.dumps({**LEAST, "picker": "argmin_random", "W_INFLIGHT": 2.0})
    with LLMDouble(lambda user: [{"content": answer}]) as d:
        cfg = _compose_config(d.url, population=1, structure_share=1.0).with_(generations=2)
        s, cands = _run(cfg, tmp_path / "run")
        calls = list(d.calls)
    slots = {}
    for line in (tmp_path / "run" / "journal.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "slot":
            slots[rec["key"]] = rec["consumed"]
    # Nothing asked in generation 1 (no composition yet); generation 2 asks for one.
    assert slots == {"slot/g001-s000": [], "slot/g002-s000": ["q0000"]}
    assert calls and all("response_format" in c for c in calls)
    assert s["llm"]["compose"]["proposed"] == s["llm"]["proposed"] == 1
    parent = cands[cands["g002-q0000"]["parent_ids"][0]]
    assert parent["origin"] == "structure"
