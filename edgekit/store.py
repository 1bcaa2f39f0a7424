"""The host's store: one SQLite file with devices, device reports and rollouts.

    its tables and migrations: edgekit.store_schema

The default file is $EDGEKIT_STORE, else $XDG_DATA_HOME/edgekit/edgekit.db, else
~/.local/share/edgekit/edgekit.db; `--store` overrides both. The file is opened in WAL mode
so that `edgekit report` can read while a rollout writes. A Store may be shared by the
fan-out's worker threads: every statement, and every transaction as a whole, holds its lock.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence, Union

from edgekit.errors import ConfigError
from edgekit.report_row import REPORT_FIELDS, report_columns
from edgekit.store_schema import MIGRATIONS, PICKED, REPORT_COLUMNS, SCHEMA_VERSION, picked_of
from edgekit.store_sqlite import LockedConnection, Transaction, cannot_write, open_read_only
from edgekit.words import utc_now

if TYPE_CHECKING:  # its pydantic models load when reports are read: a push's record needs none
    from edgekit.device_report import DeviceReport

__all__ = ["Store", "open_store", "default_store_path", "utc_now", "SCHEMA_VERSION", "REPORT_COLUMNS", "MIGRATIONS",
           "picked_of"]


def default_store_path() -> Path:
    env = os.environ.get("EDGEKIT_STORE")
    if env:
        return Path(env).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home).expanduser() / "edgekit" / "edgekit.db"


def _dumps(value: Any) -> str:
    # Strict JSON: a NaN or Infinity that slipped through would make the column unreadable to jq.
    return json.dumps(value, sort_keys=True, allow_nan=False)


class Store:
    """An open store; use as a context manager or call close()."""

    def __init__(self, path: Union[str, Path], *, read_only_ok: bool = False):
        """`read_only_ok`: a reader's open (report); a store it cannot write (a read-only file,
        folder or medium) is then read as it is, if it is of this edgekit's schema."""
        self.path = Path(path).expanduser()
        self._db = None
        try:
            self._open(read_only_ok)
        except BaseException:
            if self._db is not None:  # a store refused is not left open (its file, its folder's mount)
                self._db.close()
            raise

    def _open(self, read_only_ok: bool) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = LockedConnection(sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                                         check_same_thread=False))
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            if not cannot_write(exc, self.path):
                raise ConfigError(f"--store {self.path}: not a usable edgekit store ({exc}); "
                                  "give another path with --store or EDGEKIT_STORE") from exc
            if not read_only_ok:
                raise ConfigError(f"--store {self.path}: cannot write to it (a read-only file, folder or "
                                  "disk); give a writable path with --store or EDGEKIT_STORE") from exc
            self._open_read_only()
        except OSError as exc:
            raise ConfigError(f"--store {self.path}: cannot create it ({exc.strerror}); "
                              "give a writable path with --store or EDGEKIT_STORE") from exc

    def _open_read_only(self) -> None:
        if self._db is not None:  # the writable open that failed
            self._db.close()
        self._db, have, error = open_read_only(self.path)
        if self._db is None:
            raise ConfigError(f"--store {self.path}: cannot read it ({error}); copy it to a writable "
                              "folder and give the copy with --store") from error
        if have != SCHEMA_VERSION:
            raise ConfigError(f"--store {self.path}: schema {have}, which this edgekit upgrades to "
                              f"{SCHEMA_VERSION} on first use, but it cannot write to it (read-only); "
                              "copy it to a writable folder and give the copy with --store")

    def _migrate(self) -> None:
        self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        # The version is read inside the write transaction, so that two edgekit processes
        # opening a new store at once do not both create its tables.
        with self._transaction():
            row = self._db.execute("SELECT version FROM schema_version").fetchone()
            have = row["version"] if row else 0
            if have > SCHEMA_VERSION:
                raise ConfigError(f"--store {self.path} has schema {have}, newer than this edgekit's "
                                  f"{SCHEMA_VERSION}; upgrade edgekit or use another store")
            for step in MIGRATIONS[have:]:
                if callable(step):
                    step(self._db)
                    continue
                for statement in step.split(";"):  # our own SQL: no ';' inside strings
                    if statement.strip():
                        self._db.execute(statement)
            if have != SCHEMA_VERSION:
                self._db.execute("DELETE FROM schema_version")
                self._db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))

    def _transaction(self):
        return Transaction(self._db)

    def batch(self):
        """One transaction for many writes (a wave's device records): one commit, one sync to
        disk, instead of one for each. Writes inside it that open their own transaction
        join this one; another thread's statements wait until it ends."""
        return Transaction(self._db)

    def schema_version(self) -> int:
        return self._db.execute("SELECT version FROM schema_version").fetchone()["version"]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- devices ----------------------------------------------------------------------

    def touch_device(self, name: str, *, target: Optional[str] = None, transport: Optional[str] = None,
                     host: Optional[str] = None, reachable: Optional[bool] = None,
                     error: Optional[str] = None, clock_skew_s: Optional[float] = None) -> None:
        """Record that we tried to reach a device (reachable None: we did not try), and how far
        its clock is from this host's when it said (seconds, + ahead)."""
        now = utc_now()
        contact = now if reachable else None
        self._db.execute(
            """INSERT INTO devices (name, target, transport, host, first_seen_at, last_contact_at, reachable, last_error)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(name) DO UPDATE SET
                 target = excluded.target, transport = excluded.transport, host = excluded.host,
                 last_contact_at = COALESCE(excluded.last_contact_at, devices.last_contact_at),
                 reachable = COALESCE(excluded.reachable, devices.reachable),
                 last_error = CASE WHEN excluded.reachable IS NULL THEN devices.last_error ELSE excluded.last_error END""",
            (name, target, transport, host, now, contact, None if reachable is None else int(reachable), error))
        if clock_skew_s is not None:
            self._db.execute("UPDATE devices SET clock_skew_s = ? WHERE name = ?", (round(clock_skew_s, 1), name))

    def devices(self) -> list[dict]:
        return [dict(r) for r in self._db.execute("SELECT * FROM devices ORDER BY name")]

    def forget_device(self, name: str) -> dict:
        """Remove a retired device: its record, reports, collect errors and what it runs.
        Rollout history keeps its events. How many rows of each went."""
        gone = {}
        with self._transaction():
            for table, column in (("devices", "name"), ("reports", "device"), ("collect_errors", "device"),
                                  ("device_models", "device"), ("device_events", "device")):
                gone[table] = self._db.execute(f"DELETE FROM {table} WHERE {column} = ?", (name,)).rowcount
        return gone

    # -- what runs where ----------------------------------------------------------------
    # `gated` says whether the current version is trusted: it passed its rollout gates, a
    # person chose it (push --activate, rollback, restore) or it was seen there before a
    # rollout touched the device. A rollout that activates a version marks it not gated
    # until its report passes; `good` is the last trusted {current, previous}, where a
    # device goes back to (see last_good).

    def models(self, device: Optional[str] = None) -> list[dict]:
        """What the store believes each device runs: one row per (device, bundle name)."""
        where, args = _where(device=device)
        rows = self._db.execute(f"SELECT * FROM device_models{where} ORDER BY device, name", args)
        return [_model_dict(r) for r in rows]

    def model(self, device: str, name: str) -> Optional[dict]:
        row = self._db.execute("SELECT * FROM device_models WHERE device = ? AND name = ?", (device, name)).fetchone()
        return _model_dict(row) if row else None

    def observe(self, device: str, models: dict, *, source: str = "status") -> None:
        """The device's own word (the runner's status: {name: {current, previous, installed}}):
        what it runs replaces what the store believed. A version the store knows as not yet
        gated stays so while it is still the one that runs."""
        with self._transaction():
            known = {m["name"]: m for m in self.models(device)}
            for name in sorted(set(known) | set(models)):
                live = models.get(name) or {}
                state = {"current": live.get("current"), "previous": live.get("previous")}
                old = known.get(name)
                same = old is not None and old["current"] == state["current"]
                gated = old["gated"] if same else True
                good = old["good"] if same and not gated else state
                self._put_model(device, name, state, live.get("installed"), gated, good, source)

    def record_change(self, device: str, name: str, action: str, *, ok: bool, before: Optional[dict],
                      after: Optional[dict], gated: bool = True, installed: Optional[list] = None,
                      rollout_id: Optional[int] = None, detail: Optional[dict] = None) -> None:
        """A command changed (or tried to change) what NAME is on a device: an event, and when
        `after` is known, the store's belief. gated=False: a rollout activated a version whose
        report has not passed its gates yet; the last good state stays what it was."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO device_events (device, name, action, ok, before, after, rollout_id, detail, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (device, name, action, int(ok), _dumps(before), _dumps(after), rollout_id, _dumps(detail or {}),
                 utc_now()))
            if after is None:
                return
            old = self.model(device, name)
            state = {"current": after.get("current"), "previous": after.get("previous")}
            good = state if gated else (_state(before) if before is not None else (old or {}).get("good"))
            self._put_model(device, name, state, installed if installed is not None else (old or {}).get("installed"),
                            gated, good, action if rollout_id is None else f"rollout {rollout_id}")

    def last_good(self, device: str, name: str, live: dict) -> dict:
        """Where NAME on a device goes back to: its live state ({current, previous}), unless the
        version it runs is one a rollout activated and never saw pass its gates; then the
        state it had before that rollout."""
        row = self.model(device, name)
        if row and not row["gated"] and row["current"] == live.get("current") and row["good"] is not None:
            return dict(row["good"])
        return _state(live)

    def device_events(self, device: Optional[str] = None, rollout_id: Optional[int] = None) -> list[dict]:
        where, args = _where(device=device, rollout_id=rollout_id)
        rows = self._db.execute(f"SELECT * FROM device_events{where} ORDER BY id", args)
        return [{**dict(r), "ok": bool(r["ok"]), "before": json.loads(r["before"]), "after": json.loads(r["after"]),
                 "detail": json.loads(r["detail"])} for r in rows]

    def _put_model(self, device: str, name: str, state: dict, installed: Optional[list], gated: bool,
                   good: Optional[dict], source: str) -> None:
        self._db.execute(
            """INSERT INTO device_models (device, name, current, previous, installed, gated, good, source, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(device, name) DO UPDATE SET current = excluded.current, previous = excluded.previous,
                 installed = excluded.installed, gated = excluded.gated, good = excluded.good,
                 source = excluded.source, updated_at = excluded.updated_at""",
            (device, name, state.get("current"), state.get("previous"), _dumps(installed), int(gated),
             _dumps(_state(good) if good is not None else None), source, utc_now()))

    # -- reports ----------------------------------------------------------------------

    def known_run_ids(self, device: str) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT run_id FROM reports WHERE device = ?", (device,))}

    def add_report(self, device: str, report: DeviceReport, *, source: str = "") -> bool:
        """Insert a validated report; False when (device, run_id) is stored already."""
        record = report.record()
        row = {**report_columns(record), "device": device, "collected_at": utc_now(), "source": source}
        cur = self._db.execute(
            f"INSERT OR IGNORE INTO reports ({', '.join(REPORT_COLUMNS)}, report, picked) "
            f"VALUES ({', '.join('?' * (len(REPORT_COLUMNS) + 2))})",
            [row[c] for c in REPORT_COLUMNS] + [_dumps(record), picked_of(row)])
        return cur.rowcount == 1

    def add_reports(self, device: str, reports: Iterable[tuple[DeviceReport, str]]) -> int:
        """Insert (report, source) pairs in one transaction; how many were new."""
        with self._transaction():
            return sum(self.add_report(device, report, source=source) for report, source in reports)

    def reports(self, *, device: Optional[str] = None, name: Optional[str] = None,
                version: Optional[str] = None) -> list[dict]:
        """Stored reports, in the order this host received them; each row's columns plus
        `report`, the DeviceReport (validated when it was collected)."""
        from edgekit.device_report import DeviceReport

        where, args = _where(device=device, name=name, version=version)
        rows = self._db.execute(f"SELECT * FROM reports{where} ORDER BY collected_at, finished_at, device, run_id", args)
        return [{**dict(r), "report": DeviceReport.from_json(r["report"])} for r in rows]

    def report_rows(self) -> tuple[tuple[str, ...], list[tuple]]:
        """Every stored report's flat row (edgekit.report_row.report_columns) in the order of
        reports(), as plain tuples, for a reader of many (edgekit report): (names, rows). A row
        is device, collected_at, `report` and the columns of REPORT_FIELDS: the store's own
        columns and the PICKED ones, both written from report_columns when the report was
        stored. `report` is the JSON text of a row to be read whole, whose PICKED columns are
        None here: a language model's (its curve is in it), or one that is no report any
        more (not JSON, or not the row's run); else None."""
        own = [f for f, _, _ in REPORT_FIELDS if f in REPORT_COLUMNS]
        # a report text that is not JSON, or not this row's run, any more (the file was edited)
        # is read whole too, and named; its shape is not checked here (0.15 s a 10,000 rows)
        whole = "picked IS NULL OR NOT json_valid(report) OR json_extract(report, '$.run_id') IS NOT run_id"
        rows = self._db.execute(
            f"SELECT device, collected_at, CASE WHEN {whole} THEN report END, {', '.join(own)}, picked "
            "FROM reports ORDER BY collected_at, finished_at, device, run_id").fetchall()
        unread = (None,) * len(PICKED)
        picked = iter(_picked_values([row[-1] for row in rows if row[2] is None]))
        return (("device", "collected_at", "report", *own, *PICKED),
                [(*row[:-1], *(next(picked) if row[2] is None else unread)) for row in rows])

    def last_report_times(self) -> dict[str, str]:
        """device -> when this host received its newest report (the host's clock)."""
        rows = self._db.execute("SELECT device, MAX(collected_at) AS at FROM reports GROUP BY device")
        return {r["device"]: r["at"] for r in rows}

    def add_collect_error(self, device: str, source: str, error: str) -> None:
        now = utc_now()
        self._db.execute(
            """INSERT INTO collect_errors (device, source, error, first_seen_at, last_seen_at) VALUES (?, ?, ?, ?, ?)
               ON CONFLICT(device, source, error) DO UPDATE SET last_seen_at = excluded.last_seen_at""",
            (device, source, error, now, now))

    def clear_collect_errors(self, device: str, prefix: str, keep: set[str]) -> None:
        """Forget the device's bad report files under `prefix` (reports/...) but those in `keep`:
        a listing of that folder no longer found them bad."""
        rows = self._db.execute("SELECT DISTINCT source FROM collect_errors WHERE device = ?", (device,))
        gone = [r["source"] for r in rows if r["source"].startswith(prefix) and r["source"] not in keep]
        for source in gone:
            self._db.execute("DELETE FROM collect_errors WHERE device = ? AND source = ?", (device, source))

    def collect_errors(self, device: Optional[str] = None) -> list[dict]:
        where, args = _where(device=device)
        return [dict(r) for r in self._db.execute(f"SELECT * FROM collect_errors{where} ORDER BY device, source", args)]

    # -- rollouts ---------------------------------------------------------------------

    def start_rollout(self, *, name: str, version: str, target: str, sha256: str, path: str, options: dict) -> int:
        cur = self._db.execute(
            "INSERT INTO rollouts (name, version, target, bundle_sha256, bundle_path, options, started_at, status) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 'running')", (name, version, target, sha256, path, _dumps(options), utc_now()))
        return int(cur.lastrowid)

    def finish_rollout(self, rollout_id: int, status: str, reason: Optional[str] = None) -> None:
        self._db.execute("UPDATE rollouts SET status = ?, reason = ?, finished_at = ? WHERE id = ?",
                         (status, reason, utc_now(), rollout_id))

    def start_wave(self, rollout_id: int, wave: int, kind: str, devices: list[str]) -> None:
        """A wave starts (or, in a resumed rollout, starts again: running, no reason)."""
        self._db.execute("INSERT INTO rollout_waves (rollout_id, wave, kind, devices, started_at, status) "
                         "VALUES (?, ?, ?, ?, ?, 'running') ON CONFLICT(rollout_id, wave) DO UPDATE SET "
                         "status = 'running', reason = NULL, finished_at = NULL",
                         (rollout_id, wave, kind, _dumps(devices), utc_now()))

    def resume_rollout(self, rollout_id: int) -> None:
        self._db.execute("UPDATE rollouts SET status = 'running', finished_at = NULL WHERE id = ?", (rollout_id,))

    def finish_wave(self, rollout_id: int, wave: int, status: str, reason: Optional[str] = None) -> None:
        self._db.execute("UPDATE rollout_waves SET status = ?, reason = ?, finished_at = ? "
                         "WHERE rollout_id = ? AND wave = ?", (status, reason, utc_now(), rollout_id, wave))

    def add_event(self, rollout_id: int, wave: int, device: str, event: str, ok: bool, detail: dict) -> None:
        self._db.execute("INSERT INTO rollout_events (rollout_id, wave, device, event, ok, detail, at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (rollout_id, wave, device, event, int(ok), _dumps(detail), utc_now()))

    def rollouts(self, *, name: Optional[str] = None) -> list[dict]:
        where, args = _where(name=name)
        return [_rollout_dict(r) for r in self._db.execute(f"SELECT * FROM rollouts{where} ORDER BY id", args)]

    def rollout(self, rollout_id: int) -> Optional[dict]:
        """One rollout with its waves and events."""
        found = self._rollouts_whole("WHERE id = ?", (rollout_id,))
        return found[0] if found else None

    def rollouts_whole(self, detail: Optional[Sequence[str]] = None) -> list[dict]:
        """Every rollout with its waves and events, in three queries (not three per rollout).
        `detail`: only these keys of each event's detail (SQLite picks them out: a report of
        10 rollouts to 1000 devices need not decode every deploy's whole record)."""
        return self._rollouts_whole("", (), detail)

    def _rollouts_whole(self, where: str, args: tuple, detail: Optional[Sequence[str]] = None) -> list[dict]:
        rows = self._db.execute(f"SELECT * FROM rollouts {where} ORDER BY id", args).fetchall()
        if not rows:
            return []
        picked = f"WHERE rollout_id IN (SELECT id FROM rollouts {where})"
        waves, events = {r["id"]: [] for r in rows}, {r["id"]: [] for r in rows}
        for w in self._db.execute(f"SELECT * FROM rollout_waves {picked} ORDER BY rollout_id, wave", args):
            waves[w["rollout_id"]].append({**dict(w), "devices": json.loads(w["devices"])})
        found = self._db.execute(f"SELECT {_event_columns(detail)} FROM rollout_events {picked} ORDER BY id", args)
        for e in _decoded_events(found.fetchall(), picked_here=detail is not None):
            events[e["rollout_id"]].append(e)
        return [{**_rollout_dict(r), "waves": waves[r["id"]], "events": events[r["id"]]} for r in rows]


def _picked_values(texts: list[str]) -> list:
    """Each of `texts` (stored `picked` columns, JSON arrays) decoded: a fleet's 10,000 in one
    call (one a row took twice as long). Should they not come back as that many arrays of
    PICKED's length (a hand edit), each is decoded alone, as they were before."""
    try:
        values = json.loads("[" + ",".join(texts) + "]")
        if len(values) == len(texts) and all(type(v) is list and len(v) == len(PICKED) for v in values):
            return values
    except ValueError:
        pass
    return [json.loads(t) for t in texts]


def _decoded_events(rows: list[sqlite3.Row], picked_here: bool) -> list[dict]:
    """Rollout events as dicts, `ok` a bool and `detail` decoded. A detail SQLite made here
    (`picked_here`: json_object, one JSON value each) is decoded with the others in one
    array, one call for a fleet's 10,000 events rather than one each; a stored one is read
    alone, so that one a hand edited is no JSON and is not taken for parts of its neighbours."""
    if not rows:
        return []
    texts = [row["detail"] for row in rows]
    details = json.loads("[" + ",".join(texts) + "]") if picked_here else [json.loads(t) for t in texts]
    names = rows[0].keys()
    return [{**dict(zip(names, row)), "ok": bool(row["ok"]), "detail": detail} for row, detail in zip(rows, details)]


def _event_columns(keys: Optional[Sequence[str]]) -> str:
    """A rollout event's columns, its detail whole or as an object of only `keys` of it (ours:
    plain words, no quoting)."""
    if keys is None:
        return "*"
    if not all(k.isidentifier() for k in keys):
        raise ValueError(f"detail keys must be plain words: {keys}")
    picked = ", ".join(f"'{k}', json_extract(detail, '$.{k}')" for k in keys)
    return f"id, rollout_id, wave, device, event, ok, at, json_object({picked}) AS detail"


def _where(**filters) -> tuple[str, list]:
    given = {k: v for k, v in filters.items() if v is not None}
    if not given:
        return "", []
    return " WHERE " + " AND ".join(f"{k} = ?" for k in given), list(given.values())


def _state(value: Optional[dict]) -> dict:
    value = value or {}
    return {"current": value.get("current"), "previous": value.get("previous")}


def _model_dict(row: sqlite3.Row) -> dict:
    return {**dict(row), "gated": bool(row["gated"]), "installed": json.loads(row["installed"]),
            "good": json.loads(row["good"]) if row["good"] else None}


def _rollout_dict(row: sqlite3.Row) -> dict:
    return {**dict(row), "options": json.loads(row["options"])}


def open_store(path: Union[str, Path, None] = None) -> Store:
    """The store at `path`, or at the default place (see the module docstring)."""
    return Store(Path(path) if path is not None else default_store_path())
