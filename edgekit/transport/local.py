"""The local transport: a device that is a directory on this machine.

For simulated fleets and tests. Remote paths are absolute paths on this machine (under
the device's `root`); commands run with the device's interpreter as a child process,
from argument lists, never through a shell. OSError is translated here, once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

from edgekit.errors import Interrupted, TransportError
from edgekit.transport.base import Cancel, Endpoint, Progress, RunResult, Transport, chunks_from, offset_of

__all__ = ["LocalTransport"]

CHUNK = 1 << 20
POLL_S = 0.2


class LocalTransport(Transport):
    def __init__(self, endpoint: Endpoint):
        self.name = endpoint.name
        self.root = endpoint.root  # made by the first push, as on an SSH device: asking makes nothing

    def _cwd(self) -> Optional[str]:
        """Commands run in the device's root once it exists (a missing folder is no missing command)."""
        return self.root if os.path.isdir(self.root) else None

    def _fail(self, what: str, exc: OSError) -> TransportError:
        return TransportError(f"device {self.name}: {what}: {exc.strerror or exc}", device=self.name)

    def put(self, local: Path, remote: str, *, progress: Optional[Progress] = None) -> None:
        """Copy, appending to an existing shorter `remote` (a resumed upload)."""
        try:
            total = os.path.getsize(local)
            done = os.path.getsize(remote) if os.path.exists(remote) else 0
            if done > total:
                done = 0  # not a prefix of this file: start over
            with open(local, "rb") as src, open(remote, "r+b" if done else "wb") as dst:
                src.seek(done)
                dst.seek(done)
                dst.truncate()
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    dst.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
        except OSError as exc:
            raise self._fail(f"cannot upload {local} to {remote}", exc) from exc

    def get(self, remote: str, local: Path) -> None:
        try:
            shutil.copyfile(remote, local)
        except OSError as exc:
            raise self._fail(f"cannot download {remote}", exc) from exc

    def run(self, argv: Sequence[str], *, timeout: Optional[float] = None,
            cancel: Optional[Cancel] = None) -> RunResult:
        # A session of its own: a Ctrl-C at the terminal reaches edgekit, which decides what
        # to stop, not the device's runner in the middle of an install.
        try:
            proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    stdin=subprocess.DEVNULL, cwd=self._cwd(), start_new_session=True)
        except FileNotFoundError:  # like a shell's "command not found" on a remote device
            return RunResult(127, "", f"{argv[0]}: command not found")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                out, err = proc.communicate(timeout=POLL_S)
                return RunResult(proc.returncode, out, err)
            except subprocess.TimeoutExpired:
                pass
            if cancel is not None and cancel.is_set():
                _stop(proc)
                raise Interrupted(f"device {self.name}: stopped waiting for {argv[0]}: interrupted")
            if deadline is not None and time.monotonic() > deadline:
                _stop(proc)
                raise TransportError(f"device {self.name}: {argv[0]} did not finish within {timeout:g}s",
                                     device=self.name)

    def feed(self, argv: Sequence[str], local: Path, *, progress: Optional[Progress] = None,
             timeout: Optional[float] = None) -> RunResult:
        try:
            proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    cwd=self._cwd(), start_new_session=True)
        except FileNotFoundError:
            return RunResult(127, "", f"{argv[0]}: command not found")
        try:
            first = proc.stdout.readline()
            offset = offset_of(first)
            if offset is not None:
                first = b""
                self._send(proc, local, offset, progress)
            out, err = proc.communicate(timeout=timeout)  # closes its stdin first
        except subprocess.TimeoutExpired:
            _stop(proc)
            raise TransportError(f"device {self.name}: {argv[0]} did not finish within {timeout:g}s",
                                 device=self.name) from None
        except BaseException:  # stopped sending (Ctrl-C): its stdin ends early, as a cut connection's does
            _let_go(proc)
            raise
        return RunResult(proc.returncode, (first + out).decode(errors="replace"), err.decode(errors="replace"))

    def _send(self, proc: subprocess.Popen, local: Path, offset: int, progress: Optional[Progress]) -> None:
        try:
            for chunk in chunks_from(Path(local), offset, progress):
                proc.stdin.write(chunk)
        except BrokenPipeError:
            return  # it stopped reading: its answer says why
        except OSError as exc:
            raise self._fail(f"cannot send {local}", exc) from exc

    def size(self, remote: str) -> Optional[int]:
        try:
            return os.path.getsize(remote) if os.path.isfile(remote) else None
        except OSError as exc:
            raise self._fail(f"cannot stat {remote}", exc) from exc

    def listdir(self, remote: str) -> list[str]:
        try:
            return sorted(os.listdir(remote)) if os.path.isdir(remote) else []
        except OSError as exc:
            raise self._fail(f"cannot list {remote}", exc) from exc

    def makedirs(self, remote: str) -> None:
        try:
            os.makedirs(remote, exist_ok=True)
        except OSError as exc:
            raise self._fail(f"cannot create {remote}", exc) from exc

    def rename(self, src: str, dst: str) -> None:
        try:
            os.replace(src, dst)
        except OSError as exc:
            raise self._fail(f"cannot rename {src} to {dst}", exc) from exc

    def remove(self, remote: str) -> None:
        try:
            os.unlink(remote)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._fail(f"cannot remove {remote}", exc) from exc


def _let_go(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Close a fed command's stdin and give it `grace` seconds to end on its own (a receiving
    install keeps what came and cleans its staging folder), then kill it."""
    stdin, proc.stdin = proc.stdin, None  # communicate() flushes a stdin it still holds, closed or not
    try:
        stdin.close()
    except OSError:
        pass
    try:
        proc.communicate(timeout=grace)
    except subprocess.TimeoutExpired:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.communicate()
