"""Text data sets for language models: read, checked, and tokenized into windows.

    NAME.txt              UTF-8 text
    NAME.jsonl            one JSON object per line, its "text" field a string
    DIR/dataset.toml      format = "text", files = ["a.txt", "b.jsonl", ...] (relative to DIR)

Text is read as Python's text mode reads it: a UTF-8 byte-order mark dropped, Windows (CRLF) and
old Mac (CR) line ends as "\n", so the same text tokenizes the same whatever wrote it. A .jsonl
file is split at "\n" alone: JSON allows U+2028 and other Unicode line separators unescaped
inside a string, where str.splitlines() would cut the object.

Documents (a .txt file, a .jsonl line) are joined by a blank line and tokenized with the
model's own tokenizer (its tokenizer.json) into non-overlapping windows of `length` tokens;
the tail shorter than a window is dropped. Windows are what a language model is evaluated
and calibrated on, and what a bundle carries (a device needs no tokenizer to evaluate).
The set's hash is its files' (edgekit.datasets), so the same text is the same set whatever
the window.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import DataError

__all__ = ["TextSource", "TEXT_SUFFIXES", "read_documents", "tokenize_windows", "shared_text", "INPUT_IDS"]

TEXT_SUFFIXES = (".txt", ".jsonl")
INPUT_IDS = "input_ids"
_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class TextSource:
    """The files of a text data set, in order."""

    files: tuple[Path, ...]


def _read_utf8(path: Path, role: str) -> str:
    """The file's text: UTF-8 less a byte-order mark, its line ends "\n"."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{role} {path}: cannot read: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{role} {path}: not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})",
                        hint="convert it to UTF-8, e.g. iconv -f cp1252 -t utf-8") from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _jsonl_documents(path: Path, role: str) -> list[str]:
    docs = []
    for no, line in enumerate(_read_utf8(path, role).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{role} {path}: line {no} is not JSON ({exc})") from exc
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise DataError(f"{role} {path}: line {no} has no string field 'text'",
                            hint='write one object per line, {"text": "..."}')
        docs.append(obj["text"])
    return docs


def read_documents(source: TextSource, role: str = "data") -> list[str]:
    """Every document of the set, in order; DataError naming the file for what cannot be read."""
    docs: list[str] = []
    for path in source.files:
        if path.suffix not in TEXT_SUFFIXES:
            raise DataError(f"{role} {path}: a text file is .txt or .jsonl")
        found = _jsonl_documents(path, role) if path.suffix == ".jsonl" else [_read_utf8(path, role)]
        docs += [d for d in found if d.strip()]
    if not docs:
        raise DataError(f"{role} {', '.join(map(str, source.files))}: no text in it")
    return docs


def shared_text(known: TextSource, new: TextSource) -> float:
    """The share of `new`'s text (in characters) that is documents `known` holds too."""
    seen = {d.strip() for d in read_documents(known)}
    docs = [d.strip() for d in read_documents(new)]
    return sum(len(d) for d in docs if d in seen) / max(1, sum(len(d) for d in docs))


def tokenize_windows(source: TextSource, tokenizer_file: Path, length: int, role: str = "data") -> np.ndarray:
    """The set's token ids as windows [N, length] (int64); DataError when not one window fits."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    ids = np.asarray(tokenizer.encode(_SEPARATOR.join(read_documents(source, role))).ids, dtype=np.int64)
    n = len(ids) // length
    if n == 0:
        raise DataError(f"{role} {', '.join(map(str, source.files))}: {len(ids)} tokens, fewer than one window "
                        f"of {length}", hint="give more text")
    return ids[: n * length].reshape(n, length)
