"""Every schedule request's budget: a wall-clock limit and a cancel flag, checked inside the
computation, and the cost model that refuses what would not fit before any work starts.

A :class:`Budget` is made per request by the routes and made current (a context variable) in
the worker thread that computes; the engines, the lr_lambda evaluator and the formats call
:func:`check` between chunks of work, so a computation stops at the limit (a 422 saying what
to change) or soon after its client has gone (:class:`Cancelled`), and its thread and its
compute slot are free again.

The cost model: :func:`cost` is what :func:`~service.schedules.service.check_limits` compares
with ``LRS_VECTORIZED_MAX_COST`` (about 1 ns of CPU a unit, each closed form weighted as
measured) and ``LRS_TORCH_MAX_WORK`` (scheduler updates).
"""

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from service.errors import LimitExceeded, ServiceError
from service.schedules import specs


class Cancelled(Exception):
    """The client went away: the computation stops; nobody is left to answer."""


class Busy(ServiceError):
    """Expensive computations already fill their share of the compute threads."""

    status = 429
    title = "Too many requests"
    slug = "busy"


class Budget:
    """A computation's wall-clock limit and cancel flag (set from the event loop)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.cancelled = False

    def start(self) -> None:
        """Start the clock (when a compute thread takes the work, not while it queues)."""
        self.deadline = time.monotonic() + self.seconds

    def cancel(self) -> None:
        self.cancelled = True

    def check(self) -> None:
        """Raise Cancelled when the client is gone, LimitExceeded past the deadline."""
        if self.cancelled:
            raise Cancelled
        if time.monotonic() > self.deadline:
            raise LimitExceeded(
                f"the computation stopped at its limit of {self.seconds:g} s "
                "(LRS_COMPUTE_MAX_SECONDS). Lower steps, sample fewer points, use fewer param "
                "groups or schedulers, or a shorter lr_lambda.",
                loc=("body", "steps"),
            )


_current: ContextVar[Budget | None] = ContextVar("schedule_budget", default=None)


def check() -> None:
    """Check the current budget, if the computation runs under one."""
    budget = _current.get()
    if budget is not None:
        budget.check()


class ScanRefused(LimitExceeded):
    """A closed form's fallback to the scan over every step is over the limit (a 422 for
    its request, or for its slot alone in a batch)."""


_fallback_gate: ContextVar[Callable[[bool], None] | None] = ContextVar(
    "schedule_fallback_gate", default=None
)


@contextmanager
def fallback_gate(gate: Callable[[bool], None] | None) -> Iterator[None]:
    """Make ``gate`` what :func:`before_fallback_scan` calls for the duration of the block:
    it raises LimitExceeded when the request may not pay for the scan over every step (its
    argument: the maps turned out additive, the scan's log2(steps) passes to pay)."""
    token = _fallback_gate.set(gate)
    try:
        yield
    finally:
        _fallback_gate.reset(token)


def before_fallback_scan(additive: bool = False) -> None:
    """Called by the vectorized engine when a closed form falls back to the affine scan over
    every step (its values at run time were not finite where the probes did not look, or it
    does not start at torch's lr), and again once the scan's maps are known to be additive
    (``additive``: log2(steps) passes over every value, not one running product). The scan
    was not what the request was priced at, so the current gate prices it now and refuses
    it (LimitExceeded) when it is over the limit, before that part runs."""
    gate = _fallback_gate.get()
    if gate is not None:
        gate(additive)


def check_cancelled() -> None:
    """Raise Cancelled when the client of the current computation is gone (work that is done
    is not thrown away for being late)."""
    budget = _current.get()
    if budget is not None and budget.cancelled:
        raise Cancelled


@contextmanager
def ensure(seconds: float) -> Iterator[None]:
    """Run the block under the current budget, or under a new one of ``seconds``."""
    if _current.get() is not None:
        yield
        return
    with active(Budget(seconds)):
        yield


@contextmanager
def active(budget: Budget | None) -> Iterator[None]:
    """Make ``budget`` the one :func:`check` checks, for the duration of the block."""
    token = _current.set(budget)
    try:
        yield
    finally:
        _current.reset(token)


CLOSED_FORM_VALUES = 1 << 16
"""Values per chunk of a closed form evaluated by :func:`chunked` (a family's formula over 16
groups: 4096 steps a chunk; measured at load 12 on 2 cores, Megatron's cosine over 2.5M steps
× 16 groups took 22 s and optax's warmup-cosine 65 s, so a chunk takes 9-27 ms)."""


def chunked(fn: Callable[[Any], Any], steps: Any, rows: int = 1) -> Any:
    """Return ``fn(steps)`` for an elementwise ``fn`` of a 1-D tensor of steps whose result
    has ``rows`` rows (param groups) and the steps on its last axis: evaluated
    CLOSED_FORM_VALUES values at a time with the budget checked before each chunk, so a long
    closed form (a library family's, millions of steps × 16 groups) stops at the time limit
    or soon after its client left, like the lr_lambda evaluator and the torch engine."""
    import torch

    check()
    n = steps.shape[-1]
    chunk = max(256, CLOSED_FORM_VALUES // max(1, rows))
    if n <= chunk:
        return fn(steps)
    parts = []
    for start in range(0, n, chunk):
        if start:
            check()
        parts.append(fn(steps[..., start : start + chunk]))
    return torch.cat(parts, dim=-1)


def chunked_fn(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Return ``fn`` evaluated through :func:`chunked`."""

    def evaluate(steps: Any) -> Any:
        return chunked(fn, steps)

    return evaluate


# --------------------------------------------------------------------------- cost model
#
# The vectorized cost is in units of about 1 ns of CPU time on the 2-core AMD EPYC this
# service is measured on (bench/bench_cost.py prints every closed form's ns per step and per
# value next to the model's): each scheduler's weights are on its spec class
# (``cost_per_step``, ``cost_per_value``, ``vectorized_cost``; a library family's closed form
# costs 15-200 ns a value, torch's cosine 8), so LRS_VECTORIZED_MAX_COST is CPU time.

LEAF_OPS = 4
"""The torch engine's weight is scheduler updates; on the vectorized engine this is only the
per-value weight of a warmup that declares none."""

LAMBDA_NODE_COST = 12
"""Weight per lr_lambda operation and scheduler step on the vectorized engine: each distinct
expression is evaluated once per step for every param group (groups sharing a text share one
parsed expression, and :class:`~service.schedules.vectorized.formulas.Lambda` evaluates each
function once), up to three times (the refusal check, the values, the finiteness check);
measured: the issue's 753-character probe (167 operations) costs 1967 ns a step on one group
and 76 ns a value on 16 (load 5.5), about 11.3 ns per operation and step besides LambdaLR's own."""

LAMBDA_EVALUATIONS = 3
"""The vectorized engine evaluates a user lr_lambda over every step up to three times (the
refusal check, the values, the finiteness check); LAMBDA_NODE_COST counts the three."""

METRIC_SCAN_OPS = 500
"""Weight per scheduler step of a metric-driven schedule's scan over the metrics on the
vectorized engine (a Python loop): measured 450 ns a step for ReduceLROnPlateau and 390 for
timm's plateau, at load 5.5 (transformers' greedy with smoothing sets its own,
``metric_scan_cost``)."""

TORCH_NODES_PER_UPDATE = 64
"""On the torch engine, this many lr_lambda nodes (Python float operations) cost about one
scheduler update (about 15 µs)."""


def chunks(steps: int, groups: int) -> int:
    """Return how many chunks :func:`chunked` evaluates ``steps`` steps × ``groups`` rows in
    (at least one: a closed form whose every chunk costs per group, optax's, pays that for a
    single step too)."""
    per = max(256, CLOSED_FORM_VALUES // max(1, groups))
    return max(1, -(-steps // per))


CHAIN_SCAN_OPS = 18
"""Weight per value and per log2(steps) of a ChainedScheduler's affine scan (measured: an
ExponentialLR x CosineAnnealingLR chain, CPU time, one torch thread, load 0.8: 100k steps x 1
group 167 ns a value, x 16 groups 312, 1M x 4 270, i.e. 10-18 per log2 step; with 2 it was
priced 2-6x under its time)."""


@lru_cache(maxsize=4096)
def expression_nodes(text: str) -> int:
    """Return how many operations the lr_lambda ``text`` evaluates (0 when it is invalid:
    validation reports that)."""
    from service.schedules.expressions import ExpressionError, parse_expression

    try:
        return parse_expression(text, max_length=1 << 20, max_depth=1 << 10, max_nodes=1 << 20).size
    except (ExpressionError, ValueError):
        return 0


def _lambda_texts(spec: specs.SchedulerBase) -> list[str]:
    if "lr_lambda" not in type(spec).model_fields:  # (a missing attribute: ~2 us a getattr)
        return []
    source = getattr(spec, "lr_lambda", None)
    if source is None:
        return []
    return [source] if isinstance(source, str) else list(source)


@dataclass(frozen=True)
class Cost:
    """What one request costs on the engine that runs it."""

    steps: int
    """Scheduler steps."""
    groups: int
    schedulers: int
    """Schedulers that step, nested ones and the warmup counted (containers too on torch)."""
    nodes: int
    """lr_lambda operations per step: each distinct expression once."""
    total: int
    """Vectorized: the weight of the work, about 1 ns of CPU each; torch: scheduler updates."""

    def describe(self) -> str:
        parts = [
            f"{self.steps} scheduler steps",
            f"{self.groups} param group{'s' if self.groups != 1 else ''}",
            f"{self.schedulers} scheduler{'s' if self.schedulers != 1 else ''}",
        ]
        if self.nodes:
            parts.append(f"lr_lambda operations {self.nodes}")
        return ", ".join(parts)


def _warmup_cost(warmup: Any, steps: int, groups: int) -> float:
    """Return the vectorized weight of the request's warmup (pytorch_warmup's dampening
    multiplies every value; the service's own is a segment before the scheduler)."""
    if warmup is None:
        return 0.0
    per_step = getattr(warmup, "cost_per_step", 0.0)
    per_value = getattr(warmup, "cost_per_value", LEAF_OPS)
    return steps * (per_step + groups * per_value)


PROBES = 2
"""Probe steps a closed form is checked at besides each SequentialLR segment's last (step 0
and the last step), priced as values like the sampled steps."""


def _pointwise(spec: specs.SchedulerBase) -> bool:
    """Return True when ``spec``'s vectorized evaluation at some steps evaluates only those
    (and the probes): a closed-form leaf whose refusal check and finiteness check need no
    scan (no lr_lambda: its refusal and finiteness checks evaluate every step; no metrics),
    or a SequentialLR of such leaves (the root of :class:`~service.schedules.vectorized.
    evaluation.Program` is then a Leaf or a Sequential: ``_evaluate_sorted``)."""
    if _lambda_texts(spec) or getattr(spec, "metric_driven", False):
        return False
    if isinstance(spec, (specs.ReduceLROnPlateau, specs.ChainedScheduler)):
        return False
    if getattr(spec, "dense_check", False):
        return False
    children = spec.children()
    if not children:
        return True
    if not isinstance(spec, specs.SequentialLR):
        return False
    return all(not child.children() and _pointwise(child) for child in children)


def evaluated_steps(request: specs.ScheduleRequest) -> int | None:
    """Return how many scheduler steps the vectorized engine evaluates for ``request``'s
    ``sample`` when that is known up front (the sampled steps plus the probes, fewer than
    every step), or None when it evaluates every step: no sample, counters (their columns are
    the step columns), or a program that is not pointwise (:func:`_pointwise`: an lr_lambda's
    dense check, a ChainedScheduler's or a metric-driven schedule's scan).

    The one case known only while computing: probes that fail (a closed form that overflows
    or does not start at torch's lr) fall back to the affine scan over every step; that scan
    checks the time limit between its passes and the closed forms between their chunks, so
    such a request stops at LRS_COMPUTE_MAX_SECONDS like any other (and, where it fits, is
    answered)."""
    from service.schedules import counters

    sample = request.sample
    if sample is None or counters.requested(request):
        return None
    if not _pointwise(request.scheduler):
        return None
    n = request.steps
    if sample.every is not None:
        points = -(-n // sample.every)
    elif sample.points is not None:
        points = min(sample.points, n)
    else:
        points = len(set(sample.at or []))
    segments = (len(request.scheduler.children()) or 1) + (1 if request.warmup else 0)
    evaluated = points + PROBES + segments
    if evaluated >= request.scheduler_steps:
        return None
    return evaluated


FALLBACK_PRODUCT_OPS = 12
"""Weight per value of the affine scan a closed form falls back to when its maps are
multiplicative (one running product: measured 10 ns a value at 1M steps x 16 groups, CPU)."""


def scan_cost(request: specs.ScheduleRequest, additive: bool = False) -> Cost:
    """Return the vectorized cost of the affine scan over every step that ``request``'s
    closed form falls back to (:func:`before_fallback_scan`): its price at every step (the
    maps) plus a running product's, steps × groups × FALLBACK_PRODUCT_OPS; ``additive``:
    the log2(steps) passes of additive maps instead, steps × groups × CHAIN_SCAN_OPS ×
    log2(steps), as a ChainedScheduler's (measured 14-18 a value per pass)."""
    every = cost(request, "vectorized")
    steps, groups = request.scheduler_steps, request.n_groups
    if steps <= 1:
        return every
    if additive:
        scan = steps * groups * CHAIN_SCAN_OPS * math.ceil(math.log2(steps))
        return replace(every, total=scan)
    return replace(every, total=every.total + steps * groups * FALLBACK_PRODUCT_OPS)


def cost(request: specs.ScheduleRequest, engine: str, *, sampled: bool = False) -> Cost:
    """Return the cost of ``request`` on ``engine`` ("torch" or "vectorized").

    vectorized (about 1 ns of CPU each): Σ over the schedulers of their closed form's
    ``vectorized_cost(steps, groups)`` (per step and per value weights declared on each spec
    class, measured by bench/bench_cost.py), the warmup's, steps × LAMBDA_NODE_COST ×
    lr_lambda operations (each distinct expression once, whatever the groups: it is
    evaluated once per step for all of them) plus, for a ChainedScheduler (an affine scan),
    steps × groups × CHAIN_SCAN_OPS × log2(steps), and for a metric-driven schedule (a scan over the
    metrics) steps × METRIC_SCAN_OPS (or its spec's ``metric_scan_cost``). torch: steps ×
    groups × Σ over schedulers of (1 + nodes of its lr_lambda / TORCH_NODES_PER_UPDATE), in
    scheduler updates.
    """
    steps = request.scheduler_steps
    groups = request.n_groups
    every = specs.walk(request.scheduler)
    priced = steps
    if sampled and engine == "vectorized":
        priced = evaluated_steps(request) or steps
    leaves = [s for s in every if not s.children()]
    distinct_nodes = 0
    torch_weight = 1.0 if request.warmup else 0.0
    for spec in every:
        texts = _lambda_texts(spec)
        distinct_nodes += sum(expression_nodes(t) for t in set(texts))
        per_group = max((expression_nodes(t) for t in texts), default=0)
        torch_weight += 1 + per_group / TORCH_NODES_PER_UPDATE
    if engine == "torch":
        schedulers = len(every) + (1 if request.warmup else 0)
        total = math.ceil(steps * groups * torch_weight)
    else:
        schedulers = len(leaves) + (1 if request.warmup else 0)
        weight = sum(spec.vectorized_cost(priced, groups) for spec in every)
        weight += _warmup_cost(request.warmup, priced, groups)
        weight += steps * LAMBDA_NODE_COST * distinct_nodes
        if isinstance(request.scheduler, specs.ChainedScheduler) and steps > 1:
            weight += steps * groups * CHAIN_SCAN_OPS * math.ceil(math.log2(steps))
        root = request.scheduler
        if isinstance(root, specs.ReduceLROnPlateau) or getattr(root, "metric_driven", False):
            weight += steps * getattr(root, "metric_scan_cost", METRIC_SCAN_OPS)
        total = math.ceil(weight)
    return Cost(steps, groups, schedulers, distinct_nodes, total)
