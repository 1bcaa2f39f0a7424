"""`edgekit demo`: the whole chain on a simulated fleet (see edgekit/demo.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.rule import Rule

from edgekit.cli._common import console, progress


def _step(n: int, title: str, command: str) -> None:
    console.print(Rule(f"[bold]{n}. {title}[/]", align="left"))
    console.print(f"[dim]$ {escape(command)}[/]", highlight=False, soft_wrap=True)


def demo_cmd(
    devices: Annotated[int, typer.Option("--devices", min=2, help="Simulated devices (over two targets).")] = 4,
    ssh: Annotated[bool, typer.Option("--ssh", help="Real sshd servers on 127.0.0.1, one per device (needs openssh-server).")] = False,
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the fleet, bundles, store and report go (emptied first).")] = Path("demo-work"),
) -> None:
    """Run the whole chain on a simulated fleet: calibrate the example model for two device
    classes, package signed bundles, roll them out with a canary, stop a careless variant at
    its canary, collect the reports and write the fleet report."""
    from edgekit import demo as d
    from edgekit.cli.calibrate import print_table
    from edgekit.cli.rollout import _print as print_rollout, _progress_hooks

    started = time.perf_counter()
    d._check_inputs()
    workdir = workdir.expanduser().resolve()
    d.reset(workdir)
    run = d.Demo(workdir, devices=devices, ssh=ssh)
    try:
        kind = "real sshd servers on 127.0.0.1" if ssh else "local folders"
        _step(1, f"a simulated fleet: {devices} devices as {kind}", f"cat {workdir / 'fleet.toml'}")
        fleet = d.make_fleet(run)
        for dev in fleet:
            where = f"127.0.0.1:{dev.port}" if dev.transport == "ssh" else dev.root
            console.print(f"  {dev.name:8} {dev.target:12} {escape(str(where))}", highlight=False)
        inv = run.inventory

        _step(2, "a signing key; every device trusts it", f"edgekit keys init --out {workdir / 'keys'}")
        keys = d.trust(run, fleet)
        console.print(f"  key {keys.fingerprint}", highlight=False)

        calibrations = {}
        for target in d.TARGETS:
            _step(3, f"release calibration for {target}",
                  f"edgekit calibrate {d.MODEL.relative_to(d.REPO)} --target {target} --calibration "
                  f"{d.CALIB.relative_to(d.REPO)} --eval {d.EVAL.relative_to(d.REPO)} -o {workdir / 'calibrated' / target}")
            with progress() as bar:
                task = bar.add_task(f"calibrating for {target}", total=None)
                calibrations[target] = d.calibrate_target(
                    run, target, on_candidate=lambda c, i, n: bar.update(task, total=n, completed=i, description=c.id))
            print_table(calibrations[target].record)

        bundles = {}
        _step(4, "one signed bundle per target", f"edgekit package ... --calibration-record ... --sign-key {keys.private}")
        for target, cal in calibrations.items():
            if cal.model_path is None:
                console.print(f"  [yellow]{target}: no recipe met the budgets; nothing to package[/]")
                continue
            bundles[target] = d.package_release(run, target, cal, keys)
            console.print(f"  {bundles[target].path.name}  sha256 {bundles[target].sha256[:16]}…", highlight=False)
            _warn_if_big(bundles[target])

        for target, bundle in bundles.items():
            _step(5, f"rollout of {bundle.name} {bundle.version} to the {target} devices",
                  f"edgekit rollout {bundle.path} --inventory {inv} --canary 1 --batch 50% --store {run.store_path}")
            with progress() as bar:
                step, on_wave = _progress_hooks(bar, bundle.size)
                result = d.roll_out(run, bundle, [x for x in fleet if x.target == target], step=step, on_wave=on_wave)
            print_rollout(result)
            run.outcomes.append(result)

        _step(6, "the safety net: a careless variant (INT8 calibrated on 16 under-exposed images)",
              f"edgekit rollout {workdir / 'dist' / f'{d.NAME}-{d.CARELESS}-{d.TARGETS[0]}.edgekit'} --inventory {inv} --canary 1")
        careless = d.package_careless(run, keys)
        _warn_if_big(careless)
        with progress() as bar:
            step, on_wave = _progress_hooks(bar, careless.size)
            result = d.roll_out(run, careless, [x for x in fleet if x.target == careless.target], step=step,
                                on_wave=on_wave)
        print_rollout(result)
        run.outcomes.append(result)
        if result.outcome == "halted":
            console.print(f"[green]stopped as it should be:[/] {escape(result.reason)}", highlight=False, soft_wrap=True)
        else:
            console.print(f"[red]the careless variant was not stopped ({result.outcome})[/]")

        _step(7, "collect the reports and compare the fleet", f"edgekit collect --inventory {inv} --store {run.store_path}")
        d.collect_reports(run, fleet)
        html = _report(run)
    finally:
        d.stop_fleet(run)
    _closing(run, html, time.perf_counter() - started)


def _warn_if_big(bundle) -> None:
    """As `edgekit package` does: one line when a bundle is mostly evaluation data."""
    from edgekit.cli.package import print_warning
    from edgekit.package import bundle_warning

    warning = bundle_warning(bundle)
    if warning:
        print_warning(warning)


def _report(run) -> Path:
    """The same code as `edgekit report`: the fleet tables here, the HTML report to a file."""
    from edgekit.cli.report import Format, report_cmd

    html = run.workdir / "fleet.html"
    report_cmd(store=run.store_path, inventory=run.inventory, format=Format.table)
    report_cmd(store=run.store_path, inventory=run.inventory, format=Format.html, output=html)
    return html


def _closing(run, html: Path, seconds: float) -> None:
    inv, store = run.inventory, run.store_path
    console.print(Panel.fit(
        f"[bold]done in {seconds:.0f} s.[/] Open the fleet report:\n  {html}\n\n"
        f"Try next:\n"
        f"  edgekit fleet status --inventory {inv}\n"
        f"  edgekit report --store {store} --compare {run.outcomes[0].bundle['version'] if run.outcomes else '1.0.0'} 1.1.0\n"
        f"  edgekit report --calibration {run.workdir / 'calibrated' / 'host-cpu' / 'calibration.json'} --format html -o calibration.html\n"
        f"  edgekit rollback digits --inventory {inv}\n"
        f"  edgekit demo --ssh            the same over real sshd servers",
        title="edgekit demo"), highlight=False)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)
