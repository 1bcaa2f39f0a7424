"""`edgekit package`: a signed, deterministic bundle of one model for one target."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgekit.cli._common import JsonFlag, TargetsDir, console, err_console, print_json
from edgekit.cli._progress import showing_steps


def package_cmd(
    model: Annotated[Path, typer.Argument(help="The model to ship (.onnx or .tflite), e.g. DIR/model.onnx from calibrate.")],
    target: Annotated[str, typer.Option("--target", help="Target profile name, or a path to its TOML file.")],
    eval_data: Annotated[Path, typer.Option("--eval", help="Evaluation data set (.npz or directory).")],
    name: Annotated[str, typer.Option("--name", help="The model's name on devices.")],
    version: Annotated[str, typer.Option("--version", help="This release's version, e.g. 1.0.0.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder to write NAME-VERSION-TARGET.edgekit into.")],
    calibration_record: Annotated[Optional[Path], typer.Option(
        "--calibration-record", help="calibration.json from calibrate: the recipe and expected metrics.")] = None,
    reference: Annotated[Optional[Path], typer.Option(
        "--reference", help="The FP32 model, for fidelity when the eval data has no labels.")] = None,
    sign_key: Annotated[Optional[Path], typer.Option(
        "--sign-key", help="Private key from `edgekit keys init`; devices with keys in trust/ require it.")] = None,
    eval_samples: Annotated[Optional[int], typer.Option(
        "--eval-samples", show_default=False,
        help="Samples of the eval set to bundle, evenly spaced. Default: all up to 2500, fewer to keep eval.npz "
             "within max(4x the model, 4 MiB), never fewer than 400.")] = None,
    targets_dir: TargetsDir = None,
    json: JsonFlag = False,
) -> None:
    """Write OUT/NAME-VERSION-TARGET.edgekit: the model, an evaluation subset, expected host
    metrics, the device runner and a manifest of sha256s (signed with --sign-key). The same
    inputs give the same bytes. Refuses (exit 3) a model the target does not allow. Warns
    when the bundle is mostly evaluation data."""
    from edgekit.datasets import load_dataset
    from edgekit.package import bundle_warning, package
    from edgekit.targets import load_profile

    profile = load_profile(target, targets_dir or ())
    data = load_dataset(eval_data, role="eval data")
    with showing_steps("packaging", enabled=not json) as on_step:
        bundle = package(model, profile, data, name=name, version=version, out_dir=out,
                         calibration_record=calibration_record, reference=reference, sign_key=sign_key,
                         eval_samples=eval_samples, on_step=on_step)
    warning = bundle_warning(bundle)
    if json:
        print_json({"path": str(bundle.path), "sha256": bundle.sha256, "size": bundle.size, "warning": warning,
                    "manifest": bundle.manifest})
    else:
        console.print(f"{bundle.path}\nsha256 {bundle.sha256}", highlight=False, soft_wrap=True)
    if warning:
        print_warning(warning)


def print_warning(warning: str) -> None:
    """One line on stderr, however wide the terminal."""
    err_console.print(f"warning: {warning}", style="yellow", markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("package")(package_cmd)
