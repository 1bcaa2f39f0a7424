"""The LiteRT (TFLite) backend: ``.tflite`` models on ai-edge-litert, tflite-runtime or TensorFlow.

The runtime is the first of these that imports: ``ai_edge_litert.interpreter`` (current
devices), ``tflite_runtime.interpreter`` (older devices: tflite-runtime 2.14 is built
against numpy 1 and fails to import under numpy 2, so those devices keep numpy<2), then
``tensorflow.lite``. The report names the one that ran and its version.

Every backend is measured on the same float data, so a full-integer model (int8 or uint8
inputs and outputs with a scale, as ai-edge-quantizer's ``static_wi8_ai8`` makes) is
presented as a float model: inputs are quantized with each tensor's scale and zero point
before the run and outputs are dequantized after it. Integer tensors without a scale
(token ids) pass through as they are.

Inputs and outputs are named by the model's signature (the names the data set uses) when
it has one, else by the tensor names. A batch axis of -1 in the model's shape signature is
dynamic: inputs are resized to each batch. A fixed batch (usually 1) is reported as such
and the evaluation feeds it chunks of that size.

Standard library + numpy + the one runtime, Python 3.9 syntax: this runs on devices.
"""

from __future__ import annotations

import importlib
import re
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .backends import Backend, ModelLoadError, usable_threads

__all__ = ["TFLiteBackend", "find_runtime", "RUNTIMES"]

# (name in reports, module to import, attribute path to the Interpreter class, distribution)
RUNTIMES = (
    ("ai-edge-litert", "ai_edge_litert.interpreter", "Interpreter", "ai-edge-litert"),
    ("tflite-runtime", "tflite_runtime.interpreter", "Interpreter", "tflite-runtime"),
    ("tensorflow", "tensorflow", "lite.Interpreter", "tensorflow"),
)
_QUANTIZED = ("int8", "uint8", "int16")


def find_runtime() -> Tuple[str, str, type]:
    """(name, version, Interpreter class) of the first LiteRT runtime that imports."""
    tried = []
    for name, module, attr, dist in RUNTIMES:
        try:
            found = importlib.import_module(module)
        except ImportError as exc:  # absent, or built against another numpy (tflite-runtime 2.14 under numpy 2)
            tried.append(f"{name}: {_first_line(exc)}")
            continue
        cls = found
        for part in attr.split("."):
            cls = getattr(cls, part)
        return name, _version(dist, found), cls
    raise ModelLoadError("no LiteRT runtime imports (pip install ai-edge-litert; on numpy<2 devices "
                         "tflite-runtime): " + "; ".join(tried))


def _version(dist: str, module) -> str:
    try:
        from importlib import metadata

        return metadata.version(dist)
    except Exception:  # noqa: BLE001 - metadata missing in a vendored install: the module may know
        top = importlib.import_module(module.__name__.split(".")[0])
        return str(getattr(top, "__version__", "unknown"))


class _Tensor:
    """One input or output: where it lives and how to turn it into float and back."""

    def __init__(self, name: str, detail: dict):
        self.name = name
        self.index = int(detail["index"])
        self.dtype = np.dtype(detail["dtype"])
        scale, zero_point = detail.get("quantization", (0.0, 0))
        self.quantized = self.dtype.name in _QUANTIZED and float(scale) != 0.0
        self.scale, self.zero_point = float(scale), int(zero_point)
        signature = detail.get("shape_signature")
        dims = signature if signature is not None and len(signature) else detail["shape"]
        self.shape = tuple(int(d) if int(d) >= 0 else None for d in dims)

    @property
    def outer_dtype(self) -> str:
        """What callers feed and get: float32 for quantized tensors."""
        return "float32" if self.quantized else self.dtype.name

    def to_model(self, arr: np.ndarray) -> np.ndarray:
        if not self.quantized:
            return np.ascontiguousarray(arr, dtype=self.dtype)
        info = np.iinfo(self.dtype)
        q = np.round(np.asarray(arr, dtype=np.float32) / self.scale) + self.zero_point
        return np.ascontiguousarray(np.clip(q, info.min, info.max), dtype=self.dtype)

    def from_model(self, arr: np.ndarray) -> np.ndarray:
        if not self.quantized:
            return arr
        return (arr.astype(np.float32) - self.zero_point) * np.float32(self.scale)


class TFLiteBackend(Backend):
    def __init__(self, model_path: str, threads: int = 0, providers: Optional[Sequence[str]] = None):
        self.name, self.version, interpreter_cls = find_runtime()
        self.providers = []  # LiteRT applies its CPU delegate (XNNPACK) by itself
        self.threads_asked, self.threads = int(threads), usable_threads(threads)
        start = time.perf_counter()
        try:
            self._interp = interpreter_cls(model_path=model_path, num_threads=self.threads or None)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:  # unknown op or op version, not a flatbuffer, ...
            raise ModelLoadError(f"{model_path}: {self.name} {self.version} cannot load the model: "
                                 f"{_first_line(exc)}") from exc
        self.load_ms = (time.perf_counter() - start) * 1000.0
        self._in, self._out = _io_tensors(self._interp)
        self.signature_keys = list(_signatures(self._interp))
        self.inputs = [(t.name, t.outer_dtype, t.shape) for t in self._in]
        self.output_names = [t.name for t in self._out]
        self.output_specs = [(t.name, t.outer_dtype, t.shape) for t in self._out]
        self.full_integer = any(t.quantized for t in self._in + self._out)
        self._shapes = {t.index: tuple(_detail(self._interp, t.index)["shape"]) for t in self._in}

    def run(self, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        arrays = [(t, t.to_model(feeds[t.name])) for t in self._in]
        self._resize([(t.index, a.shape) for t, a in arrays])
        for t, arr in arrays:
            self._interp.set_tensor(t.index, arr)
        self._interp.invoke()
        return [t.from_model(self._interp.get_tensor(t.index)) for t in self._out]

    def tensor_dtypes(self) -> List[str]:
        """The element types of every tensor in the model (weights included)."""
        return sorted({np.dtype(d["dtype"]).name for d in self._interp.get_tensor_details()})

    def _resize(self, wanted: List[Tuple[int, tuple]]) -> None:
        changed = [(i, shape) for i, shape in wanted if self._shapes.get(i) != tuple(shape)]
        if not changed:
            return
        try:
            for index, shape in changed:
                self._interp.resize_tensor_input(index, list(shape), strict=True)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ValueError(f"the model does not take inputs of shape {[s for _, s in changed]}: "
                             f"{_first_line(exc)}") from exc
        self._shapes.update({i: tuple(s) for i, s in changed})


def _io_tensors(interp) -> Tuple[List[_Tensor], List[_Tensor]]:
    """Inputs and outputs, named by the (single) signature when the model has one."""
    signatures = _signatures(interp)
    if len(signatures) == 1:
        runner = interp.get_signature_runner(next(iter(signatures)))
        ins, outs = runner.get_input_details(), runner.get_output_details()
        inputs = [_Tensor(n, _detail(interp, ins[n]["index"])) for n in _natural(ins)]
        outputs = [_Tensor(n, _detail(interp, outs[n]["index"])) for n in _natural(outs)]
    else:
        inputs = [_Tensor(d["name"], d) for d in interp.get_input_details()]
        outputs = [_Tensor(d["name"], d) for d in interp.get_output_details()]
    return inputs, outputs


def _signatures(interp) -> dict:
    # Runtimes before TensorFlow 2.5 have no signatures: tensor names serve.
    return interp.get_signature_list() if hasattr(interp, "get_signature_list") else {}


def _detail(interp, index: int) -> dict:
    """The interpreter's own detail of a tensor (scale, zero point, shape signature)."""
    for d in interp.get_input_details() + interp.get_output_details():
        if int(d["index"]) == int(index):
            return d
    raise ModelLoadError(f"tensor {index} of the signature is not an input or output of the model")


def _natural(names) -> List[str]:
    """output_2 before output_10, as the converter numbered them."""
    return sorted(names, key=lambda n: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", n)])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
