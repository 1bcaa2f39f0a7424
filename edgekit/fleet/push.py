"""Push, activate, roll back and ask for status across a fleet, through any Transport.

The verbs of `edgekit push`, `rollback`, `fleet gc|repair|status` and `keys trust`, each
fanned out over the devices (edgekit.fleet.fanout) and done on each by its runner
(edgekit.fleet.protocol), which push installs or updates first. Only Transport methods
are used, so the same code drives local and SSH devices.
"""

from __future__ import annotations

import posixpath
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from edgekit.bundle import Bundle
from edgekit.errors import ConfigError, RemoteCommandError, TransportError
from edgekit.fleet.fanout import WORKERS, DeviceResult, FleetResult, check_cancel, fan_out
from edgekit.fleet.inventory import Device
from edgekit.fleet.probe import probe_status
from edgekit.fleet.protocol import (SHORT_STEP_S, DevicePaths, device_status, ensure_runner, has_runner,
                                    installed_meta, model_state, payload, run_runner, runner_argv, runner_reply,
                                    shipped_runner, transport_cause, upload_path)
from edgekit.transport import Transport
from edgekit.transport.base import Cancel

__all__ = ["install_bundle", "push", "activate", "rollback", "status", "remote_evaluate",
           "trust_key", "for_target", "gc", "repair", "step_timeout_for", "space_needed"]


def step_timeout_for(bundle: Bundle) -> float:
    """The default bound of one device step (an install, an evaluation) for this bundle: the
    target profile's `step_timeout_s` when it has one, else sized to the model from what the
    host measured (load plus every bundled sample at p95, times 30 for a slower device CPU,
    plus a minute), never under 5 minutes."""
    target = bundle.manifest.get("target") or {}
    given = target.get("step_timeout_s") if isinstance(target, dict) else None
    if isinstance(given, (int, float)) and given > 0:
        return float(given)
    expected = bundle.manifest.get("expected") or {}
    latency = (expected.get("latency_ms") or {}).get("p95") if isinstance(expected.get("latency_ms"), dict) else None
    n = expected.get("n") or 0
    if isinstance(latency, (int, float)) and isinstance(n, int):
        host_s = ((expected.get("load_ms") or 0) + n * latency) / 1000
    else:  # packaged without timings: a second per MiB of model stands in for them
        host_s = bundle.size / (1 << 20)
    return max(300.0, 60 + 30 * host_s)


def install_bundle(transport: Transport, device: Device, bundle: Bundle, *, activate: bool = False,
                   progress: Optional[Callable[[int, int], None]] = None, status: Optional[dict] = None,
                   cancel: Optional[Cancel] = None, step_timeout: Optional[float] = None) -> dict:
    """Runner, upload, install (and activate) on one device; `seconds` says where the time went,
    `before` what NAME was before. `status`: the runner's status, when the caller has it.
    Once `cancel` is set no further step starts (an upload stops between chunks, its .part
    kept for the next try) and Interrupted carries what was done."""
    seconds: dict[str, float] = {}
    step_timeout = step_timeout or step_timeout_for(bundle)
    short = min(SHORT_STEP_S, step_timeout)
    with _timed(seconds, "runner"):
        # Asked of the device's shell first (no Python start), of the runner when the shell's
        # answer is not whole (probe.py); a status the caller has is used as it is.
        probed = probe_status(transport, device, bundle, shipped_runner()[1], timeout=short) if status is None else None
        status = status if status is not None else probed or device_status(transport, device, timeout=short)
        before = model_state(status, bundle.name)
        check_cancel(cancel, device, "the runner update", {"before": before})
        updated = ensure_runner(transport, device, status)
        # after an update an old runner's list of bundles is not taken; the probe's was read from the files
        installed = installed_meta(transport, device, bundle, None if updated and not probed else status)
    detail = {"name": bundle.name, "version": bundle.version, "before": before, "runner_updated": updated,
              "seconds": seconds}
    if installed is None:
        check_cancel(cancel, device, "the upload", detail)
        _check_room(transport, device, bundle, status)
        installed = _send_and_install(transport, device, bundle, seconds, step_timeout,
                                      _cancellable(progress, cancel, device, detail), status)
    detail.update(already_installed=installed.get("already_installed", False), signer=installed.get("signer"),
                  installed=True)
    if activate:
        check_cancel(cancel, device, "the activation", detail)
        with _timed(seconds, "activate"):
            active = run_runner(transport, device, "activate", bundle.name, bundle.version, timeout=short)
        detail.update(current=active["current"], previous=active["previous"], activated=True)
    return detail


def _send_and_install(transport: Transport, device: Device, bundle: Bundle, seconds: dict[str, float],
                      step_timeout: float, progress, status: dict) -> dict:
    """The bundle sent to the runner's `install --stdin`, which unpacks and checks it as it
    arrives (edgekit.device.receive): one pass on the device, and the install done a moment
    after the last byte rather than after the upload. `seconds`: "upload" until the last
    byte went, "install" from then to the answer."""
    remote = upload_path(device, bundle)
    started, sent = time.perf_counter(), []

    def timed_progress(done: int, total: int) -> None:
        if done >= total and not sent:
            sent.append(time.perf_counter())
        if progress:
            progress(done, total)

    argv = runner_argv(device, "install", remote, "--stdin", "--sha256", bundle.sha256, "--size", str(bundle.size),
                       "--manifest-sha256", bundle.manifest_sha256)
    try:
        result = transport.feed(argv, bundle.path, progress=timed_progress, timeout=step_timeout)
    except TransportError as exc:  # a cut connection keeps the transport's words (and its hint to resume)
        if "did not finish within" not in str(exc):
            raise
        raise RemoteCommandError(f"device {device.name}: install: {transport_cause(exc, step_timeout)}",
                                 device=device.name) from exc
    finally:
        ended = time.perf_counter()
        seconds["upload"] = round((sent[0] if sent else ended) - started, 3)
        seconds["install"] = round(ended - (sent[0] if sent else ended), 3)
    try:
        return runner_reply(device, "install", result)
    except RemoteCommandError as exc:
        if (getattr(exc, "reply", None) or {}).get("errno") not in ("ENOSPC", "EDQUOT"):
            raise
        raise TransportError(f"device {device.name}: upload: disk full: {_room_text(bundle, status)}; the "
                             "partial upload stays in incoming/ to resume (`edgekit fleet gc` removes it)",
                             device=device.name) from exc


def space_needed(bundle: Bundle) -> int:
    """Bytes a device needs free to install the bundle: the upload, and its files unpacked."""
    files = bundle.manifest.get("files") or {}
    unpacked = sum(int(f.get("size") or 0) for f in files.values() if isinstance(f, dict))
    return bundle.size + unpacked


def _room_text(bundle: Bundle, status: dict) -> str:
    free = status.get("disk_free_bytes")
    have = f", the device has {free / (1 << 20):.1f} MiB free" if isinstance(free, int) else ""
    return f"the bundle needs {space_needed(bundle) / (1 << 20):.1f} MiB (upload and unpacked){have}"


def _check_room(transport: Transport, device: Device, bundle: Bundle, status: dict) -> None:
    """Refuse before uploading what cannot fit (a full disk would stop the device's other work)."""
    free = status.get("disk_free_bytes")
    if not isinstance(free, int) or free >= space_needed(bundle):
        return  # (asking for a cut upload's size would open SFTP for nothing)
    sent = transport.size(upload_path(device, bundle)) or 0  # a cut upload resumes: its bytes are there
    if free + min(sent, bundle.size) < space_needed(bundle):
        raise TransportError(f"device {device.name}: upload: disk full: {_room_text(bundle, status)}; free space "
                             "(`edgekit fleet gc -i INVENTORY --keep 1`) and push again", device=device.name)


def _cancellable(progress, cancel: Optional[Cancel], device: Device, detail: dict):
    """An upload progress callback that stops the upload (Interrupted) once `cancel` is set."""
    if cancel is None:
        return progress

    def report(done: int, total: int) -> None:
        if cancel.is_set():
            check_cancel(cancel, device, f"the rest of the upload ({done} of {total} bytes sent, kept for the "
                                         "next try)", detail)
        if progress:
            progress(done, total)
    return report


@contextmanager
def _timed(into: dict[str, float], step: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    into[step] = round(time.perf_counter() - start, 3)


def for_target(devices: Sequence[Device], target: str) -> tuple[list[Device], list[DeviceResult]]:
    """Devices whose target matches, and skipped results for the others."""
    chosen = [d for d in devices if d.target == target]
    skipped = [DeviceResult(d.name, "skipped", {"target": d.target}, f"target {d.target}, the bundle is for {target}")
               for d in devices if d.target != target]
    if not chosen:
        targets = ", ".join(sorted({d.target for d in devices}))
        raise ConfigError(f"no selected device has target {target} (their targets: {targets}); "
                          "a bundle is only installed on devices of its own target")
    return chosen, skipped


def push(devices: Sequence[Device], bundle: Bundle, *, activate: bool = False, workers: int = WORKERS,
         on_done=None, progress_for: Optional[Callable[[Device], Callable[[int, int], None]]] = None,
         cancel: Optional[Cancel] = None, step_timeout: Optional[float] = None, **connect_opts) -> FleetResult:
    chosen, skipped = for_target(devices, bundle.target)
    work = lambda t, d: install_bundle(t, d, bundle, activate=activate, cancel=cancel,  # noqa: E731
                                       progress=progress_for(d) if progress_for else None, step_timeout=step_timeout)
    result = fan_out(chosen, work, action="push", workers=workers, on_done=on_done, cancel=cancel, **connect_opts)
    result.results += skipped
    return result


def activate(devices: Sequence[Device], name: str, version: str, **opts) -> FleetResult:
    return fan_out(devices, lambda t, d: payload(run_runner(t, d, "activate", name, version)), action="activate", **opts)


def rollback(devices: Sequence[Device], name: str, **opts) -> FleetResult:
    return fan_out(devices, lambda t, d: payload(run_runner(t, d, "rollback", name)), action="rollback", **opts)


def gc(devices: Sequence[Device], keep: int, part_idle: float = 600, **opts) -> FleetResult:
    """The runner's gc on each device (all but the KEEP newest versions of each model, never
    the current or previous one; uploads nothing wrote to for `part_idle` seconds; what
    killed runners left), then its status."""
    def work(t: Transport, d: Device) -> dict:
        if not has_runner(t, d):
            return {"removed": [], "models": {}, "note": "no edgekit runner installed yet"}
        ensure_runner(t, d)  # an old runner keeps uploads
        removed = payload(run_runner(t, d, "gc", "--keep", str(keep), "--part-idle", str(int(part_idle)),
                                    timeout=600))
        return {**removed, "models": device_status(t, d).get("models") or {}}
    return fan_out(devices, work, action="gc", **opts)


def repair(devices: Sequence[Device], **opts) -> FleetResult:
    """The runner's repair on each device: {fixed: [...], models}."""
    def work(t: Transport, d: Device) -> dict:
        if not has_runner(t, d):
            return {"fixed": [], "models": {}, "note": "no edgekit runner installed yet"}
        ensure_runner(t, d)  # an old runner has no repair
        return payload(run_runner(t, d, "repair", timeout=600))
    return fan_out(devices, work, action="repair", **opts)


def status(devices: Sequence[Device], **opts) -> FleetResult:
    return fan_out(devices, device_status, action="status", **opts)


def remote_evaluate(transport: Transport, device: Device, name: str, version: Optional[str] = None, *,
                    timeout: Optional[float] = 3600, cancel: Optional[Cancel] = None) -> dict:
    """Evaluate on the device; {"report", "report_path"}. A failed evaluation raises
    RemoteCommandError whose `.reply` still holds the report."""
    args = ["evaluate", name, "--device-name", device.name] + (["--version", version] if version else [])
    return payload(run_runner(transport, device, *args, timeout=timeout, cancel=cancel))


def trust_key(devices: Sequence[Device], public_key: Path, **opts) -> FleetResult:
    """Copy a public key into each device's trust/: from then on it refuses unsigned bundles."""
    def work(t: Transport, d: Device) -> dict:
        trust = DevicePaths(d.root).trust
        t.makedirs(trust)
        remote = posixpath.join(trust, public_key.name)
        t.remove(remote + ".part")
        t.put(public_key, remote + ".part")
        t.rename(remote + ".part", remote)
        return {"key": public_key.name}
    return fan_out(devices, work, action="trust", **opts)
