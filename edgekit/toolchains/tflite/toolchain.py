"""The TFLite toolchain: a PyTorch model converted once to an FP32 .tflite (the baseline and
the reference for fidelity), every recipe applied to that file with ai-edge-quantizer.

A recipe that the target's runtime cannot run right (see runtime_refusal in
edgekit.toolchains.tflite.quantize) is refused before it is quantized. Its calibration record
names the source model and the converted one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from edgekit.calibration_record import InputRecord, ModelRecord
from edgekit.datasets import Dataset, InputSpec
from edgekit.progress import OnStep, notify
from edgekit.recipes import Recipe
from edgekit.toolchains.base import Toolchain, model_sha256

__all__ = ["TFLiteToolchain"]


class TFLiteToolchain(Toolchain):
    name = "tflite"
    runtime = "tflite"
    suffix = ".tflite"
    label = "TFLite"

    def load(self, spec, *, workdir: Path, example_data: Optional[Dataset] = None,
             on_step: Optional[OnStep] = None) -> Path:
        from edgekit.toolchains.tflite.convert import load_tflite_model

        notify(on_step, "convert", "to FP32 .tflite")
        return load_tflite_model(spec, workdir=workdir, example_data=example_data)

    def check(self, path: Path) -> Path:
        from edgekit.toolchains.tflite.convert import check_tflite

        return check_tflite(Path(path))

    def inputs(self, path: Path) -> list[InputSpec]:
        from edgekit.toolchains.tflite.convert import tflite_inputs

        return tflite_inputs(Path(path))

    def first_output(self, path: Path) -> InputSpec:
        from edgekit.toolchains.tflite.convert import tflite_first_output

        return tflite_first_output(Path(path))

    def precision(self, path: Path) -> str:
        from edgekit.toolchains.tflite.convert import tflite_precision

        return tflite_precision(Path(path))

    def sweep(self, profile, exclude: tuple[str, ...] = (), include: tuple[str, ...] = ()) -> list[Recipe]:
        """FP32 first (the baseline), then what the profile allows; --exclude and --include are refused."""
        allowed = set(profile.precisions)
        channels = (False, True) if profile.per_channel else (False,)
        recipes = [Recipe(precision="fp32")]
        if "fp16" in allowed:
            recipes.append(Recipe(precision="fp16"))
        if "int8-dynamic" in allowed:
            recipes += [Recipe(precision="int8-dynamic", per_channel=pc) for pc in channels]
        if "int8-static" in allowed:
            recipes += [Recipe(precision="int8-static", method="minmax", per_channel=pc) for pc in channels]
        if exclude or include:  # one clear error rather than recipes that ignore the flags
            self.check_recipe(recipes[-1].model_copy(update={"exclude": exclude, "include": include}))
        return recipes

    def check_recipe(self, recipe: Recipe) -> None:
        from edgekit.toolchains.tflite.quantize import check_tflite_recipe

        check_tflite_recipe(recipe)

    def recipe_refusal(self, recipe: Recipe, profile) -> Optional[str]:
        from edgekit.toolchains.tflite.quantize import runtime_refusal

        return runtime_refusal(recipe, profile.runtime_version)

    def quantize(self, model: Path, recipe: Recipe, out: Path, *, calibration: Optional[Dataset] = None,
                 max_samples: int = 512, on_step: Optional[OnStep] = None) -> Path:
        from edgekit.toolchains.tflite.quantize import quantize_tflite

        return quantize_tflite(model, recipe, out, calibration=calibration, max_samples=max_samples,
                               on_step=on_step)

    def source_record(self, spec, fp32: Path, inputs: list[InputSpec]) -> ModelRecord:
        from edgekit.toolchains.tflite.convert import source_kind

        source, kind = Path(str(spec)).expanduser(), source_kind(str(spec))
        specs = [InputRecord.of(i) for i in inputs]
        converted = {"format": "tflite", "converter": None if kind == "tflite" else "litert-torch",
                     "sha256": model_sha256(fp32), "size_mb": round(fp32.stat().st_size / 2 ** 20, 6),
                     "inputs": specs}
        return ModelRecord(path=str(spec), sha256=model_sha256(source) if source.is_file() else None,
                           format=kind, inputs=specs, converted=converted)

    def versions(self) -> dict:
        from edgekit.machine import versions

        return versions("litert-torch", "ai-edge-quantizer", "ai-edge-litert", "torch", "numpy")
