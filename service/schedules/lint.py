"""``POST /v1/schedules/lint``: every warning the service knows for a spec, coded and located.

The findings are compute's own warnings (:func:`service.schedules.caveats.coded`: the same
messages, from the same code; then the step counters' notes, coded by :data:`COUNTER_NOTES`)
followed by the hazards compute does not warn about because
they bite in a training loop rather than in the values it returns (a resume rebuilt with
``last_epoch``, AMP's skipped steps, OneCycleLR stepped too far, ...). Each has a stable code
(:data:`service.schedules.codes.CODES`, documented in ``docs/lint.md``), the optimizer step
where it bites for this spec (None when it is not about one step) and a link that explains it.

Linting is cheap: nothing is stepped. The spec is validated as compute validates it (its
torch objects are built, not stepped, so a value torch refuses is the same 422), and every
step is computed from the spec's numbers.
"""

import math

from pydantic import BaseModel, ConfigDict, Field

from service.schedules import caveats, counters, specs
from service.schedules.codes import CODES, Caveat, Kind, caveat, placed
from service.schedules.families import libraries
from service.schedules.service import apply_batch_scaling
from service.schedules.torch_engine import Stepper, main_span, make_optimizer


class Finding(BaseModel):
    """One thing to know about the spec."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="Stable identifier (the table in docs/lint.md).")
    message: str = Field(description="What happens, with this spec's numbers.")
    step: int | None = Field(
        description="The optimizer step where it bites (an index of compute's arrays, which "
        "may lie past this request's end); null when it is not about one step."
    )
    see: str | None = Field(description="The torch or library issue or doc explaining it.")
    kind: Kind = Field(
        description="`caveat`: compute's `warnings` carries this message; `hazard`: only "
        "lint reports it (it bites in a training loop: resuming, AMP, a longer run); `error`: "
        "compute refuses this request."
    )


class LintResult(BaseModel):
    """The findings for one spec: compute's warnings first, in its order, then the hazards."""

    findings: list[Finding] = Field(description="Empty when nothing is worth knowing.")


def _finding(
    request: specs.ScheduleRequest, warning: Caveat, scheduler_step: bool, warned: bool = False
) -> Finding:
    """Return the finding of ``warning``; ``warned``: compute's warnings carry it (a caveat,
    whatever its code's usual kind)."""
    code = CODES[warning.code]
    step = warning.step
    if scheduler_step:
        step = caveats.optimizer_step(request, step)
    kind: Kind = "caveat" if warned else code.kind
    return Finding(code=code.code, message=str(warning), step=step, see=code.see, kind=kind)


# --------------------------------------------------------------------------- hazards


def _onecycle_total(spec: specs.OneCycleLR, span: int) -> int:
    if spec.total_steps is not None:
        return spec.total_steps
    if spec.epochs is not None and spec.steps_per_epoch is not None:
        return spec.epochs * spec.steps_per_epoch
    return max(span, 1)


def onecycle_peak(spec: specs.OneCycleLR, total: int) -> int:
    """Return the scheduler step at which torch's OneCycleLR reaches its highest lr.

    torch's first phase ends at ``float(pct_start * total_steps) - 1``: the lr there is
    ``max_lr`` when that is a whole step, else the higher of the steps either side of it.
    """
    end = float(spec.pct_start * total) - 1
    if end <= 0:
        return 0
    low, high = math.floor(end), math.ceil(end)
    if low == high or high >= total:
        return low

    def anneal(pct: float) -> float:  # 1 at the peak, 0 at the phase's other end
        pct = min(max(pct, 0.0), 1.0)
        return (math.cos(math.pi * pct) + 1) / 2 if spec.anneal_strategy == "cos" else 1 - pct

    rising = 1 - anneal(low / end)  # phase 1: initial -> max, as a fraction of the way up
    second_end = float(2 * spec.pct_start * total) - 2 if spec.three_phase else total - 1
    falling = anneal((high - end) / max(second_end - end, 1e-12))
    return low if rising >= falling else high


def _hazards(request: specs.ScheduleRequest) -> list[Caveat]:
    """Return the lint-only findings, each step in scheduler steps of the whole request."""
    n = request.scheduler_steps
    warmup = request.warmup if hasattr(request.warmup, "steps") else None
    start = warmup.steps if warmup is not None else 0
    span = main_span(n, warmup)
    out: list[Caveat] = []
    plateau = isinstance(request.scheduler, specs.ReduceLROnPlateau) or getattr(
        request.scheduler, "metric_driven", False
    )
    if warmup is not None and not plateau:  # before a plateau it is stepped by hand
        out.append(
            caveat(
                "last-epoch-resume-restarts-children",
                f"the {warmup.type} warmup of {warmup.steps} steps is a SequentialLR in torch "
                f"(milestone {warmup.steps}): rebuilt with last_epoch=N to resume, torch "
                "starts its children over (pytorch #162591). Save and load "
                "scheduler.state_dict() instead; POST /v1/schedules/resume with recipes "
                '["last_epoch"] shows what this spec gets',
            )
        )
    spans = _spans(request.scheduler, span)
    for spec, offset in placed(request.scheduler):
        at = start + offset
        local_span = spans.get(id(spec), span)
        if isinstance(spec, (specs.SequentialLR, specs.ChainedScheduler)):
            out.append(
                caveat(
                    "last-epoch-resume-restarts-children",
                    f"{spec.type} (its children) rebuilt with last_epoch=N to resume does not "
                    "restore the children's state (pytorch #162591): the lr it resumes at is "
                    "not the one the run stopped at. Save and load scheduler.state_dict() "
                    "instead; POST "
                    '/v1/schedules/resume with recipes ["last_epoch"] shows what this spec gets',
                )
            )
        wrong = chainable_first_wrong(spec)
        if wrong is not None and not inside_sequential(request.scheduler, spec) and not warmup:
            closed = (
                " (not its closed form, eta_min + (base_lr - eta_min) * (1 + cos(pi * t / "
                "T_max)) / 2)"
                if isinstance(spec, specs.CosineAnnealingLR)
                else ""
            )
            effect = (
                "the resume step keeps the optimizer's initial lr (the steps after it are "
                "right again)"
                if isinstance(spec, specs.CyclicLR)
                else "it continues from the initial lr instead of the lr the run stopped at"
            )
            out.append(
                caveat(
                    "last-epoch-resume-chainable",
                    f"{spec.type} computes each lr from the group's current lr{closed}: "
                    "rebuilt with last_epoch=k-1 on a fresh optimizer to resume at step k, "
                    f"{effect}; for this spec a resume at step {at + wrong} or later can get "
                    "a wrong lr. Save and load the optimizer's and the scheduler's "
                    "state_dict() instead",
                    at + wrong,
                )
            )
        if isinstance(spec, specs.OneCycleLR):
            total = _onecycle_total(spec, local_span)
            reached = total + 1 < local_span
            out.append(
                caveat(
                    "onecycle-raises-past-total-steps",
                    f"OneCycleLR with total_steps={total} raises ValueError ('Tried to step "
                    f"{total + 1} times. The specified number of total steps is {total}') at "
                    f"its step {total + 1}: a longer run, a resumed run that steps again from "
                    "the start, or a miscounted steps_per_epoch stops there"
                    + (" (this request reaches it: compute refuses it)" if reached else ""),
                    at + total + 1,
                )
            )
            if not inside_sequential(request.scheduler, spec) and not warmup:
                out.append(
                    caveat(
                        "last-epoch-resume-raises",
                        "OneCycleLR rebuilt with last_epoch=k-1 on a fresh optimizer to resume "
                        "raises KeyError('max_lr'): it reads the max_lr and min_lr its first "
                        "construction wrote into the param groups. Load the optimizer's "
                        "state_dict() first, or resume with both state_dict()s",
                    )
                )
            peak = onecycle_peak(spec, total)
            out.append(
                caveat(
                    "onecycle-peak-step",
                    f"torch's OneCycleLR(total_steps={total}, pct_start={spec.pct_start:g}) "
                    f"peaks at its step {peak} (pct_start * total_steps - 1 = "
                    f"{float(spec.pct_start * total) - 1:g}); optax's one-cycle schedules and a "
                    f"transformers warmup of int(pct_start * total_steps) = "
                    f"{int(spec.pct_start * total)} steps peak at step "
                    f"{int(spec.pct_start * total)}",
                    at + peak,
                )
            )
    have = len(request.metrics or [])
    if plateau and have < n - 1:
        name = getattr(request.scheduler, request.scheduler.selector or "", None)
        what = f"{request.scheduler.type} {name}" if name else request.scheduler.type
        out.append(
            caveat(
                "metrics-missing",
                f"{what} needs metrics: scheduler.step(metric) with one value per scheduler "
                f"step, {n - 1} for this request; {have} given, so scheduler step {have + 1} "
                "has none (compute refuses this request: add metrics or lower steps)",
                have + 1,
            )
        )
    if request.warmup is not None and not getattr(request, "skipped_steps", None):
        # with skipped_steps, compute's own notes (the step counters') say what the skips do
        out.append(
            caveat(
                "amp-skipped-steps-advance-schedule",
                "with AMP (torch.amp.GradScaler), an optimizer step whose gradients overflow "
                "is skipped, typically several at the start while the scale calibrates, but "
                "scheduler.step() still runs: the schedule advances without an update and "
                "torch warns 'Detected call of lr_scheduler.step() before optimizer.step()' "
                "(pytorch #55585); the first steps are the warmup's, so it ends having made "
                "fewer updates than it counts (give skipped_steps to see the series)",
                0,
            )
        )
    return out


def chainable_first_wrong(spec: specs.SchedulerBase) -> int | None:
    """Return the first step k at which ``spec``, rebuilt with ``last_epoch=k-1`` on a fresh
    optimizer (``initial_lr`` set), gets another lr than the uninterrupted run (torch 2.13:
    the rebuilt scheduler starts from the group's lr, the initial one); None when no resume
    goes wrong this way (closed forms: LambdaLR, CosineAnnealingWarmRestarts, ...)."""
    if isinstance(spec, specs.StepLR):
        return spec.step_size + 1 if spec.gamma != 1 else None
    if isinstance(spec, specs.MultiStepLR):
        return min(spec.milestones) + 1 if spec.milestones and spec.gamma != 1 else None
    if isinstance(spec, specs.ExponentialLR):
        return 1 if spec.gamma != 1 else None
    if isinstance(spec, specs.ConstantLR):
        return 1 if spec.factor != 1 and spec.total_iters > 0 else None
    if isinstance(spec, specs.LinearLR):
        changes = spec.start_factor != spec.end_factor and spec.total_iters > 0
        return 1 if changes else None
    if isinstance(spec, specs.PolynomialLR):
        return 1 if spec.total_iters > 0 else None
    if isinstance(spec, (specs.CosineAnnealingLR, specs.MultiplicativeLR, specs.CyclicLR)):
        return 1
    return None


def inside_sequential(root: specs.SchedulerBase, spec: specs.SchedulerBase) -> bool:
    """Return True when ``spec`` is nested in a SequentialLR of ``root`` (its resume is the
    SequentialLR's, which last-epoch-resume-restarts-children reports)."""

    def walk(node: specs.SchedulerBase, in_seq: bool) -> bool:
        if node is spec:
            return in_seq
        seq = in_seq or isinstance(node, specs.SequentialLR)
        return any(walk(child, seq) for child in node.children())

    return walk(root, False)


def _spans(spec: specs.SchedulerBase, span: int) -> dict[int, int]:
    out = {id(spec): span}
    for child, child_span in zip(spec.children(), spec.child_spans(span), strict=True):
        out.update(_spans(child, child_span))
    return out


# --------------------------------------------------------------------------- lint


def validate(request: specs.ScheduleRequest) -> specs.ScheduleRequest:
    """Return ``request`` with batch scaling applied, after the checks compute makes of the
    spec alone: per-group lists, and torch's constructors (the objects are built, never
    stepped). Raises InvalidSpec (422) as compute does."""
    libraries.check(request)
    scaled = apply_batch_scaling(request)
    optimizer = make_optimizer(scaled.optimizer, scaled.param_groups)
    # other libraries' schedules over their closed forms (no library import), except the
    # metric-driven ones, which have none: the real library builds those, as compute does
    metric_driven = any(getattr(s, "metric_driven", False) for s in specs.walk(scaled.scheduler))
    closed = None if metric_driven else True
    Stepper(optimizer, scaled.scheduler, scaled.warmup, scaled.scheduler_steps, closed=closed)
    return scaled


# The step counters' notes (service.schedules.counters, which compute appends to its
# warnings), by how each begins: (code, where it bites: "skipped" for the first skipped step,
# "scheduler" for the first scheduler.step(), None).
COUNTER_NOTES: list[tuple[str, str, str | None]] = [
    ("skipped_steps lists ", "skipped-steps-repeated", None),
    ("Megatron's training loop does not step", "megatron-holds-on-skipped-steps", "skipped"),
    ("optimizer.step() was not called", "amp-skipped-steps-advance-schedule", "skipped"),
    ("torch warns once, at the first scheduler.step()", "amp-step-order-warning", "scheduler"),
    ("nothing warns although", "amp-skips-unwarned", None),
    ("torch says nothing about these skips", "amp-skips-unwarned", None),
    ("Megatron's own loop steps its scheduler by", "megatron-rampup-counts-samples", None),
]


def _counter_notes(request: specs.ScheduleRequest) -> list[Caveat]:
    """Return the step counters' notes that compute adds to its warnings, coded (the plan is
    made as compute makes it: its refusals are the same 422s)."""
    if not counters.requested(request):
        return []
    plan = counters.plan(request)
    if plan is None:
        return []
    first_skipped = int(plan.skipped[0]) if plan.skipped.size else None
    first_step = request.steps_per_epoch if request.interval == "epoch" else 1
    out = []
    for note in plan.notes:
        code, where = "uncoded", None
        for prefix, known, bites in COUNTER_NOTES:
            if prefix in note[: len(prefix) + 40]:
                code, where = known, bites
                break
        step = {"skipped": first_skipped, "scheduler": first_step}.get(where or "")
        out.append(Caveat(note, code, step))
    return out


def lint(request: specs.ScheduleRequest) -> LintResult:
    """Return every finding for ``request`` (see the module docstring)."""
    scaled = validate(request)
    warned = [*caveats.coded(scaled), *_counter_notes(scaled)]
    findings = [_finding(scaled, w, scheduler_step=False, warned=True) for w in warned]
    seen = {(f.code, f.message, f.step) for f in findings}
    for hazard in _hazards(scaled):
        found = _finding(scaled, hazard, scheduler_step=True)
        if (found.code, found.message, found.step) not in seen:
            seen.add((found.code, found.message, found.step))
            findings.append(found)
    return LintResult(findings=findings)
