"""A language model's part of the fleet report page (edgekit.report.html): per target the
generation triangle, the cache-vs-recompute curve and the device table with the LM columns;
one table of the LM cohorts."""

from __future__ import annotations

from edgekit.report.chartpool import draw_now
from edgekit.report.htmltable import html_table, row_class, row_view
from edgekit.report.lmcharts import kv_curve_chart, lm_triangle_chart

__all__ = ["lm_target_section", "lm_cohort_table", "LM_ROW_COLUMNS", "LM_CALIBRATION_COLUMNS"]

LM_ROW_COLUMNS = [("device", "device", "l"), ("version", "version", "l"), ("current", "runs it", ""),
                  ("precision", "precision", "l"), ("runtime_version", "runtime", "l"), ("arch", "arch", "l"),
                  ("perplexity", "perplexity", ""), ("ppl_increase", "ppl increase", "pct"),
                  ("kl_divergence", "KL (nats/token)", ""), ("top1_agreement", "top-1 agreement", "pct"),
                  ("prefill_tokens_per_s", "prefill tokens/s", ""), ("decode_tokens_per_s", "decode tokens/s", ""),
                  ("ttft_ms", "TTFT ms", ""), ("peak_rss_mb", "peak RSS MiB", ""), ("model_mb", "model MiB", ""),
                  ("kv_cache", "KV cache", "l"), ("kv_cache_bytes", "KV cache bytes", ""),
                  ("recompute_decode_tokens_per_s", "recompute decode tokens/s", ""),
                  ("recompute_peak_rss_mb", "recompute peak RSS MiB", ""),
                  ("last_seen", "last seen (UTC)", "time"), ("status", "status", "wrap"), ("flags", "drift", "l")]

# a calibration record's candidates (edgekit.report.views.calibration_rows)
LM_CALIBRATION_COLUMNS = [("kv_cache", "KV cache", "l"), ("perplexity", "perplexity", ""),
                          ("ppl_increase", "ppl increase", "pct"), ("kl_divergence", "KL (nats/token)", ""),
                          ("top1_agreement", "top-1 agreement", "pct"), ("model_mb", "model MiB", ""),
                          ("prefill_tokens_per_s", "prefill tokens/s", ""), ("decode_tokens_per_s", "decode tokens/s", ""),
                          ("ttft_ms", "TTFT ms", ""), ("peak_rss_mb", "peak RSS MiB", ""),
                          ("recompute_decode_tokens_per_s", "recompute decode tokens/s", "")]

_COHORT_METRICS = (("perplexity", "perplexity", False), ("ppl_increase", "ppl increase", True),
                   ("kl_divergence", "KL nats/token", False), ("top1_agreement", "top-1", True),
                   ("prefill_tokens_per_s", "prefill tokens/s", False), ("decode_tokens_per_s", "decode tokens/s", False),
                   ("ttft_ms", "TTFT ms", False), ("peak_rss_mb", "peak RSS MiB", False), ("model_mb", "model MiB", False),
                   ("kv_cache_bytes", "KV cache bytes", False),
                   ("recompute_decode_tokens_per_s", "recompute decode tokens/s", False))


def _budget_heads(budget: dict) -> list[tuple[str, str, str]]:
    """The row columns with their budgets in the header, as the one-pass table shows them."""
    limits = {"ppl_increase": ("≤", budget.get("max_ppl_increase"), 100, "%"),
              "decode_tokens_per_s": ("≥", budget.get("min_decode_tokens_per_s"), 1, ""),
              "ttft_ms": ("≤", budget.get("max_ttft_ms"), 1, ""), "peak_rss_mb": ("≤", budget.get("max_peak_rss_mb"), 1, "")}
    out = []
    for key, head, kind in LM_ROW_COLUMNS:
        sign, limit, scale, unit = limits.get(key, ("", None, 1, ""))
        out.append((key, head + (f" ({sign}{limit * scale:g}{unit})" if limit is not None else ""), kind))
    return out


def _devices_table(rows: list[dict], flags: list[dict], budget: dict) -> str:
    kinds: dict[tuple, set] = {}
    for f in flags:
        kinds.setdefault((f["device"], f["version"]), set()).add(f["kind"])
    views = [row_view(r, kinds.get((r["device"], r["version"]), set())) for r in rows]
    return html_table(_budget_heads(budget), views, row_class)


def lm_target_section(name: str, target: str, rows: list[dict], cohorts: list[dict], flags: list[dict],
                      flagged: set, budget: dict, draw=draw_now) -> str:
    context = next((r["context"] for r in rows if r.get("context")), None)
    curve = any(r.get("kv_curve") for r in rows)
    triangle = draw(lm_triangle_chart, f"{name} on {target}: decode speed and memory, by perplexity increase", cohorts,
                    rows, flagged, budget)
    parts = [f'<div class="panel">{triangle}</div>']
    if curve:
        title = f"{name} on {target}: KV cache against recompute" + (f" (profile context {context})" if context else "")
        parts.append(f'<div class="panel">{draw(kv_curve_chart, title, rows)}</div>')
    parts.append(f'<h3>devices</h3><div class="panel">{_devices_table(rows, flags, budget)}</div>')
    return "".join(parts)


def lm_cohort_table(cohorts: list[dict]) -> str:
    cols = [("name", "bundle", "l"), ("target", "target", "l"), ("version", "version", "l"), ("devices", "devices", ""),
            ("failed", "failed", "")] + [(m, f"{label} median (min–max)", "spread") for m, label, _ in _COHORT_METRICS]
    items = [{**c, **{m: {**c["metrics"][m], "pct": pct} if m in c["metrics"] else None for m, _, pct in _COHORT_METRICS}}
             for c in cohorts]
    return html_table(cols, items)
