"""The SQLite underneath the store: a connection threads share, its transactions, and opening
a store that may only be read."""

from __future__ import annotations

import sqlite3
import threading
import urllib.parse
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["LockedConnection", "Transaction", "cannot_write", "open_read_only"]


class LockedConnection:
    """A connection that one thread at a time uses: a statement, or a whole transaction."""

    def __init__(self, db: sqlite3.Connection):
        db.row_factory = sqlite3.Row
        self._conn = db
        self.lock = threading.RLock()
        self.depth = 0  # open transactions (nested ones join the outermost); guarded by `lock`

    def execute(self, sql: str, args: Sequence = ()) -> sqlite3.Cursor:
        with self.lock:
            return self._conn.execute(sql, args)

    def close(self) -> None:
        with self.lock:
            self._conn.close()


class Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (autocommit otherwise); the
    connection's lock is held throughout, so another thread's statement waits. Nested in
    another on the same thread, it is part of the outer one (which commits or rolls back)."""

    def __init__(self, db: LockedConnection):
        self._db = db

    def __enter__(self) -> None:
        self._db.lock.acquire()
        self._db.depth += 1
        if self._db.depth > 1:
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._db.depth -= 1
            self._db.lock.release()
            raise

    def __exit__(self, exc_type, *_) -> None:
        self._db.depth -= 1
        try:
            if self._db.depth == 0:
                self._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._db.lock.release()


def cannot_write(exc: sqlite3.DatabaseError, path: Path) -> bool:
    """SQLite's ways of saying an existing store may be read but not written here."""
    message = str(exc).lower()
    return path.is_file() and ("readonly" in message or "read-only" in message or "unable to open" in message)


def open_read_only(path: Path) -> tuple[Optional[LockedConnection], int, Optional[sqlite3.Error]]:
    """(connection, its schema version, None) for the store as it is on disk: read-only, or
    immutable where SQLite cannot even keep its shared-memory file beside it (a read-only
    folder or medium: nothing else writes there); (None, 0, the error) when neither opens."""
    uri = "file:" + urllib.parse.quote(str(path.resolve()))
    error: Optional[sqlite3.Error] = None
    for mode in ("?mode=ro", "?immutable=1"):
        db = None
        try:
            db = LockedConnection(sqlite3.connect(uri + mode, uri=True, check_same_thread=False, isolation_level=None))
            row = db.execute("SELECT version FROM schema_version").fetchone()
            return db, row["version"] if row else 0, None
        except sqlite3.DatabaseError as exc:
            error = exc
            if db is not None:
                db.close()
    return None, 0, error
