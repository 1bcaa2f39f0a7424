"""A fleet page's charts drawn by worker processes while the rest of the page is made.

Most of an HTML fleet report's time is matplotlib's: its import (about 0.5 s here) and each
chart's layout and SVG (about 0.4 s). With two or more CPUs, `edgekit report -f html` starts
a chart server before it reads the store: a Python process of its own (multiprocessing's
forkserver) that imports matplotlib and the chart modules while this process reads and
analyses. Each chart then goes to a worker forked from that server, with matplotlib already
imported: the page's charts are drawn side by side while this process builds the tables, and
matplotlib is imported once, not once a worker (on two CPUs a second import took the CPU the
reading needed). Without workers every chart is drawn here, one after the other; the page is
the same either way.

    with ChartPool.for_html() as charts:
        ...                                  # read the store, analyse
        page = charts.fill(render_fleet(result, ..., draw=charts.draw))
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import sys
from typing import Callable, Optional

__all__ = ["ChartPool", "draw_now"]

MAX_WORKERS = 4   # a page has two charts per target
ENV = "EDGEKIT_CHART_WORKERS"   # how many workers; 0 draws in this process


def draw_now(chart: Callable[..., str], *args) -> str:
    """Draw a chart here and now (the page's `draw` when there is no pool)."""
    return chart(*args)


# What the server imports before it forks a worker: its own rules first (edgekit.report._chartserver)
PRELOAD = ("edgekit.report._chartserver", "edgekit.report.chartpool", "matplotlib.backends.backend_agg",
           "matplotlib.figure", "edgekit.report.charts", "edgekit.report.lmcharts")


def worker_started() -> None:
    """A chart worker's first step (the pool's initializer). The server imported with the
    cycle collector off (edgekit.report._chartserver); the worker freezes what it inherited,
    as Python's gc documentation advises for a child forked without exec (an O(1) move
    that touches no object, so no page shared with the server is copied for it), and
    collects its own objects again: a chart's figure is full of cycles."""
    import gc

    gc.freeze()
    gc.enable()


def _workers() -> int:
    given = os.environ.get(ENV, "").strip()
    if given:
        if not given.isdigit():
            from edgekit.errors import ConfigError

            raise ConfigError(f"{ENV}={given}: give a number of chart workers (0 draws every chart in this process)")
        return int(given)
    if not sys.platform.startswith("linux") or "forkserver" not in multiprocessing.get_all_start_methods():
        return 0
    return min(_cpus(), MAX_WORKERS) if _cpus() > 1 else 0


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _start(workers: int, program: tuple[str, ...]):
    """The pool, its server started now (it imports while the store is read); each worker is
    forked from it when a chart needs one. `program`: the modules of the program that runs
    (the server imports them too: multiprocessing has each worker run the program's main
    module again, as `__mp_main__`, which took a worker 0.2 s of CPU for edgekit's command)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import forkserver

    server = multiprocessing.get_context("forkserver")
    server.set_forkserver_preload([*PRELOAD, *program])
    forkserver.ensure_running()  # returns at once: the server imports on its own
    return ProcessPoolExecutor(workers, mp_context=server, initializer=worker_started)


class ChartPool:
    """draw(chart, *args) hands a chart to a worker and returns a mark for it; fill(page) puts
    each chart's SVG where its mark is. Without workers draw() returns the SVG itself."""

    def __init__(self, workers: int, program: tuple[str, ...] = ()):
        self._executor = None
        self._pending: dict[str, tuple] = {}
        self._salt = secrets.token_hex(8)
        if workers > 0:
            try:
                self._executor = _start(workers, program)
            except OSError:  # no semaphores here (a container without /dev/shm), no fork: draw here
                self._executor = None

    @classmethod
    def for_html(cls, workers: Optional[int] = None, program: tuple[str, ...] = ()) -> "ChartPool":
        return cls(_workers() if workers is None else workers, program)

    def draw(self, chart: Callable[..., str], *args) -> str:
        if self._executor is None:
            return chart(*args)
        from concurrent.futures.process import BrokenProcessPool

        try:
            future = self._executor.submit(chart, *args)
        except (OSError, EOFError, BrokenProcessPool):  # the server or a worker is gone: draw it here
            return chart(*args)
        mark = f"\x00chart-{self._salt}-{len(self._pending)}\x00"  # salted: no text from a store can mimic it
        self._pending[mark] = (future, chart, args)
        return mark

    def fill(self, page: str) -> str:
        from concurrent.futures.process import BrokenProcessPool

        for mark, (future, chart, args) in self._pending.items():
            try:
                svg = future.result()
            except BrokenProcessPool:  # a worker died (killed, out of memory): draw it here
                svg = chart(*args)
            page = page.replace(mark, svg, 1)
        self._pending.clear()
        return page

    def close(self, abandon: bool = False) -> None:
        """Shut the workers down; `abandon` (an error, Ctrl-C): stop them first, as they may
        be drawing a chart no one will read. The server finishes its imports and ends with
        this process (it holds none of its output: edgekit.report._chartserver)."""
        if self._executor is None:
            return
        if abandon:
            for process in list((getattr(self._executor, "_processes", None) or {}).values()):
                process.terminate()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._executor = None

    def __enter__(self) -> "ChartPool":
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        self.close(abandon=exc_type is not None)
