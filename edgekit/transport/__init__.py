"""How edgekit reaches a device: a small seam with `ssh` and `local` implementations.

Everything above it (push, rollout, rollback, collect) takes a Transport from connect().
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgekit.transport.base import RunResult, Transport

if TYPE_CHECKING:
    from edgekit.fleet.inventory import Device

__all__ = ["RunResult", "Transport", "connect"]


def connect(device: "Device", *, trust_new_hosts: bool = False, known_hosts: str | None = None) -> Transport:
    """Open a transport to a device; raises ConnectError/HostKeyError when it cannot."""
    if device.transport == "local":
        from edgekit.transport.local import LocalTransport

        return LocalTransport(device)
    from edgekit.transport.ssh import SSHTransport  # paramiko is imported only for ssh devices

    return SSHTransport(device, trust_new_hosts=trust_new_hosts, known_hosts=known_hosts)
