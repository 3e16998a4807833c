"""Tamper detection over the trusted modules, on the simulator's two halves."""

from __future__ import annotations

import sandbox.simulator as simulator
from sandbox.integrity import snapshot, tampered
from sandbox.sim_cluster import ClusterSide


def test_untouched_code_is_not_tampered():
    assert tampered(snapshot()) is None


def test_replacing_a_cluster_side_method_is_caught(monkeypatch):
    before = snapshot()
    monkeypatch.setattr(ClusterSide, "_apply", lambda self, plan: None)
    assert tampered(before) == (
        "policy tampered with trusted code: sandbox.sim_cluster.ClusterSide._apply was replaced"
    )


def test_shadowing_an_inherited_method_is_caught():
    before = snapshot()
    simulator.Simulation._apply = lambda self, plan: None  # hides ClusterSide._apply
    try:
        assert tampered(before) == (
            "policy tampered with trusted code: sandbox.simulator.Simulation._apply was added"
        )
    finally:
        del simulator.Simulation._apply
    assert tampered(before) is None


def test_replacing_a_request_path_method_is_caught(monkeypatch):
    before = snapshot()
    monkeypatch.setattr(simulator.Simulation, "_decide", lambda self, r, v, n: 0)
    assert "sandbox.simulator.Simulation._decide was replaced" in tampered(before)
