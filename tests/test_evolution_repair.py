"""Mechanical repairs and the contract check before any sandbox (``flows.evolution.repair``)."""

from __future__ import annotations

import pytest

from flows.evolution.repair import contract_error, repair, undefined_names
from serving.policy_loader import PolicyError, builtin_source, load_policy

# What Qwen2.5-Coder-0.5B was measured to get wrong: a PARAMS entry without its global,
# a reversed (empty) range, a value outside its range, contract names not imported.
BROKEN = """\
PARAMS = {"W": Param(10.0, 0.0), "K": Param(1, 8, integer=True), "Z": Param(0.1, 10.0, log=True)}
W = 12.0
Z = 0.5


def route(request, replicas, now):
    serving = [r for r in replicas if r.state == "serving"]
    if not serving:
        return HOLD
    return min(serving, key=lambda r: r.inflight_requests + W * r.waiting + K * math.log(Z)).id
"""


def test_the_broken_module_does_not_load_as_it_is():
    with pytest.raises(PolicyError):
        load_policy(BROKEN)


def test_repair_makes_it_load_and_says_what_it_did():
    fixed, notes = repair(BROKEN)
    assert contract_error(fixed) is None
    loaded = load_policy(fixed)  # trusted here: the test wrote it
    assert loaded.params == {"W": 10.0, "K": 4, "Z": 0.5}
    text = " | ".join(notes)
    assert "PARAMS['W']: reversed range swapped" in text
    assert "W = 12.0 moved into its range: 10.0" in text
    assert "PARAMS['K']: module global added at the range's default" in text
    assert "import math" in text and "from serving.contract import HOLD, Param" in text


def test_a_log_range_default_is_its_geometric_middle():
    src = (
        "from serving.contract import HOLD, Param\nPARAMS = {'A': Param(1.0, 100.0, log=True)}\n"
        "def route(request, replicas, now):\n    return HOLD\n"
    )
    fixed, _ = repair(src)
    assert load_policy(fixed).params["A"] == pytest.approx(10.0)


def test_nothing_to_repair_leaves_a_baseline_byte_for_byte():
    for name in ("least_outstanding", "llmd_weighted", "threshold_autoscaler"):
        src = builtin_source(name)
        assert repair(src) == (src, []) and contract_error(src) is None


@pytest.mark.parametrize(
    "source, why",
    [
        (
            "def route(request, replicas, now):\n    return helper(replicas)\n",
            "line 2: NameError: name 'helper' is not defined",
        ),
        ("import os\ndef route(request, replicas, now):\n    return 0\n", "import of 'os'"),
        ("def route(request, replicas, now)\n    return 0\n", "SyntaxError"),
        (
            "PARAMS = {'A': Param(0, 1)}\nfrom serving.contract import Param\n"
            "def route(request, replicas, now):\n    return 0\n",
            "no module global A",
        ),
        (
            "from serving.contract import Param\nPARAMS = {'A': Param(0, 1, log=True)}\nA = 1\n"
            "def route(request, replicas, now):\n    return 0\n",
            "log-scaled Param needs low > 0",
        ),
    ],
)
def test_contract_errors_are_one_line_and_name_the_problem(source, why):
    err = contract_error(source)
    assert err is not None and why in err and "\n" not in err


def test_undefined_names_know_python_scoping():
    src = """\
from serving.contract import HOLD
_count = 0


def _helper(xs):
    return [x for x in xs if x]


def route(request, replicas, now):
    global _count
    _count += 1
    best = lambda r: r.waiting  # noqa: E731
    try:
        pick = min(_helper(replicas), key=best)
    except ValueError as e:
        del e
        return HOLD
    def inner():
        return pick.id + missing_one
    return inner()
"""
    assert undefined_names(src) == ["missing_one"]
