"""Skipping the candidates that cannot win, so that calibrate measures in full only what may be chosen.

A full measurement (the whole eval set, then the latency runs) costs the most of a
candidate after quantizing, and on a real encoder a sweep of some twenty recipes spent most
of its time on candidates that were bigger and slower than one already passing. So:

    measure_order(cs)   the sweep measured in an order that finds fast passing candidates
                        early (fp32, the transformer and dynamic INT8 recipes, then the
                        weight-only blocks, FP16, and static INT8 last, its calibrators in turn);
                        the table keeps the sweep's order
    probe_set(...)      the first PROBE_SAMPLES of the eval set, for a quick look
    Screen              what was measured so far, and why a candidate cannot win:
      .twin(c)          before quantizing: a candidate with the same graph (another calibrator,
                        or 7-bit weights) is measured and dominated, so this one is too
      .dominated(m)     a passing candidate is no larger (within NOISE) and better on the
                        objective by more than SKIP_MARGIN (size: known exactly once quantized,
                        so by more than NOISE; latency and memory: from a quick probe)

    finalists(cs, obj)  with objective latency, the passing candidates within RETIME_BAND of
                        the fastest: calibrate times them again in RETIME_ROUNDS rounds, each
                        round every finalist in turn, and their p50 becomes the median of the
                        first measurement and the rounds' (`latency_ms.p50_rounds`), so that a
                        change in the host's load while the sweep ran does not pick the winner

A candidate that cannot win is `skipped`: its reason in the record, its probe's size,
latency, memory and runtime in its metrics (under `probe`, with the samples and runs it took), no
accuracy or cosine. choose() never picks one; the search never starts from one, and stops
growing at a step that cannot win (more nodes in float only make it bigger and slower).
`--search always` asks for every step in full, so its steps are not screened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from edgekit.candidates import NOISE, Candidate, objective_value

__all__ = ["Screen", "measure_order", "probe_set", "probe_metrics", "finalists", "RETIME_ROUNDS", "RETIME_BAND",
           "SKIP_MARGIN", "PROBE_SAMPLES", "PROBE_RUNS"]

SKIP_MARGIN = 1.3  # a probe this much slower (or heavier) than a passing candidate cannot win, noise and all
PROBE_SAMPLES = 16  # eval samples a probe scores
PROBE_RUNS = 10  # latency runs of a probe (at least, and at least 0.1 s)
RETIME_ROUNDS = 3  # rounds that time the finalists again, in turn
RETIME_BAND = 2.0  # finalists: within this of the fastest (a load spike doubled one p50 of a sweep on a real encoder)
_ORDER = ("fp32", "int8-token", "int8-dynamic", "int8-block", "int4-block", "fp16", "int8-static")
_UNITS = {"latency": ("p50", "ms"), "size": ("", "MiB"), "memory": ("peak RSS", "MiB")}


def measure_order(candidates: list[Candidate]) -> list[Candidate]:
    rank = {p: i for i, p in enumerate(_ORDER)}
    return sorted(candidates, key=lambda c: rank.get(c.recipe.precision, len(_ORDER)))


def probe_set(eval_npz: Path, dest: Path, samples: int = PROBE_SAMPLES) -> Path:
    """The first `samples` of a prepared eval set (every array is one row per sample)."""
    with np.load(eval_npz) as npz:
        arrays = {k: npz[k] for k in npz.files}
    if min(len(a) for a in arrays.values()) <= samples:
        return eval_npz
    np.savez(dest, **{k: a[:samples] for k, a in arrays.items()})
    return dest


@dataclass
class Screen:
    objective: str
    measured: list = field(default_factory=list)  # every candidate measured so far (or skipped)
    on: bool = True  # off for a search asked to run in full (--search always)

    def twin(self, c: Candidate) -> Optional[str]:
        """Why `c` cannot win, judged on a measured candidate of the same graph, or None."""
        key = _graph(c)
        for t in (self.measured if self.on else ()):
            if t.recipe != c.recipe and _graph(t) == key and t.metrics:
                why = self.dominated(t.metrics)
                if why:
                    return f"cannot win: {t.id}, {_kin(t.recipe, c.recipe)}, {why}"
        return None

    def dominated(self, metrics: dict) -> Optional[str]:
        """How a passing candidate beats these metrics on size and the objective, or None."""
        mine = objective_value(metrics, self.objective)
        margin = 1 + NOISE if self.objective == "size" else SKIP_MARGIN
        for p in (c for c in self.measured if c.passed):
            theirs = objective_value(p.metrics, self.objective)
            if p.metrics["model_mb"] <= metrics["model_mb"] * (1 + NOISE) and theirs * margin < mine:
                what, unit = _UNITS[self.objective]
                size = f"{metrics['model_mb']:.3f} MiB"
                if self.objective == "size":
                    return f"is {size}, and {p.id} passes at {theirs:.3f} MiB"
                return (f"is {size}, {what} {mine:.3f} {unit}{' in a quick probe' if 'probe' in metrics else ''}; "
                        f"{p.id} passes at {p.metrics['model_mb']:.3f} MiB, {what} {theirs:.3f} {unit}")
        return None

    def wants_probe(self) -> bool:
        return self.on and any(c.passed for c in self.measured)


def finalists(candidates: list[Candidate], objective: str) -> list[Candidate]:
    if objective != "latency":
        return []
    passing = [c for c in candidates if c.passed and c.path is not None]
    best = min((objective_value(c.metrics, objective) for c in passing), default=0.0)
    near = [c for c in passing if objective_value(c.metrics, objective) <= best * RETIME_BAND]
    return near if len(near) > 1 else []


def probe_metrics(measured: dict, samples: int, runs: int) -> dict:
    """What a skipped candidate's record keeps of its probe: size, latency and memory."""
    kept = {k: measured[k] for k in ("model_mb", "latency_ms", "peak_rss_mb", "load_ms", "runtime") if k in measured}
    return dict(kept, probe={"samples": min(samples, measured.get("n") or samples), "runs": runs})


def _kin(twin, mine) -> str:
    if twin.method != mine.method:
        return "the same graph with other activation ranges"
    return f"the same graph with {7 if twin.reduce_range else 8}-bit weights"


def _graph(c: Candidate):
    """The recipe without what changes only the numbers: the calibrator and 7-bit weights."""
    return c.recipe.model_copy(update={"method": None, "reduce_range": False})
