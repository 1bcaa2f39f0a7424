"""`edgekit report`: the fleet comparison from the store, or a calibration record, as a
table, JSON, CSV or one self-contained HTML file."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from edgekit.cli._common import JsonFlag, TargetsDir, console, err_console
from edgekit.errors import ConfigError
from edgekit.words import utc_now


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    html = "html"


class Section(str, Enum):
    all = "all"
    rows = "rows"
    cohorts = "cohorts"
    drift = "drift"
    health = "health"
    rollouts = "rollouts"
    compare = "compare"


StoreOpt = Annotated[Optional[Path], typer.Option(
    "--store", help="The SQLite store (default: $EDGEKIT_STORE, else ~/.local/share/edgekit/edgekit.db).",
    show_default=False)]


NameOpt = Annotated[Optional[str], typer.Option("--name", help="Only this bundle name.")]
VersionOpt = Annotated[Optional[str], typer.Option("--version", help="Only this bundle version.")]
TargetOpt = Annotated[Optional[str], typer.Option("--target", help="Only this target.")]
FormatOpt = Annotated[Optional[Format], typer.Option(
    "--format", "-f", help="table, json, csv or html (default: from -o's suffix, else table).", show_default=False)]
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Write to this file instead of stdout.")]
CompareOpt = Annotated[Optional[tuple[str, str]], typer.Option(
    "--compare", help="V1 V2: per target, the change of each metric from V1 to V2.", show_default=False)]
CalibrationOpt = Annotated[Optional[Path], typer.Option(
    "--calibration", help="Show this calibration.json (from `edgekit calibrate`) instead of the store.")]
SectionOpt = Annotated[Section, typer.Option("--section", help="Only this part (csv holds one part: rows by default).")]
InventoryOpt = Annotated[Optional[Path], typer.Option(
    "--inventory", "-i", help="Also list this inventory's devices, so that silent ones show as never reported.")]
ToleranceOpt = Annotated[float, typer.Option(
    "--tolerance", min=0, max=1,
    help="Accuracy difference from the host's expectation that counts as drift (fraction; sampling noise is added).")]


def report_cmd(
    store: StoreOpt = None,
    name: NameOpt = None,
    version: VersionOpt = None,
    target: TargetOpt = None,
    format: FormatOpt = None,
    output: OutputOpt = None,
    compare: CompareOpt = None,
    calibration: CalibrationOpt = None,
    section: SectionOpt = Section.all,
    inventory: InventoryOpt = None,
    tolerance: ToleranceOpt = 0.01,
    targets_dir: TargetsDir = None,
    json: JsonFlag = False,
) -> None:
    """Compare the fleet: one row per device and bundle version, cohort summaries per target and
    version, drift (off the host's expectation, or an outlier among siblings), rollout health.
    An empty store prints how to fill it and exits 0."""
    fmt = _format(format, output, json)
    if calibration is not None:
        _emit(_calibration(calibration, fmt), fmt, output)
        return
    _check_compare(compare, version)
    from edgekit.store import default_store_path

    path = Path(store) if store is not None else default_store_path()
    with _chart_pool(fmt, path) as charts:  # first: its server imports while this process does the rest
        from edgekit.report.fleetdata import plain_data

        with plain_data():  # the store's data is freed when _fleet_report returns, before the collector is on
            _fleet_report(path, fmt, output, section, charts, inventory=inventory, targets_dirs=targets_dir or (),
                          tolerance=tolerance, name=name, version=version, target=target, compare=compare)


def _fleet_report(path: Path, fmt: Format, output: Optional[Path], section: Section, charts, *, inventory, targets_dirs,
                  tolerance: float, name, version, target, compare) -> None:
    from edgekit.report.analysis import DriftRules, analyse
    from edgekit.report.fleetdata import is_empty, load_fleet

    data = load_fleet(path, inventory=inventory, targets_dirs=targets_dirs)
    if is_empty(data) and fmt != Format.json:  # --json still gives its object (empty lists), as every command does
        err_console.print(f"no reports yet in {escape(str(path))}: run `edgekit collect --inventory FILE "
                          f"--store {escape(str(path))}` (or `edgekit rollout`) first", highlight=False, soft_wrap=True)
        return
    result = analyse(data["reports"], data["devices"], data["rollouts"], models=data["models"], budgets=data["budgets"],
                     collect_errors=data["collect_errors"], rules=DriftRules(accuracy_tolerance=tolerance), name=name,
                     version=version, target=target, compare=tuple(compare) if compare else None)
    _check_filters(result, path, name=name, version=version, target=target, compare=compare)
    filters = {"name": name, "version": version, "target": target}
    _emit(_fleet(result, fmt, section, str(path), data["budgets"], filters, charts), fmt, output)


def _chart_pool(fmt: Format, path: Path):
    """An HTML page's chart workers, their server started now so that it imports matplotlib
    while the store is read (edgekit.report.chartpool); none for other formats or a missing
    store. The server imports this command line too: each worker runs it again."""
    from edgekit.report.chartpool import ChartPool

    return ChartPool.for_html(None if fmt == Format.html and path.is_file() else 0, program=("edgekit.cli.main",))


def _format(given: Optional[Format], output: Optional[Path], json: bool) -> Format:
    if json:
        return Format.json
    if given is not None:
        return given
    suffix = output.suffix.lower().lstrip(".") if output else ""
    return Format(suffix) if suffix in {f.value for f in Format} - {"table"} else Format.table


def _check_compare(compare, version) -> None:
    if compare and version:
        raise ConfigError("--compare V1 V2 and --version: give one of them")
    if compare and compare[0] == compare[1]:
        raise ConfigError(f"--compare {compare[0]} {compare[1]}: give two different versions")


def _check_filters(result: dict, path: Path, *, compare, **given) -> None:
    for key, value in given.items():
        if value is not None and value not in result["known"][key]:
            there = ", ".join(result["known"][key]) or "none"
            raise ConfigError(f"--{key} {value}: no reports of it in {path} ({key}s there: {there})")
    if compare and not result["compare"]:
        there = ", ".join(result["known"]["version"])
        raise ConfigError(f"--compare {compare[0]} {compare[1]}: no target has reports of both versions in {path} "
                          f"(versions there: {there})")


def _emit(render, fmt: Format, output: Optional[Path]) -> None:
    """`render` is text, or for tables a function that prints on a console."""
    if output is None:
        if callable(render):
            render(console)
        else:
            typer.echo(render, nl=False)
        return
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with open(output, "w", encoding="utf-8") as fh:
            if callable(render):
                render(Console(file=fh, width=200, no_color=True, emoji=False))
            else:
                fh.write(render)
    except OSError as exc:
        raise ConfigError(f"-o {output}: cannot write it ({exc.strerror})") from exc
    err_console.print(f"wrote {escape(str(output))} ({fmt.value})", highlight=False, soft_wrap=True)


def _dump(obj) -> str:
    import json

    return json.dumps(obj, indent=2, default=str) + "\n"


def _fleet(result: dict, fmt: Format, section: Section, store: str, budgets: dict, filters: dict, charts):
    from edgekit.report.views import sections, to_csv

    if section == Section.compare and "compare" not in result:
        raise ConfigError("--section compare: give --compare V1 V2 as well")
    if fmt == Format.html:
        from edgekit.report.html import render_fleet

        return charts.fill(render_fleet(result, store=store, budgets=budgets, filters=filters, draw=charts.draw))
    if fmt == Format.csv:
        if section == Section.all:
            section = Section.rows
        return to_csv(sections(result)[section.value])
    if fmt == Format.json:
        whole = {"store": store, "filters": filters, "generated_at": utc_now(),
                 **{k: v for k, v in result.items() if k != "known"}}
        if section != Section.all:
            part = result["health"]["rollouts"] if section == Section.rollouts else result[section.value]
            return _dump(part)
        return _dump(whole)
    from edgekit.report.tables import print_fleet

    return lambda out: print_fleet(out, result, section.value)


def _calibration(path: Path, fmt: Format):
    from edgekit.report.views import calibration_rows, load_calibration, to_csv

    record = load_calibration(path)
    rows = calibration_rows(record)
    if fmt == Format.html:
        from edgekit.report.html import render_calibration

        return render_calibration(record, rows, str(path))
    if fmt == Format.csv:
        return to_csv(rows)
    if fmt == Format.json:
        keep = ("schema", "target", "budgets", "objective", "metric", "chosen", "why", "created_at")
        return _dump({**{k: record.get(k) for k in keep}, "source": str(path), "candidates": rows})
    from edgekit.report.tables import print_calibration

    return lambda out: print_calibration(out, record, rows)


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
