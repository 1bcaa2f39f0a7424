"""`edgekit push`, `edgekit rollback` and `edgekit fleet status`: work across an inventory.

Each prints one row per device; the exit code is 1 when any device failed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from edgekit.cli._common import (Col, JsonFlag, TargetsDir, console, fit_table, fmt_time, print_json, print_notes,
                                 progress)

InventoryOpt = Annotated[Path, typer.Option("--inventory", "-i", help="The inventory (fleet/*.toml).")]
DevicesOpt = Annotated[Optional[list[str]], typer.Option(
    "--device", "-d", help="Only this device (repeatable).", show_default=False)]
GroupsOpt = Annotated[Optional[list[str]], typer.Option(
    "--group", "-g", help="Only devices with this tag (repeatable).", show_default=False)]
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, help="Devices worked on at the same time.")]
TrustNewOpt = Annotated[bool, typer.Option(
    "--trust-new-hosts", help="Accept and remember SSH host keys not seen before (a changed key is always refused).")]

fleet_app = typer.Typer(help="The fleet: what runs where.", no_args_is_help=True)


def _devices(inventory: Path, device: Optional[list[str]], group: Optional[list[str]],
             targets_dir: Optional[list[Path]] = None):
    """The selected devices; every device's target must name a profile (here or in --targets-dir)."""
    from edgekit.fleet.inventory import load_inventory

    return load_inventory(inventory, targets_dir or ()).select(device or (), group or ())


# The per-device details a table may show, as columns; a narrow console drops them in `drop` order.
FIELDS = {
    "version": Col("version", "left"), "current": Col("active", "left", drop=2),
    "previous": Col("previous", "left", drop=2), "runner_updated": Col("new runner", "left", drop=1),
    "reachable": Col("reachable", "left", drop=3), "running": Col("running", "left", wrap=30),
    "last_report_at": Col("last report", "left", drop=4), "python": Col("python", "left", drop=1),
    "runner": Col("runner", "left", drop=2), "new": Col("new"), "fetched": Col("fetched", drop=1),
    "key": Col("key", "left", wrap=40),
}
STATUS_STYLE = {"ok": "green", "failed": "red"}


def _finish(result, json: bool, columns: tuple[str, ...]) -> None:
    """Print the per-device results; exit 1 when any device failed."""
    if json:
        print_json(result.record())
    else:
        _print_results(result, columns)
    if result.failed:
        raise typer.Exit(1)


def _print_results(result, columns: tuple[str, ...]) -> None:
    """One row per device with the `columns` of its detail; errors below the table."""
    cols = (Col("device", "left"), Col("status", "left"), *(FIELDS[c] for c in columns))
    rows = [[escape(r.device), f"[{STATUS_STYLE.get(r.status, 'yellow')}]{r.status}[/]",
             *(_cell(c, r.detail.get(c)) for c in columns)] for r in result.results]
    skipped = len(result.results) - len(result.succeeded) - len(result.failed)
    title = f"{result.action}: {len(result.succeeded)} ok, {len(result.failed)} failed" + \
        (f", {skipped} skipped" if skipped else "")
    console.print(fit_table(console, title, cols, rows))
    for status, style in (("failed", "red"), ("skipped", "yellow")):
        print_notes(console, [(f"{r.device}:", _error(r)) for r in result.results if r.error and r.status == status],
                    style=style)


def _cell(key: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return fmt_time(value) if key.endswith("_at") else escape(str(value))


def _error(r) -> str:
    """The device's error, and when it last answered when that is known."""
    last = r.detail.get("last_contact_at")
    return r.error + (f" (last answered {fmt_time(last)})" if last and r.status == "failed" else "")


def push_cmd(
    bundle: Annotated[Path, typer.Argument(help="The bundle (.edgekit) from `edgekit package`.")],
    inventory: InventoryOpt,
    device: DevicesOpt = None,
    group: GroupsOpt = None,
    activate: Annotated[bool, typer.Option("--activate", help="Switch to the bundle once installed.")] = False,
    workers: WorkersOpt = 8,
    trust_new_hosts: TrustNewOpt = False,
    targets_dir: TargetsDir = None,
    json: JsonFlag = False,
) -> None:
    """Upload and install BUNDLE on the devices of its target (and activate it with --activate).
    Uploads resume; the device verifies sizes, hashes and signature before anything changes."""
    from edgekit.bundle import read_bundle
    from edgekit.fleet.push import push

    found = read_bundle(bundle)
    devices = _devices(inventory, device, group, targets_dir)
    with progress() as bar:
        tasks = {}

        def progress_for(d):
            tasks[d.name] = bar.add_task(f"{d.name}: upload", total=found.size)
            return lambda done, total: bar.update(tasks[d.name], completed=done, total=total)

        result = push(devices, found, activate=activate, workers=workers, progress_for=progress_for,
                      trust_new_hosts=trust_new_hosts)
    _finish(result, json, ("version", "current", "previous", "runner_updated"))


def rollback_cmd(
    name: Annotated[str, typer.Argument(help="The model's name on the devices.")],
    inventory: InventoryOpt,
    device: DevicesOpt = None,
    group: GroupsOpt = None,
    workers: WorkersOpt = 8,
    trust_new_hosts: TrustNewOpt = False,
    targets_dir: TargetsDir = None,
    json: JsonFlag = False,
) -> None:
    """Switch NAME back to its previous version on each device."""
    from edgekit.fleet.push import rollback

    devices = _devices(inventory, device, group, targets_dir)
    result = rollback(devices, name, workers=workers, trust_new_hosts=trust_new_hosts)
    _finish(result, json, ("current", "previous"))


@fleet_app.command("status")
def status_cmd(
    inventory: InventoryOpt,
    device: DevicesOpt = None,
    group: GroupsOpt = None,
    store: Annotated[Optional[Path], typer.Option(
        "--store", help="The store, for last report times (default: $EDGEKIT_STORE, else "
        "~/.local/share/edgekit/edgekit.db, when it exists).", show_default=False)] = None,
    workers: WorkersOpt = 8,
    trust_new_hosts: TrustNewOpt = False,
    targets_dir: TargetsDir = None,
    json: JsonFlag = False,
) -> None:
    """What runs where: each device's active and previous versions, or why it is unreachable,
    and the time of its last report in the store."""
    from edgekit.fleet.status import fleet_status
    from edgekit.store import default_store_path, open_store

    devices = _devices(inventory, device, group, targets_dir)
    if store is None and not default_store_path().exists():  # no store yet: nothing to read, nothing made
        result = fleet_status(devices, None, workers=workers, trust_new_hosts=trust_new_hosts)
    else:
        with open_store(store) as db:
            result = fleet_status(devices, db, workers=workers, trust_new_hosts=trust_new_hosts)
    _finish(result, json, ("reachable", "running", "last_report_at", "python", "runner"))


def register(app: typer.Typer) -> None:
    app.command("push")(push_cmd)
    app.command("rollback")(rollback_cmd)
    app.add_typer(fleet_app, name="fleet")
