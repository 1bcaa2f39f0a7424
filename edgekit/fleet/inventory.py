"""Inventories (`fleet/*.toml`): defaults plus devices, validated on load.

Any device key may be given under [defaults]. A device's transport is `ssh` (the
default) or `local` (a directory on this machine, for simulation and tests). A relative
`root` of a local device is taken relative to the inventory file. Every device's `target`
must name a profile (in targets/, $EDGEKIT_TARGETS_DIR or the folders given): a typo would
otherwise leave the device out of every rollout without a word.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgekit._toml import pydantic_error_line, read_toml
from edgekit.errors import ConfigError
from edgekit.transport.base import Endpoint

__all__ = ["Device", "Inventory", "load_inventory"]


class Device(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str = Field(min_length=1)
    transport: Literal["ssh", "local"] = "ssh"
    host: Optional[str] = None
    port: Optional[int] = Field(default=None, gt=0, lt=65536)
    user: Optional[str] = None
    identity_file: Optional[str] = None
    proxy_jump: Optional[str] = None
    root: str = "/opt/edgekit"
    python: Optional[str] = None
    target: str
    tags: list[str] = []
    connect_timeout: float = Field(default=10.0, gt=0)
    # Ansible's own host variables the Ansible engine passes on (become, ssh arguments, ...):
    # what an Ansible inventory says of a host beyond the fields above; edgekit's own
    # transport does not read them
    ansible_vars: dict[str, Union[bool, int, float, str]] = {}

    @model_validator(mode="after")
    def _ssh_needs_host(self) -> "Device":
        if self.transport == "ssh" and not self.host:
            raise ValueError("an ssh device needs 'host' (an address or a Host alias from ~/.ssh/config)")
        return self

    @field_validator("ansible_vars")
    @classmethod
    def _ansibles_own(cls, given: dict) -> dict:
        from edgekit.fleet.ansible_inventory import EDGEKIT_SETS, FROM_ANSIBLE

        for key in given:
            if key in FROM_ANSIBLE or key in EDGEKIT_SETS:
                field = FROM_ANSIBLE.get(key, "transport" if key == "ansible_connection" else "python")
                raise ValueError(f"{key} is the device's '{field}': give it there")
        return given

    @property
    def interpreter(self) -> str:
        """The device's Python: for local devices, this Python unless told otherwise."""
        if self.python:
            return self.python
        return sys.executable if self.transport == "local" else "python3"

    @property
    def endpoint(self) -> Endpoint:
        """What a transport needs to reach this device (edgekit.transport.connect)."""
        return Endpoint(name=self.name, transport=self.transport, root=self.root, timeout=self.connect_timeout,
                        host=self.host, port=self.port, user=self.user, key=self.identity_file, jump=self.proxy_jump)


@dataclass(frozen=True)
class Inventory:
    path: Path
    devices: tuple[Device, ...]

    def select(self, names: Sequence[str] = (), groups: Sequence[str] = ()) -> list[Device]:
        """Devices named with --device and/or tagged with --group; all when neither is given."""
        known = {d.name for d in self.devices}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(f"--device {unknown[0]}: no such device in {self.path} "
                              f"(devices: {', '.join(sorted(known))})")
        if not names and not groups:
            return list(self.devices)
        chosen = [d for d in self.devices if d.name in names or set(groups) & set(d.tags)]
        if not chosen:
            tags = sorted({t for d in self.devices for t in d.tags})
            raise ConfigError(f"--group {', '.join(groups)}: no device in {self.path} has that tag "
                              f"(tags: {', '.join(tags) or 'none'})")
        return chosen


def load_inventory(path: str | Path, targets_dirs: Sequence[Path] = ()) -> Inventory:
    """The inventory at `path`, validated; `targets_dirs` are the folders of profiles besides
    the shipped ones (--targets-dir), where each device's target must be found. An Ansible
    inventory (INI or YAML) is read too (edgekit.fleet.ansible_inventory)."""
    from edgekit.fleet.ansible_inventory import is_ansible_inventory, read_ansible

    path = Path(path).expanduser()
    if path.is_dir() or path.is_file() and is_ansible_inventory(path):
        entries = read_ansible(path)
        return _validated(path, [_device(source, line, raw, f"{source}:{line}: host '{raw['name']}'")
                                 for source, line, raw in entries], targets_dirs)
    data = read_toml(path)
    unknown = set(data) - {"defaults", "device"}
    if unknown:
        raise ConfigError(f"{path}: field '{sorted(unknown)[0]}': unknown key (expected [defaults] and [[device]])")
    defaults = data.get("defaults", {})
    entries = data.get("device", [])
    if not isinstance(defaults, dict) or not isinstance(entries, list):
        raise ConfigError(f"{path}: [defaults] must be a table and [[device]] an array of tables")
    if not entries:
        raise ConfigError(f"{path}: no [[device]] entries")
    devices = [_device(path, i, {**defaults, **entry}) for i, entry in enumerate(entries)]
    return _validated(path, devices, targets_dirs)


def _validated(path: Path, devices: list[Device], targets_dirs: Sequence[Path]) -> Inventory:
    names = [d.name for d in devices]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{path}: device name '{dupes[0]}' is used twice; names must be unique")
    _check_targets(path, devices, targets_dirs)
    _check_places(path, devices)
    return Inventory(path, tuple(devices))


def _place(device: Device) -> tuple:
    """Where a device keeps its files: two entries with the same place are one device."""
    root = device.root.rstrip("/") or "/"
    if device.transport == "local":
        return ("local", os.path.realpath(os.path.expanduser(root)))
    return ("ssh", (device.host or "").lower(), device.port or 22, os.path.normpath(root))


def _check_places(path: Path, devices: list[Device]) -> None:
    """Two entries that reach the same folder would race on one device and file each other's
    reports under the wrong name."""
    seen: dict[tuple, Device] = {}
    for device in devices:
        other = seen.setdefault(_place(device), device)
        if other is not device:
            where = (f"root {device.root}" if device.transport == "local" else
                     f"host {device.host}, port {device.port or 22}, root {device.root}")
            raise ConfigError(f"{path}: devices '{other.name}' and '{device.name}' are the same device ({where})",
                              hint="give each its own root, or remove one of them")


def _check_targets(path: Path, devices: list[Device], targets_dirs: Sequence[Path]) -> None:
    from edgekit.target_dirs import profile_names

    known = profile_names(tuple(targets_dirs))
    for device in devices:
        if device.target not in known:
            raise ConfigError(f"{path}: device '{device.name}': target '{device.target}' names no profile",
                              hint=_target_hint(device.target, known))


def _target_hint(target: str, known: list[str]) -> str:
    close = difflib.get_close_matches(target, known, n=3, cutoff=0.6)
    elsewhere = "give the folder of its profile with --targets-dir"
    if not close:
        return f"the profiles here are {', '.join(known) or 'none'}; or {elsewhere}"
    others = f" (or {', '.join(close[1:])})" if close[1:] else ""
    return f"did you mean {close[0]}{others}? or {elsewhere}"


def _device(path: Path, index: int, raw: dict, label: Optional[str] = None) -> Device:
    if raw.get("transport") == "local" and "root" in raw:
        root = Path(str(raw["root"])).expanduser()
        raw["root"] = str(root if root.is_absolute() else (path.parent / root).resolve())
    try:
        return Device.model_validate(raw)
    except ValidationError as exc:
        label = label or f"{path}: device[{index}]" + (f" '{raw['name']}'" if isinstance(raw.get("name"), str) else "")
        raise ConfigError(pydantic_error_line(path, exc).replace(f"{path}: ", f"{label}: ", 1)) from exc
