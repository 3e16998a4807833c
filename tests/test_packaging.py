"""A non-editable install (the wheel, in a venv of its own) carries what its commands read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from sandbox_support import process_backend

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("serving", "sandbox", "flows")
CASES = ("raises_in_route", "write_outside_tmp", "huge_file")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # same filesystem: no bytes copied
    except OSError:
        shutil.copy2(src, dst)


def _venv_with_these_dependencies(path: Path) -> Path:
    """A venv holding this venv's third-party packages (not the project: the wheel adds it).

    Linked file by file rather than installed from the index, to stay fast; the sandbox
    binds the venv, so its packages must live inside it.
    """
    venv.create(path, with_pip=False, symlinks=True)
    site = next(path.glob("lib/python3*/site-packages"))
    mine = Path(sysconfig.get_paths()["purelib"])
    project = (*PACKAGES, "__editable__", "autopoiesis")
    for entry in mine.iterdir():
        if entry.name.startswith(project) or entry.name in ("pip", "__pycache__"):
            continue
        if entry.is_dir():
            shutil.copytree(entry, site / entry.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(site / entry.name))
    return path / "bin" / "python"


@pytest.mark.slow
def test_sandbox_selftest_runs_from_a_wheel_install(tmp_path):
    process_backend().close()  # skipped (or failed under CI) like every bubblewrap test
    # Built from a copy: setuptools leaves build/ in the tree it builds, and a stale one
    # would put files deleted since into later wheels.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", *PACKAGES):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(src)],
        check=True,
        timeout=600,
        capture_output=True,
    )
    wheel = next(wheels.glob("autopoiesis-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        assert "sandbox/hostile/good.py.txt" in zf.namelist()
    python = _venv_with_these_dependencies(tmp_path / "venv")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    where = subprocess.run(
        [str(python), "-c", "import sandbox.selftest as s; print(s.GOOD_CASE)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip().startswith(str(tmp_path / "venv"))  # not this checkout
    out = tmp_path / "selftest.json"
    args = [
        str(python.parent / "autopoiesis"),
        "sandbox",
        "selftest",
        "--backend",
        "process",
        *(a for c in CASES for a in ("--case", c)),
        "--json",
        str(out),
    ]
    run = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    assert {o["case"] for o in report["outcomes"]} == set(CASES)
    assert report["contained"] == report["cases"] == 4  # write_outside_tmp runs twice
