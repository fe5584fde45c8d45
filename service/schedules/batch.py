"""Many schedules in one request: each spec validated, limited and computed in its own slot.

Specs of one structure are stacked by :func:`~service.schedules.service.compute_many`; the
batch-wide limits (``LRS_BATCH_MAX_SPECS``; values returned, points × groups, against
``LRS_BATCH_MAX_POINTS``; torch work, steps × schedulers × groups, against
``LRS_TORCH_MAX_WORK``; vectorized cost, lr_lambda operations included, against
``LRS_VECTORIZED_MAX_COST``) are applied here, slot by slot in order and before any work
starts, so a slot over a limit fails alone and the response size is known to be bounded.
"""

import io
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service import errors
from service.errors import InvalidSpec, LimitExceeded, ServiceError
from service.schedules import budget, formats, service, specs
from service.schedules.result import Computed, ScheduleResult
from service.settings import Settings


def check_size(count: int, settings: Settings) -> None:
    """Raise LimitExceeded (422) for a batch of more than ``LRS_BATCH_MAX_SPECS`` specs."""
    if count > settings.batch_max_specs:
        raise LimitExceeded(
            f"the batch has {count} specs; the limit is "
            f"{settings.batch_max_specs} (LRS_BATCH_MAX_SPECS)",
            loc=("body", "requests"),
        )


class BatchRequest(BaseModel):
    """Many schedule specs in one request; each is a body of `POST /v1/schedules/compute`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "requests": [
                        {"scheduler": {"type": "StepLR", "step_size": 30}, "steps": 100},
                        {"scheduler": {"type": "CosineAnnealingLR", "T_max": 100}, "steps": 100},
                    ]
                }
            ]
        },
    )

    requests: list[dict[str, Any]] = Field(
        min_length=1,
        description="Schedule specs (each validated on its own; a bad one fails only its slot).",
    )


class BatchSlot(BaseModel):
    status: int = Field(description="200, or the status the spec alone would have got.")
    result: ScheduleResult | None = Field(default=None, description="When status is 200.")
    problem: dict[str, Any] | None = Field(
        default=None, description="The RFC 9457 problem, when status is not 200."
    )


class BatchResult(BaseModel):
    results: list[BatchSlot] = Field(description="One slot per spec, in order.")


def _problem(exc: ServiceError, index: int) -> dict[str, Any]:
    """Return the problem of spec ``index`` as its own request would get it, with every
    ``loc`` pointing into the batch body (``["body", "requests", index, ...]``)."""
    body = errors.service_error_body(exc)
    if exc.errors is not None:
        body["errors"] = [
            {**err, "loc": ["body", "requests", index, *err["loc"][1:]]}
            if err.get("loc", [None])[0] == "body"
            else err
            for err in exc.errors
        ]
    return body


def _invalid_slot(exc: ValidationError, index: int) -> dict[str, Any]:
    return errors.validation_body(
        [{**err, "loc": ("body", "requests", index, *err["loc"])} for err in exc.errors()]
    )


def _validate(
    items: list[dict[str, Any]], settings: Settings
) -> list[specs.ScheduleRequest | ServiceError | dict[str, Any]]:
    """Validate every spec and apply the batch-wide limits, in order: each slot holds its
    request, the ServiceError it got, or the problem of its failed validation."""
    slots: list[specs.ScheduleRequest | ServiceError | dict[str, Any]] = []
    values = 0
    torch_work = 0
    vector_cost = 0
    for index, raw in enumerate(items):
        try:
            spec = specs.ScheduleRequest.model_validate(raw)
        except ValidationError as exc:
            slots.append(_invalid_slot(exc, index))
            continue
        try:
            count = service.count_points(spec)
            formats.check_points("json", count, settings)
            series = 2 if "momentum" in spec.include else 1
            here = count * spec.n_groups * series
            if values + here > settings.batch_max_points:
                raise LimitExceeded(
                    f"this spec's result carries {count} points × {spec.n_groups} param groups"
                    + (" × 2 (lr and momentum)" if series == 2 else "")
                    + f" = {here} values; with the slots before it the batch would carry "
                    f"{values + here}, above its limit of {settings.batch_max_points} "
                    "(LRS_BATCH_MAX_POINTS). Sample fewer points, use fewer param groups or "
                    "split the batch.",
                    loc=("body", "sample"),
                )
            engine = service.choose_engine(spec)
            service.check_engine_limits(spec, engine, settings)
            cost = budget.cost(spec, engine, sampled=True)
            if engine == "torch":
                if torch_work + cost.total > settings.torch_max_work:
                    raise LimitExceeded(
                        f"this torch-engine spec needs {cost.total} scheduler updates "
                        f"({cost.describe()}); with the slots before it the batch would need "
                        f"{torch_work + cost.total}, above its limit of "
                        f"{settings.torch_max_work} (LRS_TORCH_MAX_WORK). Use fewer steps, "
                        "groups or schedulers, or split the batch.",
                        loc=("body", "steps"),
                    )
                torch_work += cost.total
            elif vector_cost + cost.total > settings.vectorized_max_cost:
                raise LimitExceeded(
                    f"this spec costs {cost.total} (about 1 ns of CPU each; {cost.describe()}); "
                    f"with the slots before it the batch would cost {vector_cost + cost.total}, "
                    f"above its limit of {settings.vectorized_max_cost} "
                    "(LRS_VECTORIZED_MAX_COST). Use fewer steps, groups or schedulers, a "
                    "shorter lr_lambda, or split the batch.",
                    loc=("body", "steps"),
                )
            else:
                vector_cost += cost.total
            values += here
        except ServiceError as exc:
            slots.append(exc)
            continue
        slots.append(spec)
    return slots


def compute_slots(
    items: list[dict[str, Any]], settings: Settings
) -> list[Computed | ServiceError | dict[str, Any]]:
    """Return every slot computed (specs of one structure stacked), refused or invalid."""
    slots = _validate(items, settings)
    valid = [i for i, slot in enumerate(slots) if not isinstance(slot, dict)]
    computed = service.compute_many(
        [slots[i] for i in valid],  # type: ignore[misc]
        settings,
        limits_checked=True,  # by _validate, slot by slot
    )
    out: list[Computed | ServiceError | dict[str, Any]] = list(slots)  # type: ignore[arg-type]
    for i, result in zip(valid, computed, strict=True):
        out[i] = result
    return out


def to_json(items: list[dict[str, Any]], settings: Settings) -> bytes | Iterator[bytes]:
    """Return the JSON body of a batch: every spec computed (or refused) in its own slot.

    A body estimated at most ``LRS_STREAM_MIN_BYTES`` is one ``orjson.dumps`` (numpy arrays
    serialized natively by orjson); a larger one is returned as an iterator of chunks of
    about :data:`STREAM_CHUNK_BYTES` (:func:`json_stream`: the same bytes), so the body is
    never held whole (at LRS_BATCH_MAX_POINTS, ~220 MB of JSON)."""
    computed = compute_slots(items, settings)
    values = sum(
        slot.lr.size
        + (0 if slot.momentum is None else slot.momentum.size)
        + (0 if slot.weight_decay is None else slot.weight_decay.size)
        for slot in computed
        if isinstance(slot, Computed)
    )
    if formats.estimated_bytes("json", values, 1) > settings.stream_min_bytes:
        return json_stream(computed)
    slots: list[dict[str, Any]] = []
    steps_json = _SharedSteps()
    for index, slot in enumerate(computed):
        if isinstance(slot, Computed):
            result = formats.result_dict(slot)
            result["steps"] = steps_json.fragment(slot.indices)
            slots.append({"status": 200, "result": result})
        else:
            slots.append(_failed_slot(slot, index))
    return orjson.dumps({"results": slots}, option=orjson.OPT_SERIALIZE_NUMPY)


def _failed_slot(slot: ServiceError | dict[str, Any], index: int) -> dict[str, Any]:
    if isinstance(slot, dict):
        return {"status": 422, "problem": slot}
    return {"status": slot.status, "problem": _problem(slot, index)}


STREAM_CHUNK_BYTES = 1 << 20
"""About how many bytes each chunk of a streamed batch body holds (each is one hand-off
from the thread that serializes to the event loop that sends)."""


def json_stream(computed: list[Computed | ServiceError | dict[str, Any]]) -> Iterator[bytes]:
    """Yield the JSON body of computed slots in chunks of about STREAM_CHUNK_BYTES: the
    bytes :func:`to_json` returns whole for a small batch (each result by
    :func:`formats.json_chunks`, arrays a chunk of values at a time)."""

    def pieces() -> Iterator[bytes]:
        yield b'{"results":['
        steps_json = _SharedSteps()
        for index, slot in enumerate(computed):
            if index:
                yield b","
            if isinstance(slot, Computed):
                yield b'{"status":200,"result":'
                yield from formats.json_chunks(slot, steps_json.fragment(slot.indices))
                yield b"}"
            else:
                yield orjson.dumps(_failed_slot(slot, index))
        yield b"]}"

    buffer: list[bytes] = []
    size = 0
    for piece in pieces():
        buffer.append(piece)
        size += len(piece)
        if size >= STREAM_CHUNK_BYTES:
            yield b"".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield b"".join(buffer)


class _SharedSteps:
    """Serializes each distinct ``steps`` array of a batch once (most slots share one)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[object, ...], list[tuple[np.ndarray, orjson.Fragment]]] = {}

    def fragment(self, indices: np.ndarray) -> orjson.Fragment:
        key = (indices.shape, indices[:1].tobytes(), indices[-1:].tobytes())
        candidates = self._seen.setdefault(key, [])
        for array, fragment in candidates:
            if np.array_equal(array, indices):
                return fragment
        fragment = orjson.Fragment(
            orjson.dumps(np.ascontiguousarray(indices), option=orjson.OPT_SERIALIZE_NUMPY)
        )
        candidates.append((indices, fragment))
        return fragment


def to_npy(items: list[dict[str, Any]], settings: Settings) -> memoryview:
    """Return the lrs of every slot as one ``.npy``, shape (specs, groups, points).

    Raises LimitExceeded (422) unless every slot succeeded with the same shape.
    """
    slots = compute_slots(items, settings)
    failed = [i for i, slot in enumerate(slots) if not isinstance(slot, Computed)]
    if failed:
        raise InvalidSpec(
            f"{len(failed)} of the batch's specs failed (the first is requests[{failed[0]}]); "
            "npy carries only a batch whose specs all succeed. Use format=json to get each "
            "slot's result or problem.",
            loc=("body", "requests", failed[0]),
        )
    shapes = {slot.lr.shape for slot in slots}  # type: ignore[union-attr]
    if len(shapes) > 1:
        raise InvalidSpec(
            "the batch's results have different shapes (groups, points): "
            + ", ".join(str(s) for s in sorted(shapes))
            + "; npy needs one shape for all. Use format=json.",
            loc=("body", "requests"),
        )
    return stacked_npy([slot.lr for slot in slots])  # type: ignore[union-attr]


def stacked_npy(rows: list[np.ndarray]) -> memoryview:
    """Return ``np.stack(rows)`` (float64) as ``.npy`` bytes, the bytes ``npy_bytes`` gives,
    stacked straight into the body: one copy of the values, into a buffer neither zeroed first
    nor copied again into a ``bytes`` (np.save went through a growing buffer; 80 MB for a batch
    of 1000 × 10k)."""
    shape = (len(rows), *rows[0].shape)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header,
        {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float64)), "fortran_order": False,
         "shape": shape},
    )  # fmt: skip
    head = header.getvalue()  # padded to a multiple of 64 bytes: the values stay aligned
    body = np.empty(len(head) + 8 * math.prod(shape), dtype=np.uint8)
    body[: len(head)] = np.frombuffer(head, dtype=np.uint8)
    values = body[len(head) :].view(np.float64).reshape(shape)
    np.stack(rows, out=values, casting="same_kind")
    return memoryview(body)
