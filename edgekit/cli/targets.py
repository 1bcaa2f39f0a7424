"""`edgekit targets list|show`: the target-device profiles."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from edgekit.cli._common import JsonFlag, TargetsDir, console, err_console, exit_now, print_json
from edgekit.errors import ConfigError
from edgekit.terminal import Col, compact_table, fit_table, titled

targets_app = typer.Typer(help="Target-device profiles: what each device class runs and its budgets.",
                          no_args_is_help=True)

BUDGETS = ("max_model_mb", "max_peak_rss_mb", "max_latency_ms_p95", "max_accuracy_drop", "min_fidelity_cosine")
LIST_COLS = (Col("name", "left"), Col("arch", "left", drop=2), Col("runtime", "left"),
             Col("precisions", "left", wrap=12), Col("RAM MB", drop=1), Col("objective", "left", drop=3),
             Col("model"), Col("RSS"), Col("p95"), Col("drop"), Col("cos"))


SHORT = {"int8-dynamic": "i8dyn", "int8-static": "i8st"}


def _precisions(precisions) -> str:
    """Short enough for an 80-column table; the title says what i8dyn and i8st are."""
    return " ".join(SHORT.get(p, p) for p in precisions)


def _budget(value) -> str:
    return "-" if value is None else f"{value:g}"


@targets_app.command("list")
def list_cmd(targets_dir: TargetsDir = None, json: JsonFlag = False) -> None:
    """List the target profiles: from --targets-dir, $EDGEKIT_TARGETS_DIR, the project's
    ./targets, the user's ~/.config/edgekit/targets and those shipped with edgekit, the first
    of each name (the `from` column says where it was found). A file that is not a valid
    profile is named with what is wrong after the others are listed, and the exit code is 2."""
    from edgekit.targets import load_found, sourced_files

    found, broken = [], []
    for path, source in sourced_files(targets_dir or ()):
        try:
            found.append((path, source, load_found(path)))
        except ConfigError as exc:  # one bad file hides no other profile
            broken.append(exc)
    if json:
        print_json([dict(profile.snapshot(), path=str(path), source=source) for path, source, profile in found])
    else:
        _print_table(found)
    for exc in broken:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True, markup=True)
    if broken:
        exit_now(2)


def _print_table(found) -> None:
    rows = [[escape(p.name), escape(p.arch), escape(p.runtime), _precisions(p.precisions), str(p.memory_mb),
             escape(p.objective), *(_budget(getattr(p.budgets, key)) for key in BUDGETS)] for _, _, p in found]
    console.print(fit_table(console, "target profiles (budgets: model and peak RSS in MiB, p95 latency in ms, "
                                     "accuracy drop, fidelity cosine; i8dyn, i8st: INT8 dynamic, static)", LIST_COLS, rows))
    _print_sources(found)


def _print_sources(found) -> None:
    """Where the profiles came from, one line per place: 'shipped with edgekit: host-cpu, ...'."""
    places: dict[tuple[str, str], list[str]] = {}
    for path, source, profile in found:
        places.setdefault((source, str(path.parent)), []).append(profile.name)
    for (source, folder), names in places.items():
        where = "shipped with edgekit" if source == "shipped" else f"{source} ({folder})"
        console.print(f"from {escape(where)}: {escape(', '.join(names))}", highlight=False, soft_wrap=True)


@targets_app.command("show")
def show_cmd(
    name: Annotated[str, typer.Argument(help="A profile name, or a path to a profile TOML file.")],
    targets_dir: TargetsDir = None,
    json: JsonFlag = False,
) -> None:
    """Show one profile, validated."""
    from edgekit.targets import load_profile

    profile = load_profile(name, targets_dir or ())
    if json:
        print_json(profile.snapshot())
        return
    table = compact_table(show_header=False)
    table.add_column("key", style="bold", no_wrap=True)
    table.add_column("value")
    for key, value in profile.snapshot().items():
        if key == "budgets":
            for bk, bv in value.items():
                table.add_row(f"budgets.{bk}", "-" if bv is None else f"{bv:g}")
        else:
            text = " ".join(value) if isinstance(value, list) else "" if value is None else str(value)
            table.add_row(key, escape(text) or "-")
    console.print(titled(escape(profile.name), table))


def register(app: typer.Typer) -> None:
    app.add_typer(targets_app, name="targets")
