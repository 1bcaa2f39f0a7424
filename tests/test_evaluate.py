"""`edgekit evaluate` and the evaluation code it shares with devices, on real ONNX Runtime."""

from __future__ import annotations

import textwrap
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from helpers.cli import assert_clean_error
from helpers.paths import EVAL, EXAMPLE_ONNX, EXAMPLE_PT2, REPO
from edgekit.datasets import load_dataset
from edgekit.device import metrics
from edgekit.device.backends import ModelLoadError, open_backend
from edgekit.device.evaluate import evaluate, time_runs
from edgekit.errors import ModelError
from edgekit.evaluate import evaluate_model, measure, prepare_eval_data

FAST = ("--runs", "5", "--min-seconds", "0.05")


def ort_outputs(model, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """First output in batches of the evaluation's size: dynamic quantization picks its
    activation scales per batch, so the batching is part of the result."""
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def eval_arrays():
    with np.load(EVAL) as npz:
        return npz["input"], npz["labels"]


@pytest.fixture(scope="module")
def q_model(tmp_path_factory):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = tmp_path_factory.mktemp("q") / "q.onnx"
    quantize_dynamic(str(EXAMPLE_ONNX), str(out), weight_type=QuantType.QInt8)
    return out


def fixed_batch_model(path, batch: int, width: int):
    """y = x for a model that only takes batches of exactly `batch` rows."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, width])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "fixed", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


def flatten_model(path):
    """Takes the digits input, outputs (N, 64): a different output shape than the example's (N, 10)."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])
    y = helper.make_tensor_value_info("flat", TensorProto.FLOAT, ["batch", 64])
    graph = helper.make_graph([helper.make_node("Flatten", ["input"], ["flat"])], "flat", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


# -- the acceptance line -------------------------------------------------------------------

def test_evaluate_quantized_against_reference_json(edgekit, q_model):
    result = edgekit("evaluate", q_model, "--data", EVAL, "--reference", EXAMPLE_ONNX, "--json", *FAST)
    assert result.code == 0, result.stderr
    r = result.json()
    for key in ("accuracy", "fidelity", "latency_ms", "load_ms", "peak_rss_mb", "model_mb", "runtime", "n"):
        assert key in r, key
    assert set(r["latency_ms"]) >= {"p50", "p90", "p99", "mean", "n"}
    assert r["latency_ms"]["n"] >= 5 and 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
    x, labels = eval_arrays()
    assert r["n"] == len(labels)
    q_out, ref_out = ort_outputs(q_model, x), ort_outputs(EXAMPLE_ONNX, x)
    # Every metric equals an independent computation with plain onnxruntime and numpy.
    assert r["accuracy"] == pytest.approx(np.mean(q_out.argmax(1) == labels))
    assert r["reference"]["accuracy"] == pytest.approx(np.mean(ref_out.argmax(1) == labels))
    assert r["accuracy_drop"] == pytest.approx(r["reference"]["accuracy"] - r["accuracy"])
    cos = np.sum(q_out * ref_out, 1) / (np.linalg.norm(q_out, axis=1) * np.linalg.norm(ref_out, axis=1))
    assert r["fidelity"]["cosine"] == pytest.approx(cos.mean(), abs=1e-5)
    assert r["fidelity"]["top1_agreement"] == pytest.approx(np.mean(q_out.argmax(1) == ref_out.argmax(1)))
    sqnr = 10 * np.log10(np.sum(ref_out.astype(np.float64) ** 2) / np.sum((ref_out - q_out).astype(np.float64) ** 2))
    assert r["fidelity"]["sqnr_db"] == pytest.approx(sqnr, abs=0.01)
    assert r["model_mb"] == pytest.approx(q_model.stat().st_size / 2**20)
    assert r["runtime"]["name"] == "onnxruntime" and r["runtime"]["version"] == ort.__version__


def test_table_output(edgekit):
    result = edgekit("evaluate", EXAMPLE_ONNX, "--data", EVAL, "--samples", "50", *FAST)
    assert result.code == 0, result.stderr
    assert "accuracy" in result.stdout and "latency p50 ms" in result.stdout and "50 samples" in result.stdout


# -- the device code path, in process ------------------------------------------------------

def test_accuracy_equals_plain_onnxruntime():
    x, labels = eval_arrays()
    r = evaluate(str(EXAMPLE_ONNX), str(EVAL), runs=3, min_seconds=0.0, warmup=1)
    assert r["fidelity"] is None and r["n"] == len(labels)
    assert r["accuracy"] == pytest.approx(np.mean(ort_outputs(EXAMPLE_ONNX, x).argmax(1) == labels))


def test_samples_limits_the_set():
    x, labels = eval_arrays()
    r = evaluate(str(EXAMPLE_ONNX), str(EVAL), samples=100, batch_size=7, runs=3, min_seconds=0.0)
    assert r["n"] == 100
    assert r["accuracy"] == pytest.approx(np.mean(ort_outputs(EXAMPLE_ONNX, x[:100]).argmax(1) == labels[:100]))


def test_fixed_batch_model_is_fed_padded_batches(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 5)).astype(np.float32)  # 10 rows for a model taking exactly 4
    labels = x.argmax(1)
    labels[:3] = (labels[:3] + 1) % 5  # 3 of 10 wrong
    np.savez(tmp_path / "d.npz", x=x, labels=labels)
    model = fixed_batch_model(tmp_path / "fixed.onnx", 4, 5)
    r = evaluate(str(model), str(tmp_path / "d.npz"), runs=3, min_seconds=0.0)
    assert r["n"] == 10 and r["accuracy"] == pytest.approx(0.7)


def test_latency_runs_at_least_runs_and_min_seconds_and_stops_at_max():
    backend = open_backend(str(EXAMPLE_ONNX))
    x, _ = eval_arrays()
    arrays = {"input": x}
    assert len(time_runs(backend, arrays, len(x), warmup=0, runs=7, min_seconds=0.0, max_seconds=5)) == 7
    # min_seconds keeps it going past `runs`; a sub-millisecond model runs many times in 0.1 s.
    assert len(time_runs(backend, arrays, len(x), warmup=0, runs=1, min_seconds=0.1, max_seconds=5)) > 1
    capped = time_runs(backend, arrays, len(x), warmup=0, runs=10**9, min_seconds=0.0, max_seconds=0.1)
    assert 1 < len(capped) < 10**9


def test_the_runtime_gets_no_more_threads_than_the_cores_and_the_report_says_both(tmp_path):
    """A profile written for a 4-core device, run on one core: ONNX Runtime is given 1 thread
    (its session options say so) and the runtime block records what was asked and what was used."""
    import json
    import subprocess
    import sys

    code = textwrap.dedent(f"""
        import json, os
        os.sched_setaffinity(0, {{sorted(os.sched_getaffinity(0))[0]}})
        from edgekit.device.backends import open_backend
        b = open_backend({str(EXAMPLE_ONNX)!r}, threads=4)
        print(json.dumps([b.describe(), b._session.get_session_options().intra_op_num_threads]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    described, given = json.loads(out.stdout)
    assert (described["threads"], described["threads_asked"], given) == (1, 4, 1)
    assert open_backend(str(EXAMPLE_ONNX)).describe()["threads"] == 0  # 0 asks for the runtime's default


def test_metrics_match_their_definitions():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((20, 6))
    out = ref + 0.1 * rng.standard_normal((20, 6))
    f = metrics.fidelity([out], ref)
    cos = np.sum(out * ref, 1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
    assert f["cosine"] == pytest.approx(cos.mean())
    assert f["top1_agreement"] == pytest.approx(np.mean(out.argmax(1) == ref.argmax(1)))
    assert f["sqnr_db"] == pytest.approx(10 * np.log10(np.sum(ref**2) / np.sum((ref - out) ** 2)))
    same = metrics.fidelity(ref, ref)
    assert same == {"top1_agreement": 1.0, "cosine": pytest.approx(1.0), "sqnr_db": None}  # no finite SQNR
    labels = ref.argmax(1)
    labels[:5] = (labels[:5] + 1) % 6
    assert metrics.accuracy([ref], labels) == pytest.approx(0.75)
    seconds = list(rng.random(101))
    lat = metrics.latency_summary(seconds)
    assert lat["n"] == 101 and lat["p50"] == pytest.approx(np.median(seconds) * 1000)
    assert lat["mean"] == pytest.approx(np.mean(seconds) * 1000)


def test_a_broken_tflite_model_is_a_load_error(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"TFL3")
    with pytest.raises(ModelLoadError, match="cannot load the model"):
        open_backend(str(model))


# -- the host side -------------------------------------------------------------------------

def test_prepare_writes_inputs_labels_and_reference(tmp_path):
    data = load_dataset(EVAL)
    dest = prepare_eval_data(data, EXAMPLE_ONNX, tmp_path / "e.npz", reference=EXAMPLE_ONNX, samples=300)
    with zipfile.ZipFile(dest) as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    x, labels = eval_arrays()
    with np.load(dest) as npz:
        assert sorted(npz.files) == ["_reference", "input", "labels"]
        assert np.array_equal(npz["input"], x[:300]) and np.array_equal(npz["labels"], labels[:300])
        np.testing.assert_allclose(npz["_reference"], ort_outputs(EXAMPLE_ONNX, x[:300]), rtol=1e-5, atol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name != "e.npz"]  # its scratch files are gone


def test_model_against_itself_is_faithful():
    r = evaluate_model(EXAMPLE_ONNX, EVAL, reference=EXAMPLE_ONNX, runs=5, min_seconds=0.05)
    assert r["fidelity"]["top1_agreement"] == 1.0
    assert r["fidelity"]["cosine"] == pytest.approx(1.0, abs=1e-6)
    sqnr = r["fidelity"]["sqnr_db"]
    assert sqnr is None or sqnr > 100  # None (no noise at all) when bit-identical
    assert r["accuracy_drop"] == 0.0
    assert r["latency_ms"]["n"] >= 5


def test_encoder_with_integer_inputs_and_no_labels_gets_fidelity(tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    from helpers.encoder import build_encoder, make_encoder_data

    fp32 = build_encoder(tmp_path / "enc.onnx")
    q = tmp_path / "enc-q.onnx"
    quantize_dynamic(str(fp32), str(q))
    data = make_encoder_data(tmp_path / "tokens.npz", 100)
    r = evaluate_model(q, data, reference=fp32, runs=3, min_seconds=0.0)
    assert r["accuracy"] is None and "reference" not in r and r["n"] == 100
    with np.load(data) as npz:
        batches = [{k: npz[k][i:i + 64] for k in npz.files} for i in range(0, 100, 64)]
    ref, out = (np.concatenate([ort.InferenceSession(str(m)).run(None, b)[0] for b in batches]) for m in (fp32, q))
    assert r["fidelity"]["top1_agreement"] == pytest.approx(np.mean(ref.argmax(1) == out.argmax(1)))
    assert 0.5 < r["fidelity"]["cosine"] <= 1.0 + 1e-9


def test_peak_rss_is_the_evaluation_alone():
    # A large parent must not leak into the child's figure (ru_maxrss survives exec).
    ballast = np.ones(400 * 2**20 // 8)
    r = measure(EXAMPLE_ONNX, EVAL, runs=5, min_seconds=0.0)
    assert 0 < r["peak_rss_mb"] < 400
    del ballast


def test_measure_of_a_model_that_does_not_load(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a graph")
    with pytest.raises(ModelError, match="bad.onnx"):
        measure(bad, EVAL, runs=1, min_seconds=0.0)


# -- bad input -----------------------------------------------------------------------------

def test_data_lacking_an_input(edgekit, tmp_path):
    x, labels = eval_arrays()
    np.savez(tmp_path / "d.npz", pixels=x, labels=labels)
    assert_clean_error(edgekit("evaluate", EXAMPLE_ONNX, "--data", tmp_path / "d.npz"), "d.npz", "lacks input 'input'")


def test_data_with_the_wrong_shape(edgekit, tmp_path):
    np.savez(tmp_path / "d.npz", input=np.zeros((10, 1, 7, 7), np.float32))
    assert_clean_error(edgekit("evaluate", EXAMPLE_ONNX, "--data", tmp_path / "d.npz"), "d.npz", "shape")


def test_data_with_nan(edgekit, tmp_path):
    x, labels = eval_arrays()
    x = x.copy()
    x[3, 0, 2, 2] = np.nan
    np.savez(tmp_path / "d.npz", input=x, labels=labels)
    assert_clean_error(edgekit("evaluate", EXAMPLE_ONNX, "--data", tmp_path / "d.npz"), "d.npz", "NaN")


def test_missing_model(edgekit, tmp_path):
    assert_clean_error(edgekit("evaluate", tmp_path / "none.onnx", "--data", EVAL), "none.onnx", "not found")


def test_corrupt_model(edgekit, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(EXAMPLE_ONNX.read_bytes()[:500])
    assert_clean_error(edgekit("evaluate", bad, "--data", EVAL), "bad.onnx")


def test_missing_data(edgekit, tmp_path):
    assert_clean_error(edgekit("evaluate", EXAMPLE_ONNX, "--data", tmp_path / "no.npz"), "no.npz", "not found")


def test_reference_with_another_output_shape(edgekit, tmp_path):
    other = flatten_model(tmp_path / "flat.onnx")
    result = edgekit("evaluate", EXAMPLE_ONNX, "--data", EVAL, "--reference", other)
    assert_clean_error(result, "flat.onnx", "model.onnx", "(N, 64)", "(N, 10)")


# -- the reference, as quantize takes models ------------------------------------------------

def test_reference_may_be_a_pt2(edgekit):
    pytest.importorskip("torch")
    result = edgekit("evaluate", EXAMPLE_ONNX, "--data", EVAL, "--reference", EXAMPLE_PT2, "--json", *FAST)
    assert result.code == 0, result.stderr
    r = result.json()
    x, labels = eval_arrays()
    # model.pt2 is the function model.onnx was exported from: the same accuracy, the same outputs.
    assert r["reference"]["model"] == str(EXAMPLE_PT2)
    assert r["reference"]["accuracy"] == pytest.approx(np.mean(ort_outputs(EXAMPLE_ONNX, x).argmax(1) == labels))
    assert r["fidelity"]["top1_agreement"] == 1.0 and r["fidelity"]["cosine"] == pytest.approx(1.0, abs=1e-5)


def test_reference_may_be_a_module_factory(edgekit, tmp_path):
    torch = pytest.importorskip("torch")
    (tmp_path / "refpkg").mkdir()
    (tmp_path / "refpkg" / "__init__.py").write_text("")
    (tmp_path / "refpkg" / "nets.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def build():
            torch.manual_seed(0)
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    """))
    result = edgekit("evaluate", EXAMPLE_ONNX, "--data", EVAL, "--reference", "refpkg.nets:build", "--json", *FAST,
                     env={"PYTHONPATH": str(tmp_path)})  # importable from there; edgekit from the repository
    assert result.code == 0, result.stderr
    r = result.json()
    x, labels = eval_arrays()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert r["reference"]["model"] == "refpkg.nets:build"
    assert r["reference"]["accuracy"] == pytest.approx(np.mean(ref.argmax(1) == labels))
    assert r["fidelity"]["top1_agreement"] == pytest.approx(np.mean(ref.argmax(1) == ort_outputs(EXAMPLE_ONNX, x).argmax(1)))


def test_a_reference_that_is_no_model(edgekit, tmp_path):
    assert_clean_error(edgekit("evaluate", EXAMPLE_ONNX, "--data", EVAL, "--reference", tmp_path / "none.pt2"),
                       "none.pt2", "not found")
    assert_clean_error(edgekit("evaluate", EXAMPLE_ONNX, "--data", EVAL, "--reference", "model.h5"),
                       "model.h5", "not a model")


def test_bad_option_values(edgekit):
    assert_clean_error(edgekit("evaluate", EXAMPLE_ONNX, "--data", EVAL, "--samples", "0"), "--samples")
    assert_clean_error(edgekit("evaluate", EXAMPLE_ONNX, "--data", EVAL, "--runs", "0"), "--runs")
    assert_clean_error(edgekit("evaluate", EXAMPLE_ONNX, "--data", EVAL, "--threads", "-1"), "--threads")


def _ids_first(path, scale: float):
    """A model whose first output is an integer pass-through of its input (as some exports
    give token ids back) and whose second is the float result, x * scale + 1."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])
    nodes = [helper.make_node("Cast", ["x"], ["ids"], to=TensorProto.INT64),
             helper.make_node("Mul", ["x", "s"], ["xs"]), helper.make_node("Add", ["xs", "one"], ["y"])]
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [scale]), helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])]
    model = helper.make_model(helper.make_graph(nodes, "ids-first", [x], [ids, y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_fidelity_reads_the_first_float_output_not_an_integer_pass_through(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(32, 8)).astype(np.float32) * 5)
    reference, other = _ids_first(tmp_path / "ref.onnx", 1.0), _ids_first(tmp_path / "other.onnx", -1.0)
    r = evaluate_model(other, tmp_path / "d.npz", reference=reference, runs=2, min_seconds=0.0)
    assert r["fidelity"]["cosine"] < 0.5  # y = -x + 1 against x + 1; the ids agree exactly
    same = evaluate_model(reference, tmp_path / "d.npz", reference=reference, runs=2, min_seconds=0.0)
    assert same["fidelity"]["cosine"] == pytest.approx(1.0, abs=1e-6)


def test_a_failed_run_is_one_line_without_the_runtimes_coloured_log(edgekit, tmp_path):
    # token ids past an embedding table: ONNX Runtime's error came twice, the second time as its
    # log line in terminal colours ("(stderr: \x1b[1;31m2026-... [E:onnxruntime:...] ...\x1b[m)")
    table = helper.make_tensor("table", TensorProto.FLOAT, [4, 2], np.arange(8, dtype=np.float32))
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["logits"], axis=0)], "embed",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])], [table])
    model = tmp_path / "embed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    np.savez(tmp_path / "ids.npz", ids=np.full(8, 99, np.int64))
    result = edgekit("evaluate", model, "--data", tmp_path / "ids.npz")
    assert result.code == 1 and "Traceback" not in result.stderr
    assert "idx=99" in result.stderr and "\x1b" not in result.stderr and "stderr:" not in result.stderr
    assert result.stderr.count("out of data bounds") == 1


def test_without_labels_or_reference_it_says_why_there_is_no_quality(edgekit, tmp_path):
    # the table's accuracy read '-' with no word of why
    with np.load(EVAL) as npz:
        np.savez(tmp_path / "unlabelled.npz", input=npz["input"][:50])
    result = edgekit("evaluate", EXAMPLE_ONNX, "--data", tmp_path / "unlabelled.npz", *FAST)
    assert result.code == 0, result.stderr
    assert "no accuracy or fidelity: the data has no labels and no --reference was given" in result.stdout
    labelled = edgekit("evaluate", EXAMPLE_ONNX, "--data", EVAL, *FAST)
    assert "no accuracy or fidelity" not in labelled.stdout
