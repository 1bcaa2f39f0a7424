"""`edgekit demo`: the whole chain on a simulated fleet, local folders and real sshd servers."""

import pytest

from conftest import run_edgekit
from sshd import SSHD


def _check_demo(result, workdir, devices):
    assert result.code == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    html = workdir / "fleet.html"
    assert str(html) in out and html.is_file()
    page = html.read_text()
    for name in devices:
        assert name in out and name in page
    assert "halted" in out and "drop_vs_fp32" in out + result.stderr  # the careless variant was stopped
    assert "stopped as it should be" in out
    for target in ("host-cpu", "x86-gateway"):
        assert (workdir / "calibrated" / target / "calibration.json").is_file()
        assert (workdir / "dist" / f"digits-1.0.0-{target}.edgekit").is_file()
    report = run_edgekit("report", "--store", workdir / "store.db", "--json")
    assert report.code == 0, report.stderr
    running = {r["device"]: r["version"] for r in report.json()["rows"] if r["current"]}
    assert running == {name: "1.0.0" for name in devices}  # the careless 1.1.0 runs nowhere


def test_demo_on_local_folders(tmp_path):
    workdir = tmp_path / "demo"
    result = run_edgekit("demo", "--workdir", workdir, "--devices", "4")
    _check_demo(result, workdir, [f"edge-0{i}" for i in range(1, 5)])


@pytest.mark.skipif(not SSHD.exists(), reason="openssh-server is not installed (make sshd)")
def test_demo_over_real_sshd(tmp_path):
    workdir = tmp_path / "demo"
    result = run_edgekit("demo", "--ssh", "--workdir", workdir, "--devices", "3")
    _check_demo(result, workdir, ["edge-01", "edge-02", "edge-03"])
    assert "127.0.0.1:" in result.stdout


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    result = run_edgekit("demo", "--workdir", tmp_path)
    assert result.code == 2 and "was not made by edgekit demo" in result.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
