"""The calibration record as one typed object: what calibrate writes is what package and the
report read, a bad file is one line naming the flag and the field, and the flat rows are made
in one place. (Records of real runs are read back in test_calibrate.py and test_tflite.py.)"""

from __future__ import annotations

import copy
import json

import pytest

from edgekit.calibration_record import SCHEMA, CalibrationRecord
from edgekit.errors import ConfigError, GateError

_RECIPE = {"precision": "int8-static", "method": "minmax", "per_channel": False, "reduce_range": False,
           "exclude": [], "include": []}
_METRICS = {"accuracy": 0.97, "fidelity": {"top1_agreement": 0.98, "cosine": 0.999, "sqnr_db": 31.5},
            "latency_ms": {"p50": 0.02, "p95": 0.03, "n": 50}, "load_ms": 9.0, "peak_rss_mb": 60.5,
            "model_mb": 0.05, "n": 100, "runtime": {"name": "onnxruntime", "version": "1.32.0", "providers": []},
            "drop": 0.01}
RECORD = {
    "schema": SCHEMA,
    "model": {"path": "m.onnx", "sha256": "ab" * 32, "inputs": [{"name": "input", "dtype": "float32",
                                                               "shape": [None, 1, 8, 8]}]},
    "target": {"name": "host-cpu", "runtime": "onnxruntime", "budgets": {"max_model_mb": 1.0}},
    "budgets": {"max_model_mb": 1.0, "max_accuracy_drop": 0.02},
    "objective": "latency", "metric": "accuracy", "baseline": dict(_METRICS, drop=0.0),
    "data": {"calibration": {"path": "c.npz", "sha256": "cd" * 32, "n": 64},
             "eval": {"path": "e.npz", "sha256": "ef" * 32, "n": 719, "n_used": 100}},
    "candidates": [
        {"id": "int8-dynamic", "recipe": dict(_RECIPE, precision="int8-dynamic", method=None), "status": "failed",
         "error": "not offered: too old", "passed": False, "failed_budgets": [], "metrics": {}, "seconds": 0.0},
        {"id": "int8-static-minmax", "recipe": _RECIPE, "status": "ok", "error": None, "passed": True,
         "failed_budgets": [], "metrics": _METRICS, "seconds": 1.5},
    ],
    "chosen": "int8-static-minmax", "output": {"file": "model.onnx", "sha256": "01" * 32}, "why": "the fastest",
    "versions": {"edgekit": "0.1.0"}, "machine": {"cores": 2}, "measured_on": {"kind": "host"},
    "created_at": "2024-01-01T00:00:00Z", "search": None,
}


def _write(tmp_path, record) -> object:
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def test_a_record_read_and_written_again_is_the_same_file(tmp_path):
    path = _write(tmp_path, RECORD)
    record = CalibrationRecord.read(path, "--calibration")
    assert record.chosen_candidate.recipe.method == "minmax" and record.target.name == "host-cpu"
    record.write(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == path.read_text()


def test_fields_written_only_where_they_apply_stay_absent():
    tflite = copy.deepcopy(RECORD)
    del tflite["search"]  # a toolchain that does not search writes none
    tflite["model"] = dict(RECORD["model"], format="pt2", converted={
        "format": "tflite", "converter": "litert-torch", "sha256": "12" * 32, "size_mb": 0.15,
        "inputs": RECORD["model"]["inputs"]})
    tflite["model"] = {k: tflite["model"][k] for k in ("path", "sha256", "format", "inputs", "converted")}
    assert json.loads(json.dumps(CalibrationRecord.of(tflite).dump())) == tflite
    onnx = CalibrationRecord.of(RECORD).dump()
    assert "format" not in onnx["model"] and onnx["search"] is None and "n_used" not in onnx["data"]["calibration"]


def test_rows_flatten_every_candidate_once():
    rows = CalibrationRecord.of(RECORD).rows()
    assert [(r["no"], r["id"], r["chosen"], r["status"]) for r in rows] == [
        (1, "int8-dynamic", False, "failed"), (2, "int8-static-minmax", True, "ok")]
    failed, ok = rows
    assert failed["error"] == "not offered: too old" and failed["latency_p95"] is None and failed["precision"] == "int8-dynamic"
    assert ok["cosine"] == 0.999 and ok["latency_p95"] == 0.03 and ok["method"] == "minmax" and ok["failed_budgets"] == ""


@pytest.mark.parametrize("change, needle", [
    ({"schema": 1}, "--calibration x.json: field 'schema' is 1, not a calibration record"),
    ({"candidates": [{"recipe": _RECIPE, "status": "ok"}]}, "field 'candidates.0.id': required key is missing"),
    ({"metric": "speed"}, "field 'metric'"),
    ({"target": {"runtime": "onnxruntime"}}, "field 'target.name'"),
])
def test_a_bad_record_names_the_flag_and_the_field(tmp_path, change, needle):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({**RECORD, **change}))
    with pytest.raises(ConfigError) as err:
        CalibrationRecord.read(path, "--calibration")
    assert needle in str(err.value).replace(str(tmp_path) + "/", "")


def test_unreadable_files_name_the_flag(tmp_path):
    with pytest.raises(ConfigError, match="--calibration-record .*nope.json: not found"):
        CalibrationRecord.read(tmp_path / "nope.json", "--calibration-record")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json: not a readable JSON file"):
        CalibrationRecord.read(tmp_path / "bad.json", "--calibration")


def test_package_reads_the_chosen_candidate_for_its_own_target_only(tmp_path):
    from edgekit.manifest import expected_from_record, load_record
    from edgekit.targets import load_profile

    record = load_record(_write(tmp_path, RECORD), load_profile("host-cpu"))
    expected = expected_from_record(record)
    assert expected["candidate"] == "int8-static-minmax" and expected["n"] == 100
    assert expected["latency_ms"] == _METRICS["latency_ms"] and expected["baseline_accuracy"] == 0.97
    with pytest.raises(ConfigError, match="was made for target host-cpu, not x86-gateway"):
        load_record(_write(tmp_path, RECORD), load_profile("x86-gateway"))
    with pytest.raises(GateError, match="no recipe met the budgets of host-cpu"):
        load_record(_write(tmp_path, {**RECORD, "chosen": None}), load_profile("host-cpu"))
    with pytest.raises(ConfigError, match="field 'chosen' \\(fp16\\) names no candidate"):
        load_record(_write(tmp_path, {**RECORD, "chosen": "fp16"}), load_profile("host-cpu"))
