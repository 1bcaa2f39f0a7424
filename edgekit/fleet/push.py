"""Push, activate, roll back and ask for status across a fleet, through any Transport.

Every device gets its own worker (a bounded pool) and its own result; one device that
fails never stops the others. Work on a device is done by its runner
(ROOT/bin/edgekit_runner.py), which push installs or updates first when its files'
hash differs from this host's copy. Only Transport methods are used, so the same code
drives local and SSH devices.
"""

from __future__ import annotations

import json
import posixpath
import re
import secrets
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from edgekit.bundle import SUFFIX, Bundle, runner_files
from edgekit.errors import ConfigError, EdgekitError, Interrupted, RemoteCommandError, TransportError
from edgekit.fleet.inventory import Device
from edgekit.transport import Transport, connect
from edgekit.transport.base import Cancel

__all__ = ["DeviceResult", "FleetResult", "fan_out", "run_runner", "runner_argv", "ensure_runner",
           "upload_bundle", "install_bundle", "push", "activate", "rollback", "status", "device_status", "remote_evaluate",
           "trust_key", "for_target", "WORKERS", "check_cancel", "model_state", "gc",
           "step_timeout_for", "SHORT_STEP_S", "repair",
           "upload_path", "space_needed"]

Work = Callable[[Transport, Device], dict]
# Devices at a time. Most of a device's time is waiting (network, its own CPU), so more
# than the host's cores pays: 8 loopback devices took 3.4 s with 4 workers, 2.6 s with 8.
WORKERS = 8
RUNNER = "bin/edgekit_runner.py"
PACKAGE = "edgekit_device"


@dataclass
class DeviceResult:
    device: str
    status: str  # "ok" | "failed" | "skipped"
    detail: dict = field(default_factory=dict)
    error: Optional[str] = None
    reached: bool = True  # False: no connection (unreachable); a device that answered with an error is reached

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def record(self) -> dict:
        return {"device": self.device, "status": self.status, "error": self.error, "reached": self.reached,
                **self.detail}


@dataclass
class FleetResult:
    action: str
    results: list[DeviceResult]

    @property
    def succeeded(self) -> list[DeviceResult]:
        return [r for r in self.results if r.status == "ok"]

    @property
    def failed(self) -> list[DeviceResult]:
        return [r for r in self.results if r.status == "failed"]

    def record(self) -> dict:
        return {"action": self.action, "ok": not self.failed, "succeeded": len(self.succeeded),
                "failed": len(self.failed), "devices": [r.record() for r in self.results]}


def fan_out(devices: Sequence[Device], work: Work, *, action: str, workers: int = WORKERS,
            on_done: Optional[Callable[[DeviceResult], None]] = None, cancel: Optional[Cancel] = None,
            **connect_opts) -> FleetResult:
    """Run `work` on every device with its own transport; programmer errors still raise.
    Once `cancel` is set, devices not started yet are not started ("skipped", interrupted);
    a KeyboardInterrupt (a second Ctrl-C) leaves at once, without waiting for the workers."""
    def one(device: Device) -> DeviceResult:
        if cancel is not None and cancel.is_set():
            return DeviceResult(device.name, "skipped", {"interrupted": True}, "interrupted before it started")
        try:
            transport = connect(device.endpoint, **connect_opts)
        except (EdgekitError, OSError) as exc:
            return DeviceResult(device.name, "failed", error=str(exc), reached=False)
        try:
            with transport:
                return DeviceResult(device.name, "ok", work(transport, device))
        except Interrupted as exc:
            return DeviceResult(device.name, "interrupted", getattr(exc, "detail", {}), str(exc))
        except (EdgekitError, OSError) as exc:  # this device failed; the fleet goes on
            return DeviceResult(device.name, "failed", error=str(exc))

    results: dict[str, DeviceResult] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(devices) or 1)))
    try:
        futures = [pool.submit(one, d) for d in devices]
        for future in as_completed(futures):
            result = future.result()
            results[result.device] = result
            if on_done:
                on_done(result)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return FleetResult(action, [results[d.name] for d in devices])


SHORT_STEP_S = 120  # status, activate, restore: a runner that needs longer is stuck


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


def check_cancel(cancel: Optional[Cancel], device: Device, step: str, detail: Optional[dict] = None) -> None:
    """Interrupted (carrying `detail`) when the user has stopped the work: `step` does not start."""
    if cancel is not None and cancel.is_set():
        error = Interrupted(f"device {device.name}: interrupted before {step}")
        error.detail = dict(detail or {})  # type: ignore[attr-defined]
        raise error


def runner_argv(device: Device, *args: str) -> list[str]:
    root = device.root.rstrip("/")
    return [device.interpreter, f"{root}/{RUNNER}", "--root", root, *args]


def run_runner(transport: Transport, device: Device, *args: str, timeout: Optional[float] = 1800,
               cancel: Optional[Cancel] = None) -> dict:
    """Run one runner command; its JSON on success, RemoteCommandError naming the device, the
    step (the command) and the cause otherwise. `cancel`: stop waiting when set (only for
    commands that may be abandoned: evaluate)."""
    step = args[0]
    try:
        result = transport.run(runner_argv(device, *args), timeout=timeout, cancel=cancel)
    except Interrupted:
        raise
    except TransportError as exc:  # no answer: timed out, or the connection went
        raise RemoteCommandError(f"device {device.name}: {step}: {_transport_cause(exc, timeout)}",
                                 device=device.name) from exc
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    try:
        reply = json.loads(lines[-1]) if lines else None
    except ValueError:
        reply = None
    if result.ok and isinstance(reply, dict) and reply.get("ok"):
        return reply
    if isinstance(reply, dict) and reply.get("error"):
        message = f"device {device.name}: {step}: {reply['error']}"
    else:
        message = f"device {device.name}: {step}: {exit_cause(result.exit_code, result.stderr, device.interpreter)}"
    error = RemoteCommandError(message, device=device.name, exit_code=result.exit_code,
                               stdout=result.stdout[-4000:], stderr=result.stderr[-4000:])
    error.reply = reply  # type: ignore[attr-defined]  # e.g. a failed evaluation's report
    raise error


def exit_cause(code: int, stderr: str, interpreter: str) -> str:
    """Why the runner ended without its JSON answer, in plain words."""
    tail = " | ".join(ln.strip() for ln in stderr.strip().splitlines()[-3:])
    said = f" ({tail})" if tail else ""
    signal_no = -code if code < 0 and code != -1 else code - 128 if 128 < code <= 128 + 64 else None
    if code == -1:
        return "connection lost: the device closed the session without an exit status" + said
    if signal_no:
        name = _signal_name(signal_no)
        oom = "; the kernel's out-of-memory killer sends it: the device may be out of memory" \
            if signal_no == signal.SIGKILL else ""
        return f"killed by signal {signal_no} ({name}){oom}" + said
    from edgekit.device.report import OUT_OF_MEMORY

    if any(marker in stderr.lower() for marker in OUT_OF_MEMORY):
        return "out of memory" + said
    if code == 127:
        return f"{interpreter}: command not found on the device" + said
    return f"the runner ({interpreter}) exited {code}" + (said or " with no output")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def _transport_cause(exc: TransportError, timeout: Optional[float]) -> str:
    text = str(exc)
    if "did not finish within" in text:
        return f"timed out after {timeout:g} s"
    if "connection was lost" in text:
        return "connection lost" + text.split("connection was lost", 1)[1]
    return text.split(": ", 1)[-1] if text.startswith("device ") else text


def ensure_runner(transport: Transport, device: Device, status: Optional[dict] = None) -> bool:
    """Install or update ROOT/bin from this host's runner when the hashes differ; True if it did.
    `status` is the runner's status when the caller has just asked for it (no second run)."""
    from edgekit.device.trust import tree_hash

    files = runner_files()
    want = tree_hash(files)
    if status is not None and status.get("runner_sha256") == want:
        return False
    # A fresh device has no launcher: one SFTP stat instead of a runner process that fails.
    if status is None and transport.size(f"{device.root.rstrip('/')}/{RUNNER}") is not None:
        try:
            if run_runner(transport, device, "status", timeout=120).get("runner_sha256") == want:
                return False
        except RemoteCommandError:
            pass  # a broken runner: replace it
    _upload_runner(transport, device.root.rstrip("/") + "/bin", files, want[:12])
    return True


def _upload_runner(transport: Transport, bin_dir: str, files: dict[str, bytes], tag: str) -> None:
    # The package goes to a new folder that is renamed into place; the launcher last. The
    # folder's name is new every time, so nothing in it is stale (a cut update leaves a
    # .new- folder, which the runner's gc and install remove) and no file needs removing first.
    new = f"{bin_dir}/{PACKAGE}.new-{tag}-{secrets.token_hex(4)}"
    transport.makedirs(new)
    with tempfile.TemporaryDirectory(prefix="edgekit-runner-") as tmp:
        for rel, data in files.items():
            local = Path(tmp) / rel.replace("/", "__")
            local.write_bytes(data)
            if rel.startswith(PACKAGE + "/"):
                transport.put(local, f"{new}/{rel.split('/', 1)[1]}")
            else:
                transport.remove(f"{bin_dir}/{rel}.part")  # never resume: small, and a stale one would be wrong
                transport.put(local, f"{bin_dir}/{rel}.part")
    if PACKAGE in transport.listdir(bin_dir):  # the runner's gc and install remove the .old- folder
        transport.rename(f"{bin_dir}/{PACKAGE}", f"{bin_dir}/{PACKAGE}.old-{secrets.token_hex(4)}")
    transport.rename(new, f"{bin_dir}/{PACKAGE}")
    transport.rename(f"{bin_dir}/edgekit_runner.py.part", f"{bin_dir}/edgekit_runner.py")


def upload_path(device: Device, bundle: Bundle) -> str:
    """ROOT/incoming/<bundle>-<sha12>.edgekit.part: the runner takes only plain file names
    in incoming/, so a renamed bundle ("my 'v2'.edgekit") is sent as my__v2_."""
    name = bundle.path.name
    stem = re.sub(r"[^A-Za-z0-9._+-]", "_", name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name).lstrip(".")
    return f"{device.root.rstrip('/')}/incoming/{stem or 'bundle'}-{bundle.sha256[:12]}{SUFFIX}.part"


def upload_bundle(transport: Transport, device: Device, bundle: Bundle,
                  progress: Optional[Callable[[int, int], None]] = None) -> str:
    """Upload to upload_path(), resuming a partial upload of the same bundle; returns the remote path."""
    remote = upload_path(device, bundle)
    transport.makedirs(posixpath.dirname(remote))
    transport.put(bundle.path, remote, progress=progress)
    return remote


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
        status = device_status(transport, device, timeout=short) if status is None else status
        before = model_state(status, bundle.name)
        check_cancel(cancel, device, "the runner update", {"before": before})
        updated = ensure_runner(transport, device, status)
        installed = _installed_meta(transport, device, bundle)
    detail = {"name": bundle.name, "version": bundle.version, "before": before, "runner_updated": updated,
              "seconds": seconds}
    if installed is None:
        check_cancel(cancel, device, "the upload", detail)
        _check_room(transport, device, bundle, status)
        with _timed(seconds, "upload"):
            try:
                remote = upload_bundle(transport, device, bundle, _cancellable(progress, cancel, device, detail))
            except TransportError as exc:
                if "No space left" not in str(exc):
                    raise
                raise TransportError(f"device {device.name}: upload: disk full: {_room_text(bundle, status)}; the "
                                     "partial upload stays in incoming/ to resume (`edgekit fleet gc` removes it)",
                                     device=device.name) from exc
        check_cancel(cancel, device, "the install", detail)
        with _timed(seconds, "install"):
            installed = run_runner(transport, device, "install", remote, "--sha256", bundle.sha256,
                                   "--size", str(bundle.size), timeout=step_timeout)
    detail.update(already_installed=installed.get("already_installed", False), signer=installed.get("signer"),
                  installed=True)
    if activate:
        check_cancel(cancel, device, "the activation", detail)
        with _timed(seconds, "activate"):
            active = run_runner(transport, device, "activate", bundle.name, bundle.version, timeout=short)
        detail.update(current=active["current"], previous=active["previous"], activated=True)
    return detail


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
    sent = transport.size(upload_path(device, bundle)) or 0  # a cut upload resumes: its bytes are there
    if isinstance(free, int) and free + min(sent, bundle.size) < space_needed(bundle):
        raise TransportError(f"device {device.name}: upload: disk full: {_room_text(bundle, status)}; free space "
                             "(`edgekit fleet gc -i INVENTORY --keep 1`) and push again", device=device.name)


def model_state(status: dict, name: str) -> dict:
    """{current, previous} of bundle NAME in a runner's status."""
    model = (status.get("models") or {}).get(name) or {}
    return {"current": model.get("current"), "previous": model.get("previous")}


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


def _installed_meta(transport: Transport, device: Device, bundle: Bundle) -> Optional[dict]:
    """What the runner recorded when it installed this very bundle (same sha256), or None:
    a bundle the device already has is not sent again."""
    from edgekit.device.state import RunnerError, check_name

    try:
        root = device.root.rstrip("/")
        remote = f"{root}/bundles/{check_name(bundle.name, 'name')}/{check_name(bundle.version, 'version')}/.bundle.json"
    except RunnerError:
        return None  # the runner will refuse it with its own words
    size = transport.size(remote)
    if size is None or size > 65536:
        return None
    with tempfile.TemporaryDirectory(prefix="edgekit-meta-") as tmp:
        transport.get(remote, Path(tmp) / "meta.json")
        try:
            meta = json.loads((Path(tmp) / "meta.json").read_text())
        except (ValueError, UnicodeDecodeError):
            return None
    if not isinstance(meta, dict) or meta.get("sha256") != bundle.sha256:
        return None
    if meta.get("signer") is None and any(n.endswith(".pub") for n in transport.listdir(f"{root}/trust")):
        return None  # installed before the device trusted keys: the runner checks the signature now
    return {"already_installed": True, "signer": meta.get("signer")}


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
    return fan_out(devices, lambda t, d: _strip(run_runner(t, d, "activate", name, version)), action="activate", **opts)


def rollback(devices: Sequence[Device], name: str, **opts) -> FleetResult:
    return fan_out(devices, lambda t, d: _strip(run_runner(t, d, "rollback", name)), action="rollback", **opts)


def gc(devices: Sequence[Device], keep: int, part_idle: float = 600, **opts) -> FleetResult:
    """The runner's gc on each device (all but the KEEP newest versions of each model, never
    the current or previous one; uploads nothing wrote to for `part_idle` seconds; what
    killed runners left), then its status."""
    def work(t: Transport, d: Device) -> dict:
        if t.size(f"{d.root.rstrip('/')}/{RUNNER}") is None:
            return {"removed": [], "models": {}, "note": "no edgekit runner installed yet"}
        ensure_runner(t, d)  # an old runner keeps uploads
        removed = _strip(run_runner(t, d, "gc", "--keep", str(keep), "--part-idle", str(int(part_idle)),
                                    timeout=600))
        return {**removed, "models": device_status(t, d).get("models") or {}}
    return fan_out(devices, work, action="gc", **opts)


def repair(devices: Sequence[Device], **opts) -> FleetResult:
    """The runner's repair on each device: {fixed: [...], models}."""
    def work(t: Transport, d: Device) -> dict:
        if t.size(f"{d.root.rstrip('/')}/{RUNNER}") is None:
            return {"fixed": [], "models": {}, "note": "no edgekit runner installed yet"}
        ensure_runner(t, d)  # an old runner has no repair
        return _strip(run_runner(t, d, "repair", timeout=600))
    return fan_out(devices, work, action="repair", **opts)


def device_status(transport: Transport, device: Device, timeout: float = SHORT_STEP_S) -> dict:
    """The runner's status; a device without a runner is reachable but empty."""
    if transport.size(f"{device.root.rstrip('/')}/{RUNNER}") is None:
        return {"models": {}, "runner_sha256": None, "note": "no edgekit runner installed yet"}
    asked = time.time()
    reply = _strip(run_runner(transport, device, "status", timeout=timeout))
    answered = time.time()
    if isinstance(reply.get("now"), (int, float)):  # its clock against ours, at the middle of the exchange
        reply["clock_skew_s"] = reply["now"] - (asked + answered) / 2
    return reply


def status(devices: Sequence[Device], **opts) -> FleetResult:
    return fan_out(devices, device_status, action="status", **opts)


def remote_evaluate(transport: Transport, device: Device, name: str, version: Optional[str] = None, *,
                    timeout: Optional[float] = 3600, cancel: Optional[Cancel] = None) -> dict:
    """Evaluate on the device; {"report", "report_path"}. A failed evaluation raises
    RemoteCommandError whose `.reply` still holds the report."""
    args = ["evaluate", name, "--device-name", device.name] + (["--version", version] if version else [])
    return _strip(run_runner(transport, device, *args, timeout=timeout, cancel=cancel))


def trust_key(devices: Sequence[Device], public_key: Path, **opts) -> FleetResult:
    """Copy a public key into each device's trust/: from then on it refuses unsigned bundles."""
    def work(t: Transport, d: Device) -> dict:
        trust = d.root.rstrip("/") + "/trust"
        t.makedirs(trust)
        remote = posixpath.join(trust, public_key.name)
        t.remove(remote + ".part")
        t.put(public_key, remote + ".part")
        t.rename(remote + ".part", remote)
        return {"key": public_key.name}
    return fan_out(devices, work, action="trust", **opts)


def _strip(reply: dict) -> dict:
    return {k: v for k, v in reply.items() if k not in ("ok", "command")}
