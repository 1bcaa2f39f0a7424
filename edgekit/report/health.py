"""Rollout health: what runs where, what failed, which devices are silent, how rollouts ended.

Plain data in (the rows of edgekit.report.analysis, the store's devices, rollouts with their
waves and events, collect errors), plain data out, for every output format alike.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Optional

__all__ = ["rollout_health", "LAST_ROLLOUTS"]

LAST_ROLLOUTS = 5
CLOCK_SKEW_S = 60  # a device clock further off than this is shown (this host's clock orders everything)


def _versions(running_rows: list[dict]) -> list[dict]:
    running: dict[tuple, list[str]] = defaultdict(list)
    for row in running_rows:
        running[(row["name"], row["target"] or "", row["version"])].append(row["device"])
    return [{"name": n, "target": t, "version": v, "count": len(d), "devices": sorted(d)}
            for (n, t, v), d in sorted(running.items())]


def _rollout_summary(r: dict) -> dict:
    deploys = [e for e in r.get("events") or () if e["event"] == "deploy"]
    waves = r.get("waves") or ()
    return {"id": r["id"], "name": r["name"], "version": r["version"], "target": r["target"],
            "status": r["status"], "reason": r.get("reason"), "started_at": r.get("started_at"),
            "finished_at": r.get("finished_at"), "waves": len(waves),
            "halted_wave": next((f"{w['wave']} ({w['kind']})" for w in waves if w["status"] == "halted"), None),
            "devices_ok": sum(bool(e["ok"]) for e in deploys),
            "devices_failed": sorted({e["device"] for e in deploys if not e["ok"]})}


def _breaches(rollouts: Iterable[dict]) -> list[dict]:
    out = []
    for r in rollouts:
        for e in r.get("events") or ():
            for b in (e.get("detail") or {}).get("breaches") or ():
                out.append({"rollout": r["id"], "name": r["name"], "version": r["version"], "target": r["target"],
                            "wave": e.get("wave"), "device": e["device"], "gate": b.get("gate"),
                            "message": b.get("message"), "at": e.get("at")})
    return out


def rollout_health(rows: list[dict], devices: Iterable[dict] = (), rollouts: Iterable[dict] = (),
                   collect_errors: Iterable[dict] = (), *, reported: Optional[set] = None,
                   running: Optional[list[dict]] = None, last: int = LAST_ROLLOUTS) -> dict:
    """Versions in use (`running`: [{device, name, target, version}], by default the rows that
    run now), failed evaluations, unreachable and silent devices (none of their reports in
    `reported`, by default the rows' devices), bad report files, broken gates, and the last
    `last` rollouts with their outcomes."""
    devices, rollouts = list(devices), sorted(rollouts, key=lambda r: r["id"])
    reported = {r["device"] for r in rows} if reported is None else reported
    return {
        "devices": len({d["name"] for d in devices} | reported),
        "versions": _versions(running if running is not None else [r for r in rows if r["current"]]),
        "failed_evaluations": [{"device": r["device"], "name": r["name"], "version": r["version"],
                                "error": r["error"], "measured_at": r["measured_at"]}
                               for r in rows if r["current"] and r["status"] != "ok"],
        "unreachable": [{"device": d["name"], "target": d.get("target"), "last_contact_at": d.get("last_contact_at"),
                         "error": d.get("last_error")} for d in devices if d.get("reachable") == 0],
        "never_reported": [{"device": d["name"], "target": d.get("target"), "reachable": d.get("reachable"),
                            "error": d.get("last_error")} for d in devices if d["name"] not in reported],
        "clock_skew": [{"device": d["name"], "target": d.get("target"), "skew_s": d["clock_skew_s"]}
                       for d in devices if abs(d.get("clock_skew_s") or 0) > CLOCK_SKEW_S],
        "bad_reports": [{"device": e["device"], "source": e["source"], "error": e["error"],
                         "last_seen_at": e.get("last_seen_at")} for e in collect_errors],
        "failed_gates": _breaches(rollouts),
        "rollouts": [_rollout_summary(r) for r in rollouts[-last:]][::-1],
    }
