"""The ``shared`` marker: what a test reads from ``../shared`` (see ``shared_support``);
the ``engines_installed`` fixture of the tests that start real llama.cpp engines."""

from __future__ import annotations

import pytest
from shared_support import require_shared, required

from serving import llamacpp


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "shared(*parts): reads these paths of the shared data folder; skipped without them, "
        "failed instead when AUTOPOIESIS_REQUIRE_SHARED is set",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("shared"):
        require_shared(*mark.args)


@pytest.fixture(scope="module")
def engines_installed() -> None:
    """Real llama.cpp engines (``make engines``): skipped without them, failed instead when
    AUTOPOIESIS_REQUIRE_LLAMACPP is set."""
    why = llamacpp.available()
    if why is None:
        return
    if required("AUTOPOIESIS_REQUIRE_LLAMACPP"):
        pytest.fail(f"AUTOPOIESIS_REQUIRE_LLAMACPP is set but {why}")
    pytest.skip(why)
