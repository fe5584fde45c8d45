"""Metric-driven schedules as exact scans over the request's metrics.

torch's ``ReduceLROnPlateau`` (also transformers' ``reduce_lr_on_plateau``), timm's ``plateau``
and transformers' ``greedy`` depend on the metric step by step, so they have no closed form.
Their state machine is scalar per step (best, the bad/good epoch counters, cooldown, warmup,
reset countdown) and the lr changes only at a reduction (or an increase, or a reset), so each
is a Python loop over the metrics with the library's own float operations in the library's
order, touching the per-group lrs only at those events; the output is then filled by segments
between them. The values are the library's bits (the parity tests step the real library).

Each schedule gives its lr at local steps ``0..span-1``: step 0 is the lr when it starts (what
the groups hold when it is built, or after a warmup), and step ``j >= 1`` is the lr after its
``j``-th ``step(metrics[j - 1])``. The scan checks the request budget between chunks.
"""

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from service.schedules import budget
from service.schedules.vectorized.formulas import F64, Leaf, Map, Tensor

CHUNK = 1 << 15
"""Metrics scanned between two budget checks."""

Better = Callable[[float, float], bool]


def is_better(mode: str, threshold_mode: str, threshold: float) -> Better:
    """Return ``_is_better(a, best)`` of torch's ReduceLROnPlateau (and transformers'
    GreedyLR, which has the same four cases), with the same float operations."""
    if mode == "min" and threshold_mode == "rel":
        return lambda a, best: a < best * (1.0 - threshold)
    if mode == "min":
        return lambda a, best: a < best - threshold
    if threshold_mode == "rel":
        return lambda a, best: a > best * (threshold + 1.0)
    return lambda a, best: a > best + threshold


@dataclass
class Failure:
    """A step (local, >= 1) at which the library raises, and what it raises."""

    step: int
    exc: BaseException


@dataclass
class Scanned:
    """The lr at every local step 0..span-1 (groups, span), and where the library raised
    (the values after that step are the last ones before it; nobody reads them)."""

    lr: np.ndarray
    failure: Failure | None = None


class _Segments:
    """The output, filled by segments: ``set(step, lrs)`` says the lrs from ``step`` on."""

    def __init__(self, start: Sequence[float], span: int) -> None:
        self.out = np.empty((len(start), span), dtype=np.float64)
        self._from = 0
        self._lrs = [float(v) for v in start]

    def set(self, step: int, lrs: Sequence[float]) -> None:
        values = [float(v) for v in lrs]
        if values == self._lrs:
            return
        self.out[:, self._from : step] = np.asarray(self._lrs, dtype=np.float64)[:, None]
        self._from, self._lrs = step, values

    def done(self) -> np.ndarray:
        self.out[:, self._from :] = np.asarray(self._lrs, dtype=np.float64)[:, None]
        return self.out


def per_group(value: float | Sequence[float], groups: int) -> tuple[float, ...]:
    """Return a per-group argument (one number, or one per group) as one value per group,
    as the libraries read ``min_lr`` (their constructors refuse a list of another length)."""
    if isinstance(value, (list, tuple)):
        return tuple(float(v) for v in value)
    return (float(value),) * groups


def _chunks(total: int) -> range:
    return range(0, total, CHUNK)


# --------------------------------------------------------------------------- ReduceLROnPlateau


@dataclass(frozen=True)
class PlateauRule:
    """torch's ``ReduceLROnPlateau(optimizer, mode, factor, patience, threshold,
    threshold_mode, cooldown, min_lr, eps)``; ``min_lrs`` one per group."""

    mode: str = "min"
    factor: float = 0.1
    patience: int = 10
    threshold: float = 1e-4
    threshold_mode: str = "rel"
    cooldown: int = 0
    min_lrs: tuple[float, ...] = (0.0,)
    eps: float = 1e-8

    @classmethod
    def of(cls, args: Any, groups: int) -> "PlateauRule":
        """Return the rule for ``args``, anything with ReduceLROnPlateau's argument names as
        attributes (torch's spec, transformers' ``scheduler_specific_kwargs``)."""
        return cls(
            mode=args.mode,
            factor=args.factor,
            patience=args.patience,
            threshold=args.threshold,
            threshold_mode=args.threshold_mode,
            cooldown=args.cooldown,
            min_lrs=per_group(args.min_lr, groups),
            eps=args.eps,
        )

    def reductions(self, metrics: Sequence[float]) -> list[int]:
        """Return the local steps (1-based) at which ``step(metric)`` calls ``_reduce_lr``.

        torch's state machine does not read the lrs: best, num_bad_epochs, cooldown_counter.
        """
        better = is_better(self.mode, self.threshold_mode, self.threshold)
        best = math.inf if self.mode == "min" else -math.inf
        bad = cooldown_counter = 0
        patience, cooldown = self.patience, self.cooldown
        out: list[int] = []
        total = len(metrics)
        for lo in _chunks(total):
            budget.check()
            for i in range(lo, min(lo + CHUNK, total)):
                current = float(metrics[i])
                if better(current, best):
                    best = current
                    bad = 0
                else:
                    bad += 1
                if cooldown_counter > 0:
                    cooldown_counter -= 1
                    bad = 0
                if bad > patience:
                    out.append(i + 1)
                    cooldown_counter = cooldown
                    bad = 0
        return out

    def reduce(self, lrs: list[float]) -> None:
        """Apply ``_reduce_lr`` to ``lrs`` in place."""
        for i, old in enumerate(lrs):
            old = float(old)
            new = max(old * self.factor, self.min_lrs[i])
            if old - new > self.eps:
                lrs[i] = new

    def scan(self, start: Sequence[float], metrics: Sequence[float], span: int) -> Scanned:
        """Return the lr at local steps 0..span-1 from ``start`` (the groups' lrs)."""
        lrs = [float(v) for v in start]
        out = _Segments(lrs, span)
        for step in self.reductions(metrics[: span - 1]):
            before = list(lrs)
            self.reduce(lrs)
            if lrs == before:
                break  # _reduce_lr reads only the lrs: every later reduction is a no-op too
            out.set(step, lrs)
        return Scanned(out.done())


# --------------------------------------------------------------------------- timm's plateau


@dataclass(frozen=True)
class TimmPlateauRule:
    """timm 1.0.31's ``PlateauLRScheduler`` as ``create_scheduler_v2(sched='plateau')`` builds
    it and ``scheduler.step(t, metric)`` drives it.

    ``t <= warmup_t``: ``warmup_lr_init + t * (base - warmup_lr_init) / warmup_t`` (the metric
    is not read); later, torch's ReduceLROnPlateau (threshold 1e-4 'rel', cooldown 0, eps 1e-8)
    steps on the noise-free lr, and in the noise range the lr set is ``lr + lr * noise(t)``.

    ``scales``: each group's ``lr_scale``, or None. timm's ``update_groups`` multiplies it into
    the lr it sets when built and in the warmup (``value * lr_scale``); ReduceLROnPlateau then
    reduces the group's (scaled) lr itself, against the unscaled ``min_lr``, so the plateau
    starts from the scaled lr and scales nothing more.
    """

    plateau: PlateauRule
    warmup_t: int
    warmup_lr_init: float
    scales: tuple[float, ...] | None = None

    def scan(self, base: Sequence[float], metrics: Sequence[float], span: int) -> Scanned:
        """Return the noise-free lr at t = 0..span-1 (``base``: the groups' initial lrs)."""
        w = self.warmup_t
        base = [float(v) for v in base]
        scales = self.scales if self.scales is not None else (1.0,) * len(base)
        column = np.asarray(scales, dtype=np.float64)[:, None]
        out = np.empty((len(base), span), dtype=np.float64)
        if w:
            init = self.warmup_lr_init
            steps = [(v - init) / w for v in base]
            out[:, 0] = init * column[:, 0]
            top = min(w, span - 1)
            t = np.arange(1, top + 1, dtype=np.float64)
            ramp = init + t[None, :] * np.asarray(steps, dtype=np.float64)[:, None]
            out[:, 1 : top + 1] = ramp * column
            if w >= span - 1:
                return Scanned(out)
            start = [(init + w * s) * c for s, c in zip(steps, scales, strict=True)]
        else:
            start = [v * c for v, c in zip(base, scales, strict=True)]
        rest = self.plateau.scan(start, metrics[w:], span - w)
        out[:, w:] = rest.lr
        return Scanned(out)


# --------------------------------------------------------------------------- transformers' greedy


class _StreamingAverage:
    """transformers' StreamingAverage: the running sum, added and subtracted in its order."""

    def __init__(self, window_size: int) -> None:
        self.window_size = window_size
        self.values: deque[float] = deque()
        self.sum = 0.0

    def streamavg(self, value: float) -> float:
        self.values.append(value)
        self.sum += value
        if len(self.values) > self.window_size:
            removed = self.values.popleft()
            self.sum -= removed
        return self.sum / len(self.values)


@dataclass(frozen=True)
class GreedyRule:
    """transformers 5.23.0's ``GreedyLR`` (``get_scheduler('greedy', ...)``): divides the lr by
    ``factor`` after ``patience`` improving steps, multiplies it on a plateau, and resets to
    the lrs it was built with after ``reset_start`` reductions with every group at min_lr."""

    mode: str = "min"
    factor: float = 0.95
    patience: int = 10
    threshold: float = 1e-6
    threshold_mode: str = "abs"
    cooldown: int = 0
    warmup: int = 0
    min_lrs: tuple[float, ...] = (1e-3,)
    max_lrs: tuple[float, ...] = (1.0,)
    eps: float = 1e-8
    smooth: bool = False
    window_size: int = 50
    reset_start: int = 500

    def scan(
        self,
        start: Sequence[float],
        metrics: Sequence[float],
        span: int,
        init: Sequence[float] | None = None,
    ) -> Scanned:
        """Return the lr at local steps 0..span-1 from ``start`` (the groups' lrs when it
        first steps); ``init``: the lrs it was built with (its reset target; ``start``)."""
        better = is_better(self.mode, self.threshold_mode, self.threshold)
        worst = math.inf if self.mode == "min" else -math.inf
        lrs = [float(v) for v in start]
        init_lrs = list(init if init is not None else start)
        out = _Segments(lrs, span)
        factor, patience, eps = self.factor, self.patience, self.eps
        min_lrs, max_lrs = self.min_lrs, self.max_lrs
        best = worst
        bad = good = cooldown_counter = warmup_counter = 0
        reset_start = self.reset_start
        avg = _StreamingAverage(self.window_size) if self.smooth else None
        total = min(len(metrics), span - 1)
        for lo in _chunks(total):
            budget.check()
            for i in range(lo, min(lo + CHUNK, total)):
                current = float(metrics[i])
                if avg is not None:
                    current = avg.streamavg(current)
                if cooldown_counter > 0:
                    cooldown_counter -= 1
                    bad = good = 0
                    continue
                if warmup_counter > 0:
                    warmup_counter -= 1
                    bad = good = 0
                    continue
                if better(current, best):
                    best = current
                    bad = 0
                    good += 1
                else:
                    bad += 1
                    good = 0
                if good > patience:
                    for g, old in enumerate(lrs):
                        old = float(old)
                        try:
                            new = min(old / factor, max_lrs[g])
                        except ZeroDivisionError as exc:
                            return Scanned(out.done(), Failure(i + 1, exc))
                        if new - old > eps:
                            lrs[g] = new
                    reset_start = self.reset_start
                    warmup_counter = self.warmup
                    good = 0
                    out.set(i + 1, lrs)
                elif bad > patience:
                    all_at_min = True
                    for g, old in enumerate(lrs):
                        old = float(old)
                        new = max(old * factor, min_lrs[g])
                        if old - new > eps:
                            lrs[g] = new
                        if lrs[g] > min_lrs[g]:
                            all_at_min = False
                    if all_at_min:
                        reset_start -= 1
                        if reset_start <= 0:
                            lrs = [float(v) for v in init_lrs]
                            best = worst
                            bad = good = cooldown_counter = warmup_counter = 0
                            reset_start = self.reset_start
                            if avg is not None:
                                avg = _StreamingAverage(self.window_size)
                    cooldown_counter = self.cooldown
                    bad = 0
                    out.set(i + 1, lrs)
        return Scanned(out.done())


# --------------------------------------------------------------------------- a warmup before them


def linear_lr(start: Sequence[float], start_factor: float, total_iters: int, span: int) -> Scanned:
    """Return torch's ``LinearLR(start_factor, end_factor=1.0, total_iters)`` at steps
    0..span-1 as it steps (its recursive form: the lr times a ratio per step, multiplied in
    order), from the groups' lrs ``start``: the warmup before a metric-driven schedule, to the
    bit (its closed form differs from the recursion in the last bits)."""
    s, t = start_factor, total_iters
    ratios = [
        1.0 + (1.0 - s) / (t * s + (k - 1) * (1.0 - s)) if k <= t else 1.0 for k in range(1, span)
    ]
    table = np.empty((len(start), span), dtype=np.float64)
    table[:, 0] = [float(v) * s for v in start]
    table[:, 1:] = np.asarray(ratios, dtype=np.float64)[None, :]
    return Scanned(np.multiply.accumulate(table, axis=1))


# --------------------------------------------------------------------------- the engine's leaf


@dataclass(eq=False)
class MetricSchedule:
    """A metric-driven schedule over one request: its scan, run once and kept."""

    run: Callable[[], Scanned]
    """The scan over the request's metrics (local steps 0..span-1)."""
    adjust: Callable[[Tensor, Tensor], Tensor] | None = None
    """Applied to the values at the requested steps (timm's noise), or None."""
    _done: Scanned | None = field(default=None, repr=False)
    _tensors: dict[torch.device, Tensor] = field(default_factory=dict, repr=False)

    def scanned(self) -> Scanned:
        if self._done is None:
            self._done = self.run()
        return self._done

    def series(self, device: torch.device) -> Tensor:
        """Return the scanned lr as a float64 tensor on ``device`` (converted once)."""
        if device not in self._tensors:
            self._tensors[device] = torch.as_tensor(self.scanned().lr, dtype=F64).to(device)
        return self._tensors[device]


@dataclass(eq=False)
class MetricScan(Leaf):
    """A metric-driven scheduler: the lr it sets at each of its steps, from the exact scan.

    It sets the lr outright (its own start, not the lr before it), so as a ``SequentialLR``
    segment after a warmup its step 0 is the lr it starts from.
    """

    schedule: MetricSchedule | None = None

    def closed(self, e: Tensor, x: Tensor, restarted: bool) -> Tensor:
        assert self.schedule is not None
        values = self.schedule.series(e.device)[:, e]
        if self.schedule.adjust is not None:
            values = self.schedule.adjust(e, values)
        return values

    def step_map(self, e: Tensor) -> Map:
        values = self.closed(e, self.base, False)
        return torch.zeros_like(values), values

    def restart_map(self) -> Map:
        return self.step_map(torch.zeros(1, dtype=torch.int64, device=self.base.device))

    def failure(self, last: int, restarted: bool) -> tuple[int, BaseException] | None:
        assert self.schedule is not None
        failure = self.schedule.scanned().failure
        if failure is None or failure.step > last:
            return None
        return failure.step, failure.exc
