"""The same .tflite on older and newer devices: tflite-runtime 2.14 under numpy<2 (Python 3.9)
and ai-edge-litert under numpy 2, each a virtual environment with numpy and the runtime only.

The device venvs are made once and kept in REPO/.venv-device-tflite214 and
REPO/.venv-device-litert (git ignores them)."""

from __future__ import annotations

import os

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli import run_edgekit
from helpers.devices import REPORT_FIELDS
from helpers.paths import CALIB, EVAL, PY39, REPO, pyenv_python
from helpers.tflitekit import TARGET, calibrated


pytest.importorskip("litert_torch", reason="the tflite extra: pip install 'edgekit[tflite]'")

VENVS = {  # name: (folder, base Pythons to try, packages, what must import)
    "tflite-runtime": (REPO / ".venv-device-tflite214", ["3.9", "3.10"], ["numpy<2", "tflite-runtime==2.14.0"],
                       "import numpy, tflite_runtime.interpreter; assert numpy.__version__ < '2'"),
    "ai-edge-litert": (REPO / ".venv-device-litert", ["3.10"], ["numpy>=2", "ai-edge-litert==2.3.0"],
                       "import numpy, ai_edge_litert.interpreter; assert numpy.__version__ >= '2'"),
}
VERSIONS = {"tflite-runtime": "2.14.0", "ai-edge-litert": "2.3.0"}
TOLERANCE = 0.005  # half a percentage point


def _device_python(runtime: str) -> str:
    folder, bases, packages, check = VENVS[runtime]
    python = folder / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", check], capture_output=True).returncode == 0:
        return str(python)
    base = next((str(pyenv_python(v)) for v in bases if pyenv_python(v)), sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(folder)], check=True, timeout=300)
    pip = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *packages], capture_output=True, text=True,
                         timeout=900)
    assert pip.returncode == 0, f"could not make the {runtime} device venv (pip needs PyPI): {pip.stderr[-2000:]}"
    assert subprocess.run([str(python), "-c", check], capture_output=True).returncode == 0
    return str(python)


@pytest.fixture(scope="module", params=sorted(VENVS))
def device(request):
    """(runtime name, the device venv's python)."""
    return request.param, _device_python(request.param)


@pytest.fixture(scope="module")
def runner_copy(tmp_path_factory) -> Path:
    """edgekit/device copied as the package `edgekit_device`, as devices get it."""
    root = tmp_path_factory.mktemp("standalone")
    shutil.copytree(REPO / "edgekit" / "device", root / "edgekit_device", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _standalone(python: str, root: Path, model: Path, threads: int = 4) -> dict:
    import json

    proc = subprocess.run([python, "-m", "edgekit_device.evaluate", str(model), str(EVAL), "--threads", str(threads),
                           "--runs", "10", "--min-seconds", "0.1"], capture_output=True, text=True, cwd=root,
                          env={"PATH": "/usr/bin:/bin"}, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _host_accuracy(record: dict) -> float:
    return next(c for c in record["candidates"] if c["id"] == record["chosen"])["metrics"]["accuracy"]


def test_the_calibrated_model_runs_standalone_on_each_runtime(device, runner_copy, tmp_path_factory):
    runtime, python = device
    out, record = calibrated(tmp_path_factory)
    result = _standalone(python, runner_copy, out / "model.tflite")
    assert result["runtime"] == {"name": runtime, "version": VERSIONS[runtime], "providers": [],
                                 "threads": min(4, len(os.sched_getaffinity(0))), "threads_asked": 4}
    assert abs(result["accuracy"] - _host_accuracy(record)) <= TOLERANCE
    assert result["n"] == record["data"]["eval"]["n_used"] and result["latency_ms"]["n"] >= 10
    # The venv holds numpy and the runtime only: edgekit, torch and pydantic are not there to import.
    proc = subprocess.run([python, "-c", "import edgekit"], capture_output=True, cwd=runner_copy)
    assert proc.returncode != 0


@pytest.fixture(scope="module")
def dynamic_range_model(tmp_path_factory) -> tuple[Path, float]:
    """int8-dynamic per-channel, the recipe calibrate does not offer to a tflite-runtime 2.14
    target, and its accuracy on this host's ai-edge-litert."""
    from edgekit.datasets import load_dataset
    from edgekit.evaluate import measure
    from edgekit.recipes import Recipe
    from edgekit.toolchains.tflite.convert import load_tflite_model
    from edgekit.toolchains.tflite.quantize import quantize_tflite

    work = tmp_path_factory.mktemp("dynamic")
    calib = load_dataset(CALIB)
    fp32 = load_tflite_model(REPO / "examples" / "digits" / "model.pt2", workdir=work, example_data=calib)
    model = quantize_tflite(fp32, Recipe(precision="int8-dynamic", per_channel=True), work / "dyn.tflite")
    return model, measure(model, EVAL, runs=5, min_seconds=0.0)["accuracy"]


def test_why_dynamic_range_is_not_offered_to_tflite_runtime_2_14(device, runner_copy, dynamic_range_model):
    runtime, python = device
    model, host = dynamic_range_model
    # One thread: 2.14's hybrid kernels spin for tens of ms per run on a busy two-core host.
    accuracy = _standalone(python, runner_copy, model, threads=1)["accuracy"]
    if runtime == "tflite-runtime":
        assert host - accuracy > 0.5  # loads and runs without an error, and is wrong
    else:
        assert abs(accuracy - host) <= TOLERANCE


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out, _ = calibrated(tmp_path_factory)
    dist = tmp_path_factory.mktemp("dist")
    result = run_edgekit("package", out / "model.tflite", "--target", TARGET, "--eval", EVAL, "--name", "digits",
                         "--version", "1.0.0", "--calibration-record", out / "calibration.json", "-o", dist)
    assert result.code == 0, result.stderr
    return Path(result.stdout.splitlines()[0])


def test_the_bundle_installs_and_evaluates_on_a_local_device_of_each_runtime(device, bundle, tmp_path,
                                                                             tmp_path_factory):
    from edgekit.fleet.inventory import load_inventory
    from edgekit.fleet.push import remote_evaluate
    from edgekit.transport import connect

    runtime, python = device
    inventory = tmp_path / "fleet.toml"
    inventory.write_text(f'[[device]]\nname = "zero-{runtime}"\ntransport = "local"\nroot = "{tmp_path / "dev"}"\n'
                         f'python = "{python}"\ntarget = "{TARGET}"\n')
    pushed = run_edgekit("push", bundle, "--inventory", inventory, "--activate", "--json")
    assert pushed.code == 0, pushed.stdout + pushed.stderr
    dev = load_inventory(inventory).devices[0]
    with connect(dev.endpoint) as transport:
        report = remote_evaluate(transport, dev, "digits")["report"]
    for section, fields in REPORT_FIELDS.items():
        part = report[section] if section else report
        assert [f for f in fields if f not in part] == [], section
    assert report["status"] == "ok" and report["bundle"]["target"] == TARGET
    assert report["runtime"]["name"] == runtime and report["runtime"]["version"] == VERSIONS[runtime]
    assert report["device"]["python"].startswith("3.9" if runtime == "tflite-runtime" and
                                                 PY39 else "3.")
    _, record = calibrated(tmp_path_factory)
    metrics = report["metrics"]
    assert abs(metrics["accuracy"] - _host_accuracy(record)) <= TOLERANCE
    assert abs(metrics["accuracy"] - metrics["accuracy_expected"]) <= TOLERANCE
