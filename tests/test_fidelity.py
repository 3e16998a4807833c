"""Fidelity benchmark (flows/bench/fidelity.py): held-out error of the refitted step-time model."""

import pytest

pytestmark = pytest.mark.shared("profiles")


def test_fidelity_within_five_percent():
    from flows.bench.fidelity import fidelity_report

    rep = fidelity_report(seed=0)
    assert rep["mape"] <= 0.05
    assert rep["rows"] == sum(s["rows"] for s in rep["sources"].values())
    assert set(rep["sources"]) == {
        "h100-layer-measured", "h200-layer-measured", "vidur-a100-mlp",
        "aiconfigurator-a100-attention",
    }
    for name, src in rep["sources"].items():
        assert src["mape"] <= 0.05, name
        assert src["rows"] > 0


def test_split_is_deterministic_and_disjoint():
    from flows.bench.fidelity import split_rows
    from serving.steptime_fit import load_rows

    rows = load_rows()
    tr, te = split_rows(rows, seed=3, holdout=0.2)
    assert len(tr) + len(te) == len(rows)
    assert set(map(id, tr)).isdisjoint(map(id, te))
    assert split_rows(rows, seed=3, holdout=0.2)[1] == te
