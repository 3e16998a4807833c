"""Without ../shared the data tests skip; with AUTOPOIESIS_REQUIRE_SHARED=1 they fail (in setup)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Reads shared/profiles through the marker, in well under a second when the data is there.
DATA_TEST = "tests/test_fidelity.py::test_split_is_deterministic_and_disjoint"


def _pytest(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", DATA_TEST],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "AUTOPOIESIS_SHARED": str(tmp_path / "absent"),
            "AUTOPOIESIS_REQUIRE_SHARED": "",
            **env,
        },
    )


@pytest.mark.parametrize(
    ("require", "outcome", "code"), [("", "1 skipped", 0), ("1", "1 error", 1)]
)
def test_missing_shared_data_skips_unless_required(tmp_path, require, outcome, code):
    run = _pytest(tmp_path, AUTOPOIESIS_REQUIRE_SHARED=require)
    assert run.returncode == code, run.stdout + run.stderr
    assert outcome in run.stdout
    assert f"shared data missing under {tmp_path / 'absent'}: profiles" in run.stdout
