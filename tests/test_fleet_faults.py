"""Faults, with real OpenSSH servers: a cut upload, an unreachable device, a changed host key,
a bundle that breaks its budgets on the device, and names with spaces and quotes.

After each, every device runs a version that was fully installed and checked, or what it
ran before: asked over SSH, and checked against the bundle's manifest on the device.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

from helpers.bundles import tar_members
from helpers.cli import assert_clean_error, run_edgekit
from helpers.fleet import device_models, package_with_budget, ssh_device_runs_checked_version, write_inventory
from helpers.paths import EVAL, EXAMPLE_ONNX
from helpers.sshd import DroppingProxy, free_port, ssh_keygen, tree_state

from edgekit.bundle import write_tar

pytestmark = pytest.mark.ssh


@pytest.fixture
def fleet_of(sshd_fleet, monkeypatch):
    """sshd devices that run this Python (it has onnxruntime); this process uses their ssh files too."""
    def make(n: int, **kwargs):
        fleet = sshd_fleet(n, pythons=[sys.executable] * n, **kwargs)
        for key, value in fleet.env.items():
            monkeypatch.setenv(key, value)
        return fleet
    return make


def rows(result) -> dict:
    record = result.json()
    return {d["device"]: d for w in record.get("waves", []) for d in w["devices"]} or \
        {d["device"]: d for d in record.get("devices", [])}


def without_incoming(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("incoming")}


def test_a_cut_upload_leaves_the_device_unchanged_and_the_next_push_resumes(tmp_path, fleet_of, bundles, big_bundle):
    fleet = fleet_of(1)
    server = fleet.servers[0]
    assert run_edgekit("push", bundles["1.0.0"].path, "-i", fleet.write_inventory(), "--activate", env=fleet.env).code == 0
    before, models = without_incoming(tree_state(server.root)), device_models(server.root)
    size = big_bundle.stat().st_size

    def some_bytes_on_the_device() -> bool:  # the cut comes once the device holds a part of the bundle
        try:
            return any(f.stat().st_size > 0 for f in (server.root / "incoming").iterdir())
        except OSError:
            return False

    with DroppingProxy(server.port, drop_after=size // 2, drop_when=some_bytes_on_the_device) as proxy:
        fleet.known_hosts.write_text(fleet.known_hosts.read_text() + server.known_hosts_line(port=proxy.port) + "\n")
        inventory = write_inventory(tmp_path / "via-proxy.toml", [fleet.device_dict(server, port=proxy.port)])
        cut = run_edgekit("push", big_bundle, "-i", inventory, "--activate", "--json", env=fleet.env)
        assert proxy.dropped.is_set()
    assert cut.code == 1 and "connection was lost" in rows(cut)[server.name]["error"]
    server.wait_sessions_closed()
    (part,) = (server.root / "incoming").iterdir()
    partial = part.stat().st_size
    assert 0 < partial < size and part.read_bytes() == big_bundle.read_bytes()[:partial]
    assert without_incoming(tree_state(server.root)) == before and device_models(server.root) == models

    with DroppingProxy(server.port) as proxy:
        fleet.known_hosts.write_text(fleet.known_hosts.read_text() + server.known_hosts_line(port=proxy.port) + "\n")
        inventory = write_inventory(tmp_path / "via-proxy.toml", [fleet.device_dict(server, port=proxy.port)])
        resumed = run_edgekit("rollout", big_bundle, "-i", inventory, "--store", tmp_path / "s.db", "--json",
                              env=fleet.env)
        sent = proxy.bytes_up
    assert resumed.code == 0, resumed.stderr
    assert sent < size - partial + (size >> 4)  # the rest of the bundle and the conversation, not the whole bundle
    assert list((server.root / "incoming").iterdir()) == []
    assert ssh_device_runs_checked_version(fleet, 0) == "2.0.0"


def test_an_unreachable_device_counts_against_max_failures(tmp_path, fleet_of, bundles):
    fleet = fleet_of(2)
    offline = {"name": "offline", "host": "127.0.0.1", "port": free_port(), "identity_file": str(fleet.client_key),
               "root": str(tmp_path / "offline"), "target": "host-cpu", "connect_timeout": 2.0}
    inventory = fleet.write_inventory(extra=[offline])
    store = tmp_path / "s.db"
    dev1, dev2 = (s.name for s in fleet.servers)

    tolerated = run_edgekit("rollout", bundles["1.0.0"].path, "-i", inventory, "--batch", "2", "--max-failures", "1",
                            "--store", store, "--json", env=fleet.env)
    assert tolerated.code == 1, tolerated.stderr  # done, but a device failed
    assert tolerated.json()["outcome"] == "completed-with-failures"
    assert {n: r["status"] for n, r in rows(tolerated).items()} == {dev1: "ok", dev2: "ok", "offline": "unreachable"}
    assert "connection refused" in rows(tolerated)["offline"]["error"]

    halted = run_edgekit("rollout", bundles["1.0.1"].path, "-i", inventory, "--batch", "2", "--store", store,
                         env=fleet.env)
    assert_clean_error(halted, "halted at wave 2 (batch 1): 1 device failure(s), more than --max-failures 0",
                       "offline", f"put back: {dev2} -> 1.0.0", code=3)
    assert ssh_device_runs_checked_version(fleet, 0) == "1.0.1"  # the canary passed its gates: it keeps 1.0.1
    assert ssh_device_runs_checked_version(fleet, 1) == "1.0.0"
    assert device_models(fleet.servers[1].root)["digits"]["previous"] is None  # exactly as before
    db = sqlite3.connect(store)
    assert db.execute("SELECT status FROM rollouts ORDER BY id").fetchall() == [("completed-with-failures",), ("halted",)]
    assert db.execute("SELECT wave, status FROM rollout_waves WHERE rollout_id = 2 ORDER BY wave").fetchall() == \
        [(1, "passed"), (2, "halted")]


def test_a_changed_host_key_is_refused_and_nothing_is_sent(tmp_path, fleet_of, bundles):
    fleet = fleet_of(2)
    victim = fleet.servers[1]
    impostor = ssh_keygen(tmp_path / "impostor").split()[:2]
    fleet.known_hosts.write_text(fleet.servers[0].known_hosts_line() + "\n"
                                 f"[127.0.0.1]:{victim.port} {' '.join(impostor)}\n")
    before = tree_state(victim.root)
    result = run_edgekit("rollout", bundles["1.0.0"].path, "-i", fleet.write_inventory(), "--max-failures", "1",
                         "--trust-new-hosts", "--store", tmp_path / "s.db", "--json", env=fleet.env)
    assert result.code == 1, result.stderr
    refused = rows(result)[victim.name]
    assert refused["status"] == "unreachable" and f"HOST KEY CHANGED for [127.0.0.1]:{victim.port}" in refused["error"]
    assert victim.accepted_logins() == 0 and tree_state(victim.root) == before
    assert fleet.known_hosts.read_text().count(f"[127.0.0.1]:{victim.port}") == 1  # accept-new never replaces a key
    assert ssh_device_runs_checked_version(fleet, 0) == "1.0.0"


def test_a_budget_breaking_bundle_stops_at_the_canary_and_every_device_keeps_what_it_ran(tmp_path, fleet_of, bundles):
    fleet = fleet_of(3)
    first, fresh, untouched = fleet.servers
    inventory = fleet.write_inventory()
    for server in (first, untouched):
        assert run_edgekit("push", bundles["1.0.0"].path, "-i", inventory, "-d", server.name, "--activate",
                           env=fleet.env).code == 0
    slow = package_with_budget(tmp_path / "dist", "1.0.2", tmp_path / "targets", max_latency_ms_p95=1e-6)
    models = {s.name: device_models(s.root) for s in fleet.servers}
    spared = tree_state(untouched.root)
    store = tmp_path / "s.db"

    result = run_edgekit("rollout", slow, "-i", inventory, "--canary", "2", "--store", store, "--json", env=fleet.env)
    assert_clean_error(result, "halted at wave 1 (canary)", f"{first.name}: latency_p95: p95 latency",
                       "ms > budget 1e-06 ms", f"put back: {first.name} -> 1.0.0, {fresh.name} -> nothing active",
                       code=3)
    record = result.json()
    assert [w["kind"] for w in record["waves"]] == ["canary"]
    breaches = {b["device"]: b for b in record["breaches"]}
    assert set(breaches) == {first.name, fresh.name} and all(b["gate"] == "latency_p95" for b in breaches.values())
    db = sqlite3.connect(store)
    for name, breach in breaches.items():  # the numbers printed are the device's own, as stored
        (p95,) = db.execute("SELECT latency_p95 FROM reports WHERE device = ? AND version = '1.0.2'", (name,)).fetchone()
        assert breach["measured"] == p95 and breach["limit"] == 1e-6
        assert f"{name}: latency_p95: p95 latency {p95:.6g} ms" in result.stderr

    after = {s.name: device_models(s.root) for s in fleet.servers}
    assert (after[first.name]["digits"]["current"], after[first.name]["digits"]["previous"]) == \
        (models[first.name]["digits"]["current"], models[first.name]["digits"]["previous"]) == ("1.0.0", None)
    assert models[fresh.name] == {}  # it had nothing, so it runs nothing, and has nothing to roll back to
    assert (after[fresh.name]["digits"]["current"], after[fresh.name]["digits"]["previous"]) == (None, None)
    assert all("1.0.2" in after[n]["digits"]["installed"] for n in (first.name, fresh.name))  # kept, inactive
    assert after[fresh.name]["digits"]["current"] is None and not (fresh.root / "current" / "digits").exists()
    assert tree_state(untouched.root) == spared
    assert [ssh_device_runs_checked_version(fleet, i) for i in range(3)] == ["1.0.0", None, "1.0.0"]
    assert db.execute("SELECT status, reason LIKE '%latency_p95%' FROM rollouts").fetchall() == [("halted", 1)]
    assert db.execute("SELECT device, ok FROM rollout_events WHERE event = 'restore' ORDER BY device").fetchall() == \
        sorted([(first.name, 1), (fresh.name, 1)])


WEIRD_NAMES = ["cam 'one' \"1\"", "cam $(touch pwned); two"]
WEIRD_ROOTS = ["root 'a' \"b\" $(touch pwned)", "r;`touch pwned2` x"]


def test_names_roots_and_bundle_files_with_spaces_and_quotes(tmp_path, fleet_of, bundles):
    fleet = fleet_of(2, names=WEIRD_NAMES, roots=WEIRD_ROOTS)
    odd_dir = tmp_path / "dist 'q' \"x\""
    odd_dir.mkdir()
    odd = odd_dir / "my 'digits' $(touch pwned).edgekit"
    shutil.copy(bundles["1.0.0"].path, odd)
    store = tmp_path / "s.db"
    inventory = fleet.write_inventory()

    result = run_edgekit("rollout", odd, "-i", inventory, "--store", store, "--json", env=fleet.env)
    assert result.code == 0, result.stderr
    assert {n: r["status"] for n, r in rows(result).items()} == {n: "ok" for n in WEIRD_NAMES}
    assert [ssh_device_runs_checked_version(fleet, i) for i in range(2)] == ["1.0.0", "1.0.0"]
    db = sqlite3.connect(store)
    said = [json.loads(r[0])["device"]["name"] for r in db.execute("SELECT report FROM reports ORDER BY rowid")]
    assert sorted(said) == sorted(WEIRD_NAMES)  # --device-name reached the runner as one argument
    status = run_edgekit("fleet", "status", "-i", inventory, "--store", store, "--json", env=fleet.env)
    assert {n: r["running"] for n, r in rows(status).items()} == {n: "digits 1.0.0 (prev -)" for n in WEIRD_NAMES}

    # A bundle whose manifest names itself with shell syntax: the device refuses it, nothing runs.
    members = tar_members(bundles["1.0.1"].path)
    manifest = json.loads(members["manifest.json"])
    manifest["name"] = "digits'; touch pwned #"
    members["manifest.json"] = json.dumps(manifest).encode()
    hostile = write_tar_path(tmp_path / "hostile.edgekit", members)
    refused = run_edgekit("rollout", hostile, "-i", inventory, "--store", store, env=fleet.env)
    assert_clean_error(refused, "halted at wave 1 (canary)", "is not a plain name", code=3)
    assert [ssh_device_runs_checked_version(fleet, i) for i in range(2)] == ["1.0.0", "1.0.0"]
    assert not [p for p in tmp_path.rglob("pwned*")]
    assert_clean_error(run_edgekit("package", EXAMPLE_ONNX, "--target", "host-cpu", "--eval", EVAL, "--name", "a 'b'",
                                   "--version", "1", "-o", tmp_path), "--name", "is not a plain name")


def write_tar_path(dest: Path, members: dict) -> Path:
    write_tar(dest, members, 0)
    return dest
