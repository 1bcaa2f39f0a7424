"""Quantize an FP32 ONNX decoder by a Recipe: weight-only blocks (MatMulNBits) with an 8-bit
head shared with the embedding.

    fp32        the export as is (rewritten beside `out`)
    fp16        onnxruntime.transformers' float16 conversion (inputs, outputs and cache stay FP32)
    int8-block  every projection MatMul -> MatMulNBits, 8 bits, symmetric blocks (method rtn)
    int4-block  the same at 4 bits, by method:
                  minmax-offset  asymmetric min/max per block with the offset kept unrounded
                                 (GGUF Q4_1's grid): 4-bit weights without zero points (MLAS'
                                 fast path) plus blocksum(x) @ offsets added back (default)
                  rtn            onnxruntime's default (symmetric round-to-nearest)
                  hqq            onnxruntime's HQQ (needs torch; float zero points: slow kernels)
                  kquant         onnxruntime's k-quant (asymmetric, searched scales; slow to make)

For every block recipe the LM head becomes an 8-bit symmetric MatMulNBits and the embedding
reads that same table (edgekit.toolchains.lm.graph.share_embedding): small models collapse
when the head goes to 4 bits (+36% perplexity on SmolLM2-135M, +22% with an 8-bit head on
the same body). accuracy_level 4 (int8 activations) on every MatMulNBits: without it MLAS
has no fast kernel (20x slower decode). GPTQ is not offered: onnxruntime's implementation
reruns the whole model per distinct MatMul input and calibration sample (it did not finish
in 42 minutes on SmolLM2-135M), and k-quant's calibration text is not used by onnxruntime.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edgekit.recipes import Recipe
from edgekit.toolchains.lm.graph import (drop_dead, head_node, lm_meta_of, normalize, save, set_accuracy_level,
                                         share_embedding)

__all__ = ["quantize_lm", "BLOCK_ALGORITHMS", "DEFAULT_ALGORITHM", "BITS", "ACCURACY_LEVEL"]

BITS = {"int8-block": 8, "int4-block": 4}
BLOCK_ALGORITHMS = {"int8-block": ("rtn",), "int4-block": ("minmax-offset", "rtn", "hqq", "kquant")}
DEFAULT_ALGORITHM = {"int8-block": "rtn", "int4-block": "minmax-offset"}
ACCURACY_LEVEL = 4
HEAD_BITS = 8


def quantize_lm(model: Path, recipe: Recipe, out: Path) -> Path:
    """Write `model` (the FP32 export) quantized by `recipe` to `out` and `out`.data."""
    import onnx

    proto = onnx.load(str(model))
    meta = lm_meta_of(proto)
    if recipe.precision == "fp16":
        proto = _fp16(proto)
    elif recipe.precision in BITS:
        proto = _blocks(proto, BITS[recipe.precision], recipe.algorithm or DEFAULT_ALGORITHM[recipe.precision],
                        recipe.block_size or 32)
    save(proto, out, meta)
    _keep_tokenizer(Path(model), Path(out))
    return out


def _keep_tokenizer(model: Path, out: Path) -> None:
    """The tokenizer travels with every model made from the export (generate, package read it)."""
    from edgekit.device.lm import TOKENIZER

    source, dest = model.parent / TOKENIZER, out.parent / TOKENIZER
    if source.is_file() and source.resolve() != dest.resolve():
        shutil.copyfile(source, dest)


def _fp16(proto):
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(proto, keep_io_types=True)


def _blocks(proto, bits: int, method: str, block: int):
    from edgekit.toolchains.onnx.weightonly import nbits

    head, emb, tied = normalize(proto)
    if method == "minmax-offset":
        proto = minmax_offset(proto, head, bits, block)
    else:  # edgekit's rtn is onnxruntime's default symmetric blocks (weightonly's algorithm None)
        proto = nbits(proto, bits=bits, block_size=block, accuracy_level=ACCURACY_LEVEL,
                      algorithm=None if method == "rtn" else method, exclude=[head])
    proto = nbits(proto, bits=HEAD_BITS, block_size=block, accuracy_level=ACCURACY_LEVEL, nodes=[head])
    if head_node(proto.graph).op_type != "MatMulNBits":
        raise ValueError("the LM head was not quantized")
    if tied:
        share_embedding(proto, emb)
    set_accuracy_level(proto, ACCURACY_LEVEL)
    drop_dead(proto.graph)
    return proto


def minmax_offset(proto, head: str, bits: int, block: int):
    """Asymmetric min/max per block, w = m + q*d (GGUF Q4_1's grid), on the fast MatMulNBits path:
    the weights go in with no zero points (implicitly 2^(bits-1)) and the per-block offset
    m + 2^(bits-1)*d comes back as blocksum(x) @ M, M [blocks, N] float: y = MatMulNBits(x) +
    ReduceSum(x per block) @ M. One block sum serves every MatMul that reads the same input.
    Exact for weights on such a grid; a MatMul whose K is not a multiple of the block stays float
    here (onnxruntime's own quantizer would pad it)."""
    from onnx import helper, numpy_helper

    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    nodes, sums = [], {}
    for node in g.node:
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if weight is None or node.name == head or len(weight.dims) != 2 or weight.dims[0] % block:
            nodes.append(node)
            continue
        packed, scales, offset = _offset_blocks(numpy_helper.to_array(weight).astype(np.float32), bits, block)
        k, n = weight.dims
        base, x = weight.name, node.input[0]
        g.initializer.extend([numpy_helper.from_array(packed, base + "_Qo"),
                              numpy_helper.from_array(scales, base + "_scales_o"),
                              numpy_helper.from_array(offset, base + "_offset")])
        if x not in sums:
            shape = numpy_helper.from_array(np.array([0, 0, k // block, block], np.int64), base + "_blk_shape")
            axes = numpy_helper.from_array(np.array([-1], np.int64), base + "_blk_axes")
            g.initializer.extend([shape, axes])
            sums[x] = base + "_x_blocksum"
            nodes += [helper.make_node("Reshape", [x, shape.name], [base + "_x_blocks"], name=node.name + "_blk"),
                      helper.make_node("ReduceSum", [base + "_x_blocks", axes.name], [sums[x]],
                                       name=node.name + "_blksum", keepdims=0)]
        nodes += [helper.make_node("MatMulNBits", [x, base + "_Qo", base + "_scales_o"], [base + "_yq"],
                                   name=node.name + "_Q", domain="com.microsoft", K=k, N=n, bits=bits,
                                   block_size=block),
                  helper.make_node("MatMul", [sums[x], base + "_offset"], [base + "_yo"], name=node.name + "_offset"),
                  helper.make_node("Add", [base + "_yq", base + "_yo"], list(node.output), name=node.name + "_add")]
    g.ClearField("node")
    g.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    drop_dead(g)
    return proto


def _offset_blocks(w: np.ndarray, bits: int, block: int):
    """w [K,N] -> (packed uint8 [N, blocks, blob], scales [N*blocks], offsets [blocks, N])."""
    qmax, mid = 2 ** bits - 1, 2 ** (bits - 1)
    k, n = w.shape
    wt = w.T.reshape(n, k // block, block)
    lo, hi = wt.min(-1, keepdims=True), wt.max(-1, keepdims=True)
    scale = np.where(hi > lo, (hi - lo) / qmax, 1.0).astype(np.float32)
    q = np.clip(np.rint((wt - lo) / scale), 0, qmax).astype(np.uint8)
    offset = (lo + mid * scale)[..., 0].T.astype(np.float32)  # w = (q - mid) * scale + offset
    if bits == 4:
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    return q, scale.reshape(-1), np.ascontiguousarray(offset)
