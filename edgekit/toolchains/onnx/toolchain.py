"""The ONNX toolchain: the default, and the one the mixed-precision search (edgekit.search)
works on. A model the target's onnxruntime (its profile's runtime_version) cannot load is
refused once it is quantized (edgekit.toolchains.onnx.compat)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from edgekit.calibration_record import InputRecord, ModelRecord
from edgekit.datasets import Dataset, InputSpec
from edgekit.progress import OnStep, notify
from edgekit.recipes import METHODS, Recipe
from edgekit.toolchains.base import Toolchain

__all__ = ["OnnxToolchain"]


class OnnxToolchain(Toolchain):
    name = "onnxruntime"
    runtime = "onnxruntime"
    suffix = ".onnx"
    label = "ONNX"
    searches = True

    def load(self, spec, *, workdir: Path, example_data: Optional[Dataset] = None,
             on_step: Optional[OnStep] = None) -> Path:
        from edgekit.toolchains.onnx.convert import load_model

        if Path(str(spec)).suffix != self.suffix:
            notify(on_step, "convert", "to ONNX")
        return load_model(spec, workdir=workdir, example_data=example_data)

    def check(self, path: Path) -> Path:
        from edgekit.toolchains.onnx.models import check_onnx

        return check_onnx(Path(path))

    def inputs(self, path: Path) -> list[InputSpec]:
        from edgekit.toolchains.onnx.models import model_inputs

        return model_inputs(path)

    def first_output(self, path: Path) -> InputSpec:
        from edgekit.toolchains.onnx.models import first_output

        return first_output(path)

    def precision(self, path: Path) -> str:
        from edgekit.toolchains.onnx.models import onnx_precision

        return onnx_precision(path)

    def files(self, path: Path) -> list[Path]:
        from edgekit.toolchains.onnx.models import external_data_files

        return [Path(path), *external_data_files(path)]

    def size_mb(self, path: Path) -> float:
        from edgekit.toolchains.onnx.models import model_size_mb

        return model_size_mb(path)

    def requirements(self, path: Path) -> dict:
        from edgekit.toolchains.onnx.models import onnx_requirements

        return onnx_requirements(path)

    def sweep(self, profile, exclude: tuple[str, ...] = (), include: tuple[str, ...] = ()) -> list[Recipe]:
        """FP32 first when it is allowed (calibrate measures the FP32 baseline either way)."""
        allowed = set(profile.precisions)
        channels = (False, True) if profile.per_channel else (False,)
        ranges = (False, True) if profile.reduce_range else (False,)
        extra = {"exclude": exclude, "include": include}
        recipes = [Recipe(precision="fp32")] if "fp32" in allowed else []
        if "fp16" in allowed:
            recipes.append(Recipe(precision="fp16", exclude=exclude))
        if "int8-dynamic" in allowed:
            recipes += [Recipe(precision="int8-dynamic", per_channel=pc, reduce_range=rr, **extra)
                        for rr in ranges for pc in channels]
        if "int8-static" in allowed:
            recipes += [Recipe(precision="int8-static", method=m, per_channel=pc, **extra)
                        for m in METHODS for pc in channels]
            if profile.reduce_range:  # the VNNI-less x86 remedy, on the plain calibrator
                recipes += [Recipe(precision="int8-static", method="minmax", per_channel=pc, reduce_range=True,
                                   **extra) for pc in channels]
        if "int8-token" in allowed:  # per-token activations, per-channel weights (7-bit with reduce-range)
            recipes += [Recipe(precision="int8-token", reduce_range=rr, **extra) for rr in ranges]
        if "int8-block" in allowed:  # accuracy level 4: the fast kernel (INT8 activation blocks)
            recipes.append(Recipe(precision="int8-block", block_size=32, accuracy_level=4, **extra))
        if "int4-block" in allowed:
            recipes += [Recipe(precision="int4-block", block_size=b, accuracy_level=4, **extra) for b in (32, 128)]
        return recipes

    def check_recipe(self, recipe: Recipe) -> None:
        from edgekit.toolchains.onnx.quantize import check_recipe

        check_recipe(recipe)

    def recipe_refusal(self, recipe: Recipe, profile) -> Optional[str]:
        from edgekit.toolchains.onnx.compat import check_target

        check_target(profile)  # a version is known, but only the quantized model says what it needs
        return None

    def model_refusal(self, model: Path, profile, what: str = "it") -> Optional[str]:
        from edgekit.toolchains.onnx.compat import target_refusal

        return target_refusal(model, profile, what)

    def quantize(self, model: Path, recipe: Recipe, out: Path, *, calibration: Optional[Dataset] = None,
                 max_samples: int = 512, on_step: Optional[OnStep] = None) -> Path:
        from edgekit.toolchains.onnx import quantize as ort_quantize  # looked up now: tests plant failures

        return ort_quantize.quantize(model, recipe, out, calibration=calibration, max_samples=max_samples,
                                     on_step=on_step)

    def quantized_weights(self, fp32: Path, path: Path) -> Optional[dict]:
        import onnx

        from edgekit.toolchains.onnx.prepare import notes, prepare, weight_coverage

        proto = onnx.load(str(path))
        return dict(weight_coverage(prepare(fp32)[0], proto), **notes(proto))

    def source_record(self, spec, fp32: Path, inputs: list[InputSpec]) -> ModelRecord:
        return ModelRecord(path=str(fp32), sha256=self.sha256(fp32), inputs=[InputRecord.of(i) for i in inputs])

    def versions(self) -> dict:
        from edgekit.machine import versions

        return versions("onnxruntime", "onnx", "numpy")
