"""Hugging Face ``transformers``: ``get_scheduler(name, optimizer, num_warmup_steps,
num_training_steps, scheduler_specific_kwargs)``, every ``SchedulerType`` of the pinned release.

``{"type": "transformers", "name": "cosine", "num_warmup_steps": 100, "num_training_steps":
1000, "scheduler_specific_kwargs": {"num_cycles": 0.5}}`` is
``transformers.get_scheduler("cosine", optimizer, num_warmup_steps=100,
num_training_steps=1000, scheduler_specific_kwargs={"num_cycles": 0.5})``.

All names but ``reduce_lr_on_plateau`` and ``greedy`` are ``LambdaLR``s: one multiplier of
the step count, shared by every group and multiplied by each group's initial lr. Their closed
forms below are the release's ``_get_*_lr_lambda`` functions (transformers/optimization.py,
5.23.0) written as tensor operations; where a formula reads ``optimizer.defaults["lr"]`` (the
optimizer's ``lr``, not the group's) it does so here too, which is why ``polynomial`` ends
group i at ``lr_i * lr_end / optimizer.lr``. ``num_warmup_steps`` below 1 is a ratio of
``num_training_steps``, as ``TrainingArguments.get_warmup_steps`` reads it:
``ceil(num_training_steps * ratio)``; 1 or more is ``int(num_warmup_steps)``.
"""

import math
import warnings
from functools import cache
from typing import Any, ClassVar, Literal

import torch
from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from torch.optim import lr_scheduler

from service.errors import InvalidSpec
from service.schedules.codes import caveat
from service.schedules.families import Library
from service.schedules.families.common import TensorFactor, did_you_mean, load
from service.schedules.registry import register
from service.schedules.specs import MAX_INT, NonNegInt, Number, PerGroup, SchedulerBase, SpecModel
from service.schedules.vectorized import formulas

LIBRARY = Library(family="transformers", package="transformers", version="5.23.0")
Tensor = torch.Tensor
F64 = torch.float64
KWARGS = ("body", "scheduler", "scheduler_specific_kwargs")


# --------------------------------------------------------------------------- arguments


class NoKwargs(SpecModel):
    """No scheduler_specific_kwargs."""


class CosineKwargs(SpecModel):
    num_cycles: Number = Field(
        default=0.5, description="Waves of the cosine (0.5: one half-cosine down to 0)."
    )


class RestartsKwargs(SpecModel):
    num_cycles: int = Field(default=1, ge=0, description="Number of hard restarts.")


class PolynomialKwargs(SpecModel):
    lr_end: Number = Field(default=1e-7, description="End lr (of the optimizer's lr).")
    power: Number = Field(default=1.0, ge=0.0, description="Power of the polynomial.")


class InverseSqrtKwargs(SpecModel):
    timescale: int | None = Field(
        default=None, ge=1, description="Time scale; num_warmup_steps (or 10000) when null."
    )


class PlateauKwargs(SpecModel):
    mode: Literal["min", "max"] = "min"
    factor: Number = Field(default=0.1, lt=1.0, description="Reduction factor (< 1).")
    patience: NonNegInt = 10
    threshold: Number = 1e-4
    threshold_mode: Literal["rel", "abs"] = "rel"
    cooldown: NonNegInt = 0
    min_lr: PerGroup = 0.0
    eps: Number = 1e-8


class MinLrKwargs(SpecModel):
    num_cycles: Number = 0.5
    min_lr: Number | None = Field(
        default=None, ge=0.0, description="Final lr; divided by the optimizer's lr."
    )
    min_lr_rate: Number | None = Field(
        default=None, ge=0.0, description="Final lr as a ratio of each group's initial lr."
    )


class WarmupMinLrKwargs(MinLrKwargs):
    warmup_lr_rate: Number | None = Field(
        default=None,
        description="Factor at step 0; null: the warmup is (step + 1) / num_warmup_steps.",
    )


Shape = Literal["linear", "cosine", "1-sqrt"]


class WsdKwargs(SpecModel):
    num_decay_steps: NonNegInt = Field(description="Steps of the decay phase.")
    num_stable_steps: NonNegInt | None = Field(
        default=None,
        description="Steps of the stable phase; num_training_steps - warmup - decay when null.",
    )
    warmup_type: Shape = "linear"
    decay_type: Shape = "cosine"
    min_lr_ratio: Number = Field(default=0.0, description="Floor, of each group's initial lr.")
    num_cycles: Number = 0.5


class GreedyKwargs(SpecModel):
    mode: Literal["min", "max"] = "min"
    factor: Number = Field(default=0.95, lt=1.0)
    patience: NonNegInt = 10
    threshold: Number = 1e-6
    threshold_mode: Literal["rel", "abs"] = "abs"
    cooldown: NonNegInt = 0
    warmup: NonNegInt = 0
    min_lr: PerGroup = 1e-3
    max_lr: PerGroup = 1.0
    eps: Number = 1e-8
    smooth: bool = False
    window_size: int = Field(default=50, ge=1)
    reset_start: NonNegInt = 500


NAMES: dict[str, tuple[type[SpecModel], str, str]] = {
    "linear": (NoKwargs, "get_linear_schedule_with_warmup", "Warmup from 0, then linear to 0."),
    "cosine": (CosineKwargs, "get_cosine_schedule_with_warmup", "Warmup, then a cosine to 0."),
    "cosine_with_restarts": (
        RestartsKwargs,
        "get_cosine_with_hard_restarts_schedule_with_warmup",
        "Warmup, then num_cycles cosines to 0 with hard restarts.",
    ),
    "polynomial": (
        PolynomialKwargs,
        "get_polynomial_decay_schedule_with_warmup",
        "Warmup, then a polynomial decay to lr_end (of the optimizer's lr).",
    ),
    "constant": (NoKwargs, "get_constant_schedule", "The optimizer's lr, unchanged."),
    "constant_with_warmup": (
        NoKwargs,
        "get_constant_schedule_with_warmup",
        "Linear warmup from 0, then constant.",
    ),
    "inverse_sqrt": (
        InverseSqrtKwargs,
        "get_inverse_sqrt_schedule",
        "Warmup, then 1/sqrt((step + timescale - warmup) / timescale).",
    ),
    "reduce_lr_on_plateau": (
        PlateauKwargs,
        "get_reduce_on_plateau_schedule",
        "torch's ReduceLROnPlateau, driven by the request's metrics.",
    ),
    "cosine_with_min_lr": (
        MinLrKwargs,
        "get_cosine_with_min_lr_schedule_with_warmup",
        "Warmup, then a cosine to min_lr (or min_lr_rate of the lr).",
    ),
    "cosine_warmup_with_min_lr": (
        WarmupMinLrKwargs,
        "get_cosine_with_min_lr_schedule_with_warmup_lr_rate",
        "Warmup from (step + 1)/W of the lr, then a cosine to min_lr.",
    ),
    "warmup_stable_decay": (
        WsdKwargs,
        "get_wsd_schedule",
        "Warmup, stable, decay (WSD) with warmup_type, decay_type and min_lr_ratio.",
    ),
    "greedy": (
        GreedyKwargs,
        "get_greedy_schedule",
        "GreedyLR: raises the lr while the metric improves, lowers it on plateaus.",
    ),
}
"""Every ``SchedulerType`` of transformers 5.23.0: its scheduler_specific_kwargs, the function
``get_scheduler`` calls, and a one-line description."""

METRIC_DRIVEN = frozenset({"reduce_lr_on_plateau", "greedy"})
"""Names whose lr follows the request's ``metrics`` (``scheduler.step(metric)``)."""
NO_WARMUP = frozenset({"constant", "reduce_lr_on_plateau", "greedy"})
"""Names for which ``get_scheduler`` ignores ``num_warmup_steps``."""
NO_TRAINING = frozenset({"constant", "constant_with_warmup", "inverse_sqrt", *METRIC_DRIVEN})
"""Names for which ``get_scheduler`` ignores ``num_training_steps``."""

EXAMPLES: dict[str, dict[str, Any]] = {
    "linear": {"num_warmup_steps": 10, "num_training_steps": 100},
    "cosine": {"num_warmup_steps": 10, "num_training_steps": 100},
    "cosine_with_restarts": {
        "num_warmup_steps": 10,
        "num_training_steps": 100,
        "scheduler_specific_kwargs": {"num_cycles": 3},
    },
    "polynomial": {
        "num_warmup_steps": 10,
        "num_training_steps": 100,
        "scheduler_specific_kwargs": {"lr_end": 1e-4, "power": 2.0},
    },
    "constant": {},
    "constant_with_warmup": {"num_warmup_steps": 10},
    "inverse_sqrt": {"num_warmup_steps": 10},
    "reduce_lr_on_plateau": {"scheduler_specific_kwargs": {"factor": 0.5, "patience": 2}},
    "cosine_with_min_lr": {
        "num_warmup_steps": 10,
        "num_training_steps": 100,
        "scheduler_specific_kwargs": {"min_lr_rate": 0.1},
    },
    "cosine_warmup_with_min_lr": {
        "num_warmup_steps": 10,
        "num_training_steps": 100,
        "scheduler_specific_kwargs": {"min_lr_rate": 0.1},
    },
    "warmup_stable_decay": {
        "num_warmup_steps": 10,
        "num_training_steps": 100,
        "scheduler_specific_kwargs": {"num_decay_steps": 20, "min_lr_ratio": 0.01},
    },
    "greedy": {"scheduler_specific_kwargs": {"patience": 2, "min_lr": 0.001}},
}


def _argument_error(key: str, value: Any, message: str) -> ValidationError:
    return ValidationError.from_exception_data(
        "scheduler_specific_kwargs",
        [
            InitErrorDetails(
                type=PydanticCustomError("unexpected_argument", message),  # type: ignore[arg-type]
                loc=(key,),
                input=value,
            )
        ],
    )


@register
class TransformersSchedule(SchedulerBase):
    """A Hugging Face transformers schedule: ``get_scheduler(name, optimizer,
    num_warmup_steps, num_training_steps, scheduler_specific_kwargs)`` (transformers 5.23.0).

    ``num_warmup_steps`` below 1 is a ratio of ``num_training_steps`` (``ceil(T * ratio)``, as
    ``TrainingArguments`` reads ``warmup_steps``). The torch engine runs the real library; the
    vectorized engine evaluates its formulas.
    """

    type: Literal["transformers"] = "transformers"
    library: ClassVar[Library] = LIBRARY
    name: str = Field(
        description="A transformers SchedulerType: " + ", ".join(NAMES) + ".",
        examples=["cosine"],
    )
    num_warmup_steps: Number | None = Field(
        default=None,
        ge=0.0,
        le=MAX_INT,
        description="Warmup steps; below 1, a ratio of num_training_steps (ceil(T * ratio)).",
    )
    num_training_steps: NonNegInt | None = Field(
        default=None, description="Total optimizer steps the schedule is laid out for."
    )
    scheduler_specific_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="The name's own arguments (see the catalog)."
    )

    examples: ClassVar[list[dict[str, Any]]] = [
        {
            "type": "transformers",
            "name": "cosine",
            "num_warmup_steps": 10,
            "num_training_steps": 100,
        }
    ]

    @field_validator("name", mode="before")
    @classmethod
    def _known_name(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in NAMES:
            raise ValueError(
                f"transformers has no scheduler {value!r}.{did_you_mean(value, NAMES)} "
                f"Its SchedulerTypes: {', '.join(NAMES)}"
            )
        return value

    @field_validator("scheduler_specific_kwargs")
    @classmethod
    def _kwargs(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        name = info.data.get("name")
        if name is None:
            return value
        model = NAMES[name][0]
        for key, item in value.items():
            if key not in model.model_fields:
                owners = [n for n, (m, _, _) in NAMES.items() if key in m.model_fields]
                takes = ", ".join(model.model_fields) or "none"
                also = f"; {key!r} is an argument of {', '.join(owners)}" if owners else ""
                raise _argument_error(
                    key, item, f"transformers' {name} takes no {key!r} (it takes: {takes}){also}"
                )
        return model.model_validate(value).model_dump(exclude_unset=True)

    @model_validator(mode="after")
    def _arguments(self) -> "TransformersSchedule":
        name, w, t = self.name, self.num_warmup_steps, self.num_training_steps
        if name not in NO_WARMUP and w is None:
            raise _located_error(
                "num_warmup_steps", f"{name} requires num_warmup_steps (get_scheduler raises)"
            )
        if w is not None and 0 < w < 1 and t is None:
            raise _located_error(
                "num_warmup_steps",
                f"num_warmup_steps={w} is a ratio of num_training_steps, which is not given",
            )
        if name not in NO_TRAINING and name != "warmup_stable_decay" and t is None:
            raise _located_error(
                "num_training_steps", f"{name} requires num_training_steps (get_scheduler raises)"
            )
        kw = self.kwargs
        if name == "warmup_stable_decay":
            if t is None and kw.num_stable_steps is None:
                raise _located_error(
                    "num_training_steps",
                    "warmup_stable_decay needs num_training_steps or "
                    "scheduler_specific_kwargs.num_stable_steps",
                )
            if kw.num_stable_steps is None and t is not None:
                stable = t - self.warmup_steps - kw.num_decay_steps
                if stable < 0:
                    raise _located_error(
                        "scheduler_specific_kwargs.num_decay_steps",
                        f"num_warmup_steps ({self.warmup_steps}) + num_decay_steps "
                        f"({kw.num_decay_steps}) is longer than num_training_steps ({t}): the "
                        "stable phase would be negative. Lower num_decay_steps or raise "
                        "num_training_steps",
                    )
        if name == "polynomial" and t is not None and t == self.warmup_steps:
            raise _located_error(
                "num_training_steps",
                "polynomial divides by num_training_steps - num_warmup_steps, which is 0 here; "
                "give num_training_steps > num_warmup_steps",
            )
        if name in ("cosine_with_min_lr", "cosine_warmup_with_min_lr") and (
            (kw.min_lr is None) == (kw.min_lr_rate is None)
        ):
            raise _located_error(
                "scheduler_specific_kwargs",
                f"{name} needs exactly one of min_lr and min_lr_rate "
                f"({'both' if kw.min_lr is not None else 'neither'} given)",
            )
        return self

    @classmethod
    def from_query(cls, scheduler: dict[str, Any]) -> dict[str, Any]:
        """Return a GET form's flat scheduler parameters with the name's own arguments moved
        into ``scheduler_specific_kwargs`` (``?name=cosine&num_cycles=1`` nests num_cycles)."""
        top = {k: v for k, v in scheduler.items() if k in cls.model_fields}
        kwargs = {k: v for k, v in scheduler.items() if k not in cls.model_fields}
        return {**top, "scheduler_specific_kwargs": kwargs} if kwargs else top

    @property
    def kwargs(self) -> Any:
        """Return ``scheduler_specific_kwargs`` as the name's model (defaults filled)."""
        return NAMES[self.name][0].model_validate(self.scheduler_specific_kwargs)

    @property
    def warmup_steps(self) -> int:
        """Return the warmup in steps: a ratio below 1 resolved as TrainingArguments does."""
        w = self.num_warmup_steps or 0
        if w >= 1:
            return int(w)
        return math.ceil((self.num_training_steps or 0) * w)

    @property
    def metric_driven(self) -> bool:
        """Return True when the lr follows the request's metrics."""
        return self.name in METRIC_DRIVEN

    cost_per_value: ClassVar[float] = 25.0
    """The cost model's weight per value (about 1 ns of CPU each; measured 11-33 ns a value
    at 16 groups besides the per-step factor, bench/bench_cost.py)."""

    @property
    def cost_per_step(self) -> float:  # type: ignore[override]
        """Return the weight per scheduler step: the factor, evaluated once per step for
        every group (COST_PER_STEP); where its arguments leave it unbounded (polynomial
        with num_training_steps <= num_warmup_steps, a huge num_cycles) it is also checked
        densely, like an lr_lambda (DENSE_COST_PER_STEP)."""
        kw = self.kwargs
        cycles = abs(float(getattr(kw, "num_cycles", 0.0)))
        dense = cycles > SAFE_SCALE or (
            self.name == "polynomial" and (self.num_training_steps or 0) <= self.warmup_steps
        )
        return DENSE_COST_PER_STEP if dense else COST_PER_STEP.get(self.name, 60.0)

    @property
    def metric_scan_cost(self) -> float:
        """Return the weight per step of a metric-driven name's scan over the metrics."""
        return 900.0 if self.name == "greedy" else 500.0

    def build(self, optimizer: torch.optim.Optimizer, span: int) -> Any:
        return build(self, optimizer, closed=False)

    def build_closed(self, optimizer: torch.optim.Optimizer, span: int) -> Any:
        return build(self, optimizer, closed=True)

    def closed_form(self, sched: Any, device: torch.device) -> formulas.Leaf:
        return formulas.Lambda.of(sched, device)

    def metric_schedule(
        self,
        *,
        start: list[float],
        built: list[float],
        initial: list[float],
        metrics: list[float],
        span: int,
    ) -> Any:
        """Return the vectorized engine's scan of a metric-driven name: torch's
        ReduceLROnPlateau (``reduce_lr_on_plateau``) or GreedyLR (``greedy``, which resets
        to ``built``, the lrs it was constructed with) from ``start``."""
        from service.schedules.vectorized import plateau

        kw, groups = self.kwargs, len(start)
        if self.name == "reduce_lr_on_plateau":
            rule = plateau.PlateauRule.of(kw, groups)
            return plateau.MetricSchedule(lambda: rule.scan(start, metrics, span))
        greedy = plateau.GreedyRule(
            mode=kw.mode,
            factor=kw.factor,
            patience=kw.patience,
            threshold=kw.threshold,
            threshold_mode=kw.threshold_mode,
            cooldown=kw.cooldown,
            warmup=kw.warmup,
            min_lrs=plateau.per_group(kw.min_lr, groups),
            max_lrs=plateau.per_group(kw.max_lr, groups),
            eps=kw.eps,
            smooth=kw.smooth,
            window_size=kw.window_size,
            reset_start=kw.reset_start,
        )
        return plateau.MetricSchedule(lambda: greedy.scan(start, metrics, span, init=built))


COST_PER_STEP: dict[str, float] = {
    "constant": 15.0,
    "constant_with_warmup": 20.0,
    "linear": 15.0,
    "polynomial": 25.0,
    "cosine": 55.0,
    "inverse_sqrt": 25.0,
    "cosine_with_min_lr": 30.0,
    "cosine_warmup_with_min_lr": 30.0,
    "warmup_stable_decay": 45.0,
    "cosine_with_restarts": 40.0,
}
"""The cost model's weight per scheduler step of each name's factor (ns of CPU, measured by
bench/bench_cost.py at load 7-8 on the 2-core EPYC: 400k steps at 1 group, 25k at 16, median
of 7, two runs A/B against the dense check: constant 2-5 (before 8-14), linear 5-6 (17-24),
cosine 16-37 (52-66), inverse_sqrt 7-12 (29-38), the min_lr cosines 12-17 (43-53),
warmup_stable_decay 13-30 (69-96), cosine_with_restarts 19-24 (71-88); the 170-310 measured
before included 400k metrics the bench sent by mistake; greedy's scan 890)."""

DENSE_COST_PER_STEP = 130.0
"""The weight per step of a factor checked densely (its value at every step, as an
lr_lambda's): measured 52-96 ns a step besides the values before bounded factors skipped it."""


def _located_error(field: str, message: str) -> ValueError:
    return ValueError(f"{field}: {message}")


# --------------------------------------------------------------------------- closed forms


def _warm(e: Tensor, w: int) -> Tensor:
    return e / float(max(1, w))


def _cosine(progress: Tensor, cycles: float) -> Tensor:
    return 0.5 * (1.0 + torch.cos(math.pi * float(cycles) * 2.0 * progress))


def closed_form(spec: TransformersSchedule, lr_init: float) -> TensorFactor:
    """Return the lr multiplier of ``spec`` as a function of float64 step counts.

    ``lr_init`` is the optimizer's ``lr`` (``optimizer.defaults["lr"]``), which polynomial and
    an absolute ``min_lr`` divide by. The multiplier is the same for every group; the lr of
    group i at step e is ``lr_i * factor(e)``. Raises InvalidSpec where the library raises.
    """
    name, kw = spec.name, spec.kwargs
    w, t = spec.warmup_steps, spec.num_training_steps or 0
    where = torch.where

    if name == "constant":
        return TensorFactor(torch.ones_like, bound=1.0)
    if name == "constant_with_warmup":
        return TensorFactor(lambda e: where(e < w, e / float(max(1.0, w)), 1.0), bound=1.0)
    if name == "linear":
        span = float(max(1, t - w))
        return TensorFactor(
            lambda e: where(e < w, _warm(e, w), torch.clamp_min((t - e) / span, 0.0)),
            bound=1.0,
        )
    if name == "cosine":
        span = float(max(1, t - w))
        return TensorFactor(
            lambda e: where(
                e < w,
                _warm(e, w),
                torch.clamp_min(_cosine((e - w) / span, kw.num_cycles), 0.0),
            ),
            bound=_bound(1.0, scales=(kw.num_cycles,)),
        )
    if name == "cosine_with_restarts":
        span = float(max(1, t - w))

        def restarts(e: Tensor) -> Tensor:
            progress = (e - w) / span
            wave = 0.5 * (1.0 + torch.cos(math.pi * torch.remainder(kw.num_cycles * progress, 1.0)))
            decay = where(progress >= 1.0, 0.0, torch.clamp_min(wave, 0.0))
            return where(e < w, _warm(e, w), decay)

        return TensorFactor(restarts, bound=_bound(1.0, scales=(kw.num_cycles,)))
    if name == "polynomial":
        if not lr_init > kw.lr_end:
            raise InvalidSpec(
                f"scheduler.scheduler_specific_kwargs.lr_end: transformers refused this "
                f"scheduler: lr_end ({kw.lr_end}) must be smaller than initial lr ({lr_init})",
                loc=(*KWARGS, "lr_end"),
            )
        lr_range, decay_steps = lr_init - kw.lr_end, t - w

        def polynomial(e: Tensor) -> Tensor:
            pct = 1 - (e - w) / decay_steps
            decay = (lr_range * pct**kw.power + kw.lr_end) / lr_init
            return where(e < w, _warm(e, w), where(e > t, kw.lr_end / lr_init, decay))

        # pct in [0, 1] where it is selected (t > w), pct ** power in [0, 1] (power >= 0)
        safe = t > w and kw.power >= 0 and lr_init > 0 and math.isfinite(lr_range)
        bound = _bound(1.0, kw.lr_end / lr_init) if safe else None
        return TensorFactor(polynomial, bound=bound)
    if name == "inverse_sqrt":
        timescale = kw.timescale if kw.timescale is not None else (w or 10_000)
        shift = timescale - w
        return TensorFactor(
            lambda e: where(e < w, _warm(e, w), 1.0 / torch.sqrt((e + shift) / timescale)),
            bound=1.0,  # (e + shift) / timescale >= 1 from e = w on (timescale >= 1)
        )
    if name == "cosine_with_min_lr":
        rate = _min_lr_rate(kw, lr_init)
        span = float(max(1, t - w))

        def min_lr(e: Tensor) -> Tensor:
            factor = _cosine((e - w) / span, kw.num_cycles) * (1 - rate) + rate
            return where(e < w, _warm(e, w), torch.clamp_min(factor, 0.0))

        return TensorFactor(min_lr, bound=_bound(1.0, rate, scales=(kw.num_cycles,)))
    if name == "cosine_warmup_with_min_lr":
        rate = _min_lr_rate(kw, lr_init)
        wf, tf = float(w), float(t)
        span = max(1.0, tf - wf)
        wr = kw.warmup_lr_rate

        def warmup_min_lr(e: Tensor) -> Tensor:
            if wr is None:
                warm = (e + 1.0) / max(1.0, wf)
            else:
                warm = float(wr) + (1.0 - float(wr)) * e / max(1, wf - 1)
            factor = _cosine((e - wf + 1.0) / span, kw.num_cycles) * (1 - rate) + rate
            return where(e < wf, warm, torch.clamp_min(factor, 0.0))

        bound = _bound(1.0, rate, 0.0 if wr is None else wr, scales=(kw.num_cycles,))
        return TensorFactor(warmup_min_lr, bound=bound)
    if name == "warmup_stable_decay":
        stable = (
            kw.num_stable_steps if kw.num_stable_steps is not None else t - w - kw.num_decay_steps
        )
        decay, m = kw.num_decay_steps, kw.min_lr_ratio

        def shape(p: Tensor, kind: str, rising: bool) -> Tensor:
            if kind == "linear":
                return p if rising else 1.0 - p
            if kind == "cosine":
                if rising:
                    return 0.5 * (1.0 - torch.cos(math.pi * p))
                return 0.5 * (1.0 + torch.cos(math.pi * float(kw.num_cycles) * 2.0 * p))
            return 1.0 - torch.sqrt(1.0 - p) if rising else 1.0 - torch.sqrt(p)

        def wsd(e: Tensor) -> Tensor:
            up = shape(e / float(max(1, w)), kw.warmup_type, True) * (1.0 - m) + m
            down_p = (e - w - stable) / float(max(1, decay))
            down = shape(down_p, kw.decay_type, False) * (1.0 - m) + m
            out = where(e < w + stable + decay, torch.clamp_min(down, 0.0), m)
            out = where(e < w + stable, 1.0, out)
            return where(e < w, torch.clamp_min(up, 0.0), out)

        return TensorFactor(wsd, bound=_bound(1.0, m, scales=(kw.num_cycles,)))
    raise AssertionError(f"{name} has no closed form")  # metric-driven: a scan (metric_schedule)


SAFE_SCALE = 1e250
"""Largest ``|num_cycles|`` (a multiplier of the step count inside a cosine) for which a
closed form is bounded: times 2 pi and any int64 step count it stays finite."""


def _bound(*values: float, scales: tuple[float, ...] = ()) -> float | None:
    """Return the bound of a factor that lies between ``values`` at every step (each its own
    argument: 1, a min_lr_rate, a warmup_lr_rate), or None when one of them or a ``scales``
    multiplier of the steps is too large for the formula to be finite at every step."""
    if any(not abs(s) <= SAFE_SCALE for s in (*values, *scales)):
        return None
    return max(abs(v) for v in values)


def _min_lr_rate(kw: MinLrKwargs, lr_init: float) -> float:
    if kw.min_lr_rate is not None:
        return kw.min_lr_rate
    if lr_init == 0:
        raise InvalidSpec(
            "scheduler.scheduler_specific_kwargs.min_lr: transformers divides min_lr by the "
            "optimizer's lr, which is 0; give min_lr_rate instead",
            loc=(*KWARGS, "min_lr"),
        )
    return kw.min_lr / lr_init  # type: ignore[operator]


# --------------------------------------------------------------------------- torch


def build(spec: TransformersSchedule, optimizer: torch.optim.Optimizer, *, closed: bool) -> Any:
    """Return the scheduler ``spec`` names on ``optimizer``.

    ``closed=False``: the real ``transformers.get_scheduler`` (raises InvalidSpec when the
    library is not installed). ``closed=True``: a ``LambdaLR`` over :func:`closed_form`,
    which the vectorized engine reads (metric-driven names have none).
    """
    if closed and spec.metric_driven:
        return _metric_driven_closed(spec, optimizer)
    # the library's construction-time refusals, raised the same way for both engines
    factor = None if spec.metric_driven else closed_form(spec, optimizer.defaults["lr"])
    if closed:
        return lr_scheduler.LambdaLR(optimizer, factor)
    optimization = load(LIBRARY, "transformers.optimization")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optimization.get_scheduler(
            spec.name,
            optimizer,
            num_warmup_steps=spec.warmup_steps,
            num_training_steps=spec.num_training_steps,
            scheduler_specific_kwargs=dict(spec.scheduler_specific_kwargs),
        )


class GreedyStandIn:
    """What the vectorized engine builds for ``greedy`` (the scan computes its lrs): it
    refuses what GreedyLR's constructor refuses and, like it, leaves the lrs alone."""

    def __init__(self, optimizer: torch.optim.Optimizer, kwargs: GreedyKwargs) -> None:
        groups = len(optimizer.param_groups)
        for key in ("min_lr", "max_lr"):
            value = getattr(kwargs, key)
            if isinstance(value, (list, tuple)) and len(value) != groups:
                raise ValueError(f"expected {groups} {key}s, got {len(value)}")
        self.optimizer = optimizer


def _metric_driven_closed(spec: TransformersSchedule, optimizer: torch.optim.Optimizer) -> Any:
    """Return what get_scheduler builds for a metric-driven name, without the library:
    torch's ReduceLROnPlateau (as get_reduce_on_plateau_schedule does) or a GreedyLR stand-in."""
    if spec.name == "reduce_lr_on_plateau":
        return lr_scheduler.ReduceLROnPlateau(optimizer, **dict(spec.scheduler_specific_kwargs))
    return GreedyStandIn(optimizer, spec.kwargs)


@cache
def catalog_examples() -> dict[str, dict[str, Any]]:
    """Return a working scheduler spec per name."""
    return {name: {"type": "transformers", "name": name, **EXAMPLES[name]} for name in NAMES}


_LR_KWARGS = ("lr_end", "min_lr", "max_lr")
"""scheduler_specific_kwargs that are learning rates (batch scaling multiplies them)."""


def scaled_kwargs(spec: TransformersSchedule, factor: float) -> dict[str, Any]:
    """Return ``scheduler_specific_kwargs`` with every lr-valued entry times ``factor``."""
    out = dict(spec.scheduler_specific_kwargs)
    for key in _LR_KWARGS:
        value = out.get(key)
        if isinstance(value, list):
            out[key] = [v * factor for v in value]
        elif isinstance(value, (int, float)):
            out[key] = value * factor
    return out


_RISES = ("cosine", "cosine_with_min_lr", "cosine_warmup_with_min_lr")


def rising_step(spec: TransformersSchedule, span: int) -> int | None:
    """Return the first scheduler step after ``num_training_steps`` (at most 4096 later, and
    within ``span``) at which ``spec``'s lr is above the step before's; None when none is."""
    t = spec.num_training_steps
    if t is None:
        return None
    e = torch.arange(t, max(t, min(span - 1, t + 4096)) + 1, dtype=torch.float64)
    f = closed_form(spec, 1.0).evaluate_tensor(e)
    up = torch.nonzero(f[1:] > f[:-1])
    return int(e[1 + int(up[0, 0])]) if up.numel() else None


def caveats(spec: TransformersSchedule, request: Any, span: int) -> list[str]:
    """Return warnings for the surprises of ``spec`` (legal, reproduced as transformers does)."""
    out: list[str] = []
    name, kw, t = spec.name, spec.kwargs, spec.num_training_steps
    w = spec.num_warmup_steps
    if w is not None and 0 < w < 1:
        out.append(
            caveat(
                "hf-warmup-ratio",
                f"num_warmup_steps={w} is read as a ratio of num_training_steps, as the "
                f"Trainer's TrainingArguments.get_warmup_steps does: ceil({t} * {w}) = "
                f"{spec.warmup_steps} steps (get_scheduler itself would compare the step with "
                "the float)",
            )
        )
    if name in NO_WARMUP and w:
        out.append(
            caveat(
                "hf-ignores-argument",
                f"transformers' {name} ignores num_warmup_steps (get_scheduler drops it)",
            )
        )
    if name in NO_TRAINING and t is not None:
        out.append(
            caveat(
                "hf-ignores-argument",
                f"transformers' {name} ignores num_training_steps (get_scheduler drops it)",
            )
        )
    if name in _RISES and t is not None and span - 1 > t:
        out.append(
            caveat(
                "hf-cosine-rises-after-training",
                f"transformers' {name} rises again after num_training_steps={t}: from step "
                f"{t + 1} on, 0.5 * (1 + cos(pi * 2 * num_cycles * progress)) with progress > 1 "
                "climbs back toward the initial lr (as torch's CosineAnnealingLR does past "
                "T_max), where optax, timm and Megatron hold the final value",
                rising_step(spec, span),
            )
        )
    if name == "cosine_warmup_with_min_lr" and kw.warmup_lr_rate is None and spec.warmup_steps:
        out.append(
            caveat(
                "hf-warmup-starts-above-zero",
                f"transformers' cosine_warmup_with_min_lr starts at 1/num_warmup_steps = "
                f"{1 / spec.warmup_steps:g} of the lr at step 0, not at 0: its warmup is "
                "(step + 1) / num_warmup_steps (cosine_with_min_lr's is step / num_warmup_steps)",
                0,
            )
        )
    lr_init = request.optimizer.lr
    absolute = None
    if name == "polynomial":
        absolute = ("polynomial", "lr_end", kw.lr_end)
    elif name in ("cosine_with_min_lr", "cosine_warmup_with_min_lr") and kw.min_lr is not None:
        absolute = (name, "min_lr", kw.min_lr)
    if absolute is not None and request.param_groups:
        what, key, value = absolute
        for i, group in enumerate(request.param_groups):
            lr = group.get("lr", lr_init)
            if isinstance(lr, (int, float)) and lr != lr_init and lr_init:
                out.append(
                    caveat(
                        "hf-absolute-lr-per-group",
                        f"transformers' {what} ends group {i} at its lr x {key} / optimizer lr "
                        f"= {lr:g} x {value:g} / {lr_init:g} = {lr * value / lr_init:g}, not "
                        f"{key}={value:g}: it divides {key} by optimizer.defaults['lr']",
                        t,
                    )
                )
    if name == "warmup_stable_decay" and t is not None and kw.num_stable_steps is not None:
        out.append(
            caveat(
                "hf-wsd-stable-steps-wins",
                "both num_training_steps and num_stable_steps are given: transformers uses "
                "num_stable_steps (and warns)",
            )
        )
    return out


def _required(name: str) -> list[str]:
    out = ["name"]
    if name not in NO_WARMUP:
        out.append("num_warmup_steps")
    if name not in NO_TRAINING and name != "warmup_stable_decay":
        out.append("num_training_steps")
    return out


def catalog_entries() -> list[dict[str, Any]]:
    """Return one catalog entry per name: its JSON Schema (the name's own
    scheduler_specific_kwargs inlined), defaults, description and a ready request."""
    base = TransformersSchedule.model_json_schema()
    out = []
    for name, (kwargs, function, description) in NAMES.items():
        schema = {**base, "properties": dict(base["properties"]), "required": _required(name)}
        schema["properties"]["name"] = {**base["properties"]["name"], "const": name}
        schema["properties"]["scheduler_specific_kwargs"] = kwargs.model_json_schema()
        example: dict[str, Any] = {"scheduler": catalog_examples()[name], "steps": 120}
        if name in METRIC_DRIVEN:
            example["steps"] = 10
            example["metrics"] = [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.85, 0.85, 0.85]
        out.append(
            {
                "type": "transformers",
                "name": name,
                "torch_class": f"transformers.optimization.{function}",
                "description": description,
                "parameters": schema,
                "defaults": {
                    "num_warmup_steps": None,
                    "num_training_steps": None,
                    "scheduler_specific_kwargs": {
                        k: f.default for k, f in kwargs.model_fields.items() if not f.is_required()
                    },
                },
                "required": _required(name),
                "example": example,
            }
        )
    return out
