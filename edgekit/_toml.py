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
    """One line naming the file, the field and what is wrong, from a pydantic ValidationError.
    A missing key beside an unknown one in the same table names both: the unknown one is most
    often the missing one misspelled (`kind` for `format`)."""
    errors = exc.errors()  # type: ignore[attr-defined]
    first = errors[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    kind = first["type"]
    named = [first]
    if kind == "extra_forbidden":
        what = "unknown key"
    elif kind == "missing":
        what = "required key is missing"
        beside = [e for e in errors if e["type"] == "extra_forbidden" and e["loc"][:-1] == first["loc"][:-1]]
        if beside:
            named.append(beside[0])
            what += f", and '{'.'.join(str(p) for p in beside[0]['loc'])}' is no key here (misspelled?)"
    elif kind == "value_error":  # our own validators' messages say what was given and what to do
        what = str(first["ctx"]["error"])
    else:
        what = f"{first['msg']} (got {first.get('input')!r})"
    more = len(errors) - len(named)
    tail = f" (and {more} more)" if more else ""
    return f"{path}: field '{field}': {what}{tail}"
