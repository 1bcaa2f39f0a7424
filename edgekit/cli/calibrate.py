"""`edgekit calibrate`: the release run an ML engineer does before a release."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Iterator, Optional

import typer
from rich import box
from rich.table import Table

from edgekit.cli._common import (JsonFlag, TargetsDir, compact_table, console, err_console, interrupts,
                                 fmt_ms, fmt_sig, print_json, print_notes, titled)
from edgekit.cli._progress import showing_steps
from edgekit.cli.fleet import TrustNewOpt

if TYPE_CHECKING:
    from edgekit.calibration_record import CalibrationRecord, CandidateRecord


def calibrate_cmd(
    model: Annotated[str, typer.Argument(help="The FP32 model: .onnx, .pt2 or pkg.module:factory.")],
    target: Annotated[str, typer.Option("--target", "-t", help="Target profile name or path to its TOML.")],
    calibration: Annotated[Path, typer.Option("--calibration", help="Calibration data set (.npz or directory).")],
    eval_data: Annotated[Path, typer.Option("--eval", help="Evaluation data set (.npz or directory).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory for model.onnx (model.tflite for tflite targets) and calibration.json.")],
    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", help="Keep these nodes or op types in float (name, glob or op type; repeatable).")] = None,
    include: Annotated[Optional[list[str]], typer.Option("--include", help="Quantize only these op types (repeatable).")] = None,
    eval_samples: Annotated[Optional[int], typer.Option("--eval-samples", min=1, help="Use only the first N eval samples.")] = None,
    runs: Annotated[int, typer.Option("--runs", min=5, help="Latency runs per candidate (at least).")] = 50,
    search: Annotated[str, typer.Option("--search", help="Mixed precision: auto (when no uniform recipe meets the budgets) | always | off.")] = "auto",
    max_float_nodes: Annotated[int, typer.Option("--max-float-nodes", min=1, help="Nodes the search may keep in float.")] = 8,
    max_minutes: Annotated[Optional[float], typer.Option("--max-minutes", min=0.0, help="The mixed-precision search's time budget, from its start; the best passing candidate is still written.")] = None,
    measure_on: Annotated[Optional[str], typer.Option("--measure-on", metavar="DEVICE", show_default=False, help="Measure every candidate on this device of the inventory (its target must be the profile's), not on this host.")] = None,
    inventory: Annotated[Optional[Path], typer.Option("--inventory", "-i", show_default=False, help="The inventory (fleet/*.toml) that names the --measure-on device.")] = None,
    trust_new_hosts: TrustNewOpt = False,
    targets_dir: TargetsDir = None,
    json: JsonFlag = False,
) -> None:
    """Sweep the recipes the target allows, measure each against FP32, pick the best that meets
    the target's budgets. Exit 3 when none does. With --measure-on, every candidate is
    measured on that device (latency, memory, accuracy or fidelity); Ctrl-C then stops at the
    next device step, cleans the device's scratch folder and exits 130."""
    from edgekit.calibrate import calibrate, raise_if_unmet, sweep_recipes
    from edgekit.datasets import load_dataset
    from edgekit.targets import load_profile

    profile = load_profile(target, targets_dir or ())
    calib = load_dataset(calibration, role="calibration data")
    evald = load_dataset(eval_data, role="eval data")
    recipes = sweep_recipes(profile, tuple(exclude or ()), tuple(include or ()))
    options = _search_options(search, max_float_nodes, max_minutes)
    device = _device_to_measure_on(measure_on, inventory, profile, targets_dir)
    with _measurer(device, trust_new_hosts) as measurer, \
            showing_steps(f"calibrating for {profile.name}", enabled=not json) as on_step:
        result = calibrate(model, profile, calib, evald, out, recipes=recipes, eval_samples=eval_samples,
                           measure_opts={"runs": runs}, on_step=on_step, search=options, measurer=measurer)
    if json:
        print_json(result.record.dump())
    else:
        print_table(result.record)
        print_search(result.record.search)
        where = f"wrote {result.model_path} and {result.record_path}" if result.model_path else f"wrote {result.record_path}"
        err_console.print(where, highlight=False, markup=False, soft_wrap=True)  # paths unbroken
    raise_if_unmet(result)


def _device_to_measure_on(name: Optional[str], inventory: Optional[Path], profile, targets_dir):
    """The --measure-on device, checked against the profile before any work; None without it."""
    from edgekit.errors import ConfigError

    if name is None:
        if inventory is not None:
            raise ConfigError("--inventory is used only with --measure-on DEVICE (calibrate measures on this host "
                              "without it)")
        return None
    if inventory is None:
        raise ConfigError(f"--measure-on {name} needs --inventory F, the inventory that names the device")
    from edgekit.fleet.inventory import load_inventory
    from edgekit.fleet.measure import device_to_measure_on

    return device_to_measure_on(load_inventory(inventory, targets_dir or ()), name, profile)


@contextmanager
def _measurer(device, trust_new_hosts: bool) -> Iterator[object]:
    """None (this host) without a device; else the device's measurer, with Ctrl-C and SIGTERM
    stopping at the next device step (the measurer cleans the device's scratch folder)."""
    if device is None:
        yield None
        return
    from edgekit.errors import Interrupted
    from edgekit.fleet.measure import DeviceMeasurer

    try:
        with interrupts(f"calibrate on {device.name}") as cancel, \
                DeviceMeasurer(device, cancel=cancel, trust_new_hosts=trust_new_hosts) as measurer:
            yield measurer
    except Interrupted as exc:
        raise Interrupted(f"{exc}; calibrate wrote nothing, and {device.name} is as it was (its scratch folder "
                          "removed)") from exc


def _search_options(mode: str, max_float_nodes: int, max_minutes: Optional[float]):
    """calibrate()'s search options (a toolchain that does not search ignores them)."""
    from edgekit.errors import ConfigError
    from edgekit.search.context import MODES, SearchOptions

    if mode not in MODES:
        raise ConfigError(f"--search '{mode}': choose one of {', '.join(MODES)}")
    return SearchOptions(mode=mode, max_float_nodes=max_float_nodes, max_minutes=max_minutes)


def print_search(search: Optional[dict]) -> None:
    """The mixed-precision search: its steps (a compact table, the nodes and budgets below it),
    the top of the ranking, the re-rankings, where it ended and why it stopped."""
    if not search or search["stopped"] in ("off", "not-needed"):
        return
    steps = search["steps"]
    if steps:
        metric = "acc" if any(s["accuracy"] is not None for s in steps) else "cosine"
        table = compact_table(padding=(0, 1))
        for i, header in enumerate(("#", "step", "candidate", "float", metric, "MiB", "ok")):
            table.add_column(header, justify="left" if i in (1, 2) else "right", no_wrap=True)
        for s in steps:
            quality = s["accuracy"] if s["accuracy"] is not None else s["cosine"]
            float_count = "-" if s["kind"] == "op-types" else str(len(s["float_nodes"]))
            table.add_row(str(s["step"]), _KINDS.get(s["kind"], s["kind"]), s["candidate"], float_count,
                          _fmt(quality, ".4f"), fmt_sig(s["model_mb"]), _mark(s))
        console.print(titled(f"mixed-precision search from {search['base']} (MiB)", table))
        floor = (search.get("pruning") or {}).get("quality_floor")
        print_notes(console, [(f"{s['step']}.", _step_note(s, metric, floor)) for s in steps])
    notes = [("most sensitive:", _entries(search["ranking"]))] if search["ranking"] else []
    notes += [(f"re-ranked after {r['after']}:", r.get("error") or _entries(r["top"]))
              for r in search.get("reranks", [])]
    if search.get("rerank"):
        notes.append(("re-ranking:", ("on" if search["rerank"]["enabled"] else "off") + f" ({search['rerank']['why']})"))
    if search.get("pruning"):
        p = search["pruning"]
        notes.append(("result:", f"{p['result']} (pruned from {p['from']}), in float: "
                                 f"{', '.join(p['float_nodes']) or 'none'}"))
    for note in notes + [("search stopped:", search["why"])]:
        print_notes(console, [note], indent=0)


_KINDS = {"op-types": "op types", "nodes": "grow", "prune": "prune"}


def _mark(step: dict) -> str:
    return "[red]error[/]" if step["status"] == "failed" else "[green]✓[/]" if step["passed"] else "[yellow]✗[/]"


def _step_note(step: dict, metric: str, floor: Optional[float]) -> str:
    """What a step kept in float (or gave back to INT8) and why it failed (plain text)."""
    if step["kind"] == "op-types":
        what = f"quantizes only {', '.join(step['include'])}"
    elif step["kind"] == "prune":
        what = f"without {', '.join(step['returned'])}: " + ("not needed" if step.get("accepted") else "needed")
    else:
        what = f"in float: {', '.join(step['float_nodes'])}"
    if step["status"] == "failed":
        return f"{what}; failed: {step['error']}"
    if step["kind"] == "prune" and step["passed"] and not step.get("accepted") and floor is not None:
        quality = step["accuracy"] if step["accuracy"] is not None else step["cosine"]
        return f"{what}; {metric} {quality:.4f} is below {floor:.4f}"
    return "; ".join([what, *step["failed_budgets"]])


def _entries(ranking: list[dict], top: int = 5) -> str:
    return ", ".join(f"{'+'.join(r['nodes'])} ({r['score']:.2g})" for r in ranking[:top])


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _shared_reasons(candidates) -> dict:
    """{first id: (ids, reason)} of the not-applicable candidates, one entry per reason: recipes
    that cannot take the model for the same reason are said in one line, not one each."""
    by_reason: dict[str, list[str]] = {}
    for c in candidates:
        if c.status == "not-applicable":
            reason = (c.error or "").removeprefix(f"{c.id}: ").removeprefix(f"{c.id} ")
            by_reason.setdefault(reason, []).append(c.id)
    return {ids[0]: (ids, reason) for reason, ids in by_reason.items()}


def print_table(record: CalibrationRecord) -> None:
    metric = record.metric
    headers = ["candidate", "acc" if metric == "accuracy" else "cosine", "drop" if metric == "accuracy" else "top1",
               "MiB", "p50", "p95", "RSS", "ok"]
    if metric == "perplexity":  # a language model: quality against FP32, generation speed (edgekit.toolchains.lm)
        headers = ["candidate", "ppl+%", "KL", "MiB", "tok/s", "TTFT", "RSS", "ok"]
    table = Table(title=f"calibration for {record.target.name} (objective: {record.objective}; "
                        f"{'decode tokens/s, ' if metric == 'perplexity' else ''}ms, MiB)", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, show_edge=False,
                  collapse_padding=True)
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right", no_wrap=True)
    for c in record.candidates:
        table.add_row(*_row(c, record.chosen, metric))
    console.print(table)
    shared = _shared_reasons(record.candidates)
    for c in record.candidates:  # the reasons, below the table so that it fits 80 columns
        if c.status == "failed":
            console.print(f"  {c.id}: {c.error}", style="red", highlight=False, markup=False)
        elif c.status == "not-applicable" and c.id in shared:
            ids, reason = shared[c.id]
            console.print(f"  {', '.join(ids)}: not applicable: {reason}", style="dim", highlight=False, markup=False)
        elif c.status == "not-applicable":
            pass  # said with the first candidate of its reason
        elif c.status == "skipped":
            console.print(f"  {c.id}: skipped, {c.error}", style="dim", highlight=False, markup=False)
        elif c.collapsed:
            console.print(f"  {c.id}: collapsed (far below the other candidates); " + "; ".join(c.failed_budgets),
                          style="red", highlight=False, markup=False)
        elif not c.passed:
            console.print(f"  {c.id}: " + "; ".join(c.failed_budgets), style="yellow", highlight=False)
    print_measured_on(record.measured_on)
    console.print(f"chosen: [bold]{record.chosen or 'none'}[/] — {record.why}", highlight=False)


def print_measured_on(place: Optional[dict]) -> None:
    """Where the timings and memory were measured, and whether that is the target's CPU."""
    if not place:  # a record from before edgekit recorded it
        return
    machine = f"{place['cpu']}, {place['cores']} cores ({place['arch']})"
    if place["kind"] == "host":
        said = f"timings measured on this host: {machine}"
    else:
        said = f"measured on device {place['name']} ({place['target']}): {machine}: {place['measured']}"
    console.print(said, style="dim", highlight=False, markup=False)
    if place.get("note"):
        console.print(place["note"], style="yellow", highlight=False, markup=False)


def _row(c: CandidateRecord, chosen: Optional[str], metric: str) -> list[str]:
    m = c.metrics
    lat, fid = m.get("latency_ms") or {}, m.get("fidelity") or {}
    first = m.get("accuracy") if metric == "accuracy" else fid.get("cosine")
    second = m.get("drop") if metric == "accuracy" else fid.get("top1_agreement")
    verdict = ("[red]error[/]" if c.status == "failed" else "[dim]n/a[/]" if c.status == "not-applicable"
               else "[dim]skipped[/]" if c.status == "skipped"
               else "[red]collapsed[/]" if c.collapsed else "[green]✓[/]" if c.passed else "[yellow]✗[/]")
    name = ("★ " if c.id == chosen else "  ") + c.id
    if metric == "perplexity":
        increase = m.get("ppl_increase")
        return [name, _fmt(None if increase is None else 100 * increase, "+.2f"), _fmt(m.get("kl_divergence"), ".4f"),
                fmt_sig(m.get("model_mb")), _fmt(m.get("decode_tokens_per_s"), ".1f"), _fmt(m.get("ttft_ms"), ".0f"),
                _fmt(m.get("peak_rss_mb"), ".0f"), verdict]
    # sizes and times to 3 significant digits: a tiny model's 0.00150 and 0.00144 MiB are not 0.002 and 0.001
    return [name, _fmt(first, ".4f"), _fmt(second, ".4f"), fmt_sig(m.get("model_mb")),
            fmt_ms(lat.get("p50")), fmt_ms(lat.get("p95")), _fmt(m.get("peak_rss_mb"), ".0f"), verdict]


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_cmd)
