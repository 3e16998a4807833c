"""The ``shared`` marker: what a test reads from ``../shared`` (see ``shared_support``)."""

from __future__ import annotations

import pytest
from shared_support import require_shared


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "shared(*parts): reads these paths of the shared data folder; skipped without them, "
        "failed instead when AUTOPOIESIS_REQUIRE_SHARED is set",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("shared"):
        require_shared(*mark.args)
