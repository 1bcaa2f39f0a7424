"""The release calibration run for a target whose runtime is tflite.

The same run as edgekit.calibrate, on TFLite models: the PyTorch model is converted once
to an FP32 .tflite (the baseline and the reference for fidelity), every recipe the target
allows is applied to it with ai-edge-quantizer, and each candidate is measured in a fresh
process by the device's own evaluation code (edgekit.evaluate.measure), then judged by
the same budgets and objective. The record has the same form as an ONNX run's; its model
section names the source model and the converted one. A recipe that the target's runtime
cannot run right (see edgekit.tflite.quantize.runtime_refusal) is recorded as failed
with the reason, never measured, never chosen.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

from edgekit.calibrate import CalibrationResult, Candidate, attempt, build_record, choose, input_specs, score
from edgekit.datasets import Dataset
from edgekit.progress import OnStep, notify, within
from edgekit.recipes import Recipe
from edgekit.targets import Profile

__all__ = ["sweep_tflite_recipes", "calibrate_tflite"]


def sweep_tflite_recipes(profile: Profile, exclude: tuple[str, ...] = (), include: tuple[str, ...] = ()
                         ) -> list[Recipe]:
    """The TFLite recipes the target allows, FP32 first as the baseline."""
    from edgekit.tflite.quantize import check_tflite_recipe

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
        check_tflite_recipe(recipes[-1].model_copy(update={"exclude": exclude, "include": include}))
    return recipes


def calibrate_tflite(model: str | Path, profile: Profile, calibration: Dataset, eval_data: Dataset,
                     out_dir: Path, *, recipes: Optional[list[Recipe]] = None, eval_samples: Optional[int] = None,
                     measure_opts: Optional[dict] = None,
                     on_candidate: Optional[Callable[[Candidate, int, int], None]] = None,
                     on_step: Optional[OnStep] = None) -> CalibrationResult:
    """Convert `model` (.pt2, pkg.module:factory or FP32 .tflite), sweep, measure, choose;
    writes OUT_DIR/model.tflite (when a candidate passes) and OUT_DIR/calibration.json.
    on_step hears of each stage (edgekit.progress)."""
    from edgekit.evaluate import prepare_eval_data
    from edgekit.tflite.convert import load_tflite_model, tflite_inputs

    recipes = recipes or sweep_tflite_recipes(profile)
    candidates = [Candidate(r.id, r) for r in recipes]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgekit-calibrate-") as tmp:
        work = Path(tmp)
        notify(within(on_step, phase="prepare"), "convert", "to FP32 .tflite")
        fp32 = load_tflite_model(model, workdir=work / "fp32", example_data=calibration)
        inputs = tflite_inputs(fp32)
        calibration.check(inputs, role="calibration data")
        eval_data.check(inputs, role="eval data")
        notify(within(on_step, phase="prepare"), "eval data", "FP32 reference outputs")
        eval_npz = prepare_eval_data(eval_data, fp32, work / "eval.npz", reference=fp32, samples=eval_samples)
        baseline = None
        for i, c in enumerate(candidates):
            _measure(c, fp32, work, calibration, eval_npz, profile, baseline, measure_opts or {},
                     within(on_step, phase="sweep", i=i + 1, n=len(candidates), candidate=c.id))
            if c.recipe.precision == "fp32" and c.status == "ok":
                baseline = c.metrics
                c.metrics["drop"] = 0.0 if c.metrics.get("accuracy") is not None else None
            if on_candidate:
                on_candidate(c, i + 1, len(candidates))
        chosen, why = choose(candidates, profile)
        model_out = None
        if chosen is not None:
            model_out = out_dir / "model.tflite"
            shutil.copyfile(chosen.path, model_out)
        record = _record(model, fp32, inputs, profile, calibration, eval_data, eval_npz, candidates, chosen, why,
                         baseline)
    record_path = out_dir / "calibration.json"
    part = record_path.with_suffix(".json.tmp")
    part.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(part, record_path)
    return CalibrationResult(record, candidates, chosen, model_out, record_path)


def _measure(c: Candidate, fp32: Path, work: Path, calibration: Dataset, eval_npz: Path, profile: Profile,
             baseline: Optional[dict], measure_opts: dict, on_step: Optional[OnStep]) -> None:
    from edgekit.tflite.quantize import quantize_tflite, runtime_refusal

    refusal = runtime_refusal(c.recipe, profile.runtime_version)
    if refusal:
        c.status, c.error = "failed", f"not offered: {refusal}"
        return
    with attempt(c):
        notify(on_step, "quantize")
        c.path = quantize_tflite(fp32, c.recipe, work / f"{c.id}.tflite", calibration=calibration, on_step=on_step)
        score(c, eval_npz, profile, baseline, measure_opts, providers=None, on_step=on_step)


def _record(model, fp32: Path, inputs, profile, calibration, eval_data, eval_npz, candidates, chosen, why,
            baseline) -> dict:
    from edgekit.machine import versions
    from edgekit.models import model_sha256
    from edgekit.tflite.convert import source_kind

    source, kind = Path(str(model)).expanduser(), source_kind(str(model))
    specs = input_specs(inputs)
    model_info = {"path": str(model), "sha256": model_sha256(source) if source.is_file() else None,
                  "format": kind, "inputs": specs,
                  "converted": {"format": "tflite", "converter": None if kind == "tflite" else "litert-torch",
                                "sha256": model_sha256(fp32),
                                "size_mb": round(fp32.stat().st_size / 2 ** 20, 6), "inputs": specs}}
    return build_record(model_info, profile, calibration, eval_data, eval_npz, inputs, candidates, chosen, why, baseline,
                  versions("litert-torch", "ai-edge-quantizer", "ai-edge-litert", "torch", "numpy"))
