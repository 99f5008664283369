"""How a bench number reads in a table cell: the one formatter the section tables and the README summary share."""

from __future__ import annotations

from rich.table import Table


def number(value: float | int | None, missing: str = "-") -> str:
    """1234.5 -> "1234", 0.01234 -> "0.0123", None -> `missing`."""
    if value is None:
        return missing
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value)


def ratio(base: float | None, value: float | None) -> str:
    """How many times faster `value` is than `base` (both times), e.g. "2.50x"."""
    return f"{base / value:.2f}x" if base and value else "-"


def table(title: str, columns: tuple[str, ...]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    return table
