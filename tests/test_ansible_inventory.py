"""A fleet described once: an Ansible INI or YAML inventory (groups as tags) wherever edgekit
takes --inventory, and edgekit's TOML inventory exported to one that Ansible reads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli import assert_clean_error, run_edgekit

ANSIBLE_INVENTORY = Path(sys.executable).parent / "ansible-inventory"


def _ini(fleet, path: Path) -> Path:
    """The sshd fleet as an Ansible INI inventory: the first device in [canary], all in [cameras]."""
    lines = ["# the lab's cameras", "[canary]"]
    s0 = fleet.servers[0]
    lines.append(f"{s0.name} ansible_host=127.0.0.1 ansible_port={s0.port} edgekit_root={s0.root}")
    lines += ["", "[rest]"]
    lines += [f"{s.name} ansible_host=127.0.0.1 ansible_port={s.port} edgekit_root={s.root}" for s in fleet.servers[1:]]
    lines += ["", "[cameras:children]", "canary", "rest", "", "[cameras:vars]", "edgekit_target=host-cpu",
              f"edgekit_python={sys.executable}", "", "[all:vars]", "ansible_user=root",
              f"ansible_ssh_private_key_file={fleet.client_key}"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.ssh
def test_an_ansible_ini_inventory_with_groups_works_for_push_rollout_collect_and_status(tmp_path, sshd_fleet, bundles):
    fleet = sshd_fleet(3)
    names = [s.name for s in fleet.servers]
    inventory = _ini(fleet, tmp_path / "hosts.ini")
    store = tmp_path / "store.db"

    pushed = run_edgekit("push", bundles["1.0.0"].path, "-i", inventory, "--group", "canary", "--activate", "--json",
                         env=fleet.env)
    assert pushed.code == 0, pushed.stderr
    assert [d["device"] for d in pushed.json()["devices"]] == names[:1]

    rolled = run_edgekit("rollout", bundles["1.0.1"].path, "-i", inventory, "--group", "cameras", "--canary", "1",
                         "--store", store, "--json", env=fleet.env)
    assert rolled.code == 0, rolled.stderr
    assert sorted(d["device"] for w in rolled.json()["waves"] for d in w["devices"]) == sorted(names)

    collected = run_edgekit("collect", "-i", inventory, "--group", "rest", "--store", store, "--json", env=fleet.env)
    assert collected.code == 0, collected.stderr
    assert sorted(d["device"] for d in collected.json()["devices"]) == sorted(names[1:])

    status = run_edgekit("fleet", "status", "-i", inventory, "--store", store, "--json", env=fleet.env)
    assert status.code == 0, status.stderr
    seen = {d["device"]: d["versions"]["digits"]["current"] for d in status.json()["devices"]}
    assert seen == {n: "1.0.1" for n in names}


def _toml(tmp_path: Path) -> Path:
    (tmp_path / "bench").mkdir()
    path = tmp_path / "fleet.toml"
    path.write_text(
        '[defaults]\ntarget = "host-cpu"\n\n'
        '[[device]]\nname = "cam-1"\nhost = "10.0.0.7"\nport = 2222\nuser = "edge"\n'
        'identity_file = "~/.ssh/fleet_ed25519"\nroot = "/srv/edgekit"\npython = "/usr/bin/python3.9"\n'
        'tags = ["cameras", "site-a"]\n\n'
        '[[device]]\nname = "gw-1"\nhost = "gw.example"\nproxy_jump = "bastion"\ntags = ["site-a"]\n\n'
        '[[device]]\nname = "bench"\ntransport = "local"\nroot = "bench"\nconnect_timeout = 3.0\n')
    return path


def test_the_toml_inventory_exports_to_one_ansible_reads_and_edgekit_reads_back(tmp_path):
    if not ANSIBLE_INVENTORY.exists() and not shutil.which("ansible-inventory"):
        pytest.skip("ansible-inventory is not installed (pip install 'edgekit[ansible]')")
    toml = _toml(tmp_path)
    out = tmp_path / "hosts.yml"
    result = run_edgekit("fleet", "export-inventory", "-i", toml, "-o", out)
    assert result.code == 0, result.stderr

    listed = subprocess.run([str(ANSIBLE_INVENTORY) if ANSIBLE_INVENTORY.exists() else "ansible-inventory",
                             "-i", str(out), "--list"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "[WARNING]" not in listed.stderr, listed.stderr
    seen = json.loads(listed.stdout)
    assert sorted(seen["cameras"]["hosts"]) == ["cam-1"] and sorted(seen["site_a"]["hosts"]) == ["cam-1", "gw-1"]
    assert "tag site-a is group site_a" in result.stderr  # Ansible's group names: letters, digits and _
    cam = seen["_meta"]["hostvars"]["cam-1"]
    assert cam == {"ansible_connection": "ssh", "ansible_host": "10.0.0.7", "ansible_port": 2222,
                   "ansible_user": "edge", "ansible_ssh_private_key_file": "~/.ssh/fleet_ed25519",
                   "ansible_python_interpreter": "/usr/bin/python3.9", "edgekit_python": "/usr/bin/python3.9",
                   "edgekit_root": "/srv/edgekit", "edgekit_target": "host-cpu"}
    assert seen["_meta"]["hostvars"]["gw-1"]["ansible_ssh_common_args"] == "-o ProxyJump=bastion"
    assert seen["_meta"]["hostvars"]["bench"]["ansible_connection"] == "local"

    from edgekit.fleet.inventory import load_inventory

    back = {d.name: d for d in load_inventory(out).devices}  # and back, device for device
    for d in load_inventory(toml).devices:
        assert back[d.name] == d.model_copy(update={"tags": sorted(t.replace("-", "_") for t in d.tags)})


def test_stdout_export_is_the_same_inventory(tmp_path):
    toml = _toml(tmp_path)
    result = run_edgekit("fleet", "export-inventory", "-i", toml, "--group", "cameras")
    assert result.code == 0, result.stderr
    (tmp_path / "cams.yaml").write_text(result.stdout)
    from edgekit.fleet.inventory import load_inventory

    assert [d.name for d in load_inventory(tmp_path / "cams.yaml").devices] == ["cam-1"]


@pytest.mark.parametrize("name, text, says", [
    ("hosts.ini", "[cams]\ncam1 ansible_host=10.0.0.1 edgekit_target=host-cpu\ncam2 ansible_port=x edgekit_target=host-cpu\n",
     "hosts.ini:3: host 'cam2': ansible_port=x: not a number"),
    ("hosts.ini", "[cams]\ncam1 ansible_host=10.0.0.1\n", "hosts.ini:2: host 'cam1': no edgekit_target"),
    ("hosts.ini", "[cams\ncam1\n", "hosts.ini:1: '[cams': a section is [group]"),
    ("hosts.ini", "[cams:hosts]\ncam1\n", "hosts.ini:1: [cams:hosts]: unknown section kind"),
    ("hosts.ini", "[cams]\ncam[01:x] edgekit_target=host-cpu\n", "hosts.ini:2: host range [01:x]: give numbers"),
    ("hosts.ini", "[cams]\ncam[1:3 edgekit_target=host-cpu\n", "hosts.ini:2: host 'cam[1:3': a host range is"),
    ("fleet.toml", "[[device]]\nname = 'cam1'\nhost = 'h'\ntarget = 'host-cpu'\n[device.ansible_vars]\nansible_port = 22\n",
     "device[0] 'cam1': field 'ansible_vars': ansible_port is the device's 'port': give it there"),
    ("hosts.ini", "[cams]\ncam1 edgekit_target=host-cpu ansible_host=\"{{ lookup('env','CAM') }}\"\n",
     "hosts.ini:2: host 'cam1': ansible_host={{ lookup('env','CAM') }}: a Jinja template"),
    ("hosts.yml", "all:\n  hosts:\n    cam1:\n      edgekit_target: host-cpu\n      ansible_host: !vault |\n"
     "        $ANSIBLE_VAULT;1.1;AES256\n        6162\n", "hosts.yml:3: host 'cam1': ansible_host is encrypted"),
    ("hosts.ini", "[cams]\ncam1 edgekit_target=host-cpu ansible_connection=winrm\n",
     "hosts.ini:2: host 'cam1': ansible_connection=winrm"),
    ("hosts.ini", "[cams]\ncam1 edgekit_target=host-cpu ansible_port=70000\n", "hosts.ini:2: host 'cam1': field 'port'"),
    ("hosts.ini", "[cams]\ncam1 edgekit_target=hostcpu\n", "device 'cam1': target 'hostcpu' names no profile"),
    ("hosts.ini", "# nothing yet\n", "hosts.ini: no hosts in this Ansible inventory"),
    ("hosts.yml", "all:\n  hosts:\n    cam1:\n      edgekit_target: host-cpu\n      ansible_port: [1]\n",
     "hosts.yml:3: host 'cam1': ansible_port=[1]: not a number"),
    ("hosts.yml", "all:\n  hosts:\n    cam1: [1, 2]\n", "hosts.yml:3: host 'cam1': expected its variables"),
    ("hosts.yml", "all:\n  hostz:\n    cam1:\n", "hosts.yml:2: group 'all': 'hostz'"),
    ("hosts.yml", "all:\n  hosts:\n    cam1: {\n", "hosts.yml:4: not valid YAML"),
])
def test_a_wrong_ansible_inventory_is_named_by_file_and_line(tmp_path, name, text, says):
    path = tmp_path / name
    path.write_text(text)
    result = run_edgekit("fleet", "status", "-i", path)
    assert_clean_error(result)
    assert says in result.stderr, result.stderr


def _spread_inventory(base: Path) -> Path:
    """An INI inventory as fleets write them: host ranges, nested groups, group_vars/ and
    host_vars/ files and folders beside it, old and new names of one setting, a vaulted
    secret edgekit does not need, interpreter discovery."""
    (base / "group_vars" / "cams").mkdir(parents=True)
    (base / "host_vars").mkdir()
    (base / "hosts.ini").write_text(
        "[cams]\ncam[01:04]\n\n[gws]\ngw-[a:b].lan ansible_ssh_port=2200 ansible_ssh_common_args='-o ProxyJump=bastion -o Compression=no'\n"
        "n[0:20:10] ansible_port=2201\n\n[site_a:children]\ncams\ngws\n\n"
        "[site_a:vars]\nedgekit_root=/srv/inventory\nansible_user=root\n\n"
        "[all:vars]\nansible_python_interpreter=auto_silent\n")
    (base / "group_vars" / "all.yml").write_text(
        "edgekit_target: host-cpu\nedgekit_root: /srv/edge\nansible_become: true\nansible_become_password: !vault |\n"
        "  $ANSIBLE_VAULT;1.1;AES256\n  6162636465\n")
    (base / "group_vars" / "cams" / "10-port.yml").write_text("ansible_port: 2222\n")
    (base / "group_vars" / "cams" / "20-user.yaml").write_text("ansible_user: pi\n")
    (base / "group_vars" / "gws.json").write_text('{"edgekit_root": "/opt/edge"}')
    (base / "host_vars" / "cam02.yml").write_text("ansible_ssh_port: 2223\nedgekit_python: /usr/bin/python3.11\n")
    (base / "host_vars" / "cam03").write_text("ansible_port: 2224\nansible_ssh_host: 10.0.0.3\nansible_host: 10.9.9.9\n")
    return base / "hosts.ini"


@pytest.mark.parametrize("given", ["file", "folder"])
def test_an_inventory_spread_over_ranges_and_vars_files_reads_as_ansible_reads_it(tmp_path, given):
    """Each host, and every setting edgekit takes from it, as `ansible-inventory --list` (the
    real Ansible) resolves them; Ansible's later-wins aliases for one setting too. Given as
    a folder, its files are read in name order (what Ansible skips, skipped)."""
    from edgekit.fleet.inventory import load_inventory

    path = _spread_inventory(tmp_path)
    if given == "folder":
        (tmp_path / "site-b.yml").write_text("all:\n  children:\n    cams:\n      hosts:\n        cam09:\n"
                                            "          ansible_port: 2299\n")
        (tmp_path / "README.md").write_text("# the lab's inventory\n")
        path = tmp_path
    listed = json.loads(subprocess.run([str(ANSIBLE_INVENTORY), "-i", str(path), "--list"], capture_output=True,
                                       text=True, check=True).stdout)
    hostvars = listed["_meta"]["hostvars"]

    def groups_of(host: str) -> set:
        direct = {g for g, v in listed.items() if host in v.get("hosts", [])}
        parents = {g for g, v in listed.items() for child in v.get("children", []) if child in direct}
        while parents - direct:
            direct |= parents
            parents = {g for g, v in listed.items() for child in v.get("children", []) if child in direct}
        return direct - {"all", "ungrouped"}

    def last(v: dict, *names):
        return next((v[n] for n in reversed(names) if n in v), None)

    expected = {h: {"host": last(v, "ansible_host", "ansible_ssh_host") or h,
                    "port": int(last(v, "ansible_port", "ansible_ssh_port") or 22),
                    "user": last(v, "ansible_user", "ansible_ssh_user"), "root": v["edgekit_root"],
                    "target": v["edgekit_target"], "python": v.get("edgekit_python"), "tags": groups_of(h)}
                for h, v in hostvars.items()}
    devices = load_inventory(path).devices
    seen = {d.name: {"host": d.host, "port": d.port or 22, "user": d.user, "root": d.root, "target": d.target,
                     "python": d.python, "tags": set(d.tags)} for d in devices}
    assert [d.name for d in devices][:4] == ["cam01", "cam02", "cam03", "cam04"]
    assert len(seen) == (10 if given == "folder" else 9) and seen == expected
    assert seen["cam02"]["port"] == 2223 and seen["gw-a.lan"]["root"] == "/opt/edge"  # the cases are exercised
    # Ansible's other settings of a host ride along for the Ansible engine, but a vaulted one
    from edgekit.fleet.ansible_inventory import EDGEKIT_SETS, FROM_ANSIBLE, host_vars

    passed = {h: {k for k in v if k.startswith("ansible_") and k not in FROM_ANSIBLE and k not in EDGEKIT_SETS
                  and k != "ansible_become_password"} for h, v in hostvars.items()}
    assert {d.name: set(d.ansible_vars) for d in devices} == passed and passed["cam01"] == {"ansible_become"}
    assert all(host_vars(d)["ansible_become"] is True for d in devices)
    gw = next(d for d in devices if d.name == "gw-a.lan")  # the jump is a field, the rest rides along
    assert gw.proxy_jump == "bastion" and gw.ansible_vars["ansible_ssh_common_args"] == "-o Compression=no"
    assert host_vars(gw)["ansible_ssh_common_args"] == "-o ProxyJump=bastion -o Compression=no"


def test_a_dynamic_inventory_in_an_inventory_folder_is_refused_by_name(tmp_path):
    _spread_inventory(tmp_path)
    script = tmp_path / "cloud.py"
    script.write_text("#!/usr/bin/env python3\nprint('{}')\n")
    script.chmod(0o755)
    result = run_edgekit("fleet", "status", "-i", tmp_path)
    assert_clean_error(result)
    assert f"{script}: an executable file in the inventory folder (a dynamic inventory" in result.stderr


def test_a_toml_inventory_inside_an_inventory_folder_is_named(tmp_path):
    (tmp_path / "fleet.toml").write_text("[[device]]\nname = 'a'\nhost = 'h'\ntarget = 'host-cpu'\n")
    result = run_edgekit("fleet", "status", "-i", tmp_path)
    assert_clean_error(result, "give the TOML file itself with --inventory")
