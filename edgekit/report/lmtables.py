"""A language model's rows and cohorts in the terminal tables of `edgekit report`
(edgekit.report.tables): perplexity and its increase over FP32, agreement with FP32, speed of
prefill and decode, time to the first token, memory with the KV cache and decode without it."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from edgekit.terminal import Col, fit_table, fmt_mib, fmt_ms, fmt_pct, fmt_sig, print_notes

__all__ = ["LM_ROW_COLS", "print_lm_rows", "print_lm_cohorts", "LM_COMPARED", "lm_candidate_cells",
           "LM_CALIBRATION_COLS"]

LM_ROW_COLS = (Col("device", "left"), Col("version", "left"), Col("ppl"), Col("ppl+"), Col("KL", drop=2),
               Col("top-1", drop=1), Col("prefill", drop=3), Col("decode"), Col("TTFT", drop=2), Col("RSS"),
               Col("KV MiB", drop=3), Col("no-cache", drop=4), Col("status", "left"))


def _below(text: str, value, floor) -> str:
    return f"[red]{text}[/]" if None not in (value, floor) and value < floor else text


def _above(text: str, value, ceiling) -> str:
    return f"[red]{text}[/]" if None not in (value, ceiling) and value > ceiling else text


def _mib(n) -> str:
    return "-" if n is None else f"{n / 2 ** 20:.1f}"


def _cells(r: dict) -> list:
    status = "[green]ok[/]" if r["status"] == "ok" else f"[red]{escape(r['status'] or '?')}[/]"
    status += (" [bold red]DRIFT[/]" if r["flags"] else "") + (" [red]over[/]" if r["over_budget"] else "")
    return [escape(r["device"]), escape(r["version"]) + (" *" if r["current"] else ""), fmt_sig(r.get("perplexity"), 4),
            _above(fmt_pct(r.get("ppl_increase"), signed=True), r.get("ppl_increase"), r.get("ppl_increase_budget")),
            fmt_sig(r.get("kl_divergence")), fmt_pct(r.get("top1_agreement")), fmt_sig(r.get("prefill_tokens_per_s")),
            _below(fmt_sig(r.get("decode_tokens_per_s")), r.get("decode_tokens_per_s"), r.get("decode_tokens_per_s_budget")),
            _above(fmt_ms(r.get("ttft_ms")), r.get("ttft_ms"), r.get("ttft_ms_budget")),
            _above(fmt_mib(r["peak_rss_mb"]), r["peak_rss_mb"], r["rss_budget_mb"]), _mib(r.get("kv_cache_bytes")),
            fmt_sig(r.get("recompute_decode_tokens_per_s")), status]


def _title(name: str, target: str, rows: list[dict]) -> str:
    """The target's budgets, from its first row that measured (a failed one has no LM columns)."""
    r = next((row for row in rows if "ppl_increase_budget" in row), rows[0])
    budgets = [f"{label} {value:g}" for label, value in (("ppl+ <=", (r.get("ppl_increase_budget") or 0) * 100 or None),
                                                        ("decode >=", r.get("decode_tokens_per_s_budget")),
                                                        ("TTFT <=", r.get("ttft_ms_budget")), ("RSS <=", r["rss_budget_mb"]))
               if value is not None]
    return (f"{escape(name)} on {escape(target)}" + (f" (context {r['context']})" if r.get("context") else "")
            + (f" budgets: {', '.join(budgets)}" if budgets else ""))


def print_lm_rows(out: Console, name: str, target: str, rows: list[dict], notes) -> None:
    """One target's language-model rows; `notes`: its errors and budget breaches."""
    out.print(fit_table(out, _title(name, target, rows), LM_ROW_COLS, [_cells(r) for r in rows]))
    print_notes(out, notes, style="red")


LM_COHORT_COLS = (Col("target", "left"), Col("version", "left"), Col("ok"), Col("ppl+"), Col("top-1", drop=1),
                  Col("decode"), Col("TTFT", drop=2), Col("RSS"), Col("MiB", drop=1))
_COHORT = (("ppl_increase", lambda v: fmt_pct(v, signed=True)), ("top1_agreement", fmt_pct),
           ("decode_tokens_per_s", fmt_sig), ("ttft_ms", fmt_ms), ("peak_rss_mb", fmt_mib), ("model_mb", fmt_sig))


def _spread(cohort: dict, metric: str, fmt) -> str:
    s = cohort["metrics"].get(metric)
    if not s:
        return "-"
    low, high = fmt(s["min"]), fmt(s["max"])
    return fmt(s["median"]) + ("" if low == high else f" [dim]{low}–{high}[/]")


def print_lm_cohorts(out: Console, cohorts: list[dict]) -> None:
    cells = [[escape(c["target"]), escape(c["version"]), f"{c['ok']}/{c['devices']}",
              *(_spread(c, m, fmt) for m, fmt in _COHORT)] for c in cohorts]
    names = ", ".join(sorted({escape(c["name"]) for c in cohorts}))
    out.print(fit_table(out, f"{names} language-model cohorts: median, min–max (ppl+: perplexity over FP32; "
                             "decode tokens/s; TTFT ms; MiB)", LM_COHORT_COLS, cells))


def _pct(v) -> str:
    return "-" if v is None else f"{v * 100:.2f}"


def _pp(v) -> str:
    return "-" if v is None else f"{v * 100:+.2f}"


def _signed(v) -> str:
    return fmt_sig(v, 3, "+")


# metric -> (label, value format, change format), as edgekit.report.tables.COMPARED
LM_COMPARED = {"perplexity": ("perplexity", lambda v: fmt_sig(v, 4), _signed), "ppl_increase": ("ppl+ %", _pct, _pp),
               "kl_divergence": ("KL nats/token", fmt_sig, _signed),
               "prefill_tokens_per_s": ("prefill tok/s", fmt_sig, _signed),
               "decode_tokens_per_s": ("decode tok/s", fmt_sig, _signed), "ttft_ms": ("TTFT ms", fmt_ms, _signed),
               "kv_cache_bytes": ("KV cache MiB", _mib, lambda v: "-" if v is None else f"{v / 2 ** 20:+.1f}"),
               "recompute_decode_tokens_per_s": ("no-cache tok/s", fmt_sig, _signed),
               "recompute_peak_rss_mb": ("no-cache RSS", fmt_mib, _signed)}


LM_CALIBRATION_COLS = (Col("#", drop=1), Col("candidate", "left"), Col("ppl+"), Col("top-1", drop=2), Col("MiB"),
                       Col("prefill", drop=3), Col("decode"), Col("TTFT", drop=2), Col("RSS"), Col("ok", "left"))


def lm_candidate_cells(r: dict) -> list[str]:
    """A language-model candidate's measured cells in the calibration table (edgekit.report.
    tables.print_calibration): perplexity increase, top-1 agreement, size, speeds, memory."""
    return [fmt_pct(r.get("ppl_increase"), signed=True), fmt_pct(r.get("top1_agreement")), fmt_sig(r["model_mb"]),
            fmt_sig(r.get("prefill_tokens_per_s")), fmt_sig(r.get("decode_tokens_per_s")), fmt_ms(r.get("ttft_ms")),
            fmt_mib(r["peak_rss_mb"])]
