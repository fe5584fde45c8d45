"""POST /v1/schedules/compute and its GET form: a spec in, a schedule in any format out."""

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.deps import SettingsDep
from service.devices import resolve_device
from service.errors import InvalidSpec, ServiceError
from service.metrics import COMPUTE_PLACE
from service.negotiation import MEDIA_TYPES, negotiate
from service.schedules import (
    budget,
    cache,
    compute_pool,
    counters,
    formats,
    plots,
    query,
    registry,
    service,
    specs,
)
from service.schedules.registry import SchedulerBase
from service.schedules.result import Computed, ScheduleResult
from service.schedules.routes import running
from service.settings import Settings
from service.streaming import LimitedStreamingResponse, pulled_in_threadpool

router = APIRouter(tags=["schedules"])

FormatQuery = Annotated[
    formats.Format | None,
    Query(alias="format", description="Output format; overrides the Accept header."),
]
AcceptHeader = Annotated[str | None, Header(include_in_schema=False)]
YScaleQuery = Annotated[
    plots.YScale,
    Query(description="svg/png: the lr axis, `linear` (default) or `log`."),
]
AnnotateQuery = Annotated[
    list[plots.Annotation] | None,
    Query(description="svg/png: `warnings` lists the response's warnings under the plot."),
]
IfNoneMatchHeader = Annotated[
    str | None,
    Header(description="An ETag from an earlier response: 304 Not Modified when it matches."),
]


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
    "transformers_cosine": {
        "summary": "Hugging Face get_scheduler('cosine', W=100, T=1000), two param groups",
        "value": {
            "optimizer": {"type": "AdamW", "lr": 5e-5},
            "param_groups": [{"lr": 5e-5}, {"lr": 1e-5}],
            "scheduler": {
                "type": "transformers",
                "name": "cosine",
                "num_warmup_steps": 100,
                "num_training_steps": 1000,
                "scheduler_specific_kwargs": {"num_cycles": 0.5},
            },
            "steps": 1000,
            "sample": {"every": 50},
        },
    },
    "pytorch_warmup_untuned": {
        "summary": "pytorch_warmup's untuned linear warmup dampening a CosineAnnealingLR on Adam",
        "value": {
            "optimizer": {"type": "Adam", "lr": 1e-3, "betas": [0.9, 0.999]},
            "scheduler": {"type": "CosineAnnealingLR", "T_max": 10000},
            "warmup": {"type": "untuned_linear"},
            "steps": 10000,
            "sample": {"points": 21},
        },
    },
    "timm_cosine": {
        "summary": "timm create_scheduler_v2(sched='cosine'), warmup, stepped per update",
        "value": {
            "scheduler": {
                "type": "timm",
                "sched": "cosine",
                "num_epochs": 10,
                "warmup_epochs": 1,
                "warmup_lr": 0.0,
                "step_on_epochs": False,
                "updates_per_epoch": 100,
            },
            "steps": 1000,
            "sample": {"every": 50},
        },
    },
    "optax_warmup_cosine": {
        "summary": "optax.warmup_cosine_decay_schedule, one peak per param group",
        "value": {
            "param_groups": [{}, {}],
            "scheduler": {
                "type": "optax",
                "schedule": "warmup_cosine_decay_schedule",
                "init_value": 0.0,
                "peak_value": [0.1, 0.01],
                "warmup_steps": 10,
                "decay_steps": 100,
            },
            "steps": 120,
            "sample": {"every": 10},
        },
    },
    "amp_skipped_steps": {
        "summary": "AMP: GradScaler skipped optimizer steps 0 and 57; the schedule still advances",
        "value": {
            "scheduler": {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 1000},
            "steps": 1000,
            "skipped_steps": [0, 57],
            "sample": {"at": [0, 1, 57, 58, 999]},
        },
    },
    "accumulation_micro_batch": {
        "summary": "4 micro-batches per optimizer step, the lr each micro-batch sees",
        "value": {
            "scheduler": {"type": "StepLR", "step_size": 30, "gamma": 0.1},
            "steps": 100,
            "accumulation_steps": 4,
            "index_by": "micro_batch",
            "sample": {"every": 40},
        },
    },
    "tokens_rampup": {
        "summary": "What lr at sample 3.2M: Megatron's batch-size ramp-up, tokens per step",
        "value": {
            "scheduler": {"type": "CosineAnnealingLR", "T_max": 20000},
            "warmup": {"type": "linear", "steps": 500, "start_factor": 0.0},
            "steps": 20000,
            "sample": {"points": 5},
            "counter": {
                "type": "tokens",
                "seq_length": 2048,
                "global_batch_size": 512,
                "rampup_batch_size": [32, 32, 1000000],
                "micro_batch_size": 4,
                "data_parallel_size": 8,
                "at": [6553600000],
            },
        },
    },
    "megatron_wsd": {
        "summary": "Megatron WSD with its weight-decay ramp",
        "value": {
            "scheduler": {
                "type": "megatron",
                "lr_decay_style": "WSD",
                "max_lr": 3e-4,
                "min_lr": 3e-5,
                "lr_warmup_steps": 100,
                "lr_decay_steps": 1000,
                "wsd_decay_steps": 200,
                "lr_wsd_decay_style": "minus_sqrt",
                "start_wd": 0.0,
                "end_wd": 0.1,
                "wd_incr_style": "linear",
            },
            "steps": 1100,
            "include": ["weight_decay"],
            "sample": {"every": 100},
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
    422: {
        "description": "Invalid spec, torch refused it, or a limit was exceeded (the cost "
        "model up front, or LRS_COMPUTE_MAX_SECONDS while computing)."
    },
    429: {
        "description": "Expensive computations fill their share of the compute threads beyond "
        "LRS_COMPUTE_MAX_SECONDS; retry after Retry-After seconds, or make the request cheaper. "
        "Or the body would be streamed (above LRS_STREAM_MIN_BYTES) and this client already "
        "has LRS_STREAM_MAX_PER_CLIENT streamed responses in flight: wait for them to finish "
        "(Retry-After) or sample fewer points."
    },
}


INLINE_FORMATS = frozenset({"json", "csv", "npy"})


def _runs_inline(found: service.Checked, fmt: str, streamed: bool, settings: Settings) -> bool:
    """Return True for a request cheap enough to compute on the event loop: vectorized,
    rendered as JSON, CSV or npy, costing at most ``LRS_COMPUTE_INLINE_MAX_COST`` were every
    scheduler step evaluated. Its cost
    bounds both the compute and the values rendered (a 10k-step schedule: about 1 ms), less
    than a compute thread's hop, the task that watches for a disconnect, and the GIL handed
    back and forth with the event loop would cost."""
    if streamed or fmt not in INLINE_FORMATS or settings.compute_inline_max_cost <= 0:
        return False
    # priced at every step: a sampled closed form whose probes fail falls back to the scan
    # over every step, which must not run on the loop
    every_step = max(found.cost, found.every_step)
    return found.engine == "vectorized" and every_step <= settings.compute_inline_max_cost


async def _respond(
    request: Request,
    spec: specs.ScheduleRequest,
    format_param: str | None,
    accept: str | None,
    settings: Settings,
    if_none_match: str | None = None,
    plot: plots.PlotOptions | None = None,
) -> Response:
    plot = plot or plots.PlotOptions()
    fmt: formats.Format = negotiate(format_param, accept, formats.FORMATS)  # type: ignore[assignment]
    found = service.checked(spec, settings)  # the engine and cost, once per request
    formats.check_points(fmt, service.count_points(spec), settings)
    variant = f"{fmt};{plot.cache_key()}" if fmt in ("svg", "png") and plot.cache_key() else fmt
    key = cache.spec_hash(spec, variant, resolve_device(spec.device).type)
    headers = {"ETag": f'"{key}"', "Cache-Control": cache.CACHE_CONTROL, "Vary": "Accept"}
    store: cache.ResultCache = request.app.state.schedule_cache
    entry = await store.aget(key)
    if cache.etag_matches(if_none_match, headers["ETag"], exists=entry is not None):
        return Response(status_code=304, headers=headers)
    headers["X-Cache"] = "hit" if entry else "miss"
    if entry is not None:
        return Response(
            entry.body, media_type=entry.media_type, headers={**entry.headers, **headers}
        )
    title = plots.plot_title(spec) if fmt in ("svg", "png") else ""  # only a plot has a title
    with_momentum = "momentum" in spec.include and fmt in ("json", "csv")
    series = spec.n_groups * (2 if with_momentum else 1) + counters.extra_series(spec)
    size = formats.estimated_bytes(fmt, service.count_points(spec), series)
    streamed = fmt in formats.STREAMED and size > settings.stream_min_bytes
    if streamed:  # a client with all its streams in flight: 429 before computing
        request.app.state.stream_cap.check(request.scope)

    def work() -> cache.Entry | tuple[Computed, dict[str, str]]:
        computed = service.compute(spec, settings, found)
        budget.check_cancelled()
        if streamed:
            return computed, compute_pool.about(computed)
        return compute_pool.rendered_entry(computed, fmt, title, plot)

    pool: compute_pool.ComputePool | None = request.app.state.compute_pool
    if streamed and pool is not None:
        try:
            stream = await pool.stream(spec, found, fmt, size)
        except ServiceError:  # the 4xx computing it raised, in the process
            COMPUTE_PLACE.labels("process").inc()
            raise
        if stream is not None:
            COMPUTE_PLACE.labels("process").inc()
            about = stream.headers

            async def rest(sent: int) -> AsyncIterator[formats.Chunk]:
                # the process failed the body after `sent` bytes: the same bytes, from there
                computed, again = await running.run_in_thread(request, work)  # type: ignore[misc]
                if again != about:  # not the same body: cut it rather than splice another
                    raise RuntimeError(f"the body computed again differs: {again} != {about}")
                chunks = formats.skip(formats.stream(computed, fmt), sent)
                async with aclosing(pulled_in_threadpool(chunks)) as pieces:
                    async for piece in pieces:
                        yield piece

            headers["X-Cache"] = "bypass"
            body = stream.pieces(rest)
            try:
                return LimitedStreamingResponse(
                    body,
                    max_seconds=settings.stream_max_seconds,
                    send_timeout=settings.stream_send_timeout_s,
                    cap=request.app.state.stream_cap,
                    media_type=MEDIA_TYPES[fmt],
                    headers={**about, **headers},
                )
            except BaseException:
                stream.abandon()
                raise
    inline = _runs_inline(found, fmt, streamed, settings)
    if inline:
        done = None
        if pool is not None:
            try:
                done = await pool.run(spec, found, fmt)
            except ServiceError:  # the 4xx computing it raised, in the process
                COMPUTE_PLACE.labels("process").inc()
                raise
            COMPUTE_PLACE.labels("loop" if done is None else "process").inc()
        if done is None:
            done = await running.run_inline(request, work)
    else:
        # a sampled closed form priced by its points falls back to the scan over every step
        # when its values fail at run time: it takes the heavy lane's turns when that would
        every_step = service._share(found.every_step, found.engine, settings)
        heavy = max(found.share, every_step) > settings.compute_heavy_share
        done = await running.run_budgeted(request, work, heavy=heavy)
    if done is None:  # the client left; the computation was stopped
        return Response(status_code=499)
    if isinstance(done, tuple):  # large: streamed in chunks, never cached
        computed, about = done
        headers["X-Cache"] = "bypass"
        return LimitedStreamingResponse(
            formats.stream(computed, fmt),
            max_seconds=settings.stream_max_seconds,
            send_timeout=settings.stream_send_timeout_s,
            cap=request.app.state.stream_cap,
            media_type=MEDIA_TYPES[fmt],
            headers={**about, **headers},
        )
    await store.aput(key, done, from_loop=inline)
    return Response(done.body, media_type=done.media_type, headers={**done.headers, **headers})


@router.post(
    "/v1/schedules/compute",
    response_model=ScheduleResult,
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
    yscale: YScaleQuery = "linear",
    annotate: AnnotateQuery = None,
) -> Response:
    """Return the lr every optimizer step of a real torch training loop would use.

    Index `i` of each array is the lr optimizer step `i` uses; index 0 is the value right
    after the scheduler is constructed. `lr` holds one list per param group, in torch's
    group order, aligned with `steps`.

    The `ETag` is a hash of the normalized spec, the format and the torch version: send it
    back in `If-None-Match` to get `304 Not Modified`. Repeats are served from a cache.
    """
    plot = plots.PlotOptions(yscale=yscale, annotate=tuple(annotate or ()))
    return await _respond(request, spec, format_param, accept, settings, if_none_match, plot)


@router.get("/v1/schedules/compute", include_in_schema=False)
@router.get("/v1/schedules/batch", include_in_schema=False)
async def post_only() -> None:
    """Answer GET on the POST-only endpoints with a 405 saying to POST (without this, the
    path would read as a scheduler type of the GET form)."""
    raise StarletteHTTPException(405, headers={"Allow": "POST"})


def _scheduler_class(kind: str, params: dict[str, str]) -> type[SchedulerBase]:
    """Return the scheduler class the path's ``type`` (and a family's selector) names."""
    try:
        return registry.choose({"type": kind, **params})
    except PydanticCustomError as exc:
        field = exc.type.removeprefix("missing_")
        raise InvalidSpec(exc.message(), loc=("query", field)) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ("path", "type") if list(err["loc"]) == ["type"] else ("query", *err["loc"])
        raise InvalidSpec(err["msg"], loc=loc) from None


@router.get(
    "/v1/schedules/{type}",
    response_model=ScheduleResult,
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
    yscale: YScaleQuery = "linear",
    annotate: AnnotateQuery = None,
) -> Response:
    """The same as `POST /v1/schedules/compute` for curl users.

    Scheduler parameters are query parameters with torch's names
    (`/v1/schedules/StepLR?step_size=30&gamma=0.1&steps=100`); lists are comma-separated
    (`milestones=30,60,90`). Also: `lr`, `optimizer`, `interval`, `steps_per_epoch`,
    `every`/`points` (sampling), `warmup`/`warmup_steps`/`warmup_start_factor`/`warmup_factor`,
    `include=momentum`, `engine`, `device`.
    """
    params = dict(request.query_params)
    cls = _scheduler_class(kind, params)
    if cls.compose is not SchedulerBase.compose:
        raise InvalidSpec(
            f"{kind} nests other schedulers; send it as JSON to POST /v1/schedules/compute",
            loc=("path", "type"),
        )
    body = query.query_body(cls, params)
    try:
        spec = specs.ScheduleRequest.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**err, "loc": query.query_loc(err["loc"])} for err in exc.errors()]
        ) from None
    plot = plots.PlotOptions(yscale=yscale, annotate=tuple(annotate or ()))
    try:
        return await _respond(request, spec, format_param, accept, settings, if_none_match, plot)
    except ServiceError as exc:
        for err in exc.errors or []:
            err["loc"] = query.query_loc(err["loc"])
        raise
