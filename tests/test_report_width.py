"""The terminal tables fit 80 columns: whole device names and numbers, long text below the
tables, and a wider console shows the columns a narrow one leaves out. Rendered from a store
filled by real local devices (tests/reportfleet.py) and through the real CLI."""

from __future__ import annotations

import io
import json
import re
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
from rich.console import Console

from helpers.cli import run_edgekit
from helpers.reportfleet import FAILING, LOW, OFFLINE, SLOW


def _render(width: int, draw) -> str:
    out = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    draw(out)
    return out.export_text()


def _whole(name: str, text: str) -> bool:
    return re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])", text) is not None


def _assert_fits(text: str, width: int) -> None:
    long = [line for line in text.splitlines() if len(line.rstrip()) > width]
    assert not long, "\n".join(long)


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def analysis(report_fleet):
    from edgekit.report.analysis import analyse
    from edgekit.report.fleetdata import load_fleet

    data = load_fleet(report_fleet.store, inventory=report_fleet.inventory)
    return analyse(data["reports"], data["devices"], data["rollouts"], budgets=data["budgets"],
                   collect_errors=data["collect_errors"], compare=("1.0.0", "1.0.1"))


def test_the_fleet_report_fits_80_columns_with_whole_names_and_every_measurement(report_fleet, analysis):
    from edgekit.report.tables import print_fleet
    from edgekit.terminal import fmt_mib, fmt_ms, fmt_pct

    text = _render(80, lambda out: print_fleet(out, analysis, "all"))
    _assert_fits(text, 80)
    for device in report_fleet.devices:
        assert _whole(device, text), device
    rows = [r for r in analysis["rows"] if r["status"] == "ok"]
    for r in rows:  # what a device measured is there, rounded for reading
        for shown in (fmt_pct(r["accuracy"]), fmt_ms(r["latency_p95"]), fmt_mib(r["peak_rss_mb"])):
            assert _whole(shown, text), (r["device"], shown)
    words = _words(text)
    for reason in [f["reason"] for f in analysis["drift"]] + [r["reason"] for r in analysis["health"]["rollouts"]
                                                               if r["reason"]]:
        assert _words(reason) in words  # below the tables, wrapped but whole
    assert text.count("DRIFT") == len({f["device"] for f in analysis["drift"]})
    failed = next(r for r in analysis["rows"] if r["device"] == FAILING)
    assert _words(failed["error"]) in words


def test_a_wide_console_adds_the_columns_80_leaves_out(analysis):
    from edgekit.report.tables import print_fleet
    from edgekit.terminal import fmt_ms

    narrow = _render(80, lambda out: print_fleet(out, analysis, "rows"))
    wide = _render(200, lambda out: print_fleet(out, analysis, "rows"))
    _assert_fits(wide, 200)
    header = re.compile(r"^device\s.*status$", re.M)
    assert {"arch", "runtime", "last seen", "load"} <= set(re.split(r"\s{2,}", header.search(wide).group(0)))
    assert "arch" not in header.search(narrow).group(0)
    for r in analysis["rows"]:
        if r["load_ms"] is not None:
            assert _whole(fmt_ms(r["load_ms"]), wide)
    cohorts = _render(200, lambda out: print_fleet(out, analysis, "cohorts"))
    c = analysis["cohorts"][0]["metrics"]["latency_p95"]  # spread beside the median when it fits
    assert re.search(rf"{re.escape(fmt_ms(c['median']))} +{re.escape(fmt_ms(c['min']))}–", cohorts) or \
        fmt_ms(c["min"]) == fmt_ms(c["max"])


def test_the_calibration_table_fits_80_columns(calibration_record):
    from edgekit.report.tables import print_calibration
    from edgekit.report.views import calibration_rows

    record = json.loads(calibration_record.read_text())
    text = _render(80, lambda out: print_calibration(out, record, calibration_rows(record)))
    _assert_fits(text, 80)
    assert f"★ {record['chosen']}" in text
    for c in record["candidates"]:
        assert _whole(c["id"], text)
        for budget in c["failed_budgets"] or ():
            assert _words(budget) in _words(text)


def test_the_cli_at_80_columns_report_and_fleet_status(report_fleet, tmp_path):
    store = tmp_path / "copy.db"  # fleet status records contact times: not in the shared store
    with sqlite3.connect(report_fleet.store) as src, sqlite3.connect(store) as dst:
        src.backup(dst)
    in_inventory = [d for d in report_fleet.devices if d not in (LOW, SLOW)]  # those two were planted
    for args, devices in ((("report", "--store", store, "--inventory", report_fleet.inventory), report_fleet.devices),
                          (("fleet", "status", "--inventory", report_fleet.inventory, "--store", store), in_inventory)):
        result = run_edgekit(*args, env={"COLUMNS": "80"})
        assert result.code in (0, 1), result.stderr  # status: 1, the offline device failed
        _assert_fits(result.stdout, 80)
        for device in devices:
            assert _whole(device, result.stdout), (args[0], device)
    assert "refused" in result.stdout.split(f"{OFFLINE}:", 1)[1]  # its error below the status table
    wide = run_edgekit("fleet", "status", "--inventory", report_fleet.inventory, "--store", store)
    header = re.compile(r"^device\s.*$", re.M)
    assert "python" in header.search(wide.stdout).group(0) and "python" not in header.search(result.stdout).group(0)


def test_numbers_and_times_read_short():
    from edgekit.terminal import fmt_ms, fmt_pct, fmt_sig, fmt_time

    assert [fmt_ms(v) for v in (0.0095039, 0.37541, 12.34, 9.996, 1234.4, 0.0, None)] == \
        ["0.00950", "0.375", "12.3", "10.0", "1234", "0", "-"]
    assert fmt_sig(-0.00011, 3, "+") == "-0.000110" and fmt_pct(0.98887) == "98.89%"
    now = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc).astimezone()
    at = now - timedelta(minutes=5)
    assert fmt_time(at.isoformat(), now) == at.strftime("%H:%M:%S")
    earlier = now - timedelta(days=40)
    assert fmt_time(earlier.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), now) == \
        earlier.strftime("%m-%d %H:%M")
    assert fmt_time("2024-01-02T03:04:05Z", now).startswith("2024-01-0") and fmt_time(None) == "-"
    assert fmt_time("not a time") == "not a time"
