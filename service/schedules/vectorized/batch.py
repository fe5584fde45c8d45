"""Batches: programs of one structure stacked along the group axis and evaluated once.

Programs with the same structure (node tree, leaf types, every scalar parameter, lambda
functions, groups, steps and requested indices) differ only in their per-group tensors
(base lrs, max_lr, swa_lr, momenta, lr and momentum at step 0, ...), all (groups, 1).
Stacking those along dim 0 gives one program whose rows are (spec, group) pairs; every
formula is elementwise per row or shared across rows (the step tensor), so one evaluation
of the stack gives each spec the bits its own evaluation would.
"""

import copy
import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from service.errors import InvalidSpec
from service.schedules.result import Computed
from service.schedules.vectorized.composition import Chained, Node, Sequential
from service.schedules.vectorized.evaluation import Program, as_computed
from service.schedules.vectorized.formulas import (
    Cosine,
    Lambda,
    Leaf,
    Linear,
    Multiplicative,
    Tensor,
    column,
)
from service.schedules.vectorized.plateau import MetricScan


def _leaf_signature(leaf: Leaf) -> tuple[object, ...] | None:
    if isinstance(leaf, MetricScan):
        return None  # a scan over one request's metrics: evaluated alone
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


def _evaluate_stacked(programs: list[Program], k: Tensor) -> list[Computed] | None:
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
    whole = as_computed(k, lr, mom, final)
    out = []
    for i in range(len(programs)):
        rows = slice(i * groups, (i + 1) * groups)
        out.append(
            dataclasses.replace(
                whole,
                lr=whole.lr[rows],
                momentum=None if whole.momentum is None else whole.momentum[rows],
                final_lr=whole.final_lr[rows],
            )
        )
    return out


def run_many(jobs: list[tuple[Program, np.ndarray]]) -> list[Computed | InvalidSpec]:
    """Return each compiled program's result at its scheduler steps, in order.

    Programs of the same structure and the same steps are stacked and evaluated as one
    tensor computation; a program that fails gets its own InvalidSpec in its slot, exactly
    as :func:`run` would raise it.
    """
    out: list[Computed | InvalidSpec | None] = [None] * len(jobs)
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
                out[i] = jobs[i][0].result(k)
            except InvalidSpec as exc:
                out[i] = exc
    return out  # type: ignore[return-value]


# ----------------------------------------------------------- specs differing only in the lr

_SCALED_LEAVES = (Cosine, Linear, Lambda)
"""Leaves whose only per-group tensor is ``base`` (torch's ``base_lrs``, the group's lr)."""


def _leaves(root: Node) -> list[Leaf] | None:
    if isinstance(root, Leaf):
        return [root]
    if isinstance(root, Sequential):
        return [seg.leaf for seg in root.segments]
    return None


@dataclass(frozen=True)
class LrTemplate:
    """A compiled program whose per-group state is the optimizer's lr: the program of the
    same spec with another lr has that lr where this one has its own, and torch's lr at step
    0 by the same rule (0, the lr itself, or the lr × the first leaf's start factor)."""

    program: Program
    lr: float
    rule: str

    def lr0(self, lr: float) -> float:
        if self.rule == "zero":
            return 0.0
        if self.rule == "same":
            return lr
        first = _leaves(self.program.root)[0]  # type: ignore[index]
        return lr * first.start_factor  # type: ignore[attr-defined]

    def derive(self, lr: float) -> Program:
        """Return the program the same spec compiles to with optimizer lr ``lr``."""
        p = self.program
        device = p.device
        base = column([lr], device)

        def leaf(x: Leaf) -> Leaf:
            derived = copy.copy(x)  # its other fields are the spec's (dataclasses.replace is
            derived.base = base  # ten times slower, and this runs per spec of a batch)
            return derived

        root: Node
        if isinstance(p.root, Leaf):
            root = leaf(p.root)
        else:
            assert isinstance(p.root, Sequential)
            root = Sequential([dataclasses.replace(s, leaf=leaf(s.leaf)) for s in p.root.segments])
        return Program(
            root=root,
            n=p.n,
            lr0=column([self.lr0(lr)], device),
            momentum0=p.momentum0,
            anchor=base,
            device=device,
        )


def lr_template(program: Program, lr: float) -> LrTemplate | None:
    """Return ``program`` (compiled for optimizer lr ``lr``, one group) as a template, or None
    when its state is not the lr's alone (other leaves, a dampener, another step-0 rule)."""
    leaves = _leaves(program.root)
    if leaves is None or program.dampen is not None or program.anchor.shape != (1, 1):
        return None
    here = column([lr], program.device)
    for x in leaves:
        if type(x) not in _SCALED_LEAVES or type(x) is Multiplicative:
            return None
        if isinstance(x, Lambda) and (x.lambda_field or x.fn_keys is None):
            return None
        if not torch.equal(x.base, here):
            return None
    if not torch.equal(program.anchor, here):
        return None
    lr0 = float(program.lr0[0, 0])
    first = leaves[0]
    candidates = {"zero": 0.0, "same": lr}
    if isinstance(first, Linear):
        candidates["start"] = lr * first.start_factor
    for rule, value in candidates.items():
        if lr0 == value and math.copysign(1.0, lr0) == math.copysign(1.0, value):
            return LrTemplate(program, lr, rule)
    return None


def same_program(a: Program, b: Program) -> bool:
    """Return True when two compiled programs hold the same state, bit for bit."""
    if (a.n, a.device, a.dampen is None, b.dampen is None) != (b.n, b.device, True, True):
        return False
    if _signature(a.root) != _signature(b.root) or _signature(a.root) is None:
        return False
    la, lb = _leaves(a.root), _leaves(b.root)
    if la is None or lb is None or len(la) != len(lb):
        return False
    pairs = [(a.lr0, b.lr0), (a.anchor, b.anchor)]
    pairs += [(x.base, y.base) for x, y in zip(la, lb, strict=True)]
    if (a.momentum0 is None) != (b.momentum0 is None):
        return False
    if a.momentum0 is not None:
        pairs.append((a.momentum0, b.momentum0))  # type: ignore[arg-type]
    return all(x.numpy().tobytes() == y.numpy().tobytes() for x, y in pairs)
