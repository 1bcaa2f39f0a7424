"""`edgekit rollout`: a staged, gated rollout of one bundle (see edgekit/fleet/rollout.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from edgekit.cli._common import JsonFlag, TargetsDir, console, err_console, exit_now, interrupts, print_json, progress
from edgekit.cli.fleet import (DevicesOpt, GroupsOpt, InventoryOpt, StepTimeoutOpt, StoreOpt, TrustNewOpt, WorkersOpt,
                               _devices)

STYLE = {"ok": "green", "breached": "red", "failed": "red", "unreachable": "red", "interrupted": "yellow",
         "not started": "dim"}


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
            now = row.get("now") or {}
            status = row["status"] + (" ↩" if row.get("restored") else "")
            table.add_row(f"{wave['wave']} {wave['kind']}", escape(row["device"]),
                          f"[{STYLE.get(row['status'], 'yellow')}]{status}[/]", _cell(before.get("current")),
                          _cell(now.get("runs")), _cell(report.get("accuracy")), _cell(report.get("latency_p95")),
                          _cell(report.get("peak_rss_mb")))
            if row["status"] != "ok" or now.get("fix"):
                notes.append(row)
    console.print(table)
    if any(row.get("restored") for wave in result.waves for row in wave["devices"]):
        console.print("↩ put back on what it ran before the rollout", style="dim")
    for row in notes:
        _print_failure(row, result.bundle["version"])
    _print_skipped([s.record() for s in result.skipped])
    for breach in result.breaches:
        err_console.print(f"[red]gate broken:[/] {escape(breach.message)}", highlight=False, soft_wrap=True)


def _print_failure(row: dict, version: str) -> None:
    """The device's error, then what it runs now, whether edgekit changed it, and the fix."""
    now = row.get("now") or {}
    runs = now.get("runs")
    state = (f"runs {runs}" if runs and not runs.endswith("?") else
             f"may run {runs[:-1]} unchecked" if runs else "runs what it ran before")
    if row.get("error"):
        console.print(f"  {escape(row['device'])}: {escape(row['error'])}", style="yellow", highlight=False,
                      soft_wrap=True)
    console.print(f"    now: {escape(state)} ({escape(now.get('changed') or '')})", highlight=False, soft_wrap=True)
    if now.get("fix"):
        console.print(f"    fix: {escape(now['fix'])}", style="bold", highlight=False, soft_wrap=True)


def rollout_cmd(
    bundle: Annotated[Optional[Path], typer.Argument(
        help="The bundle (.edgekit) from `edgekit package` (not with --resume or --abort).", show_default=False)] = None,
    inventory: InventoryOpt = ...,
    device: DevicesOpt = None,
    group: GroupsOpt = None,
    canary: Annotated[int, typer.Option("--canary", help="Devices in the first wave.")] = 1,
    batch: Annotated[str, typer.Option("--batch", help="Devices per later wave: a count (5) or a share (25%).")] = "25%",
    max_failures: Annotated[int, typer.Option(
        "--max-failures", help="Device failures (unreachable, install refused, bad report) tolerated in all.")] = 0,
    eval_samples: Annotated[Optional[int], typer.Option(
        "--eval-samples", min=1, help="Evaluate on the first N samples of the bundled eval set (default: all).",
        show_default=False)] = None,
    step_timeout: StepTimeoutOpt = None,
    check: Annotated[bool, typer.Option(
        "--check", help="Dry run: print the waves and what each device would go from and to; change nothing.")] = False,
    resume: Annotated[Optional[int], typer.Option(
        "--resume", metavar="ID", help="Go on with interrupted rollout ID: same bundle and waves, devices done "
        "are skipped.", show_default=False)] = None,
    abort: Annotated[Optional[int], typer.Option(
        "--abort", metavar="ID", help="Put every device rollout ID activated the bundle on back to what it ran "
        "before.", show_default=False)] = None,
    engine: Annotated[str, typer.Option(
        "--engine", help="What carries out each wave: `native` (edgekit's own SSH fan-out) or `ansible` "
        "(ansible-runner with edgekit's playbook); the plan, gates and records are the same.")] = "native",
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
    before, and exits 3. Tolerated failures exit 1. Ctrl-C (or SIGTERM) starts no new step,
    puts back every device whose new version was not yet gated, and exits 130: `--resume ID`
    goes on, `--abort ID` undoes it. Everything is recorded in the store."""
    from edgekit.bundle import read_bundle
    from edgekit.errors import ConfigError
    from edgekit.fleet.engines import engine_for
    from edgekit.store import open_store

    chosen = [flag for flag, given in (("--check", check), ("--resume", resume is not None),
                                        ("--abort", abort is not None)) if given]
    if len(chosen) > 1:
        raise ConfigError(f"{chosen[0]} and {chosen[1]}: give one of them")
    if (resume is not None or abort is not None) and bundle is not None:
        raise ConfigError(f"{chosen[0]} takes the bundle from the store: give no BUNDLE with it")
    if resume is None and abort is None and bundle is None:
        raise ConfigError("give the BUNDLE to roll out (or --resume ID / --abort ID)")
    carrier = engine_for(engine, workers=workers, trust_new_hosts=trust_new_hosts)
    devices = _devices(inventory, device, group, targets_dir)
    opts = {"engine": carrier}
    if check:
        _check(read_bundle(bundle), devices, store, canary, batch, max_failures, opts, json)
        return
    with open_store(store) as db:
        if abort is not None:
            _abort(abort, devices, db, opts, json)
            return
        found = None if resume is not None else read_bundle(bundle)
        result = _run(found, devices, db, resume, opts, canary=canary, batch=batch, max_failures=max_failures,
                      samples=eval_samples, step_timeout=step_timeout)
    _finish(result, json)


def _run(found, devices, db, resume, opts, **plan):
    from edgekit.fleet import rollout as staged

    with progress() as bar, interrupts("the rollout") as cancel:
        step, on_wave = _progress_hooks(bar, found.size if found else 0)
        try:
            if resume is not None:
                return staged.resume(resume, devices, db, step=step, on_wave=on_wave, cancel=cancel, **opts)
            return staged.rollout(found, devices, db, step=step, on_wave=on_wave, cancel=cancel, **plan, **opts)
        except KeyboardInterrupt:
            err_console.print("interrupted at once: devices still at work may run the new version unchecked; "
                              "`edgekit rollout --abort ID` puts them back (ID: `edgekit report --section rollouts`)",
                              highlight=False, soft_wrap=True)
            exit_now(130)


def _finish(result, json: bool) -> None:
    from edgekit.errors import GateError

    if json:
        print_json(result.record())
    else:
        _print(result)
    if result.outcome == "interrupted":
        _print_interrupted(result, err_console if json else console)
        raise typer.Exit(130)
    if result.outcome == "halted":
        raise GateError(result.reason, details=result.record())
    if result.outcome != "completed":
        if result.reason:
            err_console.print(f"[red]error:[/] {escape(result.reason)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _runs_now(row: dict, version: str) -> str:
    if "restored" in row:
        if row["restored"]:
            return f"runs {(row.get('after') or {}).get('current') or 'nothing'} (put back: {version} not gated)"
        return f"may run {version} unchecked: putting it back failed ({row.get('restore_error')})"
    if row["status"] == "ok":
        return f"runs {version} (passed its gates)"
    if row["status"] == "not started":
        return "unchanged (not started)"
    runs = (row.get("now") or {}).get("runs")
    return f"runs {runs} (unchanged)" if runs else "unchanged"


def _print_interrupted(result, out) -> None:
    """One line per device with what it runs now (on stderr under --json), then `interrupted: ...`."""
    version = result.bundle["version"]
    for row in result.devices:
        out.print(f"{escape(row['device'])}: {escape(_runs_now(row, version))}", highlight=False, soft_wrap=True)
    for name in result.not_started:
        out.print(f"{escape(name)}: unchanged (its wave did not start)", highlight=False, soft_wrap=True)
    rid = result.rollout_id
    err_console.print(f"interrupted: {escape(result.reason or '')}; go on with `edgekit rollout --resume {rid} -i "
                      f"INVENTORY` or undo it with `edgekit rollout --abort {rid} -i INVENTORY`",
                      highlight=False, soft_wrap=True)


def _check(found, devices, store, canary: int, batch: str, max_failures: int, opts: dict, json: bool) -> None:
    from edgekit.fleet.rollout_ctl import check
    from edgekit.store import default_store_path, open_store

    path = Path(store) if store is not None else default_store_path()
    if path.is_file():
        with open_store(path) as db:
            plan = check(found, devices, db, canary=canary, batch=batch, max_failures=max_failures, **opts)
    else:
        plan = check(found, devices, None, canary=canary, batch=batch, max_failures=max_failures, **opts)
    if json:
        print_json(plan)
        return
    b = plan["bundle"]
    table = Table(title=f"rollout plan: {b['name']} {b['version']} ({b['target']}); nothing is changed",
                  box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    for col in ("wave", "device", "from", "to", "if halted"):
        table.add_column(col, no_wrap=col != "device", overflow="fold")
    notes = []
    for wave in plan["waves"]:
        for row in wave["devices"]:
            table.add_row(f"{wave['wave']} {wave['kind']}", escape(row["device"]),
                          _cell(row["from"]) if row["reachable"] else "[red]unreachable[/]", row["to"],
                          _cell(row["back_to"]) if row["reachable"] else "-")
            if row["note"]:
                notes.append(f"{row['device']}: {row['note']}")
    console.print(table)
    for note in notes:
        console.print(f"  {escape(note)}", style="yellow", highlight=False, soft_wrap=True)
    _print_skipped(plan["skipped"])


def _print_skipped(skipped: list[dict]) -> None:
    if not skipped:
        return
    by_target: dict[str, list[str]] = {}
    for s in skipped:
        by_target.setdefault(s.get("target") or "?", []).append(s["device"])
    kinds = "; ".join(f"{t}: {', '.join(names)}" for t, names in sorted(by_target.items()))
    console.print(f"  skipped {len(skipped)} device(s) of other targets ({escape(kinds)})", style="dim",
                  highlight=False, soft_wrap=True)


def _abort(rollout_id: int, devices, db, opts: dict, json: bool) -> None:
    from edgekit.fleet.rollout_ctl import abort

    done = abort(rollout_id, devices, db, **opts)
    if json:
        print_json(done)
    else:
        for row in done["devices"]:
            runs = row.get("runs")
            text = {"restored": f"runs {runs or 'nothing'} (put back)",
                    "left alone": row.get("error")}.get(row["status"], f"{row['status']}: {row.get('error')}")
            console.print(f"{escape(row['device'])}: {escape(str(text))}", highlight=False, soft_wrap=True)
        console.print(escape(done["reason"]), highlight=False, soft_wrap=True)
    if not done["ok"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("rollout")(rollout_cmd)
