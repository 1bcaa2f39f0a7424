"""Tables that fit the terminal, and numbers and times rounded for reading.

Every command that prints a table uses these, and so does the fleet report's terminal view
(edgekit.report.tables): json, csv and html keep every field and every digit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Optional, Sequence

from rich import box
from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

__all__ = ["Col", "compact_table", "fit_columns", "fit_table", "titled", "fits", "print_notes", "fmt_sig", "fmt_ms",
           "fmt_pct", "fmt_pp", "fmt_mib", "fmt_time"]


# -- tables that fit the terminal ------------------------------------------------------------
# Every table is built at its widest and loses its least important columns, in their `drop`
# order, until it fits the console; long text goes below it as notes (print_notes), so that
# 80 columns (a laptop, an SSH session) show whole names and numbers instead of slivers.


@dataclass(frozen=True)
class Col:
    """A table column. drop: 0 always shown, else dropped first when too wide (1, then 2, ...)
    and hidden when it has no value in any row. wrap: text that may wrap, at most this wide
    when measuring whether the table fits."""

    header: str
    justify: str = "right"
    drop: int = 0
    wrap: int = 0


def compact_table(title: Optional[str] = None, **kwargs) -> Table:
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                 collapse_padding=True, **kwargs)


def fit_columns(out: Console, cols: Sequence[Col], rows: Sequence[Sequence[Any]]) -> list[int]:
    """The indexes of the columns of the widest layout that fits out.width."""
    filled = [i for i, c in enumerate(cols) if not c.drop or any(_has_value(r[i]) for r in rows)]
    for level in (0, *sorted({c.drop for c in cols if c.drop})):
        keep = [i for i in filled if not cols[i].drop or cols[i].drop > level]
        if fits(out, _build(cols, rows, keep, capped=True)):
            break
    return keep


def fit_table(out: Console, title: Optional[str], cols: Sequence[Col], rows: Sequence[Sequence[Any]],
              keep: Optional[list[int]] = None, **kwargs) -> RenderableType:
    """The table in the widest layout that fits out.width, or in `keep`'s columns; None shows as -."""
    keep = fit_columns(out, cols, rows) if keep is None else keep
    return titled(title, _build(cols, rows, keep, capped=False, **kwargs))


def titled(title: Optional[str], table: Table) -> RenderableType:
    """The title (markup) on a line of its own above the table: rich would wrap it to the table's width."""
    return Group(Text.from_markup(title, style="table.title"), table) if title else table


def fits(out: Console, table: Table) -> bool:
    """Whether the table fits unwrapped (measured as wide as it wants, not squeezed to fit)."""
    return Measurement.get(out, out.options.update_width(100_000), table).maximum <= out.width


def _has_value(cell: Any) -> bool:
    return cell not in (None, "", "-")


def _build(cols, rows, keep, *, capped: bool, **kwargs) -> Table:
    table = compact_table(**kwargs)
    for i in keep:
        c = cols[i]
        table.add_column(c.header, justify=c.justify, no_wrap=not c.wrap, overflow="fold",
                         max_width=c.wrap if capped and c.wrap else None)
    for row in rows:
        table.add_row(*(row[i] if row[i] is not None else "-" for i in keep))
    return table


def print_notes(out: Console, notes: Iterable[tuple[str, str]], style: str = "", indent: int = 2) -> None:
    """(label, text) lines below a table, each text wrapped under itself; text is not markup."""
    notes = list(notes)
    if not notes:
        return
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True, style=style)
    grid.add_column(overflow="fold", style=style)
    for label, text in notes:
        grid.add_row(Text(label), Text(text))
    out.print(Padding(grid, (0, 0, 0, indent)))


# -- numbers and times, rounded for reading (json, csv and html keep every digit) ---------------


def fmt_sig(value: Optional[float], digits: int = 3, sign: str = "") -> str:
    """To `digits` significant digits, never in exponent form: 0.00950, 12.3, 1234."""
    if value is None:
        return "-"
    rounded = float(f"{value:.{digits - 1}e}")  # so that 9.996 is 10.0, not 10.00
    if rounded == 0:
        return format(0, sign)
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(rounded))))
    return format(value, f"{sign}.{decimals}f")


def fmt_ms(value: Optional[float]) -> str:
    return fmt_sig(value)


def fmt_pct(value: Optional[float], signed: bool = False) -> str:
    return "-" if value is None else format(value, "+.2%" if signed else ".2%")


def fmt_pp(fraction: Optional[float]) -> str:
    """A difference of two fractions in percentage points: +5.00."""
    return "-" if fraction is None else f"{fraction * 100:+.2f}"


def fmt_mib(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def fmt_time(iso: Optional[str], now: Optional[datetime] = None) -> str:
    """An ISO time in local time, short: 06:30:23 today, 11-25 06:30 this year, 2025-11-25 before."""
    if not iso:
        return "-"
    try:
        when = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    when = when.astimezone() if when.tzinfo else when
    now = now or datetime.now(when.tzinfo)
    if when.date() == now.date():
        return when.strftime("%H:%M:%S")
    return when.strftime("%m-%d %H:%M" if when.year == now.year else "%Y-%m-%d")
