"""Every command of the ``autopoiesis`` tree answers ``--help`` (rich renders all help text)."""

from __future__ import annotations

import pytest
import typer.main
from typer.testing import CliRunner

from flows.cli import app


def _command_paths(command: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    # A group (click's, or the copy newer typer versions carry) has ``commands``.
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        paths += _command_paths(sub, (*prefix, name))
    return paths


PATHS = _command_paths(typer.main.get_command(app))


def test_the_tree_is_walked():
    names = {" ".join(p) for p in PATHS}
    assert {"", "simulate", "serve", "pull", "bench", "bench router", "sandbox selftest"} <= names


@pytest.mark.parametrize("path", PATHS, ids=[" ".join(p) or "autopoiesis" for p in PATHS])
def test_help_works(path):
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, f"{' '.join(path)} --help: {result.output}{result.exception!r}"
    assert "Usage" in result.output
