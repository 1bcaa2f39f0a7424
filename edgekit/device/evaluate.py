"""The one evaluation code path, shared by the host's `edgekit evaluate` and the device.

    python -m edgekit.device.evaluate MODEL DATA [--threads N] [--providers A,B]
                                      [--samples N] [--runs N] [--min-seconds S]

prints one JSON object (see ``evaluate``) and exits 0, or prints {"error", "kind"} and
exits 2 for a model or data that is not usable, 1 for anything else.

DATA is an .npz with the model's inputs keyed by input name (samples first), optional
``labels`` (class ids) and optional ``_reference`` (the FP32 reference model's first
output for the same samples). Stored members are memory-mapped and read one batch at
a time, so memory does not grow with the set.

Standard library + numpy + one runtime, Python 3.9 syntax, relative imports only: this
package is shipped to devices as ``edgekit_device``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from .backends import Backend, ModelLoadError, open_backend
from .lm import is_lm
from .npz import NpzError, load_npz
from .metrics import AccuracyAccumulator, FidelityAccumulator, latency_summary, peak_rss_mb

__all__ = ["evaluate", "main", "load_npz", "run_batch", "DataFormatError", "UsageError", "LABELS", "REFERENCE"]

LABELS = "labels"
REFERENCE = "_reference"
LATENCY_POOL = 32  # distinct samples cycled through while timing


class DataFormatError(ValueError):
    """The evaluation data is unreadable or does not fit the model."""


class UsageError(ValueError):
    """A setting (a flag, a keyword) is out of range."""


def fixed_batch(backend: Backend) -> Optional[int]:
    """The batch size the model insists on, if its first axis is fixed."""
    dims = [shape[0] for _, _, shape in backend.inputs if shape]
    return dims[0] if dims and dims[0] is not None else None


def run_batch(backend: Backend, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
    """Run any number of rows; a model with a fixed batch size gets padded chunks."""
    rows = len(next(iter(feeds.values())))
    size = fixed_batch(backend)
    if size is None or size == rows:
        return backend.run(feeds)
    parts = []
    for start in range(0, rows, size):
        chunk = {k: _pad(v[start:start + size], size) for k, v in feeds.items()}
        parts.append([o[:min(size, rows - start)] for o in backend.run(chunk)])
    return [np.concatenate(outs) for outs in zip(*parts)]


def _pad(arr: np.ndarray, rows: int) -> np.ndarray:
    if len(arr) == rows:
        return arr
    return np.concatenate([arr, np.repeat(arr[-1:], rows - len(arr), axis=0)])


def check_data(backend: Backend, arrays: Dict[str, np.ndarray], data_path: str) -> int:
    """Raise DataFormatError unless the arrays fit the model; returns the sample count."""
    names = [name for name, _, _ in backend.inputs]
    for name, dtype, shape in backend.inputs:
        if name not in arrays:
            raise DataFormatError(f"{data_path} lacks input '{name}' (model inputs: {', '.join(names)}; "
                                  f"data has: {', '.join(sorted(arrays)) or 'nothing'})")
        arr = arrays[name]
        if arr.ndim != len(shape) or any(w is not None and g != w for g, w in zip(arr.shape[1:], shape[1:])):
            raise DataFormatError(f"{data_path}: input '{name}' has shape {tuple(arr.shape)}, "
                                  f"the model takes {_fmt_shape(shape)}")
        if np.dtype(dtype).kind != arr.dtype.kind and not {np.dtype(dtype).kind, arr.dtype.kind} <= set("iu"):
            raise DataFormatError(f"{data_path}: input '{name}' has dtype {arr.dtype}, the model takes {dtype}")
    lengths = {k: len(arrays[k]) for k in names + [LABELS, REFERENCE] if k in arrays and arrays[k].ndim}
    if len(set(lengths.values())) != 1:
        raise DataFormatError(f"{data_path}: arrays disagree on the number of samples (axis 0): {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise DataFormatError(f"{data_path}: the data set is empty")
    return n


def _fmt_shape(shape) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


def _feeds(backend: Backend, arrays: Dict[str, np.ndarray], start: int, stop: int) -> Dict[str, np.ndarray]:
    # Copy out of the memory map, in the dtype the model takes (float64 data, float32 model).
    return {name: np.ascontiguousarray(arrays[name][start:stop], dtype=dtype) for name, dtype, _ in backend.inputs}


def score(backend: Backend, arrays: Dict[str, np.ndarray], n: int, batch_size: int) -> dict:
    """Accuracy (with labels) and fidelity (with a reference) over the first n samples."""
    acc = AccuracyAccumulator() if LABELS in arrays else None
    fid = FidelityAccumulator() if REFERENCE in arrays else None
    batch_size = fixed_batch(backend) or batch_size
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        outputs = run_batch(backend, _feeds(backend, arrays, start, stop))
        try:
            if acc is not None:
                acc.update(outputs, np.asarray(arrays[LABELS][start:stop]))
            if fid is not None:
                fid.update(outputs, np.asarray(arrays[REFERENCE][start:stop]))
        except ValueError as exc:
            raise DataFormatError(f"evaluation data does not fit the model's output '{backend.output_names[0]}': {exc}") from exc
    return {"accuracy": acc.result() if acc else None, "fidelity": fid.result() if fid else None}


def time_runs(backend: Backend, arrays: Dict[str, np.ndarray], n: int, *, warmup: int, runs: int,
              min_seconds: float, max_seconds: float) -> List[float]:
    """Seconds per single-sample run (a full batch for fixed-batch models), after warm-up:
    at least `runs` runs and at least `min_seconds`, stopping at `max_seconds`."""
    rows = fixed_batch(backend) or 1
    pool = [{k: _pad(v, rows) for k, v in _feeds(backend, arrays, i, min(i + rows, n)).items()}
            for i in range(0, min(n, LATENCY_POOL * rows), rows)]
    for i in range(warmup):
        backend.run(pool[i % len(pool)])
    times: List[float] = []
    started = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - started
        if elapsed >= max_seconds or (len(times) >= runs and elapsed >= min_seconds):
            return times
        feeds = pool[len(times) % len(pool)]
        t0 = time.perf_counter()
        backend.run(feeds)
        times.append(time.perf_counter() - t0)


def evaluate(model_path: str, data_path: str, *, threads: int = 0, providers: Optional[List[str]] = None,
             samples: Optional[int] = None, batch_size: int = 64, warmup: int = 5, runs: int = 50,
             min_seconds: float = 0.5, max_seconds: float = 10.0, lm: Optional[dict] = None) -> dict:
    """Load the model, score it on the data, time it, and report what was measured. A
    language model (edgekit.device.lm) is measured by edgekit.device.lm_evaluate, with
    `lm`'s settings (context, prompt_tokens, generate_tokens, kv_cache, curve_points, quality_only)."""
    _check_settings(threads=threads, samples=samples, batch_size=batch_size, warmup=warmup, runs=runs,
                    min_seconds=min_seconds, max_seconds=max_seconds)
    backend = open_backend(model_path, threads=threads, providers=providers)
    if not os.path.isfile(data_path):
        raise DataFormatError(f"{data_path}: evaluation data not found")
    try:
        arrays = load_npz(data_path)
    except NpzError as exc:
        raise DataFormatError(str(exc)) from exc
    if is_lm(backend):
        return _evaluate_lm(backend, model_path, arrays, data_path, samples, lm or {})
    n = check_data(backend, arrays, data_path)
    n = n if samples is None else min(n, samples)
    result = score(backend, arrays, n, batch_size)
    times = time_runs(backend, arrays, n, warmup=warmup, runs=runs, min_seconds=min_seconds, max_seconds=max_seconds)
    result.update({
        "latency_ms": latency_summary(times),
        "load_ms": backend.load_ms,
        "peak_rss_mb": peak_rss_mb(),
        "model_mb": os.path.getsize(model_path) / (1024.0 * 1024.0),
        "n": n,
        "runtime": backend.describe(),
    })
    return result


LM_SETTINGS = ("context", "prompt_tokens", "generate_tokens", "kv_cache", "curve_points", "quality_only")


def _evaluate_lm(backend: Backend, model_path: str, arrays: Dict[str, np.ndarray], data_path: str,
                 samples: Optional[int], lm: dict) -> dict:
    from .lm_evaluate import evaluate_lm

    unknown = sorted(set(lm) - set(LM_SETTINGS))
    if unknown:
        raise UsageError(f"unknown language-model setting '{unknown[0]}' (known: {', '.join(LM_SETTINGS)})")
    n = check_lm_data(arrays, data_path)
    n = n if samples is None else min(n, samples)
    try:
        return evaluate_lm(backend, model_path, arrays, n, **lm)
    except ValueError as exc:  # settings out of range, or windows longer than the context
        raise UsageError(str(exc)) from exc


def check_lm_data(arrays: Dict[str, np.ndarray], data_path: str) -> int:
    """The number of token windows, after checking they and the FP32 reference agree."""
    from .lm_evaluate import INPUT, REF_IDS, REF_LOGP, REF_TARGET

    ids = arrays.get(INPUT)
    if ids is None or ids.ndim != 2 or ids.dtype.kind not in "iu" or ids.shape[1] < 2:
        raise DataFormatError(f"{data_path}: a language model's evaluation data needs '{INPUT}', "
                              "token windows [N, S] of integers (S at least 2)")
    n, s = ids.shape
    refs = [k for k in (REF_IDS, REF_LOGP, REF_TARGET) if k in arrays]
    if refs and len(refs) != 3:
        raise DataFormatError(f"{data_path}: the FP32 reference needs {REF_IDS}, {REF_LOGP} and {REF_TARGET}")
    for key in refs:
        if arrays[key].shape[:2] != (n, s - 1):
            raise DataFormatError(f"{data_path}: '{key}' has shape {tuple(arrays[key].shape)}, "
                                  f"the windows need ({n}, {s - 1}, ...)")
    if n == 0:
        raise DataFormatError(f"{data_path}: the data set is empty")
    return n


def _check_settings(**settings) -> None:
    lowest = {"threads": 0, "samples": 1, "batch_size": 1, "warmup": 0, "runs": 1, "min_seconds": 0}
    for key, low in lowest.items():
        value = settings[key]
        if value is not None and value < low:
            raise UsageError(f"{key} must be at least {low}, got {value}")
    if not settings["max_seconds"] > 0:
        raise UsageError(f"max_seconds must be positive, got {settings['max_seconds']}")




class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one JSON line instead of argparse's usage text
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="edgekit.device.evaluate", description="Evaluate a model on an .npz; print JSON.")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--providers", default="", help="comma-separated execution providers")
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--min-seconds", type=float, default=0.5)
    p.add_argument("--max-seconds", type=float, default=10.0)
    p.add_argument("--lm", type=json.loads, default=None,
                   help="a language model's settings, as a JSON object (see LM_SETTINGS)")
    return p


_KINDS = ((ModelLoadError, "model"), (DataFormatError, "data"), (UsageError, "usage"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the evaluation (or the error) as one JSON object; return the exit code."""
    try:
        args = _parser().parse_args(argv)
        providers = [p for p in args.providers.split(",") if p] or None
        result = evaluate(args.model, args.data, threads=args.threads, providers=providers, samples=args.samples,
                          warmup=args.warmup, runs=args.runs, min_seconds=args.min_seconds,
                          max_seconds=args.max_seconds, lm=args.lm)
    except Exception as exc:  # the caller is a program: it gets JSON, never a traceback
        kind = next((k for cls, k in _KINDS if isinstance(exc, cls)), "runtime")
        print(json.dumps({"error": str(exc) or type(exc).__name__, "kind": kind}))
        return 2 if kind != "runtime" else 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
