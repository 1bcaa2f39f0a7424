"""`edgekit targets list|show`: the target-device profiles."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from edgekit.cli._common import JsonFlag, TargetsDir, console, print_json
from edgekit.targets import list_profiles, load_profile

targets_app = typer.Typer(help="Target-device profiles: what each device class runs and its budgets.",
                          no_args_is_help=True)


@targets_app.command("list")
def list_cmd(targets_dir: TargetsDir = None, json: JsonFlag = False) -> None:
    """List the target profiles in targets/ and in --targets-dir."""
    found = list_profiles(targets_dir or ())
    if json:
        print_json([dict(profile.snapshot(), path=str(path)) for path, profile in found])
        return
    table = Table(title="target profiles")
    for col in ("name", "arch", "runtime", "precisions", "RAM MB", "objective", "budgets"):
        table.add_column(col)
    for _, p in found:
        budgets = ", ".join(f"{k}={v:g}" for k, v in p.budgets.model_dump().items() if v is not None)
        table.add_row(p.name, p.arch, p.runtime, " ".join(p.precisions), str(p.memory_mb), p.objective, budgets)
    console.print(table)


@targets_app.command("show")
def show_cmd(
    name: Annotated[str, typer.Argument(help="A profile name, or a path to a profile TOML file.")],
    targets_dir: TargetsDir = None,
    json: JsonFlag = False,
) -> None:
    """Show one profile, validated."""
    profile = load_profile(name, targets_dir or ())
    if json:
        print_json(profile.snapshot())
        return
    table = Table(title=profile.name, show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in profile.snapshot().items():
        if key == "budgets":
            for bk, bv in value.items():
                table.add_row(f"budgets.{bk}", "-" if bv is None else f"{bv:g}")
        else:
            table.add_row(key, " ".join(value) if isinstance(value, list) else str(value))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(targets_app, name="targets")
