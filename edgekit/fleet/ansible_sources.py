"""What an Ansible inventory holds beyond its own lines, read as Ansible reads it.

- Host ranges: `cam[01:40]`, `gw-[a:c].lan`, `n[0:100:10]` (start:end[:step], numbers keep
  the start's zero padding, letters run a to z); several ranges in one name multiply.
- `group_vars/` and `host_vars/` beside the inventory: for a group or host NAME the file NAME,
  NAME.yml, NAME.yaml or NAME.json, or every such file in the folder NAME/ (sorted).
- Values edgekit cannot read: a YAML tag Ansible resolves at run time (`!vault`, `!unsafe`)
  is kept as a placeholder, so that a vaulted password edgekit does not need costs nothing;
  `plain_value` refuses one, or a Jinja template, where edgekit needs the value itself.

Precedence (Ansible's, checked against `ansible-inventory --list` in the tests): the
inventory file's group vars (all, then parents before children) < group_vars/all <
group_vars/GROUP (parents before children) < the inventory file's host vars < host_vars/HOST.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import string
from pathlib import Path
from typing import Any

from edgekit.errors import ConfigError

__all__ = ["expand_hosts", "inventory_files", "vars_files", "read_vars_file", "lenient_loader", "plain_value", "Unresolved"]

_RANGE = re.compile(r"\[([^\[\]:]+):([^\[\]:]+)(?::([^\[\]:]+))?\]")
VARS_SUFFIXES = ("", ".yml", ".yaml", ".json")
# what Ansible skips in an inventory folder (its INVENTORY_IGNORE_EXTS), and edgekit's own files
IGNORED_SUFFIXES = (".pyc", ".pyo", ".swp", ".bak", "~", ".rpm", ".md", ".txt", ".rst", ".orig", ".cfg", ".retry")


def inventory_files(folder: Path) -> list[Path]:
    """The inventory files of an inventory folder, in name order; a dynamic inventory (an
    executable file, which Ansible would run) is refused: edgekit runs nothing it reads."""
    files = []
    for path in sorted(folder.iterdir()):
        if path.is_dir() or path.name.startswith(".") or path.name.endswith(IGNORED_SUFFIXES):
            continue
        if path.suffix == ".toml":
            raise ConfigError(f"{path}: an edgekit TOML inventory in a folder read as an Ansible inventory; "
                              "give the TOML file itself with --inventory")
        if os.access(path, os.X_OK):
            raise ConfigError(f"{path}: an executable file in the inventory folder (a dynamic inventory, "
                              "which edgekit does not run); write its output to a YAML file, or move it out")
        files.append(path)
    if not files:
        raise ConfigError(f"{folder}: no inventory files in this folder")
    return files


def expand_hosts(pattern: str, where: str) -> list[str]:
    """The host names a pattern stands for (one name when it has no range)."""
    parts, ranges, last = [], [], 0
    for match in _RANGE.finditer(pattern):
        parts.append(pattern[last:match.start()])
        ranges.append(_one_range(*match.groups(), where=where))
        last = match.end()
    parts.append(pattern[last:])
    if "[" in parts[-1] or "]" in parts[-1] or any("[" in p or "]" in p for p in parts[:-1]):
        raise ConfigError(f"{where}: host '{pattern}': a host range is [start:end] or [start:end:step]")
    if not ranges:
        return [pattern]
    return ["".join(itertools.chain.from_iterable(zip(parts, picks + ("",))))
            for picks in itertools.product(*ranges)]


def _one_range(start: str, end: str, step: str | None, where: str) -> list[str]:
    try:
        stride = int(step) if step is not None else 1
    except ValueError:
        raise ConfigError(f"{where}: host range step '{step}' is not a number") from None
    if stride < 1:
        raise ConfigError(f"{where}: host range step {stride}: give a step of 1 or more")
    if start.isdigit() and end.isdigit():
        width = len(start) if start.startswith("0") else 0
        return [str(n).zfill(width) for n in range(int(start), int(end) + 1, stride)]
    letters = string.ascii_letters
    if len(start) == 1 == len(end) and start in letters and end in letters and start <= end:
        return list(letters[letters.index(start):letters.index(end) + 1:stride])
    raise ConfigError(f"{where}: host range [{start}:{end}]: give numbers (01:40) or single letters (a:f)")


def vars_files(folder: Path, kind: str, name: str) -> list[Path]:
    """group_vars/NAME or host_vars/NAME in `folder` (the inventory's), as files (kind: group or host)."""
    base = folder / f"{kind}_vars"
    found = []
    for suffix in VARS_SUFFIXES:
        path = base / f"{name}{suffix}"
        if path.is_file():
            found.append(path)
        elif suffix == "" and path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in VARS_SUFFIXES
                            and not p.name.startswith("."))
    return found


def read_vars_file(path: Path) -> dict:
    """A group_vars or host_vars file (YAML or JSON) as a mapping."""
    try:
        import yaml
    except ImportError:
        raise ConfigError(f"{path}: reading group_vars and host_vars needs PyYAML: pip install 'edgekit[ansible]'") from None
    try:
        data = yaml.load(path.read_text(), Loader=lenient_loader())  # noqa: S506 (a safe loader, see there)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected variables as a mapping (key: value)")
    return data


class Unresolved(str):
    """A value Ansible resolves when it runs (a vaulted secret, an !unsafe string): its tag kept."""

    tag = ""


@functools.lru_cache(maxsize=None)
def lenient_loader():
    """PyYAML's safe loader, with any other tag (Ansible's !vault, !unsafe) read as Unresolved
    (one class, made once: a thousand hosts' variables go through it)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def unresolved(loader, suffix, node):
        value = Unresolved(node.value if isinstance(node, yaml.ScalarNode) else "")
        value.tag = "!" + suffix
        return value

    Loader.add_multi_constructor("!", unresolved)
    return Loader


def plain_value(value: Any, where: str, key: str) -> Any:
    """`value` as edgekit can use it; a clear error for a vaulted or templated one."""
    if isinstance(value, Unresolved) and value.tag == "!vault":
        raise ConfigError(f"{where}: {key} is encrypted with Ansible Vault; edgekit reads plain values: "
                          "give it unencrypted (it is no secret) or use a TOML inventory")
    if isinstance(value, str) and "{{" in value and "}}" in value:
        raise ConfigError(f"{where}: {key}={value}: a Jinja template, which only Ansible renders; "
                          "give the value itself")
    return str(value) if isinstance(value, Unresolved) else value

