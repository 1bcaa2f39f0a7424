"""Install a bundle as it arrives: `install FILE --stdin`, the upload and the install in one pass.

The host runs the runner's install with the bundle's bytes on its stdin instead of uploading
first and installing after. The runner prints one line, `edgekit-offset K`: the bytes of FILE
(a .part in incoming/) it has already, from a cut upload of the same bundle. The host sends
the rest. Every byte is appended to FILE as it arrives, so a cut upload can resume, and read
by the same extraction as install's, into a staging folder of its own; so the bundle is
hashed, unpacked and checked while it travels, and done a moment after its last byte. Then
the checks and the placing are install's, under the device's writer lock.

What it leaves behind:
- the stream cut (EOF or nothing for `idle` seconds before the last byte): FILE is kept, to
  resume; exit 1, kind "incomplete";
- the bundle refused: the rest is received all the same (the whole file is hashed to tell an
  upload corrupted in transfer from a bundle broken at its source, as install does), then
  FILE is removed;
- a full disk, or any other error: FILE is kept, to resume once there is room.
The staging folder goes in every case. It is `bundles/.receiving-*` with an `owner` file this
runner holds a lock on: the writer lock is taken only at the end, so an install or gc that
cleans leftovers meanwhile must tell a live receiving folder (locked) from one a killed
runner left (not locked).

Standard library only, Python 3.9: this runs on devices.
"""

from __future__ import annotations

import fcntl
import os
import select
import shutil
import sys
import tempfile
from typing import Optional

from .install import OWNER, PART_MAX_AGE_S, RECEIVING, checked, clean_leftovers, clean_parts, place_checked, upload_path
from .state import Layout, RunnerError
from .trust import sha256_file
from .untar import extract_from

__all__ = ["receive", "OFFSET_MARK", "IDLE_S"]

OFFSET_MARK = "edgekit-offset"
IDLE_S = 120.0  # the host's own bound for an unanswered transfer (edgekit.transport.ssh.IO_TIMEOUT_S)


class Incomplete(RunnerError):
    def __init__(self, message: str):
        super().__init__(message, "incomplete", 1)


class _Incoming:
    """The upload as a file read front to back: FILE's first `have` bytes, then stdin's up to
    `size`, each appended to FILE as it is read. A cut stream raises Incomplete, every time
    it is read after (one wait for a stalled host, not one per reader)."""

    def __init__(self, part, have: int, size: int, idle: float, name: str):
        self._part, self._have, self._size, self._idle, self._name = part, have, size, idle, name
        self._at, self._cut = 0, None
        self._fd = sys.stdin.fileno()
        _widen(self._fd)

    def readinto(self, view: memoryview) -> int:
        want = min(len(view), self._size - self._at)
        if want <= 0:
            return 0
        if self._at < self._have:
            self._part.seek(self._at)
            got = self._part.readinto(view[:min(want, self._have - self._at)])
            if not got:
                raise Incomplete(f"upload {self._name} shrank while it was read; push again")
            if self._at + got == self._have:
                self._part.seek(self._have)  # what arrives from now on is appended
        else:
            got = self._receive(view[:want])
            done = 0
            while done < got:
                done += self._part.write(view[done:got])
        self._at += got
        return got

    def read(self, size: int = -1) -> bytes:
        left = self._size - self._at
        buffer = bytearray(left if size < 0 else min(size, left))
        view, got = memoryview(buffer), 0
        while got < len(buffer):
            n = self.readinto(view[got:])
            if not n:
                break
            got += n
        return bytes(buffer[:got])

    def drain(self) -> None:
        """Receive what is left of the upload (after the end of the tar, or after a refusal)."""
        buffer = memoryview(bytearray(1 << 20))
        while self.readinto(buffer):
            pass

    def _receive(self, view: memoryview) -> int:
        """Fill `view` from stdin: the layers above (tar, hashes, files) then work a megabyte
        at a time rather than a pipe's worth (64 KiB); a cut stream returns what came before
        it, and raises on the next read."""
        if self._cut is not None:
            raise Incomplete(self._cut)
        got = 0
        while got < len(view):
            ready, _, _ = select.select([self._fd], [], [], self._idle)
            n = os.readv(self._fd, [view[got:]]) if ready else 0
            if not n:
                self._cut = (f"the upload stopped at {self._at + got} of {self._size} bytes "
                             f"({'no byte for %gs' % self._idle if not ready else 'the host closed it'}); "
                             f"{self._name} is kept: push again to resume")
                if got:
                    return got
                raise Incomplete(self._cut)
            got += n
        return got


def _widen(fd: int) -> None:
    """A pipe of 1 MiB (Linux; where it is not, as it is): sshd writes the upload into it in
    fewer, larger pieces, each woken for once."""
    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except OSError:
        pass  # not a pipe, not Linux, or over the system's pipe-max-size


class _Staging:
    """bundles/.receiving-*: made with its `owner` file locked by this process, removed on exit."""

    def __init__(self, layout: Layout):
        self.path = tempfile.mkdtemp(prefix=RECEIVING, dir=layout.bundles)
        self._fd = os.open(os.path.join(self.path, OWNER), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self.unpacked = os.path.join(self.path, "files")
        os.mkdir(self.unpacked)

    def __enter__(self) -> "_Staging":
        return self

    def __exit__(self, *exc_info) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._fd)


def receive(layout: Layout, given: str, *, size: int, sha256: Optional[str] = None,
            manifest_sha256: Optional[str] = None, idle: float = IDLE_S) -> dict:
    """Install the upload `given` as its bytes arrive on stdin; install()'s answer."""
    layout.ensure()
    path = upload_path(layout, given, must_exist=False)
    name = os.path.basename(path)
    with open(path, "ab+") as new:  # made if missing; a longer file is not a prefix of this bundle
        have = new.seek(0, os.SEEK_END)
        if have > size:
            new.truncate(0)
            have = 0
    sys.stdout.write(f"{OFFSET_MARK} {have}\n")
    sys.stdout.flush()
    with _Staging(layout) as staging, open(path, "r+b", buffering=0) as part:
        incoming = _Incoming(part, have, size, idle, name)

        def whole_sha256() -> str:
            incoming.drain()
            return sha256_file(path)

        def extract_into(whole: bool):
            files, digest = extract_from(incoming, staging.unpacked, whole, name)
            incoming.drain()
            return files, digest

        try:
            manifest, files, digest = checked(extract_into, whole_sha256, staging.unpacked, name, sha256,
                                              manifest_sha256)
        except Incomplete:
            raise
        except RunnerError:
            _remove(path)  # a refused upload is not kept: push sends it again
            raise
        with layout.locked():
            clean_leftovers(layout)
            clean_parts(layout, PART_MAX_AGE_S, keep=name)
            answer = place_checked(layout, staging.unpacked, manifest, files, digest, size)
        _remove(path)
    return answer


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # a second push of the same bundle, received beside this one, was placed first
