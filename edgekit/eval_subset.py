"""The evaluation subset a bundle carries: how many samples, which ones, and when it is too big.

How many, by default (``package`` without ``--eval-samples``):

    every sample, up to ENOUGH = 2500: the standard error of an accuracy measured on n
        samples is sqrt(p (1 - p) / n), at most 0.5 / sqrt(n): 1 pp at 2500 samples,
        whatever the accuracy (0.6 pp at 90%);
    fewer when eval.npz would outgrow its byte budget, max(4 x the model, 4 MiB): a
        bundle stays mostly model, and a small model may still ship a few MiB of data;
    never fewer than FLOOR = 400 (standard error at most 2.5 pp; one sample is 0.25 pp,
        a quarter of the 1 pp accuracy-drop budget the shipped profiles set), so that the
        device's gate still resolves its budget.

When the floor, or an explicit --eval-samples, leaves eval.npz over the budget, the
bundle is mostly evaluation data: ``size_warning`` gives the one line that says so, with
the --eval-samples that fits the budget and the standard error it would cost.

Which ones: evenly spaced over the whole set (a set sorted by class keeps every class),
the same every time.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from edgekit.datasets import Dataset

__all__ = ["ENOUGH", "FLOOR", "eval_indices", "subset", "budget_bytes", "default_samples", "standard_error_pp",
           "size_warning"]

ENOUGH = 2500
FLOOR = 400
MODEL_TIMES = 4
MIN_BUDGET = 4 * 2**20
MiB = 2**20


def budget_bytes(model_bytes: int) -> int:
    """What eval.npz may take in a bundle of a model of `model_bytes`."""
    return max(MODEL_TIMES * model_bytes, MIN_BUDGET)


def default_samples(n: int, sample_bytes: int, model_bytes: int) -> int:
    """How many of n samples of `sample_bytes` each to bundle with the model (module docstring)."""
    fit = budget_bytes(model_bytes) // max(1, sample_bytes)
    return min(n, max(FLOOR, min(ENOUGH, fit)))


def standard_error_pp(n: int) -> float:
    """The largest standard error of an accuracy on n samples, in percentage points."""
    return 100 * 0.5 / math.sqrt(n)


def size_warning(manifest: dict, bundle_bytes: int) -> Optional[str]:
    """One line when the bundle's eval.npz is over its budget: the sizes, the ratio, and the fix."""
    files = manifest["files"]
    data = files["eval.npz"]["size"]
    model = sum(f["size"] for name, f in files.items() if name != "eval.npz" and not name.startswith("runner/"))
    budget = budget_bytes(model)
    if data <= budget:
        return None
    n = manifest["eval"]["n"]
    fit = max(1, int(budget // (data / n)))
    return (f"the bundle is {data / bundle_bytes:.0%} evaluation data: eval.npz is {size(data)}, "
            f"{data / model:.0f}x the model ({size(model)}); --eval-samples {fit} keeps it within {size(budget)}, "
            f"at a standard error of accuracy up to {standard_error_pp(fit):.1f} pp "
            f"({standard_error_pp(n):.1f} pp with its {n} samples)")


def size(nbytes: float) -> str:
    """4.7 MiB, 12.0 KiB, 324 B."""
    for unit, scale in (("MiB", MiB), ("KiB", 1024)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes:.0f} B"


def eval_indices(n: int, samples: Optional[int]) -> np.ndarray:
    """Which samples go into the bundle: all, or `samples` evenly spaced over the set (so a
    set sorted by class keeps every class), the same every time."""
    if samples is None or samples >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, samples).round().astype(np.int64))


def subset(data: Dataset, indices: np.ndarray) -> Dataset:
    """The same data set restricted to `indices` (arrays are copied, images listed). Its labels
    are judged as the whole file's: a wrong label outside the subset is still a wrong file."""
    if len(indices) == len(data):
        return data
    kept = dict(_sha256=data.sha256, _label_span=data.label_span)
    if data.images is not None:
        spec, items = data.images
        return Dataset(data.path, images=(spec, [items[i] for i in indices]), **kept)
    return Dataset(data.path, arrays={k: np.asarray(v[indices]) for k, v in data.arrays.items()}, **kept)
