"""A tiny language model for tests: a Llama (2 layers, hidden 64, 4 heads over 2
KV heads, vocabulary 512) with its own byte-level BPE tokenizer trained on TEXT, built
from a config in seconds and exported once per session with the toolchain's own export.
Trained for a few seconds on the calibration text, it predicts better than chance (so
quantization measurably costs perplexity), far from a real model: good for plumbing, shapes,
the cache and speed code, not for accuracy thresholds. Text: TEXT's first and second half, as
calibration and eval sets. TEXT is a frozen copy of an earlier README (English prose and
code of this project): it was the README itself, so every edit of the README retrained the
model and moved the figures some tests compare by a few percent."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.paths import REPO

VOCAB = 512
TEXT = REPO / "tests" / "data" / "tiny_lm_text.txt"


@dataclass(frozen=True)
class TinyLM:
    hf: Path          # the Hugging Face folder
    fp32: Path        # its FP32 ONNX export (model.onnx, .data, tokenizer.json beside it)
    calib: Path       # calibration text (.txt)
    eval: Path        # eval text (.txt), disjoint from the calibration text


def _texts(folder: Path) -> tuple[Path, Path]:
    words = TEXT.read_text().split()
    half = len(words) // 2
    calib, evalt = folder / "calib.txt", folder / "eval.txt"
    calib.write_text(" ".join(words[:half]) + "\n")
    evalt.write_text(" ".join(words[half:]) + "\n")
    return calib, evalt


def make_tiny_hf(out: Path, text: Path, steps: int = 120, **shape) -> Path:
    """The tiny Llama, trained `steps` on `text`; `shape` overrides its config (hidden_size, ...)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(**{**dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=2048, rope_theta=10000.0, tie_word_embeddings=True,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=2), **shape})
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train([str(text)], trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>", "<|im_start|>",
                                                                                  "<|im_end|>"],
                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<|endoftext|>", bos_token="<|im_start|>",
                            eos_token="<|im_end|>", pad_token="<|im_end|>").save_pretrained(out)
    model = LlamaForCausalLM(config)
    _train(model, tok.encode(text.read_text()).ids, steps)
    model.eval().save_pretrained(out)
    return out


def _train(model, ids: list[int], steps: int = 120, length: int = 64) -> None:
    """A few seconds of training on the calibration text, so that the model predicts better
    than chance and quantization has something to lose."""
    import torch

    data = torch.tensor(ids[: len(ids) // length * length]).view(-1, length)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        batch = data[torch.randint(len(data), (8,), generator=generator)]
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> TinyLM:
    from edgekit.toolchains.lm.export import export

    folder = tmp_path_factory.mktemp("tiny-lm")
    calib, evalt = _texts(folder)
    hf = make_tiny_hf(folder / "hf", calib)
    return TinyLM(hf=hf, fp32=export(hf, folder / "export"), calib=calib, eval=evalt)


# A target for the tiny model: short context, every recipe allowed, generous budgets (the
# tests that gate on a budget write their own with `tiny_lm_target`).
TINY_TARGET = {"context": 128, "prompt_tokens": 32, "generate_tokens": 8}


def tiny_lm_target(folder: Path, name: str = "tiny-lm", kv_cache: str = "auto", objective: str = "size",
                   **budgets) -> Path:
    """folder/NAME.toml, a language-model target for the tiny model; returns the folder (--targets-dir)."""
    folder.mkdir(parents=True, exist_ok=True)
    budgets = {"max_ppl_increase": 0.5, "min_decode_tokens_per_s": 1.0, "max_peak_rss_mb": 4096.0, **budgets}
    lines = [f'name = "{name}"', 'arch = "x86_64"', 'cpu = "host"', "memory_mb = 8192", 'runtime = "onnxruntime"',
             'precisions = ["fp32", "fp16", "int8-block", "int4-block"]', "threads = 1", f'objective = "{objective}"',
             "", "[lm]", *(f"{k} = {v}" for k, v in TINY_TARGET.items()), f'kv_cache = "{kv_cache}"', "", "[budgets]",
             *(f"{k} = {v!r}" for k, v in budgets.items())]
    (folder / f"{name}.toml").write_text("\n".join(lines) + "\n")
    return folder


def offset_weights_of(model: Path) -> dict:
    """Projection name -> the weights [K, N] a minmax-offset model computes with, read back from
    its tables: a body projection's one MatMulNBits over [x, blockmean(x)] (codes with integer
    zero points, then K/block rows of the block size times the offsets' residuals), and the
    head's 4-bit codes plus its 8-bit offset product (over the block means: the block size times
    the offsets), added per block. Projections without offsets (plain zero points) are left out."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    graph = onnx.load(str(model)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    offsets = {n.name[:-len("_offset")]: n for n in graph.node if n.name.endswith("_offset")}
    out = {}
    for node in graph.node:
        if node.op_type != "MatMulNBits" or not node.name.endswith("_Q"):
            continue
        name = node.name[:-len("_Q")]
        widened = node.input[0] in producer and producer[node.input[0]].op_type == "Concat"
        if not (widened or name in offsets):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        block, n, k = attrs["block_size"], attrs["N"], attrs["K"]
        codes = inits[node.input[1]]  # [N, blocks, 16]: two 4-bit codes a byte, the low nibble first
        q = np.stack([codes & 15, codes >> 4], -1).reshape(n, codes.shape[1], -1).astype(np.float32)
        blocks = q.shape[1]
        scales = inits[node.input[2]].reshape(n, blocks, 1)
        if widened:
            zp = inits[node.input[3]]
            zero = np.stack([zp & 15, zp >> 4], -1).reshape(n, -1)[:, :blocks, None].astype(np.float32)
            deq = ((q - zero) * scales).reshape(n, -1)
            k = k * block // (block + 1)  # K + K/block inputs
            o = deq[:, k:k + k // block]
        else:
            oq, oscale = (inits[i] for i in offsets[name].input[1:3])  # 8-bit [N, oblocks, 32], symmetric about 128
            o = ((oq.astype(np.float32) - 128) * oscale.reshape(n, -1, 1)).reshape(n, -1)[:, :blocks]
            deq = ((q - 8) * scales).reshape(n, -1)
        out[name] = (deq[:, :k].reshape(n, k // block, block) + o[:, :k // block, None] / block).reshape(n, k).T
    return out
