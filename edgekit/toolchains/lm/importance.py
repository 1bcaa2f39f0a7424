"""Calibration-weighted 4-bit blocks: what the calibration text says each input channel of a
projection weighs, and block parameters chosen by the error so weighed (llama.cpp's
importance matrix with its k-quants' searched scales).

A projection y = x @ W computed with deq(W) errs by x @ (W - deq(W)); over the calibration
tokens the expected square of that error in one output is, leaving out the cross terms,
sum_k E[x_k^2] (W_k - deq_k)^2. So the importance of input channel k is E[x_k^2] (one FP32
pass with the projections' inputs as extra outputs), and each block's parameters are the ones
of a grid of shrunk ranges (SHRINK of the range given up at either end), each refitted by
weighted least squares, that minimize sum_k w_k (W - deq)^2, in place of the block's min/max:
a block keeps its weights on loud channels close at the expense of those on quiet ones (on
SmolLM2-135M a few channels of the residual stream are orders of magnitude louder).

Two grids: `refine_offset` (w = m + q d, the offset recipe's float minimum per block) and
`refine_zero_point` (w = (q - z) d, z an integer: onnxruntime's asymmetric blocks). Blocks that
min/max already represents exactly (a source on that grid: SmolLM2's Q4_1 GGUF body) are left
as they are: no search can do better there, and skipping them keeps the search to the blocks
that lose something (the head, the groups the lean recipe drops the offsets of).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

__all__ = ["input_importance", "refine_offset", "refine_zero_point", "IMPORTANCE_TOKENS", "SHRINK"]

IMPORTANCE_TOKENS = 4096  # calibration tokens the importance is averaged over (16 windows of 256)
SHRINK = np.linspace(0.0, 0.2, 6)  # candidate fractions of a block's range given up at each end
FLOOR = 1e-3  # no channel weighs less than this fraction of the mean (one never seen loud still counts)
EXACT = 1e-4  # a block whose min/max grid is off by less than this fraction of its range is exact
CHUNK = 1 << 16  # blocks searched at once (bounds the temporaries)


def input_importance(proto, inputs, windows, tokens: int = IMPORTANCE_TOKENS) -> dict:
    """Tensor name -> mean over the calibration tokens of its square per channel (last axis),
    for each of `inputs` (tensors of `proto`, a float decoder); `windows` [N, S] token ids."""
    import onnx
    from onnx import helper

    from edgekit.device.lm import open_lm
    from edgekit.toolchains.lm.graph import lm_meta_of, save

    names = list(dict.fromkeys(inputs))
    windows = np.asarray(windows, dtype=np.int64)
    rows = windows[:max(1, -(-tokens // windows.shape[1]))]
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    outputs = {o.name for o in copy.graph.output}
    copy.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                             for n in names if n not in outputs)
    sums, count = {}, 0
    with tempfile.TemporaryDirectory(prefix="edgekit-importance-") as tmp:
        lm = open_lm(str(save(copy, Path(tmp) / "inputs.onnx", lm_meta_of(proto))))
        for window in rows:
            for name, x in zip(names, lm.outputs(names, window[None])):
                x = x.reshape(-1, x.shape[-1]).astype(np.float64)
                sums[name] = sums.get(name, 0.0) + (x * x).sum(0)
            count += rows.shape[1]
    out = {}
    for name, total in sums.items():
        mean = total / count
        out[name] = np.maximum(mean, FLOOR * mean.mean()).astype(np.float32)
    return out


def refine_offset(wt, q, scale, lo, importance, qmax: int):
    """The min/max offset grid of blocks wt [N, blocks, B] (codes q, scale and minimum lo
    [N, blocks, 1]: w = lo + q*scale) with each inexact block's parameters searched against
    `importance` [blocks*B]; returns (q, scale, lo)."""
    return _refine(wt, (q, scale, lo), importance, qmax, _search_offset, lambda q, s, m: m + q * s)


def refine_zero_point(wt, q, scale, zero, importance, qmax: int):
    """The same for onnxruntime's asymmetric blocks: w = (q - zero) * scale, zero an integer."""
    return _refine(wt, (q, scale, zero), importance, qmax, _search_zero_point,
                   lambda q, s, z: (q.astype(np.float32) - z) * s)


def _refine(wt, params, importance, qmax, search, dequantize):
    q, scale, third = (np.array(p) for p in params)
    n, blocks, block = wt.shape
    deq = dequantize(q.astype(np.float32), scale, third.astype(np.float32))
    span = wt.max(-1) - wt.min(-1)
    todo = np.nonzero(np.abs(wt - deq).max(-1) > EXACT * np.maximum(span, np.finfo(np.float32).tiny))
    if not todo[0].size:
        return q, scale, third
    x = wt[todo].astype(np.float32)
    w = np.broadcast_to(np.asarray(importance, np.float32).reshape(blocks, block), wt.shape)[todo]
    for at in range(0, len(x), CHUNK):
        part = slice(at, at + CHUNK)
        sel = (todo[0][part], todo[1][part])
        codes, s, t = search(x[part], w[part], qmax)
        q[sel], scale[sel] = codes, s.astype(scale.dtype)[:, None]
        third[sel] = t.astype(third.dtype)[:, None]
    return q, scale, third


def _candidates(lo, hi):
    """(low, step) per shrink pair: the range [lo, hi] less a and b of it at either end."""
    span = hi - lo
    for a in SHRINK.astype(np.float32):
        for b in SHRINK.astype(np.float32):
            yield lo + a * span, span * (np.float32(1) - a - b)


def _search_offset(x, w, qmax):
    """x, w [M, B] -> (codes uint8 [M, B], scale [M], minimum [M]) minimizing sum w (x - m - q d)^2."""
    lo, hi = x.min(1), x.max(1)
    best = (np.full(len(x), np.inf, np.float32), None, None, None)
    for low, span in _candidates(lo, hi):
        step = np.where(span > 0, span / qmax, 1.0).astype(np.float32)
        q = np.clip(np.rint((x - low[:, None]) / step[:, None]), 0, qmax)
        m, d = _fit_line(x, w, q, low, step)
        best = _better(best, _err(x, w, m[:, None] + q * d[:, None]), q, d, m)
    err, q, d, m = best
    again = np.clip(np.rint((x - m[:, None]) / d[:, None]), 0, qmax)  # the best fit's own rounding
    err, q, d, m = _better(best, _err(x, w, m[:, None] + again * d[:, None]), again, d, m)
    return q.astype(np.uint8), d, m


def _search_zero_point(x, w, qmax):
    """x, w [M, B] -> (codes uint8, scale [M], integer zero point [M]) minimizing sum w (x - (q - z) d)^2."""
    lo, hi = np.minimum(x.min(1), 0.0), np.maximum(x.max(1), 0.0)
    best = (np.full(len(x), np.inf, np.float32), None, None, None)
    for low, span in _candidates(lo, hi):
        step = np.where(span > 0, span / qmax, 1.0).astype(np.float32)
        z = np.clip(np.rint(-low / step), 0, qmax)
        c = np.clip(np.rint(x / step[:, None]) + z[:, None], 0, qmax) - z[:, None]
        num, den = (w * c * x).sum(1), (w * c * c).sum(1)
        d = np.where((den > 0) & (num > 0), num / np.where(den > 0, den, 1.0), step)
        best = _better(best, _err(x, w, c * d[:, None]), c + z[:, None], d, z)
    err, q, d, z = best
    again = np.clip(np.rint(x / d[:, None]) + z[:, None], 0, qmax)
    err, q, d, z = _better(best, _err(x, w, (again - z[:, None]) * d[:, None]), again, d, z)
    return q.astype(np.uint8), d, z


def _fit_line(x, w, q, low, step):
    """Weighted least squares of x ~ m + q d per row; (low, step) where the codes do not fix a line."""
    sw, sq, sqq = w.sum(1), (w * q).sum(1), (w * q * q).sum(1)
    sx, sqx = (w * x).sum(1), (w * q * x).sum(1)
    det = sw * sqq - sq * sq
    ok = det > 1e-6 * sw * sqq  # codes not all alike (float32: below this, cancellation)
    safe = np.where(ok, det, 1.0)
    d = (sw * sqx - sq * sx) / safe
    ok &= d > 0
    m = (sx - d * sq) / sw
    return np.where(ok, m, low), np.where(ok, d, step)


def _err(x, w, deq):
    return (w * (x - deq) ** 2).sum(1)


def _better(best, err, *params):
    """The running best (err, *params) per row, updated where `err` is lower."""
    take = err < best[0]
    out = [np.where(take, err, best[0])]
    for old, new in zip(best[1:], params):
        if old is None:
            out.append(new)
        else:
            out.append(np.where(take[:, None] if new.ndim == 2 else take, new, old))
    return tuple(out)
