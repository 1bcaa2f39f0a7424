"""`edgekit report` over language-model reports stored through the store's API (no model):
the LM columns in rows, cohorts, drift and compare across devices, targets and versions;
the HTML's generation triangle and cache-vs-recompute curve; a one-pass model's rows and
cohorts in the same store keep their columns."""

from __future__ import annotations

import csv
import io
import json

import pytest

from helpers.cli import run_edgekit
from helpers.lmreports import DRIFTING, FP32_PPL, KV_BYTES_PER_TOKEN, SLOW, TARGETS, devices, fill_lm_store, lm_report

LM_COLUMNS = ("perplexity", "ppl_increase", "kl_divergence", "top1_agreement", "prefill_tokens_per_s",
              "decode_tokens_per_s", "ttft_ms", "peak_rss_mb", "model_mb", "kv_cache_bytes",
              "recompute_decode_tokens_per_s", "recompute_peak_rss_mb")


def _one_pass(device: str) -> dict:
    """A one-pass model's report (accuracy, latency, memory) in the same store."""
    report = lm_report(device, "host-cpu-lm", "1.0.0")
    report["bundle"].update(name="digits", target="host-cpu", precision="int8-dynamic")
    m = report["metrics"]
    report["metrics"] = {"accuracy": 0.96, "accuracy_expected": 0.96, "fidelity": None, "fidelity_expected": None,
                         "latency_ms": m["latency_ms"], "load_ms": 12.0, "peak_rss_mb": 80.0, "model_mb": 0.1,
                         "n": 100, "expected": {"accuracy": 0.96, "n": 100}}
    return report


FAILED = "lm-hc-04"  # its evaluation ran out of memory: a row without numbers among the LM rows


def _failed() -> dict:
    report = lm_report(FAILED, "host-cpu-lm", "1.1.0")
    report.update(status="failed", error="out of memory (MemoryError)")
    report["metrics"] = {k: None for k in ("accuracy", "accuracy_expected", "fidelity", "fidelity_expected",
                                           "latency_ms", "load_ms", "peak_rss_mb", "model_mb", "n")}
    return report


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from edgekit.device_report import validate_report
    from edgekit.store import open_store

    path = fill_lm_store(tmp_path_factory.mktemp("lm-report") / "fleet.db")
    with open_store(path) as s:
        s.touch_device(FAILED, target="host-cpu-lm", transport="local", reachable=True)
        assert s.add_report(FAILED, validate_report(json.dumps(_failed()).encode(), FAILED))
        for device in ("digits-01", "digits-02"):
            s.touch_device(device, target="host-cpu", transport="local", reachable=True)
            assert s.add_report(device, validate_report(json.dumps(_one_pass(device)).encode(), device))
    return path


def _report(store, *args):
    result = run_edgekit("report", "--store", store, *args)
    assert result.code == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def compared(store):
    return _report(store, "--json", "--compare", "1.0.0", "1.1.0").json()


def test_rows_carry_the_lm_metrics_of_every_device(compared):
    rows = {(r["device"], r["version"]): r for r in compared["rows"] if r["name"] == "smollm2"}
    assert set(rows) == {(d, v) for d in devices() for v in ("1.0.0", "1.1.0")} | {(FAILED, "1.1.0")}
    assert rows.pop((FAILED, "1.1.0"))["status"] == "failed"
    for (device, version), r in rows.items():
        assert all(r[c] is not None for c in LM_COLUMNS), r
        sent = lm_report(device, r["target"], version)["metrics"]
        if (device, version) != (DRIFTING, "1.1.0"):
            assert r["perplexity"] == pytest.approx(sent["perplexity"])
        assert r["ppl_increase"] == pytest.approx(r["perplexity"] / FP32_PPL - 1)
        assert r["kv_cache_bytes"] == KV_BYTES_PER_TOKEN * TARGETS[r["target"]] == r["kv_cache_bytes_measured"]
        assert r["context"] == TARGETS[r["target"]] and r["kv_cache"] == "cache"
        assert [p["context"] for p in r["kv_curve"]] == sorted(p["context"] for p in r["kv_curve"])


def test_lm_budgets_and_drift_are_judged(compared):
    rows = {(r["device"], r["version"]): r for r in compared["rows"] if r["name"] == "smollm2"}
    # the Pi's budget is a 10% increase: every device of 1.1.0 there is over it, none on the host class
    over = {k for k, r in rows.items() if any("perplexity increase" in b for b in r["over_budget"])}
    assert over == {(d, "1.1.0") for d, t in devices().items() if t == "raspberry-pi-5-lm"}
    assert any("decode speed" in b for b in rows[(SLOW, "1.0.0")]["over_budget"])
    kinds = {(f["device"], f["version"], f["kind"]) for f in compared["drift"]}
    assert kinds == {(DRIFTING, "1.1.0", "perplexity"), (SLOW, "1.0.0", "decode speed"), (SLOW, "1.1.0", "decode speed")}
    # a language model's step latency is its decode speed: not flagged twice
    assert not any(f["kind"] == "latency" for f in compared["drift"])


def test_compare_reads_lm_metrics_across_versions_per_target(compared):
    by = {(c["target"], c["metric"]): c for c in compared["compare"]}
    assert {t for t, _ in by} == set(TARGETS)  # the one-pass bundle has no 1.1.0: nothing to compare
    for target in TARGETS:
        for metric in LM_COLUMNS:
            c = by[(target, metric)]
            assert c["before"] is not None and c["after"] is not None, c
        increase = by[(target, "ppl_increase")]
        assert increase["after"] > increase["before"]
        assert by[(target, "decode_tokens_per_s")]["change"] == pytest.approx(
            by[(target, "decode_tokens_per_s")]["after"] - by[(target, "decode_tokens_per_s")]["before"])
    pi = [c for c in compared["cohorts"] if c["target"] == "raspberry-pi-5-lm" and c["version"] == "1.1.0"][0]
    assert pi["metrics"]["decode_tokens_per_s"]["min"] < pi["metrics"]["decode_tokens_per_s"]["median"]


def test_one_pass_rows_and_cohorts_keep_their_columns(compared, store):
    one_pass = [r for r in compared["rows"] if r["name"] == "digits"]
    assert len(one_pass) == 2 and all("perplexity" not in r and "kv_curve" not in r for r in one_pass)
    cohorts = list(csv.DictReader(io.StringIO(_report(store, "--format", "csv", "--section", "cohorts").stdout)))
    lm = [c for c in cohorts if c["name"] == "smollm2"]
    assert lm and all(c["ppl_increase_median"] and c["decode_tokens_per_s_median"] for c in lm)
    digits = [c for c in cohorts if c["name"] == "digits"][0]
    assert digits["accuracy_median"] and not digits["ppl_increase_median"]
    only = list(csv.DictReader(io.StringIO(_report(store, "--format", "csv", "--section", "cohorts",
                                                   "--name", "digits").stdout)))
    assert not any("ppl" in k or "decode" in k for k in only[0])


def test_terminal_tables_show_lm_columns(store):
    out = _report(store, "--compare", "1.0.0", "1.1.0").stdout
    assert "smollm2 on raspberry-pi-5-lm (context 1024)" in out and "ppl+" in out and "decode" in out
    assert "smollm2 on host-cpu-lm (context 512)" in out and "out of memory (MemoryError)" in out
    assert "language-model cohorts" in out and "decode tok/s" in out and "ppl+ %" in out


def test_html_draws_the_triangle_and_the_cache_curve_per_target(store, tmp_path):
    page = tmp_path / "report.html"
    _report(store, "-o", page, "--compare", "1.0.0", "1.1.0")
    html = page.read_text()
    for target, context in TARGETS.items():
        assert f"smollm2 on {target}: decode speed and memory, by perplexity increase" in html
        assert f"smollm2 on {target}: KV cache against recompute (profile context {context})" in html
    assert html.count("perplexity increase over FP32 (%)") == 2 and html.count("KV cache by the formula") == 2
    assert "Language-model cohorts" in html and ">Cohorts<" in html  # the one-pass bundle keeps its table
    assert "decode tokens/s (≥10)" in html and "ppl increase (≤10%)" in html


def test_triangle_colours_are_the_perplexity_increase(compared):
    from edgekit.report.lmcharts import curve_by_version, lm_triangle_figure

    rows = [r for r in compared["rows"] if r["target"] == "raspberry-pi-5-lm"]
    cohorts = [c for c in compared["cohorts"] if c["target"] == "raspberry-pi-5-lm" and c["name"] == "smollm2"]
    fig = lm_triangle_figure("t", cohorts, rows, set(), {"min_decode_tokens_per_s": 10.0})
    dots = [c for c in fig.axes[0].collections if len(c.get_offsets()) == 3]
    for version, dot in zip(("1.0.0", "1.1.0"), dots):
        members = [r for r in rows if r["version"] == version]
        assert [tuple(p) for p in dot.get_offsets()] == [(r["decode_tokens_per_s"], r["peak_rss_mb"]) for r in members]
        assert list(dot.get_array()) == pytest.approx([r["ppl_increase"] for r in members])
    curve = curve_by_version(rows)["1.0.0"]
    first = [r["kv_curve"][0] for r in rows if r["version"] == "1.0.0"]
    assert curve[0]["cache_tps"] == pytest.approx(sorted(p["cache"]["decode_tokens_per_s"] for p in first)[1])
    assert curve[-1]["kv_cache_bytes"] == KV_BYTES_PER_TOKEN * 1024


def test_lm_calibration_record_in_every_format(tmp_path):
    from helpers.lmreports import lm_calibration_record

    record = lm_calibration_record(tmp_path / "calibration.json")
    rows = run_edgekit("report", "--calibration", record, "--json").json()["candidates"]
    assert [r["kv_cache"] for r in rows] == ["cache", "cache", "recompute"]
    assert rows[1]["chosen"] and rows[1]["ppl_increase"] == 0.0024 and rows[2]["decode_tokens_per_s"] == 1.3
    table = run_edgekit("report", "--calibration", record).stdout
    assert "ppl+" in table and "★ int4-block-b32-minmax-offset-cache" in table and "+0.24%" in table
    page = tmp_path / "calibration.html"
    assert run_edgekit("report", "--calibration", record, "-o", page).code == 0
    html = page.read_text()
    assert "calibration for raspberry-pi-5-lm: every candidate" in html and "perplexity increase over FP32 (%)" in html
    assert "recompute decode tokens/s" in html and "min_decode_tokens_per_s: 1.30 &lt; 10" in html


def test_perplexity_drift_against_siblings_when_the_host_expected_no_perplexity():
    """A report whose bundle carries no host perplexity: the devices are compared with each other."""
    from edgekit.device_report import DeviceReport
    from edgekit.report.analysis import analyse

    def report(device: str, off: float) -> dict:
        sent = lm_report(device, "host-cpu-lm", "1.0.0", ppl_off=off)
        sent["metrics"]["expected"].update(perplexity=None)
        return {"device": device, "report": DeviceReport.from_object(sent), "collected_at": "2026-11-26T10:00:00Z"}

    same = analyse([report(f"d{i}", 0.0) for i in range(3)])
    assert same["drift"] == []
    one_off = analyse([report("d0", 0.0), report("d1", 0.0), report("d2", 0.0), report("d3", 0.03)])
    assert [(f["device"], f["kind"]) for f in one_off["drift"]] == [("d3", "perplexity")]
    assert "the median of its 4 cohort devices" in one_off["drift"][0]["reason"]
    assert analyse([report("d0", 0.0), report("d1", 0.03)])["drift"] == []  # two devices: no median to trust
