"""Accuracy-aware mixed precision, on real quantization and real ONNX Runtime measurements.

The model is the test encoder whose last feed-forward block carries outliers: per-tensor
INT8 crushes it (cosine ~0.95-0.97), keeping that block in float restores it (~0.9995).
"""

import json

import pytest

from conftest import REPO, assert_clean_error
from encoder import OUTLIER_PATTERN, build_encoder, make_encoder_data
from edgekit.calibrate import calibrate, sweep_recipes
from edgekit.datasets import load_dataset
from edgekit.mixed import SearchOptions
from edgekit.targets import load_file

FAST = ["--runs", "5"]
OUTLIER_BLOCK = OUTLIER_PATTERN.rstrip("*")  # "layer1/ffn/"


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """The outlier encoder, its calibration and eval sets."""
    d = tmp_path_factory.mktemp("encoder")
    return (build_encoder(d / "encoder.onnx", outlier_layer=True), make_encoder_data(d / "calib.npz", 64, seed=1),
            make_encoder_data(d / "eval.npz", 64, seed=2))


def _int8_profile(tmp_path, min_cosine: float):
    """host-cpu's budgets, INT8 only (so FP32 and FP16 cannot win), per-tensor only."""
    text = (REPO / "targets" / "host-cpu.toml").read_text()
    for old, new in {'name = "host-cpu"': 'name = "int8-only"',
                     'precisions = ["fp32", "fp16", "int8-dynamic", "int8-static"]':
                         'precisions = ["int8-dynamic", "int8-static"]',
                     "per_channel = true": "per_channel = false", "reduce_range = true": "reduce_range = false",
                     "min_fidelity_cosine = 0.95": f"min_fidelity_cosine = {min_cosine}"}.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "int8-only.toml"
    path.write_text(text)
    return path


def test_fp32_is_a_baseline_not_a_candidate_when_the_profile_disallows_it(tmp_path):
    recipes = sweep_recipes(load_file(_int8_profile(tmp_path, 0.99)))
    assert recipes and {r.precision for r in recipes} == {"int8-dynamic", "int8-static"}


def test_no_uniform_recipe_meets_the_budget_but_a_mixed_one_does(edgekit, encoder, tmp_path):
    model, calib, evald = encoder
    out = tmp_path / "out"
    result = edgekit("calibrate", model, "--target", _int8_profile(tmp_path, 0.99), "--calibration", calib,
                     "--eval", evald, "-o", out, "--exclude", "layer0/attn/softmax", *FAST)
    assert result.code == 0, result.stderr
    record = json.loads((out / "calibration.json").read_text())
    search = record["search"]
    steps = {s["candidate"]: s for s in search["steps"]}
    uniform = [c for c in record["candidates"] if c["id"] not in steps]
    assert "fp32" not in {c["recipe"]["precision"] for c in record["candidates"]}
    assert record["baseline"]["fidelity"]["cosine"] == pytest.approx(1.0)  # measured all the same
    assert uniform and all(c["status"] == "ok" and not c["passed"] for c in uniform)
    assert all(b.startswith("min_fidelity_cosine") for c in uniform for b in c["failed_budgets"])

    # the ranking names the outlier block first; the search stops at the budget
    assert search["base"] in {c["id"] for c in uniform} and search["stopped"] == "budget"
    assert search["ranking"][0]["nodes"][0].startswith(OUTLIER_BLOCK)
    assert all(r["score"] > 0 for r in search["ranking"])
    assert "layer0/attn/softmax" not in {n for r in search["ranking"] for n in r["nodes"]}

    # the chosen candidate is a search step: its nodes kept in float, its metrics, the user's --exclude
    chosen = next(c for c in record["candidates"] if c["id"] == record["chosen"])
    step = steps[chosen["id"]]
    assert chosen["passed"] and chosen["metrics"]["fidelity"]["cosine"] >= 0.99
    assert step["passed"] and step["cosine"] == chosen["metrics"]["fidelity"]["cosine"]
    assert step["float_nodes"] and any(n.startswith(OUTLIER_BLOCK) for n in step["float_nodes"])
    assert chosen["recipe"]["exclude"] == ["layer0/attn/softmax"] + step["float_nodes"]
    assert all(s["cosine"] < 0.99 for s in search["steps"] if s is not step)
    assert len(step["float_nodes"]) <= search["max_float_nodes"]
    assert record["output"]["sha256"] == __import__("hashlib").sha256((out / "model.onnx").read_bytes()).hexdigest()

    # the table shows the search
    assert f"mixed-precision search from {search['base']}" in result.stdout
    assert step["float_nodes"][0] in result.stdout and "search stopped" in result.stdout


def test_stopped_by_max_minutes_still_writes_the_best_passing_candidate(edgekit, encoder, tmp_path):
    model, calib, evald = encoder
    out = tmp_path / "out"
    result = edgekit("calibrate", model, "--target", _int8_profile(tmp_path, 0.95), "--calibration", calib,
                     "--eval", evald, "-o", out, "--search", "always", "--max-minutes", "0.01", "--json", *FAST)
    assert result.code == 0, result.stderr
    record = result.json()
    assert record["search"]["stopped"] == "time" and record["search"]["steps"] == []
    passing = [c for c in record["candidates"] if c["passed"]]
    assert passing and record["chosen"] in {c["id"] for c in passing}
    assert (out / "model.onnx").is_file()


def test_an_interrupted_search_keeps_what_it_measured(encoder, tmp_path, monkeypatch):
    """Ctrl-C in the middle of the search: the steps measured so far are candidates, and the
    best passing one is written."""
    import edgekit.quantize

    real = edgekit.quantize.quantize

    def interrupted_at_the_third_node_step(model, recipe, out, **kw):
        if len(recipe.exclude) >= 4:
            raise KeyboardInterrupt
        return real(model, recipe, out, **kw)

    monkeypatch.setattr(edgekit.quantize, "quantize", interrupted_at_the_third_node_step)
    model, calib, evald = encoder
    result = calibrate(model, load_file(_int8_profile(tmp_path, 0.95)), load_dataset(calib), load_dataset(evald),
                       tmp_path / "out", measure_opts={"runs": 5, "min_seconds": 0.05},
                       search=SearchOptions(mode="always"))
    search = result.record["search"]
    assert search["stopped"] == "interrupted"
    assert [s["kind"] for s in search["steps"]] == ["op-types", "nodes", "nodes"]
    ids = {c.id for c in result.candidates}
    assert all(s["candidate"] in ids for s in search["steps"])
    assert result.chosen is not None and result.chosen.passed and result.model_path.is_file()
    # keeping the most sensitive node in float helps
    base = next(c for c in result.candidates if c.id == search["base"])
    assert search["steps"][1]["cosine"] > base.metrics["fidelity"]["cosine"]


def test_bad_search_flags_are_one_line(edgekit, encoder, tmp_path):
    model, calib, evald = encoder
    common = [model, "--target", "host-cpu", "--calibration", calib, "--eval", evald, "-o", tmp_path / "o"]
    assert_clean_error(edgekit("calibrate", *common, "--search", "sometimes"), "--search 'sometimes'")
    assert not (tmp_path / "o").exists()
