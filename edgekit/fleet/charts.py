"""The memory-compute-accuracy pictures, drawn with matplotlib and returned as inline SVG.

Each chart puts latency (p95, what budgets gate on) across and memory up, with quality
(accuracy, else top-1 agreement or cosine) as colour, and draws the target's budgets as
lines with the region beyond them shaded; a budget far outside the data is named in a
corner instead, so that it does not squash the points into one pixel.

The SVG is made to live inside an HTML page: no XML prolog or DOCTYPE (whose DTD is a
URL), no namespace declarations (the HTML parser supplies them), ids salted per chart so
that two charts on one page never share one, and text kept as text (svg.fonttype none).
"""

from __future__ import annotations

import io
import re
from collections import defaultdict
from itertools import count
from typing import Optional

__all__ = ["to_svg", "triangle_chart", "device_chart", "calibration_chart", "quality_of"]

DRIFT = "#d62728"
_SALT = count()
_CMAP = "viridis"


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    return Figure(figsize=(width, height), layout="constrained")


def to_svg(fig) -> str:
    """The figure as an <svg> element ready to inline in HTML."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"edgekit-{next(_SALT)}",
                                "font.family": "sans-serif"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    head_end = text.index(">")
    head = re.sub(r'\s(?:xmlns(?::\w+)?|width|height)="[^"]*"', "", text[:head_end])
    width = re.search(r'width="([\d.]+)pt"', text[:head_end])
    style = f' style="width:100%;height:auto;max-width:{float(width.group(1)) * 4 / 3:.0f}px"' if width else ""
    return head + style + text[head_end:]


def quality_of(row: dict) -> tuple[Optional[float], str]:
    """(value, name) of the quality a row or candidate shows: accuracy, else fidelity."""
    for key, name in (("accuracy", "accuracy"), ("top1_agreement", "top-1 agreement"), ("cosine", "cosine")):
        if row.get(key) is not None:
            return row[key], name
    return None, "quality"


def _norm(values: list[float]):
    from matplotlib.colors import Normalize

    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 0.005:  # one colour for a whole cohort would hide nothing but look broken
        mid = (hi + lo) / 2
        lo, hi = mid - 0.0025, mid + 0.0025
    return Normalize(vmin=lo, vmax=hi)


def _budget_lines(ax, xs: list[float], ys: list[float], x_budget: Optional[float], y_budget: Optional[float],
                  x_label: str, y_label: str) -> None:
    """Budgets near the data as dashed lines with the region beyond shaded; far ones as a note."""
    notes = []
    for budget, values, vertical, label in ((x_budget, xs, True, x_label), (y_budget, ys, False, y_label)):
        if budget is None or not values:
            continue
        if budget <= 3 * max(values):
            (ax.axvline if vertical else ax.axhline)(budget, color=DRIFT, linestyle="--", linewidth=1)
            (ax.axvspan if vertical else ax.axhspan)(budget, max(budget, max(values)) * 1.5, color=DRIFT, alpha=0.07)
            notes.append(f"{label} budget {budget:g} (dashed)")
        else:
            notes.append(f"{label} budget {budget:g}: far beyond the chart")
    if notes:
        ax.text(0.99, 0.01, "\n".join(notes), transform=ax.transAxes, ha="right", va="bottom", fontsize=7,
                color="#7f0000")


def _limits(ax, xs: list[float], ys: list[float]) -> None:
    for values, setter in ((xs, ax.set_xlim), (ys, ax.set_ylim)):
        if values:
            lo, hi = min(values), max(values)
            pad = (hi - lo) * 0.15 or abs(hi) * 0.1 or 1.0
            setter(max(0.0, lo - pad), hi + pad)


MARKERS = "osD^vP"


def _version_legend(fig, versions: list[tuple[str, str]]) -> None:
    """Below the chart, in black and white: the colour is the quality, the marker the version."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker=m, linestyle="none", markersize=9, markerfacecolor="white",
                      markeredgecolor="black", label=f"version {v}") for v, m in versions]
    handles.append(Line2D([], [], marker="o", linestyle="none", markersize=11, markerfacecolor="none",
                          markeredgecolor=DRIFT, markeredgewidth=2, label="drift"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False,
               title="large marker: the cohort's median, bars: its lowest to highest device; small: one device",
               title_fontsize=8)


def triangle_chart(title: str, cohorts: list[dict], rows: list[dict], flagged: set, budget: dict) -> str:
    """One target: each version (its own marker) at its cohort's median latency p95 and peak RSS,
    with bars from the lowest to the highest device, coloured and labelled by median quality;
    each device as a small dot of its version's marker, drifting ones ringed in red and named."""
    fig = _figure(10, 4.8)
    ax = fig.add_subplot()
    # Runners older than the p95 field send p50, p90 and p99: then the chart shows p50, without the p95 budget.
    lat = "latency_p95" if all(r["latency_p95"] is not None for r in rows if r["latency_p50"] is not None) else "latency_p50"
    measured = [r for r in rows if r[lat] is not None and r["peak_rss_mb"] is not None]
    qualities = [q for q in (quality_of(r)[0] for r in measured) if q is not None]
    norm = _norm(qualities)
    qname = next((quality_of(r)[1] for r in measured if quality_of(r)[0] is not None), "quality")
    shown = [c for c in cohorts if any(r["version"] == c["version"] for r in measured)]
    dots = None
    for i, c in enumerate(shown):
        marker = MARKERS[i % len(MARKERS)]
        members = [r for r in measured if r["version"] == c["version"]]
        m = c["metrics"]
        x, y = m[lat]["median"], m["peak_rss_mb"]["median"]
        q = (m.get("accuracy") or m.get("top1_agreement") or m.get("cosine") or {}).get("median")
        ax.errorbar(x, y, xerr=[[x - m[lat]["min"]], [m[lat]["max"] - x]],
                    yerr=[[y - m["peak_rss_mb"]["min"]], [m["peak_rss_mb"]["max"] - y]],
                    fmt="none", ecolor="#888888", elinewidth=1, capsize=3, zorder=1)
        ax.scatter([x], [y], s=300, c=[q if q is not None else norm.vmin], cmap=_CMAP, norm=norm, marker=marker,
                   edgecolors="black", linewidths=1.2, zorder=3)
        label = f"{c['version']}" + (f"  {q:.1%}" if q is not None else "") + f"  ({c['ok']} dev.)"
        ax.annotate(label, (x, y), xytext=(14, 10 if i % 2 == 0 else -18), textcoords="offset points", fontsize=9,
                    weight="bold")
        dots = ax.scatter([r[lat] for r in members], [r["peak_rss_mb"] for r in members],
                          c=[quality_of(r)[0] if quality_of(r)[0] is not None else norm.vmin for r in members],
                          cmap=_CMAP, norm=norm, s=28, marker=marker, alpha=0.85, zorder=2, edgecolors="#333333",
                          linewidths=0.4)
    for r in measured:
        if (r["device"], r["version"]) in flagged:
            ax.scatter([r[lat]], [r["peak_rss_mb"]], s=180, facecolors="none", edgecolors=DRIFT,
                       linewidths=2, zorder=4)
            ax.annotate(f"{r['device']} ({r['version']})", (r[lat], r["peak_rss_mb"]), xytext=(8, -14),
                        textcoords="offset points", fontsize=8, color=DRIFT)
    xs, ys = [r[lat] for r in measured], [r["peak_rss_mb"] for r in measured]
    _limits(ax, xs, ys)
    _budget_lines(ax, xs, ys, budget.get("max_latency_ms_p95") if lat == "latency_p95" else None,
                  budget.get("max_peak_rss_mb"), "p95", "RSS")
    if dots is not None:
        fig.colorbar(dots, ax=ax, label=qname, format=lambda v, _: f"{v:.1%}" if qname != "cosine" else f"{v:.4f}")
        _version_legend(fig, [(c["version"], MARKERS[i % len(MARKERS)]) for i, c in enumerate(shown)])
    ax.set(xlabel=f"latency {lat[-3:]} (ms)", ylabel="peak RSS (MiB)", title=title)
    ax.grid(alpha=0.3)
    return to_svg(fig)


def _dot_panel(ax, labels: list[str], values: list, refs: list, flagged: list[bool], xlabel: str,
               budget: Optional[float] = None, second: Optional[list] = None) -> None:
    ys = list(range(len(labels)))
    colours = [DRIFT if f else "#1f77b4" for f in flagged]
    shown = [(y, v, c) for y, v, c in zip(ys, values, colours) if v is not None]
    ax.scatter([v for _, v, _ in shown], [y for y, _, _ in shown], c=[c for _, _, c in shown], s=36, zorder=3)
    if second:
        for y, lo, hi, c in zip(ys, values, second, colours):
            if lo is not None and hi is not None:
                ax.plot([lo, hi], [y, y], color=c, linewidth=2, alpha=0.5)
                ax.scatter([hi], [y], marker="|", s=80, color=c)
    ref_shown = [(y, r) for y, r in zip(ys, refs) if r is not None]
    if ref_shown:
        ax.scatter([r for _, r in ref_shown], [y for y, _ in ref_shown], marker="|", s=160, color="black",
                   zorder=2, label="host")
    everything = [v for v in values + (second or []) + refs if v is not None]
    _limits(ax, everything, [])
    if budget is not None and everything and budget <= 3 * max(everything):
        ax.axvline(budget, color=DRIFT, linestyle="--", linewidth=1)
        ax.axvspan(budget, max(budget, max(everything)) * 1.5, color=DRIFT, alpha=0.07)
    ax.set_yticks(ys, labels)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    ax.invert_yaxis()


def device_chart(title: str, rows: list[dict], flags: list[dict], budget: dict) -> str:
    """One target, one line per device and version: quality against the host's (black tick),
    latency p50 to p95 against the budget, peak RSS against the budget; drifting ones red."""
    kinds: dict[tuple, set] = defaultdict(set)
    for f in flags:
        kinds[(f["device"], f["version"])].add(f["kind"])
    labels = [f"{r['device']} · {r['version']}" + ("" if r["status"] == "ok" else " (failed)") for r in rows]
    fig = _figure(11, 1.3 + 0.32 * len(rows))
    axes = fig.subplots(1, 3, sharey=True)
    qname = next((quality_of(r)[1] for r in rows if quality_of(r)[0] is not None), "quality")
    key = {"accuracy": "accuracy", "top-1 agreement": "top1_agreement", "cosine": "cosine"}.get(qname, "accuracy")
    ref = {"accuracy": "accuracy_expected", "top1_agreement": "top1_expected", "cosine": "cosine_expected"}[key]
    got = lambda r: kinds.get((r["device"], r["version"]), set())  # noqa: E731
    _dot_panel(axes[0], labels, [r[key] for r in rows], [r[ref] for r in rows],
               [bool(got(r) & {"accuracy", "top1_agreement", "cosine"}) for r in rows], f"{qname} (| host)")
    _dot_panel(axes[1], labels, [r["latency_p50"] for r in rows], [None] * len(rows),
               [("latency" in got(r)) for r in rows], "latency p50 to p95 (ms)",
               budget.get("max_latency_ms_p95"), second=[r["latency_p95"] for r in rows])
    _dot_panel(axes[2], labels, [r["peak_rss_mb"] for r in rows], [None] * len(rows),
               [("memory" in got(r)) for r in rows], "peak RSS (MiB)", budget.get("max_peak_rss_mb"))
    fig.suptitle(title)
    return to_svg(fig)


def _candidate_legend(fig) -> None:
    from matplotlib.lines import Line2D

    plain = {"linestyle": "none", "markerfacecolor": "white", "markeredgecolor": "black", "markersize": 9}
    handles = [Line2D([], [], marker="o", label="meets every budget", **plain),
               Line2D([], [], marker="X", label="breaks a budget", **plain),
               Line2D([], [], marker="*", linestyle="none", markersize=16, markerfacecolor="none",
                      markeredgecolor=DRIFT, label="chosen"),
               Line2D([], [], color=DRIFT, linestyle="--", label="budget (beyond it shaded)")]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False,
               title="colour: quality; number: the candidate's row in the table", title_fontsize=8)


def calibration_chart(record: dict, rows: list[dict]) -> str:
    """Every measured candidate by latency p95 against model size and against peak RSS,
    quality as colour; passing ones round, budget breakers as crosses, the chosen one a star.
    Points carry the candidate's number (`no`, as in the table): ids would cover each other."""
    measured = [r for r in rows if r["status"] == "ok" and r["latency_p95"] is not None]
    budgets = record.get("budgets") or {}
    qname = "accuracy" if record.get("metric") == "accuracy" else "cosine"
    norm = _norm([r[qname] for r in measured if r[qname] is not None])
    fig = _figure(11, 4.8)
    axes = fig.subplots(1, 2)
    scatter = None
    for ax, ykey, ylabel, ybudget in ((axes[0], "model_mb", "model size (MiB)", budgets.get("max_model_mb")),
                                       (axes[1], "peak_rss_mb", "peak RSS (MiB)", budgets.get("max_peak_rss_mb"))):
        pts = [r for r in measured if r[ykey] is not None]
        for passed, marker in ((True, "o"), (False, "X")):
            group = [r for r in pts if bool(r["passed"]) is passed]
            if group:
                scatter = ax.scatter([r["latency_p95"] for r in group], [r[ykey] for r in group],
                                     c=[r[qname] if r[qname] is not None else norm.vmin for r in group],
                                     cmap=_CMAP, norm=norm, marker=marker, s=70, edgecolors="black", linewidths=0.6,
                                     zorder=3)
        for r in pts:
            ax.annotate(r["id"] if r["chosen"] else str(r["no"]), (r["latency_p95"], r[ykey]), xytext=(5, 4),
                        textcoords="offset points", fontsize=8, weight="bold" if r["chosen"] else "normal")
            if r["chosen"]:
                ax.scatter([r["latency_p95"]], [r[ykey]], marker="*", s=520, facecolors="none", edgecolors=DRIFT,
                           linewidths=1.8, zorder=4)
        xs, ys = [r["latency_p95"] for r in pts], [r[ykey] for r in pts]
        _limits(ax, xs, ys)
        _budget_lines(ax, xs, ys, budgets.get("max_latency_ms_p95"), ybudget, "p95", ylabel.split(" (")[0])
        ax.set(xlabel="latency p95 (ms)", ylabel=ylabel)
        ax.grid(alpha=0.3)
    _candidate_legend(fig)
    if scatter is not None:
        fig.colorbar(scatter, ax=axes, label=qname,
                     format=lambda v, _: f"{v:.1%}" if qname == "accuracy" else f"{v:.4f}")
    target = (record.get("target") or {}).get("name", "?")
    fig.suptitle(f"calibration for {target}: every candidate recipe (objective: {record.get('objective')})")
    return to_svg(fig)
