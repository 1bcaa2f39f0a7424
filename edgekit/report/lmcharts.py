"""A language model's two pictures in the fleet report, drawn like edgekit.report.charts.

- The triangle of generation: decode tokens/s across, peak memory up, perplexity increase
  over FP32 as colour; each version at its cohort's median (bars from its lowest to its
  highest device), each device a small dot, drifting ones ringed and named.
- Cache against recompute per target: decode tokens/s and resident memory at each context
  length the devices measured, with the KV cache (solid) and without it (dashed), and the
  cache's size by the formula (2 x layers x KV heads x head size x bytes x tokens). Where the
  lines cross is the trade-off the profile's kv_cache = "auto" settles.
"""

from __future__ import annotations

from collections import defaultdict
from statistics import median

from edgekit.report.chartaxes import DRIFT, budget_axis
from edgekit.report.chartlayout import Label
from edgekit.report.charts import COHORT, DOT, MARKERS, _figure, _finish, _norm, to_svg

__all__ = ["lm_triangle_chart", "kv_curve_chart", "lm_triangle_figure", "kv_curve_figure", "lm_calibration_figure",
           "lm_calibration_chart"]

_CMAP = "viridis_r"  # a larger perplexity increase is worse: darker
_RSS_AXIS = "peak memory (MiB)"


def _increase_format(value, _=None) -> str:
    return f"{value * 100:+.2f}"


def lm_triangle_figure(title: str, cohorts: list[dict], rows: list[dict], flagged: set, budget: dict):
    """One target: each version and device by decode speed and peak memory, coloured by
    perplexity increase over FP32 (edgekit.report.lmfleet's row columns)."""
    fig = _figure(10, 5.2)
    ax = fig.add_subplot()
    measured = [r for r in rows if r.get("decode_tokens_per_s") is not None and r["peak_rss_mb"] is not None]
    norm = _norm([r["ppl_increase"] for r in measured if r["ppl_increase"] is not None])
    colour = lambda v: v if v is not None else norm.vmin  # noqa: E731
    labels, obstacles, dots = [], [], None
    for i, c in enumerate(c for c in cohorts if any(r["version"] == c["version"] for r in measured)):
        marker = MARKERS[i % len(MARKERS)]
        members = [r for r in measured if r["version"] == c["version"]]
        m = c["metrics"]
        x, y = m["decode_tokens_per_s"]["median"], m["peak_rss_mb"]["median"]
        ax.errorbar(x, y, xerr=[[x - m["decode_tokens_per_s"]["min"]], [m["decode_tokens_per_s"]["max"] - x]],
                    yerr=[[y - m["peak_rss_mb"]["min"]], [m["peak_rss_mb"]["max"] - y]],
                    fmt="none", ecolor="#888888", elinewidth=1, capsize=3, zorder=1)
        increase = (m.get("ppl_increase") or {}).get("median")
        ax.scatter([x], [y], s=COHORT, c=[colour(increase)], cmap=_CMAP, norm=norm, marker=marker,
                   edgecolors="black", linewidths=1.2, alpha=0.8, zorder=3)
        dots = ax.scatter([r["decode_tokens_per_s"] for r in members], [r["peak_rss_mb"] for r in members],
                          c=[colour(r["ppl_increase"]) for r in members], cmap=_CMAP, norm=norm, s=DOT,
                          marker=marker, alpha=0.85, zorder=2, edgecolors="#333333", linewidths=0.4)
        text = c["version"] + ("" if increase is None else f" ({_increase_format(increase)}%)")
        labels.append(Label((x, y), text, COHORT, {"fontsize": 9, "weight": "bold"}))
        obstacles += [((x, y), COHORT)] + [((r["decode_tokens_per_s"], r["peak_rss_mb"]), DOT) for r in members]
    for r in measured:
        if (r["device"], r["version"]) in flagged:
            xy = (r["decode_tokens_per_s"], r["peak_rss_mb"])
            ax.scatter(*([v] for v in xy), s=180, facecolors="none", edgecolors=DRIFT, linewidths=2, zorder=4)
            obstacles.append((xy, 180))
            labels.append(Label(xy, f"{r['device']} ({r['version']})", 180, {"fontsize": 8, "color": DRIFT}))
    _speed_axis(ax, [r["decode_tokens_per_s"] for r in measured], budget.get("min_decode_tokens_per_s"))
    budget_axis(ax, "y", [r["peak_rss_mb"] for r in measured], _RSS_AXIS, budget.get("max_peak_rss_mb"), "MiB",
                "largest")
    if dots is not None:
        fig.colorbar(dots, ax=ax, label="perplexity increase over FP32 (%)", format=_increase_format)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _finish(fig, [(ax, labels, obstacles)])


def _speed_axis(ax, speeds: list[float], floor, who: str = "slowest device") -> None:
    """Decode speed across; its budget is a floor, so the region below it is the shaded one
    (chartaxes shades beyond a ceiling)."""
    note = ""
    if floor is not None and speeds:
        slowest = min(speeds)
        note = (f"\n{who} {slowest:.3g} tokens/s, budget at least {floor:g} (dashed)"
                + (": below it" if slowest < floor else ""))
    budget_axis(ax, "x", speeds, "decode speed (tokens/s, right is faster)")
    if floor is not None and speeds:
        low, high = ax.get_xlim()
        low = min(low, floor * 0.9)
        ax.set_xlim(low, max(high, floor * 1.1))
        ax.axvline(floor, color=DRIFT, linestyle="--", linewidth=1)
        ax.axvspan(low, floor, color=DRIFT, alpha=0.07)
        ax.set_xlabel(ax.get_xlabel() + note)


def lm_triangle_chart(title: str, cohorts: list[dict], rows: list[dict], flagged: set, budget: dict) -> str:
    return to_svg(lm_triangle_figure(title, cohorts, rows, flagged, budget))


def curve_by_version(rows: list[dict]) -> dict[str, list[dict]]:
    """version -> [{context, kv_cache_bytes, cache_tps, recompute_tps, cache_rss, recompute_rss}],
    each the median over the version's devices at that context."""
    gathered: dict[str, dict[int, dict[str, list]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        for p in r.get("kv_curve") or ():
            at = gathered[r["version"]][p["context"]]
            at["kv_cache_bytes"].append(p["kv_cache_bytes"])
            for mode in ("cache", "recompute"):
                for key, short in (("decode_tokens_per_s", "tps"), ("rss_mb", "rss")):
                    value = (p.get(mode) or {}).get(key)
                    if value is not None:
                        at[f"{mode}_{short}"].append(value)
    return {version: [{"context": ctx, **{k: median(v) for k, v in values.items()}} for ctx, values in sorted(points.items())]
            for version, points in sorted(gathered.items())}


def kv_curve_figure(title: str, rows: list[dict]):
    """Cache (solid) against recompute (dashed) by context length, one colour per version:
    decode tokens/s on the left, resident memory and the cache's formula size on the right."""
    curves = curve_by_version(rows)
    fig = _figure(11, 4.6)
    speed_ax, memory_ax = fig.subplots(1, 2)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"]
    speeds, memories, contexts = [], [], []
    for i, (version, points) in enumerate(curves.items()):
        colour = palette[i % len(palette)]
        ctx = [p["context"] for p in points]
        contexts += ctx
        for mode, style in (("cache", "-"), ("recompute", "--")):
            tps = [(c, p[f"{mode}_tps"]) for c, p in zip(ctx, points) if f"{mode}_tps" in p]
            rss = [(c, p[f"{mode}_rss"]) for c, p in zip(ctx, points) if f"{mode}_rss" in p]
            if tps:
                speed_ax.plot(*zip(*tps), style, marker="o", color=colour, label=f"{version} {mode}")
                speeds += [v for _, v in tps]
            if rss:
                memory_ax.plot(*zip(*rss), style, marker="o", color=colour, label=f"{version} {mode}")
                memories += [v for _, v in rss]
        if i == 0:  # the formula does not depend on the weights' precision: drawn once
            kv = [p["kv_cache_bytes"] / 2 ** 20 for p in points]
            memory_ax.plot(ctx, kv, ":", color="black", label="KV cache by the formula")
            memories += kv
    for ax in (speed_ax, memory_ax):
        budget_axis(ax, "x", contexts, "context (tokens)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    budget_axis(speed_ax, "y", speeds, "decode speed (tokens/s)")
    budget_axis(memory_ax, "y", memories, "memory (MiB): peak RSS of the run; KV cache")
    fig.suptitle(title)
    return _finish(fig, [])


def kv_curve_chart(title: str, rows: list[dict]) -> str:
    return to_svg(kv_curve_figure(title, rows))


def lm_calibration_figure(record: dict, rows: list[dict]):
    """Every measured candidate of a language model's calibration by decode speed against
    peak memory, coloured by perplexity increase: passing ones round, budget breakers
    crosses, the chosen one a star; points carry the candidate's number (as in the table)."""
    budgets = record.get("budgets") or {}
    pts = [r for r in rows if r["status"] == "ok" and r.get("decode_tokens_per_s") is not None
           and r["peak_rss_mb"] is not None]
    norm = _norm([r["ppl_increase"] for r in pts if r.get("ppl_increase") is not None])
    fig = _figure(10, 5.2)
    ax = fig.add_subplot()
    scatter = None
    for passed, marker in ((True, "o"), (False, "X")):
        group = [r for r in pts if bool(r["passed"]) is passed]
        if group:
            scatter = ax.scatter([r["decode_tokens_per_s"] for r in group], [r["peak_rss_mb"] for r in group],
                                 c=[r["ppl_increase"] if r.get("ppl_increase") is not None else norm.vmin for r in group],
                                 cmap=_CMAP, norm=norm, marker=marker, s=70, edgecolors="black", linewidths=0.6, zorder=3)
    chosen = next((r for r in pts if r["chosen"]), None)
    if chosen:
        ax.scatter([chosen["decode_tokens_per_s"]], [chosen["peak_rss_mb"]], marker="*", s=520, facecolors="none",
                   edgecolors=DRIFT, linewidths=1.8, zorder=4)
    labels = [Label((r["decode_tokens_per_s"], r["peak_rss_mb"]), r["id"] if r["chosen"] else str(r["no"]),
                    520 if r["chosen"] else 70, {"fontsize": 8, "weight": "bold" if r["chosen"] else "normal"})
              for r in sorted(pts, key=lambda r: not r["chosen"])]
    _speed_axis(ax, [r["decode_tokens_per_s"] for r in pts], budgets.get("min_decode_tokens_per_s"), "slowest candidate")
    budget_axis(ax, "y", [r["peak_rss_mb"] for r in pts], _RSS_AXIS, budgets.get("max_peak_rss_mb"), "MiB",
                f"chosen {chosen['id']}" if chosen else "best", chosen["peak_rss_mb"] if chosen else None)
    if scatter is not None:
        fig.colorbar(scatter, ax=ax, label="perplexity increase over FP32 (%)", format=_increase_format)
    target = (record.get("target") or {}).get("name", "?")
    ax.set_title(f"calibration for {target}: every candidate (o meets the budgets, x breaks one, * chosen)")
    ax.grid(alpha=0.3)
    return _finish(fig, [(ax, labels, [((r["decode_tokens_per_s"], r["peak_rss_mb"]), 70) for r in pts])])


def lm_calibration_chart(record: dict, rows: list[dict]) -> str:
    return to_svg(lm_calibration_figure(record, rows))
