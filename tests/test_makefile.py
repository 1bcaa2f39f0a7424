"""The Makefile's two installs, checked with `make -n` (what make would run) against a
virtualenv folder of our own: `make demo` installs the core package alone, `make test`
every extra, and neither run undoes the other."""

import os
import shutil
import subprocess
import time

import pytest

from helpers.paths import REPO


pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
FULL = "-e '.[dev,tflite,lm,ansible]'"


def _would_run(goal: str, venv) -> str:
    proc = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(REPO), f"VENV={venv}", goal],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _installs(plan: str) -> list[str]:
    return [line.split("pip install --quiet ", 1)[1] for line in plan.splitlines()
            if "pip install --quiet -e" in line]


def _installed(venv, *stamps: str) -> None:
    """What make leaves behind: the venv's python and the stamps, newer than pyproject.toml."""
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    later = os.stat(REPO / "pyproject.toml").st_mtime + 10
    for path in (venv / "bin" / "python", *(venv / s for s in stamps)):
        path.touch()
        os.utime(path, (later, later))


def test_make_demo_installs_the_core_package_alone(tmp_path):
    plan = _would_run("demo", tmp_path / "venv")
    assert "-m venv" in plan and _installs(plan) == ["-e ."]
    assert plan.rstrip().endswith("edgekit demo")


def test_make_test_installs_every_extra(tmp_path):
    assert _installs(_would_run("test", tmp_path / "venv")) == [FULL]


def test_make_test_after_make_demo_adds_the_extras(tmp_path):
    venv = tmp_path / "venv"
    _installed(venv, ".installed-core")
    assert _installs(_would_run("demo", venv)) == []
    assert _installs(_would_run("test", venv)) == [FULL]


def test_make_demo_after_make_test_installs_nothing(tmp_path):
    venv = tmp_path / "venv"
    _installed(venv, ".installed-full", ".installed-core")  # the full install stamps both
    assert "-m venv" not in _would_run("demo", venv)
    assert _installs(_would_run("demo", venv)) == [] and _installs(_would_run("test", venv)) == []


def test_the_full_install_stamps_the_core_one_too(tmp_path):
    plan = _would_run("test", tmp_path / "venv")
    assert f"touch {tmp_path / 'venv'}/.installed-full {tmp_path / 'venv'}/.installed-core" in plan


def test_an_edited_pyproject_reinstalls(tmp_path):
    venv = tmp_path / "venv"
    _installed(venv, ".installed-full", ".installed-core")
    earlier = time.time() - 3600 * 24 * 365 * 30
    for stamp in (".installed-full", ".installed-core"):
        os.utime(venv / stamp, (earlier, earlier))
    assert _installs(_would_run("demo", venv)) == ["-e ."] and _installs(_would_run("test", venv)) == [FULL]
