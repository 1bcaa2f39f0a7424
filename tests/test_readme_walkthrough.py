"""The README's way from the simulated fleet to real devices, run as written against a
real sshd on 127.0.0.1: only the values a reader must change (address, port, device
folder, the device's Python) are replaced, and HOME is a fresh folder."""

import os
import re
import shlex
import shutil
import subprocess
import sys

from helpers.paths import REPO


START, END = "<!-- walkthrough:ssh", "<!-- /walkthrough:ssh -->"


def _section() -> tuple[str, list[str]]:
    text = (REPO / "README.md").read_text()
    section = text[text.index(START):text.index(END)]
    inventory = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    commands = re.search(r"```\n(edgekit .*?)```", section, re.S).group(1)
    return inventory, [line for line in commands.splitlines() if line.strip()]


def test_readme_walkthrough_rolls_out_to_an_ssh_device(tmp_path, sshd_fleet):  # noqa: F811
    fleet = sshd_fleet(1, names=["cam-01"])
    server = fleet.servers[0]
    home, work = tmp_path / "home", tmp_path / "work"
    (home / ".ssh").mkdir(parents=True)
    shutil.copy(fleet.client_key, home / ".ssh" / "id_ed25519")
    (home / ".ssh" / "id_ed25519").chmod(0o600)
    work.mkdir()
    for folder in ("examples", "calibration"):
        (work / folder).symlink_to(REPO / folder)

    inventory, commands = _section()
    for old, new in {'"10.0.0.11"': '"127.0.0.1"', "port = 22": f"port = {server.port}",
                     '"/opt/edgekit"': f'"{server.root}"', 'python = "python3"': f'python = "{sys.executable}"'}.items():
        assert old in inventory, f"the README's inventory no longer has {old}"
        inventory = inventory.replace(old, new)
    (work / "fleet").mkdir()
    (work / "fleet" / "mine.toml").write_text(inventory)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEKIT_", "XDG_"))}
    env.update(HOME=str(home), COLUMNS="160")
    for line in commands:
        argv = [str(home) + a[1:] if a.startswith("~/") else a for a in shlex.split(line)]  # as the shell would
        assert argv[0] == "edgekit", line
        proc = subprocess.run([sys.executable, "-m", "edgekit.cli.main", *argv[1:]], cwd=work, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"

    assert "cam-01" in (work / "fleet.html").read_text()
    assert (home / ".config" / "edgekit" / "known_hosts").read_text().count(str(server.port)) == 1
    assert (server.root / "current" / "digits").resolve().name == "1.0.0"
    assert list((server.root / "trust").glob("*.pub"))


def test_readme_bundles_and_devices_block_runs_as_written(tmp_path):
    # its rollback came straight after the first push: every device failed ('no previous version')
    text = (REPO / "README.md").read_text()
    block = text[text.index("<!-- walkthrough:local"):text.index("<!-- /walkthrough:local -->")]
    commands = re.search(r"```\n(edgekit .*?)```", block, re.S).group(1).replace("\\\n", " ")
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    (work / "fleet").mkdir(parents=True)
    for folder in ("examples", "calibration"):
        (work / folder).symlink_to(REPO / folder)
    shutil.copy(REPO / "fleet" / "local.toml", work / "fleet" / "local.toml")  # its devices land in work/.sim
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEKIT_", "XDG_"))}
    env.update(HOME=str(home), COLUMNS="160", EDGEKIT_STORE=str(tmp_path / "store.db"))
    for line in filter(str.strip, commands.splitlines()):
        argv = [str(home) + a[1:] if a.startswith("~/") else a for a in shlex.split(line, comments=True)]
        assert argv[0] == "edgekit", line
        proc = subprocess.run([sys.executable, "-m", "edgekit.cli.main", *argv[1:]], cwd=work, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert all((work / ".sim" / "local" / d / "current" / "digits").resolve().name == "1.0.0"
               for d in ("sim-01", "sim-02", "sim-03"))
