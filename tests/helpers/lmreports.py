"""Language-model device reports stored the way collect stores them (validate_report, then
Store.add_report), without a model: what the report tests read.

Two device classes (host-cpu-lm, raspberry-pi-5-lm), versions 1.0.0 (INT8) and 1.1.0 (INT4),
three devices each; on the host class one device of 1.1.0 reports a perplexity 5% off the
host's (drift), and on the Pi class 1.1.0 is over the perplexity budget. The numbers are
shaped like SmolLM2-135M's (a cache of 2 x 30 layers x 3 KV heads x 64 x 4 bytes a token),
but they are inputs of these tests, not measurements of anything.
"""

from __future__ import annotations

import json
from pathlib import Path

KV_BYTES_PER_TOKEN = 2 * 30 * 3 * 64 * 4
TARGETS = {"host-cpu-lm": 512, "raspberry-pi-5-lm": 1024}          # target -> context
# version -> (precision, ppl increase, decode tokens/s, model MiB)
VERSIONS = {"1.0.0": ("int8-block", 0.0014, 40.0, 146.6), "1.1.0": ("int4-block", 0.024, 52.0, 108.8)}
FP32_PPL = 24.99
DRIFTING = "lm-hc-03"   # its 1.1.0 perplexity is 5% above the host's
SLOW = "lm-pi-03"       # decodes at a fifth of its siblings' speed


def devices() -> dict[str, str]:
    """device -> target."""
    return {f"lm-{short}-0{i}": target for short, target in (("hc", "host-cpu-lm"), ("pi", "raspberry-pi-5-lm"))
            for i in (1, 2, 3)}


def _curve(context: int, decode: float) -> list[dict]:
    points = []
    for share in (0.125, 0.25, 0.5, 1.0):
        ctx = int(context * share)
        points.append({"context": ctx, "kv_cache_bytes": KV_BYTES_PER_TOKEN * ctx,
                       "cache": {"decode_tokens_per_s": decode * (1 - 0.2 * share),
                                 "rss_mb": 300 + KV_BYTES_PER_TOKEN * ctx / 2 ** 20},
                       "recompute": {"decode_tokens_per_s": decode * 24 / ctx, "rss_mb": 300 + ctx * 0.2}})
    return points


def lm_report(device: str, target: str, version: str, run: int = 0, *, ppl_off: float = 0.0,
              speed: float = 1.0) -> dict:
    """A schema-1 report of an LM evaluation as edgekit.device.report writes one."""
    precision, increase, decode, model_mb = VERSIONS[version]
    context = TARGETS[target]
    if target == "raspberry-pi-5-lm" and version == "1.1.0":
        increase = 0.15  # over the Pi's 10% budget
    host_ppl = FP32_PPL * (1 + increase)
    ppl = host_ppl * (1 + ppl_off)
    decode *= speed
    step = 1000.0 / decode
    expected = {"source": "measured", "perplexity": host_ppl, "fp32_perplexity": FP32_PPL, "ppl_increase": increase,
                "kl_divergence": increase / 5, "top1_agreement": 0.95 - increase}
    metrics = {"perplexity": ppl, "fp32_perplexity": FP32_PPL, "ppl_increase": ppl / FP32_PPL - 1,
               "kl_divergence": increase / 5, "top1_agreement": 0.95 - increase, "tokens_scored": 1020,
               "prefill_tokens_per_s": 20 * decode, "decode_tokens_per_s": decode, "ttft_ms": 128 / (20 * decode) * 1000,
               "kv_cache": "cache", "kv_cache_bytes": KV_BYTES_PER_TOKEN * context,
               "kv_cache_bytes_measured": KV_BYTES_PER_TOKEN * context,
               "recompute": {"decode_tokens_per_s": decode * 24 / context, "peak_rss_mb": 310.0, "ttft_ms": 900.0},
               "kv_curve": _curve(context, decode), "lm": {"context": context, "prompt_tokens": 128, "generate_tokens": 32},
               "accuracy": None, "accuracy_expected": None, "fidelity": None, "fidelity_expected": None,
               "latency_ms": {"p50": step, "p90": step * 1.1, "p95": step * 1.15, "p99": step * 1.2, "mean": step, "n": 31},
               "load_ms": 400.0, "peak_rss_mb": 300 + model_mb + KV_BYTES_PER_TOKEN * context / 2 ** 20,
               "model_mb": model_mb, "n": 4, "expected": expected}
    return {"schema": 1, "run_id": f"{device}-{version}-{run}", "started_at": "2026-11-26T10:00:00Z",
            "finished_at": f"2026-11-26T10:0{run}:30Z", "status": "ok", "error": None,
            "device": {"name": device, "hostname": device, "arch": "x86_64", "os": "Linux", "python": "3.11.7",
                       "cpu_count": 2, "mem_total_mb": 24576.0},
            "bundle": {"name": "smollm2", "version": version, "sha256": "ab" * 32, "target": target,
                       "precision": precision},
            "runtime": {"name": "onnxruntime", "version": "1.32.0", "providers": ["CPUExecutionProvider"]},
            "metrics": metrics}


def fill_lm_store(path: Path) -> Path:
    """A store with both versions' reports from every device of both targets."""
    from edgekit.device_report import validate_report
    from edgekit.store import open_store

    with open_store(path) as store:
        for device, target in devices().items():
            store.touch_device(device, target=target, transport="local", reachable=True)
            for version in VERSIONS:
                report = lm_report(device, target, version, ppl_off=0.05 if (device, version) == (DRIFTING, "1.1.0") else 0.0,
                                   speed=0.2 if device == SLOW else 1.0)
                checked = validate_report(json.dumps(report).encode(), f"test report of {device}")
                assert store.add_report(device, checked, source="test")
    return path


def lm_calibration_record(path: Path) -> Path:
    """calibration.json of a language model for raspberry-pi-5-lm: three candidates (INT8 and
    INT4 with the cache, INT4 recomputing), the INT4 one with the cache chosen."""
    from edgekit.calibration_record import SCHEMA

    def candidate(precision, method, mode, increase, decode, rss, mb, passed, broken=()):
        recipe = {"precision": precision, "algorithm": method, "per_channel": False, "reduce_range": False,
                  "exclude": [], "include": [], "block_size": 32, "kv_cache": mode}
        step = 1000.0 / decode
        return {"id": f"{precision}-b32-{method}-{mode}", "recipe": recipe, "status": "ok", "error": None,
                "passed": passed, "failed_budgets": list(broken), "seconds": 10.0,
                "metrics": {"perplexity": FP32_PPL * (1 + increase), "fp32_perplexity": FP32_PPL,
                            "ppl_increase": increase, "kl_divergence": increase / 5, "top1_agreement": 0.95 - increase,
                            "prefill_tokens_per_s": decode * 20, "decode_tokens_per_s": decode, "ttft_ms": 6400 / decode,
                            "kv_cache": mode, "kv_cache_bytes": KV_BYTES_PER_TOKEN * 1024 if mode == "cache" else 0,
                            "recompute": {"decode_tokens_per_s": decode / 40, "peak_rss_mb": rss, "ttft_ms": 900.0},
                            "latency_ms": {"p50": step, "p90": step, "p95": step, "p99": step, "mean": step, "n": 31},
                            "peak_rss_mb": rss, "model_mb": mb, "load_ms": 400.0, "accuracy": None, "fidelity": None}}

    candidates = [candidate("int8-block", "rtn", "cache", 0.0014, 40.0, 520.0, 146.6, True),
                  candidate("int4-block", "minmax-offset", "cache", 0.0024, 52.0, 480.0, 108.8, True),
                  candidate("int4-block", "minmax-offset", "recompute", 0.0024, 1.3, 330.0, 108.8, False,
                            ["min_decode_tokens_per_s: 1.30 < 10"])]
    record = {"schema": SCHEMA, "model": {"path": "smollm2/model", "sha256": None, "format": "hf",
                                          "inputs": [{"name": "input_ids", "dtype": "int64", "shape": [None, None]}]},
              "target": {"name": "raspberry-pi-5-lm"},
              "budgets": {"max_model_mb": 256.0, "max_peak_rss_mb": 1024.0, "max_ppl_increase": 0.1,
                          "min_decode_tokens_per_s": 10.0, "max_ttft_ms": 2000.0},
              "objective": "memory", "metric": "perplexity", "baseline": {"perplexity": FP32_PPL},
              "data": {"calibration": {"path": "calibration.txt", "sha256": "ab" * 32, "n": 218},
                       "eval": {"path": "eval.txt", "sha256": "cd" * 32, "n": 97, "n_used": 4}},
              "candidates": candidates, "chosen": candidates[1]["id"],
              "output": {"file": "model.onnx", "sha256": "ef" * 32}, "why": "the least memory of those in budget"}
    path.write_text(json.dumps(record))
    return path
