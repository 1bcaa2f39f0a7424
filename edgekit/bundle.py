"""Bundle files: written deterministically, read back with the device's own checks.

A bundle (``N-V-T.edgekit``) is a plain tar of regular files, sorted by name, every
member with the same mtime (the manifest's created_at), uid/gid 0, no owner names and
mode 0644: the same inputs give the same bytes. The runner ships inside it under
``runner/`` (the same files push installs as ``bin/``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import threading
import zipfile
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from edgekit.device.install import MANIFEST, SIGNATURE
from edgekit.errors import BundleError

__all__ = ["Bundle", "write_tar", "read_bundle", "runner_files", "runner_sha256", "deterministic_npz",
           "manifest_bytes", "MANIFEST", "SIGNATURE", "SUFFIX"]

SUFFIX = ".edgekit"  # MANIFEST and SIGNATURE are the device's names (edgekit.device.install)
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can hold
Source = Union[Path, bytes]


@dataclass(frozen=True)
class Bundle:
    """A bundle on disk and what its manifest says. `digest` is its sha256, or the hashing
    of it under way (read_bundle's, waited for on first use of `sha256`)."""

    path: Path
    digest: Union[str, "Future[str]"] = field(repr=False, compare=False)
    size: int
    manifest: dict
    manifest_sha256: str = field(default="", compare=False)  # of manifest.json's bytes in the tar

    @property
    def sha256(self) -> str:
        if isinstance(self.digest, str):
            return self.digest
        try:
            return self.digest.result()
        except OSError as exc:
            raise BundleError(f"bundle {self.path}: cannot be read ({exc.strerror or exc})") from exc

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def target(self) -> str:
        return self.manifest["target"]["name"]


def runner_files() -> dict[str, bytes]:
    """The device runner as shipped: bin/edgekit_runner.py and bin/edgekit_device/*.py."""
    from edgekit.device.launcher import runner_files as device_runner_files

    return device_runner_files(str(Path(__file__).resolve().parent / "device"))


def runner_sha256() -> str:
    from edgekit.device.trust import tree_hash

    return tree_hash(runner_files())


def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def write_tar(dest: Path, members: dict[str, Source], mtime: int) -> None:
    """Write `dest` atomically: members (name -> file or bytes) sorted, normalised."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name in sorted(members):
                source = members[name]
                info = tarfile.TarInfo(name)
                info.size = len(source) if isinstance(source, bytes) else source.stat().st_size
                info.mtime, info.mode, info.type = mtime, 0o644, tarfile.REGTYPE
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if isinstance(source, bytes):
                    tar.addfile(info, io.BytesIO(source))
                else:
                    with open(source, "rb") as fh:
                        tar.addfile(info, fh)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def deterministic_npz(source: Path, dest: Path) -> Path:
    """Copy an .npz with fixed zip timestamps and modes (np.savez and zipfile stamp the
    current time), members sorted and stored uncompressed so the device can memory-map."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED, allowZip64=True) as out:
        for name in sorted(src.namelist()):
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            info.compress_type, info.external_attr, info.create_system = zipfile.ZIP_STORED, 0o644 << 16, 3
            info.file_size = src.getinfo(name).file_size
            with src.open(name) as fin, out.open(info, "w", force_zip64=info.file_size > (1 << 31)) as fout:
                for chunk in iter(lambda: fin.read(1 << 20), b""):
                    fout.write(chunk)
    return dest


def read_bundle(path: Union[str, Path]) -> Bundle:
    """A bundle's manifest, read from the tar without unpacking it; BundleError if unreadable."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BundleError(f"bundle {path}: not found")
    try:
        with tarfile.open(path, mode="r:") as tar:
            member = tar.getmember(MANIFEST)
            if not member.isreg() or member.size > (4 << 20):
                raise BundleError(f"bundle {path}: {MANIFEST} is not a regular file under 4 MiB")
            raw = tar.extractfile(member).read()
            manifest = json.loads(raw.decode("utf-8"))
    except KeyError as exc:
        raise BundleError(f"bundle {path}: no {MANIFEST} inside (is it an edgekit bundle?)") from exc
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise BundleError(f"bundle {path}: not a readable edgekit bundle ({exc})") from exc
    for key in ("schema", "name", "version", "target", "files"):
        if key not in manifest:
            raise BundleError(f"bundle {path}: manifest field '{key}' is missing")
    return Bundle(path, _hashing(path), path.stat().st_size, manifest, hashlib.sha256(raw).hexdigest())


def _hashing(path: Path) -> "Future[str]":
    """The bundle's sha256, computed in a thread of its own: a push or rollout reads the
    inventory and connects to its devices meanwhile (hashing 50 MB took 0.1 s of the
    host's CPU before the first connection was opened; hashlib lets go of the GIL). A
    bundle this host hashed before is not hashed again (edgekit.hashcache)."""
    from edgekit.device.trust import sha256_file
    from edgekit.hashcache import cached_sha256

    digest: "Future[str]" = Future()

    def work() -> None:
        try:
            digest.set_result(cached_sha256(path, lambda: sha256_file(str(path))))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever asks for the hash
            digest.set_exception(exc)
    threading.Thread(target=work, name="edgekit-bundle-sha256", daemon=True).start()
    return digest
