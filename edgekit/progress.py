"""Progress of long work as events: the library reports them, the CLI shows them.

Library code never prints. A long function (calibrate, the mixed-precision search, the
sensitivity ranking, quantize, package) takes ``on_step``, a callable that gets a Step at
the start of each stage of the work; the CLI draws a progress line from them (on stderr,
when it is a terminal). ``within`` fills in where the work is (phase, candidate i of n)
for the functions called further down, so that quantize() need not know it runs as the
third candidate of a sweep.

    phase     prepare (data, conversion) | baseline | sweep (the uniform recipes) | search
    i, n      the candidate of the sweep, or the step of the search, counted from 1; in the
              search n is an upper bound (the search stops when a budget is met)
    what      convert | eval data | quantize | evaluate | sensitivity | package, ...
    detail    where inside that stage: "calibration 3/8" (batches)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

__all__ = ["Step", "OnStep", "notify", "within"]


@dataclass(frozen=True)
class Step:
    what: str
    detail: str = ""
    phase: str = ""
    i: Optional[int] = None
    n: Optional[int] = None
    candidate: str = ""


OnStep = Callable[[Step], None]


def notify(on_step: Optional[OnStep], what: str, detail: str = "") -> None:
    """Tell on_step (if any) that the stage `what` starts."""
    if on_step is not None:
        on_step(Step(what, detail))


def within(on_step: Optional[OnStep], **where) -> Optional[OnStep]:
    """on_step with `where` (phase, i, n, candidate) filled into the Steps that leave them empty."""
    if on_step is None:
        return None

    def filled(step: Step) -> None:
        on_step(replace(step, **{k: v for k, v in where.items() if getattr(step, k) in (None, "")}))

    return filled
