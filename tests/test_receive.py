"""`install --stdin`: the bundle unpacked and checked as it arrives (edgekit_device.receive).
What a push does on every device: a cut stream keeps what came, to resume; a refused bundle
leaves the device as it was; a receiving install's staging folder survives another install's
cleaning while it lives, and not after."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers.bundles import tar_members
from helpers.devices import install_runner, runner, snapshot
from edgekit.bundle import read_bundle, write_tar

NAME = "digits-1.0.1.edgekit.part"


def start(root, *args):
    return subprocess.Popen([sys.executable, str(root / "bin" / "edgekit_runner.py"), "install", f"incoming/{NAME}",
                             "--stdin", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def receive(root, built_path, data: bytes, *, manifest: bool = True):
    """Send `data` (from the offset the runner names) as push does for the bundle at
    `built_path`; (exit code, the offset it named, its JSON answer)."""
    bundle = read_bundle(built_path)
    args = ["--sha256", bundle.sha256, "--size", str(bundle.size)]
    proc = start(root, *args, *(["--manifest-sha256", bundle.manifest_sha256] if manifest else []))
    mark, offset = proc.stdout.readline().split()
    assert mark == b"edgekit-offset", mark
    try:
        proc.stdin.write(data[int(offset):])
    except BrokenPipeError:
        pass
    out, err = proc.communicate(timeout=120)
    return proc.returncode, int(offset), json.loads(out.decode().strip().splitlines()[-1])


@pytest.fixture
def device(tmp_path, bundles):
    root = tmp_path / "dev"
    install_runner(root)
    return root


@pytest.mark.parametrize("manifest", [True, False], ids=["by-manifest", "whole"])
def test_a_bundle_sent_on_stdin_is_installed_and_nothing_is_left(device, bundles, manifest):
    built = bundles["1.0.1"]
    code, offset, reply = receive(device, built.path, built.path.read_bytes(), manifest=manifest)
    assert code == 0 and offset == 0 and reply["installed"] and reply["sha256"] == built.sha256, reply
    assert not list((device / "incoming").iterdir())
    assert sorted(p.name for p in (device / "bundles").iterdir()) == ["digits"]
    code, status = runner(device, "status")
    assert status["models"]["digits"]["bundles"]["1.0.1"]["sha256"] == built.sha256


def test_a_cut_stream_keeps_what_came_and_the_next_one_resumes_from_there(device, bundles):
    built = bundles["1.0.1"]
    data = built.path.read_bytes()
    before = snapshot(device)
    code, _, reply = receive(device, built.path, data[: len(data) // 3])
    assert code == 1 and reply["kind"] == "incomplete" and "push again to resume" in reply["error"], reply
    assert (device / "incoming" / NAME).stat().st_size == len(data) // 3
    assert snapshot(device)["bundles"] == before["bundles"]  # no staging folder, nothing placed
    code, offset, reply = receive(device, built.path, data)
    assert code == 0 and offset == len(data) // 3 and reply["installed"], reply
    assert not list((device / "incoming").iterdir())


def test_a_refused_bundle_is_received_to_its_end_then_removed(device, bundles, tmp_path):
    built = bundles["1.0.1"]
    members = tar_members(built.path)
    model = bytearray(members["model.onnx"])
    model[len(model) // 2] ^= 0x01
    members["model.onnx"] = bytes(model)
    broken = tmp_path / "broken.edgekit"
    write_tar(broken, members, mtime=0)
    before = snapshot(device)
    code, _, reply = receive(device, broken, broken.read_bytes())
    assert code == 2 and reply["kind"] == "integrity" and "sha256 mismatch for model.onnx" in reply["error"], reply
    assert snapshot(device) == before


def test_a_stream_corrupted_in_transfer_is_named_so(device, bundles):
    built = bundles["1.0.1"]
    data = bytearray(built.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    before = snapshot(device)
    code, _, reply = receive(device, built.path, bytes(data))
    assert code == 2 and "corrupted in transfer" in reply["error"], reply
    assert snapshot(device) == before


def test_a_live_receiving_folder_survives_another_install_and_a_dead_ones_does_not(device, bundles):
    built = bundles["1.0.1"]
    bundle = read_bundle(built.path)
    proc = start(device, "--sha256", bundle.sha256, "--size", str(bundle.size))
    assert proc.stdout.readline().startswith(b"edgekit-offset 0")
    proc.stdin.write(built.path.read_bytes()[:1000])
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while not list((device / "bundles").glob(".receiving-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    [live] = list((device / "bundles").glob(".receiving-*"))
    code, reply = runner(device, "gc", "--keep", "1")  # cleans leftovers under the writer lock
    assert code == 0 and live.is_dir(), reply
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    code, reply = runner(device, "gc", "--keep", "1")
    assert code == 0 and not live.exists(), reply
