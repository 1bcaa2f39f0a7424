"""The mixed-precision search's bookkeeping and its pruning pass (for edgekit.search.mixed).

A step measures one recipe as an ordinary candidate and records it in the search record;
a recipe measured before (a uniform one, an earlier step) gives its candidate again and
is not recorded twice. Candidate ids are recipe ids; a step whose recipe id is taken (the
same number of nodes in float, other nodes) is named `<recipe id>-s<step>`, so that every
candidate, and its model file, stays apart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from edgekit.candidates import QUALITY_DIGITS, Candidate, quality
from edgekit.progress import within
from edgekit.recipes import Recipe
from edgekit.search.context import SearchContext, SearchOptions


class Stop(Exception):
    """Ends the search: record["stopped"] and record["why"]."""

    def __init__(self, reason: str, why: str):
        super().__init__(why)
        self.reason, self.why = reason, why


@dataclass
class State:
    """One search: what it measured, its ranking, and the ranking entries it keeps in float."""

    opts: SearchOptions
    ctx: SearchContext
    record: dict
    found: list
    measured: dict  # Recipe -> Candidate, the uniform ones too
    base: object = None
    float_model: Optional[Path] = None
    ranking: list = field(default_factory=list)  # edgekit.search.sensitivity.NodeSensitivity, current
    kept: list = field(default_factory=list)  # entries of the rankings, in the order they were added
    grown: list = field(default_factory=list)  # (candidate, entries) of each growing step
    rank_seconds: float = 0.0
    rerank: Optional[bool] = None  # decided at the first failing step

    def recipe(self, entries: list) -> Recipe:
        """The base recipe with `entries` in float or, where the target allows int8-block, their
        MatMuls in 8-bit weight blocks (about as exact as float at a quarter of the bytes)."""
        base = self.base.recipe
        if not self.granular:
            return base.model_copy(update={"exclude": tuple(base.exclude) + nodes(entries)})
        blocks = tuple(e.nodes[0] for e in entries if e.op_type == "MatMul")
        rest = tuple(n for e in entries for n in (e.nodes[1:] if e.op_type == "MatMul" else e.nodes))
        return base.model_copy(update={"exclude": tuple(base.exclude) + rest,
                                       "weight_only": tuple(base.weight_only) + blocks})

    @property
    def granular(self) -> bool:
        return "int8-block" in self.ctx.precisions and self.base.recipe.precision != "int8-block"


def now() -> float:
    return time.monotonic()


def step(s: State, kind: str, recipe: Recipe, float_nodes: tuple[str, ...], **extra):
    """Measure `recipe` as the next step; a recipe measured before gives its candidate again, unrecorded."""
    if recipe in s.measured:
        return s.measured[recipe]
    if out_of_time(s.ctx):
        when = "while pruning" if kind == "prune" else f"after {len(s.record['steps'])} step(s)"
        raise Stop("time", f"--max-minutes was reached {when}")
    number = len(s.record["steps"]) + 1
    taken = {c.id for c in s.measured.values()}
    c = measure(recipe, recipe.id if recipe.id not in taken else f"{recipe.id}-s{number}", s.ctx,
                max(number, most_steps(s)), number)
    s.measured[recipe] = c
    s.found.append(c)
    s.record["steps"].append(step_record(number, kind, c, list(float_nodes), **extra))
    return c


def nodes(entries: list) -> tuple[str, ...]:
    return tuple(n for e in entries for n in e.nodes)


def measure(recipe: Recipe, cid: str, ctx: SearchContext, most: int, number: int):
    c = Candidate(cid, recipe)
    ctx.measure(c, within(ctx.on_step, i=number, n=most, candidate=cid))
    ctx.count += 1
    if ctx.on_candidate:
        ctx.on_candidate(c, ctx.count, ctx.count)
    return c


def most_steps(s: State) -> int:
    """At most this many steps, for progress: one per-operator-type step; growing steps, whose
    entries double up to max_float_nodes (log2 of it, and one step that fills what is left);
    one pruning step per kept entry."""
    ranked = sum(len(e.nodes) for e in s.ranking) if s.ranking else s.opts.max_float_nodes
    most_nodes = min(s.opts.max_float_nodes, ranked)
    return 1 + most_nodes.bit_length() + 1 + most_nodes


def step_record(number: int, kind: str, c, float_nodes: list[str], **extra) -> dict:
    m = c.metrics or {}
    return {"step": number, "kind": kind, "candidate": c.id, "float_nodes": float_nodes,
            "include": list(c.recipe.include), **extra, "status": c.status, "error": c.error,
            "accuracy": m.get("accuracy"), "cosine": (m.get("fidelity") or {}).get("cosine"),
            "model_mb": m.get("model_mb"), "p50_ms": (m.get("latency_ms") or {}).get("p50"),
            "passed": c.passed, "failed_budgets": c.failed_budgets}


def prune(s: State) -> None:
    """From the best passing growing step, give each kept entry back to INT8 if it is not needed."""
    passing = [(c, entries) for c, entries in s.grown if c.passed]
    if not passing:
        return
    start, entries = max(passing, key=lambda p: (round(quality(p[0].metrics), QUALITY_DIGITS), -len(p[1]),
                                                  -p[0].metrics["model_mb"]))
    floor = round(quality(start.metrics), QUALITY_DIGITS) if s.opts.mode == "always" else None
    pruning = {"from": start.id, "result": start.id, "float_nodes": list(nodes(entries)), "returned": [],
               "quality_floor": floor}
    s.record["pruning"], s.record["result"] = pruning, start.id
    for entry in sorted(entries, key=lambda e: e.score):
        trial = [e for e in entries if e is not entry]
        c = step(s, "prune", s.recipe(trial), nodes(trial), returned=list(entry.nodes))
        good = still_good(c, floor)
        if s.record["steps"][-1]["candidate"] == c.id:  # measured now, not before
            s.record["steps"][-1]["accepted"] = good
        if good:
            entries = trial
            pruning.update(result=c.id, float_nodes=list(nodes(entries)))
            pruning["returned"] += list(entry.nodes)
            s.record["result"] = c.id
    kept, was = len(pruning["float_nodes"]), len(pruning["float_nodes"]) + len(pruning["returned"])
    s.record["why"] += f"; pruning kept {kept} of {was} node(s) in float ({s.record['result']})"


def still_good(c, floor: Optional[float]) -> bool:
    if not c.passed:
        return False
    return floor is None or round(quality(c.metrics), QUALITY_DIGITS) >= floor


def baseline_quality(baseline: Optional[dict]) -> float:
    return quality(baseline) if baseline else 1.0


def out_of_time(ctx: SearchContext) -> bool:
    return ctx.deadline is not None and now() >= ctx.deadline

