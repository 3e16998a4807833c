"""The policy loader: validation messages, overrides, independence of loads."""

from __future__ import annotations

import hashlib
import textwrap

import pytest

from serving.contract import Param, ReplicaView, Request
from serving.policy_loader import (
    BUILTIN_POLICIES,
    LoadedPolicy,
    PolicyError,
    builtin_policy,
    builtin_source,
    load_policy,
    load_policy_file,
)

GOOD = textwrap.dedent(
    """
    '''A counter policy: cycles over replicas.'''
    from serving.contract import HOLD, Param

    PARAMS = {"W": Param(0, 10), "N": Param(1, 5, integer=True)}
    W = 2.5
    N = 3
    _calls = 0

    def route(request, replicas, now):
        global _calls
        _calls += 1
        serving = [r.id for r in replicas if r.state == "serving"]
        return serving[_calls % len(serving)] if serving else HOLD
    """
)


def _replica(i: int) -> ReplicaView:
    return ReplicaView(
        id=i, gpu="H100", tp=1, state="serving", running=0, waiting=0,
        kv_blocks_used=0, kv_blocks_total=100, inflight_requests=0,
        inflight_tokens=0, prefix_overlap_blocks=0, snapshot_age=0.0,
    )  # fmt: skip


REQ = Request(id=0, arrival=0.0, prompt_tokens=10, max_output_tokens=10)


def _error(source: str, **kw: object) -> str:
    with pytest.raises(PolicyError) as info:
        load_policy(source, name="x.py", **kw)  # type: ignore[arg-type]
    msg = str(info.value)
    assert "\n" not in msg  # one-line messages, always
    return msg


def test_good_policy_loads() -> None:
    p = load_policy(GOOD, name="x.py")
    assert isinstance(p, LoadedPolicy)
    assert p.name == "x.py"
    assert p.reschedule is None
    assert dict(p.params) == {"W": 2.5, "N": 3}
    assert p.param_space["N"] == Param(1, 5, integer=True)
    assert p.route(REQ, (_replica(0), _replica(1)), 0.0) in (0, 1)


def test_sha256_is_of_the_source_text() -> None:
    p = load_policy(GOOD)
    assert p.sha256 == hashlib.sha256(GOOD.encode()).hexdigest()
    assert p.source == GOOD
    assert load_policy(GOOD + "\n").sha256 != p.sha256


def test_empty_source() -> None:
    assert _error("") == "policy 'x.py' is empty"
    assert _error("   \n\n") == "policy 'x.py' is empty"


def test_no_route() -> None:
    assert _error("X = 1\n") == "policy 'x.py' does not define route()"


def test_route_wrong_arity() -> None:
    msg = _error("def route(request, replicas):\n    return None\n")
    assert "route must take (request, replicas, now)" in msg
    msg = _error("def route(request, replicas, now, extra):\n    return None\n")
    assert "route must take (request, replicas, now)" in msg


def test_route_extra_defaulted_args_are_fine() -> None:
    load_policy("def route(request, replicas, now, k=1):\n    return None\n")
    load_policy("def route(*args):\n    return None\n")


def test_route_not_callable() -> None:
    assert _error("route = 3\n") == "policy 'x.py': route is not callable"


def test_reschedule_wrong_arity() -> None:
    src = "def route(a, b, c):\n    return None\ndef reschedule(cluster):\n    return None\n"
    assert "reschedule must take (cluster, now)" in _error(src)


def test_syntax_error_names_line() -> None:
    msg = _error("def route(a, b, c):\n    return None\n\nx = (1,\n")
    assert msg.startswith("policy 'x.py' line 4: SyntaxError: ")
    msg = _error("def route(a, b, c):\nreturn None\n")
    assert msg.startswith("policy 'x.py' line 2: IndentationError: ")


def test_import_time_error_names_line() -> None:
    msg = _error("def route(a, b, c):\n    return None\n\nX = 1 / 0\n")
    assert msg == "policy 'x.py' line 4: ZeroDivisionError at import: division by zero"


def test_params_name_missing() -> None:
    src = (
        "from serving.contract import Param\n"
        "PARAMS = {'W': Param(0, 10)}\n"
        "def route(a, b, c):\n    return None\n"
    )
    assert _error(src) == "policy 'x.py': PARAMS['W']: no module global W"


def test_params_value_out_of_range() -> None:
    src = (
        "from serving.contract import Param\n"
        "PARAMS = {'W': Param(0, 10)}\nW = 12\n"
        "def route(a, b, c):\n    return None\n"
    )
    assert _error(src) == "policy 'x.py': PARAMS['W'] = 12 is outside [0, 10]"


def test_params_value_not_numeric() -> None:
    src = (
        "from serving.contract import Param\n"
        "PARAMS = {'W': Param(0, 10)}\nW = 'big'\n"
        "def route(a, b, c):\n    return None\n"
    )
    assert _error(src) == "policy 'x.py': PARAMS['W'] = 'big' is not a number"


def test_params_must_hold_params() -> None:
    src = "PARAMS = {'W': (0, 10)}\nW = 1\ndef route(a, b, c):\n    return None\n"
    assert _error(src) == "policy 'x.py': PARAMS['W'] must be a Param, not tuple"
    src = "PARAMS = [1]\ndef route(a, b, c):\n    return None\n"
    assert _error(src) == "policy 'x.py': PARAMS must be a dict of name -> Param, not list"


def test_integer_param_needs_integer_value() -> None:
    src = (
        "from serving.contract import Param\n"
        "PARAMS = {'N': Param(1, 5, integer=True)}\nN = 2.5\n"
        "def route(a, b, c):\n    return None\n"
    )
    assert _error(src) == "policy 'x.py': PARAMS['N'] = 2.5 is not an integer"


def test_contract_version_mismatch() -> None:
    src = "CONTRACT_VERSION = 99\ndef route(a, b, c):\n    return None\n"
    assert _error(src) == (
        "policy 'x.py': CONTRACT_VERSION 99 does not match the router's 1"
    )
    load_policy("CONTRACT_VERSION = 1\ndef route(a, b, c):\n    return None\n")


def test_override_rebinds_globals() -> None:
    p = load_policy(GOOD, params={"W": 7, "N": 5.0})
    assert p.module.W == 7.0 and isinstance(p.module.W, float)
    assert p.module.N == 5 and isinstance(p.module.N, int)  # integer Param -> int
    assert dict(p.params) == {"W": 7.0, "N": 5}


def test_override_out_of_range() -> None:
    assert _error(GOOD, params={"W": 12}) == "policy 'x.py': params['W'] = 12 is outside [0, 10]"
    assert _error(GOOD, params={"W": float("nan")}).endswith("is not a finite number")
    assert _error(GOOD, params={"N": 2.5}) == "policy 'x.py': params['N'] = 2.5 is not an integer"
    assert _error(GOOD, params={"W": True}) == "policy 'x.py': params['W'] = True is not a number"


def test_override_unknown_name() -> None:
    assert _error(GOOD, params={"Q": 1}) == "policy 'x.py': params['Q']: not in PARAMS"


def test_params_view_is_read_only() -> None:
    p = load_policy(GOOD)
    with pytest.raises(TypeError):
        p.params["W"] = 3  # type: ignore[index]
    with pytest.raises(AttributeError):
        p.name = "other"  # type: ignore[misc]


def test_two_loads_do_not_share_state() -> None:
    a = load_policy(GOOD)
    b = load_policy(GOOD)
    assert a.module is not b.module
    reps = (_replica(0), _replica(1))
    for _ in range(5):
        a.route(REQ, reps, 0.0)
    assert a.module._calls == 5
    assert b.module._calls == 0
    c = a.with_params({"W": 1})
    assert c.module._calls == 0 and c.params["W"] == 1.0 and c.params["N"] == 3


def test_load_policy_file(tmp_path) -> None:
    f = tmp_path / "mine.py"
    f.write_text(GOOD)
    p = load_policy_file(f, params={"W": 0})
    assert p.name == "mine.py" and p.params["W"] == 0.0
    with pytest.raises(PolicyError, match="not found"):
        load_policy_file(tmp_path / "absent.py")


def test_builtins_load_through_the_same_loader() -> None:
    assert len(BUILTIN_POLICIES) == 11
    for name in BUILTIN_POLICIES:
        p = builtin_policy(name)
        assert p.name == name
        assert p.sha256 == hashlib.sha256(builtin_source(name).encode()).hexdigest()
    with pytest.raises(PolicyError, match="no builtin policy 'nope'"):
        builtin_policy("nope")


def test_traceback_shows_policy_source() -> None:
    p = load_policy("def route(a, b, c):\n    raise RuntimeError('boom')\n", name="bad.py")
    import traceback

    with pytest.raises(RuntimeError) as info:
        p.route(REQ, (), 0.0)
    text = "".join(traceback.format_exception(info.value))
    assert "raise RuntimeError('boom')" in text and "bad.py" in text


def test_policy_may_define_dataclasses() -> None:
    # Evolved policies often keep state in a dataclass; with postponed annotations
    # @dataclass needs the module in sys.modules while the class is created.
    src = textwrap.dedent(
        """
        from __future__ import annotations
        from dataclasses import dataclass

        @dataclass
        class State:
            calls: int = 0

        _state = State()

        def route(request, replicas, now):
            _state.calls += 1
            return None
        """
    )
    import sys

    before = set(sys.modules)
    p = load_policy(src)
    p.route(REQ, (), 0.0)
    assert p.module._state.calls == 1
    assert set(sys.modules) == before  # nothing left registered
