"""The torch engine: real ``torch.optim`` optimizers and schedulers, stepped.

This is the ground truth. It builds the optimizer (one tiny parameter per group), the
scheduler objects a spec names, steps them as a training loop would and records every
group's lr (and momentum) after each step. The training jobs build their schedulers here too.

torch's own exceptions raised while building or stepping are turned into 422s at this
boundary (:class:`~service.errors.InvalidSpec`) naming the field and torch's reason.
"""

import time
import warnings
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch._dynamo
from torch.optim import lr_scheduler

from service.errors import InvalidSpec, LimitExceeded
from service.schedules import budget, specs
from service.schedules.expressions import ExpressionEvaluationError
from service.schedules.families import pytorch_warmup
from service.schedules.families import transformers as hf
from service.schedules.families.common import installed
from service.schedules.result import Computed

Loc = tuple[str | int, ...]


class _Failure(Exception):
    """A torch error located in the spec; converted to InvalidSpec by the caller."""

    def __init__(self, loc: Loc, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.loc = loc
        self.exc = exc


@contextmanager
def _located(loc: Loc):
    """Attribute any torch error raised inside to ``loc`` in the request body."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except _Failure:
        raise
    except ExpressionEvaluationError as exc:
        raise _Failure((*loc, "lr_lambda"), exc) from exc
    except (ValueError, TypeError, ArithmeticError, LookupError, RuntimeError) as exc:
        raise _Failure(loc, exc) from exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, NotImplementedError):
        return (
            "a SequentialLR restarts the scheduler at a milestone with step(0), which a nested "
            "SequentialLR or ChainedScheduler does not implement (torch raises "
            "NotImplementedError); put the nested one first or flatten it"
        )
    reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if isinstance(exc, ZeroDivisionError):
        reason = f"division by zero ({reason})"
    return reason


def _invalid(failure: _Failure, when: str) -> InvalidSpec:
    where = ".".join(str(p) for p in failure.loc[1:]) or "request"
    return InvalidSpec(
        f"{where}: torch refused this {when}: {_reason(failure.exc)}", loc=failure.loc
    )


# --------------------------------------------------------------------------- optimizer


def make_optimizer(
    optimizer: specs.OptimizerSpec,
    param_groups: Sequence[dict[str, Any]] | None,
    params: Sequence[Iterable[torch.nn.Parameter]] | None = None,
) -> torch.optim.Optimizer:
    """Return the real optimizer: one group per entry of ``param_groups`` (one when absent).

    ``params`` gives each group's parameters; by default each group gets one 1×1 parameter,
    which is all a schedule needs. Raises InvalidSpec when torch refuses the arguments.
    """
    overrides = list(param_groups or [{}])
    if params is None:
        params = [[torch.nn.Parameter(torch.zeros(1, 1))] for _ in overrides]
    groups = []
    for override, group_params in zip(overrides, params, strict=True):
        group: dict[str, Any] = {"params": list(group_params)}
        group.update({k: tuple(v) if isinstance(v, list) else v for k, v in override.items()})
        groups.append(group)
    cls = specs.optimizer_classes()[optimizer.type]
    try:
        with _located(("body", "optimizer")):
            return cls(groups, **optimizer.kwargs())
    except _Failure as failure:
        raise _invalid(failure, "optimizer") from None


# --------------------------------------------------------------------------- schedulers


def _build(
    optimizer: torch.optim.Optimizer,
    spec: specs.SchedulerBase,
    loc: Loc,
    span: int,
    built: dict[int, Any],
    closed: bool = False,
) -> lr_scheduler.LRScheduler:
    """Build the torch scheduler for ``spec``; ``span`` is how many steps it will cover.

    ``closed``: another library's schedule is built over its closed form (``build_closed``)
    instead of by the real library. Records in ``built`` which spec each torch scheduler was
    built from (by ``id``).
    """
    children = spec.children()
    if children:
        kids = [
            _build(optimizer, child, (*loc, "schedulers", i), child_span, built, closed)
            for i, (child, child_span) in enumerate(
                zip(children, spec.child_spans(span), strict=True)
            )
        ]
        with _located(loc):
            sched = spec.compose(optimizer, kids)
    else:
        with _located(loc):
            sched = spec.build_closed(optimizer, span) if closed else spec.build(optimizer, span)
    built[id(sched)] = spec
    return sched


def main_span(span: int, warmup: Any) -> int:
    """Return the scheduler steps the scheduler itself covers of ``span``, after a warmup that
    runs before it (pytorch_warmup's dampen it instead and take none)."""
    steps = getattr(warmup, "steps", None)
    return span if steps is None else max(span - steps, 1)


class Stepper:
    """A built schedule: the optimizer, its scheduler(s), and how one step advances them.

    ``step(metric)`` performs one scheduler step (``metric`` feeds ReduceLROnPlateau);
    ``lrs()`` and ``momenta()`` read the optimizer's groups as a training loop would see them.

    ``closed``: build other libraries' schedules and warmups from their closed forms (the
    vectorized engine reads those) rather than by the real library; None: the real library
    where it is installed.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler_spec: specs.SchedulerBase,
        warmup: Any,
        span: int,
        closed: bool | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.specs: dict[int, Any] = {}
        """The spec (scheduler or warmup) each torch scheduler was built from, by ``id``."""
        self.dampener = None
        if pytorch_warmup.is_pytorch_warmup(warmup):
            dampening, warmup = warmup, None
        else:
            dampening = None
        self.warmup_steps = warmup.steps if warmup else 0
        self.plateau = isinstance(scheduler_spec, specs.ReduceLROnPlateau) or getattr(
            scheduler_spec, "metric_driven", False
        )
        self._step_count = 0
        if closed is None:
            closed = not (installed(hf.LIBRARY) and installed(pytorch_warmup.LIBRARY))
        self._closed = bool(closed)
        try:
            if warmup is None:
                self.scheduler = self._build(scheduler_spec, span)
                self.warmup = None
            elif self.plateau:
                # SequentialLR refuses ReduceLROnPlateau; do what it does by hand: the warmup,
                # then at index W the lr restarts at its initial value and the plateau takes over.
                self.warmup = self._build_warmup(warmup)
                self.scheduler = self._build(scheduler_spec, span)
            else:
                first = self._build_warmup(warmup)
                main = self._build(scheduler_spec, main_span(span, warmup))
                with _located(("body", "warmup")):
                    self.scheduler = lr_scheduler.SequentialLR(
                        optimizer, [first, main], milestones=[warmup.steps]
                    )
                self.warmup = None
            self.undampened = self.lrs()
            if dampening is not None:
                # pytorch_warmup: built after the scheduler, it dampens whatever lr it sets
                with _located(("body", "warmup")):
                    self.dampener = pytorch_warmup.build(dampening, optimizer, closed=self._closed)
        except _Failure as failure:
            raise _invalid(failure, "scheduler") from None

    def _build(self, spec: specs.SchedulerBase, span: int) -> lr_scheduler.LRScheduler:
        return _build(self.optimizer, spec, ("body", "scheduler"), span, self.specs, self._closed)

    def _build_warmup(self, warmup: specs.LinearWarmup | specs.ConstantWarmup) -> Any:
        with _located(("body", "warmup")):
            sched = warmup.build(self.optimizer)
        self.specs[id(sched)] = warmup
        return sched

    def step(self, metric: float | None = None) -> None:
        """Advance the schedule by one scheduler step."""
        self._step_count += 1
        k = self._step_count
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.dampener is not None:
                with self.dampener.dampening():
                    self._advance(k, metric)
            else:
                self._advance(k, metric)

    def _advance(self, k: int, metric: float | None) -> None:
        if self.warmup is not None and k < self.warmup_steps:
            self.warmup.step()
        elif self.warmup is not None and k == self.warmup_steps:
            for group in self.optimizer.param_groups:
                group["lr"] = group["initial_lr"]
        elif self.plateau:
            self.scheduler.step(metric)
        else:
            self.scheduler.step()

    def lrs(self) -> list[float]:
        """Return every group's current lr."""
        return [float(group["lr"]) for group in self.optimizer.param_groups]

    def momenta(self) -> list[float]:
        """Return every group's current momentum, or beta1 for Adam-style optimizers."""
        out = []
        for group in self.optimizer.param_groups:
            if "momentum" in group:
                out.append(float(group["momentum"]))
            else:
                out.append(float(group["betas"][0]))
        return out


def wants_momentum(request: specs.ScheduleRequest, optimizer: torch.optim.Optimizer) -> bool:
    """Return True when ``request`` includes momentum; raise InvalidSpec when the optimizer
    has neither ``momentum`` nor ``betas`` in every group."""
    if "momentum" not in request.include:
        return False
    if not all("momentum" in g or "betas" in g for g in optimizer.param_groups):
        raise InvalidSpec(
            f"include 'momentum': torch.optim.{request.optimizer.type} has neither momentum "
            "nor betas; drop 'momentum' from include or choose an optimizer that has one.",
            loc=("body", "include"),
        )
    return True


def refused_step(loc: Loc, k: int, exc: BaseException) -> InvalidSpec:
    """Return the 422 for a scheduler step ``k`` that torch refused with ``exc``."""
    where = ".".join(str(p) for p in loc[1:])
    return InvalidSpec(f"{where}: torch refused scheduler step {k}: {_reason(exc)}", loc=loc)


def not_finite(bad: np.ndarray) -> InvalidSpec:
    """Return the 422 for the first non-finite lr in ``bad`` (groups × scheduler steps, True
    where the lr is not finite): the earliest step, and the first group at that step."""
    step = int(np.argmax(bad.any(axis=0)))
    group = int(np.argmax(bad[:, step]))
    return InvalidSpec(
        f"the lr of group {group} is not finite at scheduler step {step}; "
        "check the scheduler's parameters (e.g. lr_lambda or gamma).",
        loc=("body", "scheduler"),
    )


# --------------------------------------------------------------------------- run


def run_scheduler_steps(
    request: specs.ScheduleRequest, n: int, *, max_seconds: float | None = None
) -> Computed:
    """Return lr (and momentum when asked) per group at every scheduler step ``0..n-1``.

    ``request`` must already have batch scaling applied. Raises InvalidSpec for anything
    torch refuses, naming the field, and for a non-finite lr, naming the step; raises
    LimitExceeded when stepping takes longer than ``max_seconds``.
    """
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    optimizer = make_optimizer(request.optimizer, request.param_groups)
    stepper = Stepper(optimizer, request.scheduler, request.warmup, n, closed=False)
    want_momentum = wants_momentum(request, optimizer)
    metrics = request.metrics or []
    lr_rows: list[list[float]] = [stepper.lrs()]
    mom_rows: list[list[float]] = [stepper.momenta()] if want_momentum else []
    k = 0
    try:
        for k in range(1, n):
            metric = metrics[k - 1] if stepper.plateau else None
            with _located(("body", "scheduler")):
                stepper.step(metric)
            lr_rows.append(stepper.lrs())
            if want_momentum:
                mom_rows.append(stepper.momenta())
            if k % 256 == 0:
                budget.check()
            if deadline is not None and k % 1024 == 0 and time.monotonic() > deadline:
                raise LimitExceeded(
                    f"the torch engine stopped after {max_seconds:g} s at scheduler step {k} of "
                    f"{n}; lower steps or use engine 'auto' or "
                    "'vectorized'.",
                    loc=("body", "steps"),
                )
    except _Failure as failure:
        raise refused_step(failure.loc, k, failure.exc) from None
    lr = np.asarray(lr_rows, dtype=np.float64).T
    bad = ~np.isfinite(lr)
    if bad.any():
        raise not_finite(bad)
    return Computed(
        indices=np.arange(n, dtype=np.int64),
        lr=lr,
        momentum=np.asarray(mom_rows, dtype=np.float64).T if want_momentum else None,
        final_lr=[float(v) for v in lr[:, n - 1]],
        engine="torch",
        device="cpu",
    )
