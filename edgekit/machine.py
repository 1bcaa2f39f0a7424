"""Facts about the measuring machine, recorded beside every measurement."""

from __future__ import annotations

import os
import platform
from importlib import metadata

INTERESTING_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8",
                     "asimd", "asimddp", "fphp", "asimdhp", "i8mm")


def cpu_facts() -> dict:
    """CPU model, the SIMD flags that decide INT8/FP16 speed and accuracy, and the core count."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware") and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {
        "cpu": model,
        "arch": platform.machine(),
        "flags": sorted(f for f in INTERESTING_FLAGS if f in flags),
        "vnni": bool({"avx512_vnni", "avx_vnni", "asimddp"} & flags),
        "cores": os.cpu_count(),
    }


def versions(*packages: str) -> dict:
    from edgekit import __version__

    found = {"edgekit": __version__, "python": platform.python_version()}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found
