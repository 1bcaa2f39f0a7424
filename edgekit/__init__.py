"""edgekit: put ML models on fleets of edge devices, and measure what they do there.

Importing edgekit is cheap: torch, onnxruntime and LiteRT are imported only by the
functions that need them.
"""

from edgekit.errors import (
    BundleError,
    ConfigError,
    ConnectError,
    DataError,
    EdgekitError,
    GateError,
    HostKeyError,
    IntegrityError,
    ModelError,
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
    "BundleError",
    "IntegrityError",
    "TransportError",
    "ConnectError",
    "HostKeyError",
    "RemoteCommandError",
    "GateError",
]
