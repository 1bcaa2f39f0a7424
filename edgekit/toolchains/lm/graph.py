"""The graph work around a decoder's weights: find its LM head and token embedding, give each
its own initializer, share one 8-bit table between them (or, untied, give the embedding an 8-bit
table of its own), and save the result.

Exporters wire a tied head and embedding differently (the builder feeds the embedding a
Transpose of the head's weight; optimum and torch feed the head a Transpose of the
embedding); `normalize` makes both plain: the head a MatMul(hidden, W[H,V]) and the
embedding a Gather(E[V,H]) of initializers, whatever came in.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from edgekit.device.lm import META_KEY

__all__ = ["rotary_positions", "normalize", "drop_dead", "head_node", "share_embedding", "quantize_embedding",
           "set_accuracy_level", "external_files", "set_lm_meta", "lm_meta_of", "save"]

HEAD, EMBED = "lm_head.weight", "embed_tokens.weight"


def _inits(g) -> dict:
    return {i.name: i for i in g.initializer}


def _producers(g) -> dict:
    return {o: n for n in g.node for o in n.output}


def _const(g, name):
    """An initializer, or a Transpose of one materialized; None if not constant."""
    from onnx import numpy_helper

    inits, node = _inits(g), _producers(g).get(name)
    if name in inits:
        return numpy_helper.to_array(inits[name])
    if node is not None and node.op_type == "Transpose" and node.input[0] in inits:
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        return numpy_helper.to_array(inits[node.input[0]]).transpose(perm)
    return None


def head_node(g):
    """The MatMul (or MatMulNBits) that makes the logits."""
    producers = _producers(g)
    node = producers["logits"]
    while node.op_type not in ("MatMul", "MatMulNBits"):
        node = producers[node.input[0]]
    return node


def _embed_node(g):
    return next(n for n in g.node if n.op_type == "Gather" and n.input[1] == "input_ids")


def normalize(model) -> tuple[str, str, bool]:
    """Give head and embedding their own initializers; (head node, embedding node, tied)."""
    from onnx import numpy_helper

    g = model.graph
    head, emb = head_node(g), _embed_node(g)
    w, e = _const(g, head.input[1]), _const(g, emb.input[0])
    if w is None or e is None:
        raise ValueError("the LM head or the token embedding is not a constant weight")
    tied = w.shape[::-1] == e.shape and np.array_equal(w.T, e)
    head.name, emb.name = head.name or "lm_head_MatMul", emb.name or "embed_tokens_Gather"
    for node, arr, name, idx in ((head, w, HEAD, 1), (emb, e, EMBED, 0)):
        if node.input[idx] != name:
            g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
            node.input[idx] = name
    drop_dead(g)
    return head.name, emb.name, tied


def drop_dead(g) -> None:
    """Remove nodes whose outputs nobody reads, then initializers nobody reads."""
    while True:
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)


def share_embedding(model, emb_name: str) -> None:
    """The embedding as GatherBlockQuantized over the quantized head's weight [V, blocks, blob]
    (one table for both, as the builder does at 4 bits; onnxruntime's own quantizer offers 4 bits
    only), its padding past the hidden size sliced off. The head must be symmetric (no zero points)."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits, head = _inits(g), head_node(g)
    attrs = {a.name: helper.get_attribute_value(a) for a in head.attribute}
    weight, scales = inits[head.input[1]], inits[head.input[2]]
    vocab, blocks, blob = weight.dims
    consts = {"embed_q_shape": [vocab, blocks * blob], "embed_scale_shape": [vocab, blocks]}
    g.initializer.extend(numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items())
    reshape = [helper.make_node("Reshape", [weight.name, "embed_q_shape"], ["embed_q_data"], name="embed_q_reshape"),
               helper.make_node("Reshape", [scales.name, "embed_scale_shape"], ["embed_q_scales"],
                                name="embed_scale_reshape")]
    _gather_blocks(g, emb_name, "embed_q_data", "embed_q_scales", attrs["bits"], attrs["block_size"], attrs["K"],
                   reshape)


def quantize_embedding(model, emb_name: str, block: int) -> None:
    """An embedding of its own (untied from the head) as an 8-bit table of symmetric blocks read by
    GatherBlockQuantized: a quarter of its float bytes, for one row read per token."""
    from onnx import numpy_helper

    g = model.graph
    emb = next(n for n in g.node if n.name == emb_name)
    table = numpy_helper.to_array(_inits(g)[emb.input[0]]).astype(np.float32)
    vocab, hidden = table.shape
    blocks = -(-hidden // block)
    padded = np.zeros((vocab, blocks * block), np.float32)
    padded[:, :hidden] = table
    amax = np.abs(padded.reshape(vocab, blocks, block)).max(-1)
    scales = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    codes = np.rint(padded.reshape(vocab, blocks, block) / scales[..., None]).clip(-127, 127) + 128  # 128: zero
    g.initializer.extend([numpy_helper.from_array(codes.astype(np.uint8).reshape(vocab, -1), "embed_q8_data"),
                          numpy_helper.from_array(scales, "embed_q8_scales")])
    _gather_blocks(g, emb_name, "embed_q8_data", "embed_q8_scales", 8, block, hidden, [])


def _gather_blocks(g, emb_name: str, data: str, scales: str, bits: int, block: int, hidden: int, before: list) -> None:
    """Replace the embedding's Gather by GatherBlockQuantized over data [V, padded] and scales [V,
    blocks] (after the nodes `before`), the padding past `hidden` sliced off."""
    from onnx import helper, numpy_helper

    emb = next(n for n in g.node if n.name == emb_name)
    padded = -(-hidden // block) * block
    out = emb.output[0] if padded == hidden else "embed_q_padded"
    nodes = before + [helper.make_node("GatherBlockQuantized", [data, emb.input[1], scales], [out],
                                       name="embed_tokens_GatherBlockQuantized", domain="com.microsoft",
                                       bits=bits, block_size=block, gather_axis=0, quantize_axis=1)]
    if padded != hidden:
        for key, value in (("start", 0), ("end", hidden), ("axis", -1)):
            g.initializer.append(numpy_helper.from_array(np.array([value], np.int64), f"embed_slice_{key}"))
        nodes.append(helper.make_node("Slice", ["embed_q_padded", "embed_slice_start", "embed_slice_end",
                                                "embed_slice_axis"], [emb.output[0]], name="embed_slice"))
    at = list(g.node).index(emb)
    g.node.remove(emb)
    for k, node in enumerate(nodes):
        g.node.insert(at + k, node)
    drop_dead(g)


def set_accuracy_level(model, level: int) -> None:
    """accuracy_level on every MatMulNBits (4: int8 activations, the fast CPU kernels)."""
    from onnx import helper

    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            for attr in [a for a in node.attribute if a.name == "accuracy_level"]:
                node.attribute.remove(attr)
            node.attribute.append(helper.make_attribute("accuracy_level", level))


def external_files(proto) -> list[str]:
    """The external data files a model's tensors live in (names beside the model)."""
    from onnx.external_data_helper import uses_external_data

    return sorted({e.value for t in proto.graph.initializer if uses_external_data(t)
                   for e in t.external_data if e.key == "location"})


def lm_meta_of(proto) -> dict:
    """The model's `edgekit.lm` metadata ({} for other models), with its `context` (the longest
    it runs at: rotary_positions) filled in where an older export left it out."""
    entry = next((p.value for p in proto.metadata_props if p.key == META_KEY), None)
    meta = json.loads(entry) if entry else {}
    if meta and meta.get("context") is None:
        meta["context"] = rotary_positions(proto)
    return meta


def rotary_positions(proto):
    """How many positions the model's rotary tables hold (GroupQueryAttention's cos_cache rows):
    the longest sequence onnxruntime runs it at (a longer one fails inside the attention). None
    when its attention has no such table."""
    tables = {i.name: i for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "GroupQueryAttention" and len(node.input) > 7 and node.input[7] in tables:
            return int(tables[node.input[7]].dims[0])
    return None


def set_lm_meta(proto, meta: dict) -> None:
    for prop in [p for p in proto.metadata_props if p.key == META_KEY]:
        proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta, sort_keys=True)


def save(proto, out: Path, meta: dict) -> Path:
    """Write `proto` to `out` with its weights in `out`.data beside it, and its metadata updated."""
    import onnx

    data = out.name + ".data"
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in (out, out.parent / data):
        if stale.exists():
            os.remove(stale)
    set_lm_meta(proto, dict(meta, data=[data]))
    onnx.save(proto, str(out), save_as_external_data=True, all_tensors_to_one_file=True, location=data,
              size_threshold=1024)
    return out
