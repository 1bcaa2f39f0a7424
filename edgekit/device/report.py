"""Evaluate an installed bundle on this device and write its report (schema 1).

The runner is a fresh process for every command, so the peak RSS it reports is that of
one process that loaded the model and ran the evaluation, nothing else. A model that
does not load (an older runtime, a missing kernel) still gives a report, with
status "failed" and the runtime's own words in `error`: the canary gate reads it.
"""

from __future__ import annotations

import os
import platform
import secrets
import socket
import time
from typing import Optional, Set, Tuple

from .install import META, bundle_manifest
from .state import Layout, RunnerError, check_name, read_json, utc_now, write_json_atomic

__all__ = ["SCHEMA", "cpu_info", "device_facts", "evaluate_bundle", "new_run_id"]

SCHEMA = 1


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def _os_name() -> str:
    try:
        with open("/etc/os-release") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def _mem_total_mb() -> Optional[float]:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1024.0 * 1024.0), 1)
    except (ValueError, OSError, AttributeError):
        return None


def cpu_info() -> Tuple[str, Set[str]]:
    """The CPU's model name and its feature flags, from /proc/cpuinfo (the platform's words
    where there is none; ARM kernels may name only the board's "Hardware")."""
    model, flags = platform.processor() or platform.machine(), set()  # type: Tuple[str, Set[str]]
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware") and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def device_facts(name: Optional[str] = None) -> dict:
    """What the device is; `name` is the inventory's name for it (hostname when not given)."""
    hostname = socket.gethostname()
    return {"name": name or hostname, "hostname": hostname, "arch": platform.machine(), "os": _os_name(),
            "kernel": platform.release(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "mem_total_mb": _mem_total_mb()}


def _bundle_facts(layout: Layout, manifest: dict) -> dict:
    meta = read_json(os.path.join(layout.bundle_dir(manifest["name"], manifest["version"]), META)) or {}
    target = manifest.get("target") or {}
    return {"name": manifest["name"], "version": manifest["version"], "sha256": meta.get("sha256"),
            "target": target.get("name") if isinstance(target, dict) else target,
            "precision": manifest.get("precision"), "signer": meta.get("signer")}


def _measure(layout: Layout, manifest: dict, samples: Optional[int]) -> dict:
    from .evaluate import evaluate  # numpy and the runtime load only for this command

    folder = layout.bundle_dir(manifest["name"], manifest["version"])
    target = manifest.get("target") or {}
    runtime = manifest.get("runtime") or {}
    lm = (manifest.get("measure") or {}).get("lm")  # a language model's workload and cache mode
    return evaluate(os.path.join(folder, manifest["model"]["file"]), os.path.join(folder, manifest["eval"]["file"]),
                    threads=int(runtime.get("threads", target.get("threads", 0)) or 0),
                    providers=runtime.get("providers") or target.get("providers") or None, samples=samples,
                    lm=lm if isinstance(lm, dict) else None)


# What a language model's evaluation adds to a report's metrics (edgekit.device.lm_evaluate).
LM_METRICS = ("perplexity", "fp32_perplexity", "ppl_increase", "ppl_increase_se", "kl_divergence", "top1_agreement", "tokens_scored",
              "prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms", "kv_cache", "kv_cache_bytes",
              "kv_cache_bytes_measured", "recompute", "kv_curve", "lm")


def _metrics(measured: Optional[dict], expected: dict) -> dict:
    measured = measured or {}
    lm = {k: measured.get(k) for k in LM_METRICS} if "perplexity" in measured else {}
    return {**lm,
        "accuracy": measured.get("accuracy"),
        "accuracy_expected": expected.get("accuracy"),
        "fidelity": measured.get("fidelity"),
        "fidelity_expected": expected.get("fidelity"),
        "latency_ms": measured.get("latency_ms"),
        "load_ms": measured.get("load_ms"),
        "peak_rss_mb": measured.get("peak_rss_mb"),
        "model_mb": measured.get("model_mb"),
        "n": measured.get("n"),
        "expected": expected,
    }


OUT_OF_MEMORY = ("cannot allocate memory", "failed to map segment", "bad_alloc", "out of memory",
                 "memory allocation", "memoryerror")


def failure_text(exc: BaseException) -> str:
    """The exception, said plainly: a runtime that could not load for lack of memory (an
    ImportError of a shared object, a std::bad_alloc) is `out of memory`, not an import error."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, MemoryError) or any(s in text.lower() for s in OUT_OF_MEMORY):
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        return f"out of memory ({type(exc).__name__}{': ' + lines[-1] if lines else ''})"
    return text


def evaluate_bundle(layout: Layout, name: str, version: Optional[str] = None, *, device_name: Optional[str] = None,
                    samples: Optional[int] = None) -> Tuple[dict, str]:
    """Measure NAME (its current version unless `version`); returns (report, report path)."""
    version = check_name(version, "version") if version else layout.current_version(name)
    if version is None:
        raise RunnerError(f"{name} has no active version on this device; give --version or activate one", "state", 2)
    manifest = bundle_manifest(layout, name, version)
    report = {"schema": SCHEMA, "run_id": new_run_id(), "started_at": utc_now(), "finished_at": None,
              "status": "ok", "error": None, "device": device_facts(device_name),
              "bundle": _bundle_facts(layout, manifest),
              "runtime": {"name": (manifest.get("runtime") or {}).get("name"), "version": None, "providers": []}}
    measured = None
    try:
        measured = _measure(layout, manifest, samples)
        report["runtime"] = measured["runtime"]
    except Exception as exc:  # noqa: BLE001 - any failure of the model here is the report's news
        report["status"], report["error"] = "failed", failure_text(exc)[:2000]
    report["metrics"] = _metrics(measured, manifest.get("expected") or {})
    report["finished_at"] = utc_now()
    folder = os.path.join(layout.reports, name, version)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{report['run_id']}.json")
    write_json_atomic(path, report)
    return report, path
