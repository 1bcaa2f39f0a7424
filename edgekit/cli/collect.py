"""`edgekit collect`: pull the devices' evaluation reports into the store."""

from __future__ import annotations


import typer

from edgekit.cli._common import JsonFlag, TargetsDir, err_console, progress
from edgekit.cli.fleet import DevicesOpt, GroupsOpt, InventoryOpt, StoreOpt, TrustNewOpt, WorkersOpt, _devices, _finish


def collect_cmd(
    inventory: InventoryOpt,
    device: DevicesOpt = None,
    group: GroupsOpt = None,
    store: StoreOpt = None,
    workers: WorkersOpt = 8,
    trust_new_hosts: TrustNewOpt = False,
    targets_dir: TargetsDir = None,
    json: JsonFlag = False,
) -> None:
    """Fetch each device's new reports (ROOT/reports/NAME/VERSION/*.json), check them, and add
    them to the store; collecting again adds nothing twice. A device that cannot be reached or
    sends a bad report is a failed row (exit 1); the other devices are still collected."""
    from edgekit.fleet.collect import collect
    from edgekit.store import open_store

    devices = _devices(inventory, device, group, targets_dir)
    with open_store(store) as db, progress() as bar:
        task = bar.add_task("collecting reports", total=len(devices))
        result = collect(devices, db, workers=workers, trust_new_hosts=trust_new_hosts,
                         on_done=lambda r: bar.advance(task))
        where = db.path
    if not json:
        err_console.print(f"store: {where}", highlight=False, soft_wrap=True)
    _finish(result, json, ("reachable", "new", "fetched"))


def register(app: typer.Typer) -> None:
    app.command("collect")(collect_cmd)
