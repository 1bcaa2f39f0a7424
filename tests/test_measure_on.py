"""calibrate --measure-on DEVICE: every candidate measured on a real device of the target,
through the fleet's transport and runner (a local device, and one behind a real sshd), with
the device's installed state left exactly as it was and no scratch file left behind."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.bundles import build
from helpers.cli import assert_clean_error, finish, run_edgekit, start_edgekit
from helpers.devices import (install_runner, interrupting_python, logging_python, runner, runner_commands,
                             snapshot)
from helpers.fleet import write_inventory
from helpers.paths import CALIB, EVAL, EXAMPLE_ONNX, REPO
from edgekit.machine import cpu_facts


@pytest.fixture
def targets(tmp_path) -> Path:
    """host-cpu with fewer recipes (fp32 and static INT8, no variants): a short sweep."""
    text = (REPO / "targets" / "host-cpu.toml").read_text()
    for key, value in (("precisions", '["fp32", "int8-static"]'), ("per_channel", "false"),
                       ("reduce_range", "false")):
        text, count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        assert count == 1, key
    folder = tmp_path / "targets"
    folder.mkdir()
    (folder / "host-cpu.toml").write_text(text)
    return folder


def calibrate(tmp_path, targets: Path, *args, env=None):
    return run_edgekit("calibrate", EXAMPLE_ONNX, "--target", "host-cpu", "--targets-dir", targets,
                       "--calibration", CALIB, "--eval", EVAL, "-o", tmp_path / "out", "--runs", "5",
                       "--eval-samples", "100", "--search", "off", *args, env=env)


def _ask(python: str, code: str) -> str:
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("transport", ["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def test_every_candidate_is_measured_on_the_device_and_leaves_it_as_it_was(tmp_path, targets, transport,
                                                                           sshd_fleet, device_python):
    python, log = logging_python(tmp_path, device_python)
    if transport == "ssh":
        fleet = sshd_fleet(1, names=["cam-01"], pythons=[python])
        inventory, root, env = fleet.write_inventory(), fleet.servers[0].root, fleet.env
    else:
        root, env = tmp_path / "cam-01", None
        inventory = write_inventory(tmp_path / "fleet.toml", [
            {"name": "cam-01", "transport": "local", "root": str(root), "target": "host-cpu", "python": python}])
    bundle = build(tmp_path / "dist", "1.0.0", eval_samples=50)
    pushed = run_edgekit("push", bundle.path, "-i", inventory, "--activate", "--targets-dir", targets, env=env)
    assert pushed.code == 0, pushed.stderr
    before = snapshot(root)
    log.unlink()

    result = calibrate(tmp_path, targets, "--measure-on", "cam-01", "-i", inventory, env=env)
    assert result.code == 0, result.stderr
    record = json.loads((tmp_path / "out" / "calibration.json").read_text())
    place = record["measured_on"]
    assert place["kind"] == "device" and place["name"] == "cam-01" and place["target"] == "host-cpu"
    assert place["python"] == _ask(device_python, "import platform; print(platform.python_version())")
    assert place["cpu"] and place["cores"] and place["matches_target"] and place["note"] is None
    assert "accuracy or fidelity" in place["measured"]
    assert place["flags"] == cpu_facts()["flags"]  # the device's own reading (this machine's CPU here)
    # Every candidate was measured by the device's runner, with the device's runtime: in full, or
    # by a quick probe there that showed it cannot win (skipped; a graph twin of one, unmeasured);
    # the fastest passing ones again in rounds (calibrate's re-timing).
    commands = runner_commands(log)
    full = [c for c in record["candidates"] if c["status"] == "ok"]
    probed = [c for c in record["candidates"] if c["status"] == "skipped" and c["metrics"]]
    retimed = [c for c in full if "p50_rounds" in c["metrics"]["latency_ms"]]
    assert len(full) >= 2 and all(c["status"] in ("ok", "skipped") for c in record["candidates"])
    least = len(full) + len(probed) + 3 * len(retimed)  # and a probe before a full measurement, at most one each
    assert least <= commands.count("measure") <= least + len(full)
    assert commands[-1] == "scratch-clean"
    device_ort = _ask(device_python, "import onnxruntime; print(onnxruntime.__version__)")
    for c in full + probed:
        assert c["metrics"]["runtime"]["version"] == device_ort and c["metrics"]["latency_ms"]["n"] >= 5
    assert f"measured on device cam-01 (host-cpu): {place['cpu']}" in " ".join(result.stdout.split())
    # Nothing the device runs changed, and the scratch folder is gone.
    assert snapshot(root) == before and not (root / "scratch").exists()
    assert sorted(p.name for p in root.iterdir()) == sorted(["bin", "bundles", "current", "incoming", "reports",
                                                             "state", "trust", ".lock"])


def test_a_model_the_devices_runtime_cannot_load_fails_there(tmp_path, targets, device_python):
    """A dynamic-INT8 Conv needs a ConvInteger kernel that an older device runtime lacks: on
    the host it measures, on such a device it is recorded as failed with the device's words."""
    device_ort = _ask(device_python, "import onnxruntime; print(onnxruntime.__version__)")
    host_ort = _ask(sys.executable, "import onnxruntime; print(onnxruntime.__version__)")
    if device_ort == host_ort:
        pytest.skip("the device Python has the host's onnxruntime (no Python 3.9 here)")
    (targets / "host-cpu.toml").write_text((targets / "host-cpu.toml").read_text().replace(
        '["fp32", "int8-static"]', '["fp32", "int8-dynamic"]'))
    inventory = write_inventory(tmp_path / "fleet.toml", [
        {"name": "old", "transport": "local", "root": str(tmp_path / "old"), "target": "host-cpu",
         "python": device_python}])
    result = calibrate(tmp_path, targets, "--measure-on", "old", "-i", inventory, "--json")
    assert result.code == 0, result.stderr
    dynamic = next(c for c in result.json()["candidates"] if c["recipe"]["precision"] == "int8-dynamic")
    assert dynamic["status"] == "failed" and "device old: measure:" in dynamic["error"]
    assert f"onnxruntime {device_ort} cannot load the model" in dynamic["error"]
    assert "scratch" not in dynamic["error"]  # the device's folder is its own business
    assert not (tmp_path / "old" / "scratch").exists()


def test_ctrl_c_stops_at_the_next_device_step_and_cleans_the_device(tmp_path, targets):
    pid = tmp_path / "pid"
    root = tmp_path / "cam-01"
    python = interrupting_python(tmp_path, "measure", pid, nth=2)
    inventory = write_inventory(tmp_path / "fleet.toml", [
        {"name": "cam-01", "transport": "local", "root": str(root), "target": "host-cpu", "python": python}])
    proc = start_edgekit("calibrate", EXAMPLE_ONNX, "--target", "host-cpu", "--targets-dir", targets,
                         "--calibration", CALIB, "--eval", EVAL, "-o", tmp_path / "out", "--runs", "5",
                         "--search", "off", "--measure-on", "cam-01", "-i", inventory, pid_file=pid)
    code, out, err = finish(proc)
    assert code == 130, (out, err)
    assert signal.Signals.SIGINT.name in err and "calibrate wrote nothing, and cam-01 is as it was" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "calibration.json").exists() and not (root / "scratch").exists()


@pytest.mark.parametrize("args, needles", [
    (("--measure-on", "nope", "-i", "{inv}"), ("--measure-on nope: no such device", "devices: gw, sim")),
    (("--measure-on", "gw", "-i", "{inv}"), ("--measure-on gw: the device's target is x86-gateway, not host-cpu",
                                             "devices of host-cpu there: sim")),
    (("--measure-on", "sim"), ("--measure-on sim needs --inventory",)),
    (("-i", "{inv}"), ("--inventory is used only with --measure-on",)),
])
def test_bad_measure_on_input_is_refused_before_any_work(tmp_path, targets, args, needles):
    inventory = write_inventory(tmp_path / "fleet.toml", [
        {"name": "sim", "transport": "local", "root": str(tmp_path / "sim"), "target": "host-cpu"},
        {"name": "gw", "transport": "local", "root": str(tmp_path / "gw"), "target": "x86-gateway"}])
    result = calibrate(tmp_path, targets, *(str(a).format(inv=inventory) for a in args))
    assert_clean_error(result, *needles)
    assert not (tmp_path / "out").exists() and not (tmp_path / "sim").exists()


def test_the_runner_measures_only_what_is_in_its_scratch_folder_and_gc_removes_what_was_left(tmp_path):
    root = tmp_path / "dev"
    install_runner(root)
    code, reply = runner(root, "measure", "run-1", "model.onnx", "data.npz")
    assert code == 2 and "upload the model and its data to scratch/run-1/ first" in reply["error"]
    code, reply = runner(root, "measure", "../bundles", "model.onnx", "data.npz")
    assert code == 2 and "is not a plain name" in reply["error"]
    left = root / "scratch" / "calibrate-cut-short"
    left.mkdir(parents=True)
    (left / "model-1.onnx").write_bytes(EXAMPLE_ONNX.read_bytes())
    code, reply = runner(root, "gc", "--keep", "1", "--part-idle", "3600")
    assert code == 0 and reply["scratch_removed"] == [] and left.exists()  # a live run is not touched
    code, reply = runner(root, "gc", "--keep", "1", "--part-idle", "0")
    assert code == 0 and reply["scratch_removed"] == ["calibrate-cut-short"] and not left.exists()
    code, reply = runner(root, "scratch-clean", "calibrate-cut-short")
    assert code == 0 and reply["removed"] is False and not (root / "scratch").exists()


def test_a_device_of_another_architecture_than_its_profile_is_named_in_the_note(tmp_path, targets):
    """The inventory says the device is a host-cpu one, the profile that it is an aarch64
    (or x86_64) machine, the device's runner says otherwise: the record and table say so."""
    from edgekit.machine import host_arch

    other = "aarch64" if host_arch() != "aarch64" else "x86_64"
    profile = targets / "host-cpu.toml"
    profile.write_text(re.sub(r'(?m)^arch = .*$', f'arch = "{other}"', profile.read_text())
                       .replace('["fp32", "int8-static"]', '["fp32"]'))
    inventory = write_inventory(tmp_path / "fleet.toml", [
        {"name": "sim", "transport": "local", "root": str(tmp_path / "sim"), "target": "host-cpu"}])
    result = calibrate(tmp_path, targets, "--measure-on", "sim", "-i", inventory)
    assert result.code == 0, result.stderr
    place = json.loads((tmp_path / "out" / "calibration.json").read_text())["measured_on"]
    assert place["arch"] == host_arch() and not place["matches_target"]
    assert place["note"] == f"sim says it is {host_arch()}, but host-cpu is {other}"
    assert place["note"] in " ".join(result.stdout.split())
