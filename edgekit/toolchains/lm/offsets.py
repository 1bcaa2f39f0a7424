"""Asymmetric 4-bit blocks with their offsets kept, on MatMulNBits' fast path.

A block of weights on the grid w = m + q*d (q = 0..15; GGUF Q4_1's grid, and min/max RTN's)
has the offset o = m + 8*d. onnxruntime's integer zero points z round it: w = (q - z)*d + r,
r = o - (8 - z)*d the residual (|r| <= d/2 where the block holds 0), which is what integer zero
points lose (22-26% of perplexity on SmolLM2-135M) and float zero points run ~15x slower in
onnxruntime 1.32's kernels. So the residual comes back through the input's block sums, inside the
same MatMulNBits: it reads [x, blockmean(x)] (K + K/block inputs) and its extra rows hold
block * r, themselves in 4-bit blocks (integer zero points), a few percent of a step off:

    y = MatMulNBits4([x, blockmean(x)]),  weights [[(q - z) * d], [block * r]]

blockmean is one AveragePool over each block of the input's last axis, and the Concat is shared
by the projections that read one input. One node per projection, as a plain one: a separate
offset product (a MatMul over the block means) and its Add were 36-53 us a decode step each on
SmolLM2-135M, whatever their size.

The projections that read one input (an MLP's gate and up) are first made one MatMul over
their concatenated weights, split after: one block mean and one MatMulNBits for the group.

The head may take the offsets too (`with_head`), as a product of its own: its offsets are an
8-bit MatMulNBits over the block means, added after (its table is 49152 wide on SmolLM2 and the
embedding reads it: `embed_offsets`, the 4-bit codes through GatherBlockQuantized and the offsets
through an 8-bit one, added per block). Alone the head stays float here (quantize.py makes it
8-bit).
"""

from __future__ import annotations

import numpy as np

from edgekit.toolchains.lm.importance import refine_offset, refine_zero_point

__all__ = ["minmax_offset", "embed_offsets", "offset_blocks", "offset_grid", "residual_blocks", "zero_point_grid",
           "fuse_shared_inputs", "projections", "OFFSET_BLOCK"]

OFFSET_BLOCK = 32  # the offsets' own MatMulNBits blocks (8 bits), along K/block


def minmax_offset(proto, head: str, bits: int, block: int, with_head: bool = False, plain=(), importance=None):
    """Every constant-weight MatMul whose K is a multiple of `block` (and the head if `with_head`)
    in asymmetric `bits`-bit blocks with their offsets kept (what integer zero points leave, the
    residual, read through the block means); the projections named in `plain` (after fusion:
    `projections`) in onnxruntime's asymmetric blocks instead, integer zero points and no residual
    (a narrower input, less accurate: edgekit.toolchains.lm.lean chooses them). `importance`:
    input tensor name -> its channels' weights (edgekit.toolchains.lm.importance), to search
    each block's parameters against instead of taking its min/max. Returns `proto`, changed in
    place."""
    from onnx import helper

    from edgekit.toolchains.lm.graph import drop_dead

    skip = set() if with_head else {head}
    fuse_shared_inputs(proto, skip | {head}, block)
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    nodes, means, widened, new = [], {}, {}, []
    for node in g.node:
        weight = _weight(node, inits, block)
        if weight is None or node.name in skip:
            nodes.append(node)
            continue
        x = node.input[0]
        imp = (importance or {}).get(x)
        if node.name in plain:
            nodes.append(_zero_point_matmul(node, weight, bits, block, new, imp))
            continue
        if x not in means:
            means[x] = _blockmean(nodes, x, block, weight.name)
        if node.name == head:
            nodes += _offset_matmul(node, weight, means[x], bits, block, new, imp)
            continue
        if x not in widened:
            widened[x] = _widen(nodes, x, means[x], weight.name)
        nodes.append(_residual_matmul(node, weight, widened[x], bits, block, new, imp))
    g.ClearField("node")
    g.node.extend(nodes)
    g.initializer.extend(new)
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    drop_dead(g)
    return proto


def _weight(node, inits, block):
    weight = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
    if weight is None or len(weight.dims) != 2 or weight.dims[0] % block:
        return None  # not a projection this recipe can block (onnxruntime's quantizer would pad K)
    return weight


def projections(proto, block: int, skip=()) -> dict:
    """The MatMuls `minmax_offset` blocks (names not in `skip`): name -> (input, weight initializer)."""
    inits = {i.name: i for i in proto.graph.initializer}
    return {n.name: (n.input[0], _weight(n, inits, block)) for n in proto.graph.node
            if n.name not in skip and _weight(n, inits, block) is not None}


def fuse_shared_inputs(proto, skip: set, block: int) -> None:
    """MatMuls that read one input: one MatMul over their weights side by side, then a Split."""
    from onnx import helper, numpy_helper

    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    groups: dict = {}
    for node in g.node:
        if node.name not in skip and _weight(node, inits, block) is not None:
            groups.setdefault(node.input[0], []).append(node)
    for x, members in groups.items():
        if len(members) < 2:
            continue
        weights = [numpy_helper.to_array(inits[m.input[1]]) for m in members]
        name = members[0].name + "_fused"
        g.initializer.extend([numpy_helper.from_array(np.concatenate(weights, 1), name + ".weight"),
                              numpy_helper.from_array(np.array([w.shape[1] for w in weights], np.int64),
                                                      name + "_split")])
        at = list(g.node).index(members[0])
        for m in members:
            g.node.remove(m)
        g.node.insert(at, helper.make_node("Split", [name + "_y", name + "_split"], [m.output[0] for m in members],
                                           name=name + "_split", axis=-1))
        g.node.insert(at, helper.make_node("MatMul", [x, name + ".weight"], [name + "_y"], name=name))


def _blockmean(nodes, x, block, base) -> str:
    """The mean of each block of `block` inputs along x's last axis: [.., S, K] -> [.., S, K/block]."""
    from onnx import helper

    nodes.append(helper.make_node("AveragePool", [x], [base + "_x_blockmean"], name=base + "_blockmean",
                                  kernel_shape=[block], strides=[block]))
    return base + "_x_blockmean"


def _widen(nodes, x, means, base) -> str:
    """[x, blockmean(x)] along the last axis: what a projection with its offsets' residuals reads."""
    from onnx import helper

    nodes.append(helper.make_node("Concat", [x, means], [base + "_x_widened"], name=base + "_widen", axis=-1))
    return base + "_x_widened"


def _residual_matmul(node, weight, widened, bits, block, new, importance=None):
    """One MatMulNBits over [x, blockmean(x)]: the codes with integer zero points, then the rows
    of the residuals (`residual_blocks`)."""
    from onnx import helper, numpy_helper

    codes, scales, zeros, _ = residual_blocks(numpy_helper.to_array(weight).astype(np.float32), bits, block, importance)
    k, n = weight.dims
    base = weight.name
    new += [numpy_helper.from_array(codes, base + "_Qr"), numpy_helper.from_array(scales, base + "_scales_r"),
            numpy_helper.from_array(zeros, base + "_zr")]
    return helper.make_node("MatMulNBits", [widened, base + "_Qr", base + "_scales_r", base + "_zr"],
                            list(node.output), name=node.name + "_Q", domain="com.microsoft", K=k + k // block, N=n,
                            bits=bits, block_size=block)


def residual_blocks(w: np.ndarray, bits: int, block: int, importance=None):
    """w [K,N] -> the tables of a MatMulNBits over [x, blockmean(x)] (K + K/block inputs): packed
    codes [N, blocks, blob], scales [N*blocks], packed zero points, and the weights [K, N] they
    compute with. The first K/block blocks are the offset grid with each offset split into the
    nearest integer zero point and its residual r; then K/block rows of block * r (the block means
    read them: block sums times r), in blocks of their own with integer zero points (their
    range holds 0; padded with zeros to a whole block)."""
    mid, qmax = 2 ** (bits - 1), 2 ** bits - 1
    q, scale, offset = offset_grid(w, bits, block, importance)  # w = (q - mid) * scale + offset
    zero = np.clip(np.rint(mid - offset / scale), 0, qmax)
    residual = (offset - (mid - zero) * scale)[..., 0]  # [N, K/block]
    n, blocks = residual.shape
    rows = np.zeros((-(-blocks // block) * block, n), np.float32)
    rows[:blocks] = residual.T * np.float32(block)
    rq, rscale, rzero = zero_point_grid(rows, bits, block)
    read = ((rq.astype(np.float32) - rzero) * rscale).reshape(n, -1)[:, :blocks] / np.float32(block)
    weights = ((q.astype(np.float32) - zero) * scale + read[..., None]).reshape(n, -1).T
    return (_pack(np.concatenate([q, rq], 1), bits), np.concatenate([scale, rscale], 1).reshape(-1).astype(np.float32),
            _pack(np.concatenate([zero.astype(np.uint8), rzero], 1)[..., 0], bits).reshape(-1),
            np.ascontiguousarray(weights.astype(np.float32)))


def _offset_matmul(node, weight, means, bits, block, new, importance=None) -> list:
    """The head's: the 4-bit MatMulNBits, the offsets' product with the block means (block *
    offsets, so that it adds the block sums times the offsets: an 8-bit MatMulNBits, which the
    embedding reads too), and their Add."""
    from onnx import helper, numpy_helper

    packed, scales, offsets = offset_blocks(numpy_helper.to_array(weight).astype(np.float32), bits, block, importance)
    k, n = weight.dims
    base = weight.name
    oq, os = _sym8(offsets * np.float32(block))
    new += [numpy_helper.from_array(packed, base + "_Qo"), numpy_helper.from_array(scales, base + "_scales_o"),
            numpy_helper.from_array(oq, base + "_offQ"), numpy_helper.from_array(os, base + "_offS")]
    ms = "com.microsoft"
    return [helper.make_node("MatMulNBits", [node.input[0], base + "_Qo", base + "_scales_o"], [base + "_yq"],
                             name=node.name + "_Q", domain=ms, K=k, N=n, bits=bits, block_size=block),
            helper.make_node("MatMulNBits", [means, base + "_offQ", base + "_offS"], [base + "_yo"],
                             name=node.name + "_offset", domain=ms, K=k // block, N=n, bits=8, block_size=OFFSET_BLOCK),
            helper.make_node("Add", [base + "_yq", base + "_yo"], list(node.output), name=node.name + "_add")]


def offset_blocks(w: np.ndarray, bits: int, block: int, importance=None):
    """w [K,N] -> (packed uint8 [N, blocks, blob], scales [N*blocks], offsets [blocks, N])."""
    q, scale, offset = offset_grid(w, bits, block, importance)
    return _pack(q, bits), scale.reshape(-1), np.ascontiguousarray(offset[..., 0].T)


def offset_grid(w: np.ndarray, bits: int, block: int, importance=None):
    """w [K,N] -> codes q [N, blocks, block], scales and offsets [N, blocks, 1]:
    w = (q - 2**(bits-1)) * scale + offset. min/max per block, or with `importance` [K] searched
    against it (edgekit.toolchains.lm.importance)."""
    qmax, mid = 2 ** bits - 1, 2 ** (bits - 1)
    k, n = w.shape
    wt = w.T.reshape(n, k // block, block)
    lo, hi = wt.min(-1, keepdims=True), wt.max(-1, keepdims=True)
    scale = np.where(hi > lo, (hi - lo) / qmax, 1.0).astype(np.float32)
    q = np.clip(np.rint((wt - lo) / scale), 0, qmax).astype(np.uint8)
    if importance is not None:
        q, scale, lo = refine_offset(wt, q, scale, lo, importance, qmax)
    return q, scale, (lo + mid * scale).astype(np.float32)


def zero_point_grid(w: np.ndarray, bits: int, block: int, importance=None):
    """onnxruntime's asymmetric blocks: the range widened to hold 0 so that the zero point is an
    integer. w [K,N] -> codes q [N, blocks, block], scales and zero points [N, blocks, 1]:
    w = (q - zero point) * scale. With `importance` [K]: searched against it, as offset_grid."""
    qmax = 2 ** bits - 1
    k, n = w.shape
    wt = w.T.reshape(n, k // block, block)
    lo, hi = np.minimum(wt.min(-1, keepdims=True), 0), np.maximum(wt.max(-1, keepdims=True), 0)
    scale = np.where(hi > lo, (hi - lo) / qmax, 1.0).astype(np.float32)
    zero = np.clip(np.rint(-lo / scale), 0, qmax)
    q = np.clip(np.rint(wt / scale) + zero, 0, qmax).astype(np.uint8)
    if importance is not None:
        q, scale, zero = refine_zero_point(wt, q, scale, zero, importance, qmax)
    return q, scale, zero.astype(np.uint8)


def _pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Codes along the last axis, two to a byte at 4 bits (the low nibble first)."""
    if bits != 4:
        return q
    if q.shape[-1] % 2:
        q = np.concatenate([q, np.zeros(q.shape[:-1] + (1,), np.uint8)], -1)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def _zero_point_matmul(node, weight, bits, block, new, importance=None):
    """One MatMulNBits with integer zero points (MLAS' fast path too) in place of `node`."""
    from onnx import helper, numpy_helper

    q, scale, zero = zero_point_grid(numpy_helper.to_array(weight).astype(np.float32), bits, block, importance)
    k, n = weight.dims
    base = weight.name
    new += [numpy_helper.from_array(_pack(q, bits), base + "_Qz"),
            numpy_helper.from_array(scale.reshape(-1), base + "_scales_z"),
            numpy_helper.from_array(_pack(zero[..., 0], bits).reshape(-1), base + "_zp")]
    return helper.make_node("MatMulNBits", [node.input[0], base + "_Qz", base + "_scales_z", base + "_zp"],
                            list(node.output), name=node.name + "_Q", domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block)


def _sym8(m: np.ndarray):
    """m [K,N] -> an 8-bit symmetric MatMulNBits weight (packed [N, blocks, 32], scales [N*blocks])."""
    k, n = m.shape
    blocks = -(-k // OFFSET_BLOCK)
    padded = np.zeros((blocks * OFFSET_BLOCK, n), np.float32)
    padded[:k] = m
    t = padded.T.reshape(n, blocks, OFFSET_BLOCK)
    amax = np.abs(t).max(-1, keepdims=True)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = (np.clip(np.rint(t / scale), -127, 127) + 128).astype(np.uint8)  # 128: the 8-bit implicit zero point
    return q, scale.reshape(-1)


def embed_offsets(proto, emb_name: str, head_weight: str, block: int) -> None:
    """The embedding as the offset head's rows: GatherBlockQuantized over its 4-bit codes plus
    GatherBlockQuantized over its 8-bit offsets (with the head's offset scales over the block:
    the head's product reads block means), one offset added to each block of a row."""
    from onnx import helper, numpy_helper

    from edgekit.toolchains.lm.graph import drop_dead

    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    emb = next(n for n in g.node if n.name == emb_name)
    ids, out = emb.input[1], emb.output[0]
    codes, scales = inits[head_weight + "_Qo"], inits[head_weight + "_scales_o"]
    offq, offs = inits[head_weight + "_offQ"], inits[head_weight + "_offS"]
    vocab, blocks, blob = codes.dims
    _, oblocks, oblk = offq.dims
    consts = {"emb_q_shape": [vocab, blocks * blob], "emb_s_shape": [vocab, blocks],
              "emb_oq_shape": [vocab, oblocks * oblk], "emb_os_shape": [vocab, oblocks], "emb_o_start": [0],
              "emb_o_end": [blocks], "emb_o_axis": [-1], "emb_blocks": [0, 0, blocks, block],
              "emb_o_blocks": [0, 0, blocks, 1], "emb_hidden": [0, 0, blocks * block]}
    g.initializer.extend(numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items())
    g.initializer.append(numpy_helper.from_array(numpy_helper.to_array(offs) / np.float32(block), "emb_offS"))

    def gather(data, scale, bits, size, name):
        return helper.make_node("GatherBlockQuantized", [data, ids, scale], [name], name=name, domain="com.microsoft",
                                bits=bits, block_size=size, gather_axis=0, quantize_axis=1)

    make = helper.make_node
    nodes = [make("Reshape", [codes.name, "emb_q_shape"], ["emb_q"]), make("Reshape", [scales.name, "emb_s_shape"], ["emb_s"]),
             gather("emb_q", "emb_s", 4, block, "emb_codes"),
             make("Reshape", [offq.name, "emb_oq_shape"], ["emb_oq"]),
             make("Reshape", ["emb_offS", "emb_os_shape"], ["emb_os"]),
             gather("emb_oq", "emb_os", 8, oblk, "emb_offsets_padded"),
             make("Slice", ["emb_offsets_padded", "emb_o_start", "emb_o_end", "emb_o_axis"], ["emb_offsets"]),
             make("Reshape", ["emb_codes", "emb_blocks"], ["emb_codes_b"]),
             make("Reshape", ["emb_offsets", "emb_o_blocks"], ["emb_offsets_b"]),
             make("Add", ["emb_codes_b", "emb_offsets_b"], ["emb_rows_b"]),
             make("Reshape", ["emb_rows_b", "emb_hidden"], [out])]
    at = list(g.node).index(emb)
    g.node.remove(emb)
    for i, node in enumerate(nodes):
        node.name = node.name or f"embed_offsets_{i}"
        g.node.insert(at + i, node)
    drop_dead(g)
