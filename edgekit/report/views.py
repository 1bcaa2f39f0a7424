"""Flat tables of a fleet analysis and of a calibration record.

csv writes one of these tables, the terminal shows them, json holds the same rows: each
section is a list of flat dicts whose keys are its columns.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from edgekit.report.analysis import METRICS
from edgekit.report.lmfleet import LM_METRICS

__all__ = ["SECTIONS", "ROWS_IN_FULL", "sections", "health_items", "needs_a_look", "latest_or_a_look", "at_scale", "cohort_flat", "to_csv", "load_calibration",
           "calibration_rows", "quality_key"]

SECTIONS = ("rows", "cohorts", "drift", "health", "rollouts", "compare")
# A report lists every device x version row up to this many. Past it (a fleet) the terminal
# lists the rows that need a look, and the HTML page each device's latest row and those that
# need a look; -f csv and json, or --version/--target, give every row. Nobody reads 10,000
# rows (rich lays them out in minutes, and they were most of a 5 MB page).
ROWS_IN_FULL = 200


def needs_a_look(row: dict) -> bool:
    """A device x version row that failed, drifts or breaks a budget."""
    return row["status"] != "ok" or bool(row["flags"]) or bool(row["over_budget"])


def latest_or_a_look(rows: list[dict]) -> list[dict]:
    """The rows a fleet's device table lists, in their order: each device's latest (the version
    it runs, else the newest it reported) and every row that needs a look."""
    latest: dict[tuple, int] = {}
    for i, r in enumerate(rows):
        key, was = (r["device"], r["name"]), latest.get((r["device"], r["name"]))
        if was is None or (r["current"], r["measured_at"]) >= (rows[was]["current"], rows[was]["measured_at"]):
            latest[key] = i
    chosen = set(latest.values()) | {i for i, r in enumerate(rows) if needs_a_look(r)}
    return [rows[i] for i in sorted(chosen)]


def at_scale(rows: list[dict], extremes: int = 5) -> list[dict]:
    """The rows a picture of a large fleet shows: those that need a look, and the `extremes`
    lowest in quality, slowest (p95) and largest (peak memory) of the rest, in their order."""
    def worst(key, low: bool) -> list[int]:
        measured = [i for i, r in enumerate(rows) if r.get(key) is not None]
        return sorted(measured, key=lambda i: rows[i][key] if low else -rows[i][key])[:extremes]
    chosen = {i for i, r in enumerate(rows) if needs_a_look(r)}
    quality = "accuracy" if any(r.get("accuracy") is not None for r in rows) else "cosine"
    chosen |= set(worst(quality, True) + worst("latency_p95", False) + worst("peak_rss_mb", False))
    return [rows[i] for i in sorted(chosen)]


def cohort_flat(cohort: dict) -> dict:
    out = {k: cohort[k] for k in ("name", "target", "version", "devices", "ok", "failed", "gate_failed",
                                 "accuracy_expected")}
    # a language model's cohort adds its own columns; a one-pass model's keeps its columns
    lm = any(m in cohort["metrics"] for m in LM_METRICS)
    for metric in METRICS + (LM_METRICS if lm else ()):
        spread = cohort["metrics"].get(metric) or {}
        for stat in ("median", "min", "max"):
            out[f"{metric}_{stat}"] = spread.get(stat)
    return out


def _item(category: str, device=None, name=None, target=None, version=None, detail=None, at=None) -> dict:
    return {"category": category, "device": device, "name": name, "target": target, "version": version,
            "detail": detail, "at": at}


def health_items(health: dict) -> list[dict]:
    """Rollout health as one table: what runs where, then everything that needs a look."""
    out = [_item("runs", ", ".join(v["devices"]), v["name"], v["target"], v["version"], f"{v['count']} device(s)")
           for v in health["versions"]]
    out += [_item("failed evaluation", e["device"], e["name"], None, e["version"], e["error"], e["measured_at"])
            for e in health["failed_evaluations"]]
    out += [_item("unreachable", d["device"], target=d["target"], detail=d["error"], at=d["last_contact_at"])
            for d in health["unreachable"]]
    out += [_item("never reported", d["device"], target=d["target"],
                  detail="unreachable" if d["reachable"] == 0 else "no report collected yet") for d in health["never_reported"]]
    out += [_item("clock skew", d["device"], target=d["target"],
                  detail=f"its clock is {abs(d['skew_s']):.0f} s {'ahead of' if d['skew_s'] > 0 else 'behind'} this "
                         "host's; reports are ordered by when this host received them")
            for d in health.get("clock_skew", ())]
    out += [_item("bad report", e["device"], detail=f"{e['source']}: {e['error']}", at=e["last_seen_at"])
            for e in health["bad_reports"]]
    out += [_item("failed gate", g["device"], g["name"], g["target"], g["version"],
                  f"rollout {g['rollout']} wave {g['wave']}: {g['message']}", g["at"]) for g in health["failed_gates"]]
    out += [_item("regression", _few(r["devices"]), r["name"], r["target"], r["version"], r["detail"], r["at"])
            for r in health.get("regressions", ())]
    return out


def _few(devices: list[str], shown: int = 3) -> str:
    """A version's devices, named up to `shown` (a fleet's version runs on thousands)."""
    more = len(devices) - shown
    return ", ".join(devices[:shown]) + (f" and {more} more" if more > 0 else "")


def _rollout_flat(r: dict) -> dict:
    return {**r, "devices_failed": ", ".join(r["devices_failed"])}


def _row_flat(row: dict) -> dict:
    return {**row, "over_budget": "; ".join(row["over_budget"]), "flags": "; ".join(row["flags"])}


def sections(result: dict) -> dict[str, list[dict]]:
    """section name -> flat rows, for every section the analysis has."""
    out = {"rows": [_row_flat(r) for r in result["rows"]],
           "cohorts": [cohort_flat(c) for c in result["cohorts"]],
           "drift": list(result["drift"]),
           "health": health_items(result["health"]),
           "rollouts": [_rollout_flat(r) for r in result["health"]["rollouts"]]}
    if "compare" in result:
        out["compare"] = list(result["compare"])
    return out


def to_csv(items: list[dict]) -> str:
    """CSV with a header of every key, in first-seen order; lists and dicts as JSON."""
    columns: dict[str, None] = {}
    for item in items:
        columns.update(dict.fromkeys(item))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for item in items:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in item.items()})
    return buf.getvalue()


# -- calibration records ------------------------------------------------------------------


def load_calibration(path: Path) -> dict:
    """A calibration.json written by `edgekit calibrate`; ConfigError naming the file otherwise."""
    from edgekit.calibration_record import CalibrationRecord

    return CalibrationRecord.read(path, "--calibration").dump()


def quality_key(record: dict) -> tuple[str, str]:
    """(flat column, label) of the quality a record measured: accuracy, a language model's
    perplexity increase, else fidelity cosine."""
    if record.get("metric") == "perplexity":
        return "ppl_increase", "perplexity increase"
    return ("accuracy", "accuracy") if record.get("metric") == "accuracy" else ("cosine", "fidelity cosine")


def calibration_rows(record: dict) -> list[dict]:
    """One flat row per candidate: recipe, verdict and measurements (a language model's too)."""
    from edgekit.calibration_record import CalibrationRecord
    from edgekit.report.lmfleet import lm_candidate

    typed = CalibrationRecord.of(record)
    rows = typed.rows()
    if typed.metric == "perplexity":
        for row, candidate in zip(rows, typed.candidates):
            row.update(lm_candidate(candidate))
    return rows
