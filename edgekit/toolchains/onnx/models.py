"""Models: check an ONNX file, or convert a PyTorch model to one, and describe it.

A model is given as
  - ``model.onnx``: loaded with onnx and passed through ``onnx.checker``;
  - ``model.pt2``: a ``torch.export`` program, converted to ONNX;
  - ``pkg.module:factory``: a function returning an ``nn.Module``, imported from the
    current directory or the Python path, exported with ``torch.export`` and converted.

Conversion needs the torch extra (torch and onnxscript) and writes ONNX opset 17 with a
dynamic batch axis into the caller's work directory. A factory's example inputs come from
its module's ``example_inputs()`` when it has one, else from the first samples of the
example data (the calibration set), whose array names then become the ONNX input names.
With example data, a one-input model (.pt2 or factory) takes the data set's input name.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from edgekit.datasets import Dataset, InputSpec
from edgekit.errors import ModelError

__all__ = ["load_model", "check_onnx", "check_model", "model_inputs", "model_outputs", "model_size_mb", "model_sha256",
           "external_data_files", "OPSET", "TORCH_EXTRA"]

OPSET = 17
TORCH_EXTRA = "pip install 'edgekit[torch]'"
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def load_model(spec: str | Path, *, workdir: Path, example_data: Optional[Dataset] = None) -> Path:
    """The ONNX file for `spec`: checked as is, or converted into `workdir`."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.suffix == ".onnx":
        return check_onnx(path)
    if path.suffix == ".pt2":
        if not path.is_file():
            raise ModelError(f"model {path}: not found")
        return _convert(text, _load_pt2, path, Path(workdir) / f"{path.stem}.onnx", example_data)
    if _FACTORY.match(text) and not path.exists():
        name = text.rsplit(":", 1)[1]
        return _convert(text, _load_factory, text, Path(workdir) / f"{name}.onnx", example_data)
    raise ModelError(f"model {text}: not a model (give a .onnx or .pt2 file, or pkg.module:factory)")


def check_onnx(path: Path) -> Path:
    """`path` if it is a readable ONNX model that passes onnx.checker, else ModelError."""
    import onnx

    if not path.is_file():
        raise ModelError(f"model {path}: not found")
    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: the bytes are not a model
        raise ModelError(f"model {path}: not a readable ONNX file ({_first_line(exc)})") from exc
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, ValueError, OSError) as exc:
        raise ModelError(f"model {path}: fails the ONNX checker: {_first_line(exc)}") from exc
    return path


def check_model(path: Path) -> Path:
    """check_onnx, or for a .tflite file: a LiteRT runtime here loads it."""
    if Path(path).suffix == ".tflite":
        from edgekit.tflite.convert import check_tflite

        return check_tflite(Path(path))
    return check_onnx(Path(path))


def model_inputs(path: Path) -> list[InputSpec]:
    """The inputs a caller feeds: graph inputs that are not initializers."""
    import onnx

    if Path(path).suffix == ".tflite":
        from edgekit.tflite.convert import tflite_inputs

        return tflite_inputs(Path(path))
    graph = _load(path).graph
    inits = {i.name for i in graph.initializer}
    specs = []
    for vi in graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        specs.append(InputSpec(vi.name, dtype, shape))
    return specs


def model_outputs(path: Path) -> list[str]:
    return [o.name for o in _load(path).graph.output]


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
    if Path(path).suffix == ".tflite":  # one self-contained flatbuffer
        return os.path.getsize(path) / (1024.0 * 1024.0)
    total = os.path.getsize(path) + sum(os.path.getsize(f) for f in external_data_files(path) if f.is_file())
    return total / (1024.0 * 1024.0)


def model_sha256(path: Path) -> str:
    """sha256 of the model file's bytes (what a bundle manifest records), computed as the
    device computes it."""
    from edgekit.device.trust import sha256_file

    return sha256_file(str(path))


def _load(path: Path):
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"model {path}: not a readable ONNX file ({_first_line(exc)})") from exc


# -- conversion from PyTorch -------------------------------------------------------------

def _convert(spec: str, loader, source, out: Path, example_data: Optional[Dataset]) -> Path:
    torch = _import_torch(spec)
    program, names = loader(torch, spec, source, example_data)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    try:
        with _quiet():
            torch.onnx.export(program, f=str(tmp), opset_version=OPSET, dynamo=True, external_data=False,
                              verbose=False, input_names=names)
    except ImportError as exc:  # onnxscript, which the exporter needs
        raise ModelError(f"model {spec}: converting to ONNX needs {exc.name or 'onnxscript'}: {TORCH_EXTRA}") from exc
    except Exception as exc:  # the exporter's many error types: this model does not convert
        raise ModelError(f"model {spec}: conversion to ONNX failed: {_first_line(exc)}") from exc
    os.replace(tmp, out)
    return check_onnx(out)


def _import_torch(spec: str):
    try:
        import torch
    except ImportError as exc:
        raise ModelError(f"model {spec}: converting a PyTorch model needs torch: {TORCH_EXTRA}") from exc
    return torch


def _load_pt2(torch, spec: str, path: Path, example_data: Optional[Dataset]):
    try:
        with _quiet():
            program = torch.export.load(str(path))
    except Exception as exc:  # a zip that is not an exported program, a version mismatch, ...
        raise ModelError(f"model {path}: not a readable torch.export program ({_first_line(exc)})") from exc
    user_inputs = list(program.graph_signature.user_inputs)
    # A one-input program takes the data set's name for its input, so the data fits it.
    names = example_data.input_names if example_data and len(user_inputs) == 1 == len(example_data.input_names) else None
    return program, names


def _load_factory(torch, spec: str, _source, example_data: Optional[Dataset]):
    net, module = _load_factory_module(torch, spec)
    args, names = _example_args(torch, spec, module, example_data)
    return _export(torch, spec, net.eval(), args), names


def _load_factory_module(torch, spec: str):
    """(the nn.Module that `pkg.module:factory` returns, the imported module)."""
    module_name, attr = spec.rsplit(":", 1)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `examples.digits.train:build` from the repository root
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"model {spec}: cannot import module '{module_name}' ({_first_line(exc)})") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"model {spec}: module '{module_name}' has no function '{attr}'")
    try:
        net = factory()
    except Exception as exc:  # the user's code failed: report it, do not crash
        raise ModelError(f"model {spec}: {attr}() failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    if not isinstance(net, torch.nn.Module):
        raise ModelError(f"model {spec}: {attr}() returned {type(net).__name__}, not a torch.nn.Module")
    return net.eval(), module


def _example_args(torch, spec: str, module, example_data: Optional[Dataset]):
    if hasattr(module, "example_inputs"):
        args = tuple(module.example_inputs())
        # A one-input model takes the data set's name for its input, as a .pt2 does.
        one = example_data is not None and len(args) == 1 == len(example_data.input_names)
        return args, (example_data.input_names if one else None)
    if example_data is None or len(example_data) == 0:
        raise ModelError(f"model {spec}: needs example inputs: define example_inputs() in "
                         f"{module.__name__}, or give data (--calibration) to take them from")
    batch, _ = next(example_data.batches(2))
    return tuple(torch.from_numpy(np.array(batch[n])) for n in example_data.input_names), \
        example_data.input_names


def _export(torch, spec: str, net, args: tuple):
    # torch.export specialises an axis whose example size is 1, so the batch must be >= 2.
    args = tuple(torch.cat([a, a]) if isinstance(a, torch.Tensor) and a.ndim and a.shape[0] == 1 else a
                 for a in args)
    batch = torch.export.Dim("batch")
    dynamic = tuple({0: batch} if isinstance(a, torch.Tensor) and a.ndim else None for a in args)
    try:
        with _quiet():
            return torch.export.export(net, args, dynamic_shapes=dynamic)
    except Exception as exc:  # torch.export's many error types
        raise ModelError(f"model {spec}: torch.export failed: {_first_line(exc)}") from exc


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress prints, warnings and log lines; errors still raise."""
    loggers = [logging.getLogger(n) for n in ("torch", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
