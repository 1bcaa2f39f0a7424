"""Shared fixtures: repository paths and a way to run the real `edgekit` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_ONNX = REPO / "examples" / "digits" / "model.onnx"
EXAMPLE_PT2 = REPO / "examples" / "digits" / "model.pt2"
CALIB = REPO / "calibration" / "digits" / "calib.npz"
EVAL = REPO / "calibration" / "digits" / "eval.npz"


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


def run_edgekit(*args, cwd: Path | None = None, env: dict | None = None, timeout: float = 600) -> CliResult:
    """Run `edgekit ARGS` in a fresh process, as a user would."""
    full_env = dict(os.environ, COLUMNS="200", NO_COLOR="1")
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "edgekit.cli.main", *map(str, args)], cwd=cwd or REPO,
                          capture_output=True, text=True, env=full_env, timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session", autouse=True)
def _own_default_store(tmp_path_factory):
    """Commands run without --store write to a store of this test session, never the user's."""
    os.environ["EDGEKIT_STORE"] = str(tmp_path_factory.mktemp("default-store") / "edgekit.db")


@pytest.fixture
def edgekit():
    return run_edgekit


def assert_clean_error(result: CliResult, *needles: str, code: int = 2) -> None:
    """Bad input: the given exit code, one line on stderr naming the problem, no traceback."""
    assert result.code == code, (result.code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
