"""Accuracy-aware mixed precision: keep the nodes that quantization hurts most in float.

After calibrate's uniform sweep, the search starts from one INT8 candidate, the base:
the most accurate INT8 candidate that passes or misses only the accuracy or fidelity
budget. edgekit.search.sensitivity ranks the nodes the base quantizes by the noise each one
adds. The search then measures, with the same measure() as every candidate:

    1. per-operator-type recipes: the base recipe quantizing only MatMul/Gemm/Conv
    2. growing: the base recipe keeping 1, 2, 4, 8, ... ranked entries in float
    3. pruning: from the best passing growing step, each kept entry in turn (least
       sensitive first) goes back to INT8, and stays there if the candidate still meets
       every budget (mode "always": and its quality, rounded to 4 decimals as choose()
       rounds it, is still that of the step pruning started from)

Growing stops at the first step that meets every budget (mode "auto"), at
--max-float-nodes, when a step breaks a budget that more float cannot mend (size,
latency, memory), or when a step matches the FP32 quality; pruning then runs. The ranking
cannot tell which kept nodes the others made unneeded (on the outlier test encoder, the
fc1 that crushes the outlier channels fixes what fc2 was blamed for), so growing keeps
more than needed and pruning gives the rest back. A recipe measured before is not
measured again. --max-minutes (the search's own time, counted from its start: the
uniform sweep before it always completes) and Ctrl-C stop either phase between steps. A
step that cannot win (edgekit.screening: bigger and slower than a passing candidate) is
skipped after a quick probe, and growing stops there: more float only adds to both. Every measured step
is an ordinary candidate, so the best candidate that meets the budgets is chosen and
written whatever stopped the search; `result` names where the search itself ended.

Re-ranking: after a failing growing step, the nodes are ranked again on that step's
model, with the kept nodes in float, so that the noise they now show is traced back to the
quantized nodes that feed them (edgekit.search.sensitivity's `kept`). It pays when one ranking
costs less than the steps it may save. Measured on the outlier test encoder (64 samples,
2 cores): a ranking takes 0.02-0.05 s, a step (quantize, then measure in a fresh process)
0.2 s, and one re-ranking after the first failing step finds fc1 at once: 3 measured node
steps (2 growing, 1 pruning) instead of 6 (3 and 3). On larger models both costs grow with
the graph, the ranking with 32 calibration samples and every activation of two models,
the step with the eval set and the latency runs, and not in step. So the run decides on
its own clock: it re-ranks when its first ranking took no longer than its mean measured
step (SearchOptions.rerank forces it on or off), and records both times in `rerank`.

Modes: "auto" searches when no uniform recipe meets the budgets, and also when one does but
a candidate that misses only the accuracy or fidelity budget beats every passing one on the
objective by more than the noise (then the base is the most accurate of those: mended, it
could win); "always" also tries to improve on the passing ones (and then grows up to the
limits before pruning); "off" never searches.

Granularity: where the target allows int8-block, a kept MatMul gets 8-bit weight-only
blocks (MatMulNBits, accuracy level 4) instead of float: measured on MiniLM it restores
nearly as much fidelity as float (cosine 0.9961 against 0.9963 with 8 nodes) at a quarter
of the bytes, so the same steps cost less size. Other kept nodes stay in float. The user's --exclude and --include stay in every recipe tried.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.budgets import QUALITY_BUDGETS
from edgekit.candidates import quality
from edgekit.progress import notify, within
from edgekit.recipes import Recipe
from edgekit.search.context import SearchContext, SearchOptions
from edgekit.search.steps import State, Stop, baseline_quality, nodes, now, out_of_time, prune, step
from edgekit.words import INT8, WEIGHT_ONLY, first_line

__all__ = ["run_search"]

LINEAR_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")  # where the weights, and the INT8 savings, are
RANKING_KEPT = 50  # ranking entries written to calibration.json
RERANK_TOP = 5  # entries of each re-ranking written
_EPS = 1e-6


def run_search(opts: SearchOptions, uniform: list, ctx: SearchContext) -> tuple[list, dict]:
    """The search's candidates and its record (see the module docstring)."""
    start = now()
    ctx.deadline = None if opts.max_minutes is None else start + 60 * opts.max_minutes
    ctx.count = len(uniform)
    record = {"mode": opts.mode, "max_float_nodes": opts.max_float_nodes, "max_minutes": opts.max_minutes,
              "base": None, "ranking": [], "ranked": 0, "rerank": None, "reranks": [], "steps": [],
              "pruning": None, "result": None, "stopped": None, "why": None, "seconds": 0.0}
    s = State(opts, ctx, record, [], {c.recipe: c for c in uniform})
    try:
        _search(s, uniform)
    except Stop as stop:
        _stop(record, stop.reason, stop.why)
    except KeyboardInterrupt:  # keep what was measured; the run still writes its result
        _stop(record, "interrupted", "interrupted (Ctrl-C); the candidates measured so far are kept")
    record["seconds"] = round(now() - start, 2)
    return s.found, record


def _stop(record: dict, reason: str, why: str) -> None:
    record["stopped"], record["why"] = reason, why


def _search(s: State, uniform: list) -> None:
    opts, record = s.opts, s.record
    if opts.mode == "off":
        raise Stop("off", "the search is off (--search off)")
    pool = uniform
    if opts.mode == "auto" and any(c.passed for c in uniform):
        pool = _could_win(uniform, s.ctx.objective)
        if not pool:
            raise Stop("not-needed", "a uniform recipe meets every budget and none that misses only the accuracy "
                                     "or fidelity budget beats it on the objective (--search always improves on it)")
    s.base = _base(pool)
    if s.base is None:
        raise Stop("no-base", "no INT8 candidate misses only the accuracy or fidelity budget, "
                              "so keeping nodes in float cannot help")
    record["base"] = s.base.id
    record["granularity"] = "8-bit weight blocks, else float" if s.granular else "float"
    if quality(s.base.metrics) >= baseline_quality(s.ctx.baseline) - _EPS:
        raise Stop("fp32-quality", f"{s.base.id} already matches the FP32 quality")
    if out_of_time(s.ctx):
        raise Stop("time", "--max-minutes was reached before the search began")
    _first_ranking(s)
    linear = _linear_ops(s.float_model, s.base.recipe)
    if linear:
        c = step(s, "op-types", s.base.recipe.model_copy(update={"include": linear}), ())
        if c.passed and opts.mode == "auto":
            record["result"] = c.id
            raise Stop("budget", f"{c.id} meets every budget")
    try:
        _grow(s)
    except Stop as stop:
        if stop.reason == "time":
            raise
        _stop(record, stop.reason, stop.why)
    prune(s)


def _could_win(uniform: list, objective: str) -> list:
    """The candidates that miss only the accuracy or fidelity budget and beat every passing
    one on the objective by more than the noise: mended, one of them could be chosen."""
    from edgekit.candidates import NOISE, _objective_value

    passing = [_objective_value(c, objective) for c in uniform if c.passed]
    best = min(passing)
    return [c for c in uniform if not c.passed and c.status == "ok" and _mendable(c)
            and _objective_value(c, objective) < best * (1 - NOISE)]


def _mendable(c) -> bool:
    return c.status == "ok" and all(b.split(":")[0] in QUALITY_BUDGETS for b in c.failed_budgets)


def _base(uniform: list):
    """The most accurate INT8 candidate that passes or fails only on accuracy/fidelity (the
    candidates of a run whose toolchain searches: ONNX models)."""
    pool = [c for c in uniform if c.recipe.precision in INT8 + WEIGHT_ONLY and c.path is not None and _mendable(c)
            and not c.collapsed]
    return max(pool, key=lambda c: (quality(c.metrics), -c.metrics["model_mb"]), default=None)


def _first_ranking(s: State) -> None:
    from edgekit.toolchains.onnx.quantize import prepared

    workdir = s.ctx.workdir / "sensitivity"
    workdir.mkdir(parents=True, exist_ok=True)
    notify(within(s.ctx.on_step, candidate=s.base.id), "sensitivity", "pre-processing")
    try:
        s.float_model = prepared(s.ctx.model, workdir / "float.onnx")
    except Exception as exc:
        _guard(exc)
        raise Stop("ranking-failed", f"the sensitivity ranking of {s.base.id} failed: {first_line(exc)}")
    start = now()
    s.ranking = _ranked(s, s.base, workdir, ())
    s.rank_seconds = now() - start
    s.record["ranking"] = [e.record() for e in s.ranking[:RANKING_KEPT]]
    s.record["ranked"] = len(s.ranking)


def _ranked(s: State, candidate, workdir: Path, kept: tuple[str, ...]) -> list:
    from edgekit.search.sensitivity import rank_nodes

    try:
        return rank_nodes(s.float_model, candidate.path, s.ctx.calibration, workdir,
                          samples=s.opts.ranking_samples, kept=kept,
                          on_step=within(s.ctx.on_step, candidate=candidate.id))
    except Exception as exc:  # onnxruntime's errors on a graph it quantized but cannot augment
        _guard(exc)
        raise Stop("ranking-failed", f"the sensitivity ranking of {candidate.id} failed: {first_line(exc)}")


def _guard(exc: Exception) -> None:
    if isinstance(exc, (TypeError, AttributeError, AssertionError, NameError)):
        raise exc  # our bug, not the model's


def _grow(s: State) -> None:
    """Keep more ranked entries in float until a step passes (mode auto) or a limit is met."""
    while True:
        added = _next_entries(s.ranking, s.kept, s.opts.max_float_nodes)
        if not added:
            raise _limit_reached(s)
        s.kept = s.kept + added
        c = step(s, "nodes", s.recipe(s.kept), nodes(s.kept))
        s.grown.append((c, list(s.kept)))
        _check_growing(c, s)
        if not c.passed and c.status == "ok" and _wants_rerank(s):
            _rerank(s, c)


def _next_entries(ranking: list, kept: list, max_nodes: int) -> list:
    """The entries that double what is kept (1 to begin), as far as max_nodes allows."""
    taken = set(nodes(kept))
    used, out = len(taken), []
    for e in (e for e in ranking if not taken.intersection(e.nodes)):
        if len(kept) + len(out) >= max(1, 2 * len(kept)) or used + len(e.nodes) > max_nodes:
            break
        out.append(e)
        used += len(e.nodes)
    return out


def _limit_reached(s: State) -> Stop:
    taken = set(nodes(s.kept))
    left = [e for e in s.ranking if not taken.intersection(e.nodes)]
    why = (f"tried every step up to {len(taken)} node(s) in float"
           + ("" if any(c.passed for c, _ in s.grown) else " without meeting the budgets"))
    return Stop("max-float-nodes" if left else "ranking-exhausted", why)


def _check_growing(c, s: State) -> None:
    if c.passed and s.opts.mode == "auto":
        raise Stop("budget", f"{c.id} meets every budget")
    if c.status == "skipped":  # bigger and slower than a passing candidate: more float only adds to both
        raise Stop("cannot-win", f"{c.id} {c.error}; more nodes in float would not mend it")
    broken = [b for b in c.failed_budgets if b.split(":")[0] not in QUALITY_BUDGETS]
    if broken:
        raise Stop("budget-broken", f"{c.id} breaks {broken[0]}; more nodes in float would not mend it")
    if c.status == "ok" and quality(c.metrics) >= baseline_quality(s.ctx.baseline) - _EPS:
        raise Stop("fp32-quality", f"{c.id} matches the FP32 quality")


def _wants_rerank(s: State) -> bool:
    """Decided once, at the first failing step: forced by the options, else by the measured costs."""
    if s.rerank is None:
        steps = [c.seconds for c in s.found if c.status == "ok"]
        step_seconds = sum(steps) / len(steps) if steps else 0.0
        if s.opts.rerank is not None:
            s.rerank, why = s.opts.rerank, "set by the caller"
        else:
            s.rerank = s.rank_seconds <= step_seconds
            why = f"a ranking took {s.rank_seconds:.2f} s, a step {step_seconds:.2f} s"
        s.record["rerank"] = {"enabled": s.rerank, "rank_seconds": round(s.rank_seconds, 3),
                              "step_seconds": round(step_seconds, 3), "why": why}
    return s.rerank


def _rerank(s: State, c) -> None:
    if out_of_time(s.ctx):
        raise Stop("time", f"--max-minutes was reached after {len(s.record['steps'])} step(s)")
    start, done = now(), {"after": c.id}
    try:
        s.ranking = _ranked(s, c, s.ctx.workdir / "sensitivity" / f"rerank-{len(s.record['steps'])}", nodes(s.kept))
        done["top"] = [e.record() for e in s.ranking[:RERANK_TOP]]
    except Stop as failed:  # grow on the ranking we have
        s.rerank, done["error"] = False, failed.why
    s.record["reranks"].append(dict(done, seconds=round(now() - start, 3)))


def _linear_ops(model: Path, base: Recipe) -> tuple[str, ...]:
    """The linear op types to quantize alone, if that differs from what the base quantizes
    (the op types of the graph the recipes see, after pre-processing)."""
    import onnx

    present = {n.op_type for n in onnx.load(str(model), load_external_data=False).graph.node}
    wanted = set(base.include) if base.include else present
    linear = tuple(op for op in LINEAR_OPS if op in present and op in wanted)
    return linear if linear and set(linear) != wanted else ()


