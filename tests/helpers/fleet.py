"""Fleets for the fleet tests (collect, rollout, status, interrupts, faults): inventories,
bundles with chosen budgets, the devices' own word about what they run, and the store
held against it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import pytest

from helpers.bundles import build
from helpers.cli import run_edgekit
from helpers.devices import install, install_runner, runner
from helpers.paths import EVAL, EXAMPLE_ONNX, REPO
from helpers.widemodel import wide_digits_model


@pytest.fixture(scope="session")
def real_report(tmp_path_factory) -> dict:
    """A report written by the runner on a local device: digits 1.0.0 installed, activated, evaluated."""
    base = tmp_path_factory.mktemp("report-device")
    built = build(base / "dist", "1.0.0", eval_samples=50)
    root = base / "dev"
    install_runner(root)
    assert install(root, built)[0] == 0
    assert runner(root, "activate", "digits", "1.0.0")[0] == 0
    code, reply = runner(root, "evaluate", "digits", "--device-name", "dev")
    assert code == 0, reply
    return {"report": reply["report"], "bytes": Path(reply["report_path"]).read_bytes(), "manifest": built.manifest}


def package_with_budget(out: Path, version: str, targets_dir: Path, **budgets) -> Path:
    """A bundle of the digits model for host-cpu whose target snapshot carries these budgets
    (a copy of targets/host-cpu.toml in `targets_dir`, passed with --targets-dir)."""
    targets_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for line in (REPO / "targets" / "host-cpu.toml").read_text().splitlines():
        key = line.split("=")[0].strip()
        lines.append(f"{key} = {budgets[key]!r}" if key in budgets else line)
    (targets_dir / "host-cpu.toml").write_text("\n".join(lines) + "\n")
    result = run_edgekit("package", EXAMPLE_ONNX, "--target", "host-cpu", "--targets-dir", targets_dir,
                         "--eval", EVAL, "--name", "digits", "--version", version, "-o", out, "--eval-samples", "100")
    assert result.code == 0, result.stderr
    return Path(result.stdout.splitlines()[0])


def device_models(root: Path, python: Optional[str] = None) -> dict:
    """The runner's own status of a device root: {name: {current, previous, installed}}
    ({} for a device without a runner, on which nothing was ever installed)."""
    if not (Path(root) / "bin" / "edgekit_runner.py").exists():
        return {}
    code, reply = runner(Path(root), "status", python=python)
    assert code == 0, reply
    return {n: {k: m[k] for k in ("current", "previous", "installed")} for n, m in reply["models"].items()}


def running(root: Path) -> Optional[str]:
    return device_models(root).get("digits", {}).get("current")


def ssh_device_runs_checked_version(fleet, index: int) -> Optional[str]:
    """Over SSH, as the host sees it: the active digits version, and that its files still
    match their manifest (the runner's install checked them; nothing changed them since)."""
    from edgekit.fleet.protocol import device_status
    from edgekit.transport import connect

    device = fleet.device(index)
    with connect(device.endpoint) as t:
        models = device_status(t, device)["models"]
    current = (models.get("digits") or {}).get("current")
    if current is not None:
        folder = fleet.servers[index].root / "bundles" / "digits" / current
        manifest = json.loads((folder / "manifest.json").read_text())
        meta = json.loads((folder / ".bundle.json").read_text())
        assert meta["version"] == current and meta["sha256"]
        for rel, want in manifest["files"].items():
            assert hashlib.sha256((folder / rel).read_bytes()).hexdigest() == want["sha256"], rel
    return current


def write_inventory(path: Path, entries: list[dict]) -> Path:
    """A fleet TOML with exactly these device entries (JSON string escapes are valid TOML)."""
    path.write_text("".join("[[device]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in e.items()) + "\n"
                            for e in entries))
    return path


@pytest.fixture(scope="session")
def big_bundle(tmp_path_factory) -> Path:
    """digits-wide 2.0.0 for host-cpu: about 3 MB."""
    from edgekit.datasets import load_dataset
    from edgekit.package import package
    from edgekit.targets import load_profile

    base = tmp_path_factory.mktemp("big")
    model = wide_digits_model(base / "wide.onnx", 3)
    return package(model, load_profile("host-cpu"), load_dataset(EVAL), name="digits", version="2.0.0",
                   out_dir=base / "dist", eval_samples=50).path


def runs(roots: dict[str, Path]) -> dict[str, Optional[str]]:
    """device -> the digits version it runs, by its own runner."""
    return {name: device_models(root).get("digits", {}).get("current") for name, root in roots.items()}


def store_agrees_with_devices(store: Path, inventory: Path, env: Optional[dict] = None) -> dict:
    """What `edgekit report` says runs where (read first) equals what `fleet status` finds."""
    report = run_edgekit("report", "--store", store, "--inventory", inventory, "--json", env=env)
    assert report.code == 0, report.stderr
    believed = {d: v["version"] for v in report.json()["health"]["versions"] if v["name"] == "digits"
                for d in v["devices"]}
    status = run_edgekit("fleet", "status", "-i", inventory, "--store", store, "--json", env=env)
    assert status.code == 0, status.stderr
    seen = {d["device"]: (d["versions"].get("digits") or {}).get("current") for d in status.json()["devices"]}
    assert believed == {d: v for d, v in seen.items() if v}, (believed, seen)
    return seen


def passing_report(store: Path, device: str, version: str) -> bool:
    """Whether a rollout recorded a report of `version` on `device` that passed its gates."""
    import sqlite3

    db = sqlite3.connect(store)
    rows = db.execute("SELECT detail FROM rollout_events e JOIN rollouts r ON r.id = e.rollout_id WHERE e.device = ? "
                      "AND r.version = ? AND e.event = 'deploy' AND e.ok = 1", (device, version)).fetchall()
    return bool(rows)


def every_device_safe(store: Path, roots: dict[str, Path], old: str, new: str) -> None:
    """Each device runs `old`, or `new` with a report that passed its gates."""
    for name, version in runs(roots).items():
        assert version in (old, new), (name, version)
        if version == new:
            assert passing_report(store, name, new), f"{name} runs {new} without a passing report"
