"""The release calibration run: sweep recipes, measure each against FP32, apply budgets.

Every candidate is quantized, then measured in a fresh process on the eval set exactly
as a device measures it (edgekit.evaluate.measure). A candidate whose recipe fails is
recorded as failed, never fatal. Among the candidates that meet every budget of the
target, the objective (latency, size or memory) chooses; when none meets them the run
still writes its record and raises GateError (exit 3).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from edgekit.datasets import Dataset
from edgekit.errors import EdgekitError, GateError
from edgekit.machine import cpu_facts, measured_on_host, versions
from edgekit.mixed import SearchOptions
from edgekit.progress import OnStep, notify, within
from edgekit.recipes import METHODS, Recipe
from edgekit.targets import Profile
from edgekit.words import utc_now

__all__ = ["Candidate", "CalibrationResult", "sweep_recipes", "calibrate", "check_budgets", "SCHEMA"]

SCHEMA = "edgekit.calibration/1"
OBJECTIVE_KEYS = {"latency": ("latency_ms", "p50"), "size": ("model_mb", None), "memory": ("peak_rss_mb", None)}


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
        return {"id": self.id, "recipe": self.recipe.record(), "status": self.status, "error": self.error,
                "passed": self.passed, "failed_budgets": self.failed_budgets, "metrics": self.metrics,
                "seconds": round(self.seconds, 2)}


@dataclass
class CalibrationResult:
    record: dict
    candidates: list[Candidate]
    chosen: Optional[Candidate]
    model_path: Optional[Path]
    record_path: Path


def sweep_recipes(profile: Profile, exclude: tuple[str, ...] = (), include: tuple[str, ...] = ()) -> list[Recipe]:
    """The uniform recipes the target allows, FP32 first when it is allowed (calibrate measures
    the FP32 baseline either way)."""
    allowed = set(profile.precisions)
    channels = (False, True) if profile.per_channel else (False,)
    ranges = (False, True) if profile.reduce_range else (False,)
    extra = {"exclude": exclude, "include": include}
    recipes = [Recipe(precision="fp32")] if "fp32" in allowed else []
    if "fp16" in allowed:
        recipes.append(Recipe(precision="fp16", exclude=exclude))
    if "int8-dynamic" in allowed:
        recipes += [Recipe(precision="int8-dynamic", per_channel=pc, reduce_range=rr, **extra)
                    for rr in ranges for pc in channels]
    if "int8-static" in allowed:
        recipes += [Recipe(precision="int8-static", method=m, per_channel=pc, **extra)
                    for m in METHODS for pc in channels]
        if profile.reduce_range:  # the VNNI-less x86 remedy, on the plain calibrator
            recipes += [Recipe(precision="int8-static", method="minmax", per_channel=pc, reduce_range=True, **extra)
                        for pc in channels]
    return recipes


def check_budgets(metrics: dict, profile: Profile, has_labels: bool) -> list[str]:
    """The budgets these metrics break, with the numbers ('max_model_mb: 0.148 > 0.1')."""
    from edgekit.budgets import Measured, check

    measured = Measured(model_mb=metrics["model_mb"], peak_rss_mb=metrics["peak_rss_mb"],
                        latency_p95=metrics["latency_ms"].get("p95"), drop=metrics.get("drop"),
                        cosine=(metrics.get("fidelity") or {}).get("cosine"), labelled=has_labels)
    calibrated = ("model_mb", "peak_rss_mb", "latency_p95", "accuracy_drop", "fidelity_cosine")
    return [b.short() for b in check(measured, profile.budgets, gates=calibrated)]


def _objective_value(c: Candidate, objective: str) -> float:
    key, sub = OBJECTIVE_KEYS[objective]
    value = c.metrics[key][sub] if sub else c.metrics[key]
    return float(value)


NOISE = 0.05  # objective values within 5% of the best are measurement noise, not a win
QUALITY_DIGITS = 4  # accuracy or cosine differences below 1e-4 do not decide a near-tie


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
    best = min(near, key=lambda c: (-round(_quality(c), QUALITY_DIGITS), c.metrics["model_mb"],
                                    _objective_value(c, profile.objective)))
    unit = {"latency": "p50 latency", "size": "model size", "memory": "peak RSS"}[profile.objective]
    why = (f"objective '{profile.objective}': {len(passing)} of {len(candidates)} candidates meet every budget of "
           f"{profile.name}; {len(near)} within {NOISE:.0%} of the lowest {unit}")
    return best, why + (", of which this is the most accurate, then smallest model" if len(near) > 1 else "")


def _quality(c: Candidate) -> float:
    if c.metrics.get("accuracy") is not None:
        return c.metrics["accuracy"]
    return (c.metrics.get("fidelity") or {}).get("cosine") or 0.0


def _measure_candidate(c: Candidate, fp32: Path, workdir: Path, calibration: Dataset, eval_npz: Path,
                       profile: Profile, baseline: Optional[dict], measure_opts: dict,
                       on_step: Optional[OnStep] = None) -> None:
    from edgekit.onnx_compat import check_target, target_refusal
    from edgekit.quantize import quantize

    check_target(profile)  # a bad runtime_version is bad input, not a failed candidate
    with attempt(c):
        notify(on_step, "quantize")
        c.path = quantize(fp32, c.recipe, workdir / f"{c.id}.onnx", calibration=calibration, on_step=on_step)
        refusal = target_refusal(c.path, profile)
        if refusal:  # the device's onnxruntime cannot load it: never measured, never chosen
            c.status, c.error = "failed", f"not offered: {refusal}"
            return
        score(c, eval_npz, profile, baseline, measure_opts, providers=profile.providers, on_step=on_step)


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
          providers: Optional[list[str]], on_step: Optional[OnStep] = None) -> None:
    """Measure c.path as a device would (a fresh process) and judge it against the budgets."""
    from edgekit.evaluate import measure

    notify(on_step, "evaluate")
    m = measure(c.path, eval_npz, threads=profile.threads, providers=providers, **measure_opts)
    if baseline is not None and m.get("accuracy") is not None and baseline.get("accuracy") is not None:
        m["drop"] = round(baseline["accuracy"] - m["accuracy"], 6)
    c.metrics, c.status = m, "ok"
    c.failed_budgets = check_budgets(m, profile, has_labels=m.get("accuracy") is not None)
    c.passed = not c.failed_budgets


def calibrate(model: Path, profile: Profile, calibration: Dataset, eval_data: Dataset, out_dir: Path, *,
              recipes: Optional[list[Recipe]] = None, eval_samples: Optional[int] = None,
              measure_opts: Optional[dict] = None,
              on_candidate: Optional[Callable[[Candidate, int, int], None]] = None,
              search: Optional[SearchOptions] = SearchOptions(),
              on_step: Optional[OnStep] = None) -> CalibrationResult:
    """Run the release calibration of `model` (ONNX) for `profile`; see the module docstring.
    on_candidate hears of each measured candidate, on_step of each stage (edgekit.progress)."""
    from edgekit.evaluate import prepare_eval_data
    from edgekit.models import model_inputs, model_sha256

    started = time.monotonic()
    inputs = model_inputs(model)
    calibration.check(inputs, role="calibration data")
    eval_data.check(inputs, role="eval data")
    recipes = recipes or sweep_recipes(profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    candidates = [Candidate(r.id, r) for r in recipes]
    measure_opts = measure_opts or {}
    with tempfile.TemporaryDirectory(prefix="edgekit-calibrate-") as tmp:
        work = Path(tmp)
        notify(within(on_step, phase="prepare"), "eval data", "FP32 reference outputs")
        eval_npz = prepare_eval_data(eval_data, model, work / "eval.npz", reference=model, samples=eval_samples)
        baseline = None
        if not any(c.recipe.precision == "fp32" for c in candidates):  # a baseline, not a candidate
            notify(within(on_step, phase="baseline", candidate="fp32"), "evaluate")
            baseline = _measure_baseline(model, eval_npz, profile, measure_opts)
        for i, c in enumerate(candidates):
            _measure_candidate(c, model, work, calibration, eval_npz, profile, baseline, measure_opts,
                               within(on_step, phase="sweep", i=i + 1, n=len(candidates), candidate=c.id))
            if c.recipe.precision == "fp32" and c.status == "ok":
                baseline = c.metrics
                c.metrics["drop"] = 0.0 if c.metrics.get("accuracy") is not None else None
            if on_candidate:
                on_candidate(c, i + 1, len(candidates))
        search_record = None
        if search is not None:
            from edgekit.mixed import SearchContext, run_search

            ctx = SearchContext(model, calibration, work, baseline, started, on_candidate, measure=lambda c, step: (
                _measure_candidate(c, model, work, calibration, eval_npz, profile, baseline, measure_opts, step)),
                on_step=within(on_step, phase="search"))
            found, search_record = run_search(search, candidates, ctx)
            candidates += found
        chosen, why = choose(candidates, profile)
        if chosen is None and search_record and search_record["stopped"] not in ("off", "not-needed"):
            why += f"; mixed-precision search: {search_record['why']}"
        model_out = None
        if chosen is not None:
            model_out = out_dir / "model.onnx"
            shutil.copyfile(chosen.path, model_out)
        record = _record(model, model_sha256(model), inputs, profile, calibration, eval_data, eval_npz,
                         candidates, chosen, why, baseline)
        record["search"] = search_record
    record_path = out_dir / "calibration.json"
    tmp_path = record_path.with_suffix(".json.tmp")
    tmp_path.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp_path, record_path)
    return CalibrationResult(record, candidates, chosen, model_out, record_path)


def _record(model, sha, inputs, profile, calibration, eval_data, eval_npz, candidates, chosen, why, baseline) -> dict:
    model_info = {"path": str(model), "sha256": sha, "inputs": input_specs(inputs)}
    return build_record(model_info, profile, calibration, eval_data, eval_npz, inputs, candidates, chosen, why, baseline,
                  versions("onnxruntime", "onnx", "numpy"))


def input_specs(inputs) -> list[dict]:
    return [{"name": i.name, "dtype": i.dtype, "shape": list(i.shape)} for i in inputs]


def build_record(model_info: dict, profile: Profile, calibration: Dataset, eval_data: Dataset, eval_npz: Path, inputs,
                 candidates: list[Candidate], chosen: Optional[Candidate], why: str, baseline: Optional[dict],
                 versions_used: dict) -> dict:
    """calibration.json, the same for every runtime (see DESIGN.md's calibration record)."""
    import numpy as np

    from edgekit.models import model_sha256

    with np.load(eval_npz) as npz:
        n_eval = int(len(npz[inputs[0].name]))
    return {
        "schema": SCHEMA,
        "model": model_info,
        "target": profile.snapshot(),
        "budgets": profile.budgets.model_dump(),
        "objective": profile.objective,
        "metric": "accuracy" if eval_data.has_labels else "fidelity",
        "baseline": baseline,
        "data": {"calibration": calibration.describe(), "eval": dict(eval_data.describe(), n_used=n_eval)},
        "candidates": [c.record() for c in candidates],
        "chosen": chosen.id if chosen else None,
        "output": ({"file": f"model{chosen.path.suffix}", "sha256": model_sha256(chosen.path)}
                   if chosen else None),
        "why": why,
        "versions": versions_used,
        "machine": cpu_facts(),
        "measured_on": measured_on_host(profile),
        "created_at": utc_now(),
    }


def _measure_baseline(model: Path, eval_npz: Path, profile: Profile, measure_opts: dict) -> dict:
    from edgekit.evaluate import measure

    m = measure(model, eval_npz, threads=profile.threads, providers=profile.providers, **measure_opts)
    m["drop"] = 0.0 if m.get("accuracy") is not None else None
    return m


def raise_if_unmet(result: CalibrationResult) -> None:
    if result.chosen is None:
        raise GateError(f"{result.record['why']}; see {result.record_path}", details=result.record)
