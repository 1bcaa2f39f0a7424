"""`edgekit rollout`: a bundle to its devices in waves, each wave gated on the devices' reports.

    wave 1 (canary): the first N devices      then batches of SIZE devices (or PCT% of them)

For every device of a wave, in parallel (edgekit.fleet.deploy): note what runs now and
where the device would go back to, update the runner, upload and install the bundle,
activate it, evaluate it on the device, and fetch the report into the store. Then the
wave's gates (edgekit.fleet.gates) are applied to the reports, and failures (unreachable
devices, refused installs, bad reports) are counted against --max-failures over the
whole rollout. Carrying out a wave (and a restore) is the engine's job (deploy.Engine:
edgekit's own fan-out, or Ansible through ansible-runner); the plan, the judging, the
halt rule and the records are this module's, whatever the engine.

A broken gate, too many failures, or a canary with no device checked halts the rollout:
every device of that wave goes back to its last good state (the runner's `restore`: its
current and previous versions as they were, and nothing active where nothing was). The
new version stays installed there, inactive, for inspection, until `gc`. Earlier waves
passed their gates and keep the new version. A device that failed while failures are
tolerated is restored the same way, so every device either runs the new version,
installed and checked, or what it ran before.

"Before" is the device's last good state from the store (Store.last_good), never a
version that failed a gate or was activated and never gated: re-running a rollout that
was interrupted or halted does not take a failing version for the old one.

Interrupted (the first Ctrl-C or SIGTERM sets `cancel`): no device step starts after it,
an evaluation in progress is abandoned, every device whose new version was not yet gated
is restored, and the rollout is recorded as `interrupted`; `resume` goes on with it,
`abort` puts every device it touched back. Every rollout, wave and device event is
recorded in the store.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from edgekit.bundle import Bundle, read_bundle
from edgekit.errors import BundleError, ConfigError
from edgekit.fleet.deploy import Engine, NativeEngine, Step, Wave, aftermath, judge, restore
from edgekit.fleet.fanout import WORKERS, DeviceResult
from edgekit.fleet.gates import Breach
from edgekit.fleet.inventory import Device
from edgekit.fleet.push import for_target, step_timeout_for
from edgekit.store import Store
from edgekit.transport.base import Cancel

__all__ = ["RolloutResult", "check_max_failures", "parse_batch", "plan_waves", "rollout", "resume", "restore", "stored_rollout",
           "stored_devices", "halt_reason", "FAILED"]

_BATCH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")
FAILED = ("failed", "unreachable")  # device failures, counted against --max-failures


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


def check_max_failures(max_failures: int) -> None:
    """--max-failures counts devices: 0 or more (a plan and a rollout refuse alike)."""
    if max_failures < 0:
        raise ConfigError(f"--max-failures {max_failures}: must be 0 or more")


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
    outcome: str = "running"  # completed | completed-with-failures | halted | interrupted | failed
    reason: Optional[str] = None
    waves: list[dict] = field(default_factory=list)
    skipped: list[DeviceResult] = field(default_factory=list)
    breaches: list[Breach] = field(default_factory=list)
    resumed: bool = False
    not_started: list[str] = field(default_factory=list)  # devices of waves never started (halted, interrupted)

    @property
    def devices(self) -> list[dict]:
        return [d for w in self.waves for d in w["devices"]]

    def record(self) -> dict:
        return {"rollout_id": self.rollout_id, "bundle": self.bundle, "outcome": self.outcome, "reason": self.reason,
                "resumed": self.resumed, "breaches": [b.record() for b in self.breaches], "waves": self.waves,
                "not_started": self.not_started, "skipped": [r.record() for r in self.skipped]}


@dataclass
class _Run:
    """What a rollout carries from wave to wave."""

    bundle: Bundle
    store: Store
    result: RolloutResult
    devices: dict[str, Device]
    max_failures: int
    samples: Optional[int]
    step: Step
    on_wave: Optional[Callable[[int, str, list[str]], None]]
    cancel: Optional[Cancel]
    engine: Engine
    step_timeout: float = 300.0
    failures: int = 0
    done: set = field(default_factory=set)  # devices that need no more work (a resumed rollout)

    @property
    def rollout_id(self) -> int:
        return self.result.rollout_id


# -- one wave --------------------------------------------------------------------------------


def halt_reason(rows: list[dict], kind: str, failures: int, max_failures: int) -> Optional[str]:
    """Why a wave halts the rollout (its judged rows; `failures` over the whole rollout), or None."""
    breaches = [b for row in rows for b in row["breaches"]]
    if breaches:
        return "; ".join(b.message for b in breaches)
    if failures > max_failures:
        failed = [f"{r['device']}: {r['error']}" for r in rows if r["status"] in FAILED]
        return (f"{failures} device failure(s), more than --max-failures {max_failures}: " + "; ".join(failed[:3]))
    if kind == "canary" and rows and not any(r["status"] in ("ok", "interrupted", "not started") for r in rows):
        return "no canary device could be checked"
    return None


def _restore_rows(run: _Run, index: int, todo: list[dict]) -> None:
    """Put each row's device back to its `before`, and tell the store."""
    todo = [r for r in todo if r["activated"] and r["before"] is not None]
    if not todo:
        return
    name = run.bundle.name
    done = run.engine.restore([run.devices[r["device"]] for r in todo], name, {r["device"]: r["before"] for r in todo})
    by_name = {x.device: x for x in done.results}
    for row in todo:
        back = by_name[row["device"]]
        row["restored"] = back.ok
        row["restore_error"] = back.error
        after = {"current": back.detail.get("current"), "previous": back.detail.get("previous")} if back.ok else None
        row["after"] = after
        run.store.record_change(row["device"], name, "restore", ok=back.ok, before=None, after=after,
                                rollout_id=run.rollout_id, detail={"to": row["before"], "error": back.error})
        run.store.add_event(run.rollout_id, index, row["device"], "restore", back.ok,
                            {"to": row["before"], "error": back.error})


def _record_rows(run: _Run, index: int, rows: list[dict]) -> None:
    with run.store.batch():  # a wave's records in one commit
        for row in rows:
            detail = {k: v for k, v in row.items() if k not in ("device", "breaches")}
            detail["breaches"] = [b.record() for b in row["breaches"]]
            run.store.add_event(run.rollout_id, index, row["device"], "deploy", row["status"] == "ok", detail)
            if row["status"] == "ok" and "restored" not in row:  # passed its gates and keeps the new version
                before = row["before"] or {}
                run.store.record_change(row["device"], run.bundle.name, "deploy", ok=True, before=before,
                                        gated=True, rollout_id=run.rollout_id,
                                        after={"current": run.bundle.version, "previous": before.get("current")})


def _wave(run: _Run, index: int, kind: str, members: list[Device]) -> Optional[str]:
    """Deploy, judge, restore and record one wave; the halt reason, or None."""
    todo = [d for d in members if d.name not in run.done]
    run.store.start_wave(run.rollout_id, index, kind, [d.name for d in members])
    if run.on_wave:
        run.on_wave(index, kind, [d.name for d in todo])
    known = {d.name: run.store.known_run_ids(d.name) for d in todo}
    wave = Wave(run.bundle, run.store, run.rollout_id, kind, known, run.samples, run.step, run.cancel,
                run.step_timeout)
    results = run.engine.deploy(wave, todo)
    with run.store.batch():  # judging stores each device's contact and reports: one commit for the wave
        rows = [judge(run.store, d, r, run.bundle) for d, r in zip(todo, results)]
    for row in rows:
        run.step(row["device"], row["status"], None, None)
    run.failures += sum(r["status"] in FAILED for r in rows)
    reason = halt_reason(rows, kind, run.failures, run.max_failures)
    interrupted = run.cancel is not None and run.cancel.is_set()
    # Halted: the whole wave goes back. Otherwise every device whose new version is not
    # checked (failed, interrupted) goes back, and those that passed keep it.
    _restore_rows(run, index, rows if reason else [r for r in rows if r["status"] != "ok"])
    _record_rows(run, index, rows)
    run.result.breaches += [b for r in rows for b in r["breaches"]]
    for row in rows:
        row["now"] = aftermath(row, run.bundle.version, run.rollout_id)
    status = "halted" if reason else "interrupted" if interrupted else "passed"
    run.result.waves.append({"wave": index, "kind": kind, "status": status, "devices": [_public(r) for r in rows]})
    run.store.finish_wave(run.rollout_id, index, status, reason or ("interrupted" if interrupted else None))
    return reason


# -- the rollout -----------------------------------------------------------------------------


def rollout(bundle: Bundle, devices: Sequence[Device], store: Store, *, canary: int = 1, batch: str = "25%",
            max_failures: int = 0, samples: Optional[int] = None, workers: int = WORKERS, step: Optional[Step] = None,
            on_wave: Optional[Callable[[int, str, list[str]], None]] = None, cancel: Optional[Cancel] = None,
            step_timeout: Optional[float] = None, engine: Optional[Engine] = None, **connect_opts) -> RolloutResult:
    """Roll `bundle` out to the devices of its target; see the module docstring. A device
    step that takes longer than `step_timeout` (default: step_timeout_for(bundle)) is a
    failure of that device. `engine` carries out the waves (default: edgekit's own, with
    `workers` and `connect_opts`)."""
    check_max_failures(max_failures)
    chosen, skipped = for_target(devices, bundle.target)
    waves = plan_waves(chosen, canary, batch)
    step_timeout = step_timeout or step_timeout_for(bundle)
    options = {"canary": canary, "batch": batch, "max_failures": max_failures, "samples": samples,
               "step_timeout": step_timeout, "devices": [d.name for d in chosen]}
    rollout_id = store.start_rollout(name=bundle.name, version=bundle.version, target=bundle.target,
                                     sha256=bundle.sha256, path=str(bundle.path), options=options)
    result = RolloutResult(rollout_id, _bundle_info(bundle), skipped=skipped)
    run = _Run(bundle, store, result, {d.name: d for d in chosen}, max_failures, samples, step or (lambda *_: None),
               on_wave, cancel, engine or NativeEngine(workers, **connect_opts), step_timeout)
    return _go(run, waves)


def resume(rollout_id: int, devices: Sequence[Device], store: Store, *, workers: int = WORKERS,
           step: Optional[Step] = None, on_wave: Optional[Callable[[int, str, list[str]], None]] = None,
           cancel: Optional[Cancel] = None, engine: Optional[Engine] = None, **connect_opts) -> RolloutResult:
    """Go on with an interrupted rollout: the same bundle and waves; devices done are skipped."""
    record, bundle = _stored(store, rollout_id, "--resume", ("interrupted",))
    options = record["options"]
    chosen = stored_devices(record, devices, "--resume")
    waves = plan_waves(chosen, options["canary"], options["batch"])
    result = RolloutResult(rollout_id, _bundle_info(bundle), resumed=True)
    run = _Run(bundle, store, result, {d.name: d for d in chosen}, options["max_failures"], options.get("samples"),
               step or (lambda *_: None), on_wave, cancel, engine or NativeEngine(workers, **connect_opts),
               options.get("step_timeout") or step_timeout_for(bundle))
    finished = {w["wave"] for w in record["waves"] if w["status"] == "passed"}
    last = {e["device"]: e for e in record["events"] if e["event"] == "deploy"}
    run.done = {d for w in record["waves"] if w["wave"] in finished for d in w["devices"]} | \
        {d for d, e in last.items() if e["ok"]}
    run.failures = sum(1 for e in record["events"] if e["event"] == "deploy" and e["wave"] in finished
                       and e["detail"].get("status") in FAILED)
    store.resume_rollout(rollout_id)
    return _go(run, waves)


def _go(run: _Run, waves: list[tuple[str, list[Device]]]) -> RolloutResult:
    result, bundle = run.result, run.bundle
    try:
        for index, (kind, members) in enumerate(waves, start=1):
            if all(d.name in run.done for d in members):
                continue
            reason = _wave(run, index, kind, members)
            rows = result.waves[-1]["devices"]
            if reason:
                result.outcome = "halted"
                result.reason = (f"rollout of {bundle.name} {bundle.version} halted at wave {index} ({kind}): {reason}; "
                                 + _restored_summary(rows))
            elif run.cancel is not None and run.cancel.is_set():
                result.outcome = "interrupted"
                result.reason = (f"rollout {run.rollout_id} of {bundle.name} {bundle.version} interrupted in wave "
                                 f"{index} ({kind}); " + _restored_summary(rows))
            if result.outcome in ("halted", "interrupted"):
                result.not_started = [d.name for _, later in waves[index:] for d in later if d.name not in run.done]
                break
        else:
            reached = {d["device"] for d in result.devices if d["status"] == "ok"} | run.done
            result.outcome = ("failed" if not reached else "completed-with-failures" if run.failures else "completed")
            if not reached:
                result.reason = f"rollout of {bundle.name} {bundle.version} reached no device"
    except KeyboardInterrupt:  # a second interrupt: stop at once, say what is known
        run.store.finish_rollout(run.rollout_id, "interrupted", "stopped at once by a second interrupt; devices "
                                 "still at work may run the new version unchecked: resume or abort this rollout")
        raise
    run.store.finish_rollout(run.rollout_id, result.outcome, result.reason)
    return result


# -- reading a rollout back from the store ---------------------------------------------------


def stored_rollout(store: Store, rollout_id: int, flag: str, statuses: tuple[str, ...]) -> dict:
    """The store's record of a rollout in one of `statuses`; ConfigError naming `flag` otherwise."""
    record = store.rollout(rollout_id)
    if record is None:
        known = ", ".join(str(r["id"]) for r in store.rollouts()[-5:]) or "none"
        raise ConfigError(f"{flag} {rollout_id}: no such rollout in {store.path} (latest: {known})")
    if record["status"] not in statuses:
        raise ConfigError(f"{flag} {rollout_id}: the rollout is {record['status']}; {flag} takes an "
                          f"{' or '.join(statuses)} rollout")
    return record


def _stored(store: Store, rollout_id: int, flag: str, statuses: tuple[str, ...]) -> tuple[dict, Bundle]:
    record = stored_rollout(store, rollout_id, flag, statuses)
    try:
        bundle = read_bundle(record["bundle_path"])
    except BundleError as exc:
        raise ConfigError(f"{flag} {rollout_id}: its bundle cannot be read ({exc}); put it back where it was") from exc
    if bundle.sha256 != record["bundle_sha256"]:
        raise ConfigError(f"{flag} {rollout_id}: {record['bundle_path']} changed since the rollout started "
                          f"(sha256 {bundle.sha256[:12]}.., was {record['bundle_sha256'][:12]}..)")
    return record, bundle


def stored_devices(record: dict, devices: Sequence[Device], flag: str) -> list[Device]:
    by_name = {d.name: d for d in devices}
    names = record["options"]["devices"]
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ConfigError(f"{flag} {record['id']}: device {missing[0]} of the rollout is not in the inventory "
                          "given; give the inventory the rollout was started with")
    return [by_name[n] for n in names]


def _bundle_info(bundle: Bundle) -> dict:
    return {"name": bundle.name, "version": bundle.version, "target": bundle.target, "sha256": bundle.sha256}


def _restored_summary(rows: list[dict]) -> str:
    back = [f"{r['device']} -> {(r['before'] or {}).get('current') or 'nothing active'}"
            for r in rows if r.get("restored")]
    stuck = [r["device"] for r in rows if r.get("restored") is False]
    text = f"put back: {', '.join(back)}" if back else "no device ran the new version"
    return text + (f"; could not put back {', '.join(stuck)} (see each device's line)" if stuck else "")


def _public(row: dict) -> dict:
    out = {k: v for k, v in row.items() if k != "breaches"}
    out["breaches"] = [b.record() for b in row["breaches"]]
    return out
