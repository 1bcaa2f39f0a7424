"""The release calibration run: sweep recipes, measure each against FP32, apply budgets.

One run for every toolchain (edgekit.toolchains), picked from the target's runtime: the
model is loaded once as the toolchain's FP32 file (converted from PyTorch where needed),
which is the baseline and the reference for fidelity. Every recipe the toolchain offers
the target becomes a candidate (edgekit.candidates): quantized, then measured in a fresh
process on the eval set exactly as a device measures it, by a Measurer: this host's
(edgekit.evaluate.measure), or a device of the target (edgekit.fleet.measure); one that
cannot win (bigger and slower than a passing one, told by its size or a quick probe) is
skipped, with the reason (edgekit.screening). A
recipe the target's runtime cannot run is recorded as not applicable ("not offered: ..."),
never measured; a recipe that fails is recorded as failed, never fatal. For a toolchain that
searches, the mixed-precision search (edgekit.search) may add candidates. Among the
candidates that meet every budget of the target, the objective (latency, size or memory)
chooses; when none meets them the run still writes its record (calibration.json,
edgekit.calibration_record) and raise_if_unmet raises GateError (exit 3).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol

from edgekit.calibration_record import SCHEMA, CalibrationRecord
from edgekit.candidates import Candidate, attempt, choose, mark_collapsed, score
from edgekit.datasets import Dataset, check_disjoint
from edgekit.errors import GateError
from edgekit.machine import cpu_facts, measured_on_host
from edgekit.progress import OnStep, notify, within
from edgekit.recipes import Recipe
from edgekit.screening import (PROBE_RUNS, PROBE_SAMPLES, RETIME_ROUNDS, Screen, finalists, measure_order,
                               probe_metrics, probe_set)
from edgekit.search.context import SearchOptions
from edgekit.targets import Profile
from edgekit.toolchains import Toolchain, toolchain_for
from edgekit.words import utc_now

__all__ = ["CalibrationResult", "Measurer", "HostMeasurer", "sweep_recipes", "calibrate", "raise_if_unmet"]


class Measurer(Protocol):
    """Where every candidate (and the baseline) is measured: this host (HostMeasurer) or a
    device of the target (edgekit.fleet.measure.DeviceMeasurer, `--measure-on`)."""

    def measure(self, model: Path, prepared_npz: Path, *, threads: int = 0, providers: Optional[list[str]] = None,
                **opts) -> dict:
        """edgekit.evaluate.measure's JSON for `model` on the prepared eval data."""

    def place(self, profile: Profile) -> dict:
        """The record's measured_on: where that was, and whether it is the target's CPU."""


class HostMeasurer:
    """This host, in a fresh process per model (edgekit.evaluate.measure)."""

    def measure(self, model: Path, prepared_npz: Path, **opts) -> dict:
        from edgekit.evaluate import measure

        return measure(model, prepared_npz, **opts)

    def place(self, profile: Profile) -> dict:
        return measured_on_host(profile)


@dataclass
class CalibrationResult:
    record: CalibrationRecord
    candidates: list[Candidate]
    chosen: Optional[Candidate]
    model_path: Optional[Path]
    record_path: Path


def sweep_recipes(profile: Profile, exclude: tuple[str, ...] = (), include: tuple[str, ...] = ()) -> list[Recipe]:
    """The uniform recipes the target's toolchain offers it, in the order they are measured."""
    return toolchain_for(profile).sweep(profile, exclude, include)


@dataclass
class _Run:
    """What every candidate of one run is measured with."""

    toolchain: Toolchain
    profile: Profile
    fp32: Path
    workdir: Path
    calibration: Dataset
    eval_npz: Path
    measure_opts: dict
    measurer: Measurer
    screen: Screen
    probe_npz: Optional[Path] = None  # a quick look before the full measurement (None: none)
    baseline: Optional[dict] = None

    def measure(self, c: Candidate, on_step: Optional[OnStep] = None) -> None:
        """Quantize, check the target can run it, measure and judge: c is updated in place.
        A candidate that cannot win (edgekit.screening) is skipped as soon as that is known."""
        refusal = self.toolchain.recipe_refusal(c.recipe, self.profile)
        if refusal:
            c.status, c.error = "not-applicable", f"not offered: {refusal}"
            return
        self.screen.measured.append(c)
        with attempt(c):
            if self._skip(c, self.screen.twin(c)):
                return
            notify(on_step, "quantize")
            c.path = self.toolchain.quantize(self.fp32, c.recipe, self.workdir / f"{c.id}{self.toolchain.suffix}",
                                             calibration=self.calibration, on_step=on_step)
            if c.recipe.precision not in ("fp32", "fp16"):  # what a quantizing recipe quantized
                c.weights = self.toolchain.quantized_weights(self.fp32, c.path)
            refusal = self.toolchain.model_refusal(c.path, self.profile)
            if refusal:  # the device's runtime cannot load it: never measured, never chosen
                c.status, c.error = "not-applicable", f"not offered: {refusal}"
                return
            if self._skip(c, self._probe(c, on_step)):
                return
            score(c, self.eval_npz, self.profile, self.baseline, self.options(c.recipe), on_step=on_step,
                  measure=self.measurer.measure)

    def _probe(self, c: Candidate, on_step: Optional[OnStep]) -> Optional[str]:
        """Why c cannot win, from its size (objective size) or a quick probe; None: measure it."""
        if self.probe_npz is None or not self.screen.wants_probe() or c.recipe.precision == "fp32":
            return None
        if self.profile.objective == "size":
            c.metrics = {"model_mb": self.toolchain.size_mb(c.path), "probe": {"samples": 0, "runs": 0}}
        else:
            notify(on_step, "evaluate", "quick probe")
            m = self.measurer.measure(c.path, self.probe_npz, threads=self.profile.threads,
                                      providers=self.profile.providers, runs=PROBE_RUNS, min_seconds=0.1)
            c.metrics = probe_metrics(m, PROBE_SAMPLES, PROBE_RUNS)
        why = self.screen.dominated(c.metrics)
        return f"cannot win: it {why}" if why else None

    @staticmethod
    def _skip(c: Candidate, why: Optional[str]) -> bool:
        if why:
            c.status, c.error, c.passed = "skipped", why, False
        return bool(why)

    def options(self, recipe: Recipe) -> dict:
        """How to measure `recipe`: the run's options and what its toolchain adds (a language
        model's workload and cache mode)."""
        return {**self.measure_opts, **self.toolchain.measure_options(self.profile, recipe)}

    def measure_baseline(self) -> dict:
        m = self.measurer.measure(self.fp32, self.eval_npz, threads=self.profile.threads,
                                  providers=self.profile.providers, **self.options(Recipe(precision="fp32")))
        m["drop"] = 0.0 if m.get("accuracy") is not None else None
        return m


def calibrate(model: str | Path, profile: Profile, calibration: Dataset, eval_data: Dataset, out_dir: Path, *,
              recipes: Optional[list[Recipe]] = None, eval_samples: Optional[int] = None,
              measure_opts: Optional[dict] = None,
              on_candidate: Optional[Callable[[Candidate, int, int], None]] = None,
              search: Optional[SearchOptions] = SearchOptions(),
              on_step: Optional[OnStep] = None, measurer: Optional[Measurer] = None) -> CalibrationResult:
    """Run the release calibration of `model` (a file or pkg.module:factory) for `profile`; see
    the module docstring. Writes OUT_DIR/model.<suffix> (when a candidate passes) and
    OUT_DIR/calibration.json. on_candidate hears of each measured candidate, on_step of each
    stage (edgekit.progress). `measurer`: where candidates are measured (this host unless given)."""
    from edgekit.evaluate import eval_set

    check_disjoint(calibration, eval_data)
    toolchain = toolchain_for(profile)
    candidates = [Candidate(r.id, r) for r in recipes or toolchain.sweep(profile)]
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="edgekit-calibrate-") as tmp:
        work = Path(tmp)
        fp32 = toolchain.load(model, workdir=work / "fp32", example_data=calibration,
                              on_step=within(on_step, phase="prepare"))
        inputs = toolchain.inputs(fp32)
        calibration = toolchain.model_data(fp32, calibration, "calibration data", profile)
        eval_data = toolchain.model_data(fp32, eval_data, "eval data", profile)
        calibration.check(inputs, role="calibration data")
        eval_data.check(inputs, role="eval data")
        out_dir.mkdir(parents=True, exist_ok=True)
        notify(within(on_step, phase="prepare"), "eval data", "FP32 reference outputs")
        eval_npz = eval_set(toolchain, eval_data, fp32, work / "eval.npz", reference=fp32, samples=eval_samples)
        run = _Run(toolchain, profile, fp32, work, calibration, eval_npz, measure_opts or {},
                   measurer or HostMeasurer(), Screen(profile.objective))
        if not toolchain.measure_options(profile, Recipe(precision="fp32")):  # a language model: no probe
            run.probe_npz = probe_set(eval_npz, work / "probe.npz")
        if not any(c.recipe.precision == "fp32" for c in candidates):  # a baseline, not a candidate
            notify(within(on_step, phase="baseline", candidate="fp32"), "evaluate")
            run.baseline = run.measure_baseline()
        _sweep(run, candidates, on_candidate, on_step)
        mark_collapsed(candidates, run.baseline)  # a collapsed candidate is no base for the search
        search_record = None
        if search is not None and toolchain.searches:
            found, search_record = _search(run, search, candidates, on_candidate, on_step)
            candidates += found
        mark_collapsed(candidates, run.baseline)
        _retime(run, finalists(candidates, profile.objective), on_step)
        chosen, why = choose(candidates, profile)
        if chosen is None and search_record and search_record["stopped"] not in ("off", "not-needed"):
            why += f"; mixed-precision search: {search_record['why']}"
        model_out = None
        if chosen is not None:
            model_out = _write_model(toolchain, chosen.path, out_dir / f"model{toolchain.suffix}")
        record = _record(run, model, inputs, eval_data, candidates, chosen, why,
                         **({"search": search_record} if toolchain.searches else {}))
    record_path = record.write(out_dir / "calibration.json")
    return CalibrationResult(record, candidates, chosen, model_out, record_path)


def _write_model(toolchain: Toolchain, chosen: Path, dest: Path) -> Path:
    """The chosen model as DIR/model.<suffix>, with the files it needs beside it (under their names)."""
    shutil.copyfile(chosen, dest)
    for extra in toolchain.files(chosen)[1:]:
        shutil.copyfile(extra, dest.parent / extra.name)
    return dest


def _sweep(run: _Run, candidates: list[Candidate], on_candidate, on_step: Optional[OnStep]) -> None:
    """Every candidate, in edgekit.screening's order (the record keeps the sweep's)."""
    for i, c in enumerate(measure_order(candidates)):
        run.measure(c, within(on_step, phase="sweep", i=i + 1, n=len(candidates), candidate=c.id))
        if c.recipe.precision == "fp32" and c.status == "ok":
            run.baseline = c.metrics
            c.metrics["drop"] = 0.0 if c.metrics.get("accuracy") is not None else None
        if on_candidate:
            on_candidate(c, i + 1, len(candidates))


def _retime(run: _Run, group: list[Candidate], on_step: Optional[OnStep]) -> None:
    """Time the finalists again in rounds, each in turn (edgekit.screening.finalists)."""
    rounds = {c.id: [c.metrics["latency_ms"]["p50"]] for c in group}
    for r in range(RETIME_ROUNDS):
        for c in group:
            notify(within(on_step, phase="retime", candidate=c.id), "evaluate",
                   f"timing round {r + 1} of {RETIME_ROUNDS}")
            m = run.measurer.measure(c.path, run.probe_npz or run.eval_npz, threads=run.profile.threads,
                                     providers=run.profile.providers, runs=2 * PROBE_RUNS, min_seconds=0.5,
                                     **run.toolchain.measure_options(run.profile, c.recipe))  # an LM's workload
            rounds[c.id].append(m["latency_ms"]["p50"])
    for c in group:
        c.metrics["latency_ms"].update(p50=statistics.median(rounds[c.id]), p50_rounds=rounds[c.id])


def _search(run: _Run, options: SearchOptions, uniform: list[Candidate], on_candidate,
            on_step: Optional[OnStep]) -> tuple[list[Candidate], dict]:
    from edgekit.search.context import SearchContext
    from edgekit.search.mixed import run_search

    run.screen.on = options.mode != "always"  # always: every step measured in full, winning or not
    ctx = SearchContext(run.fp32, run.calibration, run.workdir, run.baseline, on_candidate,
                        measure=run.measure, on_step=within(on_step, phase="search"),
                        objective=run.profile.objective, precisions=tuple(run.profile.precisions))
    return run_search(options, uniform, ctx)


def _record(run: _Run, model, inputs, eval_data: Dataset, candidates: list[Candidate], chosen: Optional[Candidate],
            why: str, **search) -> CalibrationRecord:
    """calibration.json, the same for every toolchain (see DESIGN.md's calibration record)."""
    import numpy as np

    toolchain, profile = run.toolchain, run.profile
    with np.load(run.eval_npz) as npz:
        n_eval = int(len(npz[inputs[0].name]))
    return CalibrationRecord(
        schema_id=SCHEMA,
        model=toolchain.source_record(model, run.fp32, inputs),
        target=profile.snapshot(),
        budgets=profile.budgets.model_dump(),
        objective=profile.objective,
        metric=toolchain.metric(eval_data),
        baseline=run.baseline,
        data={"calibration": run.calibration.describe(), "eval": dict(eval_data.describe(), n_used=n_eval)},
        candidates=[c.record() for c in candidates],
        chosen=chosen.id if chosen else None,
        output={"file": f"model{chosen.path.suffix}", "sha256": toolchain.sha256(chosen.path)} if chosen else None,
        why=why,
        versions=toolchain.versions(),
        machine=cpu_facts(),
        measured_on=run.measurer.place(profile),
        created_at=utc_now(),
        **search,
    )


def raise_if_unmet(result: CalibrationResult) -> None:
    if result.chosen is None:
        raise GateError(f"{result.record.why}; see {result.record_path}", details=result.record.dump())
