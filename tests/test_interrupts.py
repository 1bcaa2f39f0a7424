"""Ctrl-C (SIGINT) during `rollout` and `push --activate`, on local and loopback-sshd devices.

The interrupt comes from the device side at a chosen step: each device's Python is a small
wrapper that sends SIGINT to the edgekit process when the runner is asked to install,
activate or evaluate (or, for uploads, the test sends it once a .part file grows). After
each, every device runs its previous version or the new one with a passing report, the
store agrees with the devices, and a re-run never keeps a version that failed its gate.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest

from helpers.cli import finish, run_edgekit, start_edgekit
from helpers.devices import interrupting_python
from helpers.fleet import every_device_safe, package_with_budget, runs, store_agrees_with_devices, write_inventory


STEPS = ("install", "activate", "evaluate")


def local_fleet(base: Path, n: int, python: str) -> Path:
    entries = [{"name": f"dev-{i}", "transport": "local", "root": str(base / f"dev-{i}"), "target": "host-cpu",
                "python": python} for i in range(1, n + 1)]
    return write_inventory(base / "fleet.toml", entries)


@pytest.fixture
def fleet(tmp_path, bundles):
    """Three local devices on digits 1.0.0, and a device Python per step that interrupts edgekit."""
    inventory = local_fleet(tmp_path, 3, sys.executable)
    assert run_edgekit("push", bundles["1.0.0"].path, "-i", inventory, "--activate", "--store",
                       tmp_path / "store.db").code == 0
    roots = {f"dev-{i}": tmp_path / f"dev-{i}" for i in (1, 2, 3)}
    return inventory, roots


def with_python(inventory: Path, python: str) -> Path:
    text = inventory.read_text()
    out = inventory.with_name(f"{inventory.stem}-{Path(python).name}.toml")
    out.write_text(text.replace(json.dumps(sys.executable), json.dumps(python)))
    return out


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("passing", [True, False], ids=["passing", "breaking"])
def test_interrupted_rollout_leaves_every_device_old_or_checked(tmp_path, fleet, bundles, step, passing):
    inventory, roots = fleet
    store = tmp_path / "store.db"
    bundle = bundles["1.0.1"].path if passing else \
        package_with_budget(tmp_path / "dist", "1.0.1", tmp_path / "targets", max_peak_rss_mb=1.0)
    pid = tmp_path / "pid"
    wrapped = with_python(inventory, interrupting_python(tmp_path, step, pid))
    proc = start_edgekit("rollout", bundle, "-i", wrapped, "--store", store, "--canary", "1", "--batch", "100%",
                         pid_file=pid)
    code, out, err = finish(proc)
    assert code == 130, (out, err)
    assert "interrupted:" in err and "Traceback" not in err, err
    for name in roots:  # one line per device that says what it runs now
        assert any(line.startswith(f"{name}: ") for line in out.splitlines()), out
    every_device_safe(store, roots, "1.0.0", "1.0.1")
    assert runs(roots)["dev-1"] == "1.0.0"  # the canary was interrupted before its gate
    assert all(v == "1.0.0" for v in runs(roots).values())
    import sqlite3

    (status,) = sqlite3.connect(store).execute("SELECT status FROM rollouts ORDER BY id DESC LIMIT 1").fetchone()
    assert status == "interrupted"
    store_agrees_with_devices(store, inventory)


def test_interrupted_push_keeps_switched_devices_and_leaves_the_rest(tmp_path, fleet, bundles):
    inventory, roots = fleet
    pid = tmp_path / "pid"
    wrapped = with_python(inventory, interrupting_python(tmp_path, "activate", pid))
    proc = start_edgekit("push", bundles["1.0.1"].path, "-i", wrapped, "--activate", "--workers", "1",
                         "--store", tmp_path / "store.db", pid_file=pid)
    code, out, err = finish(proc)
    assert code == 130, (out, err)
    assert runs(roots) == {"dev-1": "1.0.1", "dev-2": "1.0.0", "dev-3": "1.0.0"}  # a push is not gated
    assert "dev-1: runs 1.0.1 (switched)" in out and "dev-2: " in out and "dev-3: " in out, out
    assert "interrupted: 1 device(s) switched to 1.0.1" in err, err
    store_agrees_with_devices(tmp_path / "store.db", inventory)


def test_a_rerun_after_a_second_interrupt_never_keeps_the_failing_version(tmp_path, fleet):
    """Two interrupts during the canary's evaluation stop at once and leave it on the new,
    unchecked version; the same rollout again breaks its gate and goes back to 1.0.0 (the last
    good state), not to the version that just broke it. --abort undoes a rollout too."""
    inventory, roots = fleet
    store = tmp_path / "store.db"
    breaking = package_with_budget(tmp_path / "dist", "1.3.0", tmp_path / "targets", max_peak_rss_mb=1.0)
    pid = tmp_path / "pid"
    wrapped = with_python(inventory, interrupting_python(tmp_path, "evaluate", pid, signals=2))
    code, out, err = finish(start_edgekit("rollout", breaking, "-i", wrapped, "--store", store, pid_file=pid))
    assert code == 130 and "interrupted at once" in err, (out, err)
    assert runs(roots)["dev-1"] == "1.3.0"  # stopped at once: left unchecked, and the store knows it
    rerun = run_edgekit("rollout", breaking, "-i", inventory, "--store", store, "--json")
    assert rerun.code == 3, rerun.stderr
    (canary,) = rerun.json()["waves"][0]["devices"]
    assert canary["before"]["current"] == "1.0.0" and canary["restored"]
    assert runs(roots) == {"dev-1": "1.0.0", "dev-2": "1.0.0", "dev-3": "1.0.0"}
    store_agrees_with_devices(store, inventory)


def test_abort_puts_back_every_device_the_rollout_touched(tmp_path, fleet, bundles):
    inventory, roots = fleet
    store = tmp_path / "store.db"
    done = run_edgekit("rollout", bundles["1.0.1"].path, "-i", inventory, "--store", store, "--json")
    assert done.code == 0, done.stderr
    assert set(runs(roots).values()) == {"1.0.1"}
    rid = done.json()["rollout_id"]
    aborted = run_edgekit("rollout", "--abort", rid, "-i", inventory, "--store", store, "--json")
    assert aborted.code == 0, aborted.stderr
    assert {d["device"]: d["status"] for d in aborted.json()["devices"]} == {n: "restored" for n in roots}
    assert set(runs(roots).values()) == {"1.0.0"}
    store_agrees_with_devices(store, inventory)
    again = run_edgekit("rollout", "--abort", rid, "-i", inventory, "--store", store)
    assert again.code == 2 and "is aborted" in again.stderr, again.stderr


def test_resume_goes_on_from_the_interrupted_wave_and_skips_devices_done(tmp_path, fleet, bundles):
    inventory, roots = fleet
    store = tmp_path / "store.db"
    pid = tmp_path / "pid"
    # Waves of one device each; the interrupt comes when the second device evaluates.
    wrapped = with_python(inventory, interrupting_python(tmp_path, "evaluate", pid, nth=2))
    code, out, err = finish(start_edgekit("rollout", bundles["1.0.1"].path, "-i", wrapped, "--store", store,
                                          "--canary", "1", "--batch", "1", "--workers", "1", pid_file=pid))
    assert code == 130, (out, err)
    assert runs(roots) == {"dev-1": "1.0.1", "dev-2": "1.0.0", "dev-3": "1.0.0"}
    assert "dev-1: runs 1.0.1 (passed its gates)" in out and "dev-2: runs 1.0.0 (put back" in out, out
    rid = int(err.split("--resume ")[1].split()[0])
    resumed = run_edgekit("rollout", "--resume", rid, "-i", inventory, "--store", store, "--json")
    assert resumed.code == 0, resumed.stderr
    record = resumed.json()
    assert record["rollout_id"] == rid and record["outcome"] == "completed" and record["resumed"]
    assert [d["device"] for w in record["waves"] for d in w["devices"]] == ["dev-2", "dev-3"]  # dev-1 was done
    assert set(runs(roots).values()) == {"1.0.1"}
    again = run_edgekit("rollout", "--resume", rid, "-i", inventory, "--store", store)
    assert again.code == 2 and "is completed" in again.stderr, again.stderr
    store_agrees_with_devices(store, inventory)


def test_check_prints_the_plan_and_changes_nothing(tmp_path, fleet, bundles):
    from helpers.sshd import tree_state

    inventory, roots = fleet
    store = tmp_path / "store.db"
    before = {n: tree_state(r) for n, r in roots.items()}
    stored = store.read_bytes()
    plan = run_edgekit("rollout", bundles["1.0.1"].path, "-i", inventory, "--store", store, "--check",
                       "--canary", "1", "--batch", "1", "--json")
    assert plan.code == 0, plan.stderr
    rows = [(w["kind"], d["device"], d["from"], d["to"]) for w in plan.json()["waves"] for d in w["devices"]]
    assert rows == [("canary", "dev-1", "1.0.0", "1.0.1"), ("batch 1", "dev-2", "1.0.0", "1.0.1"),
                    ("batch 2", "dev-3", "1.0.0", "1.0.1")]
    table = run_edgekit("rollout", bundles["1.0.1"].path, "-i", inventory, "--store", store, "--check")
    assert table.code == 0 and "nothing is changed" in table.stdout and "dev-3" in table.stdout, table.stdout
    assert {n: tree_state(r) for n, r in roots.items()} == before
    assert store.read_bytes() == stored


def test_rollout_flags_that_do_not_go_together_are_bad_input(tmp_path, fleet, bundles):
    from helpers.cli import assert_clean_error

    inventory, _ = fleet
    assert_clean_error(run_edgekit("rollout", "-i", inventory), "give the BUNDLE")
    assert_clean_error(run_edgekit("rollout", bundles["1.0.1"].path, "--resume", "1", "-i", inventory),
                       "--resume takes the bundle from the store")
    assert_clean_error(run_edgekit("rollout", "--resume", "1", "--abort", "1", "-i", inventory), "give one of them")
    assert_clean_error(run_edgekit("rollout", "--resume", "99", "-i", inventory, "--store", tmp_path / "store.db"),
                       "no such rollout")


# -- over SSH ------------------------------------------------------------------------------


@pytest.mark.ssh
@pytest.mark.parametrize("step", ["activate", "evaluate"])
def test_interrupted_rollout_over_ssh(tmp_path, sshd_fleet, bundles, step):
    pid = tmp_path / "pid"
    python = interrupting_python(tmp_path, step, pid)
    ssh = sshd_fleet(2, pythons=[python, python])
    plain = write_inventory(tmp_path / "plain.toml", [ssh.device_dict(s, python=sys.executable) for s in ssh.servers])
    wrapped = ssh.write_inventory()
    store = tmp_path / "store.db"
    assert run_edgekit("push", bundles["1.0.0"].path, "-i", plain, "--activate", "--store", store,
                       env=ssh.env).code == 0
    breaking = package_with_budget(tmp_path / "dist", "1.0.1", tmp_path / "targets", max_peak_rss_mb=1.0)
    code, out, err = finish(start_edgekit("rollout", breaking, "-i", wrapped, "--store", store, pid_file=pid,
                                          env=ssh.env))
    assert code == 130, (out, err)
    roots = {s.name: s.root for s in ssh.servers}
    assert set(runs(roots).values()) == {"1.0.0"}
    store_agrees_with_devices(store, plain, env=ssh.env)


@pytest.mark.ssh
def test_interrupted_push_over_ssh_during_the_upload(tmp_path, sshd_fleet, bundles, big_bundle):
    """A slow link: the upload is cut by Ctrl-C, its .part stays, nothing switches; the next
    push sends only the rest."""
    from helpers.sshd import DroppingProxy

    ssh = sshd_fleet(1, pythons=[sys.executable])
    server = ssh.servers[0]
    store = tmp_path / "store.db"
    direct = ssh.write_inventory()
    assert run_edgekit("push", bundles["1.0.0"].path, "-i", direct, "--activate", "--store", store,
                       env=ssh.env).code == 0
    pid = tmp_path / "pid"
    with DroppingProxy(server.port, throttle=400_000) as proxy:
        ssh.known_hosts.write_text(ssh.known_hosts.read_text() + server.known_hosts_line(port=proxy.port) + "\n")
        slow = write_inventory(tmp_path / "slow.toml", [ssh.device_dict(server, port=proxy.port)])
        proc = start_edgekit("push", big_bundle, "-i", slow, "--activate", "--store", store, pid_file=pid,
                             env=ssh.env)
        incoming = server.root / "incoming"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(p.stat().st_size > 100_000 for p in incoming.glob("*.part")):
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        code, out, err = finish(proc)
    assert code == 130, (out, err)
    (part,) = incoming.glob("*.part")
    assert 0 < part.stat().st_size < big_bundle.stat().st_size
    assert runs({server.name: server.root}) == {server.name: "1.0.0"}
    assert f"{server.name}: runs 1.0.0 (as before)" in out, out
    again = run_edgekit("push", big_bundle, "-i", direct, "--activate", "--store", store, env=ssh.env)
    assert again.code == 0, again.stderr
    assert runs({server.name: server.root}) == {server.name: "2.0.0"} and not list(incoming.glob("*.part"))
    store_agrees_with_devices(store, direct, env=ssh.env)


def test_ctrl_c_where_no_command_handles_it_says_interrupted(tmp_path):
    """Ctrl-C in a command that does not handle it (here `edgekit report`, while it reads the
    store) stops it with exit code 130 and one word on stderr, no traceback."""
    import subprocess
    import sys

    store = tmp_path / "s.db"
    from edgekit.store import Store

    Store(store).close()
    code = ("import os, signal, sys, time\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # as from a shell (a test runner's worker ignores it)
            "import edgekit.report.fleetdata as fleetdata\n"
            "def load_fleet(*a, **k):\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    time.sleep(5)\n"
            "fleetdata.load_fleet = load_fleet\n"
            "from edgekit.cli.main import main\n"
            f"sys.argv = ['edgekit', 'report', '--store', {str(store)!r}]\n"
            "main()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130 and proc.stderr.strip() == "interrupted", (proc.returncode, proc.stderr)
