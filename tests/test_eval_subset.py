"""The evaluation subset a bundle carries: a default that is statistically useful and small,
and one warning line when a bundle is mostly evaluation data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers.bundles import tar_members
from helpers.cli import run_edgekit
from helpers.paths import EVAL, EXAMPLE_ONNX
from edgekit.eval_subset import ENOUGH, FLOOR, budget_bytes, default_samples, standard_error_pp

MiB = 2**20
SIDE = 32  # images 3 x 32 x 32 float32: 12 KiB a sample


def test_enough_samples_bound_the_standard_error_and_the_floor_resolves_a_1pp_budget():
    assert standard_error_pp(ENOUGH) == pytest.approx(1.0)  # 0.5 / sqrt(2500)
    assert standard_error_pp(FLOOR) == pytest.approx(2.5) and 100 / FLOOR == 0.25  # pp per sample


@pytest.mark.parametrize("n, sample_bytes, model_bytes, expected", [
    (719, 264, 154_839, 719),              # the digits: every sample
    (60_000, 3136, 100_000, 4 * MiB // 3136),  # MNIST-sized: as many as 4 MiB holds (1337)
    (60_000, 3136, 2 * MiB, ENOUGH),       # a bigger model lets the data grow: 8 MiB would hold 2674
    (10_000, 12_296, 1_000, FLOOR),        # 12 KiB samples: 4 MiB holds 341, below the floor
    (300, 600_000, 1_000, 300),            # fewer than the floor: all of them
])
def test_the_default_subset(n, sample_bytes, model_bytes, expected):
    assert default_samples(n, sample_bytes, model_bytes) == expected
    assert budget_bytes(model_bytes) == max(4 * model_bytes, 4 * MiB)


def _pooling_model(path: Path) -> Path:
    """A tiny classifier of 3 x SIDE x SIDE images (average pool, then a 3 x 10 matrix): a few
    hundred bytes of model for kilobytes of input a sample."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "pooling", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], initializer=[weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def big_inputs(tmp_path_factory):
    """The tiny model and 1000 labelled images of 12 KiB (12 MiB of eval data)."""
    d = tmp_path_factory.mktemp("big-inputs")
    rng = np.random.default_rng(1)
    data = d / "eval.npz"
    np.savez(data, input=rng.standard_normal((1000, 3, SIDE, SIDE)).astype(np.float32),
             labels=rng.integers(0, 10, 1000).astype(np.int64))
    return _pooling_model(d / "model.onnx"), data


def _package(model, data, out, *extra):
    return run_edgekit("package", model, "--target", "host-cpu", "--eval", data, "--name", "pool", "--version", "1.0.0",
                       "-o", out, *extra)


def test_a_bundle_that_is_mostly_eval_data_says_so_in_one_line(big_inputs, tmp_path):
    model, data = big_inputs
    result = _package(model, data, tmp_path / "a")
    assert result.code == 0, result.stderr
    path = Path(result.stdout.splitlines()[0])
    members = tar_members(path)
    manifest = json.loads(members["manifest.json"])
    sample_bytes = 3 * SIDE * SIDE * 4 + 8  # the image and its label
    assert manifest["eval"]["n"] == FLOOR  # 4 MiB holds fewer than the floor
    eval_bytes, model_bytes = len(members["eval.npz"]), len(members["model.onnx"])
    assert eval_bytes > 4 * MiB and eval_bytes > 0.9 * path.stat().st_size
    fit = 4 * MiB // sample_bytes
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: "), result.stderr
    share = eval_bytes / path.stat().st_size
    assert lines[0].startswith(f"warning: the bundle is {share:.0%} evaluation data: eval.npz is "
                               f"{eval_bytes / MiB:.1f} MiB, {eval_bytes / model_bytes:.0f}x the model "
                               f"({model_bytes} B); --eval-samples {fit} keeps it within 4.0 MiB")
    assert lines[0].endswith(f"up to {50 / fit ** 0.5:.1f} pp ({50 / FLOOR ** 0.5:.1f} pp with its {FLOOR} samples)")

    smaller = _package(model, data, tmp_path / "b", "--eval-samples", str(fit), "--json")
    assert smaller.code == 0 and "warning" not in smaller.stderr, smaller.stderr
    bundle = smaller.json()
    assert bundle["warning"] is None and bundle["manifest"]["eval"]["n"] == fit
    assert bundle["manifest"]["files"]["eval.npz"]["size"] <= 4 * MiB


def test_the_warning_is_in_the_json_and_the_digits_bundle_has_none(big_inputs, tmp_path):
    model, data = big_inputs
    result = _package(model, data, tmp_path / "a", "--json")
    assert result.code == 0 and result.json()["warning"].startswith("the bundle is ")
    digits = _package(EXAMPLE_ONNX, EVAL, tmp_path / "digits", "--json")
    assert digits.code == 0 and digits.stderr == "" and digits.json()["warning"] is None
    assert digits.json()["manifest"]["eval"]["n"] == 719  # every sample, as before
