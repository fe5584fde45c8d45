"""Warnings for legal specs whose torch meaning surprises people.

Each check reads the (batch-scaled) request and returns plain sentences; the response's
``warnings`` carries them. None of them changes a value: torch's behaviour is reproduced.
"""

from collections import Counter

from service.schedules import specs
from service.schedules.families import hooks as families

_TIMES = {2: "twice", 3: "three times"}


def _times(n: int) -> str:
    return _TIMES.get(n, f"{n} times")


def _milestones(spec: specs.MultiStepLR, span: int) -> list[str]:
    out = []
    unreached = sorted({m for m in spec.milestones if m >= span})
    if unreached:
        out.append(
            f"MultiStepLR milestones {unreached} lie at or past scheduler step {span}, the end "
            "of this schedule: they never apply"
        )
    for milestone, count in sorted(Counter(spec.milestones).items()):
        if count > 1:
            out.append(
                f"milestone {milestone} is listed {_times(count)}: torch applies gamma "
                f"{_times(count)} at step {milestone}"
            )
    if list(spec.milestones) != sorted(spec.milestones):
        out.append(
            f"MultiStepLR milestones {spec.milestones} are not sorted: torch counts them, so "
            "the order does not change the schedule"
        )
    if spec.gamma > 1:
        out.append(f"MultiStepLR gamma={spec.gamma} > 1: the lr grows at every milestone")
    return out


def _sequential(spec: specs.SequentialLR) -> list[str]:
    out = []
    if list(spec.milestones) != sorted(spec.milestones):
        out.append(
            f"SequentialLR milestones {spec.milestones} are not sorted: torch bisects them as "
            "given, so schedulers may be skipped or run out of order"
        )
    if 0 in spec.milestones:
        out.append(
            "SequentialLR milestone 0: the scheduler before it never runs; the next one starts "
            "at step 0"
        )
    return out


def _one(spec: specs.SchedulerBase, span: int, request: specs.ScheduleRequest) -> list[str]:
    out: list[str] = []
    if isinstance(spec, specs.MultiStepLR):
        out += _milestones(spec, span)
    elif isinstance(spec, specs.SequentialLR):
        out += _sequential(spec)
    elif isinstance(spec, specs.CosineAnnealingLR) and span > spec.T_max + 1:
        out.append(
            f"CosineAnnealingLR with T_max={spec.T_max} runs for {span - 1} steps: past step "
            f"{spec.T_max} torch's lr rises again along the cosine (period {2 * spec.T_max}); "
            "use a longer T_max or CosineAnnealingWarmRestarts to restart instead"
        )
    elif isinstance(spec, (specs.ExponentialLR, specs.StepLR)) and spec.gamma > 1:
        out.append(f"{spec.type} gamma={spec.gamma} > 1: the lr grows instead of decaying")
    elif isinstance(spec, specs.OneCycleLR):
        if spec.total_steps is None and spec.epochs is None:
            out.append(
                f"OneCycleLR total_steps was not given: it defaults to {max(span, 1)}, the "
                "scheduler steps this request covers"
            )
        if request.interval == "epoch":
            out.append("OneCycleLR is meant to be stepped after every batch, not every epoch")
    elif isinstance(spec, specs.CyclicLR) and request.interval == "epoch":
        out.append("CyclicLR is meant to be stepped after every batch, not every epoch")
    elif isinstance(spec, specs.StepLR) and spec.step_size >= span:
        out.append(
            f"StepLR step_size={spec.step_size} is not shorter than the {span} scheduler steps "
            "of this schedule: the lr never changes"
        )
    elif isinstance(spec, specs.PolynomialLR) and spec.total_iters == 0:
        out.append("PolynomialLR total_iters=0: the lr stays at its initial value")
    if isinstance(spec, (specs.CyclicLR, specs.OneCycleLR)) and (
        "lr" in request.optimizer.model_fields_set
        or any("lr" in group for group in request.param_groups or [])
    ):
        start = "base_lr" if isinstance(spec, specs.CyclicLR) else "max_lr / div_factor"
        out.append(
            f"{spec.type} replaces the optimizer's lr: every group starts at {start} "
            "(the optimizer's lr is not used)"
        )
    if (
        isinstance(spec, (specs.CyclicLR, specs.OneCycleLR))
        and spec.cycle_momentum
        and ("momentum" in (request.optimizer.model_extra or {}) or request.param_groups)
    ):
        out.append(
            f"{spec.type} with cycle_momentum=True overwrites the optimizer's momentum "
            f"(it cycles between base_momentum and max_momentum)"
        )
    return out


def _walk(spec: specs.SchedulerBase, span: int, request: specs.ScheduleRequest) -> list[str]:
    out = _one(spec, span, request)
    if isinstance(spec, specs.SequentialLR):
        bounds = [0, *spec.milestones, span]
        for i, child in enumerate(spec.schedulers):
            child_span = max(bounds[i + 1] - bounds[i], 1) if i + 1 < len(bounds) else span
            out += _walk(child, child_span, request)
    else:
        for child in spec.children():
            out += _walk(child, span, request)
    return out


def caveats(request: specs.ScheduleRequest) -> list[str]:
    """Return the warnings for ``request``, in the order a reader meets them."""
    n = request.scheduler_steps
    out: list[str] = []
    warmup = request.warmup if hasattr(request.warmup, "steps") else None
    main_span = n
    if warmup is not None:
        main_span = max(n - warmup.steps, 1)
        if warmup.steps >= n:
            out.append(
                f"the warmup of {warmup.steps} steps is not shorter than the {n} scheduler "
                "steps requested: the scheduler never starts"
            )
    out += _walk(request.scheduler, main_span, request)
    out += families.warnings(request, main_span)
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
