"""A progress line for the library's Steps (edgekit.progress), on stderr.

    ⠼ 0:12 elapsed, ETA 0:40 candidate 3 of 13: quantize, calibration 3/8 (int8-static-minmax)

Shown only when stderr is a terminal and the command prints no --json. The estimate is
the mean time of the candidates finished so far times those left, less the time the
current one has run; in the mixed-precision search, whose step count is only bounded,
it is counted on that bound ("ETA up to"). The line ends with the candidate's name, so
that a narrow terminal cuts that rather than the stage.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator, Optional

from rich.progress import Progress, ProgressColumn, SpinnerColumn, Task, TextColumn
from rich.table import Column
from rich.text import Text

from edgekit.cli._common import err_console
from edgekit.progress import Step

PHASES = {"sweep": "candidate", "search": "search step"}
now = time.monotonic  # the clock of the estimates (a test sets it)


def describe(step: Step) -> str:
    """One Step as text: "candidate 3 of 13: quantize, pre-processing (int8-dynamic)"."""
    where = {"baseline": "FP32 baseline", "search": "search"}.get(step.phase, "")
    if step.phase in PHASES and step.i is not None:
        where = f"{PHASES[step.phase]} {step.i}"
        if step.n is not None:
            where += f" of at most {step.n}" if step.phase == "search" else f" of {step.n}"
    what = f"{step.what}, {step.detail}" if step.detail else step.what
    text = f"{where}: {what}" if where else what
    return f"{text} ({step.candidate})" if step.candidate and step.phase != "baseline" else text


def clock(seconds: float) -> str:
    """1:05 under an hour, 1:02:03 from an hour on."""
    hours, rest = divmod(int(seconds), 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class _Times(ProgressColumn):
    """Elapsed time, and the estimate of what is left once one candidate has finished."""

    def render(self, task: Task) -> Text:
        text = f"{clock(task.elapsed or 0)} elapsed"
        per, left, since = task.fields.get("per"), task.fields.get("left"), task.fields.get("since")
        if per is not None and left is not None:
            eta = max(0.0, left * per - (now() - since))
            text += f", ETA {'up to ' if task.fields.get('bound') else ''}{clock(eta)}"
        return Text(text, style="progress.elapsed")


class StepDisplay:
    """Call it with each Step: it updates one task of a rich Progress."""

    def __init__(self, bar: Progress, title: str):
        self.bar = bar
        self.task = bar.add_task(title, total=None, per=None, left=None, since=None, bound=False)
        self.first: Optional[float] = None  # when the first candidate (or search step) began
        self.since = 0.0  # when the current one began
        self.begun: set = set()  # (phase, i) of every candidate begun

    def __call__(self, step: Step) -> None:
        at = now()
        if step.phase in PHASES and step.i is not None and (step.phase, step.i) not in self.begun:
            self.begun.add((step.phase, step.i))
            self.first, self.since = self.first or at, at
        done = len(self.begun) - 1  # the current one is under way
        per = (self.since - self.first) / done if done > 0 else None
        counted = step.phase in PHASES and step.i is not None and step.n is not None
        self.bar.update(self.task, description=describe(step), total=step.n if counted else None,
                        completed=step.i - 1 if counted else 0, per=per if counted else None,
                        left=step.n - step.i + 1 if counted else None, since=self.since,
                        bound=step.phase == "search", refresh=True)  # every stage drawn, however short


def step_progress(enabled: bool = True) -> Progress:
    """A transient progress line for Steps on stderr; disabled under --json or off a terminal."""
    return Progress(  # no bar: "i of n" says as much, and 80 columns need the room
        SpinnerColumn(),
        _Times(),
        TextColumn("{task.description}", markup=False, style="progress.description",
                   table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
        console=err_console,
        transient=True,
        expand=True,
        disable=not enabled or not err_console.is_terminal,
    )


@contextmanager
def showing_steps(title: str, enabled: bool = True) -> Iterator[StepDisplay]:
    """`with showing_steps("calibrating", enabled=not json) as on_step:` pass on_step down."""
    with step_progress(enabled) as bar:
        yield StepDisplay(bar, title)
