"""A decoder language model on ONNX Runtime with numpy only: what a device runs to generate.

The model is an ONNX decoder with a KV cache (edgekit.toolchains.lm writes them):

    inputs   input_ids [B,S] int64, attention_mask [B,T] int64, position_ids [B,S] (optional),
             past_key_values.{i}.key / .value [B, kv_heads, P, head_dim]
    outputs  logits [B,S,V], present.{i}.key / .value [B, kv_heads, T, head_dim]     (T = P + S)

and carries its shape in the metadata entry `edgekit.lm` (JSON: layers, kv_heads, head_dim,
vocab, eos, bos, shared_buffer, context: the longest sequence it runs at), so that a device
needs no other file to run it.

Two ways to keep the cache. A model whose attention is GroupQueryAttention (`shared_buffer`)
gets one buffer per layer preallocated at the *profile's* context, bound as both past and
present through IOBinding: no copy per token and a memory that is the formula's from the
first token on. Any other model gets a cache that ORT returns one token longer every call.
`recompute` keeps no cache at all: every new token runs the whole prefix again.

Standard library + numpy + onnxruntime, Python 3.9 syntax: this runs on devices.
"""

from __future__ import annotations

import json
import time
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from .backends import ModelLoadError, open_backend

__all__ = ["META_KEY", "TOKENIZER", "DecoderLM", "kv_cache_bytes", "log_softmax", "lm_meta", "PREFILL_CHUNK", "open_lm",
           "is_lm"]

META_KEY = "edgekit.lm"  # the model's metadata entry that makes it a language model
TOKENIZER = "tokenizer.json"  # beside the model, for `generate` (evaluation needs none)
PREFILL_CHUNK = 64  # prompt tokens per call: bounds the [chunk, vocab] logits of a prefill
_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def kv_cache_bytes(layers: int, kv_heads: int, head_dim: int, itemsize: int, tokens: int) -> int:
    """2 (keys and values) x layers x KV heads x head size x bytes per value x tokens."""
    return 2 * layers * kv_heads * head_dim * itemsize * tokens


def open_lm(model_path: str, threads: int = 0, providers: Optional[List[str]] = None) -> "DecoderLM":
    return DecoderLM(open_backend(model_path, threads=threads, providers=providers))


def is_lm(backend) -> bool:
    """Whether an opened model is a language model of edgekit (its metadata says so)."""
    session = getattr(backend, "_session", None)
    return session is not None and META_KEY in session.get_modelmeta().custom_metadata_map


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def lm_meta(session) -> Optional[dict]:
    """The `edgekit.lm` metadata of an ONNX Runtime session's model, or None for other models."""
    raw = session.get_modelmeta().custom_metadata_map.get(META_KEY)
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
        for key in ("layers", "kv_heads", "head_dim", "vocab"):
            if not isinstance(meta.get(key), int) or meta[key] < 1:
                raise ValueError(f"field '{key}' is missing or not a positive integer")
    except ValueError as exc:
        raise ModelLoadError(f"the model's '{META_KEY}' metadata is not usable: {exc}") from exc
    return meta


class DecoderLM:
    """A loaded language model: forward passes, the cache, greedy generation."""

    def __init__(self, backend):
        """`backend`: the model opened by edgekit.device.backends (see `open_lm`)."""
        self.backend = backend
        session = getattr(backend, "_session", None)
        meta = lm_meta(session) if session is not None else None
        if meta is None:
            raise ModelLoadError(f"not a language model of edgekit (no '{META_KEY}' metadata)")
        self.session, self.meta = session, meta
        self.layers, self.kv_heads, self.head_dim = meta["layers"], meta["kv_heads"], meta["head_dim"]
        self.vocab = meta["vocab"]
        # the longest sequence it runs at (its position table), None where the export did not say
        context = meta.get("context")
        self.context = context if isinstance(context, int) and context > 0 else None
        self.eos = [int(e) for e in (meta.get("eos") or [])]
        inputs = {i.name: i for i in session.get_inputs()}
        self.past_names = ["past_key_values.%d.%s" % (i, kv) for i in range(self.layers) for kv in ("key", "value")]
        self.present_names = ["present.%d.%s" % (i, kv) for i in range(self.layers) for kv in ("key", "value")]
        missing = [n for n in self.past_names + ["input_ids", "attention_mask"] if n not in inputs]
        if missing:
            raise ModelLoadError(f"the language model lacks input '{missing[0]}'")
        self.kv_dtype = _NP.get(inputs[self.past_names[0]].type, np.float32)
        logits = next((o for o in session.get_outputs() if o.name == "logits"), None)
        self.logits_dtype = _NP.get(logits.type, np.float32) if logits is not None else np.float32
        self.has_position_ids = "position_ids" in inputs
        self.shared_buffer = bool(meta.get("shared_buffer"))

    def kv_cache_bytes(self, tokens: int) -> int:
        return kv_cache_bytes(self.layers, self.kv_heads, self.head_dim, np.dtype(self.kv_dtype).itemsize, tokens)

    # -- one call ---------------------------------------------------------------------

    def forward(self, ids: np.ndarray, past: Optional[List[np.ndarray]] = None,
                extra: Optional[dict] = None) -> Tuple[np.ndarray, list]:
        """ids [1,S] int64 (and the past, or none) -> (logits [1,S,V], present); `extra`: more
        inputs a model made for measuring takes."""
        out = self.session.run(["logits"] + self.present_names, self._feed(ids, past, extra))
        return out[0], out[1:]

    def outputs(self, names: Sequence[str], ids: np.ndarray) -> list:
        """The named outputs of one pass over ids [1,S] from an empty cache (a model made for
        measuring exposes inner tensors as outputs)."""
        return self.session.run(list(names), self._feed(ids, None, None))

    def _feed(self, ids: np.ndarray, past: Optional[List[np.ndarray]], extra: Optional[dict]) -> dict:
        past = past if past is not None else self.empty_past()
        p, s = past[0].shape[2], ids.shape[1]
        feed = {"input_ids": ids, "attention_mask": np.ones((1, p + s), np.int64), **(extra or {})}
        if self.has_position_ids:
            feed["position_ids"] = np.arange(p, p + s, dtype=np.int64)[None]
        feed.update(zip(self.past_names, past))
        return feed

    def empty_past(self) -> List[np.ndarray]:
        return [np.zeros((1, self.kv_heads, 0, self.head_dim), self.kv_dtype) for _ in self.past_names]

    # -- a cache that lives across calls ----------------------------------------------

    def fits(self, tokens: int, what: str) -> None:
        """ValueError naming `what` when `tokens` are more than the model runs at."""
        if self.context is not None and tokens > self.context:
            raise ValueError(f"{what} ({tokens} tokens) is longer than the model runs at ({self.context} tokens)")

    def start(self, max_len: int) -> dict:
        """A fresh cache for up to `max_len` tokens (preallocated when the model shares its buffer)."""
        self.fits(max_len, "the cache")
        if not self.shared_buffer:
            return {"past": self.empty_past(), "total": 0, "max_len": max_len}
        import onnxruntime as ort

        bufs = [ort.OrtValue.ortvalue_from_numpy(np.zeros((1, self.kv_heads, max_len, self.head_dim), self.kv_dtype))
                for _ in self.past_names]
        io = self.session.io_binding()
        io.bind_output("logits")  # first: get_outputs() keeps binding order, rebinding keeps the place
        for past, present, buf in zip(self.past_names, self.present_names, bufs):
            io.bind_ortvalue_input(past, buf)
            io.bind_ortvalue_output(present, buf)
        # a decode step's logits land in one buffer bound once: reading them back through
        # get_outputs() wraps all 2 x layers + 1 outputs anew every token (~80 us on SmolLM2)
        step = np.zeros((1, 1, self.vocab), self.logits_dtype)
        return {"io": io, "bufs": bufs, "total": 0, "max_len": max_len, "step_logits": step,
                "step_out": ort.OrtValue.ortvalue_from_numpy(step)}

    def cache_nbytes(self, state: dict) -> int:
        """The bytes the cache holds now (the preallocated buffers, or the last present)."""
        if "bufs" in state:
            return sum(int(np.prod(b.shape())) * np.dtype(self.kv_dtype).itemsize for b in state["bufs"])
        return sum(int(a.nbytes) for a in state["past"])

    def feed(self, state: dict, ids: np.ndarray) -> np.ndarray:
        """Run ids [1,S] after what the cache holds; returns the logits [1,S,V]."""
        if state["total"] + ids.shape[1] > state["max_len"]:
            raise ValueError(f"{state['total'] + ids.shape[1]} tokens do not fit the cache of {state['max_len']}")
        state["total"] += ids.shape[1]
        if "io" not in state:
            logits, state["past"] = self.forward(ids, state["past"])
            return logits
        io = state["io"]
        io.bind_cpu_input("input_ids", np.ascontiguousarray(ids, dtype=np.int64))
        io.bind_cpu_input("attention_mask", np.ones((1, state["total"]), np.int64))
        if self.has_position_ids:
            start = state["total"] - ids.shape[1]
            io.bind_cpu_input("position_ids", np.arange(start, state["total"], dtype=np.int64)[None])
        if ids.shape[1] == 1:
            io.bind_ortvalue_output("logits", state["step_out"])
            self.session.run_with_iobinding(io)
            return state["step_logits"].copy()  # the buffer is the next step's: the caller keeps its own
        io.bind_output("logits")  # unallocated: a prefill chunk's length varies
        self.session.run_with_iobinding(io)
        return io.get_outputs()[0].numpy()

    # -- greedy generation ------------------------------------------------------------

    def generate(self, prompt: Sequence[int], new_tokens: int, *, use_cache: bool = True, max_len: Optional[int] = None,
                 stop_at_eos: bool = False, on_step: Optional[Callable[[int], None]] = None) -> dict:
        """Greedy tokens after `prompt`: {tokens, prefill_s, step_s [per decode step], cache_bytes}.
        With the cache, the prompt is prefilled PREFILL_CHUNK tokens at a time into a cache of
        `max_len` tokens (prompt + new by default); without it every token reruns the prefix."""
        ids = np.asarray(prompt, dtype=np.int64).reshape(1, -1)
        total = max_len or ids.shape[1] + new_tokens
        if not use_cache:  # start() checks the cache's length
            self.fits(total, "the prompt and its answer")
        state = self.start(total) if use_cache else None
        start = time.perf_counter()
        if use_cache:
            for i in range(0, ids.shape[1], PREFILL_CHUNK):
                logits = self.feed(state, ids[:, i:i + PREFILL_CHUNK])
        else:
            logits, _ = self.forward(ids)
        prefill_s = time.perf_counter() - start
        tokens, steps = [int(logits[0, -1].argmax())], []
        while len(tokens) < new_tokens and not (stop_at_eos and tokens[-1] in self.eos):
            start = time.perf_counter()
            if use_cache:
                logits = self.feed(state, np.array([[tokens[-1]]], np.int64))
            else:
                logits, _ = self.forward(np.concatenate([ids, np.array([tokens], np.int64)], axis=1))
            tokens.append(int(logits[0, -1].argmax()))
            steps.append(time.perf_counter() - start)
            if on_step is not None:
                on_step(len(tokens))
        return {"tokens": tokens, "prefill_s": prefill_s, "step_s": steps,
                "cache_bytes": self.cache_nbytes(state) if state is not None else 0}

    def window_logits(self, window: np.ndarray) -> np.ndarray:
        """Teacher-forced logits [S,V] of one window of token ids, from an empty cache."""
        self.fits(np.size(window), "an evaluation window")
        logits, _ = self.forward(np.asarray(window, dtype=np.int64).reshape(1, -1))
        return logits[0]

