"""`edgekit rollout`: a bundle to its devices in waves, each wave gated on the devices' reports.

    wave 1 (canary): the first N devices      then batches of SIZE devices (or PCT% of them)

For every device of a wave, in parallel: note what runs now (the runner's status), update
the runner, upload and install the bundle, activate it, evaluate it on the device, and
fetch the report into the store. Then the wave's gates (edgekit.fleet.gates) are applied
to the reports, and failures (unreachable devices, refused installs, bad reports) are
counted against --max-failures over the whole rollout.

A broken gate, too many failures, or a canary with no device checked halts the rollout:
every device of that wave goes back to exactly what it ran before (the runner's `restore`:
its current and previous versions as they were, and nothing active where nothing was).
The new version stays installed there, inactive, for inspection, until `gc`. Earlier
waves passed their gates and keep the new version. A device that failed while failures
are tolerated is restored the same way, so every device either runs the new version,
installed and checked, or what it ran before. Every rollout, wave and device event is
recorded in the store.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from edgekit.bundle import Bundle
from edgekit.errors import ConfigError, EdgekitError, RemoteCommandError
from edgekit.fleet.collect import pull_reports, store_pulled
from edgekit.fleet.gates import Breach, check_report
from edgekit.fleet.inventory import Device
from edgekit.fleet.push import WORKERS, DeviceResult, device_status, fan_out, for_target, install_bundle, run_runner
from edgekit.store import Store
from edgekit.transport import Transport

__all__ = ["RolloutResult", "parse_batch", "plan_waves", "rollout", "restore"]

Step = Callable[[str, str, Optional[int], Optional[int]], None]  # (device, stage, done, total)
_BATCH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


def parse_batch(text: str) -> tuple[Optional[int], Optional[float]]:
    """'5' -> (5, None); '25%' -> (None, 25.0); ConfigError for anything else."""
    match = _BATCH.match(str(text))
    if not match or (not match.group(2) and "." in match.group(1)):
        raise ConfigError(f"--batch {text!r}: give a number of devices (e.g. 5) or a percentage (e.g. 25%)")
    value = float(match.group(1))
    if match.group(2):
        if not 0 < value <= 100:
            raise ConfigError(f"--batch {text}: a percentage must be above 0% and at most 100%")
        return None, value
    if value < 1:
        raise ConfigError(f"--batch {text}: a wave needs at least 1 device")
    return int(value), None


def plan_waves(devices: Sequence[Device], canary: int, batch: str) -> list[tuple[str, list[Device]]]:
    """[(kind, devices)]: the canary wave (when canary > 0), then batches of the rest."""
    if canary < 0:
        raise ConfigError(f"--canary {canary}: must be 0 or more")
    count, percent = parse_batch(batch)
    size = count or max(1, math.ceil(percent * len(devices) / 100))
    waves = [("canary", list(devices[:canary]))] if canary else []
    rest = list(devices[canary:])
    waves += [(f"batch {i // size + 1}", rest[i:i + size]) for i in range(0, len(rest), size)]
    return waves


@dataclass
class RolloutResult:
    rollout_id: int
    bundle: dict
    outcome: str = "running"  # "completed" | "completed-with-failures" | "halted"
    reason: Optional[str] = None
    waves: list[dict] = field(default_factory=list)
    skipped: list[DeviceResult] = field(default_factory=list)
    breaches: list[Breach] = field(default_factory=list)

    @property
    def devices(self) -> list[dict]:
        return [d for w in self.waves for d in w["devices"]]

    def record(self) -> dict:
        return {"rollout_id": self.rollout_id, "bundle": self.bundle, "outcome": self.outcome, "reason": self.reason,
                "breaches": [b.record() for b in self.breaches], "waves": self.waves,
                "skipped": [r.record() for r in self.skipped]}


# -- one device ------------------------------------------------------------------------------


def _deploy(t: Transport, d: Device, bundle: Bundle, known: set[str], samples: Optional[int], step: Step) -> dict:
    """Install, activate, evaluate, fetch the report; never raises for the device's failures."""
    out: dict = {"before": None, "activated": False, "run_id": None, "pulled": None, "stage": "status", "error": None}
    try:
        step(d.name, "status", None, None)
        status = device_status(t, d)
        model = (status.get("models") or {}).get(bundle.name) or {}
        out["before"] = {"current": model.get("current"), "previous": model.get("previous")}
        out["stage"] = "install"
        step(d.name, "upload", 0, bundle.size)
        install_bundle(t, d, bundle, progress=lambda done, total: step(d.name, "upload", done, total), status=status)
        out["stage"], out["activated"] = "activate", True  # from here on it may run the new version
        step(d.name, "activate", None, None)
        run_runner(t, d, "activate", bundle.name, bundle.version, timeout=120)
        out["stage"] = "evaluate"
        step(d.name, "evaluate", None, None)
        out["run_id"] = _evaluate(t, d, bundle, samples)
        out["stage"] = "collect"
        step(d.name, "collect", None, None)
        out["pulled"] = pull_reports(t, d, known, name=bundle.name, version=bundle.version)
        out["stage"] = None
    except (EdgekitError, OSError) as exc:
        out["error"] = str(exc)
    return out


def _evaluate(t: Transport, d: Device, bundle: Bundle, samples: Optional[int]) -> Optional[str]:
    """The run id of the device's evaluation; a failed evaluation still wrote a report."""
    args = ["evaluate", bundle.name, "--version", bundle.version, "--device-name", d.name]
    try:
        reply = run_runner(t, d, *args, *(["--samples", str(samples)] if samples else []), timeout=3600)
    except RemoteCommandError as exc:
        reply = getattr(exc, "reply", None)
        if not (isinstance(reply, dict) and isinstance(reply.get("report"), dict)):
            raise
    run_id = reply["report"].get("run_id")
    return run_id if isinstance(run_id, str) else None


def _restore_argv(name: str, before: dict) -> list[str]:
    argv = ["restore", name]
    for key in ("current", "previous"):
        if before.get(key):
            argv += [f"--{key}", before[key]]
    return argv


def restore(devices: Sequence[Device], name: str, before: dict[str, dict], **opts):
    """Put NAME back to `before[device]` ({current, previous}) on each device."""
    return fan_out(devices, lambda t, d: run_runner(t, d, *_restore_argv(name, before[d.name]), timeout=120),
                   action="restore", **opts)


# -- one wave --------------------------------------------------------------------------------


def _judge(store: Store, d: Device, r: DeviceResult, bundle: Bundle) -> dict:
    """What happened on one device: {device, status, stage, error, before, report, breaches}."""
    row: dict = {"device": d.name, "status": "ok", "stage": None, "error": None, "before": None, "report": None,
                 "breaches": [], "activated": False}
    if r.status != "ok":  # fan_out could not connect
        store.touch_device(d.name, target=d.target, transport=d.transport, host=d.host, reachable=False, error=r.error)
        return {**row, "status": "unreachable", "stage": "connect", "error": r.error}
    out = r.detail
    store.touch_device(d.name, target=d.target, transport=d.transport, host=d.host, reachable=True)
    row.update(before=out["before"], activated=out["activated"], stage=out["stage"], error=out["error"])
    pulled = store_pulled(store, d, out["pulled"]) if out["pulled"] else None
    if out["error"]:
        return {**row, "status": "failed"}
    report = store.report(d.name, out["run_id"]) if out["run_id"] else None
    if report is None:
        bad = "; ".join(pulled["bad"]) if pulled and pulled["bad"] else "no such file"
        return {**row, "status": "failed", "stage": "collect",
                "error": f"{d.name}: no valid report of run {out['run_id']}: {bad}"}
    breaches = check_report(d.name, report, bundle.manifest)
    metrics = report["metrics"]
    row["report"] = {"run_id": report["run_id"], "status": report["status"], "accuracy": metrics.get("accuracy"),
                     "cosine": (metrics.get("fidelity") or {}).get("cosine"),
                     "latency_p95": (metrics.get("latency_ms") or {}).get("p95"), "peak_rss_mb": metrics.get("peak_rss_mb")}
    return {**row, "status": "breached" if breaches else "ok", "breaches": breaches}


def _halt_reason(rows: list[dict], kind: str, failures: int, max_failures: int) -> Optional[str]:
    breaches = [b for row in rows for b in row["breaches"]]
    if breaches:
        return "; ".join(b.message for b in breaches)
    if failures > max_failures:
        failed = [f"{r['device']}: {r['error']}" for r in rows if r["status"] in ("failed", "unreachable")]
        return (f"{failures} device failure(s), more than --max-failures {max_failures}: " + "; ".join(failed[:3]))
    if kind == "canary" and not any(r["status"] == "ok" for r in rows):
        return "no canary device could be checked"
    return None


def _restore_rows(rows: list[dict], chosen: list[dict], devices: dict[str, Device], bundle: Bundle,
                  opts: dict) -> None:
    todo = [r for r in chosen if r["activated"] and r["before"] is not None]
    if not todo:
        return
    result = restore([devices[r["device"]] for r in todo], bundle.name, {r["device"]: r["before"] for r in todo},
                     **opts)
    by_name = {x.device: x for x in result.results}
    for row in todo:
        done = by_name[row["device"]]
        row["restored"] = done.ok
        row["restore_error"] = done.error
        row["after"] = {"current": done.detail.get("current"), "previous": done.detail.get("previous")} if done.ok else None


def _wave(store: Store, rollout_id: int, index: int, kind: str, devices: list[Device], bundle: Bundle, *,
          samples: Optional[int], step: Step, opts: dict) -> list[dict]:
    store.start_wave(rollout_id, index, kind, [d.name for d in devices])
    known = {d.name: store.known_run_ids(d.name) for d in devices}
    work = lambda t, d: _deploy(t, d, bundle, known[d.name], samples, step)  # noqa: E731
    result = fan_out(devices, work, action=kind, **opts)
    rows = [_judge(store, d, r, bundle) for d, r in zip(devices, result.results)]
    for d, row in zip(devices, rows):
        step(d.name, row["status"], None, None)
    return rows


def _record_rows(store: Store, rollout_id: int, index: int, rows: list[dict]) -> None:
    for row in rows:
        detail = {k: v for k, v in row.items() if k not in ("device", "breaches")}
        detail["breaches"] = [b.record() for b in row["breaches"]]
        store.add_event(rollout_id, index, row["device"], "deploy", row["status"] == "ok", detail)
        if "restored" in row:
            store.add_event(rollout_id, index, row["device"], "restore", row["restored"],
                            {"to": row["before"], "error": row.get("restore_error")})


# -- the rollout -----------------------------------------------------------------------------


def rollout(bundle: Bundle, devices: Sequence[Device], store: Store, *, canary: int = 1, batch: str = "25%",
            max_failures: int = 0, samples: Optional[int] = None, workers: int = WORKERS, step: Optional[Step] = None,
            on_wave: Optional[Callable[[int, str, list[str]], None]] = None, **connect_opts) -> RolloutResult:
    """Roll `bundle` out to the devices of its target; see the module docstring."""
    if max_failures < 0:
        raise ConfigError(f"--max-failures {max_failures}: must be 0 or more")
    chosen, skipped = for_target(devices, bundle.target)
    waves = plan_waves(chosen, canary, batch)
    options = {"canary": canary, "batch": batch, "max_failures": max_failures, "samples": samples,
               "devices": [d.name for d in chosen]}
    rollout_id = store.start_rollout(name=bundle.name, version=bundle.version, target=bundle.target,
                                     sha256=bundle.sha256, path=str(bundle.path), options=options)
    result = RolloutResult(rollout_id, {"name": bundle.name, "version": bundle.version, "target": bundle.target,
                                        "sha256": bundle.sha256}, skipped=skipped)
    step = step or (lambda *_: None)
    opts = {"workers": workers, **connect_opts}
    by_name = {d.name: d for d in chosen}
    failures = 0
    try:
        for index, (kind, members) in enumerate(waves, start=1):
            if on_wave:
                on_wave(index, kind, [d.name for d in members])
            rows = _wave(store, rollout_id, index, kind, members, bundle, samples=samples, step=step, opts=opts)
            failures += sum(r["status"] in ("failed", "unreachable") for r in rows)
            reason = _halt_reason(rows, kind, failures, max_failures)
            _restore_rows(rows, rows if reason else [r for r in rows if r["status"] != "ok"], by_name, bundle, opts)
            _record_rows(store, rollout_id, index, rows)
            result.breaches += [b for r in rows for b in r["breaches"]]
            result.waves.append({"wave": index, "kind": kind, "status": "halted" if reason else "passed",
                                 "devices": [_public(r) for r in rows]})
            store.finish_wave(rollout_id, index, "halted" if reason else "passed", reason)
            if reason:
                result.outcome = "halted"
                result.reason = (f"rollout of {bundle.name} {bundle.version} halted at wave {index} ({kind}): {reason}; "
                                 + _restored_summary(rows))
                break
        else:
            result.outcome = "completed-with-failures" if failures else "completed"
    except BaseException as exc:
        store.finish_rollout(rollout_id, "aborted", f"{type(exc).__name__}: {exc}")
        raise
    store.finish_rollout(rollout_id, result.outcome, result.reason)
    return result


def _restored_summary(rows: list[dict]) -> str:
    back = [f"{r['device']} -> {r['before']['current'] or 'nothing active'}" for r in rows if r.get("restored")]
    stuck = [f"{r['device']} ({r['restore_error']})" for r in rows if r.get("restored") is False]
    text = f"rolled back: {', '.join(back)}" if back else "nothing to roll back"
    return text + (f"; ROLLBACK FAILED on {', '.join(stuck)}: run `edgekit rollback` when they are back" if stuck else "")


def _public(row: dict) -> dict:
    out = {k: v for k, v in row.items() if k != "breaches"}
    out["breaches"] = [b.record() for b in row["breaches"]]
    return out
