"""The runner protocol: how the host talks to a device's runner, and where the device keeps things.

The host runs `INTERPRETER -S ROOT/bin/edgekit_runner.py --root ROOT COMMAND ...` over a
Transport (-S: no site-packages but for the commands that need a runtime, which turn them on)
and reads the last line of its stdout, one JSON object: {"ok": true, ...} or
{"ok": false, "error": ...}. The runner is installed (or updated, when the hash of its
files differs from this host's copy) by uploading two files into ROOT/bin: its package as
one tar, which the runner's next start unpacks, and its launcher. The device's folder
layout and file names are the device's own (edgekit.device.state, .runner, .install):
DevicePaths puts them under a device's root, as the host must name them.
"""

from __future__ import annotations

import json
import posixpath
import signal
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Optional

from edgekit.bundle import SUFFIX, Bundle, runner_files, write_tar
from edgekit.device.install import META
from edgekit.device.report import OUT_OF_MEMORY
from edgekit.device.launcher import ARCHIVE_NAME, LAUNCHER_NAME, PACKAGE_NAME
from edgekit.device.state import DIRS, RunnerError, check_name
from edgekit.errors import Interrupted, RemoteCommandError, TransportError
from edgekit.fleet.inventory import Device
from edgekit.transport import Transport
from edgekit.transport.base import Cancel, RunResult
from edgekit.words import PLAIN

__all__ = ["DevicePaths", "SHORT_STEP_S", "runner_argv", "run_runner", "runner_reply", "payload", "exit_cause", "transport_cause", "has_runner",
           "ensure_runner", "device_status", "model_state", "upload_path", "installed_meta", "shipped_runner"]

SHORT_STEP_S = 120  # status, activate, restore: a runner that needs longer is stuck


class DevicePaths:
    """The device's layout under one root, as POSIX paths from the host: a folder for each
    of the device's DIRS, its launcher and package in bin/. The root stays as the inventory
    gives it (on an ssh device a relative root is relative to the login's home)."""

    bin: str  # and incoming, bundles, current, state, reports, trust, scratch: one attribute per name in DIRS
    incoming: str
    bundles: str
    reports: str
    trust: str
    scratch: str

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        for sub in DIRS:
            setattr(self, sub, f"{self.root}/{sub}")
        self.launcher = f"{self.bin}/{LAUNCHER_NAME}"
        self.package = f"{self.bin}/{PACKAGE_NAME}"
        self.runner_archive = f"{self.bin}/{ARCHIVE_NAME}"

    def relative(self, path: str) -> str:
        """A path under the root as the layout names it (reports/NAME/...), for messages and records."""
        return path[len(self.root) + 1:]

    def meta(self, name: str, version: str) -> str:
        """What the runner recorded when it installed NAME VERSION; RunnerError for names
        that are not plain (the runner would refuse them)."""
        return f"{self.bundles}/{check_name(name, 'name')}/{check_name(version, 'version')}/{META}"


COMMAND_NOT_FOUND = 127  # a shell's exit code (and the local transport's) for a program that is not there


def runner_argv(device: Device, *args: str) -> list[str]:
    paths = DevicePaths(device.root)
    return [device.interpreter, "-S", paths.launcher, "--root", paths.root, *args]


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
        raise RemoteCommandError(f"device {device.name}: {step}: {transport_cause(exc, timeout)}",
                                 device=device.name) from exc
    return runner_reply(device, step, result)


def runner_reply(device: Device, step: str, result: RunResult) -> dict:
    """The runner's JSON from what one of its commands printed (by any engine); RemoteCommandError
    naming the device, the step and the cause when it failed, carrying the reply in `.reply`."""
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


def payload(reply: dict) -> dict:
    """A runner's reply without its envelope (ok, command)."""
    return {k: v for k, v in reply.items() if k not in ("ok", "command")}


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
    if any(marker in stderr.lower() for marker in OUT_OF_MEMORY):
        return "out of memory" + said
    if code == COMMAND_NOT_FOUND:
        return f"{interpreter}: command not found on the device" + said
    return f"the runner ({interpreter}) exited {code}" + (said or " with no output")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def transport_cause(exc: TransportError, timeout: Optional[float]) -> str:
    text = str(exc)
    if "did not finish within" in text:
        return f"timed out after {timeout:g} s"
    if "connection was lost" in text:
        return "connection lost" + text.split("connection was lost", 1)[1]
    return text.split(": ", 1)[-1] if text.startswith("device ") else text


def has_runner(transport: Transport, device: Device) -> bool:
    """Whether the device has a launcher: one SFTP stat, instead of a runner process that fails."""
    return transport.size(DevicePaths(device.root).launcher) is not None


def ensure_runner(transport: Transport, device: Device, status: Optional[dict] = None) -> bool:
    """Install or update ROOT/bin from this host's runner when the hashes differ; True if it did.
    `status` is the runner's status when the caller has just asked for it (no second run)."""
    files, want = shipped_runner()
    if status is not None and status.get("runner_sha256") == want:
        return False
    if status is None and has_runner(transport, device):
        try:
            if run_runner(transport, device, "status", timeout=120).get("runner_sha256") == want:
                return False
        except RemoteCommandError:
            pass  # a broken runner: replace it
    _upload_runner(transport, DevicePaths(device.root), files)
    return True


@lru_cache(maxsize=1)
def shipped_runner() -> tuple[dict[str, bytes], str]:
    """This host's runner files and their hash: read and hashed once per process, not once
    per device (a push to a fleet asked for them from every worker)."""
    from edgekit.device.trust import tree_hash

    files = runner_files()
    return files, tree_hash(files)


@lru_cache(maxsize=1)
def _runner_archive() -> bytes:
    """The runner's package as one tar (module name -> source), the same bytes every time."""
    files, _ = shipped_runner()
    members = {rel.split("/", 1)[1]: data for rel, data in files.items() if rel.startswith(PACKAGE_NAME + "/")}
    with tempfile.TemporaryDirectory(prefix="edgekit-runner-") as tmp:
        write_tar(Path(tmp) / ARCHIVE_NAME, members, mtime=0)
        return (Path(tmp) / ARCHIVE_NAME).read_bytes()


def _upload_runner(transport: Transport, paths: DevicePaths, files: dict[str, bytes]) -> None:
    # Two files, each to a .part that is renamed into place (a cut upload leaves a .part that
    # the next update removes first; never resumed, small and possibly stale): the package as
    # one tar, which the runner's next start unpacks (LAUNCHER_SOURCE), then the launcher.
    # Sending the package file by file cost a round trip or four per file.
    transport.makedirs(paths.bin)
    with tempfile.TemporaryDirectory(prefix="edgekit-runner-") as tmp:
        for remote, data in ((paths.runner_archive, _runner_archive()), (paths.launcher, files[LAUNCHER_NAME])):
            local = Path(tmp) / posixpath.basename(remote)
            local.write_bytes(data)
            transport.remove(f"{remote}.part")
            transport.put(local, f"{remote}.part")
            transport.rename(f"{remote}.part", remote)


def device_status(transport: Transport, device: Device, timeout: float = SHORT_STEP_S) -> dict:
    """The runner's status; a device without a runner is reachable but empty. The runner is
    asked first and its launcher looked for only when it did not answer: a device that has
    one (every push after the first) is asked in one session, without SFTP."""
    asked = time.time()
    try:
        reply = payload(run_runner(transport, device, "status", timeout=timeout))
    except RemoteCommandError as exc:
        # its Python missing (exit 127) is the device's fault whether or not a runner is there yet
        if exc.remote_exit_code != COMMAND_NOT_FOUND and not has_runner(transport, device):
            return {"models": {}, "runner_sha256": None, "note": "no edgekit runner installed yet"}
        raise
    answered = time.time()
    if isinstance(reply.get("now"), (int, float)):  # its clock against ours, at the middle of the exchange
        reply["clock_skew_s"] = reply["now"] - (asked + answered) / 2
    return reply


def model_state(status: dict, name: str) -> dict:
    """{current, previous} of bundle NAME in a runner's status."""
    model = (status.get("models") or {}).get(name) or {}
    return {"current": model.get("current"), "previous": model.get("previous")}


def upload_path(device: Device, bundle: Bundle) -> str:
    """ROOT/incoming/<bundle>-<sha12>.edgekit.part: the runner takes only plain file names
    in incoming/, so a renamed bundle ("my 'v2'.edgekit") is sent as my__v2_."""
    name = bundle.path.name
    stem = _plain_chars(name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name).lstrip(".")
    return f"{DevicePaths(device.root).incoming}/{stem or 'bundle'}-{bundle.sha256[:12]}{SUFFIX}.part"


def _plain_chars(text: str) -> str:
    """`text` with '_' for each character that a plain name may not hold after its first (PLAIN)."""
    return "".join(c if PLAIN.fullmatch(f"x{c}") else "_" for c in text)


def installed_meta(transport: Transport, device: Device, bundle: Bundle, status: Optional[dict] = None) -> Optional[dict]:
    """What the runner recorded when it installed this very bundle (same sha256), or None:
    a bundle the device already has is not sent again. From `status` when the runner that
    answered it lists its bundles' hashes, else read over SFTP."""
    paths = DevicePaths(device.root)
    try:
        remote = paths.meta(bundle.name, bundle.version)
    except RunnerError:
        return None  # the runner will refuse it with its own words
    listed = ((status or {}).get("models") or {}).get(bundle.name, {}).get("bundles")
    if isinstance(listed, dict) and isinstance(status.get("trusted_keys"), list):
        return _same_bundle(listed.get(bundle.version), bundle, bool(status["trusted_keys"]))
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
    return _same_bundle(meta, bundle, meta.get("signer") is None and any(n.endswith(".pub") for n in
                                                                       transport.listdir(paths.trust)))


def _same_bundle(meta: Optional[dict], bundle: Bundle, trusts_keys: bool) -> Optional[dict]:
    if not isinstance(meta, dict) or meta.get("sha256") != bundle.sha256:
        return None
    if meta.get("signer") is None and trusts_keys:
        return None  # installed before the device trusted keys: the runner checks the signature now
    return {"already_installed": True, "signer": meta.get("signer")}
