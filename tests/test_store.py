"""The SQLite store: its schema, reports stored once, devices and rollouts."""

from __future__ import annotations

import sqlite3

import pytest

from helpers.cli import assert_clean_error, run_edgekit
from helpers.mounts import needs_mount, read_only
from edgekit.device_report import validate_report
from edgekit.errors import ConfigError
from edgekit.store import REPORT_COLUMNS, SCHEMA_VERSION, Store, default_store_path, open_store


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
    report, sent = validate_report(real_report["bytes"], "r.json"), real_report["report"]
    with Store(tmp_path / "s.db") as store:
        assert store.add_report("cam-1", report, source="reports/digits/1.0.0/x.json") is True
        assert store.add_report("cam-1", report) is False  # collected again: nothing added
        assert store.add_report("cam-2", report) is True   # another device's run with the same id is its own
        assert store.known_run_ids("cam-1") == {sent["run_id"]}
        rows = store.reports(name="digits", version="1.0.0")
        assert [r["device"] for r in rows] == ["cam-1", "cam-2"]
        assert rows[0]["report"].record() == sent and rows[0]["report"].columns() == report.columns()
        assert rows[0]["latency_p95"] == sent["metrics"]["latency_ms"]["p95"]
        assert rows[0]["accuracy"] == sent["metrics"]["accuracy"]
        times = store.last_report_times()  # this host's clock when it stored them, not the device's
        assert set(times) == {"cam-1", "cam-2"} and min(times.values()) >= sent["finished_at"]
        assert store.reports(version="9.9.9") == []


def _shapes(sent: dict) -> list[dict]:
    """The report as sent, and as other runners and edits shape what the report's columns read."""
    import copy

    def edit(change) -> dict:
        obj = copy.deepcopy(sent)
        change(obj["metrics"])
        return obj
    return [sent,
            edit(lambda m: m.update(fidelity=None, top1_agreement=0.93)),              # an older runner's place
            edit(lambda m: m.update(fidelity={"cosine": 0.99, "top1_agreement": 0.97}, top1_agreement=0.5,
                                    fidelity_expected={"cosine": 0.995, "top1_agreement": 0.98})),
            edit(lambda m: m.update(fidelity={"cosine": 1}, top1_agreement=0.5)),      # not there: None
            edit(lambda m: m.update(load_ms=True, n=7.0, expected=None)),              # no boolean is a number
            edit(lambda m: m.update(load_ms=12, expected={"n": 100, "baseline_accuracy": "high"})),
            edit(lambda m: m.update(perplexity=12.5, ppl_increase=0.01, kv_cache="static")),  # a language model
            {**sent, "device": {**sent["device"], "arch": None}}]


def _store_before_picked(path, shapes: list) -> None:
    """A store as edgekit wrote it before `picked` was kept (schema 4), holding each shape,
    and one row that is no report any more."""
    import json

    from edgekit.report_row import report_columns
    from edgekit.store import MIGRATIONS

    with sqlite3.connect(path) as db:
        db.executescript(";".join(m for m in MIGRATIONS[:4]))
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (4)")
        columns = [c for c in REPORT_COLUMNS if c not in ("device", "collected_at", "source")]
        for i, shape in enumerate([*shapes, None]):
            row = report_columns(shape) if shape else {c: "x" if c in ("run_id", "name", "version", "status") else None
                                                       for c in columns}
            db.execute(f"INSERT INTO reports (device, collected_at, source, report, {', '.join(columns)}) "
                       f"VALUES (?, ?, '', ?, {', '.join('?' * len(columns))})",
                       (f"cam-{i}", f"2026-01-01T00:00:{i:02d}Z", json.dumps(shape) if shape else "{not json",
                        *(row[c] for c in columns)))


def test_picked_columns_are_decoded_together_and_a_hand_edit_alone():
    """Store.report_rows decodes every row's picked array in one call; two edited rows that
    would read as one array together are decoded one by one, and the broken one fails as it did."""
    import json

    from edgekit.store import _picked_values
    from edgekit.store_schema import PICKED

    whole = json.dumps([None] * len(PICKED))
    assert _picked_values([whole, whole]) == [[None] * len(PICKED)] * 2
    with pytest.raises(ValueError):
        _picked_values([whole[:-1], "null]"])  # joined: one array of len(PICKED) + 1


@pytest.mark.parametrize("stored", ["by this edgekit", "before picked was kept"])
def test_a_stored_reports_row_reads_back_as_report_columns_gives_it(tmp_path, real_report, stored):
    """Store.report_rows gives back each report's flat row (report_columns), for every shape
    of report, whether it was stored with its picked fields or by an edgekit before them (the
    migration picks them); a language model's report, and one that is no report, come whole."""
    import json

    from edgekit.report_row import report_columns
    from edgekit.store import picked_of

    report, shapes = validate_report(real_report["bytes"], "r.json"), _shapes(real_report["report"])
    if stored == "by this edgekit":
        with Store(tmp_path / "s.db") as store:
            for i in range(len(shapes)):
                store.add_report(f"cam-{i}", report)
        with sqlite3.connect(tmp_path / "s.db") as db:  # each shape stored as add_report would store it
            for i, shape in enumerate(shapes):
                kept = {k: v for k, v in report_columns(shape).items() if k in REPORT_COLUMNS}
                db.execute(f"UPDATE reports SET report = ?, picked = ?, {', '.join(f'{k} = ?' for k in kept)} "
                           "WHERE device = ?",
                           (json.dumps(shape), picked_of(report_columns(shape)), *kept.values(), f"cam-{i}"))
    else:
        _store_before_picked(tmp_path / "s.db", shapes)
    with Store(tmp_path / "s.db") as store:
        names, rows = store.report_rows()
    got = {row[0]: dict(zip(names, row)) for row in rows}
    assert set(names) >= set(report_columns(shapes[0])) and len(got) == len(shapes) + (stored != "by this edgekit")
    for i, shape in enumerate(shapes):
        row, want = got[f"cam-{i}"], report_columns(shape)
        lm = want["perplexity"] is not None
        assert (row["report"] is not None) is lm and (not lm or json.loads(row["report"]) == shape)
        if lm:  # read whole: only the store's own columns come picked
            want = {k: v for k, v in want.items() if k in REPORT_COLUMNS}
        assert {k: v for k, v in row.items() if k in want} == want, i
        assert [type(row[k]) for k in want] == [type(want[k]) for k in want]
    if stored != "by this edgekit":  # no report any more: read whole, so that edgekit report names it
        assert got[f"cam-{len(shapes)}"]["report"] == "{not json"


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


def test_a_batch_is_one_transaction_that_writes_all_or_nothing(tmp_path):
    path = tmp_path / "edgekit.db"
    with Store(path) as store:
        rollout = store.start_rollout(name="m", version="1", target="t", sha256="0" * 64, path="b", options={})
        with store.batch():
            for i in range(3):
                store.add_event(rollout, 1, f"dev-{i}", "deploy", True, {})
                store.record_change(f"dev-{i}", "m", "deploy", ok=True, before={}, after={"current": "1"},
                                    rollout_id=rollout)  # opens its own transaction: it joins the batch
            with sqlite3.connect(path) as other:  # another connection sees nothing before the commit
                assert other.execute("SELECT COUNT(*) FROM rollout_events").fetchone()[0] == 0
        assert len(store.rollout(rollout)["events"]) == 3 and len(store.models()) == 3
        with pytest.raises(RuntimeError), store.batch():
            store.add_event(rollout, 2, "dev-9", "deploy", True, {})
            raise RuntimeError("a wave's recording fails half-way")
        assert len(store.rollout(rollout)["events"]) == 3  # rolled back whole
        store.add_event(rollout, 2, "dev-9", "deploy", True, {})  # and the store is usable after it
        assert len(store.device_events(rollout_id=rollout)) == 3
    indexes = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"rollout_events_by_rollout", "device_events_by_rollout"} <= indexes


def test_every_rollout_read_at_once_is_each_rollout_read_alone(tmp_path):
    with Store(tmp_path / "edgekit.db") as store:
        ids = []
        for n in range(3):
            rid = store.start_rollout(name="m", version=str(n), target="t", sha256="0" * 64, path="b", options={"n": n})
            ids.append(rid)
            for wave in range(n + 1):
                store.start_wave(rid, wave, "batch", [f"dev-{wave}"])
                store.add_event(rid, wave, f"dev-{wave}", "deploy", wave % 2 == 0, {"wave": wave})
        whole = store.rollouts_whole()
        assert whole == [store.rollout(rid) for rid in ids]
        assert [len(r["events"]) for r in whole] == [1, 2, 3] and store.rollout(999) is None


@needs_mount
def test_a_store_on_a_read_only_folder_is_read_by_report_and_refused_to_writers(tmp_path, real_report):
    """A store copied onto read-only media (or a folder edgekit may not write) still reports,
    if it is of this edgekit's schema; one that needs its one-time upgrade, and any command
    that records, say so in one line."""
    folder = tmp_path / "ro"
    folder.mkdir()
    with Store(folder / "now.db") as store:
        store.add_report("cam-1", validate_report(real_report["bytes"], "r.json"))
    _store_before_picked(folder / "old.db", [])
    with read_only(folder):
        with Store(folder / "now.db", read_only_ok=True) as store:
            assert len(store.report_rows()[1]) == 1
        done = run_edgekit("report", "--store", folder / "now.db", "--json")
        assert done.code == 0 and [r["device"] for r in done.json()["rows"]] == ["cam-1"], done.stderr
        with pytest.raises(ConfigError, match="cannot write to it"):
            Store(folder / "now.db")
        with pytest.raises(ConfigError, match="schema 4, which this edgekit upgrades .* copy it to a writable"):
            Store(folder / "old.db", read_only_ok=True)
        assert_clean_error(run_edgekit("report", "--store", folder / "old.db"), "copy it to a writable folder")
