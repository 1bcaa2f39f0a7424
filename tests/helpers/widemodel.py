"""A model of any size that takes the digits data: for bundles big enough to cut in the
middle of an upload (tests) or to time a transfer (benchmarks/push_vs_scp.py)."""

from __future__ import annotations

from pathlib import Path


def wide_digits_model(path: Path, megabytes: float) -> Path:
    """An fp32 model that takes the digits data (input [N,1,8,8] -> logits [N,10]) with about
    `megabytes` of seeded random weights: a bundle big enough to cut in the middle."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    hidden = max(16, int(megabytes * (1 << 20) / (4 * (64 + 10))))
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((64, hidden)) / 8).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((hidden, 10)) / np.sqrt(hidden)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "w1"], ["h"]),
         helper.make_node("Relu", ["h"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["logits"])],
        "wide_digits", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], initializer=[w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
