"""Model toolchains on the host, one per kind of model a device runs, picked once from a table.

    TOOLCHAINS              a toolchain's name -> the toolchain (edgekit.toolchains.base.Toolchain)
    toolchain_for(profile)  the toolchain a target runs: a profile with an [lm] section runs
                            language models, any other the toolchain of its runtime
    toolchain_of(path)      the toolchain whose model file this is (a language model is an
                            .onnx file that says so, a Hugging Face folder or a .gguf file), or None
    toolchain_for_model(*names)  for a model given without a target (and the file it is written
                            to): a TFLite file among them asks for TFLite, anything else is ONNX's
                            (which also converts PyTorch models)

Adding a runtime is one module (or package) that implements Toolchain and one line in
TOOLCHAINS; nothing outside this package and edgekit/device compares runtime names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from edgekit.errors import ConfigError
from edgekit.toolchains.base import Toolchain
from edgekit.toolchains.lm.toolchain import LMToolchain
from edgekit.toolchains.onnx.toolchain import OnnxToolchain
from edgekit.toolchains.tflite.toolchain import TFLiteToolchain

__all__ = ["TOOLCHAINS", "DEFAULT", "Toolchain", "toolchain_for", "toolchain_of", "toolchain_for_model",
           "model_suffixes", "check_output"]

TOOLCHAINS: dict[str, Toolchain] = {  # most particular first: toolchain_of asks them in this order
    "lm": LMToolchain(),
    "onnxruntime": OnnxToolchain(),
    "tflite": TFLiteToolchain(),
}
DEFAULT = TOOLCHAINS["onnxruntime"]
LM = TOOLCHAINS["lm"]
_BY_SUFFIX = {t.suffix: t for t in TOOLCHAINS.values()}  # the last, most general, toolchain of each suffix


def toolchain_for(profile) -> Toolchain:
    """The toolchain a target profile runs (profiles are validated against the table)."""
    return LM if profile.lm is not None else TOOLCHAINS[profile.runtime]


def toolchain_of(path) -> Optional[Toolchain]:
    """The toolchain whose model file `path` is; None for any other file."""
    return next((t for t in TOOLCHAINS.values() if t.claims(path)), None)


def toolchain_for_model(*names) -> Toolchain:
    """For a model named without a target: the first non-default toolchain one of `names` (the
    model, the output file) belongs to, else the default, which also converts PyTorch models."""
    named = (toolchain_of(name) for name in names)
    return next((t for t in named if t is not None and t is not DEFAULT), DEFAULT)


def model_suffixes() -> tuple[str, ...]:
    return tuple(sorted(_BY_SUFFIX))


def check_output(toolchain: Toolchain, out: Path, profile=None) -> None:
    """ConfigError naming --out when the file it names is not of this toolchain's kind: a
    TFLite model is one .tflite file; an ONNX model may take any name but another toolchain's."""
    if out.suffix == toolchain.suffix:
        return
    if toolchain is not DEFAULT:
        raise ConfigError(f"--out {out}: a {toolchain.label} model is written to a {toolchain.suffix} file")
    if profile is not None and out.suffix in _BY_SUFFIX:
        raise ConfigError(f"--out {out}: target {profile.name} runs {profile.runtime}; "
                          f"write a {toolchain.suffix} file")

