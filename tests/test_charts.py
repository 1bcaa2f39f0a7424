"""The report's charts read well: no two pieces of text touch (tick labels, axis labels, point
labels, legends), budgets are drawn or their headroom stated with units, and a version or a
drifting device keeps a label of its own however close the points. Layout checks on the
figures the report draws (in display pixels, measured by matplotlib), not pixel tests; the
pages themselves are rendered in Chromium by test_report_html.py."""

from __future__ import annotations

import json
import re
from itertools import combinations

import pytest

from helpers.cli import run_edgekit
from edgekit.report.analysis import METRICS, cohort_summaries
from edgekit.report.chartaxes import budget_note
from edgekit.report.chartlayout import (Label, drawn_tick_labels, freeze_layout, label_boxes, on_top, overlap,
                                        place_labels, thin_ticks, tick_label_boxes)
from edgekit.report.charts import calibration_figure, device_figure, triangle_figure
from edgekit.report.views import calibration_rows
from edgekit.targets import load_profile


def _row(device: str, version: str, p95: float, rss: float, accuracy: float = 0.97) -> dict:
    row = {m: None for m in METRICS}
    row.update(device=device, version=version, name="digits", target="host-cpu", status="ok", accuracy=accuracy,
               accuracy_expected=0.97, top1_expected=None, cosine_expected=None, latency_p50=p95 * 0.8,
               latency_p95=p95, peak_rss_mb=rss, load_ms=5.0, model_mb=0.1)
    return row


def _texts(fig) -> list:
    """Every visible, non-empty text of the figure with its display box."""
    from matplotlib.text import Annotation, Text

    renderer = fig.canvas.get_renderer()
    for note in fig.findobj(Annotation):
        note.update_positions(renderer)
    axes = [axis for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)]
    # tick labels: only those drawn (a tick outside the view keeps a label that is not drawn)
    ticks = {id(t) for axis in axes for t in axis.get_majorticklabels() + axis.get_minorticklabels()}
    shown = [(t.get_text(), t.get_window_extent(renderer)) for axis in axes for t in drawn_tick_labels(axis)]
    # an annotation's own box, without its leader line
    return shown + [(t.get_text(), Text.get_window_extent(t, renderer)) for t in fig.findobj(Text)
                    if id(t) not in ticks and t.get_visible() and t.get_text().strip() and t.get_figure() is not None]


def assert_no_text_touches(fig) -> None:
    fig.canvas.draw()
    texts = _texts(fig)
    clashes = [(a, b) for (a, box_a), (b, box_b) in combinations(texts, 2) if overlap(box_a, box_b)]
    assert not clashes, clashes
    for ax in fig.axes:  # tick labels closer than 3 pixels read as one number
        for axis in (ax.xaxis, ax.yaxis):
            boxes = tick_label_boxes(axis, fig.canvas.get_renderer())
            assert not any(overlap(a, b, 3) for a, b in zip(boxes, boxes[1:])), \
                [t.get_text() for t in drawn_tick_labels(axis)]


def _crowded_fleet() -> tuple[list[dict], list[dict], set]:
    """Six versions measured within a hair of each other, three drifting devices among them."""
    rows = [_row(f"d-{i:02d}", f"2.{v}.0", 0.0200 + 0.00004 * v + 0.00001 * i, 81.2 + 0.01 * v)
            for v in range(6) for i in range(3)]
    flagged = {("d-00", "2.0.0"), ("d-01", "2.3.0"), ("d-02", "2.5.0")}
    return rows, cohort_summaries(rows), flagged


def test_version_and_drift_labels_never_overlap_however_close_the_points():
    rows, cohorts, flagged = _crowded_fleet()
    fig = triangle_figure("crowded", cohorts, rows, flagged, {"max_latency_ms_p95": 30, "max_peak_rss_mb": 2048})
    ax = fig.axes[0]
    boxes = label_boxes(fig)
    assert len(boxes) >= 6  # most labels found a place
    assert not [(a, b) for a, b in combinations(boxes, 2) if overlap(a, b)]
    frame = ax.get_window_extent(fig.canvas.get_renderer())
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    legend = " ".join(t.get_text() for legend in fig.legends for t in legend.get_texts())
    for version in {r["version"] for r in rows}:  # a label that fits nowhere is still in the legend
        assert f"{version}:" in legend
    assert_no_text_touches(fig)


def test_the_label_placer_leaves_out_what_cannot_fit_rather_than_overlap():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1.5))
    ax = fig.add_subplot()
    ax.set(xlim=(0, 1), ylim=(0, 1))
    freeze_layout(fig)
    labels = [Label((0.5, 0.5), f"label number {i}", 36, {"fontsize": 9}) for i in range(12)]
    left_out = place_labels(ax, labels)
    placed = label_boxes(fig)
    assert left_out and len(placed) + len(left_out) == 12
    assert not [(a, b) for a, b in combinations(placed, 2) if overlap(a, b)]


def test_of_dots_on_one_pixel_only_the_one_drawn_on_top_is_kept():
    from matplotlib.figure import Figure

    ax = Figure(figsize=(4, 3), dpi=100).add_subplot()
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)  # some 300 by 230 pixels: 0.001 apart is one pixel, 5 apart is not
    points = [(10, 10), (10.001, 10.001), (50, 50), (10, 10), (55, 50)]
    assert on_top(ax, points) == [2, 3, 4]
    ax.set_xscale("log")  # cells are pixels of the view, whatever its scale
    ax.set_xlim(1, 100)
    assert on_top(ax, [(1, 10), (1.00001, 10), (90, 10)]) == [1, 2]
    assert on_top(ax, []) == []


def test_tick_labels_are_thinned_until_they_do_not_touch():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.5, 1.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_xlim(0.01234, 0.01299)  # matplotlib's own choice: 0.0123, 0.0124, ... side by side
    ax.ticklabel_format(useOffset=False)
    fig.canvas.draw()
    before = tick_label_boxes(ax.xaxis, fig.canvas.get_renderer())
    assert any(overlap(a, b) for a, b in zip(before, before[1:])), "the case no longer needs thinning"
    thin_ticks(fig)
    after = tick_label_boxes(ax.xaxis, fig.canvas.get_renderer())
    assert 2 <= len(after) < len(before)
    assert not any(overlap(a, b, 4) for a, b in zip(after, after[1:]))


def test_axes_name_their_units_and_state_the_budget_headroom():
    rows, cohorts, _ = _crowded_fleet()
    fig = triangle_figure("t", cohorts, rows, set(), {"max_latency_ms_p95": 0.025, "max_peak_rss_mb": 4096})
    ax, colorbar = fig.axes[0], fig.axes[1]
    slowest = max(r["latency_p95"] for r in rows)
    assert ax.get_xlabel().startswith(
        f"p95 latency (ms)\nslowest device at {slowest / 0.025:.0%} of the 0.025 ms budget")
    assert "(dashed)" in ax.get_xlabel()
    assert ax.get_ylabel().startswith("peak memory (MiB)\nlargest at 2") and "4096 MiB budget" in ax.get_ylabel()
    assert colorbar.get_ylabel() == "accuracy (%)"
    assert ax.get_xlim()[1] > 0.025 and any(list(line.get_xdata()) == [0.025, 0.025] for line in ax.lines)  # drawn
    fig.canvas.draw()
    assert ax.yaxis.get_offset_text().get_text() == ""  # 81.2 MiB reads as 81.2, not 0.2 + 8.12e1
    assert budget_note(30, [39.0], "ms", "slowest device") == \
        "slowest device at 130% of the 30 ms budget (dashed): over it"
    assert budget_note(1000, [0.02], "ms", "slowest device") == \
        "slowest device at 0.002% of the 1000 ms budget (off the chart)"
    assert budget_note(None, [1.0], "ms", "x") is None


def test_an_outlier_far_from_its_siblings_gets_a_log_axis():
    rows = [_row(f"d-{i}", "1.0.0", 0.02 + 0.001 * i, 81.0) for i in range(4)] + [_row("slow", "1.0.0", 0.8, 81.0)]
    fig = triangle_figure("t", cohort_summaries(rows), rows, {("slow", "1.0.0")}, {})
    assert fig.axes[0].get_xscale() == "log" and "log scale" in fig.axes[0].get_xlabel()
    assert fig.axes[0].get_yscale() == "linear"
    assert_no_text_touches(fig)


def test_many_devices_chart_reads(tmp_path):
    rows = [_row(f"device-{i:02d}", f"1.{i % 3}.0", 0.0123 + 0.0004 * i, 80 + i * 0.07, 0.95 + 0.001 * i)
            for i in range(14)]
    fig = device_figure("every device", rows, [{"device": "device-03", "version": "1.0.0", "kind": "latency"}],
                        {"max_latency_ms_p95": 1000, "max_peak_rss_mb": 4096})
    quality, latency, memory = fig.axes
    assert quality.get_xlabel() == "accuracy (%)" and quality.get_xlim()[1] <= 1.0  # never past 100%
    assert latency.get_xlabel().startswith("latency (ms), p50 to p95\nslowest p95 at")
    assert memory.get_xlabel().startswith("peak memory (MiB)\nlargest at")
    assert_no_text_touches(fig)


def test_a_near_budget_does_not_crowd_the_latency_ticks():
    """Drawn with its budget at 0.017 ms, matplotlib's own ticks (0.0025, 0.0050, ...) touch."""
    rows = [_row(f"d-{i:02d}", "1.0.0", 0.0057 + 0.00002 * i, 81 + i) for i in range(5)]
    fig = device_figure("near budget", rows, [], {"max_latency_ms_p95": 0.017, "max_peak_rss_mb": 4096})
    assert fig.axes[1].get_xlim()[1] > 0.017
    assert_no_text_touches(fig)


def test_the_fleet_report_charts_read_well(report_fleet):  # noqa: F811
    """The charts of a real collected fleet (two targets, two versions, drift, a failed device)."""
    result = run_edgekit("report", "--store", report_fleet.store, "--inventory", report_fleet.inventory, "--json")
    assert result.code == 0, result.stderr
    report = result.json()
    for target in sorted({r["target"] for r in report["rows"]}):
        rows = [r for r in report["rows"] if r["target"] == target]
        cohorts = [c for c in report["cohorts"] if c["target"] == target]
        flags = [f for f in report["drift"] if f["target"] == target]
        budget = load_profile(target).budgets.model_dump()
        for fig in (triangle_figure(target, cohorts, rows, {(f["device"], f["version"]) for f in flags}, budget),
                    device_figure(target, rows, flags, budget)):
            assert_no_text_touches(fig)


def test_the_calibration_chart_reads_well(calibration_record):  # noqa: F811
    record = json.loads(calibration_record.read_text())
    rows = calibration_rows(record)
    fig = calibration_figure(record, rows)
    assert_no_text_touches(fig)
    shown = {t.get_text() for ax in fig.axes for t in ax.texts}
    note = " ".join(legend.get_title().get_text() for legend in fig.legends)
    for r in rows:  # each candidate is numbered in the chart or named in the note below it
        if r["status"] == "ok" and r["latency_p95"] is not None:
            name = r["id"] if r["chosen"] else str(r["no"])
            assert name in shown or name in note, name
    size, memory = fig.axes[:2]
    # the label wraps to the axis' length, wherever the chosen candidate's name puts the break
    assert size.get_ylabel().startswith("model size (MiB)\n") and "0.1 MiB budget" in " ".join(size.get_ylabel().split())
    assert memory.get_ylabel().startswith("peak memory (MiB)")
    # measured latencies 20 times apart make the axis logarithmic: "(ms, log scale)"
    assert re.match(r"p95 latency \(ms(, log scale)?\)", size.get_xlabel())


@pytest.mark.parametrize("module", ["edgekit.report.charts", "edgekit.report.chartaxes", "edgekit.report.chartlayout"])
def test_chart_modules_import_matplotlib_lazily(module):
    import subprocess
    import sys

    code = f"import sys, {module}; print('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
