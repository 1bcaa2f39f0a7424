"""Per-token dynamic INT8 (precision int8-token): one activation scale per row, built from
standard ONNX ops, so ONNX Runtime's own kernels do the arithmetic.

Why it exists: in BERT-style encoders the outlier is a token, not a channel. The [CLS] row of
the feed-forward inputs is several times the median row, so quantize_dynamic's one scale per
activation tensor crushes every other row (measured on all-MiniLM-L6-v2: cosine 0.986 to FP32
with per-channel weights; one scale per row: 0.9967, at the same size and speed).

Each MatMul with a constant 2-D float weight W [K, N] and activation X [..., K] becomes

    s   = ReduceMax(Abs(X), last axis) / 127 + tiny      one scale per row (token)
    Xq  = Cast<uint8>(Round(X / s) + 128)                symmetric INT8 carried as uint8, zero point 128
    Yi  = MatMulInteger(Xq, Wq, 128)                     Wq INT8, one scale per output column
    Y   = Cast<float>(Yi) * w_scale * s

The uint8 activations with zero point 128 keep ONNX Runtime on its u8 x s8 kernels (VNNI where
the CPU has it). On an x86 CPU without VNNI (AVX2 only: the x86-gateway class), those kernels
sum u8 x s8 pairs in int16 and can saturate; ``weight_bits=7`` (what the recipe's
reduce_range asks for) leaves the headroom. ARM (NEON/SDOT) and VNNI CPUs need no such care.
Embedding tables become INT8 rows (edgekit.toolchains.onnx.weightonly.embeddings_rowwise).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np

__all__ = ["quantize_per_token"]

MIN_ELEMENTS = 1024  # a smaller weight (a classifier head of a few classes) is not worth its error


def quantize_per_token(model: Path, out: Path, *, weight_bits: int = 8, exclude: Iterable[str] = (),
                       nodes: Optional[Iterable[str]] = None, embeddings: bool = True) -> Path:
    """Write `model` with per-token INT8 MatMuls (and INT8 embedding rows) to `out`; returns `out`."""
    import onnx

    from edgekit.toolchains.onnx.weightonly import embeddings_rowwise

    proto = onnx.load(str(model))
    _rewrite(proto, weight_bits, set(exclude), None if nodes is None else set(nodes))
    if embeddings:
        embeddings_rowwise(proto, nodes=nodes, exclude=set(exclude))
    onnx.save(proto, str(out))
    return Path(out)


def _rewrite(proto, weight_bits: int, exclude: set, only: Optional[set]) -> None:
    from onnx import TensorProto, helper, numpy_helper

    g = proto.graph
    weights = {t.name: t for t in g.initializer}
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    qmax = 2 ** (weight_bits - 1) - 1
    added, out, shared = [], [], {}

    def const(name: str, value) -> str:
        added.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    inv127, tiny = const("pertoken/inv127", np.float32(1 / 127)), const("pertoken/tiny", np.float32(1e-12))
    c128, zp = const("pertoken/c128", np.float32(128)), const("pertoken/zp128", np.uint8(128))
    axes = const("pertoken/axes", np.array([-1], np.int64))
    for n in g.node:
        w = weights.get(n.input[1]) if n.op_type == "MatMul" and len(n.input) == 2 else None
        if (w is None or n.input[0] in weights or w.data_type != TensorProto.FLOAT or len(w.dims) != 2
                or int(np.prod(w.dims)) < MIN_ELEMENTS or n.name in exclude or (only is not None and n.name not in only)):
            out.append(n)
            continue
        x, p = n.input[0], n.name or n.output[0]
        if x not in shared:  # one quantized X per activation, shared by the Q, K and V projections
            t = {k: f"{x}/pertoken_{k}" for k in ("abs", "max", "s0", "s", "div", "round", "shift", "q")}
            reduce = (helper.make_node("ReduceMax", [t["abs"], axes], [t["max"]], name=f"{p}/pt_max", keepdims=1)
                      if opset >= 18 else
                      helper.make_node("ReduceMax", [t["abs"]], [t["max"]], name=f"{p}/pt_max", axes=[-1], keepdims=1))
            out += [helper.make_node("Abs", [x], [t["abs"]], name=f"{p}/pt_abs"), reduce,
                    helper.make_node("Mul", [t["max"], inv127], [t["s0"]], name=f"{p}/pt_scale"),
                    helper.make_node("Add", [t["s0"], tiny], [t["s"]], name=f"{p}/pt_scale_eps"),
                    helper.make_node("Div", [x, t["s"]], [t["div"]], name=f"{p}/pt_div"),
                    helper.make_node("Round", [t["div"]], [t["round"]], name=f"{p}/pt_round"),
                    helper.make_node("Add", [t["round"], c128], [t["shift"]], name=f"{p}/pt_shift"),
                    helper.make_node("Cast", [t["shift"]], [t["q"]], name=f"{p}/pt_cast", to=TensorProto.UINT8)]
            shared[x] = (t["q"], t["s"])
        xq, s = shared[x]
        W = numpy_helper.to_array(w).astype(np.float32)
        w_scale = np.abs(W).max(axis=0) / qmax
        w_scale[w_scale == 0] = 1.0
        wq = const(f"{w.name}/pertoken_q", np.clip(np.round(W / w_scale), -qmax, qmax).astype(np.int8))
        ws = const(f"{w.name}/pertoken_scale", w_scale.astype(np.float32))
        yi, yf, y1 = f"{p}/pt_yi", f"{p}/pt_yf", f"{p}/pt_y1"
        out += [helper.make_node("MatMulInteger", [xq, wq, zp], [yi], name=f"{p}/pt_matmul"),
                helper.make_node("Cast", [yi], [yf], name=f"{p}/pt_tofloat", to=TensorProto.FLOAT),
                helper.make_node("Mul", [yf, ws], [y1], name=f"{p}/pt_wscale"),
                helper.make_node("Mul", [y1, s], [n.output[0]], name=f"{p}/pt_xscale")]
    used = {i for nd in out for i in nd.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep + [t for t in added if t.name in used])
    del g.node[:]
    g.node.extend(out)
