"""edgekit: put ML models on fleets of edge devices, and measure what they do there.

Importing edgekit is cheap: torch, onnxruntime and LiteRT are imported only by the
functions that need them.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgekit.errors import (
        BundleError,
        ConfigError,
        ConnectError,
        DataError,
        EdgekitError,
        GateError,
        Interrupted,
        HostKeyError,
        IntegrityError,
        ModelError,
        NotApplicable,
        QuantizeError,
        RemoteCommandError,
        TransportError,
    )

__version__ = "0.1.0"

__all__ = [
    "__version__",
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


def __getattr__(name: str):
    # The error types load on first use, so that `python -m edgekit.device.evaluate`
    # (the device's code, run on the host) imports nothing else of the host package.
    if name in __all__:
        import edgekit.errors

        return getattr(edgekit.errors, name)
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
