"""The memory-compute-accuracy pictures, drawn with matplotlib and returned as inline SVG.

Each chart puts p95 latency (what budgets gate on) across and peak memory or model size
up, with quality (accuracy, else top-1 agreement or cosine) as colour. Every budgeted axis
draws or states its budget and the headroom (edgekit.report.chartaxes); tick labels are
thinned until they do not touch and point labels placed where they cover nothing
(edgekit.report.chartlayout).

The SVG is made to live inside an HTML page: no XML prolog or DOCTYPE (whose DTD is a
URL), no namespace declarations (the HTML parser supplies them), ids salted per chart so
that two charts on one page never share one, and text kept as text (svg.fonttype none).
"""

from __future__ import annotations

import io
import os
import re
from itertools import count
from typing import Optional

from edgekit.report.chartaxes import DRIFT, QUALITY_AXIS, budget_axis, quality_format
from edgekit.report.chartlayout import Label, marker_boxes, on_top, place_labels, settle_layout

__all__ = ["to_svg", "triangle_chart", "device_chart", "calibration_chart", "quality_of", "triangle_rows",
           "triangle_figure", "device_figure", "calibration_figure"]

_SALT = count()
_CMAP = "viridis"
MARKERS = "osD^vP"
COHORT, DOT = 300, 28   # marker sizes (points squared): a version's median, one device
# A version's device dots past this many are drawn as one picture inside the SVG (text and the
# versions' markers stay vector): 10,000 dots as SVG elements took most of a fleet report's time.
RASTER_DOTS = 200


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # measures text, for the tick and label layout
    return fig


def to_svg(fig) -> str:
    """The figure as an <svg> element ready to inline in HTML."""
    import matplotlib

    buf = io.StringIO()
    # the process in the salt too: a page's charts may be drawn by several (edgekit.report.chartpool)
    salt = f"edgekit-{os.getpid()}-{next(_SALT)}"
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
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


def _finish(fig, labels_by_axes: list[tuple], note_left_out=None) -> str:
    """Thin the ticks, freeze the layout, place the point labels (those left out go to
    `note_left_out`); the finished figure."""
    settle_layout(fig)
    left_out = []
    for ax, labels, obstacles in labels_by_axes:
        left_out += place_labels(ax, labels, marker_boxes(ax, obstacles))
    if left_out and note_left_out:
        note_left_out(left_out)
    return fig


def _version_legend(fig, entries: list[tuple[str, str]]) -> None:
    """Below the chart, in black and white: the colour is the quality, the marker the version."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker=m, linestyle="none", markersize=9, markerfacecolor="white",
                      markeredgecolor="black", label=text) for text, m in entries]
    handles.append(Line2D([], [], marker="o", linestyle="none", markersize=11, markerfacecolor="none",
                          markeredgecolor=DRIFT, markeredgewidth=2, label="drift"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=8, frameon=False,
               title="large marker: a version's median over its devices, bars: its lowest to highest device; "
                     "small: one device", title_fontsize=8)


def _cohort_point(c: dict, lat: str) -> tuple[float, float, Optional[float]]:
    m = c["metrics"]
    q = (m.get("accuracy") or m.get("top1_agreement") or m.get("cosine") or {}).get("median")
    return m[lat]["median"], m["peak_rss_mb"]["median"], q


def triangle_figure(title: str, cohorts: list[dict], rows: list[dict], flagged: set, budget: dict):
    """One target: each version (its own marker) at its cohort's median p95 latency and peak
    memory, with bars from the lowest to the highest device, coloured by median quality and
    labelled; each device as a small dot of its version's marker, drifting ones ringed and named."""
    fig = _figure(10, 5.2)
    ax = fig.add_subplot()
    # Runners older than the p95 field send p50, p90 and p99: then the chart shows p50, without the p95 budget.
    old_runner = any(r["latency_p95"] is None for r in rows if r["latency_p50"] is not None)
    lat = "latency_p50" if old_runner else "latency_p95"
    measured = [r for r in rows if r[lat] is not None and r["peak_rss_mb"] is not None]
    norm = _norm([q for q in (quality_of(r)[0] for r in measured) if q is not None])
    qname = next((quality_of(r)[1] for r in measured if quality_of(r)[0] is not None), "quality")
    colour = lambda q: q if q is not None else norm.vmin  # noqa: E731
    # the view first: the device dots are drawn only where they can be seen (on_top)
    budget_axis(ax, "x", [r[lat] for r in measured], f"{lat[-3:]} latency (ms)",
                budget.get("max_latency_ms_p95") if lat == "latency_p95" else None, "ms", "slowest device")
    budget_axis(ax, "y", [r["peak_rss_mb"] for r in measured], "peak memory (MiB)", budget.get("max_peak_rss_mb"),
                "MiB", "largest")
    labels, obstacles, legend, bars = [], [], [], []
    by_version: dict[str, list[dict]] = {}
    for r in measured:
        by_version.setdefault(r["version"], []).append(r)
    # one scatter per marker (the versions that share it) for the medians and one for the
    # devices, and one collection for every version's bars: each artist costs the layout
    # and the SVG a pass
    medians: dict[str, list] = {}
    devices: dict[str, list] = {}
    for i, c in enumerate(c for c in cohorts if c["version"] in by_version):
        marker = MARKERS[i % len(MARKERS)]
        members = by_version[c["version"]]
        members = [members[j] for j in on_top(ax, [(r[lat], r["peak_rss_mb"]) for r in members])]
        x, y, q = _cohort_point(c, lat)
        m = c["metrics"]
        bars.append(((x, y), (m[lat]["min"], m[lat]["max"]), (m["peak_rss_mb"]["min"], m["peak_rss_mb"]["max"])))
        medians.setdefault(marker, []).append((x, y, colour(q)))
        devices.setdefault(marker, []).extend((r[lat], r["peak_rss_mb"], colour(quality_of(r)[0])) for r in members)
        labels.append(Label((x, y), c["version"], COHORT, {"fontsize": 9, "weight": "bold"}))
        obstacles += [((x, y), COHORT)] + [((r[lat], r["peak_rss_mb"]), DOT) for r in members]
        count = f"{c['ok']} device{'s' if c['ok'] != 1 else ''}"
        legend.append((f"{c['version']}: " + (f"{quality_format(qname)(q, None)}{'' if qname == 'cosine' else '%'}, "
                                              if q is not None else "") + count, marker))
    _spread_bars(ax, bars)
    dots = None
    for marker, points in medians.items():
        x, y, q = zip(*points)
        ax.scatter(x, y, s=COHORT, c=q, cmap=_CMAP, norm=norm, marker=marker, edgecolors="black",
                   linewidths=1.2, alpha=0.8, zorder=3)  # a version measured alike shows through
    for marker, points in devices.items():
        x, y, q = zip(*points)
        dots = ax.scatter(x, y, c=q, cmap=_CMAP, norm=norm, s=DOT, marker=marker, alpha=0.85, zorder=2,
                          edgecolors="#333333", linewidths=0.4, rasterized=len(points) > RASTER_DOTS)
    ringed = [r for r in measured if (r["device"], r["version"]) in flagged]
    if ringed:
        ax.scatter([r[lat] for r in ringed], [r["peak_rss_mb"] for r in ringed], s=180, facecolors="none",
                   edgecolors=DRIFT, linewidths=2, zorder=4)
    for r in ringed:
        obstacles.append(((r[lat], r["peak_rss_mb"]), 180))
        labels.append(Label((r[lat], r["peak_rss_mb"]), f"{r['device']} ({r['version']})", 180,
                            {"fontsize": 8, "color": DRIFT}))
    if dots is not None:
        fig.colorbar(dots, ax=ax, label=QUALITY_AXIS.get(qname, qname), format=quality_format(qname))
        _version_legend(fig, legend)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _finish(fig, [(ax, labels, obstacles)])


def _spread_bars(ax, bars: list[tuple]) -> None:
    """Each version's bars from its lowest to its highest device, across and up, with caps
    (as errorbar draws them, 3 points each side): one line collection and two cap scatters
    for all the versions."""
    from matplotlib.collections import LineCollection

    if not bars:
        return
    across = [[(lo, y), (hi, y)] for (_, y), (lo, hi), _ in bars]
    up = [[(x, lo), (x, hi)] for (x, _), _, (lo, hi) in bars]
    ax.add_collection(LineCollection(across + up, colors="#888888", linewidths=1, zorder=1), autolim=False)
    cap = {"c": "#888888", "s": (2 * 3) ** 2, "linewidths": 1, "zorder": 1}
    ax.scatter([p[0] for seg in across for p in seg], [p[1] for seg in across for p in seg], marker="|", **cap)
    ax.scatter([p[0] for seg in up for p in seg], [p[1] for seg in up for p in seg], marker="_", **cap)


# What triangle_figure reads of a device row: a fleet's 10,000 rows, cut to these, travel to
# a chart worker (edgekit.report.chartpool) as 0.8 MB of pickle instead of 3.8 (0.01 s to
# pickle instead of 0.09 here).
TRIANGLE_FIELDS = ("device", "version", "latency_p50", "latency_p95", "peak_rss_mb", "accuracy", "top1_agreement",
                   "cosine")


def triangle_rows(rows: list[dict]) -> list[dict]:
    return [{k: r.get(k) for k in TRIANGLE_FIELDS} for r in rows]


def triangle_chart(title: str, cohorts: list[dict], rows: list[dict], flagged: set, budget: dict) -> str:
    return to_svg(triangle_figure(title, cohorts, rows, flagged, budget))


def _dot_panel(ax, values: list, refs: list, flagged: list[bool], second: Optional[list] = None) -> None:
    """One panel of the device chart, a row a line (the rows' labels are on the shared y axis)."""
    ys = list(range(len(values)))
    colours = [DRIFT if f else "#1f77b4" for f in flagged]
    shown = [(y, v, c) for y, v, c in zip(ys, values, colours) if v is not None]
    ax.scatter([v for _, v, _ in shown], [y for y, _, _ in shown], c=[c for _, _, c in shown], s=36, zorder=3)
    spans = [(y, lo, hi, c) for y, lo, hi, c in zip(ys, values, second or (), colours)
             if lo is not None and hi is not None]
    if spans:  # one collection each, not an artist per row
        ax.hlines([y for y, *_ in spans], [lo for _, lo, _, _ in spans], [hi for _, _, hi, _ in spans],
                  colors=[c for *_, c in spans], linewidth=2, alpha=0.5)
        ax.scatter([hi for _, _, hi, _ in spans], [y for y, *_ in spans], marker="|", s=80,
                   c=[c for *_, c in spans])
    ref_shown = [(y, r) for y, r in zip(ys, refs) if r is not None]
    if ref_shown:
        ax.scatter([r for _, r in ref_shown], [y for y, _ in ref_shown], marker="|", s=160, color="black", zorder=2)
    ax.grid(axis="x", alpha=0.3)


def _device_legend(fig) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="none", color="#1f77b4", label="a device's measurement"),
               Line2D([], [], marker="|", linestyle="none", markersize=12, color="black",
                      label="the host's accuracy for the same bundle"),
               Line2D([], [], color="#1f77b4", alpha=0.5, linewidth=2, marker="|", label="p50 to p95 latency"),
               Line2D([], [], marker="o", linestyle="none", color=DRIFT, label="drift"),
               Line2D([], [], color=DRIFT, linestyle="--", label="budget (beyond it shaded)")]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)


def device_figure(title: str, rows: list[dict], flags: list[dict], budget: dict):
    """One target, one line per device and version: quality against the host's (black tick),
    p50 to p95 latency against the budget, peak memory against the budget; drifting ones red."""
    kinds: dict[tuple, set] = {}
    for f in flags:
        kinds.setdefault((f["device"], f["version"]), set()).add(f["kind"])
    labels = [f"{r['device']} · {r['version']}" + ("" if r["status"] == "ok" else f" ({r['status']})") for r in rows]
    fig = _figure(11, 2.2 + 0.3 * len(rows))
    axes = fig.subplots(1, 3, sharey=True)
    qname = next((quality_of(r)[1] for r in rows if quality_of(r)[0] is not None), "quality")
    key = {"accuracy": "accuracy", "top-1 agreement": "top1_agreement", "cosine": "cosine"}.get(qname, "accuracy")
    ref = {"accuracy": "accuracy_expected", "top1_agreement": "top1_expected", "cosine": "cosine_expected"}[key]
    got = lambda r: kinds.get((r["device"], r["version"]), set())  # noqa: E731
    quality = [r[key] for r in rows]
    axes[0].set_yticks(range(len(rows)), labels)  # the y axis is shared: its ticks once, for the three panels
    axes[0].set_ylim(len(rows) - 0.5, -0.5)  # the first row on top
    _dot_panel(axes[0], quality, [r[ref] for r in rows],
               [bool(got(r) & {"accuracy", "top1_agreement", "cosine"}) for r in rows])
    budget_axis(axes[0], "x", [v for v in quality + [r[ref] for r in rows] if v is not None],
                QUALITY_AXIS.get(qname, qname), top=1.0)
    axes[0].xaxis.set_major_formatter(quality_format(qname))
    p50, p95 = [r["latency_p50"] for r in rows], [r["latency_p95"] for r in rows]
    _dot_panel(axes[1], p50, [None] * len(rows), [("latency" in got(r)) for r in rows], second=p95)
    budget_axis(axes[1], "x", [v for v in p50 + p95 if v is not None], "latency (ms), p50 to p95",
                budget.get("max_latency_ms_p95") if any(v is not None for v in p95) else None, "ms", "slowest p95")
    rss = [r["peak_rss_mb"] for r in rows]
    _dot_panel(axes[2], rss, [None] * len(rows), [("memory" in got(r)) for r in rows])
    budget_axis(axes[2], "x", [v for v in rss if v is not None], "peak memory (MiB)", budget.get("max_peak_rss_mb"),
                "MiB", "largest")
    _device_legend(fig)
    fig.suptitle(title)
    return _finish(fig, [])


def device_chart(title: str, rows: list[dict], flags: list[dict], budget: dict) -> str:
    return to_svg(device_figure(title, rows, flags, budget))


def _candidate_legend(fig):
    from matplotlib.lines import Line2D

    plain = {"linestyle": "none", "markerfacecolor": "white", "markeredgecolor": "black", "markersize": 9}
    handles = [Line2D([], [], marker="o", label="meets every budget", **plain),
               Line2D([], [], marker="X", label="breaks a budget", **plain),
               Line2D([], [], marker="*", linestyle="none", markersize=16, markerfacecolor="none",
                      markeredgecolor=DRIFT, label="chosen"),
               Line2D([], [], color=DRIFT, linestyle="--", label="budget (beyond it shaded)")]
    return fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False,
                      title="colour: quality; number: the candidate's row in the table", title_fontsize=8)


def calibration_figure(record: dict, rows: list[dict]):
    """Every measured candidate by p95 latency against model size and against peak memory,
    quality as colour; passing ones round, budget breakers as crosses, the chosen one a star.
    Points carry the candidate's number (`no`, as in the table): ids would cover each other."""
    measured = [r for r in rows if r["status"] == "ok" and r["latency_p95"] is not None]
    budgets = record.get("budgets") or {}
    qname = "accuracy" if record.get("metric") == "accuracy" else "cosine"
    norm = _norm([r[qname] for r in measured if r[qname] is not None])
    fig = _figure(11, 5.4)
    axes = fig.subplots(1, 2)
    panels = [_candidate_panel(ax, [r for r in measured if r[ykey] is not None], ykey, ylabel, budgets, qname, norm)
              for ax, ykey, ylabel in ((axes[0], "model_mb", "model size (MiB)"),
                                       (axes[1], "peak_rss_mb", "peak memory (MiB)"))]
    legend = _candidate_legend(fig)
    scatter = next((sc for sc, _ in panels if sc is not None), None)
    if scatter is not None:
        fig.colorbar(scatter, ax=axes, label=QUALITY_AXIS[qname], format=quality_format(qname))
    target = (record.get("target") or {}).get("name", "?")
    fig.suptitle(f"calibration for {target}: every candidate recipe (objective: {record.get('objective')})")
    return _finish(fig, [placement for _, placement in panels], lambda left: _note_unlabelled(legend, left))


def _candidate_panel(ax, pts: list[dict], ykey: str, ylabel: str, budgets: dict, qname: str, norm):
    """One panel of the calibration chart: (a scatter for the colour bar, the point labels to place)."""
    scatter = None
    for passed, marker in ((True, "o"), (False, "X")):
        group = [r for r in pts if bool(r["passed"]) is passed]
        if group:
            scatter = ax.scatter([r["latency_p95"] for r in group], [r[ykey] for r in group],
                                 c=[r[qname] if r[qname] is not None else norm.vmin for r in group],
                                 cmap=_CMAP, norm=norm, marker=marker, s=70, edgecolors="black", linewidths=0.6,
                                 zorder=3)
    chosen = next((r for r in pts if r["chosen"]), None)
    if chosen:
        ax.scatter([chosen["latency_p95"]], [chosen[ykey]], marker="*", s=520, facecolors="none", edgecolors=DRIFT,
                   linewidths=1.8, zorder=4)
    # the chosen one first: its label is the one a reader looks for
    labels = [Label((r["latency_p95"], r[ykey]), r["id"] if r["chosen"] else str(r["no"]), 520 if r["chosen"] else 70,
                    {"fontsize": 8, "weight": "bold" if r["chosen"] else "normal"})
              for r in sorted(pts, key=lambda r: not r["chosen"])]
    # the headroom that matters is the chosen candidate's (else the best one's)
    who = f"chosen {chosen['id']}" if chosen else "best"
    for which, key, label, limit in (("x", "latency_p95", "p95 latency (ms)", budgets.get("max_latency_ms_p95")),
                                     ("y", ykey, ylabel, budgets.get("max_model_mb" if ykey == "model_mb"
                                                                     else "max_peak_rss_mb"))):
        values = [r[key] for r in pts]
        judged = chosen[key] if chosen else min(values, default=None)
        budget_axis(ax, which, values, label, limit, "ms" if which == "x" else "MiB", who, judged)
    ax.grid(alpha=0.3)
    return scatter, (ax, labels, [((r["latency_p95"], r[ykey]), 70) for r in pts])


def _note_unlabelled(legend, left_out: list[Label]) -> None:
    """Numbers that found no free spot are named in the legend's title."""
    numbers = sorted({int(label.text) for label in left_out if label.text.isdigit()})
    if numbers:
        title = legend.get_title()
        title.set_text(f"{title.get_text()}; not numbered where crowded: {', '.join(map(str, numbers))}")


def calibration_chart(record: dict, rows: list[dict]) -> str:
    return to_svg(calibration_figure(record, rows))
