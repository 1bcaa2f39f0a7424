"""One device in a rollout: deploy the bundle, judge its report, put it back when it must.

    status -> (runner update, upload, install) -> activate -> evaluate -> fetch the report

`deploy` runs in a fan-out worker and never raises for the device's own failures: what
happened is a dict that the wave judges in the calling thread (`judge`). Before the
activation it tells the store that the device is about to run a version that has not
passed its gates (`note_activation`), so that whatever happens next (a failure, Ctrl-C, a
killed host) the store knows where the device must go back to: its last good state
(Store.last_good).

An engine carries out a wave (`Engine`): deploy on each of its devices, restore, ask for
status. `NativeEngine` is edgekit's own, `deploy` fanned out over the devices' transports;
edgekit.fleet.ansible_engine does the same steps through ansible-runner. Whatever the
engine, each device's outcome is the dict `deploy` returns, in a DeviceResult.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence

from edgekit.bundle import Bundle
from edgekit.device_report import DeviceReport
from edgekit.errors import EdgekitError, Interrupted, RemoteCommandError
from edgekit.fleet.collect import Pulled, pull_reports, store_pulled
from edgekit.fleet.fanout import WORKERS, DeviceResult, FleetResult, check_cancel, fan_out
from edgekit.fleet.gates import check_report
from edgekit.fleet.inventory import Device
from edgekit.fleet.protocol import SHORT_STEP_S, device_status, model_state, run_runner
from edgekit.fleet.push import install_bundle, status
from edgekit.store import Store
from edgekit.transport import Transport
from edgekit.transport.base import Cancel

__all__ = ["Step", "Wave", "Engine", "NativeEngine", "deploy", "note_activation", "judge", "restore",
           "restore_argv", "aftermath"]

Step = Callable[[str, str, Optional[int], Optional[int]], None]  # (device, stage, done, total)
JUDGED = ("run_id", "status", "accuracy", "cosine", "latency_p95", "peak_rss_mb")  # a device row's report


@dataclass(frozen=True)
class Wave:
    """What an engine needs to carry out one wave of a rollout."""

    bundle: Bundle
    store: Store
    rollout_id: int
    kind: str                    # canary, batch 1, ...
    known: dict[str, set[str]]   # device -> the run ids the store has (reports not fetched again)
    samples: Optional[int]
    step: Step
    cancel: Optional[Cancel]
    step_timeout: float


class Engine(Protocol):
    """Carries out a rollout's work on devices; rollout.py plans, judges and records."""

    def deploy(self, wave: Wave, devices: Sequence[Device]) -> list[DeviceResult]:
        """One result per device, in order: the dict `deploy` returns as its detail, "failed"
        with reached=False when it could not be reached, "skipped" when interrupted before it started."""

    def restore(self, devices: Sequence[Device], name: str, before: dict[str, dict]) -> FleetResult:
        """Put NAME back to `before[device]`; each result's detail holds the runner's reply."""

    def status(self, devices: Sequence[Device]) -> FleetResult:
        """Each device's runner status (device_status)."""


class NativeEngine:
    """edgekit's own engine: every device through its own transport, a bounded pool at a time."""

    name = "native"

    def __init__(self, workers: int = WORKERS, **connect_opts):
        self.opts = {"workers": workers, **connect_opts}

    def deploy(self, wave: Wave, devices: Sequence[Device]) -> list[DeviceResult]:
        work = lambda t, d: deploy(t, d, wave.bundle, wave.store, wave.rollout_id, wave.known[d.name],  # noqa: E731
                                   wave.samples, wave.step, wave.cancel, wave.step_timeout)
        return fan_out(devices, work, action=wave.kind, cancel=wave.cancel, **self.opts).results

    def restore(self, devices: Sequence[Device], name: str, before: dict[str, dict]) -> FleetResult:
        return restore(devices, name, before, **self.opts)

    def status(self, devices: Sequence[Device]) -> FleetResult:
        return status(devices, **self.opts)


def deploy(t: Transport, d: Device, bundle: Bundle, store: Store, rollout_id: int, known: set[str],
           samples: Optional[int], step: Step, cancel: Optional[Cancel], step_timeout: float) -> dict:
    """Install, activate, evaluate, fetch the report; never raises for the device's failures.
    Every runner step is bounded by `step_timeout` (status and activation by less)."""
    short = min(SHORT_STEP_S, step_timeout)
    out: dict = {"before": None, "live": None, "activated": False, "run_id": None, "pulled": None,
                 "stage": "status", "error": None, "interrupted": False}
    try:
        check_cancel(cancel, d, "the status")
        step(d.name, "status", None, None)
        status = device_status(t, d, timeout=short)
        out["live"], out["clock_skew_s"] = model_state(status, bundle.name), status.get("clock_skew_s")
        out["before"] = store.last_good(d.name, bundle.name, out["live"])
        out["stage"] = "install"
        step(d.name, "upload", 0, bundle.size)
        install_bundle(t, d, bundle, progress=lambda done, total: step(d.name, "upload", done, total), status=status,
                       cancel=cancel, step_timeout=step_timeout)
        out["stage"] = "activate"
        check_cancel(cancel, d, "the activation")
        _activate(t, d, bundle, store, rollout_id, out, short)
        out["stage"] = "evaluate"
        check_cancel(cancel, d, "the evaluation")
        step(d.name, "evaluate", None, None)
        out["run_id"] = _evaluate(t, d, bundle, samples, cancel, step_timeout)
        out["stage"] = "collect"
        step(d.name, "collect", None, None)
        out["pulled"] = pull_reports(t, d, known, name=bundle.name, version=bundle.version)
        out["stage"] = None
    except Interrupted as exc:
        out["error"], out["interrupted"] = str(exc), True
    except (EdgekitError, OSError) as exc:
        out["error"] = str(exc)
    return out


def _activate(t: Transport, d: Device, bundle: Bundle, store: Store, rollout_id: int, out: dict,
              timeout: float) -> None:
    note_activation(store, d.name, bundle, rollout_id, out)
    run_runner(t, d, "activate", bundle.name, bundle.version, timeout=timeout)


def note_activation(store: Store, device: str, bundle: Bundle, rollout_id: int, out: dict) -> None:
    """Before a device switches: the store hears of it first. If this host dies during the
    switch, it still knows that the device may run a version that never passed its gates,
    and where it came from (out["before"])."""
    before = out["before"]
    store.record_change(device, bundle.name, "activate", ok=True, before=before, gated=False, rollout_id=rollout_id,
                        after={"current": bundle.version, "previous": before["current"]})
    out["activated"] = True  # from here on it may run the new version


def _evaluate(t: Transport, d: Device, bundle: Bundle, samples: Optional[int], cancel: Optional[Cancel],
              timeout: float) -> Optional[str]:
    """The run id of the device's evaluation; a failed evaluation still wrote a report."""
    args = ["evaluate", bundle.name, "--version", bundle.version, "--device-name", d.name]
    try:
        reply = run_runner(t, d, *args, *(["--samples", str(samples)] if samples else []),
                           timeout=timeout, cancel=cancel)
    except RemoteCommandError as exc:
        reply = getattr(exc, "reply", None)
        if not (isinstance(reply, dict) and isinstance(reply.get("report"), dict)):
            raise
    run_id = reply["report"].get("run_id")
    return run_id if isinstance(run_id, str) else None


def judge(store: Store, d: Device, r: DeviceResult, bundle: Bundle) -> dict:
    """What happened on one device: {device, status, stage, error, before, report, breaches, ...}.
    status: ok, breached, failed, unreachable, interrupted or "not started"."""
    row: dict = {"device": d.name, "status": "ok", "stage": None, "error": None, "before": None, "report": None,
                 "breaches": [], "activated": False}
    if r.status == "skipped":  # interrupted before its turn
        return {**row, "status": "not started", "error": r.error}
    if r.status != "ok":  # fan_out could not connect
        store.touch_device(d.name, target=d.target, transport=d.transport, host=d.host, reachable=False, error=r.error)
        return {**row, "status": "unreachable", "stage": "connect", "error": r.error}
    out = r.detail
    store.touch_device(d.name, target=d.target, transport=d.transport, host=d.host, reachable=True,
                       clock_skew_s=out.get("clock_skew_s"))
    row.update(before=out["before"], live=out["live"], activated=out["activated"], stage=out["stage"],
               error=out["error"])
    pulled = store_pulled(store, d, out["pulled"]) if out["pulled"] else None
    if out["interrupted"]:
        return {**row, "status": "interrupted"}
    if out["error"]:
        return {**row, "status": "failed"}
    report = _report_of_run(out["pulled"], out["run_id"])
    if report is None:
        bad = "; ".join(pulled["bad"]) if pulled and pulled["bad"] else "no such file"
        return {**row, "status": "failed", "stage": "collect",
                "error": f"{d.name}: no valid report of run {out['run_id']}: {bad}"}
    breaches = check_report(d.name, report, bundle.manifest)
    columns = report.columns()
    row["report"] = {k: columns[k] for k in JUDGED}
    return {**row, "status": "breached" if breaches else "ok", "breaches": breaches}


def _report_of_run(pulled: Optional[Pulled], run_id: Optional[str]) -> Optional[DeviceReport]:
    """The validated report of this run among those just pulled (the gates judge what the device
    sent, not a copy read back from the store); None when it was missing or bad."""
    if not pulled or not run_id:
        return None
    return next((report for report, _ in pulled["reports"] if report.run_id == run_id), None)


def aftermath(row: dict, version: str, rollout_id: int) -> dict:
    """What a device runs after its wave, said from its real state: {runs, changed, fix}.
    `runs` may end in '?' when edgekit cannot know; `fix` is the one command a person must
    run, or None when nothing needs doing."""
    before = (row.get("before") or {}).get("current")
    live = (row.get("live") or {}).get("current", before)
    if "restored" in row:
        if row["restored"]:
            return {"runs": (row.get("after") or {}).get("current"), "changed": "put back by edgekit", "fix": None}
        return {"runs": f"{version}?", "changed": f"switched by edgekit and not put back ({row.get('restore_error')})",
                "fix": f"edgekit rollout --abort {rollout_id} -i INVENTORY  (when it answers)"}
    if row["status"] == "ok":
        return {"runs": version, "changed": "switched by edgekit; passed its gates", "fix": None}
    if row["status"] in ("unreachable", "not started") or row.get("before") is None:
        return {"runs": None, "changed": "not changed by edgekit", "fix": None}
    if row.get("activated"):  # failed after the switch, and nothing was tried to put it back
        return {"runs": f"{version}?", "changed": "switched by edgekit, not checked",
                "fix": f"edgekit rollout --abort {rollout_id} -i INVENTORY"}
    return {"runs": live, "changed": "not changed by edgekit", "fix": None}


def restore_argv(name: str, before: dict) -> list[str]:
    argv = ["restore", name]
    for key in ("current", "previous"):
        if before.get(key):
            argv += [f"--{key}", before[key]]
    return argv


def restore(devices: Sequence[Device], name: str, before: dict[str, dict], **opts):
    """Put NAME back to `before[device]` ({current, previous}) on each device."""
    return fan_out(devices, lambda t, d: run_runner(t, d, *restore_argv(name, before[d.name]), timeout=SHORT_STEP_S),
                   action="restore", **opts)
