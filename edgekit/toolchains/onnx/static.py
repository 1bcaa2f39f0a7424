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

Bounded memory. Calibration reads at most ``max_samples`` samples, ``batch_size`` at a
time. ONNX Runtime's entropy and percentile calibrators keep every calibrated activation
of every batch they are fed until the end of one ``collect_data`` call; we make
quantize_static call it once per chunk of ``CHUNK_BATCHES`` batches (its
``CalibStridedMinMax`` option, whose loop serves every calibrator), so at most
``CHUNK_BATCHES * batch_size`` samples' activations (default 8 x 16 = 128) are held at a
time before they are folded into histograms. MinMax keeps only per-batch minima and
maxima. ``CalibMaxIntermediateOutputs`` is not used: in onnxruntime 1.32 only the MinMax
calibrator reads it, and it discards each full chunk without merging its ranges
(onnxruntime issue 18893), failing outright when the batch count is a multiple of it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from edgekit.datasets import Dataset, InputSpec
from edgekit.progress import OnStep, notify

__all__ = ["quantize_static_robust", "fragile_tensors", "Reader", "FRAGILE", "CHUNK_BATCHES"]

FRAGILE = 1e4
CHUNK_BATCHES = 8
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


class Reader:
    """Calibration batches for quantize_static, one chunk of batches per set_range() unit.

    quantize_static asks for len() units and calls set_range(i, i + 1) then collect_data
    for each (its CalibStridedMinMax loop); ORT's CalibrationDataReader recognises any class
    with get_next(), so this needs no ORT import. Chunks are taken in order from one stream of
    batches; the short last batch gets a chunk of its own because the histogram collector
    stacks a chunk's batches into one array. A model whose first axis is fixed (an export
    without a dynamic batch axis) gets batches of exactly that size, the last one padded by
    repeating its last sample, as the evaluation pads them.
    """

    def __init__(self, data: Dataset, specs: list[InputSpec], batch_size: int, max_samples: int,
                 on_step: Optional[OnStep] = None):
        n = min(len(data), max_samples)
        self._fixed = _fixed_batch(specs)
        batch_size = self._fixed or batch_size
        full = n // batch_size
        self._chunks = [min(CHUNK_BATCHES, full - i) for i in range(0, full, CHUNK_BATCHES)]
        if n % batch_size:
            self._chunks.append(1)
        self._dtypes = {s.name: np.dtype(s.dtype) for s in specs}
        self._stream = data.batches(batch_size, limit=n)
        self._left = sum(self._chunks)  # everything, for an onnxruntime that never calls set_range
        self._total, self._given, self._on_step = sum(self._chunks), 0, on_step

    def __len__(self) -> int:
        return len(self._chunks)

    def feeds(self):
        """Every batch, in order, without the chunking (for a range scan)."""
        while self._left > 0:
            yield self.get_next()

    def set_range(self, start_index: int, end_index: int) -> None:
        self._left = sum(self._chunks[start_index:end_index])

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        if self._left <= 0:
            if self._given == self._total:  # ORT now computes the ranges and writes the model
                self._given += 1
                notify(self._on_step, "quantize", "applying the ranges")
            return None
        self._left -= 1
        self._given += 1
        notify(self._on_step, "quantize", f"calibration {self._given}/{self._total}")
        inputs, _ = next(self._stream)
        if self._fixed:
            inputs = {name: _pad(arr, self._fixed) for name, arr in inputs.items()}
        return {name: np.ascontiguousarray(inputs[name], dtype=dtype) for name, dtype in self._dtypes.items()}


def _fixed_batch(specs: list[InputSpec]) -> Optional[int]:
    """The batch size the model insists on (its first input's fixed first axis), if any."""
    first = specs[0].shape[0] if specs and specs[0].shape else None
    return first if isinstance(first, int) and first > 0 else None


def _pad(arr: np.ndarray, rows: int) -> np.ndarray:
    short = rows - len(arr)
    return np.concatenate([arr, np.repeat(arr[-1:], short, axis=0)]) if short > 0 else arr
