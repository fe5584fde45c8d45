"""Compiling: a request's real torch objects, read once at step 0, as closed forms.

The real torch optimizer and schedulers are built once, without stepping, by
:mod:`~service.schedules.torch_engine`: that gives the base lrs, the momentum and lr at
step 0, and every construction-time refusal exactly as torch makes them. Each scheduler
becomes its :mod:`~service.schedules.vectorized.formulas` leaf; ``SequentialLR`` and
``ChainedScheduler`` become :mod:`~service.schedules.vectorized.composition` nodes.
``ReduceLROnPlateau`` depends on the metric values and is left to the torch engine.
"""

import bisect
from collections.abc import Callable

import torch
from torch.optim import lr_scheduler
from torch.optim.swa_utils import SWALR as TorchSWALR

from service.schedules import specs, torch_engine
from service.schedules.families import pytorch_warmup
from service.schedules.vectorized.composition import Chained, Node, Segment, Sequential
from service.schedules.vectorized.evaluation import Program
from service.schedules.vectorized.formulas import (
    Constant,
    Cosine,
    Cyclic,
    Exponential,
    Lambda,
    Leaf,
    Linear,
    Multiplicative,
    MultiStep,
    OneCycle,
    Polynomial,
    Step,
    Swa,
    Tensor,
    WarmRestarts,
    column,
)


class Unsupported(Exception):
    """The spec cannot be evaluated by this engine (the reason is the message)."""


def _lambda_fn(fn: object) -> Callable[[Tensor], Tensor]:
    if isinstance(fn, torch_engine._LinearFromZero):
        steps = fn.steps
        return lambda e: e / steps
    evaluate = getattr(fn, "evaluate_tensor", None)
    if evaluate is None:  # pragma: no cover - every lr_lambda the service builds has one
        raise Unsupported("an lr_lambda that is not an expression")
    return evaluate


def _lambda_fns(lambdas: list[object]) -> tuple[Callable[[Tensor], Tensor], ...]:
    """Return one function per group; groups sharing an lr_lambda share the function object,
    so :meth:`Lambda.factor` evaluates each distinct expression once."""
    made: dict[int, Callable[[Tensor], Tensor]] = {}
    for fn in lambdas:
        if id(fn) not in made:
            made[id(fn)] = _lambda_fn(fn)
    return tuple(made[id(fn)] for fn in lambdas)


def _leaf(sched: lr_scheduler.LRScheduler, device: torch.device) -> Leaf:
    base = column(sched.base_lrs, device)
    groups = sched.optimizer.param_groups
    if isinstance(sched, lr_scheduler.MultiplicativeLR):
        return Multiplicative(base, fns=_lambda_fns(sched.lr_lambdas))
    if isinstance(sched, lr_scheduler.LambdaLR):
        fns = _lambda_fns(sched.lr_lambdas)
        plain = all(isinstance(f, torch_engine._LinearFromZero) for f in sched.lr_lambdas)
        keys = tuple(("linear_from_zero", f.steps) for f in sched.lr_lambdas) if plain else None
        return Lambda(base, fns=fns, lambda_field=not plain, fn_keys=keys)
    if isinstance(sched, lr_scheduler.StepLR):
        return Step(base, step_size=sched.step_size, gamma=sched.gamma)
    if isinstance(sched, lr_scheduler.MultiStepLR):
        return MultiStep(base, milestones=tuple(sched.milestones.elements()), gamma=sched.gamma)
    if isinstance(sched, lr_scheduler.ConstantLR):
        return Constant(base, factor=sched.factor, total_iters=sched.total_iters)
    if isinstance(sched, lr_scheduler.LinearLR):
        return Linear(
            base,
            start_factor=sched.start_factor,
            end_factor=sched.end_factor,
            total_iters=sched.total_iters,
        )
    if isinstance(sched, lr_scheduler.ExponentialLR):
        return Exponential(base, gamma=sched.gamma)
    if isinstance(sched, lr_scheduler.PolynomialLR):
        return Polynomial(base, total_iters=sched.total_iters, power=sched.power)
    if isinstance(sched, lr_scheduler.CosineAnnealingLR):
        return Cosine(base, T_max=sched.T_max, eta_min=sched.eta_min)
    if isinstance(sched, lr_scheduler.CosineAnnealingWarmRestarts):
        return WarmRestarts(base, T_0=sched.T_0, T_mult=sched.T_mult, eta_min=sched.eta_min)
    if isinstance(sched, lr_scheduler.CyclicLR):
        cyc = sched.cycle_momentum
        return Cyclic(
            base,
            max_lr=column(sched.max_lrs, device),
            total_size=sched.total_size,
            step_ratio=sched.step_ratio,
            mode=sched.mode,
            gamma=sched.gamma,
            scale_mode=sched.scale_mode,
            base_momentum=column(sched.base_momentums, device) if cyc else None,
            max_momentum=column(sched.max_momentums, device) if cyc else None,
        )
    if isinstance(sched, lr_scheduler.OneCycleLR):
        keys = ("initial_lr", "max_lr", "min_lr")
        if sched.cycle_momentum:
            keys += ("base_momentum", "max_momentum")
        phases = tuple(
            (
                float(p["end_step"]),
                p["start_lr"],
                p["end_lr"],
                p["start_momentum"],
                p["end_momentum"],
            )
            for p in sched._schedule_phases
        )
        return OneCycle(
            base,
            total_steps=sched.total_steps,
            phases=phases,
            values={key: column([g[key] for g in groups], device) for key in keys},
            cos=sched._anneal_func_type == "cos",
            cycle_momentum=sched.cycle_momentum,
        )
    if isinstance(sched, TorchSWALR):
        return Swa(
            base,
            swa_lr=column([g["swa_lr"] for g in groups], device),
            anneal_epochs=sched.anneal_epochs,
            cos=sched._anneal_strategy == "cos",
        )
    raise Unsupported(f"{type(sched).__name__} is not supported by the vectorized engine")


def _node(sched: lr_scheduler.LRScheduler, device: torch.device, span: int) -> Node:
    if isinstance(sched, lr_scheduler.ChainedScheduler):
        return Chained([_node(child, device, span) for child in sched._schedulers])
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
            segments.append(Segment(_leaf(child, device), start, end, restarted=i != first))
        return Sequential(segments)
    return _leaf(sched, device)


def unsupported_reason(request: specs.ScheduleRequest) -> str | None:
    """Return why the vectorized engine cannot compute ``request``, or None when it can."""
    for spec in specs.walk(request.scheduler):
        if isinstance(spec, specs.ReduceLROnPlateau):
            return (
                "ReduceLROnPlateau depends on the metric values step by step, so it has no "
                "closed form; use engine 'torch' or 'auto'"
            )
        if getattr(spec, "metric_driven", False):
            return (
                f"{spec.type} {spec.name!r} depends on the metric values step by step, so it "  # type: ignore[attr-defined]
                "has no closed form; use engine 'torch' or 'auto'"
            )
    nested = (specs.SequentialLR, specs.ChainedScheduler)
    for spec in specs.walk(request.scheduler):
        if isinstance(spec, specs.SequentialLR):
            if list(spec.milestones) != sorted(spec.milestones):
                return (
                    "SequentialLR milestones that are not sorted are only stepped by the torch "
                    "engine; use engine 'torch' or 'auto'"
                )
            if any(isinstance(child, nested) for child in spec.schedulers):
                return (
                    "a SequentialLR or ChainedScheduler nested in a SequentialLR is only "
                    "stepped by the torch engine; use engine 'torch' or 'auto'"
                )
    if (
        request.warmup is not None
        and not pytorch_warmup.is_pytorch_warmup(request.warmup)
        and isinstance(request.scheduler, nested)
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
    root = _node(stepper.scheduler, device, n)
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
