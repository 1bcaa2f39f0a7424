"""Chart axes that say what they show: units in the name, plain numbers (no offset such as
+8.12e1), a logarithmic scale when one value is far from the rest, and the budget of a
budgeted axis either drawn (a dashed line, the region beyond it shaded, when it lies near
the data) or only stated; in both cases the axis label states the headroom as a number
("slowest device at 82% of the 30 ms budget"), so that a budget far outside the data does
not squash the points into one pixel and is still read.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["QUALITY_AXIS", "quality_format", "budget_note", "budget_axis"]

DRIFT = "#d62728"
NEAR = 3.0              # a budget up to this many times the largest value is drawn, a farther one stated
LOG_SPREAD = 20         # largest / smallest value from which an axis is logarithmic
QUALITY_AXIS = {"accuracy": "accuracy (%)", "top-1 agreement": "top-1 agreement with FP32 (%)",
                "cosine": "cosine similarity to FP32"}


def quality_format(qname: str):
    """Ticks of a quality axis: fractions as percent numbers (the unit is in the label)."""
    return (lambda v, _: f"{v:.4f}") if qname == "cosine" else (lambda v, _: f"{v * 100:.4g}")


def _share(value: float, budget: float) -> str:
    share = value / budget * 100
    return f"{share:.2g}%" if share < 10 else f"{share:.0f}%"


def budget_note(budget: Optional[float], values: list[float], unit: str, who: str,
                judged: Optional[float] = None) -> Optional[str]:
    """The headroom as a number: where `judged` (by default the largest value, `who`) stands
    against the budget, e.g. 'slowest device at 82% of the 30 ms budget (dashed)'."""
    if budget is None or not values:
        return None
    value = max(values) if judged is None else judged
    where = "(dashed)" if _near(budget, values) else "(off the chart)"
    over = ": over it" if value > budget else ""
    return f"{who} at {_share(value, budget)} of the {budget:g} {unit} budget {where}{over}"


def _near(budget: Optional[float], values: list[float]) -> bool:
    return budget is not None and bool(values) and budget <= NEAR * max(values)


def _draw_budget(ax, budget: Optional[float], values: list[float], vertical: bool) -> None:
    """A budget near the data as a dashed line, the region beyond it shaded."""
    if not _near(budget, values):
        return
    line, span = (ax.axvline, ax.axvspan) if vertical else (ax.axhline, ax.axhspan)
    line(budget, color=DRIFT, linestyle="--", linewidth=1)
    span(budget, max(budget, max(values)) * 10, color=DRIFT, alpha=0.07)


def _limits(values: list[float], budget: Optional[float] = None, top: Optional[float] = None, log: bool = False):
    """The view of one axis: the data (and a near budget), padded, at least 10% of its top wide,
    so that timer noise or a few KiB of memory do not fill the chart; never below 0 nor above `top`."""
    if not values:
        return None
    shown = values + ([budget] if _near(budget, values) else [])
    lo, hi = min(shown), max(shown)
    if log:
        return lo / 1.5, hi * 1.5
    span = max(hi - lo, abs(hi) * 0.1) or 1.0
    mid = (hi + lo) / 2
    low, high = max(0.0, mid - span * 0.65), mid + span * 0.65
    if top is not None and high > top:
        low, high = max(0.0, low - (high - top)), top
    return low, high


def budget_axis(ax, which: str, values: list[float], label: str, budget: Optional[float] = None, unit: str = "",
                who: str = "", judged: Optional[float] = None, *, top: Optional[float] = None) -> None:
    """One axis of a chart: view, plain numbers (no offset such as +8.12e1), label, and the
    budget with its headroom (chartlayout.fit_axis_labels wraps it to the axis' length)."""
    log = _spread(values)
    view = _limits(values, budget, top, log)
    if view:
        (ax.set_xlim if which == "x" else ax.set_ylim)(*view)
    _draw_budget(ax, budget, values, vertical=which == "x")
    note = budget_note(budget, values, unit, who, judged)
    if log:
        label = label.replace(")", ", log scale)", 1)
    (ax.set_xlabel if which == "x" else ax.set_ylabel)(label + (f"\n{note}" if note else ""))
    if log:
        (ax.set_xscale if which == "x" else ax.set_yscale)("log")
        _log_ticks(ax.xaxis if which == "x" else ax.yaxis)
    else:
        ax.ticklabel_format(axis=which, useOffset=False, style="plain")


def _spread(values: list[float]) -> bool:
    """Whether values lie so far apart (an outlier 20 times its siblings) that a linear axis
    would squash all but one into a corner: then the axis is logarithmic."""
    return bool(values) and min(values) > 0 and max(values) / min(values) >= LOG_SPREAD


def _log_ticks(axis) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())
