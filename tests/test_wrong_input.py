"""Wrong input is loud: labels the model cannot output, budgets outside their meaning,
inventory targets that name no profile, and --json errors. Each through the real CLI:
exit 2, one line on stderr naming the problem and what to do, no traceback."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from helpers.bundles import build
from helpers.cli import assert_clean_error
from helpers.fleet import write_inventory
from helpers.paths import CALIB, EVAL, EXAMPLE_ONNX, EXAMPLE_PT2, REPO
from edgekit.errors import ConfigError
from edgekit.fleet.inventory import load_inventory
from edgekit.eval_subset import eval_indices

FAST = ("--runs", "5", "--min-seconds", "0.05")


def relabelled(path, index: int, label: int):
    """The digits eval set with one label changed (the model outputs 10 classes)."""
    with np.load(EVAL) as npz:
        x, labels = npz["input"], npz["labels"].copy()
    labels[index] = label
    np.savez(path, input=x, labels=labels)
    return path


# -- labels outside the model's classes ----------------------------------------------------

@pytest.mark.parametrize("label, span", [(11, "0..11"), (-1, "-1..9")])
def test_evaluate_refuses_labels_the_model_cannot_output(edgekit, tmp_path, label, span):
    data = relabelled(tmp_path / "eval-bad.npz", 5, label)
    result = edgekit("evaluate", EXAMPLE_ONNX, "--data", data, *FAST)
    assert_clean_error(result, "eval-bad.npz", f"labels span {span}", "model.onnx outputs 10 classes",
                       "output 'logits' (N, 10)", "labels must be class indices 0..9")


def test_labels_past_the_samples_used_are_still_checked(edgekit, tmp_path):
    data = relabelled(tmp_path / "eval-bad.npz", -1, 10)  # the last sample; only the first 50 are evaluated
    assert_clean_error(edgekit("evaluate", EXAMPLE_ONNX, "--data", data, "--samples", "50", *FAST),
                       "eval-bad.npz", "labels span 0..10")


def test_the_highest_class_is_a_valid_label(edgekit, tmp_path):
    data = relabelled(tmp_path / "eval-edge.npz", 5, 9)
    result = edgekit("evaluate", EXAMPLE_ONNX, "--data", data, "--samples", "20", "--json", *FAST)
    assert result.code == 0, result.stderr


def test_calibrate_refuses_them_before_any_candidate(edgekit, tmp_path):
    data = relabelled(tmp_path / "eval-bad.npz", 0, 12)
    out = tmp_path / "out"
    result = edgekit("calibrate", EXAMPLE_ONNX, "--target", "host-cpu", "--calibration", CALIB, "--eval", data,
                     "-o", out, "--runs", "5")
    assert_clean_error(result, "eval-bad.npz", "labels span 0..12", "10 classes")
    assert not (out / "calibration.json").exists()


def test_package_checks_the_whole_set_not_only_the_bundled_subset(edgekit, tmp_path):
    bad = 5
    assert bad not in eval_indices(719, 10)  # the wrong label is outside what the bundle carries
    data = relabelled(tmp_path / "eval-bad.npz", bad, 10)
    result = edgekit("package", EXAMPLE_ONNX, "--target", "host-cpu", "--eval", data, "--name", "digits",
                     "--version", "1.0.0", "--eval-samples", "10", "-o", tmp_path / "dist")
    assert_clean_error(result, "eval-bad.npz", "labels span 0..10", "model.onnx outputs 10 classes")
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())


def dynamic_width_model(path):
    """Flattens the digits input to (batch, width) with `width` symbolic: 64 outputs at run time."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "width"])
    graph = helper.make_graph([helper.make_node("Flatten", ["input"], ["scores"])], "flat", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


def test_a_dynamic_class_axis_is_measured_on_the_first_batch(edgekit, tmp_path):
    model = dynamic_width_model(tmp_path / "flat.onnx")
    assert edgekit("evaluate", model, "--data", relabelled(tmp_path / "ok.npz", 5, 63), "--samples", "20",
                   *FAST).code == 0
    result = edgekit("evaluate", model, "--data", relabelled(tmp_path / "bad.npz", 5, 64), *FAST)
    assert_clean_error(result, "bad.npz", "labels span 0..64", "flat.onnx outputs 64 classes",
                       "output 'scores' (N, 64) on the first batch", "0..63")


def test_a_tflite_model_is_checked_too(edgekit, tmp_path):
    if importlib.util.find_spec("litert_torch") is None:
        pytest.skip("the tflite extra is not installed")
    model = tmp_path / "m.tflite"
    made = edgekit("quantize", EXAMPLE_PT2, "--precision", "fp32", "--target", "raspberry-pi-zero-2w",
                   "--calibration", CALIB, "-o", model)
    assert made.code == 0, made.stderr
    result = edgekit("evaluate", model, "--data", relabelled(tmp_path / "bad.npz", 5, 10), *FAST)
    assert_clean_error(result, "bad.npz", "labels span 0..10", "m.tflite outputs 10 classes", "(1, 10)")


# -- budgets outside their meaning ---------------------------------------------------------

def profile_with(tmp_path, old: str, new: str):
    text = (REPO / "targets" / "host-cpu.toml").read_text()
    assert old in text
    path = tmp_path / "board.toml"
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize("old, new, needles", [
    ("max_accuracy_drop = 0.05", "max_accuracy_drop = 1",
     ("max_accuracy_drop = 1 is a fraction of 1 (0.01 = 1 percentage point)", "0.01")),
    ("max_accuracy_drop = 0.05", "max_accuracy_drop = 0.6", ("max_accuracy_drop = 0.6 is a fraction of 1", "0.5")),
    ("max_accuracy_drop = 0.05", "max_accuracy_drop = -0.01", ("max_accuracy_drop = -0.01 is a fraction of 1",)),
    ("min_fidelity_cosine = 0.95", "min_fidelity_cosine = 1.5", ("min_fidelity_cosine = 1.5 is a cosine", "at most 1")),
    ("min_fidelity_cosine = 0.95", "min_fidelity_cosine = -2", ("min_fidelity_cosine = -2 is a cosine",)),
    ("min_fidelity_cosine = 0.95", "min_fidelity_cosine = 0", ("min_fidelity_cosine = 0 is a cosine", "more than 0")),
    ("max_model_mb = 512.0", "max_model_mb = -1", ("max_model_mb = -1 is a size in MiB", "positive")),
    ("max_model_mb = 512.0", "max_model_mb = 0", ("max_model_mb = 0 is a size in MiB", "can never be met")),
    ("max_peak_rss_mb = 4096.0", "max_peak_rss_mb = -4096", ("max_peak_rss_mb = -4096 is a memory size in MiB",)),
    ("max_latency_ms_p95 = 1000.0", "max_latency_ms_p95 = 0", ("max_latency_ms_p95 = 0 is a p95 latency in milliseconds",)),
])
def test_a_budget_outside_its_meaning_names_file_field_and_unit(edgekit, tmp_path, old, new, needles):
    field = new.split(" =")[0]
    result = edgekit("targets", "show", profile_with(tmp_path, old, new))
    assert_clean_error(result, "board.toml", f"field 'budgets.{field}'", *needles)


def test_calibrate_refuses_such_a_profile_too(edgekit, tmp_path):
    target = profile_with(tmp_path, "max_accuracy_drop = 0.05", "max_accuracy_drop = 1")
    result = edgekit("calibrate", EXAMPLE_ONNX, "--target", target, "--calibration", CALIB, "--eval", EVAL,
                     "-o", tmp_path / "out")
    assert_clean_error(result, "board.toml", "max_accuracy_drop = 1 is a fraction of 1")


@pytest.mark.parametrize("old, new", [
    ("max_accuracy_drop = 0.05", "max_accuracy_drop = 0.5"), ("max_accuracy_drop = 0.05", "max_accuracy_drop = 0"),
    ("min_fidelity_cosine = 0.95", "min_fidelity_cosine = 1"), ("max_latency_ms_p95 = 1000.0", "max_latency_ms_p95 = 1e-6"),
])
def test_budgets_at_the_edge_of_their_meaning_load(edgekit, tmp_path, old, new):
    result = edgekit("targets", "show", profile_with(tmp_path, old, new), "--json")
    assert result.code == 0, result.stderr
    field, value = new.split(" = ")
    assert result.json()["budgets"][field] == float(value)


def test_every_shipped_profile_loads(edgekit):
    result = edgekit("targets", "list", "--json")
    assert result.code == 0, result.stderr
    assert {p["name"] for p in result.json()} == {p.stem for p in (REPO / "targets").glob("*.toml")}


# -- inventory targets that name no profile ------------------------------------------------

def typo_inventory(tmp_path, target: str = "raspbery-pi-4"):
    return write_inventory(tmp_path / "fleet.toml", [
        {"name": "sim-01", "transport": "local", "root": str(tmp_path / "d1"), "target": "host-cpu"},
        {"name": "cam-01", "transport": "local", "root": str(tmp_path / "d2"), "target": target}])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build(tmp_path_factory.mktemp("dist"), "1.0.0", eval_samples=20).path


@pytest.mark.parametrize("command", [
    ("fleet", "status", "--store", "STORE"), ("collect", "--store", "STORE"), ("rollback", "digits"),
    ("keys", "trust", "KEY"), ("push", "BUNDLE", "--activate"), ("rollout", "BUNDLE", "--store", "STORE"),
    ("report", "--store", "STORE"),
], ids=lambda c: " ".join(c[:2]))
def test_every_fleet_command_refuses_a_target_with_no_profile(edgekit, tmp_path, bundle, command):
    from edgekit.store import open_store

    key = tmp_path / "k.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMJ9Dx8JpF2m3xZ0j6Hq0f1hJrT6YJwR8Nqf3m0oYgVZ test\n")
    store = tmp_path / "store.db"
    with open_store(store):  # report reads an existing store
        pass
    args = [{"KEY": key, "BUNDLE": bundle, "STORE": store}.get(a, a) for a in command]
    result = edgekit(*args, "--inventory", typo_inventory(tmp_path))
    assert_clean_error(result, "fleet.toml", "device 'cam-01'", "target 'raspbery-pi-4' names no profile",
                       "did you mean raspberry-pi-4", "--targets-dir")
    assert not (tmp_path / "d1").exists()  # refused before any device was touched


def test_without_a_close_name_the_known_profiles_are_listed(edgekit, tmp_path):
    result = edgekit("fleet", "status", "--inventory", typo_inventory(tmp_path, "my-board"))
    assert_clean_error(result, "target 'my-board' names no profile", "host-cpu, ", "jetson-orin-nano", "--targets-dir")


def test_targets_dir_supplies_the_profile(edgekit, tmp_path):
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "my-board.toml").write_text(
        (REPO / "targets" / "host-cpu.toml").read_text().replace('name = "host-cpu"', 'name = "my-board"'))
    inventory = typo_inventory(tmp_path, "my-board")
    result = edgekit("fleet", "status", "--inventory", inventory, "--targets-dir", folder, "--json",
                     "--store", tmp_path / "store.db")
    assert result.code == 0, result.stderr
    assert {d["device"] for d in result.json()["devices"]} == {"sim-01", "cam-01"}


def test_load_inventory_checks_targets_for_library_callers(tmp_path):
    inventory = typo_inventory(tmp_path, "my-board")
    with pytest.raises(ConfigError, match="target 'my-board' names no profile") as err:
        load_inventory(inventory)
    assert err.value.hint.endswith("--targets-dir")
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "my-board.toml").write_text((REPO / "targets" / "host-cpu.toml").read_text())
    assert [d.target for d in load_inventory(inventory, [folder]).devices] == ["host-cpu", "my-board"]


def test_the_shipped_example_inventory_loads():
    assert load_inventory(REPO / "fleet" / "local.toml").devices


# -- --json errors ---------------------------------------------------------------------------

def assert_json_error(result, code: int, *needles: str) -> dict:
    """Exactly one JSON object on stdout, {error, exit_code, hint}, agreeing with stderr and the exit code."""
    assert result.code == code, (result.stdout, result.stderr)
    obj = json.loads(result.stdout)  # one object and nothing else
    assert set(obj) == {"error", "exit_code", "hint"} and obj["exit_code"] == code
    assert isinstance(obj["hint"], str) and obj["hint"]
    for needle in needles:
        assert needle in obj["error"], (needle, obj["error"])
    assert "Traceback" not in result.stderr
    return obj


def test_json_error_of_a_data_error_keeps_the_hint_apart(edgekit, tmp_path):
    data = relabelled(tmp_path / "eval-bad.npz", 5, 11)
    result = edgekit("evaluate", EXAMPLE_ONNX, "--data", data, "--json", *FAST)
    assert_clean_error(result, "labels span 0..11")
    obj = assert_json_error(result, 2, "eval-bad.npz", "labels span 0..11")
    assert obj["hint"] == "labels must be class indices 0..9"
    assert obj["error"] in result.stderr  # the same one line


def test_json_error_of_a_profile_and_an_inventory(edgekit, tmp_path):
    target = profile_with(tmp_path, "max_accuracy_drop = 0.05", "max_accuracy_drop = 1")
    obj = assert_json_error(edgekit("targets", "show", target, "--json"), 2, "max_accuracy_drop = 1")
    assert obj["hint"].startswith("give 0 to 0.5")
    obj = assert_json_error(edgekit("fleet", "status", "--inventory", typo_inventory(tmp_path), "--json"), 2,
                            "raspbery-pi-4")
    assert obj["hint"].startswith("did you mean raspberry-pi-4")


def test_json_error_without_an_own_hint_gets_its_kind_of_hint(edgekit, tmp_path):
    obj = assert_json_error(edgekit("quantize", EXAMPLE_ONNX, "--precision", "int4", "-o", tmp_path / "q.onnx",
                                    "--json"), 2, "--precision 'int4'")
    assert "flag" in obj["hint"]
    obj = assert_json_error(edgekit("evaluate", tmp_path / "none.onnx", "--data", EVAL, "--json"), 2, "none.onnx")
    assert ".onnx" in obj["hint"]
    (tmp_path / "junk.edgekit").write_bytes(b"not a tar")
    obj = assert_json_error(edgekit("push", tmp_path / "junk.edgekit", "--inventory", typo_inventory(tmp_path),
                                    "--json"), 2, "junk.edgekit")
    assert "edgekit package" in obj["hint"]


def test_json_usage_errors(edgekit):
    obj = assert_json_error(edgekit("evaluate", "--json"), 2, "Missing argument")
    assert obj["hint"].endswith("evaluate --help`")
    obj = assert_json_error(edgekit("calibrate", EXAMPLE_ONNX, "--target", "host-cpu", "--calibration", CALIB,
                                    "--eval", EVAL, "-o", "out", "--runs", "1", "--json"), 2, "--runs")
    assert "calibrate --help" in obj["hint"]
    assert_json_error(edgekit("targets", "list", "--json", "--bogus"), 2, "--bogus")


def test_without_json_stdout_stays_empty(edgekit, tmp_path):
    result = edgekit("fleet", "status", "--inventory", typo_inventory(tmp_path))
    assert_clean_error(result, "raspbery-pi-4")
    assert result.stdout == ""
    usage = edgekit("targets", "list", "--bogus")
    assert usage.code == 2 and usage.stdout == "" and "--bogus" in usage.stderr


def test_a_result_already_printed_is_the_one_json_object(edgekit, tmp_path):
    """calibrate --json prints its record even when no candidate passes (exit 3): no second object."""
    target = profile_with(tmp_path, 'precisions = ["fp32", "fp16", "int8-dynamic", "int8-static", "int8-token", "int8-block", "int4-block"]',
                          'precisions = ["fp32"]')
    target.write_text(target.read_text().replace("max_latency_ms_p95 = 1000.0", "max_latency_ms_p95 = 1e-6"))
    result = edgekit("calibrate", EXAMPLE_ONNX, "--target", target, "--calibration", CALIB, "--eval", EVAL,
                     "-o", tmp_path / "out", "--eval-samples", "50", "--runs", "5", "--search", "off", "--json")
    assert result.code == 3, result.stderr
    record = json.loads(result.stdout)
    assert record["chosen"] is None and record["schema"].startswith("edgekit.calibration/")


def test_a_name_that_looks_like_an_emoji_code_is_printed_as_written(edgekit, tmp_path):
    # rich turned 'nomod:x: cannot import' into 'nomod❌ cannot import', and a device 'cam:fire:' into 'cam🔥'
    result = edgekit("evaluate", EXAMPLE_ONNX, "--data", tmp_path / "set:x:1.npz", *FAST)
    assert_clean_error(result, "set:x:1.npz: not found")
    inventory = write_inventory(tmp_path / "fleet.toml", [{"name": "cam:fire:", "transport": "local",
                                                            "root": str(tmp_path / "cam"), "target": "host-cpu"}])
    status = edgekit("fleet", "status", "--inventory", inventory)
    assert status.code == 0 and "cam:fire:" in status.stdout, status.stdout


def test_rollout_check_refuses_what_the_rollout_refuses(edgekit, tmp_path):
    # --check planned a rollout with --max-failures -1 (exit 0) that the rollout itself refuses
    bundle = build(tmp_path / "dist", "1.0.0")
    inventory = write_inventory(tmp_path / "fleet.toml", [{"name": "dev", "transport": "local",
                                                            "root": str(tmp_path / "dev"), "target": "host-cpu"}])
    result = edgekit("rollout", "--check", bundle.path, "-i", inventory, "--max-failures", "-1")
    assert_clean_error(result, "--max-failures -1: must be 0 or more")


def _one_score_model(path, shape: list, dtype=TensorProto.FLOAT):
    """The digits input (N, 1, 8, 8) reduced to one value per sample: a binary classifier's sigmoid
    (N, 1), or one value (N,) as class ids after an ArgMax are."""
    nodes = [helper.make_node("ReduceMean", ["input"], ["m"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Unsqueeze", ["m", "one"], ["p"]) if len(shape) == 2 else
             helper.make_node("Cast", ["m"], ["p"], to=dtype)]
    axes = [helper.make_tensor("one", TensorProto.INT64, [1], [1])] if len(shape) == 2 else []
    graph = helper.make_graph(nodes, "one-score", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                  ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("p", dtype, shape)], axes)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("shape, dtype, needles", [
    (["N", 1], TensorProto.FLOAT, ("'p' (N, 1) holds one score per sample", "export both classes' scores")),
    (["N"], TensorProto.INT64, ("'p' (N) holds one value per sample", "the logits before an ArgMax")),
])
def test_labels_on_a_model_with_one_value_per_sample_say_what_accuracy_needs(edgekit, tmp_path, shape, dtype,
                                                                             needles):
    # a sigmoid output was refused as '1 classes ... labels must be class indices 0..0', and class ids
    # as "labels have shape (64,), the model's predictions ()"
    model = _one_score_model(tmp_path / "one.onnx", shape, dtype)
    assert_clean_error(edgekit("evaluate", model, "--data", EVAL, *FAST), "labels need a score per class", *needles)


def test_an_output_path_that_cannot_be_written_is_one_line(edgekit, tmp_path):
    # each was a traceback (IsADirectoryError, FileExistsError, FileNotFoundError), exit 1, or (the
    # model itself) wrote the quantized model over its FP32 source
    (tmp_path / "folder").mkdir()
    (tmp_path / "a-file").write_text("")
    model = tmp_path / "model.onnx"
    model.write_bytes(EXAMPLE_ONNX.read_bytes())
    assert_clean_error(edgekit("quantize", EXAMPLE_ONNX, "-p", "fp16", "-o", tmp_path / "folder"),
                       "folder: a folder; give the file to write")
    assert_clean_error(edgekit("quantize", model, "-p", "fp16", "-o", model), "the model itself")
    assert model.read_bytes() == EXAMPLE_ONNX.read_bytes()
    assert_clean_error(edgekit("quantize", EXAMPLE_ONNX, "-p", "fp16", "-o", tmp_path / "a-file" / "q.onnx"),
                       "a-file")
    assert_clean_error(edgekit("package", EXAMPLE_ONNX, "--target", "host-cpu", "--eval", EVAL, "--name", "d",
                               "--version", "1", "-o", tmp_path / "a-file"), "a-file: File exists")
