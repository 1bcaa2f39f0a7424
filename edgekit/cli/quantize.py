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
    precision: Annotated[str, typer.Option("--precision", "-p", help="fp32 | fp16 | int8-dynamic | int8-static | int8-token | int8-block | int4-block (the last three ONNX only).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the quantized model (.onnx, or .tflite for a tflite target).")],
    method: Annotated[Optional[str], typer.Option("--method", help="int8-static calibration: minmax (default) | entropy | percentile.")] = None,
    per_channel: Annotated[bool, typer.Option("--per-channel", help="One weight scale per output channel.")] = False,
    reduce_range: Annotated[bool, typer.Option("--reduce-range", help="7-bit weights, for x86 CPUs without VNNI.")] = False,
    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", help="Keep these nodes or op types in float (name, glob or op type; repeatable).")] = None,
    include: Annotated[Optional[list[str]], typer.Option("--include", help="Quantize only these op types (repeatable).")] = None,
    block_size: Annotated[Optional[int], typer.Option("--block-size", help="int8-block / int4-block: weights per block (32 default; a power of two, at least 16).")] = None,
    accuracy_level: Annotated[Optional[int], typer.Option("--accuracy-level", help="int8-block / int4-block: MatMulNBits accuracy level 0-4 (4: the fast kernel).")] = None,
    algorithm: Annotated[Optional[str], typer.Option("--algorithm", help="int8-block / int4-block: rtn (default) | hqq (4 bits) | kquant; a language model's int4-block also minmax-offset (its default) | minmax-offset-head4 | minmax-offset-lean (needs --calibration text; the minmax-offset ones weigh their 4-bit blocks by it when given).")] = None,
    calibration: Annotated[Optional[Path], typer.Option("--calibration", help="Calibration data set (.npz or directory; a language model's: text); int8-static and minmax-offset-lean need one.")] = None,
    max_samples: Annotated[int, typer.Option("--max-samples", min=1, help="Calibrate on at most this many samples.")] = 512,
    target: Annotated[Optional[str], typer.Option("--target", "-t", help="Target profile name or TOML: a tflite target gets a .tflite model.")] = None,
    targets_dir: TargetsDir = None,
    json: JsonFlag = False,
) -> None:
    """Quantize MODEL with one recipe and write it to OUT; prints the sizes before and after."""
    from edgekit.datasets import load_dataset
    from edgekit.progress import notify, within

    recipe = _recipe(precision, method, per_channel, reduce_range, exclude, include,
                     {"block_size": block_size, "accuracy_level": accuracy_level, "algorithm": algorithm})
    calib = load_dataset(calibration, role="calibration data") if calibration else None
    profile = _profile(target, targets_dir)
    toolchain = _toolchain(model, out, profile, recipe)
    with tempfile.TemporaryDirectory(prefix="edgekit-model-") as tmp, \
            showing_steps(f"quantizing {model}", enabled=not json) as display:
        on_step = within(display, candidate=recipe.id)
        notify(on_step, "checking the model" if Path(model).suffix == toolchain.suffix else "converting the model")
        fp32 = toolchain.load(model, workdir=Path(tmp), example_data=calib)
        written = toolchain.quantize(fp32, recipe, out, calibration=calib, max_samples=max_samples, on_step=on_step)
        _refuse_unrunnable(toolchain, written, profile, recipe)
        result = _result(toolchain, model, fp32, written, recipe)
    if json:
        print_json(result)
        return
    size = result["size_mb"]
    console.print(f"wrote {written} ({recipe.id})", highlight=False, markup=False, soft_wrap=True)  # path unbroken
    console.print(f"size: {fmt_sig(size['before'])} MiB -> {fmt_sig(size['after'])} MiB ({result['ratio']:.3f}x)",
                  highlight=False)


def _recipe(precision, method, per_channel, reduce_range, exclude, include, blocks: dict):
    from edgekit.errors import ConfigError
    from edgekit.recipes import ALGORITHMS, METHODS, Recipe

    if blocks["algorithm"] is not None and blocks["algorithm"] not in ALGORITHMS:
        raise ConfigError(f"--algorithm '{blocks['algorithm']}': choose one of {', '.join(ALGORITHMS)}")

    if precision not in PRECISIONS:
        raise ConfigError(f"--precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    if method is not None and method not in METHODS:
        raise ConfigError(f"--method '{method}': choose one of {', '.join(METHODS)}")
    if precision == "int8-static" and method is None:
        method = "minmax"
    return Recipe(precision=precision, method=method, per_channel=per_channel, reduce_range=reduce_range,
                  exclude=tuple(exclude or ()), include=tuple(include or ()), **blocks)


def _profile(target: Optional[str], targets_dir):
    if target is None:
        return None
    from edgekit.targets import load_profile

    return load_profile(target, targets_dir or ())


def _toolchain(model: str, out: Path, profile, recipe):
    """The target's toolchain, else the one the model or --out names; everything it can refuse
    before any work (the output's kind, the recipe, a runtime that cannot run the recipe)."""
    from edgekit.errors import ConfigError
    from edgekit.toolchains import check_output, toolchain_for, toolchain_for_model

    toolchain = toolchain_for(profile) if profile else toolchain_for_model(model, out)
    if out.is_dir():
        raise ConfigError(f"--out {out}: a folder; give the file to write, such as {out / ('model' + toolchain.suffix)}")
    if Path(model).is_file() and out.resolve() == Path(model).resolve():
        raise ConfigError(f"--out {out}: the model itself; write the quantized model to another file")
    check_output(toolchain, out, profile)
    toolchain.check_recipe(recipe)
    refusal = toolchain.recipe_refusal(recipe, profile) if profile else None
    if refusal:
        raise ConfigError(f"--precision {recipe.precision} for target {profile.name}: {refusal}")
    return toolchain


def _refuse_unrunnable(toolchain, written: Path, profile, recipe) -> None:
    """Remove a model that the target's runtime_version cannot load, and say why (exit 2)."""
    from edgekit.errors import ConfigError

    refusal = toolchain.model_refusal(written, profile) if profile else None
    if refusal:
        for path in toolchain.files(written):
            path.unlink(missing_ok=True)
        raise ConfigError(f"--precision {recipe.precision} for target {profile.name}: {refusal}")


def _result(toolchain, model: str, fp32: Path, written: Path, recipe) -> dict:
    before, after = toolchain.size_mb(fp32), toolchain.size_mb(written)
    return {
        "model": model,
        "output": str(written),
        "sha256": toolchain.sha256(written),
        "recipe": dict(recipe.record(), id=recipe.id),
        "size_mb": {"before": round(before, 6), "after": round(after, 6)},
        "ratio": round(after / before, 4),
    }


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize_cmd)
