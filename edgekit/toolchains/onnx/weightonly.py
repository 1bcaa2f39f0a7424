"""Weight-only block quantization of an ONNX model: weights INT8 or INT4, activations float.

    quantize_weights(model, out, bits=4, block_size=32, ...)  ->  out

MatMul nodes with a constant 2-D float weight become ONNX Runtime's ``MatMulNBits`` through
``onnxruntime.quantization``'s MatMulNBitsQuantizer: one scale (and, unless symmetric, one
zero point) per ``block_size`` weights along K, so an outlier only costs its own block. Errors
stay local to each weight; no activation range is calibrated, so attention masks and other
huge activations cannot hurt. ``accuracy_level`` picks the kernel: 0/None computes in float
(exact to the weights, slow on CPUs), 4 quantizes each activation block to INT8 on the fly
(the fast kernel, about as exact for 8-bit weights).

Algorithms: None is ORT's block RTN (round to nearest, per block); "hqq" (half-quadratic,
no data) and "kquant" (llama.cpp's k-quant search) are ORT's too. HQQ is refused at 8 bits:
the onnxruntime 1.32 CPU kernel refuses the model it writes (float zero points). GPTQ is not
offered: it needs a calibration reader and, measured on MiniLM, did worse than RTN.

Embedding tables (Gather of a constant float table along axis 0): at 4 bits in a model of
opset 21 or more, ORT's GatherBlockQuantized; otherwise (ORT 1.32 quantizes Gather at 4 bits
only, HQQ's float zero points do not fit it, and its int4 tables need opset 21) row-wise
INT8 from standard ops (``Gather(int8 table) -> Cast -> Mul(Gather(row scales))``), the
table staying INT8 in memory.

``keep_8bit`` names nodes that get 8-bit blocks when ``bits`` is 4 (a node that 4 bits hurt);
``nodes`` limits the quantization to those nodes, ``exclude`` keeps nodes in float.

``nbits`` is the one place that builds ONNX Runtime's weight-only configuration; the
language-model recipes (edgekit.toolchains.lm.quantize) call it on their graphs too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np

__all__ = ["quantize_weights", "nbits", "embeddings_rowwise", "ALGORITHMS"]

ALGORITHMS = (None, "rtn", "hqq", "kquant")
MIN_ROWS = 64  # an embedding table smaller than this is not worth the extra nodes


def quantize_weights(model: Path, out: Path, *, bits: int = 4, block_size: int = 32, symmetric: bool = True,
                     accuracy_level: Optional[int] = None, algorithm: Optional[str] = None,
                     op_types: Iterable[str] = ("MatMul", "Gather"), nodes: Optional[Iterable[str]] = None,
                     exclude: Iterable[str] = (), keep_8bit: Iterable[str] = ()) -> Path:
    """Write `model` with its MatMul (and Gather) weights in `bits`-bit blocks to `out`; returns `out`."""
    import onnx

    _check(bits, block_size, algorithm)
    op_types, exclude, keep_8bit = tuple(op_types), set(exclude), set(keep_8bit)
    proto = onnx.load(str(model))
    nodes = None if nodes is None else set(nodes)
    # ORT's 4-bit Gather writes int4 tensors and so raises the model's opset to 21, which breaks
    # older ops (ReduceMax's axes attribute): below opset 21 tables get INT8 rows instead
    gathers_by_ort = "Gather" in op_types and bits == 4 and algorithm != "hqq" and _opset(proto) >= 21
    ort_ops = tuple(op for op in op_types if op == "MatMul" or (op == "Gather" and gathers_by_ort))
    if ort_ops:
        proto = nbits(proto, bits=bits, block_size=block_size, symmetric=symmetric, accuracy_level=accuracy_level,
                      algorithm=algorithm, op_types=ort_ops, nodes=nodes, exclude=exclude | keep_8bit)
    if keep_8bit and bits != 8:
        proto = nbits(proto, bits=8, block_size=block_size, symmetric=symmetric, accuracy_level=accuracy_level,
                      nodes=keep_8bit, exclude=exclude)
    if "Gather" in op_types and not gathers_by_ort:
        embeddings_rowwise(proto, nodes=nodes, exclude=exclude)
    onnx.save(proto, str(out))
    return Path(out)


def _opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _check(bits: int, block_size: int, algorithm: Optional[str]) -> None:
    if bits not in (4, 8):
        raise ValueError(f"bits {bits}: MatMulNBits takes 4 or 8")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block size {block_size}: a power of two, at least 16")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm {algorithm!r}: one of rtn, hqq, kquant (or None: block RTN)")
    if algorithm == "hqq" and bits == 8:
        raise ValueError("hqq writes 8-bit weights the onnxruntime CPU kernel refuses to load; use 4 bits")


def nbits(proto, *, bits: int, block_size: int, symmetric: bool = True, accuracy_level: Optional[int] = None,
          algorithm: Optional[str] = None, op_types: Iterable[str] = ("MatMul",),
          nodes: Optional[Iterable[str]] = None, exclude: Iterable[str] = ()):
    """`proto` with the weights of its `op_types` nodes (only `nodes`, if given; never `exclude`)
    in `bits`-bit MatMulNBits blocks by ONNX Runtime's quantizer; returns the new ModelProto."""
    import logging

    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    mnq.logger.setLevel(logging.WARNING)  # it logs every node it skips at INFO
    op_types, exclude = tuple(op_types), set(exclude)
    if nodes is not None:  # ORT quantizes its op types *and* nodes_to_include: exclude the other nodes
        nodes = set(nodes)
        exclude |= {n.name for n in proto.graph.node if n.op_type in op_types and n.name not in nodes}
    quantizer = mnq.MatMulNBitsQuantizer(proto, bits=bits, block_size=block_size, is_symmetric=symmetric,
                                         accuracy_level=accuracy_level, nodes_to_exclude=sorted(exclude),
                                         nodes_to_include=sorted(nodes) if nodes else None,
                                         op_types_to_quantize=op_types,
                                         algo_config=_config(proto, bits, block_size, symmetric, accuracy_level,
                                                             algorithm, op_types))
    quantizer.process()
    return quantizer.model.model


def _config(proto, bits, block_size, symmetric, accuracy_level, algorithm, op_types):
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    if algorithm == "hqq":
        return mnq.HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits, op_types_to_quantize=op_types)
    if algorithm in ("rtn", "kquant"):
        # neural-compressor's code behind both takes 4 bits and its own group size unless each node says
        per_node = {n.name: {"bits": bits, "group_size": block_size} for n in proto.graph.node if n.op_type == "MatMul"}
        kind = mnq.RTNWeightOnlyQuantConfig if algorithm == "rtn" else mnq.KQuantWeightOnlyQuantConfig
        return kind(customized_weight_config=per_node, op_types_to_quantize=op_types)
    return mnq.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric,
                                            accuracy_level=accuracy_level, quant_format=QuantFormat.QOperator,
                                            op_types_to_quantize=op_types, bits=bits)


def embeddings_rowwise(proto, *, nodes=None, exclude=(), min_rows: int = MIN_ROWS) -> list[str]:
    """Turn each Gather of a constant float table (axis 0, >= min_rows rows) in `proto` into
    INT8 rows with one float scale per row, in place; returns the Gather nodes it changed."""
    from onnx import TensorProto, helper, numpy_helper

    g = proto.graph
    tables = {t.name: t for t in g.initializer}
    used = {i for n in g.node for i in n.input if n.op_type != "Gather"}  # a table read elsewhere stays
    out, added, done = [], [], []
    for n in g.node:
        t = tables.get(n.input[0]) if n.op_type == "Gather" and n.input else None
        axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
        if (t is None or t.data_type != TensorProto.FLOAT or len(t.dims) != 2 or t.dims[0] < min_rows or axis != 0
                or n.name in exclude or (nodes is not None and n.name not in nodes) or t.name in used):
            out.append(n)
            continue
        table = numpy_helper.to_array(t)
        scale = np.abs(table).max(axis=1) / 127
        scale[scale == 0] = 1.0
        q = np.clip(np.round(table / scale[:, None]), -127, 127).astype(np.int8)
        qn, sn, p = f"{t.name}/int8_rows", f"{t.name}/row_scales", n.name or n.output[0]
        if qn not in {a.name for a in added}:
            added += [numpy_helper.from_array(q, qn), numpy_helper.from_array(scale[:, None].astype(np.float32), sn)]
        out += [helper.make_node("Gather", [qn, n.input[1]], [f"{p}/q"], name=f"{p}/int8_gather", axis=0),
                helper.make_node("Gather", [sn, n.input[1]], [f"{p}/s"], name=f"{p}/scale_gather", axis=0),
                helper.make_node("Cast", [f"{p}/q"], [f"{p}/qf"], name=f"{p}/int8_cast", to=TensorProto.FLOAT),
                helper.make_node("Mul", [f"{p}/qf", f"{p}/s"], [n.output[0]], name=f"{p}/int8_scale")]
        done.append(n.name)
    if done:
        left = {i for nd in out for i in nd.input}
        keep = [t for t in g.initializer if t.name in left]
        del g.initializer[:]
        g.initializer.extend(keep + added)
        del g.node[:]
        g.node.extend(out)
    return done
