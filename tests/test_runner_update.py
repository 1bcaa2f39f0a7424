"""The runner as push sends it: its package as one tar that the launcher's next start puts in
place, and a start without site-packages (`python -S`) for everything but the commands that
need a runtime."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time

from helpers.devices import install, install_runner, runner
from helpers.paths import PY39
from edgekit.bundle import runner_sha256, write_tar
from edgekit.fleet.protocol import runner_argv
from edgekit.fleet.inventory import Device


def _bin(root) -> list[str]:
    return sorted(p.name for p in (root / "bin").iterdir())


def test_a_runner_sent_as_one_tar_is_put_in_place_by_its_next_start(tmp_path):
    root = tmp_path / "dev"
    install_runner(root)
    assert _bin(root) == ["edgekit_device.tar", "edgekit_runner.py"]  # two files sent, nothing unpacked yet
    code, status = runner(root, "status", python=str(PY39 or sys.executable))  # a device's Python 3.9 when here
    assert code == 0 and status["runner_sha256"] == runner_sha256()  # the very files this host ships
    assert _bin(root) == ["edgekit_device", "edgekit_runner.py"]
    # An update: the old package is moved aside (install and gc remove it), the new one renamed in.
    changed = {p.name: p.read_bytes() for p in (root / "bin" / "edgekit_device").glob("*.py")}
    changed["trust.py"] += b"# a later runner\n"
    write_tar(root / "bin" / "edgekit_device.tar", changed, mtime=0)
    code, status = runner(root, "status")
    assert code == 0 and status["runner_sha256"] != runner_sha256()
    assert (root / "bin" / "edgekit_device" / "trust.py").read_bytes().endswith(b"# a later runner\n")
    leftovers = [n for n in _bin(root) if n.startswith("edgekit_device.old-")]
    assert len(leftovers) == 1
    code, _ = runner(root, "gc", "--keep", "1")
    assert code == 0 and _bin(root) == ["edgekit_device", "edgekit_runner.py"]


def test_a_runner_update_waits_for_the_device_lock(tmp_path):
    """The launcher unpacks a sent runner under ROOT/.lock: an install holding it (which
    cleans unpack leftovers) is never raced, and the start unpacks once the lock is free."""
    root = tmp_path / "dev"
    install_runner(root)
    assert runner(root, "status")[0] == 0
    changed = {p.name: p.read_bytes() for p in (root / "bin" / "edgekit_device").glob("*.py")}
    changed["trust.py"] += b"# a later runner\n"
    write_tar(root / "bin" / "edgekit_device.tar", changed, mtime=0)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as an install in progress holds it
    try:
        start = subprocess.Popen([sys.executable, str(root / "bin" / "edgekit_runner.py"), "status"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        assert start.poll() is None  # waiting for the lock ...
        assert _bin(root) == ["edgekit_device", "edgekit_device.tar", "edgekit_runner.py"]  # ... tar not claimed
    finally:
        os.close(fd)
    out, err = start.communicate(timeout=60)
    assert start.returncode == 0, err
    assert json.loads(out.splitlines()[-1])["runner_sha256"] != runner_sha256()
    assert (root / "bin" / "edgekit_device" / "trust.py").read_bytes().endswith(b"# a later runner\n")


def test_a_runner_tar_with_anything_but_plain_modules_is_refused(tmp_path):
    root = tmp_path / "dev"
    install_runner(root)
    runner(root, "status")
    package = {p.name: p.read_bytes() for p in (root / "bin" / "edgekit_device").glob("*.py")}
    for bad in ("../escape.py", "sub/module.py", ".hidden.py", "notes.txt"):
        write_tar(root / "bin" / "edgekit_device.tar", {**package, bad: b"raise SystemExit('ran')\n"}, mtime=0)
        proc = subprocess.run([sys.executable, str(root / "bin" / "edgekit_runner.py"), "status"],
                              capture_output=True, text=True)
        assert proc.returncode == 1 and "is not a runner module" in proc.stderr and bad in proc.stderr, proc.stderr
        assert not (tmp_path / "escape.py").exists() and not (root / "bin" / "escape.py").exists()
        code, status = runner(root, "status")  # the old runner still answers; the next push sends it again
        assert code == 0 and status["runner_sha256"] == runner_sha256()


def test_the_host_starts_the_runner_without_site_and_evaluate_turns_it_on(tmp_path, bundles):
    root = tmp_path / "dev"
    install_runner(root)
    device = Device(name="dev", transport="local", root=str(root), target="host-cpu", python=sys.executable)
    assert runner_argv(device, "status")[:2] == [sys.executable, "-S"]
    code, reply = install(root, bundles["1.0.0"])
    assert code == 0, reply
    probe = ("import runpy, sys\nsys.argv = sys.argv[1:]\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "sys.stderr.write('\\nnumpy' if 'numpy' in sys.modules else '\\nno numpy')\n")
    for command, numpy in ((["status"], "no numpy"), (["evaluate", "digits", "--version", "1.0.0"], "numpy")):
        argv = runner_argv(device, *command)
        proc = subprocess.run([argv[0], "-S", "-c", probe, *argv[2:]], capture_output=True, text=True, timeout=300)
        assert json.loads(proc.stdout.splitlines()[-1])["ok"] is True, proc.stdout + proc.stderr
        assert proc.stderr.splitlines()[-1] == numpy
