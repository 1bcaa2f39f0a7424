"""Real OpenSSH servers on 127.0.0.1 for tests: one sshd per device, each with its own
host key, port, config and device root, plus a loopback proxy that can cut a connection.

The servers themselves are edgekit.sim.sshd's (the demo uses them too).
Use it from a test module with `from sshd import sshd_fleet` (pytest puts tests/ on
sys.path) and ask the fixture for as many devices as the test needs:

    def test_push(sshd_fleet):
        fleet = sshd_fleet(3)                 # an SshFleet of 3 running servers
        inv = fleet.write_inventory()         # a fleet TOML for `edgekit push --inventory`
        run_edgekit("push", ..., env=fleet.env)

`fleet.env` points edgekit at the fleet's known_hosts and an ssh config that ignores the
user's own known_hosts, so tests neither read nor write files outside tmp_path.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

from edgekit.sim.sshd import (  # noqa: F401  (re-exported for test modules)
    SFTP_SERVER,
    SSHD,
    SshFleet,
    SshServer,
    free_port,
    ssh_keygen,
    sshd_available,
)
from edgekit.sim.sshd import start_fleet as _start_fleet

__all__ = ["SSHD", "SshServer", "SshFleet", "start_fleet", "sshd_fleet", "DroppingProxy", "free_port",
           "ssh_keygen", "tree_state"]


def start_fleet(base: Path, n: int, **kwargs) -> SshFleet:
    """edgekit.sim.sshd.start_fleet, skipping the test when sshd is not installed."""
    if not sshd_available():
        pytest.skip(f"{SSHD} is missing: install openssh-server (`make sshd`) to run the SSH tests")
    return _start_fleet(base, n, **kwargs)


@pytest.fixture
def sshd_fleet(tmp_path):
    """A factory: sshd_fleet(n, names=..., roots=..., pythons=...) -> SshFleet; all stopped at teardown."""
    fleets: list[SshFleet] = []

    def make(n: int = 2, **kwargs) -> SshFleet:
        fleet = start_fleet(tmp_path / f"ssh-{len(fleets)}", n, **kwargs)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop()


class DroppingProxy:
    """A loopback TCP proxy 127.0.0.1:`port` -> 127.0.0.1:`target_port` that counts bytes
    and, when `drop_after` is set, cuts the connection once that many bytes went upstream
    (and, with `drop_when`, once that also holds: the bytes sent are not yet the server's,
    which may lag far behind on a busy machine; nothing more is forwarded meanwhile);
    `throttle` (bytes/s) makes the upstream a slow link."""

    def __init__(self, target_port: int, drop_after: Optional[int] = None, throttle: Optional[float] = None,
                 drop_when: Optional[Callable[[], bool]] = None):
        self.target_port = target_port
        self.drop_after = drop_after
        self.drop_when = drop_when
        self.throttle = throttle
        self.bytes_up = 0      # client -> server, over all connections
        self.dropped = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while data := src.recv(65536):
                if upstream:
                    with self._lock:
                        room = None if self.drop_after is None else self.drop_after - self.bytes_up
                        data = data if room is None else data[:max(room, 0)]
                        self.bytes_up += len(data)
                    if room is not None and room <= len(data):
                        dst.sendall(data)
                        deadline = time.monotonic() + 30
                        while self.drop_when and not self.drop_when() and time.monotonic() < deadline:
                            time.sleep(0.01)
                        self._cut(src, dst)
                        return
                    if self.throttle:
                        time.sleep(len(data) / self.throttle)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                _shutdown(s)

    def _cut(self, *socks: socket.socket) -> None:
        self.dropped.set()
        for s in socks:
            _shutdown(s)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                _shutdown(s)
                s.close()

    def __enter__(self) -> "DroppingProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _shutdown(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def tree_state(root: Path) -> dict[str, tuple]:
    """Every path under `root` with its kind, size and content hash or link target."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            state[rel] = ("link", os.readlink(path))
        elif path.is_file():
            state[rel] = ("file", path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
        else:
            state[rel] = ("dir",)
    return state
