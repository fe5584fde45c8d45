"""Warnings for legal specs whose torch meaning surprises people.

Each scheduler class says what surprises in its own values (``caveats``); this module walks
the request's scheduler tree, giving each the scheduler steps it really covers, and adds the
request-wide ones (warmup, metrics). The response's ``warnings`` carries them. None of them
changes a value: torch's behaviour is reproduced.

Every warning is a :class:`~service.schedules.codes.Caveat`: the message compute shows, its
stable code and the step where it bites. :func:`coded` returns them with that step counted in
optimizer steps of the whole request (``POST /v1/schedules/lint`` reads them);
:func:`caveats` returns the messages alone (compute's ``warnings``).
"""

from service.schedules import specs
from service.schedules.codes import Caveat, caveat, child_starts, placed, shift
from service.schedules.families import hooks as families
from service.schedules.torch_engine import main_span

METRIC_READERS = (
    "only a metric-driven scheduler as the request's scheduler reads them (ReduceLROnPlateau, "
    "timm's plateau, transformers' reduce_lr_on_plateau and greedy), one per scheduler step; "
    "one nested in a SequentialLR or ChainedScheduler steps without a metric"
)
"""Who reads ``metrics``: the schedulers the engines feed them to (the request's root)."""


def _name(spec: specs.SchedulerBase) -> str:
    """Return a scheduler's name as a user wrote it: ``timm 'plateau'``, ``ReduceLROnPlateau``."""
    selected = getattr(spec, spec.selector, None) if spec.selector else None
    return f"{spec.type} {selected!r}" if selected else spec.type


def _lr_scale_unread(request: specs.ScheduleRequest, warmup: object) -> list[str]:
    """Return a warning when groups set ``lr_scale`` and, besides timm's schedulers, a warmup
    or a SequentialLR segment sets the lr without it (timm alone multiplies it in)."""
    if not any(specs.LR_SCALE in g for g in request.param_groups or []):
        return []
    start = getattr(warmup, "steps", 0)
    unscaled: list[tuple[str, int]] = []
    if warmup is not None:
        unscaled.append((f"the {getattr(warmup, 'type', '')} warmup", 0))
    for spec, at in placed(request.scheduler, start):
        if spec.type != "SequentialLR":  # type: ignore[attr-defined]
            continue
        children = zip(spec.children(), child_starts(spec), strict=True)  # type: ignore[attr-defined]
        for child, begin in children:
            if not child.children() and not specs.reads_lr_scale(child):
                unscaled.append((f"{_name(child)} (from scheduler step {at + begin})", at + begin))
    if not unscaled:
        return []
    names = ", ".join(name for name, _ in unscaled)
    return [
        caveat(
            "lr-scale-unread",
            f"param_groups' lr_scale is multiplied in only by timm's schedulers: {names} "
            f"set{'s' if len(unscaled) == 1 else ''} each group's lr without it",
            min(step for _, step in unscaled),
        )
    ]


def _walk(
    spec: specs.SchedulerBase, span: int, request: specs.ScheduleRequest, offset: int = 0
) -> list[str]:
    out = shift(spec.caveats(span) + spec.request_caveats(request), offset)
    children = zip(spec.children(), spec.child_spans(span), child_starts(spec), strict=True)
    for child, child_span, start in children:
        out += _walk(child, child_span, request, offset + start)
    return out


def _scheduler_caveats(request: specs.ScheduleRequest) -> list[str]:
    """Return the warnings in the order a reader meets them, each coded step counted in
    scheduler steps of the whole request (repeats kept)."""
    n = request.scheduler_steps
    out: list[str] = []
    warmup = request.warmup if hasattr(request.warmup, "steps") else None
    if warmup is not None and warmup.steps >= n:
        out.append(
            caveat(
                "warmup-covers-schedule",
                f"the warmup of {warmup.steps} steps is not shorter than the {n} scheduler "
                "steps requested: the scheduler never starts",
            )
        )
    start = warmup.steps if warmup is not None else 0  # the main scheduler starts at index W
    out += _walk(request.scheduler, main_span(n, warmup), request, start)
    out += shift(families.warnings(request, main_span(n, warmup)), start)
    plateau = isinstance(request.scheduler, specs.ReduceLROnPlateau) or getattr(
        request.scheduler, "metric_driven", False
    )
    if request.metrics is not None and not plateau:
        out.append(caveat("metrics-ignored", f"metrics are ignored: {METRIC_READERS}"))
    if plateau and warmup is not None:
        out.append(
            caveat(
                "plateau-after-warmup",
                f"{_name(request.scheduler)} after a warmup: torch's SequentialLR refuses a "
                "metric-driven scheduler, so the warmup is stepped by hand; metrics for "
                f"scheduler steps 1..{warmup.steps} are ignored",
                1,
            )
        )
    out += _lr_scale_unread(request, warmup)
    if plateau and request.metrics is not None and len(request.metrics) > n - 1:
        out.append(
            caveat(
                "metrics-extra",
                f"{len(request.metrics)} metrics given; only the first {n - 1} are used "
                f"(one per scheduler step)",
            )
        )
    return out


def optimizer_step(request: specs.ScheduleRequest, scheduler_step: int | None) -> int | None:
    """Return the first optimizer step (index of compute's arrays) that uses the lr of
    ``scheduler_step`` (None stays None)."""
    if scheduler_step is None:
        return None
    return (
        scheduler_step * request.steps_per_epoch if request.interval == "epoch" else scheduler_step
    )


def coded(request: specs.ScheduleRequest) -> list[Caveat]:
    """Return the warnings for ``request`` as coded warnings, each step counted in optimizer
    steps of the request; one per (code, message, step)."""
    out: dict[tuple[str, str, int | None], Caveat] = {}
    for warning in _scheduler_caveats(request):
        if not isinstance(warning, Caveat):
            warning = Caveat(warning)
        found = Caveat(str(warning), warning.code, optimizer_step(request, warning.step))
        out.setdefault((found.code, str(found), found.step), found)
    return list(out.values())


def caveats(request: specs.ScheduleRequest) -> list[str]:
    """Return the warnings for ``request``, in the order a reader meets them."""
    # Keep the order, drop repeats (the same child can warn twice).
    return list(dict.fromkeys(str(w) for w in _scheduler_caveats(request)))
