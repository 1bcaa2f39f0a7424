"""Version over version: a version whose devices measure far worse than the version before it.

A bundle's drift is judged against its own host measurement, and its gates against FP32; a
new version that is itself much worse than the one it replaced (retrained badly, exported
wrong, packaged with the wrong recipe and no calibration record) passes both when its own
expectation is as low. So, per bundle and target, the versions in the order their first
reports arrived, each version that runs now is compared with the one before it: the cohorts'
median accuracy (a one-pass model) or perplexity (a language model). A fall larger than the
target's own budget (`max_accuracy_drop`, a fraction; `max_ppl_increase`, relative) is a
regression; a target without that budget allows DEFAULT_ALLOWANCE.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Optional

from edgekit.report.drift import cohort_key

__all__ = ["version_regressions", "DEFAULT_ALLOWANCE"]

DEFAULT_ALLOWANCE = 0.01  # 1 pp of accuracy, or 1% more perplexity, where the target sets no budget


def version_regressions(rows: Iterable[dict], cohorts: Iterable[dict], budgets: Optional[dict] = None) -> list[dict]:
    """The versions running now (a row with `current`) that measure worse than the version
    before them on the same target by more than its budget allows. `cohorts`: the rows'
    (edgekit.report.analysis.cohort_summaries), whose medians are compared."""
    members: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        members[cohort_key(row)].append(row)
    medians = {(c["name"], c["target"], c["version"]): c["metrics"] for c in cohorts}
    first = {key: min(r["measured_at"] or "" for r in group) for key, group in members.items()}
    versions: dict[tuple, list[tuple[str, str]]] = defaultdict(list)
    for (name, target, version), at in first.items():
        versions[(name, target)].append((at, version))
    out = []
    for (name, target), seen in versions.items():
        order = [version for _, version in sorted(seen)]
        budget = (budgets or {}).get(target) or {}
        for before, version in zip(order, order[1:]):
            running = sorted(r["device"] for r in members[(name, target, version)] if r["current"])
            found = running and _compare(medians.get((name, target, version), {}),
                                         medians.get((name, target, before), {}), before, budget)
            if found:
                out.append({"name": name, "target": target or None, "version": version, "previous": before,
                            "devices": running, "at": first[(name, target, version)] or None, **found})
    return sorted(out, key=lambda r: (r["name"], r["target"] or "", r["version"]))


def _compare(now: dict, before: dict, previous_version: str, budget: dict) -> Optional[dict]:
    """`now`, `before`: two cohorts' metrics (metric -> median, min, max)."""
    lm = "perplexity" in now
    metric = "perplexity" if lm else "accuracy"
    if metric not in now or metric not in before or before[metric]["median"] <= 0:
        return None
    value, previous = now[metric]["median"], before[metric]["median"]
    limit = budget.get("max_ppl_increase" if lm else "max_accuracy_drop")
    given = isinstance(limit, (int, float)) and not isinstance(limit, bool)
    allowed = float(limit) if given else DEFAULT_ALLOWANCE
    change = value / previous - 1 if lm else previous - value  # worse is positive
    if change <= allowed:
        return None
    worse = (f"perplexity {value:.4g} against {previous:.4g} for {previous_version} (device medians): "
             f"{change * 100:+.1f}%" if lm else
             f"accuracy {value:.4f} against {previous:.4f} for {previous_version} (device medians): "
             f"{-change * 100:+.2f} pp")
    unit = "%" if lm else " pp"
    allowance = (f"the {allowed * 100:g}{unit} the target's {'max_ppl_increase' if lm else 'max_accuracy_drop'} allows"
                 if given else f"the {allowed * 100:g}{unit} allowed where the target sets no budget")
    return {"metric": metric, "value": value, "previous_value": previous, "change": change, "allowed": allowed,
            "detail": f"{worse}, more than {allowance}"}

