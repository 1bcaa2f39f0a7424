"""TFLite targets on the host: litert-torch conversion, ai-edge-quantizer recipes, the LiteRT
backend, and `edgekit calibrate` / `quantize` for a target whose runtime is tflite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import assert_clean_error, run_edgekit
from helpers.paths import CALIB, EVAL, EXAMPLE_ONNX, EXAMPLE_PT2, REPO
from helpers.tflitekit import TARGET, calibrated as calibrate_once


pytest.importorskip("litert_torch", reason="the tflite extra: pip install 'edgekit[tflite]'")


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """The acceptance run: calibrate the example .pt2 for the Pi Zero 2 W."""
    return calibrate_once(tmp_path_factory)


@pytest.fixture(scope="module")
def fp32(tmp_path_factory) -> Path:
    from edgekit.datasets import load_dataset
    from edgekit.toolchains.tflite.convert import load_tflite_model

    return load_tflite_model(EXAMPLE_PT2, workdir=tmp_path_factory.mktemp("fp32"), example_data=load_dataset(CALIB))


def _accuracy(model: Path, n: int = 400) -> float:
    from edgekit.device.backends import open_backend
    from edgekit.device.evaluate import run_batch

    data = np.load(EVAL)
    backend = open_backend(str(model))
    outputs = run_batch(backend, {backend.inputs[0][0]: data["input"][:n]})[0]
    return float(np.mean(outputs.argmax(1) == data["labels"][:n]))


def test_calibrate_sweeps_tflite_recipes_and_writes_model_tflite(calibrated):
    out, record = calibrated
    ids = [c["id"] for c in record["candidates"]]
    assert len(ids) >= 4 and ids[0] == "fp32" and "fp16" in ids and "int8-static-minmax-pc" in ids
    measured = [c for c in record["candidates"] if c["status"] == "ok"]
    assert len(measured) >= 4 and all(c["metrics"]["runtime"]["name"] == "ai-edge-litert" for c in measured)
    assert (out / "model.tflite").is_file() and not (out / "model.onnx").exists()
    on_disk = json.loads((out / "calibration.json").read_text())
    assert on_disk["chosen"] == record["chosen"] and on_disk["chosen"] is not None
    import hashlib

    assert on_disk["output"] == {"file": "model.tflite",
                                 "sha256": hashlib.sha256((out / "model.tflite").read_bytes()).hexdigest()}
    model = record["model"]
    assert model["path"] == str(EXAMPLE_PT2) and model["format"] == "pt2"
    assert list(model) == ["path", "sha256", "format", "inputs", "converted"] and "search" not in on_disk
    from edgekit.calibration_record import CalibrationRecord

    text = (out / "calibration.json").read_text()
    assert json.dumps(CalibrationRecord.read(out / "calibration.json", "--x").dump(), indent=2) + "\n" == text
    assert model["sha256"] == hashlib.sha256(EXAMPLE_PT2.read_bytes()).hexdigest()
    assert model["converted"]["format"] == "tflite" and model["converted"]["converter"] == "litert-torch"
    assert record["versions"]["litert-torch"] and record["versions"]["ai-edge-quantizer"]
    baseline = record["baseline"]["accuracy"]
    chosen = next(c for c in record["candidates"] if c["id"] == record["chosen"])
    assert chosen["passed"] and baseline - chosen["metrics"]["accuracy"] <= record["budgets"]["max_accuracy_drop"]


def test_dynamic_range_is_not_offered_to_a_tflite_runtime_2_14_target(calibrated):
    _, record = calibrated
    dynamic = [c for c in record["candidates"] if c["recipe"]["precision"] == "int8-dynamic"]
    assert dynamic and all(c["status"] == "not-applicable" and "tflite-runtime 2.14" in c["error"] for c in dynamic)
    assert record["chosen"] not in {c["id"] for c in dynamic}


def test_the_chosen_model_measures_the_same_through_edgekit_evaluate(calibrated):
    out, record = calibrated
    result = run_edgekit("evaluate", out / "model.tflite", "--data", EVAL, "--json")
    assert result.code == 0, result.stderr
    chosen = next(c for c in record["candidates"] if c["id"] == record["chosen"])
    assert result.json()["accuracy"] == pytest.approx(chosen["metrics"]["accuracy"])
    assert result.json()["runtime"]["name"] == "ai-edge-litert"


def test_an_onnx_model_for_a_tflite_target_names_the_remedy(tmp_path):
    for args in (("calibrate", EXAMPLE_ONNX, "--target", TARGET, "--calibration", CALIB, "--eval", EVAL,
                  "-o", tmp_path / "out"),
                 ("quantize", EXAMPLE_ONNX, "--precision", "fp16", "--target", TARGET, "-o", tmp_path / "q.tflite")):
        assert_clean_error(run_edgekit(*args), "give the PyTorch model (.pt2 or pkg.module:factory)",
                           "ONNX cannot be converted to TFLite")
    assert not (tmp_path / "out" / "model.tflite").exists()


@pytest.mark.parametrize("precision, at_most", [("fp16", 0.6), ("int8-dynamic", 0.35), ("int8-static", 0.35)])
def test_recipes_shrink_the_model_and_keep_its_accuracy(fp32, tmp_path, precision, at_most):
    from edgekit.datasets import load_dataset
    from edgekit.recipes import Recipe
    from edgekit.toolchains.tflite.convert import tflite_precision
    from edgekit.toolchains.tflite.quantize import quantize_tflite

    recipe = Recipe(precision=precision, per_channel=True, method="minmax" if precision == "int8-static" else None)
    out = quantize_tflite(fp32, recipe, tmp_path / "q.tflite", calibration=load_dataset(CALIB))
    assert out.stat().st_size <= at_most * fp32.stat().st_size
    assert tflite_precision(out) == precision  # read back from the model's tensor types
    assert _accuracy(fp32) - _accuracy(out) <= 0.01


def test_full_integer_model_takes_int8_and_the_backend_feeds_it_float(fp32, tmp_path):
    from edgekit.datasets import load_dataset
    from edgekit.device.backends import open_backend
    from edgekit.recipes import Recipe
    from edgekit.toolchains.tflite.quantize import quantize_tflite

    out = quantize_tflite(fp32, Recipe(precision="int8-static", method="minmax"), tmp_path / "s.tflite",
                          calibration=load_dataset(CALIB))
    backend = open_backend(str(out))
    assert backend.full_integer and backend.inputs == [("input", "float32", (1, 1, 8, 8))]
    x = np.load(EVAL)["input"][:1]
    got = backend.run({"input": x})[0]
    # The same run by hand on the raw interpreter: quantize, invoke, dequantize.
    from ai_edge_litert.interpreter import Interpreter

    raw = Interpreter(model_path=str(out))
    raw.allocate_tensors()
    i, o = raw.get_input_details()[0], raw.get_output_details()[0]
    assert i["dtype"] == np.int8 and o["dtype"] == np.int8
    (s_in, z_in), (s_out, z_out) = i["quantization"], o["quantization"]
    raw.set_tensor(i["index"], np.clip(np.round(x / s_in) + z_in, -128, 127).astype(np.int8))
    raw.invoke()
    want = (raw.get_tensor(o["index"]).astype(np.float32) - z_out) * s_out
    assert got.dtype == np.float32 and np.array_equal(got, want)
    reference = open_backend(str(fp32)).run({"input": x})[0]
    cosine = float(np.dot(got.ravel(), reference.ravel()) / np.linalg.norm(got) / np.linalg.norm(reference))
    assert cosine > 0.99


def test_a_dynamic_batch_model_is_resized_per_batch(tmp_path):
    import torch

    from edgekit.device.backends import open_backend
    from edgekit.toolchains.tflite.convert import silenced

    class MatMul(torch.nn.Module):  # litert-torch 0.10 converts a dynamic batch through matmul and conv
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)))

        def forward(self, x):
            return torch.matmul(x, self.w)

    import litert_torch

    net = MatMul().eval()

    with silenced():
        edge = litert_torch.convert(net, (torch.zeros(2, 4),), dynamic_shapes=({0: torch.export.Dim("batch")},))
        edge.export(str(tmp_path / "dyn.tflite"))
    backend = open_backend(str(tmp_path / "dyn.tflite"))
    assert backend.inputs[0][2] == (None, 4)
    for rows in (5, 1, 3):
        x = np.random.default_rng(rows).standard_normal((rows, 4)).astype(np.float32)
        got = backend.run({backend.inputs[0][0]: x})[0]
        assert got.shape == (rows, 3) and np.allclose(got, net(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def test_a_factory_converts_with_the_data_set_input_names(tmp_path):
    from edgekit.datasets import load_dataset
    from edgekit.device.backends import open_backend
    from edgekit.recipes import Recipe
    from edgekit.toolchains.tflite.convert import load_tflite_model
    from edgekit.toolchains.tflite.quantize import quantize_tflite

    calib = load_dataset(CALIB)
    model = load_tflite_model("examples.digits.train:build", workdir=tmp_path, example_data=calib)
    assert open_backend(str(model)).inputs == [("input", "float32", (1, 1, 8, 8))]  # the factory's own name is x
    static = quantize_tflite(model, Recipe(precision="int8-static", method="minmax"), tmp_path / "s.tflite",
                             calibration=calib)
    assert open_backend(str(static)).full_integer


def test_quantize_cli_refuses_what_the_target_runtime_gets_wrong_and_bad_flags(tmp_path):
    q = ("quantize", EXAMPLE_PT2, "--target", TARGET, "--calibration", CALIB, "-o", tmp_path / "q.tflite")
    assert_clean_error(run_edgekit(*q, "--precision", "int8-dynamic"), "--precision int8-dynamic",
                       "tflite-runtime 2.14")
    assert_clean_error(run_edgekit(*q, "--precision", "int8-static", "--reduce-range"), "--reduce-range")
    assert_clean_error(run_edgekit(*q, "--precision", "int8-static", "--method", "entropy"), "minmax only")
    assert_clean_error(run_edgekit(*q[:-1], tmp_path / "q.onnx", "--precision", "fp16"), "--out", ".tflite file")
    assert not (tmp_path / "q.tflite").exists()


def test_a_profile_without_the_old_runtime_gets_dynamic_range(tmp_path):
    profile = tmp_path / "zero-bookworm.toml"
    text = (REPO / "targets" / f"{TARGET}.toml").read_text()
    profile.write_text("\n".join(ln for ln in text.splitlines() if not ln.startswith("runtime_version")))
    result = run_edgekit("quantize", EXAMPLE_PT2, "--precision", "int8-dynamic", "--per-channel", "--target", profile,
                         "-o", tmp_path / "d.tflite", "--json")
    assert result.code == 0, result.stderr
    assert _accuracy(tmp_path / "d.tflite") >= 0.95


def test_runtime_refusal_reads_the_profile_runtime_version():
    from edgekit.errors import ConfigError
    from edgekit.recipes import Recipe
    from edgekit.toolchains.tflite.quantize import runtime_refusal

    dynamic = Recipe(precision="int8-dynamic", per_channel=True)
    for old in ("tflite-runtime 2.14", "tflite-runtime==2.13.0", "2.14", "tensorflow 2.12"):
        assert "computes the dynamic-range" in runtime_refusal(dynamic, old)
    for fine in (None, "ai-edge-litert 2.3", "ai-edge-litert 1.0", "2.15"):
        assert runtime_refusal(dynamic, fine) is None
    assert runtime_refusal(Recipe(precision="int8-static", method="minmax"), "tflite-runtime 2.14") is None
    with pytest.raises(ConfigError, match="runtime_version 'latest please'"):
        runtime_refusal(dynamic, "latest please")


def test_eval_data_that_lacks_the_input_is_a_data_error(tmp_path):
    from edgekit.calibrate import calibrate
    from edgekit.datasets import load_dataset
    from edgekit.errors import DataError
    from edgekit.targets import load_profile

    data = np.load(EVAL)
    np.savez(tmp_path / "bad.npz", pixels=data["input"][:50], labels=data["labels"][:50])
    with pytest.raises(DataError, match="lacks input 'input'"):
        calibrate(EXAMPLE_PT2, load_profile(TARGET), load_dataset(CALIB), load_dataset(tmp_path / "bad.npz"),
                  tmp_path / "out")
    assert not (tmp_path / "out" / "calibration.json").exists()


def test_no_litert_runtime_is_a_load_error_that_names_the_packages(fp32):
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('ai_edge_litert', 'tflite_runtime', 'tensorflow'):\n"
            "            raise ImportError('blocked: ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from edgekit.device.backends import ModelLoadError, open_backend\n"
            "try:\n"
            f"    open_backend({str(fp32)!r})\n"
            "except ModelLoadError as exc:\n"
            "    print(exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert "no LiteRT runtime imports" in proc.stdout and "tflite-runtime" in proc.stdout, proc.stderr


def test_calibrate_tflite_reports_each_candidate_and_says_it_measured_on_the_host(fp32, tmp_path):
    from itertools import groupby

    from edgekit.calibrate import calibrate
    from edgekit.datasets import load_dataset
    from edgekit.recipes import Recipe
    from edgekit.targets import load_profile

    steps = []
    recipes = [Recipe(precision="fp32"), Recipe(precision="int8-static", method="minmax")]
    result = calibrate(fp32, load_profile(TARGET), load_dataset(CALIB), load_dataset(EVAL), tmp_path / "out",
                       recipes=recipes, eval_samples=100, measure_opts={"runs": 5, "min_seconds": 0.05},
                       on_step=steps.append)
    assert [(s.phase, s.what) for s in steps[:2]] == [("prepare", "convert"), ("prepare", "eval data")]
    sweep = [key for key, _ in groupby((s.i, s.n, s.candidate, s.what) for s in steps if s.phase == "sweep")]
    assert sweep == [(i + 1, 2, r.id, what) for i, r in enumerate(recipes) for what in ("quantize", "evaluate")]
    details = [s.detail for s in steps if s.candidate == "int8-static-minmax" and s.what == "quantize"]
    assert details[1].startswith("calibration sample 1/") and details[-1] == "ai-edge-quantizer"
    place = result.record.measured_on
    assert place["kind"] == "host" and not place["matches_target"]
    assert place["note"].endswith("not on raspberry-pi-zero-2w (aarch64, Cortex-A53 x4 @ 1 GHz, NEON)")


def test_a_recipe_whose_model_is_no_smaller_than_fp32_is_not_applicable(tmp_path):
    # as ONNX recipes are: a tiny model's INT8 file (quantization parameters outweighing 8-bit
    # weights) was measured and could be chosen, larger than FP32
    import torch

    from edgekit.datasets import load_dataset
    from edgekit.errors import NotApplicable
    from edgekit.recipes import Recipe
    from edgekit.toolchains.tflite.convert import load_tflite_model
    from edgekit.toolchains.tflite.quantize import quantize_tflite

    torch.manual_seed(0)
    torch.export.save(torch.export.export(torch.nn.Linear(2, 3).eval(), (torch.zeros(1, 2),)), tmp_path / "tiny.pt2")
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).random((64, 2), dtype=np.float32))
    calib = load_dataset(tmp_path / "calib.npz")
    model = load_tflite_model(tmp_path / "tiny.pt2", workdir=tmp_path, example_data=calib)
    with pytest.raises(NotApplicable, match="is not smaller than FP32"):
        quantize_tflite(model, Recipe(precision="int8-static", method="minmax"), tmp_path / "s.tflite",
                        calibration=calib)
    assert not (tmp_path / "s.tflite").exists()
