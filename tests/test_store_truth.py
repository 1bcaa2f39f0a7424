"""The store tells the truth: after push --activate, rollback, a rollout's restore and gc,
`edgekit report` says what `edgekit fleet status` finds on the devices; a version that broke
its gate shows as `gate failed` in every format; retired devices can be forgotten."""

from __future__ import annotations

import csv
import io

from pathlib import Path

import pytest

from helpers.cli import run_edgekit
from helpers.fleet import package_with_budget, runs, store_agrees_with_devices, write_inventory


@pytest.fixture
def fleet(tmp_path):
    entries = [{"name": f"dev-{i}", "transport": "local", "root": str(tmp_path / f"dev-{i}"), "target": "host-cpu"}
               for i in (1, 2)]
    entries.append({"name": "gw-1", "transport": "local", "root": str(tmp_path / "gw-1"), "target": "x86-gateway"})
    inventory = write_inventory(tmp_path / "fleet.toml", entries)
    return inventory, {e["name"]: Path(e["root"]) for e in entries[:2]}


def test_push_rollback_and_restore_keep_the_report_and_status_in_step(tmp_path, fleet, bundles):
    inventory, roots = fleet
    store = tmp_path / "store.db"
    for version in ("1.0.0", "1.0.1"):
        pushed = run_edgekit("push", bundles[version].path, "-i", inventory, "--activate", "--store", store)
        assert pushed.code == 0, pushed.stderr
        assert store_agrees_with_devices(store, inventory) == {"dev-1": version, "dev-2": version, "gw-1": None}

    back = run_edgekit("rollback", "digits", "-i", inventory, "--device", "dev-2", "--store", store)
    assert back.code == 0, back.stderr
    assert store_agrees_with_devices(store, inventory) == {"dev-1": "1.0.1", "dev-2": "1.0.0", "gw-1": None}

    breaking = package_with_budget(tmp_path / "dist", "1.0.2", tmp_path / "targets", max_peak_rss_mb=1.0)
    halted = run_edgekit("rollout", breaking, "-i", inventory, "--store", store)
    assert halted.code == 3, halted.stderr
    assert "skipped 1 device(s) of other targets (x86-gateway: gw-1)" in halted.stdout, halted.stdout
    assert runs(roots) == {"dev-1": "1.0.1", "dev-2": "1.0.0"}  # the canary went back
    assert store_agrees_with_devices(store, inventory) == {"dev-1": "1.0.1", "dev-2": "1.0.0", "gw-1": None}

    gc = run_edgekit("fleet", "gc", "-i", inventory, "--keep", "0", "--store", store, "--json")
    assert gc.code == 0, gc.stderr
    removed = {d["device"]: [r["version"] for r in d["removed"]] for d in gc.json()["devices"]}
    assert removed["dev-1"] == ["1.0.2"]  # neither the current nor the previous one
    store_agrees_with_devices(store, inventory)


def test_a_version_that_broke_its_gate_shows_as_failed_everywhere(tmp_path, fleet, bundles):
    inventory, _ = fleet
    store = tmp_path / "store.db"
    assert run_edgekit("push", bundles["1.0.0"].path, "-i", inventory, "--activate", "--store", store).code == 0
    breaking = package_with_budget(tmp_path / "dist", "1.3.0", tmp_path / "targets", max_peak_rss_mb=1.0)
    assert run_edgekit("rollout", breaking, "-i", inventory, "--store", store).code == 3

    whole = run_edgekit("report", "--store", store, "--json")
    assert whole.code == 0, whole.stderr
    (row,) = [r for r in whole.json()["rows"] if r["version"] == "1.3.0"]
    assert row["status"] == "gate failed" and "peak_rss_mb" in row["error"] and not row["current"]
    assert row["drop_fp32"] is not None and row["drop"] is not None  # both drops, side by side

    table = run_edgekit("report", "--store", store, env={"COLUMNS": "120"})
    assert "gate failed" in table.stdout and "fp32" in table.stdout, table.stdout
    rows = list(csv.DictReader(io.StringIO(run_edgekit("report", "--store", store, "--format", "csv").stdout)))
    assert [r["status"] for r in rows if r["version"] == "1.3.0"] == ["gate failed"]
    html = run_edgekit("report", "--store", store, "--format", "html", "-o", tmp_path / "r.html")
    assert html.code == 0 and "gate failed" in (tmp_path / "r.html").read_text()


def test_forget_removes_a_retired_device_from_what_needs_a_look(tmp_path, fleet, bundles):
    inventory, _ = fleet
    store = tmp_path / "store.db"
    retired = write_inventory(tmp_path / "old.toml", [{"name": "old-1", "host": "127.0.0.1", "port": 9,
                                                       "target": "host-cpu", "connect_timeout": 2.0}])
    assert run_edgekit("fleet", "status", "-i", retired, "--store", store).code == 1
    before = run_edgekit("report", "--store", store, "--json").json()["health"]
    assert [d["device"] for d in before["unreachable"]] == ["old-1"]
    forgot = run_edgekit("fleet", "forget", "old-1", "--store", store)
    assert forgot.code == 0 and "forgot old-1" in forgot.stdout, forgot.stderr
    after = run_edgekit("report", "--store", store, "--json")
    assert "old-1" not in after.stdout
    from helpers.cli import assert_clean_error

    assert_clean_error(run_edgekit("fleet", "forget", "old-2", "--store", store), "device old-2: not in")


def test_a_rollout_that_reaches_no_device_is_not_a_success(tmp_path, bundles):
    inventory = write_inventory(tmp_path / "fleet.toml", [
        {"name": "dead-1", "transport": "local", "root": str(tmp_path / "d1"), "target": "host-cpu",
         "python": "/nonexistent/python"}])
    done = run_edgekit("rollout", bundles["1.0.1"].path, "-i", inventory, "--store", tmp_path / "s.db",
                       "--canary", "0", "--max-failures", "5", "--json")
    assert done.code == 1, done.stderr
    assert done.json()["outcome"] == "failed" and "reached no device" in done.json()["reason"]

