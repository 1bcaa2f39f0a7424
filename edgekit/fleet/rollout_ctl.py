"""Looking at a rollout before it runs (`rollout --check`) and undoing one (`rollout --abort`).

    check   the waves, and per device what it runs now, what it would run, and where it
            would go back to if its wave broke a gate; asks each device's runner for its
            status and changes nothing, on the devices or in the store
    abort   every device the rollout activated the bundle on goes back to what it ran
            before the rollout first touched it (as recorded then); a device that runs
            something else by now is left alone and said so
"""

from __future__ import annotations

from typing import Optional, Sequence

from edgekit.bundle import Bundle
from edgekit.fleet.deploy import Engine, NativeEngine
from edgekit.fleet.fanout import WORKERS
from edgekit.fleet.inventory import Device
from edgekit.fleet.protocol import model_state
from edgekit.fleet.push import for_target
from edgekit.fleet.rollout import check_max_failures, plan_waves, stored_devices, stored_rollout
from edgekit.store import Store

__all__ = ["check", "abort", "ABORTABLE"]

ABORTABLE = ("interrupted", "halted", "completed", "completed-with-failures", "failed", "running")


def check(bundle: Bundle, devices: Sequence[Device], store: Optional[Store], *, canary: int = 1,
          batch: str = "25%", max_failures: int = 0, workers: int = WORKERS, engine: Optional[Engine] = None,
          **connect_opts) -> dict:
    """{bundle, waves: [{wave, kind, devices: [{device, reachable, from, to, back_to, note}]}], skipped}."""
    check_max_failures(max_failures)
    chosen, skipped = for_target(devices, bundle.target)
    waves = plan_waves(chosen, canary, batch)
    engine = engine or NativeEngine(workers, **connect_opts)
    live = {r.device: r for r in engine.status(chosen).results}
    out = []
    for index, (kind, members) in enumerate(waves, start=1):
        out.append({"wave": index, "kind": kind, "devices": [_plan_row(d, live[d.name], bundle, store)
                                                              for d in members]})
    return {"bundle": {"name": bundle.name, "version": bundle.version, "target": bundle.target},
            "waves": out, "skipped": [s.record() for s in skipped]}


def _plan_row(device: Device, found, bundle: Bundle, store: Optional[Store]) -> dict:
    if not found.ok:
        return {"device": device.name, "reachable": False, "from": None, "to": bundle.version, "back_to": None,
                "note": found.error}
    state = model_state(found.detail, bundle.name)
    back = store.last_good(device.name, bundle.name, state) if store else state
    model = (found.detail.get("models") or {}).get(bundle.name) or {}
    note = ("runs it already" if state["current"] == bundle.version else
            "installed, not active" if bundle.version in (model.get("installed") or ()) else None)
    if back["current"] != state["current"]:
        note = (f"runs {state['current']}, which never passed its gates here: a broken wave puts it back on "
                f"{back['current'] or 'nothing active'}")
    return {"device": device.name, "reachable": True, "from": state["current"], "to": bundle.version,
            "back_to": back["current"], "note": note}


def abort(rollout_id: int, devices: Sequence[Device], store: Store, *, workers: int = WORKERS,
          engine: Optional[Engine] = None, **connect_opts) -> dict:
    """Put back every device the rollout activated the bundle on; records it and the outcome."""
    record = stored_rollout(store, rollout_id, "--abort", ABORTABLE)
    by_name = {d.name: d for d in stored_devices(record, devices, "--abort")}
    first = _first_before(store.device_events(rollout_id=rollout_id))
    engine = engine or NativeEngine(workers, **connect_opts)
    current = {r.device: r for r in engine.status([by_name[n] for n in first]).results}
    todo, rows = {}, []
    for name, before in first.items():
        found = current[name]
        if not found.ok:
            rows.append({"device": name, "status": "unreachable", "error": found.error, "before": before})
            continue
        runs = model_state(found.detail, record["name"])["current"]
        if runs != record["version"]:
            rows.append({"device": name, "status": "left alone", "before": before, "runs": runs,
                         "error": f"runs {runs or 'nothing'} now, not {record['version']}: not changed"})
            continue
        todo[name] = before
    done = engine.restore([by_name[n] for n in todo], record["name"], todo)
    for r in done.results:
        after = {"current": r.detail.get("current"), "previous": r.detail.get("previous")} if r.ok else None
        store.record_change(r.device, record["name"], "restore", ok=r.ok, before=None, after=after,
                            rollout_id=rollout_id, detail={"to": todo[r.device], "error": r.error, "abort": True})
        store.add_event(rollout_id, 0, r.device, "restore", r.ok, {"to": todo[r.device], "error": r.error})
        rows.append({"device": r.device, "status": "restored" if r.ok else "failed", "before": todo[r.device],
                     "runs": (after or {}).get("current"), "error": r.error})
    failed = [r["device"] for r in rows if r["status"] in ("failed", "unreachable")]
    reason = f"aborted: {len(todo) - len(failed)} device(s) put back" + \
        (f"; not reached: {', '.join(failed)} (run --abort {rollout_id} again when they answer)" if failed else "")
    store.finish_rollout(rollout_id, "aborted" if not failed else "abort-incomplete", reason)
    return {"rollout_id": rollout_id, "name": record["name"], "version": record["version"], "ok": not failed,
            "reason": reason, "devices": sorted(rows, key=lambda r: r["device"])}


def _first_before(events: list[dict]) -> dict[str, dict]:
    """device -> its state before the rollout first activated the bundle there (the store
    hears of an activation before it happens, so even a killed rollout left this behind)."""
    first: dict[str, dict] = {}
    for e in events:
        if e["action"] == "activate" and e["before"] is not None:
            first.setdefault(e["device"], e["before"])
    return first
