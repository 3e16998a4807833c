"""The hostile suite: every candidate in sandbox/hostile/ is contained, on both backends.

Each case must end as a rejection with the expected stage and reason, leave no
process, container, file or connection behind, keep the host's secrets out of
the response, and the next evaluation must succeed. Cases marked with a
boundary expectation run a second time with the static checks off, to show
that the isolation itself contains them.
"""

from __future__ import annotations

import pytest
from sandbox_support import docker_backend, process_backend

from sandbox.selftest import CASES, HOSTILE_DIR, all_runs, run_case

RUNS = all_runs()


def test_suite_is_complete():
    assert len(CASES) >= 20
    for case in CASES:
        assert case.name == "huge_file" or case.file.exists(), case.file
    assert not any(p.stat().st_size > 100_000 for p in HOSTILE_DIR.iterdir())  # 10 MB is generated


@pytest.fixture(scope="module", params=["process", "docker"])
def backend(request):
    b = process_backend(prewarm=1) if request.param == "process" else docker_backend(prewarm=1)
    yield b
    b.close()


@pytest.mark.parametrize(
    ("case", "static_checks"),
    RUNS,
    ids=[f"{c.name}-{'static' if s else 'boundary'}" for c, s in RUNS],
)
def test_hostile_candidate_is_contained(backend, case, static_checks):
    outcome = run_case(backend, case, static_checks=static_checks)
    assert outcome.contained, (
        f"{case.name} ({'static checks on' if static_checks else 'boundary only'}): "
        f"{outcome.problems}; got {outcome.response.stage}: {outcome.response.reason}"
    )
