"""What push, rollback, gc and fleet status tell the store about what runs where.

Every command that changes or sees what a device runs writes it here, in the calling
thread, as each device finishes: a device event, and the store's belief (device_models),
so that `edgekit report` and `edgekit fleet status` agree after any command. A rollout
writes its own (edgekit.fleet.deploy, edgekit.fleet.rollout).
"""

from __future__ import annotations

from typing import Callable, Optional

from edgekit.fleet.fanout import DeviceResult
from edgekit.fleet.inventory import Device
from edgekit.store import Store

__all__ = ["recorder", "note_push", "note_rollback", "note_gc"]

Note = Callable[[Store, Device, DeviceResult], None]


def recorder(store: Optional[Store], devices: list[Device], note: Note,
             then: Optional[Callable[[DeviceResult], None]] = None) -> Callable[[DeviceResult], None]:
    """An on_done callback for fan_out: touch the device, `note` its result, then `then`."""
    by_name = {d.name: d for d in devices}

    def done(r: DeviceResult) -> None:
        device = by_name.get(r.device)
        if store is not None and device is not None and r.status != "skipped":
            store.touch_device(device.name, target=device.target, transport=device.transport, host=device.host,
                               reachable=r.reached, error=r.error)
            note(store, device, r)
        if then:
            then(r)
    return done


def note_push(store: Store, device: Device, r: DeviceResult) -> None:
    d = r.detail
    if not d.get("installed"):
        return
    before = d.get("before")
    if d.get("activated"):  # a person chose it: trusted as the device's good state
        store.record_change(device.name, d["name"], "activate", ok=True, before=before,
                            after={"current": d["current"], "previous": d["previous"]}, detail={"by": "push"})
    else:
        store.record_change(device.name, d["name"], "install", ok=True, before=before, after=None,
                            detail={"version": d["version"], "by": "push"})


def note_rollback(name: str) -> Note:
    def note(store: Store, device: Device, r: DeviceResult) -> None:
        if r.ok:
            store.record_change(device.name, name, "rollback", ok=True, before={"current": r.detail.get("previous")},
                                after={"current": r.detail.get("current"), "previous": r.detail.get("previous")})
        elif r.status == "failed":
            store.record_change(device.name, name, "rollback", ok=False, before=None, after=None,
                                detail={"error": r.error})
    return note


def note_gc(store: Store, device: Device, r: DeviceResult) -> None:
    if r.ok:
        for item in r.detail.get("removed") or ():
            store.record_change(device.name, item["name"], "gc", ok=True, before=None, after=None,
                                detail={"removed": item["version"]})
        store.observe(device.name, r.detail.get("models") or {}, source="gc")
