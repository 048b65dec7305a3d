"""Tables the way docker prints them: whole values when piped, and names never cut."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.table import Table

PIPED_WIDTH = 100_000  # off a terminal nothing is cut: a script reads whole values


def show(table: Table, no_trunc: bool = False) -> None:
    from rich.console import Console

    console = Console()
    if no_trunc or not console.is_terminal:
        console = Console(width=PIPED_WIDTH, soft_wrap=True)
    console.print(table)


def whole_width(values: list[str]) -> int:
    """A column's minimum width that keeps its longest value on one line."""
    return max((len(v) for v in values), default=0)
