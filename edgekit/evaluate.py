"""Host-side evaluation: prepare an evaluation set once, measure models in fresh processes.

The measuring itself is edgekit.device.evaluate, the code the device runs, started as
``python -m edgekit.device.evaluate`` in a fresh process so that its peak RSS is that of
the evaluation alone and its numbers are comparable with a device's.

    prepare_eval_data(data, model, dest, reference=...)  -> dest.npz   (once per data set)
    measure(model, dest.npz)                              -> metrics    (once per model)
    evaluate_model(model, data, reference=...)            = both, in a temporary folder
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from edgekit.datasets import Dataset, InputSpec, load_dataset
from edgekit.errors import ConfigError, DataError, EdgekitError, ModelError

__all__ = ["prepare_eval_data", "eval_set", "measure", "evaluate_model", "REFERENCE", "BATCH"]

REFERENCE = "_reference"  # the key edgekit.device.evaluate reads reference outputs from
BATCH = 64
STDERR_TAIL = 600  # characters of the evaluation's stderr quoted in an error
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ERRORS = {"model": ModelError, "data": DataError, "usage": ConfigError}


def prepare_eval_data(data: Dataset, model: Path, dest: Path, *, reference: Optional[Path] = None,
                      samples: Optional[int] = None) -> Path:
    """Write `dest` (.npz): the model's inputs in the dtypes it takes, `labels` if the data
    has them and, with a reference model, its first output as `_reference`. Streams."""
    from edgekit.toolchains import toolchain_for_model

    _check_options(samples=samples)
    toolchain = toolchain_for_model(model)
    inputs = toolchain.inputs(toolchain.check(Path(model)))
    data.check(inputs, role="eval data")
    ref = _open_reference(Path(reference), Path(model), data) if reference is not None else None
    n = len(data) if samples is None else min(samples, len(data))
    with _NpzWriter(Path(dest), n) as out:
        for index, (feeds, labels) in enumerate(data.batches(BATCH, limit=n)):
            feeds = {i.name: np.ascontiguousarray(feeds[i.name], dtype=i.dtype) for i in inputs}
            if index == 0 and data.has_labels:
                _check_label_classes(data, Path(model), feeds)
            out.add(feeds)
            if labels is not None:
                out.add({"labels": labels})
            if ref is not None:
                out.add({REFERENCE: _reference_outputs(ref, feeds, reference)})
    return Path(dest)


def eval_set(toolchain, data: Dataset, model: Path, dest: Path, *, reference: Optional[Path] = None,
             samples: Optional[int] = None) -> Path:
    """The evaluation set a device measures `model` on: the toolchain's own where it has one
    (edgekit.toolchains.base.Toolchain.prepare_eval), else prepare_eval_data's."""
    made = toolchain.prepare_eval(data, model, dest, reference=reference, samples=samples)
    return made if made is not None else prepare_eval_data(data, model, dest, reference=reference, samples=samples)


def _open_reference(reference: Path, model: Path, data: Dataset):
    """The reference model in the device's backend, after checking it fits data and model."""
    from edgekit.device.backends import ModelLoadError, open_backend
    from edgekit.toolchains import toolchain_for_model

    checked = toolchain_for_model(reference).check(reference)
    _check_same_output(model, reference, _first_output(model), _first_output(checked))
    try:
        backend = open_backend(str(reference))
    except ModelLoadError as exc:
        raise ModelError(f"reference model {exc}") from exc
    data.check([InputSpec(*i) for i in backend.inputs], role="eval data (for the reference model)")
    return backend


def _first_output(path: Path) -> InputSpec:
    """Name, dtype and shape of a model's first output (what accuracy and fidelity read)."""
    from edgekit.toolchains import toolchain_for_model

    return toolchain_for_model(path).first_output(Path(path))


def _check_label_classes(data: Dataset, model: Path, first_feeds: dict) -> None:
    """Labels must be class ids of the model's first output (accuracy takes the argmax of its
    last axis): else accuracy is 0 and every drop is 0. A dynamic class axis is measured on
    the first batch. The whole set's labels are checked (data.check found their span)."""
    out = _first_output(model)
    no_labels = "or leave out labels to score fidelity to --reference"
    if len(out.shape) < 2:  # class ids (an ArgMax in the graph) or one score: nothing to take the argmax of
        raise DataError(f"eval data {data.path}: labels need a score per class, and {model.name}'s output "
                        f"'{out.name}' {_fmt(out.shape)} holds one value per sample",
                        hint=f"export the class scores (the logits before an ArgMax), {no_labels}")
    classes = out.shape[-1]
    if classes is None:
        classes = int(_run_first_output(model, first_feeds).shape[-1])
    shape = _fmt(out.shape[:-1] + (classes,)) + (" on the first batch" if out.shape[-1] is None else "")
    if classes == 1:  # a binary classifier's one sigmoid or logit: argmax would always say class 0
        raise DataError(f"eval data {data.path}: labels need a score per class, and {model.name}'s output "
                        f"'{out.name}' {shape} holds one score per sample (a binary classifier's)",
                        hint=f"export both classes' scores (1 - p and p, or -z and z), {no_labels}")
    data.check_labels(classes, f"{model.name} outputs {classes} classes (output '{out.name}' {shape})",
                      role="eval data")


def _run_first_output(model: Path, feeds: dict) -> np.ndarray:
    from edgekit.device.backends import ModelLoadError, open_backend
    from edgekit.device.evaluate import run_batch
    from edgekit.device.metrics import scored

    try:
        return scored(run_batch(open_backend(str(model)), feeds))
    except ModelLoadError as exc:
        raise ModelError(f"model {exc}") from exc
    except Exception as exc:  # the runtime's own error types; the data was checked already
        raise ModelError(f"model {model} fails on the eval data: {str(exc).splitlines()[0]}") from exc


def _check_same_output(model: Path, reference: Path, mine: InputSpec, theirs: InputSpec) -> None:
    same = len(mine.shape) == len(theirs.shape) and all(
        a is None or b is None or a == b for a, b in zip(mine.shape, theirs.shape))
    if not same:
        raise ModelError(f"reference model {reference} gives output '{theirs.name}' of shape {_fmt(theirs.shape)}, "
                         f"but {model} gives '{mine.name}' of shape {_fmt(mine.shape)}: "
                         f"give the FP32 model this one was made from as --reference")


def _reference_outputs(backend, feeds: dict, reference) -> np.ndarray:
    from edgekit.device.evaluate import run_batch
    from edgekit.device.metrics import scored

    # Same inputs and backend as the device's own run, so only the model differs.
    try:
        return np.asarray(scored(run_batch(backend, feeds)), dtype=np.float32)
    except Exception as exc:  # onnxruntime's own error types; the data was checked already
        raise ModelError(f"reference model {reference} fails on the eval data: {str(exc).splitlines()[0]}") from exc


def _fmt(shape) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


class _NpzWriter:
    """An uncompressed .npz written a batch at a time: each member goes to a memory-mapped
    .npy beside `dest` first, then all are stored in the zip (as np.savez lays them out)."""

    def __init__(self, dest: Path, n: int):
        self.dest, self.n = dest, n
        self.arrays: dict[str, np.memmap] = {}
        self.filled: dict[str, int] = {}

    def __enter__(self) -> "_NpzWriter":
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=".npz-", dir=self.dest.parent))
        return self

    def add(self, batch: dict[str, np.ndarray]) -> None:
        for key, arr in batch.items():
            if key not in self.arrays:
                self.arrays[key] = np.lib.format.open_memmap(self.tmp / f"{key}.npy", mode="w+", dtype=arr.dtype,
                                                             shape=(self.n,) + tuple(arr.shape[1:]))
            start = self.filled.get(key, 0)
            self.arrays[key][start:start + len(arr)] = arr
            self.filled[key] = start + len(arr)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._write_zip()
        finally:
            self.arrays.clear()  # unmap before the files go
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _write_zip(self) -> None:
        for arr in self.arrays.values():
            arr.flush()
        part = self.tmp / "out.npz"
        with zipfile.ZipFile(part, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key in self.arrays:
                zf.write(self.tmp / f"{key}.npy", arcname=f"{key}.npy")
        os.replace(part, self.dest)


def measure(model: Path, prepared_npz: Path, *, threads: int = 0, providers: Optional[list[str]] = None,
            runs: int = 50, min_seconds: float = 0.5, timeout: float = 1800, lm: Optional[dict] = None) -> dict:
    """Evaluate `model` on a prepared .npz in a fresh process (the device's code path); `lm`:
    a language model's workload (edgekit.device.evaluate's LM_SETTINGS)."""
    _check_options(runs=runs, threads=threads, min_seconds=min_seconds)
    cmd = [sys.executable, "-m", "edgekit.device.evaluate", str(model), str(prepared_npz),
           "--threads", str(threads), "--runs", str(runs), "--min-seconds", repr(float(min_seconds))]
    if providers:
        cmd += ["--providers", ",".join(providers)]
    if lm:
        cmd += ["--lm", json.dumps(lm)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_child_env())
    except subprocess.TimeoutExpired as exc:
        raise EdgekitError(f"evaluating {model} took longer than {timeout:g} s (use fewer --samples or --runs)") from exc
    return _parse_result(model, proc)


def _child_env() -> dict:
    # The child imports this very source tree, installed or not.
    root = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=root + (os.pathsep + path if path else ""))


def _news(stderr: str, said: str) -> list[str]:
    """stderr's lines without terminal colours, and without the runtime's log lines that only
    repeat the error the evaluation already gave (ONNX Runtime logs a failed run's message too)."""
    lines = (_ANSI.sub("", ln).strip() for ln in stderr.splitlines())
    return [ln for ln in lines if ln and not (said and ln.rsplit("] ", 1)[-1] in said)]


def _parse_result(model: Path, proc: subprocess.CompletedProcess) -> dict:
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result = None
    if proc.returncode == 0 and isinstance(result, dict) and "error" not in result:
        return result
    said = result["error"] if isinstance(result, dict) and "error" in result else ""
    tail = " | ".join(_news(proc.stderr, said))[-STDERR_TAIL:]
    if said:
        error = _ERRORS.get(result.get("kind"), EdgekitError)
        raise error(f"evaluation of {model} failed: {result['error']}" + (f" (stderr: {tail})" if tail else ""))
    raise EdgekitError(f"evaluation of {model} crashed with exit code {proc.returncode}"
                       + (f": {tail}" if tail else " and no output"))


def evaluate_model(model: Path, data: Union[Dataset, str, Path], *, reference: Optional[Path] = None,
                   samples: Optional[int] = None, threads: int = 0, providers: Optional[list[str]] = None,
                   runs: int = 50, min_seconds: float = 0.5,
                   on_step: Optional[Callable[[str], None]] = None) -> dict:
    """Prepare the data in a temporary folder and measure the model; with a reference model
    and labelled data, measure the reference too and report the accuracy drop."""
    _check_options(samples=samples, runs=runs, threads=threads, min_seconds=min_seconds)
    step = on_step or (lambda _: None)
    dataset = data if isinstance(data, Dataset) else load_dataset(data, role="eval data")
    opts = dict(threads=threads, providers=providers, runs=runs, min_seconds=min_seconds)
    lm = _language_model(Path(model))
    with tempfile.TemporaryDirectory(prefix="edgekit-evaluate-") as tmp:
        step("preparing the evaluation data")
        if lm is not None:  # text -> token windows; the reference gives FP32's next-token log-probs
            from edgekit.device.lm_evaluate import default_workload

            dataset = lm.model_data(lm.check(Path(model)), dataset, "eval data")
            npz = lm.prepare_eval(dataset, Path(model), Path(tmp) / "eval.npz", reference=reference, samples=samples)
            # edgekit.device.lm_evaluate's default workload, no longer than the model runs at
            opts["lm"] = {"kv_cache": "cache", **default_workload(lm.model_context(Path(model)))}
        else:
            npz = prepare_eval_data(dataset, Path(model), Path(tmp) / "eval.npz", reference=reference, samples=samples)
        step(f"measuring {Path(model).name}")
        result = measure(Path(model), npz, **opts)
        if reference is not None and result["accuracy"] is not None:
            step(f"measuring the reference {Path(reference).name}")
            ref = measure(Path(reference), npz, **opts)
            result["reference"] = {"model": str(reference), **{k: ref[k] for k in (
                "accuracy", "latency_ms", "load_ms", "peak_rss_mb", "model_mb")}}
            result["accuracy_drop"] = ref["accuracy"] - result["accuracy"]
    result["model"] = str(model)
    result["data"] = dataset.describe()
    return result


def _language_model(model: Path):
    """The language-model toolchain when `model` is one (an .onnx file edgekit exported), else None."""
    from edgekit.toolchains import TOOLCHAINS, toolchain_of

    return TOOLCHAINS["lm"] if toolchain_of(model) is TOOLCHAINS["lm"] else None


_LOWEST = {"samples": 1, "runs": 1, "threads": 0, "min_seconds": 0}


def _check_options(**options) -> None:
    """ConfigError naming the flag, before any work is done."""
    for name, value in options.items():
        if value is not None and value < _LOWEST[name]:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least {_LOWEST[name]}, got {value}")
