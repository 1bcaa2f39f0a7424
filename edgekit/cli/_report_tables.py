"""The terminal tables of `edgekit report`: the same rows as its json and csv."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgekit.fleet.views import health_items


def _n(value, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def _pct(value) -> str:
    return "-" if value is None else f"{value:.2%}"


def _with_budget(value, budget) -> str:
    text = _n(value)
    if value is not None and budget is not None:
        over = value > budget
        text = f"{'[red]' if over else ''}{text}[dim]/{budget:g}[/]{'[/]' if over else ''}"
    return text


NAMES = ("device", "candidate", "bundle", "version")  # never broken over lines


def _table(title: str, columns: tuple[str, ...], left: tuple[str, ...] = ()) -> Table:
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, justify="left" if col in left else "right", overflow="fold", no_wrap=col in NAMES)
    return table


def _rows(out: Console, result: dict) -> None:
    table = _table("devices (one row per device and version; * = runs it now)",
                   ("device", "target", "version", "runtime", "arch", "accuracy", "host", "drop pp", "cosine",
                    "p50 ms", "p95 ms/budget", "RSS MiB/budget", "load ms", "last seen", "status"),
                   ("device", "target", "version", "runtime", "arch", "last seen", "status"))
    for r in result["rows"]:
        status = "[green]ok[/]" if r["status"] == "ok" else f"[red]{escape(r['status'] or '?')}[/]"
        if r["flags"]:
            status += " [bold red]DRIFT[/]"
        if r["over_budget"]:
            status += " [red]over budget[/]"
        runtime = f"{r['runtime'] or '?'} {r['runtime_version'] or ''}".strip()
        table.add_row(escape(r["device"]), escape(r["target"] or "-"), escape(r["version"]) + (" *" if r["current"] else ""),
                      escape(runtime), escape(r["arch"] or "-"), _pct(r["accuracy"]), _pct(r["accuracy_expected"]),
                      _n(None if r["drop"] is None else r["drop"] * 100, "+.2f"), _n(r["cosine"], ".4f"),
                      _n(r["latency_p50"]), _with_budget(r["latency_p95"], r["latency_budget_p95"]),
                      _with_budget(r["peak_rss_mb"], r["rss_budget_mb"]), _n(r["load_ms"], ".3g"),
                      r["last_seen"] or "-", status)
    out.print(table)


def _spread(cohort: dict, metric: str, fmt=_n) -> str:
    s = cohort["metrics"].get(metric)
    return "-" if not s else f"{fmt(s['median'])} [dim]{fmt(s['min'])}–{fmt(s['max'])}[/]"


def _cohorts(out: Console, result: dict) -> None:
    table = _table("cohorts (median, min–max over the devices that measured)",
                   ("bundle", "target", "version", "devices", "failed", "accuracy", "p50 ms", "p95 ms", "RSS MiB",
                    "load ms"), ("bundle", "target", "version"))
    for c in result["cohorts"]:
        table.add_row(escape(c["name"]), escape(c["target"]), escape(c["version"]), str(c["devices"]), str(c["failed"]),
                      _spread(c, "accuracy", _pct), _spread(c, "latency_p50"), _spread(c, "latency_p95"),
                      _spread(c, "peak_rss_mb"), _spread(c, "load_ms"))
    out.print(table)


def _drift(out: Console, result: dict) -> None:
    if not result["drift"]:
        out.print("drift: [green]none[/] (every device within tolerance of the host and of its siblings)")
        return
    table = _table(f"drift: {len(result['drift'])} flag(s)", ("device", "target", "version", "kind", "reason"),
                   ("device", "target", "version", "kind", "reason"))
    for f in result["drift"]:
        table.add_row(escape(f["device"]), escape(f["target"] or "-"), escape(f["version"]), f["kind"],
                      f"[red]{escape(f['reason'])}[/]")
    out.print(table)


def _health(out: Console, result: dict) -> None:
    table = _table(f"rollout health ({result['health']['devices']} devices known)",
                   ("what", "device", "bundle", "version", "detail", "at"), ("what", "device", "bundle", "version", "detail"))
    for i in health_items(result["health"]):
        what = i["category"] if i["category"] == "runs" else f"[red]{i['category']}[/]"
        table.add_row(what, escape(i["device"] or "-"), escape(i["name"] or "-"), escape(i["version"] or "-"),
                      escape(str(i["detail"] or "")), i["at"] or "")
    out.print(table)


def _rollouts(out: Console, result: dict) -> None:
    rollouts = result["health"]["rollouts"]
    if not rollouts:
        out.print("rollouts: none recorded in this store")
        return
    table = _table("last rollouts", ("#", "bundle", "version", "target", "outcome", "waves", "ok", "failed", "started",
                                     "reason"), ("bundle", "version", "target", "outcome", "failed", "started", "reason"))
    for r in rollouts:
        colour = "green" if r["status"] == "completed" else "red"
        table.add_row(str(r["id"]), escape(r["name"]), escape(r["version"]), escape(r["target"]),
                      f"[{colour}]{escape(r['status'])}[/]", str(r["waves"]), str(r["devices_ok"]),
                      escape(", ".join(r["devices_failed"]) or "-"), r["started_at"] or "", escape(r["reason"] or ""))
    out.print(table)


def _compare(out: Console, result: dict) -> None:
    rows = result.get("compare") or []
    if not rows:
        return
    table = _table(f"{rows[0]['v1']} -> {rows[0]['v2']} (cohort medians)",
                   ("bundle", "target", "metric", rows[0]["v1"], rows[0]["v2"], "change", "change %"),
                   ("bundle", "target", "metric"))
    for r in rows:
        table.add_row(escape(r["name"]), escape(r["target"]), r["metric"], _n(r["before"]), _n(r["after"]),
                      _n(r["change"], "+.4g"), _n(r["change_pct"], "+.1f"))
    out.print(table)


PARTS = {"rows": _rows, "cohorts": _cohorts, "drift": _drift, "health": _health, "rollouts": _rollouts,
         "compare": _compare}


def print_fleet(out: Console, result: dict, section: str) -> None:
    for name, part in PARTS.items():
        if section in ("all", name):
            part(out, result)


def print_calibration(out: Console, record: dict, rows: list[dict]) -> None:
    quality = "accuracy" if record.get("metric") == "accuracy" else "cosine"
    budgets = record.get("budgets") or {}
    table = _table(f"calibration for {(record.get('target') or {}).get('name', '?')} (objective: {record.get('objective')})",
                   ("#", "candidate", quality, "MiB", "p50 ms", f"p95 ms/{_n(budgets.get('max_latency_ms_p95'), 'g')}",
                    f"RSS MiB/{_n(budgets.get('max_peak_rss_mb'), 'g')}", "verdict"), ("candidate", "verdict"))
    for r in rows:
        if r["status"] != "ok":
            verdict = f"[red]failed: {escape((r['error'] or '')[:80])}[/]"
        else:
            verdict = "[green]pass[/]" if r["passed"] else f"[yellow]{escape(r['failed_budgets'])}[/]"
        table.add_row(str(r["no"]), ("★ " if r["chosen"] else "") + escape(r["id"]),
                      _pct(r[quality]) if quality == "accuracy" else _n(r[quality], ".5f"), _n(r["model_mb"]),
                      _n(r["latency_p50"]), _n(r["latency_p95"]), _n(r["peak_rss_mb"]), verdict)
    out.print(table)
    out.print(f"chosen: [bold]{escape(record.get('chosen') or 'none')}[/] — {escape(str(record.get('why') or ''))}",
              highlight=False)
