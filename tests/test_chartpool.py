"""Chart workers (edgekit.report.chartpool): the page they fill is the page drawn in one process."""

from __future__ import annotations

import os
import sys

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
