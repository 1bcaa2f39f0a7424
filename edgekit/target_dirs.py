"""Where target profiles are looked up (see edgekit.targets), without reading them: the
inventory checks a device's target by name with these, and starts without pydantic's models.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["BUILTIN_DIR", "user_dir", "search_dirs", "sourced_dirs", "sourced_files", "profile_files", "profile_names"]


def _shipped() -> Path:
    from importlib.resources import files

    return Path(str(files("edgekit") / "resources" / "targets"))


BUILTIN_DIR = _shipped()  # the repository's top-level targets/ points here


def user_dir() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config).expanduser() / "edgekit" / "targets"


def search_dirs(extra: list[Path] | tuple[Path, ...] = ()) -> list[Path]:
    """Where profile names are looked up, first match wins (the order is in edgekit.targets)."""
    return [d for d, _ in sourced_dirs(extra)]


def sourced_dirs(extra: list[Path] | tuple[Path, ...] = ()) -> list[tuple[Path, str]]:
    """The search folders that exist, each with the name of where it comes from; a folder
    reached twice (the checkout's targets/ is the shipped one) counts once, at its first place."""
    dirs = [(Path(d).expanduser(), "--targets-dir") for d in extra]
    env = os.environ.get("EDGEKIT_TARGETS_DIR")
    if env:
        dirs += [(Path(p).expanduser(), "$EDGEKIT_TARGETS_DIR") for p in env.split(os.pathsep) if p]
    dirs += [(Path.cwd() / "targets", "project"), (user_dir(), "user"), (BUILTIN_DIR, "shipped")]
    unique: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for d, source in dirs:
        if d.is_dir() and d.resolve() not in seen:
            seen.add(d.resolve())
            unique.append((d, "shipped" if d.resolve() == BUILTIN_DIR.resolve() else source))
    return unique


def profile_files(targets_dirs) -> list[Path]:
    return [p for p, _ in sourced_files(targets_dirs)]


def sourced_files(targets_dirs=()) -> list[tuple[Path, str]]:
    """(file, where it comes from) of every profile name, the first found of each."""
    seen: dict[str, tuple[Path, str]] = {}
    for d, source in sourced_dirs(targets_dirs):
        for p in sorted(d.glob("*.toml")):
            seen.setdefault(p.stem, (p, source))
    return list(seen.values())


def profile_names(targets_dirs: list[Path] | tuple[Path, ...] = ()) -> list[str]:
    """The names load_profile finds (file stems in the search folders), sorted; files are not read."""
    return sorted(p.stem for p in profile_files(targets_dirs))
