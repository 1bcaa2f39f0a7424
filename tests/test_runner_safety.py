"""The runner refuses every broken or hostile bundle and leaves the device as it was:
current/ and state/ unchanged, bundles/ without traces, incoming/ clean."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile

import pytest

from helpers.bundles import regular, tar_members, write_raw_tar
from helpers.devices import install, install_runner, runner, snapshot, upload
from edgekit.bundle import read_bundle, write_tar
from edgekit.device.untar import PAUSE_ENV
from edgekit.device.trust import sha256_file

FORBIDDEN = ("torch", "paramiko", "typer", "pydantic", "rich", "onnx")


def _active(root, built):
    code, reply = install(root, built)
    assert code == 0, reply
    code, reply = runner(root, "activate", "digits", built.manifest["version"])
    assert code == 0 and reply["current"] == built.manifest["version"], reply


@pytest.fixture
def device(tmp_path, bundles):
    """A device running digits 1.0.0 (unsigned bundles; it trusts no key)."""
    root = tmp_path / "dev"
    install_runner(root)
    _active(root, bundles["1.0.0"])
    return root


@pytest.fixture
def signed_device(tmp_path, bundles, keys):
    """A device that trusts one key, running the signed digits 1.0.0."""
    root = tmp_path / "signed-dev"
    install_runner(root)
    (root / "trust").mkdir(parents=True, exist_ok=True)
    shutil.copy(keys["trusted"].public, root / "trust" / "release.pub")
    _active(root, bundles["1.0.0-signed"])
    return root


def install_file(root, path, *extra, **kw):
    """Upload `path` with its own size and sha256 (a bundle broken at the source, not in transit)."""
    return runner(root, "install", upload(root, path), "--sha256", sha256_file(str(path)),
                  "--size", str(path.stat().st_size), *extra, **kw)


def by_manifest(path, checked: str) -> tuple:
    """The install's options for a `checked` upload: "whole" (the file's sha256 alone, as an
    older host gives) or "manifest" (the manifest's sha256 too, as push gives: the whole file
    is then not hashed unless something is refused)."""
    return ("--manifest-sha256", read_bundle(path).manifest_sha256) if checked == "manifest" else ()


CHECKED = pytest.mark.parametrize("checked", ["whole", "manifest"])


def assert_refused(root, before, code, reply, *needles, kind=None):
    assert code == 2 and reply["ok"] is False, reply
    for needle in needles:
        assert needle in reply["error"], reply["error"]
    if kind:
        assert reply["kind"] == kind, reply
    after = snapshot(root)
    assert after == before, "the device changed"
    assert after["incoming"] == [] and after["current"] == {"digits": "../bundles/digits/1.0.0"}
    code, status = runner(root, "status")
    assert code == 0 and status["models"]["digits"]["current"] == "1.0.0"
    assert status["models"]["digits"]["installed"] == ["1.0.0"]


def rebuilt(tmp_path, built, change):
    members = tar_members(built.path)
    change(members)
    dest = tmp_path / "broken.edgekit"
    write_tar(dest, members, mtime=0)
    return dest


@CHECKED
def test_a_byte_flipped_in_the_model_is_refused(device, bundles, tmp_path, checked):
    def flip(members):
        model = bytearray(members["model.onnx"])
        model[len(model) // 2] ^= 0x01
        members["model.onnx"] = bytes(model)

    before = snapshot(device)
    path = rebuilt(tmp_path, bundles["1.0.1"], flip)
    code, reply = install_file(device, path, *by_manifest(path, checked))
    assert_refused(device, before, code, reply, "sha256 mismatch for model.onnx in digits-1.0.1", kind="integrity")


def test_a_file_missing_from_the_manifest_is_refused(device, bundles, tmp_path):
    before = snapshot(device)
    path = rebuilt(tmp_path, bundles["1.0.1"], lambda m: m.update({"extra.bin": b"not in the manifest"}))
    code, reply = install_file(device, path)
    assert_refused(device, before, code, reply, "extra.bin in digits-1.0.1 is missing from the manifest")


def test_a_listed_file_absent_from_the_bundle_is_refused(device, bundles, tmp_path):
    before = snapshot(device)
    code, reply = install_file(device, rebuilt(tmp_path, bundles["1.0.1"], lambda m: m.pop("eval.npz")))
    assert_refused(device, before, code, reply, "eval.npz is listed in the manifest of digits-1.0.1 but not in the bundle")


def _hostile(kind: str, tmp_path):
    if kind == "dotdot":
        return regular("../../escaped.txt", b"x"), "escapes the bundle"
    if kind == "absolute":
        return regular(str(tmp_path / "absolute.txt"), b"x"), "absolute"
    info = tarfile.TarInfo("runner/shortcut")
    if kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        return (info, None), "is a symlink"
    if kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, "model.onnx"
        return (info, None), "is a hard link"
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return (info, None), "is a device or special file"


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "device"])
def test_hostile_members_are_refused_and_nothing_lands_outside(device, bundles, tmp_path, kind):
    member, needle = _hostile(kind, tmp_path)
    good = [regular(name, data) for name, data in sorted(tar_members(bundles["1.0.1"].path).items())]
    path = write_raw_tar(tmp_path / f"{kind}.edgekit", good[:2] + [member] + good[2:])
    before = snapshot(device)
    code, reply = install_file(device, path)
    assert_refused(device, before, code, reply, needle)
    assert not (tmp_path / "escaped.txt").exists() and not (device.parent / "escaped.txt").exists()
    assert not (tmp_path / "absolute.txt").exists()


def test_a_truncated_upload_is_refused_and_removed(device, bundles):
    built = bundles["1.0.1"]
    data = built.path.read_bytes()
    before = snapshot(device)
    code, reply = runner(device, "install", upload(device, built.path, data[: len(data) // 2]),
                         "--sha256", built.sha256, "--size", str(len(data)))
    assert_refused(device, before, code, reply, "truncated", kind="integrity")


@CHECKED
@pytest.mark.parametrize("where", ["header", "model", "manifest"])
def test_an_upload_corrupted_in_transfer_is_refused(device, bundles, checked, where):
    built = bundles["1.0.1"]
    data = bytearray(built.path.read_bytes())
    with tarfile.open(built.path) as tar:
        member = tar.getmember({"header": "eval.npz", "model": "model.onnx", "manifest": "manifest.json"}[where])
    data[member.offset + 100 if where == "header" else member.offset_data + member.size // 2] ^= 0xFF
    before = snapshot(device)
    code, reply = runner(device, "install", upload(device, built.path, bytes(data)),
                         "--sha256", built.sha256, "--size", str(len(data)), *by_manifest(built.path, checked))
    assert_refused(device, before, code, reply, "corrupted in transfer", kind="integrity")


def test_an_install_checked_by_its_manifest_records_the_bundle_as_the_host_names_it(device, bundles):
    built = bundles["1.0.1"]
    code, reply = install_file(device, built.path, *by_manifest(built.path, "manifest"))
    assert code == 0 and reply["sha256"] == built.sha256 and reply["installed"], reply
    code, status = runner(device, "status")
    assert status["models"]["digits"]["bundles"]["1.0.1"]["sha256"] == built.sha256


def test_a_manifest_hash_that_is_not_the_bundles_is_refused(device, bundles):
    built = bundles["1.0.1"]
    other = read_bundle(bundles["1.0.0"].path).manifest_sha256
    before = snapshot(device)
    code, reply = install_file(device, built.path, "--manifest-sha256", other)
    assert_refused(device, before, code, reply, "manifest.json is not the one the host gave", kind="integrity")


def test_a_device_that_trusts_a_key_refuses_an_unsigned_bundle(signed_device, bundles):
    before = snapshot(signed_device)
    code, reply = install(signed_device, bundles["1.0.1"])
    assert_refused(signed_device, before, code, reply, "not signed", kind="integrity")


def test_a_bundle_signed_by_an_untrusted_key_is_refused(signed_device, bundles):
    before = snapshot(signed_device)
    code, reply = install(signed_device, bundles["1.0.1-other"])
    assert_refused(signed_device, before, code, reply, "not made by a key in trust/", kind="integrity")


def test_a_signature_of_another_manifest_is_refused(signed_device, bundles, tmp_path):
    old_sig = tar_members(bundles["1.0.0-signed"].path)["manifest.sig"]
    before = snapshot(signed_device)
    path = rebuilt(tmp_path, bundles["1.0.1-signed"], lambda m: m.update({"manifest.sig": old_sig}))
    code, reply = install_file(signed_device, path)
    assert_refused(signed_device, before, code, reply, "signature does not match", kind="integrity")


def test_a_correctly_signed_bundle_installs(signed_device, bundles):
    code, reply = install(signed_device, bundles["1.0.1-signed"])
    assert code == 0 and reply["signer"] == "release" and reply["installed"], reply


def test_a_runner_killed_during_extraction_leaves_the_device_as_it_was(device, bundles):
    built = bundles["1.0.1"]
    before = snapshot(device)
    proc = subprocess.Popen([sys.executable, str(device / "bin" / "edgekit_runner.py"), "install",
                             upload(device, built.path), "--sha256", built.sha256, "--size", str(built.path.stat().st_size)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, PAUSE_ENV: "60"})
    try:
        assert proc.stderr.readline().strip() == "edgekit-runner: paused in extraction"
        staging = [p for p in (device / "bundles").iterdir() if p.name.startswith(".staging-")]
        assert len(staging) == 1 and any((staging[0] / "files").rglob("*"))  # it was mid-way
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    after = snapshot(device)
    assert after["current"] == before["current"] and after["state"] == before["state"]
    assert after["incoming"] == []  # the checked upload had moved into staging
    code, status = runner(device, "status")
    assert status["models"]["digits"] == {**status["models"]["digits"], "current": "1.0.0", "installed": ["1.0.0"]}
    # The retry succeeds and sweeps what the killed runner left.
    code, reply = install(device, built)
    assert code == 0 and reply["installed"], reply
    assert not [p for p in (device / "bundles").iterdir() if p.name.startswith(".")]
    code, reply = runner(device, "activate", "digits", "1.0.1")
    assert code == 0 and (reply["current"], reply["previous"]) == ("1.0.1", "1.0.0")


def test_activating_a_version_that_is_not_installed_changes_nothing(device):
    before = snapshot(device)
    code, reply = runner(device, "activate", "digits", "9.9.9")
    assert_refused(device, before, code, reply, "digits 9.9.9 is not installed (installed: 1.0.0)")


def test_rollback_without_a_previous_version_fails_and_changes_nothing(device):
    before = snapshot(device)
    code, reply = runner(device, "rollback", "digits")
    assert code == 1 and "no previous version" in reply["error"]
    assert snapshot(device) == before


def test_a_second_rollback_does_not_run_the_version_the_first_left(device, bundles):
    """1.0.1 rolled back to 1.0.0: 1.0.1 is now the previous version, and a second rollback
    would quietly run it again. Refused, nothing changed; after an activation rollback works."""
    _active(device, bundles["1.0.1"])
    code, reply = runner(device, "rollback", "digits")
    assert code == 0 and (reply["current"], reply["previous"]) == ("1.0.0", "1.0.1"), reply
    before = snapshot(device)
    code, reply = runner(device, "rollback", "digits")
    assert code == 1 and "rolled back to 1.0.0 already" in reply["error"] and "push 1.0.1's bundle" in reply["error"]
    assert snapshot(device) == before
    code, reply = runner(device, "activate", "digits", "1.0.1")
    assert code == 0 and reply["current"] == "1.0.1", reply
    code, reply = runner(device, "rollback", "digits")
    assert code == 0 and reply["current"] == "1.0.0", reply


def test_install_takes_only_files_in_incoming(device, tmp_path, bundles):
    outside = tmp_path / "elsewhere.edgekit"
    shutil.copy(bundles["1.0.1"].path, outside)
    code, reply = runner(device, "install", str(outside))
    assert code == 2 and "install takes a file in" in reply["error"]
    assert outside.exists()  # never deleted: it was not ours


def test_unsafe_names_are_refused_before_touching_paths(device):
    before = snapshot(device)
    code, reply = runner(device, "activate", "../digits", "1.0.0")
    assert_refused(device, before, code, reply, "is not a plain name", kind="usage")


def test_a_name_with_a_trailing_newline_is_not_plain(device):
    before = snapshot(device)
    code, reply = runner(device, "activate", "digits\n", "1.0.0")
    assert_refused(device, before, code, reply, "is not a plain name", kind="usage")


def test_gc_keeps_the_newest_and_never_the_current_or_previous(tmp_path, bundles):
    root = tmp_path / "gc-dev"
    install_runner(root)
    for version in ("1.0.0", "1.0.1"):
        _active(root, bundles[version])
    code, reply = runner(root, "gc", "--keep", "0")
    assert code == 0 and reply["removed"] == []  # 1.0.1 is current, 1.0.0 previous
    code, reply = runner(root, "rollback", "digits")
    assert code == 0 and reply["current"] == "1.0.0"
    code, status = runner(root, "status")
    assert status["models"]["digits"]["installed"] == ["1.0.0", "1.0.1"]


def test_the_runner_installs_and_evaluates_with_only_numpy_and_onnxruntime(tmp_path, bundles, device_python):
    root = tmp_path / "venv-dev"
    install_runner(root)
    code, reply = install(root, bundles["1.0.0"], python=device_python)
    assert code == 0, reply
    code, reply = runner(root, "activate", "digits", "1.0.0", python=device_python)
    assert code == 0, reply
    # Run the launcher as python would, then list every module the process imported.
    wrapper = ("import json, runpy, sys\n"
               "sys.argv = [sys.argv[1], 'evaluate', 'digits']\n"
               "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
               "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
               "sys.stderr.write(json.dumps(sorted(sys.modules)))\n")
    for python in (device_python, sys.executable):  # the device's venv, and this one that has them all
        proc = subprocess.run([python, "-c", wrapper, str(root / "bin" / "edgekit_runner.py")],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)["report"]
        assert report["status"] == "ok" and report["metrics"]["accuracy"] > 0.9
        modules = json.loads(proc.stderr.strip().splitlines()[-1])
        assert "onnxruntime" in modules and "numpy" in modules and "edgekit_device.runner" in modules
        leaked = [m for m in modules if m.split(".")[0] in FORBIDDEN or m == "edgekit" or m.startswith("edgekit.")]
        assert leaked == [], leaked
    no_torch = subprocess.run([device_python, "-c", "import torch"], capture_output=True)
    assert no_torch.returncode != 0  # the venv really lacks the host's libraries
