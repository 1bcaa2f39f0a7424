"""How edgekit reaches a device: a small seam with `ssh` and `local` implementations.

Everything above it (push, rollout, rollback, collect) takes a Transport.
"""

from edgekit.transport.base import RunResult, Transport

__all__ = ["RunResult", "Transport"]
