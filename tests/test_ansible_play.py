"""edgekit's rollout play (edgekit/resources/ansible/rollout.yml) run with plain
ansible-playbook, as an AWX job template runs it: the inventory exported by edgekit, the
gate step calling `edgekit fleet gate` on the controller, sshd devices on loopback."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli import assert_clean_error, run_edgekit
from helpers.fleet import device_models, package_with_budget
from helpers.paths import REPO

PLAY = REPO / "edgekit" / "resources" / "ansible" / "rollout.yml"


def _play(inventory: Path, fleet, bundle: Path, store: Path, work: Path, *extra: str) -> subprocess.CompletedProcess:
    """ansible-playbook as a job template runs it: extra variables, the controller's edgekit."""
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONPATH=str(REPO),
               ANSIBLE_NOCOLOR="1", ANSIBLE_PIPELINING="True", ANSIBLE_SSH_EXTRA_ARGS=f"-o UserKnownHostsFile={fleet.known_hosts} "
               "-o StrictHostKeyChecking=yes", ANSIBLE_RETRY_FILES_ENABLED="False")
    variables = {"edgekit_bundle": str(bundle), "edgekit_store": str(store), "edgekit_work_dir": str(work),
                 "edgekit_waves": [1, "100%"], "edgekit_command": f"{sys.executable} -m edgekit.cli.main"}
    return subprocess.run([str(bin_dir / "ansible-playbook"), "-i", str(inventory), str(PLAY),
                           "-e", json.dumps(variables), *extra], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=900)


@pytest.mark.ssh
@pytest.mark.slow
def test_the_rollout_play_completes_and_halts_at_a_breaking_canary_with_it_put_back(tmp_path, sshd_fleet, bundles):
    pytest.importorskip("ansible_runner", reason="the ansible extra is not installed (pip install 'edgekit[ansible]')")
    fleet = sshd_fleet(2, pythons=[sys.executable] * 2)
    names = [s.name for s in fleet.servers]
    inventory = tmp_path / "hosts.yml"
    exported = run_edgekit("fleet", "export-inventory", "-i", fleet.write_inventory(), "-o", inventory)
    assert exported.code == 0, exported.stderr
    store = tmp_path / "store.db"

    done = _play(inventory, fleet, bundles["1.0.1"].path, store, tmp_path / "job-1")
    assert done.returncode == 0, done.stdout[-3000:]
    assert {s.name: device_models(s.root)["digits"]["current"] for s in fleet.servers} == {n: "1.0.1" for n in names}
    db = sqlite3.connect(store)
    assert db.execute("SELECT device, version, status FROM reports ORDER BY device").fetchall() == \
        [(n, "1.0.1", "ok") for n in sorted(names)]  # the gate step stored what it judged
    assert db.execute("SELECT version, status FROM rollouts").fetchall() == [("1.0.1", "completed")]
    assert db.execute("SELECT wave, kind, status FROM rollout_waves ORDER BY wave").fetchall() == \
        [(1, "canary", "passed"), (2, "batch", "passed")]
    assert sorted(db.execute("SELECT device, event, ok FROM rollout_events").fetchall()) == \
        [(n, "deploy", 1) for n in sorted(names)]

    breaking = package_with_budget(tmp_path / "dist", "1.0.2", tmp_path / "targets", max_peak_rss_mb=1.0)
    halted = _play(inventory, fleet, breaking, store, tmp_path / "job-2")
    assert halted.returncode != 0
    assert "edgekit halted the rollout" in halted.stdout and "peak_rss_mb" in halted.stdout, halted.stdout[-3000:]
    models = {s.name: device_models(s.root)["digits"] for s in fleet.servers}
    assert {n: m["current"] for n, m in models.items()} == {n: "1.0.1" for n in names}  # the canary put back
    assert "1.0.2" in models[names[0]]["installed"] and "1.0.2" not in models[names[1]]["installed"]  # the rest untouched
    assert db.execute("SELECT version, status FROM rollouts ORDER BY id").fetchall() == \
        [("1.0.1", "completed"), ("1.0.2", "halted")]
    assert db.execute("SELECT w.wave, w.status FROM rollout_waves w JOIN rollouts r ON r.id = w.rollout_id "
                      "WHERE r.version = '1.0.2'").fetchall() == [(1, "halted")]


@pytest.mark.parametrize("args, says", [
    (["--fetched", "{tmp}/nowhere", "-d", "cam"], "/nowhere: no such folder"),
    (["--fetched", "{tmp}", "-d", "cam", "--failed", "cam"], "--failed cam: give HOST=WHY"),
    (["--fetched", "{tmp}", "-d", "cam", "--rollout", "7"], "--rollout 7: no such rollout"),
])
def test_the_gate_step_refuses_wrong_input(tmp_path, bundles, args, says):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = run_edgekit("fleet", "gate", bundles["1.0.1"].path, *args, "--store", tmp_path / "s.db")
    assert_clean_error(result, says)
