"""Transport.feed over SSH: a receiving command with a file's bytes as its stdin, in a session of
its own (the command session's commands get no stdin: sshshell.py).

The bytes go as the session's data (base.chunks_from), without SFTP's requests and answers. The
command runs under `sh -c '"$0" "$@"; exit $?'`, so that a command killed by a signal exits
128 + its number (the shell stays to say so) rather than leaving the session without an
exit status, which is what a lost connection leaves.
"""

from __future__ import annotations

import select
import shlex
import time
from pathlib import Path
from typing import Optional, Sequence

import paramiko

from edgekit.transport.base import Progress, RunResult, chunks_from, offset_of

__all__ = ["feed"]

def feed(chan: paramiko.Channel, argv: Sequence[str], local: Path, progress: Optional[Progress],
         timeout: Optional[float], io_timeout: float) -> Optional[RunResult]:
    """Run argv on the open session `chan` and feed it `local` from the offset it names; None
    when it has not ended `timeout` seconds after the last byte. paramiko and socket errors
    pass through (the transport translates them); so does EOFError, for a session that ended
    without the command's exit status."""
    chan.settimeout(io_timeout)  # a send or read unanswered this long: the device is gone
    chan.exec_command(shlex.join(["sh", "-c", '"$0" "$@"; exit $?', *map(str, argv)]))
    first, early = _first_line(chan)
    offset = offset_of(first)
    if offset is not None:
        first = b""
        _send(chan, local, offset, progress)
    chan.shutdown_write()
    out, err = _rest_of(chan, timeout)
    if out is None:
        return None
    return RunResult(chan.recv_exit_status(), (first + early + out).decode(errors="replace"),
                     err.decode(errors="replace"))


def _send(chan: paramiko.Channel, local: Path, offset: int, progress: Optional[Progress]) -> None:
    for chunk in chunks_from(local, offset, progress):
        if chan.exit_status_ready():  # it ended early (refused what it got), or the session did:
            return  # what comes next says which
        try:
            chan.sendall(chunk)
        except OSError:
            if chan.exit_status_ready():
                return
            raise


def _first_line(chan: paramiko.Channel, most: int = 4096) -> tuple[bytes, bytes]:
    """stdout up to its first newline (included), or all of it when it ends sooner; and what
    came after that newline in the same reads."""
    got = b""
    while b"\n" not in got and len(got) < most:
        more = chan.recv(most - len(got))
        if not more:
            break
        got += more
    line, newline, rest = got.partition(b"\n")
    return line + newline, rest


def _rest_of(chan: paramiko.Channel, timeout: Optional[float]) -> tuple[Optional[bytes], bytes]:
    """stdout and stderr until the command ends; (None, stderr) when `timeout` passes first;
    EOFError when the session ends without the command's exit status (a lost connection)."""
    out, err = bytearray(), bytearray()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        while chan.recv_ready():
            out += chan.recv(65536)
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
        pending = chan.recv_ready() or chan.recv_stderr_ready()
        # paramiko marks the status as come when the channel closes too, leaving it -1
        if chan.status_event.is_set() and chan.exit_status >= 0 and (chan.eof_received or chan.closed) \
                and not pending:
            return bytes(out), bytes(err)
        if (chan.closed and not pending) or not chan.get_transport().is_active():
            raise EOFError("the session ended without the command's exit status")
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return None, bytes(err)
        select.select([chan], [], [], 0.5 if left is None else min(left, 0.5))
