"""Measuring calibrate's candidates on a real device (`calibrate --measure-on DEVICE`).

    device_to_measure_on(inventory, name, profile)   the inventory's device, if its target is the profile's
    DeviceMeasurer(device, cancel=...)               a calibrate measurer (edgekit.calibrate.Measurer)

The device is reached through the fleet's transport and runner (edgekit.fleet.protocol):
the runner is installed or updated as push does, the eval data is uploaded once and each
candidate model in turn to ROOT/scratch/RUN/ (never incoming/, bundles/ or current/: what
the device runs is not touched), the runner's `measure` evaluates it with the code that
evaluates bundles, and `scratch-clean` removes the folder when the run ends, interrupted
or not. So every metric of a candidate comes from the device: latency, load time and peak
RSS, and accuracy or fidelity too (the eval set and the host's FP32 reference outputs are
uploaded with it, and the device scores against them as a canary does).
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Optional

from edgekit.errors import ConfigError, EdgekitError
from edgekit.fleet.fanout import check_cancel
from edgekit.fleet.inventory import Device, Inventory
from edgekit.fleet.protocol import SHORT_STEP_S, DevicePaths, ensure_runner, payload, run_runner
from edgekit.machine import INTERESTING_FLAGS, arch_name
from edgekit.transport import Transport, connect
from edgekit.transport.base import Cancel

__all__ = ["device_to_measure_on", "DeviceMeasurer", "MEASURED", "STEP_TIMEOUT_S"]

MEASURED = "latency, load time, peak RSS and accuracy or fidelity"  # what the device measured, for the record
STEP_TIMEOUT_S = 1800  # one candidate's measurement: a slow device CPU on a large eval set


def device_to_measure_on(inventory: Inventory, name: str, profile) -> Device:
    """The inventory's device NAME; ConfigError when there is none or its target is not `profile`'s."""
    found = next((d for d in inventory.devices if d.name == name), None)
    if found is None:
        known = ", ".join(sorted(d.name for d in inventory.devices))
        raise ConfigError(f"--measure-on {name}: no such device in {inventory.path} (devices: {known})")
    if found.target != profile.name:
        same = sorted(d.name for d in inventory.devices if d.target == profile.name)
        hint = f"devices of {profile.name} there: {', '.join(same)}" if same else \
            f"no device in {inventory.path} has target {profile.name}"
        raise ConfigError(f"--measure-on {name}: the device's target is {found.target}, not {profile.name}: "
                          f"its timings would not be {profile.name}'s", hint=hint)
    return found


class DeviceMeasurer:
    """Measures on one device; a context manager that connects, and cleans the device's scratch
    folder on the way out. `cancel` (a threading.Event set by the first Ctrl-C): no further
    upload or measurement starts, and a measurement running is abandoned (Interrupted)."""

    def __init__(self, device: Device, *, cancel: Optional[Cancel] = None, trust_new_hosts: bool = False,
                 timeout: float = STEP_TIMEOUT_S):
        self.device, self.cancel, self.timeout = device, cancel, timeout
        self.trust_new_hosts = trust_new_hosts
        self.run = "calibrate-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
        self.folder = f"{DevicePaths(device.root).scratch}/{self.run}"
        self.transport: Optional[Transport] = None
        self.uploaded: dict[Path, str] = {}  # local eval data -> its name in the scratch folder
        self.facts: Optional[dict] = None  # the device as its runner described itself
        self.count = 0

    def __enter__(self) -> "DeviceMeasurer":
        self.transport = connect(self.device.endpoint, trust_new_hosts=self.trust_new_hosts)
        try:
            ensure_runner(self.transport, self.device)
            self.transport.makedirs(self.folder)
        except BaseException:
            self.transport.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:  # never cancelled: the device is left as it was, whatever stopped the run
            run_runner(self.transport, self.device, "scratch-clean", self.run, timeout=SHORT_STEP_S)
        except EdgekitError:
            if exc_type is None:
                raise
        finally:
            self.transport.close()

    def measure(self, model: Path, prepared_npz: Path, *, threads: int = 0, providers: Optional[list[str]] = None,
                runs: int = 50, min_seconds: float = 0.5, timeout: Optional[float] = None) -> dict:
        """edgekit.evaluate.measure's JSON, measured on the device (`timeout`: this one's bound)."""
        data = self._upload_data(Path(prepared_npz))
        self.count += 1
        name = f"model-{self.count}{Path(model).suffix}"
        self._put(Path(model), name)
        args = ["measure", self.run, name, data, "--threads", str(threads), "--runs", str(runs),
                "--min-seconds", repr(float(min_seconds)), "--device-name", self.device.name]
        if providers:
            args += ["--providers", ",".join(providers)]
        check_cancel(self.cancel, self.device, f"measuring {Path(model).name}")
        try:
            reply = payload(run_runner(self.transport, self.device, *args, timeout=timeout or self.timeout,
                                       cancel=self.cancel))
        except BaseException:
            self._remove(name, quietly=True)  # the measurement's own error is the news
            raise
        self._remove(name)  # one candidate on the device at a time
        self.facts = reply["device"]
        return reply["metrics"]

    def _remove(self, name: str, quietly: bool = False) -> None:
        try:
            self.transport.remove(f"{self.folder}/{name}")
        except EdgekitError:
            if not quietly:
                raise

    def _upload_data(self, npz: Path) -> str:
        if npz not in self.uploaded:
            name = f"data-{len(self.uploaded) + 1}.npz"
            self._put(npz, name)
            self.uploaded[npz] = name
        return self.uploaded[npz]

    def _put(self, local: Path, name: str) -> None:
        check_cancel(self.cancel, self.device, f"uploading {local.name}")
        self.transport.put(local, f"{self.folder}/{name}")

    def place(self, profile) -> dict:
        """calibration.json's measured_on: this device, as its runner described itself; `note`
        says when that is not the profile's architecture (the inventory may be wrong)."""
        facts = self.facts or {}
        arch = arch_name(facts.get("arch") or "")
        note = None
        if arch != profile.arch:
            note = f"{self.device.name} says it is {arch or 'unknown'}, but {profile.name} is {profile.arch}"
        return {"kind": "device", "name": self.device.name, "target": self.device.target,
                "cpu": facts.get("cpu"), "cores": facts.get("cpu_count"), "arch": arch,
                "flags": sorted(f for f in INTERESTING_FLAGS if f in (facts.get("flags") or ())),
                "hostname": facts.get("hostname"), "os": facts.get("os"), "python": facts.get("python"),
                "measured": MEASURED, "matches_target": note is None, "note": note}
