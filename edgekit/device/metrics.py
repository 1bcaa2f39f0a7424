"""What an evaluation measures: accuracy, fidelity to a reference, latency, memory.

The accumulators take one batch at a time, so a whole evaluation set never has to be
held in memory; ``accuracy`` and ``fidelity`` are the one-shot forms of the same sums.

Standard library + numpy, Python 3.9 syntax: this runs on devices.
"""

from __future__ import annotations

import math
import sys
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

__all__ = ["accuracy", "fidelity", "latency_summary", "peak_rss_mb", "scored", "scored_index",
           "AccuracyAccumulator", "FidelityAccumulator"]

Outputs = Union[np.ndarray, Sequence[np.ndarray]]


def scored_index(dtypes: Sequence) -> int:
    """Which output metrics read: the first floating-point one (logits, embeddings, scores),
    else the first. Exports often put an integer output first (token ids passed through, a
    class id beside the scores): scoring that would call every candidate perfect."""
    return next((i for i, d in enumerate(dtypes) if np.issubdtype(np.dtype(d), np.floating)), 0)


def scored(outputs: Outputs) -> np.ndarray:
    """The scored output (scored_index) of the run() list, or that array itself."""
    if isinstance(outputs, np.ndarray):
        return outputs
    arrays = [np.asarray(o) for o in outputs]
    return arrays[scored_index([a.dtype for a in arrays])]


class AccuracyAccumulator:
    """Top-1 accuracy: argmax of the first output over its last axis against class ids."""

    def __init__(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, outputs: Outputs, labels: np.ndarray) -> None:
        predicted = np.argmax(scored(outputs), axis=-1)
        labels = np.asarray(labels)
        if predicted.shape != labels.shape:
            raise ValueError(f"labels have shape {labels.shape}, the model's predictions {predicted.shape}")
        self.correct += int(np.count_nonzero(predicted == labels))
        self.total += int(predicted.size)

    def result(self) -> float:
        if self.total == 0:
            raise ValueError("accuracy of no samples")
        return self.correct / self.total


class FidelityAccumulator:
    """Agreement of the first output with reference outputs, each sample flattened."""

    def __init__(self) -> None:
        self.samples = 0
        self.agree = 0
        self.positions = 0
        self.cosine_sum = 0.0
        self.signal = 0.0
        self.noise = 0.0

    def update(self, outputs: Outputs, reference: np.ndarray) -> None:
        out = scored(outputs).astype(np.float64)
        ref = np.asarray(reference, dtype=np.float64)
        if out.shape != ref.shape:
            raise ValueError(f"reference outputs have shape {ref.shape}, the model's first output {out.shape}")
        if out.ndim == 1:  # one value per sample
            out, ref = out[:, None], ref[:, None]
        same = np.argmax(out, axis=-1) == np.argmax(ref, axis=-1)
        self.agree += int(np.count_nonzero(same))
        self.positions += int(same.size)
        flat_out, flat_ref = out.reshape(len(out), -1), ref.reshape(len(ref), -1)
        self.cosine_sum += float(_cosines(flat_out, flat_ref).sum())
        self.samples += len(out)
        self.signal += float(np.square(flat_ref).sum())
        self.noise += float(np.square(flat_ref - flat_out).sum())

    def result(self) -> Dict[str, float]:
        if self.samples == 0:
            raise ValueError("fidelity of no samples")
        return {"top1_agreement": self.agree / self.positions,
                "cosine": self.cosine_sum / self.samples,
                "sqnr_db": _sqnr_db(self.signal, self.noise)}


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    dots = (a * b).sum(axis=1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    # Two all-zero vectors are identical; one zero vector against another is unrelated.
    both_zero = (np.abs(a).sum(axis=1) == 0) & (np.abs(b).sum(axis=1) == 0)
    safe = np.where(norms > 0, norms, 1.0)
    return np.where(both_zero, 1.0, np.where(norms > 0, dots / safe, 0.0))


def _sqnr_db(signal: float, noise: float) -> Optional[float]:
    """10 log10(signal / noise). An exact match (no noise) or a zero signal has no finite
    SQNR: None, so that reports stay strict JSON (cosine and top-1 still tell the story)."""
    if noise == 0.0 or signal == 0.0:
        return None
    return 10.0 * math.log10(signal / noise)


def accuracy(outputs: Outputs, labels: np.ndarray) -> float:
    acc = AccuracyAccumulator()
    acc.update(outputs, labels)
    return acc.result()


def fidelity(outputs: Outputs, reference: np.ndarray) -> Dict[str, float]:
    fid = FidelityAccumulator()
    fid.update(outputs, reference)
    return fid.result()


def latency_summary(seconds: List[float]) -> Dict[str, float]:
    """Percentiles and mean of per-run times, in milliseconds.

    p95 is there beside the report's p50/p90/p99 because budgets gate on it
    (``max_latency_ms_p95``)."""
    if not seconds:
        raise ValueError("no latency samples")
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    p50, p90, p95, p99 = (float(p) for p in np.percentile(ms, [50, 90, 95, 99]))
    return {"p50": p50, "p90": p90, "p95": p95, "p99": p99, "mean": float(ms.mean()), "n": int(ms.size)}


def peak_rss_mb() -> Optional[float]:
    """This process's peak resident set size in MiB (None where the OS does not say).

    On Linux this is VmHWM, the high-water mark of this program's own memory: getrusage's
    ru_maxrss survives exec, so a process started from a large parent (Python's
    subprocess uses vfork) would report the parent's peak instead of its own.
    """
    hwm = _vm_hwm_kb()
    if hwm is not None:
        return hwm / 1024.0
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _vm_hwm_kb() -> Optional[int]:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None
