"""Plots of a computed schedule: lr (and momentum) per group against the optimizer step, as SVG
or PNG (matplotlib, Agg backend).

Group ``g`` has the same colour (matplotlib's ``C{g}``) in every panel, every panel has a
legend, SVG text stays ``<text>`` (selectable, searchable) and the lr axis can be logarithmic.
"""

import io
import textwrap
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from service.errors import InvalidSpec
from service.schedules.result import Computed

PLOT_MAX_POINTS = 20_000
"""Most points drawn per line; longer schedules are strided down to this."""

YScale = Literal["linear", "log"]
Annotation = Literal["warnings"]
LINESTYLES = ("-", "--", ":", "-.")
"""Line style per param group in an overlay, where colour tells the schedules apart."""


@dataclass(frozen=True)
class PlotOptions:
    """How a plot is drawn: ``yscale`` of the lr axis, and ``annotate=("warnings",)`` to list
    the response's warnings under the plot."""

    yscale: YScale = "linear"
    annotate: tuple[Annotation, ...] = ()

    def cache_key(self) -> str:
        """Return a short string that tells these options apart in a cache key ("" for the
        defaults, so the default plot keeps its key)."""
        parts = []
        if self.yscale != "linear":
            parts.append(f"yscale={self.yscale}")
        if self.annotate:
            parts.append("annotate=" + ",".join(sorted(set(self.annotate))))
        return ";".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple) and len(value) <= 4:
        return "[" + ", ".join(_short(v) for v in value) + "]"
    if isinstance(value, list | tuple):
        return f"[{len(value)} values]"
    if isinstance(value, dict):
        return str(value.get("type", "{…}"))
    return str(value)


def plot_title(spec: Any) -> str:
    """Return a plot's title: the scheduler and the arguments given, the optimizer, the warmup
    and the param groups (two lines)."""
    scheduler = spec.scheduler.model_dump(exclude_unset=True, exclude={"type"})
    args = ", ".join(f"{k}={_short(v)}" for k, v in list(scheduler.items())[:4])
    if len(scheduler) > 4:
        args += ", …"
    first = f"{spec.scheduler.type}({args}) on {spec.optimizer.type}(lr={spec.optimizer.lr:g})"
    warmup = spec.warmup
    if warmup is None:
        second = "no warmup"
    else:
        fields = warmup.model_dump(exclude={"type"}, exclude_none=True)
        second = (
            f"{warmup.type} warmup ("
            + ", ".join(f"{k}={_short(v)}" for k, v in fields.items())
            + ")"
        )
    groups = spec.param_groups
    if not groups:
        second += " · 1 param group"
    else:
        lrs = [g.get("lr", spec.optimizer.lr) for g in groups]
        second += f" · {len(groups)} param groups (lr " + ", ".join(_short(v) for v in lrs) + ")"
    return f"{first}\n{second}"


def _figure(rows: int, annotations: list[str]) -> tuple[Any, list[Any], Any]:
    """Return a figure with ``rows`` plot panels sharing x, and an axes for the notes."""
    from matplotlib.figure import Figure

    lines = sum(len(textwrap.wrap(a, 110)) or 1 for a in annotations)
    notes = 0.3 + 0.16 * lines if annotations else 0.0
    heights = [3.6] + [2.0] * (rows - 1)
    figure = Figure(figsize=(8, sum(heights) + 0.9 + notes), dpi=100)
    ratios = heights + ([notes] if annotations else [])
    grid = figure.add_gridspec(len(ratios), 1, height_ratios=ratios)
    axes = [figure.add_subplot(grid[0])]
    axes += [figure.add_subplot(grid[i], sharex=axes[0]) for i in range(1, rows)]
    notes_ax = None
    if annotations:
        notes_ax = figure.add_subplot(grid[rows])
        notes_ax.axis("off")
        wrapped = ["\n  ".join(textwrap.wrap("• " + a, 110)) for a in annotations]
        notes_ax.text(0, 1, "\n".join(wrapped), va="top", ha="left", fontsize=8, color="#7d4e00")
    return figure, axes, notes_ax


def _finish(
    figure: Any,
    axes: list[Any],
    fmt: Literal["svg", "png"],
    yscale: YScale,
    xlabel: str = "optimizer step",
) -> bytes:
    import matplotlib

    if yscale == "log":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # non-positive lrs (a warmup from 0) are left out
            axes[0].set_yscale("log")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    axes[-1].set_xlabel(xlabel)
    figure.tight_layout()
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        figure.savefig(buffer, format=fmt)
    return buffer.getvalue()


def _use_agg() -> None:
    import matplotlib

    matplotlib.use("Agg")


def to_plot(
    computed: Computed,
    fmt: Literal["svg", "png"],
    title: str,
    options: PlotOptions | None = None,
) -> bytes:
    """Return a line plot of lr (and momentum) per group against the optimizer step."""
    _use_agg()
    options = options or PlotOptions()
    stride = max(1, -(-computed.indices.size // PLOT_MAX_POINTS))
    x = computed.indices[::stride]
    rows = 1 if computed.momentum is None else 2
    notes = list(computed.warnings) if "warnings" in options.annotate else []
    if "warnings" in options.annotate and not notes:
        notes = ["no warnings"]
    figure, axes, _ = _figure(rows, notes)
    groups = computed.lr.shape[0]
    for g in range(groups):
        label = f"group {g}" if groups > 1 else "lr"
        axes[0].plot(x, computed.lr[g, ::stride], color=f"C{g}", label=label)
    counters = computed.counters or {}
    skipped = counters.get("skipped")
    if skipped is not None and np.any(skipped):
        # AMP-skipped optimizer steps: their lr was never applied (at most PLOT_MAX_POINTS)
        where = np.flatnonzero(np.asarray(skipped))[:PLOT_MAX_POINTS]
        axes[0].plot(
            computed.indices[where],
            computed.lr[0, where],
            "x",
            color="#c0392b",
            label="skipped by AMP (lr not applied)",
        )
    axes[0].set_ylabel("learning rate" + (" (log)" if options.yscale == "log" else ""))
    axes[0].set_title(title, fontsize=10)
    if computed.momentum is not None:
        for g in range(groups):
            label = f"group {g}" if groups > 1 else "momentum"
            axes[1].plot(x, computed.momentum[g, ::stride], color=f"C{g}", label=label)
        axes[1].set_ylabel("momentum / beta1")
    xlabel = "micro-batch" if counters.get("index_by") == "micro_batch" else "optimizer step"
    return _finish(figure, axes, fmt, options.yscale, xlabel)


def to_overlay_plot(
    series: Sequence[tuple[str, Computed]],
    fmt: Literal["svg", "png"],
    title: str,
    options: PlotOptions | None = None,
) -> bytes:
    """Return one plot of several schedules: schedule ``i`` in colour ``C{i}``, its param group
    ``g`` in line style ``g``, one legend entry per line (``label`` or ``label · group g``);
    a momentum panel when any of them carries momentum."""
    _use_agg()
    options = options or PlotOptions()
    rows = 2 if any(c.momentum is not None for _, c in series) else 1
    notes = []
    if "warnings" in options.annotate:
        notes = [f"{label}: {w}" for label, c in series for w in c.warnings] or ["no warnings"]
    figure, axes, _ = _figure(rows, notes)
    for i, (label, computed) in enumerate(series):
        stride = max(1, -(-computed.indices.size // PLOT_MAX_POINTS))
        x = computed.indices[::stride]
        groups = computed.lr.shape[0]
        for g in range(groups):
            name = label if groups == 1 else f"{label} · group {g}"
            style = LINESTYLES[g % len(LINESTYLES)]
            axes[0].plot(x, computed.lr[g, ::stride], color=f"C{i}", linestyle=style, label=name)
            if rows == 2 and computed.momentum is not None:
                axes[1].plot(
                    x, computed.momentum[g, ::stride], color=f"C{i}", linestyle=style, label=name
                )
    axes[0].set_ylabel("learning rate" + (" (log)" if options.yscale == "log" else ""))
    axes[0].set_title(title, fontsize=10)
    if rows == 2:
        axes[1].set_ylabel("momentum / beta1")
    return _finish(figure, axes, fmt, options.yscale)


def spec_label(item: dict[str, Any]) -> str:
    """Return a legend label for a request body as sent: ``StepLR(step_size=30) on Adam``."""
    scheduler = dict(item.get("scheduler") or {})
    kind = scheduler.pop("type", "?")
    args = ", ".join(f"{k}={_short(v)}" for k, v in list(scheduler.items())[:3])
    label = f"{kind}({args})"
    optimizer = (item.get("optimizer") or {}).get("type")
    if optimizer:
        label += f" on {optimizer}"
    warmup = item.get("warmup")
    if isinstance(warmup, dict):
        label += f", {warmup.get('type', '?')} warmup {warmup.get('steps', '')}".rstrip()
    return label


def batch_plot(
    items: Sequence[dict[str, Any]],
    slots: Sequence[object],
    fmt: Literal["svg", "png"],
    options: PlotOptions | None = None,
) -> bytes:
    """Return the overlay plot of a batch (``slots`` as the batch computed them, one per
    request body in ``items``); 422 naming the first spec that failed, since a plot has no
    place for a problem."""
    failed = [i for i, slot in enumerate(slots) if not isinstance(slot, Computed)]
    if failed:
        raise InvalidSpec(
            f"{len(failed)} of the batch's specs failed (the first is requests[{failed[0]}]); "
            "a plot needs every spec to succeed. Use format=json to get each slot's problem.",
            loc=("body", "requests", failed[0]),
        )
    labels = [f"{i}: {spec_label(item)}" for i, item in enumerate(items)]
    title = f"{len(items)} schedules" if len(items) != 1 else labels[0]
    return to_overlay_plot(list(zip(labels, slots, strict=True)), fmt, title, options)  # type: ignore[arg-type]
