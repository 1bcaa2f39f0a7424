"""`edgekit fleet status`: what each device runs (asked now) and what the store knows of it.

Per device: reachable or not, the current and previous version of every bundle name (from
the runner's status), the newest stored report's time, and, for a device that does not
answer, when it last did. Asking updates the store's record of the device.
"""

from __future__ import annotations

from typing import Optional, Sequence

from edgekit.device.upkeep import RUNTIMES
from edgekit.fleet.fanout import FleetResult
from edgekit.fleet.inventory import Device
from edgekit.fleet.push import status
from edgekit.store import Store

__all__ = ["fleet_status", "cannot_evaluate", "running_summary", "skew_text", "SKEW_SHOWN_S"]


def running_summary(models: dict) -> str:
    """'digits 1.0.1 (prev 1.0.0), kws 2.0 (prev -)' or 'nothing installed'; a name with no
    version active and none before (a first rollout put back) is 'kws: nothing active (2.0 installed)';
    a link to a version whose folder is gone says so."""
    return ", ".join(_one(n, m) for n, m in sorted(models.items())) or "nothing installed"


def _one(name: str, model: dict) -> str:
    installed = model.get("installed")
    if model.get("current") and isinstance(installed, list) and model["current"] not in installed:
        return f"{name} {model['current']} (not installed: its folder is gone; run edgekit fleet repair)"
    if model.get("current") or model.get("previous"):
        return f"{name} {model.get('current') or '-'} (prev {model.get('previous') or '-'})"
    installed = ", ".join(model.get("installed") or [])
    return f"{name}: nothing active" + (f" ({installed} installed)" if installed else "")


def cannot_evaluate(importable) -> Optional[str]:
    """What the device's Python lacks to evaluate a bundle ('numpy', 'a runtime: ...'), from
    its runner's status, or None (also when an older runner did not say)."""
    if not isinstance(importable, dict):
        return None
    lacks = [] if importable.get("numpy") else ["numpy"]
    if not any(importable.get(m) for m in RUNTIMES):
        lacks.append("a runtime (onnxruntime, ai-edge-litert or tflite-runtime)")
    return " and ".join(lacks) or None


SKEW_SHOWN_S = 60


def skew_text(skew: Optional[float]) -> Optional[str]:
    """'+365.0 d ahead' when a device's clock is more than a minute off this host's, else None."""
    if skew is None or abs(skew) <= SKEW_SHOWN_S:
        return None
    size, unit = next((abs(skew) / n, u) for n, u in ((86400, "d"), (3600, "h"), (60, "min"))
                      if abs(skew) >= n)
    return f"{size:.1f} {unit} {'ahead' if skew > 0 else 'behind'}"


def fleet_status(devices: Sequence[Device], store: Optional[Store] = None, **opts) -> FleetResult:
    """The runner's status of every device, with reachability and, given a store, the last
    report and last contact times; one result per device, unreachable ones included."""
    result = status(devices, **opts)
    by_name = {d.name: d for d in devices}
    last_report = store.last_report_times() if store else {}
    for r in result.results:
        device = by_name[r.device]
        reachable = r.reached  # a device whose runner failed still answered
        if store:
            store.touch_device(device.name, target=device.target, transport=device.transport, host=device.host,
                               reachable=reachable, error=r.error, clock_skew_s=r.detail.get("clock_skew_s"))
            if r.ok:  # the device's own word replaces what the store believed it runs
                store.observe(device.name, r.detail.get("models") or {}, source="status")
        models = r.detail.get("models") or {}
        r.detail["reachable"] = reachable
        r.detail["versions"] = {n: {"current": m.get("current"), "previous": m.get("previous")}
                                for n, m in sorted(models.items())}
        r.detail["running"] = running_summary(models) if r.ok else None
        r.detail["runner"] = (r.detail.get("runner_sha256") or "")[:12] or None
        r.detail["last_report_at"] = last_report.get(device.name)
        r.detail["clock"] = skew_text(r.detail.get("clock_skew_s"))
        r.detail["cannot_evaluate"] = cannot_evaluate(r.detail.get("importable"))
    if store:
        seen = {d["name"]: d for d in store.devices()}
        for r in result.results:
            r.detail["last_contact_at"] = (seen.get(r.device) or {}).get("last_contact_at")
    return result
