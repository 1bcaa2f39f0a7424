"""The transport seam: a few methods every way of reaching a device implements, and the
Endpoint it reaches (what the inventory says of a device that a connection needs).

Remote paths are POSIX strings on the device. Commands are argument lists, never shell
strings: the ssh transport quotes them with shlex.join, the local one runs them directly.
Implementations translate their own errors (paramiko, socket, OSError) into
edgekit.errors.TransportError subclasses, in one place.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol, Sequence

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass(frozen=True)
class Endpoint:
    """One device as a transport sees it. `transport` picks the implementation ("ssh" or
    "local"); `root` is the device's folder; `timeout` bounds connecting (seconds). For ssh,
    what is not given here (user, port, key: an identity file, jump: a ProxyJump spec) comes
    from the ssh config of `host`, which may be an alias there."""

    name: str
    transport: str
    root: str
    timeout: float
    host: Optional[str] = None
    port: Optional[int] = None
    user: Optional[str] = None
    key: Optional[str] = None
    jump: Optional[str] = None


class Cancel(Protocol):
    """Set when the user interrupted (a threading.Event): stop waiting for the command."""

    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Transport(ABC):
    """One connection to one device."""

    name: str  # the device's name, for messages

    @abstractmethod
    def put(self, local: Path, remote: str, *, progress: Optional[Progress] = None) -> None:
        """Copy a local file to `remote`, resuming from an existing `remote` prefix if the
        implementation supports it (callers upload to a `.part` name, then rename)."""

    @abstractmethod
    def get(self, remote: str, local: Path) -> None:
        """Copy a file from the device."""

    @abstractmethod
    def run(self, argv: Sequence[str], *, timeout: Optional[float] = None,
            cancel: Optional[Cancel] = None) -> RunResult:
        """Run a command on the device; a non-zero exit is returned, not raised. When `cancel`
        is set while it runs, stop waiting for it and raise edgekit.errors.Interrupted (give
        it only to commands that may be abandoned: an evaluation, never an install)."""

    @abstractmethod
    def feed(self, argv: Sequence[str], local: Path, *, progress: Optional[Progress] = None,
             timeout: Optional[float] = None) -> RunResult:
        """Run a receiving command with the bytes of `local` on its stdin. Its first line of
        stdout is "WORD K" (K: the bytes it has already, from an earlier cut transfer): the rest
        of `local` from K is sent, then its stdin is closed. A first line of another form
        means it refused before receiving: nothing is sent. A command that ends while bytes
        are still being sent stops the sending. Returns how it ended (the first line left
        out when it was an offset); `timeout` bounds the wait after the last byte.
        `progress(done, total)` may raise to stop the sending (the command sees its stdin
        close before the end)."""

    @abstractmethod
    def size(self, remote: str) -> Optional[int]:
        """The size of a remote file, or None when it does not exist."""

    @abstractmethod
    def listdir(self, remote: str) -> list[str]:
        """Names in a remote directory ([] when it does not exist)."""

    @abstractmethod
    def makedirs(self, remote: str) -> None:
        """Create a remote directory and its parents."""

    @abstractmethod
    def rename(self, src: str, dst: str) -> None:
        """Rename a remote file, replacing `dst`."""

    @abstractmethod
    def remove(self, remote: str) -> None:
        """Remove a remote file if it exists."""

    def close(self) -> None:
        """Release the connection."""

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def chunks_from(local: Path, offset: int, progress: Optional[Progress], size: int = 1 << 20) -> Iterator[bytes]:
    """`local` from `offset` (a receiving command's K), a megabyte at a time: what every
    Transport.feed sends. `progress(done, total)` is told at the start and after each chunk
    the caller has taken."""
    total = local.stat().st_size
    done = min(offset, total)
    with local.open("rb") as src:
        src.seek(done)
        if progress:
            progress(done, total)
        while chunk := src.read(size):
            yield chunk
            done += len(chunk)
            if progress:
                progress(done, total)


def offset_of(line: bytes) -> Optional[int]:
    """K from a receiving command's first line "WORD K" (Transport.feed), else None."""
    parts = line.split()
    if len(parts) == 2 and parts[1].isdigit():
        return int(parts[1])
    return None
