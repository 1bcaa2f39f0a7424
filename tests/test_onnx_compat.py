"""A target's runtime_version against the real old onnxruntime: the device venv's 1.19 (Python 3.9).

The rules in edgekit.toolchains.onnx.compat must agree with what that runtime does with every model
calibrate makes: the models it refuses are the ones 1.19 cannot load and run, and the ones
it lets through load and run there. Calibrate, quantize and package follow the verdict.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from helpers.cli import assert_clean_error
from helpers.encoder import build_encoder, make_encoder_data
from helpers.paths import CALIB, EVAL, EXAMPLE_ONNX, REPO


TARGET = "raspberry-pi-3-bullseye"

# Loads each model in a fresh session and runs it once on ones of the declared input types;
# prints {file name: null, or the runtime's first error line}.
_DEVICE_RUN = r"""
import json, sys
import numpy as np
import onnxruntime as ort
DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}
out = {"version": ort.__version__, "models": {}}
for path in sys.argv[1:]:
    try:
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        feed = {i.name: np.ones([d if isinstance(d, int) else 1 for d in i.shape], DTYPES[i.type])
                for i in s.get_inputs()}
        s.run(None, feed)
        out["models"][path.rsplit("/", 1)[-1]] = None
    except Exception as exc:
        out["models"][path.rsplit("/", 1)[-1]] = str(exc).splitlines()[0]
print(json.dumps(out))
"""


def device_run(python: str, *models: Path) -> dict:
    proc = subprocess.run([python, "-c", _DEVICE_RUN, *map(str, models)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def _probe(path: Path, opset: int, ir: int) -> Path:
    """One Relu, stamped with this opset and IR version."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[Path]:
    """Every recipe calibrate sweeps (host-cpu allows them all) on the digits model and the encoder,
    a dynamic-INT8 digits model with Conv kept in float, and models stamped past what 1.19 reads."""
    from edgekit.calibrate import sweep_recipes
    from edgekit.datasets import load_dataset
    from edgekit.errors import NotApplicable
    from edgekit.toolchains.onnx.quantize import quantize
    from edgekit.recipes import Recipe
    from edgekit.targets import load_profile

    work = tmp_path_factory.mktemp("compat")
    encoder = build_encoder(work / "encoder.onnx")
    sources = {"digits": (EXAMPLE_ONNX, load_dataset(CALIB)),
               "encoder": (encoder, load_dataset(make_encoder_data(work / "enc.npz", 64)))}
    made = []
    for name, (source, calibration) in sources.items():
        for recipe in sweep_recipes(load_profile("host-cpu")):
            try:
                made.append(quantize(source, recipe, work / f"{name}-{recipe.id}.onnx", calibration=calibration))
            except NotApplicable:  # the per-token and weight-only recipes on the digits CNN
                assert name == "digits"
    made.append(quantize(EXAMPLE_ONNX, Recipe(precision="int8-dynamic", exclude=("Conv",)),
                         work / "digits-int8-dynamic-conv-float.onnx"))
    made += [_probe(work / "opset21.onnx", 21, 10), _probe(work / "opset22.onnx", 22, 8),
             _probe(work / "ir11.onnx", 17, 11)]
    return made


def test_verdicts_agree_with_the_device_runtime(models, device_python):  # noqa: F811
    from edgekit.toolchains.onnx.compat import runtime_refusal

    device = device_run(device_python, *models)
    version = device["version"]
    assert version.startswith("1.19"), version
    disagree = {}
    for model in models:
        refusal = runtime_refusal(model, f"onnxruntime {version}")
        error = device["models"][model.name]
        if (refusal is None) != (error is None):
            disagree[model.name] = {"rules": refusal, "device": error}
    assert not disagree, json.dumps(disagree, indent=1)
    refused = {m.name for m in models if device["models"][m.name] is not None}
    # the case that matters is covered: each dynamic-INT8 digits recipe has a ConvInteger
    assert {n for n in refused if n.startswith("digits-int8-dynamic")} == {
        m.name for m in models if m.name.startswith("digits-int8-dynamic") and "conv-float" not in m.name}
    assert {"opset22.onnx", "ir11.onnx"} <= refused
    assert "ConvInteger" in runtime_refusal(models[0].parent / "digits-int8-dynamic.onnx", "1.19")


def test_the_host_runtime_is_refused_nothing_it_runs(models):
    import onnxruntime

    from edgekit.toolchains.onnx.compat import runtime_gaps

    for model in models:
        onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        assert runtime_gaps(model, onnxruntime.__version__) == [], model.name


def test_calibrate_offers_only_what_1_19_runs(edgekit, tmp_path, device_python):  # noqa: F811
    out = tmp_path / "out"
    result = edgekit("calibrate", EXAMPLE_ONNX, "--target", TARGET, "--calibration", CALIB, "--eval", EVAL,
                     "-o", out, "--runs", "5", "--search", "off", "--json")
    assert result.code == 0, result.stderr
    record = result.json()
    dynamic = [c for c in record["candidates"] if c["recipe"]["precision"] == "int8-dynamic"]
    assert dynamic
    for c in dynamic:
        assert c["status"] == "not-applicable" and not c["passed"] and not c["metrics"], c  # n/a, not an error
        assert c["error"].startswith("not offered: onnxruntime 1.19 cannot run it: ") and "ConvInteger" in c["error"]
    assert record["chosen"] not in {c["id"] for c in dynamic}
    measured = sum(c["status"] in ("ok", "skipped") for c in record["candidates"])  # skipped: cannot win
    assert measured == len(record["candidates"]) - len(dynamic)
    assert device_run(device_python, out / "model.onnx")["models"] == {"model.onnx": None}


def test_quantize_for_the_target_refuses_what_1_19_cannot_run(edgekit, tmp_path):
    refused = edgekit("quantize", EXAMPLE_ONNX, "--precision", "int8-dynamic", "--target", TARGET,
                      "-o", tmp_path / "dyn.onnx")
    assert_clean_error(refused, "--precision int8-dynamic", TARGET, "onnxruntime 1.19", "ConvInteger", "--exclude Conv")
    assert not (tmp_path / "dyn.onnx").exists()
    kept = edgekit("quantize", EXAMPLE_ONNX, "--precision", "int8-dynamic", "--exclude", "Conv", "--target", TARGET,
                   "-o", tmp_path / "dyn-conv-float.onnx")
    assert kept.code == 0, kept.stderr
    newer = edgekit("quantize", EXAMPLE_ONNX, "--precision", "int8-dynamic", "--target", "raspberry-pi-4",
                    "-o", tmp_path / "dyn-pi4.onnx")
    assert newer.code == 0 and (tmp_path / "dyn-pi4.onnx").is_file(), newer.stderr


def test_package_refuses_a_model_1_19_cannot_run(edgekit, models, tmp_path):
    dynamic = models[0].parent / "digits-int8-dynamic.onnx"
    result = edgekit("package", dynamic, "--target", TARGET, "--eval", EVAL, "--name", "digits",
                     "--version", "1.0.0", "-o", tmp_path / "dist")
    assert_clean_error(result, TARGET, "onnxruntime 1.19 cannot run digits-int8-dynamic.onnx", "ConvInteger", code=3)
    assert not list((tmp_path / "dist").glob("*.edgekit"))


def test_a_runtime_version_that_is_not_one_names_the_field(edgekit, tmp_path):
    text = (REPO / "targets" / f"{TARGET}.toml").read_text().replace('runtime_version = "1.19"',
                                                                      'runtime_version = "latest please"')
    profile = tmp_path / "odd.toml"
    profile.write_text(text)
    result = edgekit("quantize", EXAMPLE_ONNX, "--precision", "int8-static", "--calibration", CALIB,
                     "--target", profile, "-o", tmp_path / "m.onnx")
    assert_clean_error(result, TARGET, "runtime_version 'latest please'", "1.19")


def test_version_strings():
    from edgekit.toolchains.onnx.compat import parse_version

    assert parse_version("1.19") == ((1, 19), "1.19")
    assert parse_version("onnxruntime 1.19.2") == ((1, 19), "1.19.2")
    assert parse_version("onnxruntime==1.19.2") == ((1, 19), "1.19.2")
    assert parse_version(" onnxruntime-gpu 1.23.0 ") == ((1, 23), "1.23.0")
