"""Schedule specifications: torch's own class and parameter names, as pydantic models.

A spec names a real ``torch.optim`` optimizer and a registered scheduler (every class in
``torch.optim.lr_scheduler``, ``SWALR``, and the families in
:mod:`service.schedules.families`) with the keyword arguments torch takes, so
``StepLR(optimizer, step_size=30, gamma=0.1)`` is ``{"type": "StepLR", "step_size": 30,
"gamma": 0.1}``. Defaults are torch's. :class:`ScheduleConfig` is the schedule itself, shared
by :class:`ScheduleRequest` and the training jobs' ``JobSpec``, so every rule and limit here
applies to both; this module (with the scheduler classes) is where a schedule is validated.
Limits are the current settings' (:func:`service.settings.current_settings`).
"""

import inspect
import math
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from torch.optim import lr_scheduler

from service.devices import DeviceName
from service.errors import register_union_tags
from service.schedules import counters, families, registry
from service.schedules.base import (
    MAX_INT,
    IntList,
    NonNegInt,
    NonNegIntList,
    Number,
    PerGroup,
    PosInt,
    SpecModel,
    in_range,
)
from service.schedules.registry import SchedulerBase, SchedulerSpec
from service.schedules.vectorized import formulas
from service.settings import current_settings

if TYPE_CHECKING:
    from torch.optim.lr_scheduler import LRScheduler

families.load()

from service.schedules.families.torch import (  # noqa: E402 - registered by families.load()
    SWALR,
    ChainedScheduler,
    ConstantLR,
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    CyclicLR,
    ExponentialLR,
    LambdaLR,
    LinearLR,
    MultiplicativeLR,
    MultiStepLR,
    OneCycleLR,
    PolynomialLR,
    ReduceLROnPlateau,
    SequentialLR,
    StepLR,
)

__all__ = [
    "MAX_INT",
    "SWALR",
    "ChainedScheduler",
    "ConstantLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "ExponentialLR",
    "IntList",
    "LambdaLR",
    "LinearLR",
    "MultiStepLR",
    "MultiplicativeLR",
    "NonNegInt",
    "Number",
    "OneCycleLR",
    "PerGroup",
    "PolynomialLR",
    "PosInt",
    "ReduceLROnPlateau",
    "SchedulerBase",
    "SchedulerSpec",
    "SequentialLR",
    "SpecModel",
    "StepLR",
]


def limit_exceeded(message: str, loc: tuple[str | int, ...] = ()) -> ValidationError:
    """Return a validation error of type ``limit_exceeded`` (a ``limit-exceeded`` problem)."""
    error = PydanticCustomError("limit_exceeded", message)
    return ValidationError.from_exception_data(
        "limit", [{"type": error, "loc": loc, "input": None}]
    )


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
                in_range(item)
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
    if isinstance(value, dict):
        raise ValueError(f"{key}: objects are not optimizer arguments")


ParamGroup = dict[str, OptimizerValue]

LR_SCALE = "lr_scale"
"""The param-group key timm's schedulers multiply the lr they set by (layer-wise lr decay);
it is not an optimizer argument, and no other scheduler reads it."""


def _check_lr_scale(i: int, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(
            f"param_groups[{i}]: lr_scale={value!r} is not a number; give the factor timm "
            "multiplies this group's lr by, such as 0.5"
        )
    if value < 0:
        raise ValueError(
            f"param_groups[{i}]: lr_scale={value} is negative; timm multiplies the lr by it "
            "and learning rates are >= 0"
        )


def reads_lr_scale(spec: "SchedulerBase") -> bool:
    """Return True when ``spec`` multiplies a group's ``lr_scale`` into the lr (timm's)."""
    return bool(getattr(spec, "reads_lr_scale", False))


def lr_scale_reason(
    groups: list[ParamGroup] | None, scheduler: "SchedulerBase"
) -> tuple[int, str] | None:
    """Return (group, message) when a group sets ``lr_scale`` and no scheduler reads it."""
    scaled = [i for i, g in enumerate(groups or []) if LR_SCALE in g]
    if not scaled or any(reads_lr_scale(s) for s in walk(scheduler)):
        return None
    return scaled[0], (
        "only timm's schedulers read lr_scale (timm multiplies the lr it sets by it); "
        f"{scheduler.type} would ignore it. Remove lr_scale, or give the group the scaled lr "
        "instead"
    )


def check_param_groups(
    groups: list[ParamGroup] | None, info: ValidationInfo
) -> list[ParamGroup] | None:
    """Validate ``param_groups`` against the request's optimizer: known arguments, finite
    numbers, a numeric non-negative ``lr`` and ``lr_scale`` (timm's), at most
    ``LRS_MAX_PARAM_GROUPS`` groups.

    Use as ``field_validator("param_groups")`` on a model whose ``optimizer`` field comes first.
    """
    if groups is None:
        return None
    limit = current_settings().max_param_groups
    if len(groups) > limit:
        raise limit_exceeded(
            f"{len(groups)} param groups; the limit is {limit} (LRS_MAX_PARAM_GROUPS)"
        )
    optimizer = info.data.get("optimizer")
    if optimizer is None:  # the optimizer itself failed validation; that error is reported
        return groups
    allowed = optimizer_arguments(optimizer.type)
    for i, group in enumerate(groups):
        for key, value in group.items():
            if key == LR_SCALE:
                _check_lr_scale(i, value)
                continue
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


# --------------------------------------------------------------------------- warmup


class LinearFromZero:
    """The seed's gradual warmup factor as an ``lr_lambda``: ``epoch / steps``."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.key = ("linear_from_zero", steps)
        """What it computes, comparable across specs (batches stack equal keys)."""

    def __call__(self, epoch: int) -> float:
        return epoch / self.steps

    def evaluate_tensor(self, epoch: torch.Tensor) -> torch.Tensor:
        """Return the factor at every epoch of a float64 tensor."""
        return epoch / self.steps


class LinearWarmup(SpecModel):
    """Ramps the lr linearly from ``start_factor * lr`` to ``lr`` over ``steps`` steps.

    ``start_factor > 0`` uses ``LinearLR(start_factor, 1.0, total_iters=steps)``;
    ``start_factor == 0`` (the seed's gradual warmup, ``lr * step / steps``) uses
    ``LambdaLR(lambda e: e / steps)``, since LinearLR refuses 0.
    """

    type: Literal["linear"] = "linear"
    steps: PosInt = Field(description="Warmup length, in scheduler steps.")
    cost_per_step: ClassVar[float] = 2.0
    cost_per_value: ClassVar[float] = 1.0
    """Weights of the cost model (about 1 ns of CPU each): a segment before the scheduler
    (measured: CosineAnnealingLR after it 8.4 + 5.5 × groups ns a step, alone 11 + 7.8)."""
    start_factor: Number = Field(default=0.0, ge=0.0, le=1.0, description="Factor at step 0.")

    def build(self, optimizer: torch.optim.Optimizer) -> "LRScheduler":
        """Return the torch scheduler of the warmup."""
        if self.start_factor > 0:
            return lr_scheduler.LinearLR(
                optimizer, start_factor=self.start_factor, end_factor=1.0, total_iters=self.steps
            )
        return lr_scheduler.LambdaLR(optimizer, LinearFromZero(self.steps))

    def closed_form(self, sched: "LRScheduler", device: torch.device) -> formulas.Leaf:
        """Return the warmup's vectorized leaf, read from the built ``sched``."""
        if self.start_factor > 0:
            return formulas.Linear.of(sched, device)
        return formulas.Lambda.of(sched, device)


class ConstantWarmup(SpecModel):
    """Holds ``factor * lr`` for ``steps`` steps (the ResNet recipe), via ``ConstantLR``."""

    type: Literal["constant"] = "constant"
    steps: PosInt = Field(description="Warmup length, in scheduler steps.")
    cost_per_step: ClassVar[float] = 2.0
    cost_per_value: ClassVar[float] = 1.0
    factor: Number = Field(default=0.1, ge=0.0, le=1.0, description="Factor during warmup.")

    def build(self, optimizer: torch.optim.Optimizer) -> "LRScheduler":
        """Return the torch scheduler of the warmup."""
        return lr_scheduler.ConstantLR(optimizer, factor=self.factor, total_iters=self.steps)

    def closed_form(self, sched: "LRScheduler", device: torch.device) -> formulas.Leaf:
        """Return the warmup's vectorized leaf, read from the built ``sched``."""
        return formulas.Constant.of(sched, device)


from service.schedules.families import pytorch_warmup  # noqa: E402 - needs the models above

WarmupSpec = pytorch_warmup.warmup_union(LinearWarmup, ConstantWarmup)
"""The service's own warmups (before the scheduler) and pytorch_warmup's (dampening it)."""
register_union_tags({"linear", "constant", *pytorch_warmup.TAGS})


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
        limit = current_settings().max_sample_points
        if self.at is not None and len(self.at) > limit:
            raise limit_exceeded(
                f"'at' lists {len(self.at)} indices; the limit is {limit} (LRS_MAX_SAMPLE_POINTS)",
                ("at",),
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


@registry.uses_schedulers
class ScheduleConfig(SpecModel):
    """A schedule: the optimizer, its param groups, the scheduler, a warmup and the interval.

    ``ScheduleRequest`` (what to compute) and the training jobs' ``JobSpec`` (what to train
    with) both extend it, so a schedule one accepts the other accepts too, within the same
    limits (``LRS_MAX_PARAM_GROUPS``, ``LRS_MAX_SCHEDULERS``, ``LRS_MAX_NESTING_DEPTH``).
    """

    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    param_groups: list[ParamGroup] | None = Field(
        default=None,
        min_length=1,
        description="Per-group overrides of the optimizer's arguments; one group when absent. "
        "A group may also set 'lr_scale' (a number >= 0), which timm's schedulers multiply the "
        "lr they set by, as timm does (layer-wise lr decay); only timm reads it.",
    )
    scheduler: SchedulerSpec
    warmup: WarmupSpec | None = Field(
        default=None,
        description="Warmup before the scheduler, which starts at its step 0 after it.",
    )
    interval: Literal["step", "epoch"] = Field(
        default="step",
        description="'step': scheduler.step() after every optimizer step; 'epoch': after "
        "every epoch.",
    )

    @model_validator(mode="before")
    @classmethod
    def _bounded_nesting(cls, data: Any) -> Any:
        if isinstance(data, dict):
            settings = current_settings()
            depth, count = _nesting(data.get("scheduler"))
            if depth > settings.max_nesting_depth:
                raise limit_exceeded(
                    f"scheduler nesting is {depth} levels deep; the limit is "
                    f"{settings.max_nesting_depth} (LRS_MAX_NESTING_DEPTH)",
                    ("scheduler",),
                )
            if count > settings.max_schedulers:
                raise limit_exceeded(
                    f"the request has {count} schedulers; the limit is "
                    f"{settings.max_schedulers} (LRS_MAX_SCHEDULERS)",
                    ("scheduler",),
                )
        return data

    _param_groups = field_validator("param_groups")(check_param_groups)

    @model_validator(mode="after")
    def _warmup_interval(self) -> "ScheduleConfig":
        pytorch_warmup.check_interval(self.warmup, self.interval)
        return self

    @model_validator(mode="after")
    def _lr_scale_read(self) -> "ScheduleConfig":
        found = lr_scale_reason(self.param_groups, self.scheduler)
        if found is not None:
            error = PydanticCustomError("value_error", found[1])
            raise ValidationError.from_exception_data(
                "lr_scale",
                [{"type": error, "loc": ("param_groups", found[0], LR_SCALE), "input": None}],
            )
        return self

    @property
    def n_groups(self) -> int:
        """Return the number of param groups the optimizer will have."""
        return len(self.param_groups) if self.param_groups else 1


class ScheduleRequest(ScheduleConfig):
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

    steps: PosInt = Field(description="How many optimizer steps (array length) to compute.")
    steps_per_epoch: PosInt = Field(
        default=1, description="Optimizer steps per epoch (with interval 'epoch')."
    )
    metrics: list[Number] | None = Field(
        default=None,
        max_length=10_000_000,
        description="The metric of a metric-driven scheduler (ReduceLROnPlateau, timm's "
        "plateau, transformers' reduce_lr_on_plateau or greedy): step k reads metrics[k - 1].",
    )
    batch_scaling: BatchScaling | None = None
    sample: Sample | None = Field(
        default=None, description="Which indices to return; never changes their values."
    )
    engine: Engine = Field(default="auto", description="'torch', 'vectorized' or 'auto'.")
    device: DeviceName = Field(
        default="auto", description="'auto' (CUDA when available), 'cpu', 'cuda'."
    )
    include: list[Literal["momentum", "weight_decay"]] = Field(
        default_factory=list,
        description="Extra series: 'momentum' (momentum or beta1 per group), 'weight_decay' "
        "(per group, for megatron's weight-decay schedule).",
    )
    skipped_steps: NonNegIntList | None = Field(
        default=None,
        description="Optimizer steps AMP's GradScaler skipped (inf/nan gradients): "
        "optimizer.step() is not called there, scheduler.step() still is, so the schedule "
        "advances (Megatron's loop holds it instead). Indices are optimizer-step calls, "
        "0..steps-1. The response's counters say which steps were skipped and how many "
        "updates precede each step; warnings say what torch warns.",
    )
    accumulation_steps: int | None = Field(
        default=None,
        json_schema_extra={"minimum": 1},
        description="Micro-batches per optimizer step (gradient accumulation); the scheduler "
        "steps after every optimizer step, as the training jobs do. Default 1.",
    )
    index_by: counters.IndexBy = Field(
        default="optimizer_step",
        description="What the series' index counts: 'optimizer_step' (index i: optimizer step "
        "i), or 'micro_batch' (index j: micro-batch j, which sees the lr of its optimizer "
        "step). sample applies to that index.",
    )
    counter: counters.CounterSpec | None = Field(
        default=None,
        description="Count samples or tokens per optimizer step, with Megatron's batch-size "
        "ramp-up; `at` asks the lr at given counts ('what lr at sample 3.2M').",
    )

    _skipped_steps = field_validator("skipped_steps")(counters.check_skipped_steps)
    _accumulation_steps = field_validator("accumulation_steps")(counters.check_accumulation_steps)

    @property
    def scheduler_steps(self) -> int:
        """Return how many distinct scheduler states the request covers (values to compute)."""
        if self.interval == "epoch":
            return -(-self.steps // self.steps_per_epoch)
        return self.steps


registry.complete()
