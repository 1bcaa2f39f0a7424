"""The Ansible engine: a rollout's device work carried out by ansible-runner (`--engine ansible`).

edgekit ships the playbook and role it runs (edgekit/resources/ansible: wave.yml and the
edgekit_device role). A wave is two runs of that playbook on the wave's hosts, so that the
store hears of each activation before it happens (deploy.note_activation), as with
edgekit's own engine:

    install   status, runner update, upload (checksummed), install
    activate  activate, evaluate, fetch the new reports to this host

ansible-runner's per-host events are read into the same per-device outcome as
deploy.deploy returns (the runner's JSON through protocol.runner_reply, the fetched
reports checked as collect checks them: ansible_play.pull_fetched), so rollout.py judges, decides and records both
engines alike. A host that fails fails alone: the play never stops on a percentage of
Ansible's. On the first Ctrl-C a flag file tells the role to start no new step; a second
stops ansible-playbook at once.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import threading
from datetime import datetime
from pathlib import Path
from typing import Optional, Sequence

from edgekit.errors import ConfigError, RemoteCommandError
from edgekit.fleet.ansible_inventory import as_ansible, dump_yaml
from edgekit.fleet.deploy import Wave, note_activation, restore_argv
from edgekit.fleet.fanout import WORKERS, DeviceResult, FleetResult
from edgekit.fleet.ansible_play import pull_fetched, role_vars
from edgekit.fleet.inventory import Device
from edgekit.fleet.protocol import model_state, payload, runner_reply
from edgekit.transport.base import Cancel, RunResult

__all__ = ["AnsibleEngine", "PLAYBOOK", "ANSIBLE_DIR"]

ANSIBLE_DIR = Path(__file__).resolve().parent.parent / "resources" / "ansible"
PLAYBOOK = ANSIBLE_DIR / "wave.yml"
# The role's task names that run the device's runner, and the stage a failure there is of.
RUNNER_TASKS = ("status", "install", "activate", "evaluate", "restore")
STAGE = {"status": "status", "activate": "activate", "evaluate": "evaluate",
         "reports fetched": "collect"}  # anything else of `install` is the install
PROGRESS = {"status": "status", "upload": "upload", "evaluate": "evaluate", "reports fetched": "collect"}


class AnsibleEngine:
    """deploy.Engine through ansible-runner; `workers` are Ansible's forks."""

    name = "ansible"

    def __init__(self, workers: int = WORKERS, trust_new_hosts: bool = False, known_hosts: Optional[str] = None):
        if importlib.util.find_spec("ansible_runner") is None:
            raise ConfigError("--engine ansible needs ansible-core and ansible-runner: pip install 'edgekit[ansible]'")
        self.workers, self.trust_new_hosts, self.known_hosts = workers, trust_new_hosts, known_hosts

    # -- the Engine's three verbs ----------------------------------------------------------

    def deploy(self, wave: Wave, devices: Sequence[Device]) -> list[DeviceResult]:
        if wave.cancel is not None and wave.cancel.is_set():
            return [DeviceResult(d.name, "skipped", {"interrupted": True}, "interrupted before it started")
                    for d in devices]
        with tempfile.TemporaryDirectory(prefix="edgekit-ansible-") as tmp:
            play = _Play(self, Path(tmp), wave.cancel, wave.step)
            extra = role_vars(wave.bundle, Path(tmp), wave.step_timeout, wave.samples)
            first = play.run("install", devices, extra)
            outs = {d.name: _installed(d, first, wave) for d in devices}
            ready = [d for d in devices if isinstance(outs[d.name], dict) and not outs[d.name]["error"]]
            if ready and wave.cancel is not None and wave.cancel.is_set():
                for d in ready:
                    outs[d.name].update(error=f"device {d.name}: interrupted before the activation", interrupted=True)
            elif ready:
                for d in ready:
                    note_activation(wave.store, d.name, wave.bundle, wave.rollout_id, outs[d.name])
                second = play.run("activate", ready, extra)
                for d in ready:
                    _evaluated(d, second, wave, outs[d.name], Path(tmp) / "fetched" / d.name)
        return [out if isinstance(out, DeviceResult) else DeviceResult(d.name, "ok", out)
                for d, out in ((d, outs[d.name]) for d in devices)]

    def restore(self, devices: Sequence[Device], name: str, before: dict[str, dict]) -> FleetResult:
        extra = {"edgekit_restore": {d.name: restore_argv(name, before[d.name]) for d in devices}}
        return self._simple("restore", devices, extra)

    def status(self, devices: Sequence[Device]) -> FleetResult:
        return self._simple("status", devices, {})

    def _simple(self, step: str, devices: Sequence[Device], extra: dict) -> FleetResult:
        """One run of a one-command step: the runner's reply of each device, or its failure."""
        with tempfile.TemporaryDirectory(prefix="edgekit-ansible-") as tmp:
            events = _Play(self, Path(tmp), None, None).run(step, devices, extra)
        results = []
        for d in devices:
            host = events.host(d.name)
            if host.unreachable_first:
                results.append(DeviceResult(d.name, "failed", error=host.failure, reached=False))
            elif host.failure:
                results.append(DeviceResult(d.name, "failed", error=host.failure))
            else:
                results.append(_replied(d, host, step))
        return FleetResult(step, results)


# -- reading a run's events into what deploy.deploy returns -----------------------------------


def _replied(d: Device, host: "_Host", step: str) -> DeviceResult:
    """The runner's reply to a status or restore, as the native engine gives it."""
    try:
        return DeviceResult(d.name, "ok", _status(d, host) if step == "status" else payload(host.reply(d, step)))
    except RemoteCommandError as exc:
        return DeviceResult(d.name, "failed", error=str(exc))


def _fresh() -> dict:
    return {"before": None, "live": None, "activated": False, "run_id": None, "pulled": None, "stage": "status",
            "error": None, "interrupted": False}


def _installed(d: Device, events: "_Events", wave: Wave):
    """After the install run: the device's outcome so far, or a DeviceResult when unreachable."""
    host = events.host(d.name)
    if host.unreachable_first:
        return DeviceResult(d.name, "failed", error=host.failure, reached=False)
    out = _fresh()
    if host.failed_task in ("status", "status read"):
        out["error"] = host.failure
        return out
    try:
        status = _status(d, host)
    except RemoteCommandError as exc:
        out["error"] = str(exc)
        return out
    out["live"] = model_state(status, wave.bundle.name)
    out["clock_skew_s"] = status.get("clock_skew_s")
    out["before"] = wave.store.last_good(d.name, wave.bundle.name, out["live"])
    out["stage"] = "install"
    if host.failure:
        out["error"], out["interrupted"] = host.failure, host.interrupted
    else:
        out["stage"] = "activate"
    return out


def _evaluated(d: Device, events: "_Events", wave: Wave, out: dict, fetched: Path) -> None:
    """After the activate run: the run id of the evaluation and the reports fetched."""
    host = events.host(d.name)
    if host.failure and host.failed_task != "reports fetched":  # a fetch that failed still judges what came
        evaluating = host.interrupted or host.failed_task == "evaluate"  # interrupted before it, or timed out
        out["stage"] = "evaluate" if evaluating else STAGE.get(host.failed_task or "", "activate")
        out["error"], out["interrupted"] = host.failure, host.interrupted
        return
    out["stage"] = "evaluate"
    try:
        reply = host.reply(d, "evaluate")
    except RemoteCommandError as exc:
        reply = getattr(exc, "reply", None)
        if not (isinstance(reply, dict) and isinstance(reply.get("report"), dict)):
            out["stage"], out["error"] = "evaluate", str(exc)
            return
    run_id = reply["report"].get("run_id")
    out["run_id"] = run_id if isinstance(run_id, str) else None
    out["pulled"] = pull_fetched(d, fetched, wave.known[d.name], wave.bundle.name, wave.bundle.version)
    if host.failure:  # the fetch itself failed: what came is judged, and the failure said
        out["pulled"]["error"] = host.failure
    out["stage"] = None


def _status(d: Device, host: "_Host") -> dict:
    """The runner's status from the status task (an empty device's when it has no runner yet),
    with its clock against ours."""
    reply = payload(host.reply(d, "status"))
    start, end = host.tasks["status"].get("start"), host.tasks["status"].get("end")
    if isinstance(reply.get("now"), (int, float)) and start and end:
        middle = (_epoch(start) + _epoch(end)) / 2
        reply["clock_skew_s"] = reply["now"] - middle
    return reply


def _epoch(stamp: str) -> float:
    when = datetime.fromisoformat(stamp)
    return when.timestamp() if when.tzinfo else when.replace(tzinfo=datetime.now().astimezone().tzinfo).timestamp()


# -- running the playbook ---------------------------------------------------------------------


class _Host:
    """One host's events of one run: each task's last result, and the first failure."""

    def __init__(self):
        self.tasks: dict[str, dict] = {}
        self.failure: Optional[str] = None
        self.failed_task: Optional[str] = None
        self.unreachable_first = False  # unreachable before any task answered
        self.interrupted = False

    def reply(self, d: Device, task: str) -> dict:
        """The runner's JSON of `task` (RemoteCommandError as protocol.run_runner raises it)."""
        res = self.tasks.get(task, {}).get("res") or {}
        result = RunResult(int(res.get("rc", -1) if res.get("rc") is not None else -1), res.get("stdout") or "",
                           res.get("stderr") or res.get("msg") or "")
        return runner_reply(d, task, result)


class _Events:
    """ansible-runner's event handler: the events of one run, by host."""

    def __init__(self, devices: Sequence[Device], step_cb):
        self.hosts: dict[str, _Host] = {}
        self.devices = {d.name: d for d in devices}
        self.step_cb = step_cb

    def host(self, name: str) -> _Host:
        return self.hosts.setdefault(name, _Host())

    def __call__(self, event: dict) -> bool:
        kind, data = event.get("event", ""), event.get("event_data") or {}
        name, task = data.get("host"), (data.get("task") or "").strip()
        if not name or not kind.startswith("runner_on_"):
            return True
        host = self.host(name)
        if kind == "runner_on_start":
            if self.step_cb and task in PROGRESS:
                self.step_cb(name, PROGRESS[task], None, None)
            return True
        res = data.get("res") or {}
        host.tasks[task] = {"res": res, "start": data.get("start"), "end": data.get("end"),
                            "skipped": kind == "runner_on_skipped"}
        if kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors") and not host.failure:
            host.failed_task, host.interrupted = task, task == "interrupted"
            host.unreachable_first = kind == "runner_on_unreachable" and len(host.tasks) == 1
            host.failure = _failure_text(self.devices[name], task, res)
        return True


def _failure_text(device: Device, task: str, res: dict) -> str:
    """One line: the runner's own error when it answered, else what Ansible said."""
    if task in RUNNER_TASKS and "rc" in res:
        try:
            runner_reply(device, task, RunResult(int(res["rc"] or 0), res.get("stdout") or "", res.get("stderr") or ""))
        except RemoteCommandError as exc:
            return str(exc)
    message = str(res.get("msg") or res.get("stderr") or "failed").strip().splitlines()
    text = message[0] if message else "failed"
    return text if text.startswith(f"device {device.name}") else f"device {device.name}: {task}: {text}"


def _unheard(events: _Events, devices: Sequence[Device], runner, step: str) -> None:
    """A host the run never reached (ansible-playbook did not start, or stopped): its failure says why."""
    silent = [d for d in devices if not events.host(d.name).tasks and not events.host(d.name).failure]
    if not silent:
        return
    said = [ln.strip() for ln in (runner.stdout.read() if runner.stdout else "").splitlines() if ln.strip()]
    why = f"ansible-playbook ended ({runner.status}, exit {runner.rc})" + (f": {said[-1][:300]}" if said else "")
    for d in silent:
        host = events.host(d.name)
        host.failed_task, host.failure = step, f"device {d.name}: {step}: {why}"


class _Play:
    """Runs wave.yml through ansible-runner on some devices; one `_Events` per run."""

    def __init__(self, engine: AnsibleEngine, tmp: Path, cancel: Optional[Cancel], step_cb):
        self.engine, self.tmp, self.cancel, self.step_cb = engine, tmp, cancel, step_cb
        self.flag = tmp / "interrupted"
        self.runs = 0

    def run(self, step: str, devices: Sequence[Device], extra: dict) -> _Events:
        import ansible_runner

        self.runs += 1
        base = self.tmp / f"run-{self.runs}"
        base.mkdir(parents=True)
        inventory = base / "hosts.yml"
        inventory.write_text(dump_yaml(as_ansible(devices)))
        events, stop, done = _Events(devices, self.step_cb), threading.Event(), threading.Event()
        watcher = threading.Thread(target=self._watch, args=(done,), daemon=True)
        watcher.start()
        thread, runner = ansible_runner.run_async(
            private_data_dir=str(base), playbook=str(PLAYBOOK), inventory=str(inventory), forks=self.engine.workers,
            extravars={**extra, "edgekit_step": step, "edgekit_cancel_flag": str(self.flag)},
            envvars=self._env(devices), event_handler=events, cancel_callback=stop.is_set, quiet=True)
        try:
            while thread.is_alive():
                thread.join(0.2)
        except BaseException:  # a second Ctrl-C: ansible-playbook is stopped at once
            stop.set()
            thread.join(10)
            raise
        finally:
            done.set()
        _unheard(events, devices, runner, step)
        return events

    def _watch(self, done: threading.Event) -> None:
        """Turn the first Ctrl-C into the flag file the role looks for before each step."""
        while self.cancel is not None and not done.is_set():
            if self.cancel.wait(0.2):
                self.flag.touch()
                return

    def _env(self, devices: Sequence[Device]) -> dict:
        """Host keys as edgekit checks them: its own known_hosts and the user's, new ones only on request."""
        from edgekit.transport.hostkeys import edgekit_known_hosts
        from edgekit.transport.sshconfig import ssh_config_path

        known = edgekit_known_hosts(self.engine.known_hosts)
        known.parent.mkdir(parents=True, exist_ok=True)
        args = [f"-o UserKnownHostsFile=\"{known} ~/.ssh/known_hosts\"",
                f"-o StrictHostKeyChecking={'accept-new' if self.engine.trust_new_hosts else 'yes'}"]
        config = ssh_config_path()
        if config.is_file():
            args.insert(0, f"-F {config}")
        timeout = max((d.connect_timeout for d in devices), default=10)
        # ansible-playbook beside this Python first: a virtualenv's bin/ need not be on PATH
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        return {"PATH": path, "ANSIBLE_SSH_EXTRA_ARGS": " ".join(args), "ANSIBLE_TIMEOUT": str(int(timeout)),
                "ANSIBLE_RETRY_FILES_ENABLED": "False", "ANSIBLE_NOCOLOR": "1", "ANSIBLE_PIPELINING": "True",
                "ANSIBLE_PYTHON_INTERPRETER": "auto_silent", "ANSIBLE_DEPRECATION_WARNINGS": "False",
                "ANSIBLE_SSH_CONTROL_PATH_DIR": str(Path(tempfile.gettempdir()) / f"edgekit-ansible-cp-{os.getuid()}")}
