"""Text for the terminal -> rich renderables that neither cut nor eat it: the plan panel, op-change summaries.

Every message bertc prints is data (paths, tensor names, error texts such as `[batch, seq, heads,
head_size]`), so it goes through `rich.markup.escape` before bertc's own markup is put around it.
The plan panel wraps at the terminal width, each item's continuation under its value: the console
itself soft-wraps (long paths stay copyable in one piece), which would otherwise cut a panel's lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

OP_CHANGES_SHOWN = 3  # the largest changes printed; report.json keeps them all
PLAN_LABEL_WIDTH = 9  # Plan.describe() lines: a 9-character label ("step 1   ", "target   "), then the value


def plan_panel(lines: Iterable[str]) -> Panel:
    """The plan: one item per line; a value wider than the terminal wraps under itself, never cut."""
    grid = Table.grid()
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for line in lines:
        grid.add_row(Text(line[:PLAN_LABEL_WIDTH]), Text(line[PLAN_LABEL_WIDTH:]))
    return Panel(grid, title="bertc plan", expand=False)


def print_wrapped(console, renderable) -> None:
    """Print a panel or table wrapped at the console's width, even on a console that soft-wraps."""
    console.print(renderable, soft_wrap=False)


def op_change_summary(delta: Mapping[str, int], shown: int = OP_CHANGES_SHOWN) -> str:
    """`Identity -412, Cast +40, Sub -24 and 4 more op types in report.json`: the largest changes first."""
    if not delta:
        return "no op change"
    largest = sorted(delta.items(), key=lambda item: (-abs(item[1]), item[0]))
    text = ", ".join(f"{op} {count:+d}" for op, count in largest[:shown])
    rest = len(largest) - shown
    if rest > 0:
        text += f" and {rest} more op type{'' if rest == 1 else 's'} in report.json"
    return text


def dim(message: str) -> str:
    """A progress line in bertc's dim style, its text escaped."""
    return f"  [dim]{escape(message)}[/]"


__all__ = ["OP_CHANGES_SHOWN", "dim", "escape", "op_change_summary", "plan_panel", "print_wrapped"]
