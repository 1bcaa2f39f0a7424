"""The rollout engines by name (`rollout --engine`): edgekit's own fan-out, or Ansible.

Apart from edgekit.fleet.rollout, which takes an engine and never picks one: the Ansible
engine judges its play with the rollout's own rules, so it sits above the rollout."""

from __future__ import annotations

from edgekit.errors import ConfigError
from edgekit.fleet.deploy import Engine, NativeEngine
from edgekit.fleet.fanout import WORKERS

__all__ = ["engine_for", "ENGINES"]

ENGINES = ("native", "ansible")


def engine_for(name: str, *, workers: int = WORKERS, **connect_opts) -> Engine:
    """The engine called `name` (--engine), working on `workers` devices at a time."""
    if name == "native":
        return NativeEngine(workers=workers, **connect_opts)
    if name == "ansible":
        from edgekit.fleet.ansible_engine import AnsibleEngine

        return AnsibleEngine(workers=workers, **connect_opts)
    raise ConfigError(f"--engine {name}: not an engine (choose {' or '.join(ENGINES)})")
