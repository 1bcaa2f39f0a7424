"""The runtime seam: open a model with the runtime its file suffix calls for.

A backend is the only place that touches a runtime, so evaluation code works the same
on every runtime. ONNX Runtime is here; the LiteRT backend (``.tflite``) is in
``backend_tflite``, imported only when a ``.tflite`` model is opened.

Standard library + numpy + the one runtime, Python 3.9 syntax: this runs on devices.
"""

from __future__ import annotations

import abc

import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["Backend", "ModelLoadError", "open_backend", "BACKENDS", "device_cores", "usable_threads"]

CPU = "CPUExecutionProvider"

# ONNX tensor element types as numpy dtype names.
_ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16",
    "tensor(uint16)": "uint16", "tensor(int32)": "int32", "tensor(uint32)": "uint32",
    "tensor(int64)": "int64", "tensor(uint64)": "uint64", "tensor(bool)": "bool",
}


class ModelLoadError(ValueError):
    """The model file is missing, of an unknown kind, or the runtime refuses it."""


class Backend(abc.ABC):
    """A loaded model. Subclasses fill the attributes and implement ``run``."""

    name = ""        # "onnxruntime" | "ai-edge-litert" | "tflite-runtime"
    version = ""
    providers: List[str] = []   # the providers actually in use
    inputs: List[Tuple[str, str, Tuple[Optional[int], ...]]] = []  # (name, dtype, shape)
    output_names: List[str] = []
    load_ms = 0.0    # time to create the session, measured
    threads_asked = 0  # what the bundle's profile (or --threads) asked for; 0: the runtime's default
    threads = 0        # what the runtime was given: never more than the device's cores

    @abc.abstractmethod
    def run(self, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        """The model's outputs for one batch of inputs keyed by input name."""

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "providers": list(self.providers),
                "threads": self.threads, "threads_asked": self.threads_asked}


def device_cores() -> int:
    """The CPUs this process may run on (its affinity where the OS tells it, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def usable_threads(asked: int) -> int:
    """The intra-op threads to give a runtime: what was asked, but at most one per core. A profile
    written for a 4-core device, run where 2 cores are free, would otherwise put 4 spinning
    threads on 2 cores: slower, and each waits for the others in every operator."""
    asked = int(asked)
    return min(asked, device_cores()) if asked > 0 else 0


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, model_path: str, threads: int = 0, providers: Optional[Sequence[str]] = None):
        import onnxruntime as ort  # the one runtime; imported only when asked for

        self.version = ort.__version__
        self.providers = _usable_providers(providers, ort.get_available_providers())
        options = ort.SessionOptions()
        self.threads_asked, self.threads = int(threads), usable_threads(threads)
        options.intra_op_num_threads = self.threads  # 0: the runtime's default
        options.log_severity_level = 3  # warnings would go to stderr, which callers report on failure
        start = time.perf_counter()
        try:
            self._session = ort.InferenceSession(model_path, sess_options=options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ModelLoadError(f"{model_path}: onnxruntime {self.version} cannot load the model: "
                                 f"{_first_line(exc)}") from exc
        self.load_ms = (time.perf_counter() - start) * 1000.0
        self.inputs = [(i.name, _ORT_DTYPES.get(i.type, i.type), _shape(i.shape)) for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]

    def run(self, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        return self._session.run(self.output_names, feeds)


def _usable_providers(requested: Optional[Sequence[str]], available: Sequence[str]) -> List[str]:
    """Requested providers this build has, in order; CPU always last as the fallback."""
    chosen = [p for p in (requested or ()) if p in available and p != CPU]
    return chosen + [CPU]


def _shape(dims) -> Tuple[Optional[int], ...]:
    # Symbolic dims come as strings ("batch"), unknown ones as None or negative ints.
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in dims)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _tflite(model_path: str, threads: int = 0, providers=None) -> Backend:
    from .backend_tflite import TFLiteBackend  # its runtime is imported only for .tflite models

    return TFLiteBackend(model_path, threads=threads, providers=providers)


# File suffix -> backend factory. Adding a runtime is adding an entry here.
BACKENDS: Dict[str, Callable[..., Backend]] = {
    ".onnx": OnnxRuntimeBackend,
    ".tflite": _tflite,
}


def open_backend(model_path: str, threads: int = 0, providers: Optional[List[str]] = None) -> Backend:
    """Load ``model_path`` with the runtime its suffix calls for; raises ModelLoadError."""
    model_path = str(model_path)
    suffix = os.path.splitext(model_path)[1].lower()
    factory = BACKENDS.get(suffix)
    if factory is None:
        raise ModelLoadError(f"{model_path}: unknown model type '{suffix or '(no suffix)'}' "
                             f"(supported: {', '.join(sorted(BACKENDS))})")
    if not os.path.isfile(model_path):
        raise ModelLoadError(f"{model_path}: model file not found")
    return factory(model_path, threads=threads, providers=providers)
