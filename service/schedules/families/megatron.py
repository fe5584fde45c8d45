"""Megatron-core: ``megatron.core.optimizer_param_scheduler.OptimizerParamScheduler``.

``{"type": "megatron", "lr_decay_style": "WSD", "max_lr": 3e-4, "min_lr": 3e-5,
"lr_warmup_steps": 100, "lr_decay_steps": 1000, "wsd_decay_steps": 200}`` is
``OptimizerParamScheduler(optimizer, init_lr=0.0, max_lr=3e-4, min_lr=3e-5,
lr_warmup_steps=100, lr_decay_steps=1000, lr_decay_style="WSD", wsd_decay_steps=200, ...)``.
Scheduler step ``k`` is ``num_steps = k`` (Megatron's training loop calls ``step(increment)``
once per iteration; counting in iterations, not samples). The scheduler also sets each
group's ``weight_decay`` (``start_wd`` to ``end_wd`` over ``wd_incr_steps``): ask for it with
``include: ["weight_decay"]``.

Megatron ignores the optimizer's lr: every group gets ``init_lr``/``max_lr``/``min_lr``.
``max_lr``, ``min_lr``, ``start_wd`` and ``end_wd`` may be lists, one per group: Megatron's
per-group overrides (``param_group["max_lr"]`` etc., its ``ParamGroupOverride``).

The formulas follow megatron-core 0.16.1 (the last release for Python 3.11), line for line.
"""

import math
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import BeforeValidator, Field, model_validator
from torch.optim.lr_scheduler import LRScheduler

from service.schedules.base import NonNegInt, Number, PerGroup, PosInt
from service.schedules.codes import caveat
from service.schedules.families import Library
from service.schedules.families.adapters import (
    LibraryLR,
    LibrarySchedulerBase,
    group_mismatch,
    selector_check,
)
from service.schedules.registry import register

LIBRARY = Library(family="megatron", package="megatron-core", version="0.16.1")

F64 = torch.float64
Tensor = torch.Tensor

WSD_STYLES = ("linear", "cosine", "exponential", "minus_sqrt")


def _per_group(value: float | list[float], groups: int, device: torch.device) -> Tensor:
    """Return one value per row, (groups, 1); rows past a list are further requests' groups."""
    values = value if isinstance(value, list) else [value]
    rows = [float(values[g % len(values)]) for g in range(groups)]
    return torch.tensor(rows, dtype=F64, device=device)[:, None]


class MegatronScheduler(LibrarySchedulerBase):
    """Megatron-core's lr (and weight-decay) schedule: linear warmup, then a decay style.

    Megatron: ``OptimizerParamScheduler(optimizer, init_lr, max_lr, min_lr, lr_warmup_steps,
    lr_decay_steps, lr_decay_style, start_wd, end_wd, wd_incr_steps, wd_incr_style,
    wsd_decay_steps=None, lr_wsd_decay_style=None)`` (megatron-core 0.16.1). Defaults here are
    Megatron's command-line defaults (``--lr-decay-style linear``, ``--lr-warmup-init 0``,
    ``--weight-decay 0.01``, ``--weight-decay-incr-style constant``,
    ``--lr-wsd-decay-style exponential``). After ``lr_decay_steps`` the lr stays at ``min_lr``.
    """

    type: Literal["megatron"] = "megatron"
    selector: ClassVar[str] = "lr_decay_style"
    init_lr: Number = Field(default=0.0, ge=0.0, description="lr at step 0 of the warmup.")
    max_lr: PerGroup = Field(description="Peak lr (after warmup), or one per group.")
    min_lr: PerGroup = Field(default=0.0, description="Final lr, or one per group.")
    lr_warmup_steps: NonNegInt = Field(default=0, description="Steps of linear warmup.")
    lr_decay_steps: PosInt = Field(description="Step at which the decay ends (warmup included).")
    start_wd: PerGroup = Field(default=0.01, description="Weight decay at step 0.")
    end_wd: PerGroup = Field(default=0.01, description="Weight decay after wd_incr_steps.")
    wd_incr_steps: NonNegInt | None = Field(
        default=None, description="Steps of the weight-decay ramp (null: lr_decay_steps)."
    )
    wd_incr_style: Literal["constant", "linear", "cosine"] = "constant"

    library: ClassVar[Library] = LIBRARY
    sets_lr: ClassVar[bool] = True
    """The library sets the lr itself (the optimizer's and groups' lr are not read)."""
    lr_fields: ClassVar[tuple[str, ...]] = ("init_lr", "max_lr", "min_lr")

    @model_validator(mode="after")
    def _megatron_asserts(self) -> "MegatronScheduler":
        for name in ("max_lr", "min_lr", "start_wd", "end_wd"):
            if getattr(self, name) == []:
                raise ValueError(f"{name}: give a number or a list with one value per group")
        pairs = self._pairs()
        for i, (max_lr, min_lr, start_wd, end_wd) in enumerate(pairs):
            where = f" (group {i})" if len(pairs) > 1 else ""
            if min_lr < 0:
                raise ValueError(f"min_lr: Megatron asserts min_lr >= 0{where}; got {min_lr}")
            if max_lr < min_lr:
                raise ValueError(
                    f"max_lr: Megatron asserts max_lr >= min_lr{where}; got {max_lr} < {min_lr}"
                )
            if start_wd < 0:
                raise ValueError(f"start_wd: Megatron asserts start_wd >= 0{where}")
            if end_wd < start_wd:
                raise ValueError(
                    f"end_wd: Megatron asserts end_wd >= start_wd{where}; got {end_wd} < {start_wd}"
                )
            if self.wd_incr_style == "constant" and start_wd != end_wd:
                raise ValueError(
                    f"wd_incr_style: 'constant' needs start_wd == end_wd{where} (Megatron "
                    "asserts it); choose 'linear' or 'cosine' to ramp the weight decay"
                )
        first_max = pairs[0][0]
        if self.init_lr > first_max:
            raise ValueError(
                f"init_lr: Megatron asserts init_lr <= max_lr; got {self.init_lr} > {first_max}"
            )
        if self.lr_warmup_steps >= self.lr_decay_steps:
            raise ValueError(
                f"lr_warmup_steps: Megatron asserts lr_warmup_steps < lr_decay_steps; got "
                f"{self.lr_warmup_steps} >= {self.lr_decay_steps}"
            )
        if self.wd_incr_style != "constant" and self.incr_steps <= 0:
            raise ValueError(
                f"wd_incr_steps: wd_incr_style '{self.wd_incr_style}' divides by it; give > 0"
            )
        return self

    def _pairs(self) -> list[tuple[float, float, float, float]]:
        lists = [v for v in (self.max_lr, self.min_lr, self.start_wd, self.end_wd)]
        n = max((len(v) for v in lists if isinstance(v, list)), default=1)

        def at(v: float | list[float], i: int) -> float:
            if isinstance(v, list):
                return float(v[i]) if i < len(v) else float(v[-1])
            return float(v)

        return [tuple(at(v, i) for v in lists) for i in range(n)]  # type: ignore[misc]

    def mismatch(self, groups: int) -> tuple[tuple[str | int, ...], str] | None:
        """Return (location, message) of a per-group list not ``groups`` long, or None."""
        return group_mismatch(self, ("max_lr", "min_lr", "start_wd", "end_wd"), groups)

    @property
    def incr_steps(self) -> int:
        return self.lr_decay_steps if self.wd_incr_steps is None else self.wd_incr_steps

    def constructor_kwargs(self) -> dict[str, Any]:
        """Return OptimizerParamScheduler's arguments; lists become the first group's value."""

        def first(v: float | list[float]) -> float:
            return float(v[0]) if isinstance(v, list) else float(v)

        return {
            "init_lr": self.init_lr,
            "max_lr": first(self.max_lr),
            "min_lr": first(self.min_lr),
            "lr_warmup_steps": self.lr_warmup_steps,
            "lr_decay_steps": self.lr_decay_steps,
            "lr_decay_style": self.lr_decay_style,
            "start_wd": first(self.start_wd),
            "end_wd": first(self.end_wd),
            "wd_incr_steps": self.incr_steps,
            "wd_incr_style": self.wd_incr_style,
            "wsd_decay_steps": getattr(self, "wsd_decay_steps", None),
            "lr_wsd_decay_style": getattr(self, "lr_wsd_decay_style", None),
        }

    def group_overrides(self) -> dict[str, list[float]]:
        """Return Megatron's per-group overrides: ``{key: [value per group]}`` for the lists."""
        return {
            name: [float(v) for v in getattr(self, name)]
            for name in ("max_lr", "min_lr", "start_wd", "end_wd")
            if isinstance(getattr(self, name), list)
        }

    # ------------------------------------------------------------------ closed forms

    def first_failure(self, last: int) -> tuple[int, Exception] | None:
        """Return None: the library refuses nothing once the spec is valid."""
        return None

    def lr(self, k: Tensor, base: Tensor) -> Tensor:
        """Return ``get_lr`` at ``num_steps = k`` (int64), shape (groups, len(k)).

        ``base`` only gives the number of groups: Megatron sets the lr itself.
        """
        groups = base.shape[0]
        n = k.to(F64)[None, :]
        max_lr = _per_group(self.max_lr, groups, k.device)
        min_lr = _per_group(self.min_lr, groups, k.device)
        warm = self.lr_warmup_steps
        decay = self.lr_decay_steps
        style = self.lr_decay_style
        ones = torch.ones_like(n) * torch.ones_like(max_lr)
        if style == "constant":
            after = max_lr * ones
        elif style == "inverse-square-root":
            w = max(warm, 1)
            lr = max_lr * w**0.5 / (torch.clamp_min(n, 1.0) ** 0.5)
            after = torch.where(n > decay, min_lr * ones, torch.maximum(min_lr, lr))
        else:
            ratio = (n - warm) / float(decay - warm)
            delta = max_lr - min_lr
            if style == "linear":
                coeff = 1.0 - ratio
            elif style == "cosine":
                coeff = 0.5 * (torch.cos(math.pi * ratio) + 1.0)
            else:
                coeff = self._wsd_coeff(n)
            after = torch.where(n > decay, min_lr * ones, min_lr + coeff * delta)
        if warm <= 0:
            return after
        warmup = self.init_lr + ((max_lr - self.init_lr) * n / float(warm))
        return torch.where(n <= warm, warmup, after)

    def _wsd_coeff(self, n: Tensor) -> Tensor:
        wsd = self.wsd_decay_steps  # type: ignore[attr-defined]
        start = self.lr_decay_steps - wsd
        ratio = torch.clamp_min(n - start, 0.0) / float(wsd)
        style = self.lr_wsd_decay_style  # type: ignore[attr-defined]
        if style == "linear":
            coeff = 1.0 - ratio
        elif style == "cosine":
            coeff = 0.5 * (torch.cos(math.pi * ratio) + 1.0)
        elif style == "exponential":
            coeff = (2.0 * torch.pow(torch.tensor(0.5, dtype=F64), ratio)) - 1.0
        else:
            coeff = 1.0 - torch.sqrt(ratio)
        return torch.where(n <= start, torch.ones_like(coeff), coeff)

    def other_series(self, k: Tensor, groups: int) -> dict[str, Tensor]:
        """Return ``{"weight_decay": ...}``: Megatron sets each group's weight decay too."""
        return {"weight_decay": self.weight_decay(k, groups)}

    def weight_decay(self, k: Tensor, groups: int) -> Tensor:
        """Return ``get_wd`` at ``num_steps = k`` (int64), shape (groups, len(k))."""
        n = k.to(F64)[None, :]
        start = _per_group(self.start_wd, groups, k.device)
        end = _per_group(self.end_wd, groups, k.device)
        ones = torch.ones_like(n) * torch.ones_like(start)
        if self.wd_incr_style == "constant":
            return end * ones
        steps = self.incr_steps
        ratio = n / float(steps)
        if self.wd_incr_style == "linear":
            coeff = ratio
        else:
            coeff = 0.5 * (torch.cos(math.pi * (1 - ratio)) + 1.0)
        return torch.where(n > steps, end * ones, start + coeff * (end - start))

    # ------------------------------------------------------------------ torch engine

    def library_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """Return Megatron's own OptimizerParamScheduler on ``optimizer`` (it sets step 0)."""
        try:
            from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
        except ImportError as exc:
            raise RuntimeError(
                "engine 'torch' steps Megatron's own OptimizerParamScheduler, and megatron-core "
                "is not installed here (pip install --no-deps megatron-core); use engine "
                "'vectorized' or 'auto'"
            ) from exc

        for key, values in self.group_overrides().items():
            for group, value in zip(optimizer.param_groups, values, strict=True):
                group[key] = value
        return OptimizerParamScheduler(optimizer, **self.constructor_kwargs())

    @staticmethod
    def drive(scheduler: Any, k: int, metric: float | None = None) -> None:
        """Make Megatron's scheduler set ``num_steps = k`` (its training loop's ``step``)."""
        scheduler.step(increment=k - scheduler.num_steps)

    def build(self, optimizer: torch.optim.Optimizer, span: int) -> LRScheduler:
        """Return a torch scheduler stepping Megatron's own (built at the first step)."""
        return LibraryLR(optimizer, self, self.library_scheduler, self.drive)

    # ------------------------------------------------------------------ warnings

    def caveats(self, span: int) -> list[str]:
        """Return warnings for the cross-library surprises this spec meets in ``span`` steps."""
        if self.lr_decay_style in ("linear", "cosine", "WSD") and self.lr_decay_steps + 1 < span:
            return [
                caveat(
                    "megatron-holds-min-lr",
                    f"Megatron holds min_lr from step {self.lr_decay_steps + 1} on (after "
                    f"lr_decay_steps={self.lr_decay_steps}); torch's CosineAnnealingLR would "
                    "rise again after T_max",
                    self.lr_decay_steps + 1,
                )
            ]
        return []


# --------------------------------------------------------------------------- one class per style


@register
class MegatronConstant(MegatronScheduler):
    """Linear warmup to ``max_lr``, then ``max_lr`` (Megatron's ``--lr-decay-style constant``)."""

    lr_decay_style: Literal["constant"] = "constant"
    cost_per_step: ClassVar[float] = 7.0
    cost_per_value: ClassVar[float] = 14.0  # measured 6.9 + 13.8 × groups ns a step
    examples: ClassVar[list[dict[str, Any]]] = [
        {"type": "megatron", "lr_decay_style": "constant", "max_lr": 1e-3, "lr_warmup_steps": 10,
         "lr_decay_steps": 100}
    ]  # fmt: skip


@register
class MegatronLinear(MegatronScheduler):
    """Linear warmup, then linear decay to ``min_lr`` at ``lr_decay_steps``, then held."""

    lr_decay_style: Literal["linear"] = "linear"
    cost_per_step: ClassVar[float] = 4.0
    cost_per_value: ClassVar[float] = 16.0  # measured 3.9 + 16.0 × groups
    examples: ClassVar[list[dict[str, Any]]] = [
        {"type": "megatron", "lr_decay_style": "linear", "max_lr": 1e-3, "min_lr": 1e-5,
         "lr_decay_steps": 100}
    ]  # fmt: skip


@register
class MegatronCosine(MegatronScheduler):
    """Linear warmup, then cosine decay to ``min_lr`` at ``lr_decay_steps``, then held (torch's
    CosineAnnealingLR rises again instead)."""

    lr_decay_style: Literal["cosine"] = "cosine"
    cost_per_step: ClassVar[float] = 20.0
    cost_per_value: ClassVar[float] = 17.0  # measured 19.6 + 16.7 × groups
    examples: ClassVar[list[dict[str, Any]]] = [
        {"type": "megatron", "lr_decay_style": "cosine", "max_lr": 3e-4, "min_lr": 3e-5,
         "lr_warmup_steps": 100, "lr_decay_steps": 1000}
    ]  # fmt: skip


@register
class MegatronInverseSquareRoot(MegatronScheduler):
    """Linear warmup, then ``max_lr * sqrt(warmup / step)``, at least ``min_lr``."""

    lr_decay_style: Literal["inverse-square-root"] = "inverse-square-root"
    cost_per_step: ClassVar[float] = 10.0
    cost_per_value: ClassVar[float] = 21.0  # measured 10.1 + 20.7 × groups
    examples: ClassVar[list[dict[str, Any]]] = [
        {"type": "megatron", "lr_decay_style": "inverse-square-root", "max_lr": 1e-3,
         "min_lr": 1e-5, "lr_warmup_steps": 10, "lr_decay_steps": 100}
    ]  # fmt: skip


@register
class MegatronWSD(MegatronScheduler):
    """Warmup-stable-decay: linear warmup, ``max_lr`` held, then an anneal to ``min_lr`` over the
    last ``wsd_decay_steps`` before ``lr_decay_steps``."""

    lr_decay_style: Literal["WSD"] = "WSD"
    cost_per_step: ClassVar[float] = 15.0
    cost_per_value: ClassVar[float] = 24.0  # measured 15.0 + 23.4 × groups
    wsd_decay_steps: PosInt = Field(
        description="Steps of the final anneal, which ends at lr_decay_steps."
    )
    lr_wsd_decay_style: Literal["linear", "cosine", "exponential", "minus_sqrt"] = Field(
        default="exponential", description="Shape of the anneal (Megatron's default)."
    )
    examples: ClassVar[list[dict[str, Any]]] = [
        {"type": "megatron", "lr_decay_style": "WSD", "max_lr": 3e-4, "min_lr": 3e-5,
         "lr_warmup_steps": 10, "lr_decay_steps": 100, "wsd_decay_steps": 20,
         "lr_wsd_decay_style": "minus_sqrt"}
    ]  # fmt: skip

    @model_validator(mode="after")
    def _anneal_fits(self) -> "MegatronWSD":
        if self.wsd_decay_steps > self.lr_decay_steps:
            raise ValueError(
                f"wsd_decay_steps: the anneal ({self.wsd_decay_steps} steps) is longer than the "
                f"schedule: it ends at lr_decay_steps={self.lr_decay_steps}, so it can be at most "
                f"{self.lr_decay_steps} steps"
            )
        return self


SCHEDULES: tuple[type[MegatronScheduler], ...] = (
    MegatronConstant,
    MegatronLinear,
    MegatronCosine,
    MegatronInverseSquareRoot,
    MegatronWSD,
)
"""One class per ``lr_decay_style`` of megatron-core 0.16.1."""

STYLES = tuple(cls.model_fields["lr_decay_style"].default for cls in SCHEDULES)

MegatronSchedule = Annotated[
    MegatronConstant | MegatronLinear | MegatronCosine | MegatronInverseSquareRoot | MegatronWSD,
    Field(discriminator="lr_decay_style"),
    BeforeValidator(selector_check("lr_decay_style", STYLES, "megatron")),
]
