"""Quantize an FP32 .tflite by a Recipe, with ai-edge-quantizer.

    fp32          a copy of the model
    fp16          weights stored as float16 (ai-edge-quantizer's float casting, weight-only);
                  activations, inputs and outputs stay float32
    int8-dynamic  dynamic range: int8 weights, activations quantized at run time
                  (``dynamic_wi8_afp32``; per-tensor or per-channel weights)
    int8-static   full integer: int8 weights and activations, int8 inputs and outputs
                  (``static_wi8_ai8``), activation ranges calibrated by min/max

Why ai-edge-quantizer and not litert-torch's PT2E quantizer: it works on the converted
.tflite (so an FP32 .tflite is a valid source too), it has all four recipes (PT2E has no
FP16), and its full-integer models take and give int8 tensors, which the device backend
(de)quantizes so every runtime is measured on the same float data.

What it does not do: it leaves each operator's version as the float model had it. Old
runtimes read the version to choose a kernel, so tflite-runtime 2.14 runs the dynamic
range (hybrid) models with the wrong kernels and gives wrong results without an error
(measured on the example model: 0.06 to 0.10 accuracy instead of 0.99; full-integer and
FP16 models are right). ``runtime_refusal`` says so for targets whose profile names such a
runtime (``runtime_version = "tflite-runtime 2.14"``), and calibrate skips those recipes.

Bounded memory: calibration reads at most ``max_samples`` samples in batches of the model's
batch size (usually 1) and hands the quantizer ``CHUNK_SAMPLES`` (64) at a time; between
chunks only each tensor's running minimum and maximum are kept.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from edgekit.datasets import Dataset
from edgekit.errors import ConfigError, EdgekitError, NotApplicable, QuantizeError
from edgekit.progress import OnStep, notify
from edgekit.recipes import Recipe
from edgekit.toolchains.tflite.convert import check_tflite, open_tflite, silenced, tflite_inputs
from edgekit.words import first_line

__all__ = ["quantize_tflite", "check_tflite_recipe", "runtime_refusal", "OLD_RUNTIMES"]

# Runtimes that run ai-edge-quantizer's dynamic-range models wrongly: tflite-runtime and
# TensorFlow Lite up to and including this version (the last tflite-runtime release).
OLD_RUNTIMES = {"tflite-runtime": (2, 14), "tensorflow": (2, 14)}
CHUNK_SAMPLES = 64
_VERSION = re.compile(r"^\s*(?:(?P<name>[a-z][a-z-]*)\s*(?:==|\s)\s*)?(?P<version>\d+(?:\.\d+)*)\s*$")


def check_tflite_recipe(recipe: Recipe) -> None:
    """ConfigError for what the TFLite recipes do not offer, naming the flag."""
    if recipe.precision in ("int8-token", "int8-block", "int4-block") or recipe.weight_only:
        raise ConfigError(f"recipe {recipe.id}: --precision {recipe.precision} is an ONNX Runtime recipe; "
                          "TFLite recipes are fp32, fp16, int8-dynamic and int8-static")
    if recipe.reduce_range:
        raise ConfigError(f"recipe {recipe.id}: --reduce-range is an ONNX Runtime x86 remedy; TFLite recipes "
                          "do not offer it")
    if recipe.method not in (None, "minmax"):
        raise ConfigError(f"recipe {recipe.id}: --method {recipe.method}: TFLite int8-static calibrates "
                          "activation ranges by minmax only")
    if recipe.exclude or recipe.include:
        raise ConfigError(f"recipe {recipe.id}: --exclude and --include are not offered for TFLite recipes yet")


def runtime_refusal(recipe: Recipe, runtime_version: Optional[str]) -> Optional[str]:
    """Why a target running `runtime_version` cannot run this recipe's model right, or None."""
    if recipe.precision != "int8-dynamic" or not runtime_version:
        return None
    match = _VERSION.match(runtime_version.lower())
    if match is None:
        raise ConfigError(f"runtime_version '{runtime_version}': for a tflite target write "
                          "'tflite-runtime 2.14', 'ai-edge-litert 2.3' or a bare TFLite version such as '2.14'")
    name = match["name"] or "tflite-runtime"
    version = tuple(int(p) for p in match["version"].split("."))[:2]
    newest_bad = OLD_RUNTIMES.get(name)
    if newest_bad is None or version > newest_bad:
        return None
    return (f"the target runs {name} {match['version']}, which computes the dynamic-range (hybrid) kernels of "
            "ai-edge-quantizer's models wrongly (their operator versions are not raised); "
            "use int8-static or fp16, or ai-edge-litert on the device")


def quantize_tflite(model: Path, recipe: Recipe, out: Path, *, calibration: Optional[Dataset] = None,
                    max_samples: int = 512, batch_size: int = 16, on_step: Optional[OnStep] = None) -> Path:
    """Write `model` (FP32 .tflite) quantized by `recipe` to `out` (atomically); returns `out`.
    on_step hears of each stage (edgekit.progress)."""
    model, out = check_tflite(Path(model)), Path(out)
    check_tflite_recipe(recipe)
    if max_samples < 1 or batch_size < 1:
        raise ConfigError(f"max_samples ({max_samples}) and batch_size ({batch_size}) must be at least 1")
    if recipe.precision == "int8-static":
        if calibration is None:
            raise ConfigError(f"recipe {recipe.id}: int8-static needs calibration data: pass --calibration DATA")
        calibration.check(tflite_inputs(model), role="calibration data")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".edgekit-quantize-", dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        if recipe.precision == "fp32":
            shutil.copyfile(model, staged)
        else:
            _run(model, recipe, staged, calibration, max_samples, on_step)
            _check_smaller(recipe, model, staged)
        check_tflite(staged)
        os.replace(staged, out)
    return out


def _check_smaller(recipe: Recipe, model: Path, staged: Path) -> None:
    """NotApplicable for a model no smaller than FP32, as the ONNX recipes say (a tiny model's
    quantization parameters can outweigh what its 8-bit weights save)."""
    fp32_bytes, out_bytes = model.stat().st_size, staged.stat().st_size
    if out_bytes >= fp32_bytes:
        raise NotApplicable(f"{recipe.id}: its model ({out_bytes} bytes) is not smaller than FP32 ({fp32_bytes} bytes)")


def _run(model: Path, recipe: Recipe, staged: Path, calibration: Optional[Dataset], max_samples: int,
         on_step: Optional[OnStep]) -> None:
    try:
        with silenced():  # the quantizer's progress bars and the interpreter's C++ logs
            q = _quantizer(model, recipe)
            ranges = _calibrate(q, model, calibration, max_samples, on_step) if q.need_calibration else None
            notify(on_step, "quantize", "ai-edge-quantizer")
            staged.write_bytes(bytes(q.quantize(ranges, enable_progress_report=False).quantized_model))
    except EdgekitError:
        raise
    except Exception as exc:  # the quantizer's ValueError/RuntimeError/... on a model that loads
        raise QuantizeError(f"recipe {recipe.id} failed on {model}: {first_line(exc)}") from exc


def _quantizer(model: Path, recipe: Recipe):
    from ai_edge_quantizer import quantizer, qtyping
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    ops = qtyping.TFLOperationName.ALL_SUPPORTED
    granularity = qtyping.QuantGranularity.CHANNELWISE if recipe.per_channel else qtyping.QuantGranularity.TENSORWISE
    q = quantizer.Quantizer(str(model))
    if recipe.precision == "fp16":
        q.add_weight_only_config(".*", ops, num_bits=16, algorithm_key=AlgorithmName.FLOAT_CASTING)
    elif recipe.precision == "int8-dynamic":
        q.add_dynamic_config(".*", ops, num_bits=8, granularity=granularity)
    else:
        q.add_static_config(".*", ops, activation_num_bits=8, weight_num_bits=8, weight_granularity=granularity)
    return q


def _calibrate(q, model: Path, data: Dataset, max_samples: int, on_step: Optional[OnStep] = None):
    """Activation ranges from at most max_samples samples, CHUNK_SAMPLES at a time: the
    quantizer lists its whole data set before it runs, so it gets one chunk per call and
    carries the ranges over (its min/max moving average goes on as in one call)."""
    from edgekit.device.evaluate import fixed_batch

    backend = open_tflite(model)
    if len(backend.signature_keys) != 1:
        raise QuantizeError(f"model {model}: int8-static needs a model with one signature, it has "
                            f"{len(backend.signature_keys)} (convert it with edgekit from the PyTorch model)")
    dtypes = {name: np.dtype(dtype) for name, dtype, _ in backend.inputs}
    rows = fixed_batch(backend) or 1
    ranges, chunk, n = None, [], min(len(data), max_samples)
    for k, (batch, _) in enumerate(data.batches(rows, limit=n)):
        if k * rows % CHUNK_SAMPLES == 0:
            notify(on_step, "quantize", f"calibration sample {k * rows + 1}/{n}")
        if len(next(iter(batch.values()))) < rows:
            break  # a short last batch does not fit a fixed-batch model
        chunk.append({name: np.ascontiguousarray(batch[name], dtype=dt) for name, dt in dtypes.items()})
        if len(chunk) * rows >= CHUNK_SAMPLES:
            ranges, chunk = q.calibrate({backend.signature_keys[0]: chunk}, previous_calibration_result=ranges), []
    if chunk:
        ranges = q.calibrate({backend.signature_keys[0]: chunk}, previous_calibration_result=ranges)
    return ranges

