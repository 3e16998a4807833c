"""The demo's honest parts: the starting champion and the verdict, without a live run."""

from __future__ import annotations

from flows.demo_report import verdict, verdict_line
from flows.demo_traffic import DemoConfig, best_baseline, traffic_scenario
from serving.policy_loader import BUILTIN_POLICIES


def test_starting_champion_is_the_best_baseline_on_the_pre_shift_traffic() -> None:
    cfg = DemoConfig()
    conv = traffic_scenario("conv", cfg.conv_rate, cfg.conv_s, cfg.seed)
    code = traffic_scenario("code", cfg.code_rate, cfg.code_s, cfg.seed)
    assert len(conv.workload) > 50 and len(code.workload) > 500
    assert code.workload.prompt_tokens.mean() > conv.workload.prompt_tokens.mean()
    name, scores = best_baseline(code)
    assert set(scores) == set(BUILTIN_POLICIES)
    assert scores[name] == max(scores.values())
    assert scores[name] > scores["round_robin"]  # the unequal fleet punishes load-blindness


def test_verdict_says_what_improved_and_what_did_not() -> None:
    before = {
        "slo_attainment": 0.95,
        "ttft_p50_s": 0.16,
        "ttft_p99_s": 1.5,
        "e2e_p50_s": 0.60,
        "e2e_p99_s": 3.4,
    }
    after = {
        "slo_attainment": 0.975,
        "ttft_p50_s": 0.18,
        "ttft_p99_s": 1.9,
        "e2e_p50_s": 0.61,
        "e2e_p99_s": 2.5,
    }
    v = verdict(after, before)
    assert [t.split()[0] for t in v["better"]] == ["slo_attainment", "e2e_p99_s"]
    assert [t.split()[0] for t in v["worse"]] == ["ttft_p50_s", "ttft_p99_s"]
    assert [t.split()[0] for t in v["unchanged"]] == ["e2e_p50_s"]
    line = verdict_line("after vs before", v)
    assert "better: slo_attainment 0.950 -> 0.975" in line and "worse: ttft_p50_s" in line
    missing = verdict(None, before)
    assert len(missing["missing"]) == 5 and not missing["better"]
