"""`edgekit fleet play-vars` and `edgekit fleet gate`: a rollout that Ansible runs (AWX, ansible-playbook).

The shipped play (edgekit/resources/ansible/rollout.yml) takes the role's variables from
`play-vars` first. It fetches each batch's reports to
the controller and calls `gate` between batches: exit 0 when the batch passed and the play
goes on, 3 when it must halt (the play puts the batch back), 2 for bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from edgekit.cli._common import JsonFlag, console, print_json
from edgekit.cli.fleet import StepTimeoutOpt, StoreOpt, fleet_app


def gate_cmd(
    bundle: Annotated[Path, typer.Argument(help="The bundle the play rolls out (its gates are judged).")],
    fetched: Annotated[Path, typer.Option(
        "--fetched", help="Where the play fetched the reports: FETCHED/HOST/reports/NAME/VERSION/*.json.")],
    device: Annotated[list[str], typer.Option(
        "--device", "-d", help="A host of the batch (repeatable): each needs a valid report that meets the gates.")],
    failed: Annotated[Optional[list[str]], typer.Option(
        "--failed", metavar="HOST=WHY", show_default=False,
        help="A host the play saw fail, and why (repeatable); it counts against --max-failures.")] = None,
    canary: Annotated[bool, typer.Option(
        "--canary", help="This batch is the canary: it must have a device checked.")] = False,
    failures_before: Annotated[int, typer.Option(
        "--failures-before", min=0, help="Device failures of the batches before this one.")] = 0,
    max_failures: Annotated[int, typer.Option(
        "--max-failures", min=0, help="Device failures the whole rollout tolerates.")] = 0,
    rollout: Annotated[Optional[int], typer.Option(
        "--rollout", min=1, help="The store's rollout this batch belongs to (the first batch's gate "
        "starts one and prints its id).", show_default=False)] = None,
    last: Annotated[bool, typer.Option("--last", help="This is the play's last batch: the rollout ends here.")] = False,
    store: StoreOpt = None,
    json: JsonFlag = False,
) -> None:
    """Judge one batch of an Ansible-run rollout by the bundle's gates and the --max-failures
    rule, as `edgekit rollout` judges a wave; the reports, and the batch as a wave of the
    rollout, go into the store. Exit 0: go on; 3: halt (the reason on stderr)."""
    from edgekit.bundle import read_bundle
    from edgekit.errors import ConfigError, GateError
    from edgekit.fleet.ansible_play import gate_wave
    from edgekit.store import open_store

    if not fetched.is_dir():
        raise ConfigError(f"--fetched {fetched}: no such folder (the play's edgekit_fetch_dir)")
    found = read_bundle(bundle)
    why = {}
    for item in failed or []:
        host, eq, text = item.partition("=")
        if not eq or not host:
            raise ConfigError(f"--failed {item}: give HOST=WHY")
        why[host] = text or "failed"
    with open_store(store) as db:
        if rollout is not None and db.rollout(rollout) is None:
            raise ConfigError(f"--rollout {rollout}: no such rollout in {db.path} (the first batch's gate starts one)")
        verdict = gate_wave(found, fetched, device, why, kind="canary" if canary else "batch",
                            failures_before=failures_before, max_failures=max_failures, store=db,
                            rollout_id=rollout, last=last)
    if json:
        print_json(verdict)
    else:
        for row in verdict["devices"]:
            said = "; ".join(b["message"] for b in row["breaches"]) or row["error"] or ""
            console.print(f"{escape(row['device'])}: {row['status']}" + (f": {escape(said)}" if said else ""),
                          highlight=False, soft_wrap=True)
    if not verdict["go_on"]:
        raise GateError(verdict["reason"], details=verdict)


def play_vars_cmd(
    bundle: Annotated[Path, typer.Argument(help="The bundle the play rolls out.")],
    folder: Annotated[Path, typer.Option(
        "--dir", help="A folder on the controller for the runner archive and the fetched reports.")],
    step_timeout: StepTimeoutOpt = None,
    samples: Annotated[Optional[int], typer.Option(
        "--eval-samples", min=1, help="Evaluate on this many samples (default: all the bundle carries).",
        show_default=False)] = None,
) -> None:
    """The variables edgekit's Ansible role needs for BUNDLE, as JSON on stdout and in
    DIR/vars.json (the play's first step reads them with include_vars)."""
    import json as json_lib

    from edgekit.bundle import read_bundle
    from edgekit.fleet.ansible_play import role_vars
    from edgekit.fleet.push import step_timeout_for

    found = read_bundle(bundle)
    found_vars = role_vars(found, folder, step_timeout or step_timeout_for(found), samples)
    (folder / "vars.json").write_text(json_lib.dumps(found_vars, indent=2) + "\n")
    print_json(found_vars)


def register(app: typer.Typer) -> None:
    fleet_app.command("gate")(gate_cmd)
    fleet_app.command("play-vars")(play_vars_cmd)
