"""`edgekit evaluate`: accuracy or fidelity, size, latency and peak memory on this machine."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from edgekit.cli._common import (JsonFlag, compact_table, console, fmt_mib, fmt_ms, fmt_pct, fmt_pp, fmt_sig,
                                 print_json, progress, titled)


def evaluate_cmd(
    model: Annotated[Path, typer.Argument(help="The model to measure (.onnx).")],
    data: Annotated[Path, typer.Option("--data", help="Evaluation data set (.npz or directory).")],
    reference: Annotated[Optional[str], typer.Option(
        "--reference", help="The FP32 model this one was made from (.onnx, .pt2, pkg.module:factory or .tflite): "
        "fidelity to it, and its accuracy beside.")] = None,
    samples: Annotated[Optional[int], typer.Option("--samples", help="Use only the first N samples.")] = None,
    threads: Annotated[int, typer.Option("--threads", help="Intra-op threads (0: the runtime's default).")] = 0,
    providers: Annotated[Optional[list[str]], typer.Option(
        "--provider", help="Execution provider, in order of preference (repeatable; CPU is the fallback).")] = None,
    runs: Annotated[int, typer.Option("--runs", help="Latency runs (at least).")] = 50,
    min_seconds: Annotated[float, typer.Option("--min-seconds", help="Time latency for at least this long.")] = 0.5,
    json: JsonFlag = False,
) -> None:
    """Measure MODEL on this machine with the code devices run: accuracy (data with labels) or
    fidelity to --reference, model size, single-sample latency, load time and peak RSS."""
    from edgekit.datasets import load_dataset
    from edgekit.evaluate import evaluate_model

    dataset = load_dataset(data, role="eval data")
    with tempfile.TemporaryDirectory(prefix="edgekit-model-") as tmp, progress() as bar:
        task = bar.add_task("evaluating", total=None)
        if reference is not None:
            bar.update(task, description=f"loading the reference {reference}")
        ref = _load_reference(reference, Path(tmp), dataset) if reference is not None else None
        result = evaluate_model(model, dataset, reference=ref, samples=samples, threads=threads,
                                providers=providers, runs=runs, min_seconds=min_seconds,
                                on_step=lambda what: bar.update(task, description=what))
    if "reference" in result:
        result["reference"]["model"] = reference  # as given, not the converted copy that is gone now
    if json:
        print_json(result)
    else:
        print_table(result)


def _load_reference(spec: str, workdir: Path, data) -> Path:
    """The reference as a file a backend opens: a model file of a toolchain as is (checked), a
    .pt2 or pkg.module:factory converted to ONNX (as quantize takes them; inputs named after the data)."""
    from edgekit.toolchains import toolchain_for_model

    return toolchain_for_model(spec).load(spec, workdir=workdir, example_data=data)


def _count(value) -> str:
    return "-" if value is None else str(value)


# (label, key in the result, format): measured on the model, and on the reference when given
MEASURES = (("accuracy", "accuracy", fmt_pct), ("model MiB", "model_mb", fmt_sig), ("load ms", "load_ms", fmt_ms),
            ("peak RSS MiB", "peak_rss_mb", fmt_mib),
            *((f"latency {p} ms", f"latency_ms.{p}", fmt_ms) for p in ("p50", "p90", "p99", "mean")),
            ("latency runs", "latency_ms.n", _count))
FIDELITY = {"top1_agreement": ("top-1 agreement", fmt_pct), "cosine": ("cosine", lambda v: fmt_sig(v, 6)),
            "sqnr_db": ("SQNR dB", lambda v: "-" if v is None else f"{v:.1f}")}


def _get(result: dict, key: str):
    for part in key.split("."):
        result = (result or {}).get(part)
    return result


# a language model's (edgekit.device.lm_evaluate): quality against the reference, generation speed
LM_MEASURES = (("perplexity", "perplexity", lambda v: fmt_sig(v, 5)),
               ("perplexity increase", "ppl_increase", lambda v: "-" if v is None else f"{100 * v:+.2f}%"),
               ("KL divergence (nats/token)", "kl_divergence", lambda v: fmt_sig(v, 4)),
               ("top-1 agreement", "top1_agreement", fmt_pct),
               ("prefill tokens/s", "prefill_tokens_per_s", lambda v: fmt_sig(v, 4)),
               ("decode tokens/s", "decode_tokens_per_s", lambda v: fmt_sig(v, 4)),
               ("time to first token ms", "ttft_ms", fmt_ms),
               ("decode tokens/s, no cache", "recompute.decode_tokens_per_s", lambda v: fmt_sig(v, 4)),
               ("KV cache bytes", "kv_cache_bytes", _count),
               ("model MiB", "model_mb", fmt_sig), ("peak RSS MiB", "peak_rss_mb", fmt_mib))


def _rows(r: dict, ref: Optional[dict]) -> list[list[str]]:
    """(metric, value[, reference]) rows; the accuracy drop and fidelity are against the reference."""
    if r.get("perplexity") is not None:
        return [[label, fmt(_get(r, key))] for label, key, fmt in LM_MEASURES]
    rows = [[label, fmt(_get(r, key)), *([fmt(_get(ref, key))] if ref else [])] for label, key, fmt in MEASURES]
    if r.get("accuracy_drop") is not None:
        rows.append(["accuracy drop pp", fmt_pp(r["accuracy_drop"]), *(["-"] if ref else [])])
    for key, value in (r.get("fidelity") or {}).items():
        label, fmt = FIDELITY.get(key, (key, lambda v: fmt_sig(v, 4)))
        rows.append([f"fidelity {label}", fmt(value), *(["-"] if ref else [])])
    return rows


def print_table(r: dict) -> None:
    ref = r.get("reference") if r.get("perplexity") is None else None  # a language model's is in its metrics
    table = compact_table()
    table.add_column("metric", justify="left", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    if ref:
        table.add_column("reference", justify="right", no_wrap=True)
    for row in _rows(r, ref):
        table.add_row(*row)
    console.print(titled(escape(f"{Path(r['model']).name} on {Path(r['data']['path']).name} ({r['n']} samples)"),
                         table))
    if ref:
        console.print(f"reference: {escape(str(ref.get('model') or '-'))}", highlight=False)
    rt = r["runtime"]
    console.print(f"runtime: {escape(rt['name'])} {escape(rt['version'])} ({escape(', '.join(rt['providers']))})",
                  highlight=False)
    if r.get("perplexity") is None and r.get("accuracy") is None and not r.get("fidelity"):
        console.print("no accuracy or fidelity: the data has no labels and no --reference was given "
                      "(--reference FP32_MODEL measures fidelity to it)", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_cmd)
