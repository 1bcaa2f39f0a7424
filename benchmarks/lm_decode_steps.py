"""Decode speed of language models against a reference, their steps interleaved one at a time.

Every model is loaded into each process (one ONNX Runtime thread each, edgekit's DecoderLM
with a shared KV buffer); each round prefills the same 128-token prompt into each, then runs
the models' decode steps alternately, the order reversed every step, and sums each model's
CPU time (the ORT thread is the calling thread). A round's ratio is the reference's CPU time
over the model's, so load changes within a round hit both alike: on a loaded 2-core machine
this held ratios to +-0.02 where whole-round alternation (benchmarks/lm_vs_genai.py) moved +-0.1.
With --whole each model runs all its steps of a round at once instead (as a device runs one
model; lm_vs_genai's decode pairs), the models' order reversed every round. The rounds are
shared among one process per rotation of the models' order of loading: the model loaded first
in a process decodes about 5% slower (the same model loaded twice read so), whichever it is.

    python benchmarks/lm_decode_steps.py REF=ref/model.onnx A=a/model.onnx [B=...] [--rounds 6] [--steps 32] [--whole]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path
from statistics import median

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's edgekit


def run(models: dict, rounds: int, steps: int, prompt: np.ndarray, whole: bool = False) -> dict:
    from edgekit.device.lm import open_lm

    lms = {name: open_lm(path, threads=1) for name, path in models.items()}
    for lm in lms.values():
        lm.generate(prompt[:8], 4)  # warm-up: the first runs allocate and pre-pack
    cpu = {name: [] for name in lms}
    for r in range(rounds):
        states, tokens, spent = {}, {}, dict.fromkeys(lms, 0.0)
        for name, lm in lms.items():
            states[name] = lm.start(len(prompt) + steps + 1)
            logits = [lm.feed(states[name], prompt[None, i:i + 64]) for i in range(0, len(prompt), 64)][-1]
            tokens[name] = int(logits[0, -1].argmax())
        order = list(lms)[::-1] if whole and r % 2 else list(lms)
        turns = [[name] * steps for name in order] if whole else [order if i % 2 == 0 else order[::-1]
                                                                   for i in range(steps)]
        for name in (name for turn in turns for name in turn):
            start = time.thread_time()
            logits = lms[name].feed(states[name], np.array([[tokens[name]]], np.int64))
            spent[name] += time.thread_time() - start
            tokens[name] = int(logits[0, -1].argmax())
        for name in lms:
            cpu[name].append(spent[name])
    return cpu


def rotated(models: dict, rounds: int, steps: int, prompt: np.ndarray, whole: bool) -> dict:
    """`run` in one process per rotation of the models' load order, the rounds shared out, their
    CPU times pooled: the model loaded first in a process decodes about 5% slower (the same
    model loaded twice read so), so every model is loaded first alike."""
    names, cpu = list(models), {name: [] for name in models}
    spawn = multiprocessing.get_context("spawn")  # a fresh process: nothing loaded before
    for k in range(len(names)):
        share = rounds // len(names) + (k < rounds % len(names))
        if share:
            with spawn.Pool(1) as pool:
                part = pool.apply(run, ({n: models[n] for n in names[k:] + names[:k]}, share, steps, prompt, whole))
            for name in names:
                cpu[name] += part[name]
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="NAME=model.onnx; the first is the reference")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--whole", action="store_true", help="each model's steps of a round at once, not interleaved")
    args = parser.parse_args()
    models = dict(m.split("=", 1) for m in args.models)
    prompt = (np.arange(128, dtype=np.int64) * 7919) % 1000 + 100  # decode cost does not depend on the tokens
    cpu = rotated(models, args.rounds, args.steps, prompt, args.whole)
    ref = next(iter(models))
    for name, spent in cpu.items():
        rate = median(args.steps / s for s in spent)
        line = f"{name:28} decode {rate:6.1f} tok per CPU-s"
        if name != ref:
            ratios = [r / s for r, s in zip(cpu[ref], spent)]
            line += f"   vs {ref}: {median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f})"
        print(line)


if __name__ == "__main__":
    main()
