"""The SQLite store and the validation of device reports as untrusted input."""

from __future__ import annotations

import copy
import json
import sqlite3

import pytest
from fleethelpers import real_report  # noqa: F401 (fixture)

from conftest import assert_clean_error, run_edgekit
from edgekit.errors import ConfigError, DataError
from edgekit.device_report import MAX_REPORT_BYTES, validate_report
from edgekit.store import SCHEMA_VERSION, Store, default_store_path, open_store


def test_a_new_store_has_its_schema_in_wal_mode_and_reopens(tmp_path):
    path = tmp_path / "deep" / "er" / "edgekit.db"
    with Store(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
    with Store(path) as store:  # a second open migrates nothing and loses nothing
        assert store.schema_version() == SCHEMA_VERSION
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"schema_version", "devices", "reports", "rollouts", "rollout_waves", "rollout_events"} <= tables


def test_a_store_from_a_newer_edgekit_or_not_a_store_is_refused(tmp_path):
    newer = tmp_path / "newer.db"
    Store(newer).close()
    with sqlite3.connect(newer) as db:
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(ConfigError, match=f"schema {SCHEMA_VERSION + 1}, newer than"):
        Store(newer)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match="not a usable edgekit store"):
        Store(junk)
    assert_clean_error(run_edgekit("collect", "--inventory", "fleet/local.toml", "--store", junk),
                       f"--store {junk}: not a usable edgekit store")


def test_default_path_follows_edgekit_store_then_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEKIT_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_store_path() == tmp_path / "xdg" / "edgekit" / "edgekit.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_store_path() == tmp_path / "home" / ".local" / "share" / "edgekit" / "edgekit.db"
    monkeypatch.setenv("EDGEKIT_STORE", str(tmp_path / "env.db"))
    with open_store() as store:
        assert store.path == tmp_path / "env.db" and store.path.exists()


def test_reports_are_stored_once_per_device_and_run(tmp_path, real_report):
    report = real_report["report"]
    with Store(tmp_path / "s.db") as store:
        assert store.add_report("cam-1", report, source="reports/digits/1.0.0/x.json") is True
        assert store.add_report("cam-1", report) is False  # collected again: nothing added
        assert store.add_report("cam-2", report) is True   # another device's run with the same id is its own
        assert store.known_run_ids("cam-1") == {report["run_id"]}
        rows = store.reports(name="digits", version="1.0.0")
        assert [r["device"] for r in rows] == ["cam-1", "cam-2"]
        assert rows[0]["report"] == report
        assert rows[0]["latency_p95"] == report["metrics"]["latency_ms"]["p95"]
        assert rows[0]["accuracy"] == report["metrics"]["accuracy"]
        assert store.last_report_times() == {"cam-1": report["finished_at"], "cam-2": report["finished_at"]}
        assert store.reports(version="9.9.9") == []


def test_device_contact_and_rollout_records(tmp_path):
    with Store(tmp_path / "s.db") as store:
        store.touch_device("cam-1", target="host-cpu", reachable=True)
        store.touch_device("cam-1", target="host-cpu", reachable=False, error="connection refused")
        (row,) = store.devices()
        assert row["reachable"] == 0 and row["last_error"] == "connection refused" and row["last_contact_at"]
        rid = store.start_rollout(name="digits", version="1.0.1", target="host-cpu", sha256="ab" * 32,
                                  path="/x", options={"canary": 1})
        store.start_wave(rid, 1, "canary", ["cam-1"])
        store.add_event(rid, 1, "cam-1", "deploy", False, {"status": "breached"})
        store.finish_wave(rid, 1, "halted", "latency")
        store.finish_rollout(rid, "halted", "latency")
        record = store.rollout(rid)
    assert record["status"] == "halted" and record["options"] == {"canary": 1}
    assert record["waves"][0]["devices"] == ["cam-1"] and record["waves"][0]["status"] == "halted"
    assert record["events"][0]["detail"] == {"status": "breached"} and record["events"][0]["ok"] is False


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
    assert validate_report(good, "r.json", name="digits", version="1.0.0")["run_id"] == real_report["report"]["run_id"]
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
    assert report["metrics"]["fidelity"] == {"top1_agreement": 1.0, "cosine": 1.0, "sqnr_db": None}
    assert report["device"]["kernel"] == real_report["report"]["device"]["kernel"]  # fields we do not know are kept
    with Store(tmp_path / "s.db") as store:
        store.add_report("cam-1", report)
        raw = sqlite3.connect(tmp_path / "s.db").execute("SELECT report, cosine FROM reports").fetchone()
    assert "Infinity" not in raw[0] and json.loads(raw[0])["metrics"]["fidelity"]["sqnr_db"] is None
    assert raw[1] == 1.0
