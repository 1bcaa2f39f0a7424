"""Device folders on this machine and the runner as a process: what a device does, asked
directly; and device Pythons that misbehave on cue (for the interrupt and fault tests)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

from helpers.bundles import Built
from helpers.paths import PY39, REPO


DEVICE_VENV = REPO / ".venv-device"  # a device's Python: numpy and onnxruntime, nothing else
# What every device report holds (DESIGN.md's report schema 1).
REPORT_FIELDS = {
    "": ("schema", "run_id", "started_at", "finished_at", "status", "error", "device", "bundle", "runtime", "metrics"),
    "device": ("name", "hostname", "arch", "os", "python", "cpu_count", "mem_total_mb"),
    "bundle": ("name", "version", "sha256", "target", "precision"),
    "runtime": ("name", "version", "providers"),
    "metrics": ("accuracy", "accuracy_expected", "fidelity", "latency_ms", "load_ms", "peak_rss_mb", "model_mb"),
}

def local_device(root: Path, name: str = "dev", python: Optional[str] = None, target: str = "host-cpu"):
    from edgekit.fleet.inventory import Device

    return Device(name=name, transport="local", root=str(root), target=target, python=python)


def runner(root: Path, *args: str, python: Optional[str] = None, env: Optional[dict] = None,
           timeout: float = 300) -> tuple[int, dict]:
    """Run ROOT/bin/edgekit_runner.py as the host would; (exit code, its one JSON object)."""
    proc = subprocess.run([python or sys.executable, str(root / "bin" / "edgekit_runner.py"), *args],
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ, **(env or {})))
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, (proc.stdout, proc.stderr)  # exactly one JSON object, whatever happened
    return proc.returncode, json.loads(lines[0])


def install_runner(root: Path) -> None:
    """Put the runner into ROOT/bin the way push does."""
    from edgekit.fleet.protocol import ensure_runner
    from edgekit.transport import connect

    device = local_device(root)
    with connect(device.endpoint) as t:
        ensure_runner(t, device)


def upload(root: Path, bundle: Path, data: Optional[bytes] = None) -> str:
    """Place a bundle (or some bytes) in ROOT/incoming/ as push does; returns its path."""
    incoming = root / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    dest = incoming / f"{bundle.stem}.edgekit.part"
    dest.write_bytes(bundle.read_bytes() if data is None else data)
    return str(dest)


def install(root: Path, built: Built, **kw) -> tuple[int, dict]:
    return runner(root, "install", upload(root, built.path), "--sha256", built.sha256,
                  "--size", str(built.path.stat().st_size), **kw)


def snapshot(root: Path) -> dict:
    """What must not change when an install fails: links, state, installed bundles, incoming."""
    def listing(sub: str) -> list[str]:
        base = root / sub
        return sorted(str(p.relative_to(base)) for p in base.rglob("*")) if base.exists() else []

    current = root / "current"
    return {
        "current": {p.name: os.readlink(p) for p in sorted(current.iterdir())} if current.exists() else {},
        "state": {p.name: p.read_text() for p in sorted((root / "state").glob("*"))},
        "bundles": listing("bundles"),
        "incoming": listing("incoming"),
    }


@pytest.fixture(scope="session")
def device_python() -> str:
    """A Python with only numpy and onnxruntime (and their own dependencies), made once in
    REPO/.venv-device and reused by later test runs. Python 3.9 when pyenv has it."""
    python = DEVICE_VENV / "bin" / "python"
    # `make test` runs two pytest workers: the first to get here makes the venv, the other waits.
    with open(REPO / ".venv-device.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ready = python.exists() and subprocess.run([str(python), "-c", "import numpy, onnxruntime"],
                                                   capture_output=True).returncode == 0
        if not ready:
            base = str(PY39) if PY39 else sys.executable
            subprocess.run([base, "-m", "venv", "--clear", str(DEVICE_VENV)], check=True, timeout=300)
            pip = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "numpy", "onnxruntime"],
                                 capture_output=True, text=True, timeout=900)
            assert pip.returncode == 0, f"could not make the device venv (pip needs PyPI): {pip.stderr[-2000:]}"
    return str(python)


def interrupting_python(base: Path, step: str, pid_file: Path, *, nth: int = 1, signals: int = 1) -> str:
    """A device Python that interrupts the edgekit process (its pid in `pid_file`) when the
    runner is asked to `step` for the `nth` time, `signals` times, then runs the runner."""
    script = base / f"python-interrupting-{step}-{nth}"
    seen = base / f"seen-{step}"
    kills = "; ".join([f'kill -INT "$(cat {pid_file})"; sleep 0.1'] * signals) + "; sleep 0.5"
    script.write_text(f"""#!/bin/sh
for arg in "$@"; do
  if [ "$arg" = "{step}" ]; then
    mkdir -p "{seen}" && n=$(ls "{seen}" | wc -l) && mkdir "{seen}/$$"
    if [ "$n" -eq {nth - 1} ]; then {kills}; fi
  fi
done
exec {sys.executable} "$@"
""")
    script.chmod(0o755)
    return str(script)


def logging_python(base: Path, python: str) -> tuple[str, Path]:
    """A device Python that writes each runner command it is asked for to a log, then runs
    `python`: (the script, the log). `runner_commands(log)` reads it back."""
    log = base / "runner-commands.log"
    script = base / "python-logging"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\nexec {python} "$@"\n')
    script.chmod(0o755)
    return str(script), log


def runner_commands(log: Path) -> list[str]:
    """The runner commands a logging_python ran, in order (the word after --root ROOT)."""
    if not log.exists():
        return []
    words = [line.split() for line in log.read_text().splitlines()]
    return [w[w.index("--root") + 2] for w in words if "--root" in w]
