"""Read-only folders for tests: a bind mount of a folder onto itself, remounted read-only
(root and mount(8) needed; the tests that use it skip elsewhere). chmod does not stop root."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


def can_mount() -> bool:
    probe = Path(f"/tmp/edgekit-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", str(probe)], check=True)
        return ok
    finally:
        probe.rmdir()


needs_mount = pytest.mark.skipif(os.geteuid() != 0 or not can_mount(),
                                 reason="needs root and mount(8) for tmpfs roots and read-only bind mounts")


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
        yield
    finally:  # a file still open there (a leak the test should see) keeps it busy: detach it anyway
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], check=False)
