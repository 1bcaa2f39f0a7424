"""The acceptance path over real OpenSSH: push, a staged rollout with gates, rollback, collect
and fleet status, on three sshd devices, one of them running Python 3.9 with an older
onnxruntime (the device venv)."""

from __future__ import annotations

import json
import sqlite3
import sys

import pytest

from helpers.cli import run_edgekit
from helpers.devices import logging_python, runner_commands
from helpers.fleet import device_models, ssh_device_runs_checked_version
from helpers.sshd import free_port


pytestmark = pytest.mark.ssh


def by_device(result) -> dict:
    return {d["device"]: d for d in result.json()["devices"]}


@pytest.fixture
def in_fleet_env(monkeypatch):
    """Point this process (not only the edgekit commands it runs) at a fleet's ssh files."""
    def use(fleet):
        for key, value in fleet.env.items():
            monkeypatch.setenv(key, value)
        return fleet
    return use


def test_push_rollout_rollback_collect_and_status_over_ssh(tmp_path, sshd_fleet, in_fleet_env, bundles, device_python):
    fleet = in_fleet_env(sshd_fleet(3, pythons=[sys.executable, device_python, sys.executable]))
    inventory = fleet.write_inventory()
    store = tmp_path / "store.db"
    names = [s.name for s in fleet.servers]

    pushed = run_edgekit("push", bundles["1.0.0"].path, "--inventory", inventory, "--activate", "--json", env=fleet.env)
    assert pushed.code == 0, pushed.stderr
    assert {n: d["current"] for n, d in by_device(pushed).items()} == {n: "1.0.0" for n in names}

    rolled = run_edgekit("rollout", bundles["1.0.1"].path, "--inventory", inventory, "--canary", "1", "--batch", "50%",
                         "--store", store, "--json", env=fleet.env)
    assert rolled.code == 0, rolled.stderr
    record = rolled.json()
    assert record["outcome"] == "completed" and record["breaches"] == []
    assert [(w["kind"], [d["device"] for d in w["devices"]]) for w in record["waves"]] == \
        [("canary", names[:1]), ("batch 1", names[1:3])]  # 50% of 3 devices, rounded up
    rows = {d["device"]: d for w in record["waves"] for d in w["devices"]}
    assert {n: (r["status"], r["before"]["current"]) for n, r in rows.items()} == {n: ("ok", "1.0.0") for n in names}
    for i, server in enumerate(fleet.servers):
        assert ssh_device_runs_checked_version(fleet, i) == "1.0.1"
        assert device_models(server.root, python=server.python)["digits"]["previous"] == "1.0.0"

    db = sqlite3.connect(store)
    reports = db.execute("SELECT device, version, status, latency_p95, report FROM reports ORDER BY device").fetchall()
    assert [(r[0], r[1], r[2]) for r in reports] == [(n, "1.0.1", "ok") for n in sorted(names)]
    for device, _, _, p95, text in reports:  # the store holds what the device measured, as it said it
        report = json.loads(text)
        assert report["run_id"] == rows[device]["report"]["run_id"] and p95 == rows[device]["report"]["latency_p95"]
    old_device = json.loads(reports[sorted(names).index(names[1])][4])
    assert old_device["device"]["python"].startswith("3.9") and old_device["runtime"]["version"] != \
        json.loads(reports[0][4])["runtime"]["version"]  # really another interpreter and onnxruntime
    assert db.execute("SELECT status, name, version FROM rollouts").fetchall() == [("completed", "digits", "1.0.1")]
    assert db.execute("SELECT COUNT(*) FROM rollout_events WHERE event = 'deploy' AND ok = 1").fetchone()[0] == 3

    back = run_edgekit("rollback", "digits", "--inventory", inventory, "--json", env=fleet.env)
    assert back.code == 0, back.stderr
    assert {n: (d["current"], d["previous"]) for n, d in by_device(back).items()} == {n: ("1.0.0", "1.0.1") for n in names}

    again = run_edgekit("collect", "--inventory", inventory, "--store", store, "--json", env=fleet.env)
    assert again.code == 0, again.stderr
    assert {n: d["new"] for n, d in by_device(again).items()} == {n: 0 for n in names}  # the rollout collected them

    status = run_edgekit("fleet", "status", "--inventory", inventory, "--store", store, "--json", env=fleet.env)
    assert status.code == 0, status.stderr
    # the last report is when this host received it, not what the device's clock said
    finished = dict(db.execute("SELECT device, MAX(collected_at) FROM reports GROUP BY device").fetchall())
    for name, row in by_device(status).items():
        assert row["reachable"] is True and row["versions"] == {"digits": {"current": "1.0.0", "previous": "1.0.1"}}
        assert row["last_report_at"] == finished[name]
    table = run_edgekit("fleet", "status", "--inventory", inventory, "--store", store, env=fleet.env)
    assert table.stdout.count("digits 1.0.0 (prev 1.0.1)") == 3


def test_collect_is_idempotent_and_a_bad_or_unreachable_device_is_its_own_failure(tmp_path, sshd_fleet, in_fleet_env,
                                                                                   bundles):
    fleet = in_fleet_env(sshd_fleet(2, pythons=[sys.executable] * 2))
    offline = {"name": "offline 'x'", "host": "127.0.0.1", "port": free_port(), "target": "host-cpu",
               "identity_file": str(fleet.client_key), "connect_timeout": 2.0}
    inventory = fleet.write_inventory(extra=[offline])
    store = tmp_path / "store.db"
    for i in range(2):
        pushed = run_edgekit("push", bundles["1.0.0"].path, "--inventory", inventory, "--device", fleet.servers[i].name,
                             "--activate", env=fleet.env)
        assert pushed.code == 0, pushed.stderr
    from edgekit.fleet.push import remote_evaluate
    from edgekit.transport import connect

    good = []
    for i in range(2):
        with connect(fleet.device(i).endpoint) as t:
            good.append(remote_evaluate(t, fleet.device(i), "digits")["report"])
    folder = fleet.servers[1].root / "reports" / "digits" / "1.0.0"
    planted = dict(good[1], run_id="20260101T000000Z-bad001", schema=7)
    (folder / "20260101T000000Z-bad001.json").write_text(json.dumps(planted))
    (folder / "20260101T000000Z-bad002.json").write_bytes(b"{" + b" " * (2 << 20))
    (folder / "not a report.json").write_text("{}")
    infinite = json.loads(json.dumps(good[1]))
    infinite.update(run_id="20260101T000000Z-inf001")
    infinite["metrics"]["fidelity"] = {"top1_agreement": 1.0, "cosine": 1.0, "sqnr_db": float("inf")}
    (folder / "20260101T000000Z-inf001.json").write_text(json.dumps(infinite))

    first = run_edgekit("collect", "--inventory", inventory, "--store", store, "--json", env=fleet.env)
    assert first.code == 1 and "Traceback" not in first.stderr
    rows = by_device(first)
    dev1, dev2 = (fleet.servers[i].name for i in range(2))
    assert (rows[dev1]["status"], rows[dev1]["new"]) == ("ok", 1)
    assert (rows[dev2]["status"], rows[dev2]["new"]) == ("failed", 2)  # its good reports are kept all the same
    bad = "\n".join(rows[dev2]["bad"])
    assert "bad001.json: field 'schema'" in bad and "over the 1048576-byte limit" in bad
    assert "not a report.json: not a report file name" in bad
    assert rows["offline 'x'"]["status"] == "failed" and "connection refused" in rows["offline 'x'"]["error"]
    assert rows["offline 'x'"]["reachable"] is False

    second = run_edgekit("collect", "--inventory", inventory, "--store", store, "--json", env=fleet.env)
    assert {n: d["new"] for n, d in by_device(second).items()} == {dev1: 0, dev2: 0, "offline 'x'": 0}
    assert by_device(second)[dev1]["fetched"] == 0  # known run ids are not even downloaded again
    db = sqlite3.connect(store)
    assert db.execute("SELECT device, COUNT(*) FROM reports GROUP BY device ORDER BY device").fetchall() == \
        [(dev1, 1), (dev2, 2)]
    assert db.execute("SELECT COUNT(*) FROM collect_errors WHERE device = ?", (dev2,)).fetchone()[0] == 3
    assert db.execute("SELECT reachable FROM devices WHERE name = ?", ("offline 'x'",)).fetchone() == (0,)

    status = run_edgekit("fleet", "status", "--inventory", inventory, "--store", store, "--json", env=fleet.env)
    assert status.code == 1
    offline_row = by_device(status)["offline 'x'"]
    assert offline_row["status"] == "failed" and offline_row.get("reachable") is False


def test_push_starts_one_runner_per_device_and_still_repairs_a_changed_runner(tmp_path, sshd_fleet, in_fleet_env,
                                                                               bundles):
    python, log = logging_python(tmp_path, sys.executable)
    fleet = in_fleet_env(sshd_fleet(1, pythons=[python]))
    server, inventory = fleet.servers[0], fleet.write_inventory()

    def push() -> tuple[dict, list[str], int]:
        """The device's record, the runner commands it ran and the SSH sessions it opened."""
        started, sessions = len(runner_commands(log)), server.log.read_text().count("Starting session:")
        result = run_edgekit("push", bundles["1.0.0"].path, "--inventory", inventory, "--json", env=fleet.env)
        assert result.code == 0, result.stderr
        return (by_device(result)[server.name], runner_commands(log)[started:],
                server.log.read_text().count("Starting session:") - sessions)

    # No runner yet: the device's shell says so (probe.py: no failed runner start, and no SFTP
    # session to look), then the install. Every command runs in one shell session; SFTP carries the
    # runner's two files, and a session of its own the bundle, into the install that unpacks it.
    fresh, commands, sessions = push()
    assert (fresh["runner_updated"], fresh["already_installed"], commands, sessions) == \
        (True, False, ["install"], 3)
    assert set(fresh["seconds"]) == {"runner", "upload", "install"} and min(fresh["seconds"].values()) > 0
    again, commands, sessions = push()  # the shell's answer only: the runner's hash matches, the bundle is there
    assert (again["runner_updated"], again["already_installed"], commands, sessions) == (False, True, [], 1)
    assert list(again["seconds"]) == ["runner"]
    module = server.root / "bin" / "edgekit_device" / "install.py"
    shipped = module.read_bytes()
    module.write_bytes(shipped + b"# changed on the device\n")
    repaired, commands, sessions = push()  # the files' hash is not this host's: the runner is asked, then replaced
    assert (repaired["runner_updated"], repaired["already_installed"], commands, sessions) == \
        (True, True, ["status"], 2)
    # Sent as one tar, which the runner's next start unpacks in place of the changed package.
    assert (server.root / "bin" / "edgekit_device.tar").is_file() and module.read_bytes() != shipped
    assert device_models(server.root) == {"digits": {"current": None, "previous": None, "installed": ["1.0.0"]}}
    assert module.read_bytes() == shipped
    assert not [p.name for p in (server.root / "bin").iterdir() if p.name.startswith("edgekit_device.tar")]


def test_a_rollout_asks_each_device_for_its_status_once(tmp_path, sshd_fleet, in_fleet_env, bundles):
    python, log = logging_python(tmp_path, sys.executable)
    fleet = in_fleet_env(sshd_fleet(1, pythons=[python]))
    server, inventory = fleet.servers[0], fleet.write_inventory()
    first = run_edgekit("push", bundles["1.0.0"].path, "--inventory", inventory, "--activate", env=fleet.env)
    assert first.code == 0, first.stderr
    started, sessions = len(runner_commands(log)), server.log.read_text().count("Starting session: command")
    sftp = server.log.read_text().count("Starting session: subsystem")
    result = run_edgekit("rollout", bundles["1.0.1"].path, "--inventory", inventory, "--store", tmp_path / "s.db",
                         "--json", env=fleet.env)
    assert result.code == 0, result.stderr
    # status, install, activate, evaluate: the status taken before the install also tells
    # whether the runner is current, so it is not asked for twice; all in one shell session but
    # the install, which gets the bundle as its input in a session of its own; SFTP fetches the report
    assert runner_commands(log)[started:] == ["status", "install", "activate", "evaluate"]
    assert server.log.read_text().count("Starting session: command") - sessions == 2
    assert server.log.read_text().count("Starting session: subsystem") - sftp == 1
