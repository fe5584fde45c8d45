"""Schedule specifications: torch's own class and parameter names, as pydantic models.

A spec names a real ``torch.optim`` optimizer and a real ``torch.optim.lr_scheduler`` class
(or ``torch.optim.swa_utils.SWALR``) with the keyword arguments torch takes, so
``StepLR(optimizer, step_size=30, gamma=0.1)`` is ``{"type": "StepLR", "step_size": 30,
"gamma": 0.1}``. Defaults are torch's. Both engines and the training jobs read these models;
this module is the only place a schedule is validated.

To add a scheduler: add its model here, add it to ``SchedulerSpec``, and teach
``torch_engine.build_scheduler`` (and ``vectorized``) to build it.
"""

import inspect
import math
from functools import cache
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from service.devices import DeviceName
from service.errors import register_union_tags
from service.schedules.expressions import ExpressionError, parse_expression
from service.settings import get_settings

Number = Annotated[float, Field(allow_inf_nan=False)]
PerGroup = Number | list[Number]

MAX_INT = 2**53
"""Largest integer magnitude a spec accepts: exact in float64, far from int64 overflow."""


def _in_range(value: int) -> int:
    if not -MAX_INT <= value <= MAX_INT:
        raise ValueError(f"{value} is out of range: integers must lie within +-2**53 ({MAX_INT})")
    return value


def _all_in_range(values: list[int]) -> list[int]:
    if values and (min(values) < -MAX_INT or max(values) > MAX_INT):
        for value in values:
            _in_range(value)
    return values


PosInt = Annotated[PositiveInt, AfterValidator(_in_range)]
NonNegInt = Annotated[NonNegativeInt, AfterValidator(_in_range)]
IntList = Annotated[list[int], AfterValidator(_all_in_range)]
NonNegIntList = Annotated[list[NonNegativeInt], AfterValidator(_all_in_range)]


class SpecModel(BaseModel):
    """Base of every request model: unknown fields and non-finite numbers are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# --------------------------------------------------------------------------- schedulers


class SchedulerBase(SpecModel):
    """Common parts of scheduler specs."""

    examples: ClassVar[list[dict[str, Any]]] = []
    """Example specs for the catalog and the OpenAPI page (the first is the main one)."""

    def children(self) -> list["SchedulerSpec"]:
        """Return the nested scheduler specs (empty for a leaf scheduler)."""
        return []


def _check_expressions(value: str | list[str]) -> str | list[str]:
    settings = get_settings()
    for source in [value] if isinstance(value, str) else value:
        try:
            parse_expression(
                source,
                max_length=settings.expression_max_length,
                max_depth=settings.expression_max_depth,
                max_nodes=settings.expression_max_nodes,
            )
        except ExpressionError as exc:
            raise ValueError(f"lr_lambda {source[:60]!r}: {exc.message}") from exc
    return value


LambdaSource = Annotated[
    str | list[Annotated[str, Field(min_length=1)]],
    Field(
        description="An expression in `epoch` (the scheduler's step count), or one per param "
        "group. Numbers, + - * / // % **, comparisons, `a if cond else b`, and/or/not, "
        "min/max/abs, exp/log/log2/log10/sqrt/sin/cos/tan/tanh/floor/ceil, pi, e.",
        examples=["0.95 ** epoch"],
    ),
    AfterValidator(_check_expressions),
]


class LambdaLR(SchedulerBase):
    """Sets each group's lr to its initial lr times ``lr_lambda(epoch)``.

    ``lr = base_lr * lr_lambda(epoch)``. torch: ``LambdaLR(optimizer, lr_lambda)``.
    """

    type: Literal["LambdaLR"] = "LambdaLR"
    lr_lambda: LambdaSource

    examples = [{"type": "LambdaLR", "lr_lambda": "0.95 ** epoch"}]


class MultiplicativeLR(SchedulerBase):
    """Multiplies each group's lr by ``lr_lambda(epoch)`` at every step after the first.

    ``lr_epoch = lr_(epoch-1) * lr_lambda(epoch)``.
    torch: ``MultiplicativeLR(optimizer, lr_lambda)``.
    """

    type: Literal["MultiplicativeLR"] = "MultiplicativeLR"
    lr_lambda: LambdaSource

    examples = [{"type": "MultiplicativeLR", "lr_lambda": "0.95"}]


class StepLR(SchedulerBase):
    """Decays each group's lr by ``gamma`` every ``step_size`` steps.

    ``lr = base_lr * gamma ** (epoch // step_size)``.
    torch: ``StepLR(optimizer, step_size, gamma=0.1)``.
    """

    type: Literal["StepLR"] = "StepLR"
    step_size: PosInt = Field(description="Period of the decay, in scheduler steps.")
    gamma: Number = Field(default=0.1, description="Multiplicative factor of the decay.")
    examples = [{"type": "StepLR", "step_size": 30, "gamma": 0.65}]


class MultiStepLR(SchedulerBase):
    """Decays each group's lr by ``gamma`` at each milestone.

    ``lr = base_lr * gamma ** (number of milestones <= epoch)``; a milestone listed twice
    counts twice. torch: ``MultiStepLR(optimizer, milestones, gamma=0.1)``.
    """

    type: Literal["MultiStepLR"] = "MultiStepLR"
    milestones: IntList = Field(
        max_length=10_000, description="Scheduler steps at which gamma is applied."
    )
    gamma: Number = Field(default=0.1, description="Multiplicative factor of the decay.")
    examples = [{"type": "MultiStepLR", "milestones": [200, 300, 320, 340, 200], "gamma": 0.8}]


class ConstantLR(SchedulerBase):
    """Multiplies each group's lr by ``factor`` until step ``total_iters``, then restores it.

    torch: ``ConstantLR(optimizer, factor=1/3, total_iters=5)``.
    """

    type: Literal["ConstantLR"] = "ConstantLR"
    factor: Number = Field(default=1.0 / 3, ge=0.0, le=1.0, description="Factor while active.")
    total_iters: NonNegInt = Field(default=5, description="Steps the factor is applied.")
    examples = [{"type": "ConstantLR", "factor": 0.1, "total_iters": 400}]


class LinearLR(SchedulerBase):
    """Moves the lr factor linearly from ``start_factor`` to ``end_factor`` over ``total_iters``.

    torch: ``LinearLR(optimizer, start_factor=1/3, end_factor=1.0, total_iters=5)``.
    """

    type: Literal["LinearLR"] = "LinearLR"
    start_factor: Number = Field(
        default=1.0 / 3, gt=0.0, le=1.0, description="Factor at step 0 (0 < f <= 1)."
    )
    end_factor: Number = Field(default=1.0, ge=0.0, le=1.0, description="Factor at the end.")
    total_iters: NonNegInt = Field(default=5, description="Steps of the ramp.")
    examples = [{"type": "LinearLR", "start_factor": 0.01, "end_factor": 1.0, "total_iters": 100}]


class ExponentialLR(SchedulerBase):
    """Decays each group's lr by ``gamma`` every step.

    ``lr = base_lr * gamma ** epoch``. torch: ``ExponentialLR(optimizer, gamma)``.
    """

    type: Literal["ExponentialLR"] = "ExponentialLR"
    gamma: Number = Field(description="Multiplicative factor per step.")
    examples = [{"type": "ExponentialLR", "gamma": 0.98}]


class PolynomialLR(SchedulerBase):
    """Decays each group's lr by a polynomial of power ``power`` to 0 at ``total_iters``.

    ``lr = base_lr * (1 - min(epoch, total_iters) / total_iters) ** power``.
    torch: ``PolynomialLR(optimizer, total_iters=5, power=1.0)``.
    """

    type: Literal["PolynomialLR"] = "PolynomialLR"
    total_iters: NonNegInt = Field(default=5, description="Steps until the lr reaches 0.")
    power: Number = Field(default=1.0, description="Power of the polynomial.")
    examples = [{"type": "PolynomialLR", "total_iters": 100, "power": 2.0}]


class CosineAnnealingLR(SchedulerBase):
    """Anneals each group's lr along a cosine from its initial lr to ``eta_min`` in ``T_max`` steps.

    torch uses a recursive form, so past ``T_max`` the lr rises again along the cosine.
    torch: ``CosineAnnealingLR(optimizer, T_max, eta_min=0.0)``.
    """

    type: Literal["CosineAnnealingLR"] = "CosineAnnealingLR"
    T_max: PosInt = Field(description="Half period of the cosine, in scheduler steps.")
    eta_min: Number = Field(default=0.0, description="Minimum learning rate.")
    examples = [{"type": "CosineAnnealingLR", "T_max": 150, "eta_min": 0.0}]


class CosineAnnealingWarmRestarts(SchedulerBase):
    """Cosine annealing restarted every ``T_0`` steps, each period ``T_mult`` times longer.

    torch: ``CosineAnnealingWarmRestarts(optimizer, T_0, T_mult=1, eta_min=0.0)``.
    """

    type: Literal["CosineAnnealingWarmRestarts"] = "CosineAnnealingWarmRestarts"
    T_0: PosInt = Field(description="Steps until the first restart.")
    T_mult: PosInt = Field(default=1, description="Factor by which each period grows.")
    eta_min: Number = Field(default=0.0, description="Minimum learning rate.")
    examples = [{"type": "CosineAnnealingWarmRestarts", "T_0": 50, "T_mult": 2, "eta_min": 1e-4}]


class CyclicLR(SchedulerBase):
    """Cycles each group's lr between ``base_lr`` and ``max_lr`` (Smith, 2017), momentum inversely.

    torch: ``CyclicLR(optimizer, base_lr, max_lr, step_size_up=2000, step_size_down=None,
    mode='triangular', gamma=1.0, scale_mode='cycle', cycle_momentum=True, base_momentum=0.8,
    max_momentum=0.9)``. Custom ``scale_fn`` callables are not accepted over HTTP.
    """

    type: Literal["CyclicLR"] = "CyclicLR"
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
    examples = [
        {
            "type": "CyclicLR",
            "base_lr": 0.001,
            "max_lr": 0.1,
            "step_size_up": 50,
            "mode": "triangular2",
        }
    ]


class OneCycleLR(SchedulerBase):
    """The 1cycle policy: warm up to ``max_lr``, then anneal far below the start (Smith, 2018).

    torch: ``OneCycleLR(optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None,
    pct_start=0.3, anneal_strategy='cos', cycle_momentum=True, base_momentum=0.85,
    max_momentum=0.95, div_factor=25.0, final_div_factor=1e4, three_phase=False)``.
    When neither ``total_steps`` nor ``epochs`` is given, ``total_steps`` defaults to the
    number of scheduler steps the request covers (a warning says so).
    """

    type: Literal["OneCycleLR"] = "OneCycleLR"
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
    examples = [{"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 1000}]


class ReduceLROnPlateau(SchedulerBase):
    """Multiplies the lr by ``factor`` when the metric stops improving for ``patience`` steps.

    Driven by the request's ``metrics`` (one value per scheduler step).
    torch: ``ReduceLROnPlateau(optimizer, mode='min', factor=0.1, patience=10,
    threshold=1e-4, threshold_mode='rel', cooldown=0, min_lr=0, eps=1e-8)``.
    """

    type: Literal["ReduceLROnPlateau"] = "ReduceLROnPlateau"
    mode: Literal["min", "max"] = "min"
    factor: Number = Field(default=0.1, lt=1.0, description="Reduction factor (< 1).")
    patience: NonNegInt = Field(default=10, description="Steps without improvement.")
    threshold: Number = Field(default=1e-4, description="Least change that counts as better.")
    threshold_mode: Literal["rel", "abs"] = "rel"
    cooldown: NonNegInt = Field(default=0, description="Steps to wait after a reduction.")
    min_lr: PerGroup = Field(default=0.0, description="Lower bound on the lr, or one per group.")
    eps: Number = Field(default=1e-8, description="Smaller reductions are ignored.")
    examples = [{"type": "ReduceLROnPlateau", "mode": "min", "factor": 0.5, "patience": 2}]


class SWALR(SchedulerBase):
    """Anneals each group's lr to ``swa_lr`` over ``anneal_epochs`` steps, then holds it.

    torch: ``torch.optim.swa_utils.SWALR(optimizer, swa_lr, anneal_epochs=10,
    anneal_strategy='cos')``.
    """

    type: Literal["SWALR"] = "SWALR"
    swa_lr: PerGroup = Field(description="The SWA learning rate, or one per group.")
    anneal_epochs: NonNegInt = Field(default=10, description="Steps of the annealing.")
    anneal_strategy: Literal["cos", "linear"] = "cos"
    examples = [{"type": "SWALR", "swa_lr": 0.05, "anneal_epochs": 5}]


class SequentialLR(SchedulerBase):
    """Runs ``schedulers`` one after another, switching at each of ``milestones``.

    At a milestone the next scheduler restarts at its own step 0. torch:
    ``SequentialLR(optimizer, schedulers, milestones)``.
    """

    type: Literal["SequentialLR"] = "SequentialLR"
    schedulers: list["SchedulerSpec"] = Field(min_length=1, description="The schedulers, in order.")
    milestones: IntList = Field(description="One fewer than schedulers: where each starts.")

    def children(self) -> list["SchedulerSpec"]:
        return list(self.schedulers)

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


class ChainedScheduler(SchedulerBase):
    """Steps every one of ``schedulers`` at each step, so their effects multiply.

    torch: ``ChainedScheduler(schedulers)``.
    """

    type: Literal["ChainedScheduler"] = "ChainedScheduler"
    schedulers: list["SchedulerSpec"] = Field(min_length=1, description="Stepped together.")

    def children(self) -> list["SchedulerSpec"]:
        return list(self.schedulers)

    examples = [
        {
            "type": "ChainedScheduler",
            "schedulers": [
                {"type": "ConstantLR", "factor": 0.1, "total_iters": 2},
                {"type": "ExponentialLR", "gamma": 0.9},
            ],
        }
    ]


# The families import the base classes above; they join the unions here.
from service.schedules.families import llm, pytorch_warmup  # noqa: E402
from service.schedules.families import transformers as hf  # noqa: E402

SchedulerSpec = Annotated[
    LambdaLR
    | MultiplicativeLR
    | StepLR
    | MultiStepLR
    | ConstantLR
    | LinearLR
    | ExponentialLR
    | SequentialLR
    | PolynomialLR
    | CosineAnnealingLR
    | ChainedScheduler
    | ReduceLROnPlateau
    | CyclicLR
    | OneCycleLR
    | CosineAnnealingWarmRestarts
    | SWALR
    | hf.TransformersSchedule
    | llm.Noam
    | llm.REX,
    Field(discriminator="type"),
]

SequentialLR.model_rebuild()
ChainedScheduler.model_rebuild()

SCHEDULER_TYPES: dict[str, type[SchedulerBase]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        LambdaLR,
        MultiplicativeLR,
        StepLR,
        MultiStepLR,
        ConstantLR,
        LinearLR,
        ExponentialLR,
        SequentialLR,
        PolynomialLR,
        CosineAnnealingLR,
        ChainedScheduler,
        ReduceLROnPlateau,
        CyclicLR,
        OneCycleLR,
        CosineAnnealingWarmRestarts,
        SWALR,
        hf.TransformersSchedule,
        llm.Noam,
        llm.REX,
    )
}
"""Every scheduler type the service accepts, by torch class name."""

register_union_tags(set(SCHEDULER_TYPES) | {"linear", "constant", *pytorch_warmup.TAGS})


def walk(spec: SchedulerBase) -> list[SchedulerBase]:
    """Return ``spec`` and every scheduler nested in it, depth first."""
    out = [spec]
    for child in spec.children():
        out.extend(walk(child))
    return out


# --------------------------------------------------------------------------- optimizer

OptimizerValue = bool | Number | str | list[Number] | None


@cache
def optimizer_classes() -> dict[str, type[torch.optim.Optimizer]]:
    """Return every ``torch.optim`` optimizer class, by name."""
    return {
        name: obj
        for name in dir(torch.optim)
        if inspect.isclass(obj := getattr(torch.optim, name))
        and issubclass(obj, torch.optim.Optimizer)
        and obj is not torch.optim.Optimizer
    }


@cache
def optimizer_arguments(name: str) -> tuple[str, ...]:
    """Return the keyword arguments ``torch.optim.<name>`` takes besides ``params``."""
    params = inspect.signature(optimizer_classes()[name].__init__).parameters
    return tuple(p for p in params if p not in ("self", "params"))


class OptimizerSpec(BaseModel):
    """A ``torch.optim`` optimizer by class name, with its keyword arguments beside ``type``.

    ``{"type": "SGD", "lr": 0.1, "momentum": 0.9}`` is ``torch.optim.SGD(params, lr=0.1,
    momentum=0.9)``. Arguments are checked against the class's signature.
    """

    model_config = ConfigDict(
        extra="allow",
        allow_inf_nan=False,
        json_schema_extra={"examples": [{"type": "SGD", "lr": 0.1, "momentum": 0.9}]},
    )

    type: str = Field(default="SGD", description="A torch.optim optimizer class name.")
    lr: Number = Field(default=0.1, ge=0.0, description="Initial learning rate of every group.")

    @field_validator("type")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in optimizer_classes():
            known = ", ".join(sorted(optimizer_classes()))
            raise ValueError(f"unknown optimizer {value!r}; torch.optim has: {known}")
        return value

    @model_validator(mode="after")
    def _arguments(self) -> "OptimizerSpec":
        allowed = optimizer_arguments(self.type)
        for key, value in (self.model_extra or {}).items():
            _check_argument(self.type, allowed, key, value)
        return self

    def kwargs(self) -> dict[str, Any]:
        """Return the keyword arguments for the torch constructor (``lr`` included)."""
        out = {"lr": self.lr, **(self.model_extra or {})}
        return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}


def _check_argument(optimizer: str, allowed: tuple[str, ...], key: str, value: Any) -> None:
    if key not in allowed:
        raise ValueError(
            f"torch.optim.{optimizer} takes no argument {key!r}; it takes: {', '.join(allowed)}"
        )
    values = value if isinstance(value, list) else [value]
    for item in values:
        if isinstance(item, (list, dict)):
            raise ValueError(f"{key}: nested lists and objects are not optimizer arguments")
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{key}: numbers must be finite")
        if isinstance(item, int) and not isinstance(item, bool):
            try:
                _in_range(item)
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
    if isinstance(value, dict):
        raise ValueError(f"{key}: objects are not optimizer arguments")


ParamGroup = dict[str, OptimizerValue]


def check_param_groups(
    groups: list[ParamGroup] | None, info: ValidationInfo
) -> list[ParamGroup] | None:
    """Validate ``param_groups`` against the request's optimizer: known arguments, finite
    numbers, a numeric non-negative ``lr``, at most ``LRS_MAX_PARAM_GROUPS`` groups.

    Use as ``field_validator("param_groups")`` on a model whose ``optimizer`` field comes first.
    """
    if groups is None:
        return None
    limit = get_settings().max_param_groups
    if len(groups) > limit:
        raise ValueError(f"{len(groups)} param groups; the limit is {limit} (LRS_MAX_PARAM_GROUPS)")
    optimizer = info.data.get("optimizer")
    if optimizer is None:  # the optimizer itself failed validation; that error is reported
        return groups
    allowed = optimizer_arguments(optimizer.type)
    for i, group in enumerate(groups):
        for key, value in group.items():
            try:
                _check_argument(optimizer.type, allowed, key, value)
            except ValueError as exc:
                raise ValueError(f"param_groups[{i}]: {exc}") from None
        if "lr" not in group:
            continue
        lr = group["lr"]
        if not isinstance(lr, (int, float)) or isinstance(lr, bool):
            raise ValueError(
                f"param_groups[{i}]: lr={lr!r} is not a number; give a learning rate such as 0.1"
            )
        if lr < 0:
            raise ValueError(f"param_groups[{i}]: lr={lr} is negative; learning rates are >= 0")
    return groups


# --------------------------------------------------------------------------- warmup


class LinearWarmup(SpecModel):
    """Ramps the lr linearly from ``start_factor * lr`` to ``lr`` over ``steps`` steps.

    ``start_factor > 0`` uses ``LinearLR(start_factor, 1.0, total_iters=steps)``;
    ``start_factor == 0`` (the seed's gradual warmup, ``lr * step / steps``) uses
    ``LambdaLR(lambda e: e / steps)``, since LinearLR refuses 0.
    """

    type: Literal["linear"] = "linear"
    steps: PosInt = Field(description="Warmup length, in scheduler steps.")
    start_factor: Number = Field(default=0.0, ge=0.0, le=1.0, description="Factor at step 0.")


class ConstantWarmup(SpecModel):
    """Holds ``factor * lr`` for ``steps`` steps (the ResNet recipe), via ``ConstantLR``."""

    type: Literal["constant"] = "constant"
    steps: PosInt = Field(description="Warmup length, in scheduler steps.")
    factor: Number = Field(default=0.1, ge=0.0, le=1.0, description="Factor during warmup.")


WarmupSpec = pytorch_warmup.warmup_union(LinearWarmup, ConstantWarmup)
"""The service's own warmups (before the scheduler) and pytorch_warmup's (dampening it)."""


# --------------------------------------------------------------------------- request


class BatchScaling(SpecModel):
    """The linear scaling rule: every lr is multiplied by ``batch_size / base_batch_size``."""

    base_batch_size: PosInt = Field(description="Batch size the lrs were tuned for.")
    batch_size: PosInt = Field(description="Batch size you will train with.")

    @property
    def factor(self) -> float:
        """Return the multiplier applied to every learning rate."""
        return self.batch_size / self.base_batch_size


class Sample(SpecModel):
    """Which indices to return: exactly one of ``every``, ``points`` or ``at``."""

    every: PosInt | None = Field(default=None, description="Every k-th index from 0.")
    points: PosInt | None = Field(
        default=None, description="n evenly spaced indices, first and last included."
    )
    at: NonNegIntList | None = Field(default=None, description="These indices.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "Sample":
        given = [n for n in ("every", "points", "at") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'every', 'points' or 'at'")
        if self.at is not None and len(self.at) > get_settings().max_sample_points:
            raise ValueError(
                f"'at' lists {len(self.at)} indices; the limit is "
                f"{get_settings().max_sample_points} (LRS_MAX_SAMPLE_POINTS)"
            )
        return self


Engine = Literal["auto", "torch", "vectorized"]


def _nesting(raw: Any) -> tuple[int, int]:
    """Return (depth, count) of the scheduler tree in a raw request, without recursion."""
    depth, count = 0, 0
    stack = [(raw, 1)]
    while stack:
        node, level = stack.pop()
        if not isinstance(node, dict):
            continue
        count += 1
        depth = max(depth, level)
        children = node.get("schedulers")
        if isinstance(children, list):
            stack.extend((child, level + 1) for child in children)
    return depth, count


class ScheduleRequest(SpecModel):
    """What to compute: the optimizer, its param groups, the scheduler and how it is stepped.

    Index ``i`` of every returned array is the lr that optimizer step ``i`` uses; index 0 is
    the value right after the scheduler is constructed.
    """

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {
                    "scheduler": {"type": "CosineAnnealingLR", "T_max": 150, "eta_min": 0.0},
                    "steps": 300,
                    "sample": {"every": 10},
                },
                {
                    "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9},
                    "param_groups": [{"lr": 0.1}, {"lr": 0.01}],
                    "scheduler": {"type": "CosineAnnealingLR", "T_max": 12500},
                    "warmup": {"type": "linear", "steps": 2500, "start_factor": 0.0},
                    "steps": 15000,
                    "sample": {"every": 100},
                },
            ]
        },
    )

    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    param_groups: list[ParamGroup] | None = Field(
        default=None,
        min_length=1,
        description="Per-group overrides of the optimizer's arguments; one group when absent.",
    )
    scheduler: SchedulerSpec
    warmup: WarmupSpec | None = Field(
        default=None,
        description="Warmup before the scheduler, which starts at its step 0 after it.",
    )
    steps: PosInt = Field(description="How many optimizer steps (array length) to compute.")
    interval: Literal["step", "epoch"] = Field(
        default="step",
        description="'step': scheduler.step() after every optimizer step; 'epoch': after "
        "every steps_per_epoch optimizer steps.",
    )
    steps_per_epoch: PosInt = Field(default=1, description="Optimizer steps per epoch.")
    metrics: list[Number] | None = Field(
        default=None,
        max_length=10_000_000,
        description="ReduceLROnPlateau's metric, one value per scheduler step.",
    )
    batch_scaling: BatchScaling | None = None
    sample: Sample | None = Field(
        default=None, description="Which indices to return; never changes their values."
    )
    engine: Engine = Field(default="auto", description="'torch', 'vectorized' or 'auto'.")
    device: DeviceName = Field(
        default="auto", description="'auto' (CUDA when available), 'cpu', 'cuda'."
    )
    include: list[Literal["momentum"]] = Field(
        default_factory=list, description="Extra series: 'momentum' (momentum or beta1 per group)."
    )

    @model_validator(mode="before")
    @classmethod
    def _bounded_nesting(cls, data: Any) -> Any:
        if isinstance(data, dict):
            settings = get_settings()
            depth, count = _nesting(data.get("scheduler"))
            if depth > settings.max_nesting_depth:
                raise ValueError(
                    f"scheduler nesting is {depth} levels deep; the limit is "
                    f"{settings.max_nesting_depth} (LRS_MAX_NESTING_DEPTH)"
                )
            if count > settings.max_schedulers:
                raise ValueError(
                    f"the request has {count} schedulers; the limit is "
                    f"{settings.max_schedulers} (LRS_MAX_SCHEDULERS)"
                )
        return data

    _param_groups = field_validator("param_groups")(check_param_groups)

    @property
    def n_groups(self) -> int:
        """Return the number of param groups the optimizer will have."""
        return len(self.param_groups) if self.param_groups else 1

    @property
    def scheduler_steps(self) -> int:
        """Return how many distinct scheduler states the request covers (values to compute)."""
        if self.interval == "epoch":
            return -(-self.steps // self.steps_per_epoch)
        return self.steps


# --------------------------------------------------------------------------- response


class GroupSummary(BaseModel):
    """The lr range of one param group over the returned indices, and its final value."""

    min: float
    max: float
    final: float = Field(description="The lr of the last index, steps - 1.")


class ScheduleResult(BaseModel):
    """Per-group learning rates at the requested indices."""

    steps: list[int] = Field(description="The optimizer-step index of every returned value.")
    lr: list[list[float]] = Field(description="One list per param group, aligned with steps.")
    momentum: list[list[float]] | None = Field(
        default=None, description="Momentum (or beta1) per group, when include asks for it."
    )
    engine: Literal["torch", "vectorized"]
    device: str
    torch_version: str
    warnings: list[str]
    summary: list[GroupSummary]
