"""PyTorch models as every converter takes them: a ``.pt2`` program or ``pkg.module:factory``.

    is_factory(spec)                 'pkg.module:factory', not a file
    load_pt2(torch, spec, path, data)       -> (the torch.export program, input names or None)
    load_factory_module(torch, spec)        -> (the nn.Module in eval mode, the imported module)
    quiet()                          the exporters' prints, warnings and log lines silenced

The ONNX converter (edgekit.toolchains.onnx.convert) and the TFLite converter
(edgekit.toolchains.tflite.convert) both start here; each imports torch itself, so that a
missing torch is reported with the extra that converter needs.
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

from edgekit.datasets import Dataset
from edgekit.errors import ModelError
from edgekit.toolchains.base import message

__all__ = ["FACTORY", "is_factory", "load_pt2", "load_factory_module", "quiet"]

FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_factory(spec: str) -> bool:
    """Whether `spec` names a factory function (pkg.module:factory) rather than a file."""
    return bool(FACTORY.match(str(spec))) and not Path(str(spec)).expanduser().exists()


def load_pt2(torch, spec: str, path: Path, example_data: Optional[Dataset]):
    """(the exported program in `path`, the data set's input name for a one-input program or None)."""
    try:
        with quiet():
            program = torch.export.load(str(path))
    except Exception as exc:  # a zip that is not an exported program, a version mismatch, ...
        raise ModelError(f"model {path}: not a readable torch.export program ({message(exc)})") from exc
    user_inputs = list(program.graph_signature.user_inputs)
    # A one-input program takes the data set's name for its input, so the data fits it.
    names = example_data.input_names if example_data and len(user_inputs) == 1 == len(example_data.input_names) else None
    return program, names


def load_factory_module(torch, spec: str):
    """(the nn.Module that `pkg.module:factory` returns, in eval mode; the imported module)."""
    module_name, attr = spec.rsplit(":", 1)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `examples.digits.train:build` from the repository root
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"model {spec}: cannot import module '{module_name}' ({message(exc)})") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"model {spec}: module '{module_name}' has no function '{attr}'")
    try:
        net = factory()
    except Exception as exc:  # the user's code failed: report it, do not crash
        raise ModelError(f"model {spec}: {attr}() failed: {type(exc).__name__}: {message(exc)}") from exc
    if not isinstance(net, torch.nn.Module):
        raise ModelError(f"model {spec}: {attr}() returned {type(net).__name__}, not a torch.nn.Module")
    return net.eval(), module


@contextlib.contextmanager
def quiet():
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

