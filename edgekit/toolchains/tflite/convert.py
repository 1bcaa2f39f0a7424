"""PyTorch -> FP32 .tflite with litert-torch (no TensorFlow needed), and what a .tflite takes.

A model is given as ``model.pt2`` (a torch.export program), ``pkg.module:factory`` (a
function returning an ``nn.Module``), or an FP32 ``model.tflite`` (used as is). ONNX is
refused with the remedy: nothing here converts ONNX to TFLite.

The model is converted for a batch of one, the shape edge devices run: litert-torch
lowers ``Flatten`` on a dynamic batch axis to a reshape it cannot convert, and the
evaluation runs a fixed-batch model one chunk at a time anyway. The signature's inputs
take the data set's array names (``input``), so one data set feeds the ONNX and the TFLite
model alike; the example sample comes from the data set when one is given, else from the
factory module's ``example_inputs()``, else zeros of the program's input shapes.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

from edgekit.datasets import Dataset, InputSpec
from edgekit.errors import ModelError
from edgekit.toolchains.base import message
from edgekit.toolchains.pytorch import is_factory, load_factory_module, load_pt2

__all__ = ["load_tflite_model", "check_tflite", "tflite_inputs", "tflite_first_output", "tflite_precision",
           "source_kind", "silenced", "open_tflite", "TFLITE_EXTRA", "ONNX_REMEDY"]

TFLITE_EXTRA = "pip install 'edgekit[tflite]'"
ONNX_REMEDY = "give the PyTorch model (.pt2 or pkg.module:factory): ONNX cannot be converted to TFLite here"


def source_kind(spec: str) -> str:
    """'tflite', 'pt2', 'factory' or 'onnx' (refused), from how the model is named."""
    path = Path(str(spec)).expanduser()
    if path.suffix in (".tflite", ".pt2", ".onnx"):
        return path.suffix[1:]
    if is_factory(str(spec)):
        return "factory"
    raise ModelError(f"model {spec}: not a model for a TFLite target (give a .pt2 file, pkg.module:factory "
                     "or an FP32 .tflite file)")


def load_tflite_model(spec: str | Path, *, workdir: Path, example_data: Optional[Dataset] = None) -> Path:
    """The FP32 .tflite for `spec`: checked as is, or converted into `workdir`."""
    text = str(spec)
    kind = source_kind(text)
    if kind == "tflite":
        return check_tflite(Path(text).expanduser())
    if kind == "onnx":
        raise ModelError(f"model {text}: the target runs TFLite; {ONNX_REMEDY}")
    torch = _import("torch", text)
    module, names, sample = _pt2(torch, text, example_data) if kind == "pt2" else _factory(torch, text, example_data)
    stem = Path(text).stem if kind == "pt2" else text.rsplit(":", 1)[1]
    return _convert(torch, text, module, names, sample, Path(workdir) / f"{stem}.tflite")


def _import(name: str, spec: str):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ModelError(f"model {spec}: converting to TFLite needs {exc.name or name}: {TFLITE_EXTRA}") from exc


def _pt2(torch, spec: str, example_data: Optional[Dataset]):
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelError(f"model {path}: not found")
    program, _ = load_pt2(torch, spec, path, example_data)
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    user = [placeholders[n] for n in program.graph_signature.user_inputs]
    names = _names(example_data, [n.name for n in user])
    if example_data is not None:
        return program.module(), names, _sample_from(torch, example_data, names)
    # No data: zeros of the exported input shapes, with every symbolic axis at 1.
    sample = [torch.zeros([d if isinstance(d, int) else 1 for d in n.meta["val"].shape],
                          dtype=n.meta["val"].dtype) for n in user]
    return program.module(), names, sample


def _factory(torch, spec: str, example_data: Optional[Dataset]):
    net, module = load_factory_module(torch, spec)
    if example_data is not None:
        names = _names(example_data, _forward_names(net))
        return net, names, _sample_from(torch, example_data, names)
    if not hasattr(module, "example_inputs"):
        raise ModelError(f"model {spec}: needs example inputs: define example_inputs() in "
                         f"{module.__name__}, or give data (--calibration) to take them from")
    sample = [a[:1] if isinstance(a, torch.Tensor) and a.ndim else a for a in module.example_inputs()]
    return net, _forward_names(net)[:len(sample)], sample


def _forward_names(net) -> list[str]:
    import inspect

    return [p.name for p in inspect.signature(net.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _names(example_data: Optional[Dataset], own: list[str]) -> list[str]:
    """The model's own input names; a one-input model takes the data set's name for it."""
    if example_data is None or set(example_data.input_names) == set(own):
        return own
    if len(own) == len(example_data.input_names) == 1:
        return list(example_data.input_names)
    return own


def _sample_from(torch, data: Dataset, names: list[str]) -> list:
    batch, _ = next(data.batches(1))
    missing = [n for n in names if n not in batch]
    if missing:
        raise ModelError(f"model inputs {', '.join(missing)} are not in the data set {data.path} "
                         f"(data has: {', '.join(data.input_names)})")
    return [torch.from_numpy(batch[n].copy()) for n in names]


def _convert(torch, spec: str, module, names: list[str], sample: list, out: Path) -> Path:
    with silenced():  # importing litert-torch logs from TensorFlow's and torchao's C++ side
        litert_torch = _import("litert_torch", spec)
    named = _named_module(torch)(module, names)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    try:
        with silenced():
            edge = litert_torch.convert(named, sample_kwargs=dict(zip(names, sample)))
            edge.export(str(tmp))
    except Exception as exc:  # torch.export's and the converter's many error types: this model does not convert
        raise ModelError(f"model {spec}: conversion to TFLite failed: {message(exc)}") from exc
    os.replace(tmp, out)
    return check_tflite(out)


def _named_module(torch):
    class Named(torch.nn.Module):
        """Takes keyword inputs, so the converted signature's inputs carry these names."""

        def __init__(self, inner, names):
            super().__init__()
            self.inner, self.names = inner, list(names)

        def forward(self, **inputs):
            return self.inner(*(inputs[n] for n in self.names))

    # The converter writes this class's import path into every converted model (its debug
    # locations), so the path stays the one it had when this module was edgekit.tflite.convert:
    # moving the code must not change the bytes of the models, or of the bundles made of them.
    Named.__module__ = "edgekit.tflite.convert"
    return Named


@contextlib.contextmanager
def silenced():
    """litert-torch, TensorFlow's C++ logging and XNNPACK print to fds 1 and 2: keep stdout
    clean for --json and the terminal quiet; errors still raise with their messages."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


# -- what a .tflite model is ---------------------------------------------------------------

def open_tflite(path: Path):
    """The device's LiteRT backend on `path`, quietly; ModelError when no LiteRT runtime here loads it."""
    from edgekit.device.backends import ModelLoadError, open_backend

    try:
        with silenced():
            return open_backend(str(path))
    except ModelLoadError as exc:
        raise ModelError(f"model {exc}") from exc


def check_tflite(path: Path) -> Path:
    """`path` if a LiteRT runtime on this machine loads it, else ModelError."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model {path}: not found")
    open_tflite(path)
    return path


def tflite_inputs(path: Path) -> list[InputSpec]:
    """The inputs a caller feeds, as the device's backend presents them (float for int8 models)."""
    return [InputSpec(*spec) for spec in open_tflite(Path(path)).inputs]


def tflite_first_output(path: Path) -> InputSpec:
    return InputSpec(*open_tflite(Path(path)).output_specs[0])


def tflite_precision(path: Path) -> str:
    """fp32 | fp16 | int8-dynamic | int8-static, read from the model's tensor types."""
    backend = open_tflite(Path(path))
    if backend.full_integer:
        return "int8-static"
    types = backend.tensor_dtypes()
    if "int8" in types:
        return "int8-dynamic"
    return "fp16" if "float16" in types else "fp32"

