"""A fleet described once, for edgekit and for Ansible: inventories both ways.

edgekit -> Ansible: `as_ansible` turns devices into an Ansible YAML inventory (tags become
groups, named as Ansible allows: site-a becomes site_a; root, python and target become edgekit_* host variables, the connection
ansible_* ones), which `edgekit fleet export-inventory` writes and the Ansible engine runs
with.

Ansible -> edgekit: `read_ansible` reads an INI or YAML inventory into the raw device
entries that edgekit.fleet.inventory validates like those of a TOML one (groups become
tags), each with the line it was given on, for errors that name it, with what Ansible reads
beside it (host ranges, group_vars/ and host_vars/: edgekit.fleet.ansible_sources). Dynamic
inventory plugins are not run; variables edgekit has no use for are left to Ansible.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any, Iterable

from edgekit.errors import ConfigError
from edgekit.fleet.ansible_sources import (Unresolved, expand_hosts, inventory_files, lenient_loader, plain_value,
                                          read_vars_file, vars_files)

__all__ = ["host_vars", "group_name", "as_ansible", "dump_yaml", "read_ansible", "is_ansible_inventory"]

ANSIBLE_SUFFIXES = (".ini", ".yml", ".yaml", ".cfg", ".hosts")
# Ansible host variable -> edgekit device field, when both say the same thing. Where Ansible
# has two names for one setting, the later one wins when both are set, as in Ansible's ssh
# connection (its options' variables are looked up in order, the last found kept).
FROM_ANSIBLE = {"ansible_host": "host", "ansible_ssh_host": "host", "ansible_port": "port",
                "ansible_ssh_port": "port", "ansible_user": "user", "ansible_ssh_user": "user",
                "ansible_private_key_file": "identity_file", "ansible_ssh_private_key_file": "identity_file",
                "edgekit_root": "root", "edgekit_python": "python", "edgekit_target": "target",
                "edgekit_connect_timeout": "connect_timeout"}
USED = ("ansible_connection", "ansible_python_interpreter", "ansible_ssh_common_args")  # read besides FROM_ANSIBLE
# what the Ansible engine sets itself; every other ansible_* variable of a host is passed on
# (Device.ansible_vars) but a vaulted one (edgekit gives Ansible no vault password)
EDGEKIT_SETS = ("ansible_connection", "ansible_python_interpreter")
# Ansible's interpreter discovery: edgekit's own default (python3 on the device) instead
INTERPRETER_DISCOVERY = ("auto", "auto_silent", "auto_legacy", "auto_legacy_silent")
CONNECTIONS = {"local": "local", "ssh": "ssh", "smart": "ssh", "paramiko": "ssh"}
PLAYBOOK_PYTHON = "{{ ansible_playbook_python }}"  # a local device runs on the controller's Python
JUMP = re.compile(r"(?:-o\s*ProxyJump[=\s]|-J\s*)(\S+)")  # a jump host in ansible_ssh_common_args


# edgekit.fleet.inventory reads Ansible inventories with this module: the devices written
# here are its Device records, taken as they come, so the import runs one way.
def host_vars(d) -> dict[str, Any]:
    """The host variables of one device (an edgekit.fleet.inventory.Device): how Ansible
    reaches it, and what edgekit's role needs."""
    out: dict[str, Any] = {"ansible_connection": d.transport}
    if d.transport == "ssh":
        out.update({k: v for k, v in (("ansible_host", d.host), ("ansible_port", d.port), ("ansible_user", d.user),
                                      ("ansible_ssh_private_key_file", d.identity_file)) if v is not None})
    out.update(d.ansible_vars)  # the inventory's own ansible_* settings (become, ssh arguments, ...)
    if d.transport == "ssh" and d.proxy_jump:
        rest = d.ansible_vars.get("ansible_ssh_common_args", "")
        out["ansible_ssh_common_args"] = f"-o ProxyJump={d.proxy_jump} {rest}".strip()
    python = d.python or (PLAYBOOK_PYTHON if d.transport == "local" else None)
    if python:  # the modules and the runner run on the same Python
        out.update(ansible_python_interpreter=python, edgekit_python=python)
    out.update(edgekit_root=d.root, edgekit_target=d.target)
    if d.connect_timeout != type(d).model_fields["connect_timeout"].default:
        out["edgekit_connect_timeout"] = d.connect_timeout
    return out


def group_name(tag: str) -> str:
    """A tag as an Ansible group: letters, digits and _, not starting with a digit (Ansible's rule)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", tag)
    return f"_{name}" if name[:1].isdigit() else name


def as_ansible(devices: Iterable) -> dict:
    """{"all": {"hosts": {name: vars}, "children": {group: {"hosts": {name: None}}}}}: a group
    for each tag (group_name)."""
    devices = list(devices)
    groups: dict[str, dict] = {}
    for d in devices:
        for tag in d.tags:
            groups.setdefault(group_name(tag), {"hosts": {}})["hosts"][d.name] = None
    out: dict = {"all": {"hosts": {d.name: host_vars(d) for d in devices}}}
    if groups:
        out["all"]["children"] = groups
    return out


def dump_yaml(data: Any, indent: int = 0) -> str:
    """YAML for nested dicts of scalars, scalars written as JSON (which YAML reads as they are)."""
    lines = []
    for key, value in data.items():
        pad = "  " * indent + json.dumps(str(key)) + ":"
        if isinstance(value, dict) and value:
            lines.append(pad + "\n" + dump_yaml(value, indent + 1))
        else:
            lines.append(pad + ("" if value is None or value == {} else " " + json.dumps(value)))
    return "\n".join(lines) + ("\n" if indent == 0 else "")


# -- Ansible -> edgekit ---------------------------------------------------------------------


def is_ansible_inventory(path: Path) -> bool:
    """By extension, else by content: a TOML inventory has [[device]] tables."""
    if path.suffix.lower() in ANSIBLE_SUFFIXES:
        return True
    if path.suffix.lower() == ".toml":
        return False
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    return "[[device]]" not in text and "[defaults]" not in text


class _Groups:
    """Hosts, groups and variables as an inventory declares them (a file, or the files of a
    folder), with the file and line of each host."""

    def __init__(self, path: Path):
        self.path = path                                   # the inventory as given
        self.base = path if path.is_dir() else path.parent  # where group_vars/ and host_vars/ are
        self.source = path                                 # the file being read
        self.hosts: dict[str, tuple[Path, int, dict]] = {}  # host -> (file, line, its own vars)
        self.members: dict[str, set[str]] = {}             # group -> hosts
        self.children: dict[str, set[str]] = {}            # group -> child groups
        self.vars: dict[str, dict] = {}                    # group -> vars

    def add_host(self, group: str, name: str, line: int, variables: dict) -> None:
        seen = self.hosts.setdefault(name, (self.source, line, {}))
        seen[2].update(variables)
        self.members.setdefault(group, set()).add(name)

    def groups_of(self, host: str) -> list[str]:
        """Every group the host is in, parents before children."""
        direct = {g for g, hosts in self.members.items() if host in hosts}
        order: list[str] = []

        def climb(group: str, trail: tuple = ()) -> None:
            if group in trail:
                raise ConfigError(f"{self.path}: group '{group}' is its own child")
            for parent, kids in self.children.items():
                if group in kids:
                    climb(parent, trail + (group,))
            if group not in order:
                order.append(group)
        for group in sorted(direct):
            climb(group)
        return order

    def entries(self) -> list[tuple[Path, int, dict]]:
        """(line, raw device entry) for every host, its variables merged as Ansible merges them
        (edgekit.fleet.ansible_sources): the inventory's group vars, group_vars/, its own, host_vars/;
        with the file and line that named the host."""
        out = []
        files = {}  # group -> its group_vars, read once
        for name, (source, line, own) in self.hosts.items():
            groups = ["all"] + [g for g in self.groups_of(name) if g != "all"]
            merged: dict = {}
            for group in groups:
                merged.update(self.vars.get(group, {}))
            for group in groups:
                if group not in files:
                    files[group] = self._file_vars("group", group)
                merged.update(files[group])
            merged.update(own)
            merged.update(self._file_vars("host", name))
            tags = sorted(g for g in groups if g not in ("all", "ungrouped"))
            out.append((source, line, _entry(source, line, name, merged, tags)))
        if not out:
            raise ConfigError(f"{self.path}: no hosts in this Ansible inventory")
        return out

    def _file_vars(self, kind: str, name: str) -> dict:
        merged: dict = {}
        for path in vars_files(self.base, kind, name):
            merged.update(read_vars_file(path))
        return merged


def _entry(path: Path, line: int, name: str, variables: dict, tags: list[str]) -> dict:
    """An edgekit device entry from a host's Ansible variables."""
    raw: dict[str, Any] = {"name": name, "tags": tags}
    where = f"{path}:{line}: host '{name}'"
    variables = {k: plain_value(v, where, k) if (k in FROM_ANSIBLE or k in USED) and v != PLAYBOOK_PYTHON else v
                 for k, v in variables.items()}
    connection = str(variables.get("ansible_connection", "ssh"))
    if connection not in CONNECTIONS:
        raise ConfigError(f"{path}:{line}: host '{name}': ansible_connection={connection}: edgekit reaches devices "
                          "over ssh or local")
    raw["transport"] = CONNECTIONS[connection]
    for key, field in FROM_ANSIBLE.items():
        if key in variables:
            raw[field] = _typed(path, line, name, key, variables[key], field)
    interpreter = str(variables.get("ansible_python_interpreter", "auto"))
    if "python" not in raw and interpreter not in INTERPRETER_DISCOVERY:
        raw["python"] = interpreter
    common = str(variables.get("ansible_ssh_common_args", ""))
    jump = JUMP.search(common)
    if jump:
        raw["proxy_jump"] = jump.group(1)
    rest = JUMP.sub("", common).strip()  # the other ssh arguments ride along (below), the jump is a field
    variables = {k: v for k, v in variables.items() if k != "ansible_ssh_common_args"}
    if rest:
        variables["ansible_ssh_common_args"] = rest
    if raw.get("python") == PLAYBOOK_PYTHON:
        del raw["python"]  # this Python, as for a local device of a TOML inventory
    passed = {k: v for k, v in variables.items() if k.startswith("ansible_") and k not in FROM_ANSIBLE
              and k not in EDGEKIT_SETS and not isinstance(v, Unresolved) and isinstance(v, (bool, int, float, str))}
    if passed:
        raw["ansible_vars"] = passed
    if raw["transport"] == "ssh":
        raw.setdefault("host", name)  # as Ansible does: the inventory name is the address
    if "target" not in raw:
        raise ConfigError(f"{path}:{line}: host '{name}': no edgekit_target (the target profile it runs, "
                          "e.g. edgekit_target=host-cpu, on the host or its group's vars)")
    return raw


def _typed(path: Path, line: int, name: str, key: str, value: Any, field: str) -> Any:
    if field == "port" or field == "connect_timeout":
        try:
            number = int(value) if field == "port" else float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}:{line}: host '{name}': {key}={value}: not a number") from None
        return number
    return str(value)


def read_ansible(path: Path) -> list[tuple[Path, int, dict]]:
    """(file, line, raw device entry) of every host of an Ansible INI or YAML inventory, or of
    an inventory folder: its files in name order, as Ansible reads one (inventory_files)."""
    groups = _Groups(path)
    for source in inventory_files(path) if path.is_dir() else [path]:
        try:
            text = source.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: cannot read the inventory: {exc}") from exc
        groups.source = source
        if source.suffix.lower() in (".yml", ".yaml") or text.lstrip().startswith(("all:", "---")):
            _read_yaml(source, text, groups)
        else:
            _read_ini(source, text, groups)
    return groups.entries()


def _read_ini(path: Path, text: str, groups: _Groups) -> None:
    section, kind = "ungrouped", "hosts"
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise ConfigError(f"{path}:{number}: '{line}': a section is [group], [group:vars] or [group:children]")
            section, colon, kind = line[1:-1].partition(":")
            if colon and kind not in ("vars", "children"):
                raise ConfigError(f"{path}:{number}: [{line[1:-1]}]: unknown section kind '{kind}' "
                                  "(vars or children)")
            kind = kind or "hosts"
            groups.members.setdefault(section, set())
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise ConfigError(f"{path}:{number}: {exc}: check the quotes") from None
        if kind == "children":
            groups.children.setdefault(section, set()).add(words[0])
        elif kind == "vars":
            key, eq, value = line.partition("=")
            if not eq or not key.strip():
                raise ConfigError(f"{path}:{number}: '{line}': a [{section}:vars] line is key=value")
            groups.vars.setdefault(section, {})[key.strip()] = _ini_value(value.strip())
        else:
            variables = _ini_vars(path, number, words[0], words[1:])
            for host in expand_hosts(words[0], f"{path}:{number}"):
                groups.add_host(section, host, number, dict(variables))


def _ini_vars(path: Path, number: int, host: str, words: list[str]) -> dict:
    out = {}
    for word in words:
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise ConfigError(f"{path}:{number}: host '{host}': '{word}' is not key=value")
        out[key] = value
    return out


def _ini_value(text: str) -> str:
    try:
        words = shlex.split(text)
    except ValueError:
        return text
    return words[0] if len(words) == 1 else text


def _read_yaml(path: Path, text: str, groups: _Groups) -> None:
    try:
        import yaml
    except ImportError:
        raise ConfigError(f"{path}: reading a YAML inventory needs PyYAML: pip install 'edgekit[ansible]'") from None
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if root is None:
        raise ConfigError(f"{path}: empty inventory")
    for name, node, _ in _mapping(path, root, "the top level"):
        _yaml_group(path, name, node, groups)


def _mapping(path: Path, node, what: str) -> list[tuple[str, Any]]:
    """(key, value node, line of the key) of a YAML mapping; a null value is an empty mapping."""
    import yaml

    if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
        return []
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path}:{node.start_mark.line + 1}: {what}: expected a mapping")
    return [(str(k.value), v, k.start_mark.line + 1) for k, v in node.value]


def _plain(node) -> Any:
    """A composed YAML node as Python values (Ansible's own tags kept: ansible_sources)."""
    return lenient_loader()("").construct_document(node)


def _yaml_group(path: Path, group: str, node, groups: _Groups) -> None:
    groups.members.setdefault(group, set())
    for key, value, line in _mapping(path, node, f"group '{group}'"):
        if key == "hosts":
            for host, hvars, at in _mapping(path, value, f"group '{group}': hosts"):
                variables = _plain(hvars) or {}
                if not isinstance(variables, dict):
                    raise ConfigError(f"{path}:{at}: host '{host}': expected its variables as a mapping")
                for name in expand_hosts(host, f"{path}:{at}"):
                    groups.add_host(group, name, at, dict(variables))
        elif key == "vars":
            groups.vars.setdefault(group, {}).update(_plain(value) or {})
        elif key == "children":
            for child, cnode, _ in _mapping(path, value, f"group '{group}': children"):
                groups.children.setdefault(group, set()).add(child)
                _yaml_group(path, child, cnode, groups)
        else:
            raise ConfigError(f"{path}:{line}: group '{group}': '{key}': a group holds hosts, vars and children")
