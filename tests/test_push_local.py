"""The acceptance path on the simulated fleet (fleet/local.toml): package, push, activate,
roll back, evaluate on the device; and a fleet that goes on when one device fails."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli import assert_clean_error, run_edgekit
from helpers.devices import REPORT_FIELDS, local_device, runner
from helpers.fleet import write_inventory
from helpers.paths import EVAL, EXAMPLE_ONNX, REPO


@pytest.fixture
def fleet(tmp_path):
    """fleet/local.toml as shipped, copied so that its relative roots land in tmp_path/.sim/."""
    (tmp_path / "fleet").mkdir()
    inventory = tmp_path / "fleet" / "local.toml"
    shutil.copy(REPO / "fleet" / "local.toml", inventory)
    from edgekit.fleet.inventory import load_inventory

    devices = load_inventory(inventory).devices
    assert len(devices) >= 2 and all(Path(d.root).is_relative_to(tmp_path / ".sim") for d in devices)
    return inventory, devices


def package(out: Path, version: str) -> Path:
    result = run_edgekit("package", EXAMPLE_ONNX, "--target", "host-cpu", "--eval", EVAL, "--name", "digits",
                         "--version", version, "-o", out)
    assert result.code == 0, result.stderr
    return Path(result.stdout.splitlines()[0])


def states(result) -> dict:
    return {d["device"]: (d["status"], d.get("current"), d.get("previous")) for d in result.json()["devices"]}


def test_push_activate_upgrade_rollback_and_status(tmp_path, fleet):
    inventory, devices = fleet
    names = [d.name for d in devices]
    v100, v101 = package(tmp_path / "dist", "1.0.0"), package(tmp_path / "dist", "1.0.1")

    first = run_edgekit("push", v100, "--inventory", inventory, "--activate", "--json")
    assert first.code == 0, first.stderr
    assert states(first) == {n: ("ok", "1.0.0", None) for n in names}
    assert all(d["runner_updated"] for d in first.json()["devices"])

    second = run_edgekit("push", v101, "--inventory", inventory, "--activate", "--json")
    assert states(second) == {n: ("ok", "1.0.1", "1.0.0") for n in names}
    assert not any(d["runner_updated"] for d in second.json()["devices"])  # same runner hash: left alone

    back = run_edgekit("rollback", "digits", "--inventory", inventory, "--json")
    assert back.code == 0, back.stderr
    assert states(back) == {n: ("ok", "1.0.0", "1.0.1") for n in names}
    for device in devices:  # the device's own word, not the host's
        code, status = runner(Path(device.root), "status")
        assert code == 0 and status["models"]["digits"]["current"] == "1.0.0"
        assert (Path(device.root) / "current" / "digits").resolve().name == "1.0.0"
        assert list((Path(device.root) / "incoming").iterdir()) == []

    table = run_edgekit("fleet", "status", "--inventory", inventory)
    assert table.code == 0 and table.stdout.count("digits 1.0.0 (prev 1.0.1)") == len(devices), table.stdout
    twice = run_edgekit("rollback", "digits", "--inventory", inventory, "--device", names[0])
    assert twice.code != 0 and "rolled back to 1.0.0 already" in twice.stdout, (twice.stdout, twice.stderr)
    assert "Traceback" not in twice.stderr
    again = run_edgekit("push", v100, "--inventory", inventory, "--device", names[0], "--json")
    assert again.json()["devices"][0]["already_installed"] is True


def test_on_device_accuracy_matches_the_host_and_the_report_is_complete(tmp_path, fleet):
    inventory, devices = fleet
    bundle = package(tmp_path / "dist", "1.0.0")
    assert run_edgekit("push", bundle, "--inventory", inventory, "--device", devices[0].name, "--activate").code == 0
    from edgekit.fleet.push import remote_evaluate
    from edgekit.transport import connect

    with connect(devices[0].endpoint) as transport:
        result = remote_evaluate(transport, devices[0], "digits")
    report = result["report"]
    for section, fields in REPORT_FIELDS.items():
        part = report[section] if section else report
        assert [f for f in fields if f not in part] == [], section
    assert report["schema"] == 1 and report["status"] == "ok" and report["device"]["name"] == devices[0].name
    assert report["bundle"]["sha256"] == hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert set(report["metrics"]["latency_ms"]) >= {"p50", "p90", "p99", "mean", "n"}
    assert report["metrics"]["peak_rss_mb"] > 10 and report["metrics"]["load_ms"] > 0
    assert Path(result["report_path"]).is_file()
    assert Path(result["report_path"]).parent == Path(devices[0].root) / "reports" / "digits" / "1.0.0"

    host = run_edgekit("evaluate", EXAMPLE_ONNX, "--data", EVAL, "--json")
    assert host.code == 0, host.stderr
    assert abs(report["metrics"]["accuracy"] - host.json()["accuracy"]) <= 0.005
    assert report["metrics"]["accuracy_expected"] == report["metrics"]["accuracy"]  # same subset, same code


def test_a_failing_device_does_not_stop_the_fleet(tmp_path, fleet, bundles):
    inventory, devices = fleet
    text = inventory.read_text() + ('\n[[device]]\nname = "broken"\nroot = "../.sim/local/broken"\n'
                                    'python = "/nonexistent/python3"\n'
                                    '\n[[device]]\nname = "other-class"\nroot = "../.sim/local/other"\n'
                                    'target = "raspberry-pi-4"\n')
    inventory.write_text(text)
    result = run_edgekit("push", bundles["1.0.0"].path, "--inventory", inventory, "--activate", "--json")
    assert result.code == 1
    by_name = {d["device"]: d for d in result.json()["devices"]}
    assert by_name["broken"]["status"] == "failed" and "/nonexistent/python3" in by_name["broken"]["error"]
    assert by_name["other-class"]["status"] == "skipped"
    assert [by_name[d.name]["status"] for d in devices] == ["ok"] * len(devices)


def test_a_cut_upload_resumes(tmp_path, bundles):
    from edgekit.bundle import read_bundle
    from edgekit.errors import RemoteCommandError
    from edgekit.fleet.push import install_bundle
    from edgekit.transport import connect

    device = local_device(tmp_path / "dev")
    bundle = read_bundle(bundles["1.0.0"].path)
    data = bundle.path.read_bytes()
    part = tmp_path / "dev" / "incoming" / f"digits-1.0.0-host-cpu-{bundle.sha256[:12]}.edgekit.part"
    part.parent.mkdir(parents=True)
    with connect(device.endpoint) as transport:
        # A prefix with wrong bytes proves that push goes on from it rather than starting over;
        # the device's sha256 check catches it, drops the upload, and the next push succeeds.
        part.write_bytes(b"\0" * 5000)
        with pytest.raises(RemoteCommandError, match="corrupted in transfer"):
            install_bundle(transport, device, bundle)
        assert not part.exists()
        part.write_bytes(data[:5000])  # what a dropped connection leaves
        detail = install_bundle(transport, device, bundle, activate=True)
    assert detail["current"] == "1.0.0" and not part.exists()


def test_a_bundle_for_no_selected_device_is_bad_input(tmp_path, fleet, bundles):
    inventory, _ = fleet
    inventory.write_text(inventory.read_text().replace('target = "host-cpu"', 'target = "raspberry-pi-4"'))
    assert_clean_error(run_edgekit("push", bundles["1.0.0"].path, "--inventory", inventory),
                       "no selected device has target host-cpu")


def test_keys_trust_makes_devices_refuse_unsigned_bundles(tmp_path, fleet, bundles, keys):
    inventory, devices = fleet
    trusted = run_edgekit("keys", "trust", keys["trusted"].public, "--inventory", inventory, "--json")
    assert trusted.code == 0, trusted.stderr
    table = run_edgekit("keys", "trust", keys["trusted"].public, "--inventory", inventory)  # the table path too
    assert table.code == 0 and "Traceback" not in table.stderr, table.stderr
    unsigned = run_edgekit("push", bundles["1.0.0"].path, "--inventory", inventory, "--json")
    assert unsigned.code == 1 and all("not signed" in d["error"] for d in unsigned.json()["devices"])
    signed = run_edgekit("push", bundles["1.0.0-signed"].path, "--inventory", inventory, "--activate", "--json")
    assert signed.code == 0 and {d["signer"] for d in signed.json()["devices"]} == {"edgekit-bundle"}


@pytest.mark.parametrize("args, needle", [
    (("push", "/nonexistent/x.edgekit", "--inventory", "fleet/local.toml"), "bundle /nonexistent/x.edgekit: not found"),
    (("rollback", "digits", "--inventory", "/nonexistent/fleet.toml"), "/nonexistent/fleet.toml: file not found"),
    (("fleet", "status", "--inventory", "fleet/local.toml", "--device", "nope"), "--device nope: no such device"),
])
def test_fleet_commands_report_bad_input_in_one_line(args, needle):
    assert_clean_error(run_edgekit(*args), needle)


def test_status_names_a_bundle_installed_but_not_active(tmp_path, fleet, bundles):
    # a push without --activate (or a first rollout put back) leaves no version active: the
    # status said 'digits - (prev -)'
    inventory, devices = fleet
    env = {"EDGEKIT_STORE": str(tmp_path / "store.db")}
    pushed = run_edgekit("push", bundles["1.0.0"].path, "--inventory", inventory, "--device", devices[0].name, env=env)
    assert pushed.code == 0, pushed.stderr
    status = run_edgekit("fleet", "status", "--inventory", inventory, "--device", devices[0].name, env=env)
    assert status.code == 0, status.stderr
    assert "digits: nothing active (1.0.0 installed)" in status.stdout and "(prev -)" not in status.stdout


def test_status_names_an_active_version_whose_folder_is_gone(tmp_path, fleet, bundles):
    # the link current/digits led nowhere and the status said 'digits 1.0.0 (prev -)', all well
    inventory, devices = fleet
    env = {"EDGEKIT_STORE": str(tmp_path / "store.db")}
    one = ("--inventory", inventory, "--device", devices[0].name)
    pushed = run_edgekit("push", bundles["1.0.0"].path, *one, "--activate", env=env)
    assert pushed.code == 0, pushed.stderr
    shutil.rmtree(Path(devices[0].root) / "bundles" / "digits" / "1.0.0")
    status = run_edgekit("fleet", "status", *one, env=env)
    assert status.code == 0, status.stderr
    assert "digits 1.0.0 (not installed: its folder is gone; run edgekit fleet repair)" in status.stdout, status.stdout


def test_keys_trust_refuses_a_file_that_is_no_public_key(tmp_path, fleet):
    # it copied it to every device ('ok'); a device whose trust/ holds no key it can read takes
    # unsigned bundles, so the fleet was as open as before while the table said it was locked
    inventory, devices = fleet
    junk = tmp_path / "typo.pub"
    junk.write_text("ssh-ed25519 this-is-not-base64 me@host\n")
    assert_clean_error(run_edgekit("keys", "trust", junk, "--inventory", inventory),
                       "typo.pub: not an OpenSSH public key", "edgekit keys init")
    assert not any((Path(d.root) / "trust").exists() for d in devices)


def test_a_bad_report_file_removed_from_the_device_needs_no_look_after_the_next_collect(tmp_path, fleet):
    # it stayed under "needs a look" for good: only `fleet forget` (which drops every report) removed it
    inventory, devices = fleet
    env = {"EDGEKIT_STORE": str(tmp_path / "store.db")}
    one = ("--inventory", inventory, "--device", devices[0].name)
    folder = Path(devices[0].root) / "reports" / "digits" / "1.0.0"
    folder.mkdir(parents=True)
    (folder / "20260101T000000Z-abcdef.json").write_text('{"schema": 1,')

    def bad_reports() -> list:
        return run_edgekit("report", "--format", "json", env=env).json()["health"]["bad_reports"]

    assert run_edgekit("collect", *one, env=env).code == 1
    assert [b["source"] for b in bad_reports()] == ["reports/digits/1.0.0/20260101T000000Z-abcdef.json"]
    (folder / "20260101T000000Z-abcdef.json").unlink()
    collected = run_edgekit("collect", *one, env=env)
    assert collected.code == 0, collected.stdout + collected.stderr
    assert bad_reports() == []


def test_a_device_whose_trust_holds_no_readable_key_refuses_bundles(tmp_path, fleet, bundles):
    # it trusted no key, so it took unsigned bundles: a device someone meant to lock stayed open
    inventory, devices = fleet
    trust = Path(devices[0].root) / "trust"
    trust.mkdir(parents=True)
    (trust / "ops.pub").write_text("-----BEGIN PUBLIC KEY-----\nMIIB...\n")  # a PEM key, not OpenSSH's format
    pushed = run_edgekit("push", bundles["1.0.0"].path, "--inventory", inventory, "--device", devices[0].name,
                         "--json", env={"EDGEKIT_STORE": str(tmp_path / "store.db")})
    assert pushed.code == 1, pushed.stdout + pushed.stderr
    assert "trust/ops.pub holds no public key this device can read" in pushed.json()["devices"][0]["error"]
    assert not (Path(devices[0].root) / "current" / "digits").exists()


def test_a_trust_file_that_cannot_be_read_is_named_and_the_good_keys_still_count(tmp_path):
    from edgekit.device.trust import trusted_keys, unreadable_trust

    trust = tmp_path / "trust"
    (trust / "folder.pub").mkdir(parents=True)  # open() fails on it: it was a traceback
    (trust / "latin.pub").write_bytes(b"\xff\xfe not utf-8\n")
    (trust / "ops.pub").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheTestOnly ops@host\n")
    assert trusted_keys(str(trust)) == [("ops", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheTestOnly")]
    assert unreadable_trust(str(trust)) == ["folder.pub", "latin.pub"]


def test_asking_a_local_device_makes_nothing_and_the_first_push_makes_its_root(tmp_path, bundles):
    # a mistyped root (or an Ansible host without edgekit_root) became an empty folder on status
    root = tmp_path / "not" / "there"
    inventory = write_inventory(tmp_path / "fleet.toml", [{"name": "new", "transport": "local", "target": "host-cpu",
                                                            "root": str(root)}])
    env = {"EDGEKIT_STORE": str(tmp_path / "s.db")}
    status = run_edgekit("fleet", "status", "--inventory", inventory, "--json", env=env)
    assert status.code == 0, status.stdout + status.stderr
    assert "no edgekit runner installed yet" in status.stdout
    assert not (tmp_path / "not").exists()
    pushed = run_edgekit("push", bundles["1.0.0"].path, "--inventory", inventory, "--json", env=env)
    assert pushed.code == 0, pushed.stdout + pushed.stderr
    assert (root / "bundles" / "digits" / "1.0.0").is_dir()


def test_a_bundle_installed_and_then_activated_leaves_no_repair_behind(tmp_path, fleet, bundles):
    # no state file before the first activation is no damage: it was reported as one ('is
    # missing: rebuilt') and the history began with a 'rebuilt' entry of version None
    import json as jsonlib

    inventory, devices = fleet
    one = ["--inventory", inventory, "--device", devices[0].name, "--json"]
    env = {"EDGEKIT_STORE": str(tmp_path / "store.db")}
    assert run_edgekit("push", bundles["1.0.0"].path, *one, env=env).code == 0
    status = run_edgekit("fleet", "status", *one, env=env)
    assert status.code == 0 and not status.json()["devices"][0].get("warnings"), status.stdout
    assert run_edgekit("push", bundles["1.0.0"].path, "--activate", *one, env=env).code == 0
    history = jsonlib.loads((Path(devices[0].root) / "state" / "digits.json").read_text())["history"]
    assert [h["action"] for h in history] == ["activate"], history


def test_status_says_when_a_devices_python_cannot_evaluate(tmp_path, bundles):
    # a python without numpy was 'ok' in fleet status, and the canary then failed on it
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    inventory = write_inventory(tmp_path / "fleet.toml", [
        {"name": "bare", "transport": "local", "target": "host-cpu", "root": str(tmp_path / "b"),
         "python": str(bare / "bin" / "python")},
        {"name": "full", "transport": "local", "target": "host-cpu", "root": str(tmp_path / "f"),
         "python": sys.executable}])
    env = {"EDGEKIT_STORE": str(tmp_path / "s.db")}
    assert run_edgekit("push", bundles["1.0.0"].path, "--inventory", inventory, env=env).code == 0
    table = run_edgekit("fleet", "status", "--inventory", inventory, env=env)
    assert table.code == 0, table.stdout + table.stderr
    assert "bare: its python cannot import numpy and a runtime" in " ".join(table.stdout.split()), table.stdout
    assert "full:" not in table.stdout
    lacks = {d["device"]: d["cannot_evaluate"] for d in
             run_edgekit("fleet", "status", "--inventory", inventory, "--json", env=env).json()["devices"]}
    assert lacks["full"] is None and lacks["bare"].startswith("numpy and a runtime")


def test_status_of_a_new_device_without_its_python_says_so(tmp_path):
    # a device never pushed to was 'ok, reachable, nothing installed' whatever its `python`; the
    # first push then failed on it
    inventory = write_inventory(tmp_path / "fleet.toml", [{"name": "new", "transport": "local", "target": "host-cpu",
                                                            "root": str(tmp_path / "new"),
                                                            "python": "/nonexistent/python3"}])
    status = run_edgekit("fleet", "status", "--inventory", inventory, env={"EDGEKIT_STORE": str(tmp_path / "s.db")})
    assert status.code == 1 and "Traceback" not in status.stderr
    assert "/nonexistent/python3: command not found on the device" in status.stdout, status.stdout
