"""Text data sets as other tools write them: a byte-order mark, Windows and old Mac line ends, JSON
strings holding Unicode line separators; and eval text that is the calibration text, refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.cli import assert_clean_error, run_edgekit
from helpers.lmkit import tiny_lm_target
from helpers.paths import CALIB, EXAMPLE_ONNX

from edgekit.datasets import check_disjoint, load_dataset
from edgekit.errors import DataError


def _windows(tiny_lm, path) -> np.ndarray:
    from edgekit.toolchains import TOOLCHAINS

    return TOOLCHAINS["lm"].model_data(tiny_lm.fp32, load_dataset(path), "eval data").arrays["input_ids"]


def _lines(tiny_lm) -> list[str]:
    words = tiny_lm.eval.read_text().split()
    return [" ".join(words[i:i + 12]) for i in range(0, len(words), 12)]


@pytest.mark.parametrize("encode", [
    lambda text: text.replace("\n", "\r\n").encode(),          # Windows
    lambda text: text.replace("\n", "\r").encode(),            # old Mac
    lambda text: b"\xef\xbb\xbf" + text.encode(),              # a byte-order mark (Notepad's UTF-8)
])
def test_a_txt_file_tokenizes_the_same_whatever_wrote_it(tiny_lm, tmp_path, encode):
    text = "\n".join(_lines(tiny_lm)) + "\n"
    (tmp_path / "lf.txt").write_bytes(text.encode())
    (tmp_path / "other.txt").write_bytes(encode(text))
    assert np.array_equal(_windows(tiny_lm, tmp_path / "other.txt"), _windows(tiny_lm, tmp_path / "lf.txt"))


def test_jsonl_with_a_bom_crlf_and_line_separators_inside_strings(tiny_lm, tmp_path):
    """JSON allows U+2028/U+2029 and other Unicode line breaks unescaped in a string (writers
    with ensure_ascii=False leave them so): a JSONL line ends at "\\n" only."""
    from edgekit.textdata import read_documents

    docs = [line + ("\u2028" if i % 3 == 0 else "\x85" if i % 3 == 1 else "") for i, line in enumerate(_lines(tiny_lm))]
    body = "\r\n".join(json.dumps({"text": d}, ensure_ascii=False) for d in docs)
    (tmp_path / "odd.jsonl").write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert read_documents(load_dataset(tmp_path / "odd.jsonl").text) == docs
    assert _windows(tiny_lm, tmp_path / "odd.jsonl").shape[1] == 256


def test_calibrate_refuses_eval_text_it_calibrates_on(tiny_lm, tmp_path):
    """The same file, or the same documents in another file or a text data set, before any work."""
    targets = tiny_lm_target(tmp_path / "targets")
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "eval.txt").write_bytes(tiny_lm.eval.read_bytes())
    (tmp_path / "set" / "dataset.toml").write_text('format = "text"\nfiles = ["eval.txt"]\n')
    for calibration in (tiny_lm.eval, tmp_path / "set"):
        result = run_edgekit("calibrate", tiny_lm.fp32, "--target", "tiny-lm", "--targets-dir", targets,
                             "--calibration", calibration, "--eval", tiny_lm.eval, "-o", tmp_path / "out")
        assert_clean_error(result, f"eval data {tiny_lm.eval}", "100% of its text", str(calibration))
        assert not (tmp_path / "out").exists()


def test_a_shared_heading_is_not_shared_text(tiny_lm, tmp_path):
    """Documents repeated across the sets count by their share of the eval text: a heading both
    sets hold passes; most of the eval text repeated does not."""
    lines = _lines(tiny_lm)
    half = len(lines) // 2
    for name, docs in (("calib", ["Notes"] + lines[:half]), ("eval", ["Notes"] + lines[half:]),
                       ("overlap", lines[half - 10:half + 5])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    calib = load_dataset(tmp_path / "calib.jsonl")
    check_disjoint(calib, load_dataset(tmp_path / "eval.jsonl"))
    with pytest.raises(DataError, match=r"\d+% of its text"):
        check_disjoint(calib, load_dataset(tmp_path / "overlap.jsonl"))


def test_calibrate_refuses_one_data_set_as_both_for_any_model(tmp_path):
    result = run_edgekit("calibrate", EXAMPLE_ONNX, "--target", "host-cpu", "--calibration", CALIB, "--eval", CALIB,
                         "-o", tmp_path / "out")
    assert_clean_error(result, f"eval data {CALIB}", "the same data as the calibration data")
