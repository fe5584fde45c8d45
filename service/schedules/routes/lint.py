"""POST /v1/schedules/lint: a compute request in, every warning the service knows out."""

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Body, Request, Response

from service.schedules import lint, specs
from service.schedules.routes.compute import SEED_EXAMPLES

router = APIRouter(tags=["schedules"])

EXAMPLES: dict[str, dict[str, Any]] = {
    "cosine_past_t_max": {
        "summary": "CosineAnnealingLR run past T_max: it rises again from step T_max + 1",
        "value": {"scheduler": {"type": "CosineAnnealingLR", "T_max": 100}, "steps": 300},
    },
    "warmup_then_cosine": SEED_EXAMPLES["gradual_warmup"],
    "onecycle": {
        "summary": "OneCycleLR: where it peaks, and where stepping it further raises",
        "value": {
            "scheduler": {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 100},
            "steps": 100,
        },
    },
    "transformers_cosine": {
        "summary": "transformers' cosine run past num_training_steps: it rises again",
        "value": {
            "optimizer": {"type": "AdamW", "lr": 5e-5},
            "scheduler": {
                "type": "transformers",
                "name": "cosine",
                "num_warmup_steps": 100,
                "num_training_steps": 1000,
            },
            "steps": 1200,
        },
    },
    "timm_multistep": {
        "summary": "timm's multistep applies each milestone one step before torch",
        "value": {
            "scheduler": {
                "type": "timm",
                "sched": "multistep",
                "num_epochs": 10,
                "decay_milestones": [3, 6],
                "step_on_epochs": True,
            },
            "steps": 10,
        },
    },
    "pytorch_warmup_untuned": SEED_EXAMPLES["pytorch_warmup_untuned"],
    "clean": {
        "summary": "A closed-form LambdaLR (it even resumes right): findings is []",
        "value": {"scheduler": {"type": "LambdaLR", "lr_lambda": "0.98 ** epoch"}, "steps": 100},
    },
}

EXAMPLE_RESPONSE = {
    "findings": [
        {
            "code": "cosine-rises-after-t-max",
            "message": "CosineAnnealingLR with T_max=100 runs for 299 steps: past step 100 "
            "torch's lr rises again along the cosine (period 200); use a longer T_max or "
            "CosineAnnealingWarmRestarts to restart instead",
            "step": 101,
            "see": "https://pytorch.org/docs/stable/generated/"
            "torch.optim.lr_scheduler.CosineAnnealingLR.html",
            "kind": "caveat",
        }
    ]
}


@router.post(
    "/v1/schedules/lint",
    response_model=lint.LintResult,
    responses={
        200: {"content": {"application/json": {"example": EXAMPLE_RESPONSE}}},
        422: {"description": "Invalid spec, or one torch refuses to build (as compute)."},
    },
    summary="Every warning the service knows for a spec, with a code, a step and a link",
)
async def lint_schedule(
    request: Request, spec: Annotated[specs.ScheduleRequest, Body(openapi_examples=EXAMPLES)]
) -> Response:
    """Return every finding for a compute request: compute's `warnings` (the same messages)
    and the hazards compute does not warn about because they bite in a training loop
    (resuming with `last_epoch`: SequentialLR, and every chainable scheduler on a fresh
    optimizer; AMP's skipped steps, OneCycleLR stepped past
    `total_steps`, a metric-driven scheduler without metrics, ...).

    Each finding has a stable `code` (the table in docs/lint.md), the optimizer `step` where
    it bites for this spec (an index of compute's arrays, possibly past this request's end;
    null when it is not about one step), a `see` link to the torch or library issue or doc
    that explains it, and its `kind`. Nothing is stepped: linting costs about as much as
    validating the spec, whatever `steps` is. `sample`, `engine` and `device` are not read.
    """
    result = await anyio.to_thread.run_sync(
        lint.lint, spec, limiter=request.app.state.compute_limiter
    )
    return Response(result.model_dump_json(), media_type="application/json")
