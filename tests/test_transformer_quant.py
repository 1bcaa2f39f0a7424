"""Quantization that holds for transformers: Constant-node weights, attention masks, weight-only
and per-token recipes, recipes that do not apply, collapsed candidates, and a search that runs
when a failing candidate could win. Real onnxruntime quantization of small encoders."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers.encoder import build_encoder, make_encoder_data
from helpers.cli import assert_clean_error
from helpers.paths import EXAMPLE_ONNX, REPO

from edgekit.candidates import Candidate, mark_collapsed
from edgekit.datasets import load_dataset
from edgekit.errors import NotApplicable
from edgekit.recipes import Recipe
from edgekit.toolchains.onnx.prepare import notes, prepare, weight_coverage
from edgekit.toolchains.onnx.quantize import quantize
from edgekit.toolchains.onnx.weightonly import quantize_weights

FAST = ("--runs", "5", "--eval-samples", "32")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("transformer")
    return d, load_dataset(make_encoder_data(d / "calib.npz", 48, seed=1)), make_encoder_data(d / "eval.npz", 32, 2)


def _cosine(model, reference, data) -> float:
    feeds = dict(np.load(data))
    y = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    r = ort.InferenceSession(str(reference), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    return float(np.mean(np.sum(y * r, 1) / (np.linalg.norm(y, axis=1) * np.linalg.norm(r, axis=1))))


def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("recipe", [Recipe(precision="int8-dynamic", per_channel=True), Recipe(precision="int8-token"),
                                    Recipe(precision="int8-block", block_size=32, accuracy_level=4)], ids=lambda r: r.id)
def test_weights_in_constant_nodes_are_quantized(work, recipe):
    """A third-party export: every weight in a Constant node, MatMul weights behind a Transpose."""
    d, calib, evald = work
    plain = build_encoder(d / "plain.onnx")
    model = build_encoder(d / "const.onnx", constant_weights=True)
    assert not onnx.load(str(model)).graph.initializer
    out = quantize(model, recipe, d / f"const-{recipe.id}.onnx", calibration=calib)
    assert out.stat().st_size <= 0.36 * model.stat().st_size
    coverage = weight_coverage(prepare(model)[0], onnx.load(str(out)))
    assert coverage["quantized"] >= 12 and coverage["share"] > 0.95
    assert "Constant" not in _ops(prepare(model)[0])
    assert _cosine(out, plain, evald) > 0.99


def test_a_recipe_that_quantizes_nothing_is_not_applicable(tmp_path):
    """The digits CNN has no MatMul: the per-token and weight-only recipes have nothing to do."""
    for precision in ("int8-token", "int8-block", "int4-block"):
        with pytest.raises(NotApplicable, match=f"{precision}.* quantizes no weight of this model"):
            quantize(EXAMPLE_ONNX, Recipe(precision=precision), tmp_path / f"{precision}.onnx")
        assert not (tmp_path / f"{precision}.onnx").exists()


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_attention_masks_crash_no_calibrator(work, method):
    """An additive mask of float32's most negative value (-inf after the add): the mask arithmetic
    and the Softmax stay in float, the record says so, and no warning is raised."""
    d, calib, evald = work
    model = build_encoder(d / "additive.onnx", additive_mask=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = quantize(model, Recipe(precision="int8-static", method=method, per_channel=True), d / f"st-{method}.onnx",
                       calibration=calib)
    kept = notes(onnx.load(str(out)))["kept_float"]
    assert "not finite or beyond" in kept and "Softmax" in kept
    softmax_inputs = {n.input[0] for n in onnx.load(str(out)).graph.node if n.op_type == "Softmax"}
    producers = {o: n.op_type for n in onnx.load(str(out)).graph.node for o in n.output}
    assert {producers[i] for i in softmax_inputs} == {"Add"}  # no DequantizeLinear before a Softmax
    assert _cosine(out, model, evald) > 0.95


def test_weight_only_blocks_round_trip(work):
    d, _, evald = work
    model = build_encoder(d / "plain.onnx")
    q4 = quantize_weights(model, d / "w4.onnx", bits=4, block_size=32, accuracy_level=4,
                          keep_8bit=["layer1/ffn/fc2"])
    q8 = quantize_weights(model, d / "w8.onnx", bits=8, block_size=32)
    for q in (q4, q8):
        graph = onnx.load(str(q)).graph
        weights = {t.name for t in graph.initializer}
        assert "MatMulNBits" in _ops(q)
        assert not [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in onnx.load(str(q4)).graph.node
            if n.op_type == "MatMulNBits"}
    assert sorted(set(bits.values())) == [4, 8] and [k for k, v in bits.items() if v == 8][0].startswith("layer1/ffn/fc2")
    tables = [t.name for t in onnx.load(str(q4)).graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert tables == ["embed.tokens/int8_rows"]  # opset 17: INT8 rows (ORT's 4-bit Gather needs opset 21)
    assert _cosine(q8, model, evald) > 0.999 and _cosine(q4, model, evald) > 0.95
    assert q4.stat().st_size < q8.stat().st_size < 0.4 * model.stat().st_size
    with pytest.raises(ValueError, match="hqq"):
        quantize_weights(model, d / "hqq8.onnx", bits=8, algorithm="hqq")


def test_collapsed_candidates_are_labelled():
    def candidate(cid, cosine, precision="int8-static"):
        c = Candidate(cid, Recipe(precision=precision))
        c.status, c.metrics = "ok", {"fidelity": {"cosine": cosine}}
        return c

    baseline = {"fidelity": {"cosine": 1.0}}
    collapsed = candidate("static", 0.40)
    fine = [candidate("dynamic", 0.986, "int8-dynamic"), candidate("token", 0.9967, "int8-token")]
    assert mark_collapsed([collapsed, *fine], baseline) == [collapsed]
    assert collapsed.record()["collapsed"] is True and "collapsed" not in fine[0].record()
    # every recipe a little off: nothing collapsed; one alone far off: collapsed
    assert mark_collapsed([candidate("a", 0.93), candidate("b", 0.92)], baseline) == []
    assert mark_collapsed([candidate("c", 0.011)], baseline)


def _profile(tmp_path, **changes) -> str:
    text = (REPO / "targets" / "host-cpu.toml").read_text()
    for old, new in changes.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "target.toml"
    path.write_text(text.replace('name = "host-cpu"', 'name = "test-target"'))
    return path


def test_search_runs_when_a_failing_candidate_could_win(edgekit, work, tmp_path):
    """FP32 passes, but INT8 misses only the fidelity budget and is a third of its size (objective
    size): calibrate searches from it instead of settling for FP32."""
    d, _, evald = work
    model = build_encoder(d / "outliers.onnx", outlier_layer=True)
    target = _profile(tmp_path, **{'objective = "latency"': 'objective = "size"',
                                   "min_fidelity_cosine = 0.95": "min_fidelity_cosine = 0.999",
                                   'precisions = ["fp32", "fp16", "int8-dynamic", "int8-static", "int8-token", '
                                   '"int8-block", "int4-block"]': 'precisions = ["fp32", "int8-dynamic"]',
                                   "per_channel = true": "per_channel = false",
                                   "reduce_range = true": "reduce_range = false"})
    out = tmp_path / "out"
    result = edgekit("calibrate", model, "--target", target, "--calibration", d / "calib.npz", "--eval", evald,
                     "-o", out, *FAST)
    assert result.code == 0, result.stderr
    record = json.loads((out / "calibration.json").read_text())
    by_id = {c["id"]: c for c in record["candidates"]}
    assert by_id["fp32"]["passed"] and not by_id["int8-dynamic"]["passed"]
    assert by_id["int8-dynamic"]["failed_budgets"][0].startswith("min_fidelity_cosine")
    search = record["search"]
    assert search["base"] == "int8-dynamic" and search["steps"], search["why"]
    assert search["granularity"] == "float"  # the target does not offer int8-block
    chosen = by_id[record["chosen"]]
    assert chosen["recipe"]["precision"] != "fp32" and chosen["metrics"]["model_mb"] < by_id["fp32"]["metrics"]["model_mb"]


def test_a_node_can_get_8_bit_weight_blocks_instead_of_int8(work):
    """The search's finer step: one MatMul in 8-bit weight blocks, the rest dynamic INT8."""
    d, calib, evald = work
    model = build_encoder(d / "outliers.onnx", outlier_layer=True)
    uniform = quantize(model, Recipe(precision="int8-dynamic"), d / "dyn.onnx")
    mixed = quantize(model, Recipe(precision="int8-dynamic", weight_only=("layer1/ffn/fc2",)), d / "dyn-w1.onnx")
    nodes = onnx.load(str(mixed)).graph.node
    assert [n.name for n in nodes if n.op_type == "MatMulNBits"] == ["layer1/ffn/fc2_Q8"]
    assert "MatMulInteger" in _ops(mixed)
    assert _cosine(mixed, model, evald) > _cosine(uniform, model, evald)


def test_an_fp16_export_is_named_as_such_when_int8_finds_no_float32_weight(edgekit, tmp_path):
    """onnxruntime's quantizer reads float32 weights only: an FP16 export gets told to give the
    FP32 one, not that it has no weight."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = tmp_path / "half.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(EXAMPLE_ONNX))), str(half))
    assert_clean_error(edgekit("quantize", half, "--precision", "int8-dynamic", "-o", tmp_path / "q.onnx"),
                       "half.onnx holds float16 ones", "FP32 export")


def test_quantize_command_refuses_what_does_not_fit(edgekit, work, tmp_path):
    d, _, _ = work
    model = build_encoder(d / "plain.onnx")
    assert_clean_error(edgekit("quantize", model, "--precision", "int4-block", "--block-size", "12", "-o",
                               tmp_path / "q.onnx"), "block size 12")
    assert_clean_error(edgekit("quantize", model, "--precision", "int8-dynamic", "--block-size", "32", "-o",
                               tmp_path / "q.onnx"), "int8-block and int4-block only")
    assert_clean_error(edgekit("quantize", model, "--precision", "int4-block", "--algorithm", "minmax-offset", "-o",
                               tmp_path / "q.onnx"), "--algorithm minmax-offset")  # a language model's
    assert_clean_error(edgekit("quantize", EXAMPLE_ONNX, "--precision", "int8-token", "-o", tmp_path / "q.onnx"),
                       "quantizes no weight of this model")
    result = edgekit("quantize", model, "--precision", "int4-block", "--block-size", "32", "--algorithm", "kquant",
                     "-o", tmp_path / "k.onnx", "--json")
    assert result.code == 0, result.stderr
    assert result.json()["recipe"]["id"] == "int4-block-b32-kquant" and "MatMulNBits" in _ops(tmp_path / "k.onnx")
    assert "INFO" not in result.stderr  # the algorithms' own loggers stay quiet


def test_own_error_is_measured_on_the_quantized_inputs(work):
    """edgekit.search.local: each quantized linear node run in float on the inputs the quantized
    model gave it; the outlier block's fc2 (outliers in its input) does the most harm itself."""
    from edgekit.search.local import LocalErrors
    from edgekit.search.sensitivity import _feeds, _units, _visible
    from edgekit.toolchains.onnx.models import model_inputs
    from edgekit.toolchains.onnx.quantize import prepared

    d, calib, _ = work
    model = build_encoder(d / "outliers.onnx", outlier_layer=True)
    quantized = quantize(model, Recipe(precision="int8-dynamic"), d / "dyn-local.onnx")
    float_graph, q_graph = onnx.load(str(prepared(model))), onnx.load(str(quantized)).graph
    local = LocalErrors(float_graph, quantized, {u[0].name for u in _units(list(float_graph.graph.node), q_graph)},
                        _visible(q_graph))
    for batch in _feeds(calib, model_inputs(model), 16, 8, None):
        local.add(batch)
    errors = local.ratios(1e6)
    assert len(errors) >= 12 and all(np.isfinite(v) and v >= 0 for v in errors.values())
    assert max(errors, key=errors.get) == "layer1/ffn/fc2"
    same = LocalErrors(float_graph, prepared(model), {"layer0/ffn/fc1"}, {})  # the float model against itself
    for batch in _feeds(calib, model_inputs(model), 8, 8, None):
        same.add(batch)
    assert same.ratios(1e6) == {"layer0/ffn/fc1": 0.0}
