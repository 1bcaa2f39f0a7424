"""The toolchain seam: what edgekit does with one kind of model before a device runs it.

    a model    load(spec) -> the FP32 model file (checked as is, or converted from PyTorch);
               check, inputs, first_output, precision, files (the model and what it needs
               beside it), size_mb, sha256, requirements (what the device's runtime must read)
    recipes    sweep(profile) -> the uniform recipes the target allows; check_recipe; why a
               target refuses a recipe before it is quantized, or a model after
    quantize   quantize(model, recipe, out) -> out
    records    source_record (calibration.json's model section), versions (of the tools used)

ONNX and TFLite implement it (edgekit.toolchains.onnx, edgekit.toolchains.tflite); the table
in edgekit.toolchains picks one, once, from a profile's runtime or a model file's suffix, as
edgekit.device.backends picks a runtime on the device. Measuring is not here: every model is
measured by the device's own code in a fresh process (edgekit.evaluate.measure).
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Optional

from edgekit.calibration_record import ModelRecord
from edgekit.datasets import Dataset, InputSpec
from edgekit.progress import OnStep
from edgekit.recipes import Recipe

__all__ = ["Toolchain", "model_sha256", "message"]


class Toolchain(abc.ABC):
    """One model toolchain. Heavy imports (onnx, torch, LiteRT) stay inside the methods."""

    name = ""  # its key in edgekit.toolchains.TOOLCHAINS
    runtime = ""  # the profile's `runtime` it serves
    suffix = ""  # its model files' suffix
    label = ""  # its models' kind, in messages
    searches = False  # whether edgekit.search can keep nodes of its models in float

    # -- a model ------------------------------------------------------------------------

    def claims(self, path) -> bool:
        """Whether `path` is a model file of this toolchain (by default: by its suffix)."""
        return Path(str(path)).suffix == self.suffix

    @abc.abstractmethod
    def load(self, spec: str | Path, *, workdir: Path, example_data: Optional[Dataset] = None,
             on_step: Optional[OnStep] = None) -> Path:
        """The FP32 model for `spec` (a file or pkg.module:factory): checked as is, or converted
        into `workdir` (inputs named after `example_data`); on_step hears of a conversion."""

    @abc.abstractmethod
    def check(self, path: Path) -> Path:
        """`path` if it is a model of this toolchain that loads, else ModelError."""

    @abc.abstractmethod
    def inputs(self, path: Path) -> list[InputSpec]:
        """The inputs a caller feeds, in the dtypes the evaluation feeds them."""

    @abc.abstractmethod
    def first_output(self, path: Path) -> InputSpec:
        """Name, dtype and shape of the output accuracy and fidelity read (the first
        floating-point one, edgekit.device.metrics.scored_index)."""

    @abc.abstractmethod
    def precision(self, path: Path) -> str:
        """fp32 | fp16 | int8-dynamic | int8-static, read from the model itself."""

    def files(self, path: Path) -> list[Path]:
        """The model file, then the files it needs beside it."""
        return [Path(path)]

    def size_mb(self, path: Path) -> float:
        """Size on disk in MiB (2**20 bytes)."""
        return os.path.getsize(path) / (1024.0 * 1024.0)

    def sha256(self, path: Path) -> str:
        return model_sha256(path)

    def requirements(self, path: Path) -> dict:
        """What the device's runtime must read beyond its name and version (a manifest's runtime block)."""
        return {}

    # -- data ---------------------------------------------------------------------------

    def metric(self, data: Dataset) -> str:
        """What the evaluation scores: accuracy (labels) or fidelity to the FP32 outputs."""
        return "accuracy" if data.has_labels else "fidelity"

    def model_data(self, model: Path, data: Dataset, role: str, profile=None) -> Dataset:
        """`data` as `model` takes it (a language model tokenizes text); as is by default."""
        return data

    def prepare_eval(self, data: Dataset, model: Path, dest: Path, *, reference: Optional[Path] = None,
                     samples: Optional[int] = None) -> Optional[Path]:
        """Write the evaluation set a device measures `model` on, where this toolchain has
        its own (a language model's token windows); None: the one-pass set of inputs, labels
        and reference outputs (edgekit.evaluate.eval_set writes it)."""
        return None

    def remake_reference(self, source: str, workdir: Path) -> Optional[Path]:
        """The FP32 reference made again from a calibration record's source, where this
        toolchain can (a language model's export); None: give it with --reference."""
        return None

    def measure_options(self, profile, recipe: Recipe) -> dict:
        """What the evaluation needs beyond the model and data to measure `recipe` for `profile`
        (passed to edgekit.evaluate.measure, and in a bundle's manifest to the device)."""
        return {}

    def device_measure_options(self, profile, recipe: Recipe) -> dict:
        """What a device measures beyond calibrate's numbers (a bundle's manifest): by default the same."""
        return self.measure_options(profile, recipe)

    def quality_options(self, profile, recipe: Recipe) -> dict:
        """What a package's expected host metrics need: quality alone, no timings (they would
        only be dropped). By default what calibrate measures with."""
        return self.measure_options(profile, recipe)

    # -- recipes ------------------------------------------------------------------------

    @abc.abstractmethod
    def sweep(self, profile, exclude: tuple[str, ...] = (), include: tuple[str, ...] = ()) -> list[Recipe]:
        """The uniform recipes `profile` allows, in the order calibrate measures them."""

    def check_recipe(self, recipe: Recipe) -> None:
        """ConfigError, naming the flag, for what this toolchain's recipes do not offer."""

    def recipe_refusal(self, recipe: Recipe, profile) -> Optional[str]:
        """Why the target's devices cannot run what `recipe` makes, known before quantizing; or None.
        A profile whose runtime_version is no version of this runtime is a ConfigError."""
        return None

    def model_refusal(self, model: Path, profile, what: str = "it") -> Optional[str]:
        """Why the target's devices cannot run `model` (a file of this toolchain), or None."""
        return None

    @abc.abstractmethod
    def quantize(self, model: Path, recipe: Recipe, out: Path, *, calibration: Optional[Dataset] = None,
                 max_samples: int = 512, on_step: Optional[OnStep] = None) -> Path:
        """Write `model` (FP32) quantized by `recipe` to `out`, atomically; returns `out`."""

    def quantized_weights(self, fp32: Path, path: Path) -> Optional[dict]:
        """What `path` (quantized from `fp32`) quantized ({quantized, weights, share, ...}), when
        the toolchain can tell."""
        return None

    # -- what a calibration record says -------------------------------------------------

    @abc.abstractmethod
    def source_record(self, spec: str | Path, fp32: Path, inputs: list[InputSpec]) -> ModelRecord:
        """calibration.json's model section: the model as given, and what was converted from it."""

    @abc.abstractmethod
    def versions(self) -> dict:
        """The versions of edgekit, Python and the packages this toolchain quantizes with."""


def model_sha256(path: Path) -> str:
    """sha256 of the model file's bytes (what a bundle manifest records), computed as the
    device computes it."""
    from edgekit.device.trust import sha256_file

    return sha256_file(str(path))


def message(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), for ModelError texts."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
