"""`edgekit quantize` and edgekit.toolchains.onnx.quantize: real onnxruntime quantization, real inference."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from helpers.cli import assert_clean_error
from helpers.encoder import OUTLIER_PATTERN, build_encoder, make_encoder_data
from helpers.paths import CALIB, EVAL, EXAMPLE_ONNX, EXAMPLE_PT2
from edgekit.datasets import load_dataset
from edgekit.errors import ConfigError, QuantizeError
from edgekit.toolchains.onnx.quantize import CHUNK_BATCHES, quantize
from edgekit.recipes import METHODS, Recipe

EVAL_X, EVAL_Y = np.load(EVAL)["input"], np.load(EVAL)["labels"]


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _accuracy(path) -> float:
    return float((_session(path).run(None, {"input": EVAL_X})[0].argmax(1) == EVAL_Y).mean())


def _cosine(a, b) -> float:
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


def _inits(path) -> dict:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def _op_types(path) -> set:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.fixture(scope="module")
def calib():
    return load_dataset(CALIB, role="calibration data")


@pytest.fixture(scope="module")
def fp32_accuracy():
    return _accuracy(EXAMPLE_ONNX)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    d = tmp_path_factory.mktemp("encoder")
    data = make_encoder_data(d / "data.npz", 160, seed=1)
    return build_encoder(d / "enc.onnx"), build_encoder(d / "outliers.onnx", outlier_layer=True), data


# -- the acceptance lines, through the command ------------------------------------------

def test_int8_static_is_at_most_three_tenths(edgekit, tmp_path, fp32_accuracy):
    out = tmp_path / "q.onnx"
    result = edgekit("quantize", EXAMPLE_ONNX, "--precision", "int8-static", "--calibration", CALIB,
                     "-o", out, "--json")
    assert result.code == 0, result.stderr
    ratio = out.stat().st_size / EXAMPLE_ONNX.stat().st_size
    assert ratio <= 0.3
    report = result.json()
    assert report["output"] == str(out) and report["recipe"]["id"] == "int8-static-minmax"
    assert report["ratio"] == pytest.approx(ratio, abs=1e-4)
    assert {"QuantizeLinear", "DequantizeLinear"} <= _op_types(out)
    assert _accuracy(out) >= fp32_accuracy - 0.02


def test_fp16_is_at_most_055_and_keeps_float32_io(edgekit, tmp_path, fp32_accuracy):
    out = tmp_path / "h.onnx"
    result = edgekit("quantize", EXAMPLE_ONNX, "--precision", "fp16", "-o", out)
    assert result.code == 0, result.stderr
    assert str(out) in result.stdout and "x)" in result.stdout
    assert out.stat().st_size / EXAMPLE_ONNX.stat().st_size <= 0.55
    session = _session(out)
    assert [i.type for i in session.get_inputs() + session.get_outputs()] == ["tensor(float)"] * 2
    assert any(w.dtype == np.float16 for w in _inits(out).values())
    assert _accuracy(out) >= fp32_accuracy - 0.01
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)  # what `edgekit package` requires


def test_int8_dynamic(edgekit, tmp_path, fp32_accuracy):
    out = tmp_path / "d.onnx"
    result = edgekit("quantize", EXAMPLE_ONNX, "--precision", "int8-dynamic", "-o", out, "--json")
    assert result.code == 0, result.stderr
    assert result.json()["size_mb"]["after"] < result.json()["size_mb"]["before"]
    assert "DynamicQuantizeLinear" in _op_types(out)
    assert _accuracy(out) >= fp32_accuracy - 0.02


def test_pt2_quantizes_with_the_data_sets_input_names(edgekit, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "q.onnx"
    result = edgekit("quantize", EXAMPLE_PT2, "-p", "int8-static", "--calibration", CALIB, "-o", out)
    assert result.code == 0, result.stderr
    assert _accuracy(out) > 0.9



def _fixed_batch_copy(path, rows: int):
    """The example model as an export without a dynamic batch axis (torch.onnx.export's default)."""
    model = onnx.load(str(EXAMPLE_ONNX))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = rows
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("rows", [1, 3])
def test_int8_static_calibrates_a_model_with_a_fixed_batch(edgekit, tmp_path, fp32_accuracy, rows):
    # calibration batches of 16 were refused by such a model ("Got invalid dimensions for input"), exit 1;
    # 3 rows: 512 calibration samples leave a short last batch, padded
    model, out = _fixed_batch_copy(tmp_path / "fixed.onnx", rows), tmp_path / "q.onnx"
    result = edgekit("quantize", model, "--precision", "int8-static", "--calibration", CALIB, "-o", out)
    assert result.code == 0, result.stderr
    session = _session(out)
    outputs = [session.run(None, {"input": EVAL_X[i:i + rows]})[0] for i in range(0, len(EVAL_X) - rows + 1, rows)]
    predicted = np.concatenate(outputs).argmax(1)
    assert (predicted == EVAL_Y[:len(predicted)]).mean() >= fp32_accuracy - 0.02

# -- every method and option, through the library ---------------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("per_channel, reduce_range", [(False, False), (True, False), (False, True), (True, True)])
def test_static_methods_and_options(tmp_path, calib, fp32_accuracy, method, per_channel, reduce_range):
    recipe = Recipe(precision="int8-static", method=method, per_channel=per_channel, reduce_range=reduce_range)
    out = quantize(EXAMPLE_ONNX, recipe, tmp_path / "q.onnx", calibration=calib, max_samples=256)
    inits = _inits(out)
    weight = inits["head.1.weight_quantized"]
    assert weight.dtype == np.int8
    assert inits["head.1.weight_scale"].size == (64 if per_channel else 1)
    assert (np.abs(weight.astype(int)).max() <= 64) == reduce_range  # 7-bit weights
    assert _accuracy(out) >= fp32_accuracy - 0.03


def test_methods_calibrate_differently(tmp_path, calib):
    scales = {}
    for method in METHODS:
        out = quantize(EXAMPLE_ONNX, Recipe(precision="int8-static", method=method), tmp_path / f"{method}.onnx",
                       calibration=calib)
        scales[method] = {k: float(v) for k, v in _inits(out).items() if k.endswith("_output_0_scale")}
    assert scales["minmax"].keys() == scales["entropy"].keys() == scales["percentile"].keys()
    assert scales["minmax"] != scales["entropy"] and scales["minmax"] != scales["percentile"]


def test_calibration_is_fed_in_bounded_chunks(tmp_path, calib, monkeypatch):
    from onnxruntime.quantization.calibrate import HistogramCalibrater

    held = []
    clear = HistogramCalibrater.clear_collected_data
    monkeypatch.setattr(HistogramCalibrater, "clear_collected_data",
                        lambda self: (held.append([len(o[0]) for o in self.intermediate_outputs]), clear(self)))
    quantize(EXAMPLE_ONNX, Recipe(precision="int8-static", method="entropy"), tmp_path / "q.onnx",
             calibration=calib, max_samples=200, batch_size=16)
    # 200 samples: 12 batches of 16 in chunks of CHUNK_BATCHES, then the last 8 on their own
    assert [len(chunk) for chunk in held] == [CHUNK_BATCHES, 12 - CHUNK_BATCHES, 1]
    assert sum(map(sum, held)) == 200


def _quantized_weights(path) -> set:
    return {k[:-len("_quantized")] for k, v in _inits(path).items() if k.endswith("weight_quantized")}


def test_exclude_and_include(tmp_path, calib):
    conv_only = {"features.0.weight", "features.2.weight"}
    by_type = quantize(EXAMPLE_ONNX, Recipe(precision="int8-static", exclude=("Gemm",)), tmp_path / "a.onnx",
                       calibration=calib)
    assert _quantized_weights(by_type) == conv_only
    # quantize_dynamic rewrites Gemm into MatMul + Add under new names: excluded all the same
    by_name = quantize(EXAMPLE_ONNX, Recipe(precision="int8-dynamic", exclude=("/head/*",)), tmp_path / "b.onnx")
    assert _quantized_weights(by_name) == conv_only and "MatMulInteger" not in _op_types(by_name)
    only_conv = quantize(EXAMPLE_ONNX, Recipe(precision="int8-static", include=("Conv",)), tmp_path / "c.onnx",
                         calibration=calib)
    assert _quantized_weights(only_conv) == conv_only
    everything = quantize(EXAMPLE_ONNX, Recipe(precision="int8-dynamic"), tmp_path / "d.onnx")
    assert "MatMulInteger" in _op_types(everything)
    assert sum(k.endswith("_quantized") for k in _inits(everything)) == 4


def test_unmatched_exclude_is_an_error_and_writes_nothing(tmp_path, calib):
    with pytest.raises(ConfigError, match="--exclude 'no/such/node'"):
        quantize(EXAMPLE_ONNX, Recipe(precision="int8-static", exclude=("no/such/node",)), tmp_path / "q.onnx",
                 calibration=calib)
    with pytest.raises(ConfigError, match="--include 'Conv2d'"):
        quantize(EXAMPLE_ONNX, Recipe(precision="int8-dynamic", include=("Conv2d",)), tmp_path / "q.onnx")
    assert list(tmp_path.iterdir()) == []


def test_onnxruntime_failure_is_a_quantize_error(tmp_path, monkeypatch):
    """A model that passes the checker but that onnxruntime cannot run (an unknown custom op)."""
    from onnx import TensorProto, helper

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="matmul"),
             helper.make_node("Relu", ["h"], ["y"], name="relu"),
             helper.make_node("Frobnicate", ["y"], ["z"], name="custom", domain="com.example")]
    weight = onnx.numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32), "w")
    graph = helper.make_graph(nodes, "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 64])],
                              initializer=[weight])
    model = tmp_path / "custom.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.example", 1)]), str(model))
    data = tmp_path / "x.npz"
    np.savez(data, x=np.random.default_rng(0).random((20, 4), dtype=np.float32))
    with pytest.raises(QuantizeError, match="recipe int8-static failed on .*Frobnicate"):
        quantize(model, Recipe(precision="int8-static"), tmp_path / "q.onnx", calibration=load_dataset(data))
    # pre-processing gives up on this graph too: dynamic quantization goes on and records it
    out = quantize(model, Recipe(precision="int8-dynamic"), tmp_path / "d.onnx")
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert "symbolic shape inference" in json.loads(props["edgekit.quantize"])["preprocess"]
    assert list(cwd.iterdir()) == []  # nothing left behind where the user stands


# -- a transformer encoder with int64 inputs ---------------------------------------------

@pytest.mark.parametrize("precision", ["int8-static", "int8-dynamic", "fp16"])
def test_encoder_with_integer_inputs(tmp_path, encoder, precision):
    model, _, data_path = encoder
    data = load_dataset(data_path)
    out = quantize(model, Recipe(precision=precision), tmp_path / "q.onnx", calibration=data)
    feed = {k: np.asarray(v) for k, v in data.arrays.items()}
    session = _session(out)
    assert [i.type for i in session.get_inputs()] == ["tensor(int64)"] * 2
    assert _cosine(session.run(None, feed)[0], _session(model).run(None, feed)[0]) > 0.99
    assert out.stat().st_size < model.stat().st_size


def test_encoder_takes_int32_data(tmp_path, encoder):
    model, _, data_path = encoder
    arrays = dict(np.load(data_path))
    small = tmp_path / "int32.npz"
    np.savez(small, **{k: v.astype(np.int32) for k, v in arrays.items()})
    out = quantize(model, Recipe(precision="int8-static"), tmp_path / "q.onnx", calibration=load_dataset(small))
    assert _session(out).run(None, arrays)[0].shape == (len(arrays["input_ids"]), 8)


def test_excluding_the_outlier_block_restores_fidelity(tmp_path, encoder):
    _, model, data_path = encoder
    data = load_dataset(data_path)
    feed = {k: np.asarray(v) for k, v in data.arrays.items()}
    reference = _session(model).run(None, feed)[0]
    fidelity = {}
    for name, exclude in (("all", ()), ("excluded", (OUTLIER_PATTERN,))):
        out = quantize(model, Recipe(precision="int8-static", exclude=exclude), tmp_path / f"{name}.onnx",
                       calibration=data)
        fidelity[name] = _cosine(_session(out).run(None, feed)[0], reference)
    assert fidelity["all"] < 0.98 < fidelity["excluded"]


# -- bad input: exit 2, one line ----------------------------------------------------------

def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


GOOD = np.load(CALIB)["input"][:40]


@pytest.mark.parametrize("case, needles", [
    ("missing-model", ["nope.onnx", "not found"]),
    ("corrupt-model", ["garbage.onnx", "not a readable ONNX file"]),
    ("lacks-input", ["lacks input 'input'", "pixels"]),
    ("wrong-shape", ["input 'input' has shape (40, 1, 8, 9)", "axis 3"]),
    ("wrong-dtype", ["input 'input' has dtype int32", "float32"]),
    ("nan", ["NaN or Inf"]),
    ("empty", ["empty"]),
    ("no-calibration", ["--calibration"]),
    ("bad-method", ["--method 'kl'"]),
])
def test_bad_input_is_one_line(edgekit, tmp_path, case, needles):
    model, calib = EXAMPLE_ONNX, CALIB
    if case == "missing-model":
        model = tmp_path / "nope.onnx"
    elif case == "corrupt-model":
        model = tmp_path / "garbage.onnx"
        model.write_bytes(np.random.default_rng(0).bytes(4096))
    elif case == "lacks-input":
        calib = _npz(tmp_path / "c.npz", pixels=GOOD)
    elif case == "wrong-shape":
        calib = _npz(tmp_path / "c.npz", input=np.zeros((40, 1, 8, 9), np.float32))
    elif case == "wrong-dtype":
        calib = _npz(tmp_path / "c.npz", input=GOOD.astype(np.int32))
    elif case == "nan":
        calib = _npz(tmp_path / "c.npz", input=np.where(np.arange(GOOD.size).reshape(GOOD.shape) == 7, np.nan, GOOD))
    elif case == "empty":
        calib = _npz(tmp_path / "c.npz", input=np.zeros((0, 1, 8, 8), np.float32))
    args = ["quantize", model, "--precision", "int8-static", "-o", tmp_path / "q.onnx"]
    if case != "no-calibration":
        args += ["--calibration", calib]
    if case == "bad-method":
        args += ["--method", "kl"]
    assert_clean_error(edgekit(*args), *needles)
    assert not (tmp_path / "q.onnx").exists()


def test_relative_output_path_keeps_pre_processing(edgekit, tmp_path):
    result = edgekit("quantize", EXAMPLE_ONNX, "--precision", "int8-dynamic", "-o", "rel.onnx", cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert "pre-processing" not in result.stderr and (tmp_path / "rel.onnx").is_file()
    assert not list(tmp_path.glob(".edgekit-quantize-*"))


def test_per_channel_static_int8_of_an_older_opset_is_refused_before_writing(edgekit, tmp_path):
    # onnxruntime wrote a DequantizeLinear with an axis (opset 13 on) into an opset-11 model:
    # exit 0, and a file that no runtime loads ("Unrecognized attribute: axis")
    model = onnx.load(str(EXAMPLE_ONNX))
    model.opset_import[0].version = 11  # its Conv, MaxPool, Flatten, Relu and Gemm are the same there
    onnx.save(model, str(tmp_path / "op11.onnx"))
    out = tmp_path / "q.onnx"
    refused = edgekit("quantize", tmp_path / "op11.onnx", "-p", "int8-static", "--per-channel", "--calibration", CALIB,
                      "-o", out)
    assert_clean_error(refused, "needs ai.onnx opset 13 or newer, and op11.onnx imports opset 11")
    assert not out.exists()
    per_tensor = edgekit("quantize", tmp_path / "op11.onnx", "-p", "int8-static", "--calibration", CALIB, "-o", out)
    assert per_tensor.code == 0, per_tensor.stderr
    assert _accuracy(out) > 0.9


def test_a_transformer_recipe_on_a_cnn_says_what_it_looks_for(edgekit, tmp_path):
    # it said 'the model keeps its weights elsewhere', also of a model with a (small) embedding table
    result = edgekit("quantize", EXAMPLE_ONNX, "-p", "int8-token", "-o", tmp_path / "q.onnx")
    assert_clean_error(result, "int8-token quantizes no weight of this model", "Gather", "exports as Gemm",
                       "int8-dynamic and int8-static")
