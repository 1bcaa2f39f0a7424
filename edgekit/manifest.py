"""What a bundle manifest says about its model: precision, runtime needs, and the host
metrics the device's own measurements are compared with (the eval subset: edgekit.eval_subset)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from edgekit.errors import ConfigError, GateError, ModelError
from edgekit.targets import Profile

__all__ = ["detect_precision", "load_record", "chosen_candidate", "expected_from_record", "measure_expected",
           "runtime_requirements"]

_DYNAMIC_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"}
_STATIC_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "QGemm"}
_METRIC_KEYS = ("accuracy", "fidelity", "drop", "model_mb", "latency_ms", "peak_rss_mb", "load_ms", "n")


def _onnx_precision(model: Path) -> str:
    import onnx

    proto = onnx.load(str(model), load_external_data=False)
    ops = {n.op_type for n in proto.graph.node}
    if ops & _DYNAMIC_OPS:
        return "int8-dynamic"
    if ops & _STATIC_OPS:
        return "int8-static"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer):
        return "fp16"
    return "fp32"


def detect_precision(model: Path, record: Optional[dict]) -> str:
    """The model's precision: the calibration record's recipe when given (checked against
    the model's operators for ONNX), else read from the model's operators and weights."""
    detected = _onnx_precision(model) if model.suffix == ".onnx" else None
    if model.suffix == ".tflite":
        from edgekit.tflite.convert import tflite_precision

        detected = tflite_precision(model)
    if record is not None:
        said = chosen_candidate(record)["recipe"]["precision"]
        if detected is not None and detected != said:
            raise ConfigError(f"--calibration-record chose a {said} model, but {model} looks {detected}: "
                              "give the model that calibrate wrote beside that record")
        return said
    if detected is None:
        raise ConfigError(f"model {model}: cannot tell its precision; give --calibration-record")
    return detected


def load_record(path: Path, profile: Profile) -> dict:
    """A calibration record for this target, with a chosen candidate."""
    path = Path(path).expanduser()
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"--calibration-record {path}: not found") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--calibration-record {path}: not a readable JSON file ({exc})") from exc
    if not isinstance(record, dict) or not str(record.get("schema", "")).startswith("edgekit.calibration/"):
        raise ConfigError(f"--calibration-record {path}: not an edgekit calibration record (field 'schema')")
    target = (record.get("target") or {}).get("name")
    if target != profile.name:
        raise ConfigError(f"--calibration-record {path} was made for target {target}, not {profile.name}")
    if record.get("chosen") is None:
        raise GateError(f"--calibration-record {path}: no recipe met the budgets of {profile.name} "
                        f"({record.get('why', 'no candidate chosen')}); there is nothing to package")
    chosen_candidate(record, path)
    return record


def chosen_candidate(record: dict, path: Optional[Path] = None) -> dict:
    for candidate in record.get("candidates", []):
        if candidate.get("id") == record.get("chosen") and isinstance(candidate.get("recipe"), dict):
            return candidate
    raise ConfigError(f"--calibration-record {path or ''}: field 'chosen' ({record.get('chosen')}) "
                      "names no candidate with a recipe")


def expected_from_record(record: dict) -> dict:
    candidate = chosen_candidate(record)
    metrics = candidate.get("metrics") or {}
    eval_data = (record.get("data") or {}).get("eval") or {}
    baseline = record.get("baseline") or {}
    return {"source": "calibration-record", "candidate": candidate["id"],
            **{k: metrics.get(k) for k in _METRIC_KEYS}, "baseline_accuracy": baseline.get("accuracy"),
            "n": eval_data.get("n_used", metrics.get("n")), "data_sha256": eval_data.get("sha256"),
            "machine": record.get("machine"), "versions": record.get("versions")}


def measure_expected(model: Path, eval_npz: Path, profile: Profile) -> dict:
    """Accuracy and fidelity on the bundled subset, with the device's code, on this host.
    Timings and memory are left out: they would make every bundle's bytes different."""
    from edgekit.device.backends import ModelLoadError
    from edgekit.device.evaluate import DataFormatError, evaluate
    from edgekit.machine import cpu_facts, versions

    try:
        measured = evaluate(str(model), str(eval_npz), threads=profile.threads, providers=profile.providers,
                            warmup=0, runs=1, min_seconds=0.0, max_seconds=1.0)
    except (ModelLoadError, DataFormatError) as exc:
        raise ModelError(f"measuring {model} on this host failed: {exc}") from exc
    return {"source": "measured", "candidate": None, "accuracy": measured["accuracy"],
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


def runtime_requirements(model: Path, profile: Profile) -> dict:
    """What the device's runtime must offer: the runtime, its version floor, the model's
    opsets and IR version (an older onnxruntime refuses newer ones), threads, providers."""
    needs = {"name": profile.runtime, "min_version": profile.runtime_version, "threads": profile.threads,
             "providers": list(profile.providers)}
    if model.suffix == ".onnx":
        import onnx

        proto = onnx.load(str(model), load_external_data=False)
        needs["ir_version"] = int(proto.ir_version)
        needs["opsets"] = {(o.domain or "ai.onnx"): int(o.version) for o in proto.opset_import}
    return needs
