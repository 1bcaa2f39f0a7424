"""Static INT8 (QDQ) that survives transformers: range-fragile tensors stay in float.

A transformer's additive attention mask holds huge or infinite values (-1e4, -1e9,
finfo.min, -inf, by exporter) and so does everything it is added into before the Softmax.
Calibrated, such a tensor gets a range of [-inf, x] (entropy and percentile then crash with
"Too many bins"; minmax spends all 256 levels on the mask and crushes the scores). So, before
calibrating, the FP32 graph runs on a few calibration batches with every float tensor as an
output (ONNX Runtime's qdq_loss_debug augmentation), and a tensor is range-fragile when it
holds a non-finite value or one beyond FRAGILE (1e4; no weight-bearing activation of the
encoders measured comes near: the largest was ~30). The op types of the nodes that read or
write one are then left out of ``op_types_to_quantize``, which is also what ONNX Runtime's
calibrator looks at, so it never sees those tensors: on BERT-style encoders that keeps the
mask arithmetic (Add, Where) and the Softmax in float. A fragile tensor read by a MatMul, Gemm
or Conv leaves that node in float instead. What was kept, and why, goes into the record.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

__all__ = ["quantize_static_robust", "fragile_tensors", "FRAGILE"]

FRAGILE = 1e4
SCAN_BATCHES = 2
_SAVED = "_ReshapedSavedOutput"
_LINEAR = ("MatMul", "Gemm", "Conv", "ConvTranspose")


def quantize_static_robust(source: Path, staged: Path, recipe, included, excluded, reader, scan) -> Optional[str]:
    """quantize_static (QDQ) of `source` into `staged`, keeping range-fragile tensors in float;
    `scan` is a list of calibration feeds. Returns what was kept in float, or None."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry

    nodes = list(onnx.load(str(source), load_external_data=False).graph.node)
    fragile = fragile_tensors(source, scan)
    touching = [n for n in nodes if fragile & (set(n.input) | set(n.output))]
    op_types = None
    if touching:
        present = {n.op_type for n in nodes}
        dropped = {n.op_type for n in touching if n.op_type not in _LINEAR}
        op_types = sorted((set(QDQRegistry) & present) - dropped)
        excluded = list(excluded) + [n.name for n in touching if n.op_type in _LINEAR and n.name not in excluded]
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[recipe.method or "minmax"]
    extra = {"CalibStridedMinMax": 1}
    if recipe.symmetric is not None:
        extra["ActivationSymmetric"] = recipe.symmetric
    quantize_static(source, staged, reader, quant_format=QuantFormat.QDQ, nodes_to_quantize=included,
                    nodes_to_exclude=excluded, per_channel=recipe.per_channel, reduce_range=recipe.reduce_range,
                    calibrate_method=method, op_types_to_quantize=op_types, extra_options=extra)
    if not touching:
        return None
    kept = sorted({n.op_type for n in touching})
    return (f"{len(fragile)} activation(s) not finite or beyond {FRAGILE:g} (attention-mask arithmetic): "
            f"{', '.join(kept)} kept in float")


def fragile_tensors(model: Path, feeds: list) -> set:
    """The float tensors that hold a non-finite value or one beyond FRAGILE on `feeds`."""
    import onnxruntime as ort
    from onnxruntime.quantization.qdq_loss_debug import modify_model_output_intermediate_tensors

    found: set = set()
    with tempfile.TemporaryDirectory(prefix="edgekit-scan-") as tmp:
        augmented = Path(tmp) / "augmented.onnx"
        modify_model_output_intermediate_tensors(str(model), str(augmented))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(str(augmented), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs() if o.name.endswith(_SAVED)]
        for feed in feeds:
            for name, value in zip(names, session.run(names, feed)):
                if value.dtype.kind == "f" and value.size and not _tame(value):
                    found.add(name[:-len(_SAVED)])
    return found


def _tame(value: np.ndarray) -> bool:
    with np.errstate(invalid="ignore", over="ignore"):
        return bool(np.isfinite(value).all() and np.abs(value).max() < FRAGILE)
