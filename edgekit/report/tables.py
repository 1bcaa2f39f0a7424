"""The terminal tables of `edgekit report`: the same rows as its json and csv, laid out to fit
the console (80 columns shows every table whole; a wider one adds columns). Long text, such
as reasons, errors and gate messages, goes below a table as notes; json, csv and html keep
every field and every digit."""

from __future__ import annotations

from itertools import groupby

from rich.console import Console
from rich.markup import escape

from edgekit.report.lmfleet import is_lm
from edgekit.report.lmtables import LM_COMPARED, print_lm_cohorts, print_lm_rows
from edgekit.report.views import ROWS_IN_FULL, health_items, needs_a_look
from edgekit.terminal import (Col, fit_columns, fit_table, fits, fmt_mib, fmt_ms, fmt_pct, fmt_pp, fmt_sig, fmt_time,
                              print_notes, titled)


def _budget_title(name: str, target: str, p95, rss) -> str:
    budgets = ([f"p95 {p95:g} ms"] if p95 is not None else []) + ([f"RSS {rss:g} MiB"] if rss is not None else [])
    return f"{escape(name)} on {escape(target)}" + (f" (budgets: {', '.join(budgets)})" if budgets else "")


def _over(text: str, value, budget) -> str:
    return f"[red]{text}[/]" if None not in (value, budget) and value > budget else text


# -- devices ---------------------------------------------------------------------------------

ROW_COLS = (Col("device", "left"), Col("version", "left"), Col("runtime", "left", drop=1), Col("arch", "left", drop=1),
            Col("acc"), Col("host", drop=3), Col("drop"), Col("fp32", drop=1), Col("cos", drop=4), Col("p50", drop=4), Col("p95"),
            Col("RSS"), Col("load", drop=2), Col("last seen", drop=2), Col("status", "left"))


def _row_cells(r: dict) -> list:
    status = "[green]ok[/]" if r["status"] == "ok" else f"[red]{escape(r['status'] or '?')}[/]"
    status += " [bold red]DRIFT[/]" if r["flags"] else ""
    status += " [red]over[/]" if r["over_budget"] else ""
    runtime = f"{r['runtime'] or '?'} {r['runtime_version'] or ''}".strip()
    return [escape(r["device"]), escape(r["version"]) + (" *" if r["current"] else ""), escape(runtime),
            escape(r["arch"] or "-"), fmt_pct(r["accuracy"]), fmt_pct(r["accuracy_expected"]), fmt_pp(r["drop"]),
            fmt_pp(r["drop_fp32"]),
            fmt_sig(r["cosine"], 4), fmt_ms(r["latency_p50"]),
            _over(fmt_ms(r["latency_p95"]), r["latency_p95"], r["latency_budget_p95"]),
            _over(fmt_mib(r["peak_rss_mb"]), r["peak_rss_mb"], r["rss_budget_mb"]), fmt_ms(r["load_ms"]),
            fmt_time(r["last_seen"]), status]


def _row_notes(rows: list[dict]) -> list[tuple[str, str]]:
    notes = []
    for r in rows:
        for text in ([r["error"]] if r["status"] != "ok" and r["error"] else []) + r["over_budget"]:
            notes.append((f"{r['device']} {r['version']}:", text))
    return notes


def _rows(out: Console, result: dict) -> None:
    rows = result["rows"]
    out.print("devices (* = runs it now; drop, fp32: pp below the host's and FP32's accuracy; ms, MiB)", highlight=False)
    if len(rows) > ROWS_IN_FULL:
        shown = [r for r in rows if needs_a_look(r)]
        out.print(f"{len(rows)} rows: {len(shown)} that need a look below, {len(rows) - len(shown)} ok without "
                  "drift or broken budgets not listed (every row: -f csv or json; or narrow with --version, "
                  "--target)", highlight=False)
        if not shown:
            return
        rows = shown
    cells = [_row_cells(r) for r in rows]
    keep = fit_columns(out, ROW_COLS, cells)  # one layout for every target's table
    at = 0  # the rows come sorted by bundle name and target
    for (name, target), group in groupby(rows, key=lambda r: (r["name"], r["target"] or "-")):
        group = list(group)
        if any(is_lm(r) for r in group):  # its failed evaluations (no numbers) among them
            print_lm_rows(out, name, target, group, _row_notes(group))
            at += len(group)
            continue
        title = _budget_title(name, target, group[0]["latency_budget_p95"], group[0]["rss_budget_mb"])
        out.print(fit_table(out, title, ROW_COLS, cells[at:at + len(group)], keep))
        print_notes(out, _row_notes(group), style="red")
        at += len(group)


# -- cohorts ---------------------------------------------------------------------------------

COHORT_COLS = (Col("bundle", "left"), Col("target", "left"), Col("version", "left"), Col("ok"), Col("acc"),
               Col("p50"), Col("p95"), Col("RSS"), Col("load", drop=1))
COHORT_METRICS = (("accuracy", fmt_pct), ("latency_p50", fmt_ms), ("latency_p95", fmt_ms), ("peak_rss_mb", fmt_mib),
                  ("load_ms", fmt_ms))


def _spread(cohort: dict, metric: str, fmt, sep: str) -> str:
    s = cohort["metrics"].get(metric)
    if not s:
        return "-"
    low, high = fmt(s["min"]), fmt(s["max"])
    return fmt(s["median"]) + ("" if low == high else f"{sep}[dim]{low}–{high}[/]")


NARROW_COHORT_COLS = (Col("cohort", "left"), *COHORT_COLS[3:])


def _spreads(c: dict, sep: str) -> list[str]:
    return [_spread(c, metric, fmt, sep) for metric, fmt in COHORT_METRICS]


def _cohorts(out: Console, result: dict) -> None:
    """Each median with its spread beside it when the table fits so, else the spread below the
    median and the version below the target, a blank line between cohorts."""
    lm = [c for c in result["cohorts"] if "perplexity" in c["metrics"]]
    cohorts = [c for c in result["cohorts"] if "perplexity" not in c["metrics"]]
    if lm:
        print_lm_cohorts(out, lm)
    if not cohorts:
        return
    one = len({c["name"] for c in cohorts}) == 1  # one bundle: its name goes in the title
    title = (f"{escape(cohorts[0]['name'])} " if one else "") + \
        "cohorts: median, min–max over the devices that measured (ok/devices; ms, MiB)"
    cols = COHORT_COLS[one:]
    cells = [[escape(c["name"]), escape(c["target"]), escape(c["version"]), f"{c['ok']}/{c['devices']}",
              *_spreads(c, " ")][one:] for c in cohorts]
    table = fit_table(out, None, cols, cells, keep=list(range(len(cols))))
    if not fits(out, table):
        cells = [["\n".join(((f"{escape(c['name'])} " if not one else "") + escape(c["target"]),
                              escape(c["version"]))), f"{c['ok']}/{c['devices']}", *_spreads(c, "\n")]
                 for c in cohorts]
        table = fit_table(out, None, NARROW_COHORT_COLS, cells, show_lines=True)
    out.print(titled(title, table))


# -- drift, health, rollouts -----------------------------------------------------------------


def _drift(out: Console, result: dict) -> None:
    if not result["drift"]:
        out.print("drift: [green]none[/] (every device within tolerance of the host and of its siblings)")
        return
    out.print(f"drift: {len(result['drift'])} flag(s)", style="red", highlight=False)
    print_notes(out, [(f"{f['device']} ({f['target'] or '-'} {f['version']}):", f["reason"]) for f in result["drift"]])


RUNS_COLS = (Col("bundle", "left"), Col("version", "left"), Col("target", "left"), Col("n"),
             Col("devices", "left", wrap=30))


def _health(out: Console, result: dict) -> None:
    health = result["health"]
    runs = [[escape(v["name"]), escape(v["version"]), escape(v["target"] or "-"), str(v["count"]),
             escape(", ".join(v["devices"]))] for v in health["versions"]]
    out.print(fit_table(out, f"rollout health ({health['devices']} devices known): what runs where", RUNS_COLS, runs))
    problems = [i for i in health_items(health) if i["category"] != "runs"]
    if problems:
        out.print("needs a look:", style="red", highlight=False)
    print_notes(out, [(f"{i['category']} {i['device'] or '-'}:", _problem(i)) for i in problems])


def _problem(item: dict) -> str:
    what = " ".join(x for x in (item["name"], item["version"]) if x)
    when = f"at {fmt_time(item['at'])}" if item["at"] else ""
    head = ", ".join(x for x in (what, when) if x)
    return f"({head}) {item['detail'] or ''}".strip() if head else str(item["detail"] or "")


ROLLOUT_COLS = (Col("#"), Col("bundle", "left"), Col("target", "left"), Col("outcome", "left"), Col("waves", drop=1),
                Col("ok"), Col("failed", "left", wrap=24), Col("started", "left", drop=2))


def _rollouts(out: Console, result: dict) -> None:
    rollouts = result["health"]["rollouts"]
    if not rollouts:
        out.print("rollouts: none recorded in this store")
        return
    rows = []
    for r in rollouts:
        colour = "green" if r["status"] == "completed" else "red"
        rows.append([str(r["id"]), escape(f"{r['name']} {r['version']}"), escape(r["target"]),
                     f"[{colour}]{escape(r['status'])}[/]", str(r["waves"]), str(r["devices_ok"]),
                     escape(", ".join(r["devices_failed"]) or "-"), fmt_time(r["started_at"])])
    out.print(fit_table(out, "last rollouts", ROLLOUT_COLS, rows))
    print_notes(out, [(f"#{r['id']}:", r["reason"]) for r in rollouts if r["reason"]])


# -- compare ---------------------------------------------------------------------------------

def _percent(v) -> str:
    return "-" if v is None else f"{v * 100:.2f}"


def _signed(v) -> str:
    return fmt_sig(v, 3, "+")


# metric -> (label, value format, change format); a fraction shows in %, its change in pp
COMPARED = {"accuracy": ("acc %", _percent, fmt_pp), "drop": ("drop %", _percent, fmt_pp),
            "drop_fp32": ("FP32 drop %", _percent, fmt_pp),
            "top1_agreement": ("top-1 %", _percent, fmt_pp), "cosine": ("cosine", lambda v: fmt_sig(v, 4), _signed),
            "latency_p50": ("p50 ms", fmt_ms, _signed), "latency_p95": ("p95 ms", fmt_ms, _signed),
            "peak_rss_mb": ("RSS MiB", fmt_mib, lambda v: "-" if v is None else f"{v:+.1f}"),
            "load_ms": ("load ms", fmt_ms, _signed), "model_mb": ("model MiB", fmt_sig, _signed)}
COMPARE_COLS = (Col("bundle", "left"), Col("target", "left"), Col("metric", "left"), Col("v1"), Col("v2"),
                Col("change"), Col("%", drop=1))


def _compare(out: Console, result: dict) -> None:
    rows = result.get("compare") or []
    if not rows:
        return
    v1, v2 = rows[0]["v1"], rows[0]["v2"]
    cols = COMPARE_COLS[:3] + (Col(escape(v1)), Col(escape(v2))) + COMPARE_COLS[5:]
    cells = []
    for r in rows:
        label, fmt, change = {**COMPARED, **LM_COMPARED}.get(r["metric"], (r["metric"], fmt_sig, _signed))
        cells.append([escape(r["name"]), escape(r["target"]), label, fmt(r["before"]), fmt(r["after"]),
                      change(r["change"]), "-" if r["change_pct"] is None else f"{r['change_pct']:+.1f}"])
    out.print(fit_table(out, f"{escape(v1)} -> {escape(v2)} (cohort medians; change of a % in pp)", cols, cells))


PARTS = {"rows": _rows, "cohorts": _cohorts, "drift": _drift, "health": _health, "rollouts": _rollouts,
         "compare": _compare}


def print_fleet(out: Console, result: dict, section: str) -> None:
    for name, part in PARTS.items():
        if section in ("all", name):
            part(out, result)


# -- a calibration record --------------------------------------------------------------------

CALIBRATION_COLS = (Col("#", drop=1), Col("candidate", "left"), Col("quality"), Col("MiB"), Col("p50", drop=2),
                    Col("p95"), Col("RSS"), Col("ok", "left"))


def print_calibration(out: Console, record: dict, rows: list[dict]) -> None:
    """A calibration record: each candidate by its quality, size, speed and memory (a
    language model's by edgekit.report.lmtables' columns), the chosen one starred."""
    if record.get("metric") == "perplexity":
        from edgekit.report.lmtables import LM_CALIBRATION_COLS as cols, lm_candidate_cells as measured

        units = "ppl+ over FP32, MiB, tokens/s, ms"
    else:
        quality = "accuracy" if record.get("metric") == "accuracy" else "cosine"
        units = f"{quality}, MiB, ms"
        cols = CALIBRATION_COLS[:2] + (Col("acc" if quality == "accuracy" else "cosine"),) + CALIBRATION_COLS[3:]

        def measured(r: dict) -> list[str]:
            return [fmt_pct(r[quality]) if quality == "accuracy" else fmt_sig(r[quality], 5), fmt_sig(r["model_mb"]),
                    fmt_ms(r["latency_p50"]), fmt_ms(r["latency_p95"]), fmt_mib(r["peak_rss_mb"])]
    budgets = record.get("budgets") or {}
    limits = ", ".join(f"{k} {budgets[k]:g}" for k in budgets if budgets[k] is not None)
    title = (f"calibration for {escape((record.get('target') or {}).get('name', '?'))} (objective: "
             f"{escape(str(record.get('objective')))}; {units})")
    cells = []
    for r in rows:
        verdict = "[red]error[/]" if r["status"] != "ok" else "[green]✓[/]" if r["passed"] else "[yellow]✗[/]"
        cells.append([str(r["no"]), ("★ " if r["chosen"] else "  ") + escape(r["id"]), *measured(r), verdict])
    out.print(fit_table(out, title, cols, cells))
    if limits:
        out.print(f"budgets: {escape(limits)}", style="dim", highlight=False)
    print_notes(out, [(f"{r['id']}:", r["error"] or "failed") for r in rows if r["status"] != "ok"], style="red")
    print_notes(out, [(f"{r['id']}:", r["failed_budgets"]) for r in rows if r["status"] == "ok" and not r["passed"]],
                style="yellow")
    out.print(f"chosen: [bold]{escape(record.get('chosen') or 'none')}[/] — {escape(str(record.get('why') or ''))}",
              highlight=False)
