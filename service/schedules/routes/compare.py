"""POST /v1/schedules/compare: several specs in, their series and pairwise differences out."""

import typing
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from service.deps import SettingsDep
from service.negotiation import MEDIA_TYPES
from service.schedules import compare, plots
from service.schedules.routes import running
from service.schedules.routes.compute import AnnotateQuery, YScaleQuery

router = APIRouter(tags=["schedules"])

CompareFormatQuery = Annotated[
    typing.Literal["json", "svg", "png"],
    Query(
        alias="format",
        description="`json` (default): the series and the pairs. `svg`/`png`: one overlay "
        "plot, a colour and legend entry per spec.",
    ),
]


@router.post(
    "/v1/schedules/compare",
    response_model=compare.CompareResult,
    responses={
        200: {
            "description": "The aligned series and every pair's differences, or the plot.",
            "content": {
                "image/svg+xml": {"schema": {"type": "string"}},
                "image/png": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        422: {"description": "A spec is invalid or over a limit (its `loc` points into specs)."},
    },
    summary="Compare 2–16 schedules step by step",
)
async def compare_schedules(
    request: Request,
    body: compare.CompareRequest,
    settings: SettingsDep,
    format_param: CompareFormatQuery = "json",
    yscale: YScaleQuery = "linear",
    annotate: AnnotateQuery = None,
) -> Response:
    """Compute each spec as `POST /v1/schedules/compute` would and compare them at the
    optimizer steps they all return.

    `pairs` holds, for every pair `a < b`, the largest absolute and relative lr difference
    over the shared steps and param groups, the first step where they differ by more than
    `tolerance` (relative), and `peak_offset`: how many steps later `b` peaks than `a`
    (torch's `OneCycleLR` peaks one step before optax's `cosine_onecycle_schedule`).
    """
    heavy = compare.cost_share(body, settings) > settings.compute_heavy_share
    if format_param in ("svg", "png"):
        options = plots.PlotOptions(yscale=yscale, annotate=tuple(annotate or ()))
        content = await running.run_budgeted(
            request,
            lambda: compare.plot(body, settings, format_param, options),
            heavy=heavy,
        )
        if content is None:  # the client left; the computation was stopped
            return Response(status_code=499)
        return Response(content, media_type=MEDIA_TYPES[format_param])
    result = await running.run_budgeted(
        request, lambda: compare.compare(body, settings), heavy=heavy
    )
    if result is None:
        return Response(status_code=499)
    return Response(
        compare.CompareResult.model_validate(result).model_dump_json(),
        media_type="application/json",
    )
