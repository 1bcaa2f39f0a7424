"""The `edgekit` command: registers the command groups and maps errors to exit codes.

EdgekitError is caught here and only here: it is printed as one line on stderr and
becomes the exit code it carries (1 work failed, 2 bad input, 3 gate not met).
"""

from __future__ import annotations

import importlib
import sys

import typer
from rich.markup import escape

from edgekit import __version__
from edgekit.cli._common import err_console, exit_now
from edgekit.errors import EdgekitError

# Each module defines register(app). Heavy libraries are imported inside the commands.
COMMAND_MODULES = [
    "targets",
    "quantize",
    "evaluate",
    "calibrate",
    "package",
    "keys",
    "fleet",
    "collect",
    "rollout",
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
    """Run the CLI; typer handles usage errors (exit 2), we handle EdgekitError."""
    try:
        app()
    except EdgekitError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True, markup=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # a second Ctrl-C, or one where no work handles it: stop at once
        err_console.print("interrupted")
        exit_now(130)


if __name__ == "__main__":
    main()
