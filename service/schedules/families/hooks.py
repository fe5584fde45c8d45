"""What the engines, the batch scaling and the warnings ask of every family, in one place."""

from typing import Any

from service.schedules import specs
from service.schedules.families import llm, pytorch_warmup
from service.schedules.families import transformers as hf


def scaled_fields(spec: specs.SchedulerBase, factor: float) -> dict[str, Any]:
    """Return the lr-valued fields of a family spec multiplied by ``factor`` (batch scaling),
    as a ``model_copy`` update (empty for torch's own types)."""
    if isinstance(spec, hf.TransformersSchedule):
        return {"scheduler_specific_kwargs": hf.scaled_kwargs(spec, factor)}
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
    for spec in specs.walk(request.scheduler):
        if isinstance(spec, hf.TransformersSchedule):
            out += hf.caveats(spec, request, span)
    if pytorch_warmup.is_pytorch_warmup(request.warmup):
        out += pytorch_warmup.caveats(request)
    return out
