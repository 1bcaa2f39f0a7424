"""Running the real `edgekit` command as a user would, and what bad input must look like."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from typing import Optional

from helpers.paths import REPO


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


def assert_clean_error(result: CliResult, *needles: str, code: int = 2) -> None:
    """Bad input: the given exit code, one line on stderr naming the problem, no traceback."""
    assert result.code == code, (result.code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def start_edgekit(*args, pid_file: Path, env: Optional[dict] = None) -> subprocess.Popen:
    full = dict(os.environ, COLUMNS="200", NO_COLOR="1", **(env or {}))
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli.main", *map(str, args)], cwd=REPO, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_file.write_text(str(proc.pid))
    return proc


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err
