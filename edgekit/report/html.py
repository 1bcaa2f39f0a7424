"""The fleet report and calibration records as one self-contained HTML file.

Self-contained means the page loads nothing, wherever it is opened. The rule, which the
tests check on every page: each src, href, xlink:href, action, formaction, poster, srcset,
background or data attribute is a #fragment or a data: URI; each CSS url() is url(#...) or
url(data:...); there is no @import, and no <link>, <base>, <iframe>, <frame>, <object>,
<embed>, <script> or <meta http-equiv="refresh">. Namespace URIs identify and load
nothing, but there are none either (edgekit.report.charts drops them). Text may mention a
URL, as a device's error message may: text loads nothing. Every text from the store is
escaped.
"""

from __future__ import annotations

import time
from html import escape
from typing import Callable, Optional

from edgekit.report.chartpool import draw_now
from edgekit.report.charts import calibration_chart, device_chart, triangle_chart, triangle_rows
from edgekit.report.htmltable import html_table, row_class, row_view
from edgekit.report.lmfleet import is_lm
from edgekit.report.views import ROWS_IN_FULL, at_scale, health_items, latest_or_a_look

__all__ = ["render_fleet", "render_calibration", "CSS"]

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1b1f24;background:#f4f6f8}
main{max-width:1180px;margin:0 auto;padding:20px 24px 60px}
h1{font-size:24px;margin:8px 0 2px}h2{font-size:19px;margin:28px 0 8px;border-bottom:2px solid #d0d7de;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.meta{color:#57606a;font-size:13px;margin-bottom:14px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:22px}.card span{color:#57606a;font-size:12px}
.card.bad{border-color:#d62728;background:#fff1f0}.card.bad b{color:#b31d1d}.card.good b{color:#1a7f37}
.panel{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:12px 14px;margin:10px 0;overflow-x:auto}
.attention{border-left:6px solid #d62728}
table{border-collapse:collapse;font-size:12.5px;width:100%}
th,td{padding:4px 5px;border-bottom:1px solid #e5e8eb;text-align:right;white-space:nowrap}
th{background:#eef1f4;white-space:normal;vertical-align:bottom}td small{color:#6e7781}td.l,th.l{text-align:left}td.wrap{white-space:normal;text-align:left;min-width:140px;max-width:320px}
tr.drift td{background:#fde8e8}tr.failed td{background:#fff4e0}tr.chosen td{background:#e6f4ea;font-weight:600}
.tag{display:inline-block;padding:0 6px;border-radius:9px;font-size:11px;font-weight:600}
.tag.ok{background:#dafbe1;color:#1a7f37}.tag.bad{background:#ffd8d3;color:#b31d1d}.tag.warn{background:#fff1c2;color:#7d4e00}
.muted{color:#6e7781}ul.reasons{margin:4px 0 4px 18px;padding:0}ul.reasons li{margin:2px 0}
"""


# A target's budgets in words, with their units (max_accuracy_drop is a fraction: 0.05 is 5 pp).
BUDGET_WORDS = {"max_latency_ms_p95": ("p95 latency ≤ {:g} ms", 1), "max_peak_rss_mb": ("peak memory ≤ {:g} MiB", 1),
                "max_model_mb": ("model size ≤ {:g} MiB", 1), "max_accuracy_drop": ("accuracy drop ≤ {:g} pp", 100),
                "min_fidelity_cosine": ("cosine similarity to FP32 ≥ {:g}", 1),
                "max_ppl_increase": ("perplexity increase ≤ {:g}%", 100),
                "min_decode_tokens_per_s": ("decode ≥ {:g} tokens/s", 1), "max_ttft_ms": ("time to first token ≤ {:g} ms", 1)}


def budget_words(budget: dict) -> str:
    """'p95 latency ≤ 30 ms · peak memory ≤ 2048 MiB · ...' for the budgets that are set."""
    parts = []
    for key, value in budget.items():
        if value is None:
            continue
        words, scale = BUDGET_WORDS.get(key, (f"{key} {{:g}}", 1))
        parts.append(words.format(round(value * scale, 9)))
    return " · ".join(parts)


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>{body}</main></body></html>\n")


def _card(value, label: str, bad: bool = False, good: bool = False) -> str:
    cls = " bad" if bad else " good" if good else ""
    return f'<div class="card{cls}"><b>{escape(str(value))}</b><span>{escape(label)}</span></div>'


def _row_columns(budget: dict) -> list[tuple[str, str, str]]:
    p95, rss = budget.get("max_latency_ms_p95"), budget.get("max_peak_rss_mb")
    return [("device", "device", "l"), ("version", "version", "l"), ("current", "runs it", ""),
            ("runtime_version", "runtime", "l"), ("arch", "arch", "l"), ("accuracy", "accuracy", "pct"),
            ("accuracy_expected", "host", "pct"), ("drop", "drop vs host", "pp"),
            ("drop_fp32", "drop vs FP32", "pp"), ("cosine", "cosine", ""),
            ("latency_p50", "p50 ms", ""), ("latency_p95", "p95 ms" + (f" (≤{p95:g})" if p95 else ""), ""),
            ("peak_rss_mb", "RSS MiB" + (f" (≤{rss:g})" if rss else ""), ""), ("load_ms", "load ms", ""),
            ("last_seen", "last seen (UTC)", "time"), ("status", "status", "wrap"), ("flags", "drift", "l")]


def _attention(result: dict) -> str:
    h = result["health"]
    items = [f"<li><b>{escape(f['device'])}</b> ({escape(f['target'] or '?')} {escape(f['version'])}): "
             f"{escape(f['reason'])}</li>" for f in result["drift"]]
    items += [f"<li><b>{escape(r['device'])}</b> ({escape(r['version'])}): over budget: "
              f"{escape('; '.join(r['over_budget']))}</li>" for r in result["rows"] if r["over_budget"]]
    items += [f"<li><b>{escape(i['device'] or '')}</b>: {escape(i['category'])}"
              + (f" ({escape(i['version'])})" if i["version"] else "") + (f": {escape(str(i['detail']))}" if i["detail"] else "")
              + "</li>" for i in health_items(h) if i["category"] != "runs"]
    if not items:
        return '<div class="panel"><span class="tag ok">all clear</span> no drift, no failures, every device reported.</div>'
    return f'<div class="panel attention"><h3>Needs attention</h3><ul class="reasons">{"".join(items)}</ul></div>'


def _groups(result: dict) -> list[tuple[str, str]]:
    return sorted({(r["name"], r["target"] or "") for r in result["rows"]})


def _target_section(result: dict, name: str, target: str, budgets: dict, draw) -> str:
    rows = [r for r in result["rows"] if (r["name"], r["target"] or "") == (name, target)]
    cohorts = [c for c in result["cohorts"] if (c["name"], c["target"]) == (name, target)]
    flags = [f for f in result["drift"] if (f["name"], f["target"] or "") == (name, target)]
    flagged = {(f["device"], f["version"]) for f in flags} | {(r["device"], r["version"]) for r in rows if r["over_budget"]}
    budget = budgets.get(target) or {}
    limits = budget_words(budget) or "no profile here"
    head = [f'<h2 id="t-{escape(target)}">{escape(name)} on {escape(target)}</h2>',
            f'<div class="meta">budgets: {escape(limits)}</div>']
    if any(is_lm(r) for r in rows):
        from edgekit.report.lmhtml import lm_target_section

        return "".join(head) + lm_target_section(name, target, rows, cohorts, flags, flagged, budget, draw)
    triangle = draw(triangle_chart, f"{name} on {target}: each version by latency and memory", cohorts,
                    triangle_rows(rows), flagged, budget)
    parts = [*head,
             f'<div class="panel">{triangle}</div>',
             f'<div class="panel">{_device_chart(name, target, rows, flags, budget, draw)}</div>',
             f'<h3>devices</h3><div class="panel">{_devices_table(rows, flags, budget)}</div>']
    return "".join(parts)


# Past this many device x version rows the device chart (a line each) shows those that need
# a look and the extremes (views.at_scale).
CHART_ROWS = 60


def _device_chart(name: str, target: str, rows: list[dict], flags: list[dict], budget: dict, draw) -> str:
    if len(rows) <= CHART_ROWS:
        return draw(device_chart, f"{name} on {target}: every device", rows, flags, budget)
    shown = at_scale(rows)
    keys = {(r["device"], r["version"]) for r in shown}  # only their flags go to the chart (and its worker)
    return draw(device_chart, f"{name} on {target}: {len(shown)} of {len(rows)} device rows, those that need a look "
                "and the extremes", shown, [f for f in flags if (f["device"], f["version"]) in keys], budget)


def _devices_table(rows: list[dict], flags: list[dict], budget: dict) -> str:
    """Every device x version row; past ROWS_IN_FULL, each device's latest row and those that
    need a look, with how many more passed (each version's numbers are in its cohort below)."""
    kinds: dict[tuple, set] = {}
    for f in flags:
        kinds.setdefault((f["device"], f["version"]), set()).add(f["kind"])
    shown = rows if len(rows) <= ROWS_IN_FULL else latest_or_a_look(rows)
    views = [row_view(r, kinds.get((r["device"], r["version"]), set())) for r in shown]
    table = html_table(_row_columns(budget), views, row_class)
    if len(shown) == len(rows):
        return table
    return (f'<p class="meta">{len(rows)} device × version rows: listed, each device\'s latest (the version it '
            f"runs, else the newest it reported) and every row that needs a look; not listed, the {len(rows) - len(shown)} "
            "rows of other versions that passed, without drift or broken budgets: their medians and ranges are in "
            "Cohorts below, and <code>edgekit report --version V</code> (or <code>-f csv</code>) gives every "
            f"row.</p>{table}")


def _cohort_table(cohorts: list[dict]) -> str:
    metrics = (("accuracy", "accuracy", True), ("latency_p50", "p50 ms", False), ("latency_p95", "p95 ms", False),
               ("peak_rss_mb", "RSS MiB", False), ("load_ms", "load ms", False), ("model_mb", "model MiB", False))
    cols = [("name", "bundle", "l"), ("target", "target", "l"), ("version", "version", "l"), ("devices", "devices", ""),
            ("failed", "failed", "")] + [(m, f"{label} median (min–max)", "spread") for m, label, _ in metrics]
    items = [{**c, **{m: {**c["metrics"][m], "pct": pct} if m in c["metrics"] else None for m, _, pct in metrics}}
             for c in cohorts]
    return html_table(cols, items)


def _health_section(health: dict) -> str:
    versions = html_table([("name", "bundle", "l"), ("target", "target", "l"), ("version", "version", "l"),
                       ("count", "devices", ""), ("devices", "which", "wrap")],
                      [{**v, "devices": ", ".join(v["devices"])} for v in health["versions"]])
    rollouts = html_table([("id", "#", ""), ("name", "bundle", "l"), ("version", "version", "l"), ("target", "target", "l"),
                       ("status", "outcome", "l"), ("waves", "waves", ""), ("devices_ok", "ok", ""),
                       ("devices_failed", "failed", "wrap"), ("started_at", "started (UTC)", "time"), ("reason", "reason", "wrap")],
                      [{**r, "devices_failed": ", ".join(r["devices_failed"])} for r in health["rollouts"]],
                      lambda r: "" if r["status"] == "completed" else "drift" if r["status"] in ("halted", "aborted") else "failed")
    return (f'<h2 id="health">Rollout health</h2><h3>what runs where</h3><div class="panel">{versions}</div>'
            f'<h3>last rollouts</h3><div class="panel">'
            + (rollouts if health["rollouts"] else '<span class="muted">no rollout recorded in this store</span>')
            + "</div>")


def _compare_section(rows: list[dict]) -> str:
    if not rows:
        return ""
    v1, v2 = rows[0]["v1"], rows[0]["v2"]
    table = html_table([("name", "bundle", "l"), ("target", "target", "l"), ("metric", "metric", "l"),
                    ("before", v1, ""), ("after", v2, ""), ("change", "change", ""), ("change_pct", "change %", "")], rows)
    return f'<h2 id="compare">{escape(v1)} → {escape(v2)}</h2><div class="panel">{table}</div>'


def render_fleet(result: dict, *, store: str, budgets: dict, filters: Optional[dict] = None,
                 draw: Callable[..., str] = draw_now) -> str:
    """The fleet report page for `result` (edgekit.report.analysis.analyse). `draw(chart, *args)`
    draws each chart (edgekit.report.chartpool: a pool's marks, filled in afterwards)."""
    h = result["health"]
    shown = ", ".join(f"{k} {v}" for k, v in (filters or {}).items() if v) or "everything"
    cards = "".join([
        _card(h["devices"], "devices known"), _card(len(result["rows"]), "device × version rows"),
        _card(len(result["cohorts"]), "cohorts (target × version)"),
        _card(len(result["drift"]), "drift flags", bad=bool(result["drift"]), good=not result["drift"]),
        _card(len(h["failed_evaluations"]), "failed evaluations", bad=bool(h["failed_evaluations"])),
        _card(len(h["unreachable"]), "unreachable", bad=bool(h["unreachable"])),
        _card(len(h["never_reported"]), "never reported", bad=bool(h["never_reported"])),
        _card(h["rollouts"][0]["status"] if h["rollouts"] else "none", "last rollout",
              bad=bool(h["rollouts"]) and h["rollouts"][0]["status"] != "completed")])
    body = [f"<h1>edgekit fleet report</h1><div class=\"meta\">store {escape(store)} · {escape(shown)} · "
            f"generated {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())}</div>",
            f'<div class="cards">{cards}</div>', _attention(result)]
    body += [_target_section(result, name, target, budgets, draw) for name, target in _groups(result)]
    one_pass = [c for c in result["cohorts"] if "perplexity" not in c["metrics"]]
    lm = [c for c in result["cohorts"] if "perplexity" in c["metrics"]]
    if one_pass or not lm:
        body.append(f'<h2 id="cohorts">Cohorts</h2><div class="panel">{_cohort_table(one_pass)}</div>')
    if lm:
        from edgekit.report.lmhtml import lm_cohort_table

        body.append(f'<h2 id="lm-cohorts">Language-model cohorts</h2><div class="panel">{lm_cohort_table(lm)}</div>')
    body.append(_health_section(h))
    body.append(_compare_section(result.get("compare") or []))
    return _page("edgekit fleet report", "".join(body))


def render_calibration(record: dict, rows: list[dict], source: str) -> str:
    """A calibration record: every candidate in the triangle, the chosen one marked, the budgets drawn."""
    target = (record.get("target") or {}).get("name", "?")
    budgets = budget_words(record.get("budgets") or {})
    quality = "accuracy" if record.get("metric") == "accuracy" else "cosine"
    cols = [("no", "#", ""), ("id", "candidate", "l"), ("status", "status", "l"), ("passed", "meets budgets", ""),
            (quality, quality, "pct" if quality == "accuracy" else ""), ("drop", "drop", "pp" if quality == "accuracy" else ""),
            ("model_mb", "model MiB", ""), ("latency_p50", "p50 ms", ""), ("latency_p95", "p95 ms", ""),
            ("peak_rss_mb", "RSS MiB", ""), ("failed_budgets", "budgets broken", "wrap"), ("error", "error", "wrap")]
    chart = calibration_chart
    if record.get("metric") == "perplexity":
        from edgekit.report.lmhtml import LM_CALIBRATION_COLUMNS
        from edgekit.report.lmcharts import lm_calibration_chart as chart

        cols = cols[:4] + LM_CALIBRATION_COLUMNS + cols[-2:]
    chosen = record.get("chosen")
    body = [f"<h1>calibration for {escape(target)}</h1>",
            f'<div class="meta">{escape(source)} · model {escape(str((record.get("model") or {}).get("path", "?")))} · '
            f"objective {escape(str(record.get('objective')))} · budgets: {escape(budgets or 'none')}</div>",
            f'<div class="panel{" attention" if not chosen else ""}"><b>chosen: {escape(chosen or "none")}</b> — '
            f"{escape(str(record.get('why') or ''))}</div>",
            f'<div class="panel">{chart(record, rows)}</div>',
            '<h2>candidates</h2><div class="panel">'
            + html_table(cols, rows, lambda r: "chosen" if r["chosen"] else "failed" if r["status"] != "ok" else
                     "drift" if not r["passed"] else "") + "</div>"]
    return _page(f"edgekit calibration for {target}", "".join(body))
