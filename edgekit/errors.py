"""edgekit's errors.

    EdgekitError                 exit 1: the work failed
    ├── ConfigError              exit 2: a profile, inventory, flag or option is wrong
    ├── ModelError               exit 2: a model is missing, corrupt or cannot be converted
    ├── DataError                exit 2: a data set is missing, malformed or does not fit the model
    ├── QuantizeError            exit 1: a quantization recipe failed on a valid model
    ├── BundleError              exit 2: a bundle is malformed
    │   └── IntegrityError       exit 2: a hash, size or signature does not match
    ├── TransportError           exit 1: talking to a device failed
    │   ├── ConnectError         the device is unreachable or refused us
    │   ├── HostKeyError         the host key is unknown or changed
    │   └── RemoteCommandError   a command on the device failed
    ├── GateError                exit 3: a budget gate was not met
    └── Interrupted              exit 130: Ctrl-C or SIGTERM stopped the work

Third-party errors (paramiko, socket, OS, onnxruntime) are translated into these in
one place each, with ``raise X(msg) from exc``; the CLI catches ``EdgekitError`` once
and prints its message as one line.
"""

from __future__ import annotations

__all__ = [
    "EdgekitError",
    "ConfigError",
    "ModelError",
    "DataError",
    "QuantizeError",
    "BundleError",
    "IntegrityError",
    "TransportError",
    "ConnectError",
    "HostKeyError",
    "RemoteCommandError",
    "GateError",
    "Interrupted",
]


class EdgekitError(Exception):
    """Base of every error edgekit raises on purpose."""

    exit_code = 1


class ConfigError(EdgekitError):
    exit_code = 2


class ModelError(EdgekitError):
    exit_code = 2


class DataError(EdgekitError):
    exit_code = 2


class QuantizeError(EdgekitError):
    exit_code = 1


class BundleError(EdgekitError):
    exit_code = 2


class IntegrityError(BundleError):
    pass


class TransportError(EdgekitError):
    exit_code = 1

    def __init__(self, message: str, *, device: str | None = None):
        super().__init__(message)
        self.device = device


class ConnectError(TransportError):
    pass


class HostKeyError(TransportError):
    pass


class RemoteCommandError(TransportError):
    def __init__(self, message: str, *, device: str | None = None, exit_code: int | None = None,
                 stdout: str = "", stderr: str = ""):
        super().__init__(message, device=device)
        self.remote_exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr


class GateError(EdgekitError):
    exit_code = 3

    def __init__(self, message: str, *, details: object = None):
        super().__init__(message)
        self.details = details


class Interrupted(EdgekitError):
    """The user stopped the work (Ctrl-C, SIGTERM): no new step was started after it."""

    exit_code = 130
