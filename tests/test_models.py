"""Models: checking ONNX files, describing them, converting PyTorch models (real torch.export)."""

import hashlib
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from helpers.cli import assert_clean_error
from helpers.encoder import build_encoder
from helpers.paths import CALIB, EVAL, EXAMPLE_ONNX, EXAMPLE_PT2
from edgekit.datasets import InputSpec, load_dataset
from edgekit.errors import ModelError
from edgekit.toolchains.base import model_sha256
from edgekit.toolchains.onnx.convert import TORCH_EXTRA, load_model
from edgekit.toolchains.onnx.models import model_inputs, model_outputs, model_size_mb


def _run(path, feed):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_onnx_is_checked_and_returned_as_is(tmp_path):
    assert load_model(EXAMPLE_ONNX, workdir=tmp_path) == EXAMPLE_ONNX
    assert list(tmp_path.iterdir()) == []


def test_inputs_outputs_of_the_example():
    assert model_inputs(EXAMPLE_ONNX) == [InputSpec("input", "float32", (None, 1, 8, 8))]
    assert model_outputs(EXAMPLE_ONNX) == ["logits"]


def test_integer_inputs_of_an_encoder(tmp_path):
    path = build_encoder(tmp_path / "enc.onnx")
    assert model_inputs(path) == [InputSpec("input_ids", "int64", (None, 16)),
                                  InputSpec("attention_mask", "int64", (None, 16))]
    assert model_outputs(path) == ["logits"]


def test_size_and_hash_include_external_data(tmp_path):
    proto = onnx.load(str(EXAMPLE_ONNX))
    path = tmp_path / "ext.onnx"
    onnx.save(proto, str(path), save_as_external_data=True, location="ext.data", size_threshold=0)
    data = tmp_path / "ext.data"
    assert data.stat().st_size > 100_000
    assert model_size_mb(path) == pytest.approx((path.stat().st_size + data.stat().st_size) / 2**20)
    assert model_size_mb(EXAMPLE_ONNX) == pytest.approx(EXAMPLE_ONNX.stat().st_size / 2**20)
    assert model_sha256(EXAMPLE_ONNX) == hashlib.sha256(EXAMPLE_ONNX.read_bytes()).hexdigest()


@pytest.mark.parametrize("content, needle", [
    (bytes(range(256)) * 20, "not a readable ONNX file"),
    (b"", "fails the ONNX checker"),  # parses as an empty ModelProto
])
def test_corrupt_onnx_is_a_model_error(tmp_path, content, needle):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    with pytest.raises(ModelError, match=needle):
        load_model(bad, workdir=tmp_path)


@pytest.mark.parametrize("spec, needle", [
    ("missing.onnx", "not found"),
    ("missing.pt2", "not found"),
    ("model.h5", "not a model"),
    ("no_such_pkg.mod:build", "cannot import module"),
    ("examples.digits.train:nope", "has no function 'nope'"),
])
def test_bad_specs(tmp_path, spec, needle):
    with pytest.raises(ModelError, match=needle):
        load_model(spec, workdir=tmp_path)


def test_garbage_pt2_is_a_model_error(tmp_path):
    pytest.importorskip("torch")
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip" * 100)
    with pytest.raises(ModelError, match="not a readable torch.export program"):
        load_model(bad, workdir=tmp_path)


def test_pt2_converts_to_the_same_function(tmp_path):
    pytest.importorskip("torch")
    onnx_path = load_model(EXAMPLE_PT2, workdir=tmp_path)
    assert onnx_path.parent == tmp_path
    [spec] = model_inputs(onnx_path)
    assert spec.shape == (None, 1, 8, 8) and spec.dtype == "float32"
    assert onnx.load(str(onnx_path)).opset_import[0].version == 17
    x = np.load(EVAL)["input"][:37]
    np.testing.assert_allclose(_run(onnx_path, {spec.name: x}), _run(EXAMPLE_ONNX, {"input": x}), atol=1e-4)


def test_pt2_takes_the_data_sets_input_name(tmp_path):
    pytest.importorskip("torch")
    onnx_path = load_model(EXAMPLE_PT2, workdir=tmp_path, example_data=load_dataset(CALIB))
    assert [i.name for i in model_inputs(onnx_path)] == ["input"]


@pytest.fixture
def seeded_factory(tmp_path, monkeypatch):
    """A factory module in the current directory, with deterministic weights."""
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def build():
            torch.manual_seed(0)
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield "userpkg.nets:build"
    for name in [m for m in sys.modules if m.startswith("userpkg")]:
        del sys.modules[name]


def test_factory_converts_with_inputs_from_the_data(tmp_path, seeded_factory):
    torch = pytest.importorskip("torch")
    onnx_path = load_model(seeded_factory, workdir=tmp_path / "work", example_data=load_dataset(CALIB))
    assert model_inputs(onnx_path) == [InputSpec("input", "float32", (None, 1, 8, 8))]
    from userpkg.nets import build

    for n in (1, 5):  # the batch axis is dynamic
        x = np.load(EVAL)["input"][:n]
        expected = build()(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(_run(onnx_path, {"input": x}), expected, atol=1e-5)


def test_factory_without_example_inputs_or_data(tmp_path, seeded_factory):
    pytest.importorskip("torch")
    with pytest.raises(ModelError, match="example_inputs"):
        load_model(seeded_factory, workdir=tmp_path)


def test_example_factory_uses_its_example_inputs(tmp_path):
    pytest.importorskip("torch")
    onnx_path = load_model("examples.digits.train:build", workdir=tmp_path)
    [spec] = model_inputs(onnx_path)
    assert spec.shape == (None, 1, 8, 8)
    assert _run(onnx_path, {spec.name: np.load(EVAL)["input"][:3]}).shape == (3, 10)


def test_a_one_input_factory_takes_the_data_sets_name(tmp_path):
    pytest.importorskip("torch")  # as a .pt2 does, so that the data fits it (evaluate --reference)
    onnx_path = load_model("examples.digits.train:build", workdir=tmp_path, example_data=load_dataset(CALIB))
    assert [i.name for i in model_inputs(onnx_path)] == ["input"]


@pytest.mark.parametrize("model", [EXAMPLE_PT2, "examples.digits.train:build"])
def test_without_torch_the_error_names_the_extra(edgekit, tmp_path, model):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    result = edgekit("quantize", model, "--precision", "fp32", "-o", tmp_path / "m.onnx",
                     env={"PYTHONPATH": str(blocker)})
    assert_clean_error(result, str(model), TORCH_EXTRA)
