"""`edgekit quantize`: one recipe applied to one model."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgekit.cli._common import JsonFlag, TargetsDir, console, fmt_sig, print_json
from edgekit.cli._progress import showing_steps
from edgekit.words import PRECISIONS


def quantize_cmd(
    model: Annotated[str, typer.Argument(help="The FP32 model: .onnx, .pt2 or pkg.module:factory.")],
    precision: Annotated[str, typer.Option("--precision", "-p", help="fp32 | fp16 | int8-dynamic | int8-static.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the quantized model (.onnx, or .tflite for a tflite target).")],
    method: Annotated[Optional[str], typer.Option("--method", help="int8-static calibration: minmax (default) | entropy | percentile.")] = None,
    per_channel: Annotated[bool, typer.Option("--per-channel", help="One weight scale per output channel.")] = False,
    reduce_range: Annotated[bool, typer.Option("--reduce-range", help="7-bit weights, for x86 CPUs without VNNI.")] = False,
    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", help="Keep these nodes or op types in float (name, glob or op type; repeatable).")] = None,
    include: Annotated[Optional[list[str]], typer.Option("--include", help="Quantize only these op types (repeatable).")] = None,
    calibration: Annotated[Optional[Path], typer.Option("--calibration", help="Calibration data set (.npz or directory); int8-static needs one.")] = None,
    max_samples: Annotated[int, typer.Option("--max-samples", min=1, help="Calibrate on at most this many samples.")] = 512,
    target: Annotated[Optional[str], typer.Option("--target", "-t", help="Target profile name or TOML: a tflite target gets a .tflite model.")] = None,
    targets_dir: TargetsDir = None,
    json: JsonFlag = False,
) -> None:
    """Quantize MODEL with one recipe and write it to OUT; prints the sizes before and after."""
    from edgekit.datasets import load_dataset
    from edgekit.models import load_model
    from edgekit.progress import notify, within
    from edgekit.quantize import quantize

    recipe = _recipe(precision, method, per_channel, reduce_range, exclude, include)
    calib = load_dataset(calibration, role="calibration data") if calibration else None
    tflite = _tflite_output(model, out, target, targets_dir, recipe)
    with tempfile.TemporaryDirectory(prefix="edgekit-model-") as tmp, \
            showing_steps(f"quantizing {model}", enabled=not json) as display:
        on_step = within(display, candidate=recipe.id)
        notify(on_step, "checking the model" if model.endswith((".onnx", ".tflite")) else "converting the model")
        if tflite:
            from edgekit.tflite.convert import load_tflite_model
            from edgekit.tflite.quantize import quantize_tflite as quantize

            fp32 = load_tflite_model(model, workdir=Path(tmp), example_data=calib)
        else:
            fp32 = load_model(model, workdir=Path(tmp), example_data=calib)
        written = quantize(fp32, recipe, out, calibration=calib, max_samples=max_samples, on_step=on_step)
        if not tflite:
            _refuse_unrunnable(written, target, targets_dir, recipe)
        result = _result(model, fp32, written, recipe)
    if json:
        print_json(result)
        return
    size = result["size_mb"]
    console.print(f"wrote {written} ({recipe.id})", highlight=False, markup=False, soft_wrap=True)  # path unbroken
    console.print(f"size: {fmt_sig(size['before'])} MiB -> {fmt_sig(size['after'])} MiB ({result['ratio']:.3f}x)",
                  highlight=False)


def _recipe(precision, method, per_channel, reduce_range, exclude, include):
    from edgekit.errors import ConfigError
    from edgekit.recipes import METHODS, Recipe

    if precision not in PRECISIONS:
        raise ConfigError(f"--precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    if method is not None and method not in METHODS:
        raise ConfigError(f"--method '{method}': choose one of {', '.join(METHODS)}")
    if precision == "int8-static" and method is None:
        method = "minmax"
    return Recipe(precision=precision, method=method, per_channel=per_channel, reduce_range=reduce_range,
                  exclude=tuple(exclude or ()), include=tuple(include or ()))


def _tflite_output(model: str, out: Path, target, targets_dir, recipe) -> bool:
    """Whether to make a .tflite: the target runs tflite, or the model or --out is one."""
    from edgekit.errors import ConfigError

    profile = None
    if target is not None:
        from edgekit.onnx_compat import check_target
        from edgekit.targets import load_profile

        profile = load_profile(target, targets_dir or ())
        check_target(profile)  # a bad onnxruntime runtime_version is reported before any work
    tflite = (profile.runtime == "tflite") if profile else ".tflite" in (Path(model).suffix, out.suffix)
    if tflite and out.suffix != ".tflite":
        raise ConfigError(f"--out {out}: a TFLite model is written to a .tflite file")
    if profile and not tflite and out.suffix == ".tflite":
        raise ConfigError(f"--out {out}: target {profile.name} runs {profile.runtime}; write a .onnx file")
    if tflite:
        from edgekit.tflite.quantize import check_tflite_recipe, runtime_refusal

        check_tflite_recipe(recipe)  # before the conversion, not after it
    if tflite and profile is not None:
        refusal = runtime_refusal(recipe, profile.runtime_version)
        if refusal:
            raise ConfigError(f"--precision {recipe.precision} for target {profile.name}: {refusal}")
    return tflite


def _refuse_unrunnable(written: Path, target, targets_dir, recipe) -> None:
    """Remove an ONNX model that the target's runtime_version cannot load, and say why (exit 2)."""
    if target is None:
        return
    from edgekit.errors import ConfigError
    from edgekit.models import external_data_files
    from edgekit.onnx_compat import target_refusal
    from edgekit.targets import load_profile

    profile = load_profile(target, targets_dir or ())
    refusal = target_refusal(written, profile)
    if refusal:
        for path in [*external_data_files(written), written]:
            path.unlink(missing_ok=True)
        raise ConfigError(f"--precision {recipe.precision} for target {profile.name}: {refusal}")


def _result(model: str, fp32: Path, written: Path, recipe) -> dict:
    from edgekit.models import model_sha256, model_size_mb

    before, after = model_size_mb(fp32), model_size_mb(written)
    return {
        "model": model,
        "output": str(written),
        "sha256": model_sha256(written),
        "recipe": dict(recipe.record(), id=recipe.id),
        "size_mb": {"before": round(before, 6), "after": round(after, 6)},
        "ratio": round(after / before, 4),
    }


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize_cmd)
