"""A language model's data: text tokenized into windows with the model's tokenizer, and the
evaluation set a bundle carries (windows plus what the FP32 model said about them; see
edgekit.device.lm_evaluate for its layout and what is measured from it)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from edgekit.datasets import Dataset
from edgekit.device.lm import TOKENIZER
from edgekit.device.lm_evaluate import INPUT, REF_IDS, REF_LOGP, REF_TARGET, reference_of
from edgekit.errors import DataError, ModelError
from edgekit.textdata import tokenize_windows

__all__ = ["WINDOW", "window_length", "token_windows", "write_eval"]

WINDOW = 256  # tokens per evaluation window (the profile's context, when shorter)


def window_length(profile=None, model_context=None) -> int:
    """Tokens per window: WINDOW, or the profile's context or the model's (its `context`
    metadata) when shorter."""
    lm = getattr(profile, "lm", None)
    return min(WINDOW, *(c for c in (lm.context if lm is not None else None, model_context) if c))


def token_windows(model: Path, data: Dataset, role: str, length: int) -> Dataset:
    """`data` as token windows [N, length] (int64 'input_ids'), tokenized with the tokenizer.json
    beside `model`; a set that holds windows already is checked and kept."""
    if data.text is None:
        ids = data.arrays.get(INPUT)
        if ids is None or ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer) or set(data.arrays) != {INPUT}:
            raise DataError(f"{role} {data.path}: a language model takes text (.txt, .jsonl) or token windows "
                            f"('{INPUT}' alone, [N, S] integers)")
        return data
    tokenizer = Path(model).parent / TOKENIZER
    if not tokenizer.is_file():
        raise ModelError(f"model {model}: no {TOKENIZER} beside it to tokenize {role} {data.path}")
    windows = tokenize_windows(data.text, tokenizer, length, role)
    return Dataset(data.path, arrays={INPUT: windows}, _sha256=data.sha256)


def check_vocabulary(ids: np.ndarray, vocab: Optional[int], what: str, model: Path) -> None:
    """Token ids the model has rows for (0 .. vocab - 1): others would fail inside the runtime."""
    if vocab and ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise DataError(f"{what}: token ids span {ids.min()}..{ids.max()}, and model {model} has a vocabulary "
                        f"of {vocab}: give windows tokenized for this model (or its text)")


def write_eval(data: Dataset, model: Path, dest: Path, reference: Optional[Path], samples: Optional[int],
               vocab: int) -> Path:
    """dest (.npz): the first `samples` windows and, with a reference model, its top-k next
    tokens, their log-probs and the next token's log-prob, computed by the device's own code."""
    from edgekit.device.lm import open_lm

    windows = np.asarray(data.arrays[INPUT][:samples], dtype=np.int64)
    check_vocabulary(windows, vocab, f"eval data {data.path}", model)
    arrays = {INPUT: windows}
    if reference is not None:
        lm = open_lm(str(reference))
        refs = [reference_of(lm.window_logits(w), w) for w in windows]
        arrays.update({REF_IDS: np.stack([r[0] for r in refs]), REF_LOGP: np.stack([r[1] for r in refs]),
                       REF_TARGET: np.stack([r[2] for r in refs])})
    dest.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dest, **arrays)
    return dest
