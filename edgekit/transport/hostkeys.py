"""Host-key checking as OpenSSH does it: known_hosts files, accept-new, a changed key refused.

SSHTransport loads no keys into paramiko's SSHClient, so paramiko hands every server key
to `HostKeyPolicy.missing_host_key`, right after key exchange and before authentication:
a refused host never sees a key offer, a command or a byte of a file.

The files checked are the user's (`~/.ssh/known_hosts`, or the ssh config's
UserKnownHostsFile), the global ones, and edgekit's own (`~/.config/edgekit/known_hosts`,
EDGEKIT_KNOWN_HOSTS, or the `known_hosts` argument), which is the only one edgekit writes.
"""

from __future__ import annotations

import fcntl
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import paramiko
from paramiko.hostkeys import HostKeyEntry, HostKeys, InvalidHostKey

from edgekit.errors import HostKeyError

__all__ = ["edgekit_known_hosts", "host_key_name", "user_known_hosts", "HostKeyPolicy", "known_key_types",
           "preferring"]

GLOBAL_FILES = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
USER_FILES = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")


def edgekit_known_hosts(path: Optional[str] = None) -> Path:
    """edgekit's own known_hosts: the argument, else EDGEKIT_KNOWN_HOSTS, else the config dir."""
    chosen = path or os.environ.get("EDGEKIT_KNOWN_HOSTS")
    if chosen:
        return Path(chosen).expanduser()
    return Path(os.environ.get("XDG_CONFIG_HOME") or "~/.config").expanduser() / "edgekit" / "known_hosts"


def user_known_hosts(ssh_options: dict) -> list[Path]:
    """The user's and the global known_hosts files, honouring the ssh config's overrides."""
    user = ssh_options.get("userknownhostsfile", " ".join(USER_FILES)).split()
    system = ssh_options.get("globalknownhostsfile", " ".join(GLOBAL_FILES)).split()
    return [Path(p).expanduser() for p in user + system if p != "/dev/null"]


def host_key_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def describe(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"  # fingerprint: "SHA256:<base64>", as OpenSSH prints it


@dataclass(frozen=True)
class KnownKey:
    key: paramiko.PKey
    path: Path
    lineno: int
    revoked: bool


def _glob(pattern: str) -> "re.Pattern[str]":
    # OpenSSH patterns know only * and ?; fnmatch would read "[127.0.0.1]:2201" as a character class
    return re.compile(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."))


def _name_matches(patterns: str, name: str) -> bool:
    """OpenSSH host patterns: comma-separated names, hashed |1|salt|hash, wildcards, !negation."""
    hit = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        pattern = pattern[1:] if negated else pattern
        if pattern.startswith("|1|"):
            found = HostKeys.hash_host(name, pattern) == pattern
        else:
            found = _glob(pattern).fullmatch(name) is not None
        if found and negated:
            return False
        hit = hit or found
    return hit


def _read_known(path: Path, name: str) -> Iterable[KnownKey]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        marker = None
        if line.startswith("@"):
            marker, _, line = line.partition(" ")
        if not line or line.startswith("#") or marker == "@cert-authority":
            continue  # certificates are not offered by paramiko; a CA line vouches for nothing here
        patterns = line.split(None, 1)[0]
        if not _name_matches(patterns, name):
            continue
        try:
            entry = HostKeyEntry.from_line(" ".join(line.split()), lineno)
        except InvalidHostKey:
            entry = None  # OpenSSH skips lines it cannot parse, so do we
        if entry is not None:
            yield KnownKey(entry.key, path, lineno, marker == "@revoked")


def _known(name: str, files: Sequence[Path]) -> list[KnownKey]:
    return [k for path in files for k in _read_known(path, name)]


def known_key_types(name: str, files: Sequence[Path]) -> list[str]:
    """Key types already known for `name`, so that the server is asked for one of them first."""
    types: list[str] = []
    for known in _known(name, files):
        if not known.revoked and known.key.get_name() not in types:
            types.append(known.key.get_name())
    return types


class HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Accept a key found in known_hosts; refuse a changed one; a new one only on request."""

    def __init__(self, device: str, files: Sequence[Path], own_file: Path, trust_new: bool):
        self.device = device
        self.files = [*files, own_file]
        self.own_file = own_file
        self.trust_new = trust_new

    def missing_host_key(self, client, hostname: str, key: paramiko.PKey) -> None:
        known = _known(hostname, self.files)
        revoked = [k for k in known if k.revoked and k.key == key]
        if revoked:
            raise HostKeyError(f"the host key of {hostname} ({describe(key)}) is marked @revoked in "
                               f"{revoked[0].path}:{revoked[0].lineno}; refusing to connect", device=self.device)
        trusted = [k for k in known if not k.revoked]
        if any(k.key == key for k in trusted):
            return
        if trusted:
            raise self._changed(hostname, key, trusted[0])
        if not self.trust_new:
            raise HostKeyError(f"unknown host key for {hostname} ({describe(key)}); pass --trust-new-hosts to "
                               f"accept it, or add it to {self.own_file}", device=self.device)
        self._remember(hostname, key)

    def _changed(self, hostname: str, key: paramiko.PKey, old: KnownKey) -> HostKeyError:
        return HostKeyError(
            f"HOST KEY CHANGED for {hostname}: {old.path}:{old.lineno} has {describe(old.key)} but the device "
            f"offered {describe(key)}; nothing was sent. If the device was reinstalled, remove the old key "
            f"(ssh-keygen -R '{hostname}' -f {old.path}) and connect again with --trust-new-hosts",
            device=self.device)

    def _remember(self, hostname: str, key: paramiko.PKey) -> None:
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        try:
            self.own_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with self.own_file.open("a+", encoding="utf-8") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)  # parallel pushes may learn keys at the same time
                fh.seek(0)
                existing = fh.read()
                if line not in existing.splitlines(keepends=True):
                    fh.write(("\n" if existing and not existing.endswith("\n") else "") + line)
        except OSError as exc:
            raise HostKeyError(f"cannot record the host key of {hostname} in {self.own_file}: "
                               f"{exc.strerror or exc}", device=self.device) from exc


def preferring(key_types: list[str]):
    """A Transport factory that asks the server for a host key of a type already known,
    so a device with several host keys is checked against the one in known_hosts."""
    wanted = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")}

    def make(sock, **kwargs) -> paramiko.Transport:
        transport = paramiko.Transport(sock, **kwargs)
        if key_types:
            options = transport.get_security_options()
            first = [a for k in key_types for a in wanted.get(k, (k,)) if a in options.key_types]
            options.key_types = first + [a for a in options.key_types if a not in first]
        return transport

    return make
