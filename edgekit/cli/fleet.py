"""`edgekit push`, `edgekit rollback` and `edgekit fleet status`: work across an inventory.

Each prints one row per device; the exit code is 1 when any device failed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional, Sequence

import typer
from rich.markup import escape

from edgekit.cli._common import JsonFlag, TargetsDir, console, err_console, exit_now, interrupts, print_json, progress
from edgekit.terminal import Col, fit_table, fmt_time, print_notes

InventoryOpt = Annotated[Path, typer.Option(
    "--inventory", "-i", help="The inventory: fleet/*.toml, or an Ansible INI or YAML inventory.")]
DevicesOpt = Annotated[Optional[list[str]], typer.Option(
    "--device", "-d", help="Only this device (repeatable).", show_default=False)]
GroupsOpt = Annotated[Optional[list[str]], typer.Option(
    "--group", "-g", help="Only devices with this tag (repeatable).", show_default=False)]
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, help="Devices worked on at the same time.")]
TrustNewOpt = Annotated[bool, typer.Option(
    "--trust-new-hosts", help="Accept and remember SSH host keys not seen before (a changed key is always refused).")]
StepTimeoutOpt = Annotated[Optional[float], typer.Option(
    "--step-timeout", min=1, metavar="SECONDS", show_default=False,
    help="Give up on a device whose install or evaluation takes longer (it counts as that device's failure; "
         "default: the profile's step_timeout_s, else sized to the model, at least 300).")]
StoreOpt = Annotated[Optional[Path], typer.Option(
    "--store", help="The SQLite store (default: $EDGEKIT_STORE, else ~/.local/share/edgekit/edgekit.db).",
    show_default=False)]

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
    "key": Col("key", "left", wrap=40), "removed_versions": Col("removed", "left", wrap=40),
    "fixed_what": Col("fixed", "left", wrap=60), "clock": Col("clock", "left", drop=1),
    "uploads": Col("uploads removed", "left"),
}
STATUS_STYLE = {"ok": "green", "failed": "red"}


def _finish(result, json: bool, columns: tuple[str, ...], notes: Sequence[tuple[str, str]] = ()) -> None:
    """Print the per-device results (and `notes` in yellow below the table); exit 1 when any
    device failed."""
    if json:
        print_json(result.record())
    else:
        _print_results(result, columns)
        print_notes(console, notes, style="yellow")
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
    step_timeout: StepTimeoutOpt = None,
    store: StoreOpt = None,
    workers: WorkersOpt = 8,
    trust_new_hosts: TrustNewOpt = False,
    targets_dir: TargetsDir = None,
    json: JsonFlag = False,
) -> None:
    """Upload and install BUNDLE on the devices of its target (and activate it with --activate).
    Uploads resume; the device verifies sizes, hashes and signature before anything changes.
    What each device runs afterwards is recorded in the store. Ctrl-C stops starting new
    steps: devices already switched stay switched (a push is not gated), the rest stay as
    they were, a cut upload resumes next time; it lists what each device runs, exit 130."""
    from edgekit.bundle import read_bundle
    from edgekit.fleet.ledger import note_push, recorder
    from edgekit.fleet.push import push
    from edgekit.store import open_store

    found = read_bundle(bundle)
    devices = _devices(inventory, device, group, targets_dir)
    with open_store(store) as db, progress() as bar, interrupts("the push") as cancel:
        tasks = {}

        def progress_for(d):
            tasks[d.name] = bar.add_task(f"{d.name}: upload", total=found.size)
            return lambda done, total: bar.update(tasks[d.name], completed=done, total=total)

        try:
            result = push(devices, found, activate=activate, workers=workers, progress_for=progress_for,
                          cancel=cancel, on_done=recorder(db, devices, note_push), step_timeout=step_timeout,
                          trust_new_hosts=trust_new_hosts)
        except KeyboardInterrupt:
            err_console.print("interrupted at once: devices still at work finish their step on their own; "
                              "see `edgekit fleet status`", highlight=False, soft_wrap=True)
            exit_now(130)
    if cancel.is_set():
        _interrupted_push(result, found.version, json)
    _finish(result, json, ("version", "current", "previous", "runner_updated"))


def _runs_now(r) -> str:
    d = r.detail
    if d.get("activated"):
        return f"runs {d['current']} (switched)"
    before = (d.get("before") or {}).get("current")
    state = "as before" if d else "unchanged, not reached"
    return f"runs {before or 'nothing'} ({state})" if d else state


def _interrupted_push(result, version: str, json: bool) -> None:
    """One line per device with what it runs now, then `interrupted: ...`; exit 130."""
    out = err_console if json else console
    if json:
        print_json({**result.record(), "interrupted": True})
    for r in result.results:
        if r.status == "skipped" and not r.detail.get("interrupted"):
            continue  # another target
        out.print(f"{escape(r.device)}: {escape(_runs_now(r))}", highlight=False, soft_wrap=True)
    switched = sum(1 for r in result.results if r.detail.get("activated"))
    err_console.print(f"interrupted: {switched} device(s) switched to {version}; the others run what they ran "
                      "before (push again to finish; a cut upload resumes)", highlight=False, soft_wrap=True)
    raise typer.Exit(130)


def rollback_cmd(
    name: Annotated[str, typer.Argument(help="The model's name on the devices.")],
    inventory: InventoryOpt,
    device: DevicesOpt = None,
    group: GroupsOpt = None,
    store: StoreOpt = None,
    workers: WorkersOpt = 8,
    trust_new_hosts: TrustNewOpt = False,
    targets_dir: TargetsDir = None,
    json: JsonFlag = False,
) -> None:
    """Switch NAME back to its previous version on each device; the store records it."""
    from edgekit.fleet.ledger import note_rollback, recorder
    from edgekit.fleet.push import rollback
    from edgekit.store import open_store

    devices = _devices(inventory, device, group, targets_dir)
    with open_store(store) as db:
        result = rollback(devices, name, workers=workers, on_done=recorder(db, devices, note_rollback(name)),
                          trust_new_hosts=trust_new_hosts)
    _finish(result, json, ("current", "previous"))


@fleet_app.command("gc")
def gc_cmd(
    inventory: InventoryOpt,
    keep: Annotated[int, typer.Option("--keep", min=0, help="Installed versions of each model to keep (the current "
                                      "and the previous one are always kept).")] = 2,
    part_idle: Annotated[float, typer.Option(
        "--part-idle", min=0, metavar="SECONDS",
        help="Remove uploads in incoming/ that nothing has written to for this long (an upload in "
             "progress writes every moment; a cut one resumes only if pushed again).")] = 600,
    device: DevicesOpt = None,
    group: GroupsOpt = None,
    store: StoreOpt = None,
    workers: WorkersOpt = 8,
    trust_new_hosts: TrustNewOpt = False,
    targets_dir: TargetsDir = None,
    json: JsonFlag = False,
) -> None:
    """Free device space: remove all but the KEEP newest installed versions of each model (never
    the current or previous one) and what interrupted work left behind."""
    from edgekit.fleet.ledger import note_gc, recorder
    from edgekit.fleet.push import gc
    from edgekit.store import open_store

    devices = _devices(inventory, device, group, targets_dir)
    with open_store(store) as db:
        result = gc(devices, keep, part_idle, workers=workers, on_done=recorder(db, devices, note_gc),
                    trust_new_hosts=trust_new_hosts)
    for r in result.results:
        r.detail["removed_versions"] = ", ".join(f"{x['name']} {x['version']}" for x in r.detail.get("removed") or ()) \
            or "nothing"
        freed = r.detail.get("freed_bytes") or 0
        r.detail["uploads"] = f"{len(r.detail.get('parts_removed') or ())} ({freed / (1 << 20):.1f} MiB freed)"
    _finish(result, json, ("removed_versions", "uploads"))


@fleet_app.command("repair")
def repair_cmd(
    inventory: InventoryOpt,
    device: DevicesOpt = None,
    group: GroupsOpt = None,
    store: StoreOpt = None,
    workers: WorkersOpt = 8,
    trust_new_hosts: TrustNewOpt = False,
    targets_dir: TargetsDir = None,
    json: JsonFlag = False,
) -> None:
    """Repair devices' own records: rebuild state files from what is installed and active,
    remove what interrupted work left behind, and name installed bundles whose files changed
    since install. Safe to run at any time; the store learns what each device runs."""
    from edgekit.fleet.push import repair
    from edgekit.store import open_store

    devices = _devices(inventory, device, group, targets_dir)
    with open_store(store) as db:
        def note(r) -> None:
            if r.ok:
                db.observe(r.device, r.detail.get("models") or {}, source="repair")
        result = repair(devices, workers=workers, on_done=note, trust_new_hosts=trust_new_hosts)
    for r in result.results:
        r.detail["fixed_what"] = "; ".join(r.detail.get("fixed") or ()) or "nothing needed fixing"
    _finish(result, json, ("fixed_what",))


@fleet_app.command("forget")
def forget_cmd(
    name: Annotated[str, typer.Argument(help="The retired device's name.")],
    store: StoreOpt = None,
    json: JsonFlag = False,
) -> None:
    """Forget a retired device: its record, reports and state leave the store (rollout history
    keeps its events), so that it stops filling the report's "needs a look"."""
    from edgekit.errors import ConfigError
    from edgekit.store import default_store_path, open_store

    path = Path(store) if store is not None else default_store_path()
    if not path.is_file():
        raise ConfigError(f"--store {path}: no store there; give the store with --store or EDGEKIT_STORE")
    with open_store(path) as db:
        known = {d["name"] for d in db.devices()} | set(db.last_report_times())
        if name not in known:
            raise ConfigError(f"device {name}: not in {path} (devices there: {', '.join(sorted(known)) or 'none'})")
        gone = db.forget_device(name)
    if json:
        print_json({"device": name, "removed": gone})
    else:
        console.print(f"forgot {escape(name)}: {gone['reports']} report(s) and its state removed from "
                      f"{escape(str(path))}", highlight=False, soft_wrap=True)


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
    lacking = [(f"{r.device}:", f"its python cannot import {r.detail['cannot_evaluate']}: evaluations and "
                "rollouts fail there until it is installed") for r in result.results if r.detail.get("cannot_evaluate")]
    _finish(result, json, ("reachable", "running", "last_report_at", "clock", "python", "runner"), notes=lacking)


@fleet_app.command("export-inventory")
def export_inventory_cmd(
    inventory: InventoryOpt,
    device: DevicesOpt = None,
    group: GroupsOpt = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Write the Ansible inventory here (default: stdout).", show_default=False)] = None,
    targets_dir: TargetsDir = None,
) -> None:
    """The inventory as an Ansible YAML inventory: tags become groups, root, python and target
    edgekit_* host variables; `ansible-inventory -i FILE --list` reads it, and so does every
    edgekit command that takes --inventory."""
    from edgekit.fleet.ansible_inventory import as_ansible, dump_yaml, group_name

    devices = _devices(inventory, device, group, targets_dir)
    text = dump_yaml(as_ansible(devices))
    renamed = sorted({(t, group_name(t)) for d in devices for t in d.tags if group_name(t) != t})
    if renamed:
        err_console.print("note: Ansible group names are letters, digits and _: " +
                          ", ".join(f"tag {t} is group {g}" for t, g in renamed), highlight=False, soft_wrap=True)
    if out is None:
        console.out(text, end="", highlight=False)
        return
    out.write_text(text)
    err_console.print(f"wrote {escape(str(out))}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("push")(push_cmd)
    app.command("rollback")(rollback_cmd)
    app.add_typer(fleet_app, name="fleet")
