"""TOML reading that turns syntax errors into ConfigError naming the file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from edgekit.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def read_toml(path: Path, error: type[Exception] = ConfigError) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise error(f"{path}: file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: malformed TOML: {exc}") from exc
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from exc


class Invalid(ValueError):
    """A validator's error: what is wrong with the value, and apart from it what to do (the
    hint that ConfigError appends and --json reports on its own)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def pydantic_error_hint(exc: Exception) -> str | None:
    """The hint of the first error, when a validator raised Invalid with one."""
    first = exc.errors()[0]  # type: ignore[attr-defined]
    return getattr((first.get("ctx") or {}).get("error"), "hint", None)


def pydantic_error_line(path: Path, exc: Exception) -> str:
    """One line naming the file, the field and what is wrong, from a pydantic ValidationError."""
    first = exc.errors()[0]  # type: ignore[attr-defined]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        what = "unknown key"
    elif kind == "missing":
        what = "required key is missing"
    elif kind == "value_error":  # our own validators' messages say what was given and what to do
        what = str(first["ctx"]["error"])
    else:
        what = f"{first['msg']} (got {first.get('input')!r})"
    more = len(exc.errors()) - 1  # type: ignore[attr-defined]
    tail = f" (and {more} more)" if more else ""
    return f"{path}: field '{field}': {what}{tail}"
