"""A Python that sees only what `pip install -e .` installs: edgekit's own dependencies (read
from this checkout's pyproject.toml) and theirs (from the installed packages' metadata).
Every other top-level module installed here (torch, scikit-learn, LiteRT, pytest ...) fails
to import, as it would in a fresh virtualenv with the core package alone:

    result = run_edgekit("demo", ..., env=core_only_env(tmp_path))

It works through a sitecustomize.py on PYTHONPATH, so the processes that process starts
(the device runner, for one) see the same installation.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from helpers.paths import REPO

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

# What `python -m venv` puts in every virtualenv.
VENV_BASE = {"pip", "setuptools"}

SITECUSTOMIZE = '''
import os, sys

_BLOCKED = frozenset(os.environ["EDGEKIT_TEST_BLOCKED"].split(","))


class _Hiding:
    """A finder that finds nothing for the blocked top-level modules, so that both `import` and
    importlib.util.find_spec (which onnxruntime uses to look for torch) see them as missing."""

    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _BLOCKED:
            return None
        return self._finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self._finder, attr)


sys.meta_path[:] = [_Hiding(f) for f in sys.meta_path]
'''


def core_distributions() -> set[str]:
    """edgekit and everything `pip install -e .` pulls in, as canonical distribution names."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    todo = [(Requirement(r), ("",)) for r in project["dependencies"]]
    found = {"edgekit"}
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        if name in found or (req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras)):
            continue
        found.add(name)
        try:
            todo += [(Requirement(r), ("", *req.extras)) for r in metadata.requires(name) or []]
        except metadata.PackageNotFoundError:
            pass  # a dependency for another platform or Python
    return found


def blocked_modules() -> set[str]:
    """Top-level modules installed here by distributions outside the core install."""
    keep = core_distributions() | VENV_BASE
    return {module for module, dists in metadata.packages_distributions().items()
            if module not in sys.stdlib_module_names and not any(canonicalize_name(d) in keep for d in dists)}


def core_only_env(folder: Path) -> dict[str, str]:
    """Environment variables for a subprocess that sees only the core install."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "EDGEKIT_TEST_BLOCKED": ",".join(sorted(blocked_modules()))}
