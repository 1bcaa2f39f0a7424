"""What `edgekit report` reads: the store's reports, devices and rollouts as plain data,
the inventory's devices (so that one never heard of shows as never reported), and the
budgets of each target profile.

A report must not create or silently change a store it was only asked to read: a missing
file is bad input, and a file that is not an edgekit store (or one written by an older
layout that cannot be migrated) is one line that names it, never a traceback.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence

from edgekit.errors import ConfigError, EdgekitError

__all__ = ["load_fleet", "budgets_for", "is_empty", "plain_data", "EVENT_DETAIL"]

# What the report reads of a rollout event's detail (edgekit.report.analysis and .health):
# a deploy's gate status and breaches, a restore's version; not the deploy's whole record.
EVENT_DETAIL = ("status", "breaches", "to")


def budgets_for(targets: set[str], targets_dirs: Sequence[Path] = ()) -> dict[str, dict]:
    """target -> its profile's budgets, for the targets that have a profile here."""
    from edgekit.targets import load_profile

    out = {}
    for name in sorted(t for t in targets if t):
        try:
            out[name] = load_profile(name, targets_dirs).budgets.model_dump()
        except ConfigError:  # a device class this host has no profile for: no budget lines
            continue
    return out


def _inventory_devices(path: Path, targets_dirs: Sequence[Path]) -> list[dict]:
    from edgekit.fleet.inventory import load_inventory

    return [{"name": d.name, "target": d.target, "reachable": None, "last_contact_at": None, "last_error": None}
            for d in load_inventory(path, targets_dirs).devices]


def _merge_devices(stored: list[dict], listed: list[dict]) -> list[dict]:
    known = {d["name"]: d for d in listed}
    known.update({d["name"]: d for d in stored})  # the store knows more than the inventory's name
    return sorted(known.values(), key=lambda d: d["name"])


def _plain(names: tuple[str, ...], row: tuple, path: Path) -> dict:
    """A stored report as plain data: {device, collected_at, report, columns (report_columns)}.
    collect validated it on its way in, so it is not typed again (10,000 reports took
    seconds). The store kept its columns when it came in (Store.report_rows); a row it gave
    the JSON text of is read here: a language model's (`report`, its JSON object, holds its
    curve) or one that is no report any more, which is named."""
    device, collected_at, text = row[:3]  # Store.report_rows' first three
    item = dict(zip(names[3:], row[3:]))
    run_id = item["run_id"]
    if text is None:
        return {"device": device, "report": None, "columns": item, "collected_at": collected_at}
    import json

    from edgekit.report_row import report_columns

    try:
        report = json.loads(text)
        columns = report_columns(report)
        if not all(isinstance(columns[k], str) for k in ("run_id", "name", "version", "status")):
            raise ValueError("run_id, bundle name, version or status is not a string")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ConfigError(f"--store {path}: the stored report {run_id!r} of device {device!r} is "
                          f"corrupt ({type(exc).__name__}: {exc}); remove it with `edgekit fleet forget "
                          f"{device}` and collect again") from exc
    return {"device": device, "report": report, "columns": columns, "collected_at": collected_at}


def load_fleet(store_path: Path, *, inventory: Optional[Path] = None, targets_dirs: Sequence[Path] = ()) -> dict:
    """{store, reports, devices, rollouts, collect_errors, models, budgets} from the store at `store_path`."""
    from edgekit.store import Store

    path = Path(store_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"--store {path}: no store there; run `edgekit collect --inventory FILE --store {path}` "
                          "first, or give the store with --store or EDGEKIT_STORE")
    try:
        with Store(path, read_only_ok=True) as store:
            names, rows = store.report_rows()
            reports = [_plain(names, row, path) for row in rows]
            data = {"store": str(path), "reports": reports, "devices": store.devices(),
                    "rollouts": store.rollouts_whole(EVENT_DETAIL),
                    "collect_errors": store.collect_errors(), "models": store.models()}
    except EdgekitError:
        raise
    except (sqlite3.Error, KeyError, TypeError, ValueError) as exc:  # a layout this edgekit does not know
        raise ConfigError(f"--store {path}: cannot read it as an edgekit store ({exc}); it may come from an "
                          "older edgekit: collect into a new store with --store") from exc
    if inventory is not None:
        data["devices"] = _merge_devices(data["devices"], _inventory_devices(inventory, targets_dirs))
    targets = {(r["columns"]["target"] or "") for r in reports} | {d.get("target") or "" for d in data["devices"]}
    data["budgets"] = budgets_for(targets, targets_dirs)
    return data


@contextmanager
def plain_data():
    """Python's cycle collector off while a report is read and drawn: its data is plain dicts
    and lists without cycles, which reference counting frees, and the collector would scan
    the 10,000 reports' 300,000 objects again and again (a third of the load and half the
    analysis). What matplotlib leaves in cycles is collected when it is back on. Let the data
    go inside the block (return from the function that holds it): the collector's first
    pass when it is back on scans every container made while it was off that is still
    alive, the whole fleet's (0.03 s for 10,000 reports) just before the process ends."""
    import gc

    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def is_empty(data: dict) -> bool:
    return not (data["reports"] or data["devices"] or data["rollouts"])
