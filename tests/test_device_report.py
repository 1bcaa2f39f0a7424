"""Device reports as untrusted input, and the one typed record a checked report becomes."""

from __future__ import annotations

import copy
import json
import sqlite3

import pytest

from edgekit.device_report import MAX_REPORT_BYTES, validate_report
from edgekit.errors import DataError
from edgekit.fleet.gates import check_report
from edgekit.report.analysis import device_rows
from edgekit.store import REPORT_COLUMNS, Store


def _mutated(report: dict, path: tuple, value) -> bytes:
    bad = copy.deepcopy(report)
    node = bad
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return json.dumps(bad).encode()


@pytest.mark.parametrize("path, value, needle", [
    (("schema",), 2, "field 'schema'"),
    (("status",), "great", "field 'status'"),
    (("run_id",), "../../etc/passwd", "field 'run_id'"),
    (("bundle", "name"), "x y", "field 'bundle.name'"),
    (("device",), KeyError, "field 'device': required field is missing"),
    (("metrics", "latency_ms", "p95"), float("nan"), "'metrics.latency_ms.p95': nan is not a finite number"),
    (("metrics", "peak_rss_mb"), float("inf"), "'metrics.peak_rss_mb': inf is not a finite number"),
    (("metrics", "peak_rss_mb"), "12", "field 'metrics.peak_rss_mb'"),
    (("metrics", "accuracy"), 1.5, "field 'metrics.accuracy'"),
    (("metrics", "latency_ms"), None, "status is ok but field 'metrics.latency_ms' is missing"),
])
def test_bad_reports_are_refused_with_the_field(real_report, path, value, needle):
    with pytest.raises(DataError) as refused:
        validate_report(_mutated(real_report["report"], path, value), "r.json")
    assert needle in str(refused.value) and str(refused.value).startswith("report r.json: ")


def test_size_json_and_filing_are_checked(real_report):
    good = real_report["bytes"]
    assert validate_report(good, "r.json", name="digits", version="1.0.0").run_id == real_report["report"]["run_id"]
    with pytest.raises(DataError, match="over the 1048576-byte limit"):
        validate_report(good + b" " * MAX_REPORT_BYTES, "r.json")
    with pytest.raises(DataError, match="not valid JSON"):
        validate_report(good[:-20], "r.json")
    with pytest.raises(DataError, match="not valid JSON"):
        validate_report(b"[" * 100000 + b"]" * 100000, "r.json")  # nesting deep enough to break a parser
    with pytest.raises(DataError, match="not a JSON object"):
        validate_report(b"[1, 2]", "r.json")
    with pytest.raises(DataError, match="field 'bundle.version' is '1.0.0', but the file is filed under '2.0.0'"):
        validate_report(good, "r.json", name="digits", version="2.0.0")


def test_infinite_sqnr_is_stored_as_null_and_the_rest_is_kept(tmp_path, real_report):
    fidelity = {"top1_agreement": 1.0, "cosine": 1.0, "sqnr_db": float("inf")}
    data = _mutated(real_report["report"], ("metrics", "fidelity"), fidelity)
    assert b"Infinity" in data  # what Python's json writes on the device
    report = validate_report(data, "r.json")
    assert report.record()["metrics"]["fidelity"] == {"top1_agreement": 1.0, "cosine": 1.0, "sqnr_db": None}
    assert report.record()["device"]["kernel"] == real_report["report"]["device"]["kernel"]  # unknown fields are kept
    with Store(tmp_path / "s.db") as store:
        store.add_report("cam-1", report)
        raw = sqlite3.connect(tmp_path / "s.db").execute("SELECT report, cosine FROM reports").fetchone()
    assert "Infinity" not in raw[0] and json.loads(raw[0])["metrics"]["fidelity"]["sqnr_db"] is None
    assert raw[1] == 1.0


def test_the_store_keeps_the_json_the_device_sent(tmp_path, real_report):
    """An integer stays an integer: the stored report is what came, not the typed model's dump."""
    sent = json.loads(_mutated(real_report["report"], ("metrics", "load_ms"), 12))
    report = validate_report(json.dumps(sent).encode(), "r.json")
    assert report.metrics.load_ms == 12 and report.columns()["load_ms"] == 12.0
    with Store(tmp_path / "s.db") as store:
        store.add_report("cam-1", report)
        raw = sqlite3.connect(tmp_path / "s.db").execute("SELECT report FROM reports").fetchone()[0]
        (row,) = store.reports()
    assert raw == json.dumps(sent, sort_keys=True) and '"load_ms": 12,' in raw
    assert row["report"].record() == sent and row["report"].columns() == report.columns()


def test_the_store_the_gates_and_the_fleet_report_read_the_same_numbers(tmp_path, real_report):
    """One flattening: what the store files a report under, what a rollout gate judges and what
    `edgekit report` shows are the same numbers, taken from the device's report."""
    report = validate_report(real_report["bytes"], "r.json")
    sent, flat = real_report["report"], report.columns()
    metrics = sent["metrics"]
    assert flat["latency_p95"] == metrics["latency_ms"]["p95"] and flat["peak_rss_mb"] == metrics["peak_rss_mb"]
    assert flat["accuracy"] == metrics["accuracy"] and flat["n"] == metrics["n"]
    assert flat["n_expected"] == metrics["expected"]["n"] and flat["target"] == sent["bundle"]["target"]
    with Store(tmp_path / "s.db") as store:
        store.add_report("cam-1", report, source="reports/x.json")
        stored = sqlite3.connect(tmp_path / "s.db").execute(
            f"SELECT {', '.join(REPORT_COLUMNS)} FROM reports").fetchone()
    kept = {c: v for c, v in zip(REPORT_COLUMNS, stored) if c in flat}
    assert kept and kept == {c: flat[c] for c in kept}
    (row,) = device_rows([{"device": "cam-1", "report": report}])
    assert {k: row[k] for k in ("accuracy", "latency_p95", "peak_rss_mb", "cosine", "n")} == \
        {k: flat[k] for k in ("accuracy", "latency_p95", "peak_rss_mb", "cosine", "n")}
    budgets = dict(real_report["manifest"]["target"]["budgets"], max_latency_ms_p95=flat["latency_p95"] / 2)
    manifest = {**real_report["manifest"], "target": {**real_report["manifest"]["target"], "budgets": budgets}}
    (breach,) = check_report("cam-1", report, manifest)
    assert breach.gate == "latency_p95" and breach.measured == flat["latency_p95"]
