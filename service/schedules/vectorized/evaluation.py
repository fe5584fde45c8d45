"""Evaluation: a compiled :class:`Program` at any scheduler steps, by one path.

Where the root has a closed form (a scheduler alone or a ``SequentialLR`` of them), it is
evaluated only at the requested steps, after a few probe steps showed it trustworthy: step 0
equals torch's own lr at step 0 and the lr is finite where it could first stop being so.
Otherwise (``ChainedScheduler``, or a closed form that does not start where torch does) the
general affine scan ``lr_k = A_k * lr_(k-1) + B_k`` gives every step from torch's lr at
step 0. Either way a refused step or a non-finite lr is the torch engine's 422.
"""

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from service.schedules import budget, torch_engine
from service.schedules.result import Computed
from service.schedules.vectorized.composition import Node, Sequential
from service.schedules.vectorized.formulas import F64, Failure, Leaf, Tensor

PROBES_AT_ONCE = 7
"""Most probe steps evaluated in one tensor: up to this many, every point takes the same
(scalar) kernel path as when it is evaluated alone, so the probes' bits are the answer's."""


SCAN_VALUES = 1 << 20
"""Values per chunk of one pass of :func:`_affine_scan`, the time limit checked between
chunks (a pass over 10M steps × 4 groups is 40 chunks), so a scan that a sampled request's
failed probes fall back to stops at the limit within a chunk's time."""


def _affine_scan(lr0: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Return lr_0..lr_K of ``lr_k = a_k * lr_(k-1) + b_k`` (a, b: (groups, K))."""
    size = a.shape[1]
    width = max(256, SCAN_VALUES // max(1, a.shape[0]))
    if not bool((b != 0).any()):
        if size <= width:
            return torch.cumprod(torch.cat([lr0, a], dim=1), dim=1)
        # chunk by chunk, each from the last product (the same sequential products, bit
        # for bit), the time limit checked between chunks
        out = torch.empty((a.shape[0], size + 1), dtype=a.dtype, device=a.device)
        out[:, :1] = lr0
        for start in range(0, size, width):
            budget.check()
            end = min(size, start + width)
            part = torch.cumprod(torch.cat([out[:, start : start + 1], a[:, start:end]], 1), 1)
            out[:, start + 1 : end + 1] = part[:, 1:]
        return out
    d = 1
    while d < size:
        budget.check()
        a_new, b_new = a.clone(), b.clone()
        for start in range(d, size, width):
            if start > d:
                budget.check()
            end = min(size, start + width)
            a_new[:, start:end] = a[:, start:end] * a[:, start - d : end - d]
            b_new[:, start:end] = a[:, start:end] * b[:, start - d : end - d] + b[:, start:end]
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
    raise torch_engine.refused_step(loc, failure.k, failure.exc)


@dataclass
class Probes:
    """Where a closed form is checked before it is trusted."""

    points: list[int]
    """Sorted distinct scheduler steps evaluated together: 0 (compared with torch's lr at
    step 0), the last step (the final lr) and the last step of every segment."""
    finite: list[int]
    """The points whose lr must be finite."""
    ranges: list[tuple[int, int]]
    """Step ranges (inclusive) checked densely: user expressions can fail anywhere."""


def matches_lr0(values: list[float], lr0: list[float]) -> bool:
    """Return :meth:`Program._matches_lr0`'s answer for the floats of the closed form at step
    0 and of the program's lr0 (a caller that has read them already)."""
    for got, want in zip(values, lr0, strict=True):
        if not (got == want or abs(got - want) <= 1e-13 * abs(want)):
            return False
    return True


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
    _memo: dict[str, object] = field(default_factory=dict, init=False, repr=False, compare=False)
    """What depends on the program alone (its failure, its probes' values), computed once:
    a program compiled for one spec is evaluated again for that spec."""

    def failure(self) -> Failure | None:
        if "failure" not in self._memo:
            self._memo["failure"] = self.root.failure_at(self.n - 1)
        return self._memo["failure"]  # type: ignore[return-value]

    def _closed(self, k: Tensor) -> Tensor | None:
        if isinstance(self.root, Leaf):
            return self.root.closed(k, self.anchor, False)
        if isinstance(self.root, Sequential):
            return self.root.closed(k, self.anchor)
        return None

    def closed_ok(self) -> bool:
        """Return True when the closed form at step 0 is torch's lr at step 0."""
        zero = torch.zeros(1, dtype=torch.int64, device=self.device)
        value = self._closed(zero)
        return value is not None and self._matches_lr0(value[:, 0])

    def _matches_lr0(self, value: Tensor) -> bool:
        """Return ``torch.allclose(value, lr0, rtol=1e-13, atol=0)`` on Python floats (the
        same float64 arithmetic, without a tensor op per term)."""
        return matches_lr0(value.tolist(), self.lr0[:, 0].tolist())

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
            for seg, here in root.slices(k):
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

    def _probes(self) -> Probes | None:
        """Return where the closed form is checked, or None when the root has none."""
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
        return Probes(sorted({0, *finite}), sorted(set(finite)), ranges)

    def _at(self, points: list[int]) -> Tensor:
        """Return the closed form at ``points``: in one tensor up to PROBES_AT_ONCE points,
        else point by point (each then takes the path it takes alone)."""
        if len(points) <= PROBES_AT_ONCE:
            values = self._closed(torch.tensor(points, device=self.device))
            assert values is not None
            return values
        parts = [self._closed(torch.tensor([p], device=self.device)) for p in points]
        return torch.cat(parts, dim=1)  # type: ignore[arg-type]

    def probed(self) -> tuple[Probes | None, Tensor | None]:
        """Return the probes and the closed form's values there (computed once)."""
        if "probed" not in self._memo:
            probes = self._probes()
            self._memo["probed"] = (probes, None if probes is None else self._at(probes.points))
        return self._memo["probed"]  # type: ignore[return-value]

    def _evaluate_sorted(self, k: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        probes, values = self.probed()
        if probes is None:
            return self._by_scan(k)  # a ChainedScheduler: priced as its scan
        if values is None or not self._matches_lr0(values[:, 0]):
            budget.before_fallback_scan()
            return self._by_scan(k, fallback=True)
        budget.check()
        lr = self._closed(k)
        assert lr is not None
        budget.check()
        lr[:, : _zeros(k)] = self.lr0
        final = self.lr0[:, 0] if self.n == 1 else values[:, probes.points.index(self.n - 1)]
        checked = values[:, [probes.points.index(p) for p in probes.finite]]
        ok = _all_finite(lr) and _all_finite(checked)
        for start, top in probes.ranges:
            if not ok:
                break
            budget.check()
            dense = self._closed(torch.arange(start, top + 1, device=self.device))
            ok = dense is not None and _all_finite(dense)
        if not ok:
            # torch's recursion (the scan), not the closed form, decides the first step
            budget.before_fallback_scan()
            return self._by_scan(k, fallback=True)
        return lr, self._closed_momentum(k), final.reshape(-1)

    def _by_scan(self, k: Tensor, fallback: bool = False) -> tuple[Tensor, Tensor | None, Tensor]:
        """Return the values at ``k`` from the affine scan over every step; raise InvalidSpec
        naming the first (step, group) whose lr is not finite."""
        full, mom = self.dense(fallback)
        if not _all_finite(full):
            raise torch_engine.not_finite((~torch.isfinite(full)).cpu().numpy())
        return full[:, k], None if mom is None else mom[:, k], full[:, -1]

    def dense(self, fallback: bool = False) -> tuple[Tensor, Tensor | None]:
        """Return lr (and momentum) at every scheduler step 0..n-1 by the affine scan
        (``fallback``: a closed form's, priced as it goes, :func:`budget.before_fallback_scan`)."""
        size = self.n - 1
        k = torch.arange(1, size + 1, device=self.device)
        root = self.root
        if size == 0:
            lr = self.lr0.clone()
            mom = None if self.momentum0 is None else self.momentum0.clone()
            return lr, mom
        budget.check()
        a, b = root.maps(k)
        budget.check()
        if fallback and bool((b != 0).any()):
            # additive maps: log2(steps) passes over every value, priced now
            budget.before_fallback_scan(additive=True)
        groups = self.lr0.shape[0]
        lr = _affine_scan(self.lr0, a.expand(groups, -1), b.expand(groups, -1))
        mom = None
        if self.momentum0 is not None:
            mom = _forward_fill(self.momentum0, root.momentum_sets(k), size)
        return lr, mom

    def result(self, k: Tensor) -> Computed:
        """Return the schedule at scheduler steps ``k`` (see :meth:`evaluate`)."""
        return as_computed(k, *self.evaluate(k))


def as_computed(k: Tensor, lr: Tensor, mom: Tensor | None, final: Tensor) -> Computed:
    """Return evaluated tensors as the one result type (numpy, on the CPU)."""
    return Computed(
        indices=k.cpu().numpy(),
        lr=lr.cpu().numpy(),
        momentum=None if mom is None else mom.cpu().numpy(),
        final_lr=[float(v) for v in final.cpu()],
        engine="vectorized",
        device=str(lr.device) if lr.device.type == "cpu" else f"cuda:{lr.device.index or 0}",
    )
