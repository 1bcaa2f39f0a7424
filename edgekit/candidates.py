"""Candidates: one recipe tried on one model, measured, judged against the target's budgets.

    Candidate           a recipe, its model file, its status, metrics and broken budgets
    attempt(c)          time it; a recipe that fails is recorded as failed, never fatal
    score(c, ...)       measure its model as a device would (a fresh process) and judge it
    check_budgets(...)  the budgets a candidate's metrics break (edgekit.budgets.check)
    choose(cs, profile) the best passing candidate by the target's objective, and why
    mark_collapsed(cs)  label the candidates whose quality fell far below the others'

calibrate's sweep and the mixed-precision search (edgekit.search) both make candidates and
leave the choice to choose().
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from edgekit.budgets import LM_GATES, Measured, check
from edgekit.errors import EdgekitError, Interrupted, NotApplicable
from edgekit.progress import OnStep, notify
from edgekit.recipes import Recipe
from edgekit.targets import Profile

__all__ = ["Candidate", "attempt", "score", "check_budgets", "choose", "quality", "mark_collapsed", "NOISE",
           "QUALITY_DIGITS", "COLLAPSE_LOSS", "COLLAPSE_RATIO", "objective_value"]

OBJECTIVE_KEYS = {"latency": ("latency_ms", "p50"), "size": ("model_mb", None), "memory": ("peak_rss_mb", None)}
NOISE = 0.05  # objective values within 5% of the best are measurement noise, not a win
QUALITY_DIGITS = 4  # accuracy or cosine differences below 1e-4 do not decide a near-tie
COLLAPSE_LOSS = 0.1  # a candidate that loses more than this much accuracy or cosine ...
COLLAPSE_RATIO = 10  # ... and more than 10x what the best other quantized candidate loses, collapsed
_CALIBRATED = ("model_mb", "peak_rss_mb", "latency_p95", "accuracy_drop", "fidelity_cosine", *LM_GATES)


@dataclass
class Candidate:
    id: str
    recipe: Recipe
    status: str = "pending"  # ok | failed | not-applicable (it quantizes nothing) | skipped (it cannot win)
    error: Optional[str] = None
    passed: bool = False
    failed_budgets: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0
    path: Optional[Path] = None
    weights: Optional[dict] = None  # what the recipe quantized (edgekit.toolchains.onnx.prepare)
    collapsed: bool = False

    def record(self) -> dict:
        """The candidate as calibration.json lists it (edgekit.calibration_record.CandidateRecord)."""
        extra = {"weights": self.weights} if self.weights is not None else {}
        return {"id": self.id, "recipe": self.recipe.record(), "status": self.status, "error": self.error,
                "passed": self.passed, "failed_budgets": self.failed_budgets, "metrics": self.metrics,
                "seconds": round(self.seconds, 2), **extra, **({"collapsed": True} if self.collapsed else {})}


@contextmanager
def attempt(c: Candidate) -> Iterator[None]:
    """Time a candidate; a recipe that fails is recorded as failed, never fatal (but the
    FP32 baseline must measure: if it cannot, the model or the data is at fault)."""
    start = time.perf_counter()
    try:
        yield
    except Interrupted:
        raise  # the user stopped the run: not this recipe's failure
    except EdgekitError as exc:
        if c.recipe.precision == "fp32":
            raise
        c.status, c.error, c.passed = "not-applicable" if isinstance(exc, NotApplicable) else "failed", str(exc), False
    finally:
        c.seconds = time.perf_counter() - start


def score(c: Candidate, eval_npz: Path, profile: Profile, baseline: Optional[dict], measure_opts: dict,
          on_step: Optional[OnStep] = None, measure: Optional[Callable[..., dict]] = None) -> None:
    """Measure c.path as a device would (a fresh process; `measure`: where, this host's
    edgekit.evaluate.measure unless given) and judge it against the budgets."""
    if measure is None:
        from edgekit.evaluate import measure

    notify(on_step, "evaluate")
    m = measure(c.path, eval_npz, threads=profile.threads, providers=profile.providers, **measure_opts)
    if baseline is not None and m.get("accuracy") is not None and baseline.get("accuracy") is not None:
        m["drop"] = round(baseline["accuracy"] - m["accuracy"], 6)
    c.metrics, c.status = m, "ok"
    c.failed_budgets = check_budgets(m, profile, has_labels=m.get("accuracy") is not None)
    c.passed = not c.failed_budgets


def check_budgets(metrics: dict, profile: Profile, has_labels: bool) -> list[str]:
    """The budgets these metrics break, with the numbers ('max_model_mb: 0.148 > 0.1')."""
    measured = Measured(model_mb=metrics["model_mb"], peak_rss_mb=metrics["peak_rss_mb"],
                        latency_p95=(metrics.get("latency_ms") or {}).get("p95"), drop=metrics.get("drop"),
                        cosine=(metrics.get("fidelity") or {}).get("cosine"), labelled=has_labels,
                        ppl_increase=metrics.get("ppl_increase"), decode_tokens_per_s=metrics.get("decode_tokens_per_s"),
                        ttft_ms=metrics.get("ttft_ms"))
    return [b.short() for b in check(measured, profile.budgets, gates=_CALIBRATED)]


def quality(metrics: dict, missing: float = float("-inf")) -> float:
    """Accuracy where there are labels, a language model's perplexity increase (negated: less is
    better), else the fidelity cosine; `missing` when none was measured."""
    if not metrics:
        return missing
    if metrics.get("accuracy") is not None:
        return metrics["accuracy"]
    if metrics.get("ppl_increase") is not None:
        return -metrics["ppl_increase"]
    return (metrics.get("fidelity") or {}).get("cosine") or missing


def _tally(candidates: list[Candidate]) -> str:
    """'3 measured, 2 not applicable, 1 failed': how many of each status, measured first."""
    counts = Counter("measured" if c.status == "ok" else c.status.replace("-", " ") for c in candidates)
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items(), key=lambda i: i[0] != "measured"))


def choose(candidates: list[Candidate], profile: Profile) -> tuple[Optional[Candidate], str]:
    """The best passing candidate by the objective. Candidates within NOISE of the best value
    tie (timer noise must not pick a recipe): of those, the smallest models (within NOISE of the
    smallest) stay, then the more accurate (to QUALITY_DIGITS decimals), then the smaller wins."""
    passing = [c for c in candidates if c.passed]
    if not passing:
        return None, f"no candidate meets the budgets of {profile.name} ({_tally(candidates)})"
    best_value = min(_objective_value(c, profile.objective) for c in passing)
    near = [c for c in passing if _objective_value(c, profile.objective) <= best_value * (1 + NOISE)]
    smallest = min(c.metrics["model_mb"] for c in near)
    small = [c for c in near if c.metrics["model_mb"] <= smallest * (1 + NOISE)]
    best = min(small, key=lambda c: (-round(quality(c.metrics, missing=0.0), QUALITY_DIGITS), c.metrics["model_mb"],
                                     _objective_value(c, profile.objective)))
    unit = {"latency": "p50 latency", "size": "model size", "memory": "peak RSS"}[profile.objective]
    why = (f"objective '{profile.objective}': {len(passing)} of {len(candidates)} candidates meet every budget of "
           f"{profile.name}; {len(near)} within {NOISE:.0%} of the lowest {unit}")
    if len(near) > 1:
        why += (", of which this is the smallest model" if len(small) == 1 else
                f", of which {len(small)} within {NOISE:.0%} of the smallest model, and this the most accurate")
    top = round(quality(best.metrics, missing=0.0), QUALITY_DIGITS)
    tied = sum(round(quality(c.metrics, missing=0.0), QUALITY_DIGITS) == top for c in small) - 1
    if len(small) > 1 and tied:  # an equal accuracy decided nothing: the size did
        why += f" (tied with {tied} other{'s' if tied > 1 else ''} to {QUALITY_DIGITS} decimals) and the smallest"
    return best, why


def mark_collapsed(candidates: list[Candidate], baseline: Optional[dict]) -> list[Candidate]:
    """Label (and return) the quantized candidates that collapsed: each loses more than
    COLLAPSE_LOSS of the baseline's accuracy or cosine, and more than COLLAPSE_RATIO times
    what the best other quantized candidate loses. They stay in the table and the record,
    labelled, so a broken recipe is never read as a slightly worse one."""
    top = quality(baseline, missing=1.0) if baseline else 1.0
    measured = [c for c in candidates if c.status == "ok" and c.recipe.precision not in ("fp32", "fp16")]
    losses = {c.id: top - quality(c.metrics, missing=top) for c in measured}
    for c in measured:
        others = [loss for cid, loss in losses.items() if cid != c.id]
        best = max(min(others, default=0.0), 0.0)
        c.collapsed = losses[c.id] > COLLAPSE_LOSS and losses[c.id] > COLLAPSE_RATIO * best
    return [c for c in measured if c.collapsed]


def _objective_value(c: Candidate, objective: str) -> float:
    return objective_value(c.metrics, objective)


def objective_value(metrics: dict, objective: str) -> float:
    """The measured value the objective ranks by (lower is better)."""
    key, sub = OBJECTIVE_KEYS[objective]
    return float(metrics[key][sub] if sub else metrics[key])
