"""Install a bundle: check the upload, extract strictly, verify, rename into bundles/.

Every step before the final rename works on incoming/ and a private staging directory,
so a failure (or a kill) at any point leaves bundles/ and current/ as they were. On a
failure the upload is removed, so incoming/ holds only uploads still in flight.

The tar is untrusted: edgekit_device.untar reads it (plain regular files with plain
relative names only, counts and sizes capped); every file must match the manifest's sha256
and size, with nothing extra and nothing missing. edgekit_device.receive installs an upload
as it arrives, with the same checks.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

from .state import META, Layout, RunnerError, check_name, read_json, utc_now, write_json_atomic
from .trust import sha256_file, trusted_keys, unreadable_trust, verify_signature
from .untar import PLAIN_PART, extract

__all__ = ["install", "clean_leftovers", "clean_parts", "checked", "place_checked", "upload_path", "META",
           "PART_MAX_AGE_S"]

MAX_MANIFEST_BYTES = 4 << 20
PART_MAX_AGE_S = 24 * 3600  # an upload untouched for a day is removed by the next install
MANIFEST, SIGNATURE = "manifest.json", "manifest.sig"
RECEIVING, OWNER = ".receiving-", "owner"  # a receiving install's staging folder, and its lock file


def _bad(message: str, kind: str = "bundle") -> RunnerError:
    return RunnerError(message, kind, 2)


def upload_path(layout: Layout, given: str, must_exist: bool = True) -> str:
    """The upload as a path inside incoming/; anything else is refused (we delete it on failure)."""
    path = os.path.abspath(given if os.path.isabs(given) else os.path.join(layout.root, given))
    if os.path.dirname(path) != layout.incoming or not PLAIN_PART.fullmatch(os.path.basename(path)):
        raise RunnerError(f"install takes a file in {layout.incoming}, got {given}", "usage", 2)
    if must_exist and not os.path.isfile(path):
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


Extract = Callable[[bool], Tuple[Dict[str, dict], Optional[str]]]  # whole -> extract()'s answer


def checked(extract_into: Extract, whole_sha256: Callable[[], str], unpacked: str, name: str,
            sha256: Optional[str], manifest_sha256: Optional[str]) -> Tuple[dict, Dict[str, dict], str]:
    """(manifest, files, the bundle's sha256): the upload extracted (`extract_into`) and checked
    against the host's hashes, and every file against the manifest; `whole_sha256` hashes the
    whole upload on its own.

    The host gives the whole file's sha256, and may give the manifest's too. Every file is
    hashed against the manifest anyway, so a manifest that is the host's binds every byte
    installed to the host's bundle: with it the whole file is not hashed a second time (a
    third of an install's CPU) and the host's sha256 names the bundle. A refusal on that
    path hashes the whole file after all, to name an upload corrupted in transfer as such."""
    by_manifest = bool(sha256 and manifest_sha256)
    try:
        files, digest = extract_into(not by_manifest)
    except RunnerError:
        # a bundle refused here is hashed on its own, so that an upload corrupted in transfer
        # is named as such rather than by the tar damage it caused
        check_digest(name, whole_sha256(), sha256)
        raise
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
        check_digest(name, whole_sha256(), sha256)
        raise


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
    unreadable = unreadable_trust(layout.trust)
    if not keys and unreadable:  # someone meant to lock the device: fail closed, not open
        raise RunnerError(f"trust/{unreadable[0]} holds no public key this device can read, and no other key is "
                          "trusted; fix or remove it (edgekit keys trust KEY.pub writes a good one)", "integrity", 2)
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
        folder = os.path.join(layout.bundles, entry)
        if entry.startswith(".staging-") or (entry.startswith(RECEIVING) and abandoned(folder)):
            shutil.rmtree(folder, ignore_errors=True)
    for entry in os.listdir(layout.bin) if os.path.isdir(layout.bin) else []:
        if entry.startswith("edgekit_device.old-") or entry.startswith("edgekit_device.new-"):
            shutil.rmtree(os.path.join(layout.bin, entry), ignore_errors=True)
        elif entry.startswith("edgekit_device.tar.unpacking-"):
            os.unlink(os.path.join(layout.bin, entry))


def abandoned(folder: str) -> bool:
    """Whether a bundles/.receiving-* folder (edgekit_device.receive: an install that unpacks as
    the upload arrives, without the writer lock) was left by a runner that is gone: its `owner`
    file is locked by the runner while it lives."""
    try:
        fd = os.open(os.path.join(folder, OWNER), os.O_RDWR)
    except FileNotFoundError:
        return True  # killed before it made its owner file: nobody holds the folder
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


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
            manifest, files, digest = checked(lambda whole: extract(tar_path, unpacked, whole),
                                              lambda: sha256_file(tar_path), unpacked, os.path.basename(path),
                                              sha256, manifest_sha256)
            return place_checked(layout, unpacked, manifest, files, digest, os.path.getsize(tar_path))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if os.path.exists(path):
                os.unlink(path)  # a rejected upload is not kept: push uploads again


def place_checked(layout: Layout, unpacked: str, manifest: dict, files: Dict[str, dict], digest: str,
                  size: int) -> dict:
    """Put a checked bundle in place (the writer lock held): its signature checked, its record
    written, bundles/NAME/VERSION renamed in; install's answer."""
    signer = _check_signature(layout, unpacked, files)
    meta = {"sha256": digest, "size": size, "signer": signer,
            "installed_at": utc_now(), "name": manifest["name"], "version": manifest["version"]}
    placed = _place(layout, unpacked, manifest, meta)
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


