"""A small transformer encoder test model, built with onnx.helper (no torch needed).

    input_ids [batch, 16] int64, attention_mask [batch, 16] int64  ->  logits [batch, 8] float32

Token and position embeddings, two post-LayerNorm encoder layers (hidden 64, 4 heads,
feed-forward 128, ReLU), masked mean pooling and a linear classifier, with random weights.
Masking multiplies the softmax by the mask and renormalises (equal to an additive -inf
mask in float) so that no activation holds a huge sentinel such as -1e4: the test model
should be kind to INT8, except where it is asked not to be.

`outlier_layer=True` moves a large factor (x OUTLIER_SCALE) into two hidden channels of the
last layer's feed-forward block: fc1 rows are scaled up and the matching fc2 columns scaled
down, so the FP32 function is unchanged but the activation between them (the input of node
OUTLIER_NODE) carries outliers. Per-tensor INT8 sizes its one scale to the outliers and
crushes every other channel; excluding OUTLIER_NODE keeps that tensor in float.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VOCAB, SEQ, HIDDEN, HEADS, FFN, LAYERS, CLASSES = 200, 16, 64, 4, 128, 2, 8
HEAD_DIM = HIDDEN // HEADS
OUTLIER_SCALE = 64.0
OUTLIER_PATTERN = f"layer{LAYERS - 1}/ffn/*"  # fnmatch pattern of the outlier block's nodes
INPUTS = ("input_ids", "attention_mask")


class _Graph:
    """Collects nodes and initializers; names every node."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.nodes, self.inits = rng, [], []

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, shape: tuple[int, ...], scale: float | None = None) -> np.ndarray:
        std = scale if scale is not None else 1.0 / np.sqrt(shape[0])
        return self.rng.normal(0.0, std, size=shape).astype(np.float32)

    def op(self, op_type: str, name: str, inputs: list[str], **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name

    def linear(self, name: str, x: str, w: np.ndarray, b: np.ndarray | None = None) -> str:
        b = np.zeros(w.shape[1], np.float32) if b is None else b
        y = self.op("MatMul", name, [x, self.const(f"{name}.weight", w)])
        return self.op("Add", f"{name}/bias", [y, self.const(f"{name}.bias", b)])

    def layer_norm(self, name: str, x: str) -> str:
        gamma = self.const(f"{name}.gamma", np.ones(HIDDEN, np.float32))
        beta = self.const(f"{name}.beta", np.zeros(HIDDEN, np.float32))
        return self.op("LayerNormalization", name, [x, gamma, beta], axis=-1, epsilon=1e-5)


def _attention(g: _Graph, p: str, x: str, mask4: str, additive: bool = False) -> str:
    def heads(name: str, perm: list[int]) -> str:
        y = g.linear(f"{p}/attn/{name}", x, g.weight((HIDDEN, HIDDEN)))
        y = g.op("Reshape", f"{p}/attn/{name}/split", [y, "heads_shape"])
        return g.op("Transpose", f"{p}/attn/{name}/t", [y], perm=perm)

    q, k, v = heads("q", [0, 2, 1, 3]), heads("k", [0, 2, 3, 1]), heads("v", [0, 2, 1, 3])
    scores = g.op("Mul", f"{p}/attn/scale", [g.op("MatMul", f"{p}/attn/qk", [q, k]), "attn_scale"])
    if additive:  # as exporters write it: finfo.min where masked, added to the scores before the Softmax
        probs = g.op("Softmax", f"{p}/attn/softmax", [g.op("Add", f"{p}/attn/mask", [scores, "mask_bias"])], axis=-1)
    else:
        probs = g.op("Mul", f"{p}/attn/mask", [g.op("Softmax", f"{p}/attn/softmax", [scores], axis=-1), mask4])
        denom = g.op("ReduceSum", f"{p}/attn/denom", [probs, "last_axis"], keepdims=1)
        probs = g.op("Div", f"{p}/attn/renorm", [probs, denom])
    ctx = g.op("Transpose", f"{p}/attn/ctx/t", [g.op("MatMul", f"{p}/attn/ctx", [probs, v])], perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", f"{p}/attn/ctx/merge", [ctx, "merge_shape"])
    return g.linear(f"{p}/attn/out", ctx, g.weight((HIDDEN, HIDDEN)))


def _layer(g: _Graph, i: int, x: str, mask4: str, outliers: bool, additive: bool = False) -> str:
    p = f"layer{i}"
    h = g.layer_norm(f"{p}/ln1", g.op("Add", f"{p}/attn/residual", [x, _attention(g, p, x, mask4, additive)]))
    w1, w2 = g.weight((HIDDEN, FFN)), g.weight((FFN, HIDDEN))
    if outliers:  # same function in float, outliers in the fc1 -> fc2 activation
        w1[:, :2] *= OUTLIER_SCALE
        w2[:2, :] /= OUTLIER_SCALE
    f = g.op("Relu", f"{p}/ffn/relu", [g.linear(f"{p}/ffn/fc1", h, w1)])
    return g.layer_norm(f"{p}/ln2", g.op("Add", f"{p}/ffn/residual", [h, g.linear(f"{p}/ffn/fc2", f, w2)]))


def build_encoder(path: str | Path, *, outlier_layer: bool = False, seed: int = 0, additive_mask: bool = False,
                  constant_weights: bool = False) -> Path:
    """Write the encoder to `path` (see the module docstring) and return the path.

    additive_mask: mask the attention as exporters of real encoders do, adding float32's most
    negative value to the masked scores (it overflows to -inf where a score is negative).
    constant_weights: every weight in a Constant node, and the MatMul weights stored transposed
    behind a Transpose (as Paddle and TF converters write them): a constant subgraph to fold."""
    g = _Graph(np.random.default_rng(seed))
    g.const("heads_shape", np.array([0, 0, HEADS, HEAD_DIM], np.int64))
    g.const("merge_shape", np.array([0, 0, HIDDEN], np.int64))
    g.const("attn_scale", np.array(1.0 / np.sqrt(HEAD_DIM), np.float32))
    g.const("last_axis", np.array([-1], np.int64))
    g.const("mask_axes4", np.array([1, 2], np.int64))
    g.const("mask_axes3", np.array([2], np.int64))
    g.const("seq_axis", np.array([1], np.int64))

    mask = g.op("Cast", "mask/float", ["attention_mask"], to=TensorProto.FLOAT)
    mask4 = g.op("Unsqueeze", "mask/heads", [mask, "mask_axes4"])
    if additive_mask:
        g.const("one", np.array(1.0, np.float32))
        g.const("most_negative", np.array(np.finfo(np.float32).min, np.float32))
        g.op("Mul", "mask_bias", [g.op("Sub", "mask/inverted", ["one", mask4]), "most_negative"])
    tokens = g.op("Gather", "embed/tokens", [g.const("embed.tokens", g.weight((VOCAB, HIDDEN), 1.0)), "input_ids"])
    x = g.op("Add", "embed/positions", [tokens, g.const("embed.positions", g.weight((SEQ, HIDDEN), 0.1))])
    x = g.layer_norm("embed/ln", x)
    for i in range(LAYERS):
        x = _layer(g, i, x, mask4, outliers=outlier_layer and i == LAYERS - 1, additive=additive_mask)

    mask3 = g.op("Unsqueeze", "pool/mask", [mask, "mask_axes3"])
    summed = g.op("ReduceSum", "pool/sum", [g.op("Mul", "pool/masked", [x, mask3]), "seq_axis"], keepdims=0)
    count = g.op("ReduceSum", "pool/count", [mask3, "seq_axis"], keepdims=0)
    pooled = g.op("Div", "pool/mean", [summed, count])
    logits = g.linear("classifier", pooled, g.weight((HIDDEN, CLASSES)))
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="output"))

    graph = helper.make_graph(
        g.nodes, "edgekit-test-encoder",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", SEQ]) for n in INPUTS],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgekit-tests")
    model.ir_version = 8  # readable by the older onnxruntime that devices run
    if constant_weights:
        to_constant_nodes(model)
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    onnx.save(model, path)
    return path


def to_constant_nodes(model) -> None:
    """Every initializer becomes a Constant node; 2-D MatMul weights are stored transposed."""
    g = model.graph
    weights = {n.input[1] for n in g.node if n.op_type == "MatMul"}
    nodes = []
    for t in g.initializer:
        value = numpy_helper.to_array(t)
        if t.name in weights and value.ndim == 2:
            stored = numpy_helper.from_array(np.ascontiguousarray(value.T), f"{t.name}/T")
            nodes += [helper.make_node("Constant", [], [stored.name], name=f"const/{stored.name}", value=stored),
                      helper.make_node("Transpose", [stored.name], [t.name], name=f"transpose/{t.name}", perm=[1, 0])]
        else:
            nodes.append(helper.make_node("Constant", [], [t.name], name=f"const/{t.name}", value=t))
    nodes += list(g.node)
    del g.initializer[:]
    del g.node[:]
    g.node.extend(nodes)


def make_encoder_data(path: str | Path, n: int, seed: int = 0) -> Path:
    """Write `n` samples of token ids and attention masks (no labels) to an .npz file."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, SEQ + 1, size=n)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1, VOCAB, size=(n, SEQ)).astype(np.int64) * mask  # 0 = padding
    path = Path(path)
    np.savez(path, input_ids=ids, attention_mask=mask)
    return path
