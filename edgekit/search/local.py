"""A quantized node's own error: the float node, run on the quantized model's own inputs.

The difference of noise ratios (edgekit.search.sensitivity) blames a node for the noise its
output has beyond its inputs'. A node whose error only shows downstream escapes that: the
classifier head of an encoder reads an input that is already noisy, adds a small error in
NSR terms, and that error is what flips the classes. So every quantized MatMul, Gemm and
Conv is also run in float (its FP32 weights, one small model holding them all) on the very
tensors its quantized version read, and its own error is the noise-to-signal ratio of the
quantized output against that: input noise cancels out exactly, and what is left is the
node's own quantization (its weights, and its input's rounding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["LocalErrors", "LOCAL_OPS"]

LOCAL_OPS = ("MatMul", "Gemm", "Conv")


class LocalErrors:
    """Accumulates the own error of the quantized linear nodes over the batches."""

    def __init__(self, float_proto, quantized: Path, heads: set[str], visible: dict[str, str]):
        import onnx

        weights = {t.name for t in float_proto.graph.initializer}
        q_proto = onnx.load(str(quantized))
        q_tensors = {o for n in q_proto.graph.node for o in n.output} | {i.name for i in q_proto.graph.input}
        self._nodes = [n for n in float_proto.graph.node if n.name in heads and n.op_type in LOCAL_OPS
                       and len(n.output) == 1 and any(i in weights for i in n.input)
                       and all(i in weights or i in q_tensors for i in n.input if i)
                       and visible.get(n.output[0], n.output[0]) in q_tensors]
        self._inputs = sorted({i for n in self._nodes for i in n.input if i and i not in weights})
        self._outputs = [visible.get(n.output[0], n.output[0]) for n in self._nodes]
        self._proto, self._weights, self._q_proto = float_proto, weights, q_proto
        self._probe = self._local = None
        self.signal = {n.name: 0.0 for n in self._nodes}
        self.noise = dict(self.signal)

    def add(self, batch: dict) -> None:
        """Run one batch of model inputs through the quantized model and the float nodes."""
        if not self._nodes:
            return
        try:
            if self._probe is None:
                self._probe = _session(_with_outputs(self._q_proto, self._inputs + self._outputs))
            wanted = self._inputs + self._outputs
            values = dict(zip(wanted, self._probe.run(wanted, batch)))
            if self._local is None:
                self._local = _session(self._local_model(values))
            ys = self._local.run([f"local/{n.name}" for n in self._nodes], {i: values[i] for i in self._inputs})
        except Exception:  # noqa: BLE001 - onnxruntime refuses a graph: rank without the own errors
            self._nodes, self.signal = [], {}
            return
        for node, y, out in zip(self._nodes, ys, self._outputs):
            q = values[out]
            if q.shape != y.shape or not np.isfinite(y).all():
                continue
            with np.errstate(over="ignore", invalid="ignore"):
                self.signal[node.name] += float(np.sum(y.astype(np.float64) ** 2))
                self.noise[node.name] += float(np.sum((q.astype(np.float64) - y) ** 2))

    def ratios(self, cap: float) -> dict[str, float]:
        return {name: min(self.noise[name] / s, cap) if np.isfinite(self.noise[name]) else cap
                for name, s in self.signal.items() if 0 < s < np.inf}

    def _local_model(self, values: dict):
        from onnx import TensorProto, helper

        used = {i for n in self._nodes for i in n.input}
        graph = helper.make_graph(
            [helper.make_node(n.op_type, list(n.input), [f"local/{n.name}"], name=n.name, domain=n.domain,
                              **{a.name: helper.get_attribute_value(a) for a in n.attribute}) for n in self._nodes],
            "local", [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(values[i].dtype), None)
                      for i in self._inputs],
            [helper.make_tensor_value_info(f"local/{n.name}", TensorProto.FLOAT, None) for n in self._nodes],
            initializer=[t for t in self._proto.graph.initializer if t.name in used])
        model = helper.make_model(graph, opset_imports=list(self._proto.opset_import))
        model.ir_version = self._proto.ir_version
        return model


def _with_outputs(proto, names: list[str]):
    from onnx import helper

    model = type(proto)()
    model.CopyFrom(proto)
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in present)
    return model


def _session(model):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the nodes as they are
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
