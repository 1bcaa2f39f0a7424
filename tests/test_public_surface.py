"""The public surface: every name a module lists in __all__ exists, and the package's own
__all__ is exactly the error tree and the version (STYLE.md, item 8)."""

import importlib
import pkgutil

import pytest

import edgekit
import edgekit.errors


def _modules():
    for info in pkgutil.walk_packages(edgekit.__path__, "edgekit."):
        if info.name.startswith(("edgekit.device.", "edgekit.cli.")) and info.name.endswith("__main__"):
            continue
        yield info.name


@pytest.mark.parametrize("name", sorted(_modules()))
def test_all_names_exist(name):
    module = importlib.import_module(name)
    for public in getattr(module, "__all__", ()):
        assert hasattr(module, public), f"{name}.__all__ lists {public}, which it does not define"


def test_package_surface_is_the_error_tree():
    errors = {n for n in edgekit.errors.__all__}
    assert set(edgekit.__all__) == errors | {"__version__"}
    for name in errors:
        assert issubclass(getattr(edgekit, name), edgekit.EdgekitError)
    assert {cls.exit_code for cls in (edgekit.ConfigError, edgekit.DataError, edgekit.ModelError)} == {2}
    assert edgekit.GateError.exit_code == 3 and edgekit.EdgekitError.exit_code == 1
