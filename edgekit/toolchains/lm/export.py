"""A causal language model -> an FP32 ONNX decoder with a KV cache.

    a Hugging Face folder (config.json, *.safetensors, tokenizer.json)
    a .gguf file            dequantized by transformers (with `gguf`), saved as such a folder first
    an .onnx file           a model this module wrote before (it carries `edgekit.lm`), as is

Export is onnxruntime-genai's model builder (`-p fp32 -e cpu`): of the exporters measured on
SmolLM2-135M (the builder, optimum, torch.onnx) it gives the smallest graph (GroupQueryAttention
with rotary inside: ~310 nodes against 2-7k), the fastest decode (1.1-1.2x at FP32, 1.5x once
quantized, because graph overhead dominates when weights shrink) and the lowest memory, in
seconds, offline; its attention shares past and present in one buffer of any length, so the
runner sizes the cache to the profile's context. Its own quantized presets are not used:
edgekit quantizes the FP32 export (edgekit.toolchains.lm.quantize).

The export gets the metadata `edgekit.lm` (edgekit.device.lm) from the builder's
genai_config.json, and its tokenizer.json beside it; it is checked against transformers before
anything uses it (edgekit.toolchains.lm.verify).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from edgekit.device.lm import TOKENIZER
from edgekit.errors import ConfigError, ModelError
from edgekit.toolchains.lm.verify import verify_export

__all__ = ["export", "source_kind", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'edgekit[lm]' (onnxruntime-genai, transformers, gguf, accelerate)"
TAIL = 600
BUILDER_HINT = "README.md, Language models, lists the architectures edgekit exports"


def source_kind(spec) -> str:
    """'hf' (a folder), 'gguf' or 'onnx'; ModelError for anything else."""
    path = Path(str(spec)).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model {path}: a Hugging Face model folder needs config.json")
        if not (path / TOKENIZER).is_file():
            raise ModelError(f"model {path}: no {TOKENIZER} in the folder (edgekit tokenizes text with it)")
        return "hf"
    if not path.is_file():
        raise ModelError(f"model {path}: not found (give a Hugging Face causal-LM folder, a .gguf or an .onnx file)")
    if path.suffix == ".gguf":
        return "gguf"
    if path.suffix == ".onnx":
        return "onnx"
    raise ModelError(f"model {path}: a language model is a Hugging Face folder, a .gguf or an .onnx file")


def export(spec, workdir: Path) -> Path:
    """The FP32 ONNX decoder for `spec` in `workdir` (or `spec` itself, for an exported .onnx)."""
    kind = source_kind(spec)
    source = Path(str(spec)).expanduser()
    if kind == "onnx":
        return source
    workdir.mkdir(parents=True, exist_ok=True)
    if kind == "gguf":
        source = gguf_to_hf(source, workdir / "hf")
    out = workdir / "onnx"
    _run_builder(source, out, workdir / "builder-cache")
    model = out / "model.onnx"
    with open(out / "genai_config.json") as fh:
        config = json.load(fh)["model"]
    _tag(model, config)
    verify_export(model, source, config)
    if not (out / TOKENIZER).is_file():
        shutil.copyfile(source / TOKENIZER, out / TOKENIZER)
    return model


def _run_builder(source: Path, out: Path, cache: Path) -> None:
    if importlib.util.find_spec("onnxruntime_genai") is None:
        raise ConfigError("exporting a language model needs onnxruntime-genai's model builder", hint=INSTALL_HINT)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source), "-o", str(out),
           "-p", "fp32", "-e", "cpu", "-c", str(cache)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")  # a local folder: never a hub
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not (out / "model.onnx").is_file():
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        # a traceback's news is its last line (KeyError: 'rope_type'), not the frames before it
        why = next((ln for ln in reversed(lines) if "Error" in ln or "Exception" in ln), lines[-1] if lines else "")
        raise ModelError(f"model {source}: onnxruntime-genai's builder could not export it: "
                         f"{why[-TAIL:] or 'no output'}", hint=BUILDER_HINT)


def _tag(model: Path, config: dict) -> None:
    """Write the `edgekit.lm` metadata into the (small) graph file; the weights stay where they are."""
    import onnx

    from edgekit.toolchains.lm.graph import external_files, rotary_positions, set_lm_meta

    proto = onnx.load(str(model), load_external_data=False)
    dec = config["decoder"]
    eos = config.get("eos_token_id")
    meta = {"layers": dec["num_hidden_layers"], "kv_heads": dec["num_key_value_heads"], "head_dim": dec["head_size"],
            "vocab": config["vocab_size"], "bos": config.get("bos_token_id"),
            "eos": eos if isinstance(eos, list) else [eos] if eos is not None else [],
            "shared_buffer": any(n.op_type == "GroupQueryAttention" for n in proto.graph.node),
            "data": external_files(proto), "type": config.get("type"),
            "context": rotary_positions(proto) or config.get("context_length")}
    set_lm_meta(proto, meta)
    onnx.save(proto, str(model))


def gguf_to_hf(gguf: Path, out: Path) -> Path:
    """A .gguf file as a Hugging Face folder: transformers dequantizes it to float32 on load;
    a GGUF-loaded model refuses save_pretrained, so its weights go into a model built from the
    same config. The tokenizer comes from the file's own metadata."""
    for needed in ("transformers", "gguf", "accelerate", "torch"):
        if importlib.util.find_spec(needed) is None:
            raise ConfigError(f"reading a .gguf file needs {needed}", hint=INSTALL_HINT)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        raise ModelError(f"model {gguf}: transformers cannot read this GGUF file ({str(exc).splitlines()[0]})") from exc
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # the head is absent when tied to the embedding
        raise ModelError(f"model {gguf}: its weights do not fit its config (missing {missing}, extra {unexpected})")
    fresh.tie_weights()
    fresh.generation_config.eos_token_id = tokenizer.eos_token_id
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
