"""Latency of models against the first (FP32), measured alternating so that a change in the
machine's load falls on every model alike.

Each round measures every model once, in turn, each in a fresh process exactly as calibrate
and a device measure it (edgekit.evaluate.measure: warm-up, then at least --runs timed runs of
one sample); a model's figure is the median of its rounds' p50, and its ratio the median of
the per-round ratios to the first model. Run it under the shared timing lock on a shared host:

    flock /tmp/edgekit-timing.lock python benchmarks/latency_pairs.py FP32.onnx CHOSEN.onnx \\
        --eval EVAL.npz [--threads 1] [--rounds 5] [--runs 30]

EVAL is an eval data set (.npz with the models' inputs); prints one line per model and the
machine's load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's edgekit, whatever is installed


def alternate(models: dict, eval_npz: Path, *, rounds: int = 5, runs: int = 30, threads: int = 1) -> dict:
    """{name: {"p50_ms": median of rounds, "ratio": median per-round ratio to the first, "rounds": [...]}}."""
    from edgekit.evaluate import measure

    p50 = {name: [] for name in models}
    for _ in range(rounds):
        for name, path in models.items():
            m = measure(path, eval_npz, runs=runs, min_seconds=0.5, threads=threads)
            p50[name].append(m["latency_ms"]["p50"])
    first = next(iter(models))
    return {name: {"p50_ms": statistics.median(v), "rounds": [round(x, 3) for x in v],
                   "ratio": statistics.median(x / f for x, f in zip(v, p50[first]))} for name, v in p50.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--eval", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--samples", type=int, default=16, help="eval samples the latency pool draws from")
    args = parser.parse_args()
    from edgekit.datasets import load_dataset
    from edgekit.evaluate import prepare_eval_data
    from edgekit.machine import cpu_facts

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        npz = prepare_eval_data(load_dataset(args.eval), args.models[0], Path(tmp) / "eval.npz", samples=args.samples)
        result = alternate({str(m): m for m in args.models}, npz, rounds=args.rounds, runs=args.runs,
                           threads=args.threads)
    facts = cpu_facts()
    print(json.dumps({"machine": f"{facts.get('cpu')}, {facts.get('cores')} cores", "threads": args.threads,
                      "load_before": [round(x, 2) for x in load_before],
                      "load_after": [round(x, 2) for x in os.getloadavg()], "models": result}, indent=1))


if __name__ == "__main__":
    main()
