"""Batches: programs of one structure stacked along the group axis and evaluated once.

Programs with the same structure (node tree, leaf types, every scalar parameter, lambda
functions, groups, steps and requested indices) differ only in their per-group tensors
(base lrs, max_lr, swa_lr, momenta, lr and momentum at step 0, ...), all (groups, 1).
Stacking those along dim 0 gives one program whose rows are (spec, group) pairs; every
formula is elementwise per row or shared across rows (the step tensor), so one evaluation
of the stack gives each spec the bits its own evaluation would.
"""

import dataclasses

import numpy as np
import torch

from service.errors import InvalidSpec
from service.schedules.result import Computed
from service.schedules.vectorized.composition import Chained, Node, Sequential
from service.schedules.vectorized.evaluation import Program, as_computed
from service.schedules.vectorized.formulas import Lambda, Leaf, Multiplicative, Tensor
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
