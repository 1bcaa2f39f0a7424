"""edgekit installed with pip, away from the checkout: a wheel built from the repository,
installed with its core dependencies only (no extras: no torch) into a fresh virtual
environment, and run from an empty folder with nothing of the checkout on its path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.paths import REPO


pytestmark = pytest.mark.slow


class Installed:
    def __init__(self, venv: Path, home: Path):
        self.venv, self.home = venv, home

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "EDGEKIT_"))}
        return dict(env, PATH=f"{self.venv / 'bin'}:{env.get('PATH', '')}", XDG_CONFIG_HOME=str(self.home / "config"),
                    XDG_DATA_HOME=str(self.home / "data"), COLUMNS="100", NO_COLOR="1")

    def run(self, *args, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.venv / "bin" / "edgekit"), *map(str, args)], cwd=cwd, env=self.env(),
                              capture_output=True, text=True, timeout=timeout)

    def python(self, code: str, cwd: Path) -> str:
        done = subprocess.run([str(self.venv / "bin" / "python"), "-c", code], cwd=cwd, env=self.env(),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    base = tmp_path_factory.mktemp("installed")
    # Built from a copy: an in-tree build would leave build/ in the checkout.
    source = base / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "__pycache__", "build", "dist", "*.egg-info", "demo-work*", ".sim", "bench-results"))
    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(base / "wheel"),
                            str(source)], capture_output=True, text=True, timeout=600)
    assert wheel.returncode == 0, wheel.stderr[-3000:]
    (built,) = (base / "wheel").glob("edgekit-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True, timeout=300)
    pip = subprocess.run([str(base / "venv" / "bin" / "python"), "-m", "pip", "install", "--quiet", str(built)],
                         capture_output=True, text=True, timeout=1200)
    assert pip.returncode == 0, f"installing the wheel (its dependencies come from PyPI): {pip.stderr[-3000:]}"
    return Installed(base / "venv", base / "home")


@pytest.fixture
def empty(tmp_path) -> Path:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


def test_the_core_install_has_no_torch_and_runs_as_a_module(installed, empty):
    assert installed.python("import importlib.util as u; print(u.find_spec('torch') is None)", empty) == "True"
    where = installed.python("import edgekit; print(edgekit.__file__)", empty)
    assert str(installed.venv) in where and str(REPO) not in where
    done = subprocess.run([str(installed.venv / "bin" / "python"), "-m", "edgekit", "--version"], cwd=empty,
                          env=installed.env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("edgekit "), done.stderr


def test_every_shipped_profile_is_listed_and_matches_the_repositorys(installed, empty):
    done = installed.run("targets", "list", "--json", cwd=empty)
    assert done.returncode == 0, done.stderr
    listed = {p["name"]: p for p in json.loads(done.stdout)}
    repo = {p.stem: p for p in (REPO / "targets").glob("*.toml")}
    assert set(listed) == set(repo)
    for name, profile in listed.items():
        assert profile["source"] == "shipped"
        assert Path(profile["path"]).read_bytes() == repo[name].read_bytes(), name


def test_the_demo_runs_from_an_empty_folder(installed, empty):
    done = installed.run("demo", cwd=empty)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert (empty / "demo-work" / "fleet.html").is_file()
    assert f"work directory: {empty / 'demo-work'}" in done.stdout


def test_a_core_install_quantizes_calibrates_packages_and_rolls_out(installed, empty):
    model = Path(installed.python("from importlib.resources import files; "
                                  "print(files('edgekit') / 'resources' / 'examples' / 'digits' / 'model.onnx')", empty))
    data = model.parent.parent.parent / "calibration" / "digits"
    quantized = installed.run("quantize", model, "--precision", "int8-static", "--calibration", data / "calib.npz",
                              "-o", "q.onnx", cwd=empty)
    assert quantized.returncode == 0 and (empty / "q.onnx").is_file(), quantized.stderr
    calibrated = installed.run("calibrate", model, "--target", "host-cpu", "--calibration", data / "calib.npz",
                               "--eval", data / "eval.npz", "-o", "out", "--runs", "5", cwd=empty)
    assert calibrated.returncode == 0, calibrated.stderr
    packaged = installed.run("package", "out/model.onnx", "--target", "host-cpu", "--eval", data / "eval.npz",
                             "--calibration-record", "out/calibration.json", "--name", "digits", "--version", "1.0.0",
                             "-o", "dist", cwd=empty)
    assert packaged.returncode == 0, packaged.stderr
    bundle = packaged.stdout.splitlines()[0]
    (empty / "fleet.toml").write_text('[[device]]\nname = "dev-1"\ntransport = "local"\nroot = "devices/dev-1"\n'
                                      f'target = "host-cpu"\npython = "{installed.venv / "bin" / "python"}"\n')
    rolled = installed.run("rollout", bundle, "-i", "fleet.toml", "--store", "store.db", "--json", cwd=empty)
    assert rolled.returncode == 0, rolled.stderr
    assert json.loads(rolled.stdout)["outcome"] == "completed"
