"""The device evaluation stands alone: stdlib + numpy + one runtime, relative imports, Python 3.9."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.paths import EVAL, EXAMPLE_ONNX, PY39, REPO


DEVICE = REPO / "edgekit" / "device"
FORBIDDEN = ("torch", "paramiko", "typer", "pydantic", "rich", "onnx", "edgekit.errors", "edgekit.datasets")
ARGS = [str(EXAMPLE_ONNX), str(EVAL), "--runs", "3", "--min-seconds", "0"]

# Run the module as `python -m` would, then list what the process imported.
WRAPPER = """
import json, runpy, sys
sys.argv = ["edgekit.device.evaluate"] + json.loads(sys.argv[1])
try:
    runpy.run_module("edgekit.device.evaluate", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    assert not exc.code, exc.code
print(json.dumps(sorted(sys.modules)))
"""


def imported(modules: list[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in modules)


def run(args: list[str], cwd: Path) -> list[str]:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()


def test_device_evaluation_imports_only_stdlib_numpy_and_the_runtime():
    result, modules = run(["-c", WRAPPER, json.dumps(ARGS)], cwd=REPO)
    result, modules = json.loads(result), json.loads(modules)
    assert result["accuracy"] > 0.5 and result["runtime"]["name"] == "onnxruntime"
    assert imported(modules, "onnxruntime") and imported(modules, "numpy")  # the check sees imports
    assert [name for name in FORBIDDEN if imported(modules, name)] == []


def test_the_package_runs_as_edgekit_device(tmp_path):
    shutil.copytree(DEVICE, tmp_path / "edgekit_device", ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from edgekit_device.evaluate import main; "
            "code = main(sys.argv[2:]); print(json.dumps(sorted(sys.modules))); sys.exit(code)")
    result, modules = run(["-c", code, str(tmp_path), *ARGS], cwd=tmp_path)
    assert json.loads(result)["n"] > 0
    modules = json.loads(modules)
    assert "edgekit_device.evaluate" in modules
    assert [m for m in modules if m == "edgekit" or m.startswith("edgekit.")] == []


def test_the_package_compiles_under_python_3_9(tmp_path):
    if PY39 is None:
        pytest.skip("no Python 3.9 here (pyenv install 3.9)")
    files = sorted(str(p) for p in DEVICE.glob("*.py"))
    assert len(files) >= 4
    # py_compile on each file, with the .pyc files kept out of the source tree.
    code = ("import py_compile, sys\n"
            "for i, f in enumerate(sys.argv[2:]):\n"
            "    py_compile.compile(f, cfile=f'{sys.argv[1]}/{i}.pyc', doraise=True)\n")
    proc = subprocess.run([str(PY39), "-c", code, str(tmp_path), *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
