"""Faults survived: each fault is injected on real devices (local folders run by a device
Python that misbehaves on cue, small tmpfs roots and read-only bind mounts where this
machine allows them, loopback sshd for what is about the connection), and after each:

    every device runs its old version, or the new one with a passing report;
    `edgekit report` agrees with `edgekit fleet status`;
    the message names the device, the step and the cause;
    nothing is left in incoming/ after `edgekit fleet gc`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

from helpers.cli import run_edgekit
from helpers.fleet import every_device_safe, package_with_budget, runs, store_agrees_with_devices, write_inventory
from helpers.mounts import needs_mount, read_only


def misbehaving_python(base: Path, name: str, step: str, action: str) -> str:
    """A device Python that does `action` (shell) when the runner is asked to `step`, then
    runs the runner as usual (unless `action` execs something else)."""
    script = base / f"python-{name}"
    script.write_text(f"""#!/bin/sh
for arg in "$@"; do
  if [ "$arg" = "{step}" ]; then {action}; fi
done
exec {sys.executable} "$@"
""")
    script.chmod(0o755)
    return str(script)


def local_fleet(base: Path, pythons: dict[str, str], roots: Optional[dict[str, Path]] = None) -> Path:
    entries = [{"name": name, "transport": "local", "root": str((roots or {}).get(name, base / name)),
                "target": "host-cpu", "python": python} for name, python in pythons.items()]
    return write_inventory(base / "fleet.toml", entries)


def first_version(inventory: Path, bundle: Path, store: Path, env: Optional[dict] = None) -> None:
    done = run_edgekit("push", bundle, "-i", inventory, "--activate", "--store", store, env=env)
    assert done.code == 0, done.stderr


def gc_leaves_incoming_empty(inventory: Path, roots: dict[str, Path], store: Path, env: Optional[dict] = None):
    done = run_edgekit("fleet", "gc", "-i", inventory, "--store", store, "--part-idle", "0", "--json", env=env)
    assert done.code == 0, done.stderr
    for root in roots.values():
        assert not list((root / "incoming").glob("*")), list((root / "incoming").iterdir())
    return done.json()


def rows_of(result) -> dict:
    return {d["device"]: d for w in result.json()["waves"] for d in w["devices"]}


# -- hung, crashing and starving runners (local devices) -----------------------------------------


def test_a_device_that_hangs_forever_ends_within_the_step_timeout(tmp_path, bundles):
    pythons = {"dev-1": sys.executable, "dev-2": misbehaving_python(tmp_path, "hang", "evaluate", "exec sleep 3600"),
               "dev-3": sys.executable}
    inventory = local_fleet(tmp_path, pythons)
    roots = {n: tmp_path / n for n in pythons}
    store = tmp_path / "store.db"
    first_version(inventory, bundles["1.0.0"].path, store)
    started = time.monotonic()
    done = run_edgekit("rollout", bundles["1.0.1"].path, "-i", inventory, "--store", store, "--canary", "0",
                       "--batch", "100%", "--max-failures", "1", "--step-timeout", "8", "--json")
    assert time.monotonic() - started < 8 + 60
    assert done.code == 1, done.stderr  # completed with a tolerated failure
    rows = rows_of(done)
    assert {n: r["status"] for n, r in rows.items()} == {"dev-1": "ok", "dev-2": "failed", "dev-3": "ok"}
    assert "device dev-2: evaluate: timed out after 8 s" in rows["dev-2"]["error"]
    assert rows["dev-2"]["restored"] and rows["dev-2"]["now"]["runs"] == "1.0.0"
    assert runs(roots) == {"dev-1": "1.0.1", "dev-2": "1.0.0", "dev-3": "1.0.1"}
    every_device_safe(store, roots, "1.0.0", "1.0.1")
    store_agrees_with_devices(store, inventory)
    gc_leaves_incoming_empty(inventory, roots, store)


@pytest.mark.parametrize("fault, cause", [
    ("exec python -c 'import os, signal; os.kill(os.getpid(), signal.SIGSEGV)'", "killed by signal 11 (SIGSEGV)"),
    ("ulimit -v 150000", "out of memory"),
])
def test_a_crash_or_a_starved_evaluation_names_the_step_and_the_cause(tmp_path, bundles, fault, cause):
    fault = fault.replace("python", sys.executable)
    pythons = {"dev-1": misbehaving_python(tmp_path, "faulty", "evaluate", fault)}
    inventory = local_fleet(tmp_path, pythons)
    roots = {"dev-1": tmp_path / "dev-1"}
    store = tmp_path / "store.db"
    first_version(inventory, bundles["1.0.0"].path, store)
    done = run_edgekit("rollout", bundles["1.0.1"].path, "-i", inventory, "--store", store, "--json")
    assert done.code in (1, 3), done.stderr
    row = rows_of(done)["dev-1"]
    text = row["error"] or " ".join(b["message"] for b in row["breaches"])
    assert "dev-1" in text and "evaluat" in text and cause in text, text
    assert row["restored"] and runs(roots) == {"dev-1": "1.0.0"}
    table = run_edgekit("rollout", bundles["1.0.1"].path, "-i", inventory, "--store", store)
    assert cause in table.stdout + table.stderr and "now: runs 1.0.0 (put back by edgekit)" in table.stdout, table.stdout
    store_agrees_with_devices(store, inventory)
    gc_leaves_incoming_empty(inventory, roots, store)


# -- the device's own state ------------------------------------------------------------------------


def test_a_truncated_state_file_does_not_lock_the_device_out(tmp_path, bundles):
    inventory = local_fleet(tmp_path, {"dev-1": sys.executable})
    root, store = tmp_path / "dev-1", tmp_path / "store.db"
    first_version(inventory, bundles["1.0.0"].path, store)
    first_version(inventory, bundles["1.0.1"].path, store)
    state = root / "state" / "digits.json"
    state.write_text(state.read_text()[:17])  # cut by a full disk or a power loss
    status = run_edgekit("fleet", "status", "-i", inventory, "--store", store, "--json")
    assert status.code == 0, status.stderr
    (dev,) = status.json()["devices"]
    assert dev["reachable"] and dev["versions"]["digits"]["current"] == "1.0.1"
    assert any("rebuilt from current/digits" in w for w in dev.get("warnings", [])), dev
    repaired = run_edgekit("fleet", "repair", "-i", inventory, "--store", store, "--json")
    assert repaired.code == 0, repaired.stderr
    assert "rebuilt" in json.dumps(repaired.json()["devices"][0]["fixed"])
    assert json.loads(state.read_text())["current"] == "1.0.1"
    rolled = run_edgekit("rollout", bundles["1.0.0"].path, "-i", inventory, "--store", store)
    assert rolled.code == 0, rolled.stderr
    store_agrees_with_devices(store, inventory)



def test_repairing_a_link_to_a_removed_bundle_leaves_a_version_to_roll_back_to(tmp_path, bundles):
    # repair made the missing version the previous one ('digits - (prev 1.0.1)'), and rollback then
    # failed: 'digits 1.0.1 is not installed'
    inventory = local_fleet(tmp_path, {"dev-1": sys.executable})
    root, store = tmp_path / "dev-1", tmp_path / "store.db"
    first_version(inventory, bundles["1.0.0"].path, store)
    first_version(inventory, bundles["1.0.1"].path, store)
    shutil.rmtree(root / "bundles" / "digits" / "1.0.1")  # a careless hand, or a disk that lost it
    repaired = run_edgekit("fleet", "repair", "-i", inventory, "--store", store, "--json")
    assert repaired.code == 0, repaired.stderr
    assert "pointed at 1.0.1, which is not installed" in json.dumps(repaired.json()["devices"][0]["fixed"])
    state = json.loads((root / "state" / "digits.json").read_text())
    assert (state["current"], state["previous"]) == (None, "1.0.0")
    rolled = run_edgekit("rollback", "digits", "-i", inventory, "--store", store)
    assert rolled.code == 0, rolled.stdout + rolled.stderr
    assert runs({"d": root}) == {"d": "1.0.0"}

@needs_mount
def test_an_activation_whose_state_cannot_be_written_changes_nothing(tmp_path, bundles):
    inventory = local_fleet(tmp_path, {"dev-1": sys.executable})
    root, store = tmp_path / "dev-1", tmp_path / "store.db"
    first_version(inventory, bundles["1.0.0"].path, store)
    link = os.readlink(root / "current" / "digits")
    with read_only(root / "state"):
        pushed = run_edgekit("push", bundles["1.0.1"].path, "-i", inventory, "--activate", "--store", store, "--json")
    assert pushed.code == 1
    (dev,) = pushed.json()["devices"]
    assert "device dev-1: activate: read-only file system" in dev["error"], dev["error"]
    assert os.readlink(root / "current" / "digits") == link and runs({"d": root}) == {"d": "1.0.0"}
    store_agrees_with_devices(store, inventory)


@needs_mount
def test_a_read_only_current_during_evaluation_is_said_honestly_and_fixed_by_the_command_given(tmp_path, bundles):
    root = tmp_path / "dev-1"
    freeze = f'mount --bind {root}/current {root}/current && mount -o remount,ro,bind {root}/current'
    inventory = local_fleet(tmp_path, {"dev-1": misbehaving_python(tmp_path, "ro", "evaluate", freeze)})
    store = tmp_path / "store.db"
    first_version(inventory, bundles["1.0.0"].path, store)
    breaking = package_with_budget(tmp_path / "dist", "1.0.1", tmp_path / "targets", max_peak_rss_mb=1.0)
    try:
        done = run_edgekit("rollout", breaking, "-i", inventory, "--store", store)
    finally:
        subprocess.run(["umount", str(root / "current")], check=False)
    assert done.code == 3, done.stderr
    assert "read-only file system" in done.stdout and "may run 1.0.1 unchecked" in done.stdout, done.stdout
    fix = next(ln.split("fix: ", 1)[1] for ln in done.stdout.splitlines() if "fix: " in ln)
    assert fix.startswith("edgekit rollout --abort ")
    argv = fix.split("(")[0].replace("INVENTORY", str(inventory)).split()[1:]
    fixed = run_edgekit(*argv, "--store", store)
    assert fixed.code == 0, fixed.stderr
    assert runs({"dev-1": root}) == {"dev-1": "1.0.0"}
    store_agrees_with_devices(store, inventory)


@needs_mount
def test_a_full_disk_is_refused_before_the_upload_and_gc_frees_what_uploads_left(tmp_path, bundles, big_bundle):
    root = tmp_path / "dev-1"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(root)], check=True)
    try:
        inventory = local_fleet(tmp_path, {"dev-1": sys.executable})
        store = tmp_path / "store.db"
        first_version(inventory, bundles["1.0.0"].path, store)
        pushed = run_edgekit("push", big_bundle, "-i", inventory, "--activate", "--store", store, "--json")
        assert pushed.code == 1
        error = pushed.json()["devices"][0]["error"]
        assert error.startswith("device dev-1: upload: disk full: the bundle needs ") and "MiB free" in error, error
        assert runs({"d": root}) == {"d": "1.0.0"}
        leftover = root / "incoming" / "old-upload.edgekit.part"  # what a cut upload left, hours ago
        leftover.write_bytes(b"\0" * 500_000)
        os.utime(leftover, (time.time() - 7200, time.time() - 7200))
        freed = gc_leaves_incoming_empty(inventory, {"dev-1": root}, store)
        assert freed["devices"][0]["freed_bytes"] == 500_000
        store_agrees_with_devices(store, inventory)
    finally:
        subprocess.run(["umount", str(root)], check=False)


# -- clocks --------------------------------------------------------------------------------------------


def skewed_python(base: Path, seconds: float) -> str:
    """A device whose clock is `seconds` off: its Python sees time.time() shifted."""
    site = base / f"skew-{int(seconds)}"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"""import time
_real_time, _real_gmtime = time.time, time.gmtime
time.time = lambda: _real_time() + {seconds}
time.gmtime = lambda secs=None: _real_gmtime(time.time() if secs is None else secs)
""")
    script = base / f"python-skew-{int(seconds)}"
    # The host starts the runner with -S (no site, so no sitecustomize): this device keeps its
    # fake clock for every command by leaving the flag out.
    script.write_text(f'#!/bin/sh\n[ "$1" = "-S" ] && shift\nPYTHONPATH={site} exec {sys.executable} "$@"\n')
    script.chmod(0o755)
    return str(script)


def test_device_clocks_do_not_decide_the_report(tmp_path, bundles):
    year = 365 * 86400
    pythons = {"ahead": skewed_python(tmp_path, year), "behind": skewed_python(tmp_path, -10 * year)}
    inventory = local_fleet(tmp_path, pythons)
    roots = {n: tmp_path / n for n in pythons}
    store = tmp_path / "store.db"
    first_version(inventory, bundles["1.0.0"].path, store)
    assert run_edgekit("rollout", bundles["1.0.1"].path, "-i", inventory, "--store", store, "--canary", "0",
                       "--batch", "100%").code == 0
    breaking = package_with_budget(tmp_path / "dist", "1.0.2", tmp_path / "targets", max_peak_rss_mb=1.0)
    assert run_edgekit("rollout", breaking, "-i", inventory, "--store", store, "--canary", "0",
                       "--batch", "100%").code == 3
    assert runs(roots) == {"ahead": "1.0.1", "behind": "1.0.1"}
    store_agrees_with_devices(store, inventory)
    report = run_edgekit("report", "--store", store, "--json").json()
    current = {(r["device"], r["version"]) for r in report["rows"] if r["current"]}
    assert current == {("ahead", "1.0.1"), ("behind", "1.0.1")}
    skew = {d["device"]: d["skew_s"] for d in report["health"]["clock_skew"]}
    assert skew["ahead"] == pytest.approx(year, abs=60) and skew["behind"] == pytest.approx(-10 * year, abs=60)
    status = run_edgekit("fleet", "status", "-i", inventory, "--store", store, "--json").json()
    clocks = {d["device"]: d["clock"] for d in status["devices"]}
    assert clocks == {"ahead": "365.0 d ahead", "behind": "3650.0 d behind"}
    last = {d["device"]: d["last_report_at"] for d in status["devices"]}
    newest = max(r["measured_at"] for r in report["rows"] if r["device"] == "behind")
    assert last["behind"] == newest  # the newest this host received, not the device's idea of it


# -- the connection (loopback sshd) --------------------------------------------------------------------


def session_sshd(step: str, base: Path, name: str, sig: str) -> str:
    """A device Python that sends `sig` to the sshd process serving its own session when the
    runner is asked to `step`, then runs the runner (on a frozen or dead connection)."""
    find = ('p=$$; while [ "$p" -gt 1 ]; do p=$(awk \'{print $4}\' /proc/$p/stat); '
            'case "$(cat /proc/$p/cmdline | tr \'\\0\' \' \')" in sshd*notty*|*sshd-session*) break;; esac; done')
    return misbehaving_python(base, name, step, f"{find}; echo $p >> {base}/signalled; kill -{sig} $p")


@pytest.mark.ssh
@pytest.mark.parametrize("sig, cause", [("STOP", "no answer to a keepalive"), ("KILL", "connection lost")])
def test_a_frozen_or_killed_connection_is_noticed_and_the_device_restored(tmp_path, sshd_fleet, bundles, sig, cause):
    python = session_sshd("evaluate", tmp_path, f"conn-{sig}", sig)
    ssh = sshd_fleet(2, pythons=[python, sys.executable])
    plain = write_inventory(tmp_path / "plain.toml", [ssh.device_dict(s, python=sys.executable) for s in ssh.servers])
    wrapped = ssh.write_inventory()
    store = tmp_path / "store.db"
    roots = {s.name: s.root for s in ssh.servers}
    first_version(plain, bundles["1.0.0"].path, store, env=ssh.env)
    started = time.monotonic()
    try:
        done = run_edgekit("rollout", bundles["1.0.1"].path, "-i", wrapped, "--store", store, "--canary", "0",
                           "--batch", "100%", "--max-failures", "1", "--json", env=ssh.env)
    finally:
        for pid in (tmp_path / "signalled").read_text().split() if (tmp_path / "signalled").exists() else ():
            try:
                os.kill(int(pid), signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert time.monotonic() - started < 120
    assert done.code == 1, done.stderr
    row = rows_of(done)[ssh.servers[0].name]
    assert f"device {ssh.servers[0].name}: evaluate: " in row["error"] and cause in row["error"], row["error"]
    assert row["restored"], row
    assert runs(roots) == {ssh.servers[0].name: "1.0.0", ssh.servers[1].name: "1.0.1"}
    every_device_safe(store, roots, "1.0.0", "1.0.1")
    store_agrees_with_devices(store, plain, env=ssh.env)
    gc_leaves_incoming_empty(plain, roots, store, env=ssh.env)


def test_the_runner_stops_its_own_evaluation_when_its_connection_is_gone(tmp_path):
    """What `evaluate` does first: a process that watches its parent and its stdout (sshd's
    end of the session) stops itself, within seconds, once the reader is gone."""
    from helpers.paths import REPO

    script = tmp_path / "long.py"
    script.write_text(f"import sys, time\nsys.path.insert(0, {str(REPO)!r})\n"
                      "from edgekit.device.runner import watch_parent\nwatch_parent(0.2)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    time.sleep(1.0)
    assert proc.poll() is None  # alive while someone reads its output
    proc.stdout.close()  # the connection goes
    assert proc.wait(timeout=10) == 3


@pytest.mark.parametrize("twins", [
    [{"transport": "local", "root": "devs/a"}, {"transport": "local", "root": "devs/./a/"}],
    [{"host": "10.0.0.5", "root": "/opt/edgekit"}, {"host": "10.0.0.5", "port": 22, "root": "/opt/edgekit/"}],
], ids=["local", "ssh"])
def test_two_inventory_entries_for_one_device_are_bad_input(tmp_path, twins):
    from helpers.cli import assert_clean_error

    entries = [{"name": f"cam-{i}", "target": "host-cpu", **t} for i, t in enumerate(twins)]
    inventory = write_inventory(tmp_path / "fleet.toml", entries)
    assert_clean_error(run_edgekit("fleet", "status", "-i", inventory), "devices 'cam-0' and 'cam-1' are the same device")
    other = write_inventory(tmp_path / "ok.toml", [entries[0], {**entries[1], "root": "/opt/other", "name": "cam-1"}])
    from edgekit.fleet.inventory import load_inventory

    assert len(load_inventory(other).devices) == 2  # another root: two devices
