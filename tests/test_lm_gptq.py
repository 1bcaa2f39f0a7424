"""The lean recipe's plain groups by onnxruntime's GPTQ (edgekit.toolchains.lm.gptq), on the tiny
Llama's projections with their inputs' Hessians from the calibration text: the codes, scales
and integer zero points read back give the function's fake-quantized weights exactly, the
output error under the Hessian is below the importance search's (which weighs each channel
alone) and below plain rounding on GPTQ's own grid, the Hessian's diagonal is the importance's
mean square, and a Hessian budget that forces several passes gives the same grids."""

from __future__ import annotations

import numpy as np
import pytest

BLOCK = 32


@pytest.fixture(scope="module")
def calib(tiny_lm) -> np.ndarray:
    from edgekit.datasets import load_dataset
    from edgekit.toolchains import TOOLCHAINS

    return TOOLCHAINS["lm"].model_data(tiny_lm.fp32, load_dataset(tiny_lm.calib), "calibration data").arrays["input_ids"]


@pytest.fixture(scope="module")
def groups(tiny_lm):
    """The tiny export normalized and fused as the lean recipe measures it; input -> weight [K, N]."""
    import onnx
    from onnx import numpy_helper

    from edgekit.toolchains.lm.graph import normalize
    from edgekit.toolchains.lm.offsets import fuse_shared_inputs, projections

    proto = onnx.load(str(tiny_lm.fp32))
    head, _, _ = normalize(proto)
    fuse_shared_inputs(proto, {head}, BLOCK)
    weights = {x: numpy_helper.to_array(w).astype(np.float32) for x, w in projections(proto, BLOCK, skip={head}).values()}
    return proto, weights


@pytest.fixture(scope="module")
def hessians(groups, calib):
    from edgekit.toolchains.lm.importance import input_hessians

    return input_hessians(groups[0], list(groups[1]), calib)


def _deq(grid, shape):
    q, scale, zero = grid
    assert q.dtype == np.uint8 and zero.dtype == np.uint8 and q.max() <= 15 and zero.max() <= 15
    return ((q.astype(np.float32) - zero) * scale).reshape(shape[1], -1).T


def _output_error(w, deq, h) -> float:
    """E|x (W - deq)|^2 summed over outputs, x with E[x x^T] = h."""
    d = (w - deq).astype(np.float64)
    return float(np.sum(d * (h @ d)))


def test_gptq_grids_hold_onnxruntimes_weights_and_err_less_than_the_search(groups, hessians):
    from edgekit.toolchains.lm import gptq
    from edgekit.toolchains.lm.importance import importance_of
    from edgekit.toolchains.lm.offsets import zero_point_grid

    _, weights = groups
    assert len(weights) == 8  # 2 layers x (q/k/v fused, attention output, gate/up fused, down)
    for x, w in weights.items():
        h = hessians[x]
        with gptq._factor_as_read(gptq._reads_transposed()):
            fake = gptq._ort_gptq(w, h, 4, BLOCK)
        got = _deq(gptq.gptq_grid(w, h, 4, BLOCK), w.shape)
        assert np.abs(got - fake).max() <= 1e-6 * np.abs(fake).max(), x  # on its integer grid: float rounding only
        searched = _output_error(w, _deq(zero_point_grid(w, 4, BLOCK, importance_of(np.diag(h))), w.shape), h)
        assert _output_error(w, got, h) < searched, x
        # GPTQ with H = I spreads nothing: rounding on the same grid; the real H must do better
        rounded = _deq(gptq.gptq_grid(w, np.eye(len(h)), 4, BLOCK), w.shape)
        assert _output_error(w, got, h) < 0.9 * _output_error(w, rounded, h), x


def test_the_hessians_diagonal_is_the_importances_mean_square(groups, hessians, calib):
    from edgekit.toolchains.lm.importance import importance_of, input_importance

    proto, weights = groups
    importance = input_importance(proto, list(weights), calib)
    for x, h in hessians.items():
        assert h.shape == (weights[x].shape[0],) * 2 and np.allclose(h, h.T)
        np.testing.assert_allclose(importance_of(np.diag(h)), importance[x], rtol=1e-5)


def test_a_small_hessian_budget_takes_more_passes_for_the_same_grids(groups, calib, monkeypatch):
    from edgekit.toolchains.lm import gptq, importance

    proto, weights = groups
    whole = gptq.gptq_grids(proto, weights, calib, 4, BLOCK)
    passes = []
    real = importance.input_hessians
    monkeypatch.setattr(importance, "input_hessians", lambda *a, **k: passes.append(a[1]) or real(*a, **k))
    budget = 8 * max(w.shape[0] for w in weights.values()) ** 2
    monkeypatch.setattr(gptq, "HESSIAN_BYTES", budget)
    split = gptq.gptq_grids(proto, weights, calib, 4, BLOCK)
    assert len(passes) > 1 and sorted(x for p in passes for x in p) == sorted(weights) == sorted(split)
    assert all(sum(8 * weights[x].shape[0] ** 2 for x in p) <= budget for p in passes), passes
    for x in weights:
        for a, b in zip(whole[x], split[x]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_weights_on_no_integer_grid_are_refused():
    from edgekit.toolchains.lm.gptq import on_grid

    w = np.random.default_rng(0).standard_normal((BLOCK, 4))
    with pytest.raises(ValueError, match="no integer grid"):
        on_grid(w, 4, BLOCK)
