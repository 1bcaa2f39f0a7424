"""The calibration record (calibration.json): what one calibrate run measured and chose.

    schema, model {path, sha256, [format], inputs, [converted]}, target (profile snapshot),
    budgets, objective, metric, baseline, data {calibration, eval}, candidates [{id, recipe,
    status, error, passed, failed_budgets, metrics, seconds, [weights], [collapsed]}], chosen,
    output {file, sha256},
    why, versions, machine, measured_on, created_at, [search]

One typed object from the moment it is made or read: calibrate writes it, package takes
the chosen candidate's recipe and metrics from it (edgekit.manifest), and the report shows
it through rows(), the one flat form of its candidates. A field in brackets is written only
where it applies (a source that was converted; a toolchain that searches): a record keeps
exactly the fields it was made or read with. The measurements (each candidate's metrics,
the baseline) are the device evaluation's own JSON (edgekit.device.evaluate), kept as it
wrote them, and so are the free-form blocks (budgets, versions, machine, search).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer

from edgekit._toml import pydantic_error_line
from edgekit.datasets import InputSpec
from edgekit.errors import ConfigError
from edgekit.recipes import Recipe

__all__ = ["SCHEMA", "CalibrationRecord", "CandidateRecord", "ModelRecord", "InputRecord"]

SCHEMA = "edgekit.calibration/1"
_SCHEMA_PREFIX = "edgekit.calibration/"


class _Part(BaseModel):
    """A block of the record. Fields in OPTIONAL are written only when they were given."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _as_given(self, handler):
        data = handler(self)
        return {k: v for k, v in data.items() if k not in self.OPTIONAL or k in self.model_fields_set}


class InputRecord(_Part):
    name: str
    dtype: str
    shape: list[Optional[int]]

    @classmethod
    def of(cls, spec: InputSpec) -> "InputRecord":
        return cls(name=spec.name, dtype=spec.dtype, shape=list(spec.shape))


class ConvertedRecord(_Part):
    format: str
    converter: Optional[str]
    sha256: str
    size_mb: float
    inputs: list[InputRecord]


class ModelRecord(_Part):
    """The model as given (path, and sha256 when it is a file) and, for a toolchain that
    converts it, its source format and the converted FP32 file."""

    OPTIONAL = ("format", "converted")
    path: str
    sha256: Optional[str]
    format: Optional[str] = None
    inputs: list[InputRecord]
    converted: Optional[ConvertedRecord] = None


class TargetSnapshot(_Part):
    """The profile as it was (edgekit.targets.Profile.snapshot); only its name is read back."""

    name: str


class DataRecord(_Part):
    OPTIONAL = ("n_used",)
    path: str
    sha256: str
    n: int
    n_used: Optional[int] = None  # eval data: the samples measured (--eval-samples)


class DataSection(_Part):
    calibration: DataRecord
    eval: DataRecord


class CandidateRecord(_Part):
    OPTIONAL = ("weights", "collapsed")
    id: str
    recipe: Recipe
    status: Literal["ok", "failed", "pending", "not-applicable", "skipped"]  # not-applicable, skipped: error says why
    error: Optional[str] = None
    passed: bool = False
    failed_budgets: list[str] = []
    metrics: dict = {}  # the evaluation's JSON and, against the baseline, "drop"; {} when never measured
    seconds: float = 0.0
    weights: Optional[dict] = None  # what it quantized: {quantized, weights, share, [preprocess], [kept_float]}
    collapsed: bool = False  # its quality fell far below the other candidates' (edgekit.candidates.COLLAPSE)


class OutputRecord(_Part):
    file: str
    sha256: str


class CalibrationRecord(_Part):
    OPTIONAL = ("search",)
    schema_id: str = Field(alias="schema")
    model: ModelRecord
    target: TargetSnapshot
    budgets: dict
    objective: str
    metric: Literal["accuracy", "fidelity", "perplexity"]
    baseline: Optional[dict]
    data: DataSection
    candidates: list[CandidateRecord]
    chosen: Optional[str]
    output: Optional[OutputRecord]
    why: str
    versions: dict = {}
    machine: dict = {}
    measured_on: Optional[dict] = None  # absent from records made before edgekit recorded it
    created_at: Optional[str] = None
    search: Optional[dict] = None  # the mixed-precision search's own record (edgekit.search)

    # -- reading and writing ------------------------------------------------------------

    @classmethod
    def read(cls, path: Path, flag: str) -> "CalibrationRecord":
        """The record in `path`; ConfigError naming `flag` and the file when it is not one."""
        path = Path(path).expanduser()
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"{flag} {path}: not found (it is the calibration.json that "
                              "`edgekit calibrate -o DIR` writes)") from exc
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(f"{flag} {path}: not a readable JSON file ({exc})") from exc
        return cls.of(data, f"{flag} {path}")

    @classmethod
    def of(cls, data: object, source: str = "calibration record") -> "CalibrationRecord":
        """`data` (a parsed calibration.json) validated; ConfigError naming `source` and the field."""
        schema = data.get("schema") if isinstance(data, dict) else None
        if not (isinstance(schema, str) and schema.startswith(_SCHEMA_PREFIX)):
            raise ConfigError(f"{source}: field 'schema' is {schema!r}, not a calibration record "
                              "of `edgekit calibrate`")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(pydantic_error_line(source, exc)) from exc

    def dump(self) -> dict:
        """The record as calibration.json holds it, in its order."""
        return self.model_dump(by_alias=True)

    def write(self, path: Path) -> Path:
        """Write the record to `path` atomically (a reader never sees half a file)."""
        part = path.with_suffix(".json.tmp")
        part.write_text(json.dumps(self.dump(), indent=2) + "\n")
        os.replace(part, path)
        return path

    # -- what readers ask of it ---------------------------------------------------------

    @property
    def chosen_candidate(self) -> Optional[CandidateRecord]:
        return next((c for c in self.candidates if c.id == self.chosen), None) if self.chosen else None

    def rows(self) -> list[dict]:
        """One flat row per candidate: recipe, verdict and measurements (the report's table, csv and json)."""
        return [_row(no, c, c.id == self.chosen) for no, c in enumerate(self.candidates, start=1)]


def _row(no: int, c: CandidateRecord, chosen: bool) -> dict:
    m = c.metrics
    lat, fid = m.get("latency_ms") or {}, m.get("fidelity") or {}
    return {"no": no, "id": c.id, "chosen": chosen, "precision": c.recipe.precision, "method": c.recipe.method,
            "per_channel": c.recipe.per_channel, "reduce_range": c.recipe.reduce_range, "status": c.status,
            "passed": c.passed, "failed_budgets": "; ".join(c.failed_budgets), "accuracy": m.get("accuracy"),
            "drop": m.get("drop"), "top1_agreement": fid.get("top1_agreement"), "cosine": fid.get("cosine"),
            "model_mb": m.get("model_mb"), "latency_p50": lat.get("p50"), "latency_p95": lat.get("p95"),
            "peak_rss_mb": m.get("peak_rss_mb"), "load_ms": m.get("load_ms"), "error": c.error,
            "collapsed": c.collapsed, "weights_share": (c.weights or {}).get("share")}
