"""timm: ``timm.scheduler.create_scheduler_v2(optimizer, sched=..., ...)``, by its own arguments.

``{"type": "timm", "sched": "cosine", "num_epochs": 10, "warmup_epochs": 2}`` is
``create_scheduler_v2(optimizer, sched="cosine", num_epochs=10, warmup_epochs=2)``, with
timm's defaults for everything left out. Scheduler step ``k`` of a request is timm's
``scheduler.step(k)`` (``step_on_epochs``, the default: ``k`` counts epochs) or
``scheduler.step_update(k)`` (``step_on_epochs: false``: ``k`` counts optimizer updates and
every length in epochs is multiplied by ``updates_per_epoch``, as timm does). Index 0 is the
lr timm sets when the scheduler is built (``warmup_lr`` with a warmup, else each group's lr).

timm's scheduler is a pure function of ``t`` (plus seeded noise), so the closed forms here
follow ``timm.scheduler.*._get_lr`` line for line; the torch engine runs timm itself, loaded
without the package ``__init__`` (which needs torchvision).
"""

import math
import warnings
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import BeforeValidator, Field, model_validator
from torch.optim.lr_scheduler import LRScheduler

from service.errors import LimitExceeded
from service.schedules.base import NonNegInt, Number, PosInt
from service.schedules.codes import caveat
from service.schedules.families import Library, import_submodule_only
from service.schedules.families.adapters import (
    LibraryLR,
    LibrarySchedulerBase,
    selector_check,
)
from service.schedules.registry import register

LIBRARY = Library(family="timm", package="timm", version="1.0.31")

F64 = torch.float64
Tensor = torch.Tensor


_CYCLE = ("cosine", "tanh", "poly")


class TimmScheduler(LibrarySchedulerBase):
    """The arguments every timm sched takes (one subclass per ``sched`` adds its own).

    timm's schedulers through ``create_scheduler_v2``: warmup, cycles, k-decay, seeded noise.

    timm: ``create_scheduler_v2(optimizer, sched='cosine', num_epochs=300, decay_epochs=None,
    decay_milestones=(90, 180, 270), cooldown_epochs=0, patience_epochs=10, decay_rate=0.1,
    min_lr=0.0, warmup_lr=1e-5, warmup_epochs=0, warmup_prefix=False, noise=None,
    noise_pct=0.67, noise_std=1.0, noise_seed=42, cycle_mul=1.0, cycle_decay=0.1,
    cycle_limit=1, k_decay=1.0, decay_fn=None, stable_timescale=None, plateau_mode='max',
    step_on_epochs=True, updates_per_epoch=0)`` (timm 1.0.31). Each group's lr is its peak.
    Unlike torch, timm holds ``min_lr`` after the last cycle, and its MultiStep applies a
    milestone ``m`` at ``t = m - 1``.
    """

    type: Literal["timm"] = "timm"
    selector: ClassVar[str] = "sched"
    num_epochs: PosInt = Field(default=300, description="Length of the schedule (t_initial).")
    warmup_lr: Number = Field(default=1e-5, ge=0.0, description="lr at the start of warmup.")
    warmup_epochs: NonNegInt = Field(default=0, description="Epochs of linear warmup.")
    warmup_prefix: bool = Field(
        default=False, description="Warmup is added before num_epochs instead of inside it."
    )
    cooldown_epochs: NonNegInt = Field(
        default=0, description="Epochs held at min_lr after the schedule (no effect on the lr)."
    )
    noise: Number | list[Number] | None = Field(
        default=None,
        description="Noise on/off points as fractions of num_epochs ([start, end] or start).",
    )
    noise_pct: Number = Field(default=0.67, gt=0.0, description="Noise limit (resampled above).")
    noise_std: Number = Field(default=1.0, description="Noise standard deviation.")
    noise_seed: int = Field(default=42, ge=0, le=2**62, description="Seed: noise at t uses seed+t.")
    step_on_epochs: bool = Field(
        default=True, description="t counts epochs (step) or updates (step_update)."
    )
    updates_per_epoch: NonNegInt = Field(
        default=0, description="Optimizer updates per epoch (needed when step_on_epochs is false)."
    )

    library: ClassVar[Library] = LIBRARY
    sets_lr: ClassVar[bool] = False
    """timm scales each group's own lr."""
    reads_lr_scale: ClassVar[bool] = True
    """timm's ``update_groups`` sets ``lr = value * group['lr_scale']`` in a group that has
    one (layer-wise lr decay): both engines multiply it in, after the noise."""
    lr_fields: ClassVar[tuple[str, ...]] = ("warmup_lr",)

    @model_validator(mode="after")
    def _consistent(self) -> "TimmScheduler":
        if not self.step_on_epochs and self.updates_per_epoch <= 0:
            raise ValueError(
                "updates_per_epoch: step_on_epochs is false, so timm needs updates_per_epoch > 0 "
                "(the number of optimizer updates per epoch)"
            )
        if isinstance(self.noise, list) and not 1 <= len(self.noise) <= 2:
            raise ValueError("noise: give [start, end] or [start] as fractions of num_epochs")
        return self

    # ------------------------------------------------------------------ timm's arguments

    @property
    def upe(self) -> int:
        """Return the multiplier from epochs to timm's t (1 when stepping on epochs)."""
        return 1 if self.step_on_epochs else self.updates_per_epoch

    @property
    def t_initial(self) -> int:
        return self.num_epochs * self.upe

    @property
    def warmup_t(self) -> int:
        return self.warmup_epochs * self.upe

    def _timescale(self) -> float | None:
        timescale = getattr(self, "stable_timescale", None)
        return None if timescale is None else timescale * self.upe

    def _decay_epochs(self) -> float:
        decay_epochs = getattr(self, "decay_epochs", None)
        return 0.2 if decay_epochs is None else decay_epochs

    def _wsd_lengths(self) -> tuple[int, int]:
        """Return (t_initial, decay_t) of timm's WSDLRScheduler, refusing what timm refuses."""
        decay_epochs = self._decay_epochs()
        t_sched = self.t_initial if self.warmup_prefix else self.t_initial - self.warmup_t
        decay_t = decay_epochs * self.upe
        if 0 < decay_epochs < 1:
            decay_t = decay_epochs * t_sched
        decay_t = round(decay_t)
        if not 0 < decay_t <= t_sched:
            within = "num_epochs" if self.warmup_prefix else "num_epochs - warmup_epochs"
            raise ValueError(
                f"decay_epochs: timm's {self.sched} needs 0 < decay <= {within}; the decay is "
                f"{decay_t} and the stable + decay length {t_sched} (in timm's t)"
            )
        return t_sched, decay_t

    def noise_range(self) -> float | list[float] | None:
        """Return timm's ``noise_range_t`` (in t) from ``noise`` (fractions of num_epochs)."""
        if self.noise is None:
            return None
        if isinstance(self.noise, list):
            points = [n * self.t_initial for n in self.noise]
            return points[0] if len(points) == 1 else points
        return self.noise * self.t_initial

    def factory_kwargs(self) -> dict[str, Any]:
        """Return the keyword arguments for timm's ``create_scheduler_v2`` (without optimizer)."""
        return self.model_dump(exclude={"type"})

    # ------------------------------------------------------------------ cost model

    cost_per_step: ClassVar[float] = 50.0
    cost_per_value: ClassVar[float] = 26.0
    """The cost model's weights (about 1 ns of CPU each; each sched sets its own, measured by
    bench/bench_cost.py at load 5.5 on the 2-core EPYC: 320k steps at 1 group, 20k at 16,
    median of 3). timm's closed form is one tensor expression over (groups, steps)."""
    CYCLE_MUL_COST: ClassVar[float] = 15.0
    """More per step with cycle_mul != 1 (the cycle index is a log: cosine 64 + 24 × groups)."""
    NOISE_COST: ClassVar[float] = 12_000.0
    """Per noisy step: a torch.Generator seeded anew (measured 10.8-11.9 µs a step)."""

    def vectorized_cost(self, steps: int, groups: int) -> float:
        """Return the weight of ``steps`` × ``groups`` values: the sched's, its cycle index's
        and each noisy step's draw."""
        per_step = self.cost_per_step
        if getattr(self, "cycle_mul", 1.0) != 1:
            per_step += self.CYCLE_MUL_COST
        return steps * (per_step + groups * self.cost_per_value) + self._noisy(steps) * (
            self.NOISE_COST
        )

    def _noisy(self, steps: int) -> int:
        """Return how many of the steps 1..steps-1 timm draws noise at."""
        noise_range = self.noise_range()
        if noise_range is None:
            return 0
        lo, hi = (noise_range, math.inf) if not isinstance(noise_range, list) else noise_range
        lo, hi = max(1.0, float(lo)), min(float(steps), float(hi))  # t >= 1 only; inf ends
        if not lo < hi:
            return 0
        return max(0, math.ceil(hi) - math.ceil(lo))

    # ------------------------------------------------------------------ closed form

    metric_driven: ClassVar[bool] = False
    """True for 'plateau', whose lr follows the request's metrics (the vectorized engine
    scans them: :meth:`TimmPlateau.metric_schedule`)."""

    def mismatch(self, groups: int) -> tuple[tuple[str | int, ...], str] | None:
        """Return None: timm takes each group's own lr; its arguments are single numbers."""
        return None

    def lr(self, k: Tensor, base: Tensor) -> Tensor:
        """Return the lr timm sets at t = ``k`` (int64 scheduler steps), shape (groups, len(k)).

        ``base`` is each group's initial lr, (groups, 1) float64. Index 0 is the value timm
        sets when it builds the scheduler.
        """
        t = k.to(F64)
        ones = torch.ones_like(t)[None, :]
        start = torch.full_like(base, self.warmup_lr) if self.warmup_t else base
        if self.metric_driven:  # only step 0 has a closed form: what timm sets when built
            return start * ones
        wsd = self.sched in ("wsd", "rsqrt")
        values = (self._wsd(t, base) if wsd else self._get_lr(t, base)) * ones
        values = _add_noise(self, k, values)
        return torch.where(k[None, :] == 0, start * ones, values)

    def _warmup(self, t: Tensor, base: Tensor, target: Tensor) -> Tensor:
        steps = (target - self.warmup_lr) / self.warmup_t
        return self.warmup_lr + t * steps

    def _get_lr(self, t: Tensor, base: Tensor) -> Tensor:
        warmup_t = self.warmup_t
        tt = t - warmup_t if self.warmup_prefix else t
        if self.sched in ("step", "constant"):
            decay_t = 1 if self.sched == "constant" else self._decay_epochs() * self.upe
            rate = 1.0 if self.sched == "constant" else self.decay_rate
            after = base * torch.pow(torch.tensor(rate, dtype=F64), torch.floor_divide(tt, decay_t))
            target = base
        elif self.sched == "multistep":
            milestones = torch.tensor(
                [m * self.upe for m in self.decay_milestones], dtype=F64, device=t.device
            )
            count = torch.searchsorted(milestones, tt + 1, right=True).to(F64)
            after = base * torch.pow(torch.tensor(self.decay_rate, dtype=F64), count)
            target = base
        else:
            after = self._cycles(tt, base)
            target = base
            if self.sched == "tanh" and warmup_t and not self.warmup_prefix:
                at = torch.tensor([float(warmup_t)], dtype=F64, device=t.device)
                target = self._cycles(at, base)
        if not warmup_t:
            return after
        return torch.where(t < warmup_t, self._warmup(t, base, target), after)

    def _cycles(self, tt: Tensor, base: Tensor) -> Tensor:
        """cosine / tanh / poly after warmup, at t (already shifted when warmup_prefix)."""
        T = self.t_initial
        m = self.cycle_mul
        if m != 1:
            i = _cycle_index(tt, T, m)
            mi = torch.pow(torch.tensor(m, dtype=F64), i)
            t_i = mi * T
            t_curr = tt - (1 - mi) / (1 - m) * T
        else:
            i = torch.floor_divide(tt, T)
            t_i = torch.full_like(tt, float(T))
            t_curr = tt - T * i
        gamma = torch.pow(torch.tensor(self.cycle_decay, dtype=F64), i)
        lr_max = base * gamma
        lr_min = self.min_lr
        if self.sched == "cosine":
            k = self.k_decay
            shape = 1 + torch.cos(math.pi * t_curr**k / t_i**k)
            lrs = lr_min + 0.5 * (lr_max - lr_min) * shape
        elif self.sched == "tanh":
            tr = t_curr / t_i
            shape = 1 - torch.tanh(-7.0 * (1.0 - tr) + 3.0 * tr)
            lrs = lr_min + 0.5 * (lr_max - lr_min) * shape
        else:
            k = self.k_decay
            lrs = lr_min + (lr_max - lr_min) * (1 - t_curr**k / t_i**k) ** self.decay_rate
        return torch.where(i < self.cycle_limit, lrs, torch.full_like(lrs, lr_min))

    def _wsd(self, t: Tensor, base: Tensor) -> Tensor:
        t_initial, decay_t = self._wsd_lengths()
        warmup_t = self.warmup_t
        lr_min = self.min_lr
        stable_fn = "rsqrt" if self.sched == "rsqrt" else "constant"
        decay_fn = self.decay_fn or ("linear" if self.sched == "rsqrt" else "1-sqrt")
        t_s = t - warmup_t
        if stable_fn == "constant":
            stable = base * torch.ones_like(t_s)
        else:
            timescale = self._timescale() if self._timescale() is not None else warmup_t
            stable = base * (1.0 + t_s / timescale) ** -0.5
        stable = torch.clamp(stable, min=lr_min)
        t_decay = t_s - (t_initial - decay_t)
        frac = torch.clamp(t_decay / decay_t, max=1.0)
        if decay_fn == "linear":
            decay = 1.0 - frac
        elif decay_fn == "1-sqrt":
            decay = 1.0 - torch.sqrt(frac.clamp(min=0.0))
        elif decay_fn == "cosine":
            decay = 0.5 * (1.0 + torch.cos(math.pi * frac))
        elif decay_fn == "power":
            decay = 1.0 - frac.clamp(min=0.0) ** 0.5
        else:
            r = 0.1
            decay = (r**frac - r) / (1.0 - r)
        decayed = lr_min + (stable - lr_min) * decay
        after = torch.where(t_decay <= 0, stable, decayed)
        if not warmup_t:
            return after
        return torch.where(t < warmup_t, self._warmup(t, base, base), after)

    # ------------------------------------------------------------------ torch engine

    def library_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """Return timm's own scheduler for ``optimizer`` (raises RuntimeError without timm)."""
        module = import_submodule_only("timm", "scheduler")
        if module is None:
            raise RuntimeError(
                "engine 'torch' steps timm's own scheduler, and timm is not installed here "
                "(pip install --no-deps timm); use engine 'vectorized' or 'auto'"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # plateau's deprecation notice
            scheduler, _ = module.create_scheduler_v2(optimizer, **self.factory_kwargs())
        return scheduler

    def drive(self, scheduler: Any, k: int, metric: float | None = None) -> None:
        """Make timm's scheduler set t = ``k``, as timm's train.py does."""
        try:
            if self.step_on_epochs:
                scheduler.step(k, metric)
            else:
                scheduler.step_update(k)
        except ValueError as exc:
            failure = self.first_failure(k)
            raise failure[1] if failure else exc from None

    def first_failure(self, last: int) -> tuple[int, Exception] | None:
        """Return the first t in 1..``last`` at which timm raises, and what it raises.

        With ``cycle_mul < 1`` the cycles shrink geometrically and all fit in
        ``t' < T / (1 - cycle_mul)``; there timm takes the log of a number <= 0.
        """
        m = getattr(self, "cycle_mul", 1.0)
        if m >= 1:
            return None
        T = self.t_initial
        shift = self.warmup_t if self.warmup_prefix else 0
        t = max(self.warmup_t, shift + math.floor(T / (1 - m)) - 2)
        while 1 - (t - shift) / T * (1 - m) > 0:
            t += 1
        if t > last:
            return None
        return t, ValueError(
            f"timm raises 'math domain error' at t = {t}: with cycle_mul={m:g} < 1 all "
            f"{self.sched} cycles fit before t = {t} (t_initial / (1 - cycle_mul)); lower steps "
            "or raise cycle_mul"
        )

    def build(self, optimizer: torch.optim.Optimizer, span: int) -> LRScheduler:
        """Return a torch scheduler stepping timm's own (built at the first step)."""
        return LibraryLR(optimizer, self, self.library_scheduler, self.drive)

    # ------------------------------------------------------------------ warnings

    def caveats(self, span: int) -> list[str]:
        """Return warnings for the cross-library surprises this spec meets in ``span`` steps."""
        out = []
        unit = "epoch" if self.step_on_epochs else "update"
        if self.sched == "multistep":
            hit = [m * self.upe for m in self.decay_milestones if 0 < m * self.upe <= span]
            if hit:
                shifted = ", ".join(
                    str(m - 1 + (self.warmup_t if self.warmup_prefix else 0)) for m in hit
                )
                first = hit[0] - 1 + (self.warmup_t if self.warmup_prefix else 0)
                out.append(
                    caveat(
                        "timm-multistep-one-step-early",
                        f"timm's multistep applies each milestone one step earlier than torch's "
                        f"MultiStepLR: milestones {hit} take effect at {unit} t = {shifted} "
                        "(timm compares t + 1 with them)",
                        first,
                    )
                )
        if self.sched in _CYCLE:
            end = self._cycles_end()
            if end is not None and end < span:
                out.append(
                    caveat(
                        "timm-holds-min-lr",
                        f"timm holds min_lr={self.min_lr:g} from t = {end} on (after "
                        f"{self.cycle_limit} cycle{'s' if self.cycle_limit != 1 else ''}); "
                        "torch's CosineAnnealingLR would rise again after T_max",
                        end,
                    )
                )
        if self.sched in ("wsd", "rsqrt"):
            t_initial, _ = self._wsd_lengths()
            if self.warmup_t + t_initial < span:
                out.append(
                    caveat(
                        "timm-holds-min-lr",
                        f"timm holds min_lr={self.min_lr:g} from t = {self.warmup_t + t_initial} "
                        "on (the end of the decay phase)",
                        self.warmup_t + t_initial,
                    )
                )
        return out

    def _cycles_end(self) -> int | None:
        """Return the first t at which timm's cycles are over (it holds min_lr), or None."""
        if self.cycle_limit == 0:
            return self.warmup_t
        if self.cycle_mul == 1:
            length = self.t_initial * self.cycle_limit
        elif self.cycle_mul < 1:
            return None
        else:
            m = self.cycle_mul  # timm's get_cycle_length
            if self.cycle_limit * math.log(m) > 700:  # m ** limit overflows: no end in sight
                return None
            length = math.floor(-self.t_initial * (m**self.cycle_limit - 1) / (1 - m))
        return length + (self.warmup_t if self.warmup_prefix else 0)


# --------------------------------------------------------------------------- one class per sched

MinLr = Annotated[Number, Field(ge=0.0, description="Lower bound the lr decays to.")]
DecayRate = Annotated[Number, Field(description="Decay factor.")]


class _Cycles(TimmScheduler):
    min_lr: MinLr = 0.0
    cycle_mul: Number = Field(default=1.0, gt=0.0, description="Cycle length multiplier.")
    cycle_decay: Number = Field(default=0.1, description="Peak multiplier per cycle.")
    cycle_limit: NonNegInt = Field(default=1, description="Number of cycles.")
    lr_fields: ClassVar[tuple[str, ...]] = ("warmup_lr", "min_lr")


@register
class TimmCosine(_Cycles):
    """Cosine decay from each group's lr to ``min_lr`` over ``num_epochs``, with restarts.

    timm: ``create_scheduler_v2(optimizer, sched='cosine', ...)`` → ``CosineLRScheduler``:
    ``lr_min + 0.5 (lr_max - lr_min)(1 + cos(pi t_c^k / t_i^k))``; held at ``min_lr`` after
    ``cycle_limit`` cycles (torch's CosineAnnealingLR rises again).
    """

    sched: Literal["cosine"] = "cosine"
    cost_per_step: ClassVar[float] = 50.0
    cost_per_value: ClassVar[float] = 22.0  # measured 49 + 21 × groups ns a step
    k_decay: Number = Field(default=1.0, gt=0.0, description="k-decay exponent.")
    examples: ClassVar[list[dict[str, Any]]] = [
        {"type": "timm", "sched": "cosine", "num_epochs": 10},
        {"type": "timm", "sched": "cosine", "num_epochs": 10, "warmup_epochs": 2,
         "warmup_lr": 0.0, "updates_per_epoch": 10, "step_on_epochs": False},
    ]  # fmt: skip


@register
class TimmTanh(_Cycles):
    """Hyperbolic-tangent decay (lb = -7, ub = 3) from each group's lr to ``min_lr``, with restarts.

    timm: ``create_scheduler_v2(optimizer, sched='tanh', ...)`` → ``TanhLRScheduler``. Without
    ``warmup_prefix`` the warmup ramps to the tanh value at its end, not to the group's lr.
    """

    sched: Literal["tanh"] = "tanh"
    cost_per_step: ClassVar[float] = 52.0
    cost_per_value: ClassVar[float] = 26.0  # measured 51 + 26 × groups
    examples: ClassVar[list[dict[str, Any]]] = [
        {"type": "timm", "sched": "tanh", "num_epochs": 60, "warmup_epochs": 5}
    ]


@register
class TimmPoly(_Cycles):
    """Polynomial decay ``(1 - t_c^k / t_i^k) ** decay_rate`` to ``min_lr``, with restarts.

    timm: ``create_scheduler_v2(optimizer, sched='poly', ...)`` → ``PolyLRScheduler`` (the
    factory passes ``decay_rate`` as the power).
    """

    sched: Literal["poly"] = "poly"
    cost_per_step: ClassVar[float] = 42.0
    cost_per_value: ClassVar[float] = 18.0  # measured 41 + 18 × groups
    decay_rate: Number = Field(default=0.1, description="The power of the polynomial.")
    k_decay: Number = Field(default=1.0, gt=0.0, description="k-decay exponent.")
    examples: ClassVar[list[dict[str, Any]]] = [
        {"type": "timm", "sched": "poly", "num_epochs": 60, "decay_rate": 2.0}
    ]


@register
class TimmStep(TimmScheduler):
    """Decays each group's lr by ``decay_rate`` every ``decay_epochs``.

    timm: ``create_scheduler_v2(optimizer, sched='step', ...)`` → ``StepLRScheduler``.
    """

    sched: Literal["step"] = "step"
    cost_per_step: ClassVar[float] = 38.0
    cost_per_value: ClassVar[float] = 14.0  # measured 38 + 14 × groups
    decay_epochs: Number = Field(default=90, gt=0.0, description="Decay interval.")
    decay_rate: DecayRate = 0.1
    examples: ClassVar[list[dict[str, Any]]] = [
        {"type": "timm", "sched": "step", "num_epochs": 60, "decay_epochs": 20, "decay_rate": 0.5}
    ]


@register
class TimmConstant(TimmScheduler):
    """Each group's lr after the warmup, unchanged.

    timm: ``create_scheduler_v2(optimizer, sched='constant', ...)`` → ``StepLRScheduler`` that
    never decays.
    """

    sched: Literal["constant"] = "constant"
    cost_per_step: ClassVar[float] = 28.0
    cost_per_value: ClassVar[float] = 12.0  # measured 27 + 12 × groups
    examples: ClassVar[list[dict[str, Any]]] = [
        {"type": "timm", "sched": "constant", "num_epochs": 30, "warmup_epochs": 3}
    ]


@register
class TimmMultiStep(TimmScheduler):
    """Decays each group's lr by ``decay_rate`` at each of ``decay_milestones``.

    timm: ``create_scheduler_v2(optimizer, sched='multistep', ...)`` →
    ``MultiStepLRScheduler``: milestone ``m`` applies at ``t = m - 1``, one step earlier than
    torch's MultiStepLR.
    """

    sched: Literal["multistep"] = "multistep"
    cost_per_step: ClassVar[float] = 27.0
    cost_per_value: ClassVar[float] = 17.0  # measured 27 + 17 × groups
    decay_milestones: list[NonNegInt] = Field(
        default=[90, 180, 270], max_length=10_000, description="Sorted milestones, in epochs."
    )
    decay_rate: DecayRate = 0.1
    examples: ClassVar[list[dict[str, Any]]] = [
        {"type": "timm", "sched": "multistep", "num_epochs": 60, "decay_milestones": [20, 40]}
    ]

    @model_validator(mode="after")
    def _sorted(self) -> "TimmMultiStep":
        if self.decay_milestones != sorted(self.decay_milestones):
            raise ValueError(
                "decay_milestones: timm's MultiStepLRScheduler assumes sorted milestones "
                f"(it bisects them); give {sorted(self.decay_milestones)}"
            )
        return self


@register
class TimmPlateau(TimmScheduler):
    """Multiplies the lr by ``decay_rate`` when the metric stops improving (driven by ``metrics``).

    timm: ``create_scheduler_v2(optimizer, sched='plateau', ...)`` → ``PlateauLRScheduler``
    over torch's ``ReduceLROnPlateau`` (threshold 1e-4 'rel', cooldown 0; deprecated in timm).
    Its warmup ignores the metric; after it the plateau reduces the noise-free lr and the noise
    is applied on top (and undone before the next step), as timm's ``step(t, metric)`` does.
    """

    sched: Literal["plateau"] = "plateau"
    decay_rate: DecayRate = 0.1
    patience_epochs: NonNegInt = Field(default=10, description="Epochs without improvement.")
    plateau_mode: Literal["min", "max"] = Field(default="max", description="Metric direction.")
    min_lr: MinLr = 0.0
    lr_fields: ClassVar[tuple[str, ...]] = ("warmup_lr", "min_lr")
    metric_driven: ClassVar[bool] = True
    examples: ClassVar[list[dict[str, Any]]] = [
        {"type": "timm", "sched": "plateau", "num_epochs": 30, "patience_epochs": 2}
    ]
    example_request: ClassVar[dict[str, Any]] = {
        "steps": 10,
        "metrics": [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.8, 0.8, 0.8],
    }

    def metric_schedule(
        self,
        *,
        start: list[float],
        built: list[float],
        initial: list[float],
        metrics: list[float],
        span: int,
        scales: list[float] | None = None,
    ) -> Any:
        """Return the vectorized engine's scan of timm's PlateauLRScheduler over the groups'
        initial lrs (``initial``; timm's ``base_values``), noise applied where asked;
        ``scales``: each group's ``lr_scale`` (in the warmup's values and the lr the plateau
        starts from, as timm's ``update_groups`` sets them), or None."""
        from service.schedules.vectorized import plateau

        rule = plateau.TimmPlateauRule(
            plateau=plateau.PlateauRule(
                mode=self.plateau_mode,
                factor=self.decay_rate,
                patience=self.patience_epochs,
                min_lrs=plateau.per_group(self.min_lr, len(initial)),
            ),
            warmup_t=self.warmup_t,
            warmup_lr_init=self.warmup_lr,
            scales=None if scales is None else tuple(scales),
        )
        noisy = None if self.noise_range() is None else self._plateau_noise
        return plateau.MetricSchedule(lambda: rule.scan(initial, metrics, span), adjust=noisy)

    def _plateau_noise(self, k: Tensor, values: Tensor) -> Tensor:
        """Apply timm's noise where the plateau applies it: in the noise range, after the
        warmup (its warmup branch adds none)."""
        after = k > self.warmup_t
        if not bool(after.any()):
            return values
        out = values.clone()
        out[:, after] = _add_noise(self, k[after], values[:, after])
        return out

    @model_validator(mode="after")
    def _on_epochs(self) -> "TimmPlateau":
        if not self.step_on_epochs:
            raise ValueError("step_on_epochs: timm's plateau only steps per epoch; set it true")
        return self


class _WarmupStableDecay(TimmScheduler):
    min_lr: MinLr = 0.0
    decay_epochs: Number | None = Field(
        default=None,
        gt=0.0,
        description="Length of the decay phase; a value in (0, 1) is a fraction of the stable "
        "+ decay length (null: 0.2).",
    )
    decay_fn: Literal["linear", "1-sqrt", "cosine", "power", "exp"] | None = Field(
        default=None, description="Decay phase; null: '1-sqrt' (wsd), 'linear' (rsqrt)."
    )
    lr_fields: ClassVar[tuple[str, ...]] = ("warmup_lr", "min_lr")

    @model_validator(mode="after")
    def _lengths(self) -> "_WarmupStableDecay":
        self._wsd_lengths()
        return self


@register
class TimmWSD(_WarmupStableDecay):
    """Warmup, then each group's lr held, then a decay to ``min_lr`` over ``decay_epochs``.

    timm: ``create_scheduler_v2(optimizer, sched='wsd', ...)`` → ``WSDLRScheduler`` with a
    constant stable phase (default decay '1-sqrt').
    """

    sched: Literal["wsd"] = "wsd"
    cost_per_step: ClassVar[float] = 17.0
    cost_per_value: ClassVar[float] = 21.0  # measured 17 + 21 × groups
    examples: ClassVar[list[dict[str, Any]]] = [
        {"type": "timm", "sched": "wsd", "num_epochs": 100, "warmup_epochs": 10}
    ]


@register
class TimmRsqrt(_WarmupStableDecay):
    """Warmup, then ``lr (1 + t/timescale)^-0.5``, then a decay to ``min_lr`` (Big Vision).

    timm: ``create_scheduler_v2(optimizer, sched='rsqrt', ...)`` → ``WSDLRScheduler`` with an
    rsqrt stable phase (default decay 'linear').
    """

    sched: Literal["rsqrt"] = "rsqrt"
    cost_per_step: ClassVar[float] = 17.0
    cost_per_value: ClassVar[float] = 15.0  # measured 17 + 14 × groups
    stable_timescale: Number | None = Field(
        default=None, gt=0.0, description="Timescale in epochs; null: warmup_epochs."
    )
    examples: ClassVar[list[dict[str, Any]]] = [
        {"type": "timm", "sched": "rsqrt", "num_epochs": 100, "warmup_epochs": 10}
    ]

    @model_validator(mode="after")
    def _timescale_given(self) -> "TimmRsqrt":
        if self.stable_timescale is None and self.warmup_epochs == 0:
            raise ValueError(
                "stable_timescale: rsqrt's timescale defaults to warmup_epochs, which is 0; "
                "give stable_timescale or warmup_epochs"
            )
        return self


SCHEDULES: tuple[type[TimmScheduler], ...] = (
    TimmCosine,
    TimmTanh,
    TimmStep,
    TimmConstant,
    TimmMultiStep,
    TimmPlateau,
    TimmPoly,
    TimmWSD,
    TimmRsqrt,
)
"""One class per ``sched`` of timm 1.0.31's ``create_scheduler_v2`` that builds a scheduler."""

SCHEDS = tuple(cls.model_fields["sched"].default for cls in SCHEDULES)

TimmSchedule = Annotated[
    TimmCosine
    | TimmTanh
    | TimmStep
    | TimmConstant
    | TimmMultiStep
    | TimmPlateau
    | TimmPoly
    | TimmWSD
    | TimmRsqrt,
    Field(discriminator="sched"),
    BeforeValidator(selector_check("sched", SCHEDS, "timm")),
]


def _cycle_index(tt: Tensor, T: int, m: float) -> Tensor:
    """Return timm's cycle index ``floor(log(1 - t/T*(1-m), m))`` exactly as Python computes it.

    torch's vectorized log may differ from libm's by an ulp, which moves floor() at a cycle
    boundary; values within 1e-9 of an integer are recomputed with ``math.log``. Raises
    ValueError (Python's "math domain error") where timm would, when cycle_mul < 1 runs out.
    """
    x = 1 - tt / T * (1 - m)
    if bool((x <= 0).any()):
        first = int(tt[x <= 0].min().item())
        raise ValueError(
            f"cycle_mul={m}: timm raises 'math domain error' at t={first}: with cycle_mul < 1 "
            f"all cycles fit in t < {T / (1 - m):g}; lower steps or raise cycle_mul"
        )
    raw = torch.log(x) / math.log(m)
    i = torch.floor(raw)
    near = (raw - torch.round(raw)).abs() < 1e-9
    if bool(near.any()):
        idx = near.nonzero().flatten().tolist()
        values = tt[near].tolist()
        fixed = [float(math.floor(math.log(1 - v / T * (1 - m), m))) for v in values]
        i[idx] = torch.tensor(fixed, dtype=F64, device=tt.device)
    return i


NOISE_MAX_POINTS = 100_000
"""Most noisy steps one request evaluates (about 45 µs each, one generator per step)."""


def _noise_at(spec: TimmScheduler, t: int) -> float:
    """Return timm's noise at t: ``torch.Generator`` seeded ``noise_seed + t``, resampled."""
    g = torch.Generator()
    g.manual_seed(spec.noise_seed + t)
    while True:
        noise = torch.randn(1, generator=g).item() * spec.noise_std
        if abs(noise) < spec.noise_pct:
            return noise


def _add_noise(spec: TimmScheduler, k: Tensor, values: Tensor) -> Tensor:
    """Apply timm's ``v + v * noise`` at the steps in its noise range (t >= 1)."""
    noise_range = spec.noise_range()
    if noise_range is None:
        return values
    t = k.to(F64)
    if isinstance(noise_range, list):
        inside = (noise_range[0] <= t) & (t < noise_range[1])
    else:
        inside = t >= noise_range
    inside &= k >= 1
    if not bool(inside.any()):
        return values
    cols = inside.nonzero().flatten()
    if cols.numel() > NOISE_MAX_POINTS:
        raise LimitExceeded(
            f"timm's noise draws from a torch.Generator seeded anew at every step: this request "
            f"has {cols.numel()} noisy steps and the limit is {NOISE_MAX_POINTS}; lower steps, "
            "sample fewer points (sample.points) or narrow noise",
            loc=("body", "scheduler", "noise"),
        )
    steps = k[cols].tolist()
    cache: dict[int, float] = {}
    noise = [cache.setdefault(s, _noise_at(spec, s)) for s in steps]
    n = torch.tensor(noise, dtype=F64, device=values.device)
    out = values.clone()
    picked = out[:, cols]
    out[:, cols] = picked + picked * n
    return out
