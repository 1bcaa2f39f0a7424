"""The controller's side of edgekit's Ansible role: what the role needs, and what it fetched.

`role_vars` are the variables the edgekit_device role (edgekit/resources/ansible) needs
for a bundle, with the runner as one archive beside them; the Ansible engine passes them
to each run, and `edgekit fleet play-vars` prints them for a play run by AWX or
ansible-playbook.

The edgekit_device role fetches each host's reports to FETCHED/HOST/reports/NAME/VERSION/,
the layout of a device's own folder: they are read and checked exactly as `collect` reads
a device's (`pull_fetched`). The Ansible engine judges them inside `edgekit rollout`; a
play run by AWX or ansible-playbook (resources/ansible/rollout.yml) calls `edgekit fleet
gate` on the controller after each batch, which judges the batch with the same gates and
the same halt rule (rollout.halt_reason) and tells the play whether to go on.
"""

from __future__ import annotations

import hashlib
import posixpath
import time
from pathlib import Path
from typing import Optional, Sequence

from edgekit.bundle import Bundle
from edgekit.fleet.collect import Pulled, pull_reports, store_pulled
from edgekit.fleet.gates import check_report
from edgekit.fleet.inventory import Device
from edgekit.store import Store

__all__ = ["role_vars", "pull_fetched", "gate_wave"]


def role_vars(bundle: Bundle, folder: Path, step_timeout: float, samples: Optional[int] = None) -> dict:
    """The role's variables for rolling out `bundle`; the runner archive and the fetched
    reports go into `folder` (on the controller)."""
    from edgekit.bundle import runner_files, write_tar
    from edgekit.device.trust import tree_hash
    from edgekit.fleet.protocol import SHORT_STEP_S, upload_path

    files = runner_files()
    archive = folder / "runner.tar"
    write_tar(archive, files, int(time.time()))
    anywhere = Device(name="-", transport="local", root="/", target=bundle.target)  # the name does not depend on it
    return {"edgekit_bundle": str(bundle.path.resolve()), "edgekit_bundle_name": bundle.name,
            "edgekit_bundle_version": bundle.version, "edgekit_bundle_sha256": bundle.sha256,
            "edgekit_bundle_manifest_sha256": bundle.manifest_sha256,
            "edgekit_bundle_sha1": _sha1(bundle.path), "edgekit_bundle_size": bundle.size,
            "edgekit_upload_name": posixpath.basename(upload_path(anywhere, bundle)),
            "edgekit_runner_archive": str(archive), "edgekit_runner_sha256": tree_hash(files),
            "edgekit_fetch_dir": str(folder / "fetched"), "edgekit_samples": samples or 0,
            "edgekit_step_timeout": int(step_timeout), "edgekit_short_timeout": int(min(SHORT_STEP_S, step_timeout))}


def _sha1(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha1").hexdigest()


def pull_fetched(device: Device, folder: Path, known: set[str], name: str, version: str) -> Pulled:
    """The reports of NAME VERSION fetched from `device` into `folder` that are not in `known`, checked."""
    from edgekit.transport.local import LocalTransport

    (folder / "reports").mkdir(parents=True, exist_ok=True)
    copy = device.model_copy(update={"transport": "local", "root": str(folder)})
    with LocalTransport(copy.endpoint) as t:
        return pull_reports(t, copy, known, name=name, version=version)


def gate_wave(bundle: Bundle, fetched: Path, hosts: Sequence[str], failed: dict[str, str], *, kind: str,
              failures_before: int, max_failures: int, store: Optional[Store], rollout_id: Optional[int] = None,
              last: bool = False) -> dict:
    """Judge one batch of a play: {go_on, reason, failures, rollout_id, devices: [{device,
    status, error, breaches}]}. A host in `failed` (host -> what the play said), or without a
    valid report of the bundle's version, is a failure; the newest report of each other host
    meets the bundle's gates. With a store, the batch is a wave of rollout `rollout_id` (a
    new rollout when None), recorded as `edgekit rollout` records one; the rollout ends
    when the batch halts or is the `last`."""
    from edgekit.fleet.rollout import FAILED, halt_reason

    rows = []
    for host in hosts:
        device = Device(name=host, transport="local", root=str(fetched / host), target=bundle.target)
        pulled = pull_fetched(device, fetched / host, set(), bundle.name, bundle.version)
        if store is not None:
            store_pulled(store, device, pulled)
        rows.append(_row(host, pulled, failed.get(host), bundle))
    failures = failures_before + sum(r["status"] in FAILED for r in rows)
    reason = halt_reason(rows, kind, failures, max_failures)
    devices = [{**r, "breaches": [b.record() for b in r["breaches"]]} for r in rows]
    if store is not None:
        rollout_id = _record_wave(store, bundle, rollout_id, kind, devices, reason, failures, max_failures, last)
    return {"go_on": reason is None, "reason": reason, "failures": failures, "rollout_id": rollout_id,
            "devices": devices}


def _record_wave(store: Store, bundle: Bundle, rollout_id: Optional[int], kind: str, devices: list[dict],
                 reason: Optional[str], failures: int, max_failures: int, last: bool) -> int:
    """The batch as the next wave of the play's rollout record (started on the first batch)."""
    with store.batch():
        if rollout_id is None:
            rollout_id = store.start_rollout(name=bundle.name, version=bundle.version, target=bundle.target,
                                             sha256=bundle.sha256, path=str(bundle.path),
                                             options={"engine": "ansible-play", "max_failures": max_failures})
        index = len(store.rollout(rollout_id)["waves"]) + 1
        store.start_wave(rollout_id, index, kind, [d["device"] for d in devices])
        for row in devices:
            store.add_event(rollout_id, index, row["device"], "deploy", row["status"] == "ok",
                            {k: v for k, v in row.items() if k != "device"})
        store.finish_wave(rollout_id, index, "halted" if reason else "passed", reason)
        if reason:
            store.finish_rollout(rollout_id, "halted", f"rollout of {bundle.name} {bundle.version} halted at wave "
                                 f"{index} ({kind}): {reason}; the play puts the wave back")
        elif last:
            store.finish_rollout(rollout_id, "completed-with-failures" if failures else "completed")
    return rollout_id


def _row(host: str, pulled: Pulled, failure: Optional[str], bundle: Bundle) -> dict:
    row = {"device": host, "status": "failed", "error": failure, "breaches": []}
    if failure:
        return row
    reports = sorted((r for r, _ in pulled["reports"]), key=lambda r: r.started_at or "")
    if not reports:
        bad = "; ".join(f"{s}: {e}" for s, e in pulled["bad"]) or "none fetched"
        return {**row, "error": f"{host}: no valid report of {bundle.name} {bundle.version}: {bad}"}
    breaches = check_report(host, reports[-1], bundle.manifest)
    return {**row, "status": "breached" if breaches else "ok", "breaches": breaches}
