"""A push's first question answered by the device's shell (edgekit.fleet.probe) on real OpenSSH
devices: the same answer as the runner's status, the same push records, and the runner asked
whenever the shell's answer is not whole or not this host's."""

from __future__ import annotations

import json
import sys

import pytest

from helpers.devices import logging_python, runner_commands
from edgekit.bundle import read_bundle, write_tar
from edgekit.errors import RemoteCommandError
from edgekit.fleet.probe import _free_bytes, _runner_hash, probe_status
from edgekit.fleet.protocol import device_status, installed_meta, model_state, shipped_runner
from edgekit.fleet.push import install_bundle
from edgekit.transport import connect

pytestmark = pytest.mark.ssh


@pytest.fixture
def device(tmp_path, sshd_fleet, monkeypatch):
    """(the device, its server, the runner commands log) of one sshd device whose Python logs them."""
    python, log = logging_python(tmp_path, sys.executable)
    fleet = sshd_fleet(1, pythons=[python])
    for key, value in fleet.env.items():
        monkeypatch.setenv(key, value)
    return fleet.device(0), fleet.servers[0], log


def probe(t, d, built):
    return probe_status(t, d, read_bundle(built.path), shipped_runner()[1], timeout=60)


def same_answers(t, d, built) -> dict:
    """Assert the shell's answer is the runner status's, as a push reads it; returns the shell's."""
    bundle = read_bundle(built.path)
    probed, status = probe(t, d, built), device_status(t, d)
    assert probed is not None
    assert probed["runner_sha256"] == status["runner_sha256"] == shipped_runner()[1]
    assert model_state(probed, bundle.name) == model_state(status, bundle.name)
    assert installed_meta(t, d, bundle, probed) == installed_meta(t, d, bundle, status)
    assert abs(probed["disk_free_bytes"] - status["disk_free_bytes"]) < 0.05 * status["disk_free_bytes"]
    return probed


def test_the_shell_answers_as_the_runners_status_does(device, bundles):
    d, server, _ = device
    with connect(d.endpoint) as t:
        fresh = probe(t, d, bundles["1.0.0"])
        assert (fresh["runner_sha256"], fresh["models"]["digits"]["current"]) == (None, None)
        assert fresh["disk_free_bytes"] > 0  # the root does not exist yet: its nearest folder's
        for version in ("1.0.0", "1.0.1"):
            install_bundle(t, d, read_bundle(bundles[version].path), activate=True)
        for built in (bundles["1.0.0"], bundles["1.0.1"], bundles["1.0.1-signed"]):  # the last: same version, other sha
            same_answers(t, d, built)
        assert model_state(probe(t, d, bundles["1.0.1"]), "digits") == {"current": "1.0.1", "previous": "1.0.0"}
        state = server.root / "state" / "digits.json"
        stored = json.loads(state.read_text())
        # a state file the link disagrees with, one with a switch that did not happen: the link wins
        for changed in ({**stored, "current": "1.0.0", "previous": "1.0.1"},
                        {**stored, "pending": {"current": "1.0.0", "previous": "1.0.1", "action": "rollback"}}):
            state.write_text(json.dumps(changed))
            assert model_state(same_answers(t, d, bundles["1.0.1"]), "digits")["current"] == "1.0.1"
        state.unlink()  # no state file: the link, with no previous version
        assert model_state(same_answers(t, d, bundles["1.0.1"]), "digits") == {"current": "1.0.1", "previous": None}


def without_seconds(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "seconds"}


def test_a_re_push_answered_by_the_shell_records_what_the_runner_would_and_starts_no_runner(device, bundles):
    d, _, log = device
    bundle = read_bundle(bundles["1.0.0"].path)
    with connect(d.endpoint) as t:
        first = install_bundle(t, d, bundle, activate=True)
        assert (first["runner_updated"], first["already_installed"]) == (True, False)
        started = len(runner_commands(log))
        by_shell = install_bundle(t, d, bundle, activate=True)
        assert runner_commands(log)[started:] == ["activate"]  # no status: the shell answered
        by_runner = install_bundle(t, d, bundle, activate=True, status=device_status(t, d))
    assert without_seconds(by_shell) == without_seconds(by_runner)
    assert (by_shell["already_installed"], by_shell["runner_updated"], by_shell["before"]) == \
        (True, False, {"current": "1.0.0", "previous": None})


def change_module(root):
    module = root / "bin" / "edgekit_device" / "install.py"
    module.write_bytes(module.read_bytes() + b"# changed on the device\n")


def pending_runner(root):
    package = {p.name: p.read_bytes() for p in (root / "bin" / "edgekit_device").glob("*.py")}
    write_tar(root / "bin" / "edgekit_device.tar", package, mtime=0)


def broken_state(root):
    (root / "state" / "digits.json").write_text('{"current": "1.0.0", ')


def huge_state(root):
    path = root / "state" / "digits.json"
    state = json.loads(path.read_text())
    path.write_text(json.dumps({**state, "history": state["history"] * 2000}))


def broken_meta(root):
    (root / "bundles" / "digits" / "1.0.0" / ".bundle.json").write_text("not json")


def not_utf8_state(root):
    path = root / "state" / "digits.json"
    path.write_bytes(path.read_bytes().replace(b'"history"', b'"hist\xffory"'))


@pytest.mark.parametrize("change", [change_module, pending_runner, broken_state, huge_state, broken_meta,
                                    not_utf8_state])
def test_the_runner_is_asked_when_the_shells_answer_is_not_whole_or_not_this_hosts(device, bundles, change):
    d, server, log = device
    bundle = read_bundle(bundles["1.0.0"].path)
    with connect(d.endpoint) as t:
        install_bundle(t, d, bundle, activate=True)
        change(server.root)
        assert probe(t, d, bundles["1.0.0"]) is None
        started = len(runner_commands(log))
        if change is broken_meta:  # the runner's install says what is wrong with it
            with pytest.raises(RemoteCommandError, match="is not valid JSON"):
                install_bundle(t, d, bundle)
        else:
            assert install_bundle(t, d, bundle)["runner_updated"] is (change is change_module)
    assert runner_commands(log)[started] == "status"


def test_an_unsigned_install_is_not_taken_as_there_once_the_device_trusts_keys(device, bundles, keys):
    d, server, _ = device
    bundle = read_bundle(bundles["1.0.0"].path)
    with connect(d.endpoint) as t:
        install_bundle(t, d, bundle)
        (server.root / "trust").mkdir(exist_ok=True)
        (server.root / "trust" / "fleet.pub").write_bytes(keys["trusted"].public.read_bytes())
        probed = probe(t, d, bundles["1.0.0"])
        assert probed["models"]["digits"]["bundles"]["1.0.0"]["signer"] is None
        assert installed_meta(t, d, bundle, probed) is None  # sent again: the runner checks the signature now
        with pytest.raises(RemoteCommandError, match="not signed"):
            install_bundle(t, d, bundle)
        signed = read_bundle(bundles["1.0.1-signed"].path)
        install_bundle(t, d, signed)
        meta = server.root / "bundles" / "digits" / "1.0.1" / ".bundle.json"
        assert json.loads(meta.read_text())["signer"] is not None
        # a meta rewritten to look like an install from before the key was trusted is not believed either
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "signer": None}))
        assert installed_meta(t, d, signed, probe(t, d, bundles["1.0.1-signed"])) is None


def test_sha256sum_lines_that_are_not_the_runners_files_give_no_hash():
    line = "a" * 64
    assert _runner_hash(("1", f"{line}  edgekit_runner.py\n{line}  edgekit_device/x.py")) is not None
    assert _runner_hash(("1", f"\\{line}  edgekit_runner.py")) is None  # sha256sum escaped an odd name
    assert _runner_hash(("1", f"{line}  edgekit_device/x.py")) is None  # no launcher
    assert _runner_hash(("1", f"{line}  /etc/passwd\n{line}  edgekit_runner.py")) is None
    assert _runner_hash(("x", "")) is None


def test_free_space_is_read_from_df_whatever_the_file_system_is_called():
    df = "Filesystem 1024-blocks Used Available Capacity Mounted on\nmy disk 1000 400 600 40% /mnt/a b\n"
    assert _free_bytes(("1", df)) == 600 * 1024
    assert _free_bytes(("1", "df: cannot read\n")) is None
    assert _free_bytes(("x", df)) is None
