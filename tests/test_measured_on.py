"""Where calibrate's timings were measured: this host's CPU, in the table and the record, and
a note when the target's devices are another CPU (their budgets were judged on the host)."""

from __future__ import annotations

import json
import os
import re

import pytest

from helpers.cli import run_edgekit
from helpers.paths import CALIB, EVAL, EXAMPLE_ONNX, REPO
from edgekit.machine import cpu_facts, host_arch, measured_on_host
from edgekit.targets import load_file, load_profile

ARCHES = ("aarch64", "armv7l", "x86_64")


def _profile(tmp_path, base: str, **fields):
    """`base`'s profile with two recipes (a short calibrate run) and these fields changed."""
    text = (REPO / "targets" / f"{base}.toml").read_text()
    fields = {"name": f'"{base}-short"', "precisions": '["fp32", "int8-dynamic"]', "per_channel": "false", **fields}
    for key, value in fields.items():
        text, count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        assert count == 1, key
    path = tmp_path / f"{base}-short.toml"
    path.write_text(text)
    return path


def test_a_profile_of_this_host_matches_and_needs_no_note(tmp_path):
    place = measured_on_host(load_file(_profile(tmp_path, "host-cpu", arch=f'"{host_arch()}"')))
    facts = cpu_facts()
    assert place == {"kind": "host", "cpu": facts["cpu"], "cores": os.cpu_count(), "arch": host_arch(),
                     "matches_target": True, "note": None}
    assert place["cpu"] and place["cpu"] != place["arch"]  # the model name, not the architecture


def test_another_arch_or_another_cpu_was_judged_on_the_host(tmp_path):
    other = next(a for a in ARCHES if a != host_arch())
    place = measured_on_host(load_file(_profile(tmp_path, "raspberry-pi-4", arch=f'"{other}"')))
    assert not place["matches_target"] and place["kind"] == "host"
    assert place["note"].startswith("latency and memory budgets judged on this host, not on raspberry-pi-4-short")
    assert f"({other}, Cortex-A72 x4" in place["note"]
    same_arch = measured_on_host(load_file(_profile(tmp_path, "x86-gateway", arch=f'"{host_arch()}"')))
    assert not same_arch["matches_target"] and "Atom x6425E" in same_arch["note"]  # same arch, another CPU


def test_the_shipped_host_profile_is_this_machine():
    profile = load_profile("host-cpu")
    assert profile.cpu == "host"
    if host_arch() == profile.arch:
        assert measured_on_host(profile)["matches_target"]


@pytest.mark.parametrize("base, arch, noted", [("host-cpu", None, False), ("raspberry-pi-4", "aarch64", True)])
def test_calibrate_says_where_it_measured_in_the_table_and_the_record(tmp_path, base, arch, noted):
    if arch == host_arch():
        pytest.skip("this host is the Raspberry Pi's architecture")
    target = _profile(tmp_path, base, arch=f'"{arch or host_arch()}"')
    out = tmp_path / "out"
    args = ("calibrate", EXAMPLE_ONNX, "--target", target, "--calibration", CALIB, "--eval", EVAL, "-o", out,
            "--runs", "5", "--eval-samples", "200", "--search", "off")
    shown = run_edgekit(*args, env={"COLUMNS": "80"})
    assert shown.code == 0, shown.stderr
    lines = [ln.strip() for ln in shown.stdout.splitlines()]
    cpu, cores = cpu_facts()["cpu"], os.cpu_count()
    assert f"timings measured on this host: {cpu}, {cores} cores ({host_arch()})" in " ".join(lines)
    assert ("latency and memory budgets judged on this host, not on" in " ".join(lines)) == noted
    place = json.loads((out / "calibration.json").read_text())["measured_on"]
    assert place["kind"] == "host" and place["cpu"] == cpu and place["cores"] == cores and place["arch"] == host_arch()
    assert place["matches_target"] is not noted and (place["note"] is not None) == noted
    if noted:
        assert place["note"].endswith(f"({arch}, Cortex-A72 x4, NEON, no FP16 arithmetic, no dot-product)")
