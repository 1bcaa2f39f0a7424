"""What calibrate skips because it cannot win, and how near-ties are chosen (edgekit.screening,
edgekit.candidates.choose): the rules on candidates as they are measured, then a real run."""

import json

from helpers.paths import CALIB, EVAL, EXAMPLE_ONNX, REPO
from edgekit.candidates import Candidate, choose
from edgekit.recipes import Recipe
from edgekit.screening import SKIP_MARGIN, Screen, measure_order
from edgekit.targets import load_profile


def _measured(precision: str, mb: float, p50: float, cosine: float, passed: bool = True, **recipe) -> Candidate:
    c = Candidate("", Recipe(precision=precision, **recipe))
    c.id, c.status, c.passed = c.recipe.id, "ok", passed
    c.metrics = {"model_mb": mb, "latency_ms": {"p50": p50}, "peak_rss_mb": 100.0, "fidelity": {"cosine": cosine}}
    return c


def test_a_near_tie_on_the_objective_goes_to_the_smaller_model():
    """The Constant-node encoder's case: a MatMul-only step at 0.77x the size, as fast within the
    noise and more faithful, loses to the uniform INT8 candidate at 0.25x."""
    profile = load_profile("host-cpu")
    matmul_only = _measured("int8-dynamic", 66.0, 30.0, 0.9990, include=("MatMul",))
    uniform = _measured("int8-token", 21.9, 31.0, 0.9960)
    slower = _measured("int8-block", 20.0, 60.0, 0.9999, block_size=32)
    chosen, why = choose([matmul_only, uniform, slower], profile)
    assert chosen is uniform and "this is the smallest model" in why
    # of models of about the same size (within the noise), the more faithful
    close = _measured("int8-dynamic", 21.5, 30.5, 0.9970, per_channel=True)
    chosen, why = choose([matmul_only, uniform, close], profile)
    assert chosen is close and "within 5% of the smallest model, and this the most accurate" in why



def test_when_none_passes_the_reason_counts_each_status_by_its_name():
    """A recipe that quantizes nothing is 'not applicable', not a failure: the reason said
    '1 measured, 6 failed' for a tiny model whose INT8 files were no smaller than FP32."""
    fp32 = _measured("fp32", 0.002, 0.01, 1.0, passed=False)
    tried = [Candidate("", Recipe(precision="int8-static", method=m)) for m in ("minmax", "entropy")]
    tried[0].status, tried[1].status = "not-applicable", "failed"
    chosen, why = choose([fp32, *tried], load_profile("host-cpu"))
    assert chosen is None and why.endswith("(1 measured, 1 not applicable, 1 failed)")

def test_what_a_passing_candidate_beats_on_size_and_objective_cannot_win():
    screen = Screen("latency")
    fast = _measured("int8-token", 21.9, 30.0, 0.9965)
    screen.measured.append(fast)
    slow = {"model_mb": 21.8, "latency_ms": {"p50": 30.0 * SKIP_MARGIN * 1.1}, "probe": {"samples": 16, "runs": 10}}
    why = screen.dominated(slow)
    assert why and "int8-token passes at 21.900 MiB, p50 30.000 ms" in why and "in a quick probe" in why
    assert screen.dominated(dict(slow, latency_ms={"p50": 30.0 * SKIP_MARGIN * 0.9})) is None  # within the margin
    assert screen.dominated(dict(slow, model_mb=15.0)) is None  # smaller: it may still win on a tie
    failing = _measured("int8-dynamic", 21.7, 20.0, 0.98, passed=False)
    screen.measured.append(failing)  # a failing candidate dominates nothing
    assert screen.dominated(dict(slow, latency_ms={"p50": 25.0})) is None
    # the other calibrators of a dominated static graph are skipped before they are quantized
    minmax = _measured("int8-static", 21.8, 60.0, 0.65, passed=False, method="minmax")
    screen.measured.append(minmax)
    entropy = Candidate("int8-static-entropy", Recipe(precision="int8-static", method="entropy"))
    assert screen.twin(entropy).startswith("cannot win: int8-static-minmax, the same graph with other activation")
    assert screen.twin(Candidate("pc", Recipe(precision="int8-static", method="entropy", per_channel=True))) is None
    screen.on = False  # --search always: every step in full
    assert screen.twin(entropy) is None and not screen.wants_probe()


def test_fast_candidates_are_measured_first_and_the_table_keeps_the_sweep_order():
    order = [c.recipe.precision for c in measure_order([Candidate(p, Recipe(precision=p)) for p in (
        "fp32", "fp16", "int8-dynamic", "int8-static", "int8-token", "int8-block", "int4-block")])]
    assert order == ["fp32", "int8-token", "int8-dynamic", "int8-block", "int4-block", "fp16", "int8-static"]


def test_objective_size_skips_a_larger_model_without_measuring_it(edgekit, tmp_path):
    target = tmp_path / "small.toml"
    target.write_text((REPO / "targets" / "host-cpu.toml").read_text().replace('name = "host-cpu"', 'name = "small"')
                      .replace('objective = "latency"', 'objective = "size"'))
    out = tmp_path / "out"
    result = edgekit("calibrate", EXAMPLE_ONNX, "--target", target, "--calibration", CALIB, "--eval", EVAL,
                     "-o", out, "--runs", "5")
    assert result.code == 0, result.stderr
    record = json.loads((out / "calibration.json").read_text())
    assert [c["id"] for c in record["candidates"]][:2] == ["fp32", "fp16"]  # the sweep's order
    chosen = next(c for c in record["candidates"] if c["id"] == record["chosen"])
    fp16 = next(c for c in record["candidates"] if c["id"] == "fp16")
    assert fp16["status"] == "skipped" and fp16["metrics"]["probe"] == {"samples": 0, "runs": 0}
    assert fp16["metrics"]["model_mb"] > 1.05 * chosen["metrics"]["model_mb"]
    assert fp16["error"].startswith(f"cannot win: it is {fp16['metrics']['model_mb']:.3f} MiB, and ")
    table = result.stdout.replace("\n", " ")
    assert "skipped" in table and "fp16: skipped, cannot win: it is" in table


def test_the_fastest_passing_candidates_are_timed_again_in_rounds(tmp_path):
    """With objective latency, the passing candidates within RETIME_BAND of the fastest are timed
    again, in turn; their p50 is the median of the first measurement and the rounds'."""
    import statistics

    from edgekit.calibrate import calibrate
    from edgekit.datasets import load_dataset
    from edgekit.screening import RETIME_BAND, RETIME_ROUNDS

    profile = load_profile("host-cpu").model_copy(update={"per_channel": False, "reduce_range": False,
                                                          "precisions": ["fp32", "int8-dynamic", "int8-static"]})
    result = calibrate(EXAMPLE_ONNX, profile, load_dataset(CALIB), load_dataset(EVAL), tmp_path / "out",
                       measure_opts={"runs": 5, "min_seconds": 0.05})
    retimed = [c for c in result.candidates if "p50_rounds" in c.metrics.get("latency_ms", {})]
    assert len(retimed) >= 2 and all(c.passed for c in retimed)
    for c in retimed:
        lat = c.metrics["latency_ms"]
        assert len(lat["p50_rounds"]) == RETIME_ROUNDS + 1 and lat["p50"] == statistics.median(lat["p50_rounds"])
    fastest_before = min(c.metrics["latency_ms"]["p50_rounds"][0] for c in retimed)
    assert all(c.metrics["latency_ms"]["p50"] > RETIME_BAND * fastest_before
               for c in result.candidates if c.passed and c not in retimed)


def test_a_tie_on_accuracy_says_the_size_decided():
    # fp32 and fp16 of an iris MLP, both 0.9733 and within 5% in size: 'and this the most accurate'
    # read as if fp16 were more accurate
    profile = load_profile("host-cpu")
    fp32, fp16 = _measured("fp32", 0.00150, 0.020, 0.9733), _measured("fp16", 0.00144, 0.020, 0.9733)
    chosen, why = choose([fp32, fp16], profile)
    assert chosen is fp16 and why.endswith("and this the most accurate (tied with 1 other to 4 decimals) and the "
                                           "smallest")
