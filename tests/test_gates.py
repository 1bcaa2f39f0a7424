"""Rollout gates on a real device report, and the planning of waves; bad flags are bad input."""

from __future__ import annotations

import copy
import json

import pytest

from helpers.cli import assert_clean_error, run_edgekit
from edgekit.device_report import DeviceReport, validate_report
from edgekit.errors import ConfigError
from edgekit.fleet.gates import check_report
from edgekit.fleet.inventory import Device
from edgekit.fleet.rollout import parse_batch, plan_waves


def checked(report: dict) -> DeviceReport:
    """A report as a device would send it, through the validation that collect applies."""
    return validate_report(json.dumps(report).encode(), "r.json")


def with_budgets(manifest: dict, **budgets) -> dict:
    changed = copy.deepcopy(manifest)
    changed["target"]["budgets"].update(budgets)
    return changed


def test_a_report_within_the_bundles_budgets_passes(real_report):
    report, manifest = real_report["report"], real_report["manifest"]
    assert manifest["target"]["budgets"]["max_latency_ms_p95"] is not None  # the gates below are really applied
    assert check_report("cam-1", checked(report), manifest) == []


def test_each_gate_names_the_device_the_numbers_and_the_budget(real_report):
    report, manifest = real_report["report"], real_report["manifest"]
    metrics = report["metrics"]
    p95, rss = metrics["latency_ms"]["p95"], metrics["peak_rss_mb"]
    tight = with_budgets(manifest, max_latency_ms_p95=p95 / 2, max_peak_rss_mb=rss / 2)
    breaches = {b.gate: b for b in check_report("cam-1", checked(report), tight)}
    assert set(breaches) == {"latency_p95", "peak_rss_mb"}
    assert breaches["latency_p95"].measured == p95 and breaches["latency_p95"].limit == p95 / 2
    assert breaches["latency_p95"].message == f"cam-1: latency_p95: p95 latency {p95:.6g} ms > budget {p95 / 2:.6g} ms"
    assert f"peak RSS {rss:.6g} MiB > budget {rss / 2:.6g} MiB" in breaches["peak_rss_mb"].message


def test_accuracy_is_gated_against_the_bundles_expected_host_accuracy(real_report):
    report, manifest = copy.deepcopy(real_report["report"]), real_report["manifest"]
    expected = manifest["expected"]["accuracy"]
    budget = manifest["target"]["budgets"]["max_accuracy_drop"]
    report["metrics"]["accuracy"] = expected - budget / 2  # within the budget
    assert check_report("cam-1", checked(report), manifest) == []
    report["metrics"]["accuracy"] = expected - 2 * budget
    # An FP32 bundle is its own baseline: the drop against FP32 breaks the same budget.
    breach, fp32 = check_report("cam-1", checked(report), manifest)
    assert fp32.gate == "drop_vs_fp32" and fp32.measured == pytest.approx(2 * budget)
    assert breach.gate == "accuracy_drop" and breach.measured == pytest.approx(2 * budget)
    assert f"(device {expected - 2 * budget:.4f}, host {expected:.4f})" in breach.message
    report["metrics"]["accuracy"] = None  # a budget with nothing measured is not a pass
    assert [b.gate for b in check_report("cam-1", checked(report), manifest)] == ["accuracy_drop"]


def test_fidelity_bundles_are_gated_on_cosine(real_report):
    report, manifest = copy.deepcopy(real_report["report"]), copy.deepcopy(real_report["manifest"])
    manifest["expected"].update(accuracy=None, fidelity={"cosine": 0.999, "top1_agreement": 1.0, "sqnr_db": 30.0})
    report["metrics"].update(accuracy=None, fidelity={"cosine": 0.90, "top1_agreement": 0.9, "sqnr_db": 10.0})
    (breach,) = check_report("cam-1", checked(report), with_budgets(manifest, min_fidelity_cosine=0.95))
    assert breach.gate == "fidelity_cosine" and "fidelity cosine 0.9 < budget 0.95" in breach.message


def test_a_failed_evaluation_breaks_the_evaluation_gate(real_report):
    report = copy.deepcopy(real_report["report"])
    report.update(status="failed", error="ModelLoadError: ConvInteger is not implemented")
    (breach,) = check_report("cam-1", checked(report), real_report["manifest"])
    assert breach.gate == "evaluation" and "ConvInteger is not implemented" in breach.message


def devices(n: int) -> list[Device]:
    return [Device(name=f"d{i}", transport="local", root=f"/tmp/d{i}", target="host-cpu") for i in range(n)]


@pytest.mark.parametrize("canary, batch, sizes", [
    (1, "25%", [1, 3, 3, 3]),     # 25% of 10 devices, rounded up
    (2, "3", [2, 3, 3, 2]),
    (0, "100%", [10]),
    (1, "1", [1] + [1] * 9),
    (20, "5", [10]),              # a canary larger than the fleet is the whole fleet
])
def test_waves(canary, batch, sizes):
    waves = plan_waves(devices(10), canary, batch)
    assert [len(members) for _, members in waves] == sizes
    assert [d.name for _, members in waves for d in members] == [f"d{i}" for i in range(10)]
    assert waves[0][0] == ("canary" if canary else "batch 1")


@pytest.mark.parametrize("text", ["0", "0%", "150%", "abc", "2.5", "-1", ""])
def test_bad_batch_values_are_refused(text):
    with pytest.raises(ConfigError, match="--batch"):
        parse_batch(text)


@pytest.mark.parametrize("flags, needle", [
    (("--batch", "zero"), "--batch 'zero': give a number of devices"),
    (("--canary", "-1"), "--canary -1: must be 0 or more"),
    (("--max-failures", "-2"), "--max-failures -2: must be 0 or more"),
])
def test_bad_rollout_flags_are_one_line_errors(tmp_path, bundles, flags, needle):
    result = run_edgekit("rollout", bundles["1.0.0"].path, "--inventory", "fleet/local.toml", "--store", tmp_path / "s.db", *flags)
    assert_clean_error(result, needle)


def test_accuracy_is_also_gated_against_the_fp32_baseline(real_report):
    report, manifest = copy.deepcopy(real_report["report"]), copy.deepcopy(real_report["manifest"])
    budget = manifest["target"]["budgets"]["max_accuracy_drop"]
    got = report["metrics"]["accuracy"]
    manifest["expected"]["accuracy"] = got  # the host measured this very model: no drift
    manifest["expected"]["baseline_accuracy"] = got + budget / 2
    assert check_report("cam-1", checked(report), manifest) == []
    manifest["expected"]["baseline_accuracy"] = got + 3 * budget
    (breach,) = check_report("cam-1", checked(report), manifest)
    assert breach.gate == "drop_vs_fp32" and breach.measured == pytest.approx(3 * budget)
    assert f"(device {got:.4f}, FP32 {got + 3 * budget:.4f})" in breach.message
