"""`edgekit rollout`: a staged, gated rollout of one bundle (see edgekit/fleet/rollout.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from edgekit.cli._common import JsonFlag, TargetsDir, console, err_console, print_json, progress
from edgekit.cli.collect import StoreOpt
from edgekit.cli.fleet import DevicesOpt, GroupsOpt, InventoryOpt, TrustNewOpt, WorkersOpt, _devices

STYLE = {"ok": "green", "breached": "red", "failed": "red", "unreachable": "red"}


def _progress_hooks(bar, bundle_size: int):
    """step() and on_wave() callbacks that drive one bar per wave and one per device."""
    tasks: dict = {}

    def on_wave(index: int, kind: str, names: list[str]) -> None:
        tasks["wave"] = bar.add_task(f"wave {index} ({kind})", total=len(names))
        for name in names:
            tasks[name] = bar.add_task(f"  {escape(name)}: waiting", total=bundle_size)

    def step(device: str, stage: str, done: Optional[int], total: Optional[int]) -> None:
        task = tasks.get(device)
        if task is None:
            return
        bar.update(task, description=f"  {escape(device)}: {stage}", **({"completed": done} if done is not None else {}))
        if stage in STYLE:  # the device's final word
            bar.update(task, completed=bundle_size)
            bar.advance(tasks["wave"])

    return step, on_wave


def _cell(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _print(result) -> None:
    table = Table(title=f"rollout {result.rollout_id}: {result.bundle['name']} {result.bundle['version']} "
                        f"({result.bundle['target']}): {result.outcome}",
                  box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    for col in ("wave", "device", "status", "before", "now", "accuracy", "p95 ms", "peak MiB"):
        table.add_column(col, no_wrap=col not in ("device",), overflow="fold",
                         justify="right" if col in ("accuracy", "p95 ms", "peak MiB") else "left")
    notes = []
    for wave in result.waves:
        for row in wave["devices"]:
            report = row.get("report") or {}
            before = row.get("before") or {}
            now = (row.get("after") or {}).get("current", "-") if "restored" in row else (
                result.bundle["version"] if row["status"] == "ok" else before.get("current"))
            status = row["status"] + (" ↩" if row.get("restored") else "")
            table.add_row(f"{wave['wave']} {wave['kind']}", escape(row["device"]),
                          f"[{STYLE.get(row['status'], 'yellow')}]{status}[/]", _cell(before.get("current")),
                          _cell(now), _cell(report.get("accuracy")), _cell(report.get("latency_p95")),
                          _cell(report.get("peak_rss_mb")))
            error = row.get("error") or row.get("restore_error")
            if error:
                notes.append(f"{row['device']}: {error}")
    console.print(table)
    if any(row.get("restored") for wave in result.waves for row in wave["devices"]):
        console.print("↩ restored to what it ran before the rollout", style="dim")
    for note in notes:
        console.print(f"  {escape(note)}", style="yellow", highlight=False, soft_wrap=True)
    if result.skipped:
        names = ", ".join(s.device for s in result.skipped)
        console.print(f"  skipped (another target): {escape(names)}", style="dim", highlight=False, soft_wrap=True)
    for breach in result.breaches:
        err_console.print(f"[red]gate broken:[/] {escape(breach.message)}", highlight=False, soft_wrap=True)


def rollout_cmd(
    bundle: Annotated[Path, typer.Argument(help="The bundle (.edgekit) from `edgekit package`.")],
    inventory: InventoryOpt,
    device: DevicesOpt = None,
    group: GroupsOpt = None,
    canary: Annotated[int, typer.Option("--canary", help="Devices in the first wave.")] = 1,
    batch: Annotated[str, typer.Option("--batch", help="Devices per later wave: a count (5) or a share (25%).")] = "25%",
    max_failures: Annotated[int, typer.Option(
        "--max-failures", help="Device failures (unreachable, install refused, bad report) tolerated in all.")] = 0,
    eval_samples: Annotated[Optional[int], typer.Option(
        "--eval-samples", min=1, help="Evaluate on the first N samples of the bundled eval set (default: all).",
        show_default=False)] = None,
    store: StoreOpt = None,
    workers: WorkersOpt = 8,
    trust_new_hosts: TrustNewOpt = False,
    targets_dir: TargetsDir = None,
    json: JsonFlag = False,
) -> None:
    """Roll BUNDLE out to the devices of its target: the canary wave first, then batches. Each
    device installs, activates and evaluates it, and its report is collected; a wave whose
    reports break the bundle target's budgets (accuracy drop or fidelity, p95 latency, peak
    memory), or too many failed devices, halts the rollout, puts that wave back on what it ran
    before, and exits 3. Tolerated failures exit 1. Everything is recorded in the store."""
    from edgekit.bundle import read_bundle
    from edgekit.errors import GateError
    from edgekit.fleet.rollout import rollout
    from edgekit.store import open_store

    found = read_bundle(bundle)
    devices = _devices(inventory, device, group, targets_dir)
    with open_store(store) as db, progress() as bar:
        step, on_wave = _progress_hooks(bar, found.size)
        result = rollout(found, devices, db, canary=canary, batch=batch, max_failures=max_failures,
                         samples=eval_samples, workers=workers, step=step, on_wave=on_wave,
                         trust_new_hosts=trust_new_hosts)
    if json:
        print_json(result.record())
    else:
        _print(result)
    if result.outcome == "halted":
        raise GateError(result.reason, details=result.record())
    if result.outcome != "completed":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("rollout")(rollout_cmd)
