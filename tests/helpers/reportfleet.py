"""A store filled the way a fleet fills it, for the report tests: real local devices of two
targets run digits 1.0.0 and are rolled out to 1.0.1 (one rollout completes, one halts on a
device whose evaluation fails and puts its batch back), an SSH device that refuses
connections is collected as unreachable, and two planted devices are added through the
same validation as collected reports: one 5 percentage points below the host's
expectation, one 40 times slower than its siblings.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers.fleet import write_inventory
from helpers.paths import CALIB, EVAL, EXAMPLE_ONNX, REPO


HEALTHY = ["hc-01", "hc-02", "hc-03", "gw-01", "gw-02", "gw-03"]
FAILING = "gw-04"        # a Python without numpy: its evaluations fail on the device
OFFLINE = "off-01"       # an SSH device on a port nobody listens on
LOW, SLOW = "hc-04", "hc-05"


@dataclass
class ReportFleet:
    store: Path
    inventory: Path
    base: Path
    outcomes: dict = field(default_factory=dict)   # target -> rollout outcome

    @property
    def devices(self) -> list[str]:
        return HEALTHY + [FAILING, OFFLINE, LOW, SLOW]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bare_python(base: Path) -> str:
    """A venv with the standard library only: the runner installs, but cannot evaluate."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(base / "bare")], check=True, timeout=120)
    return str(base / "bare" / "bin" / "python")


def _ssh_key(base: Path) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = base / "id_ed25519"
    path.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    path.chmod(0o600)
    return str(path)


def _inventory(base: Path) -> Path:
    local = [("hc-01", "host-cpu"), ("hc-02", "host-cpu"), ("hc-03", "host-cpu"),
             ("gw-01", "x86-gateway"), ("gw-02", "x86-gateway"), ("gw-03", "x86-gateway"),
             (FAILING, "x86-gateway")]
    entries = [{"name": n, "transport": "local", "root": str(base / "dev" / n), "target": t} for n, t in local]
    entries[-1]["python"] = _bare_python(base)
    entries.append({"name": OFFLINE, "host": "127.0.0.1", "port": _closed_port(), "target": "host-cpu",
                    "connect_timeout": 3.0, "identity_file": _ssh_key(base)})
    return write_inventory(base / "fleet.toml", entries)


def _bundles(base: Path) -> dict:
    from edgekit.bundle import read_bundle
    from edgekit.datasets import load_dataset
    from edgekit.package import package
    from edgekit.targets import load_profile

    data = load_dataset(EVAL)
    return {(t, v): read_bundle(package(EXAMPLE_ONNX, load_profile(t), data, name="digits", version=v,
                                        out_dir=base / "dist", eval_samples=100).path)
            for t in ("host-cpu", "x86-gateway") for v in ("1.0.0", "1.0.1")}


def _first_version(devices, bundles) -> None:
    """1.0.0 installed, activated and evaluated on every local device (the failing one too)."""
    from edgekit.errors import RemoteCommandError
    from edgekit.fleet.push import push, remote_evaluate
    from edgekit.transport import connect

    for target in ("host-cpu", "x86-gateway"):
        members = [d for d in devices if d.target == target]
        result = push(members, bundles[(target, "1.0.0")], activate=True)
        assert not result.failed, result.record()
        for device in members:
            with connect(device.endpoint) as t:
                try:
                    remote_evaluate(t, device, "digits")
                except RemoteCommandError:
                    assert device.name == FAILING  # its report says so; the store will have it


def _plant(store, template: dict) -> None:
    """Reports as a device would send them, checked by the same validation as collected ones."""
    from edgekit.device_report import validate_report

    low = json.loads(json.dumps(template))
    low["run_id"], low["device"]["name"] = template["run_id"] + "-low", LOW
    low["metrics"]["accuracy"] = round(low["metrics"]["accuracy_expected"] - 0.05, 6)
    slow = json.loads(json.dumps(template))
    slow["run_id"], slow["device"]["name"] = template["run_id"] + "-slow", SLOW
    slow["metrics"]["latency_ms"] = {k: (v * 40 if k != "n" else v) for k, v in slow["metrics"]["latency_ms"].items()}
    for name, report in ((LOW, low), (SLOW, slow)):
        checked = validate_report(json.dumps(report).encode(), f"planted report of {name}")
        assert store.add_report(name, checked, source="planted")
        store.touch_device(name, target="host-cpu", transport="local", reachable=True)


@pytest.fixture(scope="session")
def report_fleet(tmp_path_factory) -> ReportFleet:
    return _build_fleet(tmp_path_factory)


@pytest.fixture(scope="session")
def calibration_record(tmp_path_factory) -> Path:
    return _calibrate(tmp_path_factory)


def _build_fleet(tmp_path_factory) -> ReportFleet:
    from edgekit.fleet.collect import collect
    from edgekit.fleet.inventory import load_inventory
    from edgekit.fleet.rollout import rollout
    from edgekit.store import open_store

    base = tmp_path_factory.mktemp("report-fleet")
    inventory = _inventory(base)
    devices = list(load_inventory(inventory).devices)
    local = [d for d in devices if d.transport == "local"]
    bundles = _bundles(base)
    _first_version(local, bundles)
    fleet = ReportFleet(base / "fleet.db", inventory, base)
    with open_store(fleet.store) as store:
        for target in ("host-cpu", "x86-gateway"):
            members = [d for d in local if d.target == target]
            done = rollout(bundles[(target, "1.0.1")], members, store, canary=1, batch="100%")
            fleet.outcomes[target] = done.outcome
        collect(devices, store)
        template = store.reports(device="hc-01", version="1.0.1")[-1]["report"].record()
        _plant(store, template)
    assert fleet.outcomes == {"host-cpu": "completed", "x86-gateway": "halted"}, fleet.outcomes
    return fleet


def _calibrate(tmp_path_factory) -> Path:
    """A real calibration run of four recipes against a model-size budget that fp32 breaks."""
    from edgekit.calibrate import calibrate
    from edgekit.datasets import load_dataset
    from edgekit.recipes import Recipe
    from edgekit.targets import load_file

    base = tmp_path_factory.mktemp("calibration")
    profile = base / "small.toml"
    profile.write_text((REPO / "targets" / "host-cpu.toml").read_text()
                       .replace('name = "host-cpu"', 'name = "small"').replace("max_model_mb = 512.0", "max_model_mb = 0.1"))
    recipes = [Recipe(precision="fp32"), Recipe(precision="fp16"), Recipe(precision="int8-dynamic"),
               Recipe(precision="int8-static", method="minmax")]
    result = calibrate(EXAMPLE_ONNX, load_file(profile), load_dataset(CALIB), load_dataset(EVAL), base / "out",
                       recipes=recipes, eval_samples=200, measure_opts={"runs": 5})
    assert result.chosen is not None and result.chosen.id != "fp32"
    return result.record_path
