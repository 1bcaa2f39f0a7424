"""Decoders shaped unlike SmolLM2: an untied embedding, an MLP (200) that is not a multiple of the
block, multi-query attention (one KV head); and one onnxruntime cannot run (head size 24), refused
at export. Each is the tiny Llama of tests/helpers/lmkit.py with another config."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import assert_clean_error, run_edgekit
from helpers.lmkit import make_tiny_hf, tiny_lm_target

ODD = dict(hidden_size=96, intermediate_size=200, num_attention_heads=6, num_key_value_heads=1, head_dim=16,
           tie_word_embeddings=False)


@pytest.fixture(scope="module")
def odd_lm(tiny_lm, tmp_path_factory) -> Path:
    """The odd-shaped tiny model's FP32 export."""
    from edgekit.toolchains.lm.export import export

    base = tmp_path_factory.mktemp("odd-lm")
    return export(make_tiny_hf(base / "hf", tiny_lm.calib, steps=40, **ODD), base / "export")


def _nodes(path: Path) -> list:
    import onnx

    return list(onnx.load(str(path), load_external_data=False).graph.node)


def _kl(fp32: Path, model: Path, window: np.ndarray) -> float:
    from edgekit.device.lm import log_softmax, open_lm

    ref, got = (log_softmax(open_lm(str(m)).window_logits(window)) for m in (fp32, model))
    return float((np.exp(ref) * (ref - got)).sum(-1).mean())


@pytest.mark.parametrize("precision, algorithm", [("int8-block", "rtn"), ("int4-block", "minmax-offset"),
                                                  ("int4-block", "rtn"), ("int4-block", "kquant")])
def test_every_projection_and_an_untied_embedding_are_blocked(tiny_lm, odd_lm, tmp_path, precision, algorithm):
    """No projection stays FP32 where its input size is not a multiple of the block (minmax-offset
    and k-quant block only those that are; onnxruntime's default pads the rest), and the untied
    embedding reads an 8-bit table of its own: the model is smaller than FP32's and still close."""
    from edgekit.datasets import load_dataset
    from edgekit.recipes import Recipe
    from edgekit.toolchains import TOOLCHAINS
    from edgekit.toolchains.lm.quantize import quantize_lm

    out = quantize_lm(odd_lm, Recipe(precision=precision, algorithm=algorithm, block_size=32),
                      tmp_path / "model.onnx")
    nodes = _nodes(out)
    assert not [n.name for n in nodes if n.op_type == "MatMul"]
    assert [n.op_type for n in nodes if n.op_type.startswith("Gather") and "input_ids" in n.input] \
        == ["GatherBlockQuantized"]
    lm = TOOLCHAINS["lm"]
    assert lm.size_mb(out) < (0.5 if precision == "int8-block" else 0.4) * lm.size_mb(odd_lm)
    window = lm.model_data(odd_lm, load_dataset(tiny_lm.eval), "eval data").arrays["input_ids"][0]
    assert 0 <= _kl(odd_lm, out, window) < 0.05


def test_offset_heads_refuse_a_hidden_size_off_the_block_in_one_line(odd_lm, tiny_lm, tmp_path):
    for algorithm in ("minmax-offset-head4", "minmax-offset-lean"):
        result = run_edgekit("quantize", odd_lm, "-p", "int4-block", "--algorithm", algorithm, "--block-size", "64",
                             "--calibration", tiny_lm.calib, "-o", tmp_path / algorithm / "model.onnx")
        assert_clean_error(result, algorithm, "hidden size (96) is not a multiple of the block (64)")
    fits = run_edgekit("quantize", odd_lm, "-p", "int4-block", "--algorithm", "minmax-offset-head4",
                       "-o", tmp_path / "b32" / "model.onnx")
    assert fits.code == 0, fits.stderr
    assert not [n.name for n in _nodes(tmp_path / "b32" / "model.onnx") if n.op_type == "MatMul"]


def test_an_export_onnxruntime_cannot_run_is_refused_in_one_line(tiny_lm, tmp_path):
    """Head size 24: the builder exports it, onnxruntime's CPU GroupQueryAttention refuses to run it."""
    hf = make_tiny_hf(tmp_path / "hf", tiny_lm.calib, steps=0, hidden_size=72, num_attention_heads=3,
                      num_key_value_heads=1, head_dim=24)
    result = run_edgekit("quantize", hf, "-p", "fp32", "-o", tmp_path / "out" / "model.onnx")
    assert_clean_error(result, str(hf), "cannot run its export", "head_size shall be a multiple of 16")


def test_an_export_that_is_not_its_source_is_refused(tiny_lm, tmp_path):
    """The export against transformers on the same tokens: its own source agrees; the same
    model with one layer's MLP changed (what a builder that gets an architecture wrong gives,
    as it does OLMo) does not; nor does a sliding-window cache pass, which the runner cannot keep."""
    import json

    import torch
    from transformers import AutoModelForCausalLM

    from edgekit.errors import ModelError
    from edgekit.toolchains.lm.verify import verify_export

    config = json.loads((tiny_lm.fp32.parent / "genai_config.json").read_text())["model"]
    verify_export(tiny_lm.fp32, tiny_lm.hf, config)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm.hf, dtype=torch.float32)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(1.5)
    model.save_pretrained(tmp_path / "other")
    with pytest.raises(ModelError, match="disagrees with transformers by .* nats"):
        verify_export(tiny_lm.fp32, tmp_path / "other", config)
    windowed = {**config, "decoder": {**config["decoder"], "sliding_window": {"window_size": 64, "layers": [0]}}}
    with pytest.raises(ModelError, match="sliding-window KV cache"):
        verify_export(tiny_lm.fp32, tiny_lm.hf, windowed)


def test_an_onnx_export_onnxruntime_cannot_run_is_refused_by_every_step(tiny_lm, tmp_path):
    """An .onnx edgekit (or an older builder) exported before, which this onnxruntime cannot run
    (here: its attention told of 3 KV heads for 4 query heads), is refused in one line up front."""
    import shutil

    import onnx
    from onnx import helper

    proto = onnx.load(str(tiny_lm.fp32), load_external_data=False)
    for node in (n for n in proto.graph.node if n.op_type == "GroupQueryAttention"):
        for attr in (a for a in node.attribute if a.name == "kv_num_heads"):
            attr.CopyFrom(helper.make_attribute("kv_num_heads", 3))
    bad = tmp_path / "bad" / "model.onnx"
    bad.parent.mkdir()
    onnx.save(proto, str(bad))
    for f in ("model.onnx.data", "tokenizer.json"):
        shutil.copy(tiny_lm.fp32.parent / f, bad.parent / f)
    for args in (("quantize", bad, "-p", "int8-block", "-o", tmp_path / "q" / "model.onnx"),
                 ("evaluate", bad, "--data", tiny_lm.eval, "--samples", "1")):
        assert_clean_error(run_edgekit(*args), f"model {bad}", "cannot run its export")


def test_a_model_is_run_checked_once_a_process_until_it_changes(tiny_lm, tmp_path, monkeypatch):
    """calibrate loads the FP32 model and evaluates it: one run check, not one a step; a file
    written again (another mtime) is checked again."""
    import shutil

    import edgekit.toolchains.lm.verify as verify
    from edgekit.toolchains.lm.toolchain import LMToolchain

    model = tmp_path / "m" / "model.onnx"
    shutil.copytree(tiny_lm.fp32.parent, model.parent)
    checked = []
    real = verify.check_runs
    monkeypatch.setattr(verify, "check_runs", lambda path, vocab: checked.append(path) or real(path, vocab))
    lm = LMToolchain()
    lm.check(model)
    lm.check(model.parent / "." / "model.onnx")
    assert checked == [model]
    os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 1_000_000))
    lm.check(model)
    assert len(checked) == 2


def test_a_model_shorter_than_the_window_or_the_target_is_measured_within_it_or_refused(tiny_lm, tmp_path):
    """A model of 96 positions: evaluation windows shrink to it, a longer prompt and a target whose
    context is longer are refused in one line; an older export's context is read off its graph."""
    import onnx

    from edgekit.datasets import Dataset
    from edgekit.errors import DataError
    from edgekit.toolchains import TOOLCHAINS
    from edgekit.toolchains.lm.graph import lm_meta_of, set_lm_meta

    hf = make_tiny_hf(tmp_path / "hf", tiny_lm.calib, steps=0, max_position_embeddings=96)
    short = tmp_path / "short" / "model.onnx"
    assert run_edgekit("quantize", hf, "-p", "fp32", "-o", short).code == 0
    assert TOOLCHAINS["lm"].model_context(short) == 96
    evaluated = run_edgekit("evaluate", short, "--data", tiny_lm.eval, "--samples", "2", "--json")
    assert evaluated.code == 0, evaluated.stderr
    assert_clean_error(run_edgekit("generate", short, "word " * 200, "-n", "4"), "runs at (96 tokens)")
    lean = run_edgekit("quantize", short, "-p", "int4-block", "--algorithm", "minmax-offset-lean",
                       "--calibration", tiny_lm.calib, "-o", tmp_path / "lean" / "model.onnx")
    assert lean.code == 0, lean.stderr  # its calibration sequence and windows no longer than 96
    targets = tiny_lm_target(tmp_path / "targets")  # context 128
    result = run_edgekit("calibrate", short, "--target", "tiny-lm", "--targets-dir", targets,
                         "--calibration", tiny_lm.calib, "--eval", tiny_lm.eval, "-o", tmp_path / "out")
    assert_clean_error(result, "target tiny-lm", "context = 128 is longer than", "(96 tokens")
    with pytest.raises(DataError, match="windows of 128 tokens"):  # token windows given as arrays
        TOOLCHAINS["lm"].model_data(short, Dataset(tmp_path / "w.npz", arrays={"input_ids": np.ones((2, 128), int)}),
                                    "eval data")
    old = onnx.load(str(short), load_external_data=False)
    set_lm_meta(old, {k: v for k, v in lm_meta_of(old).items() if k != "context"})
    assert "context" not in old.metadata_props[-1].value and lm_meta_of(old)["context"] == 96


def test_token_windows_the_model_has_no_rows_for_are_refused_in_one_line(tiny_lm, tmp_path):
    """Token ids from another tokenizer (one past the vocabulary, or negative) fail inside
    onnxruntime's Gather; they are bad data: exit 2, one line naming the file and the vocabulary."""
    vocab = _vocab(tiny_lm.fp32)
    good = np.arange(64, dtype=np.int64).reshape(2, 32) % vocab
    for name, ids in (("past.npz", good + np.eye(2, 32, dtype=np.int64) * vocab), ("negative.npz", good - 1)):
        np.savez(tmp_path / name, input_ids=ids)
        result = run_edgekit("evaluate", tiny_lm.fp32, "--data", tmp_path / name)
        assert_clean_error(result, name, f"a vocabulary of {vocab}", "tokenized for this model")
    np.savez(tmp_path / "good.npz", input_ids=good)
    assert run_edgekit("evaluate", tiny_lm.fp32, "--data", tmp_path / "good.npz", "--json").code == 0


def _vocab(model) -> int:
    import onnx

    from edgekit.toolchains.lm.graph import lm_meta_of

    return lm_meta_of(onnx.load(str(model), load_external_data=False))["vocab"]
