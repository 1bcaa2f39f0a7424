"""Fleet analysis: what the stored device reports say per device, per cohort and per version.

Pure functions over plain data, so that they can be tried on reports without a store:

    reports   [{"device", "report", "collected_at"?}]   report: a DeviceReport (edgekit.device_report),
              or the JSON object of one as the store keeps it (collect validated it), with
              its flat row as `columns` (edgekit.report.fleetdata reads them so)
    devices   [{"name", "target", "reachable", "last_contact_at", "last_error"}]
    rollouts  [{"id", "name", "version", "target", "status", "reason", ..., "waves", "events"}]
    budgets   {target: {"max_latency_ms_p95": ..., "max_peak_rss_mb": ...}}

A cohort is the devices that ran the same bundle (name, target, version): they should
measure alike; a device that does not drifts (edgekit.report.drift). edgekit.report.fleetdata
reads these from the store.
"""

from __future__ import annotations

import math
from collections import defaultdict
from statistics import median
from typing import Iterable, Optional

from edgekit.report.drift import MEASURED, DriftRules, cohort_key, find_drift
from edgekit.report.lmfleet import LM_METRICS, is_lm, lm_over_budget, lm_row

__all__ = ["DriftRules", "METRICS", "device_rows", "cohort_summaries", "compare_versions", "running_versions",
           "gate_verdicts", "analyse", "MEASURED"]

# The per-device numbers that cohorts summarise and --compare compares, in display order.
METRICS = ("accuracy", "drop", "drop_fp32", "top1_agreement", "cosine", "latency_p50", "latency_p95", "peak_rss_mb",
           "load_ms", "model_mb")


def _prepared(reports: Iterable[dict]) -> list[dict]:
    """Each item with its report as a JSON object and its flat row (`columns`), worked out
    once here unless the item came with them."""
    from edgekit.report_row import report_columns

    out = []
    for item in reports:
        if "columns" not in item:
            report = item["report"]
            record = report if isinstance(report, dict) else report.record()
            item = {**item, "report": record, "columns": report_columns(record)}
        out.append(item)
    return out


def _when(item: dict) -> str:
    """When the host received a report (its clock, never the device's: a device clock a year
    ahead must not make an old run look new); the device's time only for reports that came
    without it."""
    columns = item["columns"]
    return item.get("collected_at") or columns["finished_at"] or columns["started_at"] or ""


def _num(value) -> Optional[float]:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def running_versions(reports: Iterable[dict], rollouts: Iterable[dict] = (),
                     models: Iterable[dict] = ()) -> dict[tuple[str, str], Optional[str]]:
    """(device, bundle name) -> the version it runs: what the store was last told by a
    command that changed or saw it (`models`: the store's device_models rows), else the
    latest of its reports (a device evaluates what it activated) and of the rollouts'
    deploys and restores (a store written before it kept device_models)."""
    seen: dict[tuple[str, str], tuple[str, str]] = {}

    def note(at: str, device: str, name: str, version: Optional[str]) -> None:
        if version and at >= seen.get((device, name), ("", ""))[0]:
            seen[(device, name)] = (at, version)

    for item in _prepared(reports):
        note(_when(item), item["device"], item["columns"]["name"], item["columns"]["version"])
    for r in rollouts:
        for e in r.get("events") or ():
            detail = e.get("detail") or {}
            if e["event"] == "deploy" and e.get("ok"):
                note(e["at"], e["device"], r["name"], r["version"])
            elif e["event"] == "restore" and e.get("ok"):
                note(e["at"], e["device"], r["name"], (detail.get("to") or {}).get("current"))
    running: dict[tuple[str, str], Optional[str]] = {key: version for key, (_, version) in seen.items()}
    running.update({(m["device"], m["name"]): m["current"] for m in models})
    return running


def _row(item: dict, runs: int, device: dict, budget: dict, limits: tuple) -> dict:
    """`limits`: the target's (latency_budget_p95, rss_budget_mb), read from `budget` once a target."""
    r = item["columns"]
    acc, expected, baseline = r["accuracy"], r["accuracy_expected"], r["baseline_accuracy"]
    measured_at = _when(item)
    return {
        "device": item["device"], "name": r["name"], "target": r["target"] or device.get("target"),
        "version": r["version"], "current": False, "precision": r["precision"],
        "runtime": r["runtime"], "runtime_version": r["runtime_version"], "arch": r["arch"], "python": r["python"],
        "status": r["status"], "error": r["error"],
        "accuracy": acc, "accuracy_expected": expected,
        "drop": None if acc is None or expected is None else expected - acc,
        "baseline_accuracy": baseline, "drop_fp32": None if acc is None or baseline is None else baseline - acc,
        "top1_agreement": r["top1_agreement"], "top1_expected": r["top1_expected"],
        "cosine": r["cosine"], "cosine_expected": r["cosine_expected"],
        "n": r["n"], "n_expected": r["n_expected"],
        "latency_p50": r["latency_p50"], "latency_p95": r["latency_p95"],
        "latency_budget_p95": limits[0],
        "peak_rss_mb": r["peak_rss_mb"], "rss_budget_mb": limits[1],
        "load_ms": r["load_ms"], "model_mb": r["model_mb"],
        "runs": runs, "run_id": r["run_id"], "measured_at": measured_at, "device_time": r["finished_at"],
        "last_seen": max(measured_at, device.get("last_contact_at") or ""),
        "over_budget": [], "flags": [], **lm_row(item["report"], r, budget),
    }


def _over_budget(budget: dict):
    """row -> what the row's own numbers break of its target's latency and memory budgets
    (`budget`: the target's; made once a target)."""
    from edgekit.budgets import Measured, checker

    judge, lm_judge = checker(budget, gates=("latency_p95", "peak_rss_mb")), lm_over_budget(budget)

    def over(row: dict) -> list[str]:
        measured = Measured(latency_p95=row["latency_p95"], peak_rss_mb=row["peak_rss_mb"])
        return [b.sentence() for b in judge(measured)] + lm_judge(row)

    return over


def gate_verdicts(rollouts: Iterable[dict]) -> dict[tuple[str, str, str], list[str]]:
    """(device, name, version) -> the gate messages of its latest rollout deploy ([] when it
    passed): a version whose report broke a gate is a failed version there, whatever the
    device said of its own run."""
    latest: dict[tuple[str, str, str], tuple[str, int, list[str]]] = {}
    for r in rollouts:
        for e in r.get("events") or ():
            detail = e.get("detail") or {}
            if e["event"] != "deploy" or detail.get("status") not in ("ok", "breached"):
                continue
            key = (e["device"], r["name"], r["version"])
            stamp = (e.get("at") or "", e.get("id") or 0)
            if key not in latest or stamp >= latest[key][:2]:
                latest[key] = (*stamp, [b.get("message") or b.get("gate") for b in detail.get("breaches") or ()])
    return {key: messages for key, (_, _, messages) in latest.items()}


def device_rows(reports: Iterable[dict], devices: Iterable[dict] = (), budgets: Optional[dict] = None,
                running: Optional[dict] = None, gates: Optional[dict] = None) -> list[dict]:
    """One row per device and bundle version, from its newest report of that version;
    status `gate failed` where the version's latest rollout judged it over its budgets."""
    reports = _prepared(reports)
    newest: dict[tuple, tuple[str, dict]] = {}
    runs: dict[tuple, int] = defaultdict(int)
    for item in reports:
        key, when = (item["device"], item["columns"]["name"], item["columns"]["version"]), _when(item)
        runs[key] += 1
        if key not in newest or when >= newest[key][0]:
            newest[key] = (when, item)
    info = {d["name"]: d for d in devices}
    running = running_versions(reports) if running is None else running
    rows, per_target = [], {}
    for key, (_, item) in newest.items():
        device = info.get(item["device"], {})
        target = item["columns"]["target"] or device.get("target")
        if target not in per_target:  # a target's budgets read, and their judge made, once
            budget = (budgets or {}).get(target) or {}
            limits = (_num(budget.get("max_latency_ms_p95")), _num(budget.get("max_peak_rss_mb")))
            per_target[target] = (budget, limits, _over_budget(budget))
        budget, limits, over_budget = per_target[target]
        row = _row(item, runs[key], device, budget, limits)
        row["current"] = running.get((row["device"], row["name"])) == row["version"]
        row["over_budget"] = over_budget(row)
        broken = (gates or {}).get((row["device"], row["name"], row["version"]))
        if broken and row["status"] == "ok":  # a failed evaluation stays `failed`, with the device's error
            row["status"], row["error"] = "gate failed", "; ".join(broken)
        rows.append(row)
    return sorted(rows, key=lambda r: (r["name"], r["target"] or "", r["version"], r["device"]))


def _spread(values: list[float]) -> dict:
    return {"median": median(values), "min": min(values), "max": max(values), "n": len(values)}


def cohort_summaries(rows: Iterable[dict]) -> list[dict]:
    """Per (name, target, version): devices, how many measured (`ok`, those that broke a gate
    included and also counted in `gate_failed`), median/min/max of each metric."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[cohort_key(row)].append(row)
    out = []
    for (name, target, version), members in sorted(groups.items()):
        ok = [r for r in members if r["status"] in MEASURED]
        metrics = {}
        lm = LM_METRICS if any(is_lm(r) for r in ok) else ()  # a one-pass model's rows have no LM columns
        for metric in METRICS + lm:
            values = [v for r in ok if (v := r.get(metric)) is not None]
            if values:
                metrics[metric] = _spread(values)
        out.append({"name": name, "target": target, "version": version, "devices": len(members),
                    "ok": len(ok), "failed": len(members) - len(ok),
                    "gate_failed": sum(r["status"] == "gate failed" for r in members),
                    "accuracy_expected": next((r["accuracy_expected"] for r in members
                                               if r["accuracy_expected"] is not None), None),
                    "metrics": metrics})
    return out


def compare_versions(cohorts: list[dict], v1: str, v2: str) -> list[dict]:
    """Per (name, target) with both versions: each metric's cohort median before and after."""
    by_key = {(c["name"], c["target"], c["version"]): c for c in cohorts}
    out = []
    for name, target in sorted({(c["name"], c["target"]) for c in cohorts}):
        a, b = by_key.get((name, target, v1)), by_key.get((name, target, v2))
        if not a or not b:
            continue
        for metric in METRICS + LM_METRICS:
            x, y = (a["metrics"].get(metric) or {}).get("median"), (b["metrics"].get(metric) or {}).get("median")
            if x is None and y is None:
                continue
            change = None if x is None or y is None else y - x
            out.append({"name": name, "target": target, "metric": metric, "v1": v1, "v2": v2,
                        "before": x, "after": y, "change": change,
                        "change_pct": None if change is None or not x else 100 * change / abs(x),
                        "devices_before": a["ok"], "devices_after": b["ok"]})
    return out


def _select(items: Iterable[dict], **given) -> list[dict]:
    wanted = {k: v for k, v in given.items() if v is not None}
    if not wanted:
        return list(items)
    return [i for i in items if all(i.get(k) == v for k, v in wanted.items())]


def _running_rows(running: dict, rows: list[dict], devices: Iterable[dict], *, name: Optional[str],
                  target: Optional[str]) -> list[dict]:
    """[{device, name, target, version}] of what runs where, reported or not."""
    targets = {d["name"]: d.get("target") for d in devices}
    targets.update({r["device"]: r["target"] for r in rows if r["target"]})
    out = [{"device": d, "name": n, "target": targets.get(d), "version": v}
           for (d, n), v in sorted(running.items()) if v]
    return _select(out, name=name, target=target)


def analyse(reports: list[dict], devices: list[dict] = (), rollouts: list[dict] = (), *,
            models: list[dict] = (), budgets: Optional[dict] = None, collect_errors: list[dict] = (), rules: DriftRules = DriftRules(),
            name: Optional[str] = None, version: Optional[str] = None, target: Optional[str] = None,
            compare: Optional[tuple[str, str]] = None) -> dict:
    """Everything `edgekit report` shows: rows, cohorts, drift, health (and compare), for the
    reports of bundle `name`, `version` and `target` when given. What runs where is worked out
    from all reports and rollouts, so that a filter does not make an old version look current."""
    from edgekit.report.health import rollout_health
    from edgekit.report.regressions import version_regressions

    reports = _prepared(reports)
    running = running_versions(reports, rollouts, models)
    every = device_rows(reports, devices, budgets, running, gate_verdicts(rollouts))
    rows = _select(every, name=name, version=None if compare else version, target=target)
    drift = find_drift(rows, rules)
    cohorts = cohort_summaries(rows)
    in_scope = _select(devices, target=target)
    scope_names = {d["name"] for d in in_scope}
    health = rollout_health(rows, in_scope, _select(rollouts, name=name, version=version, target=target),
                            [e for e in collect_errors if target is None or e["device"] in scope_names],
                            reported={r["device"] for r in _select(every, name=name)},
                            running=_running_rows(running, every, devices, name=name, target=target))
    scope = _select(every, name=name, target=target)  # every version: each against the one before it
    health["regressions"] = version_regressions(scope, cohorts if len(scope) == len(rows) else cohort_summaries(scope),
                                                budgets)
    result = {"rows": rows, "cohorts": cohorts, "drift": drift, "health": health,
              "known": {key: sorted({r[key] or "" for r in every}) for key in ("name", "version", "target")}}
    if compare:
        result["compare"] = compare_versions(cohorts, *compare)
    return result
