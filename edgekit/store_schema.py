"""The store's schema: its tables as migrations, and what it keeps of each report.

    schema_version    one row: the schema this file has (migrations bring it up to date)
    devices           every device seen: target, last contact, last error
    reports           validated device reports, one per (device, run_id): collecting twice adds nothing
    collect_errors    reports that failed validation, per device and file
    rollouts          one per `edgekit rollout`: bundle, options, outcome
    rollout_waves     the waves of a rollout (canary, batch 1, ...) and how each ended
    rollout_events    what happened to each device in each wave (install, gate, rollback, ...)
    device_models     what the store believes runs where: per device and bundle name, the
                      current and previous versions, from the last command that changed or saw them
    device_events     every change of what a device runs (push --activate, rollback, restore,
                      gc, a rollout's deploy and restore), with where it came from

A migration is SQL (statements split at ';') or a function of the connection; all the steps
a file lacks run in one transaction (edgekit.store.Store opens it).
"""

from __future__ import annotations

import json
from typing import Optional

from edgekit.report_row import REPORT_FIELDS, report_columns

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "REPORT_COLUMNS", "PICKED", "picked_of"]

MIGRATIONS = [
    """
    CREATE TABLE devices (
        name TEXT PRIMARY KEY, target TEXT, transport TEXT, host TEXT,
        first_seen_at TEXT NOT NULL, last_contact_at TEXT, reachable INTEGER, last_error TEXT
    );
    CREATE TABLE reports (
        device TEXT NOT NULL, run_id TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL,
        status TEXT NOT NULL, error TEXT, started_at TEXT, finished_at TEXT, collected_at TEXT NOT NULL,
        target TEXT, precision TEXT, bundle_sha256 TEXT, runtime TEXT, runtime_version TEXT,
        accuracy REAL, accuracy_expected REAL, cosine REAL,
        latency_p50 REAL, latency_p95 REAL, peak_rss_mb REAL, model_mb REAL,
        source TEXT, report TEXT NOT NULL,
        PRIMARY KEY (device, run_id)
    );
    CREATE INDEX reports_by_bundle ON reports (name, version);
    CREATE TABLE collect_errors (
        device TEXT NOT NULL, source TEXT NOT NULL, error TEXT NOT NULL,
        first_seen_at TEXT NOT NULL, last_seen_at TEXT NOT NULL,
        PRIMARY KEY (device, source, error)
    );
    CREATE TABLE rollouts (
        id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version TEXT NOT NULL, target TEXT NOT NULL,
        bundle_sha256 TEXT NOT NULL, bundle_path TEXT, options TEXT NOT NULL,
        started_at TEXT NOT NULL, finished_at TEXT, status TEXT NOT NULL, reason TEXT
    );
    CREATE TABLE rollout_waves (
        rollout_id INTEGER NOT NULL REFERENCES rollouts(id), wave INTEGER NOT NULL, kind TEXT NOT NULL,
        devices TEXT NOT NULL, started_at TEXT NOT NULL, finished_at TEXT, status TEXT NOT NULL, reason TEXT,
        PRIMARY KEY (rollout_id, wave)
    );
    CREATE TABLE rollout_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, rollout_id INTEGER NOT NULL REFERENCES rollouts(id),
        wave INTEGER NOT NULL, device TEXT NOT NULL, event TEXT NOT NULL, ok INTEGER NOT NULL,
        detail TEXT NOT NULL, at TEXT NOT NULL
    );
    """,
    """
    CREATE TABLE device_models (
        device TEXT NOT NULL, name TEXT NOT NULL, current TEXT, previous TEXT, installed TEXT,
        gated INTEGER NOT NULL, good TEXT, source TEXT NOT NULL, updated_at TEXT NOT NULL,
        PRIMARY KEY (device, name)
    );
    CREATE TABLE device_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL, name TEXT NOT NULL, action TEXT NOT NULL,
        ok INTEGER NOT NULL, before TEXT, after TEXT, rollout_id INTEGER, detail TEXT NOT NULL, at TEXT NOT NULL
    );
    CREATE INDEX device_events_by_device ON device_events (device, name);
    ALTER TABLE devices ADD COLUMN clock_skew_s REAL
    """,
    # A rollout's events are read by rollout id (every report loads every rollout's): without
    # these, each rollout read the whole event table of every rollout before it.
    """
    CREATE INDEX rollout_events_by_rollout ON rollout_events (rollout_id, id);
    CREATE INDEX device_events_by_rollout ON device_events (rollout_id)
    """,
    # A report's other fields (PICKED), picked out once when it is stored, not on every read:
    # SQLite's JSON functions took 0.25 s to pick them out of 10,000 reports for each report.
    """
    ALTER TABLE reports ADD COLUMN picked TEXT
    """,
    lambda db: _fill_picked(db),  # the reports stored before
]
SCHEMA_VERSION = len(MIGRATIONS)
REPORT_COLUMNS = ("device", "run_id", "name", "version", "status", "error", "started_at", "finished_at",
                  "collected_at", "target", "precision", "bundle_sha256", "runtime", "runtime_version",
                  "accuracy", "accuracy_expected", "cosine", "latency_p50", "latency_p95", "peak_rss_mb",
                  "model_mb", "source")
# A report's fields beyond the store's columns, kept as one JSON array (`picked`, picked_of)
PICKED = tuple(f for f, _, _ in REPORT_FIELDS if f not in REPORT_COLUMNS)


def picked_of(columns: dict) -> Optional[str]:
    """What the store keeps of a report's flat row beside its own columns (PICKED, as a JSON
    array), or None: a language model's report is read whole (its curve is in it)."""
    if columns.get("perplexity") is not None:
        return None
    return json.dumps([columns[f] for f in PICKED], sort_keys=True, allow_nan=False)


def _fill_picked(db) -> None:
    """`picked` for the reports stored before it was kept (a migration); a row that is no
    report any more keeps None: edgekit report reads it whole, and names it."""
    last = 0
    while True:  # a thousand reports at a time: a store of millions is not read into memory at once
        rows = db.execute("SELECT rowid, report FROM reports WHERE picked IS NULL AND rowid > ? ORDER BY rowid "
                          "LIMIT 1000", (last,)).fetchall()
        if not rows:
            return
        for row in rows:
            try:
                picked = picked_of(report_columns(json.loads(row["report"])))
            except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
                picked = None
            db.execute("UPDATE reports SET picked = ? WHERE rowid = ?", (picked, row["rowid"]))
        last = rows[-1]["rowid"]
