"""Prefect for tests: offline, its home under tmp, its temporary server stopped on time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def offline_prefect(home: Path) -> Iterator[None]:
    """Prefect's temporary local API with ``home`` as PREFECT_HOME; env restored after."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_HOME", str(home))
        mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        mp.setenv("DO_NOT_TRACK", "true")
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.delenv("PREFECT_API_URL", raising=False)
        from prefect.testing.utilities import prefect_test_harness

        # The harness stops its temporary server here, while pytest's log streams are
        # still open; left to interpreter exit, Prefect logs into closed files.
        with prefect_test_harness(server_startup_timeout=60):
            yield
