"""ONNX model files: check one, and describe it (inputs, outputs, precision, what it needs).

A model is checked by loading it with onnx and passing it through ``onnx.checker``; its
tensor data may live in external files beside it, which count towards its size and travel
with it in a bundle.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgekit.datasets import InputSpec
from edgekit.errors import ModelError
from edgekit.toolchains.base import message

__all__ = ["check_onnx", "model_inputs", "model_outputs", "first_output", "model_size_mb", "external_data_files",
           "onnx_precision", "onnx_requirements"]

_DYNAMIC_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"}
_STATIC_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "QGemm"}


def check_onnx(path: Path) -> Path:
    """`path` if it is a readable ONNX model that passes onnx.checker, else ModelError."""
    import onnx

    if not path.is_file():
        raise ModelError(f"model {path}: not found")
    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: the bytes are not a model
        raise ModelError(f"model {path}: not a readable ONNX file ({message(exc)})") from exc
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, ValueError, OSError) as exc:
        raise ModelError(f"model {path}: fails the ONNX checker: {message(exc)}") from exc
    return path


def model_inputs(path: Path) -> list[InputSpec]:
    """The inputs a caller feeds: graph inputs that are not initializers."""
    graph = _load(path).graph
    inits = {i.name for i in graph.initializer}
    return [_spec(vi) for vi in graph.input if vi.name not in inits]


def model_outputs(path: Path) -> list[str]:
    return [o.name for o in _load(path).graph.output]


def first_output(path: Path) -> InputSpec:
    """Name, dtype and shape of the output metrics read (edgekit.device.metrics.scored_index:
    the first floating-point one, else the first)."""
    from edgekit.device.metrics import scored_index

    specs = [_spec(o) for o in _load(path).graph.output]
    return specs[scored_index([s.dtype for s in specs])]


def _spec(value_info) -> InputSpec:
    import onnx

    tt = value_info.type.tensor_type
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
    return InputSpec(value_info.name, dtype, shape)


def external_data_files(path: Path) -> list[Path]:
    """The files that hold a model's external tensor data, next to the model."""
    from onnx.external_data_helper import uses_external_data

    model = _load(path)
    names = set()
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            names.update(e.value for e in tensor.external_data if e.key == "location")
    return sorted(Path(path).parent / n for n in names)


def model_size_mb(path: Path) -> float:
    """Size on disk in MiB (2**20 bytes), external data files included."""
    total = os.path.getsize(path) + sum(os.path.getsize(f) for f in external_data_files(path) if f.is_file())
    return total / (1024.0 * 1024.0)


def onnx_precision(path: Path) -> str:
    """int8-dynamic | int8-static by the quantized operators, else fp16 | fp32 by the weights."""
    import onnx

    proto = _load(path)
    ops = {n.op_type for n in proto.graph.node}
    if ops & _DYNAMIC_OPS:
        return "int8-dynamic"
    if ops & _STATIC_OPS:
        return "int8-static"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer):
        return "fp16"
    return "fp32"


def onnx_requirements(path: Path) -> dict:
    """The IR version and opsets the device's onnxruntime must read (an older one refuses newer ones)."""
    proto = _load(path)
    return {"ir_version": int(proto.ir_version),
            "opsets": {(o.domain or "ai.onnx"): int(o.version) for o in proto.opset_import}}


def _load(path: Path):
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"model {path}: not a readable ONNX file ({message(exc)})") from exc
