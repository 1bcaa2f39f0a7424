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
    ppl_increase    a language model's perplexity / FP32's - 1 >  max_ppl_increase (FP32's is
                    the host's, carried in the bundle's evaluation set)
    decode_tokens_per_s  generated tokens per second            <  min_decode_tokens_per_s
    ttft_ms         time to the first token (ms)               >  max_ttft_ms
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from edgekit.device_report import DeviceReport

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


def check_report(device: str, report: DeviceReport, manifest: dict) -> list[Breach]:
    """Every gate `report` breaks; [] when it passes."""
    from edgekit.budgets import LM_GATES, Measured, check

    if report.status != "ok":
        return [Breach(device, "evaluation", None, None, f"{device}: evaluation failed on the device: {report.error}")]
    expected, row = manifest.get("expected") or {}, report.columns()
    want, baseline, got = _num(expected.get("accuracy")), _num(expected.get("baseline_accuracy")), row["accuracy"]
    measured = Measured(peak_rss_mb=row["peak_rss_mb"], latency_p95=row["latency_p95"],
                        drop=None if want is None or got is None else want - got,
                        drop_vs_fp32=None if baseline is None or got is None else baseline - got,
                        cosine=row["cosine"], labelled=want is not None, ppl_increase=row["ppl_increase"],
                        decode_tokens_per_s=row["decode_tokens_per_s"], ttft_ms=row["ttft_ms"])
    gates = ["latency_p95", "peak_rss_mb"]
    gates += list(LM_GATES) if expected.get("perplexity") is not None else []
    gates += ["accuracy_drop"] if want is not None else []
    gates += ["drop_vs_fp32"] if baseline is not None and got is not None else []
    gates += ["fidelity_cosine"] if want is None and expected.get("fidelity") is not None else []
    order = ("accuracy_drop", "drop_vs_fp32", "fidelity_cosine", *LM_GATES, "latency_p95", "peak_rss_mb")
    found = sorted(check(measured, budgets_of(manifest), gates=gates, require=True), key=lambda b: order.index(b.gate))
    return [Breach(device, b.gate, b.measured, b.limit, f"{device}: {b.gate}: {b.sentence()}{_which(b, got, want, baseline)}")
            for b in found]


def _which(b, got: Optional[float], want: Optional[float], baseline: Optional[float]) -> str:
    """The accuracies behind a drop: '(device 0.8567, host 0.9889)'."""
    if b.measured is None or got is None:
        return ""
    if b.gate == "accuracy_drop":
        return f" (device {got:.4f}, host {want:.4f})"
    if b.gate == "drop_vs_fp32":
        return f" (device {got:.4f}, FP32 {baseline:.4f})"
    return ""
