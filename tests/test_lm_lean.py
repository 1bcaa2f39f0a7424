"""minmax-offset-lean on the tiny Llama (tests/helpers/lmkit.py), its weights put on a Q4_1-like
grid (as SmolLM2's GGUF source has them): the offset groups it drops are
the ones the calibration text measured cheapest, their joint drop stays inside the budget, the
model it makes has exactly those groups without offsets and runs, and quantize asks for the
calibration text it measures on."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.cli import assert_clean_error, run_edgekit
from helpers.lmkit import offset_weights_of

BLOCK = 32


@pytest.fixture(scope="module")
def calib(tiny_lm) -> np.ndarray:
    from edgekit.datasets import load_dataset
    from edgekit.toolchains import TOOLCHAINS

    data = TOOLCHAINS["lm"].model_data(tiny_lm.fp32, load_dataset(tiny_lm.calib), "calibration data")
    return data.arrays["input_ids"]


@pytest.fixture(scope="module")
def grid_fp32(tiny_lm, tmp_path_factory):
    """The tiny export with each projection's weights on a 4-bit grid with a float minimum per
    block of 32 inputs, as a Q4_1 GGUF file's are (SmolLM2-135M's source, what the recipe is for):
    there the offsets are exact and dropping them costs. (The tiny model as trained barely tells
    offsets from integer zero points: its costs were noise around 0, either sign.)"""
    import shutil

    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(tiny_lm.fp32))
    weights = {n.input[1] for n in proto.graph.node if n.op_type == "MatMul"}
    for init in proto.graph.initializer:
        w = numpy_helper.to_array(init) if init.name in weights else None
        if w is not None and w.ndim == 2 and w.shape[0] % BLOCK == 0:
            init.CopyFrom(numpy_helper.from_array(_on_grid(w), init.name))
    out = tmp_path_factory.mktemp("grid") / "model.onnx"
    for item in tiny_lm.fp32.parent.iterdir():  # the tokenizer and what else the export keeps beside it
        if not item.name.startswith("model.onnx") and item.is_file():
            shutil.copy(item, out.parent / item.name)
    onnx.save(proto, str(out), save_as_external_data=True, location="model.onnx.data")
    return out


def _on_grid(w: np.ndarray) -> np.ndarray:
    k, n = w.shape
    blocks = w.reshape(k // BLOCK, BLOCK, n)
    lo, hi = blocks.min(1, keepdims=True), blocks.max(1, keepdims=True)
    step = np.where(hi > lo, (hi - lo) / 15, 1.0)
    return (lo + step * np.round((blocks - lo) / step)).reshape(k, n).astype(np.float32)


@pytest.fixture(scope="module")
def fused(grid_fp32):
    """The export normalized and its shared-input projections fused, as the recipe measures it."""
    import onnx

    from edgekit.toolchains.lm.graph import normalize
    from edgekit.toolchains.lm.offsets import fuse_shared_inputs

    proto = onnx.load(str(grid_fp32))
    head, emb, tied = normalize(proto)
    fuse_shared_inputs(proto, {head}, BLOCK)
    return proto, head, emb, tied


@pytest.fixture(scope="module")
def importance(fused, calib):
    """The inputs' importance on the calibration text, as the recipe weighs its blocks by it."""
    from edgekit.toolchains.lm.quantize import _importance

    return _importance(fused[0], BLOCK, calib)


def _choose(grid_fp32, fused, calib, importance, **budget):
    from edgekit.toolchains.lm.lean import choose_plain

    proto, head, emb, tied = fused
    return choose_plain(proto, grid_fp32, head, tied, emb, 4, BLOCK, calib, importance=importance, **budget)


def test_lean_drops_the_cheapest_groups_within_its_budget(grid_fp32, fused, calib, importance):
    from edgekit.toolchains.lm.lean import LEAN_BUDGET
    from edgekit.toolchains.lm.offsets import projections

    groups = set(projections(fused[0], BLOCK, skip={fused[1]}))
    assert len(groups) == 8  # 2 layers x (q/k/v fused, attention output, gate/up fused, down)
    choice = _choose(grid_fp32, fused, calib, importance)
    assert set(choice.costs) == groups and abs(choice.base_kl) < 1e-5  # head4 is exact on this grid
    assert choice.limit == pytest.approx(np.log1p(LEAN_BUDGET) - choice.base_kl) and choice.spent <= choice.limit
    kept = groups - set(choice.plain)
    if choice.plain and kept:
        assert max(choice.costs[g] for g in choice.plain) <= min(choice.costs[g] for g in kept), choice
    # a budget the cheapest group alone fits in: that group goes, not all of them (each drop costs)
    order = sorted(choice.costs, key=choice.costs.get)
    assert choice.costs[order[-1]] > 0
    tight = _choose(grid_fp32, fused, calib, importance, budget=float(np.expm1(choice.base_kl + choice.costs[order[0]])) + 1e-9)
    assert 1 <= len(tight.plain) < len(groups) and tight.plain == order[:len(tight.plain)], tight
    assert tight.spent <= tight.limit
    # a budget past what dropping everything costs: every group goes
    assert sorted(_choose(grid_fp32, fused, calib, importance, budget=10.0).plain) == sorted(groups)


def test_the_budget_bounds_the_whole_kl_not_the_drops_alone(tiny_lm, calib):
    """On the tiny export as trained (off any grid: head4 itself costs KL), a budget below
    head4's own KL drops nothing, and one above it lets the drops spend only the difference."""
    import onnx

    from edgekit.toolchains.lm.graph import normalize
    from edgekit.toolchains.lm.lean import choose_plain
    from edgekit.toolchains.lm.offsets import fuse_shared_inputs
    from edgekit.toolchains.lm.quantize import _importance

    proto = onnx.load(str(tiny_lm.fp32))
    head, emb, tied = normalize(proto)
    fuse_shared_inputs(proto, {head}, BLOCK)
    imp = _importance(proto, BLOCK, calib)

    def choose(budget):
        return choose_plain(proto, tiny_lm.fp32, head, tied, emb, 4, BLOCK, calib, budget=budget, importance=imp)

    base = choose(0.0)
    assert base.base_kl > 0 and base.plain == [] and base.limit == pytest.approx(-base.base_kl)
    assert choose(float(np.expm1(0.5 * base.base_kl))).plain == []
    some = choose(float(np.expm1(3 * base.base_kl)))
    assert some.limit == pytest.approx(2 * base.base_kl) and some.spent <= some.limit


def test_the_lean_model_drops_exactly_the_chosen_offsets_and_runs(grid_fp32, fused, calib, importance, tmp_path,
                                                                   monkeypatch):
    import onnx

    from edgekit.device.lm import log_softmax, open_lm
    from edgekit.recipes import Recipe
    from edgekit.toolchains.lm import lean
    from edgekit.toolchains.lm.quantize import quantize_lm

    measured = _choose(grid_fp32, fused, calib, importance, budget=0.0)
    costs = sorted(measured.costs.values())
    monkeypatch.setattr(lean, "LEAN_BUDGET", float(np.expm1(measured.base_kl + costs[0])) + 1e-9)  # some, not all
    choice = _choose(grid_fp32, fused, calib, importance)
    assert 1 <= len(choice.plain) < len(costs)
    model = quantize_lm(grid_fp32, Recipe(precision="int4-block", algorithm="minmax-offset-lean", block_size=BLOCK),
                        tmp_path / "lean" / "model.onnx", calibration=calib)
    nodes = {n.name: n for n in onnx.load(str(model), load_external_data=False).graph.node}
    producer = {o: n for n in nodes.values() for o in n.output}
    for group in choice.costs:  # dropped: integer zero points over x; kept: over [x, block means]
        reads = producer.get(nodes[group + "_Q"].input[0])
        assert (reads is not None and reads.op_type == "Concat") == (group not in choice.plain), group
    _kept_groups_read_their_block_means(model, nodes, [g for g in choice.costs if g not in choice.plain], fused)
    window = calib[0]
    ref = log_softmax(open_lm(str(grid_fp32)).window_logits(window))
    got = log_softmax(open_lm(str(model)).window_logits(window))
    assert 0 <= float((np.exp(ref) * (ref - got)).sum(-1).mean()) < 0.05


def _kept_groups_read_their_block_means(model, nodes: dict, kept: list, fused) -> None:
    """A kept group's one MatMulNBits reads [x, blockmean(x)] (one AveragePool and one Concat per
    input, shared) and gives back the grid's weights up to its residuals' 4 bits (a few
    percent of a step)."""
    from onnx import numpy_helper

    from edgekit.toolchains.lm.offsets import projections

    producer = {o: n for n in nodes.values() for o in n.output}
    grid = {name: (x, numpy_helper.to_array(w))
            for name, (x, w) in projections(fused[0], BLOCK, skip={fused[1]}).items()}
    for group in kept:
        widened = producer[nodes[group + "_Q"].input[0]]
        pool = producer[widened.input[1]]
        assert (widened.op_type, pool.op_type) == ("Concat", "AveragePool")
        assert list(widened.input[:1]) == list(pool.input) == [grid[group][0]]
    for op in ("AveragePool", "Concat"):
        read = [n.input[0] for n in nodes.values() if n.op_type == op]
        assert len(read) == len(set(read)), (op, read)
    read = offset_weights_of(model)
    for group in kept:
        w = grid[group][1]
        step = np.ptp(w.reshape(-1, BLOCK, w.shape[1]), 1).max() / 15
        assert np.abs(read[group] - w).max() <= step / 20, group


def test_quantize_asks_for_calibration_text(tiny_lm, tmp_path):
    args = ("quantize", tiny_lm.fp32, "--precision", "int4-block", "--algorithm", "minmax-offset-lean")
    assert_clean_error(run_edgekit(*args, "--out", tmp_path / "a.onnx"), "--calibration")
    made = run_edgekit(*args, "--out", tmp_path / "b" / "model.onnx", "--calibration", tiny_lm.calib)
    assert made.code == 0, made.stderr
    assert (tmp_path / "b" / "model.onnx").is_file() and "(int4-block-minmax-offset-lean)" in made.stdout
