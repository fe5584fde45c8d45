"""Rendering a computed schedule as bytes and a media type: JSON, CSV, npy, SVG and PNG.

The JSON body is :class:`~service.schedules.result.ScheduleResult`'s. Which format a request
gets is the routes' business (``?format=``, then ``Accept``, then JSON).
"""

import io
from collections.abc import Iterator
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
    body: dict[str, object] = {
        "steps": _steps_json(computed.indices),
        "lr": np.ascontiguousarray(computed.lr),
        "momentum": None if computed.momentum is None else np.ascontiguousarray(computed.momentum),
        "weight_decay": None
        if computed.weight_decay is None
        else np.ascontiguousarray(computed.weight_decay),
        "engine": computed.engine,
        "device": computed.device,
        "torch_version": TORCH_VERSION,
        "warnings": computed.warnings,
        "summary": computed.summary(),
        "families": computed.families,
        "counters": computed.counters,
    }
    return body


def to_json_bytes(computed: Computed) -> bytes:
    """Return the JSON body; floats keep every bit (shortest round-trip repr)."""
    return orjson.dumps(result_dict(computed), option=orjson.OPT_SERIALIZE_NUMPY)


CHUNK_VALUES = 1 << 18
"""Values per chunk of a streamed body (about 5 MB of CSV or JSON text, 2 MB of npy)."""


CSV_CHUNK_VALUES = 1 << 14
"""Values per CSV chunk (1024 rows of 16 groups): its rows are split and joined in Python,
fastest when a chunk's text fits the CPU cache (measured: 1024 rows 1.8× orjson's time for
the same values as JSON, 4096 rows 2.1×, 16384 rows 2.3×)."""


def _csv_columns(computed: Computed) -> tuple[list[str], np.ndarray]:
    groups = computed.lr.shape[0]
    names = ["lr"] if groups == 1 else [f"lr_{g}" for g in range(groups)]
    columns = [computed.lr]
    for name, values in (("momentum", computed.momentum), ("weight_decay", computed.weight_decay)):
        if values is not None:
            names += [name] if groups == 1 else [f"{name}_{g}" for g in range(groups)]
            columns.append(values)
    return names, np.vstack(columns).astype(np.float64, copy=False)


COUNTER_CSV_COLUMNS = ("samples", "tokens", "batch_size", "micro_batches")


def _csv_counter_columns(computed: Computed) -> tuple[list[str], np.ndarray | None]:
    """Return the integer columns the step counters add after the lr (and momentum) ones:
    ``optimizer_step`` (indexed by micro-batch), ``skipped`` (0/1) and ``updates``, then
    ``samples``, ``tokens``, ``batch_size``, ``micro_batches`` when the counter gives them."""
    counters = computed.counters
    if not counters:
        return [], None
    names: list[str] = []
    columns: list[np.ndarray] = []
    if counters.get("index_by") == "micro_batch":
        names.append("optimizer_step")
        columns.append(np.asarray(counters["optimizer_step"]))
    if counters.get("skipped") is not None:
        names += ["skipped", "updates"]
        columns += [np.asarray(counters["skipped"]), np.asarray(counters["updates"])]
    for name in COUNTER_CSV_COLUMNS:
        if counters.get(name) is not None:
            names.append(name)
            columns.append(np.asarray(counters[name]))
    if not columns:
        return [], None
    return names, np.vstack([c.astype(np.int64) for c in columns])


def _rows(table: np.ndarray) -> list[bytes]:
    """Return each column of ``table`` (values × rows) as its CSV row text."""
    block = np.ascontiguousarray(table.T)
    return orjson.dumps(block, option=orjson.OPT_SERIALIZE_NUMPY)[2:-2].split(b"],[")


def csv_chunks(computed: Computed) -> Iterator[bytes]:
    """Yield ``step,lr`` (one group) or ``step,lr_0,lr_1,...`` rows, momentum after lr, a
    chunk of rows at a time. Numbers are written as the JSON body writes them (orjson's
    shortest round-trip form: ``0.00001`` where Python's repr says ``1e-05``)."""
    names, table = _csv_columns(computed)
    counter_names, counter_table = _csv_counter_columns(computed)
    yield ("step," + ",".join([*names, *counter_names]) + "\n").encode()
    rows = max(1, CSV_CHUNK_VALUES // max(1, table.shape[0]))
    indices = np.ascontiguousarray(computed.indices, dtype=np.int64)
    for start in range(0, indices.size, rows):
        values = _rows(table[:, start : start + rows])
        steps = orjson.dumps(indices[start : start + rows], option=orjson.OPT_SERIALIZE_NUMPY)
        parts = [steps[1:-1].split(b","), values]
        if counter_table is not None:
            parts.append(_rows(counter_table[:, start : start + rows]))
        lines = zip(*parts, strict=True)
        yield b"\n".join(map(b",".join, lines)) + b"\n"


def to_csv(computed: Computed) -> bytes:
    """Return the whole CSV body (see :func:`csv_chunks`)."""
    return b"".join(csv_chunks(computed))


def _array_chunks(values: np.ndarray) -> Iterator[bytes]:
    """Yield the JSON of a 1-D array (``[a,b,...]``) a chunk at a time."""
    yield b"["
    for start in range(0, values.size, CHUNK_VALUES):
        part = orjson.dumps(
            np.ascontiguousarray(values[start : start + CHUNK_VALUES]),
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        yield (b"," if start else b"") + part[1:-1]
    yield b"]"


def _rows_chunks(table: np.ndarray | None) -> Iterator[bytes]:
    if table is None:
        yield b"null"
        return
    yield b"["
    for g, row in enumerate(table):
        if g:
            yield b","
        yield from _array_chunks(row)
    yield b"]"


def json_chunks(computed: Computed, steps: orjson.Fragment | None = None) -> Iterator[bytes]:
    """Yield the JSON body a chunk at a time: the bytes :func:`to_json_bytes` returns
    (``steps``: the JSON of ``computed.indices``, when the caller has it already)."""
    body = result_dict(computed)
    yield b'{"steps":'
    steps = body.pop("steps") if steps is None else steps
    body.pop("steps", None)
    if isinstance(steps, orjson.Fragment):
        yield orjson.dumps(steps)
    else:
        yield from _array_chunks(computed.indices)
    yield b',"lr":'
    yield from _rows_chunks(body.pop("lr"))  # type: ignore[arg-type]
    yield b',"momentum":'
    yield from _rows_chunks(body.pop("momentum"))  # type: ignore[arg-type]
    yield b"," + orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)[1:]


def npy_chunks(computed: Computed) -> Iterator[bytes]:
    """Yield the ``.npy`` of the lr array (float64, (groups, points)) a chunk at a time: the
    bytes :func:`to_npy` returns."""
    array = np.ascontiguousarray(computed.lr, dtype=np.float64)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    yield header.getvalue()
    flat = memoryview(array.reshape(-1)).cast("B")
    step = CHUNK_VALUES * 8
    for start in range(0, len(flat), step):
        yield bytes(flat[start : start + step])


def to_npy(computed: Computed) -> bytes:
    """Return the lr array as ``.npy``: float64, shape (groups, points)."""
    return npy_bytes(computed.lr.astype(np.float64, copy=False))


def estimated_bytes(fmt: Format, points: int, series: int) -> int:
    """Return about how large a body of ``points`` × ``series`` values is (an upper bound for
    JSON and CSV, whose numbers take at most 24 characters, exact for npy)."""
    if fmt == "npy":
        return 128 + 8 * points * series
    if fmt in ("json", "csv"):
        return 256 + points * (24 * series + 12)
    return 0


STREAMED: tuple[Format, ...] = ("json", "csv", "npy")
_CHUNKS = {"json": json_chunks, "csv": csv_chunks, "npy": npy_chunks}


def stream(computed: Computed, fmt: Format) -> Iterator[bytes]:
    """Yield ``computed`` in ``fmt`` (json, csv or npy) a chunk at a time: the bytes
    :func:`render` returns, in pieces of at most a few MB."""
    return _CHUNKS[fmt](computed)


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
