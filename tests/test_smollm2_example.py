"""examples/smollm2's text: disjoint calibration and eval articles read straight out of a
gensim-shaped wheel (a zip made here, with the same member names: no registry needed), the
cp1252 byte of lee.cor turned into UTF-8, and a wheel already downloaded used as it is."""

from __future__ import annotations

import zipfile

from edgekit.smollm2 import CALIBRATION_DOCS, TEXT_PREFIX, make_text


def _wheel(folder, background: list[str], lee: list[bytes]):
    path = folder / "gensim-4.4.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(TEXT_PREFIX + "lee_background.cor", "\n".join(background) + "\n")
        z.writestr(TEXT_PREFIX + "lee.cor", b"\n".join(lee) + b"\n")
    return path


def test_text_is_split_into_disjoint_articles(tmp_path):
    background = [f"Article {i} of the background set, about topic {i}." for i in range(300)]
    lee = [b"A pound sign: \xa3 5 in cp1252.", b"Another short article."]
    (tmp_path / "wheels").mkdir()
    wheel = _wheel(tmp_path / "wheels", background, lee)
    calibration, evaluation = make_text(tmp_path / "wheels", tmp_path / "text")
    calib_docs = calibration.read_text(encoding="utf-8").strip().split("\n\n")
    eval_docs = evaluation.read_text(encoding="utf-8").strip().split("\n\n")
    assert calib_docs == background[:CALIBRATION_DOCS]
    assert eval_docs == background[CALIBRATION_DOCS:] + ["A pound sign: £ 5 in cp1252.", "Another short article."]
    assert not set(calib_docs) & set(eval_docs)
    # made once: a second call reads nothing (the wheel may be gone)
    wheel.unlink()
    assert make_text(tmp_path / "wheels", tmp_path / "text") == (calibration, evaluation)
