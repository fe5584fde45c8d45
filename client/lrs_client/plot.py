"""A plot drawn with characters, for a terminal: one line per param group."""

from __future__ import annotations

import math
from collections.abc import Sequence

MARKS = "•x+o*#"


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def text_plot(
    steps: Sequence[int],
    series: Sequence[Sequence[float]],
    *,
    width: int = 64,
    height: int = 14,
    title: str | None = None,
) -> str:
    """Return the lrs of each group against the step as rows of text (y: lr, x: step)."""
    values = [v for s in series for v in s if math.isfinite(v)]
    if not steps or not values:
        return "(nothing to plot)"
    low, high = min(values), max(values)
    span = high - low or abs(high) or 1.0
    first, last = steps[0], steps[-1]
    xspan = (last - first) or 1
    grid = [[" "] * width for _ in range(height)]
    for g, ys in enumerate(series):
        mark = MARKS[g % len(MARKS)]
        cells: dict[int, list[float]] = {}
        for x, y in zip(steps, ys, strict=False):
            if math.isfinite(y):
                col = min(width - 1, round((x - first) / xspan * (width - 1)))
                cells.setdefault(col, []).append(y)
        for col, ys_in_col in cells.items():
            for y in (min(ys_in_col), max(ys_in_col)):
                row = height - 1 - round((y - low) / span * (height - 1))
                grid[row][col] = mark
    label_width = max(len(_fmt(high)), len(_fmt(low)))
    lines = [title] if title else []
    for i, row in enumerate(grid):
        label = _fmt(high) if i == 0 else _fmt(low) if i == height - 1 else ""
        lines.append(f"{label:>{label_width}} │{''.join(row)}")
    lines.append(" " * label_width + " └" + "─" * width)
    left, right = str(first), str(last)
    lines.append(
        " " * (label_width + 2) + left + " " * max(1, width - len(left) - len(right)) + right
    )
    if len(series) > 1:
        legend = "  ".join(f"{MARKS[g % len(MARKS)]} group {g}" for g in range(len(series)))
        lines.append(" " * (label_width + 2) + legend)
    return "\n".join(lines)
