"""Quantize an FP32 ONNX decoder by a Recipe: weight-only blocks (MatMulNBits) with an 8-bit
head shared with the embedding.

    fp32        the export as is (rewritten beside `out`)
    fp16        onnxruntime.transformers' float16 conversion (inputs, outputs and cache stay FP32)
    int8-block  every projection MatMul -> MatMulNBits, 8 bits, symmetric blocks (method rtn)
    int4-block  the same at 4 bits, by method:
                  minmax-offset  asymmetric min/max per block with the offset kept unrounded
                                 (GGUF Q4_1's grid): 4-bit weights without zero points (MLAS'
                                 fast path) plus the block sums of x times the offsets
                                 added back (default; edgekit.toolchains.lm.offsets)
                  minmax-offset-head4  the same with the head at 4 bits too, with its own
                                 offsets: smaller and faster, for a loss the budgets judge
                                 (+6% perplexity on SmolLM2-135M)
                  minmax-offset-lean  minmax-offset-head4 less the offsets of the projections
                                 where dropping them costs least, measured on the calibration
                                 text, up to 7% perplexity over FP32 in all (edgekit.toolchains.lm.lean): fewer
                                 nodes per decode step; the kept offsets as float products
                                 (faster than 8-bit ones); needs calibration text
                  (given calibration text, the three minmax-offset ones choose each 4-bit block's
                  range by an importance-weighted error search instead of its min/max:
                  edgekit.toolchains.lm.importance; on SmolLM2-135M head4's +6% -> +3%)
                  rtn            onnxruntime's default (symmetric round-to-nearest)
                  hqq            onnxruntime's HQQ (needs torch; float zero points: slow kernels)
                  kquant         onnxruntime's k-quant (asymmetric, searched scales; slow to make)

For every other block recipe the LM head becomes an 8-bit symmetric MatMulNBits and the embedding
reads that same table (edgekit.toolchains.lm.graph.share_embedding; an untied embedding gets an
8-bit table of its own): small models collapse when the head goes to 4 bits (+36% perplexity on
SmolLM2-135M, +22% with an 8-bit head on the same body). A projection whose input size is not a
multiple of the block (a hidden size of 80, an MLP of 200), which minmax-offset and k-quant
cannot block, gets onnxruntime's default blocks (K padded): none stays FP32. accuracy_level 4
(int8 activations) on every MatMulNBits: without it MLAS has no fast kernel (20x slower
decode). GPTQ is not offered: onnxruntime's implementation reruns the whole model per distinct
MatMul input and calibration sample (it did not finish in 42 minutes on SmolLM2-135M), its
`gptq()` core as shipped in 1.32 spreads no error (plain rounding), and read right it made the
lean recipe's plain groups no better on eval text than the importance search (README), and
k-quant's calibration text is not used by onnxruntime.
"""

from __future__ import annotations

import shutil
from pathlib import Path


from edgekit.recipes import Recipe
from edgekit.toolchains.lm.graph import (HEAD, drop_dead, head_node, lm_meta_of, normalize, quantize_embedding,
                                         save, set_accuracy_level, share_embedding)
from edgekit.toolchains.lm.offsets import embed_offsets, minmax_offset

__all__ = ["quantize_lm", "BLOCK_ALGORITHMS", "DEFAULT_ALGORITHM", "INT4_CANDIDATES", "BITS", "ACCURACY_LEVEL"]

BITS = {"int8-block": 8, "int4-block": 4}
BLOCK_ALGORITHMS = {"int8-block": ("rtn",),
                    "int4-block": ("minmax-offset", "minmax-offset-head4", "minmax-offset-lean", "rtn", "hqq", "kquant")}
DEFAULT_ALGORITHM = {"int8-block": "rtn", "int4-block": "minmax-offset"}
# what calibrate tries at 4 bits: the lossless-grid body with an 8-bit head, the same with a 4-bit
# head (faster, smaller, less accurate: the budgets choose), that less its cheapest offsets
# (faster again), and onnxruntime's default
INT4_CANDIDATES = ("minmax-offset", "minmax-offset-head4", "minmax-offset-lean", "rtn")
CALIBRATED = ("minmax-offset-lean",)  # the algorithms that need calibration text
# the algorithms that use it when given: each 4-bit block's parameters searched against the
# calibration text's input importance (edgekit.toolchains.lm.importance) instead of min/max
WEIGHTED = ("minmax-offset", "minmax-offset-head4", "minmax-offset-lean")
ACCURACY_LEVEL = 4
HEAD_BITS = 8


def quantize_lm(model: Path, recipe: Recipe, out: Path, calibration=None) -> Path:
    """Write `model` (the FP32 export) quantized by `recipe` to `out` and `out`.data.
    `calibration`: token windows [N, S] (the CALIBRATED algorithms need them, the WEIGHTED ones use them)."""
    import onnx

    proto = onnx.load(str(model))
    meta = lm_meta_of(proto)
    if recipe.precision == "fp16":
        proto = _fp16(proto)
    elif recipe.precision in BITS:
        proto = _blocks(proto, BITS[recipe.precision], recipe.algorithm or DEFAULT_ALGORITHM[recipe.precision],
                        recipe.block_size or 32, (Path(model), calibration))
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


def _blocks(proto, bits: int, method: str, block: int, calibration: tuple):
    from edgekit.toolchains.onnx.weightonly import nbits

    head, emb, tied = normalize(proto)
    if method in ("minmax-offset-head4", "minmax-offset-lean"):
        _check_head_blocks(proto, head, block, method)
    importance = _importance(proto, block, calibration[1]) if method in WEIGHTED else None
    if method == "minmax-offset-head4":
        return _offset_head(proto, head, emb, tied, bits, block, importance=importance)
    if method == "minmax-offset-lean":
        plain = _lean(proto, head, emb, tied, bits, block, *calibration, importance)
        return _offset_head(proto, head, emb, tied, bits, block, plain, importance=importance)
    if method == "minmax-offset":
        proto = minmax_offset(proto, head, bits, block, importance=importance)
    else:  # edgekit's rtn is onnxruntime's default symmetric blocks (weightonly's algorithm None)
        proto = nbits(proto, bits=bits, block_size=block, accuracy_level=ACCURACY_LEVEL,
                      algorithm=None if method == "rtn" else method, exclude=[head, *_unaligned(proto, block, method)])
    proto = _rest(proto, bits, block, head)
    proto = nbits(proto, bits=HEAD_BITS, block_size=block, accuracy_level=ACCURACY_LEVEL, nodes=[head])
    if head_node(proto.graph).op_type != "MatMulNBits":
        raise ValueError("the LM head was not quantized")
    if tied:
        share_embedding(proto, emb)
    else:
        quantize_embedding(proto, emb, block)
    set_accuracy_level(proto, ACCURACY_LEVEL)
    drop_dead(proto.graph)
    return proto


def _check_head_blocks(proto, head: str, block: int, method: str) -> None:
    """The head in offset blocks needs its input size (the hidden size) a multiple of the block:
    else the recipe does not apply to this model (exit 2; calibrate records it so)."""
    from edgekit.errors import NotApplicable

    node = next(n for n in proto.graph.node if n.name == head)
    hidden = next(i.dims[0] for i in proto.graph.initializer if i.name == node.input[1])
    if hidden % block:
        raise NotApplicable(f"{method}: the hidden size ({hidden}) is not a multiple of the block ({block}): this "
                            "method puts the LM head in offset blocks, which need that; minmax-offset keeps the head "
                            "at 8 bits, or give a --block-size that divides it")


def _unaligned(proto, block: int, method: str) -> list[str]:
    """The projections onnxruntime's k-quant cannot block: it packs two 4-bit zero points a byte
    across rows, so each row needs an even number of whole blocks (K a multiple of twice the
    block; a hidden size of 96 fails). The other methods pad K."""
    if method != "kquant":
        return []
    inits = {i.name: i for i in proto.graph.initializer}
    return [n.name for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in inits
            and inits[n.input[1]].dims[0] % (2 * block)]


def _rest(proto, bits: int, block: int, head: str):
    """The projections the method left float (minmax-offset and k-quant block only K a multiple of
    the block: a hidden size of 80 or an MLP of 200) in onnxruntime's default symmetric blocks,
    which pad K: no projection stays FP32."""
    from edgekit.toolchains.onnx.weightonly import nbits

    inits = {i.name: i for i in proto.graph.initializer}
    rest = [n.name for n in proto.graph.node if n.op_type == "MatMul" and n.name != head
            and n.input[1] in inits and len(inits[n.input[1]].dims) == 2]
    if not rest:
        return proto
    return nbits(proto, bits=bits, block_size=block, accuracy_level=ACCURACY_LEVEL, nodes=rest)


def _importance(proto, block: int, windows):
    """Input tensor -> its channels' importance on the calibration windows (None without them)."""
    from edgekit.toolchains.lm.importance import input_importance
    from edgekit.toolchains.lm.offsets import projections

    if windows is None:
        return None
    return input_importance(proto, [x for x, _ in projections(proto, block).values()], windows)


def _lean(proto, head: str, emb: str, tied: bool, bits: int, block: int, fp32: Path, windows, importance) -> list:
    """The projections whose offsets are cheapest to drop, measured on `windows`."""
    from edgekit.toolchains.lm.lean import choose_plain
    from edgekit.toolchains.lm.offsets import fuse_shared_inputs

    if windows is None:
        raise ValueError("minmax-offset-lean measures what each projection's offsets are worth on calibration "
                         "text: give one")
    fuse_shared_inputs(proto, {head}, block)
    return choose_plain(proto, fp32, head, tied, emb, bits, block, windows, importance=importance).plain


def _offset_head(proto, head: str, emb: str, tied: bool, bits: int, block: int, plain=(), importance=None):
    """Head and body alike in offset blocks (but the `plain` projections); a tied embedding
    reads the head's two tables."""
    proto = minmax_offset(proto, head, bits, block, with_head=True, plain=plain, importance=importance)
    proto = _rest(proto, bits, block, head)
    if tied:
        embed_offsets(proto, emb, HEAD, block)
    else:
        quantize_embedding(proto, emb, block)
    set_accuracy_level(proto, ACCURACY_LEVEL)
    drop_dead(proto.graph)
    return proto
