"""Rendering a computed schedule as bytes and a media type: JSON, CSV, npy, SVG and PNG.

The JSON body is :class:`~service.schedules.result.ScheduleResult`'s. Which format a request
gets is the routes' business (``?format=``, then ``Accept``, then JSON).
"""

import io
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
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

DENSE_STEPS_CACHE_BYTES = 48 << 20
"""Byte budget of the cached ``0..n-1`` step arrays and their JSON (a 1M-step entry holds
8 MB of int64 and 6.9 MB of JSON: three such lengths fit, any number of 10k-step ones)."""


class _DenseSteps:
    """``0..n-1`` (int64, read-only), its JSON bytes and that JSON as an orjson Fragment,
    per ``n``: the ``steps`` of every unsampled response of ``n`` steps, serialized once.
    Least recently used lengths leave first once the entries pass a byte budget."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, tuple[np.ndarray, bytes, orjson.Fragment]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._verified: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()
        """Read-only arrays that own their data, found equal to ``0..n-1`` once (the
        compute's shared steps of a length): known by identity, never compared again."""

    def verified(self, indices: np.ndarray) -> bool:
        """Return True when ``indices`` is an array :meth:`verify` already found dense."""
        with self._lock:
            return self._verified.get(id(indices)) is indices

    def verify(self, indices: np.ndarray, dense: np.ndarray) -> bool:
        """Return True when ``indices`` equals ``dense`` (``0..n-1``); remember it when it
        cannot change (read-only, owning its data), so the next response of it skips the
        comparison (1M steps: ~1 ms)."""
        if not np.array_equal(indices, dense):
            return False
        if indices.base is None and not indices.flags.writeable:
            with self._lock:
                self._verified[id(indices)] = indices
        return True

    def get(self, n: int) -> tuple[np.ndarray, bytes, orjson.Fragment]:
        with self._lock:
            entry = self._entries.get(n)
            if entry is not None:
                self._entries.move_to_end(n)
                return entry
        indices = np.arange(n, dtype=np.int64)
        indices.flags.writeable = False
        text = orjson.dumps(indices, option=orjson.OPT_SERIALIZE_NUMPY)
        entry = (indices, text, orjson.Fragment(text))
        size = indices.nbytes + len(text)
        if size > self.max_bytes // 2:
            return entry  # served, not kept: it would push out every other length
        with self._lock:
            if n not in self._entries:
                self._entries[n] = entry
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, (old, old_text, _) = self._entries.popitem(last=False)
                    self._bytes -= old.nbytes + len(old_text)
        return entry


_dense_cache = _DenseSteps(DENSE_STEPS_CACHE_BYTES)


def dense_indices(n: int) -> np.ndarray:
    """Return ``0..n-1`` (int64, read-only): the array :func:`_dense_steps` recognizes by
    identity where it keeps that length (a caller handing it back saves comparing n values)."""
    if n < _DENSE_STEPS_MIN:
        indices = np.arange(n, dtype=np.int64)
        indices.flags.writeable = False
        return indices
    return _dense_cache.get(n)[0]


def _dense_steps(indices: np.ndarray) -> tuple[bytes, orjson.Fragment] | None:
    """Return the cached JSON of ``indices`` (bytes and Fragment) when it is ``0..n-1``
    (the unsampled case: the same array for every request of ``n`` steps), else None."""
    n = indices.size
    if (
        n < _DENSE_STEPS_MIN
        or indices.dtype != np.int64
        or indices.ndim != 1
        or indices[0] != 0
        or indices[-1] != n - 1
    ):
        return None
    dense, text, fragment = _dense_cache.get(n)
    if indices is dense or _dense_cache.verified(indices) or _dense_cache.verify(indices, dense):
        return text, fragment
    return None


def _steps_json(indices: np.ndarray) -> np.ndarray | orjson.Fragment:
    """Return ``indices`` for orjson, or the cached JSON of ``0..n-1`` when it is that."""
    dense = _dense_steps(indices)
    return np.ascontiguousarray(indices) if dense is None else dense[1]


def _tail(computed: Computed) -> dict[str, object]:
    """Return the members of the JSON body after ``steps``, ``lr`` and ``momentum``."""
    return {
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


def result_dict(computed: Computed) -> dict[str, object]:
    """Return the JSON body of a schedule response (numpy arrays left for orjson)."""
    return {
        "steps": _steps_json(computed.indices),
        "lr": np.ascontiguousarray(computed.lr),
        "momentum": None if computed.momentum is None else np.ascontiguousarray(computed.momentum),
        **_tail(computed),
    }


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


Chunk = bytes | memoryview
"""A piece of a streamed body: orjson's output, or a view of it (never copied to strip the
brackets of an array's pieces)."""


def _array_chunks(values: np.ndarray) -> Iterator[Chunk]:
    """Yield the JSON of a 1-D array (``[a,b,...]``) a chunk of values at a time: each
    chunk is one ``orjson.dumps``, yielded as a view without the brackets that do not end
    the array, and a ``b","`` between chunks."""
    n = values.size
    if n <= CHUNK_VALUES:
        yield orjson.dumps(np.ascontiguousarray(values), option=orjson.OPT_SERIALIZE_NUMPY)
        return
    for start in range(0, n, CHUNK_VALUES):
        end = min(start + CHUNK_VALUES, n)
        view = memoryview(
            orjson.dumps(np.ascontiguousarray(values[start:end]), option=orjson.OPT_SERIALIZE_NUMPY)
        )
        if start:
            yield b","
        yield view[1 if start else 0 : len(view) - 1 if end < n else len(view)]


def _rows_chunks(table: np.ndarray | None) -> Iterator[Chunk]:
    if table is None:
        yield b"null"
        return
    yield b"["
    for g, row in enumerate(table):
        if g:
            yield b","
        yield from _array_chunks(row)
    yield b"]"


def json_chunks(computed: Computed, steps: orjson.Fragment | None = None) -> Iterator[Chunk]:
    """Yield the JSON body a chunk at a time: the bytes :func:`to_json_bytes` returns
    (``steps``: the JSON of ``computed.indices``, when the caller has it already).

    The pieces are ``bytes`` or views of orjson's output (``b"".join`` makes the body);
    ``0..n-1`` steps are the cached bytes of that length, never serialized again."""
    yield b'{"steps":'
    if steps is not None:
        yield orjson.dumps(steps)
    else:
        dense = _dense_steps(computed.indices)
        if dense is not None:
            yield dense[0]
        else:
            yield from _array_chunks(computed.indices)
    yield b',"lr":'
    yield from _rows_chunks(computed.lr)
    yield b',"momentum":'
    yield from _rows_chunks(computed.momentum)
    yield b"," + orjson.dumps(_tail(computed), option=orjson.OPT_SERIALIZE_NUMPY)[1:]


def npy_chunks(computed: Computed) -> Iterator[Chunk]:
    """Yield the ``.npy`` of the lr array (float64, (groups, points)) a chunk at a time: the
    bytes :func:`to_npy` returns."""
    array = np.ascontiguousarray(computed.lr, dtype=np.float64)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    yield header.getvalue()
    flat = memoryview(array.reshape(-1)).cast("B")
    step = CHUNK_VALUES * 8
    for start in range(0, len(flat), step):
        yield flat[start : start + step]  # a view of the array: never copied here


def skip(chunks: Iterator[Chunk], count: int) -> Iterator[Chunk]:
    """Yield ``chunks`` without their first ``count`` bytes (views, never copied)."""
    for chunk in chunks:
        if count <= 0:
            yield chunk
            continue
        view = memoryview(chunk).cast("B")
        if len(view) > count:
            yield view[count:]
        count -= len(view)


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


def stream(computed: Computed, fmt: Format) -> Iterator[Chunk]:
    """Yield ``computed`` in ``fmt`` (json, csv or npy) a chunk at a time: the bytes
    :func:`render` returns, in pieces of at most a few MB (``bytes`` or views of them)."""
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
