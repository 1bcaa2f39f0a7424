"""A report of a fleet: 1000 devices x 10 versions load and render whole, as a table and as
HTML (how fast is benchmarks/fleet_scale.py's business, not a test's)."""

from __future__ import annotations

import copy
import json
import re

import pytest

from helpers.cli import run_edgekit
from edgekit.device_report import DeviceReport
from edgekit.store import Store

DEVICES, VERSIONS = 1000, 10
LOW = ("cam-0421", "1.0.3")  # the one row that needs a look: far below the host's accuracy


@pytest.fixture(scope="module")
def fleet_store(tmp_path_factory, real_report) -> dict:
    """A store of a real device report copied to every device and version (validated as
    collect validates), with LOW planted 20 points below the host's expectation."""
    path = tmp_path_factory.mktemp("scale") / "edgekit.db"
    sent = real_report["report"]
    with Store(path) as store:
        for d in range(DEVICES):
            device, batch = f"cam-{d:04d}", []
            for v in range(VERSIONS):
                raw = copy.deepcopy(sent)
                raw["run_id"], raw["bundle"]["version"] = f"{sent['run_id']}-{d}-{v}", f"1.0.{v}"
                if (device, f"1.0.{v}") == LOW:
                    raw["metrics"]["accuracy"] = raw["metrics"]["accuracy_expected"] - 0.2
                batch.append((DeviceReport.from_object(raw), f"reports/digits/1.0.{v}/x.json"))
            store.add_reports(device, batch)
            store.touch_device(device, target=sent["bundle"]["target"], transport="local", reachable=True)
    return {"path": path, "rows": DEVICES * VERSIONS}


def test_every_row_is_in_the_json_and_the_terminal_lists_the_one_that_needs_a_look(fleet_store):
    rows = run_edgekit("report", "--store", fleet_store["path"], "--section", "rows", "--json")
    assert rows.code == 0, rows.stderr
    got = json.loads(rows.stdout)
    assert len(got) == fleet_store["rows"] == len({(r["device"], r["version"]) for r in got})
    table = run_edgekit("report", "--store", fleet_store["path"], "--section", "rows")
    assert table.code == 0, table.stderr
    assert f"{fleet_store['rows']} rows: 1 that need a look below, {fleet_store['rows'] - 1} ok" in table.stdout
    listed = re.findall(r"cam-\d{4}", table.stdout)
    assert listed == [LOW[0]], listed  # the 9,999 rows that passed are counted, not listed


def test_the_html_page_lists_each_devices_latest_row_and_what_needs_a_look_and_charts_it(fleet_store, tmp_path):
    out = tmp_path / "fleet.html"
    page = run_edgekit("report", "--store", fleet_store["path"], "-o", out)
    assert page.code == 0, page.stderr
    html = out.read_text()
    devices_table = html.split("<h3>devices</h3>", 1)[1].split("</table>", 1)[0]
    listed = re.findall(r'<tr class="[^"]*"><td class="l">(cam-\d{4})</td><td class="l">([\d.]+)</td>', devices_table)
    latest = f"1.0.{VERSIONS - 1}"  # no rollout: each device's newest report is its latest
    assert sorted(listed) == sorted([(f"cam-{d:04d}", latest) for d in range(DEVICES)] + [LOW])
    assert f"not listed, the {fleet_store['rows'] - DEVICES - 1} rows of other versions that passed" in devices_table
    charted = re.search(r"(\d+) of (\d+) device rows, those that need a look and the extremes", html)
    assert charted and int(charted.group(2)) == fleet_store["rows"] and 1 <= int(charted.group(1)) <= 16
    assert f"{LOW[0]} · {LOW[1]}" in html  # the drifting row is one of the chart's lines
    # every row of a version is one --version away
    one = tmp_path / "one.html"
    assert run_edgekit("report", "--store", fleet_store["path"], "--version", "1.0.4", "-o", one).code == 0
    table = one.read_text().split("<h3>devices</h3>", 1)[1].split("</table>", 1)[0]
    assert table.count("<tr class=") == DEVICES and "not listed" not in table
