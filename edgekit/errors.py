"""edgekit's errors.

    EdgekitError                 exit 1: the work failed
    ├── ConfigError              exit 2: a profile, inventory, flag or option is wrong
    ├── ModelError               exit 2: a model is missing, corrupt or cannot be converted
    ├── DataError                exit 2: a data set is missing, malformed or does not fit the model
    ├── QuantizeError            exit 1: a quantization recipe failed on a valid model
    │   └── NotApplicable        exit 2: the recipe quantizes nothing of this model
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

An error says what to do next: ``X(problem, hint="what to do")`` reads as one line,
"problem; what to do", and keeps the hint apart for ``--json`` (``{"error", "exit_code",
"hint"}``). Without one, the class's ``HINT`` is the hint (None when there is nothing
general to say).
"""

from __future__ import annotations

__all__ = [
    "EdgekitError",
    "ConfigError",
    "ModelError",
    "DataError",
    "QuantizeError",
    "NotApplicable",
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
    HINT: str | None = None

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(f"{message}; {hint}" if hint else message)
        self.hint = hint or self.HINT


class ConfigError(EdgekitError):
    exit_code = 2
    HINT = "fix the file, field or flag it names (edgekit COMMAND --help lists the flags)"


class ModelError(EdgekitError):
    exit_code = 2
    HINT = "give a model that loads: .onnx, .pt2, pkg.module:factory (or .tflite where a TFLite model is taken)"


class DataError(EdgekitError):
    exit_code = 2
    HINT = "fix the data set it names; calibration/README.md describes the format"


class QuantizeError(EdgekitError):
    exit_code = 1
    HINT = "try another recipe (--precision, --method) or keep the failing nodes in float (--exclude)"


class NotApplicable(QuantizeError):
    """The recipe has nothing to quantize in this model (calibrate records it as not applicable)."""

    exit_code = 2
    HINT = "choose a recipe the model has weights for (int8-token and the *-block recipes take MatMul weights)"


class BundleError(EdgekitError):
    exit_code = 2
    HINT = "make the bundle again with `edgekit package`"


class IntegrityError(BundleError):
    HINT = "the bundle changed after it was made: make it again, or copy an intact one"


class TransportError(EdgekitError):
    exit_code = 1
    HINT = "check the device with `edgekit fleet status --inventory F`"

    def __init__(self, message: str, *, device: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.device = device


class ConnectError(TransportError):
    pass


class HostKeyError(TransportError):
    HINT = ("a new device: pass --trust-new-hosts once; a changed key: check the device, then remove "
            "the old line from the known_hosts file it names")


class RemoteCommandError(TransportError):
    def __init__(self, message: str, *, device: str | None = None, exit_code: int | None = None,
                 stdout: str = "", stderr: str = "", hint: str | None = None):
        super().__init__(message, device=device, hint=hint)
        self.remote_exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr


class GateError(EdgekitError):
    exit_code = 3
    HINT = "the record or report names each broken budget: loosen the target's budgets or try other recipes"

    def __init__(self, message: str, *, details: object = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.details = details


class Interrupted(EdgekitError):
    """The user stopped the work (Ctrl-C, SIGTERM): no new step was started after it."""

    exit_code = 130
