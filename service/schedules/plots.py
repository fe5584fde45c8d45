"""Plots of a computed schedule: lr (and momentum) per group against the optimizer step, as SVG
or PNG (matplotlib, Agg backend)."""

import io
from typing import Literal

from service.schedules.service import Computed

PLOT_MAX_POINTS = 20_000
"""Most points drawn per line; longer schedules are strided down to this."""


def to_plot(computed: Computed, fmt: Literal["svg", "png"], title: str) -> bytes:
    """Return a line plot of lr (and momentum) per group against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    stride = max(1, -(-computed.indices.size // PLOT_MAX_POINTS))
    x = computed.indices[::stride]
    figure = Figure(figsize=(8, 4.5 if computed.momentum is None else 6.5), dpi=100)
    rows = 1 if computed.momentum is None else 2
    ax = figure.add_subplot(rows, 1, 1)
    groups = computed.lr.shape[0]
    for g in range(groups):
        ax.plot(x, computed.lr[g, ::stride], label=f"group {g}" if groups > 1 else "lr")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if groups > 1:
        ax.legend()
    if computed.momentum is not None:
        ax2 = figure.add_subplot(rows, 1, 2, sharex=ax)
        for g in range(groups):
            ax2.plot(x, computed.momentum[g, ::stride], label=f"group {g}")
        ax2.set_ylabel("momentum / beta1")
        ax2.grid(alpha=0.3)
    figure.axes[-1].set_xlabel("optimizer step")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt)
    return buffer.getvalue()
