"""`edgekit demo`: the whole chain on a simulated fleet, on local folders (with only the core
install importable, at 80 columns) and over real sshd servers; one run of each is shared by
the tests of this module. Every command it shows must parse, and the ones it suggests at the
end must work when pasted, after the demo has ended."""

import re
import shlex
import subprocess
import sys

import pytest

from helpers.cli import run_edgekit
from helpers.coreonly import core_only_env
from helpers.sshd import SSHD


LOCAL_DEVICES = [f"edge-0{i}" for i in range(1, 5)]
SSH_DEVICES = ["edge-01", "edge-02", "edge-03"]
STEP = re.compile(r"^(\d+)\. (.*?) ─+$", re.M)


@pytest.fixture(scope="module")
def local_demo(tmp_path_factory):
    base = tmp_path_factory.mktemp("demo")
    env = {**core_only_env(base / "site"), "COLUMNS": "80"}
    workdir = base / "work"
    return run_edgekit("demo", "--workdir", workdir, "--devices", "4", env=env), workdir


@pytest.fixture(scope="module")
def ssh_demo(tmp_path_factory):
    if not SSHD.exists():
        pytest.skip("openssh-server is not installed (make sshd)")
    workdir = tmp_path_factory.mktemp("demo-ssh") / "work"
    return run_edgekit("demo", "--ssh", "--workdir", workdir, "--devices", "3", env={"COLUMNS": "80"}), workdir


def _check_demo(result, workdir, devices):
    assert result.code == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    html = workdir / "fleet.html"
    assert html.is_file() and html.name in out
    page = html.read_text()
    for name in devices:
        assert name in out and name in page
    assert "halted" in out and "drop_vs_fp32" in out + result.stderr  # the careless variant was stopped
    assert "stopped as it should be" in out
    for target in ("host-cpu", "x86-gateway"):
        assert (workdir / "calibrated" / target / "calibration.json").is_file()
        assert (workdir / "dist" / f"digits-1.0.0-{target}.edgekit").is_file()
    report = run_edgekit("report", "--store", workdir / "store.db", "--json")
    assert report.code == 0, report.stderr
    running = {r["device"]: r["version"] for r in report.json()["rows"] if r["current"]}
    assert running == {name: "1.0.0" for name in devices}  # the careless 1.1.0 runs nowhere


def _suggestions(out: str) -> list[str]:
    """The commands after the closing rule, each checked to be one whole line."""
    closing = out[out.rindex("done in "):].splitlines()[1:]
    commands = []
    for line in closing:
        if line.startswith("  edgekit "):
            commands.append(line.strip())
        elif not line.startswith("  /"):  # the report's path
            assert line.endswith(":"), f"not a heading, a path or a whole command: {line!r}"
    return commands


def test_demo_on_local_folders_with_the_core_install(local_demo):
    result, workdir = local_demo
    _check_demo(result, workdir, LOCAL_DEVICES)
    assert "pre-processing" not in result.stderr  # ORT's quantization pre-processing ran (sympy is core)


def test_the_core_install_python_lacks_the_extras(tmp_path):
    env = core_only_env(tmp_path)
    code = "import {}"
    run = lambda module: subprocess.run([sys.executable, "-c", code.format(module)], env={**env, "PATH": ""},  # noqa: E731
                                        capture_output=True, text=True)
    for extra in ("pytest", "sklearn", "torch"):
        assert f"No module named '{extra}'" in run(extra).stderr, extra
    for core in ("numpy", "onnxruntime", "sympy", "matplotlib", "paramiko", "edgekit.cli.main"):
        assert run(core).returncode == 0, (core, run(core).stderr)


def test_demo_steps_are_numbered_once_each(local_demo):
    result, _ = local_demo
    numbers = [int(n) for n, _ in STEP.findall(result.stdout)]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 8, numbers
    assert all(not title.endswith("…") for _, title in STEP.findall(result.stdout))  # titles fit 80 columns


def test_every_command_the_steps_show_parses(local_demo):
    """Each `$ edgekit ...` line names a real command with options it takes and files that exist."""
    import typer.main

    from edgekit.cli.main import app

    result, _ = local_demo
    cli = typer.main.get_command(app)
    shown = [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("$ ")]
    assert sum(args[0] == "edgekit" for args in shown) >= 10
    for args in shown:
        if args[0] != "edgekit":
            continue
        command, words = cli, args[1:]
        while hasattr(command, "commands"):  # a group: the next word names its command
            command = command.commands[words.pop(0)]
        command.make_context(command.name, words)  # raises on an unknown option or a missing file


def test_closing_suggestions_work_when_pasted(local_demo):
    result, workdir = local_demo
    commands = _suggestions(result.stdout)
    assert any(c.startswith("edgekit fleet status") for c in commands), commands
    assert any("--ssh" in c for c in commands)
    for line in commands:
        args = shlex.split(line)[1:]
        if args[0] == "demo":  # would run a second demo: its folder is new, so it will not be refused
            assert not (workdir.parent / args[args.index("--workdir") + 1]).exists()
            continue
        pasted = run_edgekit(*args)
        assert pasted.code == 0, (line, pasted.stdout[-2000:], pasted.stderr[-2000:])
    assert (workdir / "calibration.html").is_file()


def test_demo_over_real_sshd(ssh_demo):
    result, workdir = ssh_demo
    _check_demo(result, workdir, SSH_DEVICES)
    assert "127.0.0.1:" in result.stdout
    assert "export EDGEKIT_KNOWN_HOSTS=" in result.stdout  # how the shown commands reach its servers


def test_ssh_demo_suggests_nothing_that_needs_its_stopped_servers(ssh_demo):
    result, _ = ssh_demo
    commands = _suggestions(result.stdout)
    assert commands and not [c for c in commands if re.search(r"--inventory|rollout|rollback|collect|push", c)]
    for line in commands:
        pasted = run_edgekit(*shlex.split(line)[1:])
        assert pasted.code == 0, (line, pasted.stderr[-2000:])


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    result = run_edgekit("demo", "--workdir", tmp_path)
    assert result.code == 2 and "was not made by edgekit demo" in result.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
