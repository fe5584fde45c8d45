"""POST /v1/schedules/batch: many specs in, one slot per spec out."""

import typing
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from service.deps import SettingsDep
from service.negotiation import MEDIA_TYPES
from service.schedules import batch, plots
from service.schedules.routes import running
from service.schedules.routes.compute import AnnotateQuery, YScaleQuery
from service.settings import Settings
from service.streaming import LimitedStreamingResponse

router = APIRouter(tags=["schedules"])

BatchFormatQuery = Annotated[
    typing.Literal["json", "npy", "svg", "png"],
    Query(
        alias="format",
        description="`json` (default): one slot per spec with its result or problem. `npy`: "
        "the lrs of all specs as one float64 `.npy` of shape (specs, groups, points), only "
        "when every spec succeeds with the same shape (else 422: use json). `svg`/`png`: "
        "one overlay plot, a colour and legend entry per spec (every spec must succeed).",
    ),
]


@router.post(
    "/v1/schedules/batch",
    response_model=batch.BatchResult,
    responses={
        200: {
            "description": "One slot per spec (JSON), or with `?format=npy` all lrs as one array.",
            "content": {
                "application/x-npy": {
                    "schema": {"type": "string", "format": "binary"},
                    "description": "float64 array, shape (specs, groups, points).",
                },
                "image/svg+xml": {"schema": {"type": "string"}},
                "image/png": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        422: {
            "description": "The batch itself is invalid or too large, or `format=npy` and a "
            "spec failed or the shapes differ."
        },
        429: {
            "description": "Expensive computations (every batch is one) fill their share of "
            "the compute threads beyond LRS_COMPUTE_MAX_SECONDS; retry after Retry-After seconds. "
            "Or the JSON body would be streamed (above LRS_STREAM_MIN_BYTES) and this client "
            "already has LRS_STREAM_MAX_PER_CLIENT streamed responses in flight: wait for them "
            "to finish (Retry-After), or send fewer specs or points."
        },
    },
    summary="Compute many schedules in one request",
)
async def compute_batch(
    request: Request,
    body: batch.BatchRequest,
    settings: SettingsDep,
    format_param: BatchFormatQuery = "json",
    yscale: YScaleQuery = "linear",
    annotate: AnnotateQuery = None,
) -> Response:
    """Compute up to `LRS_BATCH_MAX_SPECS` schedules; each result or problem in its own slot.

    `results[i]` is `{"status": 200, "result": {...}}` with the body `POST
    /v1/schedules/compute` would return for `requests[i]`, or `{"status": 422, "problem":
    {...}}` with its problem details. Specs of the same structure (scheduler tree and scalar
    parameters, param groups, steps and sampling) are evaluated together as one stacked
    tensor computation.

    `?format=svg` or `png` draws every spec on one plot (`yscale=log`, `annotate=warnings`
    as for one schedule); labels name each spec's index and scheduler.

    `?format=npy` returns only the lrs, as one float64 `.npy` array of shape
    `(specs, groups, points)` (`application/x-npy`): far smaller and faster than JSON for
    large batches (1000 × 10k steps is 80 MB instead of about 250 MB of JSON). It needs every
    spec to succeed with the same shape; otherwise it is a 422 saying to use `format=json`.
    """
    batch.check_size(len(body.requests), settings)
    run: typing.Callable[[list[dict], Settings], bytes | memoryview | typing.Iterator[bytes]]
    if format_param in ("svg", "png"):
        fmt: typing.Literal["svg", "png"] = format_param  # type: ignore[assignment]
        options = plots.PlotOptions(yscale=yscale, annotate=tuple(annotate or ()))

        def run(items: list[dict], settings: Settings) -> bytes:
            return plots.batch_plot(items, batch.compute_slots(items, settings), fmt, options)

    else:
        run = batch.to_npy if format_param == "npy" else batch.to_json
    content = await running.run_budgeted(request, lambda: run(body.requests, settings), heavy=True)
    if content is None:  # the client left; the computation was stopped
        return Response(status_code=499)
    media_type = "application/json" if format_param == "json" else MEDIA_TYPES[format_param]
    if not isinstance(content, bytes | memoryview):  # a large JSON body: streamed, not held
        return LimitedStreamingResponse(
            content,
            max_seconds=settings.stream_max_seconds,
            send_timeout=settings.stream_send_timeout_s,
            cap=request.app.state.stream_cap,
            media_type=media_type,
        )
    return Response(content, media_type=media_type)
