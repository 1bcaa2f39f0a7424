"""Facts about the measuring machine, recorded beside every measurement.

``measured_on`` says where calibrate's timings and memory were measured: this host
(``{"kind": "host", "cpu", "cores", "arch"}``) or, with --measure-on DEVICE, that device
(edgekit.fleet.measure). A target profile's ``cpu = "host"`` says its devices are this
machine (the simulated fleets); any other profile describes another CPU, so its latency
and memory budgets were judged on the host, not on the device, and ``note`` says so.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

from edgekit.device.report import cpu_info  # a device reads its CPU the same way (calibrate --measure-on)

INTERESTING_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8",
                     "asimd", "asimddp", "fphp", "asimdhp", "i8mm")


def cpu_facts() -> dict:
    """CPU model, the SIMD flags that decide INT8/FP16 speed and accuracy, and the core count."""
    model, flags = cpu_info()
    return {
        "cpu": model,
        "arch": platform.machine(),
        "flags": sorted(f for f in INTERESTING_FLAGS if f in flags),
        "vnni": bool({"avx512_vnni", "avx_vnni", "asimddp"} & flags),
        "cores": os.cpu_count(),
    }


_ARCHES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}  # what platforms call the profile arches
HOST_CPU = "host"  # a profile's cpu for devices that are this machine


def host_arch() -> str:
    return arch_name(platform.machine())


def arch_name(machine: str) -> str:
    """A platform's name for its architecture ("arm64", "AMD64") as profiles name it."""
    return _ARCHES.get(machine.lower(), machine.lower())


def measured_on_host(profile) -> dict:
    """Where calibrate measured (this host) and, when the target is another CPU, a note that says so."""
    facts = cpu_facts()
    place = {"kind": "host", "cpu": facts["cpu"], "cores": facts["cores"], "arch": host_arch()}
    return dict(place, matches_target=_matches(profile, place["arch"]), note=_note(profile, place["arch"]))


def _matches(profile, arch: str) -> bool:
    return profile.arch == arch and profile.cpu == HOST_CPU


def _note(profile, arch: str):
    if _matches(profile, arch):
        return None
    device = ", ".join(x for x in (profile.arch, profile.cpu) if x)
    return f"latency and memory budgets judged on this host, not on {profile.name} ({device})"


def versions(*packages: str) -> dict:
    from edgekit import __version__

    found = {"edgekit": __version__, "python": platform.python_version()}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found
