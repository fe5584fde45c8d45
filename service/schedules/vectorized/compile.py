"""Compiling: a request's real torch objects, read once at step 0, as closed forms.

The real torch optimizer and schedulers are built once, without stepping, by
:mod:`~service.schedules.torch_engine`: that gives the base lrs, the momentum and lr at
step 0, and every construction-time refusal exactly as torch makes them. Each scheduler
becomes its :mod:`~service.schedules.vectorized.formulas` leaf; ``SequentialLR`` and
``ChainedScheduler`` become :mod:`~service.schedules.vectorized.composition` nodes.
``ReduceLROnPlateau`` depends on the metric values and is left to the torch engine.
"""

import bisect
from typing import Any

import numpy as np
import torch
from torch.optim import lr_scheduler

from service.schedules import specs, torch_engine
from service.schedules.families import pytorch_warmup
from service.schedules.result import Computed
from service.schedules.vectorized.composition import Chained, Node, Segment, Sequential
from service.schedules.vectorized.evaluation import Program
from service.schedules.vectorized.formulas import Leaf, column


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


def unsupported_reason(request: specs.ScheduleRequest) -> str | None:
    """Return why the vectorized engine cannot compute ``request``, or None when it can."""
    for spec in specs.walk(request.scheduler):
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
    root = _node(stepper.scheduler, device, n, stepper.specs)
    groups = optimizer.param_groups
    return Program(
        root=root,
        n=n,
        lr0=column(stepper.undampened, device),
        momentum0=column(stepper.momenta(), device) if want_momentum else None,
        anchor=column([g["initial_lr"] for g in groups], device),
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
