"""Where the shared data lives: the traces and GPU profiles under ``shared/``.

``$AUTOPOIESIS_SHARED`` if set, else ``shared/`` beside the repository. It is here, in
the data plane, because the step-time fit (``serving``) reads it as well as the traces
and the sandboxes (``sandbox``), and imports run one way: flows -> sandbox -> serving.
"""

from __future__ import annotations

import os
from pathlib import Path

SHARED_ENV = "AUTOPOIESIS_SHARED"
REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The shared data folder, resolved at each call so tests and deployments can move it."""
    env = os.environ.get(SHARED_ENV)
    return Path(env) if env else REPO_ROOT.parent / "shared"
