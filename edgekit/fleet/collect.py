"""`edgekit collect`: device reports (ROOT/reports/NAME/VERSION/RUN_ID.json) into the store.

Files are listed and fetched over the transport (SFTP for ssh devices); a file whose
run id the store has for that device is not fetched again, so collecting twice adds
nothing twice. Everything a device sends is checked (edgekit.device_report) before it is
stored; a bad report, or a device that cannot be reached, is a failure of that device
and the others go on. The store is written only by the calling thread.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

from edgekit.device_report import MAX_REPORT_BYTES, REPORT_FILE, validate_report
from edgekit.errors import DataError, EdgekitError
from edgekit.fleet.fanout import WORKERS, DeviceResult, FleetResult, fan_out
from edgekit.fleet.inventory import Device
from edgekit.fleet.protocol import DevicePaths
from edgekit.store import Store
from edgekit.transport import Transport
from edgekit.words import PLAIN

__all__ = ["Pulled", "pull_reports", "collect", "store_pulled"]

Pulled = dict  # {"reports": [(DeviceReport, source)], "bad": [(source, error)], "error": str | None,
#                  "scope": the folder listed whole (reports/...), or None}


def _files(transport: Transport, paths: DevicePaths, name: Optional[str], version: Optional[str],
           bad: list) -> list[tuple[str, str, str, str]]:
    """(name, version, run_id, remote path) of every report file; odd names go to `bad`."""
    found, base = [], paths.reports
    for n in [name] if name else transport.listdir(base):
        if not PLAIN.fullmatch(n):
            bad.append((paths.relative(f"{base}/{n}"), "not a plain bundle name; skipped"))
            continue
        for v in [version] if version else transport.listdir(f"{base}/{n}"):
            if not PLAIN.fullmatch(v):
                bad.append((paths.relative(f"{base}/{n}/{v}"), "not a plain version; skipped"))
                continue
            for file in transport.listdir(f"{base}/{n}/{v}"):
                match = REPORT_FILE.match(file)
                if match:
                    found.append((n, v, match.group(1), f"{base}/{n}/{v}/{file}"))
                elif not file.startswith("."):  # the runner's own temporary files start with a dot
                    bad.append((paths.relative(f"{base}/{n}/{v}/{file}"),
                                "not a report file name (RUN_ID.json); skipped"))
    return found


def _fetch(transport: Transport, remote: str, tmp: Path) -> bytes:
    size = transport.size(remote)
    if size is None:
        raise DataError("not a regular file")
    if size > MAX_REPORT_BYTES:
        raise DataError(f"{size} bytes, over the {MAX_REPORT_BYTES}-byte limit; not fetched")
    local = tmp / "report.json"
    transport.get(remote, local)
    with open(local, "rb") as fh:
        return fh.read(MAX_REPORT_BYTES + 1)  # it may have grown since we looked


def pull_reports(transport: Transport, device: Device, known: set[str], *, name: Optional[str] = None,
                 version: Optional[str] = None) -> Pulled:
    """Fetch and check the reports of one device that are not in `known` (run ids).
    A transport failure part-way keeps what was fetched and says what went wrong."""
    pulled: Pulled = {"reports": [], "bad": [], "error": None}
    paths = DevicePaths(device.root)
    try:
        with tempfile.TemporaryDirectory(prefix="edgekit-collect-") as tmp:
            for n, v, run_id, remote in _files(transport, paths, name, version, pulled["bad"]):
                if run_id in known:
                    continue
                source = paths.relative(remote)  # reports/NAME/VERSION/RUN_ID.json
                try:
                    data = _fetch(transport, remote, Path(tmp))
                    report = validate_report(data, f"{source} from {device.name}", name=n, version=v, run_id=run_id)
                except DataError as exc:
                    pulled["bad"].append((source, str(exc).replace(f"report {source} from {device.name}: ", "")))
                    continue
                pulled["reports"].append((report, source))
    except EdgekitError as exc:  # the connection went: keep what we have
        pulled["error"] = str(exc)
    pulled["scope"] = None if pulled["error"] else _scope(paths, name, version)
    return pulled


def _scope(paths: DevicePaths, name: Optional[str], version: Optional[str]) -> Optional[str]:
    """The report folder a pull listed whole ('reports/', 'reports/NAME/'...); None when it
    listed one version of every name (no one folder)."""
    if version and not name:
        return None
    return paths.relative("/".join([paths.reports, *(p for p in (name, version) if p)])) + "/"


def store_pulled(store: Store, device: Device, pulled: Pulled) -> dict:
    """Write one device's pulled reports and bad files to the store; a summary for output."""
    new = store.add_reports(device.name, pulled["reports"])
    if pulled.get("scope"):  # a bad file removed or replaced on the device needs no look any more
        store.clear_collect_errors(device.name, pulled["scope"], keep={source for source, _ in pulled["bad"]})
    for source, error in pulled["bad"]:
        store.add_collect_error(device.name, source, error)
    return {"new": new, "fetched": len(pulled["reports"]), "bad": [f"{s}: {e}" for s, e in pulled["bad"]],
            "run_ids": [r.run_id for r, _ in pulled["reports"]]}


def _failure(summary: dict, error: Optional[str]) -> Optional[str]:
    problems = ([error] if error else []) + summary["bad"]
    if not problems:
        return None
    head = f"{len(summary['bad'])} bad report file(s): " if summary["bad"] and not error else ""
    return head + "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")


def collect(devices: Sequence[Device], store: Store, *, workers: int = WORKERS,
            on_done: Optional[Callable[[DeviceResult], None]] = None, **connect_opts) -> FleetResult:
    """Pull every device's new reports into `store`; one result per device."""
    known = {d.name: store.known_run_ids(d.name) for d in devices}
    by_name = {d.name: d for d in devices}

    def work(transport: Transport, device: Device) -> dict:
        return {"pulled": pull_reports(transport, device, known[device.name])}

    def done(result: DeviceResult) -> None:
        device = by_name[result.device]
        pulled = result.detail.pop("pulled", None)
        if pulled is None:  # never connected
            store.touch_device(device.name, target=device.target, transport=device.transport, host=device.host,
                               reachable=False, error=result.error)
            result.detail.update(reachable=False, new=0)
        else:
            summary = store_pulled(store, device, pulled)
            result.detail.update(reachable=True, **summary)
            result.error = _failure(summary, pulled["error"])
            result.status = "failed" if result.error else "ok"
            store.touch_device(device.name, target=device.target, transport=device.transport, host=device.host,
                               reachable=pulled["error"] is None, error=pulled["error"])
        if on_done:
            on_done(result)

    return fan_out(devices, work, action="collect", workers=workers, on_done=done, **connect_opts)
