"""The fan-out engine: one piece of work run on every device, each through its own transport.

Every device gets its own worker (a bounded pool) and its own result; one device that
fails never stops the others, while programmer errors still raise. push, collect, status
and the rollout's waves all run on it; what the work does on a device is theirs.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from edgekit.errors import EdgekitError, Interrupted
from edgekit.fleet.inventory import Device
from edgekit.transport import Transport, connect
from edgekit.transport.base import Cancel

__all__ = ["Work", "WORKERS", "DeviceResult", "FleetResult", "fan_out", "check_cancel"]

Work = Callable[[Transport, Device], dict]
# Devices at a time. Most of a device's time is waiting (network, its own CPU), so more
# than the host's cores pays: 8 loopback devices took 3.4 s with 4 workers, 2.6 s with 8.
WORKERS = 8


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


def check_cancel(cancel: Optional[Cancel], device: Device, step: str, detail: Optional[dict] = None) -> None:
    """Interrupted (carrying `detail`) when the user has stopped the work: `step` does not start."""
    if cancel is not None and cancel.is_set():
        error = Interrupted(f"device {device.name}: interrupted before {step}")
        error.detail = dict(detail or {})  # type: ignore[attr-defined]
        raise error
