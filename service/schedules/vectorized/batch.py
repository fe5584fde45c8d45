"""Batches: programs of one structure stacked along the group axis and evaluated once.

Programs with the same structure (node tree, leaf types, every scalar parameter, lambda
functions, groups, steps and requested indices) differ only in their per-group tensors
(base lrs, max_lr, swa_lr, momenta, lr and momentum at step 0, ...), all (groups, 1).
Stacking those along dim 0 gives one program whose rows are (spec, group) pairs; every
formula is elementwise per row or shared across rows (the step tensor), so one evaluation
of the stack gives each spec the bits its own evaluation would.
"""

import dataclasses
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from service.errors import InvalidSpec, LimitExceeded
from service.schedules import budget
from service.schedules.result import Computed
from service.schedules.vectorized import fast, formulas
from service.schedules.vectorized.composition import Chained, Node, Segment, Sequential
from service.schedules.vectorized.evaluation import Program, _all_finite, as_computed
from service.schedules.vectorized.formulas import (
    Cosine,
    Exponential,
    Lambda,
    Leaf,
    Linear,
    Multiplicative,
    Step,
    Tensor,
    column,
)
from service.schedules.vectorized.plateau import MetricScan

_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(leaf: Leaf) -> tuple[str, ...]:
    """Return the dataclass field names of ``leaf``'s type (``dataclasses.fields`` is slow
    for a per-spec call)."""
    kind = type(leaf)
    names = _FIELD_NAMES.get(kind)
    if names is None:
        names = _FIELD_NAMES[kind] = tuple(f.name for f in dataclasses.fields(leaf))
    return names


def _leaf_signature(leaf: Leaf) -> tuple[object, ...] | None:
    if isinstance(leaf, MetricScan):
        return None  # a scan over one request's metrics: evaluated alone
    parts: list[object] = [type(leaf).__name__]
    for name in _field_names(leaf):
        value = getattr(leaf, name)
        if name == "fns":
            continue
        if isinstance(value, Tensor):
            parts.append((name, "tensor", tuple(value.shape), value.dtype, value.device))
        elif isinstance(value, dict):
            parts.append((name, "dict", tuple(sorted(value))))
        elif isinstance(value, float):  # by its bits: -0.0 == 0.0 yet torch keeps the sign
            parts.append((name, struct.pack("<d", value)))
        else:
            parts.append((name, value))
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


class _StackNeedsScan(Exception):
    """A stacked closed form would fall back to the scan over every step."""


def _refuse_stacked_scan(additive: bool = False) -> None:
    raise _StackNeedsScan


STACK_VALUES = 1 << 20
"""Most values (rows × steps) a stacked evaluation computes at once: a larger stack is
evaluated in blocks of whole programs. Each of a closed form's temporaries is then 8 MB, which
the allocator keeps and hands out again (``LRS_MALLOC_RETAIN_MB``), not 80 MB (1000 × 10k),
which it maps fresh from the kernel, every page zeroed on first touch: page clearing was 39%
of the server's CPU for a 1000 × 10k npy batch (perf); blocked, that request's median 254 and
236 -> 178 and 195 ms (7 requests each, two rounds, 2-core EPYC). Rows are independent, so the
values are the same bits."""


def _evaluate_stacked(programs: list[Program], k: Tensor) -> list[Computed] | None:
    """Return each program's result from one stacked evaluation, or None when the stack
    cannot answer for every program alike (a refused step or a non-finite lr somewhere, or
    a row whose step-0 value needs the scan): evaluate those one by one instead."""
    if any(p.failure() is not None for p in programs):
        return None
    rows = max(1, STACK_VALUES // max(1, k.numel() * programs[0].lr0.shape[0]))
    out: list[Computed] = []
    for start in range(0, len(programs), rows):
        part = _evaluate_block(programs[start : start + rows], k)
        if part is None:
            return None
        out += part
    return out


def _evaluate_block(programs: list[Program], k: Tensor) -> list[Computed] | None:
    stacked = _stack(programs)
    zero = torch.zeros(1, dtype=torch.int64, device=stacked.device)
    if stacked._closed(zero) is not None and not stacked.closed_ok():
        # Each program alone may take the closed form or the scan: let each decide.
        return None
    try:
        # a closed form falling back to the scan: each program alone decides (and each
        # slot's scan is priced by its own gate)
        with budget.fallback_gate(_refuse_stacked_scan):
            lr, mom, final = stacked.evaluate(k)
    except (InvalidSpec, _StackNeedsScan):
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


def _kernel_result(program: Program, steps: np.ndarray) -> Computed | None:
    """Return ``program``'s result at sorted ``steps`` by its fused kernel
    (:mod:`~service.schedules.vectorized.fast`), or None where the generic path must decide.

    What :func:`~service.schedules.vectorized.fast.fast_of` checks before a single request
    takes the kernel, with the probes evaluated by the kernel itself (the same elementwise
    float64 operations as the closed form, so the same bits, without a tensor op per node
    and segment): no refused step, no dense check, the closed form at step 0 is torch's lr
    there and finite where it could first stop being so, every value finite. A batch of
    specs that differ in a scalar parameter is a program per spec: this is its cost.
    """
    if program.dampen is not None or program.device.type != "cpu":
        return None
    rising = np.diff(steps)
    if steps.size > 1 and not bool((rising >= 0).all()):
        return None
    kernel = fast.kernel_of(program)
    if kernel is None or program.failure() is not None:
        return None
    probes = program._probes()
    if probes is None or probes.ranges:
        return None
    values = np.empty((kernel.groups, len(probes.points)), dtype=np.float64)
    kernel._sparse(np.asarray(probes.points, dtype=np.int64), values)
    if not program._matches_lr0(torch.from_numpy(values[:, 0])):
        return None
    checked = values[:, [probes.points.index(p) for p in probes.finite]]
    if not _all_finite(torch.from_numpy(checked)):
        return None
    n = program.n
    final = program.lr0[:, 0].tolist() if n == 1 else values[:, probes.points.index(n - 1)]
    budget.check()
    # every step 0..n-1 once, in order: the kernel's dense chunks (the same bits)
    dense = steps.size == n and n > 0 and steps[0] == 0 and bool((rising == 1).all())
    lr, mom, finite = kernel.evaluate(None if dense else steps)
    if not (finite or bool(np.isfinite(lr).all())):
        return None
    return Computed(
        indices=steps,
        lr=lr,
        momentum=mom,
        final_lr=[float(v) for v in final],
        engine="vectorized",
        device="cpu",
    )


def run_many(
    jobs: list[tuple[Program, np.ndarray]], gates: list[Callable[[bool], None]] | None = None
) -> list[Computed | InvalidSpec | LimitExceeded]:
    """Return each compiled program's result at its scheduler steps, in order.

    Programs of the same structure and the same steps are stacked and evaluated as one
    tensor computation; a program alone in its structure takes the fused kernel where it
    applies (:func:`_kernel_result`); a program that fails gets its own InvalidSpec in its
    slot, exactly as :func:`run` would raise it.
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
                with budget.fallback_gate(None if gates is None else gates[i]):
                    out[i] = _kernel_result(*jobs[i]) or jobs[i][0].result(k)
            except (InvalidSpec, budget.ScanRefused) as exc:
                out[i] = exc
    return out  # type: ignore[return-value]


# ------------------------------------- specs differing only in the lr and scalar parameters

_SCALED_LEAVES = (Cosine, Linear, Lambda, Step, Exponential)
"""Leaves whose only per-group tensor is ``base`` (torch's ``base_lrs``, the group's lr)."""

MAIN_FIELDS: dict[type[Leaf], tuple[str, ...]] = {
    Cosine: ("T_max", "eta_min"),
    Step: ("step_size", "gamma"),
    Exponential: ("gamma",),
}
"""The scheduler parameters a template varies, by leaf: each is the torch scheduler's
attribute of the same name, read as is by the leaf (``Leaf.of``), and none changes anything
else torch builds (the lr at step 0 is the group's lr for each of these schedulers; none is
refused at construction)."""


def _leaves(root: Node) -> list[Leaf] | None:
    if isinstance(root, Leaf):
        return [root]
    if isinstance(root, Sequential):
        return [seg.leaf for seg in root.segments]
    return None


@dataclass(frozen=True)
class Params:
    """What a template varies: the optimizer's lr, the main scheduler's parameters (names of
    :data:`MAIN_FIELDS`, with their values) and a linear warmup's ``steps`` (None: no warmup
    or not varied)."""

    lr: float
    main: tuple[tuple[str, object], ...] = ()
    warmup_steps: int | None = None


@dataclass(frozen=True)
class LrTemplate:
    """A compiled program whose per-group state is the optimizer's lr and whose varied
    parameters (:class:`Params`) are fields of its leaves: the program of the same spec with
    other values has them where this one has its own, and torch's lr at step 0 by the same
    rule (0, the lr itself, or the lr × the first leaf's start factor)."""

    program: Program
    params: Params
    rule: str

    @property
    def lr(self) -> float:
        return self.params.lr

    def lr0(self, lr: float, first: Leaf) -> float:
        if self.rule == "zero":
            return 0.0
        if self.rule == "same":
            return lr
        return lr * first.start_factor  # type: ignore[attr-defined]

    def derive(self, lr: float | Params) -> Program | None:
        """Return the program the same spec compiles to with ``lr`` (a float: the optimizer's
        lr alone), or None when those values would compile to another structure (a warmup
        as long as the schedule)."""
        params = lr if isinstance(lr, Params) else dataclasses.replace(self.params, lr=lr)
        p = self.program
        device = p.device
        base = column([params.lr], device)

        def leaf(x: Leaf, fields: tuple[tuple[str, object], ...] = ()) -> Leaf:
            # a shallow copy (copy.copy's, without its protocol lookups; dataclasses.replace
            # is ten times slower, and this runs per spec): its other fields are the spec's
            derived = object.__new__(type(x))
            derived.__dict__.update(x.__dict__)
            derived.base = base
            for name, value in fields:
                setattr(derived, name, value)
            return derived

        root: Node
        if isinstance(p.root, Leaf):
            root = leaf(p.root, params.main)
        else:
            assert isinstance(p.root, Sequential)
            segments = p.root.segments
            if params.warmup_steps is None or len(segments) != 2:
                last = len(segments) - 1
                root = Sequential(
                    [
                        Segment(
                            leaf(s.leaf, params.main if i == last else ()),
                            s.start,
                            s.end,
                            s.restarted,
                        )
                        for i, s in enumerate(segments)
                    ]
                )
            else:
                w = params.warmup_steps
                warm, main = segments
                if not 0 < w < min(main.end, p.n):
                    return None
                # the template's own length: its warmup leaf is already built over w steps
                ramp = leaf(warm.leaf)
                if w != self.params.warmup_steps:
                    ramp = _warmup_leaf(ramp, w)
                root = Sequential(
                    [
                        Segment(ramp, warm.start, w, warm.restarted),
                        Segment(leaf(main.leaf, params.main), w, main.end, main.restarted),
                    ]
                )
        first = _leaves(root)[0]  # type: ignore[index]
        return Program(
            root=root,
            n=p.n,
            lr0=column([self.lr0(params.lr, first)], device),
            momentum0=p.momentum0,
            anchor=base,
            device=device,
        )


def _warmup_leaf(leaf: Leaf, steps: int) -> Leaf:
    """Return the warmup ``leaf`` (a copy) over ``steps`` steps, as torch builds it."""
    if isinstance(leaf, Linear):
        leaf.total_iters = steps
        return leaf
    from service.schedules.specs import LinearFromZero  # the specs import the formulas

    assert isinstance(leaf, Lambda)
    fn = LinearFromZero(steps)
    leaf.fns = formulas._tensor_fns([fn] * leaf.groups)
    leaf.fn_keys = (fn.key,) * leaf.groups
    return leaf


def _is_warmup(leaf: Leaf, steps: int) -> bool:
    """Return True when ``leaf`` is a linear warmup over ``steps`` that
    :func:`_warmup_leaf` rebuilds: LinearLR to 1, or the linear-from-zero LambdaLR."""
    if type(leaf) is Linear:
        return leaf.total_iters == steps and leaf.end_factor == 1.0
    return type(leaf) is Lambda and leaf.fn_keys == (("linear_from_zero", steps),)


def lr_template(program: Program, lr: float | Params) -> LrTemplate | None:
    """Return ``program`` (compiled for ``lr``: the optimizer's lr, one group, or
    :class:`Params`) as a template, or None when its state is not the lr's alone (other
    leaves, a dampener, another step-0 rule) or the varied parameters are not where
    :class:`LrTemplate` puts them."""
    params = lr if isinstance(lr, Params) else Params(lr)
    lr = params.lr
    leaves = _leaves(program.root)
    if leaves is None or program.dampen is not None or program.anchor.shape != (1, 1):
        return None
    here = column([lr], program.device)
    for x in leaves:
        if type(x) not in _SCALED_LEAVES:
            return None
        if isinstance(x, Lambda) and (x.lambda_field or x.fn_keys is None):
            return None
        if not torch.equal(x.base, here):
            return None
    if not torch.equal(program.anchor, here):
        return None
    main = leaves[-1]
    if params.main:
        names = MAIN_FIELDS.get(type(main), ())
        for name, value in params.main:
            if name not in names or type(getattr(main, name)) is not type(value):
                return None
            if getattr(main, name) != value:
                return None
    if params.warmup_steps is not None:
        root = program.root
        if not isinstance(root, Sequential) or len(root.segments) != 2:
            return None
        warm, rest = root.segments
        w = params.warmup_steps
        if (warm.start, warm.end, warm.restarted, rest.start, rest.restarted) != (
            0,
            w,
            False,
            w,
            True,
        ) or not _is_warmup(warm.leaf, w):
            return None
    lr0 = float(program.lr0[0, 0])
    first = leaves[0]
    candidates = {"zero": 0.0, "same": lr}
    if isinstance(first, Linear) and first.start_factor not in (0.0, 1.0):
        # (a start factor of 0 or 1 is the "zero" or "same" rule, for every lr >= 0)
        candidates["start"] = lr * first.start_factor
    # the rule is read off this spec's step-0 value, so it must be the only one that fits:
    # with lr 0 (or an lr whose warmup start rounds to 0) every rule gives the same value and
    # a template would carry the wrong one to every other lr (none is made then)
    rules = [
        rule
        for rule, value in candidates.items()
        if lr0 == value and math.copysign(1.0, lr0) == math.copysign(1.0, value)
    ]
    return LrTemplate(program, params, rules[0]) if len(rules) == 1 else None


def _bits(x: Tensor) -> bytes:
    return x.cpu().numpy().tobytes()


def _leaf_tensors(leaf: Leaf) -> list[Tensor | None]:
    """Return every tensor ``leaf`` holds (fields and dicts of tensors), in field order."""
    out: list[Tensor | None] = []
    for name in _field_names(leaf):
        value = getattr(leaf, name)
        if isinstance(value, Tensor) or value is None:
            out.append(value)
        elif isinstance(value, dict):
            out.extend(value[key] for key in sorted(value) if isinstance(value[key], Tensor))
    return out


def same_program(a: Program, b: Program) -> bool:
    """Return True when two compiled programs hold the same state, bit for bit: the same
    structure and scalar parameters (:func:`_signature`) and every tensor of every leaf
    (base, max_lr, swa_lr, momenta, ...), the lr and momentum at step 0 and the anchor."""
    if (a.n, a.device, a.dampen is None, b.dampen is None) != (b.n, b.device, True, True):
        return False
    if _signature(a.root) != _signature(b.root) or _signature(a.root) is None:
        return False
    la, lb = _leaves(a.root), _leaves(b.root)
    if la is None or lb is None or len(la) != len(lb):
        return False
    pairs: list[tuple[Tensor | None, Tensor | None]] = [(a.lr0, b.lr0), (a.anchor, b.anchor)]
    pairs.append((a.momentum0, b.momentum0))
    for x, y in zip(la, lb, strict=True):
        tx, ty = _leaf_tensors(x), _leaf_tensors(y)
        if len(tx) != len(ty):
            return False
        pairs += zip(tx, ty, strict=True)
    for x, y in pairs:
        if (x is None) != (y is None):
            return False
        if (
            x is not None
            and y is not None
            and ((x.shape, x.dtype) != (y.shape, y.dtype) or _bits(x) != _bits(y))
        ):
            return False
    return True
