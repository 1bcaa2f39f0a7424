"""A language model's evaluation, the same on host and device: text quality against FP32,
generation speed and memory with and without the KV cache.

The evaluation data (.npz) holds token windows and what the FP32 model said about them, so
that a device needs neither a tokenizer nor the FP32 model:

    input_ids         [N, S] int64      windows of the eval text, tokenized on the host
    _ref_topk_ids     [N, S-1, K] int32 the FP32 model's K most likely next tokens per position
    _ref_topk_logp    [N, S-1, K] f32   their log-probabilities
    _ref_target_logp  [N, S-1] f32      the FP32 log-probability of the token that came next

From these: `perplexity` (exp of the mean negative log-likelihood of the next token),
`ppl_increase` (perplexity / FP32 perplexity - 1, a fraction), `top1_agreement` (the
model's most likely token is FP32's), and `kl_divergence`, the mean per token of
KL(FP32 || model) in nats, over K + 1 outcomes: FP32's top K tokens and "any other". A full
vocabulary of FP32 logits per token would not fit a bundle; merging the tail into one
outcome can only lower a KL (the log-sum inequality), so this is a lower bound of the full
KL, exact when the tail's probabilities are in proportion, and close when FP32's top K
hold nearly all the mass (K = 16 holds ~0.8-0.9 of it on English text).

Speed and memory: a prompt of the profile's `prompt_tokens` (from the eval text) is
prefilled into a cache sized to the profile's `context`, then `generate_tokens` are
generated greedily (`ttft_ms` is the prefill; decode tokens/s over the steps after it).
The same without a cache (`recompute`: every token reruns the prefix, a few tokens only).
`peak_rss_mb` is the process's peak up to the end of generation with the cache (loading
included: what a device must have); the recompute block's peak is measured after resetting
the high-water mark (Linux), so it also holds what the cached run left allocated.
`kv_curve` repeats both at several context lengths: the memory and speed they trade.

Standard library + numpy + onnxruntime, Python 3.9 syntax: this runs on devices.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np

from .lm import DecoderLM, log_softmax
from .metrics import latency_summary, peak_rss_mb

__all__ = ["INPUT", "REF_IDS", "REF_LOGP", "REF_TARGET", "TOP_K", "TextScore", "reference_of", "evaluate_lm",
           "KV_MODES"]

INPUT = "input_ids"
REF_IDS, REF_LOGP, REF_TARGET = "_ref_topk_ids", "_ref_topk_logp", "_ref_target_logp"
TOP_K = 16
KV_MODES = ("cache", "recompute")
RECOMPUTE_TOKENS = 8  # decode steps without a cache: each reruns the whole prefix
CURVE_FRACTIONS = (0.125, 0.25, 0.5, 1.0)
CURVE_STEPS = 4  # tokens generated with the cache at each context of the curve (3 timed decode steps)
_TINY = 1e-12
# the workload measured without a target profile (`edgekit evaluate`), shortened for a model that
# runs at fewer tokens (default_workload)
DEFAULT_CONTEXT, DEFAULT_PROMPT, DEFAULT_GENERATE = 256, 64, 32


def default_workload(model_context: Optional[int] = None) -> dict:
    """context, prompt_tokens, generate_tokens without a profile: the defaults, or for a model that
    runs at fewer than DEFAULT_CONTEXT tokens that many, a quarter of them the prompt."""
    context = min(DEFAULT_CONTEXT, model_context or DEFAULT_CONTEXT)
    prompt = max(1, min(DEFAULT_PROMPT, context // 4))
    return {"context": context, "prompt_tokens": prompt, "generate_tokens": min(DEFAULT_GENERATE, context - prompt)}


def reference_of(logits: np.ndarray, window: np.ndarray, k: int = TOP_K):
    """What the bundle keeps of the FP32 logits [S,V] of one window: (top-k ids, their
    log-probs, the log-prob of each next token), over positions 0..S-2."""
    logp = log_softmax(logits[:-1])
    k = min(k, logp.shape[-1])
    ids = np.argpartition(-logp, k - 1, axis=-1)[:, :k]
    top = np.take_along_axis(logp, ids, axis=-1)
    order = np.argsort(-top, axis=-1)  # most likely first: column 0 is FP32's top-1
    ids, top = np.take_along_axis(ids, order, axis=-1), np.take_along_axis(top, order, axis=-1)
    target = logp[np.arange(len(logp)), np.asarray(window[1:], dtype=np.int64)]
    return ids.astype(np.int32), top.astype(np.float32), target.astype(np.float32)


class TextScore:
    """Perplexity, and agreement with FP32, summed one window at a time."""

    def __init__(self) -> None:
        self.tokens = 0
        self.nll = 0.0
        self.ref_nll = 0.0
        self.kl = 0.0
        self.top1 = 0
        self.diff_sq = 0.0  # sum over tokens of (model NLL - FP32 NLL)^2: the paired spread
        self.has_reference = False

    def update(self, logits: np.ndarray, window: np.ndarray, ref_ids=None, ref_logp=None, ref_target=None) -> None:
        logp = log_softmax(logits[:-1])
        targets = np.asarray(window[1:], dtype=np.int64)
        nll = -logp[np.arange(len(targets)), targets].astype(np.float64)
        self.nll += float(nll.sum())
        self.tokens += len(targets)
        if ref_ids is None:
            return
        self.diff_sq += float(((nll + np.asarray(ref_target, dtype=np.float64)) ** 2).sum())
        self.has_reference = True
        ref_ids = np.asarray(ref_ids, dtype=np.int64)
        p_log = np.asarray(ref_logp, dtype=np.float64)
        q_log = np.take_along_axis(logp, ref_ids, axis=-1).astype(np.float64)
        p_tail = np.clip(1.0 - np.exp(p_log).sum(-1), _TINY, 1.0)
        q_tail = np.clip(1.0 - np.exp(q_log).sum(-1), _TINY, 1.0)
        kl = (np.exp(p_log) * (p_log - q_log)).sum(-1) + p_tail * (np.log(p_tail) - np.log(q_tail))
        self.kl += float(np.maximum(kl, 0.0).sum())
        self.top1 += int(np.count_nonzero(logp.argmax(-1) == ref_ids[:, 0]))
        self.ref_nll -= float(np.asarray(ref_target, dtype=np.float64).sum())

    def result(self) -> Dict[str, Optional[float]]:
        if self.tokens == 0:
            raise ValueError("perplexity of no tokens")
        ppl = float(np.exp(self.nll / self.tokens))
        out = {"perplexity": ppl, "tokens_scored": self.tokens, "fp32_perplexity": None, "ppl_increase": None,
               "ppl_increase_se": None, "kl_divergence": None, "top1_agreement": None}
        if self.has_reference:
            ref = float(np.exp(self.ref_nll / self.tokens))
            out.update(fp32_perplexity=ref, ppl_increase=ppl / ref - 1.0, ppl_increase_se=self._increase_se(ppl / ref),
                       kl_divergence=self.kl / self.tokens, top1_agreement=self.top1 / self.tokens)
        return out

    def _increase_se(self, ratio: float) -> Optional[float]:
        """The standard error of ppl_increase from the per-token NLL differences to FP32 (paired, so
        far smaller than the perplexity's own): ratio x SE of their mean (the delta method).
        Tokens are taken as independent; neighbours in a text are not quite, so read it as a floor."""
        if self.tokens < 2:
            return None
        mean = (self.nll - self.ref_nll) / self.tokens
        var = max(self.diff_sq / self.tokens - mean * mean, 0.0) * self.tokens / (self.tokens - 1)
        return ratio * float(np.sqrt(var / self.tokens))


def score_text(lm: DecoderLM, arrays: Dict[str, np.ndarray], n: int) -> dict:
    score = TextScore()
    ref = REF_IDS in arrays
    for i in range(n):
        window = np.asarray(arrays[INPUT][i])
        extra = (arrays[REF_IDS][i], arrays[REF_LOGP][i], arrays[REF_TARGET][i]) if ref else ()
        score.update(lm.window_logits(window), window, *extra)
    return score.result()


def _pool(arrays: Dict[str, np.ndarray], n: int, tokens: int) -> np.ndarray:
    """`tokens` prompt tokens from the eval windows, repeated when the text is shorter."""
    flat = np.asarray(arrays[INPUT][:n], dtype=np.int64).reshape(-1)
    return np.resize(flat, tokens)


def _rate(tokens: int, seconds: float) -> Optional[float]:
    return tokens / seconds if seconds > 0 else None


def _speed(lm: DecoderLM, prompt: np.ndarray, new: int, context: int, use_cache: bool, repeats: int) -> dict:
    """Prefill and decode rates (medians over repeats) of one way of generating."""
    runs = [lm.generate(prompt, new, use_cache=use_cache, max_len=context) for _ in range(repeats)]
    prefill = float(np.median([r["prefill_s"] for r in runs]))
    steps = [s for r in runs for s in r["step_s"]]
    decode = float(np.median([len(r["step_s"]) / sum(r["step_s"]) for r in runs if r["step_s"]])) if steps else None
    return {"prefill_tokens_per_s": _rate(len(prompt), prefill), "ttft_ms": prefill * 1000.0,
            "decode_tokens_per_s": decode, "latency_ms": latency_summary(steps) if steps else None,
            "cache_bytes": runs[-1]["cache_bytes"], "peak_rss_mb": peak_rss_mb()}


def reset_peak_rss() -> bool:
    """Linux: writing 5 to /proc/self/clear_refs resets the peak (VmHWM) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def kv_curve(lm: DecoderLM, arrays: Dict[str, np.ndarray], n: int, context: int, points: int) -> List[dict]:
    """Cache against recompute at up to `points` context lengths: decode tokens/s, `rss_mb`
    the process's peak during that run (the high-water mark is reset before it where Linux
    allows), and the cache's bytes by the formula. The RSS after a run would miss the cache:
    it is freed by then. Every cached run goes first, shortest context first, so that what
    ONNX Runtime's arena keeps from one run (reused by the next) is never a recompute's
    larger activations."""
    contexts = sorted({max(16, int(context * f)) for f in CURVE_FRACTIONS[-points:]} if points else set())
    rows = {ctx: {"context": ctx, "kv_cache_bytes": lm.kv_cache_bytes(ctx)} for ctx in contexts if ctx <= context}
    for ctx, row in rows.items():  # 3 decode steps into a cache of ctx tokens, the last at ctx - 1
        reset_peak_rss()
        run = lm.generate(_pool(arrays, n, ctx - CURVE_STEPS), CURVE_STEPS, max_len=ctx)
        row["cache"] = {"decode_tokens_per_s": _rate(len(run["step_s"]), sum(run["step_s"])), "rss_mb": peak_rss_mb()}
    for ctx, row in rows.items():
        row["recompute"] = _recompute_step(lm, _pool(arrays, n, ctx - 1))
    return list(rows.values())


def _recompute_step(lm: DecoderLM, prefix: np.ndarray) -> dict:
    """One decode step without a cache after `prefix`: a single pass over the whole prefix, timed
    (that pass is the step: running the prefix once before it, untimed, would only double the work)."""
    reset_peak_rss()
    run = lm.generate(prefix, 1, use_cache=False)
    return {"decode_tokens_per_s": _rate(1, run["prefill_s"]), "rss_mb": peak_rss_mb()}


def evaluate_lm(backend, model_path: str, arrays: Dict[str, np.ndarray], n: int, *, context: int = DEFAULT_CONTEXT,
                prompt_tokens: int = DEFAULT_PROMPT, generate_tokens: int = DEFAULT_GENERATE, kv_cache: str = "cache",
                curve_points: int = 0, repeats: int = 2,
                quality_only: bool = False) -> dict:
    """Measure the opened model (`backend`) on everything the module docstring lists; n windows are
    scored. `quality_only`: the text scores alone (a package's expected metrics: its timings would
    be thrown away), the speed and memory fields None."""
    if kv_cache not in KV_MODES:
        raise ValueError(f"kv_cache must be one of {', '.join(KV_MODES)}, got {kv_cache!r}")
    if not 0 < prompt_tokens < context:
        raise ValueError(f"prompt_tokens ({prompt_tokens}) must be at least 1 and below the context ({context})")
    lm = DecoderLM(backend)
    if not quality_only:
        lm.fits(context, "the profile's context")
    new = max(2, min(generate_tokens, context - prompt_tokens))
    if quality_only:
        return _result(lm, model_path, n, score_text(lm, arrays, n), kv_cache=kv_cache,
                       lm={"context": context, "prompt_tokens": prompt_tokens, "generate_tokens": new})
    prompt = _pool(arrays, n, prompt_tokens)
    lm.generate(prompt[:8], 2)  # warm-up: the first runs allocate and pre-pack
    cached = _speed(lm, prompt, new, context, True, repeats)
    reset_peak_rss()
    recomputed = _speed(lm, prompt, min(new, RECOMPUTE_TOKENS), context, False, 1)
    curve = kv_curve(lm, arrays, n, context, curve_points)
    chosen = cached if kv_cache == "cache" else recomputed
    return _result(lm, model_path, n, score_text(lm, arrays, n), kv_cache=kv_cache,
                   prefill_tokens_per_s=chosen["prefill_tokens_per_s"], decode_tokens_per_s=chosen["decode_tokens_per_s"],
                   ttft_ms=chosen["ttft_ms"], latency_ms=chosen["latency_ms"], peak_rss_mb=chosen["peak_rss_mb"],
                   kv_cache_bytes=lm.kv_cache_bytes(context) if kv_cache == "cache" else 0,
                   kv_cache_bytes_measured=cached["cache_bytes"] if kv_cache == "cache" else 0,
                   recompute={"decode_tokens_per_s": recomputed["decode_tokens_per_s"],
                              "peak_rss_mb": recomputed["peak_rss_mb"], "ttft_ms": recomputed["ttft_ms"]},
                   kv_curve=curve, lm={"context": context, "prompt_tokens": prompt_tokens, "generate_tokens": new})


_SPEED = ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms", "latency_ms", "peak_rss_mb", "kv_cache_bytes",
          "kv_cache_bytes_measured", "recompute", "kv_curve")


def _result(model: DecoderLM, model_path: str, n: int, scores: dict, **measured) -> dict:
    """The evaluation's JSON: the text scores, what was measured (None for what was not), the model and runtime."""
    result = dict(scores, accuracy=None, fidelity=None, **{k: None for k in _SPEED})
    result.update(measured)
    result.update({"load_ms": model.backend.load_ms, "model_mb": model_mb(model_path, model.meta), "n": n,
                   "runtime": model.backend.describe()})
    return result


def model_mb(model_path: str, meta: dict) -> float:
    """The model file and its external data files (named in its metadata), in MiB."""
    folder = os.path.dirname(os.path.abspath(model_path))
    files = [model_path] + [os.path.join(folder, f) for f in meta.get("data") or []]
    return sum(os.path.getsize(f) for f in files if os.path.isfile(f)) / (1024.0 * 1024.0)
