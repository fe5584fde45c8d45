"""The vectorized engine: every scheduler as a pure function of the step, on tensors.

Each scheduler type is one small class of pure functions of a tensor of its own step counts
``e`` (int64; torch's ``last_epoch``), in float64, on any device:

- ``closed(e, x, restarted)``: the lr it sets at ``e`` when it drives the lr alone, started
  from lr ``x`` (the lr before its first step) or, ``restarted``, by ``SequentialLR`` with
  ``_update_lr(0)``; evaluated only at the requested ``e``, so sampling costs O(points).
- ``step_map(e)`` / ``restart_map()``: the affine map ``lr -> A * lr + B`` one ``step()`` (or
  the restart) applies to the optimizer's current lr; used where schedulers share the lr.
- ``momentum(e)``: the momentum (or beta1) it writes, for CyclicLR and OneCycleLR.
- ``failure(last, restarted)``: the first step torch would refuse, and torch's reason.

The formulas are torch's recursive ones where they differ from the closed forms (e.g.
``CosineAnnealingLR`` past ``T_max`` and with a restarted anchor, ``ConstantLR`` with
``total_iters=0``, ``MultiStepLR`` counting repeated milestones). Composites are data:
``Sequential`` selects a child by segment and restarts it, ``Chained`` composes the
children's maps, and a general affine scan (``lr_k = A_k * lr_{k-1} + B_k``) evaluates any
composition from torch's own lr at step 0.

The real torch optimizer and schedulers are built once, without stepping, by
:mod:`~service.schedules.torch_engine`: that gives the base lrs, the momentum and lr at
step 0, and every construction-time refusal exactly as torch makes them.
``ReduceLROnPlateau`` depends on the metric values and is left to the torch engine.
"""

import bisect
import dataclasses
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.optim import lr_scheduler
from torch.optim.swa_utils import SWALR as TorchSWALR

from service.errors import InvalidSpec
from service.schedules import specs, torch_engine
from service.schedules.expressions import ExpressionEvaluationError
from service.schedules.families import pytorch_warmup

F64 = torch.float64
Tensor = torch.Tensor
Map = tuple[Tensor, Tensor]
"""An affine map ``lr -> A * lr + B``: A and B broadcast to (groups, steps)."""


class Unsupported(Exception):
    """The spec cannot be evaluated by this engine (the reason is the message)."""


@dataclass(frozen=True)
class Failure:
    """The first scheduler step (global) torch refuses, and why."""

    k: int
    exc: BaseException
    lambda_field: bool = False


def _earliest(*failures: Failure | None) -> Failure | None:
    found = [f for f in failures if f is not None]
    return min(found, key=lambda f: f.k) if found else None


def _col(values: list[float], device: torch.device) -> Tensor:
    """Return per-group values as a (groups, 1) float64 tensor."""
    return torch.tensor([float(v) for v in values], dtype=F64, device=device)[:, None]


def _ones_like(e: Tensor, groups: int) -> Tensor:
    return torch.ones((groups, e.numel()), dtype=F64, device=e.device)


def _zero_division() -> ZeroDivisionError:
    return ZeroDivisionError("float division by zero")


def _overflow() -> OverflowError:
    return OverflowError(34, "Numerical result out of range")


def _first_overflow(base: float, lo: int, hi: int) -> int | None:
    """Return the least integer x in [lo, hi] for which Python's ``base ** x`` overflows."""
    if abs(base) <= 1.0 or hi < lo:
        return None
    guess = max(lo, int(math.log(sys.float_info.max) / math.log(abs(base))) - 2)
    for x in range(guess, guess + 6):
        if x > hi:
            return None
        try:
            base**x
        except OverflowError:
            return max(x, lo)
    return None  # pragma: no cover - the guess is within a few of the threshold


# --------------------------------------------------------------------------- leaves


@dataclass(eq=False)
class Leaf:
    """One torch scheduler as pure functions of its step count ``e`` (see the module doc)."""

    base: Tensor
    """The scheduler's ``base_lrs``, (groups, 1)."""

    relative = False
    """True when ``closed`` builds on the lr before a restart (it is not reset)."""
    dense_check = False
    """True when finiteness must be checked at every step (user expressions)."""

    @property
    def groups(self) -> int:
        return self.base.shape[0]

    def closed(self, e: Tensor, x: Tensor, restarted: bool) -> Tensor:
        raise NotImplementedError

    def step_map(self, e: Tensor) -> Map:
        raise NotImplementedError

    def restart_map(self) -> Map:
        raise NotImplementedError

    def momentum(self, e: Tensor) -> Tensor | None:
        return None

    def failure(self, last: int, restarted: bool) -> tuple[int, BaseException] | None:
        """Return (local step, exception) of the first step in ``0|1..last`` torch refuses."""
        return None

    # As the root or a ChainedScheduler's child, a leaf's step count is the global step.

    def maps(self, k: Tensor) -> Map:
        return self.step_map(k)

    def momentum_sets(self, k: Tensor) -> tuple[Tensor, Tensor] | None:
        mom = self.momentum(k)
        if mom is None:
            return None
        return torch.ones(k.numel(), dtype=torch.bool, device=k.device), mom

    def failure_at(self, last: int) -> Failure | None:
        hit = self.failure(last, False) if last >= 1 else None
        return None if hit is None else Failure(hit[0], hit[1], _is_lambda(self))


def _absolute(values: Tensor) -> Map:
    return torch.zeros_like(values), values


def _scale(factor: Tensor) -> Map:
    return factor, torch.zeros_like(factor)


@dataclass(eq=False)
class Lambda(Leaf):
    """LambdaLR: ``lr = base_lr * lr_lambda(e)``."""

    fns: tuple[Callable[[Tensor], Tensor], ...] = ()
    lambda_field: bool = True
    fn_keys: tuple[object, ...] | None = None
    """What the ``fns`` compute, comparable across specs (None: not comparable)."""

    @property
    def dense_check(self) -> bool:  # type: ignore[override]
        return self.lambda_field

    def factor(self, e: Tensor) -> Tensor:
        ef = e.to(F64)
        cache: dict[int, Tensor] = {}
        rows = []
        for fn in self.fns:
            if id(fn) not in cache:
                cache[id(fn)] = fn(ef)
            rows.append(cache[id(fn)])
        return torch.stack(rows)

    def closed(self, e: Tensor, x: Tensor, restarted: bool) -> Tensor:
        return self.base * self.factor(e)

    def step_map(self, e: Tensor) -> Map:
        return _absolute(self.base * self.factor(e))

    def restart_map(self) -> Map:
        return self.step_map(torch.zeros(1, dtype=torch.int64, device=self.base.device))

    def failure(self, last: int, restarted: bool) -> tuple[int, BaseException] | None:
        if not self.lambda_field:
            return None
        try:
            self.factor(torch.arange(0 if restarted else 1, last + 1, device=self.base.device))
        except ExpressionEvaluationError as exc:
            return int(exc.epoch), exc
        return None


@dataclass(eq=False)
class Multiplicative(Lambda):
    """MultiplicativeLR: ``lr_e = lr_(e-1) * lr_lambda(e)`` for e >= 1 (and at a restart)."""

    relative = True

    def closed(self, e: Tensor, x: Tensor, restarted: bool) -> Tensor:
        top = int(e.max()) if e.numel() else 0
        steps = self.factor(torch.arange(0 if restarted else 1, top + 1, device=e.device))
        if not restarted:
            steps = torch.cat([torch.ones_like(x), steps], dim=1)
        chain = torch.cumprod(torch.cat([x.expand(-1, 1), steps], dim=1), dim=1)[:, 1:]
        return chain[:, e]

    def step_map(self, e: Tensor) -> Map:
        return _scale(self.factor(e))

    def restart_map(self) -> Map:
        return self.step_map(torch.zeros(1, dtype=torch.int64, device=self.base.device))


@dataclass(eq=False)
class Step(Leaf):
    """StepLR: ``lr = base_lr * gamma ** (e // step_size)``."""

    step_size: int = 1
    gamma: float = 0.1

    def closed(self, e: Tensor, x: Tensor, restarted: bool) -> Tensor:
        start = self.base if restarted else x
        return start * torch.pow(torch.tensor(self.gamma, dtype=F64), (e // self.step_size))

    def step_map(self, e: Tensor) -> Map:
        hit = (e % self.step_size == 0) & (e > 0)
        one = _ones_like(e, self.groups)
        return _scale(torch.where(hit, self.gamma, one))

    def restart_map(self) -> Map:
        return _absolute(self.base * self.gamma**0)


@dataclass(eq=False)
class MultiStep(Leaf):
    """MultiStepLR: ``lr = base_lr * gamma ** (milestones <= e)``, repeats counted."""

    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def _count(self, e: Tensor, low: int | None) -> Tensor:
        ms = torch.tensor(sorted(self.milestones), dtype=torch.int64, device=e.device)
        upto = torch.searchsorted(ms, e, right=True)
        if low is None:
            return upto
        return upto - int(bisect.bisect_left(sorted(self.milestones), low))

    def closed(self, e: Tensor, x: Tensor, restarted: bool) -> Tensor:
        count = self._count(e, None if restarted else 0)
        start = self.base if restarted else x
        return start * torch.pow(torch.tensor(self.gamma, dtype=F64), count)

    def step_map(self, e: Tensor) -> Map:
        counts = self._count(e, None) - self._count(e - 1, None)
        factor = torch.pow(torch.tensor(self.gamma, dtype=F64), counts)
        return _scale(torch.where(counts > 0, factor, 1.0).expand(self.groups, -1))

    def restart_map(self) -> Map:
        count = bisect.bisect_right(sorted(self.milestones), 0)
        return _absolute(self.base * self.gamma**count)


@dataclass(eq=False)
class Constant(Leaf):
    """ConstantLR: ``factor * lr`` until ``total_iters``, where torch multiplies by 1/factor."""

    factor: float = 1 / 3
    total_iters: int = 5

    def closed(self, e: Tensor, x: Tensor, restarted: bool) -> Tensor:
        t = self.total_iters
        if restarted:
            held = self.base * (self.factor + (t <= 0) * (1 - self.factor))
        else:
            held = x * self.factor
        if t == 0 or self.factor == 0:
            return held.expand(-1, e.numel()).clone()
        return torch.where(e >= t, held * (1.0 / self.factor), held)

    def step_map(self, e: Tensor) -> Map:
        one = _ones_like(e, self.groups)
        if self.total_iters == 0 or self.factor == 0:
            return _scale(one)
        return _scale(torch.where(e == self.total_iters, 1.0 / self.factor, one))

    def restart_map(self) -> Map:
        t = self.total_iters
        return _absolute(self.base * (self.factor + (t <= 0) * (1 - self.factor)))

    def failure(self, last: int, restarted: bool) -> tuple[int, BaseException] | None:
        if self.factor == 0 and 0 < self.total_iters <= last:
            return self.total_iters, _zero_division()
        return None


@dataclass(eq=False)
class Linear(Leaf):
    """LinearLR: the factor moves from start_factor to end_factor over total_iters steps."""

    start_factor: float = 1 / 3
    end_factor: float = 1.0
    total_iters: int = 5

    def closed(self, e: Tensor, x: Tensor, restarted: bool) -> Tensor:
        s, t = self.start_factor, self.total_iters
        start = self.base if restarted else x
        if t == 0:
            return (start * s).expand(-1, e.numel()).clone()
        done = torch.clamp(e, max=t).to(F64)
        return start * (s + (self.end_factor - s) * done / t)

    def step_map(self, e: Tensor) -> Map:
        s, end, t = self.start_factor, self.end_factor, self.total_iters
        ef = e.to(F64)
        ratio = 1.0 + (end - s) / (t * s + (ef - 1) * (end - s))
        return _scale(torch.where(e > t, 1.0, ratio).expand(self.groups, -1))

    def restart_map(self) -> Map:
        return _absolute(self.base * self.start_factor)

    def failure(self, last: int, restarted: bool) -> tuple[int, BaseException] | None:
        if restarted and self.total_iters == 0:
            return 0, _zero_division()
        return None


@dataclass(eq=False)
class Exponential(Leaf):
    """ExponentialLR: ``lr = base_lr * gamma ** e``."""

    gamma: float = 0.9

    def closed(self, e: Tensor, x: Tensor, restarted: bool) -> Tensor:
        start = self.base if restarted else x
        return start * torch.pow(torch.tensor(self.gamma, dtype=F64), e)

    def step_map(self, e: Tensor) -> Map:
        return _scale(torch.full((self.groups, e.numel()), self.gamma, dtype=F64, device=e.device))

    def restart_map(self) -> Map:
        return _absolute(self.base * self.gamma**0)


@dataclass(eq=False)
class Polynomial(Leaf):
    """PolynomialLR: ``lr = base_lr * (1 - min(e, total_iters) / total_iters) ** power``."""

    total_iters: int = 5
    power: float = 1.0

    def closed(self, e: Tensor, x: Tensor, restarted: bool) -> Tensor:
        t = self.total_iters
        start = self.base if restarted else x
        if t == 0:
            return start.expand(-1, e.numel()).clone()
        done = torch.clamp(e, max=t).to(F64)
        return start * torch.pow(1.0 - done / t, self.power)

    def step_map(self, e: Tensor) -> Map:
        t = self.total_iters
        if t == 0:
            return _scale(_ones_like(e, self.groups))
        ef = e.to(F64)
        ratio = torch.pow((1.0 - ef / t) / (1.0 - (ef - 1) / t), self.power)
        return _scale(torch.where(e > t, 1.0, ratio).expand(self.groups, -1))

    def restart_map(self) -> Map:
        return _absolute(self.base * (1.0 - 0 / self.total_iters) ** self.power)

    def failure(self, last: int, restarted: bool) -> tuple[int, BaseException] | None:
        if restarted and self.total_iters == 0:
            return 0, ZeroDivisionError("division by zero")
        if self.power < 0 and 0 < self.total_iters <= last:
            return self.total_iters, ZeroDivisionError("0.0 cannot be raised to a negative power")
        return None


@dataclass(eq=False)
class Cosine(Leaf):
    """CosineAnnealingLR, as torch steps it: the cosine from the anchor, restarting past T_max.

    ``lr = eta_min + (anchor - eta_min) * (1 + cos(pi * e / T_max)) / 2`` up to ``T_max``;
    from ``T_max + 1`` torch's recursion climbs back along the cosine from ``base_lr``.
    """

    T_max: int = 1
    eta_min: float = 0.0

    def _half(self, e: Tensor) -> Tensor:
        """Return ``1 + cos(pi * e / T_max)``, in torch's order of operations (in place)."""
        return e.to(F64).mul_(math.pi).div_(self.T_max).cos_().add_(1)

    def _from(self, start: Tensor, half: Tensor) -> Tensor:
        eta = self.eta_min
        return ((start - eta) * half).div_(2).add_(eta)

    def closed(self, e: Tensor, x: Tensor, restarted: bool) -> Tensor:
        half = self._half(e)
        later = self._from(self.base, half)
        if restarted or bool(torch.equal(x, self.base)):
            return later
        return torch.where(e <= self.T_max, self._from(x, half), later)

    def step_map(self, e: Tensor) -> Map:
        t, eta = self.T_max, self.eta_min
        bump = (e - 1 - t) % (2 * t) == 0
        ratio = self._half(e) / self._half(e - 1)
        ratio = torch.where(bump, 1.0, ratio).expand(self.groups, -1)
        added = (self.base - eta) * (1 - math.cos(math.pi / t)) / 2
        shift = torch.where(bump, added, eta * (1 - ratio))
        return ratio, shift

    def restart_map(self) -> Map:
        eta = self.eta_min
        return _absolute(eta + (self.base - eta) * (1 + math.cos(0.0)) / 2)


@dataclass(eq=False)
class WarmRestarts(Leaf):
    """CosineAnnealingWarmRestarts: cosine over periods T_0, T_0*T_mult, ... from base_lr."""

    T_0: int = 1
    T_mult: int = 1
    eta_min: float = 0.0

    def _position(self, e: Tensor) -> tuple[Tensor, Tensor]:
        top = int(e.max()) if e.numel() else 0
        starts, periods = [0], [self.T_0]
        while starts[-1] + periods[-1] <= top:
            starts.append(starts[-1] + periods[-1])
            periods.append(periods[-1] * self.T_mult)
        s = torch.tensor(starts, dtype=torch.int64, device=e.device)
        p = torch.tensor([float(v) for v in periods], dtype=F64, device=e.device)
        cycle = torch.searchsorted(s, e, right=True) - 1
        return (e - s[cycle]).to(F64), p[cycle]

    def closed(self, e: Tensor, x: Tensor, restarted: bool) -> Tensor:
        t_cur, t_i = self._position(e)
        eta = self.eta_min
        return eta + (self.base - eta) * (1 + torch.cos(math.pi * t_cur / t_i)) / 2

    def step_map(self, e: Tensor) -> Map:
        return _absolute(self.closed(e, self.base, False))

    def restart_map(self) -> Map:
        return self.step_map(torch.zeros(1, dtype=torch.int64, device=self.base.device))


@dataclass(eq=False)
class Cyclic(Leaf):
    """CyclicLR: triangular waves between base_lr and max_lr; momentum inversely."""

    max_lr: Tensor = field(default_factory=lambda: torch.zeros(1, 1))
    total_size: float = 4000.0
    step_ratio: float = 0.5
    mode: str = "triangular"
    gamma: float = 1.0
    scale_mode: str = "cycle"
    base_momentum: Tensor | None = None
    max_momentum: Tensor | None = None

    def _scales(self, e: Tensor) -> tuple[Tensor, Tensor]:
        ef = e.to(F64)
        cycle = torch.floor(1 + ef / self.total_size)
        x = 1.0 + ef / self.total_size - cycle
        scale = torch.where(
            x <= self.step_ratio, x / self.step_ratio, (x - 1) / (self.step_ratio - 1)
        )
        arg = cycle if self.scale_mode == "cycle" else ef
        if self.mode == "triangular":
            fn = torch.ones_like(arg)
        elif self.mode == "triangular2":
            fn = 1 / torch.pow(2.0, arg - 1)
        else:
            fn = torch.pow(torch.tensor(self.gamma, dtype=F64), arg)
        return scale, fn

    def closed(self, e: Tensor, x: Tensor, restarted: bool) -> Tensor:
        scale, fn = self._scales(e)
        return self.base + (self.max_lr - self.base) * scale * fn

    def step_map(self, e: Tensor) -> Map:
        return _absolute(self.closed(e, self.base, False))

    def restart_map(self) -> Map:
        return self.step_map(torch.zeros(1, dtype=torch.int64, device=self.base.device))

    def momentum(self, e: Tensor) -> Tensor | None:
        if self.max_momentum is None or self.base_momentum is None:
            return None
        scale, fn = self._scales(e)
        return self.max_momentum - (self.max_momentum - self.base_momentum) * scale * fn

    def failure(self, last: int, restarted: bool) -> tuple[int, BaseException] | None:
        if self.mode == "triangular2":
            # 2.0 ** (cycle - 1) overflows once cycle - 1 reaches 1024.
            first = int(1024 * self.total_size)
            while math.floor(1 + first / self.total_size) - 1 >= 1024 and first > 0:
                first -= 1
            while math.floor(1 + first / self.total_size) - 1 < 1024:
                first += 1
            return (first, _overflow()) if first <= last else None
        if self.mode == "exp_range":
            at = _first_overflow(self.gamma, 0 if restarted else 1, last)
            return None if at is None else (at, _overflow())
        return None


@dataclass(eq=False)
class OneCycle(Leaf):
    """OneCycleLR: annealing between the phases' lrs and momenta, by torch's phase table."""

    total_steps: int = 1
    phases: tuple[tuple[float, str, str, str, str], ...] = ()
    values: dict[str, Tensor] = field(default_factory=dict)
    cos: bool = True
    cycle_momentum: bool = True

    def _anneal(self, start: Tensor, end: Tensor, pct: Tensor) -> Tensor:
        if self.cos:
            return end + (start - end) / 2.0 * (torch.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _eval(self, e: Tensor, which: int) -> Tensor:
        ef = e.to(F64)
        out = torch.zeros((self.groups, e.numel()), dtype=F64, device=e.device)
        done = torch.zeros(e.numel(), dtype=torch.bool, device=e.device)
        start_step = 0.0
        for i, phase in enumerate(self.phases):
            end_step = phase[0]
            last = i == len(self.phases) - 1
            here = ~done & ((ef <= end_step) | last)
            width = end_step - start_step
            pct = (ef - start_step) / (width if width != 0 else 1.0)
            value = self._anneal(self.values[phase[1 + which]], self.values[phase[2 + which]], pct)
            out = torch.where(here, value, out)
            done |= here
            start_step = end_step
        return out

    def closed(self, e: Tensor, x: Tensor, restarted: bool) -> Tensor:
        return self._eval(e, 0)

    def step_map(self, e: Tensor) -> Map:
        return _absolute(self._eval(e, 0))

    def restart_map(self) -> Map:
        return self.step_map(torch.zeros(1, dtype=torch.int64, device=self.base.device))

    def momentum(self, e: Tensor) -> Tensor | None:
        return self._eval(e, 2) if self.cycle_momentum else None

    def _phase_width(self, step: int) -> float:
        start_step = 0.0
        for i, phase in enumerate(self.phases):
            if step <= phase[0] or i == len(self.phases) - 1:
                return phase[0] - start_step
            start_step = phase[0]
        return 1.0  # pragma: no cover - the last phase always matches

    def failure(self, last: int, restarted: bool) -> tuple[int, BaseException] | None:
        first = 0 if restarted else 1
        top = min(last, self.total_steps)
        # The phase of a step changes only just after a phase's end_step.
        candidates = {first} | {math.floor(p[0]) + 1 for p in self.phases}
        for step in sorted(c for c in candidates if first <= c <= top):
            if self._phase_width(step) == 0:
                return step, _zero_division()
        if last > self.total_steps:
            return self.total_steps + 1, ValueError(
                f"Tried to step {self.total_steps + 1} times. The specified number of total "
                f"steps is {self.total_steps}"
            )
        return None


@dataclass(eq=False)
class Swa(Leaf):
    """SWALR: anneals from the lr it starts from to swa_lr over anneal_epochs steps."""

    swa_lr: Tensor = field(default_factory=lambda: torch.zeros(1, 1))
    anneal_epochs: int = 10
    cos: bool = True
    relative = True

    def _alpha(self, steps: Tensor) -> Tensor:
        t = torch.clamp(steps.to(F64) / max(1, self.anneal_epochs), 0.0, 1.0)
        return (1 - torch.cos(math.pi * t)) / 2 if self.cos else t

    def _steps(self, e: Tensor) -> Tensor:
        return torch.clamp(e, min=1) if self.anneal_epochs == 0 else e

    def closed(self, e: Tensor, x: Tensor, restarted: bool) -> Tensor:
        alpha = self._alpha(self._steps(e))
        return torch.where(alpha == 1, self.swa_lr, self.swa_lr * alpha + x * (1 - alpha))

    def step_map(self, e: Tensor) -> Map:
        steps = self._steps(e)
        alpha, prev = self._alpha(steps), self._alpha(steps - 1)
        a = torch.where(prev == 1, 0.0, (1 - alpha) / torch.where(prev == 1, 1.0, 1 - prev))
        a = a.expand(self.groups, -1)
        b = torch.where(prev == 1, self.swa_lr, self.swa_lr * alpha - a * prev * self.swa_lr)
        return a, b

    def restart_map(self) -> Map:
        return self.step_map(torch.zeros(1, dtype=torch.int64, device=self.base.device))


# --------------------------------------------------------------------------- composites


@dataclass(eq=False)
class Chained:
    """ChainedScheduler: every child steps at every step, in order; their effects compose."""

    children: list["Node"]

    def maps(self, k: Tensor) -> Map:
        a, b = self.children[0].maps(k)
        for child in self.children[1:]:
            ca, cb = child.maps(k)
            a, b = ca * a, ca * b + cb
        return a, b

    def momentum_sets(self, k: Tensor) -> tuple[Tensor, Tensor] | None:
        out = None
        for child in self.children:
            sets = child.momentum_sets(k)
            if sets is None:
                continue
            if out is not None:
                sets = (out[0] | sets[0], torch.where(sets[0], sets[1], out[1]))
            out = sets
        return out

    def failure_at(self, last: int) -> Failure | None:
        return _earliest(*(child.failure_at(last) for child in self.children))


@dataclass(eq=False)
class Segment:
    """One child of a SequentialLR and the global steps [start, end) where it runs."""

    leaf: Leaf
    start: int
    end: int
    restarted: bool


@dataclass(eq=False)
class Sequential:
    """SequentialLR: each child runs from its milestone, restarted there with ``_update_lr(0)``."""

    segments: list[Segment]

    def _slices(self, k: Tensor) -> list[tuple[Segment, slice]]:
        """Return each segment with the slice of ``k`` (sorted ascending) it covers."""
        starts = torch.tensor([s.start for s in self.segments], device=k.device)
        bounds = [*torch.searchsorted(k, starts).tolist(), k.numel()]
        return [
            (seg, slice(bounds[i], bounds[i + 1]))
            for i, seg in enumerate(self.segments)
            if bounds[i] < bounds[i + 1]
        ]

    def maps(self, k: Tensor) -> Map:
        groups = self.segments[0].leaf.groups
        a = torch.ones((groups, k.numel()), dtype=F64, device=k.device)
        b = torch.zeros_like(a)
        for seg, here in self._slices(k):
            local = k[here] - seg.start
            sa, sb = seg.leaf.step_map(local)
            if seg.restarted and int(local[0]) == 0:
                ra, rb = seg.leaf.restart_map()
                first = local == 0
                sa = torch.where(first, ra, sa)
                sb = torch.where(first, rb, sb)
            a[:, here] = sa
            b[:, here] = sb
        return a, b

    def momentum_sets(self, k: Tensor) -> tuple[Tensor, Tensor] | None:
        groups = self.segments[0].leaf.groups
        mask = torch.zeros(k.numel(), dtype=torch.bool, device=k.device)
        values = torch.zeros((groups, k.numel()), dtype=F64, device=k.device)
        any_set = False
        for seg, here in self._slices(k):
            mom = seg.leaf.momentum(k[here] - seg.start)
            if mom is None:
                continue
            any_set = True
            mask[here] = True
            values[:, here] = mom
        return (mask, values) if any_set else None

    def failure_at(self, last: int) -> Failure | None:
        found = []
        for seg in self.segments:
            top = min(seg.end - 1, last) - seg.start
            if top < 0 or (top == 0 and not seg.restarted):
                continue
            hit = seg.leaf.failure(top, seg.restarted)
            if hit is not None:
                found.append(Failure(seg.start + hit[0], hit[1], _is_lambda(seg.leaf)))
        return _earliest(*found)

    def closed(self, k: Tensor, x: Tensor) -> Tensor:
        groups = self.segments[0].leaf.groups
        parts = []
        for seg, here in self._slices(k):
            anchor = x
            if seg.restarted and seg.leaf.relative:
                before = torch.tensor([seg.start - 1], device=k.device)
                anchor = self.closed(before, x)
            parts.append(seg.leaf.closed(k[here] - seg.start, anchor, seg.restarted))
        if not parts:
            return torch.empty((groups, 0), dtype=F64, device=k.device)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _is_lambda(leaf: Leaf) -> bool:
    return isinstance(leaf, Lambda) and leaf.lambda_field


Node = Leaf | Sequential | Chained


# --------------------------------------------------------------------------- compiling


def _lambda_fn(fn: object) -> Callable[[Tensor], Tensor]:
    if isinstance(fn, torch_engine._LinearFromZero):
        steps = fn.steps
        return lambda e: e / steps
    evaluate = getattr(fn, "evaluate_tensor", None)
    if evaluate is None:  # pragma: no cover - every lr_lambda the service builds has one
        raise Unsupported("an lr_lambda that is not an expression")
    return evaluate


def _leaf(sched: lr_scheduler.LRScheduler, device: torch.device) -> Leaf:
    base = _col(sched.base_lrs, device)
    groups = sched.optimizer.param_groups
    if isinstance(sched, lr_scheduler.MultiplicativeLR):
        return Multiplicative(base, fns=tuple(_lambda_fn(f) for f in sched.lr_lambdas))
    if isinstance(sched, lr_scheduler.LambdaLR):
        fns = tuple(_lambda_fn(f) for f in sched.lr_lambdas)
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
            max_lr=_col(sched.max_lrs, device),
            total_size=sched.total_size,
            step_ratio=sched.step_ratio,
            mode=sched.mode,
            gamma=sched.gamma,
            scale_mode=sched.scale_mode,
            base_momentum=_col(sched.base_momentums, device) if cyc else None,
            max_momentum=_col(sched.max_momentums, device) if cyc else None,
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
            values={key: _col([g[key] for g in groups], device) for key in keys},
            cos=sched._anneal_func_type == "cos",
            cycle_momentum=sched.cycle_momentum,
        )
    if isinstance(sched, TorchSWALR):
        return Swa(
            base,
            swa_lr=_col([g["swa_lr"] for g in groups], device),
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


# --------------------------------------------------------------------------- evaluation


def _affine_scan(lr0: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Return lr_0..lr_K of ``lr_k = a_k * lr_(k-1) + b_k`` (a, b: (groups, K))."""
    if not bool((b != 0).any()):
        return torch.cumprod(torch.cat([lr0, a], dim=1), dim=1)
    d = 1
    size = a.shape[1]
    while d < size:
        a_new, b_new = a.clone(), b.clone()
        a_new[:, d:] = a[:, d:] * a[:, :-d]
        b_new[:, d:] = a[:, d:] * b[:, :-d] + b[:, d:]
        a, b = a_new, b_new
        d *= 2
    return torch.cat([lr0, a * lr0 + b], dim=1)


def _forward_fill(start: Tensor, sets: tuple[Tensor, Tensor] | None, size: int) -> Tensor:
    if sets is None:
        return start.expand(-1, size + 1).clone()
    mask, values = sets
    series = torch.cat([start, values], dim=1)
    pos = torch.arange(1, size + 1, device=start.device)
    last = torch.cummax(torch.cat([pos.new_zeros(1), torch.where(mask, pos, 0)]), dim=0).values
    return series[:, last]


@dataclass
class Result:
    """The vectorized schedule at the requested scheduler steps, and at the last step."""

    lr: np.ndarray
    momentum: np.ndarray | None
    final_lr: list[float]
    device: str


def _zeros(k: Tensor) -> int:
    """Return how many leading entries of sorted ``k`` are step 0."""
    return int(torch.searchsorted(k, torch.ones(1, dtype=k.dtype, device=k.device)))


def _all_finite(values: Tensor) -> bool:
    """Return True when every value is finite (a sum first: one pass, no mask)."""
    if math.isfinite(float(values.sum())):
        return True
    return bool(torch.isfinite(values).all())


def _raise_failure(failure: Failure) -> None:
    loc: tuple[str, ...] = ("body", "scheduler")
    if failure.lambda_field:
        loc = (*loc, "lr_lambda")
    where = ".".join(loc[1:])
    raise InvalidSpec(
        f"{where}: torch refused scheduler step {failure.k}: {torch_engine._reason(failure.exc)}",
        loc=loc,
    )


def _raise_not_finite(lr: Tensor, offset: Tensor) -> None:
    bad = ~torch.isfinite(lr)
    cols = torch.nonzero(bad.any(dim=0))
    col = int(cols[0, 0])
    group = int(torch.nonzero(bad[:, col])[0, 0])
    raise InvalidSpec(
        f"the lr of group {group} is not finite at scheduler step {int(offset[col])}; "
        "check the scheduler's parameters (e.g. lr_lambda or gamma).",
        loc=("body", "scheduler"),
    )


@dataclass
class Program:
    """A compiled schedule: the node tree and torch's own state at step 0."""

    root: Node
    n: int
    lr0: Tensor
    momentum0: Tensor | None
    anchor: Tensor
    device: torch.device
    dampen: Callable[[Tensor], Tensor] | None = None
    """pytorch_warmup's factor per group at float64 steps, multiplying the lr (None: none)."""

    def failure(self) -> Failure | None:
        return self.root.failure_at(self.n - 1)

    def _closed(self, k: Tensor) -> Tensor | None:
        if isinstance(self.root, Leaf):
            return self.root.closed(k, self.anchor, False)
        if isinstance(self.root, Sequential):
            return self.root.closed(k, self.anchor)
        return None

    def closed_ok(self) -> bool:
        zero = torch.zeros(1, dtype=torch.int64, device=self.device)
        value = self._closed(zero)
        return value is not None and self._matches_lr0(value[:, 0])

    def _matches_lr0(self, value: Tensor) -> bool:
        """Return ``torch.allclose(value, lr0, rtol=1e-13, atol=0)`` on Python floats (the
        same float64 arithmetic, without a tensor op per term)."""
        for got, want in zip(value.tolist(), self.lr0[:, 0].tolist(), strict=True):
            if not (got == want or abs(got - want) <= 1e-13 * abs(want)):
                return False
        return True

    def _closed_momentum(self, k: Tensor) -> Tensor | None:
        """Return momentum at sorted ``k``: what the last momentum-cycling scheduler wrote."""
        if self.momentum0 is None:
            return None
        root = self.root
        out = self.momentum0.expand(-1, k.numel()).clone()
        if isinstance(root, Leaf):
            mom = root.momentum(k)
            if mom is not None:
                out = mom
        else:
            assert isinstance(root, Sequential)
            for seg, here in root._slices(k):
                mom = seg.leaf.momentum(k[here] - seg.start)
                if mom is None:
                    continue
                out[:, here] = mom
                last = torch.tensor([min(seg.end, self.n) - 1 - seg.start], device=k.device)
                held = seg.leaf.momentum(last)
                assert held is not None
                out[:, here.stop :] = held
        out[:, : _zeros(k)] = self.momentum0
        return out

    def evaluate(self, k: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """Return lr and momentum at scheduler steps ``k`` and the lr at step n - 1.

        Raises InvalidSpec where torch would refuse a step or the lr is not finite.
        """
        failure = self.failure()
        if failure is not None:
            _raise_failure(failure)
        if self.dampen is not None:
            lr, mom, final = dataclasses.replace(self, dampen=None).evaluate(k)
            last = torch.tensor([self.n - 1], dtype=F64, device=self.device)
            return lr * self.dampen(k.to(F64)), mom, final * self.dampen(last)[:, 0]
        if k.numel() < 2 or bool((k[1:] >= k[:-1]).all()):
            return self._evaluate_sorted(k)
        order = torch.argsort(k)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        lr, mom, final = self._evaluate_sorted(k[order])
        return lr[:, inverse], None if mom is None else mom[:, inverse], final

    def _probe_steps(self) -> tuple[list[int], list[int], list[tuple[int, int]]] | None:
        """Return where the closed form is checked before it is trusted, or None when the
        root has no closed form.

        That is: the sorted distinct steps to evaluate in one small tensor (step 0, compared
        with torch's lr at step 0; the last step, the final lr; the last step of every
        segment), the steps of those whose lr must be finite, and the step ranges checked
        densely (user expressions). At most 7 points, so that every point takes the same
        (scalar) kernel path as when it is evaluated alone; None above that.
        """
        root = self.root
        last = self.n - 1
        finite = [last] if self.n > 1 else []
        ranges: list[tuple[int, int]] = []
        if isinstance(root, Sequential):
            for seg in root.segments:
                top = min(seg.end, self.n) - 1
                if seg.leaf.dense_check:
                    ranges.append((seg.start, top))
                else:
                    finite.append(top)
        elif isinstance(root, Leaf):
            if root.dense_check:
                ranges.append((0, last))
        else:
            return None
        points = sorted({0, *finite})
        return (points, sorted(set(finite)), ranges) if len(points) <= 7 else None

    def _evaluate_sorted(self, k: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        probes = self._probe_steps() if isinstance(self.root, (Leaf, Sequential)) else None
        if probes is not None:
            points, finite, ranges = probes
            values = self._closed(torch.tensor(points, device=self.device))
            assert values is not None
            if self._matches_lr0(values[:, 0]):
                lr = self._closed(k)
                assert lr is not None
                final = self.lr0[:, 0] if self.n == 1 else values[:, points.index(self.n - 1)]
                lr[:, : _zeros(k)] = self.lr0
                checked = values[:, [points.index(p) for p in finite]] if finite else None
                ok = _all_finite(lr) and _all_finite(final if checked is None else checked)
                for start, top in ranges:
                    if not ok:
                        break
                    dense = self._closed(torch.arange(start, top + 1, device=self.device))
                    ok = dense is not None and _all_finite(dense)
                if not ok:
                    # torch's recursion (the scan), not the closed form, decides the first step
                    full, _ = self.dense()
                    _raise_not_finite(full, torch.arange(self.n, device=self.device))
                return lr, self._closed_momentum(k), final.reshape(-1)
        elif self.closed_ok():
            last = torch.tensor([self.n - 1], device=self.device)
            lr = self._closed(k)
            final = self.lr0[:, 0] if self.n == 1 else self._closed(last)
            assert lr is not None and final is not None
            final = final.reshape(-1)
            lr[:, : _zeros(k)] = self.lr0
            if not self._finite_everywhere(lr, final):
                # torch's recursion (the scan), not the closed form, decides the first step
                full, _ = self.dense()
                _raise_not_finite(full, torch.arange(self.n, device=self.device))
            return lr, self._closed_momentum(k), final
        full, mom = self.dense()
        if not _all_finite(full):
            _raise_not_finite(full, torch.arange(self.n, device=self.device))
        return full[:, k], None if mom is None else mom[:, k], full[:, -1]

    def _finite_everywhere(self, lr: Tensor, final: Tensor) -> bool:
        if not (_all_finite(lr) and _all_finite(final)):
            return False
        root = self.root
        segments = root.segments if isinstance(root, Sequential) else None
        if segments is None:
            assert isinstance(root, Leaf)
            if not root.dense_check:
                return True
            dense = torch.arange(self.n, device=self.device)
            value = self._closed(dense)
            return value is not None and _all_finite(value)
        for seg in segments:
            top = min(seg.end, self.n) - 1
            if seg.leaf.dense_check:
                ks = torch.arange(seg.start, top + 1, device=self.device)
            else:
                ks = torch.tensor([top], device=self.device)
            value = self._closed(ks)
            if value is None or not _all_finite(value):
                return False
        return True

    def dense(self) -> tuple[Tensor, Tensor | None]:
        """Return lr (and momentum) at every scheduler step 0..n-1 by the affine scan."""
        size = self.n - 1
        k = torch.arange(1, size + 1, device=self.device)
        root = self.root
        if size == 0:
            lr = self.lr0.clone()
            mom = None if self.momentum0 is None else self.momentum0.clone()
            return lr, mom
        a, b = root.maps(k)  # type: ignore[union-attr]
        groups = self.lr0.shape[0]
        lr = _affine_scan(self.lr0, a.expand(groups, -1), b.expand(groups, -1))
        mom = None
        if self.momentum0 is not None:
            mom = _forward_fill(self.momentum0, root.momentum_sets(k), size)  # type: ignore[union-attr]
        return lr, mom


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
    want_momentum = "momentum" in request.include
    if want_momentum and not torch_engine.has_momentum(optimizer):
        raise InvalidSpec(
            f"include 'momentum': torch.optim.{request.optimizer.type} has neither momentum "
            "nor betas; drop 'momentum' from include or choose an optimizer that has one.",
            loc=("body", "include"),
        )
    root = _node(stepper.scheduler, device, n)
    groups = optimizer.param_groups
    return Program(
        root=root,
        n=n,
        lr0=_col(stepper.undampened, device),
        momentum0=_col(stepper.momenta(), device) if want_momentum else None,
        anchor=_col([g["initial_lr"] for g in groups], device),
        device=device,
        dampen=None if stepper.dampener is None else stepper.dampener.omega,
    )


def _result(lr: Tensor, mom: Tensor | None, final: Tensor) -> Result:
    return Result(
        lr=lr.cpu().numpy(),
        momentum=None if mom is None else mom.cpu().numpy(),
        final_lr=[float(v) for v in final.cpu()],
        device=str(lr.device) if lr.device.type == "cpu" else f"cuda:{lr.device.index or 0}",
    )


def run(request: specs.ScheduleRequest, steps: np.ndarray, n: int, device: torch.device) -> Result:
    """Return lr (and momentum when asked) per group at scheduler ``steps`` of ``0..n-1``.

    ``request`` must already have batch scaling applied. Raises InvalidSpec exactly where
    the torch engine does (construction, a refused step, a non-finite lr).
    """
    program = compile_request(request, n, device)
    k = torch.as_tensor(steps, dtype=torch.int64).to(device)
    return _result(*program.evaluate(k))


# --------------------------------------------------------------------------- batches
#
# Programs with the same structure (node tree, leaf types, every scalar parameter, lambda
# functions, groups, steps and requested indices) differ only in their per-group tensors
# (base lrs, max_lr, swa_lr, momenta, lr and momentum at step 0, ...), all (groups, 1).
# Stacking those along dim 0 gives one program whose rows are (spec, group) pairs; every
# formula is elementwise per row or shared across rows (the step tensor), so one evaluation
# of the stack gives each spec the bits its own evaluation would.


def _leaf_signature(leaf: Leaf) -> tuple[object, ...] | None:
    parts: list[object] = [type(leaf).__name__]
    for f in dataclasses.fields(leaf):
        value = getattr(leaf, f.name)
        if f.name == "fns":
            continue
        if isinstance(value, Tensor):
            parts.append((f.name, "tensor", tuple(value.shape), value.dtype, value.device))
        elif isinstance(value, dict):
            parts.append((f.name, "dict", tuple(sorted(value))))
        else:
            parts.append((f.name, value))
    if isinstance(leaf, Lambda) and (leaf.fn_keys is None or isinstance(leaf, Multiplicative)):
        return None
    return tuple(parts)


def _signature(node: Node) -> tuple[object, ...] | None:
    """Return what must be equal for two programs' nodes to be stacked (None: never)."""
    if isinstance(node, Leaf):
        return _leaf_signature(node)
    if isinstance(node, Chained):
        kids = [_signature(c) for c in node.children]
        return None if any(k is None for k in kids) else ("chained", tuple(kids))
    parts = []
    for seg in node.segments:
        sig = _leaf_signature(seg.leaf)
        if sig is None:
            return None
        parts.append((seg.start, seg.end, seg.restarted, sig))
    return ("sequential", tuple(parts))


def _stack_leaf(leaves: list[Leaf]) -> Leaf:
    first = leaves[0]
    update: dict[str, object] = {}
    for f in dataclasses.fields(first):
        value = getattr(first, f.name)
        if isinstance(value, Tensor):
            update[f.name] = torch.cat([getattr(x, f.name) for x in leaves])
        elif isinstance(value, dict) and value and isinstance(next(iter(value.values())), Tensor):
            update[f.name] = {
                key: torch.cat([getattr(x, f.name)[key] for x in leaves]) for key in value
            }
    if isinstance(first, Lambda):
        # one function per row: the same functions for every stacked spec (same fn_keys)
        update["fns"] = first.fns * len(leaves)
    return dataclasses.replace(first, **update)


def _stack_node(nodes: list[Node]) -> Node:
    first = nodes[0]
    if isinstance(first, Leaf):
        return _stack_leaf(nodes)  # type: ignore[arg-type]
    if isinstance(first, Chained):
        return Chained(
            [_stack_node([n.children[i] for n in nodes]) for i in range(len(first.children))]  # type: ignore[union-attr]
        )
    return Sequential(
        [
            dataclasses.replace(seg, leaf=_stack_leaf([n.segments[i].leaf for n in nodes]))  # type: ignore[union-attr]
            for i, seg in enumerate(first.segments)
        ]
    )


def _stack(programs: list[Program]) -> Program:
    first = programs[0]
    return Program(
        root=_stack_node([p.root for p in programs]),
        n=first.n,
        lr0=torch.cat([p.lr0 for p in programs]),
        momentum0=None if first.momentum0 is None else torch.cat([p.momentum0 for p in programs]),  # type: ignore[misc]
        anchor=torch.cat([p.anchor for p in programs]),
        device=first.device,
    )


def _evaluate_stacked(programs: list[Program], k: Tensor) -> list[Result] | None:
    """Return each program's result from one stacked evaluation, or None when the stack
    cannot answer for every program alike (a refused step or a non-finite lr somewhere, or
    a row whose step-0 value needs the scan): evaluate those one by one instead."""
    if any(p.failure() is not None for p in programs):
        return None
    stacked = _stack(programs)
    zero = torch.zeros(1, dtype=torch.int64, device=stacked.device)
    if stacked._closed(zero) is not None and not stacked.closed_ok():
        # Each program alone may take the closed form or the scan: let each decide.
        return None
    try:
        lr, mom, final = stacked.evaluate(k)
    except InvalidSpec:
        return None
    groups = programs[0].lr0.shape[0]
    whole = _result(lr, mom, final)
    out = []
    for i in range(len(programs)):
        rows = slice(i * groups, (i + 1) * groups)
        out.append(
            Result(
                lr=whole.lr[rows],
                momentum=None if whole.momentum is None else whole.momentum[rows],
                final_lr=whole.final_lr[rows],
                device=whole.device,
            )
        )
    return out


def run_many(jobs: list[tuple[Program, np.ndarray]]) -> list[Result | InvalidSpec]:
    """Return each compiled program's result at its scheduler steps, in order.

    Programs of the same structure and the same steps are stacked and evaluated as one
    tensor computation; a program that fails gets its own InvalidSpec in its slot, exactly
    as :func:`run` would raise it.
    """
    out: list[Result | InvalidSpec | None] = [None] * len(jobs)
    buckets: dict[tuple[object, ...], list[int]] = {}
    for i, (program, steps) in enumerate(jobs):
        sig = None if program.dampen is not None else _signature(program.root)
        if sig is None:
            buckets[("single", i)] = [i]
            continue
        key = (sig, program.n, program.device, program.momentum0 is None, steps.tobytes())
        buckets.setdefault(key, []).append(i)
    for members in buckets.values():
        k = torch.as_tensor(jobs[members[0]][1], dtype=torch.int64).to(jobs[members[0]][0].device)
        results = None
        if len(members) > 1:
            results = _evaluate_stacked([jobs[i][0] for i in members], k)
        if results is not None:
            for i, result in zip(members, results, strict=True):
                out[i] = result
            continue
        for i in members:
            try:
                out[i] = _result(*jobs[i][0].evaluate(k))
            except InvalidSpec as exc:
                out[i] = exc
    return out  # type: ignore[return-value]
