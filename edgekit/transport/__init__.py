"""How edgekit reaches a device: a small seam with `ssh` and `local` implementations.

connect() opens one to an Endpoint (where a device is and how to log in; an inventory's
Device gives its own); everything above (push, rollout, rollback, collect) takes the Transport.
"""

from __future__ import annotations

from edgekit.transport.base import Endpoint, RunResult, Transport

__all__ = ["Endpoint", "RunResult", "Transport", "connect"]


def connect(endpoint: Endpoint, *, trust_new_hosts: bool = False, known_hosts: str | None = None) -> Transport:
    """Open a transport to a device; raises ConnectError/HostKeyError when it cannot."""
    if endpoint.transport == "local":
        from edgekit.transport.local import LocalTransport

        return LocalTransport(endpoint)
    from edgekit.transport.ssh import SSHTransport  # paramiko is imported only for ssh devices

    return SSHTransport(endpoint, trust_new_hosts=trust_new_hosts, known_hosts=known_hosts)
