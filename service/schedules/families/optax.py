"""optax: the schedule functions of ``optax.schedules``, by name, with their own arguments.

``{"type": "optax", "schedule": "warmup_cosine_decay_schedule", "init_value": 0.0,
"peak_value": 0.1, "warmup_steps": 10, "decay_steps": 100}`` is
``optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=0.1, warmup_steps=10,
decay_steps=100)`` evaluated at ``count = k`` for scheduler step ``k``. An optax schedule is the
lr itself (optax has no param groups): every group gets its value, and each lr-valued argument
(``value``, ``init_value``, ``peak_value``, ``end_value``) may be a list, one per group, as
torch's ``OneCycleLR`` takes ``max_lr``. ``join_schedules`` composes any of them.

The formulas below are optax 0.2.8's (``optax/schedules/_schedule.py`` and ``_join.py``), in
float64. optax itself computes in float32 unless ``jax_enable_x64`` is set, so its default
values differ from these by float32 rounding (about 1e-7 relative).
"""

import math
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import BeforeValidator, Field, model_validator
from torch.optim.lr_scheduler import LRScheduler

from service.schedules.base import Number, PerGroup, SpecModel
from service.schedules.codes import caveat
from service.schedules.families import Library
from service.schedules.families.adapters import (
    ClosedFormLR,
    LibrarySchedulerBase,
    group_mismatch,
    scaled_values,
    selector_check,
)
from service.schedules.registry import register

LIBRARY = Library(family="optax", package="optax", version="0.2.8")

F64 = torch.float64
Tensor = torch.Tensor
Values = dict[str, float]
"""One group's lr-valued arguments."""


def _value(v: float | list[float], group: int) -> float:
    """Return group ``group``'s value (rows past the list are further requests' groups)."""
    return float(v[group % len(v)] if isinstance(v, list) else v)


COPY_SHARE = 0.06
"""The part of a schedule's ns per evaluated value that each value also costs after it (see
``cost_per_copy``)."""


class OptaxBase(LibrarySchedulerBase):
    """Common parts of the optax schedules: per-group values and evaluation per group."""

    type: Literal["optax"] = "optax"
    selector: ClassVar[str] = "schedule"
    library: ClassVar[Library] = LIBRARY
    sets_lr: ClassVar[bool] = True
    """The library sets the lr itself (the optimizer's and groups' lr are not read)."""
    lr_fields: ClassVar[tuple[str, ...]] = ()
    """The lr-valued arguments (numbers or one per group)."""

    def mismatch(self, groups: int) -> tuple[tuple[str | int, ...], str] | None:
        """Return (location, message) of a per-group list not ``groups`` long, or None."""
        return group_mismatch(self, self.lr_fields, groups)

    def scaled_update(self, factor: float) -> dict[str, Any]:
        """Return batch scaling's update of this schedule (nested ones included)."""
        return scaled_values(self, self.lr_fields, factor)

    def values(self, group: int) -> Values:
        return {f: _value(getattr(self, f), group) for f in self.lr_fields}

    # The cost model's weights (about 1 ns of CPU each), measured by bench/bench_cost.py at
    # load 5.5 on the 2-core EPYC (320k values at 1 group and at 16, median of 3, uncached):
    # optax's schedule is evaluated once per distinct group (groups of equal values share
    # one evaluation, copied to each), on chunks of 65 536 / distinct groups steps, so an
    # evaluated value costs ``cost_per_value`` plus ``cost_per_group`` per distinct group
    # (each one's tensor operations on shorter tensors), and every value ``cost_per_copy``,
    # e.g. warmup_cosine_decay_schedule 32 ns a value at 1 group; 102 at 16 distinct ones.
    # 16 equal groups (measured again at load 5-9, 400k values, median of 7, A/B against the
    # per-group evaluation): 7.5-30 ns a value for the catalog examples (before 11-190),
    # 24-205 for 8-64 boundaries (before 350-2340).
    cost_per_value: ClassVar[float] = 30.0
    cost_per_group: ClassVar[float] = 5.0
    """More ns per evaluated value for each distinct param group (per distinct group and
    chunk: × 65 536 values)."""
    cost_per_copy: ClassVar[float] = 9.0
    """ns per value after its evaluation (the copy of its group's row, the finiteness check,
    the answer's conversion), plus COPY_SHARE of ``cost_per_value``: measured 6-7 ns a value
    over what 16 equal groups' one evaluation costs for the catalog examples, 10-32 for
    8-64 boundaries."""

    def cost_weights(self) -> tuple[float, float]:
        """Return (ns per value, more ns per value per group) of this schedule."""
        return self.cost_per_value, self.cost_per_group

    def vectorized_cost(self, steps: int, groups: int) -> float:
        """Return the cost of ``steps`` × ``groups`` values: each value's, and each group's
        per chunk (a chunk at least, however few the steps: a schedule of many boundaries
        costs its tensor operations per group even for one step)."""
        from service.schedules.budget import CLOSED_FORM_VALUES, chunks

        per_value, per_group = self.cost_weights()
        distinct = self.distinct_groups(groups)
        overhead = chunks(steps, distinct) * distinct * per_group * CLOSED_FORM_VALUES
        copy = self.cost_per_copy + COPY_SHARE * per_value
        return steps * (distinct * per_value + groups * copy) + overhead

    def fn(self, count: Tensor, group: int) -> Tensor:
        """Return the schedule at ``count`` (float64 step counts) for param group ``group``."""
        raise NotImplementedError

    def build(self, optimizer: torch.optim.Optimizer, span: int) -> LRScheduler:
        """Return the torch engine's scheduler: the closed form set on a real optimizer (optax
        is not torch; the parity tests compare these values with optax itself)."""
        return ClosedFormLR(optimizer, self)

    def caveats(self, span: int) -> list[str]:
        """Return warnings for the cross-library surprises this spec meets in ``span`` steps."""
        return []

    def lr(self, k: Tensor, base: Tensor) -> Tensor:
        """Return the lr at scheduler steps ``k`` (int64), shape (groups, len(k)).

        ``base`` (the groups' initial lrs) only gives the number of groups: optax's schedule
        is the lr itself.
        """
        count = k.to(F64)
        groups = base.shape[0]
        keys = [self.group_key(g) for g in range(groups)]
        distinct: dict[tuple[str, ...], Tensor] = {}
        for g, key in enumerate(keys):
            if key not in distinct:  # groups of equal values share one evaluation
                distinct[key] = self.fn(count, g) * torch.ones_like(count)
        if len(distinct) == 1:
            return next(iter(distinct.values())).expand(groups, -1).clone()
        return torch.stack([distinct[key] for key in keys])

    def group_lists(self) -> list[list[float]]:
        """Return the per-group lists among this schedule's lr-valued arguments (nested
        schedules' included): the only way ``fn`` depends on the group."""
        # (an empty list is refused by the per-group check; the cost model, which runs before
        # it, must not divide by its length)
        return [v for f in self.lr_fields if isinstance(v := getattr(self, f), list) and v]

    def group_key(self, group: int) -> tuple[str, ...]:
        """Return what ``fn`` reads of group ``group``: its value of every per-group list, by
        its bits (``float.hex``, so 0.0 and -0.0 differ). Groups of equal keys get the same
        values to the bit; with no list every group has the key ``()``."""
        return tuple(float(v[group % len(v)]).hex() for v in self.group_lists())

    def distinct_groups(self, groups: int) -> int:
        """Return how many of ``groups`` param groups have distinct values (evaluated once
        each; the others are copies)."""
        if not self.group_lists():
            return 1
        return len({self.group_key(g) for g in range(groups)})


# --------------------------------------------------------------------------- formulas


def polynomial(count: Tensor, init: float, end: float, power: float, steps: int, begin: int):
    """optax.polynomial_schedule: init until ``begin``, then to ``end`` along ``frac**power``."""
    if steps <= 0:
        return torch.full_like(count, init)
    begin = max(begin, 0)
    c = torch.clamp(count - begin, 0, steps)
    frac = 1 - c / steps
    return (init - end) * (frac**power) + end


def exponential(
    count: Tensor,
    init: float,
    steps: int,
    rate: float,
    begin: int,
    staircase: bool,
    end: float | None,
) -> Tensor:
    """optax.exponential_decay: ``init * rate ** ((count - begin) / steps)``, clipped at end."""
    if steps <= 0 or rate == 0:
        return torch.full_like(count, init)
    begin = max(begin, 0)
    decreased = count - begin
    p = decreased / steps
    if staircase:
        p = torch.floor(p)
    decayed = torch.where(
        decreased <= 0,
        torch.full_like(count, init),
        init * torch.pow(torch.tensor(rate, dtype=F64), p),
    )
    if end is not None:
        clip = torch.clamp_min if rate < 1.0 else torch.clamp_max
        decayed = clip(decayed, end)
    return decayed


def cosine_decay(count: Tensor, init: float, steps: int, alpha: float, exponent: float) -> Tensor:
    """optax.cosine_decay_schedule: ``init * ((1-alpha) * (0.5(1+cos(pi t/T)))**p + alpha)``."""
    c = torch.clamp_max(count, float(steps))
    cosine = 0.5 * (1 + torch.cos(math.pi * c / float(steps)))
    decayed = (1 - alpha) * cosine**exponent + alpha
    return init * decayed


def piecewise_interpolate(
    count: Tensor, kind: str, init: float, boundaries_and_scales: dict[int, float] | None
) -> Tensor:
    """optax.piecewise_interpolate_schedule: interpolate between the accumulated scales."""
    items = sorted(boundaries_and_scales.items()) if boundaries_and_scales else []
    bounds = [0, *(b for b, _ in items)]
    values = [init]
    for _, scale in items:
        values.append(values[-1] * scale)
    out = torch.zeros_like(count)
    for j in range(len(bounds) - 1):
        lo, hi = bounds[j], bounds[j + 1]
        size = max(hi - lo, 1)
        inside = (lo <= count) & (count < hi)
        pct = (count - lo) / size
        start, end = values[j], values[j + 1]
        if kind == "linear":
            interp = (end - start) * pct + start
        else:
            interp = end + (start - end) / 2.0 * (torch.cos(math.pi * pct) + 1)
        out = out + inside * interp
    return out + (bounds[-1] <= count).to(F64) * values[-1]


def piecewise_constant(
    count: Tensor, init: float, boundaries_and_scales: dict[int, float] | None
) -> Tensor:
    """optax.piecewise_constant_schedule: ``init`` times every scale whose boundary <= count."""
    v = torch.full_like(count, init)
    for threshold, scale in sorted((boundaries_and_scales or {}).items()):
        indicator = torch.clamp_min(torch.sign(threshold - count), 0.0)
        v = v * indicator + (1 - indicator) * scale * v
    return v


def join(count: Tensor, parts: list[Tensor | Any], boundaries: list[int]) -> Tensor:
    """optax.join_schedules: ``parts[i]`` (a function of the count since its boundary)."""
    output = parts[0](count)
    for boundary, part in zip(boundaries, parts[1:], strict=False):
        output = torch.where(count < boundary, output, part(count - boundary))
    return output


# --------------------------------------------------------------------------- warnings


def _held_after(end: int, span: int, what: str) -> list[str]:
    if end >= span - 1:
        return []
    return [
        caveat(
            "optax-holds-final-value",
            f"optax holds {what} from step {end} on; torch's CosineAnnealingLR would rise again "
            "after T_max",
            end,
        )
    ]


def _onecycle_peak(steps: int, pct_start: float, span: int) -> list[str]:
    peak = int(pct_start * steps)
    torch_peak = float(pct_start * steps) - 1
    if peak >= span or peak == torch_peak:
        return []
    return [
        caveat(
            "optax-onecycle-peak-step",
            f"optax peaks at step {peak} (int(pct_start * transition_steps)); torch's OneCycleLR "
            f"with total_steps={steps}, pct_start={pct_start:g} peaks at step {torch_peak:g}",
            peak,
        )
    ]


# --------------------------------------------------------------------------- specs

Scales = Annotated[
    dict[int, Annotated[float, Field(ge=0.0, allow_inf_nan=False)]] | None,
    Field(
        description="{step: scale}: the scale multiplies the value from that step on "
        "(JSON keys are the steps as strings).",
        examples=[{"100": 0.1, "200": 0.1}],
    ),
]


@register
class ConstantSchedule(OptaxBase):
    """``value`` at every step. optax: ``constant_schedule(value)``."""

    schedule: Literal["constant_schedule"] = "constant_schedule"
    cost_per_value: ClassVar[float] = 16
    cost_per_group: ClassVar[float] = 0.1  # measured 16.1, 16.9 ns a value at 1, 16 groups
    value: PerGroup = Field(description="The value, or one per group.")
    lr_fields = ("value",)
    examples: ClassVar[list[dict[str, Any]]] = [
        {"type": "optax", "schedule": "constant_schedule", "value": 0.01}
    ]

    def fn(self, count: Tensor, group: int) -> Tensor:
        return torch.full_like(count, self.values(group)["value"])


@register
class PolynomialSchedule(OptaxBase):
    """From ``init_value`` to ``end_value`` along ``(1 - t/T) ** power`` after ``transition_begin``.

    optax: ``polynomial_schedule(init_value, end_value, power, transition_steps,
    transition_begin=0)``; ``transition_steps <= 0`` holds ``init_value``.
    """

    schedule: Literal["polynomial_schedule"] = "polynomial_schedule"
    cost_per_value: ClassVar[float] = 19
    cost_per_group: ClassVar[float] = 1.2  # measured 20.1, 38.2 ns a value at 1, 16 groups
    init_value: PerGroup
    end_value: PerGroup
    power: Number
    transition_steps: int = Field(description="Steps of the transition (<= 0: constant).")
    transition_begin: int = Field(default=0, description="Steps held at init_value first.")
    lr_fields = ("init_value", "end_value")
    examples: ClassVar[list[dict[str, Any]]] = [
        {
            "type": "optax",
            "schedule": "polynomial_schedule",
            "init_value": 0.1,
            "end_value": 0.001,
            "power": 2.0,
            "transition_steps": 100,
        }
    ]

    def fn(self, count: Tensor, group: int) -> Tensor:
        v = self.values(group)
        return polynomial(
            count,
            v["init_value"],
            v["end_value"],
            self.power,
            self.transition_steps,
            self.transition_begin,
        )


@register
class LinearSchedule(OptaxBase):
    """From ``init_value`` to ``end_value`` linearly over ``transition_steps``.

    optax: ``linear_schedule(init_value, end_value, transition_steps, transition_begin=0)``.
    """

    schedule: Literal["linear_schedule"] = "linear_schedule"
    cost_per_value: ClassVar[float] = 19
    cost_per_group: ClassVar[float] = 1.2  # measured 19.7, 36.9 ns a value at 1, 16 groups
    init_value: PerGroup
    end_value: PerGroup
    transition_steps: int
    transition_begin: int = 0
    lr_fields = ("init_value", "end_value")
    examples: ClassVar[list[dict[str, Any]]] = [
        {
            "type": "optax",
            "schedule": "linear_schedule",
            "init_value": 0.0,
            "end_value": 0.1,
            "transition_steps": 50,
        }
    ]

    def fn(self, count: Tensor, group: int) -> Tensor:
        v = self.values(group)
        return polynomial(
            count, v["init_value"], v["end_value"], 1, self.transition_steps, self.transition_begin
        )


@register
class PiecewiseConstantSchedule(OptaxBase):
    """``init_value`` times every scale whose boundary has been reached.

    optax: ``piecewise_constant_schedule(init_value, boundaries_and_scales=None)``.
    """

    schedule: Literal["piecewise_constant_schedule"] = "piecewise_constant_schedule"

    def cost_weights(self) -> tuple[float, float]:
        """Return the weights: 16 + 4.6 ns a value per boundary, 0.1 + 0.7 per group
        (measured: 2 boundaries 26.1 / 46.0 ns a value at 1 / 16 groups, 64: 352 / 1009)."""
        n = len(self.boundaries_and_scales or {})
        return 16.0 + 4.6 * n, 0.1 + 0.7 * n

    init_value: PerGroup
    boundaries_and_scales: Scales = None
    lr_fields = ("init_value",)
    examples: ClassVar[list[dict[str, Any]]] = [
        {
            "type": "optax",
            "schedule": "piecewise_constant_schedule",
            "init_value": 0.1,
            "boundaries_and_scales": {"30": 0.1, "60": 0.1},
        }
    ]

    def fn(self, count: Tensor, group: int) -> Tensor:
        return piecewise_constant(
            count, self.values(group)["init_value"], self.boundaries_and_scales
        )


@register
class ExponentialDecay(OptaxBase):
    """``init_value * decay_rate ** ((t - transition_begin) / transition_steps)``.

    optax: ``exponential_decay(init_value, transition_steps, decay_rate, transition_begin=0,
    staircase=False, end_value=None)``; ``staircase`` floors the exponent; ``end_value`` is a
    lower bound when ``decay_rate < 1``, else an upper bound.
    """

    schedule: Literal["exponential_decay"] = "exponential_decay"
    cost_per_value: ClassVar[float] = 36
    cost_per_group: ClassVar[float] = 1.6  # measured 37.7, 61.5 ns a value at 1, 16 groups
    init_value: PerGroup
    transition_steps: int = Field(description="Steps per factor decay_rate (<= 0: constant).")
    decay_rate: Number = Field(description="Factor per transition_steps (0: constant).")
    transition_begin: int = 0
    staircase: bool = False
    end_value: PerGroup | None = None
    lr_fields = ("init_value", "end_value")
    examples: ClassVar[list[dict[str, Any]]] = [
        {
            "type": "optax",
            "schedule": "exponential_decay",
            "init_value": 0.1,
            "transition_steps": 10,
            "decay_rate": 0.5,
            "staircase": True,
            "end_value": 0.01,
        }
    ]

    def values(self, group: int) -> Values:
        out = {"init_value": _value(self.init_value, group)}
        if self.end_value is not None:
            out["end_value"] = _value(self.end_value, group)
        return out

    def fn(self, count: Tensor, group: int) -> Tensor:
        v = self.values(group)
        return exponential(
            count,
            v["init_value"],
            self.transition_steps,
            self.decay_rate,
            self.transition_begin,
            self.staircase,
            v.get("end_value"),
        )


@register
class CosineDecaySchedule(OptaxBase):
    """Cosine from ``init_value`` to ``alpha * init_value`` over ``decay_steps``, then held.

    optax: ``cosine_decay_schedule(init_value, decay_steps, alpha=0.0, exponent=1.0)``.
    """

    schedule: Literal["cosine_decay_schedule"] = "cosine_decay_schedule"
    cost_per_value: ClassVar[float] = 24
    cost_per_group: ClassVar[float] = 1.2  # measured 24.8, 42.2 ns a value at 1, 16 groups
    init_value: PerGroup
    decay_steps: int = Field(gt=0, description="Steps of the decay (> 0).")
    alpha: Number = Field(default=0.0, description="Final value as a fraction of init_value.")
    exponent: Number = 1.0
    lr_fields = ("init_value",)
    examples: ClassVar[list[dict[str, Any]]] = [
        {
            "type": "optax",
            "schedule": "cosine_decay_schedule",
            "init_value": 0.1,
            "decay_steps": 100,
        }
    ]

    def fn(self, count: Tensor, group: int) -> Tensor:
        init = self.values(group)["init_value"]
        return cosine_decay(count, init, self.decay_steps, self.alpha, self.exponent)

    def caveats(self, span: int) -> list[str]:
        return _held_after(self.decay_steps, span, "alpha * init_value")


@register
class PiecewiseInterpolateSchedule(OptaxBase):
    """Linear or cosine interpolation between the accumulated scales at each boundary.

    optax: ``piecewise_interpolate_schedule(interpolate_type, init_value,
    boundaries_and_scales=None)``.
    """

    schedule: Literal["piecewise_interpolate_schedule"] = "piecewise_interpolate_schedule"

    def cost_weights(self) -> tuple[float, float]:
        """Return the weights: 9 + 11.7 ns a value per boundary, 0.8 + 1.3 per group
        (measured: 2 boundaries 35.5 / 84.2 ns a value at 1 / 16 groups, 64: 836 / 2058)."""
        n = len(self.boundaries_and_scales or {})
        return 9.0 + 11.7 * n, 0.8 + 1.3 * n

    interpolate_type: Literal["linear", "cosine"]
    init_value: PerGroup
    boundaries_and_scales: Scales = None
    lr_fields = ("init_value",)
    examples: ClassVar[list[dict[str, Any]]] = [
        {
            "type": "optax",
            "schedule": "piecewise_interpolate_schedule",
            "interpolate_type": "linear",
            "init_value": 0.1,
            "boundaries_and_scales": {"40": 0.1, "80": 0.1},
        }
    ]

    def fn(self, count: Tensor, group: int) -> Tensor:
        init = self.values(group)["init_value"]
        return piecewise_interpolate(count, self.interpolate_type, init, self.boundaries_and_scales)


class _Onecycle(OptaxBase):
    """The one-cycle schedules: ``piecewise_interpolate`` from ``peak_value / div_factor``
    through the scales :meth:`scales` gives, peaking at ``int(pct_start * transition_steps)``.
    Each subclass declares the fields (``transition_steps``, ``peak_value``, ``pct_start``,
    ``div_factor``, ``final_div_factor``) in optax's argument order."""

    interpolation: ClassVar[str] = "linear"
    lr_fields: ClassVar[tuple[str, ...]] = ("peak_value",)

    @staticmethod
    def example(schedule: str) -> list[dict[str, Any]]:
        """Return the OpenAPI example of the one-cycle schedule named ``schedule``."""
        return [{"type": "optax", "schedule": schedule, "transition_steps": 100, "peak_value": 0.1}]

    def scales(self, t: int) -> dict[int, float]:
        """Return ``boundaries_and_scales`` for ``transition_steps = t``."""
        raise NotImplementedError

    def fn(self, count: Tensor, group: int) -> Tensor:
        peak = self.values(group)["peak_value"]
        init = peak / self.div_factor  # type: ignore[attr-defined]
        scales = self.scales(self.transition_steps)  # type: ignore[attr-defined]
        return piecewise_interpolate(count, self.interpolation, init, scales)

    def caveats(self, span: int) -> list[str]:
        return _onecycle_peak(self.transition_steps, self.pct_start, span)  # type: ignore[attr-defined]


@register
class LinearOnecycleSchedule(_Onecycle):
    """Three linear phases: up to ``peak_value``, back down, then to ``init/final_div_factor``.

    optax: ``linear_onecycle_schedule(transition_steps, peak_value, pct_start=0.3,
    pct_final=0.85, div_factor=25.0, final_div_factor=1e4)``.
    """

    schedule: Literal["linear_onecycle_schedule"] = "linear_onecycle_schedule"
    cost_per_value: ClassVar[float] = 36
    cost_per_group: ClassVar[float] = 4.9  # measured 40.9, 113.7 ns a value at 1, 16 groups
    transition_steps: int = Field(gt=0)
    peak_value: PerGroup
    pct_start: Number = 0.3
    pct_final: Number = 0.85
    div_factor: Number = 25.0
    final_div_factor: Number = 1e4
    examples: ClassVar[list[dict[str, Any]]] = _Onecycle.example("linear_onecycle_schedule")

    def scales(self, t: int) -> dict[int, float]:
        return {
            int(self.pct_start * t): self.div_factor,
            int(self.pct_final * t): 1.0 / self.div_factor,
            t: 1.0 / self.final_div_factor,
        }


@register
class CosineOnecycleSchedule(_Onecycle):
    """Cosine up to ``peak_value`` over ``pct_start`` of the steps, then cosine down.

    optax: ``cosine_onecycle_schedule(transition_steps, peak_value, pct_start=0.3,
    div_factor=25.0, final_div_factor=1e4)``. The peak is at step ``int(pct_start * T)``
    (torch's OneCycleLR peaks one step earlier, at ``pct_start * T - 1``).
    """

    schedule: Literal["cosine_onecycle_schedule"] = "cosine_onecycle_schedule"
    cost_per_value: ClassVar[float] = 34
    cost_per_group: ClassVar[float] = 7.3  # measured 41.2, 150.3 ns a value at 1, 16 groups
    transition_steps: int = Field(gt=0)
    peak_value: PerGroup
    pct_start: Number = 0.3
    div_factor: Number = 25.0
    final_div_factor: Number = 1e4
    interpolation = "cosine"
    examples: ClassVar[list[dict[str, Any]]] = _Onecycle.example("cosine_onecycle_schedule")

    def scales(self, t: int) -> dict[int, float]:
        return {
            int(self.pct_start * t): self.div_factor,
            int(t): 1.0 / (self.div_factor * self.final_div_factor),
        }


@register
class WarmupConstantSchedule(OptaxBase):
    """Linear warmup from ``init_value`` to ``peak_value``, then held.

    optax: ``warmup_constant_schedule(init_value, peak_value, warmup_steps)``.
    """

    schedule: Literal["warmup_constant_schedule"] = "warmup_constant_schedule"
    cost_per_value: ClassVar[float] = 15
    cost_per_group: ClassVar[float] = 2.3  # measured 17.4, 52.2 ns a value at 1, 16 groups
    init_value: PerGroup
    peak_value: PerGroup
    warmup_steps: int
    lr_fields = ("init_value", "peak_value")
    examples: ClassVar[list[dict[str, Any]]] = [
        {
            "type": "optax",
            "schedule": "warmup_constant_schedule",
            "init_value": 0.0,
            "peak_value": 0.1,
            "warmup_steps": 10,
        }
    ]

    def fn(self, count: Tensor, group: int) -> Tensor:
        v = self.values(group)
        return polynomial(count, v["init_value"], v["peak_value"], 1, self.warmup_steps, 0)


class _WarmupCosine(SpecModel):
    """The arguments of one ``warmup_cosine_decay_schedule`` (also one cycle of sgdr)."""

    init_value: PerGroup
    peak_value: PerGroup
    warmup_steps: int
    decay_steps: int = Field(
        description="Total length including the warmup; the cosine runs decay_steps - "
        "warmup_steps (> 0) steps."
    )
    end_value: PerGroup = 0.0
    exponent: Number = 1.0

    @model_validator(mode="after")
    def _cosine_length(self) -> "_WarmupCosine":
        if self.decay_steps - self.warmup_steps <= 0:
            raise ValueError(
                f"decay_steps: optax's cosine part runs decay_steps - warmup_steps = "
                f"{self.decay_steps - self.warmup_steps} steps, and optax requires it > 0; "
                f"make decay_steps larger than warmup_steps ({self.warmup_steps})"
            )
        return self

    def cosine(self, count: Tensor, group: int) -> Tensor:
        init = _value(self.init_value, group)
        peak = _value(self.peak_value, group)
        end = _value(self.end_value, group)
        alpha = 0.0 if peak == 0.0 else end / peak
        warm = self.warmup_steps
        return join(
            count,
            [
                lambda c: polynomial(c, init, peak, 1, warm, 0),
                lambda c: cosine_decay(c, peak, self.decay_steps - warm, alpha, self.exponent),
            ],
            [warm],
        )


@register
class WarmupCosineDecaySchedule(OptaxBase, _WarmupCosine):
    """Linear warmup to ``peak_value``, then cosine to ``end_value`` at ``decay_steps``.

    optax: ``warmup_cosine_decay_schedule(init_value, peak_value, warmup_steps, decay_steps,
    end_value=0.0, exponent=1.0)``; ``decay_steps`` includes the warmup. After it the value
    stays at ``end_value`` (torch's CosineAnnealingLR rises again).
    """

    schedule: Literal["warmup_cosine_decay_schedule"] = "warmup_cosine_decay_schedule"
    cost_per_value: ClassVar[float] = 28
    cost_per_group: ClassVar[float] = 4.7  # measured 32.3, 102.4 ns a value at 1, 16 groups
    lr_fields = ("init_value", "peak_value", "end_value")
    examples: ClassVar[list[dict[str, Any]]] = [
        {
            "type": "optax",
            "schedule": "warmup_cosine_decay_schedule",
            "init_value": 0.0,
            "peak_value": 0.1,
            "warmup_steps": 10,
            "decay_steps": 100,
        }
    ]

    def fn(self, count: Tensor, group: int) -> Tensor:
        return self.cosine(count, group)

    def caveats(self, span: int) -> list[str]:
        return _held_after(self.decay_steps, span, "end_value")


@register
class WarmupExponentialDecaySchedule(OptaxBase):
    """Linear warmup to ``peak_value``, then ``exponential_decay`` from it.

    optax: ``warmup_exponential_decay_schedule(init_value, peak_value, warmup_steps,
    transition_steps, decay_rate, transition_begin=0, staircase=False, end_value=None)``.
    """

    schedule: Literal["warmup_exponential_decay_schedule"] = "warmup_exponential_decay_schedule"
    cost_per_value: ClassVar[float] = 43
    cost_per_group: ClassVar[float] = 4.3  # measured 47.5, 112.2 ns a value at 1, 16 groups
    init_value: PerGroup
    peak_value: PerGroup
    warmup_steps: int
    transition_steps: int
    decay_rate: Number
    transition_begin: int = 0
    staircase: bool = False
    end_value: PerGroup | None = None
    lr_fields = ("init_value", "peak_value", "end_value")
    examples: ClassVar[list[dict[str, Any]]] = [
        {
            "type": "optax",
            "schedule": "warmup_exponential_decay_schedule",
            "init_value": 0.0,
            "peak_value": 0.1,
            "warmup_steps": 10,
            "transition_steps": 20,
            "decay_rate": 0.5,
        }
    ]

    def fn(self, count: Tensor, group: int) -> Tensor:
        init = _value(self.init_value, group)
        peak = _value(self.peak_value, group)
        end = None if self.end_value is None else _value(self.end_value, group)
        warm = self.warmup_steps
        return join(
            count,
            [
                lambda c: polynomial(c, init, peak, 1, warm, 0),
                lambda c: exponential(
                    c,
                    peak,
                    self.transition_steps,
                    self.decay_rate,
                    self.transition_begin,
                    self.staircase,
                    end,
                ),
            ],
            [warm],
        )


@register
class SgdrSchedule(OptaxBase):
    """SGD with warm restarts: one ``warmup_cosine_decay_schedule`` per cycle, back to back.

    optax: ``sgdr_schedule(cosine_kwargs)``; each cycle lasts its ``decay_steps``.
    """

    schedule: Literal["sgdr_schedule"] = "sgdr_schedule"

    def cost_weights(self) -> tuple[float, float]:
        """Return the weights: 33 + 12.5 ns a value per cycle, 1 + 3 per group (measured:
        2 cycles 64.7 / 167.5 ns a value at 1 / 16 groups, 8 cycles 157 / 524)."""
        n = len(self.cosine_kwargs)
        return 33.0 + 12.5 * n, 1.0 + 3.0 * n

    cosine_kwargs: list[_WarmupCosine] = Field(
        min_length=1, max_length=1000, description="One warmup_cosine_decay_schedule per cycle."
    )
    examples: ClassVar[list[dict[str, Any]]] = [
        {
            "type": "optax",
            "schedule": "sgdr_schedule",
            "cosine_kwargs": [
                {"init_value": 0.0, "peak_value": 0.1, "warmup_steps": 5, "decay_steps": 50},
                {"init_value": 0.0, "peak_value": 0.05, "warmup_steps": 5, "decay_steps": 100},
            ],
        }
    ]

    def group_lists(self) -> list[list[float]]:
        names = ("init_value", "peak_value", "end_value")
        return [
            v
            for c in self.cosine_kwargs
            for f in names
            if isinstance(v := getattr(c, f), list) and v
        ]

    def mismatch(self, groups: int) -> tuple[tuple[str | int, ...], str] | None:
        names = ("init_value", "peak_value", "end_value")
        for i, cycle in enumerate(self.cosine_kwargs):
            found = group_mismatch(cycle, names, groups, ("cosine_kwargs", i))
            if found:
                return found
        return None

    def scaled_update(self, factor: float) -> dict[str, Any]:
        """Return batch scaling's update: every cycle's lr-valued arguments times ``factor``."""
        names = ("init_value", "peak_value", "end_value")
        cycles = [c.model_copy(update=scaled_values(c, names, factor)) for c in self.cosine_kwargs]
        return {"cosine_kwargs": cycles}

    def fn(self, count: Tensor, group: int) -> Tensor:
        boundaries, parts, step = [], [], 0
        for cycle in self.cosine_kwargs:
            parts.append(lambda c, cycle=cycle: cycle.cosine(c, group))
            boundaries.append(step + cycle.decay_steps)
            step += cycle.decay_steps
        return join(count, parts, boundaries[:-1])

    def caveats(self, span: int) -> list[str]:
        end = sum(cycle.decay_steps for cycle in self.cosine_kwargs)
        return _held_after(end, span, "the last cycle's end_value")


class JoinSchedules(OptaxBase):
    """Runs ``schedules`` one after another; each restarts its count at its boundary.

    optax: ``join_schedules(schedules, boundaries)``; ``boundaries`` has one fewer entry.
    """

    schedule: Literal["join_schedules"] = "join_schedules"

    def cost_weights(self) -> tuple[float, float]:
        """Return the joined schedules' weights summed, and 2 ns a value per group for each
        boundary's selection (measured: 8 cosine_decay_schedules 150 / 500 ns a value at 1 /
        16 groups; linear then cosine 31.2 / 110)."""
        parts = [s.cost_weights() for s in self.schedules]
        return sum(v for v, _ in parts), sum(g for _, g in parts) + 2.0 * len(self.boundaries)

    schedules: list["OptaxSchedule"] = Field(min_length=1, max_length=64)
    boundaries: list[int] = Field(description="One fewer than schedules: where each starts.")
    examples: ClassVar[list[dict[str, Any]]] = [
        {
            "type": "optax",
            "schedule": "join_schedules",
            "schedules": [
                {
                    "type": "optax",
                    "schedule": "linear_schedule",
                    "init_value": 0.0,
                    "end_value": 0.1,
                    "transition_steps": 10,
                },
                {
                    "type": "optax",
                    "schedule": "cosine_decay_schedule",
                    "init_value": 0.1,
                    "decay_steps": 90,
                },
            ],
            "boundaries": [10],
        }
    ]

    @model_validator(mode="after")
    def _lengths(self) -> "JoinSchedules":
        if len(self.boundaries) != len(self.schedules) - 1:
            raise ValueError(
                f"boundaries: join_schedules takes one boundary fewer than schedules; "
                f"{len(self.schedules)} schedules need {len(self.schedules) - 1}, "
                f"{len(self.boundaries)} given"
            )
        return self

    def group_lists(self) -> list[list[float]]:
        return [v for s in self.schedules for v in s.group_lists()]

    def mismatch(self, groups: int) -> tuple[tuple[str | int, ...], str] | None:
        for i, schedule in enumerate(self.schedules):
            found = schedule.mismatch(groups)
            if found:
                return ("schedules", i, *found[0]), found[1]
        return None

    def scaled_update(self, factor: float) -> dict[str, Any]:
        """Return batch scaling's update: every joined schedule scaled by ``factor``."""
        return {"schedules": [s.model_copy(update=s.scaled_update(factor)) for s in self.schedules]}

    def fn(self, count: Tensor, group: int) -> Tensor:
        parts = [lambda c, s=s: s.fn(c, group) for s in self.schedules]
        return join(count, parts, self.boundaries)


SCHEDULES: tuple[type[OptaxBase], ...] = (
    ConstantSchedule,
    LinearSchedule,
    CosineDecaySchedule,
    CosineOnecycleSchedule,
    LinearOnecycleSchedule,
    ExponentialDecay,
    PiecewiseConstantSchedule,
    PiecewiseInterpolateSchedule,
    PolynomialSchedule,
    SgdrSchedule,
    WarmupConstantSchedule,
    WarmupCosineDecaySchedule,
    WarmupExponentialDecaySchedule,
    JoinSchedules,
)
"""Every optax schedule the service accepts, in optax's order (join_schedules last)."""

NAMES = tuple(cls.model_fields["schedule"].default for cls in SCHEDULES)

OptaxSchedule = Annotated[
    ConstantSchedule
    | LinearSchedule
    | CosineDecaySchedule
    | CosineOnecycleSchedule
    | LinearOnecycleSchedule
    | ExponentialDecay
    | PiecewiseConstantSchedule
    | PiecewiseInterpolateSchedule
    | PolynomialSchedule
    | SgdrSchedule
    | WarmupConstantSchedule
    | WarmupCosineDecaySchedule
    | WarmupExponentialDecaySchedule
    | JoinSchedules,
    Field(discriminator="schedule"),
    BeforeValidator(selector_check("schedule", NAMES, "optax")),
]

JoinSchedules.model_rebuild()
register(JoinSchedules)  # after OptaxSchedule, which its schedules name
