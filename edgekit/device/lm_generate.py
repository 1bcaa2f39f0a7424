"""Text in, text out: a language model's greedy answer to a prompt, to eyeball its quality.

Needs the `tokenizers` package and the model's tokenizer.json beside it (evaluation needs
neither: a bundle carries its eval text tokenized). `chat` wraps the prompt in the ChatML
turns instruction-tuned models of the SmolLM2 family expect (<|im_start|>user ... <|im_end|>
<|im_start|>assistant), when the tokenizer knows those tokens.

Standard library + numpy + onnxruntime (+ tokenizers), Python 3.9 syntax: this runs on devices.
"""

from __future__ import annotations

import os
import time
from typing import Optional

from .lm import TOKENIZER, open_lm

__all__ = ["generate_text", "GenerateError", "CHAT_TURNS"]

CHAT_TURNS = ("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n")


class GenerateError(ValueError):
    """What the caller gave cannot be generated from (no tokenizer, an empty prompt, no chat tokens)."""


def _tokenizer(model_path: str):
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), TOKENIZER)
    if not os.path.isfile(path):
        raise GenerateError(f"model {model_path}: no {TOKENIZER} beside it: generating text needs the tokenizer")
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise GenerateError("generating text needs the `tokenizers` package (pip install tokenizers)") from exc
    return Tokenizer.from_file(path)


def generate_text(model_path: str, prompt: str, new_tokens: int = 64, *, chat: bool = False, threads: int = 0,
                  positions: Optional[int] = None) -> dict:
    """{prompt, text, tokens, prompt_tokens, ttft_ms, decode_tokens_per_s}: greedy, stopping at
    the model's end-of-sequence token; the cache sized to prompt + new tokens. `positions`: the
    longest sequence the model runs at, where its metadata does not say (an older export: the
    host reads it from the graph)."""
    if not prompt.strip():
        raise GenerateError("the prompt is empty")
    if new_tokens < 1:
        raise GenerateError(f"new tokens must be at least 1, got {new_tokens}")
    tokenizer = _tokenizer(model_path)
    if chat:
        if any(tokenizer.token_to_id(t) is None for t in ("<|im_start|>", "<|im_end|>")):
            raise GenerateError(f"model {model_path}: its tokenizer has no <|im_start|>/<|im_end|> tokens for --chat")
        prompt = CHAT_TURNS[0] + prompt + CHAT_TURNS[1]
    ids = tokenizer.encode(prompt).ids
    lm = open_lm(model_path, threads=threads)
    max_len = len(ids) + new_tokens
    most = lm.context or positions
    if most is not None and max_len > most:
        raise GenerateError(f"{len(ids)} prompt tokens + {new_tokens} new are more than model {model_path} runs at "
                            f"({most} tokens): give a shorter prompt or fewer new tokens")
    start = time.perf_counter()
    run = lm.generate(ids, new_tokens, max_len=max_len, stop_at_eos=True)
    tokens = [t for t in run["tokens"] if t not in lm.eos]
    steps = run["step_s"]
    return {"prompt": prompt, "text": tokenizer.decode(tokens), "tokens": len(run["tokens"]),
            "prompt_tokens": len(ids), "ttft_ms": run["prefill_s"] * 1000.0,
            "decode_tokens_per_s": len(steps) / sum(steps) if steps and sum(steps) > 0 else None,
            "seconds": time.perf_counter() - start}
