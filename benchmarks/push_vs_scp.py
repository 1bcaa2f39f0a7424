"""edgekit push beside scp and Ansible: one bundle of about 50 MB to 8 loopback sshd devices.

    python benchmarks/push_vs_scp.py [--devices 8] [--mb 50] [--no-ansible] [--host-login]
                                     [--out bench-results/push_vs_scp.json]

In one run, against the same servers (real OpenSSH, one per device, edgekit.sim.sshd):

    edgekit push          the bundle streamed into the runner's install, which hashes, unpacks
                          and checks it as it arrives (fresh devices, so the runner is
                          installed too, over SFTP), 8 devices in parallel
    scp loop              plain `scp` of the bundle file, one device after the other
    scp parallel          8 `scp` processes at once
    ansible copy          ansible-core's copy module, 8 forks (in its own venv, made if missing)
    edgekit re-push       the same bundle again: the devices have it, nothing is sent (its
                          sha256 is the one the first push remembered, edgekit.hashcache; the
                          runs keep that cache in the work folder, so the first push hashes)
    ansible copy again    the same, for Ansible (it compares checksums)
    edgekit push, new version
                          the next version of the bundle (same size) to the devices, which have
                          the runner now: a fleet's everyday push

Every copy is checked afterwards (sha256 on the device). Ratios are each method's wall time
over edgekit push's (> 1 means slower than edgekit) and over parallel scp's. Each method's CPU seconds (client, sshd
and everything its sessions ran) are given too: on a machine shared with other work they
change less than the wall times. Results go to JSON.

The devices are this machine's user, and every SSH session (scp's, edgekit's) starts that
user's login shell, which reads ~/.bashrc. A device's does next to nothing for a command
(Debian's default ~/.bashrc returns at once in a shell that is not interactive), so the
devices' sessions get a HOME of their own, empty. --host-login gives them this machine's
user's HOME instead (root's ~/.bashrc here runs `pyenv init`: 0.12 CPU s and 0.3 s a session,
which scp pays once a device and a push twice: its command session and SFTP).

edgekit is timed as installed: its modules are byte-compiled first, as `pip install` does
(this machine's sessions set PYTHONDONTWRITEBYTECODE, so a checkout without current
__pycache__ compiled every module again on every run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # this checkout's edgekit; the tests' wide model builder
from _checkout import compile_edgekit  # noqa: E402  (benchmarks/, beside this script)
ANSIBLE_VENV = REPO / "bench-results" / ".venv-ansible"


def build_bundle(work: Path, megabytes: float, version: str = "1.0.0"):
    from helpers.widemodel import wide_digits_model

    from edgekit.datasets import load_dataset
    from edgekit.package import package
    from edgekit.targets import load_profile

    model = wide_digits_model(work / "wide.onnx", megabytes)
    return package(model, load_profile("host-cpu"), load_dataset(REPO / "calibration" / "digits" / "eval.npz"),
                   name="wide", version=version, out_dir=work / "dist", eval_samples=100)


def timed(argv: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})})
    return time.perf_counter() - start, proc


def ssh_opts(fleet) -> list[str]:
    return ["-F", "/dev/null", "-i", str(fleet.client_key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={fleet.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]


def scp_argv(fleet, server, bundle: Path, dest: str) -> list[str]:
    return ["scp", "-q", *ssh_opts(fleet), "-P", str(server.port), str(bundle), f"root@127.0.0.1:{server.root}/{dest}"]


def edgekit_push(fleet, inventory: Path, bundle: Path, devices: int) -> tuple[float, dict]:
    # the fleet's own store beside its inventory: the user's store never hears of these devices
    seconds, proc = timed([sys.executable, "-m", "edgekit.cli.main", "push", str(bundle), "--inventory", str(inventory),
                           "--workers", str(devices), "--store", str(inventory.parent / "store.db"), "--json"],
                          env={**fleet.env, "EDGEKIT_CACHE": str(inventory.parent / "cache")})
    if proc.returncode != 0:
        raise SystemExit(f"edgekit push failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, json.loads(proc.stdout)


def scp_loop(fleet, bundle: Path) -> float:
    start = time.perf_counter()
    for server in fleet.servers:
        subprocess.run(scp_argv(fleet, server, bundle, "scp-loop.edgekit"), check=True, capture_output=True)
    return time.perf_counter() - start


def scp_parallel(fleet, bundle: Path) -> float:
    start = time.perf_counter()
    procs = [subprocess.Popen(scp_argv(fleet, s, bundle, "scp-parallel.edgekit"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for s in fleet.servers]
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"scp failed: {proc.stderr.read().decode()[-2000:]}")
    return time.perf_counter() - start


def ansible_bin() -> tuple[Path | None, str]:
    """ansible in its own venv (ansible-core from PyPI), made on first use; (None, why) if it cannot be."""
    beside = Path(sys.executable).parent / "ansible"  # `pip install ansible-core` beside edgekit
    ansible = beside if beside.exists() else ANSIBLE_VENV / "bin" / "ansible"
    if not ansible.exists():
        print(f"installing ansible-core into {ANSIBLE_VENV} (once)", flush=True)
        made = subprocess.run([sys.executable, "-m", "venv", "--clear", str(ANSIBLE_VENV)], capture_output=True, text=True)
        pip = made.returncode == 0 and subprocess.run(
            [str(ANSIBLE_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "ansible-core"],
            capture_output=True, text=True, timeout=600)
        if not pip or pip.returncode != 0 or not ansible.exists():
            why = (pip.stderr if pip else made.stderr).strip().splitlines()[-1:] or ["unknown"]
            return None, f"ansible-core could not be installed ({why[0]})"
    version = subprocess.run([str(ansible), "--version"], capture_output=True, text=True,
                             env=_ansible_env(ANSIBLE_VENV.parent)).stdout.splitlines()
    return ansible, (version[0] if version else "ansible")


def _ansible_env(work: Path) -> dict:
    return {"LC_ALL": "C.UTF-8", "ANSIBLE_HOME": str(work / "ansible-home"), "ANSIBLE_CONFIG": str(work / "none.cfg"),
            "ANSIBLE_LOCAL_TEMP": str(work / "ansible-tmp"), "ANSIBLE_HOST_KEY_CHECKING": "True",
            "ANSIBLE_NOCOLOR": "1", "ANSIBLE_PYTHON_INTERPRETER": "auto_silent"}


def ansible_inventory(fleet, work: Path) -> Path:
    lines = ["[devices]"]
    for s in fleet.servers:
        lines.append(f"{s.name} ansible_host=127.0.0.1 ansible_port={s.port} dest={s.root}/ansible.edgekit")
    common = " ".join(ssh_opts(fleet)[2:])  # the same host-key checking as scp; the key is given below
    lines += ["[devices:vars]", "ansible_user=root", f"ansible_ssh_private_key_file={fleet.client_key}",
              f"ansible_ssh_common_args='{common}'", f"ansible_remote_tmp={work / 'ansible-remote-tmp'}",
              f"ansible_python_interpreter={shutil.which('python3') or sys.executable}"]
    path = work / "ansible.ini"
    path.write_text("\n".join(lines) + "\n")
    return path


def ansible_copy(ansible: Path, inventory: Path, bundle: Path, work: Path, forks: int) -> tuple[float, int]:
    """Seconds, and how many hosts reported a change."""
    seconds, proc = timed([str(ansible), "devices", "-i", str(inventory), "-m", "ansible.builtin.copy",
                           "-a", f"src={bundle} dest={{{{ dest }}}} mode=0644", "-f", str(forks), "-o"],
                          env=_ansible_env(work))
    if proc.returncode != 0:
        raise SystemExit(f"ansible failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout.count('"changed": true')


def cpu_seconds(fleet) -> float:
    """CPU seconds used so far by this process's finished children (edgekit, scp, ansible) and
    by the sshd servers with their finished sessions (sshd's session processes, sftp-server,
    the runner): what a method costs this machine, which other load changes less than its
    wall time (on 2 cores a method that needs 6 CPU seconds takes at least 3 s)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_CHILDREN)
    tick = os.sysconf("SC_CLK_TCK")
    servers = 0
    for server in fleet.servers:
        fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        servers += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return own.ru_utime + own.ru_stime + servers / tick


def phase_medians(record: dict) -> dict:
    """The median over devices of each step's seconds that push reports per device."""
    steps = {step for d in record["devices"] for step in d["seconds"]}
    return {step: round(statistics.median(d["seconds"][step] for d in record["devices"] if step in d["seconds"]), 3)
            for step in sorted(steps)}


def check_copies(fleet, name: str, sha256: str) -> None:
    for server in fleet.servers:
        got = hashlib.sha256((server.root / name).read_bytes()).hexdigest()
        if got != sha256:
            raise SystemExit(f"{name} on {server.name} is corrupt: {got} != {sha256}")
        (server.root / name).unlink()  # room for the next method


def versions(ansible_version: str | None) -> dict:
    import paramiko

    from edgekit import __version__

    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    return {"edgekit": __version__, "paramiko": paramiko.__version__, "openssh": ssh, "ansible": ansible_version,
            "python": sys.version.split()[0]}


def run(devices: int, megabytes: float, work: Path, with_ansible: bool = True, plain_login: bool = True) -> dict:
    from edgekit.machine import cpu_facts
    from edgekit.sim.sshd import start_fleet

    print(f"building a bundle of about {megabytes:g} MB", flush=True)
    compiled = compile_edgekit()
    bundle = build_bundle(work, megabytes)
    update = build_bundle(work, megabytes, version="1.0.1")  # the same model: the same size
    size_mb = bundle.size / 1e6
    ansible, ansible_why = ansible_bin() if with_ansible else (None, "--no-ansible")
    home = work / "plain-home" if plain_login else None
    if home is not None:
        home.mkdir()
    fleet = start_fleet(work / "fleet", devices, pythons=[sys.executable] * devices, login_home=home)
    try:
        inventory = fleet.write_inventory()
        total_mb = size_mb * devices
        results: dict[str, float] = {}
        cpu: dict[str, float] = {}

        def measure(method: str, fn):
            """Run one method; its wall seconds and CPU seconds go to results and cpu; fn's other value is returned."""
            before = cpu_seconds(fleet)
            out = fn()
            results[method], more = out if isinstance(out, tuple) else (out, None)
            cpu[method] = cpu_seconds(fleet) - before
            return more

        print(f"{devices} devices, bundle {size_mb:.1f} MB ({total_mb:.0f} MB in all)", flush=True)
        pushed = measure("edgekit push", lambda: edgekit_push(fleet, inventory, bundle.path, devices))
        assert pushed["succeeded"] == devices and not any(d["already_installed"] for d in pushed["devices"])
        measure("scp loop", lambda: scp_loop(fleet, bundle.path))
        check_copies(fleet, "scp-loop.edgekit", bundle.sha256)
        measure("scp parallel", lambda: scp_parallel(fleet, bundle.path))
        check_copies(fleet, "scp-parallel.edgekit", bundle.sha256)
        skipped = {}
        if ansible is not None:
            inv = ansible_inventory(fleet, work)
            changed = measure("ansible copy", lambda: ansible_copy(ansible, inv, bundle.path, work, devices))
            assert changed == devices, f"ansible changed {changed} of {devices} hosts"
            changed = measure("ansible copy again (unchanged)",
                              lambda: ansible_copy(ansible, inv, bundle.path, work, devices))
            assert changed == 0
            check_copies(fleet, "ansible.edgekit", bundle.sha256)
        else:
            print(f"{ansible_why}: skipped", flush=True)
            skipped["ansible copy"] = ansible_why
        again = measure("edgekit re-push (unchanged)", lambda: edgekit_push(fleet, inventory, bundle.path, devices))
        assert all(d["already_installed"] for d in again["devices"])
        newer = measure("edgekit push, new version (runner there)",
                        lambda: edgekit_push(fleet, inventory, update.path, devices))
        assert not any(d["already_installed"] or d["runner_updated"] for d in newer["devices"])
        phases = {"edgekit push": phase_medians(pushed), "edgekit re-push (unchanged)": phase_medians(again),
                  "edgekit push, new version (runner there)": phase_medians(newer)}
    finally:
        fleet.stop()
    base, scp = results["edgekit push"], results["scp parallel"]
    rows = [{"method": m, "seconds": round(s, 3), "mb_per_s": round(total_mb / s, 1), "ratio_to_edgekit_push": round(s / base, 3),
             "ratio_to_scp_parallel": round(s / scp, 3), "cpu_s": round(cpu[m], 2)} for m, s in results.items()]
    return {"benchmark": "push_vs_scp", "devices": devices,
            "device_login": "an empty folder (no ~/.bashrc)" if plain_login else f"this user's own ({Path.home()})",
            "edgekit_bytecode": "compiled before the timings" if compiled else "compiling failed: sources compiled each run",
            "bundle": {"name": bundle.path.name, "size_mb": round(size_mb, 2), "sha256": bundle.sha256},
            "results": rows, "edgekit_phases_median_s": phases, "skipped": skipped,
            "versions": versions(ansible_why if ansible else None),
            "machine": cpu_facts(),
            "notes": ["edgekit push also installs: sha256 and manifest checks, unpacking, and (fresh devices) the runner",
                      "all servers are on 127.0.0.1: this measures protocol and CPU cost, not a network",
                      "mb_per_s is the bundle size times the devices over the wall time",
                      ("cpu_s: CPU seconds of the method's client processes and of the sshd servers with their "
                       "sessions (and so the device's runner), from the kernel's accounting"),
                      ("edgekit_phases_median_s: the median over devices of the seconds push reports for each step on "
                       "a device (runner: check or update it, look for the bundle; upload; install: the device's checks "
                       "and unpacking); devices run at the same time, and connecting and the CLI's start are not in them")]}


def show(record: dict) -> None:
    bundle = record["bundle"]
    print(f"\n{bundle['name']}: {bundle['size_mb']} MB to {record['devices']} loopback sshd devices "
          f"(their login shell's HOME: {record['device_login']})")
    print(f"{'method':40} {'seconds':>9} {'MB/s':>8} {'x edgekit push':>15} {'x scp parallel':>15} {'CPU s':>7}")
    for row in record["results"]:
        print(f"{row['method']:40} {row['seconds']:9.2f} {row['mb_per_s']:8.1f} {row['ratio_to_edgekit_push']:15.2f} "
              f"{row['ratio_to_scp_parallel']:15.2f} {row['cpu_s']:7.2f}")
    for method, why in record["skipped"].items():
        print(f"{method:40} skipped: {why}")
    for method, steps in record["edgekit_phases_median_s"].items():
        print(f"{method}, median per device: " + ", ".join(f"{step} {sec:.2f} s" for step, sec in steps.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--mb", type=float, default=50.0, help="model weights in MB (the bundle is a little larger)")
    parser.add_argument("--no-ansible", action="store_true", help="leave out Ansible's copy (the shortest run)")
    parser.add_argument("--host-login", action="store_true",
                        help="the devices' sessions get this machine's user's HOME (its ~/.bashrc), not an empty one")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "push_vs_scp.json")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # The servers' files go to the system's temporary folder: sshd is stricter about where its
    # host keys may live than about /tmp (it refused them under a checkout in /work here).
    with tempfile.TemporaryDirectory(prefix="push-vs-scp-") as tmp:
        record = run(args.devices, args.mb, Path(tmp), with_ansible=not args.no_ansible, plain_login=not args.host_login)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    show(record)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
