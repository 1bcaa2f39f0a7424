"""Drift: a device of a cohort (the devices that ran the same bundle: name, target, version)
that does not measure like the rest. Its accuracy (or fidelity, or a language model's
perplexity) differs from what the host measured for that bundle by more than a tolerance,
or its latency or memory is an outlier among its siblings by a robust score on the cohort's
median and MAD. Every flag carries its reason with the numbers.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from statistics import median
from typing import Optional

from edgekit.report.lmfleet import is_lm, lm_drift

__all__ = ["DriftRules", "MEASURED", "cohort_key", "find_drift", "robust_scores"]

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
# Rows whose evaluation ran: their numbers count in cohorts and drift (a version that broke a
# gate measured what it measured; the gate judged the numbers, not the run).
MEASURED = ("ok", "gate failed")


@dataclass(frozen=True)
class DriftRules:
    """When a device counts as drifting. A device that evaluated the host's samples must match
    the host's accuracy (or top-1 agreement) within the tolerance: same data, same code, so any
    more is the device. One that evaluated fewer gets `sigmas` standard errors of that subset
    on top, so that it is not flagged for sampling noise."""

    accuracy_tolerance: float = 0.01
    sigmas: float = 3.0
    cosine_tolerance: float = 0.01
    outlier_score: float = 3.5
    min_cohort: int = 3
    # The spread never counts as smaller than this (relative to the median, absolute), so that
    # identical siblings do not make a timer's jitter an outlier.
    latency_floor: tuple[float, float] = (0.15, 0.01)    # fraction of the median, ms
    memory_floor: tuple[float, float] = (0.05, 1.0)      # fraction of the median, MiB
    # a language model's perplexity against the host's on the same tokens, relative
    perplexity_tolerance: float = 0.01


def cohort_key(row: dict) -> tuple:
    return (row["name"], row["target"] or "", row["version"])


def robust_scores(values: list[float], rel_floor: float, abs_floor: float) -> tuple[float, float, list[float]]:
    """(median, scale, scores): score = (x - median) / scale with scale = 1.4826 MAD, but never
    below rel_floor * |median| nor abs_floor."""
    med = median(values)
    mad = median(abs(v - med) for v in values)
    scale = max(MAD_TO_SIGMA * mad, rel_floor * abs(med), abs_floor)
    return med, scale, [(v - med) / scale for v in values]


def _flag(row: dict, kind: str, value: float, reference: float, reason: str, **extra) -> dict:
    return {"device": row["device"], "name": row["name"], "target": row["target"], "version": row["version"],
            "kind": kind, "value": value, "reference": reference, "reason": reason, **extra}


def _proportion_drift(row: dict, metric: str, expected_key: str, label: str, rules: DriftRules) -> Optional[dict]:
    value, expected = row[metric], row[expected_key]
    if value is None or expected is None:
        return None
    n, total = row["n"], row["n_expected"]
    noise = 0.0
    if isinstance(n, int) and n > 0 and (not isinstance(total, int) or n < total):
        # A subset of the host's samples: allow its sampling error (finite population when known).
        shrink = (total - n) / (total - 1) if isinstance(total, int) and total > 1 else 1.0
        noise = rules.sigmas * math.sqrt(expected * (1 - expected) / n * shrink)
    tolerance = max(rules.accuracy_tolerance, noise)
    delta = value - expected
    if abs(delta) <= tolerance:
        return None
    where = "below" if delta < 0 else "above"
    reason = (f"{label} {value:.2%} is {abs(delta) * 100:.1f} pp {where} the host's {expected:.2%} "
              f"(tolerance {tolerance * 100:.1f} pp" + (f", {n} of the host's {total} samples)" if noise else ")"))
    return _flag(row, metric, value, expected, reason, delta=delta, limit=tolerance)


def _cosine_drift(row: dict, rules: DriftRules) -> Optional[dict]:
    value, expected = row["cosine"], row["cosine_expected"]
    if value is None or expected is None or expected - value <= rules.cosine_tolerance:
        return None
    reason = (f"fidelity cosine {value:.4f} is {expected - value:.4f} below the host's {expected:.4f} "
              f"(tolerance {rules.cosine_tolerance:g})")
    return _flag(row, "cosine", value, expected, reason, delta=value - expected, limit=rules.cosine_tolerance)


_OUTLIER_METRICS = (("latency_p50", "latency", "latency p50", "ms", "latency_floor"),
                    ("peak_rss_mb", "memory", "peak RSS", "MiB", "memory_floor"),
                    ("decode_tokens_per_s", "decode speed", "decode speed", "tokens/s", "latency_floor"))


def _outliers(members: list[dict], rules: DriftRules) -> list[dict]:
    flags = []
    for metric, kind, label, unit, floor in _OUTLIER_METRICS:
        # a language model's step latency is its decode speed again: judged once, as speed
        rows = [r for r in members if r.get(metric) is not None and not (kind == "latency" and is_lm(r))]
        if len(rows) < rules.min_cohort:
            continue
        med, scale, scores = robust_scores([r[metric] for r in rows], *getattr(rules, floor))
        for row, score in zip(rows, scores):
            if abs(score) > rules.outlier_score:
                ratio = row[metric] / med if med else math.inf
                reason = (f"{label} {row[metric]:.4g} {unit} is {ratio:.2f}x the median {med:.4g} {unit} "
                          f"of the {len(rows)} devices of its cohort (robust score {score:+.1f}, limit {rules.outlier_score:g})")
                flags.append(_flag(row, kind, row[metric], med, reason, score=score, limit=rules.outlier_score))
    return flags


def find_drift(rows: list[dict], rules: DriftRules = DriftRules()) -> list[dict]:
    """Every drift flag, and each row's `flags` filled with its reasons."""
    ok = [r for r in rows if r["status"] in MEASURED]
    flags = []
    for row in ok:
        for found in (_proportion_drift(row, "accuracy", "accuracy_expected", "accuracy", rules),
                      _proportion_drift(row, "top1_agreement", "top1_expected", "top-1 agreement", rules),
                      _cosine_drift(row, rules)):
            if found:
                flags.append(found)
    cohorts: dict[tuple, list[dict]] = defaultdict(list)
    for row in ok:
        cohorts[cohort_key(row)].append(row)
    for members in cohorts.values():
        flags += _outliers(members, rules) + lm_drift(members, rules.perplexity_tolerance, rules.min_cohort)
    reasons: dict[tuple, list[str]] = defaultdict(list)
    for f in flags:
        reasons[(f["device"], f["name"], f["version"])].append(f["reason"])
    for row in rows:
        row["flags"] = reasons.get((row["device"], row["name"], row["version"]), [])
    return sorted(flags, key=lambda f: (f["name"], f["target"] or "", f["version"], f["device"], f["kind"]))
