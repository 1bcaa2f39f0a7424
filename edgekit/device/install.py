"""Install a bundle: check the upload, extract strictly, verify, rename into bundles/.

Every step before the final rename works on incoming/ and a private staging directory,
so a failure (or a kill) at any point leaves bundles/ and current/ as they were. On a
failure the upload is removed, so incoming/ holds only uploads still in flight.

The tar is untrusted: it is never given to extractall. Each member must be a plain
regular file with a plain relative name; counts and sizes are capped; every file must
match the manifest's sha256 and size, with nothing extra and nothing missing.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
from typing import Dict, List, Optional, Tuple

from .state import META, Layout, RunnerError, check_name, read_json, utc_now, write_json_atomic
from .trust import sha256_file, trusted_keys, verify_signature

__all__ = ["install", "clean_leftovers", "clean_parts", "MAX_MEMBERS", "MAX_FILE_BYTES", "MAX_TOTAL_BYTES", "META",
           "PART_MAX_AGE_S"]

MAX_MEMBERS = 512
MAX_FILE_BYTES = 4 << 30
MAX_TOTAL_BYTES = 8 << 30
MAX_MANIFEST_BYTES = 4 << 20
PART_MAX_AGE_S = 24 * 3600  # an upload untouched for a day is removed by the next install
MANIFEST, SIGNATURE = "manifest.json", "manifest.sig"
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$")
# Test hook (documented in the README): sleep this many seconds after the first member is
# extracted, so a test can kill the runner in the middle of an install.
PAUSE_ENV = "EDGEKIT_RUNNER_TEST_PAUSE_IN_EXTRACT"


def _bad(message: str, kind: str = "bundle") -> RunnerError:
    return RunnerError(message, kind, 2)


def upload_path(layout: Layout, given: str) -> str:
    """The upload as a path inside incoming/; anything else is refused (we delete it on failure)."""
    path = os.path.abspath(given if os.path.isabs(given) else os.path.join(layout.root, given))
    if os.path.dirname(path) != layout.incoming or not _PART.fullmatch(os.path.basename(path)):
        raise RunnerError(f"install takes a file in {layout.incoming}, got {given}", "usage", 2)
    if not os.path.isfile(path):
        raise RunnerError(f"{path}: no such upload", "usage", 2)
    return path


def check_size(path: str, size: Optional[int]) -> None:
    """Refuse an upload whose size is not what the host sent, before reading any of it."""
    actual = os.path.getsize(path)
    if size is not None and actual != size:
        raise _bad(f"upload {os.path.basename(path)} is {actual} bytes, expected {size} "
                   "(a truncated or overlong upload; push again)", "integrity")


def check_digest(name: str, digest: str, sha256: Optional[str]) -> None:
    if sha256 is not None and digest != sha256.lower():
        raise _bad(f"upload {name} has sha256 {digest[:12]}.., expected {sha256[:12]}.. "
                   "(corrupted in transfer; push again)", "integrity")


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
    if any(not _PART.fullmatch(p) for p in parts) or len(parts) > 8:
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
    files: Dict[str, dict] = {}
    total = 0
    try:
        with open(bundle, "rb") as raw:
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
        raise _bad(f"{os.path.basename(bundle)} is not a readable bundle (tar: {exc})") from exc
    return files, digest


def _extract_checked(tar_path: str, unpacked: str, name: str, sha256: Optional[str],
                     by_manifest: bool) -> Tuple[Dict[str, dict], Optional[str]]:
    """extract(), hashing the whole file unless `by_manifest`; a bundle it refuses is hashed
    on its own, so that an upload corrupted in transfer is named as such rather than by the
    tar damage it caused."""
    try:
        return extract(tar_path, unpacked, whole=not by_manifest)
    except RunnerError:
        check_digest(name, sha256_file(tar_path), sha256)
        raise


def _checked(tar_path: str, unpacked: str, name: str, sha256: Optional[str],
             manifest_sha256: Optional[str]) -> Tuple[dict, Dict[str, dict], str]:
    """(manifest, files, the bundle's sha256): the upload extracted and checked against the
    host's hashes and every file against the manifest.

    The host gives the whole file's sha256, and may give the manifest's too. Every file is
    hashed against the manifest anyway, so a manifest that is the host's binds every byte
    installed to the host's bundle: with it the whole file is not hashed a second time (a
    third of an install's CPU) and the host's sha256 names the bundle. A refusal on that
    path hashes the whole file after all, to name an upload corrupted in transfer as such."""
    by_manifest = bool(sha256 and manifest_sha256)
    files, digest = _extract_checked(tar_path, unpacked, name, sha256, by_manifest)
    if not by_manifest:
        # Only the staging directory holds what was extracted: a bundle whose hash is not
        # the host's is refused here, before anything of it is read or placed.
        check_digest(name, digest or "", sha256)
        return check_manifest(unpacked, files), files, digest or ""
    try:
        if (files.get(MANIFEST) or {}).get("sha256") != manifest_sha256.lower():
            raise _bad(f"upload {name}: its manifest.json is not the one the host gave (sha256 "
                       f"{manifest_sha256[:12]}..), though the whole file's hash is; push again", "integrity")
        return check_manifest(unpacked, files), files, sha256.lower()
    except RunnerError:
        check_digest(name, sha256_file(tar_path), sha256)
        raise


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


def check_manifest(staging: str, files: Dict[str, dict]) -> dict:
    """The manifest, after checking every extracted file against it."""
    if MANIFEST not in files:
        raise _bad("the bundle has no manifest.json")
    if files[MANIFEST]["size"] > MAX_MANIFEST_BYTES:
        raise _bad(f"manifest.json is over {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = read_json(os.path.join(staging, MANIFEST), MAX_MANIFEST_BYTES)
    except RunnerError as exc:
        raise _bad(f"the bundle's {exc}") from exc
    if manifest.get("schema") != 1 or not isinstance(manifest.get("files"), dict):
        raise _bad("manifest.json is not an edgekit bundle manifest (schema 1 with 'files')")
    label = f"{check_name(manifest.get('name'), 'bundle name')}-{check_name(manifest.get('version'), 'bundle version')}"
    listed = manifest["files"]
    for key in ("model", "eval"):  # what evaluate opens must be one of the checked files
        entry = manifest.get(key)
        if not isinstance(entry, dict) or entry.get("file") not in listed:
            raise _bad(f"manifest.json of {label}: field '{key}.file' does not name a file of the bundle")
    present = set(files) - {MANIFEST, SIGNATURE}
    extra, missing = sorted(present - set(listed)), sorted(set(listed) - present)
    if extra:
        raise _bad(f"{extra[0]} in {label} is missing from the manifest", "integrity")
    if missing:
        raise _bad(f"{missing[0]} is listed in the manifest of {label} but not in the bundle", "integrity")
    for name in sorted(listed):
        want, got = listed[name], files[name]
        if not isinstance(want, dict) or want.get("sha256") != got["sha256"] or want.get("size") != got["size"]:
            expected = want.get("sha256", "?") if isinstance(want, dict) else "?"
            raise _bad(f"sha256 mismatch for {name} in {label}: expected {str(expected)[:12]}.., "
                       f"got {got['sha256'][:12]}..", "integrity")
    return manifest


def _check_signature(layout: Layout, staging: str, files: Dict[str, dict]) -> Optional[str]:
    keys = trusted_keys(layout.trust)
    if not keys:
        return None  # a device that trusts no key takes unsigned bundles (hashes still checked)
    sig = os.path.join(staging, SIGNATURE) if SIGNATURE in files else None
    return verify_signature(os.path.join(staging, MANIFEST), sig, keys)


def _place(layout: Layout, staging: str, manifest: dict, meta: dict) -> bool:
    """Rename staging into bundles/NAME/VERSION; False when that exact bundle is already there."""
    dest = layout.bundle_dir(manifest["name"], manifest["version"])
    if os.path.isdir(dest):
        existing = read_json(os.path.join(dest, META)) or {}
        if existing.get("sha256") == meta["sha256"]:
            return False
        raise _bad(f"{manifest['name']} {manifest['version']} is already installed with different contents "
                   f"(sha256 {str(existing.get('sha256'))[:12]}..); give the new bundle a new version", "conflict")
    write_json_atomic(os.path.join(staging, META), meta)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    os.rename(staging, dest)
    return True


def clean_leftovers(layout: Layout) -> None:
    """What killed runners left behind (we hold the lock, so none of it is live): staging
    directories, and the folders and claimed archive of a runner update (the launcher's)."""
    for entry in os.listdir(layout.bundles):
        if entry.startswith(".staging-"):
            shutil.rmtree(os.path.join(layout.bundles, entry), ignore_errors=True)
    for entry in os.listdir(layout.bin) if os.path.isdir(layout.bin) else []:
        if entry.startswith("edgekit_device.old-") or entry.startswith("edgekit_device.new-"):
            shutil.rmtree(os.path.join(layout.bin, entry), ignore_errors=True)
        elif entry.startswith("edgekit_device.tar.unpacking-"):
            os.unlink(os.path.join(layout.bin, entry))


def clean_parts(layout: Layout, idle: float, keep: Optional[str] = None) -> List[tuple]:
    """Remove uploads in incoming/ that nothing has written to for `idle` seconds (an upload
    in flight writes every moment; the host gives up on a stalled one long before):
    [(file name, bytes freed)]."""
    if not os.path.isdir(layout.incoming):
        return []
    gone, now = [], time.time()
    for entry in sorted(os.listdir(layout.incoming)):
        path = os.path.join(layout.incoming, entry)
        if entry == keep:
            continue
        try:
            st = os.lstat(path)
            if now - st.st_mtime >= idle:
                os.unlink(path)
                gone.append((entry, st.st_size))
        except FileNotFoundError:
            continue
    return gone


def install(layout: Layout, given: str, *, sha256: Optional[str] = None, size: Optional[int] = None,
            manifest_sha256: Optional[str] = None) -> dict:
    """Install the upload `given` (a file in incoming/); see the module docstring.

    Once its size and hash are checked, the upload moves into the staging directory, so
    a runner killed later leaves incoming/ clean and only a .staging-* behind, which the
    next install removes."""
    with layout.locked():
        path = upload_path(layout, given)
        clean_leftovers(layout)
        clean_parts(layout, PART_MAX_AGE_S, keep=os.path.basename(path))
        staging = tempfile.mkdtemp(prefix=".staging-", dir=layout.bundles)
        try:
            check_size(path, size)
            tar_path, unpacked = os.path.join(staging, "bundle.tar"), os.path.join(staging, "files")
            os.rename(path, tar_path)
            os.mkdir(unpacked)
            manifest, files, digest = _checked(tar_path, unpacked, os.path.basename(path), sha256, manifest_sha256)
            signer = _check_signature(layout, unpacked, files)
            meta = {"sha256": digest, "size": os.path.getsize(tar_path), "signer": signer,
                    "installed_at": utc_now(), "name": manifest["name"], "version": manifest["version"]}
            placed = _place(layout, unpacked, manifest, meta)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if os.path.exists(path):
                os.unlink(path)  # a rejected upload is not kept: push uploads again
    return {"name": manifest["name"], "version": manifest["version"], "sha256": digest, "signer": signer,
            "installed": placed, "already_installed": not placed,
            "path": layout.bundle_dir(manifest["name"], manifest["version"])}


def bundle_manifest(layout: Layout, name: str, version: str) -> dict:
    """The manifest of an installed bundle."""
    path = os.path.join(layout.bundle_dir(name, version), MANIFEST)
    manifest = read_json(path)
    if manifest is None:
        raise RunnerError(f"{name} {version} is not installed (installed: {', '.join(layout.versions(name)) or 'none'})",
                          "state", 2)
    return manifest


