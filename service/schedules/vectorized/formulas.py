"""Closed forms: every torch scheduler as pure functions of its own step count, on tensors.

Each scheduler type is one :class:`Leaf` of pure functions of a tensor ``e`` of its step
counts (int64; torch's ``last_epoch``), in float64, on any device:

- ``closed(e, x, restarted)``: the lr it sets at ``e`` when it drives the lr alone, started
  from lr ``x`` (the lr before its first step) or, ``restarted``, by ``SequentialLR`` with
  ``_update_lr(0)``; evaluated only at the requested ``e``, so sampling costs O(points).
- ``step_map(e)`` / ``restart_map()``: the affine map ``lr -> A * lr + B`` one ``step()`` (or
  the restart) applies to the optimizer's current lr; used where schedulers share the lr.
- ``momentum(e)``: the momentum (or beta1) it writes, for CyclicLR and OneCycleLR.
- ``failure(last, restarted)``: the first step torch would refuse, and torch's reason.

The formulas are torch's recursive ones where they differ from the closed forms (e.g.
``CosineAnnealingLR`` past ``T_max`` and with a restarted anchor, ``ConstantLR`` with
``total_iters=0``, ``MultiStepLR`` counting repeated milestones).
"""

import bisect
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from service.schedules.expressions import Expression, ExpressionEvaluationError

F64 = torch.float64
Tensor = torch.Tensor
Map = tuple[Tensor, Tensor]
"""An affine map ``lr -> A * lr + B``: A and B broadcast to (groups, steps)."""


@dataclass(frozen=True)
class Failure:
    """The first scheduler step (global) torch refuses, and why."""

    k: int
    exc: BaseException
    lambda_field: bool = False


def earliest(*failures: Failure | None) -> Failure | None:
    found = [f for f in failures if f is not None]
    return min(found, key=lambda f: f.k) if found else None


def column(values: list[float], device: torch.device) -> Tensor:
    """Return per-group values as a (groups, 1) float64 tensor."""
    # from numpy: a third of torch.tensor's time on a list (made per derived spec)
    out = torch.from_numpy(np.array([float(v) for v in values], dtype=np.float64)[:, None])
    return out if device.type == "cpu" else out.to(device)


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
        return None if hit is None else Failure(hit[0], hit[1], is_user_lambda(self))


def _absolute(values: Tensor) -> Map:
    return torch.zeros_like(values), values


def _scale(factor: Tensor) -> Map:
    return factor, torch.zeros_like(factor)


def _tensor_fns(lambdas: list[Any]) -> tuple[Callable[[Tensor], Tensor], ...]:
    """Return each group's ``evaluate_tensor``; groups sharing an lr_lambda share one bound
    method, so :meth:`Lambda.factor` evaluates each distinct expression once per step."""
    from service.schedules.budget import chunked_fn  # budget imports the specs, which import us

    made: dict[int, Callable[[Tensor], Tensor]] = {}
    for fn in lambdas:
        if id(fn) not in made:
            # a family's factor (transformers, noam, rex) in chunks of steps under the
            # request's budget; an lr_lambda expression chunks itself
            chunks_itself = isinstance(fn, Expression)
            made[id(fn)] = fn.evaluate_tensor if chunks_itself else chunked_fn(fn.evaluate_tensor)
    return tuple(made[id(fn)] for fn in lambdas)


@dataclass(eq=False)
class Lambda(Leaf):
    """LambdaLR: ``lr = base_lr * lr_lambda(e)``."""

    fns: tuple[Callable[[Tensor], Tensor], ...] = ()
    lambda_field: bool = True
    fn_keys: tuple[object, ...] | None = None
    """What the ``fns`` compute, comparable across specs (None: not comparable)."""
    bounded: bool = False
    """True when every function is a library's closed form with a known ``bound`` and
    ``bound × max |base|`` is finite (with a margin): every step's lr is finite and no step
    raises, so neither the dense finiteness check nor the refusal scan is needed."""

    @classmethod
    def of(cls, sched: Any, device: torch.device) -> "Lambda":
        """Return torch's ``LambdaLR`` ``sched``: its functions' tensor forms, and their
        ``key`` where every function has one (then specs compare and stack)."""
        keys = tuple(getattr(f, "key", None) for f in sched.lr_lambdas)
        plain = all(key is not None for key in keys)
        bounds = [getattr(f, "bound", None) for f in sched.lr_lambdas]
        bounded = False
        if not plain and bounds and all(b is not None for b in bounds):
            top = max(abs(float(v)) for v in sched.base_lrs)
            bounded = math.isfinite(4.0 * top * max(abs(float(b)) for b in bounds))
        return cls(
            column(sched.base_lrs, device),
            fns=_tensor_fns(sched.lr_lambdas),
            lambda_field=not plain,
            fn_keys=keys if plain else None,
            bounded=bounded,
        )

    @property
    def dense_check(self) -> bool:  # type: ignore[override]
        return self.lambda_field and not self.bounded

    def factor(self, e: Tensor) -> Tensor:
        ef = e.to(F64)
        cache: dict[int, Tensor] = {}
        rows = []
        for fn in self.fns:
            if id(fn) not in cache:
                cache[id(fn)] = fn(ef)
            rows.append(cache[id(fn)])
        return torch.stack(rows)

    def _lr_factor(self, e: Tensor) -> Tensor:
        """Return :meth:`factor` to multiply ``base`` by: one row (1, len(e)) when every
        group shares one function (the product broadcasts it, the same bits without a copy
        per group), else one row per group."""
        first = self.fns[0] if self.fns else None
        if first is None or any(fn is not first for fn in self.fns):
            return self.factor(e)
        row = first(e.to(F64))
        if row.shape != e.shape:
            return torch.stack([row] * len(self.fns))
        return row[None]

    def closed(self, e: Tensor, x: Tensor, restarted: bool) -> Tensor:
        return self.base * self._lr_factor(e)

    def step_map(self, e: Tensor) -> Map:
        return _absolute(self.base * self._lr_factor(e))

    def restart_map(self) -> Map:
        return self.step_map(torch.zeros(1, dtype=torch.int64, device=self.base.device))

    def failure(self, last: int, restarted: bool) -> tuple[int, BaseException] | None:
        if not self.lambda_field or self.bounded:
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

    @classmethod
    def of(cls, sched: Any, device: torch.device) -> "Multiplicative":
        """Return torch's ``MultiplicativeLR`` ``sched``."""
        return cls(column(sched.base_lrs, device), fns=_tensor_fns(sched.lr_lambdas))

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

    @classmethod
    def of(cls, sched: Any, device: torch.device) -> "Step":
        """Return torch's ``StepLR`` ``sched``."""
        return cls(column(sched.base_lrs, device), step_size=sched.step_size, gamma=sched.gamma)

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

    @classmethod
    def of(cls, sched: Any, device: torch.device) -> "MultiStep":
        """Return torch's ``MultiStepLR`` ``sched`` (its milestones as torch counts them)."""
        milestones = tuple(sched.milestones.elements())
        return cls(column(sched.base_lrs, device), milestones=milestones, gamma=sched.gamma)

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

    @classmethod
    def of(cls, sched: Any, device: torch.device) -> "Constant":
        """Return torch's ``ConstantLR`` ``sched``."""
        base = column(sched.base_lrs, device)
        return cls(base, factor=sched.factor, total_iters=sched.total_iters)

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

    @classmethod
    def of(cls, sched: Any, device: torch.device) -> "Linear":
        """Return torch's ``LinearLR`` ``sched``."""
        return cls(
            column(sched.base_lrs, device),
            start_factor=sched.start_factor,
            end_factor=sched.end_factor,
            total_iters=sched.total_iters,
        )

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

    @classmethod
    def of(cls, sched: Any, device: torch.device) -> "Exponential":
        """Return torch's ``ExponentialLR`` ``sched``."""
        return cls(column(sched.base_lrs, device), gamma=sched.gamma)

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

    @classmethod
    def of(cls, sched: Any, device: torch.device) -> "Polynomial":
        """Return torch's ``PolynomialLR`` ``sched``."""
        base = column(sched.base_lrs, device)
        return cls(base, total_iters=sched.total_iters, power=sched.power)

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

    @classmethod
    def of(cls, sched: Any, device: torch.device) -> "Cosine":
        """Return torch's ``CosineAnnealingLR`` ``sched``."""
        return cls(column(sched.base_lrs, device), T_max=sched.T_max, eta_min=sched.eta_min)

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

    @classmethod
    def of(cls, sched: Any, device: torch.device) -> "WarmRestarts":
        """Return torch's ``CosineAnnealingWarmRestarts`` ``sched``."""
        base = column(sched.base_lrs, device)
        return cls(base, T_0=sched.T_0, T_mult=sched.T_mult, eta_min=sched.eta_min)

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

    @classmethod
    def of(cls, sched: Any, device: torch.device) -> "Cyclic":
        """Return torch's ``CyclicLR`` ``sched``."""
        cyc = sched.cycle_momentum
        return cls(
            column(sched.base_lrs, device),
            max_lr=column(sched.max_lrs, device),
            total_size=sched.total_size,
            step_ratio=sched.step_ratio,
            mode=sched.mode,
            gamma=sched.gamma,
            scale_mode=sched.scale_mode,
            base_momentum=column(sched.base_momentums, device) if cyc else None,
            max_momentum=column(sched.max_momentums, device) if cyc else None,
        )

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

    @classmethod
    def of(cls, sched: Any, device: torch.device) -> "OneCycle":
        """Return torch's ``OneCycleLR`` ``sched``, by its phase table."""
        groups = sched.optimizer.param_groups
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
        return cls(
            column(sched.base_lrs, device),
            total_steps=sched.total_steps,
            phases=phases,
            values={key: column([g[key] for g in groups], device) for key in keys},
            cos=sched._anneal_func_type == "cos",
            cycle_momentum=sched.cycle_momentum,
        )

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

    @classmethod
    def of(cls, sched: Any, device: torch.device) -> "Swa":
        """Return torch's ``SWALR`` ``sched``."""
        return cls(
            column(sched.base_lrs, device),
            swa_lr=column([g["swa_lr"] for g in sched.optimizer.param_groups], device),
            anneal_epochs=sched.anneal_epochs,
            cos=sched._anneal_strategy == "cos",
        )

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


def is_user_lambda(leaf: Leaf) -> bool:
    return isinstance(leaf, Lambda) and leaf.lambda_field
