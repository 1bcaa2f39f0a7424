"""Real bundles of the example digits model, and hand-made tars for the runner's safety tests."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from helpers.paths import EVAL, EXAMPLE_ONNX


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
