"""Chart workers (edgekit.report.chartpool): the page they fill is the page drawn in one process."""

from __future__ import annotations

import os
import sys
import time

import pytest

from edgekit.report.chartpool import ChartPool

HOST = os.getpid()  # a worker imports this module anew: it is given HOST


def _chart(title: str, values: list, host: int = HOST) -> str:
    """A stand-in chart that says which process drew it."""
    return f"<svg>{title}:{sum(values)}:{'here' if os.getpid() == host else 'worker'}</svg>"


def _dies_in_a_worker(title: str, host: int) -> str:
    if os.getpid() != host:
        os._exit(9)  # as a worker the kernel killed would
    return f"<svg>{title}</svg>"


needs_fork = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="chart workers are forked: Linux only")


@needs_fork
def test_each_mark_is_filled_with_its_own_chart_drawn_by_a_worker():
    with ChartPool(2) as charts:
        page = "".join(f"<p>{charts.draw(_chart, f't{i}', list(range(i)), HOST)}</p>" for i in range(5))
        assert "<svg>" not in page  # marks, until filled
        filled = charts.fill(page)
    assert filled == "".join(f"<p><svg>t{i}:{sum(range(i))}:worker</svg></p>" for i in range(5))


def _collector(title: str, host: int) -> str:
    import gc

    where = "here" if os.getpid() == host else "worker"
    return f"<svg>{title}:{where}:collects={gc.isenabled()}:frozen={gc.get_freeze_count() > 0}</svg>"


@needs_fork
def test_a_worker_collects_its_own_cycles_not_the_servers_imports():
    """The server imports with the cycle collector off; a worker collects again (a chart's
    figure is cycles), what it inherited frozen out of the collector's way."""
    with ChartPool(1) as charts:
        page = charts.fill(charts.draw(_collector, "gc", HOST))
    assert page == "<svg>gc:worker:collects=True:frozen=True</svg>"


def _fleet_chart() -> str:
    """A real chart: three versions of two devices each, one of them drifting."""
    from edgekit.report.analysis import METRICS, cohort_summaries
    from edgekit.report.charts import triangle_chart

    rows = [{**{m: None for m in METRICS}, "device": f"d-{i}", "version": f"1.{v}.0", "name": "digits",
             "target": "host-cpu", "status": "ok", "accuracy": 0.97 - 0.01 * v, "accuracy_expected": 0.97,
             "latency_p50": 10.0 + v, "latency_p95": 12.0 + v + i, "peak_rss_mb": 80.0 + 2 * v + i}
            for v in range(3) for i in range(2)]
    return triangle_chart("digits on host-cpu", cohort_summaries(rows), rows, {("d-1", "1.2.0")},
                          {"max_latency_ms_p95": 20.0, "max_peak_rss_mb": 100.0})


def _property_docs() -> str:
    """Whether this process's matplotlib wrote an Artist's property list into its set()'s docstring."""
    from matplotlib.lines import Line2D

    return str("linewidth" in (Line2D.set.__doc__ or ""))


def _unsalted(svg: str) -> str:
    """A chart's SVG without its ids, salted by the process that drew it (edgekit.report.charts.to_svg)."""
    import re

    return re.sub(r'(id="|url\(#|href="#)[\w-]+', r"\1ID", svg)


@needs_fork
def test_a_worker_draws_the_chart_this_process_draws():
    """The chart server's matplotlib skips the property lists of its docstrings
    (edgekit.report._chartserver): its charts are the same."""
    with ChartPool(1) as charts:
        page = charts.fill(charts.draw(_fleet_chart) + "|" + charts.draw(_property_docs))
    drawn, docs = page.rsplit("|", 1)
    assert docs == "False"  # (this process may have imported the server's module too: another test's)
    assert _unsalted(drawn) == _unsalted(_fleet_chart())


@needs_fork
def test_a_chart_whose_worker_died_is_drawn_here():
    with ChartPool(1) as charts:
        page = charts.fill(f"<p>{charts.draw(_dies_in_a_worker, 'kept', HOST)}</p>")
    assert page == "<p><svg>kept</svg></p>"


def test_without_workers_charts_are_drawn_at_once(monkeypatch):
    monkeypatch.setenv("EDGEKIT_CHART_WORKERS", "0")
    with ChartPool.for_html() as charts:
        assert charts.draw(_chart, "t", [1, 2]) == "<svg>t:3:here</svg>"
        assert charts.fill("page") == "page"


def test_a_host_that_cannot_start_workers_draws_here(monkeypatch):
    import edgekit.report.chartpool as chartpool

    def no_semaphores(workers, program):
        raise OSError(38, "Function not implemented")  # as on a host without /dev/shm
    monkeypatch.setattr(chartpool, "_start", no_semaphores)
    with ChartPool(2) as charts:
        assert charts.draw(_chart, "t", [4]) == "<svg>t:4:here</svg>"


@needs_fork
def test_a_chart_server_killed_is_started_again():
    """A chart server killed (out of memory, by hand) before it forked a worker: the next
    chart starts another (multiprocessing's forkserver), and the page is whole."""
    import signal
    from multiprocessing import forkserver

    with ChartPool(2) as charts:
        pid = forkserver._forkserver._forkserver_pid  # the server the pool started
        os.kill(pid, signal.SIGKILL)
        while _state(pid) != "Z":  # dead, not yet reaped
            time.sleep(0.01)
        page = charts.fill("".join(f"<p>{charts.draw(_chart, f't{i}', [i], HOST)}</p>" for i in range(3)))
    assert page == "".join(f"<p><svg>t{i}:{i}:worker</svg></p>" for i in range(3))
    assert forkserver._forkserver._forkserver_pid != pid


@needs_fork
def test_a_chart_no_worker_can_take_is_drawn_here(monkeypatch):
    """When a worker cannot be had (the server cannot be reached or started), the chart is
    drawn here and the page is whole."""
    from concurrent.futures import ProcessPoolExecutor

    def unreachable(self, fn, *args, **kwargs):
        raise ConnectionRefusedError(111, "Connection refused")
    with ChartPool(2) as charts:
        monkeypatch.setattr(ProcessPoolExecutor, "submit", unreachable)
        page = charts.fill("".join(f"<p>{charts.draw(_chart, f't{i}', [i], HOST)}</p>" for i in range(2)))
    assert page == "<p><svg>t0:0:here</svg></p><p><svg>t1:1:here</svg></p>"


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


def test_a_chart_worker_count_that_is_no_number_is_named(tmp_path):
    from helpers.cli import assert_clean_error, run_edgekit
    from edgekit.store import Store

    Store(tmp_path / "s.db").close()
    result = run_edgekit("report", "--store", tmp_path / "s.db", "-f", "html", "-o", tmp_path / "page.html",
                         env={"EDGEKIT_CHART_WORKERS": "two"})
    assert_clean_error(result, "EDGEKIT_CHART_WORKERS=two: give a number of chart workers")

