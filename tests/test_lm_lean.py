"""minmax-offset-lean on the tiny Llama (tests/helpers/lmkit.py): the offset groups it drops are
the ones the calibration text measured cheapest, their joint drop stays inside the budget, the
model it makes has exactly those groups without offsets and runs, and quantize asks for the
calibration text it measures on."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.cli import assert_clean_error, run_edgekit

BLOCK = 32


@pytest.fixture(scope="module")
def calib(tiny_lm) -> np.ndarray:
    from edgekit.datasets import load_dataset
    from edgekit.toolchains import TOOLCHAINS

    data = TOOLCHAINS["lm"].model_data(tiny_lm.fp32, load_dataset(tiny_lm.calib), "calibration data")
    return data.arrays["input_ids"]


@pytest.fixture(scope="module")
def fused(tiny_lm):
    """The export normalized and its shared-input projections fused, as the recipe measures it."""
    import onnx

    from edgekit.toolchains.lm.graph import normalize
    from edgekit.toolchains.lm.offsets import fuse_shared_inputs

    proto = onnx.load(str(tiny_lm.fp32))
    head, emb, tied = normalize(proto)
    fuse_shared_inputs(proto, {head}, BLOCK)
    return proto, head, emb, tied


def _choose(tiny_lm, fused, calib, **budget):
    from edgekit.toolchains.lm.lean import choose_plain

    proto, head, emb, tied = fused
    return choose_plain(proto, tiny_lm.fp32, head, tied, emb, 4, BLOCK, calib, **budget)


def test_lean_drops_the_cheapest_groups_within_its_budget(tiny_lm, fused, calib):
    from edgekit.toolchains.lm.lean import LEAN_BUDGET
    from edgekit.toolchains.lm.offsets import projections

    groups = set(projections(fused[0], BLOCK, skip={fused[1]}))
    assert len(groups) == 8  # 2 layers x (q/k/v fused, attention output, gate/up fused, down)
    choice = _choose(tiny_lm, fused, calib)
    assert set(choice.costs) == groups and choice.base_kl > 0
    assert choice.limit == pytest.approx(np.log1p(LEAN_BUDGET)) and choice.spent <= choice.limit
    kept = groups - set(choice.plain)
    if choice.plain and kept:
        assert max(choice.costs[g] for g in choice.plain) <= min(choice.costs[g] for g in kept), choice
    # a budget the cheapest group alone fits in: that group goes, not all of them (each drop costs)
    order = sorted(choice.costs, key=choice.costs.get)
    assert choice.costs[order[-1]] > 0
    tight = _choose(tiny_lm, fused, calib, budget=float(np.expm1(choice.costs[order[0]])) + 1e-9)
    assert 1 <= len(tight.plain) < len(groups) and tight.plain == order[:len(tight.plain)], tight
    assert tight.spent <= tight.limit
    # a budget past what dropping everything costs: every group goes
    assert sorted(_choose(tiny_lm, fused, calib, budget=10.0).plain) == sorted(groups)


def test_the_lean_model_drops_exactly_the_chosen_offsets_and_runs(tiny_lm, fused, calib, tmp_path, monkeypatch):
    import onnx

    from edgekit.device.lm import log_softmax, open_lm
    from edgekit.recipes import Recipe
    from edgekit.toolchains.lm import lean
    from edgekit.toolchains.lm.quantize import quantize_lm

    costs = sorted(_choose(tiny_lm, fused, calib, budget=0.0).costs.values())
    monkeypatch.setattr(lean, "LEAN_BUDGET", float(np.expm1(costs[0])) + 1e-9)  # some groups, not all
    choice = _choose(tiny_lm, fused, calib)
    assert 1 <= len(choice.plain) < len(costs)
    model = quantize_lm(tiny_lm.fp32, Recipe(precision="int4-block", algorithm="minmax-offset-lean", block_size=BLOCK),
                        tmp_path / "lean" / "model.onnx", calibration=calib)
    nodes = {n.name: n for n in onnx.load(str(model), load_external_data=False).graph.node}
    for group in choice.costs:  # dropped: one MatMulNBits with integer zero points; kept: offsets added back
        dropped = group in choice.plain
        assert (group + "_offset" in nodes, len(nodes[group + "_Q"].input)) == (not dropped, 4 if dropped else 3)
    window = calib[0]
    ref = log_softmax(open_lm(str(tiny_lm.fp32)).window_logits(window))
    got = log_softmax(open_lm(str(model)).window_logits(window))
    assert 0 <= float((np.exp(ref) * (ref - got)).sum(-1).mean()) < 0.05


def test_quantize_asks_for_calibration_text(tiny_lm, tmp_path):
    args = ("quantize", tiny_lm.fp32, "--precision", "int4-block", "--algorithm", "minmax-offset-lean")
    assert_clean_error(run_edgekit(*args, "--out", tmp_path / "a.onnx"), "--calibration")
    made = run_edgekit(*args, "--out", tmp_path / "b" / "model.onnx", "--calibration", tiny_lm.calib)
    assert made.code == 0, made.stderr
    assert (tmp_path / "b" / "model.onnx").is_file() and "(int4-block-minmax-offset-lean)" in made.stdout
