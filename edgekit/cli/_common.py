"""What every command module shares: consoles, JSON output, common options, progress."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

# The commands of the model side take their table and number helpers from here still.
from edgekit.terminal import compact_table, fmt_mib, fmt_ms, fmt_pct, fmt_pp, fmt_sig, print_notes, titled  # noqa: F401

console = Console(emoji=False)  # a name such as "cam:fire:" is printed as written
err_console = Console(stderr=True, emoji=False)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
TargetsDir = Annotated[
    Optional[list[Path]],
    typer.Option("--targets-dir", help="Another folder of target profiles (repeatable).", show_default=False),
]


json_printed = False  # whether this run printed its JSON result (main adds no error object then)


def print_json(obj: Any) -> None:
    global json_printed
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()
    json_printed = True


def progress(transient: bool = True, enabled: bool = True) -> Progress:
    """A progress display on stderr, so that --json output on stdout stays clean; shown only on
    a terminal, and not at all when enabled is False (pass `enabled=not json`)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=transient,
        disable=not enabled or not err_console.is_terminal,
    )


@contextmanager
def interrupts(what: str) -> Iterator[threading.Event]:
    """The first Ctrl-C or SIGTERM sets the event (the work starts no new device step and
    brings the devices it touched to a consistent state); the second raises
    KeyboardInterrupt, which stops at once."""
    cancel = threading.Event()

    def handler(signum, _frame) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        # os.write, not the console: a signal handler may run while the console holds its lock
        os.write(2, (f"\n{signal.Signals(signum).name}: stopping {what}: no new device step starts; devices "
                     "touched are brought to a consistent state (interrupt again to stop at once)\n").encode())

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield cancel
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def exit_now(code: int) -> None:
    """Leave without waiting for worker threads still talking to devices (a second Ctrl-C)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
