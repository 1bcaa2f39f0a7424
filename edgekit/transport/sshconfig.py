"""Where an ssh device really is: its Endpoint's fields (the inventory's) over the user's ~/.ssh/config.

A device's `host` may be a Host alias; paramiko's SSHConfig gives its HostName, User,
Port, IdentityFile, ProxyJump, ProxyCommand and known_hosts files. Fields given in the
inventory win over the config, as command-line options win over it in OpenSSH.
EDGEKIT_SSH_CONFIG names another config file (tests use it to stay out of ~/.ssh).
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import paramiko

from edgekit.errors import ConfigError
from edgekit.transport.base import Endpoint
from edgekit.transport.hostkeys import host_key_name, user_known_hosts

__all__ = ["Hop", "Route", "resolve", "ssh_config_path"]


@dataclass(frozen=True)
class Hop:
    """One SSH server to log in to (the device, or a jump host on the way)."""

    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...]
    known_hosts: tuple[Path, ...]      # the user's and global files (edgekit's own is added by the caller)
    proxy_command: Optional[str] = None
    look_for_keys: bool = True         # try ~/.ssh/id_* too: only when no identity was named

    @property
    def label(self) -> str:
        return f"{self.user}@{host_key_name(self.hostname, self.port)}"


@dataclass(frozen=True)
class Route:
    target: Hop
    jumps: tuple[Hop, ...] = ()   # ProxyJump hops, first hop first


def ssh_config_path() -> Path:
    return Path(os.environ.get("EDGEKIT_SSH_CONFIG") or "~/.ssh/config").expanduser()


def _options(host: str) -> dict:
    path = ssh_config_path()
    if not path.is_file():
        return {"hostname": host}
    try:
        return paramiko.SSHConfig.from_path(str(path)).lookup(host)
    except (paramiko.SSHException, OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read this ssh config: {exc}; fix it or point EDGEKIT_SSH_CONFIG "
                          f"at another file") from exc


def _hop(host: str, *, port: Optional[int], user: Optional[str], identity: Optional[str],
              fallback_identity: Optional[str] = None) -> tuple[Hop, dict]:
    opts = _options(host)
    identities = [identity] if identity else list(opts.get("identityfile", []))
    if fallback_identity and fallback_identity not in identities:
        identities.append(fallback_identity)
    command = opts.get("proxycommand")
    hop = Hop(
        hostname=opts.get("hostname", host),
        port=port or int(opts.get("port", 22)),
        user=user or opts.get("user") or getpass.getuser(),
        identity_files=tuple(str(Path(p).expanduser()) for p in identities),
        known_hosts=tuple(user_known_hosts(opts)),
        proxy_command=None if command in (None, "none") else command,
        look_for_keys=not (identity or opts.get("identityfile")),
    )
    return hop, opts


def _parse_hop(spec: str) -> tuple[Optional[str], str, Optional[int]]:
    """ProxyJump's `[user@]host[:port]` (an IPv6 address in brackets)."""
    user, _, hostport = spec.rpartition("@")
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = hostport.partition(":")
    if not host or (port and not port.isdigit()):
        raise ConfigError(f"ProxyJump hop {spec!r}: expected [user@]host[:port]")
    return user or None, host, int(port) if port else None


def resolve(endpoint: Endpoint) -> Route:
    """The device's server and the jump hosts to reach it through.

    A jump host's key is checked like the device's; it authenticates with its own ssh
    config identities, then with the device's identity file (one fleet key is common)."""
    target, opts = _hop(endpoint.host, port=endpoint.port, user=endpoint.user, identity=endpoint.key)
    jump = endpoint.jump or opts.get("proxyjump")
    if not jump or jump == "none":
        return Route(target)
    hops = []
    for spec in jump.split(","):
        user, host, port = _parse_hop(spec.strip())
        hop, _ = _hop(host, port=port, user=user, identity=None, fallback_identity=target.identity_files[0]
                           if target.identity_files else None)
        hops.append(hop)
    return Route(target, tuple(hops))
