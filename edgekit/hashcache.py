"""Whole-file sha256s remembered by the file's identity: a bundle is hashed once per host.

A push gives each device the bundle's sha256 and compares it with what the devices
installed; hashing 50 MB costs 0.16-0.2 s of CPU on a CPU without SHA instructions, most of
what an unchanged re-push costs the host beside starting Python. So the answer is kept in
the cache folder (EDGEKIT_CACHE, else $XDG_CACHE_HOME/edgekit, else ~/.cache/edgekit), in
bundle-sha256.json, under the file's absolute path, with its device, inode, size and
modification and change times: a file written again gets a new change time, which no user
can set back, so its old entry no longer matches (git's index trusts a file's stat alike).
Like git, a file changed within a second before it was hashed is not remembered: a file
system's clock ticks coarsely, and a second write in the same tick would keep the stat.
The newest KEPT entries are kept; a cache that cannot be read or written is left alone
and the file is hashed as before.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

__all__ = ["cache_home", "cached_sha256"]

CACHE_FILE = "bundle-sha256.json"
KEPT = 256
SETTLED_S = 1.0  # a file changed more recently than this before it was hashed is not remembered


def cache_home() -> Path:
    """edgekit's cache folder: EDGEKIT_CACHE, else $XDG_CACHE_HOME/edgekit, else ~/.cache/edgekit."""
    given = os.environ.get("EDGEKIT_CACHE")
    if given:
        return Path(given).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "edgekit"


def _identity(st: os.stat_result) -> list:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def cached_sha256(path: Path, compute: Callable[[], str]) -> str:
    """`path`'s sha256 from the cache when the file is the one hashed before, else `compute()`d
    (and remembered when the file did not change meanwhile and had settled before)."""
    key = str(Path(path).resolve())
    try:
        before = os.stat(key)
    except OSError:
        return compute()
    cache = cache_home() / CACHE_FILE
    entries = _read(cache)
    entry = entries.get(key)
    if isinstance(entry, dict) and entry.get("stat") == _identity(before) and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    started = time.time()
    digest = compute()
    try:
        after = os.stat(key)
    except OSError:
        return digest
    settled = started - max(before.st_mtime_ns, before.st_ctime_ns) / 1e9 >= SETTLED_S
    if settled and _identity(after) == _identity(before):
        _remember(cache, key, {"stat": _identity(before), "sha256": digest, "at": started})
    return digest


def _read(cache: Path) -> dict:
    try:
        with open(cache, encoding="utf-8") as fh:
            entries = json.load(fh)
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _remember(cache: Path, key: str, entry: dict) -> None:
    """Add `entry` (read again first: another edgekit may have written meanwhile), keep the
    newest KEPT, replace the file in one rename."""
    entries = _read(cache)
    entries[key] = entry
    newest = sorted(entries.items(), key=lambda kv: _when(kv[1]), reverse=True)[:KEPT]
    tmp: Optional[str] = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{CACHE_FILE}.", dir=cache.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(dict(newest), fh)
        os.replace(tmp, cache)
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _when(entry) -> float:
    at = entry.get("at") if isinstance(entry, dict) else None
    return at if isinstance(at, (int, float)) else 0.0
