"""Rendering a computed schedule: JSON, CSV, npy, SVG and PNG.

The format comes from ``?format=`` when given, else from the ``Accept`` header, else JSON.
"""

import io
from functools import lru_cache
from typing import Literal

import numpy as np
import orjson
from fastapi import Response

from service.errors import LimitExceeded
from service.negotiation import MEDIA_TYPES
from service.schedules.service import TORCH_VERSION, Computed
from service.settings import Settings

Format = Literal["json", "csv", "npy", "svg", "png"]
FORMATS: tuple[Format, ...] = ("json", "csv", "npy", "svg", "png")

PLOT_MAX_POINTS = 20_000


def check_points(fmt: Format, points: int, settings: Settings) -> None:
    """Refuse a JSON/CSV response longer than the configured point limit (422)."""
    if fmt in ("json", "csv") and points > settings.json_max_points:
        raise LimitExceeded(
            f"the response would carry {points} values per group; {fmt} responses are limited "
            f'to {settings.json_max_points} (LRS_JSON_MAX_POINTS). Add "sample": '
            '{"points": 1000} (or "every"/"at"), or ask for ?format=npy.',
            loc=("body", "sample"),
        )


_DENSE_STEPS_MIN = 256
"""Below this many indices, serializing ``steps`` is cheaper than recognizing it."""


@lru_cache(maxsize=32)
def _dense_steps(n: int) -> tuple[np.ndarray, orjson.Fragment]:
    """Return ``0..n-1`` (int64) and its JSON, serialized once per ``n``."""
    indices = np.arange(n, dtype=np.int64)
    indices.flags.writeable = False
    return indices, orjson.Fragment(orjson.dumps(indices, option=orjson.OPT_SERIALIZE_NUMPY))


def _steps_json(indices: np.ndarray) -> np.ndarray | orjson.Fragment:
    """Return ``indices`` for orjson, or the cached JSON of ``0..n-1`` when it is that (the
    unsampled case: the same array for every request of ``n`` steps)."""
    n = indices.size
    if (
        n >= _DENSE_STEPS_MIN
        and indices.dtype == np.int64
        and indices.ndim == 1
        and indices[0] == 0
        and indices[-1] == n - 1
    ):
        dense, fragment = _dense_steps(n)
        if np.array_equal(indices, dense):
            return fragment
    return np.ascontiguousarray(indices)


def _summary(computed: Computed) -> list[dict[str, float]]:
    """Return ``[s.model_dump() for s in computed.summary()]`` without the models."""
    return [
        {
            "min": float(row.min()) if row.size else final,
            "max": float(row.max()) if row.size else final,
            "final": final,
        }
        for row, final in zip(computed.lr, computed.final_lr, strict=True)
    ]


def result_dict(computed: Computed) -> dict[str, object]:
    """Return the JSON body of a schedule response (numpy arrays left for orjson)."""
    return {
        "steps": _steps_json(computed.indices),
        "lr": np.ascontiguousarray(computed.lr),
        "momentum": None if computed.momentum is None else np.ascontiguousarray(computed.momentum),
        "engine": computed.engine,
        "device": computed.device,
        "torch_version": TORCH_VERSION,
        "warnings": computed.warnings,
        "summary": _summary(computed),
        "families": computed.families,
    }


def to_json_bytes(computed: Computed) -> bytes:
    """Return the JSON body; floats keep every bit (shortest round-trip repr)."""
    return orjson.dumps(result_dict(computed), option=orjson.OPT_SERIALIZE_NUMPY)


def to_csv(computed: Computed) -> bytes:
    """Return ``step,lr`` (one group) or ``step,lr_0,lr_1,...`` rows, momentum after lr."""
    groups = computed.lr.shape[0]
    names = ["lr"] if groups == 1 else [f"lr_{g}" for g in range(groups)]
    columns = [computed.lr]
    if computed.momentum is not None:
        names += ["momentum"] if groups == 1 else [f"momentum_{g}" for g in range(groups)]
        columns.append(computed.momentum)
    table = np.vstack(columns)
    lines = ["step," + ",".join(names)]
    rows = table.T.tolist()
    lines.extend(
        f"{step}," + ",".join(map(repr, row))
        for step, row in zip(computed.indices.tolist(), rows, strict=True)
    )
    return ("\n".join(lines) + "\n").encode()


def to_npy(computed: Computed) -> bytes:
    """Return the lr array as ``.npy``: float64, shape (groups, points)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(computed.lr, dtype=np.float64), allow_pickle=False)
    return buffer.getvalue()


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


def render(computed: Computed, fmt: Format, title: str, headers: dict[str, str]) -> Response:
    """Return the HTTP response carrying ``computed`` in ``fmt``."""
    headers = {
        **headers,
        "X-Engine": computed.engine,
        "X-Device": computed.device,
        "X-Torch-Version": TORCH_VERSION,
    }
    if fmt == "json":
        body = to_json_bytes(computed)
    elif fmt == "csv":
        body = to_csv(computed)
    elif fmt == "npy":
        body = to_npy(computed)
    else:
        body = to_plot(computed, fmt, title)
    return Response(body, media_type=MEDIA_TYPES[fmt], headers=headers)
