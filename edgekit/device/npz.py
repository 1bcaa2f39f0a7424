"""Reading .npz data sets without loading them: stored members are memory-mapped.

Shared by the device's evaluation and the host's data sets. Standard library + numpy,
Python 3.9 syntax: this package is shipped to devices as ``edgekit_device``.
"""

from __future__ import annotations

import zipfile
from typing import Dict

import numpy as np

__all__ = ["load_npz", "NpzError"]


class NpzError(ValueError):
    """The file is not a readable .npz of plain arrays."""


def load_npz(path: str) -> Dict[str, np.ndarray]:
    """The arrays of an .npz: stored members memory-mapped, compressed ones read whole."""
    try:
        arrays = {}
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                if info.compress_type == zipfile.ZIP_STORED:
                    arrays[info.filename[:-4]] = _mmap_member(path, info)
                else:
                    with zf.open(info) as fh:
                        arrays[info.filename[:-4]] = np.lib.format.read_array(fh, allow_pickle=False)
        return arrays
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise NpzError(f"{path}: not a readable .npz file ({exc})") from exc


def _mmap_member(path: str, info: zipfile.ZipInfo) -> np.ndarray:
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)  # the zip local file header; the member's bytes follow it
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"bad local header for {info.filename}")
        fh.seek(info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little"))
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        offset = fh.tell()
    if dtype.hasobject:
        raise ValueError(f"member {info.filename} holds Python objects, which are not loaded")
    if int(np.prod(shape)) == 0:
        return np.empty(shape, dtype=dtype)  # mmap cannot map zero bytes
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
