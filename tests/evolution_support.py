"""Shared pieces of the evolution tests: a tiny config, scripted candidates, a runner.

The micro suite (``sandbox-micro``: 60 requests, 2 replicas, well below capacity) runs in
a fraction of a second per sandbox, and every sensible policy meets the SLO there, so
objectives are exactly equal after quantisation: what the tests compare is the engine's
own determinism, not the simulator's.
"""

from __future__ import annotations

import sys
from pathlib import Path

from llm_double import fenced, slot_of

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


def script(population: int):
    """Per slot: a fixed mix of good, diff, broken, hostile, garbage, 429 and 5xx answers."""
    diff = (
        "```diff\n--- a/policy.py\n+++ b/policy.py\n@@ -1,1 +1,1 @@\n"
        f"-{PICK_LINE}\n"
        "+    return kit.argmin(replicas, kit.prefix_miss(request, replicas))\n```\n"
    )
    menu = [
        [{"content": fenced(GOOD_A)}],
        [{"status": 429}, {"content": fenced(GOOD_B)}],
        [{"content": fenced(HOSTILE["escape"])}],
        [{"content": diff}],
        [{"content": fenced(HOSTILE["loop"])}],
        [{"raw": "<html>502</html>"}],
        [{"content": "```python\ndef route(request, replicas, now)\n  return 0\n```"}],
        [{"content": fenced(HOSTILE["dunder"])}],
        [{"status": 503}],
        [{"content": fenced(HOSTILE["bad_id"])}],
        [{"content": fenced(LO)}],  # a duplicate of a seed
        [{"content": fenced(HOSTILE["raises"])}],
        [{"content": "I am sorry, I cannot do that."}],
    ]

    def steps(user: str):
        g, s = slot_of(user)
        return menu[((g - 1) * population + s) % len(menu)]

    return steps


def config(
    url: str | None, *, generations=3, population=4, budget: Budget | None = None, seed=0, **kw
) -> EvolutionConfig:
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


if __name__ == "__main__":  # run by the kill/resume test in a child process
    from llm_double import LLMDouble

    from flows.evolution.engine import Evolution

    run_dir = Path(sys.argv[1])
    with LLMDouble(script(4)) as d:
        evo = Evolution(config(d.url), run_dir)
        try:
            evo.run()
        finally:
            evo.close()
