"""What a bundle manifest says about its model: precision, runtime needs, and the host
metrics the device's own measurements are compared with (the eval subset: edgekit.eval_subset)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from edgekit.calibration_record import CalibrationRecord, CandidateRecord
from edgekit.errors import ConfigError, GateError, ModelError
from edgekit.targets import Profile

if TYPE_CHECKING:
    from edgekit.toolchains import Toolchain

__all__ = ["detect_precision", "load_record", "chosen_candidate", "expected_from_record", "measure_expected",
           "runtime_requirements"]

_METRIC_KEYS = ("accuracy", "fidelity", "drop", "model_mb", "latency_ms", "peak_rss_mb", "load_ms", "n")
# a language model's, beside them (edgekit.device.lm_evaluate)
_LM_QUALITY = ("perplexity", "fp32_perplexity", "ppl_increase", "ppl_increase_se", "kl_divergence", "top1_agreement")
_LM_KEYS = (*_LM_QUALITY, "prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms", "kv_cache", "kv_cache_bytes",
            "recompute")


def detect_precision(model: Path, toolchain: Optional[Toolchain], record: Optional[CalibrationRecord]) -> str:
    """The model's precision: the calibration record's recipe when given (checked against what
    the model's toolchain reads from it), else read from the model's operators and weights."""
    detected = toolchain.precision(model) if toolchain is not None else None
    if record is not None:
        said = chosen_candidate(record).recipe.precision
        if detected is not None and detected != said:
            raise ConfigError(f"--calibration-record chose a {said} model, but {model} looks {detected}: "
                              "give the model that calibrate wrote beside that record")
        return said
    if detected is None:
        raise ConfigError(f"model {model}: cannot tell its precision; give --calibration-record")
    return detected


def load_record(path: Path, profile: Profile) -> CalibrationRecord:
    """A calibration record for this target, with a chosen candidate."""
    record = CalibrationRecord.read(path, "--calibration-record")
    path = Path(path).expanduser()
    if record.target.name != profile.name:
        raise ConfigError(f"--calibration-record {path} was made for target {record.target.name}, not {profile.name}")
    if record.chosen is None:
        raise GateError(f"--calibration-record {path}: no recipe met the budgets of {profile.name} "
                        f"({record.why or 'no candidate chosen'}); there is nothing to package")
    chosen_candidate(record, path)
    return record


def chosen_candidate(record: CalibrationRecord, path: Optional[Path] = None) -> CandidateRecord:
    candidate = record.chosen_candidate
    if candidate is None:
        raise ConfigError(f"--calibration-record {path or ''}: field 'chosen' ({record.chosen}) "
                          "names no candidate with a recipe")
    return candidate


def expected_from_record(record: CalibrationRecord, measured_here: Optional[Callable[[], dict]] = None) -> dict:
    """The chosen candidate's metrics from the record. A language model's perplexity and
    agreement with FP32 are taken from `measured_here()` instead (measure_expected on the
    bundle's own windows): calibrate scored other windows, and devices score the bundle's."""
    candidate = chosen_candidate(record)
    metrics, evaluated = candidate.metrics, record.data.eval
    n = evaluated.n_used if evaluated.n_used is not None else metrics.get("n")
    lm = {k: metrics.get(k) for k in _LM_KEYS} if metrics.get("perplexity") is not None else {}
    data_sha256 = evaluated.sha256
    if lm and measured_here is not None:
        here = measured_here()
        lm.update({k: here.get(k) for k in _LM_QUALITY})
        n, data_sha256 = here["n"], None
    return {"source": "calibration-record", "candidate": candidate.id,
            **{k: metrics.get(k) for k in _METRIC_KEYS}, **lm,
            "baseline_accuracy": (record.baseline or {}).get("accuracy"),
            "n": n, "data_sha256": data_sha256, "machine": record.machine, "versions": record.versions}


def measure_expected(model: Path, eval_npz: Path, profile: Profile, options: Optional[dict] = None) -> dict:
    """Accuracy and fidelity (a language model's perplexity and agreement with FP32) on the
    bundled subset, with the device's code, on this host; `options` as the device measures
    (edgekit.toolchains.base.Toolchain.quality_options). Timings and memory are left out:
    they would make every bundle's bytes different."""
    from edgekit.device.backends import ModelLoadError
    from edgekit.device.evaluate import DataFormatError, evaluate
    from edgekit.machine import cpu_facts, versions

    try:
        measured = evaluate(str(model), str(eval_npz), threads=profile.threads, providers=profile.providers,
                            warmup=0, runs=1, min_seconds=0.0, max_seconds=1.0, **(options or {}))
    except (ModelLoadError, DataFormatError) as exc:
        raise ModelError(f"measuring {model} on this host failed: {exc}") from exc
    lm = {k: measured.get(k) for k in _LM_QUALITY} if "perplexity" in measured else {}
    return {"source": "measured", "candidate": None, **lm, "accuracy": measured["accuracy"],
            "baseline_accuracy": _reference_accuracy(eval_npz),
            "fidelity": measured["fidelity"], "drop": None, "model_mb": measured["model_mb"],
            "latency_ms": None, "peak_rss_mb": None, "load_ms": None, "n": measured["n"], "data_sha256": None,
            "machine": cpu_facts(), "versions": versions("onnxruntime", "numpy")}


def _reference_accuracy(eval_npz: Path) -> Optional[float]:
    """The FP32 reference model's accuracy on the bundled subset: its outputs are in the
    subset beside the labels, so the drop against FP32 can be gated on the device's numbers."""
    import numpy as np

    with np.load(eval_npz) as npz:
        if "labels" not in npz.files or "_reference" not in npz.files:
            return None
        return float(np.mean(np.argmax(npz["_reference"], axis=-1) == npz["labels"]))


def runtime_requirements(model: Path, toolchain: Toolchain, profile: Profile) -> dict:
    """What the device's runtime must offer: the runtime, its version floor, threads, providers,
    and what the model's toolchain says the runtime must read (ONNX: its opsets and IR version)."""
    needs = {"name": profile.runtime, "min_version": profile.runtime_version, "threads": profile.threads,
             "providers": list(profile.providers)}
    needs.update(toolchain.requirements(model))
    return needs
