"""Calibration and evaluation data sets, streamed in batches.

A data set is a ``.npz`` file or a directory with ``dataset.toml`` (``.npy`` arrays, or
an image folder ``ROOT/<class>/*.png``), or text for a language model (``.txt``, ``.jsonl``
or a ``dataset.toml`` of format "text": edgekit.textdata). Arrays are keyed by the model's input names,
axis 0 is the sample axis, and an optional ``labels`` array of class ids makes accuracy
the metric. See calibration/README.md for the format.

Loading never reads a whole set at once: ``.npy`` files and uncompressed ``.npz``
members are memory-mapped, images are decoded one batch at a time.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit._toml import pydantic_error_line, read_toml
from edgekit.errors import DataError
from edgekit.textdata import TEXT_SUFFIXES, TextSource, read_documents, shared_text

__all__ = ["Dataset", "InputSpec", "load_dataset", "check_disjoint", "LABELS"]

LABELS = "labels"
SHARED_TEXT = 0.01  # the share of eval text that may repeat calibration documents (a heading, a signature)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, numpy dtype and shape (None for a dynamic axis)."""

    name: str
    dtype: str
    shape: tuple[Optional[int], ...]


class _ImageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    input: str
    root: str = "."
    size: list[int] = Field(min_length=2, max_length=2)  # height, width
    mode: Literal["L", "RGB"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    scale: float = 1.0 / 255.0
    mean: list[float] = [0.0]
    std: list[float] = [1.0]
    classes: Optional[list[str]] = None


class _DatasetToml(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    format: Literal["npy", "images", "text"]
    arrays: dict[str, str] = {}
    images: Optional[_ImageSpec] = None
    files: list[str] = []  # format = "text": .txt and .jsonl files (edgekit.textdata)


@dataclass
class Dataset:
    """A data set on disk: its arrays (memory-mapped where possible) or its images."""

    path: Path
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    images: Optional[tuple[_ImageSpec, list[tuple[Path, int]]]] = None
    text: Optional[TextSource] = None  # a text set: a language model tokenizes it (edgekit.textdata)
    _sha256: Optional[str] = None
    _fits: set = field(default_factory=set, repr=False)  # input specs already checked: a scan is I/O
    _label_span: Optional[tuple[int, int]] = None  # found by check()'s scan, or by label_span

    @property
    def input_names(self) -> list[str]:
        if self.images:
            return [self.images[0].input]
        return [k for k in self.arrays if k != LABELS]

    @property
    def has_labels(self) -> bool:
        return LABELS in self.arrays or self.images is not None

    def __len__(self) -> int:
        if self.text is not None:
            return len(read_documents(self.text))
        if self.images:
            return len(self.images[1])
        return len(next(iter(self.arrays.values())))

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = _content_hash(self.path)
        return self._sha256

    @property
    def label_span(self) -> Optional[tuple[int, int]]:
        """(lowest, highest) label, None without labels. check() finds it in its scan; otherwise
        only the labels are read (an image folder's come from its listing)."""
        if self._label_span is None and self.has_labels:
            if self.images:
                batches = [np.asarray([label for _, label in self.images[1]])]
            else:
                labels = self.arrays[LABELS]
                batches = (np.asarray(labels[i:i + 65536]) for i in range(0, len(labels), 65536))
            self._label_span = _span(None, batches)
        return self._label_span

    def check_labels(self, classes: int, model: str, role: str = "data") -> None:
        """DataError unless every label is a class id of a model with `classes` outputs;
        `model` says which model and output (for the message)."""
        span = self.label_span
        if span is not None and (span[0] < 0 or span[1] >= classes):
            raise DataError(f"{role} {self.path}: labels span {span[0]}..{span[1]} but {model}",
                            hint=f"labels must be class indices 0..{classes - 1}")

    def describe(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "n": len(self)}

    def batches(self, batch_size: int = 64, limit: Optional[int] = None
                ) -> Iterator[tuple[dict[str, np.ndarray], Optional[np.ndarray]]]:
        """(inputs, labels) batches; arrays are copied out of the memory map per batch."""
        n = len(self) if limit is None else min(limit, len(self))
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            if self.images:
                yield self._image_batch(start, stop)
            else:
                inputs = {k: np.ascontiguousarray(v[start:stop]) for k, v in self.arrays.items() if k != LABELS}
                labels = np.asarray(self.arrays[LABELS][start:stop]) if LABELS in self.arrays else None
                yield inputs, labels

    def _image_batch(self, start: int, stop: int):
        spec, items = self.images
        from PIL import Image  # only image data sets need Pillow

        out, labels = [], []
        for path, label in items[start:stop]:
            try:
                with Image.open(path) as im:
                    im = im.convert(spec.mode).resize((spec.size[1], spec.size[0]))
                    arr = np.asarray(im, dtype=np.float32)
            except OSError as exc:
                raise DataError(f"{path}: cannot read image: {exc}") from exc
            if arr.ndim == 2:
                arr = arr[:, :, None]
            arr = (arr * spec.scale - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
            out.append(arr.transpose(2, 0, 1) if spec.layout == "NCHW" else arr)
            labels.append(label)
        return {spec.input: np.stack(out).astype(np.float32)}, np.asarray(labels, dtype=np.int64)

    def check(self, inputs: Sequence[InputSpec], role: str = "data") -> None:
        """Raise DataError naming what does not fit the model; scans values in batches, once
        per model signature (calibrate checks the same set for every recipe)."""
        if tuple(inputs) in self._fits:
            return
        if self.text is not None:
            raise DataError(f"{role} {self.path} is text: only a language model reads text",
                            hint="give a language model and a target with an [lm] section")
        if len(self) == 0:
            raise DataError(f"{role} {self.path}: the data set is empty")
        model_names = [i.name for i in inputs]
        for spec in inputs:
            if spec.name not in self.input_names:
                raise DataError(f"{role} {self.path} lacks input '{spec.name}' "
                                f"(model inputs: {', '.join(model_names)}; data has: {', '.join(self.input_names) or 'nothing'})")
        for name in self.input_names:
            if name not in model_names:
                raise DataError(f"{role} {self.path}: array '{name}' is not a model input "
                                f"(model inputs: {', '.join(model_names)})")
        span = None
        for inputs_batch, labels in self.batches(256):
            for spec in inputs:
                _check_array(self.path, role, spec, inputs_batch[spec.name])
            if labels is not None and not np.issubdtype(labels.dtype, np.integer):
                raise DataError(f"{role} {self.path}: 'labels' must be integer class ids, got {labels.dtype}")
            if labels is not None and labels.ndim != 1:  # a column (N, 1), or one-hot rows (N, C)
                raise DataError(f"{role} {self.path}: 'labels' must hold one class id per sample, shape (N,); got "
                                f"shape (N, {', '.join(map(str, labels.shape[1:]))})",
                                hint="save labels.ravel() for a column, labels.argmax(1) for one-hot rows")
            if not self.images and LABELS in self.arrays and len(self.arrays[LABELS]) != len(self):
                raise DataError(f"{role} {self.path}: 'labels' has {len(self.arrays[LABELS])} rows, inputs have {len(self)}")
            span = _span(span, [labels]) if labels is not None else span
        self._label_span = self._label_span or span
        self._fits.add(tuple(inputs))


def _span(span: Optional[tuple[int, int]], batches) -> Optional[tuple[int, int]]:
    """`span` widened by the lowest and highest value of each non-empty batch."""
    for batch in batches:
        if batch.size:
            low, high = int(batch.min()), int(batch.max())
            span = (low, high) if span is None else (min(span[0], low), max(span[1], high))
    return span


def _check_array(path: Path, role: str, spec: InputSpec, arr: np.ndarray) -> None:
    want_float = np.issubdtype(np.dtype(spec.dtype), np.floating)
    if want_float != np.issubdtype(arr.dtype, np.floating) or (not want_float and not np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"{role} {path}: input '{spec.name}' has dtype {arr.dtype}, the model takes {spec.dtype}")
    if arr.ndim != len(spec.shape):
        raise DataError(f"{role} {path}: input '{spec.name}' has shape {tuple(arr.shape)} (samples first), "
                        f"the model takes {_fmt_shape(spec.shape)}")
    for axis, (got, want) in enumerate(zip(arr.shape[1:], spec.shape[1:]), start=1):
        if want is not None and got != want:
            raise DataError(f"{role} {path}: input '{spec.name}' has shape {tuple(arr.shape)} (samples first), "
                            f"the model takes {_fmt_shape(spec.shape)} (axis {axis})")
    if want_float and not np.isfinite(arr).all():
        raise DataError(f"{role} {path}: input '{spec.name}' contains NaN or Inf values")


def _fmt_shape(shape) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


def _content_hash(path: Path) -> str:
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def load_dataset(path: str | Path, role: str = "data") -> Dataset:
    """Open a data set; raises DataError naming the file when it cannot be read."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{role} {path}: not found (give a .npz file, a directory with dataset.toml, "
                        "or text: .txt or .jsonl)")
    if path.is_dir():
        return _load_dir(path, role)
    if path.suffix in TEXT_SUFFIXES:
        return Dataset(path, text=TextSource((path,)))
    if path.suffix == ".npy":
        return Dataset(path, arrays=_check_lengths(path, role, {"input": _open_npy(path, role)}))
    if path.suffix.lower() != ".npz" and not zipfile.is_zipfile(path):  # a .csv, .json, .parquet ...
        raise DataError(f"{role} {path}: edgekit does not read {path.suffix or 'this'} files: give a .npz file, "
                        "a directory with dataset.toml, or text (.txt, .jsonl); calibration/README.md shows how "
                        "to write a .npz")
    return Dataset(path, arrays=_check_lengths(path, role, _open_npz(path, role)))


def check_disjoint(calibration: Dataset, eval_data: Dataset) -> None:
    """DataError when the eval set is the calibration set, or (text) repeats its documents: a
    model measured on what it was calibrated on looks better than it is."""
    hint = "evaluate on data the model is not calibrated on"
    if calibration.text is not None and eval_data.text is not None:
        share = shared_text(calibration.text, eval_data.text)
        if share > SHARED_TEXT:
            raise DataError(f"eval data {eval_data.path}: {share:.0%} of its text is documents of the calibration "
                            f"data {calibration.path}", hint=hint)
    elif calibration.sha256 == eval_data.sha256:
        raise DataError(f"eval data {eval_data.path}: the same data as the calibration data {calibration.path}",
                        hint=hint)


def _check_lengths(path: Path, role: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not arrays:
        raise DataError(f"{role} {path}: the data set is empty (no arrays)")
    lengths = {k: (a.shape[0] if a.ndim else 0) for k, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise DataError(f"{role} {path}: arrays disagree on the number of samples (axis 0): {lengths}")
    return arrays


def _open_npy(path: Path, role: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{role} {path}: not a readable .npy array ({exc})") from exc


def _open_npz(path: Path, role: str) -> dict[str, np.ndarray]:
    """Memory-map stored (uncompressed) members; compressed ones are read whole."""
    from edgekit.device.npz import NpzError, load_npz  # the device's reader: one code path

    try:
        return load_npz(str(path))
    except NpzError as exc:
        raise DataError(f"{role} {exc}") from exc


def _load_dir(path: Path, role: str) -> Dataset:
    toml_path = path / "dataset.toml"
    if not toml_path.is_file():
        raise DataError(f"{role} {path}: a data set directory needs a dataset.toml (see calibration/README.md)")
    try:
        spec = _DatasetToml.model_validate(read_toml(toml_path, DataError))
    except ValidationError as exc:
        raise DataError(pydantic_error_line(toml_path, exc)) from exc
    if spec.format == "text":
        if not spec.files:
            raise DataError(f"{toml_path}: field 'files': name at least one .txt or .jsonl file")
        missing = [f for f in spec.files if not (path / f).is_file()]
        if missing:
            raise DataError(f"{toml_path}: field 'files': {path / missing[0]} not found")
        return Dataset(path, text=TextSource(tuple(path / f for f in spec.files)))
    if spec.format == "npy":
        if not spec.arrays:
            raise DataError(f"{toml_path}: field 'arrays': name at least one input array")
        arrays = {name: _open_npy(path / rel, role) for name, rel in spec.arrays.items()}
        return Dataset(path, arrays=_check_lengths(path, role, arrays))
    if spec.images is None:
        raise DataError(f"{toml_path}: field 'images': required when format = \"images\"")
    return Dataset(path, images=(spec.images, _list_images(path, toml_path, spec.images)))


def _list_images(path: Path, toml_path: Path, spec: _ImageSpec) -> list[tuple[Path, int]]:
    root = (path / spec.root).resolve()
    classes = spec.classes or sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    if not classes:
        raise DataError(f"{toml_path}: field 'images.root': no class folders under {root}")
    items = []
    for idx, cls in enumerate(classes):
        folder = root / cls
        if not folder.is_dir():
            raise DataError(f"{toml_path}: field 'images.classes': no folder {folder}")
        items += [(p, idx) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    return items
