"""Warnings for legal specs whose torch meaning surprises people.

Each scheduler class says what surprises in its own values (``caveats``); this module walks
the request's scheduler tree, giving each the scheduler steps it really covers, and adds the
request-wide ones (warmup, metrics). The response's ``warnings`` carries them. None of them
changes a value: torch's behaviour is reproduced.
"""

from service.schedules import specs
from service.schedules.families import hooks as families
from service.schedules.torch_engine import main_span


def _walk(spec: specs.SchedulerBase, span: int, request: specs.ScheduleRequest) -> list[str]:
    out = spec.caveats(span) + spec.request_caveats(request)
    for child, child_span in zip(spec.children(), spec.child_spans(span), strict=True):
        out += _walk(child, child_span, request)
    return out


def caveats(request: specs.ScheduleRequest) -> list[str]:
    """Return the warnings for ``request``, in the order a reader meets them."""
    n = request.scheduler_steps
    out: list[str] = []
    warmup = request.warmup if hasattr(request.warmup, "steps") else None
    if warmup is not None and warmup.steps >= n:
        out.append(
            f"the warmup of {warmup.steps} steps is not shorter than the {n} scheduler "
            "steps requested: the scheduler never starts"
        )
    out += _walk(request.scheduler, main_span(n, warmup), request)
    out += families.warnings(request, main_span(n, warmup))
    plateau = isinstance(request.scheduler, specs.ReduceLROnPlateau) or getattr(
        request.scheduler, "metric_driven", False
    )
    if request.metrics is not None and not plateau:
        out.append("metrics are ignored: only ReduceLROnPlateau reads them")
    if plateau and warmup is not None:
        out.append(
            "ReduceLROnPlateau after a warmup: torch's SequentialLR refuses it, so the warmup is "
            f"stepped by hand; metrics for scheduler steps 1..{warmup.steps} are ignored"
        )
    if plateau and request.metrics is not None and len(request.metrics) > n - 1:
        out.append(
            f"{len(request.metrics)} metrics given; only the first {n - 1} are used "
            f"(one per scheduler step)"
        )
    # Keep the order, drop repeats (the same child can warn twice).
    return list(dict.fromkeys(out))
