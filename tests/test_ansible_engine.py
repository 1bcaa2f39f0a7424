"""`edgekit rollout --engine ansible` with real ansible-core (through ansible-runner) against
loopback sshd devices: the same waves, gates, restores and store records as edgekit's own
engine, and the fleet-level abort rule edgekit's, not Ansible's percentage."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest

from helpers.cli import finish, run_edgekit, start_edgekit
from helpers.devices import interrupting_python
from helpers.fleet import (device_models, every_device_safe, package_with_budget, runs, store_agrees_with_devices,
                           write_inventory)

pytest.importorskip("ansible_runner", reason="the ansible extra is not installed (pip install 'edgekit[ansible]')")
pytestmark = pytest.mark.slow

NAMES = ["cam-a", "cam-b", "cam-c"]
# What a record says about a device that both engines must agree on (times, run ids and
# measured numbers differ from run to run).
EVENT_KEYS = ("status", "stage", "before", "activated", "restored", "after", "live")


def _fleet_with_100(sshd_fleet, tmp_path: Path, bundles, pythons=None):
    """Three sshd devices running digits 1.0.0 (pushed by edgekit), and their inventory."""
    fleet = sshd_fleet(3, names=NAMES, pythons=pythons or [sys.executable] * 3)
    inventory = fleet.write_inventory()
    pushed = run_edgekit("push", bundles["1.0.0"].path, "-i", inventory, "--activate", env=fleet.env)
    assert pushed.code == 0, pushed.stderr
    return fleet, inventory


def _rollout(bundle, inventory, store, env, *flags):
    return run_edgekit("rollout", bundle, "-i", inventory, "--store", store, "--canary", "1", "--batch", "2",
                       "--json", *flags, env=env, timeout=900)


def _records(store: Path) -> dict:
    """The store's rollout as `edgekit report` reads it, without what differs by run."""
    db = sqlite3.connect(store)
    db.row_factory = sqlite3.Row
    rollouts = [(r["name"], r["version"], r["status"], r["reason"], r["options"])
                for r in db.execute("SELECT * FROM rollouts ORDER BY id")]
    waves = [(r["wave"], r["kind"], r["devices"], r["status"], r["reason"])
             for r in db.execute("SELECT * FROM rollout_waves ORDER BY rollout_id, wave")]
    events = []
    for r in db.execute("SELECT * FROM rollout_events ORDER BY wave, device, event"):
        detail = json.loads(r["detail"])
        report = detail.get("report") or {}
        events.append((r["wave"], r["device"], r["event"], r["ok"], {k: detail.get(k) for k in EVENT_KEYS},
                       report.get("status"), [b["gate"] for b in detail.get("breaches", [])] if "breaches" in detail
                       else None, detail.get("error") is None))
    changes = [(r["device"], r["action"], r["ok"], r["before"], r["after"])
               for r in db.execute("SELECT * FROM device_events ORDER BY device, id")]
    models = [tuple(r) for r in db.execute("SELECT device, name, current, previous, gated, good FROM device_models "
                                           "ORDER BY device")]
    reports = [tuple(r) for r in db.execute("SELECT device, version, status FROM reports ORDER BY device")]
    return {"rollouts": rollouts, "waves": waves, "events": events, "changes": changes, "models": models,
            "reports": reports}


def _runs(fleet) -> dict:
    return {s.name: device_models(s.root, python=s.python)["digits"]["current"] for s in fleet.servers}


@pytest.mark.ssh
def test_a_passing_bundle_leaves_the_same_records_as_the_native_engine(tmp_path, sshd_fleet, bundles):
    stores = {}
    for engine in ("native", "ansible"):
        fleet, inventory = _fleet_with_100(sshd_fleet, tmp_path / engine, bundles)
        stores[engine] = tmp_path / f"{engine}.db"
        result = _rollout(bundles["1.0.1"].path, inventory, stores[engine], fleet.env, "--engine", engine)
        assert result.code == 0, result.stderr
        record = result.json()
        assert record["outcome"] == "completed", record
        assert [(w["kind"], [d["device"] for d in w["devices"]]) for w in record["waves"]] == \
            [("canary", NAMES[:1]), ("batch 1", NAMES[1:])]
        assert _runs(fleet) == {n: "1.0.1" for n in NAMES}
    native, ansible = _records(stores["native"]), _records(stores["ansible"])
    assert native == ansible
    assert [r[:3] for r in ansible["reports"]] == [(n, "1.0.1", "ok") for n in NAMES]
    # `edgekit report` tells the same story of both, but for the times
    shown = []
    for engine in ("native", "ansible"):
        result = run_edgekit("report", "--store", stores[engine], "--section", "rollouts", "--json")
        assert result.code == 0, result.stderr
        shown.append([{k: v for k, v in r.items() if not k.endswith("_at")} for r in result.json()])
    assert shown[0] == shown[1] and shown[1][0]["status"] == "completed" and shown[1][0]["devices_ok"] == 3


@pytest.mark.ssh
def test_a_gate_breaking_bundle_halts_at_the_canary_and_every_device_is_restored(tmp_path, sshd_fleet, bundles):
    fleet, inventory = _fleet_with_100(sshd_fleet, tmp_path, bundles)
    breaking = package_with_budget(tmp_path / "dist", "1.0.1", tmp_path / "targets", max_peak_rss_mb=1.0)
    store = tmp_path / "store.db"
    result = _rollout(breaking, inventory, store, fleet.env, "--engine", "ansible", "--targets-dir", tmp_path / "targets")
    assert result.code == 3, result.stderr  # halted
    record = result.json()
    assert record["outcome"] == "halted" and [w["kind"] for w in record["waves"]] == ["canary"]
    canary = record["waves"][0]["devices"][0]
    assert canary["device"] == NAMES[0] and canary["status"] == "breached" and canary["restored"] is True
    assert _runs(fleet) == {n: "1.0.0" for n in NAMES}  # the canary put back, the others never touched
    events = _records(store)["events"]
    assert [(e[1], e[2], e[3]) for e in events] == [(NAMES[0], "deploy", 0), (NAMES[0], "restore", 1)]


@pytest.mark.ssh
def test_a_wave_where_every_device_fails_is_judged_by_max_failures_not_by_ansible(tmp_path, sshd_fleet, bundles):
    """The batch after the canary fails on every device (their Python is missing). Ansible's own
    max_fail_percentage would stop the play there whatever it is set to; edgekit halts when
    the failures pass --max-failures and goes on when they do not."""
    fleet = sshd_fleet(3, names=NAMES, pythons=[sys.executable] * 3)
    broken = {"python": "/nonexistent/bin/python3"}
    inventory = fleet.dir / "fleet.toml"
    entries = [fleet.device_dict(fleet.servers[0])] + [fleet.device_dict(s, **broken) for s in fleet.servers[1:]]
    inventory.write_text("".join("[[device]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in e.items()) + "\n"
                                 for e in entries))
    store = tmp_path / "store.db"

    halted = _rollout(bundles["1.0.1"].path, inventory, store, fleet.env, "--engine", "ansible", "--max-failures", "1")
    assert halted.code == 3, halted.stderr
    record = halted.json()
    assert record["outcome"] == "halted"
    assert [(w["kind"], {d["device"]: d["status"] for d in w["devices"]}) for w in record["waves"]] == \
        [("canary", {NAMES[0]: "ok"}), ("batch 1", {NAMES[1]: "failed", NAMES[2]: "failed"})]
    assert "2 device failure(s), more than --max-failures 1" in record["reason"]
    assert device_models(fleet.servers[0].root)["digits"]["current"] == "1.0.1"  # passed its gates: kept
    assert all(device_models(s.root) == {} for s in fleet.servers[1:])  # nothing was installed there

    went_on = _rollout(bundles["1.0.1"].path, inventory, store, fleet.env, "--engine", "ansible",
                       "--max-failures", "2")
    record = went_on.json()
    assert record["outcome"] == "completed-with-failures", record
    assert went_on.code == 1  # devices failed: said by the exit code too


def test_ctrl_c_during_the_canary_install_starts_no_further_step(tmp_path, bundles):
    """The first Ctrl-C comes while the canary's runner installs: the install finishes, no
    device is activated, and the rollout ends interrupted with every device as it was."""
    roots = {f"dev-{i}": tmp_path / f"dev-{i}" for i in (1, 2)}
    entries = [{"name": n, "transport": "local", "root": str(r), "target": "host-cpu"} for n, r in roots.items()]
    inventory = write_inventory(tmp_path / "fleet.toml", entries)
    store = tmp_path / "store.db"
    assert run_edgekit("push", bundles["1.0.0"].path, "-i", inventory, "--activate", "--store", store).code == 0
    pid = tmp_path / "pid"
    python = interrupting_python(tmp_path, "install", pid)
    wrapped = write_inventory(tmp_path / "wrapped.toml", [{**e, "python": python} for e in entries])
    proc = start_edgekit("rollout", bundles["1.0.1"].path, "-i", wrapped, "--store", store, "--canary", "1",
                         "--engine", "ansible", pid_file=pid)
    code, out, err = finish(proc, timeout=900)
    assert code == 130, (out, err)
    assert "interrupted:" in err and "Traceback" not in err, err
    assert runs(roots) == {"dev-1": "1.0.0", "dev-2": "1.0.0"}
    assert "1.0.1" in device_models(roots["dev-1"])["digits"]["installed"]  # the install under way finished
    every_device_safe(store, roots, "1.0.0", "1.0.1")
    (status,) = sqlite3.connect(store).execute("SELECT status FROM rollouts ORDER BY id DESC LIMIT 1").fetchone()
    assert status == "interrupted"
    store_agrees_with_devices(store, inventory)
