"""The device layout, the writer lock, per-model state and the atomic `current` switch.

    ROOT/bin/edgekit_runner.py         the launcher; bin/edgekit_device/ is this package
    ROOT/bin/edgekit_device.tar        a new runner as push sends it, put in place by the next start
    ROOT/incoming/                     uploads (*.part while in flight)
    ROOT/bundles/NAME/VERSION/         verified, unpacked bundles (.staging-* while checked)
    ROOT/current/NAME -> ../bundles/NAME/VERSION
    ROOT/state/NAME.json               current, previous, history
    ROOT/reports/NAME/VERSION/*.json   evaluation reports
    ROOT/trust/*.pub                   keys that bundles must be signed with
    ROOT/scratch/RUN/                  models a host measures before any is a bundle (scratch.py)
    ROOT/.lock                         one writer at a time (flock)

The `current` link is the truth about what runs; state/NAME.json adds what ran before.
Both are replaced with rename(2), so a reader sees the old or the new, never a mix, and
they change as one record (`transition`): the state file first says what is about to
happen (`pending`), then the link switches, then the state file says it happened. Every
reader trusts the link and repairs the state file from it (`read_state`): a pending
change whose link did not switch is dropped, one whose link did is completed, and a
missing or unreadable state file is rebuilt from the link and the installed bundles,
with a warning, instead of locking the device out.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import time
from contextlib import contextmanager
from typing import Iterator, List, Optional

__all__ = ["META", "Layout", "RunnerError", "check_name", "write_json_atomic", "read_json", "utc_now", "NAME_PATTERN",
           "TIME_FORMAT", "DIRS", "reconciled"]

# Names and versions become path components: the host checks them with this same pattern.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_NAME = NAME_PATTERN
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
META = ".bundle.json"  # written by the runner beside a bundle's files; no member may start with "."
# Under the device's root; scratch/ only while a host measures there (edgekit_device.scratch).
DIRS = ("bin", "incoming", "bundles", "current", "state", "reports", "trust", "scratch")
HISTORY_KEPT = 50


class RunnerError(Exception):
    """A command failed; `kind` tells the host what kind (usage, bundle, integrity, state,
    busy, runtime) and `exit_code` is the runner's exit status."""

    def __init__(self, message: str, kind: str = "runtime", exit_code: int = 1):
        super().__init__(message)
        self.kind = kind
        self.exit_code = exit_code


def check_name(value: str, what: str) -> str:
    """Names and versions become path components: keep them plain."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        raise RunnerError(f"{what} {value!r} is not a plain name (letters, digits, . _ + -)", "usage", 2)
    return value


def utc_now() -> str:
    return time.strftime(TIME_FORMAT, time.gmtime())


def read_json(path: str, limit: int = 4 << 20) -> Optional[dict]:
    """A JSON object from a file, or None when the file does not exist."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        return None
    if len(data) > limit:
        raise RunnerError(f"{path} is larger than {limit} bytes", "state")
    try:
        value = json.loads(data.decode("utf-8"))
    except ValueError as exc:
        raise RunnerError(f"{path} is not valid JSON ({exc})", "state") from exc
    if not isinstance(value, dict):
        raise RunnerError(f"{path} does not hold a JSON object", "state")
    return value


def write_json_atomic(path: str, value: dict) -> None:
    tmp = f"{path}.tmp-{os.urandom(4).hex()}"
    with open(tmp, "w") as fh:
        json.dump(value, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Layout:
    """Paths under one device root, and the operations that keep them consistent."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.warnings: List[str] = []  # repairs made while reading, for the command's reply
        for sub in DIRS:
            setattr(self, sub, os.path.join(self.root, sub))
        self.lock_path = os.path.join(self.root, ".lock")

    def ensure(self) -> None:
        for sub in ("incoming", "bundles", "current", "state", "reports", "trust"):
            os.makedirs(getattr(self, sub), exist_ok=True)

    @contextmanager
    def locked(self, timeout: float = 30.0) -> Iterator[None]:
        """Hold ROOT/.lock; the kernel drops it if this process dies, so no stale locks."""
        self.ensure()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                        raise RunnerError(f"{self.lock_path} is held by another runner for over {timeout:g}s; "
                                          "try again when it has finished", "busy") from exc
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)

    def bundle_dir(self, name: str, version: str) -> str:
        return os.path.join(self.bundles, check_name(name, "name"), check_name(version, "version"))

    def versions(self, name: str) -> List[str]:
        """Installed versions of NAME, oldest install first."""
        base = os.path.join(self.bundles, check_name(name, "name"))
        if not os.path.isdir(base):
            return []
        found = [v for v in os.listdir(base) if _NAME.fullmatch(v) and os.path.isdir(os.path.join(base, v))]
        return sorted(found, key=lambda v: (os.stat(os.path.join(base, v)).st_mtime, v))

    def names(self) -> List[str]:
        if not os.path.isdir(self.bundles):
            return []
        return sorted(n for n in os.listdir(self.bundles) if _NAME.fullmatch(n) and os.path.isdir(os.path.join(self.bundles, n)))

    def current_version(self, name: str) -> Optional[str]:
        try:
            target = os.readlink(os.path.join(self.current, check_name(name, "name")))
        except (FileNotFoundError, OSError):
            return None
        return os.path.basename(target.rstrip("/")) or None

    def switch(self, name: str, version: str) -> None:
        """Point current/NAME at bundles/NAME/VERSION: a new link, renamed over the old."""
        if not os.path.isdir(self.bundle_dir(name, version)):
            raise RunnerError(f"{name} {version} is not installed (installed: {', '.join(self.versions(name)) or 'none'})",
                              "state", 2)
        os.makedirs(self.current, exist_ok=True)
        tmp = os.path.join(self.current, f".{name}.tmp-{os.urandom(4).hex()}")
        os.symlink(os.path.join("..", "bundles", name, version), tmp)
        try:
            os.replace(tmp, os.path.join(self.current, name))
        except OSError:
            os.unlink(tmp)
            raise
        _fsync_dir(self.current)

    def unlink_current(self, name: str) -> None:
        link = os.path.join(self.current, check_name(name, "name"))
        if os.path.lexists(link):
            os.unlink(link)
            _fsync_dir(self.current)

    def state_path(self, name: str) -> str:
        return os.path.join(self.state, f"{check_name(name, 'name')}.json")

    def read_state(self, name: str, *, repair: bool = False) -> dict:
        """NAME's state as the link says it is. With `repair` (the caller holds the lock) a
        state file that disagreed with the link is rewritten; either way it is a warning."""
        try:
            stored = read_json(self.state_path(name))
            # missing is a problem only where a version runs: installed, never activated, there is none
            problem = None if stored is not None or self.current_version(name) is None else "is missing"
        except RunnerError as exc:
            stored, problem = None, f"could not be read ({exc})"
        state, note = reconciled(name, stored or {}, self.current_version(name), self.versions(name))
        if problem:
            note = f"{self.state_path(name)} {problem}: rebuilt from current/{name} (previous version unknown)"
            state["history"] = state["history"] + [{"action": "rebuilt", "version": state["current"], "at": utc_now()}]
        if note:
            self.warnings.append(note)
            if repair:
                self._write_state(name, state)
        return state

    def transition(self, name: str, action: str, current: Optional[str], previous: Optional[str]) -> dict:
        """Make NAME run `current` (None: nothing) with `previous` as its previous version, as
        one record with the state file. Hold the lock. A state file that cannot be written
        before the switch stops the change; one that cannot be written after it is a warning
        (the link switched: readers complete the change from it)."""
        state = self.read_state(name, repair=True)
        if current is not None and not os.path.isdir(self.bundle_dir(name, current)):
            raise RunnerError(f"{name} {current} is not installed (installed: {', '.join(self.versions(name)) or 'none'})",
                              "state", 2)
        self._write_state(name, {**state, "pending": {"current": current, "previous": previous, "action": action}})
        try:
            self.switch(name, current) if current is not None else self.unlink_current(name)
        except OSError:
            try:
                self._write_state(name, state)  # nothing switched: nothing pending
            except OSError:
                pass  # the next reader drops the pending change: the link did not move
            raise
        done = {**state, "current": current, "previous": previous, "updated_at": utc_now(),
                "history": (state["history"] + [{"action": action, "version": current, "at": utc_now()}])[-HISTORY_KEPT:]}
        try:
            self._write_state(name, done)
        except OSError as exc:
            self.warnings.append(f"{name} now runs {current or 'nothing'}, but {self.state_path(name)} could not be "
                                 f"updated ({exc.strerror}); it is completed from current/{name} when next read")
        return done

    def _write_state(self, name: str, state: dict) -> None:
        os.makedirs(self.state, exist_ok=True)
        write_json_atomic(self.state_path(name), {k: v for k, v in state.items() if v is not None or k != "pending"})


def reconciled(name: str, stored: dict, live: Optional[str], installed: Optional[List[str]] = None) -> tuple:
    """(state, repair note or None): a stored state made to agree with the live link. Given the
    installed versions, the previous one is one of them (rollback goes there), else none."""
    history = stored.get("history") if isinstance(stored.get("history"), list) else []
    current, previous = stored.get("current"), stored.get("previous")
    pending, note = stored.get("pending"), None
    if isinstance(pending, dict):
        if pending.get("current") == live:  # the link switched: the change happened
            current, previous = live, pending.get("previous")
            history = history + [{"action": pending.get("action"), "version": live, "at": utc_now()}]
            note = f"{name}: completed an interrupted {pending.get('action')} (current/{name} had switched)"
        else:
            note = f"{name}: dropped an interrupted {pending.get('action')} (current/{name} had not switched)"
    if current != live:  # changed behind the state file's back: the link is the truth
        note = note or f"{name}: state said {current or 'nothing'} runs, current/{name} says {live or 'nothing'}; " \
                       "the link wins"
        current, previous = live, current if current != live else previous
    if installed is not None and previous not in installed:  # a link repair dropped: not back to it
        previous = stored.get("previous") if stored.get("previous") in installed else None
    if previous == current:
        previous = None
    state = {"name": name, "current": current, "previous": previous, "history": history[-HISTORY_KEPT:],
             "updated_at": stored.get("updated_at")}
    return state, note


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
