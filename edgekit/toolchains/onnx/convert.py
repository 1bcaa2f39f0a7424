"""The ONNX model for a model as given: an ``.onnx`` file checked, a PyTorch model converted.

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

import os
from pathlib import Path
from typing import Optional

import numpy as np

from edgekit.datasets import Dataset
from edgekit.errors import ModelError
from edgekit.toolchains.base import message
from edgekit.toolchains.onnx.models import check_onnx
from edgekit.toolchains.pytorch import is_factory, load_factory_module, load_pt2, quiet

__all__ = ["load_model", "OPSET", "TORCH_EXTRA"]

OPSET = 17
TORCH_EXTRA = "pip install 'edgekit[torch]'"


def load_model(spec: str | Path, *, workdir: Path, example_data: Optional[Dataset] = None) -> Path:
    """The ONNX file for `spec`: checked as is, or converted into `workdir`."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.suffix == ".onnx":
        return check_onnx(path)
    if path.suffix == ".pt2":
        if not path.is_file():
            raise ModelError(f"model {path}: not found")
        return _convert(text, load_pt2, path, Path(workdir) / f"{path.stem}.onnx", example_data)
    if is_factory(text):
        name = text.rsplit(":", 1)[1]
        return _convert(text, _load_factory, text, Path(workdir) / f"{name}.onnx", example_data)
    raise ModelError(f"model {text}: not a model (give a .onnx or .pt2 file, or pkg.module:factory)")


def _convert(spec: str, loader, source, out: Path, example_data: Optional[Dataset]) -> Path:
    torch = _import_torch(spec)
    program, names = loader(torch, spec, source, example_data)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    try:
        with quiet():
            torch.onnx.export(program, f=str(tmp), opset_version=OPSET, dynamo=True, external_data=False,
                              verbose=False, input_names=names)
    except ImportError as exc:  # onnxscript, which the exporter needs
        raise ModelError(f"model {spec}: converting to ONNX needs {exc.name or 'onnxscript'}: {TORCH_EXTRA}") from exc
    except Exception as exc:  # the exporter's many error types: this model does not convert
        raise ModelError(f"model {spec}: conversion to ONNX failed: {message(exc)}") from exc
    os.replace(tmp, out)
    return check_onnx(out)


def _import_torch(spec: str):
    try:
        import torch
    except ImportError as exc:
        raise ModelError(f"model {spec}: converting a PyTorch model needs torch: {TORCH_EXTRA}") from exc
    return torch


def _load_factory(torch, spec: str, _source, example_data: Optional[Dataset]):
    net, module = load_factory_module(torch, spec)
    args, names = _example_args(torch, spec, module, example_data)
    return _export(torch, spec, net.eval(), args), names


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
        with quiet():
            return torch.export.export(net, args, dynamic_shapes=dynamic)
    except Exception as exc:  # torch.export's many error types
        raise ModelError(f"model {spec}: torch.export failed: {message(exc)}") from exc
