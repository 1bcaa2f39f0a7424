"""`edgekit package` and `edgekit keys`: deterministic, complete, signed bundles, and refusals."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from helpers.bundles import tar_members
from helpers.cli import assert_clean_error, run_edgekit
from helpers.paths import CALIB, EVAL, EXAMPLE_ONNX, REPO


MANIFEST_FIELDS = ("schema", "name", "version", "target", "precision", "recipe", "runtime", "model", "files",
                   "eval", "expected", "calibration", "edgekit_version", "created_at")
HOST_CPU = (REPO / "targets" / "host-cpu.toml").read_text()


def package(out: Path, *extra, target="host-cpu", model=EXAMPLE_ONNX, data=EVAL, env=None):
    return run_edgekit("package", model, "--target", target, "--eval", data, "--name", "digits",
                       "--version", "1.0.0", "-o", out, *extra, env=env)


def printed(result) -> tuple[Path, str]:
    path, sha = result.stdout.strip().splitlines()
    assert sha.startswith("sha256 ")
    return Path(path), sha.split()[1]


def read_manifest(path: Path) -> dict:
    return json.loads(tar_members(path)["manifest.json"])


def test_packaging_twice_gives_the_same_bytes(tmp_path):
    first, second = package(tmp_path / "a"), package(tmp_path / "b")
    assert first.code == 0 and second.code == 0, first.stderr + second.stderr
    (path_a, sha_a), (path_b, sha_b) = printed(first), printed(second)
    assert path_a == tmp_path / "a" / "digits-1.0.0-host-cpu.edgekit"
    assert sha_a == sha_b and path_a.read_bytes() == path_b.read_bytes()
    assert hashlib.sha256(path_a.read_bytes()).hexdigest() == sha_a  # what it prints is what it wrote


def test_the_tar_is_normalised_and_the_manifest_complete(tmp_path):
    result = package(tmp_path, "--json")
    assert result.code == 0, result.stderr
    path = Path(result.json()["path"])
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) and {"manifest.json", "model.onnx", "eval.npz", "runner/edgekit_runner.py"} <= set(names)
    assert all(m.isreg() and m.uid == 0 and m.gid == 0 and m.uname == "" and m.mode == 0o644 for m in members)
    manifest = read_manifest(path)
    assert [f for f in MANIFEST_FIELDS if f not in manifest] == []
    assert set(manifest["files"]) == set(names) - {"manifest.json"}
    assert {m.mtime for m in members} == {manifest_epoch(manifest)}
    assert manifest["target"]["name"] == "host-cpu" and manifest["precision"] == "fp32"
    assert manifest["model"]["sha256"] == manifest["files"]["model.onnx"]["sha256"]
    assert manifest["eval"]["n"] == 719 and manifest["eval"]["metric"] == "accuracy"
    expected = manifest["expected"]
    assert expected["source"] == "measured" and 0.5 < expected["accuracy"] <= 1
    assert expected["latency_ms"] is None  # timings would make the bytes differ run to run
    assert manifest["runtime"]["opsets"] == {"ai.onnx": 17} and manifest["runtime"]["threads"] == 2


def manifest_epoch(manifest: dict) -> int:
    from edgekit.words import epoch_of

    return epoch_of(manifest["created_at"])


def test_source_date_epoch_sets_created_at(tmp_path):
    result = package(tmp_path, env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert result.code == 0, result.stderr
    assert read_manifest(printed(result)[0])["created_at"] == "2023-11-14T22:13:20Z"


def test_the_eval_subset_is_spread_over_the_whole_set(tmp_path):
    result = package(tmp_path, "--eval-samples", "50")
    assert result.code == 0, result.stderr
    path = printed(result)[0]
    with np.load(io.BytesIO(tar_members(path)["eval.npz"])) as npz:
        labels, inputs = npz["labels"], npz["input"]
    full = np.load(EVAL)
    expected_rows = np.unique(np.linspace(0, 718, 50).round().astype(int))
    assert len(labels) == 50 and np.array_equal(labels, full["labels"][expected_rows])
    assert np.array_equal(inputs, full["input"][expected_rows])
    assert read_manifest(path)["eval"]["source"]["n"] == 719


def test_a_signed_bundle_verifies_and_stays_deterministic(tmp_path):
    from edgekit.errors import IntegrityError
    from edgekit.keys import verify

    keys = run_edgekit("keys", "init", "--out", tmp_path / "keys", "--json")
    assert keys.code == 0, keys.stderr
    pair = keys.json()
    assert pair["fingerprint"].startswith("SHA256:")
    first = package(tmp_path / "a", "--sign-key", pair["private"])
    second = package(tmp_path / "b", "--sign-key", pair["private"])
    assert first.code == 0, first.stderr
    assert printed(first)[1] == printed(second)[1]
    members = tar_members(printed(first)[0])
    (tmp_path / "m.json").write_bytes(members["manifest.json"])
    (tmp_path / "m.sig").write_bytes(members["manifest.sig"])
    assert verify(tmp_path / "m.json", tmp_path / "m.sig", [Path(pair["public"])]) == "edgekit-bundle"
    (tmp_path / "m.json").write_bytes(members["manifest.json"].replace(b'"1.0.0"', b'"6.6.6"'))
    with pytest.raises(IntegrityError, match="does not match"):
        verify(tmp_path / "m.json", tmp_path / "m.sig", [Path(pair["public"])])


def test_keys_init_does_not_overwrite_a_key(tmp_path):
    assert run_edgekit("keys", "init", "--out", tmp_path).code == 0
    before = (tmp_path / "edgekit-bundle").read_bytes()
    assert_clean_error(run_edgekit("keys", "init", "--out", tmp_path), "already exists", "--force")
    assert (tmp_path / "edgekit-bundle").read_bytes() == before
    assert run_edgekit("keys", "init", "--out", tmp_path, "--force").code == 0
    assert (tmp_path / "edgekit-bundle").read_bytes() != before


@pytest.fixture
def strict_targets(tmp_path):
    folder = tmp_path / "targets"
    folder.mkdir()
    (folder / "int8-only.toml").write_text(HOST_CPU.replace('name = "host-cpu"', 'name = "int8-only"').replace(
        'precisions = ["fp32", "fp16", "int8-dynamic", "int8-static", "int8-token", "int8-block", "int4-block"]', 'precisions = ["int8-static"]'))
    (folder / "tiny.toml").write_text(HOST_CPU.replace('name = "host-cpu"', 'name = "tiny"').replace(
        "max_model_mb = 512.0", "max_model_mb = 0.05"))
    (folder / "litert.toml").write_text(HOST_CPU.replace('name = "host-cpu"', 'name = "litert"').replace(
        'runtime = "onnxruntime"', 'runtime = "tflite"'))
    return folder


@pytest.mark.parametrize("target, needle", [
    ("int8-only", "target int8-only allows precisions int8-static; model.onnx is fp32"),
    ("tiny", "over max_model_mb 0.05 of target tiny"),
    ("litert", "target litert runs tflite; model.onnx needs onnxruntime"),
])
def test_a_model_the_target_does_not_allow_is_refused_with_exit_3(tmp_path, strict_targets, target, needle):
    result = package(tmp_path / "out", "--targets-dir", strict_targets, target=target)
    assert_clean_error(result, needle, code=3)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("args, needle", [
    (("--name", "../evil"), "'../evil' is not a plain name"),
    (("--eval-samples", "0"), "--eval-samples must be at least 1"),
    (("--sign-key", "/nonexistent/key"), "--sign-key /nonexistent/key: not found"),
    (("--calibration-record", "/nonexistent/calibration.json"), "--calibration-record /nonexistent/calibration.json: not found"),
])
def test_bad_input_is_one_clean_line(tmp_path, args, needle):
    assert_clean_error(package(tmp_path, *args), needle)


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory):
    from edgekit.toolchains.onnx.quantize import quantize
    from edgekit.recipes import Recipe

    return quantize(EXAMPLE_ONNX, Recipe(precision="int8-dynamic"), tmp_path_factory.mktemp("q") / "int8.onnx")


def test_unlabelled_data_bundles_fp32_reference_outputs(tmp_path, int8_model):
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, input=np.load(EVAL)["input"][:64])
    assert_clean_error(package(tmp_path / "a", model=int8_model, data=unlabelled), "has no labels", "--reference")
    result = package(tmp_path / "b", "--reference", EXAMPLE_ONNX, "--json", model=int8_model, data=unlabelled)
    assert result.code == 0, result.stderr
    manifest = result.json()["manifest"]
    assert manifest["precision"] == "int8-dynamic" and manifest["eval"]["metric"] == "fidelity"
    assert manifest["eval"]["reference"] is True
    assert 0.9 < manifest["expected"]["fidelity"]["cosine"] <= 1.0
    with np.load(io.BytesIO(tar_members(Path(result.json()["path"]))["eval.npz"])) as npz:
        assert set(npz.files) == {"input", "_reference"} and npz["_reference"].shape == (64, 10)


def test_a_calibration_record_gives_recipe_and_expected_metrics(tmp_path, int8_model):
    from edgekit.calibrate import calibrate
    from edgekit.datasets import load_dataset
    from edgekit.recipes import Recipe
    from edgekit.targets import load_profile

    out = tmp_path / "release"
    result = calibrate(EXAMPLE_ONNX, load_profile("host-cpu"), load_dataset(CALIB), load_dataset(EVAL), out,
                       recipes=[Recipe(precision="int8-dynamic")], eval_samples=200,
                       measure_opts={"runs": 5, "min_seconds": 0.0})
    assert result.chosen is not None
    packaged = package(tmp_path / "dist", "--calibration-record", out / "calibration.json", "--json",
                       model=out / "model.onnx")
    assert packaged.code == 0, packaged.stderr
    manifest = packaged.json()["manifest"]
    metrics = result.chosen.metrics
    assert manifest["recipe"] == result.chosen.recipe.record() and manifest["precision"] == "int8-dynamic"
    assert manifest["expected"]["source"] == "calibration-record"
    assert manifest["expected"]["latency_ms"] == metrics["latency_ms"]
    assert manifest["expected"]["accuracy"] == metrics["accuracy"]
    assert manifest["created_at"] == result.record.created_at
    # The record says int8-dynamic; the FP32 model beside it is not what it chose.
    assert_clean_error(package(tmp_path / "x", "--calibration-record", out / "calibration.json"),
                       "chose a int8-dynamic model", "looks fp32")
