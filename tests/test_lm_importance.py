"""The calibration-weighted 4-bit block search (edgekit.toolchains.lm.importance): its blocks
err less than min/max's by the importance they are searched against, blocks min/max holds
exactly stay as they are, the importance is the mean square of each projection's input on the
calibration text, and the offset recipes given calibration text make a tiny Llama that tracks
FP32 more closely than without it."""

from __future__ import annotations

import numpy as np
import pytest

BLOCK = 32


def _weighted_error(w: np.ndarray, deq: np.ndarray, importance: np.ndarray) -> np.ndarray:
    """Per block [N, blocks]: sum over its inputs of importance x squared error (w, deq [K, N])."""
    k, n = w.shape
    err = importance[:, None] * (w - deq) ** 2
    return err.T.reshape(n, k // BLOCK, BLOCK).sum(-1)


def _offset_deq(w, importance=None):
    from edgekit.toolchains.lm.offsets import offset_grid

    q, scale, offset = offset_grid(w, 4, BLOCK, importance)
    return ((q.astype(np.float32) - 8) * scale + offset).reshape(w.shape[1], -1).T


def _zero_point_deq(w, importance=None):
    from edgekit.toolchains.lm.offsets import zero_point_grid

    q, scale, zero = zero_point_grid(w, 4, BLOCK, importance)
    assert q.max() <= 15 and zero.dtype == np.uint8 and zero.max() <= 15 and (scale > 0).all()
    return ((q.astype(np.float32) - zero) * scale).reshape(w.shape[1], -1).T


@pytest.mark.parametrize("deq", [_offset_deq, _zero_point_deq], ids=["offset", "zero-point"])
def test_the_search_lowers_every_blocks_weighted_error(deq):
    rng = np.random.default_rng(0)
    w = rng.standard_t(4, size=(8 * BLOCK, 96)).astype(np.float32)  # heavy tails: min/max spends its range on them
    importance = np.exp(2 * rng.standard_normal(8 * BLOCK)).astype(np.float32)  # a few loud channels
    plain, searched = (_weighted_error(w, deq(w, imp), importance) for imp in (None, importance))
    assert (searched <= plain * (1 + 1e-5) + 1e-12).all()
    assert searched.sum() < 0.7 * plain.sum(), (searched.sum(), plain.sum())
    # with every channel alike it is still a search of the plain squared error: no worse than min/max
    flat = _weighted_error(w, deq(w, np.ones(8 * BLOCK, np.float32)), np.ones(8 * BLOCK))
    assert flat.sum() < _weighted_error(w, deq(w), np.ones(8 * BLOCK)).sum()


def test_blocks_min_max_holds_exactly_are_kept():
    """A source on the offset grid (a Q4_1 GGUF body): the search leaves its blocks as they are."""
    from edgekit.toolchains.lm.offsets import offset_grid

    rng = np.random.default_rng(1)
    lo, step = rng.normal(size=(1, 4, 64)), rng.uniform(0.01, 0.1, size=(1, 4, 64))
    codes = rng.integers(0, 16, size=(BLOCK, 4, 64))
    codes[0], codes[1] = 0, 15  # every block spans the whole grid
    w = (lo + codes * step).transpose(1, 0, 2).reshape(4 * BLOCK, 64).astype(np.float32)
    importance = np.exp(2 * rng.standard_normal(4 * BLOCK)).astype(np.float32)
    for a, b in zip(offset_grid(w, 4, BLOCK), offset_grid(w, 4, BLOCK, importance)):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def calib(tiny_lm) -> np.ndarray:
    from edgekit.datasets import load_dataset
    from edgekit.toolchains import TOOLCHAINS

    return TOOLCHAINS["lm"].model_data(tiny_lm.fp32, load_dataset(tiny_lm.calib), "calibration data").arrays["input_ids"]


def test_importance_is_the_mean_square_of_each_projection_input(tiny_lm, calib):
    """Checked where numpy computes the input alone: the first layer's q/k/v read the RMS-normed
    embedding rows of the calibration tokens."""
    import onnx
    from onnx import helper, numpy_helper

    from edgekit.toolchains.lm.graph import normalize
    from edgekit.toolchains.lm.importance import input_importance
    from edgekit.toolchains.lm.offsets import projections

    proto = onnx.load(str(tiny_lm.fp32))
    head, emb, _ = normalize(proto)
    inputs = {x for x, _ in projections(proto, BLOCK).values()}
    got = input_importance(proto, inputs, calib, tokens=2 * calib.shape[1])
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    nodes = {n.name: n for n in proto.graph.node}
    assert set(got) == inputs and all(v.shape == (inits[w.name].shape[0],) for x, w in projections(proto, BLOCK).values()
                                      for v in [got[x]])
    norm = next(n for n in proto.graph.node if n.input and n.input[0] == nodes[emb].output[0])
    assert norm.op_type == "SimplifiedLayerNormalization" and norm.output[0] in got
    eps = next(helper.get_attribute_value(a) for a in norm.attribute if a.name == "epsilon")
    x = inits[nodes[emb].input[0]][calib[:2].reshape(-1)].astype(np.float64)
    x = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * inits[norm.input[1]]
    want = (x * x).mean(0)
    np.testing.assert_allclose(got[norm.output[0]], np.maximum(want, 1e-3 * want.mean()), rtol=1e-3)


@pytest.mark.parametrize("algorithm", ["minmax-offset", "minmax-offset-head4"])
def test_calibration_text_makes_the_offset_recipes_closer_to_fp32(tiny_lm, calib, algorithm, tmp_path):
    """The same recipe with and without the calibration text, scored on the eval text (not the
    calibration text) against FP32: the weighted one's KL is lower. (Its perplexity is only
    checked to stay near FP32's: the tiny model's, about 85, moves by +-0.3% either way with any
    change of weights, so KL says which model is closer; SmolLM2's figures are in the README.)"""
    from edgekit.datasets import load_dataset
    from edgekit.device.lm import open_lm
    from edgekit.device.lm_evaluate import TextScore, reference_of
    from edgekit.recipes import Recipe
    from edgekit.toolchains import TOOLCHAINS
    from edgekit.toolchains.lm.quantize import quantize_lm

    evalw = TOOLCHAINS["lm"].model_data(tiny_lm.fp32, load_dataset(tiny_lm.eval), "eval data").arrays["input_ids"]
    ref = open_lm(str(tiny_lm.fp32))
    refs = [reference_of(ref.window_logits(w), w) for w in evalw]
    recipe = Recipe(precision="int4-block", algorithm=algorithm, block_size=BLOCK)
    scores = []
    for name, windows in (("plain", None), ("weighted", calib)):
        lm = open_lm(str(quantize_lm(tiny_lm.fp32, recipe, tmp_path / name / "model.onnx", calibration=windows)))
        score = TextScore()
        for w, r in zip(evalw, refs):
            score.update(lm.window_logits(w), w, *r)
        scores.append(score.result())
    plain, weighted = scores
    assert weighted["kl_divergence"] < 0.95 * plain["kl_divergence"], scores
    assert abs(weighted["ppl_increase"]) < 0.01 and weighted["top1_agreement"] > 0.9, scores


def test_the_toolchain_weighs_by_calibration_text_when_given_and_needs_none(tiny_lm, tmp_path):
    """`edgekit quantize` / calibrate's path: the offset recipes take the calibration text when
    there is some (the head's blocks change) and are made without it all the same."""
    from edgekit.datasets import load_dataset
    from edgekit.recipes import Recipe
    from edgekit.toolchains import TOOLCHAINS

    lm = TOOLCHAINS["lm"]
    recipe = Recipe(precision="int4-block", algorithm="minmax-offset-head4", block_size=BLOCK)
    plain = lm.quantize(tiny_lm.fp32, recipe, tmp_path / "plain" / "model.onnx")
    weighted = lm.quantize(tiny_lm.fp32, recipe, tmp_path / "weighted" / "model.onnx",
                           calibration=load_dataset(tiny_lm.calib))
    # (the toolchain keeps hard links to what it made, which onnx.load refuses: compare the bytes)
    data = [(path.parent / (path.name + ".data")).read_bytes() for path in (plain, weighted)]
    assert len(data[0]) == len(data[1]) and data[0] != data[1]
