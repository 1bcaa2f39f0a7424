"""One shell session per device for every command the ssh transport runs on it.

Each SSH session starts the user's login shell, which reads its rc files first; on a
device whose ~/.bashrc does real work (this machine's starts pyenv: 0.25 s and 0.15 s of CPU
a session) that cost was paid for every runner command. So the transport opens one session
whose shell runs a small POSIX `sh` loop: it reads one command a line, runs it in a
subshell with stdin from /dev/null, and then writes an end mark with the exit status to
stdout and an end mark to stderr. The marks carry a random token, so no output mimics them.
A command killed by a signal exits 128 + its number, as `sh` reports it.

A command is sent as its shlex-quoted line with backslashes and newlines escaped for
`printf %b`, so arguments may hold any character. A session that timed out, was cancelled
or ended is closed; the next command opens a new one.
"""

from __future__ import annotations

import re
import secrets
import select
import shlex
import time
from typing import Optional, Sequence

import paramiko

from edgekit.transport.base import Cancel

__all__ = ["Shell", "Outcome"]

LOOP = ('while IFS= read -r line; do (eval "$(printf \'%b\' "$line")") </dev/null; code=$?; '
        'printf \'\\n%s %d\\n\' "$1" "$code"; printf \'\\n%s\\n\' "$1" >&2; done')


class Outcome:
    """How a command ended: `state` is done (with `code`), timeout, cancelled or ended (the
    session closed before the command's end mark); stdout and stderr as far as they came."""

    def __init__(self, state: str, out: bytes, err: bytes, code: Optional[int] = None):
        self.state, self.out, self.err, self.code = state, out, err, code


class Shell:
    """The loop's session on one paramiko Transport; one command at a time."""

    def __init__(self, transport: paramiko.Transport, open_timeout: float):
        self.mark = f"edgekit-end-{secrets.token_hex(8)}"
        self._out_end = re.compile(rb"\n" + self.mark.encode() + rb" (-?\d+)\n\Z")
        self._err_end = b"\n" + self.mark.encode() + b"\n"
        self.chan = transport.open_session(timeout=open_timeout)
        self.chan.exec_command(shlex.join(["sh", "-c", LOOP, "edgekit", self.mark]))

    def run(self, argv: Sequence[str], timeout: Optional[float], cancel: Optional[Cancel]) -> Outcome:
        line = shlex.join(str(a) for a in argv).replace("\\", "\\\\").replace("\n", "\\n")
        self.chan.sendall((line + "\n").encode())
        return self._wait(timeout, cancel)

    def close(self) -> None:
        self.chan.close()

    def _wait(self, timeout: Optional[float], cancel: Optional[Cancel]) -> Outcome:
        """Read stdout and stderr together (reading one only could stall the command on a
        full window of the other) until both end marks came."""
        out, err = bytearray(), bytearray()
        deadline = None if timeout is None else time.monotonic() + timeout
        chan = self.chan
        while True:
            while chan.recv_ready():
                out += chan.recv(65536)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            done = self._out_end.search(out, max(0, len(out) - len(self.mark) - 16))  # at the very end
            if done and err.endswith(self._err_end):
                return Outcome("done", bytes(out[:done.start()]), bytes(err[:-len(self._err_end)]), int(done.group(1)))
            if (chan.eof_received or chan.closed) and not chan.recv_ready() and not chan.recv_stderr_ready():
                return Outcome("ended", bytes(out), bytes(err))
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return Outcome("timeout", bytes(out), bytes(err))
            if cancel is not None and cancel.is_set():
                return Outcome("cancelled", bytes(out), bytes(err))
            if not chan.get_transport().is_active():  # the watchdog closed a frozen connection
                return Outcome("ended", bytes(out), bytes(err))
            select.select([chan], [], [], 0.5 if left is None else min(left, 0.5))
