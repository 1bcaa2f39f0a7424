"""Scratch measurements: time a model that is not a bundle, leaving what is installed alone.

    ROOT/scratch/RUN/              one host run's uploads (calibrate --measure-on): candidate
                                   models and the eval data they are measured on

`measure RUN MODEL DATA` evaluates ROOT/scratch/RUN/MODEL on ROOT/scratch/RUN/DATA with the
same code as a bundle's evaluation (edgekit_device.evaluate) and answers with its JSON and
what the device is, its CPU included; `scratch-clean RUN` removes the run's folder. Nothing
here reads or writes bundles/, current/, state/ or reports/ and no lock is taken: a
measurement can never change what the device runs. A run cut short (a killed host) leaves
its folder behind: gc removes those not written to for its --part-idle seconds.

Standard library (+ numpy and the runtime, through evaluate), Python 3.9.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import List, Optional

from .report import cpu_info, device_facts, failure_text
from .state import Layout, RunnerError, check_name

__all__ = ["measure", "clean", "clean_idle"]


def _folder(layout: Layout, run: str) -> str:
    return os.path.join(layout.scratch, check_name(run, "scratch run"))


def measure(layout: Layout, run: str, model: str, data: str, *, threads: int = 0,
            providers: Optional[List[str]] = None, runs: int = 50, min_seconds: float = 0.5,
            device_name: Optional[str] = None) -> dict:
    """{"metrics": the evaluation's JSON, "device": device_facts plus the CPU's "cpu" and "flags"}."""
    from .evaluate import evaluate  # numpy and the runtime load only for this command

    folder = _folder(layout, run)
    paths = [os.path.join(folder, check_name(name, what)) for name, what in ((model, "model"), (data, "data"))]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise RunnerError(f"{missing[0]} is not there: upload the model and its data to scratch/{run}/ first",
                          "usage", 2)
    try:
        metrics = evaluate(paths[0], paths[1], threads=threads, providers=providers, runs=runs,
                           min_seconds=min_seconds)
    except Exception as exc:  # noqa: BLE001 - the runtime's own errors: the host records them per candidate
        text = failure_text(exc).replace(folder + os.sep, "")  # the scratch path says nothing to the host
        raise RunnerError(text[:2000], "evaluation", 1) from exc
    model_name, flags = cpu_info()
    return {"metrics": metrics, "device": dict(device_facts(device_name), cpu=model_name, flags=sorted(flags))}


def clean(layout: Layout, run: str) -> dict:
    """Remove ROOT/scratch/RUN (and scratch/ once it is empty)."""
    folder = _folder(layout, run)
    existed = os.path.isdir(folder)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        os.rmdir(layout.scratch)
    except OSError:
        pass  # another run's folder is there, or there is no scratch/ at all
    return {"run": run, "removed": existed}


def clean_idle(layout: Layout, idle: float) -> List[str]:
    """Remove scratch runs whose folder nothing has written to for `idle` seconds (a live run
    uploads or reads there every candidate); returns their names."""
    if not os.path.isdir(layout.scratch):
        return []
    gone, now = [], time.time()
    for entry in sorted(os.listdir(layout.scratch)):
        folder = os.path.join(layout.scratch, entry)
        try:
            newest = max([os.lstat(folder).st_mtime] +
                         [os.lstat(os.path.join(folder, f)).st_mtime for f in os.listdir(folder)])
        except OSError:
            continue
        if now - newest >= idle:
            shutil.rmtree(folder, ignore_errors=True)
            gone.append(entry)
    return gone
