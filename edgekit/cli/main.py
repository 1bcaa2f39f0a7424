"""The `edgekit` command: registers the command groups and maps errors to exit codes.

EdgekitError is caught here and only here: it is printed as one line on stderr and
becomes the exit code it carries (1 work failed, 2 bad input, 3 gate not met). A command
given --json also gets the error as one JSON object on stdout, {"error", "exit_code",
"hint"}, unless it printed its JSON result already (calibrate's record, when no
candidate passes); so do usage errors (a missing or wrong flag), which typer prints.
"""

from __future__ import annotations

import atexit
import errno
import gc
import importlib
import os
import sys

import typer
from rich.markup import escape

from edgekit import __version__
from edgekit.cli import _common
from edgekit.cli._common import err_console, exit_now
from edgekit.errors import EdgekitError

try:  # typer 0.2x carries its own copy of click
    from typer._click.exceptions import ClickException
except ImportError:  # older typer runs on click itself
    from click.exceptions import ClickException

# Each module defines register(app). Heavy libraries are imported inside the commands.
COMMAND_MODULES = [
    "targets",
    "quantize",
    "evaluate",
    "generate",
    "calibrate",
    "package",
    "keys",
    "fleet",
    "collect",
    "rollout",
    "gate",
    "report",
    "demo",
]

app = typer.Typer(
    name="edgekit",
    help="Quantize, calibrate, package and roll out ML models to fleets of edge devices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgekit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """edgekit: measure the memory-compute-accuracy triangle on the host and on the device."""


for _name in COMMAND_MODULES:
    try:
        importlib.import_module(f"edgekit.cli.{_name}").register(app)
    except ModuleNotFoundError as exc:  # a command group not written yet
        if exc.name != f"edgekit.cli.{_name}":
            raise


def main() -> None:
    """Run the CLI: typer parses and runs the command; errors become one line, an exit code
    and, under --json, one JSON object."""
    from edgekit.transport import defer_invoke

    # The command owns its process: what a library would leave to its host is set here.
    # Objects frozen at exit are not walked by Python's last collection (0.05 CPU s after a
    # fleet report of 10,000 rows); pydantic's search of every installed package for plugins
    # (0.035-0.045 CPU s, on typer's first flag) is skipped (edgekit's models need none; a
    # PYDANTIC_DISABLE_PLUGINS of the user's own is kept); invoke waits for an ssh config's
    # `Match exec`.
    atexit.register(gc.freeze)
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    defer_invoke()
    _keep_only(sys.argv[1] if len(sys.argv) > 1 else "")
    ctrl_c = _CtrlC.install()
    try:
        code = app(standalone_mode=False)  # returns the code of a typer.Exit
    except EdgekitError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True, markup=True)
        _json_error(str(exc), exc.exit_code, exc.hint)
        sys.exit(exc.exit_code)
    except ClickException as exc:  # a usage error: typer's own rendering, as in standalone mode
        from typer import rich_utils

        rich_utils.rich_format_error(exc)
        _json_error(exc.format_message(), exc.exit_code, _usage_hint(exc))
        sys.exit(exc.exit_code)
    except OSError as exc:  # a path this run could not create or write (an -o on a read-only disk, a file in the way)
        line, code = _os_error(exc)
        err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True, markup=True)
        _json_error(line, code, None)
        sys.exit(code)
    except typer.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # click turns Ctrl-C into Abort
            err_console.print("interrupted")
            exit_now(130)
        err_console.print("Aborted!")
        sys.exit(1)
    except KeyboardInterrupt:  # a second Ctrl-C, or one where no work handles it: stop at once
        err_console.print("interrupted")
        exit_now(130)
    if code == 130 and ctrl_c.seen:  # typer made a Ctrl-C no command handles its Exit(130), silently
        err_console.print("interrupted")
    sys.exit(code if isinstance(code, int) else 0)


def _keep_only(name: str) -> None:
    """Leave registered only the command or group NAME, when it is one: typer builds the
    options of every registered command from its signature on each run (70 ms of every
    start here, 22 commands), and a run needs the one it names. Anything else (--help,
    --version, a misspelled name) keeps them all, so help and suggestions list every one."""
    commands = [c for c in app.registered_commands if _command_name(c) == name]
    groups = [g for g in app.registered_groups if g.name == name]
    if commands or groups:
        app.registered_commands, app.registered_groups = commands, groups


def _command_name(info) -> str:
    return info.name or info.callback.__name__.lower().replace("_", "-")  # typer's own default


class _CtrlC:
    """Python's own Ctrl-C (KeyboardInterrupt), noted: typer turns a KeyboardInterrupt into
    exit code 130 without a word, and a command that handles Ctrl-C itself (edgekit.cli._common.
    interrupts) puts its own handler in place and says what it did."""

    def __init__(self):
        self.seen = False

    @classmethod
    def install(cls) -> "_CtrlC":
        import signal

        noted = cls()
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not ignored, not a host program's

            def handler(signum, frame):
                noted.seen = True
                signal.default_int_handler(signum, frame)
            signal.signal(signal.SIGINT, handler)
        return noted


_PATH_ERRNOS = (errno.ENOENT, errno.EEXIST, errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS)


def _os_error(exc: OSError) -> tuple[str, int]:
    """One line naming the path (the destination of a move), and exit 2 when the path given
    was wrong (missing folder, a file in the way, no permission), else 1 (a full disk...)."""
    path = exc.filename2 if exc.filename2 is not None else exc.filename
    line = f"{path}: {exc.strerror or exc}" if path is not None else str(exc)
    return line, 2 if exc.errno in _PATH_ERRNOS else 1


def _json_error(message: str, exit_code: int, hint: str | None) -> None:
    """The error as one JSON object on stdout, when --json was asked for and no result was printed."""
    args = sys.argv[1:]
    asked = "--json" in (args[:args.index("--")] if "--" in args else args)
    if asked and not _common.json_printed:
        _common.print_json({"error": message, "exit_code": exit_code, "hint": hint})


def _usage_hint(exc: ClickException) -> str:
    ctx = getattr(exc, "ctx", None)
    return f"see `{ctx.command_path} --help`" if ctx is not None else "see `edgekit --help`"


if __name__ == "__main__":
    main()
