"""POST /v1/schedules/export: a compute request in, a runnable Python script out."""

from typing import Annotated

from fastapi import APIRouter, Body, Query, Request, Response

from service.deps import SettingsDep
from service.schedules import export, service, specs
from service.schedules.routes import running
from service.schedules.routes.compute import SEED_EXAMPLES

router = APIRouter(tags=["schedules"])

EXAMPLES = {
    **{k: SEED_EXAMPLES[k] for k in ("cosine", "gradual_warmup", "multistep", "plateau")},
    "transformers": {
        "summary": "target=transformers (or lightning): get_scheduler('cosine', ...)",
        "value": {
            "optimizer": {"type": "AdamW", "lr": 0.001},
            "scheduler": {
                "type": "transformers",
                "name": "cosine",
                "num_warmup_steps": 10,
                "num_training_steps": 100,
            },
            "steps": 100,
        },
    },
    "timm": {
        "summary": "target=timm: create_scheduler_v2 with step_update per optimizer update",
        "value": {
            "optimizer": {"type": "SGD", "lr": 0.1},
            "scheduler": {
                "type": "timm",
                "sched": "cosine",
                "num_epochs": 10,
                "warmup_epochs": 2,
                "warmup_lr": 0.0,
                "updates_per_epoch": 10,
                "step_on_epochs": False,
            },
            "steps": 100,
        },
    },
    "optax": {
        "summary": "target=optax: the schedule function in float64 (jax_enable_x64)",
        "value": {
            "scheduler": {
                "type": "optax",
                "schedule": "warmup_cosine_decay_schedule",
                "init_value": 0.0,
                "peak_value": 0.1,
                "warmup_steps": 10,
                "decay_steps": 100,
            },
            "steps": 100,
        },
    },
    "megatron": {
        "summary": "target=megatron: OptimizerParamScheduler, with its command-line flags",
        "value": {
            "scheduler": {
                "type": "megatron",
                "lr_decay_style": "WSD",
                "max_lr": 3e-4,
                "min_lr": 3e-5,
                "lr_warmup_steps": 10,
                "lr_decay_steps": 100,
                "wsd_decay_steps": 20,
            },
            "steps": 100,
        },
    },
    "pytorch_warmup": {
        "summary": "target=torch (or lightning): a pytorch_warmup warmup dampening the scheduler",
        "value": {
            "optimizer": {"type": "AdamW", "lr": 0.001, "betas": [0.9, 0.999]},
            "scheduler": {"type": "CosineAnnealingLR", "T_max": 200},
            "warmup": {"type": "untuned_linear"},
            "steps": 200,
        },
    },
}


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
        422: {
            "description": "Invalid spec, or one the target cannot write (the detail names "
            "the targets that can); a spec the API refuses or that is over a limit."
        },
        429: {
            "description": "Expensive computations fill their share of the compute threads; "
            "retry after Retry-After seconds (the spec is computed before it is exported)."
        },
    },
    summary="The schedule as a runnable script",
)
async def export_schedule(
    request: Request,
    settings: SettingsDep,
    spec: Annotated[specs.ScheduleRequest, Body(openapi_examples=EXAMPLES)],
    target: Annotated[
        export.Target,
        Query(
            description="The library the script builds the schedule with.",
            json_schema_extra={"enum": list(export.TARGETS)},
        ),
    ] = "torch",
    checkpoint: Annotated[
        bool,
        Query(
            description="torch and transformers: the script runs the resume-safe checkpoint "
            "recipe halfway (saves the optimizer's and scheduler's state_dict(), builds both "
            "anew, loads them, carries on) and prints the same series. Without it the recipe "
            "is a comment at the end."
        ),
    ] = False,
) -> Response:
    """Return a Python script that builds the schedule with `target` and ends by printing the
    lr of every optimizer step, per param group, as JSON (`[[...], ...]`).

    - `torch`: torch's own schedulers: the optimizer, the scheduler (the service's warmup as
      `SequentialLR`; a pytorch_warmup `warmup` as its object, stepped in `dampening()`) and
      the loop.
    - `lightning`: the same scheduler (torch's own or a transformers one) returned by
      `configure_optimizers` with `interval` `step` or `epoch` and `frequency` 1, and a
      minimal `Trainer.fit` that steps it (a metric-driven one with `"monitor": "metric"`, the
      request's metrics logged as `metric`).
    - `transformers`: `get_scheduler(name, optimizer, num_warmup_steps, num_training_steps,
      scheduler_specific_kwargs)` in the torch loop.
    - `timm`: `create_scheduler_v2` and train.py's loop (`step_update(num_updates)` after every
      update, `step(epoch)` after every epoch).
    - `optax`: the schedule function, evaluated in float64 (`jax_enable_x64`) at every count.
    - `megatron`: `OptimizerParamScheduler`, stepped once per iteration, with the Megatron-LM
      command-line flags as a comment.

    Every script but optax's prints what the torch engine computes, bit for bit; optax's
    agrees within float64 rounding. A spec the target cannot write is a 422 naming the targets
    that can (torch's own schedulers: torch, lightning; a transformers one: transformers,
    lightning; timm, optax, Megatron: their own). The torch, transformers and lightning scripts
    end with the resume-safe checkpoint recipe; `checkpoint=true` runs it (torch, transformers).
    """
    script = export.export(spec, target, checkpoint)
    # a script of a spec the API refuses would fail when run: the spec is computed first (its
    # last step only, so the vectorized engine evaluates one point where it can; engine,
    # device and include do not change the script, so they are not checked)
    probe = spec.model_copy(
        update={
            "sample": specs.Sample(at=[spec.steps - 1]),
            "engine": "auto",
            "device": "cpu",
            "include": [],
        }
    )
    service.check_limits(probe, settings)
    heavy = service.request_cost(probe, settings) > settings.compute_heavy_share
    done = await running.run_budgeted(
        request, lambda: service.compute(probe, settings), heavy=heavy
    )
    if done is None:  # the client left; the computation was stopped
        return Response(status_code=499)
    return Response(script, media_type="text/x-python")
