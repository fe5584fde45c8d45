"""torch's own schedulers: ``torch.optim.lr_scheduler`` and ``torch.optim.swa_utils.SWALR``.

Each class is ``{"type": <torch class name>, ...its keyword arguments}`` with torch's defaults,
and declares how it is built, its closed form and its warnings (see
:mod:`service.schedules.registry`).
"""

from collections import Counter
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field, PrivateAttr, ValidationError, model_validator
from pydantic_core import PydanticCustomError
from torch.optim import lr_scheduler
from torch.optim.swa_utils import SWALR as TorchSWALR

from service.schedules.base import IntList, NonNegInt, Number, PerGroup, PosInt
from service.schedules.codes import caveat
from service.schedules.expressions import Expression, ExpressionError, parse_expression
from service.schedules.registry import SchedulerBase, SchedulerSpec, register, uses_schedulers
from service.schedules.vectorized import formulas
from service.settings import current_settings

if TYPE_CHECKING:
    from torch.optim.lr_scheduler import LRScheduler

    from service.schedules.specs import ScheduleRequest

_TIMES = {2: "twice", 3: "three times"}


def _times(n: int) -> str:
    return _TIMES.get(n, f"{n} times")


def _sets_lr(request: "ScheduleRequest") -> bool:
    return "lr" in request.optimizer.model_fields_set or any(
        "lr" in group for group in request.param_groups or []
    )


def _sets_momentum(request: "ScheduleRequest") -> bool:
    return "momentum" in (request.optimizer.model_extra or {}) or bool(request.param_groups)


def _cycle_caveats(
    kind: str, start: str, cycle_momentum: bool, request: "ScheduleRequest"
) -> list[str]:
    """Return the warnings of a per-batch cyclic schedule (CyclicLR, OneCycleLR) in
    ``request``: stepped per epoch, the optimizer's lr or momentum given but overwritten."""
    out = []
    if request.interval == "epoch":
        out.append(
            caveat(
                "cyclic-stepped-per-epoch",
                f"{kind} is meant to be stepped after every batch, not every epoch",
            )
        )
    if _sets_lr(request):
        out.append(
            caveat(
                "cyclic-replaces-lr",
                f"{kind} replaces the optimizer's lr: every group starts at {start} "
                "(the optimizer's lr is not used)",
                0,
            )
        )
    if cycle_momentum and _sets_momentum(request):
        out.append(
            caveat(
                "cyclic-overwrites-momentum",
                f"{kind} with cycle_momentum=True overwrites the optimizer's momentum "
                "(it cycles between base_momentum and max_momentum)",
                0,
            )
        )
    return out


# --------------------------------------------------------------------------- lr_lambda


LambdaSource = Annotated[
    str | list[Annotated[str, Field(min_length=1)]],
    Field(
        description="An expression in `epoch` (the scheduler's step count), or one per param "
        "group. Numbers, + - * / // % **, comparisons, `a if cond else b`, and/or/not, "
        "min/max/abs, exp/log/log2/log10/sqrt/sin/cos/tan/tanh/floor/ceil, pi, e.",
        examples=["0.95 ** epoch"],
    ),
]


class _LambdaBase(SchedulerBase):
    """A scheduler whose ``lr_lambda`` is parsed once, when the spec is validated."""

    lr_lambda: LambdaSource
    _parsed: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _parse(self) -> "_LambdaBase":
        settings = current_settings()
        sources = [self.lr_lambda] if isinstance(self.lr_lambda, str) else self.lr_lambda
        parsed: list[Expression] = []
        seen: dict[str, Expression] = {}
        for source in sources:
            if source in seen:  # one Expression per distinct text: evaluated once per step
                parsed.append(seen[source])
                continue
            try:
                parsed.append(
                    parse_expression(
                        source,
                        max_length=settings.expression_max_length,
                        max_depth=settings.expression_max_depth,
                        max_nodes=settings.expression_max_nodes,
                    )
                )
            except ExpressionError as exc:
                error = PydanticCustomError(
                    "expression", f"lr_lambda {source[:60]!r}: {exc.message}"
                )
                raise ValidationError.from_exception_data(
                    type(self).__name__,
                    [{"type": error, "loc": ("lr_lambda",), "input": source}],
                ) from None
            seen[source] = parsed[-1]
        self._parsed = parsed[0] if isinstance(self.lr_lambda, str) else parsed
        return self

    def build(self, optimizer: torch.optim.Optimizer, span: int) -> "LRScheduler":
        assert self.torch_class is not None
        return self.torch_class(optimizer, self._parsed)


@register
class LambdaLR(_LambdaBase):
    """Sets each group's lr to its initial lr times ``lr_lambda(epoch)``.

    ``lr = base_lr * lr_lambda(epoch)``. torch: ``LambdaLR(optimizer, lr_lambda)``.
    """

    type: Literal["LambdaLR"] = "LambdaLR"
    cost_per_step: ClassVar[float] = 45.0
    # measured 82 + 32 × groups ns a step with '0.95 ** epoch' (its 3 operations: 36)
    cost_per_value: ClassVar[float] = 32.0
    torch_class = lr_scheduler.LambdaLR
    examples = [{"type": "LambdaLR", "lr_lambda": "0.95 ** epoch"}]

    def closed_form(self, sched: "LRScheduler", device: torch.device) -> formulas.Leaf:
        return formulas.Lambda.of(sched, device)


@register
class MultiplicativeLR(_LambdaBase):
    """Multiplies each group's lr by ``lr_lambda(epoch)`` at every step after the first.

    ``lr_epoch = lr_(epoch-1) * lr_lambda(epoch)``.
    torch: ``MultiplicativeLR(optimizer, lr_lambda)``.
    """

    type: Literal["MultiplicativeLR"] = "MultiplicativeLR"
    cost_per_step: ClassVar[float] = 15.0
    # measured 51 + 74 × groups (a cumulative product; its lr_lambda's 3 operations: 36)
    cost_per_value: ClassVar[float] = 75.0
    torch_class = lr_scheduler.MultiplicativeLR
    examples = [{"type": "MultiplicativeLR", "lr_lambda": "0.95"}]

    def closed_form(self, sched: "LRScheduler", device: torch.device) -> formulas.Leaf:
        return formulas.Multiplicative.of(sched, device)


# --------------------------------------------------------------------------- decays


@register
class StepLR(SchedulerBase):
    """Decays each group's lr by ``gamma`` every ``step_size`` steps.

    ``lr = base_lr * gamma ** (epoch // step_size)``.
    torch: ``StepLR(optimizer, step_size, gamma=0.1)``.
    """

    type: Literal["StepLR"] = "StepLR"
    cost_per_step: ClassVar[float] = 30.0
    cost_per_value: ClassVar[float] = 5.0  # measured 29 + 5 × groups
    step_size: PosInt = Field(description="Period of the decay, in scheduler steps.")
    gamma: Number = Field(default=0.1, description="Multiplicative factor of the decay.")
    torch_class = lr_scheduler.StepLR
    examples = [{"type": "StepLR", "step_size": 30, "gamma": 0.65}]

    def closed_form(self, sched: "LRScheduler", device: torch.device) -> formulas.Leaf:
        return formulas.Step.of(sched, device)

    def caveats(self, span: int) -> list[str]:
        if self.step_size >= span:
            return [
                caveat(
                    "step-size-beyond-end",
                    f"StepLR step_size={self.step_size} is not shorter than the {span} "
                    "scheduler steps of this schedule: the lr never changes",
                )
            ]
        if self.gamma > 1:
            return [
                caveat(
                    "lr-grows",
                    f"StepLR gamma={self.gamma} > 1: the lr grows instead of decaying",
                    self.step_size,
                )
            ]
        return []


@register
class MultiStepLR(SchedulerBase):
    """Decays each group's lr by ``gamma`` at each milestone.

    ``lr = base_lr * gamma ** (number of milestones <= epoch)``; a milestone listed twice
    counts twice. torch: ``MultiStepLR(optimizer, milestones, gamma=0.1)``.
    """

    type: Literal["MultiStepLR"] = "MultiStepLR"
    cost_per_step: ClassVar[float] = 25.0
    cost_per_value: ClassVar[float] = 7.0  # measured 23 + 7 × groups
    milestones: IntList = Field(
        max_length=10_000, description="Scheduler steps at which gamma is applied."
    )
    gamma: Number = Field(default=0.1, description="Multiplicative factor of the decay.")
    torch_class = lr_scheduler.MultiStepLR
    examples = [{"type": "MultiStepLR", "milestones": [200, 300, 320, 340, 200], "gamma": 0.8}]
    example_request = {"steps": 400}

    def closed_form(self, sched: "LRScheduler", device: torch.device) -> formulas.Leaf:
        return formulas.MultiStep.of(sched, device)

    def caveats(self, span: int) -> list[str]:
        out = []
        unreached = sorted({m for m in self.milestones if m >= span})
        if unreached:
            out.append(
                caveat(
                    "milestones-unreached",
                    f"MultiStepLR milestones {unreached} lie at or past scheduler step {span}, "
                    "the end of this schedule: they never apply",
                )
            )
        for milestone, count in sorted(Counter(self.milestones).items()):
            if count > 1:
                out.append(
                    caveat(
                        "milestone-repeated",
                        f"milestone {milestone} is listed {_times(count)}: torch applies gamma "
                        f"{_times(count)} at step {milestone}",
                        milestone,
                    )
                )
        if list(self.milestones) != sorted(self.milestones):
            out.append(
                caveat(
                    "milestones-unsorted",
                    f"MultiStepLR milestones {self.milestones} are not sorted: torch counts "
                    "them, so the order does not change the schedule",
                )
            )
        if self.gamma > 1:
            out.append(
                caveat(
                    "lr-grows",
                    f"MultiStepLR gamma={self.gamma} > 1: the lr grows at every milestone",
                    min(self.milestones) if self.milestones else None,
                )
            )
        return out


@register
class ConstantLR(SchedulerBase):
    """Multiplies each group's lr by ``factor`` until step ``total_iters``, then restores it.

    torch: ``ConstantLR(optimizer, factor=1/3, total_iters=5)``.
    """

    type: Literal["ConstantLR"] = "ConstantLR"
    cost_per_step: ClassVar[float] = 3.0
    cost_per_value: ClassVar[float] = 5.0  # measured 2.5 + 5.1 × groups
    factor: Number = Field(default=1.0 / 3, ge=0.0, le=1.0, description="Factor while active.")
    total_iters: NonNegInt = Field(default=5, description="Steps the factor is applied.")
    torch_class = lr_scheduler.ConstantLR
    examples = [{"type": "ConstantLR", "factor": 0.1, "total_iters": 400}]

    def closed_form(self, sched: "LRScheduler", device: torch.device) -> formulas.Leaf:
        return formulas.Constant.of(sched, device)


@register
class LinearLR(SchedulerBase):
    """Moves the lr factor linearly from ``start_factor`` to ``end_factor`` over ``total_iters``.

    torch: ``LinearLR(optimizer, start_factor=1/3, end_factor=1.0, total_iters=5)``.
    """

    type: Literal["LinearLR"] = "LinearLR"
    cost_per_step: ClassVar[float] = 3.0
    cost_per_value: ClassVar[float] = 7.0  # measured 2.7 + 6.7 × groups
    start_factor: Number = Field(
        default=1.0 / 3, gt=0.0, le=1.0, description="Factor at step 0 (0 < f <= 1)."
    )
    end_factor: Number = Field(default=1.0, ge=0.0, le=1.0, description="Factor at the end.")
    total_iters: NonNegInt = Field(default=5, description="Steps of the ramp.")
    torch_class = lr_scheduler.LinearLR
    examples = [{"type": "LinearLR", "start_factor": 0.01, "end_factor": 1.0, "total_iters": 100}]

    def closed_form(self, sched: "LRScheduler", device: torch.device) -> formulas.Leaf:
        return formulas.Linear.of(sched, device)


@register
class ExponentialLR(SchedulerBase):
    """Decays each group's lr by ``gamma`` every step.

    ``lr = base_lr * gamma ** epoch``. torch: ``ExponentialLR(optimizer, gamma)``.
    """

    type: Literal["ExponentialLR"] = "ExponentialLR"
    cost_per_step: ClassVar[float] = 26.0
    cost_per_value: ClassVar[float] = 5.0  # measured 26 + 4.9 × groups
    gamma: Number = Field(description="Multiplicative factor per step.")
    torch_class = lr_scheduler.ExponentialLR
    examples = [{"type": "ExponentialLR", "gamma": 0.98}]

    def closed_form(self, sched: "LRScheduler", device: torch.device) -> formulas.Leaf:
        return formulas.Exponential.of(sched, device)

    def caveats(self, span: int) -> list[str]:
        if self.gamma > 1:
            return [
                caveat(
                    "lr-grows",
                    f"ExponentialLR gamma={self.gamma} > 1: the lr grows instead of decaying",
                    1,
                )
            ]
        return []


@register
class SequentialLR(SchedulerBase):
    """Runs ``schedulers`` one after another, switching at each of ``milestones``.

    At a milestone the next scheduler restarts at its own step 0. torch:
    ``SequentialLR(optimizer, schedulers, milestones)``.
    """

    type: Literal["SequentialLR"] = "SequentialLR"

    def vectorized_cost(self, steps: int, groups: int) -> float:
        """Return the segments' own weight (10 a value: each segment's slice of the result,
        measured [LinearLR, CosineAnnealingLR] 23 + 20 × groups ns a step, its leaves
        15 + 15); the children are counted themselves."""
        return steps * groups * 10.0

    schedulers: list[SchedulerSpec] = Field(min_length=1, description="The schedulers, in order.")
    milestones: IntList = Field(description="One fewer than schedulers: where each starts.")
    torch_class = lr_scheduler.SequentialLR
    examples = [
        {
            "type": "SequentialLR",
            "schedulers": [
                {"type": "ConstantLR", "factor": 0.1, "total_iters": 20},
                {"type": "ExponentialLR", "gamma": 0.9},
            ],
            "milestones": [20],
        }
    ]

    def children(self) -> list[SchedulerBase]:
        return list(self.schedulers)

    def child_spans(self, span: int) -> list[int]:
        """Return the scheduler steps each child runs within ``span``: from its milestone to
        the next one or the end of the schedule, whichever comes first (at least 1)."""
        bounds = [0, *self.milestones]
        out = []
        for i in range(len(self.schedulers)):
            start = bounds[i] if i < len(bounds) else span
            end = bounds[i + 1] if i + 1 < len(bounds) else span
            out.append(max(min(end, span) - min(start, span), 1))
        return out

    def compose(
        self, optimizer: torch.optim.Optimizer, children: list["LRScheduler"]
    ) -> "LRScheduler":
        return lr_scheduler.SequentialLR(optimizer, children, list(self.milestones))

    def vectorized_unsupported(self) -> str | None:
        if list(self.milestones) != sorted(self.milestones):
            return (
                "SequentialLR milestones that are not sorted are only stepped by the torch "
                "engine; use engine 'torch' or 'auto'"
            )
        if any(child.children() for child in self.schedulers):
            return (
                "a SequentialLR or ChainedScheduler nested in a SequentialLR is only "
                "stepped by the torch engine; use engine 'torch' or 'auto'"
            )
        return None

    def caveats(self, span: int) -> list[str]:
        out = []
        if list(self.milestones) != sorted(self.milestones):
            out.append(
                caveat(
                    "sequential-milestones-unsorted",
                    f"SequentialLR milestones {self.milestones} are not sorted: torch bisects "
                    "them as given, so schedulers may be skipped or run out of order",
                )
            )
        if 0 in self.milestones:
            out.append(
                caveat(
                    "sequential-milestone-zero",
                    "SequentialLR milestone 0: the scheduler before it never runs; the next "
                    "one starts at step 0",
                    0,
                )
            )
        return out


@register
class PolynomialLR(SchedulerBase):
    """Decays each group's lr by a polynomial of power ``power`` to 0 at ``total_iters``.

    ``lr = base_lr * (1 - min(epoch, total_iters) / total_iters) ** power``.
    torch: ``PolynomialLR(optimizer, total_iters=5, power=1.0)``.
    """

    type: Literal["PolynomialLR"] = "PolynomialLR"
    cost_per_step: ClassVar[float] = 7.0
    cost_per_value: ClassVar[float] = 8.0  # measured 6.7 + 7.8 × groups
    total_iters: NonNegInt = Field(default=5, description="Steps until the lr reaches 0.")
    power: Number = Field(default=1.0, description="Power of the polynomial.")
    torch_class = lr_scheduler.PolynomialLR
    examples = [{"type": "PolynomialLR", "total_iters": 100, "power": 2.0}]

    def closed_form(self, sched: "LRScheduler", device: torch.device) -> formulas.Leaf:
        return formulas.Polynomial.of(sched, device)

    def caveats(self, span: int) -> list[str]:
        if self.total_iters == 0:
            return [
                caveat(
                    "polynomial-zero-iters",
                    "PolynomialLR total_iters=0: the lr stays at its initial value",
                )
            ]
        return []


@register
class CosineAnnealingLR(SchedulerBase):
    """Anneals each group's lr along a cosine from its initial lr to ``eta_min`` in ``T_max`` steps.

    torch uses a recursive form, so past ``T_max`` the lr rises again along the cosine.
    torch: ``CosineAnnealingLR(optimizer, T_max, eta_min=0.0)``.
    """

    type: Literal["CosineAnnealingLR"] = "CosineAnnealingLR"
    cost_per_step: ClassVar[float] = 12.0
    cost_per_value: ClassVar[float] = 8.0  # measured 11 + 7.8 × groups
    T_max: PosInt = Field(description="Half period of the cosine, in scheduler steps.")
    eta_min: Number = Field(default=0.0, description="Minimum learning rate.")
    torch_class = lr_scheduler.CosineAnnealingLR
    lr_fields = ("eta_min",)
    examples = [{"type": "CosineAnnealingLR", "T_max": 150, "eta_min": 0.0}]

    def closed_form(self, sched: "LRScheduler", device: torch.device) -> formulas.Leaf:
        return formulas.Cosine.of(sched, device)

    def caveats(self, span: int) -> list[str]:
        if span > self.T_max + 1:
            return [
                caveat(
                    "cosine-rises-after-t-max",
                    f"CosineAnnealingLR with T_max={self.T_max} runs for {span - 1} steps: past "
                    f"step {self.T_max} torch's lr rises again along the cosine (period "
                    f"{2 * self.T_max}); use a longer T_max or CosineAnnealingWarmRestarts to "
                    "restart instead",
                    self.T_max + 1,
                )
            ]
        return []


@register
class ChainedScheduler(SchedulerBase):
    """Steps every one of ``schedulers`` at each step, so their effects multiply.

    torch: ``ChainedScheduler(schedulers)``.
    """

    type: Literal["ChainedScheduler"] = "ChainedScheduler"
    schedulers: list[SchedulerSpec] = Field(min_length=1, description="Stepped together.")
    torch_class = lr_scheduler.ChainedScheduler
    examples = [
        {
            "type": "ChainedScheduler",
            "schedulers": [
                {"type": "ConstantLR", "factor": 0.1, "total_iters": 2},
                {"type": "ExponentialLR", "gamma": 0.9},
            ],
        }
    ]

    def children(self) -> list[SchedulerBase]:
        return list(self.schedulers)

    def compose(
        self, optimizer: torch.optim.Optimizer, children: list["LRScheduler"]
    ) -> "LRScheduler":
        return lr_scheduler.ChainedScheduler(children, optimizer)


@register
class ReduceLROnPlateau(SchedulerBase):
    """Multiplies the lr by ``factor`` when the metric stops improving for ``patience`` steps.

    Driven by the request's ``metrics`` (one value per scheduler step).
    torch: ``ReduceLROnPlateau(optimizer, mode='min', factor=0.1, patience=10,
    threshold=1e-4, threshold_mode='rel', cooldown=0, min_lr=0, eps=1e-8)``.
    """

    type: Literal["ReduceLROnPlateau"] = "ReduceLROnPlateau"
    cost_per_step: ClassVar[float] = 0.0
    cost_per_value: ClassVar[float] = 17.0  # measured 17 a value besides the scan's 450 a step
    mode: Literal["min", "max"] = "min"
    factor: Number = Field(default=0.1, lt=1.0, description="Reduction factor (< 1).")
    patience: NonNegInt = Field(default=10, description="Steps without improvement.")
    threshold: Number = Field(default=1e-4, description="Least change that counts as better.")
    threshold_mode: Literal["rel", "abs"] = "rel"
    cooldown: NonNegInt = Field(default=0, description="Steps to wait after a reduction.")
    min_lr: PerGroup = Field(default=0.0, description="Lower bound on the lr, or one per group.")
    eps: Number = Field(default=1e-8, description="Smaller reductions are ignored.")
    torch_class = lr_scheduler.ReduceLROnPlateau
    lr_fields = ("min_lr",)
    examples = [{"type": "ReduceLROnPlateau", "mode": "min", "factor": 0.5, "patience": 2}]
    example_request = {"steps": 10, "metrics": [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.85, 0.85, 0.85]}

    def vectorized_unsupported(self) -> str | None:
        return None  # the vectorized engine scans the metrics (vectorized/plateau.py)

    def plateau_rule(self, groups: int) -> Any:
        """Return torch's state machine with this spec's arguments, for ``groups`` groups."""
        from service.schedules.vectorized import plateau

        return plateau.PlateauRule.of(self, groups)

    def metric_schedule(
        self,
        *,
        start: list[float],
        built: list[float],
        initial: list[float],
        metrics: list[float],
        span: int,
    ) -> Any:
        """Return the vectorized engine's scan: torch's reductions from ``start``."""
        from service.schedules.vectorized import plateau

        rule = self.plateau_rule(len(start))
        return plateau.MetricSchedule(lambda: rule.scan(start, metrics, span))


# --------------------------------------------------------------------------- cycles


@register
class CyclicLR(SchedulerBase):
    """Cycles each group's lr between ``base_lr`` and ``max_lr`` (Smith, 2017), momentum inversely.

    torch: ``CyclicLR(optimizer, base_lr, max_lr, step_size_up=2000, step_size_down=None,
    mode='triangular', gamma=1.0, scale_mode='cycle', cycle_momentum=True, base_momentum=0.8,
    max_momentum=0.9)``. Custom ``scale_fn`` callables are not accepted over HTTP.
    """

    type: Literal["CyclicLR"] = "CyclicLR"
    cost_per_step: ClassVar[float] = 28.0
    cost_per_value: ClassVar[float] = 6.0  # measured 28 + 6 × groups
    base_lr: PerGroup = Field(description="Lower lr bound of the cycle, or one per group.")
    max_lr: PerGroup = Field(description="Upper lr bound of the cycle, or one per group.")
    step_size_up: PosInt = Field(default=2000, description="Steps of the rising half.")
    step_size_down: PosInt | None = Field(
        default=None, description="Steps of the falling half; step_size_up when null."
    )
    mode: Literal["triangular", "triangular2", "exp_range"] = "triangular"
    gamma: Number = Field(default=1.0, description="Decay base of 'exp_range'.")
    scale_mode: Literal["cycle", "iterations"] = "cycle"
    cycle_momentum: bool = Field(default=True, description="Cycle momentum inversely to lr.")
    base_momentum: PerGroup = Field(default=0.8, description="Lower momentum bound.")
    max_momentum: PerGroup = Field(default=0.9, description="Upper momentum bound.")
    torch_class = lr_scheduler.CyclicLR
    lr_fields = ("base_lr", "max_lr")
    examples = [
        {
            "type": "CyclicLR",
            "base_lr": 0.001,
            "max_lr": 0.1,
            "step_size_up": 50,
            "mode": "triangular2",
        }
    ]
    example_request = {"include": ["momentum"]}

    def closed_form(self, sched: "LRScheduler", device: torch.device) -> formulas.Leaf:
        return formulas.Cyclic.of(sched, device)

    def request_caveats(self, request: "ScheduleRequest") -> list[str]:
        return _cycle_caveats("CyclicLR", "base_lr", self.cycle_momentum, request)


@register
class OneCycleLR(SchedulerBase):
    """The 1cycle policy: warm up to ``max_lr``, then anneal far below the start (Smith, 2018).

    torch: ``OneCycleLR(optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None,
    pct_start=0.3, anneal_strategy='cos', cycle_momentum=True, base_momentum=0.85,
    max_momentum=0.95, div_factor=25.0, final_div_factor=1e4, three_phase=False)``.
    When neither ``total_steps`` nor ``epochs`` is given, ``total_steps`` defaults to the
    number of scheduler steps the request covers (a warning says so).
    """

    type: Literal["OneCycleLR"] = "OneCycleLR"
    cost_per_step: ClassVar[float] = 15.0
    cost_per_value: ClassVar[float] = 15.0  # measured 15 + 15 × groups
    max_lr: PerGroup = Field(description="Peak lr, or one per group.")
    total_steps: PosInt | None = Field(default=None, description="Length of the cycle.")
    epochs: PosInt | None = Field(default=None, description="With steps_per_epoch.")
    steps_per_epoch: PosInt | None = Field(default=None, description="With epochs.")
    pct_start: Number = Field(default=0.3, ge=0.0, le=1.0, description="Fraction rising.")
    anneal_strategy: Literal["cos", "linear"] = "cos"
    cycle_momentum: bool = True
    base_momentum: PerGroup = 0.85
    max_momentum: PerGroup = 0.95
    div_factor: Number = Field(default=25.0, description="initial_lr = max_lr / div_factor.")
    final_div_factor: Number = Field(
        default=1e4, description="min_lr = initial_lr / final_div_factor."
    )
    three_phase: bool = False
    torch_class = lr_scheduler.OneCycleLR
    lr_fields = ("max_lr",)
    examples = [{"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 1000}]
    example_request = {"steps": 1000, "include": ["momentum"], "sample": {"points": 21}}

    def build(self, optimizer: torch.optim.Optimizer, span: int) -> "LRScheduler":
        kwargs = self.torch_kwargs()
        if self.total_steps is None and self.epochs is None:
            kwargs["total_steps"] = max(span, 1)
        return lr_scheduler.OneCycleLR(optimizer, **kwargs)

    def closed_form(self, sched: "LRScheduler", device: torch.device) -> formulas.Leaf:
        return formulas.OneCycle.of(sched, device)

    def caveats(self, span: int) -> list[str]:
        out = []
        if self.total_steps is None and self.epochs is None:
            out.append(
                caveat(
                    "onecycle-total-steps-defaulted",
                    f"OneCycleLR total_steps was not given: it defaults to {max(span, 1)}, the "
                    "scheduler steps this request covers",
                )
            )
        return out

    def request_caveats(self, request: "ScheduleRequest") -> list[str]:
        return _cycle_caveats("OneCycleLR", "max_lr / div_factor", self.cycle_momentum, request)


@register
class CosineAnnealingWarmRestarts(SchedulerBase):
    """Cosine annealing restarted every ``T_0`` steps, each period ``T_mult`` times longer.

    torch: ``CosineAnnealingWarmRestarts(optimizer, T_0, T_mult=1, eta_min=0.0)``.
    """

    type: Literal["CosineAnnealingWarmRestarts"] = "CosineAnnealingWarmRestarts"
    cost_per_step: ClassVar[float] = 45.0
    cost_per_value: ClassVar[float] = 13.0  # measured 43 + 12 × groups
    T_0: PosInt = Field(description="Steps until the first restart.")
    T_mult: PosInt = Field(default=1, description="Factor by which each period grows.")
    eta_min: Number = Field(default=0.0, description="Minimum learning rate.")
    torch_class = lr_scheduler.CosineAnnealingWarmRestarts
    lr_fields = ("eta_min",)
    examples = [{"type": "CosineAnnealingWarmRestarts", "T_0": 50, "T_mult": 2, "eta_min": 1e-4}]

    def closed_form(self, sched: "LRScheduler", device: torch.device) -> formulas.Leaf:
        return formulas.WarmRestarts.of(sched, device)


@register
class SWALR(SchedulerBase):
    """Anneals each group's lr to ``swa_lr`` over ``anneal_epochs`` steps, then holds it.

    torch: ``torch.optim.swa_utils.SWALR(optimizer, swa_lr, anneal_epochs=10,
    anneal_strategy='cos')``.
    """

    type: Literal["SWALR"] = "SWALR"
    cost_per_step: ClassVar[float] = 15.0
    cost_per_value: ClassVar[float] = 11.0  # measured 15 + 11 × groups
    swa_lr: PerGroup = Field(description="The SWA learning rate, or one per group.")
    anneal_epochs: NonNegInt = Field(default=10, description="Steps of the annealing.")
    anneal_strategy: Literal["cos", "linear"] = "cos"
    torch_class = TorchSWALR
    lr_fields = ("swa_lr",)
    examples = [{"type": "SWALR", "swa_lr": 0.05, "anneal_epochs": 5}]

    def closed_form(self, sched: "LRScheduler", device: torch.device) -> formulas.Leaf:
        return formulas.Swa.of(sched, device)


uses_schedulers(SequentialLR)
uses_schedulers(ChainedScheduler)
