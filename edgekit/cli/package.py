"""`edgekit package`: a signed, deterministic bundle of one model for one target."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgekit.cli._common import JsonFlag, TargetsDir, console, print_json, progress


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
    eval_samples: Annotated[int, typer.Option(
        "--eval-samples", help="Samples of the eval set to bundle (evenly spaced; all when fewer).")] = 1000,
    targets_dir: TargetsDir = None,
    json: JsonFlag = False,
) -> None:
    """Write OUT/NAME-VERSION-TARGET.edgekit: the model, an evaluation subset, expected host
    metrics, the device runner and a manifest of sha256s (signed with --sign-key). The same
    inputs give the same bytes. Refuses (exit 3) a model the target does not allow."""
    from edgekit.datasets import load_dataset
    from edgekit.package import package
    from edgekit.targets import load_profile

    profile = load_profile(target, targets_dir or ())
    data = load_dataset(eval_data, role="eval data")
    with progress() as bar:
        task = bar.add_task("packaging", total=None)
        bundle = package(model, profile, data, name=name, version=version, out_dir=out,
                         calibration_record=calibration_record, reference=reference, sign_key=sign_key,
                         eval_samples=eval_samples, on_step=lambda what: bar.update(task, description=what))
    if json:
        print_json({"path": str(bundle.path), "sha256": bundle.sha256, "size": bundle.size,
                    "manifest": bundle.manifest})
        return
    console.print(f"{bundle.path}\nsha256 {bundle.sha256}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("package")(package_cmd)
