"""POST /v1/schedules/export: a compute request in, a runnable Python script out."""

from typing import Annotated

from fastapi import APIRouter, Body, Query, Response

from service.schedules import export, specs
from service.schedules.routes.compute import SEED_EXAMPLES

router = APIRouter(tags=["schedules"])

EXAMPLES = {k: SEED_EXAMPLES[k] for k in ("cosine", "gradual_warmup", "multistep", "plateau")}


@router.post(
    "/v1/schedules/export",
    response_class=Response,
    responses={
        200: {
            "description": "A runnable script that prints every optimizer step's lr per group "
            "as JSON.",
            "content": {
                "text/x-python": {
                    "schema": {"type": "string"},
                    "example": "import json\nimport torch\n...\nprint(json.dumps(lrs))\n",
                }
            },
        },
        422: {"description": "Invalid spec, or one the target cannot express yet."},
    },
    summary="The schedule as a runnable script",
)
async def export_schedule(
    spec: Annotated[specs.ScheduleRequest, Body(openapi_examples=EXAMPLES)],
    target: Annotated[
        export.Target,
        Query(
            description="The library the script builds the schedule with.",
            json_schema_extra={"enum": list(export.TARGETS)},
        ),
    ] = "torch",
) -> Response:
    """Return a Python script that builds the schedule with `target` and ends by printing the
    lr of every optimizer step, per param group, as JSON (`[[...], ...]`).

    `torch`: the optimizer, the scheduler (the service's warmup as `SequentialLR`) and the
    loop; its output equals the torch engine's bit for bit. It ends with the resume-safe
    checkpoint recipe (save and load both `state_dict()`s).
    """
    return Response(export.export(spec, target), media_type="text/x-python")
