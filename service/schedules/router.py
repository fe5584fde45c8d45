"""HTTP for schedules: translate requests to :func:`service.compute` and results to formats."""

import json
import typing
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Body, Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.errors import InvalidSpec
from service.schedules import formats, service, specs
from service.settings import Settings, get_settings

router = APIRouter(tags=["schedules"])

SettingsDep = Annotated[Settings, Depends(get_settings)]
FormatQuery = Annotated[
    formats.Format | None,
    Query(alias="format", description="Output format; overrides the Accept header."),
]
AcceptHeader = Annotated[str | None, Header(include_in_schema=False)]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Bound how many schedule computations run at once in worker threads."""
    app.state.compute_limiter = anyio.CapacityLimiter(app.state.settings.compute_concurrency)
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
) -> Response:
    fmt = formats.negotiate(format_param, accept)
    formats.check_points(fmt, service.count_points(spec), settings)
    computed = await anyio.to_thread.run_sync(
        service.compute, spec, settings, limiter=request.app.state.compute_limiter
    )
    title = f"{spec.scheduler.type} on {spec.optimizer.type}(lr={spec.optimizer.lr:g})"
    return formats.render(computed, fmt, title, headers={})


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
) -> Response:
    """Return the lr every optimizer step of a real torch training loop would use.

    Index `i` of each array is the lr optimizer step `i` uses; index 0 is the value right
    after the scheduler is constructed. `lr` holds one list per param group, in torch's
    group order, aligned with `steps`.
    """
    return await _respond(request, spec, format_param, accept, settings)


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
    if "," in text:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        return parts if name == "lr_lambda" else [_json_or_raw(p) for p in parts]
    return raw


def _query_request(kind: str, params: dict[str, str]) -> dict[str, Any]:
    cls = specs.SCHEDULER_TYPES[kind]
    scheduler: dict[str, Any] = {"type": kind}
    for name, raw in params.items():
        if name not in _RESERVED:
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
    for name in ("every", "points"):
        if name in params:
            body["sample"] = {name: params[name]}
    if "warmup_steps" in params:
        warmup: dict[str, Any] = {
            "type": params.get("warmup", "linear"),
            "steps": params["warmup_steps"],
        }
        if "warmup_start_factor" in params:
            warmup["start_factor"] = params["warmup_start_factor"]
        if "warmup_factor" in params:
            warmup["factor"] = params["warmup_factor"]
        body["warmup"] = warmup
    return body


def _as_query_errors(exc: ValidationError) -> RequestValidationError:
    errors = []
    for err in exc.errors():
        loc = list(err["loc"])
        if loc[:1] == ["scheduler"]:
            loc = loc[1:] if len(loc) > 1 else loc
        elif loc[:1] == ["optimizer"]:
            loc = ["optimizer" if loc[1:] == ["type"] else "lr"] if len(loc) > 1 else loc
        elif loc[:1] in (["sample"], ["warmup"]):
            loc = [loc[0] if loc[0] == "sample" else "warmup_" + str(loc[-1])]
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
    return await _respond(request, spec, format_param, accept, settings)


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


def _catalog() -> Catalog:
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
