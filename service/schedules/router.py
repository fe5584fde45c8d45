"""HTTP for schedules: translate requests to :func:`service.compute` and results to formats."""

import functools
import io
import json
import typing
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
import numpy as np
import orjson
from fastapi import APIRouter, Body, FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service import errors
from service.deps import SettingsDep
from service.devices import resolve_device
from service.errors import InvalidSpec, LimitExceeded, ServiceError
from service.negotiation import MEDIA_TYPES, negotiate
from service.schedules import cache, formats, service, specs
from service.settings import Settings

router = APIRouter(tags=["schedules"])

FormatQuery = Annotated[
    formats.Format | None,
    Query(alias="format", description="Output format; overrides the Accept header."),
]
AcceptHeader = Annotated[str | None, Header(include_in_schema=False)]
IfNoneMatchHeader = Annotated[
    str | None,
    Header(description="An ETag from an earlier response: 304 Not Modified when it matches."),
]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Bound how many schedule computations run at once in worker threads; start the cache."""
    app.state.compute_limiter = anyio.CapacityLimiter(app.state.settings.compute_concurrency)
    app.state.schedule_cache = cache.ResultCache(app.state.settings.cache_max_bytes)
    yield


SEED_EXAMPLES: dict[str, dict[str, Any]] = {
    "cosine": {
        "summary": "CosineAnnealingLR(T_max=150) over 300 steps, every 10th step",
        "value": {
            "scheduler": {"type": "CosineAnnealingLR", "T_max": 150, "eta_min": 0.0},
            "steps": 300,
            "sample": {"every": 10},
        },
    },
    "exponential": {
        "summary": "The seed's ExponentialLR(gamma=0.98) on SGD(lr=0.1)",
        "value": {
            "optimizer": {"type": "SGD", "lr": 0.1},
            "scheduler": {"type": "ExponentialLR", "gamma": 0.98},
            "steps": 100,
        },
    },
    "multistep": {
        "summary": "The seed's MultiStepLR with milestone 200 listed twice",
        "value": {
            "scheduler": {
                "type": "MultiStepLR",
                "milestones": [200, 300, 320, 340, 200],
                "gamma": 0.8,
            },
            "steps": 400,
            "sample": {"at": [0, 199, 200, 300, 320, 340, 399]},
        },
    },
    "gradual_warmup": {
        "summary": "Gradual warmup (2500 steps from 0) then cosine, two param groups",
        "value": {
            "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9},
            "param_groups": [{"lr": 0.1}, {"lr": 0.01}],
            "scheduler": {"type": "CosineAnnealingLR", "T_max": 12500},
            "warmup": {"type": "linear", "steps": 2500, "start_factor": 0.0},
            "steps": 15000,
            "sample": {"every": 500},
        },
    },
    "onecycle_momentum": {
        "summary": "OneCycleLR on Adam with beta1 cycling",
        "value": {
            "optimizer": {"type": "Adam", "lr": 0.001},
            "scheduler": {"type": "OneCycleLR", "max_lr": 0.01, "total_steps": 1000},
            "steps": 1000,
            "include": ["momentum"],
            "sample": {"points": 11},
        },
    },
    "plateau": {
        "summary": "ReduceLROnPlateau driven by a validation-loss series",
        "value": {
            "scheduler": {"type": "ReduceLROnPlateau", "factor": 0.5, "patience": 1},
            "steps": 8,
            "metrics": [1.0, 0.8, 0.8, 0.8, 0.8, 0.79, 0.79],
        },
    },
}

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The schedule. JSON by default; CSV, npy, SVG or PNG by Accept or ?format=.",
        "content": {
            "text/csv": {"schema": {"type": "string"}, "example": "step,lr\n0,0.1\n1,0.098\n"},
            "application/x-npy": {
                "schema": {"type": "string", "format": "binary"},
                "description": "float64 array, shape (groups, points).",
            },
            "image/svg+xml": {"schema": {"type": "string"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    406: {"description": "The Accept header names no format this endpoint serves."},
    413: {"description": "The request body is larger than LRS_MAX_BODY_BYTES."},
    422: {"description": "Invalid spec, torch refused it, or a limit was exceeded."},
}


async def _respond(
    request: Request,
    spec: specs.ScheduleRequest,
    format_param: str | None,
    accept: str | None,
    settings: Settings,
    if_none_match: str | None = None,
) -> Response:
    fmt: formats.Format = negotiate(format_param, accept, formats.FORMATS)  # type: ignore[assignment]
    service.check_limits(spec, settings)
    formats.check_points(fmt, service.count_points(spec), settings)
    key = cache.spec_hash(spec, fmt, resolve_device(spec.device).type)
    headers = {"ETag": f'"{key}"', "Cache-Control": cache.CACHE_CONTROL, "Vary": "Accept"}
    store: cache.ResultCache = request.app.state.schedule_cache
    entry = store.get(key)
    if cache.etag_matches(if_none_match, headers["ETag"], exists=entry is not None):
        return Response(status_code=304, headers=headers)
    headers["X-Cache"] = "hit" if entry else "miss"
    if entry is None:
        title = f"{spec.scheduler.type} on {spec.optimizer.type}(lr={spec.optimizer.lr:g})"

        def work() -> Response:
            return formats.render(service.compute(spec, settings), fmt, title, headers={})

        rendered = await anyio.to_thread.run_sync(work, limiter=request.app.state.compute_limiter)
        entry = cache.Entry(
            body=bytes(rendered.body),
            media_type=str(rendered.media_type),
            headers={k: v for k, v in rendered.headers.items() if k.startswith("x-")},
        )
        store.put(key, entry)
    return Response(entry.body, media_type=entry.media_type, headers={**entry.headers, **headers})


@router.post(
    "/v1/schedules/compute",
    response_model=specs.ScheduleResult,
    responses=RESPONSES,
    summary="Compute a learning-rate schedule",
)
async def compute_schedule(
    request: Request,
    spec: Annotated[specs.ScheduleRequest, Body(openapi_examples=SEED_EXAMPLES)],
    settings: SettingsDep,
    format_param: FormatQuery = None,
    accept: AcceptHeader = None,
    if_none_match: IfNoneMatchHeader = None,
) -> Response:
    """Return the lr every optimizer step of a real torch training loop would use.

    Index `i` of each array is the lr optimizer step `i` uses; index 0 is the value right
    after the scheduler is constructed. `lr` holds one list per param group, in torch's
    group order, aligned with `steps`.

    The `ETag` is a hash of the normalized spec, the format and the torch version: send it
    back in `If-None-Match` to get `304 Not Modified`. Repeats are served from a cache.
    """
    return await _respond(request, spec, format_param, accept, settings, if_none_match)


_RESERVED = {
    "steps",
    "format",
    "lr",
    "optimizer",
    "interval",
    "steps_per_epoch",
    "every",
    "points",
    "engine",
    "device",
    "include",
    "warmup",
    "warmup_steps",
    "warmup_start_factor",
    "warmup_factor",
}


def _accepts_list(annotation: Any) -> bool:
    if typing.get_origin(annotation) is list:
        return True
    return any(_accepts_list(arg) for arg in typing.get_args(annotation))


def _json_or_raw(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _split_top_level(text: str) -> list[str]:
    """Return the parts of ``text`` between commas outside parentheses (``min(1, epoch)``
    stays whole)."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _query_value(cls: type[specs.SchedulerBase], name: str, raw: str) -> Any:
    field = cls.model_fields.get(name)
    if field is None or not _accepts_list(field.annotation):
        return raw
    text = raw.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return raw
    if name == "lr_lambda":
        parts = _split_top_level(text)
        return parts if len(parts) > 1 else raw
    if "," in text:
        return [_json_or_raw(p.strip()) for p in text.split(",") if p.strip()]
    return raw


def _query_request(kind: str, params: dict[str, str]) -> dict[str, Any]:
    cls = specs.SCHEDULER_TYPES[kind]
    scheduler: dict[str, Any] = {"type": kind}
    for name, raw in params.items():
        # OneCycleLR's own steps_per_epoch (with epochs) is also the request's
        if name not in _RESERVED or (name == "steps_per_epoch" and name in cls.model_fields):
            scheduler[name] = _query_value(cls, name, raw)
    body: dict[str, Any] = {"scheduler": scheduler}
    if "steps" in params:
        body["steps"] = params["steps"]
    optimizer: dict[str, Any] = {"type": params.get("optimizer", "SGD")}
    if "lr" in params:
        optimizer["lr"] = params["lr"]
    body["optimizer"] = optimizer
    for name in ("interval", "steps_per_epoch", "engine", "device"):
        if name in params:
            body[name] = params[name]
    if "include" in params:
        body["include"] = [p for p in params["include"].split(",") if p]
    sample = {name: params[name] for name in ("every", "points") if name in params}
    if sample:
        body["sample"] = sample  # both given: the spec refuses it
    if any(name.startswith("warmup") for name in params):
        warmup: dict[str, Any] = {"type": params.get("warmup", "linear")}
        if "warmup_steps" in params:
            warmup["steps"] = params["warmup_steps"]
        if "warmup_start_factor" in params:
            warmup["start_factor"] = params["warmup_start_factor"]
        if "warmup_factor" in params:
            warmup["factor"] = params["warmup_factor"]
        body["warmup"] = warmup
    return body


def _query_loc(loc: list[str | int]) -> list[str | int]:
    """Return a body location (``["body", "scheduler", "gamma"]``) as the query parameter that
    set it (``["query", "gamma"]``)."""
    parts = [p for p in loc if p != "body" and not isinstance(p, int)]
    if parts[:1] == ["scheduler"] and len(parts) > 1:
        parts = parts[1:]
    elif parts[:1] == ["optimizer"]:
        parts = ["optimizer" if parts[1:] == ["type"] else "lr"]
    elif parts[:1] == ["sample"]:
        parts = parts[-1:] if len(parts) > 1 else parts
    elif parts[:1] == ["warmup"]:
        parts = ["warmup_" + str(parts[-1])] if len(parts) > 1 else parts
    return ["query", *parts]


def _as_query_errors(exc: ValidationError) -> RequestValidationError:
    errors = []
    for err in exc.errors():
        loc = list(err["loc"])
        if loc[:1] == ["scheduler"]:
            loc = loc[1:] if len(loc) > 1 else loc
        elif loc[:1] == ["optimizer"]:
            loc = ["optimizer" if loc[1:] == ["type"] else "lr"] if len(loc) > 1 else loc
        elif loc[:1] in (["sample"], ["warmup"]):
            loc = [loc[0] if loc[0] == "sample" or len(loc) == 1 else "warmup_" + str(loc[-1])]
        errors.append({**err, "loc": ("query", *[p for p in loc if not isinstance(p, int)])})
    return RequestValidationError(errors)


@router.get(
    "/v1/schedules/{type}",
    response_model=specs.ScheduleResult,
    responses=RESPONSES,
    summary="One scheduler with scalar parameters, from the query string",
)
async def schedule_from_query(
    request: Request,
    settings: SettingsDep,
    kind: Annotated[
        str,
        Path(
            alias="type",
            description="A torch.optim.lr_scheduler class name (not SequentialLR or "
            "ChainedScheduler, which need POST).",
            examples=["StepLR"],
        ),
    ],
    steps: Annotated[
        int, Query(description="How many optimizer steps to compute.", examples=[100])
    ],
    format_param: FormatQuery = None,
    accept: AcceptHeader = None,
    if_none_match: IfNoneMatchHeader = None,
) -> Response:
    """The same as `POST /v1/schedules/compute` for curl users.

    Scheduler parameters are query parameters with torch's names
    (`/v1/schedules/StepLR?step_size=30&gamma=0.1&steps=100`); lists are comma-separated
    (`milestones=30,60,90`). Also: `lr`, `optimizer`, `interval`, `steps_per_epoch`,
    `every`/`points` (sampling), `warmup`/`warmup_steps`/`warmup_start_factor`/`warmup_factor`,
    `include=momentum`, `engine`, `device`.
    """
    if kind not in specs.SCHEDULER_TYPES:
        raise InvalidSpec(
            f"unknown scheduler type {kind!r}; known: {', '.join(specs.SCHEDULER_TYPES)}",
            loc=("path", "type"),
        )
    if kind in ("SequentialLR", "ChainedScheduler"):
        raise InvalidSpec(
            f"{kind} nests other schedulers; send it as JSON to POST /v1/schedules/compute",
            loc=("path", "type"),
        )
    try:
        spec = specs.ScheduleRequest.model_validate(
            _query_request(kind, dict(request.query_params))
        )
    except ValidationError as exc:
        raise _as_query_errors(exc) from None
    try:
        return await _respond(request, spec, format_param, accept, settings, if_none_match)
    except ServiceError as exc:
        for err in exc.errors or []:
            err["loc"] = _query_loc(err["loc"])
        raise


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
    result: specs.ScheduleResult | None = Field(default=None, description="When status is 200.")
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


def _batch_requests(
    items: list[dict[str, Any]], settings: Settings
) -> list[specs.ScheduleRequest | ServiceError | dict[str, Any]]:
    """Validate every spec and apply the batch-wide limits, in order: each slot holds its
    request, the ServiceError it got, or the problem of its failed validation."""
    slots: list[specs.ScheduleRequest | ServiceError | dict[str, Any]] = []
    points = 0
    torch_work = 0
    for index, raw in enumerate(items):
        try:
            spec = specs.ScheduleRequest.model_validate(raw)
        except ValidationError as exc:
            slots.append(_invalid_slot(exc, index))
            continue
        try:
            count = service.count_points(spec)
            formats.check_points("json", count, settings)
            points += count
            if points > settings.batch_max_points:
                raise LimitExceeded(
                    f"the batch's results so far carry {points} values per group; a batch is "
                    f"limited to {settings.batch_max_points} (LRS_BATCH_MAX_POINTS). Sample "
                    "fewer points or split the batch.",
                    loc=("body", "sample"),
                )
            if service.choose_engine(spec) == "torch":
                torch_work += spec.scheduler_steps
                if torch_work > settings.torch_max_work:
                    raise LimitExceeded(
                        f"the batch's torch-engine specs need {torch_work} scheduler steps so "
                        f"far; a batch is limited to {settings.torch_max_work} "
                        "(LRS_TORCH_MAX_WORK).",
                        loc=("body", "steps"),
                    )
        except ServiceError as exc:
            slots.append(exc)
            continue
        slots.append(spec)
    return slots


def _compute_batch(
    items: list[dict[str, Any]], settings: Settings
) -> list[service.Computed | ServiceError | dict[str, Any]]:
    """Return every slot computed (specs of one structure stacked), refused or invalid."""
    slots = _batch_requests(items, settings)
    valid = [i for i, slot in enumerate(slots) if not isinstance(slot, dict)]
    computed = service.compute_many([slots[i] for i in valid], settings)  # type: ignore[misc]
    out: list[service.Computed | ServiceError | dict[str, Any]] = list(slots)  # type: ignore[arg-type]
    for i, result in zip(valid, computed, strict=True):
        out[i] = result
    return out


def _run_batch(items: list[dict[str, Any]], settings: Settings) -> bytes:
    """Return the JSON body of a batch: every spec computed (or refused) in its own slot.

    One ``orjson.dumps`` for the whole body, numpy arrays serialized natively by orjson.
    """
    slots: list[dict[str, Any]] = []
    steps_json = _SharedSteps()
    for index, slot in enumerate(_compute_batch(items, settings)):
        if isinstance(slot, dict):
            slots.append({"status": 422, "problem": slot})
        elif isinstance(slot, ServiceError):
            slots.append({"status": slot.status, "problem": _problem(slot, index)})
        else:
            result = formats.result_dict(slot)
            result["steps"] = steps_json.fragment(slot.indices)
            slots.append({"status": 200, "result": result})
    return orjson.dumps({"results": slots}, option=orjson.OPT_SERIALIZE_NUMPY)


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


def _run_batch_npy(items: list[dict[str, Any]], settings: Settings) -> bytes:
    """Return the lrs of every slot as one ``.npy``, shape (specs, groups, points).

    Raises LimitExceeded (422) unless every slot succeeded with the same shape.
    """
    slots = _compute_batch(items, settings)
    failed = [i for i, slot in enumerate(slots) if not isinstance(slot, service.Computed)]
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
    stacked = np.stack([slot.lr for slot in slots]).astype(np.float64, copy=False)  # type: ignore[union-attr]
    buffer = io.BytesIO()
    np.save(buffer, stacked, allow_pickle=False)
    return buffer.getvalue()


BatchFormatQuery = Annotated[
    typing.Literal["json", "npy"],
    Query(
        alias="format",
        description="`json` (default): one slot per spec with its result or problem. `npy`: "
        "the lrs of all specs as one float64 `.npy` of shape (specs, groups, points), only "
        "when every spec succeeds with the same shape (else 422: use json).",
    ),
]


@router.post(
    "/v1/schedules/batch",
    response_model=BatchResult,
    responses={
        200: {
            "description": "One slot per spec (JSON), or with `?format=npy` all lrs as one array.",
            "content": {
                "application/x-npy": {
                    "schema": {"type": "string", "format": "binary"},
                    "description": "float64 array, shape (specs, groups, points).",
                }
            },
        },
        422: {
            "description": "The batch itself is invalid or too large, or `format=npy` and a "
            "spec failed or the shapes differ."
        },
    },
    summary="Compute many schedules in one request",
)
async def compute_batch(
    request: Request,
    batch: BatchRequest,
    settings: SettingsDep,
    format_param: BatchFormatQuery = "json",
) -> Response:
    """Compute up to `LRS_BATCH_MAX_SPECS` schedules; each result or problem in its own slot.

    `results[i]` is `{"status": 200, "result": {...}}` with the body `POST
    /v1/schedules/compute` would return for `requests[i]`, or `{"status": 422, "problem":
    {...}}` with its problem details. Specs of the same structure (scheduler tree and scalar
    parameters, param groups, steps and sampling) are evaluated together as one stacked
    tensor computation.

    `?format=npy` returns only the lrs, as one float64 `.npy` array of shape
    `(specs, groups, points)` (`application/x-npy`): far smaller and faster than JSON for
    large batches (1000 × 10k steps is 80 MB instead of about 250 MB of JSON). It needs every
    spec to succeed with the same shape; otherwise it is a 422 saying to use `format=json`.
    """
    if len(batch.requests) > settings.batch_max_specs:
        raise LimitExceeded(
            f"the batch has {len(batch.requests)} specs; the limit is "
            f"{settings.batch_max_specs} (LRS_BATCH_MAX_SPECS)",
            loc=("body", "requests"),
        )
    run = _run_batch_npy if format_param == "npy" else _run_batch
    body = await anyio.to_thread.run_sync(
        run, batch.requests, settings, limiter=request.app.state.compute_limiter
    )
    media_type = MEDIA_TYPES["npy"] if format_param == "npy" else "application/json"
    return Response(body, media_type=media_type)


class CatalogEntry(BaseModel):
    type: str = Field(description="The torch class name, the spec's `type`.")
    torch_class: str = Field(description="Where the class lives in torch.")
    description: str = Field(description="What the schedule does, in one line.")
    parameters: dict[str, Any] = Field(description="JSON Schema of the scheduler spec.")
    defaults: dict[str, Any] = Field(description="torch's default for each optional parameter.")
    required: list[str] = Field(description="Parameters without a default.")
    example: dict[str, Any] = Field(description="A ready request for POST /v1/schedules/compute.")


class Catalog(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "schedulers": [
                        {
                            "type": "StepLR",
                            "torch_class": "torch.optim.lr_scheduler.StepLR",
                            "description": "Decays each group's lr by ``gamma`` every "
                            "``step_size`` steps.",
                            "parameters": {"type": "object", "properties": {}},
                            "defaults": {"gamma": 0.1},
                            "required": ["step_size"],
                            "example": {
                                "scheduler": {"type": "StepLR", "step_size": 30, "gamma": 0.65},
                                "steps": 200,
                            },
                        }
                    ],
                    "optimizers": ["Adam", "AdamW", "SGD"],
                }
            ]
        }
    )

    schedulers: list[CatalogEntry]
    optimizers: list[str] = Field(description="torch.optim optimizer classes accepted.")


def _example_request(kind: str, example: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"scheduler": example, "steps": 200}
    if kind == "ReduceLROnPlateau":
        body["steps"] = 10
        body["metrics"] = [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.85, 0.85, 0.85]
    if kind == "OneCycleLR":
        body["steps"] = 1000
        body["include"] = ["momentum"]
        body["sample"] = {"points": 21}
    if kind == "CyclicLR":
        body["include"] = ["momentum"]
    if kind == "MultiStepLR":
        body["steps"] = 400
    return body


@functools.cache
def _catalog() -> Catalog:
    """Return the catalog; built once, since it depends only on the code."""
    entries = []
    for kind, cls in specs.SCHEDULER_TYPES.items():
        schema = cls.model_json_schema()
        doc = (cls.__doc__ or "").strip().splitlines()
        defaults = {
            name: field.default
            for name, field in cls.model_fields.items()
            if name != "type" and not field.is_required()
        }
        required = [n for n, f in cls.model_fields.items() if f.is_required()]
        home = "torch.optim.swa_utils" if kind == "SWALR" else "torch.optim.lr_scheduler"
        entries.append(
            CatalogEntry(
                type=kind,
                torch_class=f"{home}.{kind}",
                description=doc[0] if doc else kind,
                parameters=schema,
                defaults=defaults,
                required=required,
                example=_example_request(kind, cls.examples[0]),
            )
        )
    return Catalog(schedulers=entries, optimizers=sorted(specs.optimizer_classes()))


@router.get("/v1/schedulers", response_model=Catalog, summary="Every supported scheduler type")
async def scheduler_catalog() -> Catalog:
    """Return each scheduler type with its parameters (JSON Schema), torch's defaults, a
    one-line description and a ready example request. Dashboards build their forms from it."""
    return _catalog()
