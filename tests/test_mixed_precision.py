"""Accuracy-aware mixed precision, on real quantization and real ONNX Runtime measurements.

The model is the test encoder whose last feed-forward block carries outliers: per-tensor
INT8 crushes it (cosine ~0.95-0.97), keeping that block in float restores it (~0.9995).
"""

import json

import pytest

from helpers.cli import assert_clean_error
from helpers.encoder import OUTLIER_PATTERN, build_encoder, make_encoder_data
from helpers.paths import REPO
from edgekit.calibrate import calibrate, sweep_recipes
from edgekit.datasets import load_dataset
from edgekit.search.context import SearchOptions
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
                     'precisions = ["fp32", "fp16", "int8-dynamic", "int8-static", "int8-token", "int8-block", "int4-block"]':
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
                     "--eval", evald, "-o", out, "--exclude", "layer0/attn/softmax", *FAST, env={"COLUMNS": "80"})
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
    growing = [s for s in search["steps"] if s["kind"] != "prune"]  # up to the first passing step
    assert growing[-1]["passed"] and all(s["cosine"] < 0.99 for s in growing[:-1])
    assert search["result"] in steps and steps[search["result"]]["passed"]
    assert len(step["float_nodes"]) <= search["max_float_nodes"]
    # re-ranking was decided on this run's own clock
    rerank = search["rerank"]
    assert rerank["rank_seconds"] > 0 and rerank["step_seconds"] > 0
    assert rerank["enabled"] == (rerank["rank_seconds"] <= rerank["step_seconds"])
    assert len(search["reranks"]) == (sum(not s["passed"] for s in growing if s["kind"] == "nodes")
                                      if rerank["enabled"] else 0)
    assert record["output"]["sha256"] == __import__("hashlib").sha256((out / "model.onnx").read_bytes()).hexdigest()

    # the table shows the search, in 80 columns, node names whole
    shown = result.stdout[result.stdout.index(f"mixed-precision search from {search['base']}"):]
    assert all(len(line.rstrip()) <= 80 for line in shown.splitlines()), shown
    assert step["float_nodes"][0] in shown and "search stopped" in shown
    assert all(s["candidate"] in shown for s in search["steps"])


def test_stopped_by_max_minutes_still_writes_the_best_passing_candidate(edgekit, encoder, tmp_path):
    model, calib, evald = encoder
    out = tmp_path / "out"
    result = edgekit("calibrate", model, "--target", _int8_profile(tmp_path, 0.95), "--calibration", calib,
                     "--eval", evald, "-o", out, "--search", "always", "--max-minutes", "0", "--json", *FAST)
    assert result.code == 0, result.stderr
    record = result.json()
    assert record["search"]["stopped"] == "time" and record["search"]["steps"] == []
    passing = [c for c in record["candidates"] if c["passed"]]
    assert passing and record["chosen"] in {c["id"] for c in passing}
    assert (out / "model.onnx").is_file()


def test_an_interrupted_search_keeps_what_it_measured(encoder, tmp_path, monkeypatch):
    """Ctrl-C in the middle of the search: the steps measured so far are candidates, and the
    best passing one is written."""
    import edgekit.toolchains.onnx.quantize as ort_quantize

    real = ort_quantize.quantize

    def interrupted_at_the_third_node_step(model, recipe, out, **kw):
        if len(recipe.exclude) >= 4:
            raise KeyboardInterrupt
        return real(model, recipe, out, **kw)

    monkeypatch.setattr(ort_quantize, "quantize", interrupted_at_the_third_node_step)
    model, calib, evald = encoder
    result = calibrate(model, load_file(_int8_profile(tmp_path, 0.95)), load_dataset(calib), load_dataset(evald),
                       tmp_path / "out", measure_opts={"runs": 5, "min_seconds": 0.05},
                       search=SearchOptions(mode="always"))
    search = result.record.search
    assert search["stopped"] == "interrupted"
    assert [s["kind"] for s in search["steps"]] == ["op-types", "nodes", "nodes"]
    ids = {c.id for c in result.candidates}
    assert all(s["candidate"] in ids for s in search["steps"])
    assert result.chosen is not None and result.chosen.passed and result.model_path.is_file()
    # keeping the most sensitive node in float helps
    base = next(c for c in result.candidates if c.id == search["base"])
    assert search["steps"][1]["cosine"] > base.metrics["fidelity"]["cosine"]


def test_noise_that_shows_in_a_node_kept_in_float_is_traced_back_to_where_it_was_made(encoder, tmp_path):
    """With fc2 kept in float, fc1's crushed channels show only at fc2's output: the ranking
    that knows fc2 is kept blames fc1 for it; the one that does not, does not."""
    from edgekit.toolchains.onnx.quantize import prepared, quantize
    from edgekit.recipes import Recipe
    from edgekit.search.sensitivity import rank_nodes

    model, calib, _ = encoder
    fc1, fc2 = OUTLIER_BLOCK + "fc1", OUTLIER_BLOCK + "fc2"
    data = load_dataset(calib)
    float_model = prepared(model, tmp_path / "float.onnx")
    quantized = quantize(model, Recipe(precision="int8-dynamic", exclude=(fc2,)), tmp_path / "q.onnx", calibration=data)
    blind = rank_nodes(float_model, quantized, data, tmp_path / "blind")
    traced = rank_nodes(float_model, quantized, data, tmp_path / "traced", kept=[fc2])
    assert fc2 not in {n for e in blind + traced for n in e.nodes}  # not quantized, not ranked
    assert blind[0].nodes != (fc1,) and all(e.traced == 0 for e in blind)
    assert traced[0].nodes == (fc1,) and traced[0].traced > blind[0].score
    untouched = {e.nodes: e.score for e in blind}
    assert all(e.score == pytest.approx(untouched[e.nodes]) for e in traced[1:] if e.traced == 0)


def test_pruning_gives_back_the_nodes_the_passing_step_did_not_need(encoder, tmp_path):
    """Growing on the first ranking keeps fc2 (blamed for the outlier noise) and more; fc1,
    whose per-tensor weights the outliers crush, passes once kept in float; pruning then
    gives back to INT8 every kept node the budget does not need."""
    model, calib, evald = encoder
    result = calibrate(model, load_file(_int8_profile(tmp_path, 0.99)), load_dataset(calib), load_dataset(evald),
                       tmp_path / "out", measure_opts={"runs": 5, "min_seconds": 0.05},
                       search=SearchOptions(rerank=False))
    search = result.record.search
    by_id = {c.id: c for c in result.candidates}
    assert len(by_id) == len(result.candidates)  # every step is a candidate of its own
    growing = [s for s in search["steps"] if s["kind"] == "nodes"]
    first_pass = next(s for s in growing if s["passed"])
    pruning = search["pruning"]
    assert search["stopped"] == "budget" and pruning["from"] == first_pass["candidate"] == growing[-1]["candidate"]
    assert search["reranks"] == [] and not search["rerank"]["enabled"]

    end = by_id[search["result"]]
    assert len(pruning["float_nodes"]) < len(first_pass["float_nodes"])
    assert sorted(pruning["float_nodes"] + pruning["returned"]) == sorted(first_pass["float_nodes"])
    assert end.passed and list(end.recipe.exclude) == pruning["float_nodes"]
    assert end.metrics["model_mb"] < by_id[first_pass["candidate"]].metrics["model_mb"]
    for s in search["steps"]:  # a change is kept exactly when the budgets still hold
        if s["kind"] == "prune":
            assert s["accepted"] == s["passed"] and s["candidate"] in by_id
    # the node where the outliers are crushed stays; the one noise was first blamed on goes
    assert "layer1/ffn/fc1" in pruning["float_nodes"] and search["ranking"][0]["nodes"][0] in pruning["returned"]


def test_a_search_stopped_while_pruning_keeps_the_best_passing_candidate(encoder, tmp_path, monkeypatch):
    """--max-minutes reached once growing has passed: pruning stops before its first step, and
    the run still chooses among what it measured."""
    import time

    import edgekit.search.steps

    late = []

    def clock():  # the search's clock jumps past the deadline after the first passing step
        return time.monotonic() + (1e6 if late else 0.0)

    def on_candidate(c, i, n):
        if c.passed and "-x" in c.id:
            late.append(c.id)

    monkeypatch.setattr(edgekit.search.steps, "now", clock)
    model, calib, evald = encoder
    result = calibrate(model, load_file(_int8_profile(tmp_path, 0.99)), load_dataset(calib), load_dataset(evald),
                       tmp_path / "out", measure_opts={"runs": 5, "min_seconds": 0.05}, on_candidate=on_candidate,
                       search=SearchOptions(max_minutes=60))
    search = result.record.search
    assert search["stopped"] == "time" and "while pruning" in search["why"]
    assert search["pruning"]["from"] == search["pruning"]["result"] == late[0] == search["steps"][-1]["candidate"]
    assert [s["kind"] for s in search["steps"]].count("prune") == 0
    assert result.chosen is not None and result.chosen.id == late[0] and result.model_path.is_file()


def test_bad_search_flags_are_one_line(edgekit, encoder, tmp_path):
    model, calib, evald = encoder
    common = [model, "--target", "host-cpu", "--calibration", calib, "--eval", evald, "-o", tmp_path / "o"]
    assert_clean_error(edgekit("calibrate", *common, "--search", "sometimes"), "--search 'sometimes'")
    assert not (tmp_path / "o").exists()
