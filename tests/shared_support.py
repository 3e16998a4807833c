"""Tests that read ``../shared`` (traces, profiles): skipped without it, failed where CI says so.

``@pytest.mark.shared("traces", ...)`` (checked in ``conftest.py``) or ``require_shared``
names what a test reads, relative to the shared folder. Missing, the test is skipped,
unless ``AUTOPOIESIS_REQUIRE_SHARED`` is set (``.ci/run`` sets it): then it fails, so a
CI run without the data cannot pass by skipping everything that uses it.
"""

from __future__ import annotations

import os

import pytest

from serving.shared_data import shared_dir

REQUIRE_SHARED = "AUTOPOIESIS_REQUIRE_SHARED"


def required(var: str) -> bool:
    """Whether the environment variable ``var`` asks for a failure instead of a skip."""
    return os.environ.get(var, "") not in ("", "0", "false")


def require_shared(*parts: str) -> None:
    """Skip (or fail, under ``AUTOPOIESIS_REQUIRE_SHARED``) unless every part exists."""
    root = shared_dir()
    missing = [part for part in parts if not (root / part).exists()]
    if not missing:
        return
    why = (
        f"shared data missing under {root}: {', '.join(missing)} (set AUTOPOIESIS_SHARED "
        "or check out shared/ beside the repository)"
    )
    if required(REQUIRE_SHARED):
        pytest.fail(f"{REQUIRE_SHARED} is set but the {why}", pytrace=False)
    pytest.skip(why)
