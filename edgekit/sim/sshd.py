"""Real OpenSSH servers on 127.0.0.1 for simulated SSH devices: one sshd per device,
each with its own host key, port, config and device root.

Used by `edgekit demo --ssh` and by the tests (tests/sshd.py adds pytest fixtures and a
connection-cutting proxy). The servers run as the current user from a private config; a
shared client key is authorized on all of them, and the fleet's known_hosts and ssh
config are files in the fleet's own folder, so nothing outside it is read or written.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from edgekit.errors import ConfigError

SSHD = Path("/usr/sbin/sshd")
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")
TARGET = "host-cpu"

__all__ = ["SSHD", "SshServer", "SshFleet", "start_fleet", "free_port", "ssh_keygen", "sshd_available"]


def sshd_available() -> bool:
    return SSHD.exists() and SFTP_SERVER.exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ssh_keygen(path: Path, comment: str = "edgekit-test") -> str:
    """A new ed25519 key pair at `path`; returns the public key line ("ssh-ed25519 AAAA... comment")."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True)
    return path.with_name(path.name + ".pub").read_text().strip()


@dataclass
class SshServer:
    """One running sshd: the device `name` is reached at 127.0.0.1:`port`, files live under `root`."""

    name: str
    port: int
    root: Path
    dir: Path            # the server's own files: config, host key, pid file, log
    host_key_line: str   # "ssh-ed25519 AAAA..." (no host name)
    python: Optional[str] = None
    proc: Optional[subprocess.Popen] = None

    @property
    def log(self) -> Path:
        return self.dir / "sshd.log"

    def known_hosts_line(self, port: Optional[int] = None) -> str:
        key_type, key_b64 = self.host_key_line.split()[:2]
        return f"[127.0.0.1]:{port or self.port} {key_type} {key_b64}"

    def accepted_logins(self) -> int:
        """How many sessions sshd has authenticated so far (from its log)."""
        return self.log.read_text(errors="replace").count("Accepted publickey")

    def wait_sessions_closed(self, timeout: float = 10.0) -> None:
        """Wait until no client session of this sshd is alive (a cut one may still be writing)."""
        deadline = time.monotonic() + timeout
        while _children(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def start(self) -> None:
        self.dir.joinpath("sshd.pid").unlink(missing_ok=True)
        log = self.log.open("ab")
        self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.dir / "sshd_config")],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        _wait_for_banner(self)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # field 4 of /proc/PID/stat, the parent pid
            found.append(int(stat.parent.name))
    return found


def _wait_for_banner(server: SshServer, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"sshd for {server.name} exited with {server.proc.returncode}:\n"
                               f"{server.log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"sshd for {server.name} did not answer on port {server.port} within {timeout}s:\n"
                       f"{server.log.read_text(errors='replace')}")


def _sshd_config(server: SshServer, authorized_keys: Path, login_home: Optional[Path] = None) -> str:
    sftp = str(SFTP_SERVER) if SFTP_SERVER.exists() else "internal-sftp"
    # A session's login shell reads $HOME/.bashrc; an empty HOME makes it a plain shell
    home = [f'SetEnv HOME="{login_home}"'] if login_home is not None else []
    return "\n".join(home + [
        f"Port {server.port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {server.dir / 'ssh_host_ed25519_key'}",
        f"PidFile {server.dir / 'sshd.pid'}",
        f'AuthorizedKeysFile "{authorized_keys}"',
        "StrictModes no",           # tmp_path's modes are not sshd's business here
        "UsePAM no",
        "PermitRootLogin prohibit-password",  # the tests run as root
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "AllowTcpForwarding yes",   # for ProxyJump through another test server
        "UseDNS no",
        "MaxStartups 100",          # parallel pushes open many connections at once
        "MaxSessions 50",
        "LogLevel VERBOSE",         # logs "Accepted publickey", which tests count
        f"Subsystem sftp {sftp}",
        "",
    ])


@dataclass
class SshFleet:
    """N running servers sharing one client key; files under `dir`."""

    dir: Path
    client_key: Path                 # private key authorized on every server
    known_hosts: Path                # every server's host key, as [127.0.0.1]:port lines
    ssh_config: Path                 # an ssh config that ignores the user's known_hosts
    servers: list[SshServer] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """Environment for `edgekit` runs (and monkeypatch) that uses only this fleet's files."""
        return {"EDGEKIT_KNOWN_HOSTS": str(self.known_hosts), "EDGEKIT_SSH_CONFIG": str(self.ssh_config)}

    def server(self, name: str) -> SshServer:
        return next(s for s in self.servers if s.name == name)

    def device_dict(self, server: SshServer, **overrides) -> dict:
        """The inventory entry of one server, as a dict (overrides win)."""
        entry = {"name": server.name, "transport": "ssh", "host": "127.0.0.1", "port": server.port,
                 "user": "root", "identity_file": str(self.client_key), "root": str(server.root),
                 "target": TARGET, "connect_timeout": 5.0}
        if server.python:
            entry["python"] = server.python
        entry.update(overrides)
        return entry

    def device(self, name_or_index, **overrides):
        """An edgekit Device for one server (by name or index)."""
        from edgekit.fleet.inventory import Device

        server = self.servers[name_or_index] if isinstance(name_or_index, int) else self.server(name_or_index)
        return Device.model_validate(self.device_dict(server, **overrides))

    def devices(self) -> list:
        return [self.device(i) for i in range(len(self.servers))]

    def write_inventory(self, path: Optional[Path] = None, extra: Sequence[dict] = ()) -> Path:
        """A fleet TOML with every server (and `extra` device dicts, e.g. an unreachable one)."""
        path = path or self.dir / "fleet.toml"
        entries = [self.device_dict(s) for s in self.servers] + list(extra)
        path.write_text("".join(_toml_table("device", e) for e in entries))
        return path

    def write_known_hosts(self, path: Optional[Path] = None, servers: Optional[Sequence[SshServer]] = None) -> Path:
        """A known_hosts file with the given servers' keys (all by default)."""
        path = path or self.known_hosts
        chosen = self.servers if servers is None else servers
        path.write_text("".join(s.known_hosts_line() + "\n" for s in chosen))
        return path

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def _toml_table(name: str, entry: dict) -> str:
    # JSON's string escapes are valid TOML basic-string escapes, so quotes and spaces survive.
    lines = [f"[[{name}]]"] + [f"{k} = {json.dumps(v)}" for k, v in entry.items()]
    return "\n".join(lines) + "\n\n"


def start_fleet(base: Path, n: int, *, names: Optional[Sequence[str]] = None,
                roots: Optional[Sequence[str]] = None, pythons: Optional[Sequence[Optional[str]]] = None,
                login_home: Optional[Path] = None) -> SshFleet:
    """Start `n` sshd servers under `base`. `names` and `roots` (directory names under
    base/devices, spaces and quotes welcome) default to dev-01.., `pythons` to None.
    `login_home`: HOME for the devices' sessions (default: the user's own, whose login
    shell's rc files then run at every session, as on the machine itself)."""
    if not sshd_available():
        raise ConfigError(f"{SSHD} is missing: install openssh-server (apt-get install openssh-server, "
                          "or `make sshd`) to simulate SSH devices")
    Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # sshd's privilege-separation dir
    base.mkdir(parents=True, exist_ok=True)
    client_key = base / "client_ed25519"
    authorized = base / "authorized_keys"
    authorized.write_text(ssh_keygen(client_key, "edgekit-test-client") + "\n")
    fleet = SshFleet(dir=base, client_key=client_key, known_hosts=base / "known_hosts",
                     ssh_config=base / "ssh_config")
    fleet.ssh_config.write_text("Host *\n    UserKnownHostsFile /dev/null\n    GlobalKnownHostsFile /dev/null\n")
    names = list(names or [f"dev-{i + 1:02d}" for i in range(n)])
    roots = list(roots or names)
    pythons = list(pythons or [None] * n)
    try:
        for name, root, python in zip(names, roots, pythons):
            fleet.servers.append(_start_server(base, name, base / "devices" / root, python, authorized, login_home))
    except BaseException:
        fleet.stop()
        raise
    fleet.write_known_hosts()
    return fleet


def _start_server(base: Path, name: str, root: Path, python: Optional[str], authorized: Path,
                  login_home: Optional[Path] = None) -> SshServer:
    server_dir = base / "servers" / f"sshd-{len(list(base.glob('servers/sshd-*'))):02d}"
    server_dir.mkdir(parents=True)
    root.mkdir(parents=True, exist_ok=True)
    host_pub = ssh_keygen(server_dir / "ssh_host_ed25519_key", f"host-{name}")
    for attempt in range(5):  # another process may grab the free port before sshd binds it
        server = SshServer(name=name, port=free_port(), root=root, dir=server_dir, host_key_line=host_pub,
                           python=python)
        (server_dir / "sshd_config").write_text(_sshd_config(server, authorized, login_home))
        try:
            server.start()
            return server
        except RuntimeError:
            if attempt == 4 or "Address already in use" not in server.log.read_text(errors="replace"):
                raise
    raise AssertionError("unreachable")  # pragma: no cover


