"""GPTQ for minmax-offset-lean's plain groups, against the calibration-weighted search it would replace.

The lean recipe (edgekit/toolchains/lm/lean.py) drops the offsets of the projection groups
where the calibration text shows it cheapest; a dropped group is onnxruntime's asymmetric 4-bit
blocks with integer zero points, chosen per block by the importance search
(edgekit/toolchains/lm/importance.py). This script makes those groups by onnxruntime's GPTQ
core instead, `onnxruntime.quantization.neural_compressor.weight_only.gptq(W, H, ...)`, with
H = E[x x^T] of each group's input over the calibration windows (one FP32 pass), and measures
on SmolLM2-135M:

1. each group's output error E|x (W - deq)|^2 (relative to E|x W|^2): rounding on GPTQ's grid,
   the search, onnxruntime's gptq as shipped, and with its Cholesky factor read right
   (onnxruntime 1.32 reads column i of the upper factor of H^-1 where GPTQ reads row i: zeros
   below the diagonal, so as shipped no error is spread; handed the transposed factor, its
   own code does GPTQ);
2. the lean recipe's choice with GPTQ'd plain groups (costs on the calibration window, the
   same LEAN_BUDGET), and models dropping the cheapest k groups by either grid: perplexity
   increase and KL on 8 and 16 eval windows, and size.

Decode speed: benchmarks/lm_decode_steps.py on the models it writes. Run (about 40 CPU-minutes):

    python benchmarks/lm_gptq_plain.py --out /tmp/gptq [--k 80,90,120]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BLOCK, BITS = 32, 4


def hessians(proto, inputs, windows) -> dict:
    """input -> mean x x^T over the calibration windows the importance is averaged over."""
    import tempfile

    import onnx
    from onnx import helper

    from edgekit.device.lm import open_lm
    from edgekit.toolchains.lm.graph import lm_meta_of, save
    from edgekit.toolchains.lm.importance import IMPORTANCE_TOKENS

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    copy.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in inputs)
    rows = windows[:-(-IMPORTANCE_TOKENS // windows.shape[1])]
    sums = {}
    with tempfile.TemporaryDirectory() as tmp:
        lm = open_lm(str(save(copy, Path(tmp) / "inputs.onnx", lm_meta_of(proto))))
        for window in rows:
            for name, x in zip(inputs, lm.outputs(inputs, window[None])):
                x = x.reshape(-1, x.shape[-1]).astype(np.float64)
                sums[name] = sums.get(name, 0.0) + x.T @ x
    return {name: total / rows.size for name, total in sums.items()}


@contextlib.contextmanager
def factor_transposed(on: bool):
    """onnxruntime's weight_only module sees numpy.linalg.cholesky return its factor transposed."""
    import onnxruntime.quantization.neural_compressor.weight_only as module

    if not on:
        yield
        return
    real = module.np
    linalg = types.SimpleNamespace(**{n: getattr(real.linalg, n) for n in dir(real.linalg) if not n.startswith("__")})
    linalg.cholesky = lambda a: real.linalg.cholesky(a).T
    module.np = types.SimpleNamespace(**{n: getattr(real, n) for n in dir(real) if not n.startswith("__")})
    module.np.linalg = linalg
    try:
        yield
    finally:
        module.np = real


def gptq_grid(w, h, fixed: bool, percdamp: float = 0.01):
    """onnxruntime's gptq on w [K, N] with h [K, K]; its fake-quantized weights read back as
    (codes [N, blocks, B], scales, integer zero points), checked to hold them exactly."""
    from onnxruntime.quantization.neural_compressor.weight_only import gptq

    with factor_transposed(fixed):
        fake = gptq(np.array(w, np.float64), np.array(h, np.float64), num_bits=BITS, group_size=BLOCK,
                    scheme="asym", percdamp=percdamp, actorder=False, mse=False, perchannel=True)
    q, scale, zero = on_grid(fake)
    back = ((q.astype(np.float32) - zero) * scale).reshape(w.shape[1], -1).T
    assert np.abs(back - fake).max() <= 1e-6 * np.abs(fake).max()
    return q, scale, zero


def on_grid(fake):
    """Per block the coarsest grid (q - z) s holding all its values: the largest |value| is m steps."""
    qmax = 2 ** BITS - 1
    k, n = fake.shape
    v = np.asarray(fake, np.float64).T.reshape(n, k // BLOCK, BLOCK)
    top = np.abs(v).max(-1, keepdims=True)
    scale, steps = np.where(top > 0, 0.0, 1.0), np.zeros_like(v)
    for m in range(1, qmax + 1):
        s = np.where(scale == 0, top / m, 1.0)
        r = np.rint(v / s)
        fits = (scale == 0) & (np.abs(v / s - r).max(-1, keepdims=True) < 1e-3) \
            & (r.max(-1, keepdims=True) - r.min(-1, keepdims=True) <= qmax)
        scale, steps = np.where(fits, s, scale), np.where(fits, r, steps)
    assert (scale > 0).all(), "a block on no integer grid"
    zero = np.clip(-steps.min(-1, keepdims=True), 0, qmax)
    return (steps + zero).astype(np.uint8), scale.astype(np.float32), zero.astype(np.uint8)


def output_errors(weights, hs, importance) -> dict:
    from edgekit.toolchains.lm.offsets import zero_point_grid

    def rel(w, h, grid):
        q, s, z = grid
        d = w - ((q.astype(np.float32) - z) * s).reshape(w.shape[1], -1).T
        return float(np.sum(d * (h @ d)) / np.sum(w * (h @ w)))

    out = {}
    for x, w in weights.items():
        h = hs[x]
        out[x] = {"rounding": rel(w, h, zero_point_grid(w, BITS, BLOCK)),
                  "search": rel(w, h, zero_point_grid(w, BITS, BLOCK, importance[x])),
                  "gptq as shipped": rel(w, h, gptq_grid(w, h, False)),
                  "gptq": rel(w, h, gptq_grid(w, h, True))}
    return {k: float(np.median([r[k] for r in out.values()])) for k in next(iter(out.values()))}


@contextlib.contextmanager
def plain_groups_by(grids: dict):
    """The lean recipe's zero-point grids taken from `grids` (keyed by the weight's bytes)."""
    from edgekit.toolchains.lm import offsets

    real = offsets.zero_point_grid

    def grid(w, bits, block, importance=None):
        return grids.get(np.ascontiguousarray(w, np.float32).tobytes()) or real(w, bits, block, importance)

    offsets.zero_point_grid = grid
    try:
        yield
    finally:
        offsets.zero_point_grid = real


def score(model: Path, evalw: dict) -> dict:
    from edgekit.device.lm import open_lm
    from edgekit.device.lm_evaluate import INPUT, REF_IDS, REF_LOGP, REF_TARGET, TextScore

    lm, s8, s16 = open_lm(str(model), threads=1), TextScore(), TextScore()
    for i in range(16):
        w = evalw[INPUT][i]
        args = (lm.window_logits(w), w, evalw[REF_IDS][i], evalw[REF_LOGP][i], evalw[REF_TARGET][i])
        for s in (s8, s16)[0 if i < 8 else 1:]:
            s.update(*args)
    (a, b) = (s.result() for s in (s8, s16))
    mib = sum(f.stat().st_size for f in model.parent.glob("model.onnx*")) / 2 ** 20
    return {"ppl8": a["ppl_increase"], "ppl16": b["ppl_increase"], "kl8": a["kl_divergence"],
            "kl16": b["kl_divergence"], "mib": mib}


def main() -> None:
    import onnx
    from onnx import numpy_helper

    from edgekit.datasets import load_dataset
    from edgekit.lmdemo import cache_dir, prepare
    from edgekit.targets import load_profile
    from edgekit.toolchains import toolchain_for
    from edgekit.toolchains.lm import quantize as q
    from edgekit.toolchains.lm.evaldata import WINDOW, token_windows
    from edgekit.toolchains.lm.graph import lm_meta_of, normalize, save
    from edgekit.toolchains.lm.lean import choose_plain
    from edgekit.toolchains.lm.offsets import fuse_shared_inputs, projections

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the models and results.json")
    parser.add_argument("--k", default="80,90,120", help="also models dropping the cheapest k groups by each grid")
    args = parser.parse_args()
    made = prepare(say=print)
    toolchain = toolchain_for(load_profile("host-cpu-lm"))
    fp32 = cache_dir() / "fp32" / "onnx" / "model.onnx"
    if not fp32.is_file():
        fp32 = toolchain.load(made["model"], workdir=args.out / "fp32")
    calib = token_windows(fp32, load_dataset(made["calibration"], role="calibration data"), "calibration data",
                          WINDOW).arrays["input_ids"]
    evalw = dict(np.load(toolchain.prepare_eval(load_dataset(made["eval"], role="eval data"), fp32,
                                                args.out / "eval16.npz", reference=fp32, samples=16)))
    proto = onnx.load(str(fp32))
    meta = lm_meta_of(proto)
    head, emb, tied = normalize(proto)
    importance = q._importance(proto, BLOCK, calib)
    fuse_shared_inputs(proto, {head}, BLOCK)
    weights = {x: numpy_helper.to_array(w).astype(np.float32) for x, w in projections(proto, BLOCK, skip={head}).values()}
    hs = hessians(proto, list(weights), calib)
    results = {"output error (median relative)": output_errors(weights, hs, importance)}
    print(json.dumps(results), flush=True)
    gptq = {w.tobytes(): gptq_grid(w, hs[x], True) for x, w in weights.items()}
    for name, grids in (("search", {}), ("gptq", gptq)):
        with plain_groups_by(grids):
            choice = choose_plain(proto, fp32, head, tied, emb, BITS, BLOCK, calib, importance=importance)
            order = sorted(choice.costs, key=choice.costs.get)
            results[name] = {"chosen": len(choice.plain), "calibration kl": choice.base_kl + choice.spent,
                             "costs": choice.costs}
            for k in sorted({len(choice.plain), *map(int, args.k.split(","))}):
                build = onnx.ModelProto()
                build.CopyFrom(proto)
                model = q._offset_head(build, head, emb, tied, BITS, BLOCK, order[:k],
                                       importance=importance)
                path = save(model, args.out / f"{name}-{k}" / "model.onnx", meta)
                results[name][k] = score(path, evalw)
                print(name, k, json.dumps(results[name][k]), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
