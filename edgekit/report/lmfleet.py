"""What a language model's reports add to the fleet analysis (edgekit.report.analysis).

A device that evaluated a decoder LM (edgekit.device.lm_evaluate) reports its perplexity on
the bundle's eval text, its agreement with the FP32 model, generation speed and memory with
the cache it runs and without one, and the cache-vs-recompute curve at several context
lengths. Those rows get the columns below; a one-pass model's row gets none of them, so its
json, csv and tables stay as they were.

Drift: a device's perplexity is deterministic given the bundle's tokens, so one further
than a relative tolerance from the reference is the device (a different runtime, kernel or
a broken file). The reference is the host's perplexity on the bundle's own windows
(`metrics.expected`: `edgekit package` measures it there, with or without a calibration
record); a report without it is compared with the median of the cohort's devices (at least
`min_cohort` of them). Decode speed is compared among siblings like latency (a robust score
in edgekit.report.analysis).
"""

from __future__ import annotations

from statistics import median
from typing import Optional

__all__ = ["LM_METRICS", "LM_BUDGET_COLUMNS", "is_lm", "lm_row", "lm_over_budget", "lm_drift", "lm_candidate"]

# The per-device numbers of a language model that cohorts summarise and --compare compares,
# beside edgekit.report.analysis.METRICS (top1_agreement, peak_rss_mb, model_mb are there).
LM_METRICS = ("perplexity", "ppl_increase", "kl_divergence", "prefill_tokens_per_s", "decode_tokens_per_s",
              "ttft_ms", "kv_cache_bytes", "recompute_decode_tokens_per_s", "recompute_peak_rss_mb")
# row column -> the target's budget on it
LM_BUDGET_COLUMNS = {"ppl_increase": "max_ppl_increase", "decode_tokens_per_s": "min_decode_tokens_per_s",
                     "ttft_ms": "max_ttft_ms"}


def is_lm(row: dict) -> bool:
    return row.get("perplexity") is not None


def _object(value) -> dict:
    return value if isinstance(value, dict) else {}


def _curve(metrics: dict) -> list[dict]:
    """The cache-vs-recompute points, sorted by context, each with every field of the schema's
    (None where not sent) and what a newer runner adds."""
    def mode(value) -> Optional[dict]:
        return None if not isinstance(value, dict) else \
            {"decode_tokens_per_s": value.get("decode_tokens_per_s"), "rss_mb": value.get("rss_mb"), **value}

    points = [{"context": p["context"], "kv_cache_bytes": p["kv_cache_bytes"], **p, "cache": mode(p.get("cache")),
               "recompute": mode(p.get("recompute"))} for p in metrics.get("kv_curve") or ()]
    return sorted(points, key=lambda p: p["context"])


def _workload(metrics: dict) -> dict:
    lm = _object(metrics.get("lm"))
    return {k: lm.get(k) if isinstance(lm.get(k), int) else None for k in ("context", "prompt_tokens", "generate_tokens")}


def _num(value) -> Optional[float]:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok else None


def lm_row(report: dict, columns: dict, budget: dict) -> dict:
    """The LM columns of one row ({} for a one-pass model): the report's own numbers
    (`columns`: its flat row, edgekit.device_report.report_columns; `report`: its JSON
    object), the host's for the same bundle, the workload, the budgets."""
    if columns.get("perplexity") is None:
        return {}
    m = report["metrics"]
    expected = _object(m.get("expected"))
    return {**{k: columns[k] for k in LM_METRICS}, "kv_cache": columns["kv_cache"],
            "kv_cache_bytes_measured": _num(m.get("kv_cache_bytes_measured")),
            "fp32_perplexity": _num(m.get("fp32_perplexity")),
            "perplexity_expected": _num(expected.get("perplexity")),
            "ppl_increase_expected": _num(expected.get("ppl_increase")),
            "top1_expected": _num(expected.get("top1_agreement")),
            **_workload(m), "kv_curve": _curve(m),
            **{f"{column}_budget": _num(budget.get(name)) for column, name in LM_BUDGET_COLUMNS.items()}}


def lm_over_budget(budget: dict):
    """row -> what an LM row's own numbers break of its target's LM budgets (`budget`: the
    target's; made once a target)."""
    from edgekit.budgets import LM_GATES, Measured, checker

    judge = checker(budget, gates=LM_GATES)

    def over(row: dict) -> list[str]:
        if not is_lm(row):
            return []
        measured = Measured(ppl_increase=row["ppl_increase"], decode_tokens_per_s=row["decode_tokens_per_s"],
                            ttft_ms=row["ttft_ms"])
        return [b.sentence() for b in judge(measured)]

    return over


def lm_drift(members: list[dict], tolerance: float, min_cohort: int) -> list[dict]:
    """Flags of one cohort's devices whose perplexity is further than `tolerance` (relative)
    from the reference (see the module docstring)."""
    rows = [r for r in members if r.get("perplexity") is not None]
    siblings = median(r["perplexity"] for r in rows) if len(rows) >= min_cohort else None
    flags = []
    for row in rows:
        if row["perplexity_expected"]:
            found = _off(row, row["perplexity_expected"], "the host's", tolerance)
        elif siblings:
            found = _off(row, siblings, f"the median of its {len(rows)} cohort devices", tolerance)
        else:
            found = None
        flags += [found] if found else []
    return flags


def _off(row: dict, expected: float, whose: str, tolerance: float) -> Optional[dict]:
    value = row["perplexity"]
    delta = value / expected - 1.0
    if abs(delta) <= tolerance:
        return None
    where = "above" if delta > 0 else "below"
    reason = (f"perplexity {value:.4g} is {abs(delta):.2%} {where} {whose} {expected:.4g} on the same tokens "
              f"(tolerance {tolerance:.2%})")
    return {"device": row["device"], "name": row["name"], "target": row["target"], "version": row["version"],
            "kind": "perplexity", "value": value, "reference": expected, "reason": reason, "delta": delta,
            "limit": tolerance}


def lm_candidate(candidate) -> dict:
    """A calibration candidate's LM columns (edgekit.calibration_record.CandidateRecord): its
    recipe's block size and cache mode, and what the evaluation measured."""
    m = candidate.metrics or {}
    recompute = m.get("recompute") if isinstance(m.get("recompute"), dict) else {}
    return {"block_size": candidate.recipe.block_size, "kv_cache": candidate.recipe.kv_cache or m.get("kv_cache"),
            **{k: _num(m.get(k)) for k in ("perplexity", "ppl_increase", "kl_divergence", "top1_agreement",
                                           "prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms", "kv_cache_bytes")},
            "recompute_decode_tokens_per_s": _num(recompute.get("decode_tokens_per_s"))}
