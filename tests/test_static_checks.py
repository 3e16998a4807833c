"""Static checks: each rule rejects with its own precise reason; the baselines pass."""

import pytest

from sandbox.static_checks import (
    MAX_SOURCE_BYTES,
    StaticCheckError,
    check_source,
    first_violation,
    require_clean,
)
from serving.policy_loader import BUILTIN_POLICIES, builtin_source

ROUTE = "def route(request, replicas, now):\n    return replicas[0].id\n"


@pytest.mark.parametrize("name", BUILTIN_POLICIES)
def test_every_baseline_policy_passes(name):
    assert check_source(builtin_source(name)) == []


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("", "source is empty"),
        ("   \n\n", "source is empty"),
        ("def route(request, replicas, now)\n    return 0\n", "does not parse: SyntaxError"),
        ("x = 1\n", "does not define route(request, replicas, now)"),
        ("import os\n" + ROUTE, "import of 'os' is not allowed"),
        ("import subprocess as sp\n" + ROUTE, "import of 'subprocess' is not allowed"),
        ("from ctypes import CDLL\n" + ROUTE, "import from 'ctypes' is not allowed"),
        ("from . import x\n" + ROUTE, "relative import"),
        ("import importlib\n" + ROUTE, "import of 'importlib' is not allowed"),
        ("x = __import__('os')\n" + ROUTE, "use of '__import__' is not allowed"),
        ("x = __builtins__\n" + ROUTE, "use of '__builtins__' is not allowed"),
        ("x = eval('1')\n" + ROUTE, "use of 'eval' is not allowed"),
        ("exec('1')\n" + ROUTE, "use of 'exec' is not allowed"),
        ("f = open('/etc/passwd')\n" + ROUTE, "use of 'open' is not allowed"),
        ("g = globals()\n" + ROUTE, "use of 'globals' is not allowed"),
        ("x = ().__class__\n" + ROUTE, "dunder attribute '__class__'"),
        ("x = object.__subclasses__()\n" + ROUTE, "dunder attribute '__subclasses__'"),
        ("def f(): pass\nx = f.__globals__\n" + ROUTE, "dunder attribute '__globals__'"),
        ("x = getattr(object, '__subclasses__')\n" + ROUTE, "getattr() with dunder attribute"),
        ("n = 'x'\nx = getattr(object, n)\n" + ROUTE, "computed attribute name"),
        ("g = getattr\n" + ROUTE, "'getattr' is only allowed as a call"),
        ("x = '{0.__class__}'.format(1)\n" + ROUTE, "string literal mentioning '__class__'"),
        ("import random\nx = random._os\n" + ROUTE, "private module attribute 'random._os'"),
        ("import typing\nx = typing.sys\n" + ROUTE, "'typing.sys' is a module"),
        ("import dataclasses\nx = dataclasses.sys\n" + ROUTE, "'dataclasses.sys' is a module"),
        ("from typing import sys\n" + ROUTE, "'typing.sys' is a module"),
        ("import math\nm = math\n" + ROUTE, "may only be used as 'math.<attribute>'"),
        ("def g():\n    yield 1\nx = g().gi_frame\n" + ROUTE, "attribute 'gi_frame'"),
    ],
)
def test_each_rule_has_a_precise_reason(source, reason):
    found = first_violation(source)
    assert found is not None and reason in found, found


def test_size_cap_is_checked_before_parsing():
    big = ROUTE + "#" * (MAX_SOURCE_BYTES + 1)
    assert "over the 256 KB cap" in first_violation(big)


def test_allowed_idioms_pass():
    src = '''
"""A docstring may mention __init__ freely."""
from __future__ import annotations
import math, random, heapq, bisect, statistics, itertools, functools
import collections.abc
from collections import deque, defaultdict
from dataclasses import dataclass
from typing import Optional
from serving.contract import HOLD, Param, Plan, ReplicaSpec

PARAMS = {"alpha": Param(0.0, 1.0)}
alpha = 0.5

@dataclass
class State:
    seen: int = 0
    def __init__(self):
        self.seen = 0

def route(request, replicas, now):
    ok = [r for r in replicas if getattr(r, "state", "") == "serving"]
    if not ok:
        return HOLD
    return min(ok, key=lambda r: (r.inflight_requests + math.log1p(r.waiting), random.random())).id

if __name__ == "__main__":
    pass
'''
    assert check_source(src) == []


def test_require_clean_lists_every_violation():
    with pytest.raises(StaticCheckError) as e:
        require_clean("import os\nimport sys\n" + ROUTE)
    assert len(e.value.violations) == 2
    assert "(and 1 more)" in str(e.value)


def test_deep_nesting_does_not_crash_the_checker():
    src = "x = " + "(" * 5000 + "1" + ")" * 5000 + "\n" + ROUTE
    assert first_violation(src) is not None
