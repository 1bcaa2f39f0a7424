"""`edgekit report` over a store filled by real local devices, collect and rollouts: rows,
cohorts, drift and health in table, json and csv; --compare; calibration records; an empty,
a missing and an older store."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import statistics

import pytest

from helpers.cli import assert_clean_error, run_edgekit
from helpers.reportfleet import FAILING, HEALTHY, LOW, OFFLINE, SLOW


VERSIONS = ("1.0.0", "1.0.1")


def _report(fleet, *args):
    result = run_edgekit("report", "--store", fleet.store, "--inventory", fleet.inventory, *args)
    assert result.code == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def whole(report_fleet):
    return _report(report_fleet, "--format", "json").json()


def test_rows_one_per_device_and_version_with_what_runs_now(report_fleet, whole):
    rows = {(r["device"], r["version"]): r for r in whole["rows"]}
    expected = {(d, v) for d in HEALTHY + [FAILING] for v in VERSIONS} | {(LOW, "1.0.1"), (SLOW, "1.0.1")}
    assert set(rows) == expected
    assert {r["target"] for r in whole["rows"]} == {"host-cpu", "x86-gateway"}
    # The x86-gateway rollout halted in its batch: gw-02 and gw-03 were put back on 1.0.0.
    current = {r["device"]: r["version"] for r in whole["rows"] if r["current"]}
    assert current == {"hc-01": "1.0.1", "hc-02": "1.0.1", "hc-03": "1.0.1", "gw-01": "1.0.1", "gw-02": "1.0.0",
                       "gw-03": "1.0.0", FAILING: "1.0.0", LOW: "1.0.1", SLOW: "1.0.1"}
    for (device, _), r in rows.items():
        if device == FAILING:
            assert r["status"] == "failed" and "numpy" in r["error"]
            continue
        assert r["status"] == "ok" and r["runtime"] == "onnxruntime" and r["arch"]
        assert r["drop"] == pytest.approx(r["accuracy_expected"] - r["accuracy"])
        assert 0 < r["latency_p50"] <= r["latency_p95"] and r["peak_rss_mb"] > 10 and r["load_ms"] > 0
        budget = {"host-cpu": (1000.0, 4096.0), "x86-gateway": (30.0, 2048.0)}[r["target"]]
        assert (r["latency_budget_p95"], r["rss_budget_mb"]) == budget  # from targets/*.toml


def test_cohorts_summarise_their_devices(whole):
    cohorts = {(c["target"], c["version"]): c for c in whole["cohorts"]}
    assert set(cohorts) == {(t, v) for t in ("host-cpu", "x86-gateway") for v in VERSIONS}
    assert cohorts[("host-cpu", "1.0.1")]["devices"] == 5 and cohorts[("x86-gateway", "1.0.1")]["failed"] == 1
    for (target, version), c in cohorts.items():
        ok = [r for r in whole["rows"] if (r["target"], r["version"], r["status"]) == (target, version, "ok")]
        assert c["ok"] == len(ok)
        for metric in ("accuracy", "latency_p50", "latency_p95", "peak_rss_mb", "load_ms"):
            values = [r[metric] for r in ok]
            assert c["metrics"][metric] == {"median": pytest.approx(statistics.median(values)), "min": min(values),
                                            "max": max(values), "n": len(values)}


def test_planted_drift_is_flagged_with_reasons_and_no_healthy_device_is(whole):
    flags = {(f["device"], f["kind"]): f for f in whole["drift"]}
    assert set(flags) == {(LOW, "accuracy"), (SLOW, "latency")}, [f["reason"] for f in whole["drift"]]
    low = flags[(LOW, "accuracy")]
    assert low["value"] == pytest.approx(low["reference"] - 0.05)
    assert f"{low['value']:.2%}" in low["reason"] and "5.0 pp below the host's" in low["reason"]
    slow = flags[(SLOW, "latency")]
    assert slow["score"] > 3.5 and f"{slow['value']:.4g} ms" in slow["reason"] and "robust score" in slow["reason"]
    flagged_rows = {r["device"] for r in whole["rows"] if r["flags"]}
    assert flagged_rows == {LOW, SLOW}


def test_health_counts_versions_failures_silence_and_rollouts(whole):
    h = whole["health"]
    runs = {(v["target"], v["version"]): set(v["devices"]) for v in h["versions"]}
    assert runs[("x86-gateway", "1.0.0")] == {"gw-02", "gw-03", FAILING}
    assert runs[("host-cpu", "1.0.1")] == {"hc-01", "hc-02", "hc-03", LOW, SLOW}
    assert [e["device"] for e in h["failed_evaluations"]] == [FAILING]
    assert [d["device"] for d in h["unreachable"]] == [OFFLINE] and "refused" in h["unreachable"][0]["error"]
    assert [d["device"] for d in h["never_reported"]] == [OFFLINE]
    assert {(g["device"], g["gate"]) for g in h["failed_gates"]} == {(FAILING, "evaluation")}
    outcomes = {(r["target"], r["status"]) for r in h["rollouts"]}
    assert outcomes == {("host-cpu", "completed"), ("x86-gateway", "halted")}
    halted = next(r for r in h["rollouts"] if r["status"] == "halted")
    assert halted["devices_failed"] == [FAILING] and "halted at wave 2" in halted["reason"]
    assert h["devices"] == len(HEALTHY) + 4


def _csv(fleet, section):
    text = _report(fleet, "--format", "csv", "--section", section).stdout
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_and_table_hold_the_same_rows(report_fleet, whole):
    rows = _csv(report_fleet, "rows")
    assert {(r["device"], r["version"]) for r in rows} == {(r["device"], r["version"]) for r in whole["rows"]}
    by_key = {(r["device"], r["version"]): r for r in whole["rows"]}
    for r in rows:
        want = by_key[(r["device"], r["version"])]
        assert (float(r["accuracy"]) if r["accuracy"] else None) == want["accuracy"]
        assert r["flags"] == "; ".join(want["flags"])
    cohorts = _csv(report_fleet, "cohorts")
    assert {(c["target"], c["version"], int(c["devices"])) for c in cohorts} == \
        {(c["target"], c["version"], c["devices"]) for c in whole["cohorts"]}
    health = _csv(report_fleet, "health")
    kinds = {(h["category"], h["device"]) for h in health}
    assert {("unreachable", OFFLINE), ("never reported", OFFLINE), ("failed evaluation", FAILING),
            ("failed gate", FAILING)} <= kinds
    table = _report(report_fleet).stdout
    for device in HEALTHY + [FAILING, OFFLINE, LOW, SLOW]:
        assert device in table
    assert table.count("DRIFT") == 2 and "halted" in table and "unreachable" in table and "5.0 pp below" in table


def test_compare_gives_each_metric_change_per_target(report_fleet, whole):
    result = _report(report_fleet, "--compare", "1.0.0", "1.0.1", "--format", "json", "--section", "compare").json()
    assert {r["target"] for r in result} == {"host-cpu", "x86-gateway"}
    cohorts = {(c["target"], c["version"]): c["metrics"] for c in whole["cohorts"]}
    for r in result:
        before, after = cohorts[(r["target"], "1.0.0")][r["metric"]], cohorts[(r["target"], "1.0.1")][r["metric"]]
        assert (r["before"], r["after"]) == (before["median"], after["median"])
        assert r["change"] == pytest.approx(after["median"] - before["median"])
    table = _report(report_fleet, "--compare", "1.0.0", "1.0.1", "--section", "compare").stdout
    assert "1.0.0 -> 1.0.1" in table and "p95 ms" in table  # latency_p95, labelled with its unit
    assert "drop_fp32" not in table and "FP32 drop %" in table  # shown as its field name, in fractions, before


def test_filters_select_and_a_wrong_filter_names_what_is_there(report_fleet):
    rows = _report(report_fleet, "--target", "x86-gateway", "--version", "1.0.1", "--json", "--section", "rows").json()
    assert {(r["device"], r["version"]) for r in rows} == {(d, "1.0.1") for d in ("gw-01", "gw-02", "gw-03", FAILING)}
    bad = run_edgekit("report", "--store", report_fleet.store, "--version", "9.9")
    assert_clean_error(bad, "--version 9.9", "1.0.0, 1.0.1")
    assert_clean_error(run_edgekit("report", "--store", report_fleet.store, "--compare", "1.0.0", "2.0"),
                       "--compare 1.0.0 2.0", "no target has reports of both")
    assert_clean_error(run_edgekit("report", "--store", report_fleet.store, "--format", "csv", "--section", "compare"),
                       "--section compare")


def test_an_empty_store_says_how_to_fill_it(tmp_path):
    from edgekit.store import open_store

    open_store(tmp_path / "empty.db").close()
    result = run_edgekit("report", "--store", tmp_path / "empty.db", "--format", "html", "-o", tmp_path / "x.html")
    assert result.code == 0 and "Traceback" not in result.stderr
    assert "no reports yet" in result.stderr and "edgekit collect" in result.stderr
    assert not (tmp_path / "x.html").exists()
    assert_clean_error(run_edgekit("report", "--store", tmp_path / "none.db"), "none.db: no store there", "edgekit collect")
    assert not (tmp_path / "none.db").exists()  # a report does not create a store
    # --json gives its object all the same (it printed nothing on stdout, exit 0, a script's parse failed)
    as_json = run_edgekit("report", "--store", tmp_path / "empty.db", "--json")
    assert as_json.code == 0 and as_json.json()["rows"] == [] and as_json.json()["health"]["devices"] == 0


def test_an_older_or_foreign_store_is_one_clear_line(tmp_path):
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as db:  # a layout from before the store had a schema version
        db.execute("CREATE TABLE reports (device TEXT, run_id TEXT, report TEXT)")
        db.execute("INSERT INTO reports VALUES ('cam-01', 'r1', '{}')")
    assert_clean_error(run_edgekit("report", "--store", old), str(old), "store")
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (999)")
    assert_clean_error(run_edgekit("report", "--store", newer), "schema 999", "upgrade edgekit")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 100)
    assert_clean_error(run_edgekit("report", "--store", junk), str(junk))


def test_a_corrupt_stored_report_is_one_clear_line_naming_it(report_fleet, tmp_path):
    """Stored reports are read as plain data (collect validated them): a row that is no report
    any more, broken JSON or JSON of another shape, is named, never a traceback."""
    for n, corrupt in enumerate(('{"schema": 1, "run_id": ', '{"schema": 1, "run_id": "r", "status": "ok"}')):
        store = tmp_path / f"corrupt-{n}.db"
        with sqlite3.connect(report_fleet.store) as src, sqlite3.connect(store) as dst:
            src.backup(dst)
        with sqlite3.connect(store) as db:
            device, run_id = db.execute("SELECT device, run_id FROM reports ORDER BY device, run_id").fetchone()
            db.execute("UPDATE reports SET report = ? WHERE device = ? AND run_id = ?", (corrupt, device, run_id))
        assert_clean_error(run_edgekit("report", "--store", store), f"{run_id!r} of device {device!r} is corrupt",
                           f"edgekit fleet forget {device}")


# -- calibration records ---------------------------------------------------------------------


def test_calibration_record_as_table_json_and_csv(calibration_record):
    record = json.loads(calibration_record.read_text())
    as_json = run_edgekit("report", "--calibration", calibration_record, "--json").json()
    assert [c["id"] for c in as_json["candidates"]] == [c["id"] for c in record["candidates"]]
    assert [c["id"] for c in as_json["candidates"] if c["chosen"]] == [record["chosen"]]
    fp32 = next(c for c in as_json["candidates"] if c["id"] == "fp32")
    assert fp32["passed"] is False and "max_model_mb" in fp32["failed_budgets"]
    rows = list(csv.DictReader(io.StringIO(run_edgekit("report", "--calibration", calibration_record,
                                                       "--format", "csv").stdout)))
    assert [r["id"] for r in rows] == [c["id"] for c in record["candidates"]]
    table = run_edgekit("report", "--calibration", calibration_record)
    assert table.code == 0 and f"★ {record['chosen']}" in table.stdout and "max_model_mb" in table.stdout


def test_a_bad_calibration_file_is_one_clear_line(tmp_path):
    assert_clean_error(run_edgekit("report", "--calibration", tmp_path / "nope.json"), "nope.json: not found")
    (tmp_path / "x.json").write_text('{"schema": 1, "rows": []}')
    assert_clean_error(run_edgekit("report", "--calibration", tmp_path / "x.json"), "field 'schema'")


# -- the analysis on its own: floors, small cohorts, subsets, what runs where ----------------


@pytest.fixture(scope="module")
def template(report_fleet):
    from edgekit.store import open_store

    with open_store(report_fleet.store) as store:
        return store.reports(device="hc-01", version="1.0.1")[-1]["report"].record()


def _as_device(template, device, run_id, version=None, **metrics):
    """A copy of a real report, changed as a device would send it, through the collect validation."""
    from edgekit.device_report import validate_report

    report = json.loads(json.dumps(template))
    report["run_id"], report["device"]["name"] = run_id, device
    report["bundle"]["version"] = version or report["bundle"]["version"]
    for key, value in metrics.items():
        if key.startswith("latency_"):
            report["metrics"]["latency_ms"][key[len("latency_"):]] = value
        elif key == "n_expected":
            report["metrics"]["expected"]["n"] = value
        else:
            report["metrics"][key] = value
    return {"device": device, "report": validate_report(json.dumps(report).encode(), device)}


def test_identical_siblings_and_cohorts_too_small_to_judge_flag_nothing(template):
    from edgekit.report.analysis import analyse

    same = [_as_device(template, f"d{i}", f"r{i}") for i in range(5)]
    assert analyse(same)["drift"] == []  # a MAD of zero does not make everyone an outlier
    pair = [same[0], _as_device(template, "slow", "r9", latency_p50=template["metrics"]["latency_ms"]["p50"] * 40)]
    assert analyse(pair)["drift"] == []  # two devices: no median to stand out from
    three = pair + [same[1]]
    assert [(f["device"], f["kind"]) for f in analyse(three)["drift"]] == [("slow", "latency")]


def test_a_device_on_a_subset_gets_its_sampling_error_as_allowance(template):
    from edgekit.report.analysis import analyse

    expected = template["metrics"]["accuracy_expected"]
    total = template["metrics"]["n"]
    low = round(expected - 0.02, 6)
    subset = _as_device(template, "sub", "r1", accuracy=low, n=total // 4, n_expected=total)
    whole_set = _as_device(template, "all", "r2", accuracy=low, n=total, n_expected=total)
    flags = analyse([subset, whole_set])["drift"]
    assert [(f["device"], f["kind"]) for f in flags] == [("all", "accuracy")]
    assert "2.0 pp below" in flags[0]["reason"] and "tolerance 1.0 pp" in flags[0]["reason"]


def test_a_restore_after_the_last_report_decides_what_runs(template):
    from edgekit.report.analysis import running_versions

    newer = _as_device(template, "d1", "r2", version="2.0.0")
    older = _as_device(template, "d1", "r1")
    rollout = {"id": 1, "name": "digits", "version": "2.0.0", "target": "host-cpu", "events": [
        {"event": "restore", "ok": True, "device": "d1", "at": "9999-01-01T00:00:00Z",
         "detail": {"to": {"current": older["report"].bundle.version, "previous": None}}}]}
    assert running_versions([older, newer]) == {("d1", "digits"): "2.0.0"}
    assert running_versions([older, newer], [rollout]) == {("d1", "digits"): older["report"].bundle.version}


def test_a_version_far_worse_than_the_one_before_it_needs_a_look(template):
    """2.0.0 replaced the template's version and measures 12 pp lower on every device: its own
    expectation may be as low (no drift), so only the version before it tells. A fall within the
    target's max_accuracy_drop, or a version no device runs now, is not flagged."""
    from edgekit.report.analysis import analyse
    from edgekit.report.views import health_items

    old, acc = template["bundle"]["version"], template["metrics"]["accuracy"]
    before = [_as_device(template, f"d{i}", f"a{i}") for i in range(3)]
    for item in before:
        item["collected_at"] = "2026-01-01T00:00:00Z"
    worse = [_as_device(template, f"d{i}", f"b{i}", version="2.0.0", accuracy=round(acc - 0.12, 6)) for i in range(3)]
    slightly = [_as_device(template, f"d{i}", f"c{i}", version="2.0.0", accuracy=round(acc - 0.004, 6))
                for i in range(3)]
    for item in worse + slightly:
        item["collected_at"] = "2026-02-01T00:00:00Z"
    budgets = {template["bundle"]["target"]: {"max_accuracy_drop": 0.05}}
    health = analyse(before + worse, budgets=budgets)["health"]
    (found,) = health["regressions"]
    assert (found["version"], found["previous"], found["devices"]) == ("2.0.0", old, ["d0", "d1", "d2"])
    assert abs(found["change"] - 0.12) < 1e-6 and found["allowed"] == 0.05
    (item,) = [i for i in health_items(health) if i["category"] == "regression"]
    assert "-12.00 pp" in item["detail"] and f"for {old}" in item["detail"] and "max_accuracy_drop" in item["detail"]
    assert item["device"] == "d0, d1, d2"  # past three: "and N more"
    narrowed = analyse(before + worse, budgets=budgets, version="2.0.0")["health"]["regressions"]
    assert [r["previous"] for r in narrowed] == [old]  # --version narrows the rows, not what 2.0.0 is held against
    assert analyse(before + slightly, budgets=budgets)["health"]["regressions"] == []
    assert analyse(before + slightly)["health"]["regressions"] == []  # 0.4 pp: within the 1 pp default
    back = [_as_device(template, f"d{i}", f"z{i}") for i in range(3)]  # all back on the old version, reported last
    for item in back:
        item["collected_at"] = "2026-03-01T00:00:00Z"
    assert analyse(before + worse + back, budgets=budgets)["health"]["regressions"] == []
