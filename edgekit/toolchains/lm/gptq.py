"""onnxruntime's GPTQ on one weight, given its input's Hessian, in onnxruntime's asymmetric
4-bit blocks (integer zero points): the lean recipe's plain groups.

GPTQ quantizes a weight's input channels one at a time and spreads each one's rounding error
over the channels not yet quantized, weighted by the inverse of H = E[x x^T] (the
projection's input on the calibration text): the error it minimizes is the output's,
E|x (W - deq)|^2, cross terms included, where the importance search (importance.py) weighs
each channel alone. onnxruntime ships its core as
`onnxruntime.quantization.neural_compressor.weight_only.gptq` (its `gptq_quantize` wrapper
reruns the whole model per MatMul input; edgekit's one FP32 pass records every input's H:
importance.input_hessians). That function returns the fake-quantized weight; `on_grid` reads
back its codes, scales and integer zero points (every block lies on such a grid: GPTQ's own,
its range widened to hold 0).

Its options as used: blocks of `block` inputs per output (MatMulNBits' layout); no `actorder`
(it would reorder the inputs before forming the blocks, which then no longer are contiguous);
`mse` off (a shrink of the range by the block's unweighted |error|^2.4, measured no better on
SmolLM2-135M: README).
"""

from __future__ import annotations

import contextlib
import functools
import types

import numpy as np

__all__ = ["gptq_grids", "gptq_grid", "on_grid", "PERCDAMP", "HESSIAN_BYTES"]

PERCDAMP = 0.01  # onnxruntime's default: the Hessian's diagonal raised by 1% of its mean
TOLERANCE = 1e-3  # of a grid step: how far a fake-quantized value may lie off its integer
HESSIAN_BYTES = 1 << 30  # Hessians held at once (float64 K x K each); more inputs: more passes


def gptq_grids(proto, weights: dict, windows, bits: int, block: int) -> dict:
    """Input tensor name -> the GPTQ grid (q, scale, zero point: gptq_grid) of the weight [K, N]
    that reads it, for each of `weights` (input name -> weight; one weight per input: fuse the
    projections that share one first). One FP32 pass over the calibration `windows` per chunk
    of inputs whose Hessians fit in HESSIAN_BYTES (one pass on SmolLM2-135M: 0.8 GB)."""
    from edgekit.toolchains.lm.importance import input_hessians

    grids, chunk, size = {}, [], 0
    names = list(weights)
    for i, name in enumerate(names):
        chunk.append(name)
        size += 8 * weights[name].shape[0] ** 2
        following = weights[names[i + 1]].shape[0] ** 2 * 8 if i + 1 < len(names) else 0
        if i + 1 == len(names) or size + following > HESSIAN_BYTES:
            for x, h in input_hessians(proto, chunk, windows).items():
                grids[x] = gptq_grid(weights[x], h, bits, block)
            chunk, size = [], 0
    return grids


def gptq_grid(w: np.ndarray, hessian: np.ndarray, bits: int, block: int):
    """w [K, N] (a MatMul's weight), hessian [K, K] of its input -> codes q [N, blocks, block],
    scales and integer zero points [N, blocks, 1]: w ~ (q - zero point) * scale."""
    with _factor_as_read(_reads_transposed()):
        fake = _ort_gptq(w, hessian, bits, block)
    return on_grid(fake, bits, block)


def _ort_gptq(w, hessian, bits: int, block: int) -> np.ndarray:
    from onnxruntime.quantization.neural_compressor.weight_only import gptq

    # float64 copies: the function changes both in place
    return gptq(np.array(w, np.float64), np.array(hessian, np.float64), num_bits=bits, group_size=block,
                scheme="asym", percdamp=PERCDAMP, actorder=False, mse=False, perchannel=True)


@functools.lru_cache(maxsize=None)
def _reads_transposed() -> bool:
    """Whether onnxruntime's gptq spreads errors only when handed the transposed Cholesky factor.
    1.32 reads column i of the upper factor of H^-1 where GPTQ reads row i: below the diagonal
    it is zero, so no error is spread and the result is plain rounding on its grid (identical
    to the same call with H = I). Settled on a small problem by which errs less under its H, so
    that a release that reads the right way is used as it is."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 64)) @ (np.eye(64) + rng.standard_normal((64, 64)) / 4)
    h, w = x.T @ x / len(x), rng.standard_normal((64, 16))

    def error(transposed: bool) -> float:
        with _factor_as_read(transposed):
            d = w - _ort_gptq(w, h, 4, 32)
        return float(np.sum(d * (h @ d)))

    return error(True) < error(False)


@contextlib.contextmanager
def _factor_as_read(transposed: bool):
    """While it lasts (if `transposed`), the numpy that onnxruntime's weight_only module calls
    returns Cholesky factors transposed (upper, so that the function's `.T` makes it lower and
    its columns are GPTQ's rows); nothing else of numpy changes."""
    import onnxruntime.quantization.neural_compressor.weight_only as module

    if not transposed:
        yield
        return
    real = module.np
    module.np = _TransposedCholesky(real)
    try:
        yield
    finally:
        module.np = real


class _TransposedCholesky:
    """numpy, but linalg.cholesky(a) returns its factor transposed."""

    def __init__(self, numpy):
        self._np = numpy
        self.linalg = types.SimpleNamespace(**{n: getattr(numpy.linalg, n) for n in dir(numpy.linalg)
                                               if not n.startswith("__")})
        self.linalg.cholesky = lambda a: numpy.linalg.cholesky(a).T

    def __getattr__(self, name):
        return getattr(self._np, name)


def on_grid(fake: np.ndarray, bits: int, block: int):
    """The codes, scales (float32) and zero points (uint8) of fake-quantized weights [K, N] whose
    every block of `block` inputs lies on some grid (q - z) * s, q and z in 0..2**bits - 1: per
    block the coarsest such grid (the one its largest |value| is m steps of, m = 1, 2, ... up to
    the code range), which holds every value of the block within float rounding."""
    qmax = 2 ** bits - 1
    k, n = fake.shape
    v = np.asarray(fake, np.float64).T.reshape(n, k // block, block)
    top = np.abs(v).max(-1, keepdims=True)
    scale = np.where(top > 0, 0.0, 1.0)
    steps = np.zeros_like(v)
    for m in range(1, qmax + 1):
        open_ = scale == 0
        if not open_.any():
            break
        s = np.where(open_, top / m, 1.0)
        ks = v / s
        r = np.rint(ks)
        fits = open_ & (np.abs(ks - r).max(-1, keepdims=True) < TOLERANCE) \
            & (r.max(-1, keepdims=True) - r.min(-1, keepdims=True) <= qmax)
        scale = np.where(fits, s, scale)
        steps = np.where(fits, r, steps)
    if (scale == 0).any():
        raise ValueError("GPTQ returned a block that lies on no integer grid")
    zero = np.clip(-steps.min(-1, keepdims=True), 0, qmax)
    return (steps + zero).astype(np.uint8), scale.astype(np.float32), zero.astype(np.uint8)
