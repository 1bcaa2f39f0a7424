"""A language model through calibrate, package and a gated rollout to a local and a loopback
OpenSSH device: the device evaluates the bundle's tokenized eval text with ONNX Runtime and
numpy alone, its report carries the LM metrics the host expected, and a bundle over its
perplexity budget halts at its canary."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import run_edgekit
from helpers.devices import runner
from helpers.fleet import write_inventory
from helpers.lmkit import TINY_TARGET, tiny_lm_target

pytestmark = pytest.mark.ssh


@pytest.fixture(scope="module")
def calibrated(tiny_lm, tmp_path_factory) -> Path:
    """`edgekit calibrate` of the tiny Hugging Face folder (exported on the way) for tiny-lm."""
    base = tmp_path_factory.mktemp("lm-cal")
    targets = tiny_lm_target(base / "targets")
    out = base / "out"
    result = run_edgekit("calibrate", tiny_lm.hf, "--target", "tiny-lm", "--targets-dir", targets,
                         "--calibration", tiny_lm.calib, "--eval", tiny_lm.eval, "-o", out, "--eval-samples", "4",
                         "--json")
    assert result.code == 0, result.stderr
    return out


def test_calibrate_measures_each_recipe_with_and_without_the_cache(calibrated):
    record = json.loads((calibrated / "calibration.json").read_text())
    assert record["metric"] == "perplexity" and record["target"]["lm"]["context"] == TINY_TARGET["context"]
    ids = [c["id"] for c in record["candidates"]]
    for recipe in ("fp32", "int8-block-b32-rtn", "int4-block-b32-minmax-offset"):
        assert recipe in ids and f"{recipe}-recompute" in ids
    assert record["baseline"]["ppl_increase"] == pytest.approx(0, abs=1e-5)
    for c in record["candidates"]:
        m = c["metrics"]
        recompute = c["id"].endswith("-recompute")
        assert m["kv_cache"] == ("recompute" if recompute else "cache")
        assert m["kv_cache_bytes"] == (0 if recompute else 2 * 2 * 2 * 16 * 4 * TINY_TARGET["context"])
        assert m["perplexity"] == pytest.approx(m["fp32_perplexity"] * (1 + m["ppl_increase"]))
    chosen = next(c for c in record["candidates"] if c["id"] == record["chosen"])
    assert chosen["passed"] and (calibrated / "model.onnx").is_file() and (calibrated / "tokenizer.json").is_file()


def _package(model: Path, version: str, targets: Path, eval_text: Path, dist: Path, *extra) -> Path:
    result = run_edgekit("package", model, "--target", "tiny-lm", "--targets-dir", targets, "--eval", eval_text,
                         "--name", "tinylm", "--version", version, "-o", dist, "--eval-samples", "3", *extra)
    assert result.code == 0, result.stderr
    return Path(result.stdout.splitlines()[0])


@pytest.fixture(scope="module")
def lm_bundles(tiny_lm, calibrated, tmp_path_factory) -> dict:
    """1.0.0: the calibrated choice; 1.0.1: a careless release, the FP32 model with noise on
    its weights, measured against the sound FP32 model, under a 5% perplexity budget."""
    base = tmp_path_factory.mktemp("lm-bundles")
    ok = _package(calibrated / "model.onnx", "1.0.0", calibrated.parent / "targets", tiny_lm.eval, base / "dist",
                  "--calibration-record", calibrated / "calibration.json")
    strict = tiny_lm_target(base / "strict", max_ppl_increase=0.05)
    careless = _damaged(tiny_lm.fp32, base / "careless" / "model.onnx")
    over = _package(careless, "1.0.1", strict, tiny_lm.eval, base / "dist", "--reference", tiny_lm.fp32)
    return {"1.0.0": ok, "1.0.1": over, "targets": strict}


def _damaged(fp32: Path, out: Path, noise: float = 0.5) -> Path:
    """`fp32` with Gaussian noise (`noise` x each weight matrix's own spread) on its 2-D weights."""
    import shutil

    import onnx
    from onnx import numpy_helper

    from edgekit.toolchains.lm.graph import lm_meta_of, save

    proto = onnx.load(str(fp32))
    rng = np.random.default_rng(0)
    for init in proto.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.ndim == 2 and w.dtype == np.float32:
            init.CopyFrom(numpy_helper.from_array(w + rng.normal(0, noise * w.std(), w.shape).astype(np.float32),
                                                  init.name))
    save(proto, out, lm_meta_of(proto))
    shutil.copyfile(fp32.parent / "tokenizer.json", out.parent / "tokenizer.json")
    return out


def test_the_bundle_carries_the_eval_text_tokenized_and_the_fp32_reference(lm_bundles):
    with tarfile.open(lm_bundles["1.0.0"]) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
        names = tar.getnames()
        npz = np.load(tar.extractfile("eval.npz"))
        arrays = {k: npz[k] for k in npz.files}
    assert manifest["eval"]["metric"] == "perplexity" and manifest["measure"]["lm"]["context"] == TINY_TARGET["context"]
    assert "tokenizer.json" in names and any(n.endswith(".onnx.data") for n in names)
    assert arrays["input_ids"].shape == (3, TINY_TARGET["context"]) and arrays["input_ids"].dtype == np.int64
    assert arrays["_ref_topk_ids"].shape[:2] == (3, TINY_TARGET["context"] - 1)
    assert manifest["expected"]["perplexity"] > 1 and manifest["expected"]["ppl_increase"] is not None


def test_lm_rollout_to_local_and_ssh_devices_is_gated_on_perplexity(tmp_path, sshd_fleet, lm_bundles, monkeypatch):
    fleet = sshd_fleet(1, pythons=[sys.executable])
    for key, value in fleet.env.items():
        monkeypatch.setenv(key, value)
    inventory = write_inventory(tmp_path / "fleet.toml", [
        {"name": "local-1", "transport": "local", "root": str(tmp_path / "local-1"), "target": "tiny-lm"},
        fleet.device_dict(fleet.servers[0], target="tiny-lm")])
    store = tmp_path / "store.db"
    targets = lm_bundles["targets"]
    rolled = run_edgekit("rollout", lm_bundles["1.0.0"], "--inventory", inventory, "--canary", "1", "--store", store,
                         "--targets-dir", targets, "--json", env=fleet.env)
    assert rolled.code == 0, rolled.stderr
    record = rolled.json()
    assert record["outcome"] == "completed" and record["breaches"] == []
    reports = {d["device"]: d["report"] for w in record["waves"] for d in w["devices"]}
    assert set(reports) == {"local-1", "dev-01"}
    for device in reports:
        full = _stored_report(store, device, "1.0.0")
        metrics = full["metrics"]
        assert metrics["perplexity"] > 1 and metrics["ppl_increase"] == pytest.approx(
            metrics["perplexity"] / metrics["fp32_perplexity"] - 1)
        # packaged from a calibration record, the bundle expects the perplexity of its own windows
        assert metrics["expected"]["source"] == "calibration-record"
        assert metrics["perplexity"] == pytest.approx(metrics["expected"]["perplexity"], rel=1e-4)
        assert metrics["kv_cache_bytes"] == metrics["kv_cache_bytes_measured"] == 2 * 2 * 2 * 16 * 4 * 128
        assert metrics["decode_tokens_per_s"] > 0 and metrics["recompute"]["decode_tokens_per_s"] > 0
    # the runner generates where the device has `tokenizers` (this one does), as `edgekit generate` does
    code, reply = runner(tmp_path / "local-1", "generate", "tinylm", "The model", "--new-tokens", "6")
    assert code == 0 and reply["version"] == "1.0.0", reply
    with tarfile.open(lm_bundles["1.0.0"]) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    host = run_edgekit("generate", tmp_path / "unpacked" / "model.onnx", "The model", "--new-tokens", "6", "--json")
    assert host.code == 0 and host.json()["text"] == reply["text"], (host.stderr, reply)
    # the host measuring the bundle's own files with the same code gets the devices' text scores
    from edgekit.evaluate import measure

    manifest = json.loads((tmp_path / "unpacked" / "manifest.json").read_text())
    on_host = measure(tmp_path / "unpacked" / "model.onnx", tmp_path / "unpacked" / "eval.npz", threads=1,
                      **manifest["measure"])
    for device in reports:
        metrics = _stored_report(store, device, "1.0.0")["metrics"]
        for key in ("perplexity", "ppl_increase", "kl_divergence", "top1_agreement", "kv_cache_bytes"):
            assert metrics[key] == pytest.approx(on_host[key], rel=1e-6, abs=1e-9), (device, key)
    halted = run_edgekit("rollout", lm_bundles["1.0.1"], "--inventory", inventory, "--canary", "1", "--store", store,
                         "--targets-dir", targets, "--json", env=fleet.env)
    assert halted.code == 3, halted.stderr
    record = halted.json()
    assert record["outcome"] == "halted" and [w["kind"] for w in record["waves"]] == ["canary"]
    assert [(b["device"], b["gate"]) for b in record["breaches"]] == [("local-1", "ppl_increase")]
    assert record["breaches"][0]["measured"] > 0.05 == record["breaches"][0]["limit"]
    assert record["not_started"] == ["dev-01"]


def _stored_report(store: Path, device: str, version: str) -> dict:
    import sqlite3

    db = sqlite3.connect(store)
    try:
        (text,) = db.execute("SELECT report FROM reports WHERE device = ? AND version = ?", (device, version)).fetchone()
    finally:
        db.close()
    return json.loads(text)
