"""A target's budgets and the one check of measured numbers against them.

    calibrate   a candidate's metrics, measured on the host    -> its failed budgets
    rollout     a device's report, against its bundle           -> the gates it breaks
    report      a device's row of the fleet report              -> what is over budget

Each caller gives the numbers it has as `Measured` (None where nothing was measured) and
gets `Breach`es back; what differs between them is only which budgets they judge and
whether a missing number breaks a budget (a device report without a latency does; a
calibration candidate without an accuracy does not), never the rule itself.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Iterable, Optional

__all__ = ["Measured", "Rule", "Breach", "RULES", "check", "checker", "QUALITY_BUDGETS", "LM_GATES"]


@dataclass(frozen=True)
class Measured:
    """The numbers budgets judge. `drop` is the accuracy lost against the reference the caller
    judges by (calibrate: the FP32 baseline; a rollout: the host's expected accuracy),
    `drop_vs_fp32` the loss against the FP32 model where that is another number."""

    model_mb: Optional[float] = None
    peak_rss_mb: Optional[float] = None
    latency_p95: Optional[float] = None
    drop: Optional[float] = None
    drop_vs_fp32: Optional[float] = None
    cosine: Optional[float] = None
    labelled: bool = False  # accuracy is the metric (labels); else fidelity to the FP32 outputs
    ppl_increase: Optional[float] = None  # a language model's perplexity / FP32's - 1
    decode_tokens_per_s: Optional[float] = None
    ttft_ms: Optional[float] = None


@dataclass(frozen=True)
class Rule:
    budget: str        # the profile's field
    gate: str          # the name a rollout gate goes by
    measured: str      # the Measured field it judges
    label: str         # in words
    unit: str
    digits: str        # how a calibration record prints the number
    upper: bool = True  # True: the measured number must stay at or below the budget

    def broken(self, value: float, limit: float) -> bool:
        # A drop equal to its budget is within it, whatever the float rounding of the subtraction.
        return value > limit + 1e-12 if self.upper else value < limit


RULES = (
    Rule("max_model_mb", "model_mb", "model_mb", "model size", " MiB", ".3f"),
    Rule("max_peak_rss_mb", "peak_rss_mb", "peak_rss_mb", "peak RSS", " MiB", ".1f"),
    Rule("max_latency_ms_p95", "latency_p95", "latency_p95", "p95 latency", " ms", ".3f"),
    Rule("max_accuracy_drop", "accuracy_drop", "drop", "accuracy drop", "", ".4f"),
    Rule("max_accuracy_drop", "drop_vs_fp32", "drop_vs_fp32", "accuracy drop against FP32", "", ".4f"),
    Rule("min_fidelity_cosine", "fidelity_cosine", "cosine", "fidelity cosine", "", ".5f", upper=False),
    Rule("max_ppl_increase", "ppl_increase", "ppl_increase", "perplexity increase over FP32", "", ".4f"),
    Rule("min_decode_tokens_per_s", "decode_tokens_per_s", "decode_tokens_per_s", "decode speed", " tokens/s",
         ".2f", upper=False),
    Rule("max_ttft_ms", "ttft_ms", "ttft_ms", "time to first token", " ms", ".1f"),
)
QUALITY_BUDGETS = ("max_accuracy_drop", "min_fidelity_cosine", "max_ppl_increase")
LM_GATES = ("ppl_increase", "decode_tokens_per_s", "ttft_ms")


@dataclass(frozen=True)
class Breach:
    rule: Rule
    measured: Optional[float]  # None: the number was not measured (and the caller requires it)
    limit: float

    @property
    def budget(self) -> str:
        return self.rule.budget

    @property
    def gate(self) -> str:
        return self.rule.gate

    def short(self) -> str:
        """'max_model_mb: 0.148 > 0.1', as calibration records list them."""
        sign = ">" if self.rule.upper else "<"
        return f"{self.rule.budget}: {self.measured:{self.rule.digits}} {sign} {self.limit:g}"

    def sentence(self) -> str:
        """'p95 latency 12.3 ms > budget 10 ms', or what is missing."""
        if self.measured is None:
            return f"the report has no {self.rule.label}"
        sign = ">" if self.rule.upper else "<"
        unit = self.rule.unit
        return f"{self.rule.label} {self.measured:.6g}{unit} {sign} budget {self.limit:.6g}{unit}"


def check(measured: Measured, budgets, *, gates: Optional[Iterable[str]] = None,
          require: bool = False) -> list[Breach]:
    """Every budget `measured` breaks. `budgets`: a profile's Budgets or the dict of one.
    `gates`: judge only these rules (by gate name). `require`: a number that was not
    measured breaks its budget (a device report must carry what it is judged on).

    An accuracy budget judges labelled data; the fidelity budget judges unlabelled data,
    and labelled data only when no accuracy budget is set."""
    return checker(budgets, gates=gates, require=require)(measured)


def checker(budgets, *, gates: Optional[Iterable[str]] = None,
            require: bool = False) -> Callable[[Measured], list[Breach]]:
    """check() with its budgets and gates given once, for judging many rows against one
    profile (a fleet report's 10,000): the rules with a limit set are picked here, not a row."""
    limits = budgets if isinstance(budgets, dict) else budgets.model_dump()
    chosen = set(gates) if gates is not None else None
    judged = [(rule, float(limits[rule.budget])) for rule in RULES
              if limits.get(rule.budget) is not None and (chosen is None or rule.gate in chosen)]

    def breaches(measured: Measured) -> list[Breach]:
        found = []
        for rule, limit in judged:
            if not _applies(rule, measured, limits):
                continue
            value = getattr(measured, rule.measured)
            if value is None:
                if require:
                    found.append(Breach(rule, None, limit))
            elif rule.broken(float(value), limit):
                found.append(Breach(rule, float(value), limit))
        return found

    return breaches


def _applies(rule: Rule, m: Measured, limits: dict) -> bool:
    if rule.budget == "max_accuracy_drop":
        return m.labelled
    if rule.budget == "min_fidelity_cosine":
        return not m.labelled or limits.get("max_accuracy_drop") is None
    return True


assert {f.name for f in fields(Measured)} >= {r.measured for r in RULES}
