"""`edgekit package`: one signed, deterministic bundle of a model for one target.

The bundle holds the model, an evaluation subset (inputs with labels, or with the FP32
reference outputs computed here so the device can measure fidelity), the expected host
metrics, the runner, and a manifest that hashes all of them (see DESIGN.md, Bundle).

Determinism: packaging the same inputs twice gives the same bytes. So created_at is not
the clock: it is $SOURCE_DATE_EPOCH when set (the reproducible-builds convention), else
the calibration record's created_at, else the model file's modification time. Expected
host metrics are either carried from the calibration record (all of them, measured by
calibrate) or measured now on the bundled subset; measured now, only what the inputs
decide is recorded (accuracy, fidelity, size), never timings or memory, which differ
from run to run.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from functools import partial
from pathlib import Path
from typing import Optional

from edgekit.bundle import Bundle, MANIFEST, SIGNATURE, SUFFIX, deterministic_npz, \
    manifest_bytes, read_bundle, runner_files, write_tar
from edgekit.calibration_record import CalibrationRecord
from edgekit.datasets import Dataset
from edgekit.errors import ConfigError, GateError
from edgekit.eval_subset import default_samples, eval_indices, size_warning, subset
from edgekit.manifest import chosen_candidate, detect_precision, expected_from_record, load_record, \
    measure_expected, runtime_requirements
from edgekit.progress import OnStep, notify
from edgekit.targets import Profile
from edgekit.toolchains import Toolchain, model_suffixes, toolchain_for, toolchain_for_model, toolchain_of
from edgekit.words import check_plain, epoch_of, iso_utc

__all__ = ["package", "bundle_filename", "bundle_warning"]


def bundle_filename(name: str, version: str, target: str) -> str:
    return f"{name}-{version}-{target}{SUFFIX}"


def check_allowed(model: Path, toolchain: Optional[Toolchain], profile: Profile, precision: str) -> None:
    """GateError (exit 3) when the target's profile does not allow this model."""
    if toolchain is None:
        raise ConfigError(f"model {model}: unknown kind (bundles take {' or '.join(model_suffixes())} models)")
    if toolchain is not toolchain_for(profile):
        raise GateError(f"target {profile.name} runs {profile.runtime}; {model.name} needs {toolchain.runtime}")
    model_mb = toolchain.size_mb(model)
    if precision not in profile.precisions:
        raise GateError(f"target {profile.name} allows precisions {', '.join(profile.precisions)}; "
                        f"{model.name} is {precision}")
    limit = profile.budgets.max_model_mb
    if limit is not None and model_mb > limit:
        raise GateError(f"{model.name} is {model_mb:.3f} MB, over max_model_mb {limit:g} of target {profile.name}")
    refusal = toolchain.model_refusal(model, profile, what=model.name)
    if refusal:
        raise GateError(f"target {profile.name}: {refusal}")


def _created_at(model: Path, record: Optional[CalibrationRecord]) -> int:
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        try:
            return int(env)
        except ValueError as exc:
            raise ConfigError(f"SOURCE_DATE_EPOCH={env!r}: not a whole number of seconds") from exc
    if record and record.created_at is not None:
        try:
            return epoch_of(record.created_at)
        except ValueError:
            pass
    return int(model.stat().st_mtime)


def _model_members(model: Path, toolchain: Toolchain) -> dict[str, Path]:
    """The model as model.<suffix>, with the files it needs beside it (ONNX's external data) under their own names."""
    members = {f"model{model.suffix}": model}
    for extra in toolchain.files(model)[1:]:
        if not extra.is_file():
            raise ConfigError(f"model {model}: its external data file {extra.name} is missing")
        members[extra.name] = extra
    return members


def _reference(model: Path, toolchain: Toolchain, precision: str, data: Dataset, reference: Optional[Path],
               record: Optional[CalibrationRecord], workdir: Path) -> Optional[Path]:
    """The FP32 model whose outputs the device compares against (None: labels suffice); made
    again from the record's source where the toolchain can (a language model's export)."""
    if reference is not None:
        reference = Path(reference).expanduser()
        return toolchain_for_model(reference).check(reference)
    if data.has_labels:
        return None
    source = Path(record.model.path) if record else None
    # A record's source may be a PyTorch model (converted for TFLite), which no device backend runs.
    same_kind = source is not None and source.suffix == model.suffix
    if same_kind and source.is_file() and toolchain.sha256(source) == record.model.sha256:
        return source
    if precision == "fp32":
        return model
    remade = toolchain.remake_reference(record.model.path, workdir) if record else None
    if remade is not None:
        return remade
    raise ConfigError(f"eval data {data.path} has no labels, so the device measures fidelity to the FP32 model: "
                      "give it with --reference FP32_MODEL")


def _sha_size(source) -> dict:
    from edgekit.device.trust import sha256_file

    if isinstance(source, bytes):
        return {"sha256": hashlib.sha256(source).hexdigest(), "size": len(source)}
    return {"sha256": sha256_file(str(source)), "size": source.stat().st_size}


def _default_samples(data: Dataset, model: Path, toolchain: Toolchain, ref: Optional[Path], tmp: Path) -> int:
    """edgekit.eval_subset's default, from the bytes one prepared sample takes in eval.npz."""
    import numpy as np

    from edgekit.eval_subset import FLOOR
    from edgekit.evaluate import eval_set

    if len(data) <= FLOOR:
        return len(data)
    probe = eval_set(toolchain, subset(data, eval_indices(len(data), 1)), model, tmp / "probe.npz", reference=ref)
    with np.load(probe) as npz:
        sample_bytes = sum(npz[k].nbytes for k in npz.files)
    model_bytes = sum(p.stat().st_size for p in _model_members(model, toolchain).values())
    return default_samples(len(data), sample_bytes, model_bytes)


def bundle_warning(bundle: Bundle) -> Optional[str]:
    """One line when the bundle is mostly evaluation data (edgekit.eval_subset), else None."""
    return size_warning(bundle.manifest, bundle.size)


def package(model: Path, profile: Profile, eval_data: Dataset, *, name: str, version: str, out_dir: Path,
            calibration_record: Optional[Path] = None, reference: Optional[Path] = None,
            sign_key: Optional[Path] = None, eval_samples: Optional[int] = None,
            on_step: Optional[OnStep] = None) -> Bundle:
    """Write OUT_DIR/NAME-VERSION-TARGET.edgekit; see the module docstring. eval_samples None:
    as many as edgekit.eval_subset.default_samples says; on_step hears of each stage."""
    from edgekit import __version__
    from edgekit.recipes import Recipe

    def step(what: str) -> None:
        notify(on_step, "package", what)

    check_plain(name, "--name")
    check_plain(version, "--version")
    if eval_samples is not None and eval_samples < 1:
        raise ConfigError(f"--eval-samples must be at least 1, got {eval_samples}")
    model = Path(model).expanduser()
    toolchain = toolchain_of(model)
    if toolchain is not None:
        toolchain.check(model)
    elif not model.is_file():
        raise ConfigError(f"model {model}: not found")
    record = load_record(calibration_record, profile) if calibration_record else None
    precision = detect_precision(model, toolchain, record)
    check_allowed(model, toolchain, profile, precision)
    eval_data = toolchain.model_data(model, eval_data, "eval data", profile)
    eval_data.check(toolchain.inputs(model), role="eval data")
    recipe = chosen_candidate(record).recipe if record else Recipe(precision=precision)
    created = _created_at(model, record)
    with tempfile.TemporaryDirectory(prefix="edgekit-package-") as tmp:
        ref = _reference(model, toolchain, precision, eval_data, reference, record, Path(tmp) / "reference")
        step("preparing the evaluation subset")
        if eval_samples is None:
            eval_samples = _default_samples(eval_data, model, toolchain, ref, Path(tmp))
        indices = eval_indices(len(eval_data), eval_samples)
        from edgekit.evaluate import eval_set

        raw = eval_set(toolchain, subset(eval_data, indices), model, Path(tmp) / "raw.npz", reference=ref)
        eval_npz = deterministic_npz(raw, Path(tmp) / "eval.npz")
        step("measuring the expected host metrics")
        quality = toolchain.quality_options(profile, recipe)
        here = partial(measure_expected, model, eval_npz, profile, quality)  # on the bundle's own windows
        expected = expected_from_record(record, here) if record else here()
        measure = toolchain.device_measure_options(profile, recipe)
        if expected.get("baseline_accuracy") is None and precision == "fp32":
            expected["baseline_accuracy"] = expected.get("accuracy")  # an FP32 model is its own baseline
        members: dict = {**_model_members(model, toolchain), "eval.npz": eval_npz}
        members.update({f"runner/{rel}": data for rel, data in runner_files().items()})
        files = {rel: _sha_size(src) for rel, src in sorted(members.items())}
        model_file = f"model{model.suffix}"
        manifest = {
            "schema": 1, "name": name, "version": version, "target": profile.snapshot(),
            "precision": precision,
            "recipe": recipe.record() if record else {"precision": precision},
            "runtime": runtime_requirements(model, toolchain, profile),
            "model": {"file": model_file, **files[model_file], "source_name": model.name},
            "files": files,
            "eval": {"file": "eval.npz", **files["eval.npz"], "n": len(indices),
                     "metric": toolchain.metric(eval_data),
                     "reference": ref is not None, "source": {"sha256": eval_data.sha256, "n": len(eval_data)},
                     "selection": "all" if len(indices) == len(eval_data) else "evenly spaced indices"},
            "expected": expected,
            "calibration": record.data.calibration.model_dump() if record else None,
            "edgekit_version": __version__,
            "created_at": iso_utc(created),
            **({"measure": measure} if measure else {}),  # what the device's evaluation needs beyond model and data
        }
        members[MANIFEST] = manifest_bytes(manifest)
        if sign_key is not None:
            from edgekit.keys import sign

            step("signing")
            members[SIGNATURE] = sign(members[MANIFEST], Path(sign_key))
        step("writing the bundle")
        dest = Path(out_dir).expanduser() / bundle_filename(name, version, profile.name)
        write_tar(dest, members, created)
    return read_bundle(dest)
