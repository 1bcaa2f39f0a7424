"""The release calibration run, on real quantization and real ONNX Runtime measurements."""

import json

import pytest

from helpers.cli import assert_clean_error
from helpers.encoder import build_encoder, make_encoder_data
from helpers.paths import CALIB, EVAL, EXAMPLE_ONNX, REPO
from edgekit.calibrate import calibrate, sweep_recipes
from edgekit.datasets import load_dataset
from edgekit.errors import QuantizeError
from edgekit.targets import load_file, load_profile
from edgekit.recipes import Recipe

FAST = ["--runs", "5"]


def _profile(tmp_path, name="small", **changes):
    text = (REPO / "targets" / "host-cpu.toml").read_text().replace('name = "host-cpu"', f'name = "{name}"')
    for old, new in changes.items():
        text = text.replace(old, new)
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_calibrate_digits_records_every_candidate_and_a_choice(edgekit, tmp_path):
    out = tmp_path / "out"
    result = edgekit("calibrate", EXAMPLE_ONNX, "--target", "host-cpu", "--calibration", CALIB,
                     "--eval", EVAL, "-o", out, "--json", *FAST)
    assert result.code == 0, result.stderr
    record = result.json()
    assert record == json.loads((out / "calibration.json").read_text())
    ok = [c for c in record["candidates"] if c["status"] == "ok"]
    # every candidate measured or skipped with its reason; how many the quick probe skips
    # depends on the machine's speed at the time, so no count is asserted beyond one per precision
    assert {c["status"] for c in record["candidates"]} <= {"ok", "skipped", "not-applicable"}
    # what cannot win is skipped with the reason: bigger and slower than a passing candidate, in a
    # quick probe of its own or in the measurement of the same graph with other ranges or weights
    skipped = [c for c in record["candidates"] if c["status"] == "skipped"]
    for c in skipped:
        assert c["error"].startswith("cannot win: ") and " passes at " in c["error"] and not c["passed"]
        assert c["metrics"] == {} or c["metrics"]["probe"]["samples"] > 0 and "fidelity" not in c["metrics"]
    assert {c["recipe"]["method"] for c in ok + skipped} >= {"minmax", "entropy", "percentile"}
    for c in ok:
        m = c["metrics"]
        assert 0 <= m["accuracy"] <= 1 and m["model_mb"] > 0 and m["peak_rss_mb"] > 0
        assert m["latency_ms"]["p50"] > 0 and m["latency_ms"]["n"] >= 5
    precisions = {c["recipe"]["precision"] for c in ok}
    assert precisions == {"fp32", "fp16", "int8-dynamic", "int8-static"}
    chosen = next(c for c in record["candidates"] if c["id"] == record["chosen"])
    assert chosen["passed"] and record["why"]
    import hashlib
    assert record["output"]["sha256"] == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    assert (out / "model.onnx").stat().st_size == pytest.approx(chosen["metrics"]["model_mb"] * 2**20, rel=0.01)  # MB are MiB
    assert record["data"]["calibration"]["sha256"] == load_dataset(CALIB).sha256
    assert record["data"]["eval"]["n"] == len(load_dataset(EVAL))
    assert record["versions"]["onnxruntime"] and record["machine"]["cores"] >= 1
    assert "avx2" in record["machine"]["flags"] or record["machine"]["arch"] != "x86_64"
    fp32 = next(c for c in ok if c["id"] == "fp32")
    int8 = [c for c in ok if c["recipe"]["precision"].startswith("int8")]
    assert all(c["metrics"]["model_mb"] < 0.35 * fp32["metrics"]["model_mb"] for c in int8)
    assert all(abs(c["metrics"]["drop"] - (fp32["metrics"]["accuracy"] - c["metrics"]["accuracy"])) < 1e-6 for c in int8)
    # One typed record (edgekit.calibration_record): read and written again it is the same file; an
    # ONNX model given as such has no converted section, and the search (an ONNX feature) is recorded.
    from edgekit.calibration_record import CalibrationRecord

    text = (out / "calibration.json").read_text()
    assert json.dumps(CalibrationRecord.read(out / "calibration.json", "--x").dump(), indent=2) + "\n" == text
    assert list(record["model"]) == ["path", "sha256", "inputs"] and record["search"]["stopped"] == "not-needed"


def test_unreachable_budget_exits_3_and_still_writes_the_record(edgekit, tmp_path):
    target = _profile(tmp_path, **{"max_latency_ms_p95 = 1000.0": "max_latency_ms_p95 = 0.000001"})
    out = tmp_path / "out"
    result = edgekit("calibrate", EXAMPLE_ONNX, "--target", target, "--calibration", CALIB, "--eval", EVAL,
                     "-o", out, *FAST)
    assert result.code == 3, result.stderr
    assert "no candidate meets the budgets" in result.stderr and "Traceback" not in result.stderr
    record = json.loads((out / "calibration.json").read_text())
    assert record["chosen"] is None
    assert all("max_latency_ms_p95" in c["failed_budgets"][0] for c in record["candidates"] if c["status"] == "ok")
    assert not (out / "model.onnx").exists()


def test_sweep_follows_the_profile():
    gateway = {r.id for r in sweep_recipes(load_profile("x86-gateway"))}
    assert "int8-static-minmax-rr" in gateway and "fp16" not in gateway
    pi4 = {r.id for r in sweep_recipes(load_profile("raspberry-pi-4"))}
    assert not any(i.endswith("-rr") for i in pi4) and "fp16" not in pi4
    assert "fp16" in {r.id for r in sweep_recipes(load_profile("jetson-orin-nano"))}
    assert len(sweep_recipes(load_profile("host-cpu"))) >= 12


def test_encoder_with_integer_inputs_calibrates_on_fidelity(tmp_path):
    model = build_encoder(tmp_path / "encoder.onnx")
    calib = load_dataset(make_encoder_data(tmp_path / "calib.npz", 64, seed=1))
    evald = load_dataset(make_encoder_data(tmp_path / "eval.npz", 64, seed=2))
    profile = load_file(_profile(tmp_path, **{"per_channel = true": "per_channel = false",
                                              "reduce_range = true": "reduce_range = false"}))
    result = calibrate(model, profile, calib, evald, tmp_path / "out", measure_opts={"runs": 5, "min_seconds": 0.05})
    record = result.record.dump()
    assert record["metric"] == "fidelity"
    ok = [c for c in record["candidates"] if c["status"] == "ok"]
    tried = ok + [c for c in record["candidates"] if c["status"] == "skipped"]  # slower and bigger than a passing one
    assert {c["recipe"]["precision"] for c in tried} >= {"fp32", "int8-dynamic", "int8-static"}
    for c in ok:
        fid = c["metrics"]["fidelity"]
        assert c["metrics"]["accuracy"] is None and -1 <= fid["cosine"] <= 1.0 + 1e-6
    fp32 = next(c for c in ok if c["id"] == "fp32")
    assert fp32["metrics"]["fidelity"]["top1_agreement"] == 1.0
    assert result.chosen is not None and (tmp_path / "out" / "model.onnx").exists()


def test_a_failing_recipe_is_recorded_not_fatal(tmp_path, monkeypatch):
    import edgekit.toolchains.onnx.quantize as ort_quantize

    real = ort_quantize.quantize

    def flaky(model, recipe, out, **kw):
        if recipe.method == "entropy":
            raise QuantizeError(f"{recipe.id}: planted failure")
        return real(model, recipe, out, **kw)

    monkeypatch.setattr(ort_quantize, "quantize", flaky)
    profile = load_file(_profile(tmp_path, **{"per_channel = true": "per_channel = false",
                                              "reduce_range = true": "reduce_range = false"}))
    result = calibrate(EXAMPLE_ONNX, profile, load_dataset(CALIB), load_dataset(EVAL), tmp_path / "out",
                       eval_samples=200, measure_opts={"runs": 5, "min_seconds": 0.05})
    failed = [c for c in result.candidates if c.status == "failed"]
    assert [c.id for c in failed] == ["int8-static-entropy"] and "planted failure" in failed[0].error
    assert result.chosen is not None and result.chosen.status == "ok"


def test_bad_input_is_one_line(edgekit, tmp_path):
    common = ["--calibration", CALIB, "--eval", EVAL, "-o", tmp_path / "o"]
    assert_clean_error(edgekit("calibrate", EXAMPLE_ONNX, "--target", "no-such", *common), "no-such")
    assert_clean_error(edgekit("calibrate", tmp_path / "missing.onnx", "--target", "host-cpu", *common), "missing.onnx")
    import numpy as np
    np.savez(tmp_path / "wrong.npz", pixels=np.zeros((4, 1, 8, 8), np.float32))
    result = edgekit("calibrate", EXAMPLE_ONNX, "--target", "host-cpu", "--calibration", tmp_path / "wrong.npz",
                     "--eval", EVAL, "-o", tmp_path / "o")
    assert_clean_error(result, "lacks input 'input'")


def test_the_table_shows_a_tiny_models_sizes_and_times_to_three_significant_digits():
    # with 3 decimals, an iris MLP's 0.00150 and 0.00144 MiB (4% apart) read 0.002 and 0.001 (2x apart)
    from edgekit.calibration_record import CandidateRecord
    from edgekit.cli.calibrate import _row

    sizes = {"fp32": 0.00150, "fp16": 0.00144}
    rows = {k: _row(CandidateRecord(id=k, recipe=Recipe(precision=k), status="ok", passed=True,
                                    metrics={"accuracy": 0.97, "drop": 0.0, "model_mb": mb, "peak_rss_mb": 72.0,
                                             "latency_ms": {"p50": 0.0200, "p95": 0.000412}}), "fp16", "accuracy")
            for k, mb in sizes.items()}
    assert rows["fp32"][3:6] == ["0.00150", "0.0200", "0.000412"] and rows["fp16"][3] == "0.00144"


def test_recipes_not_applicable_for_one_reason_are_said_in_one_line():
    # a CNN's sweep said the same 5 lines for int8-token, int8-token-rr and int8-block, one after another
    from edgekit.calibration_record import CandidateRecord
    from edgekit.cli.calibrate import _shared_reasons

    def na(precision, error, **recipe):
        r = Recipe(precision=precision, **recipe)
        return CandidateRecord(id=r.id, recipe=r, status="not-applicable", error=error.format(r.id))

    candidates = [na("int8-token", "{} quantizes no weight of this model: none"),
                  na("int8-token", "{} quantizes no weight of this model: none", reduce_range=True),
                  na("int8-dynamic", "{} quantized 2 of 2 weights but its model (2916 bytes) is not smaller")]
    shared = _shared_reasons(candidates)
    assert shared == {"int8-token": (["int8-token", "int8-token-rr"], "quantizes no weight of this model: none"),
                      "int8-dynamic": (["int8-dynamic"], "quantized 2 of 2 weights but its model (2916 bytes) is "
                                                         "not smaller")}
