"""Reading an untrusted bundle tar: each member checked before a byte of it is written, its
bytes copied by hand into a staging folder and hashed on the way, the whole file hashed in
the same pass (edgekit_device.install and .receive decide what to do with the result).

The tar is never given to extractall. Each member must be a plain regular file with a plain
relative name; counts and sizes are capped.

Standard library only, Python 3.9: this runs on devices.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tarfile
import time
from typing import Dict, Optional, Tuple

from .state import RunnerError

__all__ = ["extract", "extract_from", "PLAIN_PART", "MAX_MEMBERS", "MAX_FILE_BYTES", "MAX_TOTAL_BYTES", "PAUSE_ENV"]

MAX_MEMBERS = 512
MAX_FILE_BYTES = 4 << 30
MAX_TOTAL_BYTES = 8 << 30
PLAIN_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$")  # one part of a member's path; an upload's name too
# Test hook (documented in the README): sleep this many seconds after the first member is
# extracted, so a test can kill the runner in the middle of an install.
PAUSE_ENV = "EDGEKIT_RUNNER_TEST_PAUSE_IN_EXTRACT"


def _bad(message: str) -> RunnerError:
    return RunnerError(message, "bundle", 2)


class _Hashing:
    """A read-only file that hashes every byte read from it, in order; tarfile reads the
    bundle front to back, so extracting through it hashes the upload in the same pass
    (a second pass over a 50 MB bundle cost as much as the extraction). `rest()` reads
    what tarfile left (the end-of-archive blocks) so that the digest covers the file.
    With `whole` false nothing is hashed (the manifest's hash stands for the upload)."""

    def __init__(self, fh, whole: bool = True):
        self._fh, self._hash, self._at = fh, hashlib.sha256() if whole else None, 0

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        if self._hash is not None:
            self._hash.update(data)
        self._at += len(data)
        return data

    def readinto(self, view: memoryview) -> int:
        """read() into the caller's buffer: a member's data goes through one reused buffer,
        not a new megabyte object per read (whose pages the kernel maps and zeroes anew)."""
        got = self._fh.readinto(view)
        if self._hash is not None:
            self._hash.update(view[:got])
        self._at += got
        return got

    def tell(self) -> int:
        return self._at

    def seek(self, offset: int, whence: int = 0) -> int:
        # tarfile skips forward over data it does not read (never backwards on a plain
        # tar read in order): skipped bytes are read and hashed, so none is left out.
        target = offset if whence == 0 else self._at + offset
        if whence == 2 or target < self._at:
            raise _bad("the bundle's tar asked to seek backwards (not a plain tar read in order)")
        while self._at < target:
            if not self.read(min(target - self._at, 1 << 20)):
                break
        return self._at

    def rest(self) -> Optional[str]:
        if self._hash is None:
            return None
        while self.read(1 << 20):
            pass
        return self._hash.hexdigest()


def _check_member(member: tarfile.TarInfo, seen: Dict[str, dict]) -> str:
    name = member.name
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or member.issparse():
        kind = "symlink" if member.issym() else "hard link" if member.islnk() else \
            "directory" if member.isdir() else "device or special file"
        raise _bad(f"member {name!r} is a {kind}; bundles hold regular files only")
    if name.startswith("/") or "\\" in name or "\0" in name:
        raise _bad(f"member {name!r} has an absolute or non-POSIX path")
    parts = name.split("/")
    if ".." in parts:
        raise _bad(f"member {name!r} escapes the bundle ('..' in its path)")
    if any(not PLAIN_PART.fullmatch(p) for p in parts) or len(parts) > 8:
        raise _bad(f"member {name!r} is not a plain relative path (letters, digits, . _ + -; no leading dot)")
    if name in seen:
        raise _bad(f"member {name!r} appears twice")
    if len(seen) >= MAX_MEMBERS:
        raise _bad(f"the bundle has more than {MAX_MEMBERS} members")
    if member.size > MAX_FILE_BYTES:
        raise _bad(f"member {name!r} is {member.size} bytes, over the {MAX_FILE_BYTES}-byte limit")
    return name


def extract(bundle: str, staging: str, whole: bool = True) -> Tuple[Dict[str, dict], Optional[str]]:
    """Copy each member's bytes into staging by hand; returns ({name: {sha256, size}}, the
    sha256 of the whole bundle file, hashed in the same pass, or None when not `whole`)."""
    with open(bundle, "rb") as raw:
        return extract_from(raw, staging, whole, os.path.basename(bundle))


def extract_from(raw, staging: str, whole: bool, label: str) -> Tuple[Dict[str, dict], Optional[str]]:
    """extract() from a file object read front to back (a file, or an upload as it arrives)."""
    files: Dict[str, dict] = {}
    total = 0
    try:
        source = _Hashing(raw, whole)
        buffer = memoryview(bytearray(1 << 20))
        with tarfile.open(fileobj=source, mode="r:") as tar:  # plain tar only: no decompression bombs
            for member in tar:
                name = _check_member(member, files)
                total += member.size
                if total > MAX_TOTAL_BYTES:
                    raise _bad(f"the bundle unpacks to over {MAX_TOTAL_BYTES} bytes")
                files[name] = _copy_member(source, member, os.path.join(staging, *name.split("/")), buffer)
                _test_pause(len(files))
        digest = source.rest()
    except (tarfile.TarError, EOFError) as exc:
        raise _bad(f"{label} is not a readable bundle (tar: {exc})") from exc
    return files, digest



def _copy_member(source: _Hashing, member: tarfile.TarInfo, dest: str, buffer: memoryview) -> dict:
    """Copy a regular member's bytes (one contiguous run after its header: sparse members are
    refused) from the bundle itself, through `buffer`; tarfile's own reader copied each
    megabyte twice more."""
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    source.seek(member.offset_data)  # where tarfile left it, after the member's header
    h, size = hashlib.sha256(), 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as out:
        while size < member.size:
            got = source.readinto(buffer[:min(len(buffer), member.size - size)])
            if not got:
                break
            h.update(buffer[:got])
            size += got
            out.write(buffer[:got])
    if size != member.size:
        raise _bad(f"member {member.name!r} is truncated ({size} of {member.size} bytes)")
    return {"sha256": h.hexdigest(), "size": size}


def _test_pause(count: int) -> None:
    seconds = os.environ.get(PAUSE_ENV)
    if seconds and count == 1:
        sys.stderr.write("edgekit-runner: paused in extraction\n")
        sys.stderr.flush()
        time.sleep(float(seconds))
