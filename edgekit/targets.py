"""Target-device profiles: what a device class runs, and the budgets that gate a release.

A profile is a TOML file in ``targets/`` (or any folder given with ``--targets-dir``),
validated on load: an unknown key or a wrong type is a ConfigError naming file and field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit._toml import pydantic_error_line, read_toml
from edgekit.errors import ConfigError

__all__ = ["Budgets", "Profile", "PRECISIONS", "load_profile", "list_profiles", "search_dirs"]

PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-static")
Precision = Literal["fp32", "fp16", "int8-dynamic", "int8-static"]

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "targets"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Budgets(_Strict):
    max_model_mb: Optional[float] = Field(default=None, gt=0)
    max_peak_rss_mb: Optional[float] = Field(default=None, gt=0)
    max_latency_ms_p95: Optional[float] = Field(default=None, gt=0)
    max_accuracy_drop: Optional[float] = Field(default=None, ge=0, le=1)
    min_fidelity_cosine: Optional[float] = Field(default=None, ge=-1, le=1)


class Profile(_Strict):
    name: str
    description: str = ""
    arch: Literal["aarch64", "armv7l", "x86_64"]
    cpu: str = ""
    memory_mb: int = Field(gt=0)
    runtime: Literal["onnxruntime", "tflite"]
    runtime_version: Optional[str] = None
    precisions: list[Precision] = Field(min_length=1)
    per_channel: bool = True
    reduce_range: bool = False
    threads: int = Field(default=0, ge=0)
    providers: list[str] = ["CPUExecutionProvider"]
    objective: Literal["latency", "size", "memory"] = "latency"
    budgets: Budgets = Budgets()

    def snapshot(self) -> dict:
        """The profile as recorded in calibration records and bundle manifests."""
        return self.model_dump(mode="json")


def search_dirs(extra: list[Path] | tuple[Path, ...] = ()) -> list[Path]:
    """Where profile names are looked up, first match wins."""
    dirs = [Path(d).expanduser() for d in extra]
    env = os.environ.get("EDGEKIT_TARGETS_DIR")
    if env:
        dirs += [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    dirs += [Path.cwd() / "targets", BUILTIN_DIR]
    unique: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


def load_file(path: Path) -> Profile:
    data = read_toml(path)
    data.setdefault("name", path.stem)
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(pydantic_error_line(path, exc)) from exc


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(".toml") or os.sep in spec or "/" in spec


def load_profile(spec: str | Path, targets_dirs: list[Path] | tuple[Path, ...] = ()) -> Profile:
    """A profile by name (looked up in the targets folders) or by path to a TOML file."""
    spec = str(spec)
    if _looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(f"target profile {spec}: file not found")
        return load_file(path)
    for d in search_dirs(targets_dirs):
        candidate = d / f"{spec}.toml"
        if candidate.is_file():
            return load_file(candidate)
    known = ", ".join(sorted(p.stem for p in _profile_files(targets_dirs))) or "none"
    raise ConfigError(f"unknown target '{spec}' (known: {known}; or give a path to a .toml file)")


def _profile_files(targets_dirs) -> list[Path]:
    seen: dict[str, Path] = {}
    for d in search_dirs(targets_dirs):
        for p in sorted(d.glob("*.toml")):
            seen.setdefault(p.stem, p)
    return list(seen.values())


def list_profiles(targets_dirs: list[Path] | tuple[Path, ...] = ()) -> list[tuple[Path, Profile]]:
    """Every profile in the search folders; a broken file raises ConfigError naming it."""
    return [(p, load_file(p)) for p in _profile_files(targets_dirs)]
