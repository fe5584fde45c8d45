"""Rendering a computed schedule as bytes and a media type: JSON, CSV, npy, SVG and PNG.

The JSON body is :class:`~service.schedules.result.ScheduleResult`'s. Which format a request
gets is the routes' business (``?format=``, then ``Accept``, then JSON).
"""

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import orjson

from service.devices import TORCH_VERSION
from service.errors import LimitExceeded
from service.negotiation import MEDIA_TYPES, npy_bytes
from service.schedules.plots import PlotOptions, to_plot
from service.schedules.result import Computed
from service.settings import Settings

Format = Literal["json", "csv", "npy", "svg", "png"]
FORMATS: tuple[Format, ...] = ("json", "csv", "npy", "svg", "png")


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
        "summary": computed.summary(),
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
    return npy_bytes(computed.lr.astype(np.float64, copy=False))


@dataclass(frozen=True)
class Rendered:
    """A schedule in one format: the bytes and the media type they are sent as."""

    body: bytes
    media_type: str


def render(
    computed: Computed, fmt: Format, title: str, plot: PlotOptions | None = None
) -> Rendered:
    """Return ``computed`` in ``fmt``; ``title`` heads a plot drawn with ``plot``'s options."""
    if fmt == "json":
        body = to_json_bytes(computed)
    elif fmt == "csv":
        body = to_csv(computed)
    elif fmt == "npy":
        body = to_npy(computed)
    else:
        body = to_plot(computed, fmt, title, plot)
    return Rendered(body, MEDIA_TYPES[fmt])
