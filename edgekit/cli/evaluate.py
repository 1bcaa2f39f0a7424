"""`edgekit evaluate`: accuracy or fidelity, size, latency and peak memory on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from edgekit.cli._common import JsonFlag, console, print_json, progress


def evaluate_cmd(
    model: Annotated[Path, typer.Argument(help="The model to measure (.onnx).")],
    data: Annotated[Path, typer.Option("--data", help="Evaluation data set (.npz or directory).")],
    reference: Annotated[Optional[Path], typer.Option(
        "--reference", help="The FP32 model this one was made from: fidelity to it, and its accuracy beside.")] = None,
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
    from edgekit.evaluate import evaluate_model

    with progress() as bar:
        task = bar.add_task("evaluating", total=None)
        result = evaluate_model(model, data, reference=reference, samples=samples, threads=threads,
                                providers=providers, runs=runs, min_seconds=min_seconds,
                                on_step=lambda what: bar.update(task, description=what))
    if json:
        print_json(result)
    else:
        print_table(result)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(r: dict) -> None:
    table = Table(title=f"{Path(r['model']).name} on {Path(r['data']['path']).name} ({r['n']} samples)")
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    ref = r.get("reference")
    if ref:
        table.add_column("reference", justify="right")
    rows = [("accuracy", "accuracy", ".4f"), ("model MB", "model_mb", ".3f"), ("load ms", "load_ms", ".1f"),
            ("peak RSS MB", "peak_rss_mb", ".1f")]
    for label, key, spec in rows:
        table.add_row(label, _fmt(r.get(key), spec), *([_fmt(ref.get(key), spec)] if ref else []))
    for p in ("p50", "p90", "p99", "mean"):
        table.add_row(f"latency {p} ms", _fmt(r["latency_ms"][p], ".3f"),
                      *([_fmt(ref["latency_ms"][p], ".3f")] if ref else []))
    table.add_row("latency runs", str(r["latency_ms"]["n"]), *([str(ref["latency_ms"]["n"])] if ref else []))
    if r.get("accuracy_drop") is not None:
        table.add_row("accuracy drop", _fmt(r["accuracy_drop"], ".4f"), *([""] if ref else []))
    for key, value in (r.get("fidelity") or {}).items():
        table.add_row(f"fidelity {key}", _fmt(value, ".4f"), *([""] if ref else []))
    rt = r["runtime"]
    table.add_row("runtime", f"{rt['name']} {rt['version']} ({', '.join(rt['providers'])})", *([""] if ref else []))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_cmd)
