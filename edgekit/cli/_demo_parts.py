"""What both demos (`edgekit demo`, edgekit.cli.demo, and `edgekit demo --lm`,
edgekit.cli.demo_lm) print and do the same way: numbered steps with the commands that do
them by hand, the simulated fleet and its keys, a rollout with its progress bar, the report."""

from __future__ import annotations

import shlex
from itertools import count
from pathlib import Path

from rich.markup import escape
from rich.rule import Rule

from edgekit.cli._common import console, progress


def _arg(value) -> str:
    """A path relative to the working directory when it lies inside it (shorter to read), else absolute."""
    if isinstance(value, Path):
        try:
            value = value.relative_to(Path.cwd())
        except ValueError:
            pass
    return str(value)


def command(*args) -> str:
    """One shell command line, quoted where a path or value needs it."""
    return shlex.join(_arg(a) for a in args)


def _line(text: str, style: str = "") -> None:
    # soft_wrap: rich never breaks the line, so a terminal that wraps it still copies it whole
    console.print(f"[{style}]{escape(text)}[/]" if style else escape(text), highlight=False, soft_wrap=True)


class _Steps:
    """Numbered step headers, each with the commands that do the same by hand."""

    def __init__(self) -> None:
        self._number = count(1)

    def __call__(self, title: str, *commands: str) -> None:
        console.print(Rule(f"[bold]{next(self._number)}. {escape(title)}[/]", align="left"))
        for line in commands:
            _line(f"$ {line}", "dim")


def _fleet_and_keys(run, step):
    from edgekit import demo as d

    kind = "real sshd servers on 127.0.0.1" if run.ssh else "local folders"
    step(f"a simulated fleet: {run.devices} devices as {kind}", command("cat", run.workdir / "fleet.toml"))
    fleet = d.make_fleet(run)
    for dev in fleet:
        where = f"127.0.0.1:{dev.port}" if dev.transport == "ssh" else dev.root
        _line(f"  {dev.name:8} {dev.target:12} {where}")
    if run.ssh:  # the device commands below find these servers' host keys only through it
        console.print("  while the demo runs, the commands it shows reach these servers after:", highlight=False)
        _line("  export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in run.env().items()))
    step("a signing key; every device trusts it",
         command("edgekit", "keys", "init", "--out", run.workdir / "keys"),
         command("edgekit", "keys", "trust", run.workdir / "keys" / "edgekit-bundle.pub", "--inventory", run.inventory))
    keys = d.trust(run, fleet)
    _line(f"  key {keys.fingerprint}")
    return fleet, keys


def _warn_if_big(bundle) -> None:
    """As `edgekit package` does: one line when a bundle is mostly evaluation data."""
    from edgekit.cli.package import print_warning
    from edgekit.package import bundle_warning

    warning = bundle_warning(bundle)
    if warning:
        print_warning(warning)


def _rollout_command(run, bundle_path: Path) -> str:
    return command("edgekit", "rollout", bundle_path, "--inventory", run.inventory, "--canary", "1", "--batch", "50%",
                   "--max-failures", "0", "--store", run.store_path)


def _rollout_with_progress(run, bundle, fleet: list):
    from edgekit import demo as d
    from edgekit.cli.rollout import _print as print_rollout, _progress_hooks

    with progress() as bar:
        hooks, on_wave = _progress_hooks(bar, bundle.size)
        result = d.roll_out(run, bundle, [x for x in fleet if x.target == bundle.target], step=hooks, on_wave=on_wave)
    print_rollout(result)
    run.outcomes.append(result)
    return result


def _report(run) -> Path:
    """The same code as `edgekit report`: the fleet tables here, the HTML report to a file."""
    from edgekit.cli.report import Format, report_cmd

    html = run.workdir / "fleet.html"
    report_cmd(store=run.store_path, inventory=run.inventory, format=Format.table)
    report_cmd(store=run.store_path, inventory=run.inventory, format=Format.html, output=html)
    return html
