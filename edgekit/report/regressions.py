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
from statistics import median
from typing import Iterable, Optional

from edgekit.report.drift import MEASURED

__all__ = ["version_regressions", "DEFAULT_ALLOWANCE"]

DEFAULT_ALLOWANCE = 0.01  # 1 pp of accuracy, or 1% more perplexity, where the target sets no budget


def version_regressions(rows: Iterable[dict], budgets: Optional[dict] = None) -> list[dict]:
    """The versions running now (a row with `current`) that measure worse than the version
    before them on the same target by more than its budget allows."""
    cohorts: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        cohorts[(row["name"], row["target"] or "", row["version"])].append(row)
    versions: dict[tuple, list[tuple[str, str]]] = defaultdict(list)
    for (name, target, version), members in cohorts.items():
        versions[(name, target)].append((min(r["measured_at"] or "" for r in members), version))
    out = []
    for (name, target), seen in versions.items():
        order = [version for _, version in sorted(seen)]
        budget = (budgets or {}).get(target) or {}
        for before, version in zip(order, order[1:]):
            members = cohorts[(name, target, version)]
            if any(r["current"] for r in members):
                found = _compare(members, cohorts[(name, target, before)], before, budget)
                if found:
                    out.append({"name": name, "target": target or None, "version": version, "previous": before,
                                "devices": sorted(r["device"] for r in members if r["current"]),
                                "at": min(r["measured_at"] or "" for r in members) or None, **found})
    return sorted(out, key=lambda r: (r["name"], r["target"] or "", r["version"]))


def _compare(now: list[dict], before: list[dict], previous_version: str, budget: dict) -> Optional[dict]:
    lm = any(r.get("perplexity") is not None for r in now)
    metric = "perplexity" if lm else "accuracy"
    value, previous = _median(now, metric), _median(before, metric)
    if value is None or previous is None or previous <= 0:
        return None
    limit = budget.get("max_ppl_increase" if lm else "max_accuracy_drop")
    allowed = float(limit) if isinstance(limit, (int, float)) and not isinstance(limit, bool) else DEFAULT_ALLOWANCE
    change = value / previous - 1 if lm else previous - value  # worse is positive
    if change <= allowed:
        return None
    worse = (f"perplexity {value:.4g} against {previous:.4g} for {previous_version} (device medians): "
             f"{change * 100:+.1f}%" if lm else
             f"accuracy {value:.4f} against {previous:.4f} for {previous_version} (device medians): "
             f"{-change * 100:+.2f} pp")
    unit = "%" if lm else " pp"
    allowance = (f"the {allowed * 100:g}{unit} the target's {'max_ppl_increase' if lm else 'max_accuracy_drop'} allows"
                 if limit is not None else f"the {allowed * 100:g}{unit} allowed where the target sets no budget")
    return {"metric": metric, "value": value, "previous_value": previous, "change": change, "allowed": allowed,
            "detail": f"{worse}, more than {allowance}"}


def _median(rows: list[dict], metric: str) -> Optional[float]:
    values = [v for r in rows if r["status"] in MEASURED and (v := r.get(metric)) is not None]
    return median(values) if values else None
