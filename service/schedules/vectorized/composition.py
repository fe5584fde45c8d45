"""Composition as data: ``SequentialLR`` and ``ChainedScheduler`` built from closed forms.

``Sequential`` selects a child by segment of global steps and restarts it there;
``Chained`` composes its children's affine maps step by step.
"""

from dataclasses import dataclass

import torch

from service.schedules.vectorized.formulas import (
    F64,
    Failure,
    Leaf,
    Map,
    Tensor,
    earliest,
    is_user_lambda,
)


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
        return earliest(*(child.failure_at(last) for child in self.children))


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

    def slices(self, k: Tensor) -> list[tuple[Segment, slice]]:
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
        for seg, here in self.slices(k):
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
        for seg, here in self.slices(k):
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
                found.append(Failure(seg.start + hit[0], hit[1], is_user_lambda(seg.leaf)))
        return earliest(*found)

    def closed(self, k: Tensor, x: Tensor) -> Tensor:
        groups = self.segments[0].leaf.groups
        parts = []
        for seg, here in self.slices(k):
            anchor = x
            if seg.restarted and seg.leaf.relative:
                before = torch.tensor([seg.start - 1], device=k.device)
                anchor = self.closed(before, x)
            parts.append(seg.leaf.closed(k[here] - seg.start, anchor, seg.restarted))
        if not parts:
            return torch.empty((groups, 0), dtype=F64, device=k.device)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


Node = Leaf | Sequential | Chained
