"""What the engines, the batch scaling and the warnings ask of every family, in one place."""

from typing import Any

from service.schedules import specs
from service.schedules.codes import placed, shift
from service.schedules.families import llm, pytorch_warmup
from service.schedules.families import transformers as hf

FAMILY_TYPES = frozenset({"transformers", "noam", "rex"})
"""Spec types of the torch-based families: the catalog lists them by :func:`catalog_entries`."""


def catalog_entries() -> list[dict[str, Any]]:
    """Return the catalog entries of the torch-based families: one per transformers name,
    one each for Noam and REX (the members of ``CatalogEntry``)."""
    out = hf.catalog_entries()
    for cls in (llm.Noam, llm.REX):
        kind = cls.model_fields["type"].default
        out.append(
            {
                "type": kind,
                "name": None,
                "torch_class": f"service.schedules.families.llm.{cls.__name__}",
                "description": (cls.__doc__ or kind).strip().splitlines()[0],
                "parameters": cls.model_json_schema(),
                "defaults": {
                    n: f.default
                    for n, f in cls.model_fields.items()
                    if n != "type" and not f.is_required()
                },
                "required": [n for n, f in cls.model_fields.items() if f.is_required()],
                "example": {
                    "optimizer": {"type": "Adam", "lr": 1.0, "betas": [0.9, 0.98]},
                    "scheduler": cls.examples[0],
                    "steps": 120,
                },
            }
        )
    return out


def warmup_entries() -> list[dict[str, Any]]:
    """Return a catalog entry per warmup kind: the service's ``linear`` and ``constant``
    (before the scheduler) and pytorch_warmup's (dampening it)."""
    kinds = [
        (specs.LinearWarmup, None, {"type": "linear", "steps": 20, "start_factor": 0.0}),
        (specs.ConstantWarmup, None, {"type": "constant", "steps": 20, "factor": 0.1}),
        *(
            (cls, pytorch_warmup.LIBRARY.package, pytorch_warmup.EXAMPLES[kind])
            for kind, cls in pytorch_warmup.SPECS.items()
        ),
    ]
    return [
        {
            "type": example["type"],
            "library": library,
            "description": (cls.__doc__ or "").strip().splitlines()[0],
            "parameters": cls.model_json_schema(),
            "example": {
                "optimizer": {"type": "Adam", "lr": 0.001},
                "scheduler": {"type": "CosineAnnealingLR", "T_max": 200},
                "warmup": example,
                "steps": 200,
            },
        }
        for cls, library, example in kinds
    ]


def scaled_fields(spec: specs.SchedulerBase, factor: float) -> dict[str, Any]:
    """Return the lr-valued fields of a family spec multiplied by ``factor`` (batch scaling),
    as a ``model_copy`` update (empty for torch's own types)."""
    if isinstance(spec, hf.TransformersSchedule):
        return {"scheduler_specific_kwargs": hf.scaled_kwargs(spec, factor)}
    nested = getattr(spec, "scaled_update", None)  # optax's join_schedules and sgdr_schedule
    if nested is not None:
        return {k: v for k, v in nested(factor).items() if k not in spec.lr_fields}
    return {}


def families(request: specs.ScheduleRequest) -> list[dict[str, str | None]]:
    """Return ``{family, library, version}`` of every family (besides torch's own) whose
    semantics the request's schedule follows, once each."""
    out: list[dict[str, str | None]] = []
    for spec in specs.walk(request.scheduler):
        library = getattr(type(spec), "library", None)
        if library is not None:
            out.append(library.info())
        elif isinstance(spec, llm.Noam):
            out.append(llm.NOAM_INFO)
        elif isinstance(spec, llm.REX):
            out.append(llm.REX_INFO)
    if pytorch_warmup.is_pytorch_warmup(request.warmup):
        out.append(pytorch_warmup.LIBRARY.info())
    return list({info["family"]: info for info in out}.values())


def warnings(request: specs.ScheduleRequest, span: int) -> list[str]:
    """Return the cross-library surprises of the request's family specs and warmup."""
    out: list[str] = []
    for spec, offset in placed(request.scheduler):
        if isinstance(spec, hf.TransformersSchedule):
            out += shift(hf.caveats(spec, request, span), offset)
    if pytorch_warmup.is_pytorch_warmup(request.warmup):
        out += pytorch_warmup.caveats(request)
    return out
