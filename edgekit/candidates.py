"""Candidates: one recipe tried on one model, measured, judged against the target's budgets.

    Candidate           a recipe, its model file, its status, metrics and broken budgets
    attempt(c)          time it; a recipe that fails is recorded as failed, never fatal
    score(c, ...)       measure its model as a device would (a fresh process) and judge it
    check_budgets(...)  the budgets a candidate's metrics break (edgekit.budgets.check)
    choose(cs, profile) the best passing candidate by the target's objective, and why

calibrate's sweep and the mixed-precision search (edgekit.search) both make candidates and
leave the choice to choose().
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from edgekit.budgets import LM_GATES, Measured, check
from edgekit.errors import EdgekitError
from edgekit.progress import OnStep, notify
from edgekit.recipes import Recipe
from edgekit.targets import Profile

__all__ = ["Candidate", "attempt", "score", "check_budgets", "choose", "quality", "NOISE", "QUALITY_DIGITS"]

OBJECTIVE_KEYS = {"latency": ("latency_ms", "p50"), "size": ("model_mb", None), "memory": ("peak_rss_mb", None)}
NOISE = 0.05  # objective values within 5% of the best are measurement noise, not a win
QUALITY_DIGITS = 4  # accuracy or cosine differences below 1e-4 do not decide a near-tie
_CALIBRATED = ("model_mb", "peak_rss_mb", "latency_p95", "accuracy_drop", "fidelity_cosine", *LM_GATES)


@dataclass
class Candidate:
    id: str
    recipe: Recipe
    status: str = "pending"  # ok | failed
    error: Optional[str] = None
    passed: bool = False
    failed_budgets: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0
    path: Optional[Path] = None

    def record(self) -> dict:
        """The candidate as calibration.json lists it (edgekit.calibration_record.CandidateRecord)."""
        return {"id": self.id, "recipe": self.recipe.record(), "status": self.status, "error": self.error,
                "passed": self.passed, "failed_budgets": self.failed_budgets, "metrics": self.metrics,
                "seconds": round(self.seconds, 2)}


@contextmanager
def attempt(c: Candidate) -> Iterator[None]:
    """Time a candidate; a recipe that fails is recorded as failed, never fatal (but the
    FP32 baseline must measure: if it cannot, the model or the data is at fault)."""
    start = time.perf_counter()
    try:
        yield
    except EdgekitError as exc:
        if c.recipe.precision == "fp32":
            raise
        c.status, c.error, c.passed = "failed", str(exc), False
    finally:
        c.seconds = time.perf_counter() - start


def score(c: Candidate, eval_npz: Path, profile: Profile, baseline: Optional[dict], measure_opts: dict,
          on_step: Optional[OnStep] = None) -> None:
    """Measure c.path as a device would (a fresh process) and judge it against the budgets."""
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


def choose(candidates: list[Candidate], profile: Profile) -> tuple[Optional[Candidate], str]:
    """The best passing candidate by the objective; near-ties go to the more accurate (to
    QUALITY_DIGITS decimals), then the smaller model, so that timer noise does not pick a recipe."""
    passing = [c for c in candidates if c.passed]
    if not passing:
        tried = sum(c.status == "ok" for c in candidates)
        return None, (f"no candidate meets the budgets of {profile.name} "
                      f"({tried} measured, {len(candidates) - tried} failed)")
    best_value = min(_objective_value(c, profile.objective) for c in passing)
    near = [c for c in passing if _objective_value(c, profile.objective) <= best_value * (1 + NOISE)]
    best = min(near, key=lambda c: (-round(quality(c.metrics, missing=0.0), QUALITY_DIGITS), c.metrics["model_mb"],
                                    _objective_value(c, profile.objective)))
    unit = {"latency": "p50 latency", "size": "model size", "memory": "peak RSS"}[profile.objective]
    why = (f"objective '{profile.objective}': {len(passing)} of {len(candidates)} candidates meet every budget of "
           f"{profile.name}; {len(near)} within {NOISE:.0%} of the lowest {unit}")
    return best, why + (", of which this is the most accurate, then smallest model" if len(near) > 1 else "")


def _objective_value(c: Candidate, objective: str) -> float:
    key, sub = OBJECTIVE_KEYS[objective]
    value = c.metrics[key][sub] if sub else c.metrics[key]
    return float(value)
