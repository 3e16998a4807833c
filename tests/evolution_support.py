"""Shared pieces of the evolution tests: a tiny config, scripted candidates, a runner.

The micro suite (``sandbox-micro``: 60 requests, 2 replicas, well below capacity) runs in
a fraction of a second per sandbox, and every sensible policy meets the SLO there, so
objectives are exactly equal after quantisation: what the tests compare is the engine's
own determinism, not the simulator's.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from llm_double import fenced

from flows.evolution.config import Budget, EvolutionConfig, LLMConfig, ModelChoice, Suite
from serving.policy_loader import builtin_source

MICRO = Suite(("sandbox-micro",), (0,), 1.0)
LO = builtin_source("least_outstanding")
PICK = "kit.least_inflight(request, replicas)"  # what the seed's answers edit
PICK_LINE = next(line for line in LO.splitlines() if PICK in line)

GOOD_A = LO.replace(PICK, "kit.argmin(replicas, kit.inflight_tokens(request, replicas))")
GOOD_B = LO.replace(
    PICK, "kit.argmin(replicas, kit.waiting(request, replicas), kit.kv_use(request, replicas))"
)
assert LO != GOOD_A != GOOD_B != LO
HOSTILE = {
    "escape": "import os\n\ndef route(request, replicas, now):\n"
    "    os.system('id')\n    return 0\n",
    "dunder": "def route(request, replicas, now):\n"
    "    return ().__class__.__bases__[0].__subclasses__()\n",
    "loop": "def route(request, replicas, now):\n    while True:\n        pass\n",
    "bad_id": "def route(request, replicas, now):\n    return 12345\n",
    "raises": "def route(request, replicas, now):\n    raise RuntimeError('boom')\n",
}


ROUTE_BY_TOKENS = (
    "def route(request, replicas, now):\n"
    "    serving = [r for r in replicas if r.state == 'serving']\n"
    "    if not serving:\n"
    "        return HOLD\n"
    "    return min(serving, key=lambda r: (r.inflight_tokens + TOKEN_SLACK, r.id)).id\n"
)


def sr(search: str, replace: str) -> str:
    return f"<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"


def request_of(user: str) -> tuple[int, str]:
    """``q0007`` -> (7, ""), ``q0007/repair`` -> (7, "/repair"), ``q0007r`` -> (7, "r")."""
    m = re.match(r"q(\d+)(.*)", user)
    return (int(m.group(1)), m.group(2)) if m else (0, "")


def menu() -> list[tuple[list[dict], list[dict]]]:
    """Per request: its answer, then the answer to its repair round (pre-sandbox or after)."""
    good_fn = "Use tokens:\n```python\n" + ROUTE_BY_TOKENS + "```\n"
    udiff = (
        "```diff\n--- a/policy.py\n+++ b/policy.py\n@@ -1,1 +1,1 @@\n"
        f"-{PICK_LINE}\n"
        "+    return kit.argmin(replicas, kit.prefix_miss(request, replicas))\n```\n"
    )
    no_global = (
        "```python\nfrom serving.contract import HOLD, Param\n"
        "PARAMS = {'SPREAD': Param(4.0, 1.0)}\n\n"
        "def route(request, replicas, now):\n"
        "    serving = [r for r in replicas if r.state == 'serving']\n"
        "    if not serving:\n        return HOLD\n"
        "    return min(serving, key=lambda r: (r.waiting * SPREAD + r.inflight_requests, r.id)).id"
        "\n```\n"
    )
    broken = "```python\ndef route(request, replicas, now)\n  return 0\n```"
    # With one answer per slot, a repair round takes a slot's turn too: the first twelve
    # answers (three generations of four) meet every kind of failure.
    return [
        ([{"content": fenced(HOSTILE["escape"])}], [{"content": fenced(HOSTILE["escape"])}]),
        ([{"content": fenced(HOSTILE["loop"])}], [{"content": fenced(GOOD_B)}]),
        ([{"raw": "<html>502</html>"}], []),
        ([{"content": fenced(HOSTILE["raises"])}], [{"content": fenced(HOSTILE["raises"])}]),
        ([{"status": 503}], []),
        ([{"content": broken}], [{"content": broken}]),
        ([{"content": fenced(HOSTILE["bad_id"])}], [{"content": fenced(HOSTILE["bad_id"])}]),
        ([{"content": good_fn}], []),  # TOKEN_SLACK undefined: defined in the repair round
        ([{"content": no_global}], []),  # repaired mechanically: range swapped, global added
        ([{"status": 429}, {"content": fenced(GOOD_A)}], []),
        ([{"content": udiff}], []),
        ([{"content": fenced(LO)}], [{"content": fenced(LO)}]),  # a copy, twice
    ]


def script():
    """Answers by request number (``q0007`` and its repair rounds), whatever the call order."""
    table = menu()
    slack = "TOKEN_SLACK = 0.5\n\n" + ROUTE_BY_TOKENS

    def steps(user: str) -> list[dict]:
        n, suffix = request_of(user)
        first, repair = table[n % len(table)]
        if not suffix:
            return first
        if n % len(table) == 7:  # the undefined TOKEN_SLACK, defined in the repair round
            return [{"content": f"```python\n{slack}```"}]
        return repair or first

    return steps


def config(
    url: str | None, *, generations=3, population=4, budget: Budget | None = None, seed=0, **kw
) -> EvolutionConfig:
    """The micro suite; with an LLM, every slot waits for one answer (``llm_wait_s`` None), so
    a run does not depend on how fast the double answers."""
    llm = (
        LLMConfig(
            base_url=url,
            models=(ModelChoice("double", 2.0, 1.0, 2.0), ModelChoice("double-b", 1.0)),
            max_retries=2,
            backoff_s=0.01,
            timeout_s=10,
        )
        if url
        else LLMConfig()
    )
    base = dict(
        quick=MICRO,
        full=None,
        generations=generations,
        population=population,
        islands=2,
        migrate_every=1,
        seed=seed,
        seeds_policies=("least_outstanding", "power_of_two", "llmd_weighted"),
        tune_trials=2,
        eval_wall_s=5.0,
        llm=llm,
        budget=budget or Budget(),
        llm_wait_s=None,
        # The loop's tests are about the LLM and tuning; structural search has its own
        # (test_evolution_structure.py) and is switched on there.
        structure_share=0.0,
    )
    return EvolutionConfig(**{**base, **kw})


VOLATILE = (
    "evaluations_per_hour",
    "wall_s",
    "journal_hits",
    "resumed",
    "run_dir",
    "sandbox_evaluations",
    "mlflow_run_id",
)


def stable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in VOLATILE}


def run(cfg, run_dir, **kw) -> tuple[dict, dict]:
    """One evolution through the real entry point; its summary and archive."""
    from flows.evolution.run import run_evolution

    summary = run_evolution(cfg, run_dir, **kw)
    return summary, json.loads((Path(run_dir) / "archive.json").read_text())


if __name__ == "__main__":  # run by the kill/resume test in a child process
    from llm_double import LLMDouble

    with LLMDouble(script()) as d:
        run(config(d.url), Path(sys.argv[1]))
