"""`edgekit demo`: the whole chain on a simulated fleet, in a few minutes.

    fleet      N devices over two targets, each a folder on this machine run by its own
               Python process (or, with ssh=True, a real sshd on 127.0.0.1 per device)
    keys       a signing key pair; every device trusts its public key
    calibrate  the example model for each target: every recipe measured, budgets applied
    package    one signed bundle per target
    rollout    canary first, then the rest, gated on what the devices measure
    safety     a careless variant (INT8 calibrated on 16 under-exposed images) is stopped by
               a gate at its canary and rolled back
    report     the reports collected into a store, the fleet table, an HTML report

Everything lands in the work directory, so each step can be repeated by hand with the
commands the demo prints.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from importlib.resources import files

import numpy as np

from edgekit.errors import ConfigError, EdgekitError

SHIPPED = Path(str(files("edgekit") / "resources"))  # the repository's examples/ and calibration/ point here
EXAMPLE = {"model.onnx": SHIPPED / "examples" / "digits" / "model.onnx",
           "calib.npz": SHIPPED / "calibration" / "digits" / "calib.npz",
           "eval.npz": SHIPPED / "calibration" / "digits" / "eval.npz"}
TARGETS = ("host-cpu", "x86-gateway")
NAME, GOOD, CARELESS = "digits", "1.0.0", "1.1.0"

Say = Callable[[str], None]


@dataclass
class Demo:
    workdir: Path
    devices: int = 4
    ssh: bool = False
    say: Say = print
    targets: tuple = TARGETS  # the device classes the fleet alternates between
    inventory: Optional[Path] = None
    bundles: dict = field(default_factory=dict)
    outcomes: list = field(default_factory=list)
    _fleet: object = None

    @property
    def store_path(self) -> Path:
        return self.workdir / "store.db"

    @property
    def model(self) -> Path:
        """The example model and its data sets, copied into the work directory by reset()."""
        return self.workdir / "example" / "model.onnx"

    @property
    def calib(self) -> Path:
        return self.workdir / "example" / "calib.npz"

    @property
    def eval(self) -> Path:
        return self.workdir / "example" / "eval.npz"

    @property
    def careless_calibration(self) -> Path:
        return self.workdir / "careless-calib.npz"

    @property
    def careless_model(self) -> Path:
        return self.workdir / "careless" / "model.onnx"

    def env(self) -> dict:
        return dict(self._fleet.env) if self._fleet is not None else {}


def _check_inputs() -> None:
    for path in EXAMPLE.values():
        if not path.is_file():
            raise ConfigError(f"{path}: missing from this edgekit installation; reinstall edgekit")


def make_fleet(demo: Demo) -> list:
    """The simulated devices, alternating between the two targets; writes the inventory."""
    from edgekit.fleet.inventory import load_inventory

    if demo.devices < 2:
        raise ConfigError(f"--devices {demo.devices}: the demo needs at least 2 (one per target)")
    names = [f"edge-{i + 1:02d}" for i in range(demo.devices)]
    targets = [demo.targets[i % len(demo.targets)] for i in range(demo.devices)]
    path = demo.workdir / "fleet.toml"
    if demo.ssh:
        from edgekit.sim.sshd import start_fleet

        demo._fleet = fleet = start_fleet(demo.workdir / "ssh", demo.devices, names=names, pythons=[sys.executable] * demo.devices)
        entries = [fleet.device_dict(s, target=t, tags=[t]) for s, t in zip(fleet.servers, targets)]
    else:
        entries = [{"name": n, "transport": "local", "root": f"devices/{n}", "python": sys.executable,
                    "target": t, "tags": [t]} for n, t in zip(names, targets)]
    path.write_text("".join("[[device]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in e.items()) + "\n"
                            for e in entries))
    demo.inventory = path
    return list(load_inventory(path).devices)


def stop_fleet(demo: Demo) -> None:
    if demo._fleet is not None:
        demo._fleet.stop()
        demo._fleet = None


def write_careless_calibration(path: Path, calib: Path) -> Path:
    """16 under-exposed samples: the calibration data of someone who forgot the normalisation."""
    with np.load(calib) as data:
        dark = data["input"][:16] * 0.25
    np.savez(path, input=dark)
    return path


def reset(workdir: Path, example: bool = True) -> None:
    """A fresh work directory (with the digits example unless `example` is False); refuses to
    empty a folder the demo did not make."""
    if workdir.exists():
        if any(workdir.iterdir()) and not (workdir / ".edgekit-demo").exists():
            raise ConfigError(f"--workdir {workdir}: exists and was not made by edgekit demo; give an empty or new folder")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / ".edgekit-demo").write_text("made by edgekit demo; removed by the next demo run\n")
    if not example:
        return
    (workdir / "example").mkdir()
    for name, source in EXAMPLE.items():  # at hand for the commands the demo shows
        shutil.copyfile(source, workdir / "example" / name)


def trust(demo: Demo, devices: list):
    """A signing key pair in the work directory, trusted by every device."""
    from edgekit.fleet.push import trust_key
    from edgekit.keys import init_keys

    keys = init_keys(demo.workdir / "keys")
    result = trust_key(devices, keys.public, **connect_opts(demo))
    _raise_failed(result, "trusting the signing key")
    return keys


def connect_opts(demo: Demo) -> dict:
    return {"known_hosts": str(demo._fleet.known_hosts)} if demo._fleet is not None else {}


def calibrate_target(demo: Demo, target: str, on_candidate=None):
    from edgekit.calibrate import calibrate
    from edgekit.datasets import load_dataset
    from edgekit.targets import load_profile

    return calibrate(demo.model, load_profile(target), load_dataset(demo.calib, role="calibration data"),
                     load_dataset(demo.eval, role="eval data"), demo.workdir / "calibrated" / target,
                     measure_opts={"runs": 30, "min_seconds": 0.2}, on_candidate=on_candidate)


def package_release(demo: Demo, target: str, calibration, keys):
    from edgekit.datasets import load_dataset
    from edgekit.package import package
    from edgekit.targets import load_profile

    return package(calibration.model_path, load_profile(target), load_dataset(demo.eval, role="eval data"),
                   name=NAME, version=GOOD, out_dir=demo.workdir / "dist",
                   calibration_record=calibration.record_path, sign_key=keys.private)


def package_careless(demo: Demo, keys):
    """INT8 calibrated on the wrong data, packaged without calibrate: its own host numbers
    look plausible, but against FP32 it loses far more than the target allows."""
    from edgekit.datasets import load_dataset
    from edgekit.package import package
    from edgekit.recipes import Recipe
    from edgekit.targets import load_profile
    from edgekit.toolchains import toolchain_for

    model, profile = demo.careless_model, load_profile(TARGETS[0])
    toolchain_for(profile).quantize(
        demo.model, Recipe(precision="int8-static", method="minmax"), model,
        calibration=load_dataset(write_careless_calibration(demo.careless_calibration, demo.calib),
                                 role="calibration data"))
    return package(model, profile, load_dataset(demo.eval, role="eval data"), name=NAME,
                   version=CARELESS, out_dir=demo.workdir / "dist", reference=demo.model, sign_key=keys.private)


def roll_out(demo: Demo, bundle, devices: list, *, step=None, on_wave=None):
    from edgekit.fleet.rollout import rollout
    from edgekit.store import open_store

    with open_store(demo.store_path) as store:
        return rollout(bundle, devices, store, canary=1, batch="50%", max_failures=0, step=step,
                       on_wave=on_wave, **connect_opts(demo))


def collect_reports(demo: Demo, devices: list):
    from edgekit.fleet.collect import collect
    from edgekit.store import open_store

    with open_store(demo.store_path) as store:
        result = collect(devices, store, **connect_opts(demo))
    _raise_failed(result, "collecting reports")
    return result


def _raise_failed(result, what: str) -> None:
    if result.failed:
        first = result.failed[0]
        raise EdgekitError(f"{what} failed on {len(result.failed)} device(s), first {first.device}: {first.error}")
