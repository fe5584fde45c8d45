"""POST /v1/schedules/resume: a spec and a stopping step in, each resume recipe's lr out."""

import anyio
from fastapi import APIRouter, Request, Response

from service.deps import SettingsDep
from service.schedules import resume

router = APIRouter(tags=["schedules"])


@router.post(
    "/v1/schedules/resume",
    response_model=resume.ResumeResult,
    responses={422: {"description": "Invalid spec, resume_at outside the run, or a limit."}},
    summary="What a run resumed at a step gets, recipe by recipe",
)
async def resume_check(request: Request, body: resume.ResumeRequest, settings: SettingsDep):
    """Run the spec uninterrupted and resumed at `resume_at` by each recipe, with real torch
    objects, and say where each recipe's lr first differs.

    Recipes: `state_dict` (optimizer and scheduler `state_dict()` saved and loaded into fresh
    objects: the correct one), `last_epoch` (the scheduler rebuilt with `last_epoch=resume_at
    - 1` on a fresh optimizer with `initial_lr` set: `SequentialLR` goes wrong here),
    `fast_forward` (fresh objects stepped `resume_at` times) and `changed` (the saved state
    loaded into objects built from the `changed` spec). `first_difference` is the first
    optimizer step whose lr differs from the uninterrupted run (relative tolerance 1e-12).
    """
    result = await anyio.to_thread.run_sync(
        resume.check, body, settings, limiter=request.app.state.compute_limiter
    )
    return Response(
        resume.ResumeResult.model_validate(result).model_dump_json(),
        media_type="application/json",
    )
