"""The HTML report's tables: a cell's text by its kind, a table of columns, a device row's
view and class. Shared by the fleet page (edgekit.report.html) and its language-model part
(edgekit.report.lmhtml)."""

from __future__ import annotations

from html import escape
from typing import Iterable

__all__ = ["cell", "html_table", "row_view", "row_class", "LEFT"]

LEFT = ("l", "wrap", "time")


def cell(value, kind: str = "") -> str:
    if value is None or value == "":
        return '<span class="muted">–</span>'
    if isinstance(value, bool):
        return "yes" if value else "no"
    if kind == "pct":
        return f"{value:.2%}"
    if kind == "pp":
        return f"{value * 100:+.2f} pp"
    if kind == "time":  # ISO UTC, to the minute: the seconds do not help a reader of this table
        return escape(str(value)[:16].replace("T", " "))
    if kind == "spread":
        fmt = (lambda v: f"{v:.2%}") if value.get("pct") else (lambda v: f"{v:.4g}")
        return f"{fmt(value['median'])}<br><small>{fmt(value['min'])}–{fmt(value['max'])}</small>"
    if isinstance(value, float):
        return f"{value:.4g}"
    return escape(str(value))


def html_table(columns: list[tuple[str, str, str]], items: Iterable[dict], row_class=lambda item: "") -> str:
    """columns: (key, header, kind); kind 'l' is left-aligned text, 'wrap' wrapping text."""
    head = "".join(f'<th class="{"l" if k in LEFT else ""}">{escape(h)}</th>' for _, h, k in columns)
    # each column's opening tag once, not once a cell (a fleet's table has 170,000 cells)
    opened = [(key, kind, f'<td class="{"wrap" if kind == "wrap" else "l" if kind in LEFT else ""}">')
              for key, _, kind in columns]
    body = []
    for item in items:
        cells = "".join(f"{td}{cell(item.get(key), kind)}</td>" for key, kind, td in opened)
        body.append(f'<tr class="{row_class(item)}">{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def row_view(row: dict, kinds: set) -> dict:
    marks = sorted(kinds) + (["over budget"] if row["over_budget"] else [])
    return {**row, "flags": ", ".join(marks) or None,
            "status": row["status"] if row["status"] == "ok" else f"{row['status']}: {row['error'] or ''}"[:120]}


def row_class(row: dict) -> str:
    return "drift" if row["flags"] else "failed" if not str(row["status"]).startswith("ok") else ""
