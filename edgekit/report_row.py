"""A device report's flat row: the columns the store keeps, the rollout gates judge and the
fleet report compares, read from the report's plain JSON object (what the device sent and
the store keeps). Plain Python, no pydantic: the store keeps each report's row as this
makes it when the report comes in (edgekit.store: its columns and `picked`), and `edgekit
report` reads 10,000 stored reports without the typed models of edgekit.device_report,
which checks a report where it comes in.
"""

from __future__ import annotations

import math
from typing import Any, Optional

__all__ = ["REPORT_FIELDS", "LM_FIELDS", "REPORT_PARTS", "report_columns"]

# A report's flat row, column by column: (column, kind, where in the report's JSON object).
# `where` is one path or more: the first whose parent is an object counts (a runner that
# sends `metrics.fidelity` has its top-1 agreement there, an older one in `metrics`), and
# none gives None. kind "number": a finite number, as a float, else None; "as sent": the
# value itself. report_columns is the one reader: the store keeps what it gives.
_M, _F, _FE, _E, _R = ("metrics",), ("metrics", "fidelity"), ("metrics", "fidelity_expected"), \
    ("metrics", "expected"), ("metrics", "recompute")
REPORT_FIELDS: tuple[tuple[str, str, tuple[tuple[str, ...], ...]], ...] = (
    ("run_id", "as sent", (("run_id",),)), ("status", "as sent", (("status",),)), ("error", "as sent", (("error",),)),
    ("started_at", "as sent", (("started_at",),)), ("finished_at", "as sent", (("finished_at",),)),
    ("name", "as sent", (("bundle", "name"),)), ("version", "as sent", (("bundle", "version"),)),
    ("target", "as sent", (("bundle", "target"),)), ("precision", "as sent", (("bundle", "precision"),)),
    ("bundle_sha256", "as sent", (("bundle", "sha256"),)), ("runtime", "as sent", (("runtime", "name"),)),
    ("runtime_version", "as sent", (("runtime", "version"),)), ("arch", "as sent", (("device", "arch"),)),
    ("python", "as sent", (("device", "python"),)),
    ("accuracy", "number", (_M + ("accuracy",),)), ("accuracy_expected", "number", (_M + ("accuracy_expected",),)),
    ("baseline_accuracy", "number", (_E + ("baseline_accuracy",),)),
    ("top1_agreement", "number", (_F + ("top1_agreement",), _M + ("top1_agreement",))),
    ("top1_expected", "number", (_FE + ("top1_agreement",),)),
    ("cosine", "number", (_F + ("cosine",),)), ("cosine_expected", "number", (_FE + ("cosine",),)),
    ("n", "as sent", (_M + ("n",),)), ("n_expected", "as sent", (_E + ("n",),)),
    ("latency_p50", "number", (_M + ("latency_ms", "p50"),)), ("latency_p95", "number", (_M + ("latency_ms", "p95"),)),
    ("peak_rss_mb", "number", (_M + ("peak_rss_mb",),)), ("load_ms", "number", (_M + ("load_ms",),)),
    ("model_mb", "number", (_M + ("model_mb",),)),
    # a language model's numbers (None for other models; LM_FIELDS): quality against FP32,
    # speed and memory with the cache it runs, and without a cache
    *((k, "number", (_M + (k,),)) for k in ("perplexity", "ppl_increase", "kl_divergence", "prefill_tokens_per_s",
                                           "decode_tokens_per_s", "ttft_ms")),
    ("kv_cache", "as sent", (_M + ("kv_cache",),)), ("kv_cache_bytes", "number", (_M + ("kv_cache_bytes",),)),
    ("recompute_decode_tokens_per_s", "number", (_R + ("decode_tokens_per_s",),)),
    ("recompute_peak_rss_mb", "number", (_R + ("peak_rss_mb",),)),
)
LM_FIELDS = tuple(f for f, _, _ in REPORT_FIELDS[REPORT_FIELDS.index(("perplexity", "number", (_M + ("perplexity",),))):])
# The parts every report has: a row without them is no report.
REPORT_PARTS = ("metrics", "bundle", "runtime", "device")


def report_columns(sent: dict) -> dict:
    """A checked report's JSON object (DeviceReport.record(), or what the store kept) as one
    flat row (REPORT_FIELDS); numbers as floats, None where nothing finite was measured. `n`
    and `n_expected` (the samples evaluated, and the host's) are as the device sent them.
    Read from the plain object, so that a store's 10,000 reports need no second validation
    (collect checked them)."""
    missing = [part for part in REPORT_PARTS if not isinstance(sent[part], dict)]
    if missing:
        raise TypeError(f"{', '.join(missing)} is not an object")
    out = {}
    for column, kind, paths in REPORT_FIELDS:
        value = _at(sent, paths)
        out[column] = _number(value) if kind == "number" else value
    return out


def _at(sent: dict, paths: tuple[tuple[str, ...], ...]) -> Any:
    """The value at the first of `paths` whose parent is an object, else None."""
    for path in paths:
        parent = sent
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            return parent.get(path[-1])
    return None


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)
