"""What the mixed-precision search is asked (SearchOptions, from the command line) and what it
is given by the calibrate run it is part of (SearchContext)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from edgekit.progress import OnStep

__all__ = ["SearchOptions", "SearchContext", "MODES"]

MODES = ("auto", "always", "off")


@dataclass(frozen=True)
class SearchOptions:
    mode: str = "auto"
    max_float_nodes: int = 8  # nodes the search keeps in float, beyond the user's --exclude
    max_minutes: Optional[float] = None  # of the search, from its start (after the uniform sweep)
    ranking_samples: int = 32  # calibration samples the sensitivity ranking runs on
    rerank: Optional[bool] = None  # after failing steps; None: when a ranking costs no more than a step


@dataclass
class SearchContext:
    """What the search needs from the calibrate run it is part of."""

    model: Path
    calibration: object  # edgekit.datasets.Dataset
    workdir: Path
    baseline: Optional[dict]  # the FP32 metrics
    on_candidate: Optional[Callable]  # on_candidate(candidate, i, n), as calibrate's
    measure: Callable  # measure(candidate, on_step): quantize, measure, check budgets, in place
    deadline: Optional[float] = None  # set by run_search from --max-minutes
    count: int = 0  # candidates so far, for on_candidate
    on_step: Optional[OnStep] = None  # progress (edgekit.progress), phase "search"
    objective: str = "latency"  # the target's objective, which decides whether a search can win
    precisions: tuple = ()  # the target's precisions: with int8-block, a node may get 8-bit weight blocks

