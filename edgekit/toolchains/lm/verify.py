"""Is a fresh export the model it came from? Checked once, right after the builder wrote it:

    its cache      one the runner can keep (edgekit.device.lm): not a sliding-window ring
    it runs        a prompt through the cache on onnxruntime, as a device feeds it
    it agrees      with transformers on the same tokens, to MAX_LOGP_DIFF nats per log-probability

The builder exports models it then gets wrong or that onnxruntime refuses to run (a head size
that is not a multiple of 16; OLMo, whose export disagrees with transformers by about 0.2 nats
on a random tiny model): without these checks such an export fails in every later step, or,
worse, is quantized and shipped as a model it is not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.device.lm import log_softmax
from edgekit.errors import ModelError

__all__ = ["verify_export", "check_runs", "MAX_LOGP_DIFF", "TOKENS"]

# FP32 against FP32: the same arithmetic in another order agrees to ~1e-5 on the tiny test models
# and to ~1e-4 on SmolLM2-135M; a wrong graph is off by tenths.
MAX_LOGP_DIFF = 0.02
TOKENS = 16
HINT = "edgekit takes the decoders the builder exports correctly and onnxruntime runs (README.md, Language models)"


def verify_export(model: Path, source: Path, config: dict) -> None:
    """ModelError naming `source` unless its export `model` passes the module's checks;
    `config` is the builder's genai_config.json "model" section."""
    window = config["decoder"].get("sliding_window")
    if window:
        raise ModelError(f"model {source}: its export keeps a sliding-window KV cache ({window.get('window_size')} "
                         f"tokens in layers {window.get('layers')}), which edgekit's runner does not manage", hint=HINT)
    ids = _tokens(config["vocab_size"])
    got = _onnx_logits(model, source, ids)
    want = _source_logits(source, ids)
    diff = float(np.abs(log_softmax(got) - log_softmax(want)).max())
    if not diff <= MAX_LOGP_DIFF:
        raise ModelError(f"model {source}: its ONNX export disagrees with transformers by {diff:.3g} nats on a "
                         f"log-probability (at most {MAX_LOGP_DIFF}): the builder gets this architecture wrong",
                         hint=HINT)


def check_runs(model: Path, vocab: int) -> None:
    """ModelError unless onnxruntime runs `model` through its cache (an .onnx exported before, by
    an older edgekit or builder, is checked so before any step relies on it)."""
    _onnx_logits(model, model, _tokens(vocab))


def _tokens(vocab: int) -> np.ndarray:
    return (np.arange(1, TOKENS + 1) * 7919) % vocab  # any tokens: export and source must agree on all


def _onnx_logits(model: Path, source: Path, ids: np.ndarray) -> np.ndarray:
    """The logits of `ids` fed through a cache in two calls, with the device's code."""
    from types import SimpleNamespace

    import onnxruntime as ort

    from edgekit.device.lm import DecoderLM

    options = ort.SessionOptions()
    options.log_severity_level = 4  # a failure comes back as the exception; its log line would repeat it
    try:
        session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
        lm = DecoderLM(SimpleNamespace(_session=session))
        state = lm.start(len(ids))
        half = len(ids) // 2
        chunks = [lm.feed(state, np.asarray(ids[a:b], np.int64)[None]) for a, b in ((0, half), (half, len(ids)))]
    except Exception as exc:  # onnxruntime's own error types
        why = str(exc).split("Status Message:")[-1].strip().splitlines()[0]
        raise ModelError(f"model {source}: onnxruntime {ort.__version__} cannot run its export ({why})",
                         hint=HINT) from exc
    return np.concatenate(chunks, axis=1)[0]


# transformers' logits of some tokens, in a process of its own: importing torch and transformers
# here would print their warnings on stderr and keep the model's memory in this process
_REFERENCE = """
import sys
import numpy as np, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
ids = torch.tensor([[int(i) for i in sys.argv[2].split(",")]])
with torch.no_grad():
    np.save(sys.argv[3], model(ids).logits[0].numpy())
"""


def _source_logits(source: Path, ids: np.ndarray) -> np.ndarray:
    import os
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgekit-verify-") as tmp:
        out = Path(tmp) / "logits.npy"
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")  # a local folder: never a hub
        proc = subprocess.run([sys.executable, "-c", _REFERENCE, str(source), ",".join(map(str, ids)), str(out)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not out.is_file():
            lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
            raise ModelError(f"model {source}: transformers cannot run it to check its export "
                             f"({lines[-1] if lines else 'no output'})", hint=HINT)
        return np.load(out)
