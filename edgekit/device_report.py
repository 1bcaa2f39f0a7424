"""Device reports (schema 1 of DESIGN.md): read as untrusted input, then one typed record.

A device may be broken, old or hostile, so what it sends is read with a size limit,
parsed as JSON and checked against the schema before anything else looks at it. A
report that fails is a failure of that device (DataError, caught by collect), never a
crash of the host. What passes is a DeviceReport, and it stays one on its way:

    validate_report(bytes) -> DeviceReport    the check, where a report comes in (collect)
    DeviceReport.columns()                    the one flat row of it (report_columns): the store's columns,
                                              the numbers the rollout gates judge and those
                                              the fleet report compares
    DeviceReport.record()                     the JSON object as the device sent it (stored)
    DeviceReport.from_object(obj)             a report in a JSON object, typed
    DeviceReport.from_json(text)              a report the store kept, typed again

Non-finite numbers: JSON has none, but Python's json (which the runner writes with)
emits `Infinity` for an SQNR of an exact match (no noise) and `-Infinity` for a zero
signal. `metrics.fidelity.sqnr_db` may therefore be non-finite; it is stored as null
("not a finite number": the cosine and top-1 agreement still say how close the outputs
were), so that the store and every `--json` output stay strict JSON. Any other
non-finite number makes the report bad.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from edgekit.errors import DataError
from edgekit.report_row import report_columns
from edgekit.words import PLAIN

__all__ = ["DeviceReport", "MAX_REPORT_BYTES", "REPORT_FILE", "parse_report", "report_columns", "validate_report"]

MAX_REPORT_BYTES = 1 << 20
REPORT_FILE = re.compile(PLAIN.pattern.replace("^", "^(").replace("$", r")\.json$"))
_TIME = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"
NON_FINITE_OK = ("metrics", "fidelity", "sqnr_db")

Plain = Annotated[str, Field(pattern=PLAIN.pattern)]
Fraction = Annotated[Optional[float], Field(ge=0, le=1)]
NonNegative = Annotated[Optional[float], Field(ge=0)]


class _Part(BaseModel):
    # Devices may add fields (a newer runner); what we read is typed, the rest is kept as sent.
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


class _Device(_Part):
    name: str = Field(max_length=256)
    hostname: str = Field(max_length=256)
    arch: str
    os: str
    python: str
    cpu_count: Optional[int] = Field(ge=1)
    mem_total_mb: Optional[float] = Field(ge=0)


class _Bundle(_Part):
    name: Plain
    version: Plain
    sha256: Optional[str] = Field(pattern=r"^[0-9a-f]{64}$")
    target: Optional[str]
    precision: Optional[str]


class _Runtime(_Part):
    name: Optional[str]
    version: Optional[str]
    providers: list[str]


class _Latency(_Part):
    p50: float = Field(ge=0)
    p90: float = Field(ge=0)
    p95: NonNegative = None  # not in DESIGN's list, but the runner sends it and budgets use it
    p99: float = Field(ge=0)
    mean: float = Field(ge=0)
    n: int = Field(ge=1)


class _Fidelity(_Part):
    top1_agreement: float = Field(ge=0, le=1)
    cosine: float = Field(ge=-1.000001, le=1.000001)  # float rounding of a perfect match
    sqnr_db: Optional[float]


class _Recompute(_Part):
    """A language model generating without its KV cache (every token reruns the prefix)."""

    decode_tokens_per_s: NonNegative = None
    peak_rss_mb: NonNegative = None
    ttft_ms: NonNegative = None


class _CurveMode(_Part):
    decode_tokens_per_s: NonNegative = None
    rss_mb: NonNegative = None


class _CurvePoint(_Part):
    """Cache against recompute at one context length."""

    context: int = Field(ge=1)
    kv_cache_bytes: int = Field(ge=0)
    cache: Optional[_CurveMode] = None
    recompute: Optional[_CurveMode] = None


class _Metrics(_Part):
    accuracy: Fraction = None
    accuracy_expected: Fraction = None
    fidelity: Optional[_Fidelity] = None
    latency_ms: Optional[_Latency] = None
    load_ms: NonNegative = None
    peak_rss_mb: NonNegative = None
    model_mb: NonNegative = None
    # language models (edgekit.device.lm_evaluate); absent from other reports
    perplexity: Optional[float] = Field(default=None, ge=1)
    fp32_perplexity: Optional[float] = Field(default=None, ge=1)
    ppl_increase: Optional[float] = Field(default=None, ge=-1)
    kl_divergence: NonNegative = None
    top1_agreement: Fraction = None
    prefill_tokens_per_s: NonNegative = None
    decode_tokens_per_s: NonNegative = None
    ttft_ms: NonNegative = None
    kv_cache: Optional[Literal["cache", "recompute"]] = None
    kv_cache_bytes: Optional[int] = Field(default=None, ge=0)
    kv_cache_bytes_measured: Optional[int] = Field(default=None, ge=0)
    recompute: Optional[_Recompute] = None
    kv_curve: Optional[list[_CurvePoint]] = None


class DeviceReport(_Part):
    """A checked schema-1 report: its fields typed, the fields a newer runner adds kept as sent."""

    schema_: Literal[1] = Field(alias="schema")
    run_id: Plain
    started_at: str = Field(pattern=_TIME)
    finished_at: Optional[str] = Field(pattern=_TIME)
    status: Literal["ok", "failed"]
    error: Optional[str] = Field(max_length=4000)
    device: _Device
    bundle: _Bundle
    runtime: _Runtime
    metrics: _Metrics
    _sent: dict = PrivateAttr(default_factory=dict)

    _text: Optional[str] = PrivateAttr(default=None)

    @classmethod
    def from_object(cls, obj: dict) -> "DeviceReport":
        """The report in a JSON object (finite numbers only); ValidationError when it is not one."""
        report = cls.model_validate(obj)
        report._sent = obj
        return report

    @classmethod
    def from_json(cls, text: str) -> "DeviceReport":
        """A report the store kept (its JSON text), typed again in one pass: pydantic parses and
        checks the text itself, and the object as sent is decoded only when asked for (a
        report of 10,000 rows decoded every report twice, and most are never asked)."""
        report = cls.model_validate_json(text)
        report._text = text
        return report

    def record(self) -> dict:
        """The JSON object as the device sent it (a non-finite sqnr_db as null): what the store keeps.
        Not the model's dump, which would write a device's 12 as 12.0."""
        if self._text is not None and not self._sent:
            self._sent = json.loads(self._text)
        return self._sent

    def columns(self) -> dict:
        """The report as one flat row (report_columns of what the device sent)."""
        return report_columns(self.record())


def parse_report(data: bytes, source: str) -> dict:
    """Bytes -> a JSON object, with the size limit; DataError naming `source` otherwise."""
    if len(data) > MAX_REPORT_BYTES:
        raise DataError(f"report {source}: {len(data)} bytes, over the {MAX_REPORT_BYTES}-byte limit")
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DataError(f"report {source}: not valid JSON ({str(exc)[:200]})") from exc
    if not isinstance(value, dict):
        raise DataError(f"report {source}: not a JSON object")
    return value


def _finite(value: Any, path: tuple = ()) -> Any:
    """The same structure with non-finite floats mapped (sqnr_db) or refused (elsewhere)."""
    if isinstance(value, float) and not math.isfinite(value):
        if path == NON_FINITE_OK:
            return None
        raise ValueError(f"field '{'.'.join(map(str, path))}': {value} is not a finite number")
    if isinstance(value, dict):
        return {k: _finite(v, path + (k,)) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v, path + (i,)) for i, v in enumerate(value)]
    return value


def _why(exc: ValidationError) -> str:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    what = "required field is missing" if first["type"] == "missing" else first["msg"]
    more = len(exc.errors()) - 1
    return f"field '{field}': {what}" + (f" (and {more} more)" if more else "")


def validate_report(data: bytes, source: str, *, name: Optional[str] = None, version: Optional[str] = None,
                    run_id: Optional[str] = None) -> DeviceReport:
    """A checked schema-1 report from a device file's bytes; `name`, `version` and `run_id`
    (from where the file was found) must agree with what it says. DataError otherwise."""
    obj = parse_report(data, source)
    try:
        report = DeviceReport.from_object(_finite(obj))
    except ValueError as exc:  # ValidationError is a ValueError
        why = _why(exc) if isinstance(exc, ValidationError) else str(exc)
        raise DataError(f"report {source}: {why}") from exc
    said = {"bundle.name": (report.bundle.name, name), "bundle.version": (report.bundle.version, version),
            "run_id": (report.run_id, run_id)}
    for field, (got, where) in said.items():
        if where is not None and got != where:
            raise DataError(f"report {source}: field '{field}' is {got!r}, but the file is filed under {where!r}")
    if report.status == "ok" and report.metrics.latency_ms is None:
        raise DataError(f"report {source}: status is ok but field 'metrics.latency_ms' is missing")
    return report
