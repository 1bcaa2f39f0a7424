"""Helpers for bundle and runner tests: real bundles, device folders, the runner as a process.

Import the fixtures you use into the test module (pytest finds them there).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from conftest import EVAL, EXAMPLE_ONNX, REPO

DEVICE_VENV = REPO / ".venv-device"  # a device's Python: numpy and onnxruntime, nothing else
PY39 = Path("/root/.pyenv/versions/3.9.18/bin/python")


@dataclass
class Built:
    path: Path
    sha256: str
    manifest: dict


def build(out: Path, version: str, *, sign_key: Optional[Path] = None, name: str = "digits",
          eval_samples: int = 200) -> Built:
    """A real bundle of the example digits model for host-cpu, through the library."""
    from edgekit.datasets import load_dataset
    from edgekit.package import package
    from edgekit.targets import load_profile

    b = package(EXAMPLE_ONNX, load_profile("host-cpu"), load_dataset(EVAL), name=name, version=version,
                out_dir=out, sign_key=sign_key, eval_samples=eval_samples)
    return Built(b.path, b.sha256, b.manifest)


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    """Two signing key pairs: `trusted` (its .pub goes into devices' trust/) and `other`."""
    from edgekit.keys import init_keys

    base = tmp_path_factory.mktemp("keys")
    return {"trusted": init_keys(base / "trusted"), "other": init_keys(base / "other")}


@pytest.fixture(scope="session")
def bundles(tmp_path_factory, keys):
    """digits 1.0.0 and 1.0.1, unsigned and signed with the trusted and the other key."""
    out = tmp_path_factory.mktemp("dist")
    return {
        "1.0.0": build(out / "plain", "1.0.0"),
        "1.0.1": build(out / "plain", "1.0.1"),
        "1.0.0-signed": build(out / "trusted", "1.0.0", sign_key=keys["trusted"].private),
        "1.0.1-signed": build(out / "trusted", "1.0.1", sign_key=keys["trusted"].private),
        "1.0.1-other": build(out / "other", "1.0.1", sign_key=keys["other"].private),
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


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}


def write_raw_tar(dest: Path, members: list[tuple[tarfile.TarInfo, Optional[bytes]]]) -> Path:
    """A tar with exactly these members (symlinks, odd names and all): hostile bundles."""
    with tarfile.open(dest, "w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return dest


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    return info, data


@pytest.fixture(scope="session")
def device_python() -> str:
    """A Python with only numpy and onnxruntime (and their own dependencies), made once in
    REPO/.venv-device and reused by later test runs. Python 3.9 when pyenv has it."""
    python = DEVICE_VENV / "bin" / "python"
    ready = python.exists() and subprocess.run([str(python), "-c", "import numpy, onnxruntime"],
                                               capture_output=True).returncode == 0
    if not ready:
        base = str(PY39) if PY39.exists() else sys.executable
        subprocess.run([base, "-m", "venv", "--clear", str(DEVICE_VENV)], check=True, timeout=300)
        pip = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "numpy", "onnxruntime"],
                             capture_output=True, text=True, timeout=900)
        assert pip.returncode == 0, f"could not make the device venv (pip needs PyPI): {pip.stderr[-2000:]}"
    return str(python)
