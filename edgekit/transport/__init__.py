"""How edgekit reaches a device: a small seam with `ssh` and `local` implementations.

connect() opens one to an Endpoint (where a device is and how to log in; an inventory's
Device gives its own); everything above (push, rollout, rollback, collect) takes the Transport.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types

from edgekit.transport.base import Endpoint, RunResult, Transport

__all__ = ["Endpoint", "RunResult", "Transport", "connect", "defer_invoke"]


class _Deferred(types.ModuleType):
    """Stands in for a module until one of its attributes is used, then imports it."""

    _lock = threading.Lock()  # two devices' threads may be first at once

    def __getattr__(self, attr: str):
        with _Deferred._lock:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            module = importlib.import_module(self.__name__)
        return getattr(module, attr)


def defer_invoke() -> None:
    """paramiko.config imports `invoke` (a task runner, with its own YAML parser, asyncio and
    unittest.mock: 0.06-0.1 s of CPU, most of paramiko's import) for one use, an ssh config's
    `Match exec`. Every `edgekit push` paid it at start; after this only a `Match exec` does.
    The `edgekit` command calls it (it owns its process): a program that imports edgekit as a
    library keeps its own `invoke` untouched."""
    if "invoke" not in sys.modules and importlib.util.find_spec("invoke") is not None:
        sys.modules["invoke"] = _Deferred("invoke")


def connect(endpoint: Endpoint, *, trust_new_hosts: bool = False, known_hosts: str | None = None) -> Transport:
    """Open a transport to a device; raises ConnectError/HostKeyError when it cannot."""
    if endpoint.transport == "local":
        from edgekit.transport.local import LocalTransport

        return LocalTransport(endpoint)
    from edgekit.transport.ssh import SSHTransport  # paramiko is imported only for ssh devices

    return SSHTransport(endpoint, trust_new_hosts=trust_new_hosts, known_hosts=known_hosts)
