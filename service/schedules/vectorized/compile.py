"""Compiling: a request's real torch objects, read once at step 0, as closed forms.

The real torch optimizer and schedulers are built once, without stepping, by
:mod:`~service.schedules.torch_engine`: that gives the base lrs, the momentum and lr at
step 0, and every construction-time refusal exactly as torch makes them. Each scheduler
becomes its :mod:`~service.schedules.vectorized.formulas` leaf; ``SequentialLR`` and
``ChainedScheduler`` become :mod:`~service.schedules.vectorized.composition` nodes.
A metric-driven root (``ReduceLROnPlateau``, timm's ``plateau``, transformers'
``reduce_lr_on_plateau`` and ``greedy``) becomes a :class:`~.plateau.MetricScan` over the
request's metrics, after the request's warmup as the torch engine steps it by hand.
"""

import bisect
from typing import Any

import numpy as np
import torch
from torch.optim import lr_scheduler

from service.schedules import specs, torch_engine
from service.schedules.families import pytorch_warmup
from service.schedules.families.adapters import lr_scales
from service.schedules.result import Computed
from service.schedules.vectorized import plateau
from service.schedules.vectorized.composition import Chained, Node, Segment, Sequential
from service.schedules.vectorized.evaluation import Program
from service.schedules.vectorized.formulas import Leaf, column
from service.schedules.vectorized.plateau import MetricScan


class Unsupported(Exception):
    """The spec cannot be evaluated by this engine (the reason is the message)."""


def _leaf(sched: lr_scheduler.LRScheduler, device: torch.device, built: dict[int, Any]) -> Leaf:
    """Return the closed form of ``sched``, as the spec it was built from declares it."""
    spec = built[id(sched)]
    leaf = spec.closed_form(sched, device)
    if leaf is None:  # pragma: no cover - unsupported_reason refuses these first
        raise Unsupported(f"{type(sched).__name__} is not supported by the vectorized engine")
    return leaf


def _node(
    sched: lr_scheduler.LRScheduler, device: torch.device, span: int, built: dict[int, Any]
) -> Node:
    if isinstance(sched, lr_scheduler.ChainedScheduler):
        return Chained([_node(child, device, span, built) for child in sched._schedulers])
    if isinstance(sched, lr_scheduler.SequentialLR):
        milestones = list(sched._milestones)
        if milestones != sorted(milestones):
            raise Unsupported("SequentialLR milestones that are not sorted")
        first = bisect.bisect_right(milestones, 0)
        segments = []
        for i, child in enumerate(sched._schedulers):
            start = 0 if i == first else (milestones[i - 1] if i > 0 else 0)
            end = milestones[i] if i < len(milestones) else span
            if i < first or start >= min(end, span):
                continue
            if isinstance(child, (lr_scheduler.SequentialLR, lr_scheduler.ChainedScheduler)):
                raise Unsupported(f"a {type(child).__name__} nested in a SequentialLR")
            segments.append(Segment(_leaf(child, device, built), start, end, restarted=i != first))
        return Sequential(segments)
    return _leaf(sched, device, built)


def is_metric_driven(spec: specs.SchedulerBase) -> bool:
    """Return True for a scheduler whose lr follows the request's metrics."""
    return isinstance(spec, specs.ReduceLROnPlateau) or bool(getattr(spec, "metric_driven", False))


def _metric_reason(request: specs.ScheduleRequest) -> str | None:
    root = request.scheduler
    for spec in specs.walk(root):
        if spec is not root and is_metric_driven(spec):
            return (
                f"{_metric_name(spec)} nested in a {root.type} is only stepped by the torch "
                "engine (it steps without a metric there); use engine 'torch' or 'auto'"
            )
    if (
        is_metric_driven(root)
        and request.warmup is not None
        and not pytorch_warmup.is_pytorch_warmup(request.warmup)
        and root.type == "timm"
    ):
        return (
            "a warmup before timm's plateau is only stepped by the torch engine (timm sets its "
            "own lr when it is built, over the warmup's); use timm's warmup_epochs, or engine "
            "'torch' or 'auto'"
        )
    return None


def _metric_name(spec: specs.SchedulerBase) -> str:
    selector = spec.selector
    return f"{spec.type} {getattr(spec, selector)!r}" if selector else spec.type


def unsupported_reason(request: specs.ScheduleRequest) -> str | None:
    """Return why the vectorized engine cannot compute ``request``, or None when it can."""
    reason = _metric_reason(request)
    if reason is not None:
        return reason
    for spec in specs.walk(request.scheduler):
        if is_metric_driven(spec):
            continue
        reason = spec.vectorized_unsupported()
        if reason is not None:
            return reason
    if (
        request.warmup is not None
        and not pytorch_warmup.is_pytorch_warmup(request.warmup)
        and request.scheduler.children()
    ):
        return (
            "a warmup before a SequentialLR or ChainedScheduler is only stepped by the torch "
            "engine; use engine 'torch' or 'auto'"
        )
    return None


def _warmup_leaf(
    stepper: torch_engine.Stepper, initial: list[float], device: torch.device, span: int
) -> Leaf:
    """Return the warmup before a metric-driven schedule: its closed form, or for LinearLR
    (start_factor > 0) its recursion, so that every value is the torch engine's bit."""
    spec = stepper.specs[id(stepper.warmup)]
    if isinstance(spec, specs.LinearWarmup) and spec.start_factor > 0:
        run = lambda: plateau.linear_lr(initial, spec.start_factor, spec.steps, span)  # noqa: E731
        return MetricScan(column(initial, device), schedule=plateau.MetricSchedule(run))
    return _leaf(stepper.warmup, device, stepper.specs)


def _metric_node(
    request: specs.ScheduleRequest, stepper: torch_engine.Stepper, device: torch.device, n: int
) -> Node:
    """Return the metric-driven root as a scan over the metrics it reads.

    Without a warmup it steps from scheduler step 1 (metrics[k - 1] at step k). After a
    warmup of W steps (stepped by hand, as the torch engine does: SequentialLR refuses
    ReduceLROnPlateau) the lr restarts at each group's initial lr at step W and the scan
    takes over from there, reading metrics[W:]; the warmup is its closed form before W.
    """
    spec = request.scheduler
    groups = stepper.optimizer.param_groups
    built = list(stepper.undampened)
    initial = [float(g.get("initial_lr", g["lr"])) for g in groups]
    w = stepper.warmup_steps if stepper.warmup is not None else 0
    metrics = list(request.metrics or [])[w : n - 1]
    span = n - w
    start = initial if w else built
    scales = lr_scales(spec, groups)
    leaf = MetricScan(
        column(start, device),
        schedule=spec.metric_schedule(  # type: ignore[attr-defined]
            start=start,
            built=built,
            initial=initial,
            metrics=metrics,
            span=max(span, 1),
            **({} if scales is None else {"scales": scales}),
        ),
    )
    if not w:
        return leaf
    segments = [Segment(_warmup_leaf(stepper, initial, device, min(w, n)), 0, w, restarted=False)]
    if w < n:
        segments.append(Segment(leaf, w, n, restarted=True))
    return Sequential(segments)


def compile_request(request: specs.ScheduleRequest, n: int, device: torch.device) -> Program:
    """Return the compiled schedule of ``request`` (batch scaling applied) over ``n`` steps.

    Builds the real torch optimizer and schedulers (so torch's construction-time refusals are
    raised as InvalidSpec, as by the torch engine) and reads their state at step 0.
    """
    reason = unsupported_reason(request)
    if reason is not None:
        raise Unsupported(reason)
    optimizer = torch_engine.make_optimizer(request.optimizer, request.param_groups)
    stepper = torch_engine.Stepper(optimizer, request.scheduler, request.warmup, n, closed=True)
    want_momentum = torch_engine.wants_momentum(request, optimizer)
    groups = optimizer.param_groups
    if stepper.plateau:
        root = _metric_node(request, stepper, device, n)
    else:
        root = _node(stepper.scheduler, device, n, stepper.specs)
    return Program(
        root=root,
        n=n,
        lr0=column(stepper.undampened, device),
        momentum0=column(stepper.momenta(), device) if want_momentum else None,
        anchor=column([g.get("initial_lr", g["lr"]) for g in groups], device),
        device=device,
        dampen=None if stepper.dampener is None else stepper.dampener.omega,
    )


def run(
    request: specs.ScheduleRequest, steps: np.ndarray, n: int, device: torch.device
) -> Computed:
    """Return lr (and momentum when asked) per group at scheduler ``steps`` of ``0..n-1``.

    ``request`` must already have batch scaling applied. Raises InvalidSpec exactly where
    the torch engine does (construction, a refused step, a non-finite lr).
    """
    program = compile_request(request, n, device)
    return program.result(torch.as_tensor(steps, dtype=torch.int64).to(device))
