"""Accuracy-aware mixed precision: keep the nodes that quantization hurts most in float.

After calibrate's uniform sweep, the search starts from one INT8 candidate, the base:
the most accurate INT8 candidate that passes or misses only the accuracy or fidelity
budget. edgekit.sensitivity ranks the nodes the base quantizes by the noise each one
adds. The search then measures, with the same measure() as every candidate:

    1. per-operator-type recipes: the base recipe quantizing only MatMul/Gemm/Conv
    2. the base recipe keeping the top 1, 2, 4, 8, ... ranked entries in float

and stops at the first step that meets every budget (mode "auto"), at --max-float-nodes,
when a step breaks a budget that more float cannot mend (size, latency, memory), when a
step matches the FP32 quality, or at --max-minutes. The time is checked between steps
and counted from the start of the calibrate run (the uniform sweep always completes).
Ctrl-C stops the search the same way. Every step is an ordinary candidate, so the best
candidate that meets the budgets is chosen and written whatever stopped the search.

Modes: "auto" searches only when no uniform recipe meets the budgets; "always" also
tries to improve on the passing ones (and then runs every step up to the limits);
"off" never searches. The user's --exclude and --include stay in every recipe tried.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from edgekit.recipes import Recipe

__all__ = ["SearchOptions", "SearchContext", "run_search", "MODES"]

MODES = ("auto", "always", "off")
QUALITY_BUDGETS = ("max_accuracy_drop", "min_fidelity_cosine")
LINEAR_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")  # where the weights, and the INT8 savings, are
INT8 = ("int8-dynamic", "int8-static")
RANKING_KEPT = 50  # ranking entries written to calibration.json
_EPS = 1e-6


@dataclass(frozen=True)
class SearchOptions:
    mode: str = "auto"
    max_float_nodes: int = 8  # nodes the search keeps in float, beyond the user's --exclude
    max_minutes: Optional[float] = None  # of the whole calibrate run
    ranking_samples: int = 32  # calibration samples the sensitivity ranking runs on


@dataclass
class SearchContext:
    """What the search needs from the calibrate run it is part of."""

    model: Path
    calibration: object  # edgekit.datasets.Dataset
    workdir: Path
    baseline: Optional[dict]  # the FP32 metrics
    started: float  # time.monotonic() at the start of the run
    on_candidate: Optional[Callable]  # on_candidate(candidate, i, n), as calibrate's
    measure: Callable  # measure(candidate): quantize, measure, check budgets, in place
    deadline: Optional[float] = None  # set by run_search from --max-minutes
    count: int = 0  # candidates so far, for on_candidate


def _now() -> float:
    return time.monotonic()


def run_search(opts: SearchOptions, uniform: list, ctx: SearchContext) -> tuple[list, dict]:
    """The search's candidates and its record (see the module docstring)."""
    ctx.deadline = None if opts.max_minutes is None else ctx.started + 60 * opts.max_minutes
    ctx.count = len(uniform)
    record = {"mode": opts.mode, "max_float_nodes": opts.max_float_nodes, "max_minutes": opts.max_minutes,
              "base": None, "ranking": [], "ranked": 0, "steps": [], "stopped": None, "why": None, "seconds": 0.0}
    start = _now()
    found: list = []
    try:
        _search(opts, uniform, ctx, record, found)
    except KeyboardInterrupt:  # keep what was measured; the run still writes its result
        _stop(record, "interrupted", "interrupted (Ctrl-C); the candidates measured so far are kept")
    record["seconds"] = round(_now() - start, 2)
    return found, record


def _stop(record: dict, reason: str, why: str) -> None:
    record["stopped"], record["why"] = reason, why


def _search(opts: SearchOptions, uniform: list, ctx: SearchContext, record: dict, found: list) -> None:
    if opts.mode == "off":
        return _stop(record, "off", "the search is off (--search off)")
    if opts.mode == "auto" and any(c.passed for c in uniform):
        return _stop(record, "not-needed", "a uniform recipe meets every budget (--search always improves on it)")
    base = _base(uniform)
    if base is None:
        return _stop(record, "no-base", "no INT8 candidate misses only the accuracy or fidelity budget, "
                                        "so keeping nodes in float cannot help")
    record["base"] = base.id
    if _quality(base.metrics) >= _baseline_quality(ctx.baseline) - _EPS:
        return _stop(record, "fp32-quality", f"{base.id} already matches the FP32 quality")
    if _out_of_time(ctx):
        return _stop(record, "time", "--max-minutes was reached before the search began")
    ranked = _rank(base, opts, ctx, record)
    if ranked is None:
        return
    ranking, float_model = ranked
    taken = {c.recipe for c in uniform}
    for step, (kind, recipe, float_nodes) in enumerate(_plan(base.recipe, ranking, opts, float_model), start=1):
        if _out_of_time(ctx):
            return _stop(record, "time", f"--max-minutes was reached after {step - 1} step(s)")
        if recipe in taken:
            continue
        taken.add(recipe)
        c = _measure(recipe, ctx)
        found.append(c)
        record["steps"].append(_step_record(step, kind, c, float_nodes))
        if _stops_here(c, kind, opts, ctx, record):
            return
    _stop(record, "max-float-nodes" if _ranked_nodes(ranking) > opts.max_float_nodes else "ranking-exhausted",
          f"tried every step up to {min(opts.max_float_nodes, _ranked_nodes(ranking))} node(s) in float"
          + ("" if any(c.passed for c in found) else " without meeting the budgets"))


def _base(uniform: list):
    """The most accurate INT8 ONNX candidate that passes or fails only on accuracy/fidelity."""
    def mendable(c) -> bool:
        return c.status == "ok" and all(b.split(":")[0] in QUALITY_BUDGETS for b in c.failed_budgets)

    pool = [c for c in uniform if c.recipe.precision in INT8 and c.path is not None
            and Path(c.path).suffix == ".onnx" and mendable(c)]
    return max(pool, key=lambda c: (_quality(c.metrics), -c.metrics["model_mb"]), default=None)


def _rank(base, opts: SearchOptions, ctx: SearchContext, record: dict):
    from edgekit.quantize import prepared
    from edgekit.sensitivity import rank_nodes

    workdir = ctx.workdir / "sensitivity"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        float_model = prepared(ctx.model, workdir / "float.onnx")
        ranking = rank_nodes(float_model, base.path, ctx.calibration, workdir, samples=opts.ranking_samples)
    except (TypeError, AttributeError, AssertionError, NameError):
        raise  # our bug, not the model's
    except Exception as exc:  # onnxruntime's errors on a graph it quantized but cannot augment
        _stop(record, "ranking-failed", f"the sensitivity ranking of {base.id} failed: {_first_line(exc)}")
        return None
    record["ranking"] = [s.record() for s in ranking[:RANKING_KEPT]]
    record["ranked"] = len(ranking)
    return ranking, float_model


def _plan(base: Recipe, ranking: list, opts: SearchOptions, model: Path):
    """(kind, recipe, nodes kept in float by the search) for each step, in order."""
    linear = _linear_ops(model, base)
    if linear:
        yield "op-types", base.model_copy(update={"include": linear}), []
    for count in _entry_counts(ranking, opts.max_float_nodes):
        nodes = [n for s in ranking[:count] for n in s.nodes]
        yield "nodes", base.model_copy(update={"exclude": tuple(base.exclude) + tuple(nodes)}), nodes


def _linear_ops(model: Path, base: Recipe) -> tuple[str, ...]:
    """The linear op types to quantize alone, if that differs from what the base quantizes
    (the op types of the graph the recipes see, after pre-processing)."""
    import onnx

    present = {n.op_type for n in onnx.load(str(model), load_external_data=False).graph.node}
    wanted = set(base.include) if base.include else present
    linear = tuple(op for op in LINEAR_OPS if op in present and op in wanted)
    return linear if linear and set(linear) != wanted else ()


def _entry_counts(ranking: list, max_nodes: int) -> list[int]:
    """1, 2, 4, ... ranking entries, as long as their nodes stay within max_nodes."""
    counts, k = [], 1
    while k <= len(ranking):
        if sum(len(s.nodes) for s in ranking[:k]) > max_nodes:
            break
        counts.append(k)
        k *= 2
    last = max((n for n in range(1, len(ranking) + 1) if sum(len(s.nodes) for s in ranking[:n]) <= max_nodes),
               default=0)
    return counts + ([last] if last and (not counts or last > counts[-1]) else [])


def _ranked_nodes(ranking: list) -> int:
    return sum(len(s.nodes) for s in ranking)


def _measure(recipe: Recipe, ctx: SearchContext):
    from edgekit.calibrate import Candidate

    c = Candidate(recipe.id, recipe)
    ctx.measure(c)
    ctx.count += 1
    if ctx.on_candidate:
        ctx.on_candidate(c, ctx.count, ctx.count)
    return c


def _stops_here(c, kind: str, opts: SearchOptions, ctx: SearchContext, record: dict) -> bool:
    if c.passed and opts.mode == "auto":
        _stop(record, "budget", f"{c.id} meets every budget")
        return True
    broken = [b for b in c.failed_budgets if b.split(":")[0] not in QUALITY_BUDGETS]
    if kind == "nodes" and broken:
        _stop(record, "budget-broken", f"{c.id} breaks {broken[0]}; more nodes in float would not mend it")
        return True
    if kind == "nodes" and c.status == "ok" and _quality(c.metrics) >= _baseline_quality(ctx.baseline) - _EPS:
        _stop(record, "fp32-quality", f"{c.id} matches the FP32 quality")
        return True
    return False


def _step_record(step: int, kind: str, c, float_nodes: list[str]) -> dict:
    m = c.metrics or {}
    return {"step": step, "kind": kind, "candidate": c.id, "float_nodes": float_nodes,
            "include": list(c.recipe.include), "status": c.status, "error": c.error,
            "accuracy": m.get("accuracy"), "cosine": (m.get("fidelity") or {}).get("cosine"),
            "model_mb": m.get("model_mb"), "p50_ms": (m.get("latency_ms") or {}).get("p50"),
            "passed": c.passed, "failed_budgets": c.failed_budgets}


def _quality(metrics: dict) -> float:
    if not metrics:
        return float("-inf")
    if metrics.get("accuracy") is not None:
        return metrics["accuracy"]
    return (metrics.get("fidelity") or {}).get("cosine") or float("-inf")


def _baseline_quality(baseline: Optional[dict]) -> float:
    return _quality(baseline) if baseline else 1.0


def _out_of_time(ctx: SearchContext) -> bool:
    return ctx.deadline is not None and _now() >= ctx.deadline


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else 'no message'}"
