"""The gates a rollout applies to each device's report, with the bundle's own budgets.

The budgets come from the target snapshot inside the bundle's manifest (what the model
was calibrated and packaged against), not from today's targets/ folder, and the expected
accuracy from the manifest's expected host metrics: the host's copy of the manifest is
trusted, the device's report is only measurements.

    evaluation      the evaluation failed on the device (the model did not load or run)
    accuracy_drop   expected host accuracy - device accuracy  >  max_accuracy_drop
    drop_vs_fp32    FP32 baseline accuracy - device accuracy  >  max_accuracy_drop (when the
                    manifest knows the baseline: a model quantized carelessly by hand and
                    packaged without calibrate still has to keep the target's budget)
    fidelity_cosine device cosine to the FP32 outputs           <  min_fidelity_cosine
    latency_p95     device p95 latency (ms)                    >  max_latency_ms_p95
    peak_rss_mb     device peak resident memory (MiB)          >  max_peak_rss_mb
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

__all__ = ["Breach", "check_report", "budgets_of"]


@dataclass(frozen=True)
class Breach:
    device: str
    gate: str
    measured: Optional[float]
    limit: Optional[float]
    message: str

    def record(self) -> dict:
        return asdict(self)


def budgets_of(manifest: dict) -> dict:
    target = manifest.get("target") or {}
    return dict(target.get("budgets") or {}) if isinstance(target, dict) else {}


def _num(value) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _over(device: str, gate: str, measured: Optional[float], limit: float, unit: str, what: str,
          lower_is_better: bool = True) -> Optional[Breach]:
    if measured is None:
        return Breach(device, gate, None, limit, f"{device}: {gate}: the report has no {what}")
    broke = measured > limit if lower_is_better else measured < limit
    if not broke:
        return None
    sign = ">" if lower_is_better else "<"
    return Breach(device, gate, measured, limit,
                  f"{device}: {gate}: {what} {measured:.6g}{unit} {sign} budget {limit:.6g}{unit}")


def check_report(device: str, report: dict, manifest: dict) -> list[Breach]:
    """Every gate `report` (a validated schema-1 report) breaks; [] when it passes."""
    if report["status"] != "ok":
        return [Breach(device, "evaluation", None, None, f"{device}: evaluation failed on the device: {report['error']}")]
    budgets, expected, metrics = budgets_of(manifest), manifest.get("expected") or {}, report["metrics"]
    found = []
    want_acc, drop_limit = _num(expected.get("accuracy")), _num(budgets.get("max_accuracy_drop"))
    if want_acc is not None and drop_limit is not None:
        got = _num(metrics.get("accuracy"))
        drop = None if got is None else want_acc - got
        breach = _over(device, "accuracy_drop", drop, drop_limit, "", "accuracy drop")
        if breach and got is not None:
            breach = Breach(device, "accuracy_drop", drop, drop_limit,
                            f"{breach.message} (device {got:.4f}, host {want_acc:.4f})")
        found.append(breach)
    baseline = _num(expected.get("baseline_accuracy"))
    if baseline is not None and drop_limit is not None and _num(metrics.get("accuracy")) is not None:
        got = _num(metrics["accuracy"])
        breach = _over(device, "drop_vs_fp32", baseline - got, drop_limit, "", "accuracy drop against FP32")
        found.append(breach and Breach(device, "drop_vs_fp32", baseline - got, drop_limit,
                                       f"{breach.message} (device {got:.4f}, FP32 {baseline:.4f})"))
    cosine_min = _num(budgets.get("min_fidelity_cosine"))
    if want_acc is None and cosine_min is not None and expected.get("fidelity") is not None:
        cosine = _num((metrics.get("fidelity") or {}).get("cosine"))
        found.append(_over(device, "fidelity_cosine", cosine, cosine_min, "", "fidelity cosine", lower_is_better=False))
    p95_limit = _num(budgets.get("max_latency_ms_p95"))
    if p95_limit is not None:
        p95 = _num((metrics.get("latency_ms") or {}).get("p95"))
        found.append(_over(device, "latency_p95", p95, p95_limit, " ms", "p95 latency"))
    rss_limit = _num(budgets.get("max_peak_rss_mb"))
    if rss_limit is not None:
        found.append(_over(device, "peak_rss_mb", _num(metrics.get("peak_rss_mb")), rss_limit, " MiB", "peak RSS"))
    return [b for b in found if b is not None]
